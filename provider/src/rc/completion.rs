//! Completions: what the engine reports for finished work requests, and
//! the sink it reports them into (the verbs API's completion queue).

/// The outcome of a work request, as verbs reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WcStatus {
    /// Done.
    Success,
    /// A receive buffer was too small, or a local length was invalid.
    LocalLengthError,
    /// The queue pair could not carry out the request.
    LocalQpOperationError,
    /// A local key, access right or range check failed, or local memory
    /// could not be made present.
    LocalProtectionError,
    /// The queue pair went to the error state before the request ran.
    WrFlushError,
    /// The peer refused the access (bad rkey or range, unmapped or
    /// protected memory on its side).
    RemoteAccessError,
    /// The peer found the request invalid (length, opcode sequence,
    /// misaligned atomic).
    RemoteInvalidRequest,
    /// The peer failed to carry out a valid request.
    RemoteOperationalError,
    /// No acknowledgement within the retry count.
    RetryExceeded,
    /// The peer stayed not ready (no receive posted) past the RNR retry
    /// count.
    RnrRetryExceeded,
}

/// The operation a completion is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WcOpcode {
    /// A SEND (with or without immediate).
    Send,
    /// An RDMA WRITE (with or without immediate).
    RdmaWrite,
    /// An RDMA READ.
    RdmaRead,
    /// A compare and swap.
    CompareSwap,
    /// A fetch and add.
    FetchAdd,
    /// A received SEND.
    Recv,
    /// A received RDMA WRITE with immediate data.
    RecvRdmaWithImm,
}

/// A work completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkCompletion {
    /// The work request's id.
    pub wr_id: u64,
    /// The outcome.
    pub status: WcStatus,
    /// The operation.
    pub opcode: WcOpcode,
    /// Bytes received (receive completions) or transferred.
    pub byte_len: u32,
    /// Immediate data of a received SEND or RDMA WRITE with immediate.
    pub imm_data: Option<u32>,
    /// The local queue pair.
    pub qp_num: u32,
}

impl Default for WorkCompletion {
    /// A blank entry to poll into.
    fn default() -> Self {
        WorkCompletion {
            wr_id: 0,
            status: WcStatus::Success,
            opcode: WcOpcode::Send,
            byte_len: 0,
            imm_data: None,
            qp_num: 0,
        }
    }
}

/// Where a queue pair's completions go. A full sink drops the completion
/// and records the overflow (a CQ overrun in verbs); it never blocks.
///
/// A completion can be added hidden: it takes its place in the queue but
/// neither it nor anything added after it can be polled, and nobody is
/// woken, until [`Self::reveal`]. The receive path adds a received
/// message's completion this way and reveals it once the acknowledgement
/// of the message has been sent (see [`super::Outbox::complete_after_send`]).
pub(crate) trait CompletionSink: Send + Sync {
    /// Adds completions in order, as one step (one lock, at most one
    /// wake-up); those past a full sink's capacity are dropped.
    fn push_all(&self, wcs: &[WorkCompletion]);

    /// Adds a completion hidden until the next [`Self::reveal`].
    fn push_hidden(&self, wc: WorkCompletion);

    /// Makes everything added so far visible (waking waiters as
    /// [`Self::push_all`] does).
    fn reveal(&self);

    /// Adds a completion.
    fn push(&self, wc: WorkCompletion) {
        self.push_all(&[wc]);
    }
}
