//! The engine's states and errors.

/// Queue pair states (verbs' `ibv_qp_state`, the ones RC uses here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QpState {
    /// Just created.
    Reset,
    /// Receive requests may be posted.
    Init,
    /// Ready to receive: incoming requests are served.
    Rtr,
    /// Ready to send.
    Rts,
    /// Failed: requests complete with flush errors.
    Error,
}

/// Why the engine refused a request of the application.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EngineError {
    /// The queue pair is not in a state that allows the operation.
    #[error("queue pair in state {state:?} cannot {what}")]
    BadState {
        /// The current state.
        state: QpState,
        /// What was attempted.
        what: &'static str,
    },
    /// A work queue is full.
    #[error("{0} queue full")]
    QueueFull(&'static str),
    /// A work request is inconsistent.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
}
