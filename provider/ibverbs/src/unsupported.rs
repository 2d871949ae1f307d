//! Everything the device does not do, failing as verbs prescribes:
//! `int` verbs return `EOPNOTSUPP` (also in `errno`), verbs that return an
//! object return NULL with `errno` `EOPNOTSUPP`, and `void` ones do
//! nothing.
//!
//! Also the `IBVERBS_PRIVATE_34` interface between libibverbs and its
//! provider libraries (`libmlx5.so.1`, `libefa.so.1`, ...): they are loaded
//! as dependencies of programs such as perftest and their constructors
//! register a driver, which is ignored; their commands are never reached.
//! And the `IBVERBS_1.0` ABI of 2006 (ENOSYS).
//!
//! The stubs take no parameters: under the C calling convention the
//! caller's arguments are simply left unused.

use std::ffi::{c_int, c_void};

use crate::errno::set_errno;
use crate::sys::*;

/// Defines stubs returning an errno value (also stored in `errno`).
macro_rules! int_stubs {
    ($code:expr => $($name:ident),* $(,)?) => {$(
        #[doc = concat!("`", stringify!($name), "`: not supported.")]
        pub(crate) extern "C" fn $name() -> c_int {
            set_errno($code);
            $code
        }
    )*};
}

/// Defines stubs returning NULL with `errno` set.
macro_rules! null_stubs {
    ($code:expr => $($name:ident),* $(,)?) => {$(
        #[doc = concat!("`", stringify!($name), "`: not supported (NULL).")]
        pub(crate) extern "C" fn $name() -> *mut c_void {
            set_errno($code);
            std::ptr::null_mut()
        }
    )*};
}

/// Defines stubs that do nothing.
macro_rules! void_stubs {
    ($($name:ident),* $(,)?) => {$(
        #[doc = concat!("`", stringify!($name), "`: nothing to do here.")]
        pub(crate) extern "C" fn $name() {}
    )*};
}

int_stubs!(libc::EOPNOTSUPP =>
    ibv_attach_mcast, ibv_detach_mcast, ibv_destroy_ah, ibv_modify_srq, ibv_query_srq,
    ibv_destroy_srq, ibv_resize_cq, ibv_init_ah_from_wc, ibv_query_ece, ibv_set_ece,
    ibv_resolve_eth_l2_from_gid, verbs_init_cq, execute_ioctl,
    ibv_cmd_advise_mr, ibv_cmd_alloc_dm, ibv_cmd_alloc_mw, ibv_cmd_alloc_pd, ibv_cmd_attach_mcast,
    ibv_cmd_close_xrcd, ibv_cmd_create_ah, ibv_cmd_create_counters, ibv_cmd_create_cq,
    ibv_cmd_create_cq_ex, ibv_cmd_create_flow, ibv_cmd_create_flow_action_esp, ibv_cmd_create_qp,
    ibv_cmd_create_qp_ex, ibv_cmd_create_qp_ex2, ibv_cmd_create_rwq_ind_table, ibv_cmd_create_srq,
    ibv_cmd_create_srq_ex, ibv_cmd_create_wq, ibv_cmd_dealloc_mw, ibv_cmd_dealloc_pd,
    ibv_cmd_dereg_mr, ibv_cmd_destroy_ah, ibv_cmd_destroy_counters, ibv_cmd_destroy_cq,
    ibv_cmd_destroy_flow, ibv_cmd_destroy_flow_action, ibv_cmd_destroy_qp,
    ibv_cmd_destroy_rwq_ind_table, ibv_cmd_destroy_srq, ibv_cmd_destroy_wq, ibv_cmd_detach_mcast,
    ibv_cmd_free_dm, ibv_cmd_get_context, ibv_cmd_modify_cq, ibv_cmd_modify_flow_action_esp,
    ibv_cmd_modify_qp, ibv_cmd_modify_qp_ex, ibv_cmd_modify_srq, ibv_cmd_modify_wq,
    ibv_cmd_open_qp, ibv_cmd_open_xrcd, ibv_cmd_poll_cq, ibv_cmd_post_recv, ibv_cmd_post_send,
    ibv_cmd_post_srq_recv, ibv_cmd_query_context, ibv_cmd_query_device_any, ibv_cmd_query_mr,
    ibv_cmd_query_port, ibv_cmd_query_qp, ibv_cmd_query_srq, ibv_cmd_read_counters,
    ibv_cmd_reg_dm_mr, ibv_cmd_reg_dmabuf_mr, ibv_cmd_reg_mr, ibv_cmd_req_notify_cq,
    ibv_cmd_rereg_mr, ibv_cmd_resize_cq,
);

null_stubs!(libc::EOPNOTSUPP =>
    ibv_create_ah, ibv_create_ah_from_wc, ibv_create_srq, ibv_import_device,
    ibv_import_dm, ibv_import_mr, ibv_import_pd, ibv_reg_dmabuf_mr, _verbs_init_and_alloc_context,
    verbs_open_device,
);

