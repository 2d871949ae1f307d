//! Two devices on loopback, connected RC queue pairs: every operation with
//! its data checked byte for byte, across MTUs and sizes, with pinned and
//! ODP memory on either side.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::{End, LOCALHOST, any_port, connect, pattern, send};
use odp::AddressSpace;
use provider::{Mtu, RecvWr, SendOp, SendWr, WcOpcode, WcStatus};

#[test]
fn rdma_write_read_and_send_move_exact_bytes_across_mtus_and_sizes() {
    // Four quarters, each larger than the largest message.
    let len = 4 << 20;
    for (mtu, odp_a, odp_b) in [
        (Mtu::Mtu256, false, false),
        (Mtu::Mtu1024, true, false),
        (Mtu::Mtu4096, false, true),
        (Mtu::Mtu2048, true, true),
    ] {
        let a = End::new(len, odp_a);
        let b = End::new(len, odp_b);
        connect(&a, &b, mtu);
        for (round, size) in [1usize, 7, 255, 256, 257, 1024, 4097, 65_536, 300_001]
            .into_iter()
            .enumerate()
        {
            let seed = round as u8;
            let offset = 13 * round;
            // WRITE a -> b.
            a.put(offset, &pattern(size, seed));
            let remote = b.mr.addr() + (len / 2) as u64;
            send(
                &a.qp,
                1,
                SendOp::Write {
                    remote_addr: remote,
                    rkey: b.mr.rkey(),
                },
                a.mr.sge(offset as u64, size as u32),
            );
            let wc = a.wait();
            assert_eq!(
                (wc.status, wc.opcode, wc.wr_id),
                (WcStatus::Success, WcOpcode::RdmaWrite, 1),
                "{mtu:?} write {size}"
            );
            assert_eq!(
                &b.get(len / 2, (len / 2 + size) - (len / 2))[..],
                &pattern(size, seed)[..],
                "{mtu:?} write {size}"
            );
            // READ it back b -> a, to another place.
            send(
                &a.qp,
                2,
                SendOp::Read {
                    remote_addr: remote,
                    rkey: b.mr.rkey(),
                },
                a.mr.sge((len / 4) as u64 + 3, size as u32),
            );
            let wc = a.wait();
            assert_eq!(
                (wc.status, wc.opcode, wc.byte_len),
                (WcStatus::Success, WcOpcode::RdmaRead, size as u32)
            );
            assert_eq!(
                &a.get(len / 4 + 3, (len / 4 + 3 + size) - (len / 4 + 3))[..],
                &pattern(size, seed)[..],
                "{mtu:?} read {size}"
            );
            // SEND b -> a into a posted receive.
            a.qp.post_recv(&[RecvWr {
                wr_id: 7,
                sg_list: &[a.mr.sge((3 * len / 4) as u64, size as u32)],
            }])
            .unwrap();
            b.put(0, &pattern(size, seed ^ 0x5a));
            send(
                &b.qp,
                3,
                SendOp::SendWithImm {
                    imm: 0xfeed_0000 + round as u32,
                },
                b.mr.sge(0, size as u32),
            );
            assert_eq!(b.wait().status, WcStatus::Success);
            let wc = a.wait();
            assert_eq!(
                (wc.status, wc.opcode, wc.wr_id, wc.byte_len),
                (WcStatus::Success, WcOpcode::Recv, 7, size as u32)
            );
            assert_eq!(wc.imm_data, Some(0xfeed_0000 + round as u32));
            assert_eq!(
                &a.get(3 * len / 4, (3 * len / 4 + size) - (3 * len / 4))[..],
                &pattern(size, seed ^ 0x5a)[..],
                "{mtu:?} send {size}"
            );
        }
        assert_eq!(a.ctx.stats().rx_bad_icrc + b.ctx.stats().rx_bad_icrc, 0);
    }
}

