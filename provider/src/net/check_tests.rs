//! The receive-side ICRC check against real kernel-rxe frames
//! (tests/data/rxe-7.3.4-perftest.pcap) and synthetic IPv4 IDs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::check::{seal_segments, verify_group};
use super::testutil::send_only;
use super::{IcrcVerdict, Ipv4IdPolicy, payload_icrc, seal, verify};
use crate::wire::golden;
use crate::wire::icrc::{GROUP, IcrcGroup};
use crate::wire::{IpHeader, icrc_of_udp_payload};

fn ipv4_id(ip: &IpHeader<'_>) -> Option<u16> {
    ip.ipv4_id()
}

/// BTH byte 4 (FECN, BECN, reserved) is masked by the ICRC by design:
/// flipping its bits changes nothing, for kernel rxe as for us.
const MASKED_BITS: std::ops::Range<usize> = 32..40;

/// A random bit of a `len`-byte payload outside the masked byte.
fn covered_bit(x: &mut u64, len: usize) -> usize {
    loop {
        let bit = (next(x) % (len as u64 * 8)) as usize;
        if !MASKED_BITS.contains(&bit) {
            return bit;
        }
    }
}

/// Xorshift for reproducible positions.
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

#[test]
fn every_capture_frame_is_accepted_and_its_ipv4_id_recovered() {
    let frames = golden::frames();
    assert_eq!(frames.len(), 615);
    let (mut v4, mut v6, mut nonzero) = (0, 0, 0);
    for (i, f) in frames.iter().enumerate() {
        // What a socket sees: addresses, ports and the UDP payload, no IP
        // header. The verdict must agree with the full-header check.
        let (found, expected) = icrc_of_udp_payload(f.ip, f.udp, f.payload).unwrap();
        assert_eq!(found, expected, "frame {i}: capture itself");
        let verdict = verify(&f.src, &f.dst, f.payload, Ipv4IdPolicy::Solve);
        match ipv4_id(&f.ip) {
            Some(0) => {
                assert_eq!(verdict, IcrcVerdict::Good, "frame {i}");
                v4 += 1;
            }
            Some(id) => {
                assert_eq!(verdict, IcrcVerdict::GoodWithIpId(id), "frame {i}");
                // Without solving, the same frame is Bad: the ID matters.
                assert!(matches!(
                    verify(&f.src, &f.dst, f.payload, Ipv4IdPolicy::UpTo(0)),
                    IcrcVerdict::Bad { .. }
                ));
                v4 += 1;
                nonzero += 1;
            }
            None => {
                assert_eq!(verdict, IcrcVerdict::Good, "frame {i}");
                v6 += 1;
            }
        }
    }
    assert_eq!((v4, v6), (500, 115));
    assert_eq!(nonzero, 500, "kernel rxe's IPv4 IDs are all nonzero here");
}

#[test]
fn a_flipped_bit_in_a_capture_frame_is_bad() {
    let mut x = 0x1234_5678_9abc_def0u64;
    let (mut flips, mut bad) = (0, 0);
    for f in golden::frames() {
        // Three random single-bit flips per frame, anywhere from the BTH to
        // the ICRC trailer.
        for _ in 0..3 {
            let mut p = f.payload.to_vec();
            let bit = covered_bit(&mut x, p.len());
            p[bit / 8] ^= 1 << (bit % 8);
            flips += 1;
            match verify(&f.src, &f.dst, &p, Ipv4IdPolicy::Solve) {
                IcrcVerdict::Bad { .. } => bad += 1,
                other => {
                    // Only possible for IPv4: a 1-in-65536 alias of some ID.
                    assert!(f.src.is_ipv4(), "IPv6 flip accepted: {other:?}");
                    eprintln!("flip of bit {bit} accepted as {other:?}");
                }
            }
        }
    }
    assert_eq!(flips, 1845);
    assert_eq!(bad, flips, "no false accept among these flips");
}

