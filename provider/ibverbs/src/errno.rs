//! How verbs reports errors: an errno value, returned or in `errno`.

use provider::VerbsError;

/// Sets the calling thread's `errno`.
pub(crate) fn set_errno(code: i32) {
    // SAFETY: __errno_location returns the calling thread's errno slot,
    // valid for the life of the thread.
    unsafe { *libc::__errno_location() = code };
}

/// The errno verbs uses for a provider error.
pub(crate) fn errno_of(err: &VerbsError) -> i32 {
    match err {
        VerbsError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
        VerbsError::InvalidArgument(_) | VerbsError::BadState { .. } => libc::EINVAL,
        VerbsError::NoSuchGid(_) => libc::EINVAL,
        VerbsError::Odp(_) => libc::EFAULT,
        VerbsError::QueueFull(_) => libc::ENOMEM,
        VerbsError::DeviceCall { errno, .. } => *errno,
        VerbsError::OdpUnavailable(_) => libc::EOPNOTSUPP,
    }
}

/// The return value of an `int` verb: 0, or the errno (also stored in
/// `errno`, as rdma-core does).
pub(crate) fn status(result: Result<(), i32>) -> libc::c_int {
    match result {
        Ok(()) => 0,
        Err(code) => {
            set_errno(code);
            code
        }
    }
}

/// The return value of a verb that returns a pointer: NULL with `errno` on
/// failure.
pub(crate) fn pointer<T>(result: Result<*mut T, i32>) -> *mut T {
    result.unwrap_or_else(|code| {
        set_errno(code);
        std::ptr::null_mut()
    })
}
