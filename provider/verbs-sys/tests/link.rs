//! With feature `link`, the system's libibverbs answers and the static
//! inline wrappers are linked in.
#![cfg(feature = "link")]

use verbs_sys::*;

#[test]
fn the_system_library_lists_devices_or_says_why_not() {
    let mut n = 0;
    // SAFETY: `n` is a valid out-pointer; the list is freed below.
    let list = unsafe { ibv_get_device_list(&mut n) };
    if list.is_null() {
        // Without RDMA in the kernel rdma-core answers ENOSYS.
        let errno = std::io::Error::last_os_error().raw_os_error();
        assert_eq!(errno, Some(libc_enosys()), "ibv_get_device_list failed");
        return;
    }
    assert!(n >= 0);
    // SAFETY: `list` came from ibv_get_device_list and is freed once.
    unsafe { ibv_free_device_list(list) };
}

#[test]
fn a_static_inline_verb_runs_through_its_wrapper() {
    // ibv_cq_ex_to_cq is a static inline of the header (a cast): it
    // resolves only through the compiled wrapper, and the pointer is never
    // dereferenced.
    let fake = std::ptr::NonNull::<ibv_cq_ex>::dangling().as_ptr();
    // SAFETY: the wrapper only casts the pointer.
    let cq = unsafe { ibv_cq_ex_to_cq(fake) };
    assert_eq!(cq.cast::<ibv_cq_ex>(), fake);
}

fn libc_enosys() -> i32 {
    38
}
