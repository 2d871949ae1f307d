//! The library driven through its C ABI as a verbs program drives it
//! (`dlopen`, the exported functions, and the `ibv_context_ops` the inline
//! verbs call), in a network namespace of the test's own thread: implicit
//! ODP, `ibv_advise_mr`, an RDMA WRITE with its data compared, a
//! completion channel woken through `poll(2)` on its fd, a bad rkey's
//! completion error, `IBV_QPS_ERR` flushing a posted receive, and a CQ
//! overflow reported by `ibv_get_async_event`.
//!
//! Needs root (the namespace); skips otherwise unless
//! `SRXE_IBVERBS_REQUIRE_TOOLS=1`.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::ptr::null_mut;

use ibverbs::sys::*;

/// Resolves `name@version` in the loaded library as a function of type `F`.
///
/// # Safety
/// `F` is the symbol's C function type.
unsafe fn sym<F: Copy>(lib: *mut c_void, name: &str, version: &str) -> F {
    let (n, v) = (
        CString::new(name).expect("name"),
        CString::new(version).expect("version"),
    );
    // SAFETY: a live handle and NUL-terminated strings.
    let p = unsafe { libc::dlvsym(lib, n.as_ptr(), v.as_ptr()) };
    assert!(!p.is_null(), "{name}@{version} missing");
    assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<*mut c_void>());
    // SAFETY: a function pointer of the caller's type.
    unsafe { std::mem::transmute_copy(&p) }
}

/// Moves the calling thread into a new network namespace with `lo` up.
fn private_network() -> bool {
    // SAFETY: unshare with a flag; affects only the calling thread.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return false;
    }
    // Child processes start in the calling thread's namespace.
    std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .is_ok_and(|s| s.success())
}

/// Loads the library cargo built for this test run.
fn load() -> *mut c_void {
    let exe = std::env::current_exe().expect("test executable");
    let lib = exe.parent().expect("deps").join("libibverbs.so");
    let path = CString::new(lib.into_os_string().into_encoded_bytes()).expect("path");
    // SAFETY: a NUL-terminated path.
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    assert!(!handle.is_null(), "dlopen failed");
    handle
}

/// The exported verbs this test calls.
struct Verbs {
    get_device_list: unsafe extern "C" fn(*mut c_int) -> *mut *mut ibv_device,
    free_device_list: unsafe extern "C" fn(*mut *mut ibv_device),
    get_device_name: unsafe extern "C" fn(*mut ibv_device) -> *const c_char,
    open_device: unsafe extern "C" fn(*mut ibv_device) -> *mut ibv_context,
    close_device: unsafe extern "C" fn(*mut ibv_context) -> c_int,
    alloc_pd: unsafe extern "C" fn(*mut ibv_context) -> *mut ibv_pd,
    dealloc_pd: unsafe extern "C" fn(*mut ibv_pd) -> c_int,
    reg_mr: unsafe extern "C" fn(*mut ibv_pd, *mut c_void, usize, c_int) -> *mut ibv_mr,
    dereg_mr: unsafe extern "C" fn(*mut ibv_mr) -> c_int,
    create_comp_channel: unsafe extern "C" fn(*mut ibv_context) -> *mut ibv_comp_channel,
    destroy_comp_channel: unsafe extern "C" fn(*mut ibv_comp_channel) -> c_int,
    create_cq: unsafe extern "C" fn(
        *mut ibv_context,
        c_int,
        *mut c_void,
        *mut ibv_comp_channel,
        c_int,
    ) -> *mut ibv_cq,
    destroy_cq: unsafe extern "C" fn(*mut ibv_cq) -> c_int,
    get_cq_event:
        unsafe extern "C" fn(*mut ibv_comp_channel, *mut *mut ibv_cq, *mut *mut c_void) -> c_int,
    ack_cq_events: unsafe extern "C" fn(*mut ibv_cq, u32),
    create_qp: unsafe extern "C" fn(*mut ibv_pd, *mut ibv_qp_init_attr) -> *mut ibv_qp,
    modify_qp: unsafe extern "C" fn(*mut ibv_qp, *mut ibv_qp_attr, c_int) -> c_int,
    destroy_qp: unsafe extern "C" fn(*mut ibv_qp) -> c_int,
    query_gid: unsafe extern "C" fn(*mut ibv_context, u8, c_int, *mut ibv_gid) -> c_int,
    get_async_event: unsafe extern "C" fn(*mut ibv_context, *mut ibv_async_event) -> c_int,
}

