//! The verbs API on a real verbs device (feature `rdma-core`): kernel rxe
//! in the lab guest. Each test looks for a verbs device among
//! `devices()`; without one it says so and passes, unless
//! `SRXE_RDMA_CORE_REQUIRE=1` (the lab sets it), which makes that a
//! failure. `SRXE_LAB_KERNEL_ODP=1|0` tells whether the guest's kernel
//! offers rxe ODP (7.3.4: 1, 6.1: 0), so the device's reported caps and
//! modes can be checked.
//!
//! Everything runs as two RC queue pairs on one device connected to each
//! other: the packets loop back through the kernel driver.
#![cfg(feature = "rdma-core")]

#[allow(dead_code)] // the helpers for odp's own tests too
#[path = "../../odp/tests/common/mod.rs"]
mod preload;
#[path = "rdma_core/remap.rs"]
mod remap;
#[path = "rdma_core/stress.rs"]
mod stress;
#[path = "rdma_core/support.rs"]
mod support;

use provider::{
    AccessFlags, DeviceBackend, MrOptions, OdpMode, QpState, RecvWr, SendOp, Sge, VerbsError,
    WcOpcode, WcStatus,
};
use remap::{Source, after_remap};
use support::{Mapping, Pair, device, kernel_odp, pattern};

const PAGE: usize = 4096;

#[test]
fn verbs_devices_are_listed_with_their_attributes() {
    let Some((info, ctx)) = device() else { return };
    assert_eq!(info.backend, DeviceBackend::RdmaCore);
    assert_eq!(ctx.backend(), DeviceBackend::RdmaCore);
    assert_eq!(ctx.local_addr().ip(), info.addr);
    assert_eq!(ctx.local_addr().port(), 4791);
    let attr = ctx.query_device();
    assert!(attr.max_qp > 0 && attr.max_qp_wr > 0 && attr.max_sge > 0 && attr.max_cqe > 0);
    assert!(attr.atomic, "rxe does 64-bit atomics");
    let port = ctx.query_port();
    assert!(port.gid_tbl_len > 0);
    assert!(ctx.query_gid(0).is_ok(), "the link-local GID");
    assert!(matches!(
        ctx.query_gid(port.gid_tbl_len as usize),
        Err(VerbsError::NoSuchGid(_))
    ));
    // Meaningless on a kernel device, and harmless.
    assert_eq!(ctx.progress(), 0);
    assert_eq!(ctx.stats(), provider::DeviceStats::default());
    match kernel_odp() {
        Some(true) => {
            let caps = attr.odp_caps;
            assert!(caps.general && caps.rc_send && caps.rc_recv && caps.rc_write && caps.rc_read);
        }
        Some(false) => {
            assert!(!attr.odp_caps.general, "{:?}", attr.odp_caps);
            assert_eq!(attr.odp_local, Some(OdpMode::PinOnDemand));
            assert_eq!(attr.odp_remote, None);
        }
        None => eprintln!("SRXE_LAB_KERNEL_ODP unset: ODP caps not checked"),
    }
}