#[test]
fn atomics_run_once_and_return_the_old_value() {
    let a = End::new(4096, false);
    let b = End::new(4096, true);
    connect(&a, &b, Mtu::Mtu1024);
    let target = b.mr.addr() + 64;
    for i in 0..10u64 {
        send(
            &a.qp,
            i,
            SendOp::FetchAdd {
                remote_addr: target,
                rkey: b.mr.rkey(),
                add: 5,
            },
            a.mr.sge(8 * i, 8),
        );
        let wc = a.wait();
        assert_eq!(
            (wc.status, wc.opcode),
            (WcStatus::Success, WcOpcode::FetchAdd)
        );
        let old = u64::from_ne_bytes(
            a.get(8 * i as usize, (8 * i as usize + 8) - (8 * i as usize))
                .try_into()
                .unwrap(),
        );
        assert_eq!(old, 5 * i);
    }
    send(
        &a.qp,
        20,
        SendOp::CompareSwap {
            remote_addr: target,
            rkey: b.mr.rkey(),
            compare: 50,
            swap: 777,
        },
        a.mr.sge(200, 8),
    );
    assert_eq!(a.wait().status, WcStatus::Success);
    assert_eq!(
        u64::from_ne_bytes(a.get(200, (208) - (200)).try_into().unwrap()),
        50
    );
    assert_eq!(
        u64::from_ne_bytes(b.get(64, (72) - (64)).try_into().unwrap()),
        777
    );
    // A failing compare leaves memory alone and still returns the value.
    send(
        &a.qp,
        21,
        SendOp::CompareSwap {
            remote_addr: target,
            rkey: b.mr.rkey(),
            compare: 1,
            swap: 2,
        },
        a.mr.sge(208, 8),
    );
    assert_eq!(a.wait().status, WcStatus::Success);
    assert_eq!(
        u64::from_ne_bytes(a.get(208, (216) - (208)).try_into().unwrap()),
        777
    );
    assert_eq!(
        u64::from_ne_bytes(b.get(64, (72) - (64)).try_into().unwrap()),
        777
    );
}

#[test]
fn write_with_immediate_completes_a_receive_at_the_target() {
    let a = End::new(8192, true);
    let b = End::new(8192, true);
    connect(&a, &b, Mtu::Mtu1024);
    b.qp.post_recv(&[RecvWr {
        wr_id: 99,
        sg_list: &[],
    }])
    .unwrap();
    a.put(0, &pattern(3000, 9));
    send(
        &a.qp,
        1,
        SendOp::WriteWithImm {
            remote_addr: b.mr.addr() + 100,
            rkey: b.mr.rkey(),
            imm: 42,
        },
        a.mr.sge(0, 3000),
    );
    assert_eq!(a.wait().status, WcStatus::Success);
    let wc = b.wait();
    assert_eq!(
        (wc.wr_id, wc.opcode, wc.byte_len, wc.imm_data),
        (99, WcOpcode::RecvRdmaWithImm, 3000, Some(42))
    );
    assert_eq!(&b.get(100, (3100) - (100))[..], &pattern(3000, 9)[..]);
}

#[test]
fn bad_rkeys_and_ranges_give_remote_access_errors_and_flush() {
    let a = End::new(8192, false);
    let b = End::new(8192, true);
    connect(&a, &b, Mtu::Mtu1024);
    // Beyond the end of b's region.
    send(
        &a.qp,
        1,
        SendOp::Write {
            remote_addr: b.mr.addr() + 8000,
            rkey: b.mr.rkey(),
        },
        a.mr.sge(0, 1000),
    );
    send(
        &a.qp,
        2,
        SendOp::Read {
            remote_addr: b.mr.addr(),
            rkey: b.mr.rkey(),
        },
        a.mr.sge(0, 10),
    );
    let wc = a.wait();
    assert_eq!((wc.wr_id, wc.status), (1, WcStatus::RemoteAccessError));
    let wc = a.wait();
    assert_eq!((wc.wr_id, wc.status), (2, WcStatus::WrFlushError));
    assert_eq!(a.qp.state(), provider::QpState::Error);
    // The target never wrote past its region.
    assert!(b.get(0, 8192).iter().all(|&x| x == 0));
}

#[test]
fn send_without_a_receive_is_retried_after_rnr() {
    let a = End::new(4096, false);
    let b = End::new(4096, false);
    connect(&a, &b, Mtu::Mtu1024);
    a.put(0, &pattern(100, 1));
    send(&a.qp, 5, SendOp::Send, a.mr.sge(0, 100));
    std::thread::sleep(Duration::from_millis(30));
    b.qp.post_recv(&[RecvWr {
        wr_id: 6,
        sg_list: &[b.mr.sge(0, 4096)],
    }])
    .unwrap();
    let wc = b.wait();
    assert_eq!((wc.wr_id, wc.byte_len), (6, 100));
    assert_eq!(a.wait().status, WcStatus::Success);
    assert_eq!(b.get(0, 100), pattern(100, 1));
}