impl Verbs {
    /// # Safety
    /// `lib` is the loaded library.
    unsafe fn resolve(lib: *mut c_void) -> Verbs {
        let v = "IBVERBS_1.1";
        // SAFETY: each type is the verb's C signature from verbs.h.
        unsafe {
            Verbs {
                get_device_list: sym(lib, "ibv_get_device_list", v),
                free_device_list: sym(lib, "ibv_free_device_list", v),
                get_device_name: sym(lib, "ibv_get_device_name", v),
                open_device: sym(lib, "ibv_open_device", v),
                close_device: sym(lib, "ibv_close_device", v),
                alloc_pd: sym(lib, "ibv_alloc_pd", v),
                dealloc_pd: sym(lib, "ibv_dealloc_pd", v),
                reg_mr: sym(lib, "ibv_reg_mr", v),
                dereg_mr: sym(lib, "ibv_dereg_mr", v),
                create_comp_channel: sym(lib, "ibv_create_comp_channel", "IBVERBS_1.0"),
                destroy_comp_channel: sym(lib, "ibv_destroy_comp_channel", "IBVERBS_1.0"),
                create_cq: sym(lib, "ibv_create_cq", v),
                destroy_cq: sym(lib, "ibv_destroy_cq", v),
                get_cq_event: sym(lib, "ibv_get_cq_event", v),
                ack_cq_events: sym(lib, "ibv_ack_cq_events", v),
                create_qp: sym(lib, "ibv_create_qp", v),
                modify_qp: sym(lib, "ibv_modify_qp", v),
                destroy_qp: sym(lib, "ibv_destroy_qp", v),
                query_gid: sym(lib, "ibv_query_gid", v),
                get_async_event: sym(lib, "ibv_get_async_event", v),
            }
        }
    }
}

/// A zeroed C structure.
fn zeroed<T>() -> T {
    // SAFETY: only used for bindgen's plain C structures, for which all
    // zeros is a valid value.
    unsafe { std::mem::zeroed() }
}

/// Moves `qp` to RTS toward `dest_qpn` on this device (GID index `gid`).
///
/// # Safety
/// Live objects of the library.
unsafe fn connect(v: &Verbs, qp: *mut ibv_qp, dest_qpn: u32, gid: ibv_gid, sgid_index: u8) {
    let mut a: ibv_qp_attr = zeroed();
    a.qp_state = ibv_qp_state_IBV_QPS_INIT;
    a.port_num = 1;
    a.qp_access_flags =
        ibv_access_flags_IBV_ACCESS_REMOTE_WRITE | ibv_access_flags_IBV_ACCESS_REMOTE_READ;
    let mask = ibv_qp_attr_mask_IBV_QP_STATE
        | ibv_qp_attr_mask_IBV_QP_PKEY_INDEX
        | ibv_qp_attr_mask_IBV_QP_PORT
        | ibv_qp_attr_mask_IBV_QP_ACCESS_FLAGS;
    // SAFETY: live queue pair, valid attributes.
    let rc = unsafe { (v.modify_qp)(qp, &mut a, mask as c_int) };
    assert_eq!(rc, 0, "INIT");
    let mut a: ibv_qp_attr = zeroed();
    a.qp_state = ibv_qp_state_IBV_QPS_RTR;
    a.path_mtu = ibv_mtu_IBV_MTU_1024;
    a.dest_qp_num = dest_qpn;
    a.rq_psn = 77;
    a.max_dest_rd_atomic = 1;
    a.min_rnr_timer = 12;
    a.ah_attr.is_global = 1;
    a.ah_attr.port_num = 1;
    a.ah_attr.grh.dgid = gid;
    a.ah_attr.grh.sgid_index = sgid_index;
    a.ah_attr.grh.hop_limit = 1;
    let mask = ibv_qp_attr_mask_IBV_QP_STATE
        | ibv_qp_attr_mask_IBV_QP_AV
        | ibv_qp_attr_mask_IBV_QP_PATH_MTU
        | ibv_qp_attr_mask_IBV_QP_DEST_QPN
        | ibv_qp_attr_mask_IBV_QP_RQ_PSN
        | ibv_qp_attr_mask_IBV_QP_MAX_DEST_RD_ATOMIC
        | ibv_qp_attr_mask_IBV_QP_MIN_RNR_TIMER;
    // SAFETY: as above.
    let rc = unsafe { (v.modify_qp)(qp, &mut a, mask as c_int) };
    assert_eq!(rc, 0, "RTR");
    let mut a: ibv_qp_attr = zeroed();
    a.qp_state = ibv_qp_state_IBV_QPS_RTS;
    a.sq_psn = 77;
    a.timeout = 14;
    a.retry_cnt = 7;
    a.rnr_retry = 7;
    a.max_rd_atomic = 1;
    let mask = ibv_qp_attr_mask_IBV_QP_STATE
        | ibv_qp_attr_mask_IBV_QP_SQ_PSN
        | ibv_qp_attr_mask_IBV_QP_TIMEOUT
        | ibv_qp_attr_mask_IBV_QP_RETRY_CNT
        | ibv_qp_attr_mask_IBV_QP_RNR_RETRY
        | ibv_qp_attr_mask_IBV_QP_MAX_QP_RD_ATOMIC;
    // SAFETY: as above.
    let rc = unsafe { (v.modify_qp)(qp, &mut a, mask as c_int) };
    assert_eq!(rc, 0, "RTS");
}

