//! Verbs-like RDMA API and the userspace soft-RoCE device.
//!
//! - [`verbs`]: contexts, protection domains, memory regions (pinned, ODP,
//!   implicit ODP), completion queues and RC queue pairs, in the style of
//!   the `ibverbs` crate.
//! - The device behind them speaks RoCEv2 over UDP port 4791 with the wire
//!   format of [`wire`], checked against real kernel-rxe traffic.
//! - Memory regions with on-demand paging use [`odp`]; the first one
//!   starts the process's userfaultfd monitor, so that plain `munmap`,
//!   `mremap` and `madvise` calls invalidate them (opt out with
//!   [`DeviceOptions::odp_events`] or `SRXE_ODP_EVENTS=none`; see
//!   [`OdpEvents`]).
//! - [`net`]: the UDP transport (batched sends and receives, GSO/GRO, the
//!   ICRC), and seeded fault injection for tests.
//! - With feature `rdma-core` (needs `libibverbs-dev` and a C compiler;
//!   the default build needs no C library), [`devices`] also lists the
//!   kernel's verbs devices (rxe, hardware), and the same types work on
//!   them through the system's libibverbs. ON_DEMAND regions there are
//!   passed through to the device's ODP where it is usable (a self-check
//!   probes it once per device), else emulated for local access
//!   ([`OdpMode`]).
//!
//! # Layers
//! Each module uses only the ones below it, so there is no cycle:
//!
//! 1. `wire` (packet formats) and `net` (the UDP transport);
//! 2. `rc`, the RC engine: it owns its request types ([`SendWr`],
//!    [`RecvWr`], [`Sge`], [`SendOp`]), its completion types
//!    ([`WorkCompletion`], [`WcStatus`], [`WcOpcode`]) and a completion
//!    sink trait, a region-access trait (lookup by key, range and rights
//!    checks, reads, writes and atomics) and its own errors; it knows
//!    neither sockets nor the verbs API;
//! 3. `device`: the socket, the progress thread, the queue-pair table and
//!    the key table, which holds regions only as the engine's region trait;
//! 4. `rdma_core` (feature), beside `device`: the verbs API's second
//!    backend, over libibverbs; it speaks the verbs API's data types;
//! 5. [`verbs`]: the public API. It re-exports the engine's data types
//!    under their verbs names, implements the completion sink with its
//!    completion queue and the region trait with its memory regions, and
//!    maps the engine's errors to [`VerbsError`].
//!
//! `provider/tests/layering.rs` checks the source for paths that reach
//! up a layer.
//!
//! # Example
//! Two devices on the loopback address, an RDMA WRITE into memory that is
//! registered without pinning:
//!
//! ```
//! use std::net::{IpAddr, Ipv4Addr};
//! use std::time::Duration;
//! use provider::{AccessFlags, Context, Mtu, SendOp, SendWr, WcStatus, WorkCompletion};
//!
//! let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
//! // Port 0: any free port (real RoCE peers use the default, 4791).
//! let (a, b) = (Context::open_with_port(ip, 0)?, Context::open_with_port(ip, 0)?);
//! let (pd_a, pd_b) = (a.alloc_pd()?, b.alloc_pd()?);
//! let (cq_a, cq_b) = (a.create_cq(16)?, b.create_cq(16)?);
//! let qp_a = pd_a.create_qp(&cq_a, &cq_a).build()?;
//! let qp_b = pd_b.create_qp(&cq_b, &cq_b).build()?;
//! qp_a.connect(&qp_b.endpoint(Mtu::Mtu1024))?;
//! qp_b.connect(&qp_a.endpoint(Mtu::Mtu1024))?;
//!
//! let src = b"hello, on-demand paging".to_vec();
//! let mut dst = vec![0u8; 64];
//! // SAFETY: both buffers outlive their regions and are not touched by
//! // Rust code while the device may access them.
//! let mr_a = unsafe { pd_a.reg_mr(src.as_ptr() as usize, src.len(), AccessFlags::ON_DEMAND) }?;
//! let mr_b = unsafe {
//!     let access = AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE | AccessFlags::ON_DEMAND;
//!     pd_b.reg_mr(dst.as_mut_ptr() as usize, dst.len(), access)
//! }?;
//!
//! qp_a.post_send(&[SendWr {
//!     wr_id: 1,
//!     op: SendOp::Write { remote_addr: mr_b.addr(), rkey: mr_b.rkey() },
//!     sg_list: &[mr_a.sge(0, src.len() as u32)],
//!     signaled: true,
//!     solicited: false,
//! }])?;
//! let mut wc = [WorkCompletion::default(); 1];
//! assert_eq!(cq_a.poll_wait(&mut wc, Duration::from_secs(10)), 1);
//! assert_eq!(wc[0].status, WcStatus::Success);
//! drop((mr_a, mr_b));
//! assert_eq!(&dst[..src.len()], &src[..]);
//! # Ok::<(), provider::VerbsError>(())
//! ```

mod device;
pub mod net;
// The rdma-core backend (a cargo feature) and the tests use it.
#[allow(dead_code, unused_imports)]
mod pin_on_demand;
mod rc;
#[cfg(feature = "rdma-core")]
mod rdma_core;
pub mod verbs;
pub mod wire;

pub use device::{DeviceOptions, DeviceStats};
pub use verbs::*;
