//! Loopback throughput of the RoCE UDP transport: one sender thread, one
//! receiver thread, 4 KiB-payload RoCE packets, ICRC computed on send and
//! checked on receive. Compares plain sendmmsg/recvmmsg with UDP GSO on
//! send and with GSO + GRO. Run: `cargo run --release -p provider --example net_bench`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use provider::net::{OutPacket, RecvSlot, RoceSocket, SocketConfig};

const PAYLOAD: usize = 4096;
const BATCH: usize = 60;
const RUN: Duration = Duration::from_secs(2);
const ROUNDS: usize = 5;

fn packet(psn: u32) -> Vec<u8> {
    // SEND_ONLY BTH, payload, 4 spare bytes.
    let mut b = vec![0u8; 12 + PAYLOAD + 4];
    b[0] = 0x04;
    b[2] = 0xff;
    b[3] = 0xff;
    b[7] = 0x11;
    b[8..12].copy_from_slice(&(psn & 0xff_ffff).to_be_bytes());
    b
}

fn run(name: &str, tx_cfg: SocketConfig, rx_cfg: SocketConfig, rx_ip: &str) -> f64 {
    let rx_cfg = SocketConfig {
        recv_buffer: Some(32 << 20),
        ..rx_cfg
    };
    let rx = Arc::new(
        RoceSocket::bind_with(SocketAddr::new(rx_ip.parse().unwrap(), 0), rx_cfg).unwrap(),
    );
    let src = if rx_ip.contains(':') {
        "::1"
    } else {
        "127.0.0.1"
    };
    let tx = RoceSocket::bind_with(SocketAddr::new(src.parse().unwrap(), 0), tx_cfg).unwrap();
    let dest = rx.local_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let receiver = {
        let rx = rx.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let slot_size = if rx.config().gro { 65_536 } else { 8192 };
            let mut slots: Vec<RecvSlot> = (0..32).map(|_| RecvSlot::new(slot_size)).collect();
            let (mut good, mut bad, mut bytes) = (0u64, 0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let n = rx
                    .recv_batch(&mut slots, Some(Duration::from_millis(50)))
                    .unwrap();
                for s in &slots[..n] {
                    for (p, v) in s.packets() {
                        if v.is_good() {
                            good += 1;
                            bytes += p.len() as u64;
                        } else {
                            bad += 1;
                        }
                    }
                }
            }
            (good, bad, bytes)
        })
    };
    let mut bufs: Vec<Vec<u8>> = (0..BATCH as u32).map(packet).collect();
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < RUN {
        let mut p: Vec<OutPacket<'_>> = bufs.iter_mut().map(|b| OutPacket::new(dest, b)).collect();
        sent += tx.send_batch(&mut p).unwrap() as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    let (good, bad, bytes) = receiver.join().unwrap();
    let gbps = bytes as f64 / secs / 1e9;
    println!(
        "{name:<28} sent {:>8.0} pkt/s, delivered {:>8.0} pkt/s = {gbps:.2} GB/s (bad {bad}, lost {:.1}%, gso fallbacks {})",
        sent as f64 / secs,
        good as f64 / secs,
        100.0 * (sent - good.min(sent)) as f64 / sent as f64,
        tx.gso_fallbacks()
    );
    gbps
}

/// Cost of the receive-side check of a 1 KiB IPv4 packet: ID 0 (one
/// CRC) and a nonzero ID (one CRC plus the solver).
fn verify_cost() {
    use provider::net::{Ipv4IdPolicy, payload_icrc, verify};
    let src: SocketAddr = "198.18.0.3:49441".parse().unwrap();
    let dst: SocketAddr = "198.18.0.2:4791".parse().unwrap();
    for id in [0u16, 0x1234] {
        let mut p = packet(1);
        p.truncate(12 + 1024 + 4);
        let crc = payload_icrc(&src, &dst, id, &p).unwrap();
        let at = p.len() - 4;
        p[at..].copy_from_slice(&crc.to_le_bytes());
        let n = 1_000_000;
        let t = Instant::now();
        for _ in 0..n {
            assert!(
                std::hint::black_box(verify(
                    &src,
                    &dst,
                    std::hint::black_box(&p),
                    Ipv4IdPolicy::Solve
                ))
                .is_good()
            );
        }
        println!(
            "verify 1 KiB IPv4 packet, ID {id:#x}: {:.0} ns",
            t.elapsed().as_nanos() as f64 / n as f64
        );
    }
    let t = Instant::now();
    let mut x = 0u32;
    for i in 0..1_000_000u32 {
        x ^= provider::net::ipv4_id::solve_ipv4_id(
            std::hint::black_box(i.wrapping_mul(2_654_435_761)),
            1046,
        )
        .map_or(0, u32::from);
    }
    println!(
        "solve_ipv4_id alone: {:.0} ns ({x})",
        t.elapsed().as_nanos() as f64 / 1e6
    );
}

fn main() {
    verify_cost();
    let plain = SocketConfig {
        gso: false,
        ..SocketConfig::default()
    };
    let gso = SocketConfig::default();
    let gro = SocketConfig {
        gro: true,
        ..SocketConfig::default()
    };
    let v6 = SocketConfig {
        ipv6_zero_checksum: false,
        ..SocketConfig::default()
    };
    let v6gro = SocketConfig {
        gro: true,
        ..v6.clone()
    };
    let cases: [(&str, SocketConfig, SocketConfig, &str); 6] = [
        (
            "v4 sendmmsg/recvmmsg",
            plain.clone(),
            plain.clone(),
            "127.0.0.2",
        ),
        ("v4 GSO send", gso.clone(), plain.clone(), "127.0.0.2"),
        ("v4 GSO send + GRO recv", gso, gro, "127.0.0.2"),
        ("v6 zero csum, no GSO", plain.clone(), plain, "::1"),
        ("v6 csum, GSO send", v6.clone(), v6.clone(), "::1"),
        ("v6 csum, GSO + GRO", v6, v6gro, "::1"),
    ];
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for round in 0..ROUNDS {
        println!("round {round}");
        for (i, (name, t, r, ip)) in cases.iter().enumerate() {
            results[i].push(run(name, t.clone(), r.clone(), ip));
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let base4 = median(&mut results[0].clone());
    let base6 = median(&mut results[3].clone());
    println!("medians over {ROUNDS} rounds of {RUN:?}:");
    for (i, (name, ..)) in cases.iter().enumerate() {
        let m = median(&mut results[i]);
        let base = if i < 3 { base4 } else { base6 };
        println!("  {name:<28} {m:.2} GB/s  ({:.2}x)", m / base);
    }
}