#[test]
fn sixteen_mebibyte_messages_and_ipv6() {
    let len = 16 << 20;
    let make = |ip: IpAddr| End::with_device(ip, &any_port(), len, true);
    for ip in [LOCALHOST, IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)] {
        let a = make(ip);
        let b = make(ip);
        connect(&a, &b, Mtu::Mtu4096);
        let data = pattern(len, 77);
        a.put(0, &data);
        send(
            &a.qp,
            1,
            SendOp::Write {
                remote_addr: b.mr.addr(),
                rkey: b.mr.rkey(),
            },
            a.mr.sge(0, len as u32),
        );
        assert_eq!(a.wait().status, WcStatus::Success, "{ip}");
        assert!(b.get(0, len) == data, "{ip}: 16 MiB write");
        // Read it back into a's second half? Reuse the first half of a.
        a.put(0, &vec![0; len]);
        send(
            &a.qp,
            2,
            SendOp::Read {
                remote_addr: b.mr.addr(),
                rkey: b.mr.rkey(),
            },
            a.mr.sge(0, len as u32),
        );
        assert_eq!(a.wait().status, WcStatus::Success, "{ip}");
        assert!(a.get(0, len) == data, "{ip}: 16 MiB read");
        let (sa, sb) = (a.ctx.stats(), b.ctx.stats());
        assert_eq!(sa.rx_bad_icrc + sb.rx_bad_icrc, 0);
        assert!(sb.rx_packets >= (len / 4096) as u64);
    }
}

#[test]
fn unmapping_a_target_mid_stream_gives_a_remote_access_error() {
    let a = End::new(1 << 20, false);
    let b = End::new(1 << 20, true);
    connect(&a, &b, Mtu::Mtu1024);
    // Fault the first page in with a first write, then unmap half of b.
    send(
        &a.qp,
        1,
        SendOp::Write {
            remote_addr: b.mr.addr(),
            rkey: b.mr.rkey(),
        },
        a.mr.sge(0, 4096),
    );
    assert_eq!(a.wait().status, WcStatus::Success);
    let half = (b.buf.addr() + (1 << 19)) as *mut libc::c_void;
    // SAFETY: the second half of b's own mapping, not used afterwards.
    unsafe { AddressSpace::process().munmap(half, 1 << 19) }.unwrap();
    send(
        &a.qp,
        2,
        SendOp::Write {
            remote_addr: b.mr.addr() + (1 << 19) - 2048,
            rkey: b.mr.rkey(),
        },
        a.mr.sge(0, 8192),
    );
    send(&a.qp, 3, SendOp::Send, a.mr.sge(0, 8));
    let wc = a.wait();
    assert_eq!((wc.wr_id, wc.status), (2, WcStatus::RemoteAccessError));
    assert_eq!(
        (a.wait().wr_id, a.qp.state()),
        (3, provider::QpState::Error)
    );
    assert_eq!(b.qp.state(), provider::QpState::Error);
    // The mapped part before the hole was written in order until the
    // packet that hit the hole.
    let b_counters = b.mr.odp_counters();
    assert!(b_counters.invalidations >= 1);
    // The hole may be another test's mapping by now: unmap around it.
    let End { mr, buf, .. } = b;
    drop(mr);
    buf.unmap_around(&[(half as usize, 1 << 19)]);
}

#[test]
fn a_vanished_peer_gives_retry_exceeded_and_flushes_the_rest() {
    let a = End::new(8192, true);
    let b = End::new(8192, true);
    // About 4 ms per timeout (4.096 us << 10), two retries.
    let qp =
        a.pd.create_qp(&a.cq, &a.cq)
            .timeout(10)
            .retry_cnt(2)
            .build()
            .unwrap();
    qp.connect(&b.qp.endpoint(Mtu::Mtu1024)).unwrap();
    let (rkey, remote_addr) = (b.mr.rkey(), b.mr.addr());
    drop(b);
    for wr_id in [1, 2] {
        send(
            &qp,
            wr_id,
            SendOp::Write { remote_addr, rkey },
            a.mr.sge(0, 100),
        );
    }
    let wc = a.wait();
    assert_eq!((wc.wr_id, wc.status), (1, WcStatus::RetryExceeded));
    let wc = a.wait();
    assert_eq!((wc.wr_id, wc.status), (2, WcStatus::WrFlushError));
    assert_eq!(qp.state(), provider::QpState::Error);
    assert!(a.ctx.stats().tx_packets >= 3, "sent, then retried twice");
}

#[test]
fn a_receiver_that_never_posts_gives_rnr_retry_exceeded() {
    let a = End::new(4096, false);
    let b = End::new(4096, false);
    let qp = a.pd.create_qp(&a.cq, &a.cq).rnr_retry(2).build().unwrap();
    // b asks for the shortest RNR wait (code 1: 0.01 ms).
    let quick =
        b.pd.create_qp(&b.cq, &b.cq)
            .min_rnr_timer(1)
            .build()
            .unwrap();
    qp.connect(&quick.endpoint(Mtu::Mtu1024)).unwrap();
    quick.connect(&qp.endpoint(Mtu::Mtu1024)).unwrap();
    send(&qp, 7, SendOp::Send, a.mr.sge(0, 64));
    let wc = a.wait();
    assert_eq!((wc.wr_id, wc.status), (7, WcStatus::RnrRetryExceeded));
    assert_eq!(qp.state(), provider::QpState::Error);
    // Nothing was ever delivered.
    assert!(b.get(0, 4096).iter().all(|&x| x == 0));
}

