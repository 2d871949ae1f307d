//! Work requests: what the engine queues (`post_send` and `post_recv` of
//! the verbs API take them as they are).

/// A scatter/gather element: `length` bytes at `addr` of the memory region
/// whose local key is `lkey`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sge {
    /// Start address (within the region).
    pub addr: u64,
    /// Length in bytes.
    pub length: u32,
    /// The region's local key.
    pub lkey: u32,
}

/// The operation of a send work request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendOp {
    /// SEND: the payload lands in the peer's next receive request.
    Send,
    /// SEND with 32-bit immediate data for the peer's completion.
    SendWithImm {
        /// Immediate data (delivered as is).
        imm: u32,
    },
    /// RDMA WRITE into the peer's memory.
    Write {
        /// Remote virtual address.
        remote_addr: u64,
        /// Remote key.
        rkey: u32,
    },
    /// RDMA WRITE with immediate data, which consumes a receive request.
    WriteWithImm {
        /// Remote virtual address.
        remote_addr: u64,
        /// Remote key.
        rkey: u32,
        /// Immediate data.
        imm: u32,
    },
    /// RDMA READ from the peer's memory into the local SGEs.
    Read {
        /// Remote virtual address.
        remote_addr: u64,
        /// Remote key.
        rkey: u32,
    },
    /// 64-bit compare and swap at an 8-byte aligned remote address; the old
    /// value lands in the (8-byte) local SGE.
    CompareSwap {
        /// Remote virtual address.
        remote_addr: u64,
        /// Remote key.
        rkey: u32,
        /// Value compared with the remote one.
        compare: u64,
        /// Value stored if they are equal.
        swap: u64,
    },
    /// 64-bit fetch and add; the old value lands in the local SGE.
    FetchAdd {
        /// Remote virtual address.
        remote_addr: u64,
        /// Remote key.
        rkey: u32,
        /// Value added.
        add: u64,
    },
}

/// A send work request.
#[derive(Clone, Copy, Debug)]
pub struct SendWr<'a> {
    /// Returned in the completion.
    pub wr_id: u64,
    /// What to do.
    pub op: SendOp,
    /// Local memory: the payload to send or write, or where read and atomic
    /// results go.
    pub sg_list: &'a [Sge],
    /// Generate a completion on success (errors always complete).
    pub signaled: bool,
    /// Ask for a solicited event at the peer.
    pub solicited: bool,
}

/// A receive work request.
#[derive(Clone, Copy, Debug)]
pub struct RecvWr<'a> {
    /// Returned in the completion.
    pub wr_id: u64,
    /// Where an incoming SEND's payload goes.
    pub sg_list: &'a [Sge],
}