/// Every single-bit flip in some real frames: counts those the 16-bit
/// residual check misses (IPv4) and checks IPv6 misses none.
#[test]
fn exhaustive_single_bit_flips_on_sample_frames() {
    let frames = golden::frames();
    let mut report = Vec::new();
    let mut seen_v4_lens = Vec::new();
    let mut seen_v6 = false;
    for f in &frames {
        let v4 = f.src.is_ipv4();
        if v4 && (seen_v4_lens.contains(&f.payload.len()) || seen_v4_lens.len() >= 4) {
            continue;
        }
        if !v4 && seen_v6 {
            continue;
        }
        if v4 {
            seen_v4_lens.push(f.payload.len());
        } else {
            seen_v6 = true;
        }
        let mut missed = 0;
        let bits = f.payload.len() * 8 - MASKED_BITS.len();
        let mut p = f.payload.to_vec();
        for bit in (0..bits).filter(|b| !MASKED_BITS.contains(b)) {
            p[bit / 8] ^= 1 << (bit % 8);
            if verify(&f.src, &f.dst, &p, Ipv4IdPolicy::Solve).is_good() {
                missed += 1;
            }
            p[bit / 8] ^= 1 << (bit % 8);
        }
        if !v4 {
            assert_eq!(missed, 0, "IPv6: all single-bit errors detected");
        }
        report.push((if v4 { "v4" } else { "v6" }, f.payload.len(), bits, missed));
    }
    eprintln!("single-bit flips (family, payload bytes, bits, undetected): {report:?}");
    assert!(report.len() >= 3);
    // The 16-bit residual misses a given single-bit position with about
    // 2^-16 odds: at most a handful over all sampled bits.
    let total_missed: usize = report.iter().map(|r| r.3).sum();
    let total_bits: usize = report.iter().map(|r| r.2).sum();
    assert!(total_missed * 65_536 <= total_bits * 8, "{report:?}");
}

#[test]
fn synthetic_packets_with_every_ipv4_id_are_solved() {
    let src = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 3)), 0xc121);
    let dst = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)), 4791);
    let mut pkt = send_only(0x9e_323c, 17);
    for id in 0..=u16::MAX {
        let crc = payload_icrc(&src, &dst, id, &pkt).unwrap();
        let at = pkt.len() - 4;
        pkt[at..].copy_from_slice(&crc.to_le_bytes());
        let want = if id == 0 {
            IcrcVerdict::Good
        } else {
            IcrcVerdict::GoodWithIpId(id)
        };
        assert_eq!(verify(&src, &dst, &pkt, Ipv4IdPolicy::Solve), want, "{id}");
    }
    // Larger packets, a spread of IDs, and a flipped bit each.
    let mut x = 77u64;
    for len in [0usize, 1, 255, 1024, 4096, 9000, 65_000] {
        let mut pkt = send_only(len as u32, len);
        for _ in 0..16 {
            let id = next(&mut x) as u16;
            let crc = payload_icrc(&src, &dst, id, &pkt).unwrap();
            let at = pkt.len() - 4;
            pkt[at..].copy_from_slice(&crc.to_le_bytes());
            let v = verify(&src, &dst, &pkt, Ipv4IdPolicy::Solve);
            assert!(v == IcrcVerdict::GoodWithIpId(id) || (id == 0 && v == IcrcVerdict::Good));
            let bit = covered_bit(&mut x, pkt.len());
            pkt[bit / 8] ^= 1 << (bit % 8);
            assert!(
                matches!(
                    verify(&src, &dst, &pkt, Ipv4IdPolicy::Solve),
                    IcrcVerdict::Bad { .. }
                ),
                "len {len} id {id} bit {bit}"
            );
            pkt[bit / 8] ^= 1 << (bit % 8);
        }
    }
}

#[test]
fn garbage_is_judged_without_panicking() {
    let src = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1);
    let dst = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 2);
    for len in 0..16 {
        assert_eq!(
            verify(&src, &dst, &vec![0xab; len], Ipv4IdPolicy::Solve),
            IcrcVerdict::TooShort
        );
    }
    let v6 = SocketAddr::new("::1".parse().unwrap(), 2);
    assert_eq!(
        verify(&src, &v6, &[0u8; 40], Ipv4IdPolicy::Solve),
        IcrcVerdict::Unverifiable
    );
    let mut x = 5u64;
    for _ in 0..5000 {
        let len = (next(&mut x) % 200) as usize;
        let junk: Vec<u8> = (0..len).map(|_| next(&mut x) as u8).collect();
        let _ = verify(&src, &dst, &junk, Ipv4IdPolicy::Solve);
        let _ = verify(&v6, &v6, &junk, Ipv4IdPolicy::Solve);
    }
}

/// Payload lengths around the ICRC group's one-piece bound (a rest of 128
/// bytes after the BTH) and a GSO run's largest segments.
const GROUP_TEST_LENS: [usize; 8] = [0, 1, 60, 112, 113, 116, 1024, 4096];