#[test]
fn pinned_write_read_send_and_atomics_are_byte_exact() {
    let Some((_, ctx)) = device() else { return };
    let p = Pair::new(&ctx);
    let len = 3 * PAGE + 777;
    let (mut a_buf, mut b_buf) = (Mapping::new(4 * PAGE), Mapping::new(4 * PAGE));
    let all = AccessFlags::LOCAL_WRITE
        | AccessFlags::REMOTE_WRITE
        | AccessFlags::REMOTE_READ
        | AccessFlags::REMOTE_ATOMIC;
    let (a_mr, b_mr) = (p.reg(&a_buf, all, None), p.reg(&b_buf, all, None));
    assert_eq!(a_mr.odp_mode(), None);

    // WRITE at an odd offset.
    let data = pattern(len, 3);
    a_buf.bytes()[100..100 + len].copy_from_slice(&data);
    let wc = p.a_send(
        SendOp::Write {
            remote_addr: b_mr.addr() + 5,
            rkey: b_mr.rkey(),
        },
        a_mr.sge(100, len as u32),
    );
    assert_eq!(
        (wc.status, wc.opcode),
        (WcStatus::Success, WcOpcode::RdmaWrite)
    );
    assert_eq!(&b_buf.bytes()[5..5 + len], &data[..]);

    // READ back from another offset.
    let fresh = pattern(len, 9);
    b_buf.bytes()[1000..1000 + len].copy_from_slice(&fresh);
    let wc = p.a_send(
        SendOp::Read {
            remote_addr: b_mr.addr() + 1000,
            rkey: b_mr.rkey(),
        },
        a_mr.sge(7, len as u32),
    );
    assert_eq!(
        (wc.status, wc.opcode),
        (WcStatus::Success, WcOpcode::RdmaRead)
    );
    assert_eq!(&a_buf.bytes()[7..7 + len], &fresh[..]);

    // SEND with immediate data into a posted receive.
    p.b.post_recv(&[RecvWr {
        wr_id: 42,
        sg_list: &[b_mr.sge(2 * PAGE as u64, PAGE as u32)],
    }])
    .unwrap();
    let msg = pattern(1500, 5);
    a_buf.bytes()[..1500].copy_from_slice(&msg);
    let wc = p.a_send(SendOp::SendWithImm { imm: 0xdead_beef }, a_mr.sge(0, 1500));
    assert_eq!((wc.status, wc.opcode), (WcStatus::Success, WcOpcode::Send));
    let rc = p.b_wait();
    assert_eq!(
        (rc.wr_id, rc.status, rc.opcode),
        (42, WcStatus::Success, WcOpcode::Recv)
    );
    assert_eq!((rc.byte_len, rc.imm_data), (1500, Some(0xdead_beef)));
    assert_eq!(&b_buf.bytes()[2 * PAGE..2 * PAGE + 1500], &msg[..]);

    // Atomics on an aligned word of B, old values into A.
    b_buf.bytes()[3 * PAGE..3 * PAGE + 8].copy_from_slice(&40u64.to_ne_bytes());
    let target = b_mr.addr() + 3 * PAGE as u64;
    let wc = p.a_send(
        SendOp::FetchAdd {
            remote_addr: target,
            rkey: b_mr.rkey(),
            add: 2,
        },
        a_mr.sge(8, 8),
    );
    assert_eq!(
        (wc.status, wc.opcode),
        (WcStatus::Success, WcOpcode::FetchAdd)
    );
    assert_eq!(
        u64::from_ne_bytes(a_buf.bytes()[8..16].try_into().unwrap()),
        40
    );
    let cas = SendOp::CompareSwap {
        remote_addr: target,
        rkey: b_mr.rkey(),
        compare: 42,
        swap: 7,
    };
    let wc = p.a_send(cas, a_mr.sge(16, 8));
    assert_eq!(
        (wc.status, wc.opcode),
        (WcStatus::Success, WcOpcode::CompareSwap)
    );
    assert_eq!(
        u64::from_ne_bytes(a_buf.bytes()[16..24].try_into().unwrap()),
        42
    );
    assert_eq!(
        u64::from_ne_bytes(b_buf.bytes()[3 * PAGE..3 * PAGE + 8].try_into().unwrap()),
        7
    );
}