void_stubs!(
    ibv_unimport_dm,
    ibv_unimport_mr,
    ibv_unimport_pd,
    verbs_register_driver_34,
    verbs_set_ops,
    verbs_uninit_context,
    __verbs_log,
    ibv_copy_ah_attr_from_kern,
    ibv_copy_path_rec_from_kern,
    ibv_copy_path_rec_to_kern,
    ibv_copy_qp_attr_from_kern,
);

/// `ibv_rereg_mr`: `IBV_REREG_MR_ERR_INPUT`, errno `EOPNOTSUPP`.
pub(crate) extern "C" fn ibv_rereg_mr() -> c_int {
    set_errno(libc::EOPNOTSUPP);
    ibv_rereg_mr_err_code_IBV_REREG_MR_ERR_INPUT
}

/// `ibv_read_ibdev_sysfs_file`: these devices have no sysfs directory.
pub(crate) extern "C" fn ibv_read_ibdev_sysfs_file() -> c_int {
    set_errno(libc::ENOENT);
    -1
}

/// `__ioctl_final_num_attrs`: no ioctl interface, no attributes.
pub(crate) extern "C" fn __ioctl_final_num_attrs() -> c_int {
    0
}

/// `ibv_query_qp_data_in_order`: 0, no in-order guarantee reported.
pub(crate) extern "C" fn ibv_query_qp_data_in_order() -> c_int {
    0
}

/// `ibv_fork_init`: nothing to do; ODP regions are not pinned and fork
/// needs nothing special.
pub(crate) extern "C" fn ibv_fork_init() -> c_int {
    0
}

/// `ibv_is_fork_initialized`: fork protection is not needed.
pub(crate) extern "C" fn ibv_is_fork_initialized() -> ibv_fork_status {
    ibv_fork_status_IBV_FORK_UNNEEDED
}

/// `ibv_dontfork_range`: nothing to do (see [`ibv_fork_init`]).
pub(crate) extern "C" fn ibv_dontfork_range() -> c_int {
    0
}

/// `ibv_dofork_range`: nothing to do.
pub(crate) extern "C" fn ibv_dofork_range() -> c_int {
    0
}

/// `ibv_context_ops::post_srq_recv`: no SRQs.
pub(crate) unsafe extern "C" fn post_srq_recv(
    _srq: *mut ibv_srq,
    _wr: *mut ibv_recv_wr,
    _bad: *mut *mut ibv_recv_wr,
) -> c_int {
    libc::EOPNOTSUPP
}

/// `ibv_context_ops::alloc_mw`: no memory windows.
pub(crate) unsafe extern "C" fn alloc_mw(_pd: *mut ibv_pd, _type: ibv_mw_type) -> *mut ibv_mw {
    set_errno(libc::EOPNOTSUPP);
    std::ptr::null_mut()
}

/// `ibv_context_ops::bind_mw`: no memory windows.
pub(crate) unsafe extern "C" fn bind_mw(
    _qp: *mut ibv_qp,
    _mw: *mut ibv_mw,
    _bind: *mut ibv_mw_bind,
) -> c_int {
    libc::EOPNOTSUPP
}

/// `ibv_context_ops::dealloc_mw`: no memory windows.
pub(crate) unsafe extern "C" fn dealloc_mw(_mw: *mut ibv_mw) -> c_int {
    libc::EOPNOTSUPP
}

/// The `IBVERBS_1.0` versions (rdma-core's compat layer for programs
/// linked before 2006) and the hidden `ibv_register_driver@IBVERBS_1.1`.
pub(crate) mod compat {
    use std::ffi::{c_int, c_void};

    use crate::errno::set_errno;

    int_stubs!(libc::ENOSYS =>
        ibv_close_device, ibv_get_async_event, ibv_query_device, ibv_query_port, ibv_query_gid,
        ibv_query_pkey, ibv_dealloc_pd, ibv_dereg_mr, ibv_resize_cq, ibv_destroy_cq,
        ibv_get_cq_event, ibv_modify_srq, ibv_query_srq, ibv_destroy_srq, ibv_query_qp,
        ibv_modify_qp, ibv_destroy_qp, ibv_destroy_ah, ibv_attach_mcast, ibv_detach_mcast,
    );
    null_stubs!(libc::ENOSYS =>
        ibv_get_device_list, ibv_get_device_name, ibv_open_device, ibv_alloc_pd, ibv_reg_mr,
        ibv_create_cq, ibv_create_srq, ibv_create_qp, ibv_create_ah,
    );
    void_stubs!(
        ibv_free_device_list,
        ibv_ack_async_event,
        ibv_ack_cq_events,
        ibv_register_driver
    );

    /// `ibv_get_device_guid@IBVERBS_1.0`: 0.
    pub(crate) extern "C" fn ibv_get_device_guid() -> u64 {
        set_errno(libc::ENOSYS);
        0
    }
}