/// Waits up to `ms` for `fd` to become readable.
fn readable(fd: i32, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut p, 1, ms) == 1 }
}

#[test]
fn the_completion_channel_signals_arrivals_in_an_empty_queue() {
    let a = End::new(4096, false);
    let b = End::new(4096, false);
    connect(&a, &b, Mtu::Mtu1024);
    let fd = a.cq.event_fd();
    assert!(!readable(fd, 0));
    let write = SendOp::Write {
        remote_addr: b.mr.addr(),
        rkey: b.mr.rkey(),
    };
    let mut counter = [0u8; 8];
    for round in 0..3 {
        // An event raced with the previous drain may be pending: consume it.
        if readable(fd, 0) {
            // SAFETY: reads 8 bytes into a local buffer from our eventfd.
            assert_eq!(unsafe { libc::read(fd, counter.as_mut_ptr().cast(), 8) }, 8);
        }
        assert!(!readable(fd, 0));
        send(&a.qp, round, write, a.mr.sge(0, 8));
        send(&a.qp, round + 100, write, a.mr.sge(0, 8));
        assert!(readable(fd, 10_000), "round {round}");
        // SAFETY: as above.
        assert_eq!(unsafe { libc::read(fd, counter.as_mut_ptr().cast(), 8) }, 8);
        // Drain: both completions, whether they came as one event or two.
        assert_eq!(a.wait().wr_id, round);
        assert_eq!(a.wait().wr_id, round + 100);
        let mut rest = [provider::WorkCompletion::default(); 4];
        assert_eq!(a.cq.poll(&mut rest), 0);
    }
}

#[test]
fn a_clean_stream_is_never_retransmitted() {
    // Two-packet WRITEs with a full window: the poster and the device's
    // thread (sending what each ACK releases) both build requester
    // packets; they must reach the wire in PSN order, or the responder
    // sees gaps and the requester goes back. (Sending what an ACK released
    // only at the end of the received batch made this fail in 2 of 3 runs,
    // 256-512 packets sent again.) A long timeout rules out retransmission
    // by timer on a slow machine.
    let a = End::new(1 << 16, true);
    let b = End::new(1 << 16, true);
    let qp =
        a.pd.create_qp(&a.cq, &a.cq)
            .timeout(20)
            .caps(provider::QpCaps {
                max_send_wr: 4096,
                max_recv_wr: 16,
            })
            .build()
            .unwrap();
    qp.connect(&b.qp.endpoint(Mtu::Mtu1024)).unwrap();
    b.qp.connect(&qp.endpoint(Mtu::Mtu1024)).unwrap();
    let before = a.ctx.stats().tx_packets;
    let count = 5000;
    let sge = [a.mr.sge(0, 2048)];
    let (mut posted, mut done) = (0, 0);
    let mut wc = vec![provider::WorkCompletion::default(); 64];
    while done < count {
        // Lists of up to 32, as a streaming application posts them.
        let wrs: Vec<SendWr<'_>> = (posted..count.min(done + 128))
            .take(32)
            .map(|i| SendWr {
                wr_id: i as u64,
                op: SendOp::Write {
                    remote_addr: b.mr.addr(),
                    rkey: b.mr.rkey(),
                },
                sg_list: &sge,
                signaled: true,
                solicited: false,
            })
            .collect();
        posted += wrs.len();
        if !wrs.is_empty() {
            qp.post_send(&wrs).unwrap();
        }
        let n = a.cq.poll_wait(&mut wc, std::time::Duration::from_secs(10));
        assert!(n > 0, "no completion within 10 s");
        assert!(wc[..n].iter().all(|c| c.status == WcStatus::Success));
        done += n;
    }
    assert_eq!(a.ctx.stats().tx_packets - before, 2 * count as u64);
}

#[test]
fn the_port_mtu_follows_the_interface_even_for_unlisted_loopback_addresses() {
    let lo: usize = std::fs::read_to_string("/sys/class/net/lo/mtu")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // As rxe: the largest IB MTU that fits with 80 bytes of headers.
    let want = [4096, 2048, 1024, 512]
        .into_iter()
        .find(|m| m + 80 <= lo)
        .unwrap_or(256);
    for last in [1, 2, 77] {
        let ip = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, last));
        let ctx = provider::Context::open_with_port(ip, 0).unwrap();
        let port = ctx.query_port();
        assert_eq!(port.active_mtu.bytes(), want, "{ip}");
        assert_eq!(port.max_mtu, Mtu::Mtu4096);
        assert!(ctx.query_device().odp_caps.rc_write);
    }
}