#[test]
fn errors_are_the_verbs_api_errors() {
    let Some((_, ctx)) = device() else { return };
    let buf = Mapping::new(PAGE);
    // Posting before RTS is refused as on the userspace device.
    let cq = ctx.create_cq(8).unwrap();
    let pd = ctx.alloc_pd().unwrap();
    let qp = pd.create_qp(&cq, &cq).build().unwrap();
    let err = qp
        .post_send(&[provider::SendWr {
            wr_id: 1,
            op: SendOp::Send,
            sg_list: &[],
            signaled: true,
            solicited: false,
        }])
        .unwrap_err();
    assert!(
        matches!(
            err,
            VerbsError::BadState {
                state: QpState::Reset,
                ..
            }
        ),
        "{err}"
    );
    assert!(matches!(qp.to_rts(), Err(VerbsError::BadState { .. })));

    // A peer's bad rkey: remote access error.
    let p = Pair::new(&ctx);
    let all = AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE | AccessFlags::REMOTE_READ;
    let mr = p.reg(&buf, all, None);
    let wc = p.a_send(
        SendOp::Write {
            remote_addr: mr.addr(),
            rkey: mr.rkey() ^ 0x5a00,
        },
        mr.sge(0, 64),
    );
    assert_eq!(wc.status, WcStatus::RemoteAccessError);

    // A READ whose local SGE has a bad lkey: the data comes back and
    // cannot be placed: local protection error.
    let p = Pair::new(&ctx);
    let mr = p.reg(&buf, all, None);
    let mut sge = mr.sge(0, 64);
    sge.lkey ^= 0x5a00;
    let wc = p.a_send(
        SendOp::Read {
            remote_addr: mr.addr(),
            rkey: mr.rkey(),
        },
        sge,
    );
    assert_eq!(wc.status, WcStatus::LocalProtectionError);

    // A WRITE whose local SGE has a bad lkey fails before anything is
    // sent. Kernel rxe calls that a local QP operation error (6.1), or
    // moves the queue pair to ERROR at once and flushes the request with
    // the rest (7.3.4), both measured in the lab. The same pair did a good
    // WRITE just before, so the bad key is the only cause.
    let p = Pair::new(&ctx);
    let mr = p.reg(&buf, all, None);
    let good = p.a_send(
        SendOp::Write {
            remote_addr: mr.addr(),
            rkey: mr.rkey(),
        },
        mr.sge(0, 64),
    );
    assert_eq!(good.status, WcStatus::Success);
    let bad = Sge {
        lkey: mr.lkey() ^ 0x5a00,
        ..mr.sge(0, 64)
    };
    let wc = p.a_send(
        SendOp::Write {
            remote_addr: mr.addr(),
            rkey: mr.rkey(),
        },
        bad,
    );
    assert!(
        matches!(
            wc.status,
            WcStatus::LocalQpOperationError | WcStatus::WrFlushError
        ),
        "{wc:?}"
    );
    assert_eq!(p.a.state(), QpState::Error);

    // An atomic whose SGE is not 8 bytes never reaches the device.
    let err =
        p.a.post_send(&[provider::SendWr {
            wr_id: 1,
            op: SendOp::FetchAdd {
                remote_addr: mr.addr(),
                rkey: mr.rkey(),
                add: 1,
            },
            sg_list: &[mr.sge(0, 16)],
            signaled: true,
            solicited: false,
        }])
        .unwrap_err();
    assert!(matches!(err, VerbsError::InvalidArgument(_)), "{err}");
}

#[test]
fn forced_pass_through_shows_the_kernel_odp_corruption_and_the_self_check_catches_it() {
    let Some((_, ctx)) = device() else { return };
    let p = Pair::new(&ctx);
    let (target, src) = (Mapping::new(4 * PAGE), Mapping::new(4 * PAGE));
    let remote = AccessFlags::LOCAL_WRITE
        | AccessFlags::REMOTE_WRITE
        | AccessFlags::REMOTE_READ
        | AccessFlags::ON_DEMAND;
    let forced = MrOptions {
        odp_mode: Some(OdpMode::PassThrough),
        ..MrOptions::default()
    };
    if kernel_odp() == Some(false) {
        let err = p.try_reg(&target, remote, Some(forced)).unwrap_err();
        assert!(matches!(err, VerbsError::OdpUnavailable(_)), "{err}");
        assert_eq!(
            ctx.check_odp().unwrap(),
            None,
            "nothing to check without ODP"
        );
        return;
    }
    let Ok(odp_mr) = p.try_reg(&target, remote, Some(forced)) else {
        eprintln!("skipped: the device has no RC ODP");
        return;
    };
    assert_eq!(odp_mr.odp_mode(), Some(OdpMode::PassThrough));
    let src_mr = p.reg(&src, AccessFlags::LOCAL_WRITE, None);
    let (offset, len) = (992, 2 * PAGE + 300);
    let data = pattern(len, 11);
    let mut src = src;
    src.bytes()[..len].copy_from_slice(&data);
    let wc = p.a_send(
        SendOp::Write {
            remote_addr: odp_mr.addr() + offset as u64,
            rkey: odp_mr.rkey(),
        },
        src_mr.sge(0, len as u32),
    );
    assert_eq!(wc.status, WcStatus::Success);
    let mut target = target;
    let landed = target.bytes()[offset..offset + len] == data[..];
    let check = ctx
        .check_odp()
        .unwrap()
        .expect("a device with RC ODP is checked");
    eprintln!("pass-through WRITE byte-exact: {landed}; self-check: {check:?}");
    // Whatever the kernel does, the self-check must agree with what this
    // test saw.
    assert_eq!(check.passed, landed, "{check:?}");
    assert_eq!(ctx.odp_self_check(), Some(check));
    if kernel_odp() == Some(true) {
        // Kernel rxe 7.3.4 (measured): data lands at each page's start.
        assert!(
            !landed,
            "kernel rxe ODP wrote byte-exact: has it been fixed?"
        );
        assert!(check.write_mismatch.is_some());
        assert!(ctx.odp_backend_counters().self_check_failures >= 1);
        let attr = ctx.query_device();
        assert_eq!(attr.odp_local, Some(OdpMode::PinOnDemand));
        assert_eq!(attr.odp_remote, None);
    }
}