/// Waits (up to 10 s) for the channel fd to become readable, then takes
/// the event; the queue it names.
///
/// # Safety
/// A live channel.
unsafe fn wait_event(v: &Verbs, channel: *mut ibv_comp_channel) -> *mut ibv_cq {
    // SAFETY: a live channel.
    let fd = unsafe { (*channel).fd };
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let rc = unsafe { libc::poll(&mut pfd, 1, 10_000) };
    assert_eq!(rc, 1, "channel fd never readable");
    let (mut cq, mut cq_ctx) = (null_mut(), null_mut());
    // SAFETY: valid out-parameters.
    let rc = unsafe { (v.get_cq_event)(channel, &mut cq, &mut cq_ctx) };
    assert_eq!(rc, 0, "ibv_get_cq_event");
    // SAFETY: the queue the event named.
    unsafe { (v.ack_cq_events)(cq, 1) };
    cq
}

/// Polls `cq` through the context's ops until one completion arrives.
///
/// # Safety
/// A live queue of `ctx`.
unsafe fn poll_one(ctx: *mut ibv_context, cq: *mut ibv_cq) -> ibv_wc {
    // SAFETY: the ops table the inline ibv_poll_cq calls.
    let poll = unsafe { (*ctx).ops.poll_cq }.expect("poll_cq op");
    let mut wc: ibv_wc = zeroed();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // SAFETY: one writable ibv_wc.
    while unsafe { poll(cq, 1, &mut wc) } == 0 {
        assert!(std::time::Instant::now() < deadline, "no completion");
        std::thread::yield_now();
    }
    wc
}

/// Posts one RDMA WRITE through the context's ops.
///
/// # Safety
/// Live objects; `sge` names registered memory.
unsafe fn post_write(
    ctx: *mut ibv_context,
    qp: *mut ibv_qp,
    wr_id: u64,
    sge: &mut ibv_sge,
    addr: u64,
    rkey: u32,
) {
    let mut wr: ibv_send_wr = zeroed();
    wr.wr_id = wr_id;
    wr.sg_list = sge;
    wr.num_sge = 1;
    wr.opcode = ibv_wr_opcode_IBV_WR_RDMA_WRITE;
    wr.send_flags = ibv_send_flags_IBV_SEND_SIGNALED;
    wr.wr.rdma.remote_addr = addr;
    wr.wr.rdma.rkey = rkey;
    let mut bad = null_mut();
    // SAFETY: the ops table the inline ibv_post_send calls.
    let post = unsafe { (*ctx).ops.post_send }.expect("post_send op");
    // SAFETY: a valid request list of one.
    assert_eq!(unsafe { post(qp, &mut wr, &mut bad) }, 0, "post_send");
}

