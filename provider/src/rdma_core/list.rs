//! The verbs devices of the host (`ibv_get_device_list`).

use verbs_sys as sys;

use super::{RdmaContext, last_error};
use crate::{DeviceBackend, DeviceInfo, VerbsError};

/// Runs `f` over the device list, which is freed afterwards. `Ok(None)`
/// when the host has no RDMA at all (libibverbs answers ENOSYS: no
/// kernel support, which is not an error to the user).
pub(super) fn with_devices<T>(
    f: impl FnOnce(&[*mut sys::ibv_device]) -> T,
) -> Result<T, VerbsError> {
    let mut n = 0;
    // SAFETY: `n` is a valid out-pointer; the list is freed below.
    let list = unsafe { sys::ibv_get_device_list(&mut n) };
    if list.is_null() {
        let err = last_error("ibv_get_device_list");
        return match err {
            VerbsError::DeviceCall { errno, .. } if errno == libc::ENOSYS => Ok(f(&[])),
            err => Err(err),
        };
    }
    // SAFETY: the list holds `n` device pointers (and a NULL after them).
    let devices = unsafe { std::slice::from_raw_parts(list, n.max(0) as usize) };
    let out = f(devices);
    // SAFETY: `list` came from ibv_get_device_list and is freed once; no
    // pointer from it is used after this (contexts stay valid).
    unsafe { sys::ibv_free_device_list(list) };
    Ok(out)
}

/// The verbs devices, each opened once to read its RoCEv2 GIDs.
///
/// # Errors
/// Listing or opening a device failed for a reason other than the host
/// having no RDMA.
pub(crate) fn devices() -> Result<Vec<DeviceInfo>, VerbsError> {
    let names = with_devices(|devices| {
        devices
            .iter()
            .map(|&d| {
                // SAFETY: a live device of the list; the name is copied out.
                unsafe { std::ffi::CStr::from_ptr(sys::ibv_get_device_name(d)) }
                    .to_string_lossy()
                    .into_owned()
            })
            .collect::<Vec<_>>()
    })?;
    names
        .into_iter()
        .map(|name| {
            let ctx = RdmaContext::open(&name)?;
            Ok(DeviceInfo {
                addr: ctx.addr(),
                if_mtu: ctx.if_mtu(),
                name,
                backend: DeviceBackend::RdmaCore,
            })
        })
        .collect()
}
