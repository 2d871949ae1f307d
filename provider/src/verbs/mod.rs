//! The verbs-like API: devices, contexts, protection domains, memory
//! regions, completion queues and queue pairs, in the style of the
//! `ibverbs` crate. Every object is RAII and keeps what it needs alive
//! through `Arc`s (a queue pair keeps its completion queues and protection
//! domain; a memory region keeps its device).

mod context;
mod cq;
mod mr;
mod odp_mode;
mod qp;

pub use context::{Context, DeviceAttr, DeviceBackend, DeviceInfo, OdpCaps, PortAttr, devices};
pub use cq::CompletionQueue;
#[cfg(test)]
pub(crate) use mr::MrInner;
pub use mr::{MemoryRegion, ProtectionDomain};
pub use odp_mode::{MrOptions, OdpBackendCounters, OdpMode, SelfCheck};
pub use qp::{QpCaps, QueuePair, QueuePairBuilder, RemoteInfo, RtsAttr};

pub use crate::device::{ODP_EVENTS_ENV, OdpEventSources, OdpEvents, UnknownOdpEvents};
use crate::rc::EngineError;
// The engine's request, completion and access types, under their verbs
// names.
pub use crate::rc::{
    AccessFlags, QpState, RecvWr, SendOp, SendWr, Sge, WcOpcode, WcStatus, WorkCompletion,
};

use std::net::{IpAddr, Ipv6Addr};

/// The path MTUs of RoCE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mtu {
    /// 256 bytes.
    Mtu256,
    /// 512 bytes.
    Mtu512,
    /// 1024 bytes.
    Mtu1024,
    /// 2048 bytes.
    Mtu2048,
    /// 4096 bytes.
    Mtu4096,
}

impl Mtu {
    /// The MTU in bytes.
    pub fn bytes(self) -> usize {
        match self {
            Mtu::Mtu256 => 256,
            Mtu::Mtu512 => 512,
            Mtu::Mtu1024 => 1024,
            Mtu::Mtu2048 => 2048,
            Mtu::Mtu4096 => 4096,
        }
    }

    /// The MTU for a byte count, if it is one of the five.
    pub fn from_bytes(bytes: usize) -> Option<Mtu> {
        Some(match bytes {
            256 => Mtu::Mtu256,
            512 => Mtu::Mtu512,
            1024 => Mtu::Mtu1024,
            2048 => Mtu::Mtu2048,
            4096 => Mtu::Mtu4096,
            _ => return None,
        })
    }
}

/// A RoCE global identifier: an IPv6 address, IPv4-mapped for IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Gid(pub [u8; 16]);

impl Gid {
    /// The GID of an IP address (IPv4 as `::ffff:a.b.c.d`).
    pub fn from_ip(ip: IpAddr) -> Gid {
        match ip {
            IpAddr::V4(v4) => Gid(v4.to_ipv6_mapped().octets()),
            IpAddr::V6(v6) => Gid(v6.octets()),
        }
    }

    /// The IP address this GID stands for.
    pub fn ip(&self) -> IpAddr {
        let v6 = Ipv6Addr::from(self.0);
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    }
}

/// Errors of the verbs API.
#[derive(Debug, thiserror::Error)]
pub enum VerbsError {
    /// A socket or thread could not be set up.
    #[error("device setup failed: {0}")]
    Io(#[from] std::io::Error),
    /// An argument is out of range or inconsistent.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// A memory registration failed.
    #[error("memory registration failed: {0}")]
    Odp(#[from] odp::OdpError),
    /// The queue pair is not in a state that allows the operation.
    #[error("queue pair in state {state:?} cannot {what}")]
    BadState {
        /// The current state.
        state: QpState,
        /// What was attempted.
        what: &'static str,
    },
    /// A queue is full.
    #[error("{0} queue full")]
    QueueFull(&'static str),
    /// The device has no such GID index.
    #[error("no GID at index {0}")]
    NoSuchGid(usize),
    /// A call of a verbs device (through libibverbs) failed.
    #[error("{call} failed: {}", std::io::Error::from_raw_os_error(*errno))]
    DeviceCall {
        /// The verbs function.
        call: &'static str,
        /// The errno it reported.
        errno: i32,
    },
    /// The on-demand paging asked for is not available on this device.
    #[error("on-demand paging unavailable: {0}")]
    OdpUnavailable(&'static str),
}

impl From<EngineError> for VerbsError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::BadState { state, what } => VerbsError::BadState { state, what },
            EngineError::QueueFull(queue) => VerbsError::QueueFull(queue),
            EngineError::InvalidArgument(what) => VerbsError::InvalidArgument(what),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_keep_their_verbs_meaning_and_message() {
        let cases = [
            (
                EngineError::BadState {
                    state: QpState::Init,
                    what: "post send requests",
                },
                "queue pair in state Init cannot post send requests",
            ),
            (EngineError::QueueFull("receive"), "receive queue full"),
            (
                EngineError::InvalidArgument("SGE list length"),
                "invalid argument: SGE list length",
            ),
        ];
        for (engine, message) in cases {
            assert_eq!(engine.to_string(), message);
            let verbs = VerbsError::from(engine);
            assert_eq!(verbs.to_string(), message);
            let same_kind = matches!(
                (engine, &verbs),
                (EngineError::BadState { .. }, VerbsError::BadState { .. })
                    | (EngineError::QueueFull(_), VerbsError::QueueFull(_))
                    | (
                        EngineError::InvalidArgument(_),
                        VerbsError::InvalidArgument(_)
                    )
            );
            assert!(same_kind, "{engine:?} became {verbs:?}");
        }
    }
}