#[test]
fn write_through_the_c_abi_with_events_odp_and_errors() {
    if !private_network() {
        assert!(
            std::env::var_os("SRXE_IBVERBS_REQUIRE_TOOLS").is_none_or(|v| v != "1"),
            "required but cannot run: needs root (network namespace)"
        );
        eprintln!("skipped: needs root (network namespace)");
        return;
    }
    let lib = load();
    // SAFETY: the library just loaded; every call below follows verbs'
    // contracts (live objects, valid out-parameters, registered memory).
    unsafe {
        let v = Verbs::resolve(lib);
        let mut n = 0;
        let list = (v.get_device_list)(&mut n);
        let dev = (0..n as usize)
            .map(|i| *list.add(i))
            .find(|&d| CStr::from_ptr((v.get_device_name)(d)) == c"srxe-lo")
            .expect("srxe-lo in the device list");
        let ctx = (v.open_device)(dev);
        assert!(!ctx.is_null());
        (v.free_device_list)(list);

        // The loopback interface's table: the MAC-less link-local GID,
        // then 127.0.0.1.
        let mut gid: ibv_gid = zeroed();
        assert_eq!((v.query_gid)(ctx, 1, 1, &mut gid), 0);
        assert_eq!(gid.raw[12..], [127, 0, 0, 1]);

        let pd = (v.alloc_pd)(ctx);
        let mut src: Vec<u8> = (0..65536u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut dst = vec![0u8; 65536];
        let odp = ibv_access_flags_IBV_ACCESS_ON_DEMAND;
        let src_mr = (v.reg_mr)(
            pd,
            src.as_mut_ptr().cast(),
            src.len(),
            (ibv_access_flags_IBV_ACCESS_LOCAL_WRITE | odp) as c_int,
        );
        let all = ibv_access_flags_IBV_ACCESS_LOCAL_WRITE
            | ibv_access_flags_IBV_ACCESS_REMOTE_WRITE
            | odp;
        let implicit = (v.reg_mr)(pd, null_mut(), usize::MAX, all as c_int);
        assert!(
            !src_mr.is_null() && !implicit.is_null(),
            "registrations failed"
        );

        // ibv_advise_mr, through verbs_context::advise_mr as the inline
        // verb calls it.
        let vctx = ctx
            .cast::<u8>()
            .sub(std::mem::offset_of!(verbs_context, context))
            .cast::<verbs_context>();
        let advise = (*vctx).advise_mr.expect("advise_mr op");
        let mut sge = ibv_sge {
            addr: src.as_ptr() as u64,
            length: src.len() as u32,
            lkey: (*src_mr).lkey,
        };
        assert_eq!(
            advise(
                pd,
                ib_uverbs_advise_mr_advice_IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH,
                0,
                &mut sge,
                1
            ),
            0
        );

        let channel = (v.create_comp_channel)(ctx);
        let cq_a = (v.create_cq)(ctx, 16, null_mut(), channel, 0);
        let cq_b = (v.create_cq)(ctx, 16, null_mut(), null_mut(), 0);
        let mut init: ibv_qp_init_attr = zeroed();
        init.qp_type = ibv_qp_type_IBV_QPT_RC;
        init.cap = ibv_qp_cap {
            max_send_wr: 8,
            max_recv_wr: 8,
            max_send_sge: 1,
            max_recv_sge: 1,
            max_inline_data: 0,
        };
        init.send_cq = cq_a;
        init.recv_cq = cq_a;
        let qp_a = (v.create_qp)(pd, &mut init);
        init.send_cq = cq_b;
        init.recv_cq = cq_b;
        let qp_b = (v.create_qp)(pd, &mut init);
        assert!(!qp_a.is_null() && !qp_b.is_null());
        connect(&v, qp_a, (*qp_b).qp_num, gid, 1);
        connect(&v, qp_b, (*qp_a).qp_num, gid, 1);

        // Arm, write, and wake through poll(2) on the channel fd.
        let arm = (*ctx).ops.req_notify_cq.expect("req_notify_cq op");
        assert_eq!(arm(cq_a, 0), 0);
        post_write(
            ctx,
            qp_a,
            1,
            &mut sge,
            dst.as_mut_ptr() as u64,
            (*implicit).rkey,
        );
        assert_eq!(wait_event(&v, channel), cq_a);
        let wc = poll_one(ctx, cq_a);
        assert_eq!(
            (wc.wr_id, wc.status, wc.opcode),
            (
                1,
                ibv_wc_status_IBV_WC_SUCCESS,
                ibv_wc_opcode_IBV_WC_RDMA_WRITE
            )
        );
        assert!(dst == src, "written data differs");

        // A bad rkey: a remote access error, after which the queue pair
        // is in the error state.
        post_write(
            ctx,
            qp_a,
            2,
            &mut sge,
            dst.as_mut_ptr() as u64,
            (*implicit).rkey ^ 0x5a5a00,
        );
        let wc = poll_one(ctx, cq_a);
        assert_eq!(
            (wc.wr_id, wc.status),
            (2, ibv_wc_status_IBV_WC_REM_ACCESS_ERR)
        );

        // IBV_QPS_ERR flushes what qp_b has posted.
        let mut recv_sge = ibv_sge {
            addr: dst.as_ptr() as u64,
            length: 16,
            lkey: (*implicit).lkey,
        };
        let mut rwr: ibv_recv_wr = zeroed();
        rwr.wr_id = 9;
        rwr.sg_list = &mut recv_sge;
        rwr.num_sge = 1;
        let mut bad = null_mut();
        let post_recv = (*ctx).ops.post_recv.expect("post_recv op");
        assert_eq!(post_recv(qp_b, &mut rwr, &mut bad), 0);
        let mut err: ibv_qp_attr = zeroed();
        err.qp_state = ibv_qp_state_IBV_QPS_ERR;
        assert_eq!(
            (v.modify_qp)(qp_b, &mut err, ibv_qp_attr_mask_IBV_QP_STATE as c_int),
            0
        );
        let wc = poll_one(ctx, cq_b);
        assert_eq!(
            (wc.wr_id, wc.status),
            (9, ibv_wc_status_IBV_WC_WR_FLUSH_ERR)
        );

        // One flushed receive more than the queue holds (its actual size,
        // which may exceed the one asked for) overflows it: reported once
        // as IBV_EVENT_CQ_ERR.
        let tiny = (v.create_cq)(ctx, 1, null_mut(), null_mut(), 0);
        let receives = (*tiny).cqe as u32 + 1;
        init.send_cq = tiny;
        init.recv_cq = tiny;
        init.cap.max_recv_wr = receives;
        let qp_c = (v.create_qp)(pd, &mut init);
        let mut a: ibv_qp_attr = zeroed();
        a.qp_state = ibv_qp_state_IBV_QPS_INIT;
        a.port_num = 1;
        assert_eq!(
            (v.modify_qp)(qp_c, &mut a, ibv_qp_attr_mask_IBV_QP_STATE as c_int),
            0
        );
        for _ in 0..receives {
            assert_eq!(post_recv(qp_c, &mut rwr, &mut bad), 0);
        }
        assert_eq!(
            (v.modify_qp)(qp_c, &mut err, ibv_qp_attr_mask_IBV_QP_STATE as c_int),
            0
        );
        let wc = poll_one(ctx, tiny);
        assert_eq!(wc.status, ibv_wc_status_IBV_WC_WR_FLUSH_ERR);
        let mut event: ibv_async_event = zeroed();
        assert_eq!((v.get_async_event)(ctx, &mut event), 0);
        assert_eq!(event.event_type, ibv_event_type_IBV_EVENT_CQ_ERR);
        assert_eq!(event.element.cq, tiny);
        assert_eq!((v.destroy_qp)(qp_c), 0);
        assert_eq!((v.destroy_cq)(tiny), 0);

        // Teardown in verbs' order; a channel with queues is busy.
        assert_eq!((v.destroy_comp_channel)(channel), libc::EBUSY);
        for qp in [qp_a, qp_b] {
            assert_eq!((v.destroy_qp)(qp), 0);
        }
        for cq in [cq_a, cq_b] {
            assert_eq!((v.destroy_cq)(cq), 0);
        }
        assert_eq!((v.destroy_comp_channel)(channel), 0);
        for mr in [src_mr, implicit] {
            assert_eq!((v.dereg_mr)(mr), 0);
        }
        assert_eq!((v.dealloc_pd)(pd), 0);
        assert_eq!((v.close_device)(ctx), 0);
    }
}