#[test]
fn remote_on_demand_regions_are_refused_or_pinned_whole_where_odp_is_not_usable() {
    let Some((_, ctx)) = device() else { return };
    let p = Pair::new(&ctx);
    let target = Mapping::new(4 * PAGE);
    let remote = AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE | AccessFlags::ON_DEMAND;
    let usable = ctx.check_odp().unwrap().is_some_and(|c| c.passed);
    if usable {
        eprintln!("the device's ODP passed its self-check: remote regions are pass-through");
        let mr = p.reg(&target, remote, None);
        assert_eq!(mr.odp_mode(), Some(OdpMode::PassThrough));
        return;
    }
    let err = p.try_reg(&target, remote, None).unwrap_err();
    assert!(matches!(err, VerbsError::OdpUnavailable(_)), "{err}");
    assert!(err.to_string().contains("pin_whole_fallback"), "{err}");
    let before = ctx.odp_backend_counters();
    let fallback = MrOptions {
        pin_whole_fallback: true,
        ..MrOptions::default()
    };
    let mr = p.reg(&target, remote, Some(fallback));
    assert_eq!(mr.odp_mode(), Some(OdpMode::PinnedWhole));
    assert_eq!(
        ctx.odp_backend_counters().pinned_whole_regions,
        before.pinned_whole_regions + 1
    );
    // Byte-exact at a non-zero page offset, unlike the kernel's ODP.
    let mut src = Mapping::new(4 * PAGE);
    let src_mr = p.reg(&src, AccessFlags::LOCAL_WRITE, None);
    let len = 2 * PAGE + 300;
    let data = pattern(len, 21);
    src.bytes()[..len].copy_from_slice(&data);
    let wc = p.a_send(
        SendOp::Write {
            remote_addr: mr.addr() + 992,
            rkey: mr.rkey(),
        },
        src_mr.sge(0, len as u32),
    );
    assert_eq!(wc.status, WcStatus::Success);
    let mut target = target;
    assert_eq!(&target.bytes()[992..992 + len], &data[..]);
    // Forcing pin-on-demand on a remote region is refused.
    let forced = MrOptions {
        odp_mode: Some(OdpMode::PinOnDemand),
        ..MrOptions::default()
    };
    assert!(matches!(
        p.try_reg(&target, remote, Some(forced)),
        Err(VerbsError::OdpUnavailable(_))
    ));
    // Implicit ODP is pass-through only, which rxe refuses anyway.
    let pd = ctx.alloc_pd().unwrap();
    // SAFETY: an implicit registration exposes nothing here: it fails, and
    // no work request would use it.
    let implicit = unsafe { pd.reg_mr(0, usize::MAX, remote) };
    assert!(implicit.is_err());
}

#[test]
fn advise_mr_is_a_clear_error_on_rxe_and_pins_chunks_of_pin_on_demand_regions() {
    let Some((_, ctx)) = device() else { return };
    let p = Pair::new(&ctx);
    let (buf, lazy) = (Mapping::new(PAGE), Mapping::new(4 * PAGE));
    let mr = p.reg(&buf, AccessFlags::LOCAL_WRITE, None);
    match p.pd.advise_mr(odp::Advice::PrefetchWrite, &[mr.sge(0, 64)]) {
        // rxe's provider has no advise_mr: libibverbs answers EOPNOTSUPP.
        Err(VerbsError::OdpUnavailable(_)) => {}
        Ok(()) if kernel_odp().is_none() => eprintln!("the device implements advise_mr"),
        other => panic!("advise_mr on rxe: {other:?}"),
    }
    let pod = p.reg(
        &lazy,
        AccessFlags::LOCAL_WRITE | AccessFlags::ON_DEMAND,
        None,
    );
    if pod.odp_mode() != Some(OdpMode::PinOnDemand) {
        return;
    }
    assert_eq!(
        pod.odp_counters().faults,
        0,
        "nothing pinned at registration"
    );
    p.pd.advise_mr(odp::Advice::PrefetchWrite, &[pod.sge(100, 3 * PAGE as u32)])
        .unwrap();
    assert_eq!(
        pod.odp_counters().faults,
        1,
        "one chunk pinned by the prefetch"
    );
}

