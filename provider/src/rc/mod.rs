//! The reliable-connected (RC) transport: requester, completer and
//! responder of one queue pair (the roles of rxe's `rxe_req.c`,
//! `rxe_comp.c` and `rxe_resp.c`).
//!
//! The engine knows no sockets: every entry point takes the packets that
//! arrived and appends the packets to send to an [`Outbox`]; the device
//! sends them. All of a queue pair's state sits behind one mutex, which the
//! application's thread (posting) and the device's progress thread
//! (receiving, timers) both take.
//!
//! The engine owns its types: work requests ([`SendWr`], [`RecvWr`],
//! [`Sge`]), completions ([`WorkCompletion`]) and the sink they go to
//! ([`CompletionSink`]), memory access ([`Region`], [`Regions`]) and its
//! errors ([`EngineError`], [`RegionError`]). It depends on neither the
//! verbs API nor the device: both build on it.

mod clock;
mod completer;
mod completion;
mod error;
mod outbox;
mod psn;
mod qp;
mod read_reply;
mod region;
mod requester;
#[cfg(test)]
pub(crate) use requester::{HOLD_BACK_MAX, HOLD_BACK_UNACKED, MAX_UNACKED_PSNS, RESUME_FREE_PSNS};
mod responder;
mod sge;
#[cfg(test)]
mod sim;
mod work_request;

pub(crate) use completion::CompletionSink;
pub use completion::{WcOpcode, WcStatus, WorkCompletion};
pub(crate) use error::EngineError;
pub use error::QpState;
pub(crate) use outbox::Outbox;
pub(crate) use psn::PSN_MASK;
pub(crate) use qp::{DEFAULT_PKEY, Peer, QpCore, RxDrop};
pub use region::AccessFlags;
pub(crate) use region::{AtomicOp, CachedRegions, Region, RegionError, RegionTable, Regions};
pub use work_request::{RecvWr, SendOp, SendWr, Sge};
