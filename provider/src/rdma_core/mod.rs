//! The backend for real verbs devices (feature `rdma-core`): the verbs API
//! over the system's libibverbs (rdma-core), so that kernel drivers (rxe,
//! hardware) serve the same [`crate::Context`], protection domains,
//! regions, completion queues and queue pairs as the userspace device.
//!
//! One concept per file: [`list`] (devices), [`context`] (an open device,
//! its attributes and GIDs), [`pd`], [`mr`] (registrations and their ODP
//! modes), [`cq`], [`qp`], [`convert`] (our types to verbs' and back),
//! [`self_check`] (is the device's ODP trustworthy?), [`pod`]
//! (pin-on-demand regions: keys, chunk registrations, work requests'
//! chunks until their completions are polled).

mod context;
mod convert;
mod cq;
mod list;
mod mr;
mod pd;
mod pod;
mod qp;
mod self_check;

pub(crate) use context::RdmaContext;
pub(crate) use cq::RdmaCq;
pub(crate) use list::devices;
pub(crate) use mr::{RdmaMr, advise, caps_cover};
pub(crate) use pd::RdmaPd;
pub(crate) use qp::{RdmaQp, RdmaQpConfig};
pub(crate) use self_check::verdict as self_check_verdict;

use crate::VerbsError;

/// The error of a verbs call that set `errno`.
pub(crate) fn last_error(call: &'static str) -> VerbsError {
    let errno = std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO);
    VerbsError::DeviceCall { call, errno }
}

/// The error of a verbs call that returns its errno (`ibv_modify_qp`,
/// `ibv_post_send`, ...); 0 is success. Some providers return -1 and set
/// errno instead.
pub(crate) fn check(call: &'static str, rc: i32) -> Result<(), VerbsError> {
    match rc {
        0 => Ok(()),
        rc if rc < 0 => Err(last_error(call)),
        errno => Err(VerbsError::DeviceCall { call, errno }),
    }
}
