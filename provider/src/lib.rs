//! Verbs-like RDMA API and the userspace soft-RoCE device.
//!
//! - [`verbs`]: contexts, protection domains, memory regions (pinned, ODP,
//!   implicit ODP), completion queues and RC queue pairs, in the style of
//!   the `ibverbs` crate.
//! - The device behind them speaks RoCEv2 over UDP port 4791 with the wire
//!   format of [`wire`], checked against real kernel-rxe traffic.
//! - Memory regions with on-demand paging use [`odp`].

mod device;
pub mod net;
mod rc;
pub mod verbs;
pub mod wire;

pub use device::{DeviceOptions, DeviceStats};
pub use verbs::*;