#[test]
fn pin_on_demand_is_the_device_choice_for_local_regions_and_byte_exact() {
    let Some((_, ctx)) = device() else { return };
    let p = Pair::new(&ctx);
    // More than 4 MiB: at least two 2 MiB chunks, so SGEs split.
    let len = (4 << 20) + 3 * PAGE;
    let (mut local, mut target) = (Mapping::new(len), Mapping::new(len));
    let on_demand = AccessFlags::LOCAL_WRITE | AccessFlags::ON_DEMAND;
    let local_mr = p.reg(&local, on_demand, None);
    let checked = ctx.odp_self_check();
    match local_mr.odp_mode() {
        Some(OdpMode::PinOnDemand) => {}
        Some(OdpMode::PassThrough) if checked.is_some_and(|c| c.passed) => {
            eprintln!("the device's ODP passed its self-check: pass-through, nothing to emulate");
            return;
        }
        other => panic!("device choice {other:?} after self-check {checked:?}"),
    }
    if kernel_odp() == Some(true) {
        // The self-check failed, so the device fell back.
        assert!(ctx.odp_backend_counters().self_check_fallbacks >= 1);
    }
    assert!(ctx.odp_backend_counters().pin_on_demand_regions >= 1);
    let all = AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE | AccessFlags::REMOTE_READ;
    let target_mr = p.reg(&target, all, None);

    // WRITE from a non-zero offset, across a chunk boundary.
    let n = (2 << 20) + 5000;
    let data = pattern(len, 31);
    local.bytes().copy_from_slice(&data);
    let wc = p.a_send(
        SendOp::Write {
            remote_addr: target_mr.addr() + 992,
            rkey: target_mr.rkey(),
        },
        local_mr.sge(992, n as u32),
    );
    assert_eq!(wc.status, WcStatus::Success);
    assert_eq!(&target.bytes()[992..992 + n], &data[992..992 + n]);
    assert!(
        local_mr.odp_counters().faults >= 2,
        "{:?}",
        local_mr.odp_counters()
    );

    // READ into the region at another offset.
    let fresh = pattern(len, 47);
    target.bytes().copy_from_slice(&fresh);
    let wc = p.a_send(
        SendOp::Read {
            remote_addr: target_mr.addr() + 5,
            rkey: target_mr.rkey(),
        },
        local_mr.sge(3000, n as u32),
    );
    assert_eq!(wc.status, WcStatus::Success);
    assert_eq!(&local.bytes()[3000..3000 + n], &fresh[5..5 + n]);

    // SEND from the region; RECV into it.
    p.b.post_recv(&[RecvWr {
        wr_id: 1,
        sg_list: &[target_mr.sge(0, 8192)],
    }])
    .unwrap();
    let wc = p.a_send(SendOp::Send, local_mr.sge(992, 6000));
    assert_eq!(wc.status, WcStatus::Success);
    assert_eq!(p.b_wait().status, WcStatus::Success);
    let sent = local.bytes()[992..992 + 6000].to_vec();
    assert_eq!(&target.bytes()[..6000], &sent[..]);
    p.a.post_recv(&[RecvWr {
        wr_id: 2,
        sg_list: &[local_mr.sge((2 << 20) - 100, 4000)],
    }])
    .unwrap();
    let msg = pattern(4000, 59);
    target.bytes()[..4000].copy_from_slice(&msg);
    p.b.post_send(&[provider::SendWr {
        wr_id: 3,
        op: SendOp::Send,
        sg_list: &[target_mr.sge(0, 4000)],
        signaled: true,
        solicited: false,
    }])
    .unwrap();
    assert_eq!(p.b_wait().status, WcStatus::Success);
    let rc = support::wait(&p.cq_a);
    assert_eq!(
        (rc.wr_id, rc.status, rc.byte_len),
        (2, WcStatus::Success, 4000)
    );
    assert_eq!(&local.bytes()[(2 << 20) - 100..(2 << 20) + 3900], &msg[..]);
    drop((local_mr, target_mr));
}

