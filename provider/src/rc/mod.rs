//! The reliable-connected (RC) transport: requester, completer and
//! responder of one queue pair (the roles of rxe's `rxe_req.c`,
//! `rxe_comp.c` and `rxe_resp.c`).
//!
//! The engine knows no sockets: every entry point takes the packets that
//! arrived and appends the packets to send to an [`Outbox`]; the device
//! sends them. All of a queue pair's state sits behind one mutex, which the
//! application's thread (posting) and the device's progress thread
//! (receiving, timers) both take.

mod clock;
mod completer;
mod outbox;
mod psn;
mod qp;
mod read_reply;
mod requester;
mod responder;
mod sge;
#[cfg(test)]
mod sim;

pub(crate) use outbox::Outbox;
pub(crate) use psn::PSN_MASK;
pub(crate) use qp::{DEFAULT_PKEY, Peer, QpCore, QpStateKind, RxDrop};

use std::sync::Arc;

use crate::verbs::MrInner;

/// What the engine needs from the device: memory regions by key.
pub(crate) trait Regions {
    /// The region with local/remote key `key`, if registered.
    fn lookup_mr(&self, key: u32) -> Option<Arc<MrInner>>;
}
