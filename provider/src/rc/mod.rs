//! The reliable-connected (RC) transport: requester, completer and
//! responder of one queue pair (the roles of rxe's `rxe_req.c`,
//! `rxe_comp.c` and `rxe_resp.c`).
//!
//! The engine knows no sockets: every entry point takes the packets that
//! arrived and appends the packets to send to an [`Outbox`]; the device
//! sends them. All of a queue pair's state sits behind one mutex, which the
//! application's thread (posting) and the device's progress thread
//! (receiving, timers) both take.

mod completer;
mod psn;
mod qp;
mod requester;
mod responder;
mod sge;

pub(crate) use psn::PSN_MASK;
pub(crate) use qp::{Peer, QpCore, QpStateKind};

use std::net::SocketAddr;
use std::sync::Arc;

use crate::verbs::MrInner;

/// Packets for the device to send: destination and bytes (BTH to pad,
/// plus room for the ICRC).
#[derive(Default)]
pub(crate) struct Outbox {
    pub(crate) packets: Vec<(SocketAddr, Vec<u8>)>,
}

/// What the engine needs from the device: memory regions by key.
pub(crate) trait Regions {
    /// The region with local/remote key `key`, if registered.
    fn lookup_mr(&self, key: u32) -> Option<Arc<MrInner>>;
}