#[test]
fn an_unmap_in_the_polling_thread_drains_the_completions_it_waits_for() {
    let Some((_, ctx)) = device() else { return };
    let p = Pair::new(&ctx);
    let len = 4 * PAGE;
    let (local, target) = (Mapping::new(len), Mapping::new(len));
    let local_mr = p.reg(
        &local,
        AccessFlags::LOCAL_WRITE | AccessFlags::ON_DEMAND,
        None,
    );
    if local_mr.odp_mode() != Some(OdpMode::PinOnDemand) {
        eprintln!("skipped: the device's ODP is used, nothing to emulate");
        return;
    }
    let all = AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE | AccessFlags::REMOTE_READ;
    let target_mr = p.reg(&target, all, None);
    // Posted and (soon) done, but not polled: its chunk stays in use.
    let op = SendOp::Write {
        remote_addr: target_mr.addr(),
        rkey: target_mr.rkey(),
    };
    p.a.post_send(&[provider::SendWr {
        wr_id: 77,
        op,
        sg_list: &[local_mr.sge(0, len as u32)],
        signaled: true,
        solicited: false,
    }])
    .unwrap();
    // This thread is the one that would poll: the invalidation's wait
    // polls for it, and the completion waits in the set-aside queue.
    // SAFETY: the test's own mapping; nothing in Rust refers to it.
    unsafe { odp::AddressSpace::process().munmap(local.addr as *mut libc::c_void, len) }.unwrap();
    let counters = local_mr.odp_counters();
    assert!(counters.invalidations >= 1, "{counters:?}");
    assert_eq!(
        counters.stale_pages, 0,
        "the chunk was unpinned only once no request used it"
    );
    let wc = support::wait(&p.cq_a);
    assert_eq!((wc.wr_id, wc.status), (77, WcStatus::Success));
    drop((local_mr, target_mr));
    std::mem::forget(local); // unmapped above
}

#[test]
fn a_pinned_region_keeps_using_the_old_pages_after_munmap_and_a_new_mapping() {
    let Some((_, ctx)) = device() else { return };
    // Data lost both ways: the WRITE sends the old bytes, the READ lands
    // where the program no longer looks.
    assert_eq!(
        after_remap(&ctx, false, Source::Userfaultfd),
        (false, false)
    );
}

/// Runs the child test `name` with `env`.
fn child(name: &str, env: &[(&str, &str)]) {
    let out = preload::run_child_with(name, env, preload::Preload::No);
    preload::assert_child_passed(&out);
}

#[test]
fn pin_on_demand_uses_the_new_pages_after_munmap_reported_by_the_explicit_wrappers() {
    if device().is_none() {
        return;
    }
    // Only the wrapper reports: no monitor in the child.
    child("child_remap_explicit", &[("SRXE_ODP_EVENTS", "none")]);
}

#[test]
#[ignore = "runs as a child of pin_on_demand_uses_the_new_pages_after_munmap_reported_by_the_explicit_wrappers"]
fn child_remap_explicit() {
    let (_, ctx) = device().expect("the parent found a device");
    assert_eq!(after_remap(&ctx, true, Source::Explicit), (true, true));
    assert!(odp::AddressSpace::process().userfaultfd_stats().is_none());
}

#[test]
fn pin_on_demand_uses_the_new_pages_after_munmap_reported_by_userfaultfd() {
    if device().is_none() {
        return;
    }
    child("child_remap_userfaultfd", &[("SRXE_ODP_EVENTS", "uffd")]);
}

#[test]
#[ignore = "runs as a child of pin_on_demand_uses_the_new_pages_after_munmap_reported_by_userfaultfd"]
fn child_remap_userfaultfd() {
    let (_, ctx) = device().expect("the parent found a device");
    assert_eq!(after_remap(&ctx, true, Source::Userfaultfd), (true, true));
    assert!(
        odp::AddressSpace::process().userfaultfd_stats().is_some(),
        "the monitor ran"
    );
}

#[test]
fn pin_on_demand_uses_the_new_pages_after_munmap_reported_by_the_interposition_library() {
    if device().is_none() {
        return;
    }
    let lib = std::env::var("SRXE_ODP_PRELOAD")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| preload::preload_library());
    let lib = lib.to_str().expect("UTF-8 path").to_owned();
    child(
        "child_remap_preload",
        &[("SRXE_ODP_EVENTS", "none"), ("LD_PRELOAD", &lib)],
    );
}