#[test]
fn a_gso_run_is_sealed_as_its_segments_would_be_one_by_one() {
    let v4 = |a, port| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, a)), port);
    let v6 = |a: &str, port| SocketAddr::new(a.parse().unwrap(), port);
    for (src, dst) in [
        (v4(1, 0xc000), v4(2, 4791)),
        (v6("fd00::1", 0xc001), v6("fd00::2", 4791)),
    ] {
        for count in [1, 2, 3, 7, 8, 9, 20] {
            let mut run: Vec<Vec<u8>> = (0..count)
                .map(|k| send_only(k as u32, GROUP_TEST_LENS[k % GROUP_TEST_LENS.len()]))
                .collect();
            let mut one_by_one = run.clone();
            let dests = vec![dst; count];
            seal_segments(&src, dests.iter().zip(run.iter_mut().map(|p| &mut p[..]))).unwrap();
            for (id, p) in one_by_one.iter_mut().enumerate() {
                seal(&src, &dst, id as u16, p).unwrap();
            }
            assert_eq!(run, one_by_one, "{src} x{count}");
        }
    }
}

#[test]
fn sealing_a_run_stops_at_a_packet_that_cannot_travel() {
    let src = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0xc000);
    let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 4791);
    let v6 = SocketAddr::new("::1".parse().unwrap(), 4791);
    for bad in [0, 3, 8, 11] {
        let mut run: Vec<Vec<u8>> = (0..12).map(|k| send_only(k, 40)).collect();
        let mut dests = vec![v4; 12];
        dests[bad] = v6;
        let before = run.clone();
        let sealed = seal_segments(&src, dests.iter().zip(run.iter_mut().map(|p| &mut p[..])));
        assert!(sealed.is_err(), "bad packet {bad}");
        for (k, (p, old)) in run.iter().zip(&before).enumerate() {
            if k < bad {
                let v = verify(&src, &v4, p, Ipv4IdPolicy::Solve);
                assert!(v.is_good(), "packet {k} before the bad {bad}: {v:?}");
            } else {
                assert_eq!(p, old, "packet {k} from the bad {bad} on is untouched");
            }
        }
    }
}

#[test]
fn a_group_judges_each_payload_as_it_would_be_judged_alone() {
    let src = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 0xc000);
    let dst = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 4791);
    let mut x = 11u64;
    let mut payloads: Vec<Vec<u8>> = Vec::new();
    for (k, len) in GROUP_TEST_LENS.into_iter().enumerate() {
        let mut p = send_only(k as u32, len);
        // IDs 0 and others; every third packet corrupted.
        seal(&src, &dst, (k as u16) * 1000, &mut p).unwrap();
        if k % 3 == 2 {
            let bit = covered_bit(&mut x, p.len());
            p[bit / 8] ^= 1 << (bit % 8);
        }
        payloads.push(p);
    }
    payloads.insert(2, vec![0xab; 15]); // too short
    payloads.insert(5, Vec::new());
    // One group for every chunk: each judgement leaves it empty.
    let mut group = IcrcGroup::<GROUP>::new();
    for policy in [Ipv4IdPolicy::Solve, Ipv4IdPolicy::UpTo(0)] {
        for chunk in payloads.chunks(GROUP) {
            let slices: Vec<&[u8]> = chunk.iter().map(|p| &p[..]).collect();
            let mut verdicts = [IcrcVerdict::Unverifiable; GROUP];
            verify_group(&mut group, &src, &dst, &slices, policy, &mut verdicts);
            let alone: Vec<IcrcVerdict> = slices
                .iter()
                .map(|p| verify(&src, &dst, p, policy))
                .collect();
            assert_eq!(verdicts[..slices.len()], alone[..], "{policy:?}");
        }
    }
    // A family the socket cannot have received from: each one unverifiable.
    let v6 = SocketAddr::new("::1".parse().unwrap(), 4791);
    let slices: Vec<&[u8]> = payloads.iter().take(GROUP).map(|p| &p[..]).collect();
    let mut verdicts = [IcrcVerdict::Good; GROUP];
    verify_group(
        &mut group,
        &src,
        &v6,
        &slices,
        Ipv4IdPolicy::Solve,
        &mut verdicts,
    );
    for (p, v) in slices.iter().zip(verdicts) {
        let want = if p.len() < 16 {
            IcrcVerdict::TooShort
        } else {
            IcrcVerdict::Unverifiable
        };
        assert_eq!(v, want);
    }
}