#[test]
#[ignore = "runs as a child of pin_on_demand_uses_the_new_pages_after_munmap_reported_by_the_interposition_library"]
fn child_remap_preload() {
    let (_, ctx) = device().expect("the parent found a device");
    assert!(
        odp::AddressSpace::process().interposition_active(),
        "LD_PRELOAD took"
    );
    assert_eq!(after_remap(&ctx, true, Source::Preload), (true, true));
}

#[test]
fn a_split_beyond_the_queue_pairs_sges_is_refused() {
    let Some((_, ctx)) = device() else { return };
    let p = Pair::new(&ctx);
    let len = 5 << 20;
    let (local, target) = (Mapping::new(len), Mapping::new(PAGE));
    let mr = p.reg(
        &local,
        AccessFlags::LOCAL_WRITE | AccessFlags::ON_DEMAND,
        None,
    );
    if mr.odp_mode() != Some(OdpMode::PinOnDemand) {
        return;
    }
    let target_mr = p.reg(
        &target,
        AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE,
        None,
    );
    // Every SGE straddles the same 2 MiB boundary: two pieces each.
    let boundary = (local.addr + (2 << 20)) & !((2 << 20) - 1);
    let at = (boundary - 8 - local.addr) as u64;
    let n = ctx.query_device().max_sge.min(32) as usize;
    let sges = vec![mr.sge(at, 16); n];
    let err =
        p.a.post_send(&[provider::SendWr {
            wr_id: 1,
            op: SendOp::Write {
                remote_addr: target_mr.addr(),
                rkey: target_mr.rkey(),
            },
            sg_list: &sges,
            signaled: true,
            solicited: false,
        }])
        .unwrap_err();
    assert!(matches!(err, VerbsError::InvalidArgument(_)), "{err}");
    // Half as many fit, and arrive in order.
    let wc = {
        p.a.post_send(&[provider::SendWr {
            wr_id: 2,
            op: SendOp::Write {
                remote_addr: target_mr.addr(),
                rkey: target_mr.rkey(),
            },
            sg_list: &sges[..n / 2],
            signaled: true,
            solicited: false,
        }])
        .unwrap();
        support::wait(&p.cq_a)
    };
    assert_eq!((wc.wr_id, wc.status), (2, WcStatus::Success));
}

#[test]
fn queue_pairs_connect_over_ipv6_gids_too() {
    let Some((_, ctx)) = device() else { return };
    let v6 = (0..ctx.query_port().gid_tbl_len as usize)
        .filter_map(|i| ctx.query_gid(i).ok())
        .find(|g| matches!(g.ip(), std::net::IpAddr::V6(ip) if !ip.is_unicast_link_local()));
    let Some(gid) = v6 else {
        eprintln!("skipped: no global IPv6 GID");
        return;
    };
    let pd = ctx.alloc_pd().unwrap();
    let cq = ctx.create_cq(16).unwrap();
    let (a, b) = (
        pd.create_qp(&cq, &cq).build().unwrap(),
        pd.create_qp(&cq, &cq).build().unwrap(),
    );
    let to = |qp: &provider::QueuePair| provider::RemoteInfo {
        gid,
        ..qp.endpoint(provider::Mtu::Mtu1024)
    };
    a.connect(&to(&b)).unwrap();
    b.connect(&to(&a)).unwrap();
    let (mut src, mut dst) = (Mapping::new(PAGE), Mapping::new(PAGE));
    let all = AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE;
    // SAFETY: test memory the device alone touches until the checks.
    let (s, d) = unsafe {
        (
            pd.reg_mr(src.addr, PAGE, all).unwrap(),
            pd.reg_mr(dst.addr, PAGE, all).unwrap(),
        )
    };
    let data = pattern(3000, 77);
    src.bytes()[..3000].copy_from_slice(&data);
    a.post_send(&[provider::SendWr {
        wr_id: 9,
        op: SendOp::Write {
            remote_addr: d.addr() + 11,
            rkey: d.rkey(),
        },
        sg_list: &[s.sge(0, 3000)],
        signaled: true,
        solicited: false,
    }])
    .unwrap();
    let wc = support::wait(&cq);
    assert_eq!((wc.wr_id, wc.status), (9, WcStatus::Success));
    assert_eq!(&dst.bytes()[11..3011], &data[..]);
    drop((s, d));
}
