//! Small messages against what bare UDP sockets allow, each goal measured
//! as alternating rounds of the device and its bare-UDP counterpart in one
//! run (this machine's speed drifts by 2-3x from hour to hour, so only
//! ratios of neighbouring rounds mean something). Prints every round and
//! the median ratio; the latency rounds also print the tail of the
//! device's and the spinning pair's half round trips (99th and 99.9th
//! percentiles, as perftest reports them, and the slowest).
//!
//! - latency: the exchanges of perftest's `write_lat` (each side polls its
//!   memory for the other's 8-byte RDMA WRITE, then writes back and waits
//!   for its own signaled WRITE to complete) and `send_lat` (each side
//!   waits for the receive completion of the other's 8-byte SEND, then
//!   sends), typical (median) half round trip, against a ping-pong of
//!   36-byte datagrams between two single-threaded processes with blocking
//!   `send`/`recv` (the reference), one between two threads that
//!   spin on non-blocking receives (as the device's threads do), and one
//!   of the datagrams the device sends for these exchanges
//!   through its own socket layer, which shows what the kernel's UDP path
//!   costs them apart from what the queue pairs add;
//! - rate: 64-byte RDMA WRITEs streamed with up to 128 outstanding, in
//!   messages per second, against bare datagrams of the same size sent in
//!   GSO runs and received with GRO; the messages take turns within one
//!   page on both ends, as perftest's `ib_write_bw` places them (its cycle
//!   buffer), and a second figure has them go through an 8 MiB ring
//!   instead (each message a cache line not touched for a while, on both
//!   ends);
//! - multi-packet: RDMA WRITE bandwidth of 2-, 4-, 8- and 16-packet messages
//!   against one-packet messages, at MTU 4096; and the same ratio for
//!   datagrams sent in the device's packet sequence, once through the
//!   device's socket layer (ICRC sealed and judged) and once through the
//!   kernel's UDP sockets alone, which shows what the kernel's UDP path
//!   costs messages of several packets.
//!
//! `cargo bench -p provider --bench small_messages` (`SMALL_ROUNDS=n`
//! rounds, default 5, and `SMALL_MULTI_ROUNDS` for the multi-packet
//! comparison, default 41; `SMALL_ONLY=latency|rate|multi` for one goal;
//! `SMALL_ONLY=latency-device` and `rate-device` run the device's side
//! alone, to profile it; `SMALL_SIZE` sets the rate's message size, and
//! `SMALL_SPAN` the bytes its messages take turns in, default 4096;
//! `SMALL_PACKETS=n` measures multi-packet messages of `n` packets only,
//! 1 to 16).

use std::net::{SocketAddr, UdpSocket};
use std::time::Instant;

use provider::net::{GRO_SLOT_CAPACITY, OutPacket, RecvSlot, RoceSocket, SocketConfig};
use provider::{SendOp, SendWr, WcOpcode, WorkCompletion};

mod harness;

use harness::kernel_udp::KernelUdp;
use harness::sorted::Sorted;
use harness::*;

fn main() {
    // Cargo passes `--bench`; there are no options.
    if std::env::var_os(ECHO_PROCESS).is_some() {
        return echo_process();
    }
    let rounds = env_number("SMALL_ROUNDS", 5);
    let only = std::env::var("SMALL_ONLY").unwrap_or_default();
    let wanted = |goal: &str| only.is_empty() || only == goal;
    if wanted("latency") {
        latency(rounds);
    }
    if only == "latency-device" {
        // The device's side alone, for profiling it.
        let (a, b) = pair(false);
        for round in 0..rounds {
            let write = device_ping_pong(&a, &b, Exchange::Write);
            let send = device_ping_pong(&a, &b, Exchange::Send);
            println!("round {round}: device write {write:.2} us, send {send:.2} us");
        }
    }
    if wanted("rate") {
        message_rate(rounds);
    }
    if only == "rate-device" {
        let span = env_number("SMALL_SPAN", CYCLE_BUFFER);
        rate_device(rounds, env_number("SMALL_SIZE", 64), span);
    }
    if wanted("multi") {
        let packets = match std::env::var("SMALL_PACKETS") {
            // At most 16: a message's bare sequence must fit the 64
            // buffers of a batch.
            Ok(_) => vec![env_number("SMALL_PACKETS", 8).clamp(1, 16)],
            Err(_) => vec![2, 4, 8, 16],
        };
        multi_packet(env_number("SMALL_MULTI_ROUNDS", MULTI_ROUNDS), &packets);
    }
}

/// The number in the environment variable `name`, or `default`.
fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Every timed stream (the device's and the bare datagrams') follows an
/// untimed one of the same kind, this fraction of its length: a stream
/// that starts after the machine sat idle runs slower for its first
/// milliseconds (a 64 MiB stream of 64 KiB WRITEs after 100 ms idle: 0.6x
/// the warm rate; bare datagrams in its sequence: 0.7x), and the goals
/// are about streams in full flow, not about which measurement of a round
/// came first.
const WARM_UP_DIVISOR: usize = 4;

/// Seconds the device takes to stream `count` RDMA WRITEs of `size` bytes
/// from `a` to `b`, placed in turn within `span` bytes, after a warm-up.
fn device_stream(a: &End, b: &End, size: usize, count: usize, span: usize) -> f64 {
    let warm_up = count.div_ceil(WARM_UP_DIVISOR);
    stream_count(a, b, write_op, size, warm_up, false, span);
    let start = Instant::now();
    stream_count(a, b, write_op, size, count, false, span);
    start.elapsed().as_secs_f64()
}

/// The device's stream alone, for profiling it.
fn rate_device(rounds: usize, size: usize, span: usize) {
    let (a, b) = pair(false);
    for round in 0..rounds {
        let secs = device_stream(&a, &b, size, RATE_MESSAGES, span);
        let rate = RATE_MESSAGES as f64 / secs / 1e6;
        let bandwidth = (RATE_MESSAGES * size) as f64 / secs / 1e9;
        println!("round {round}: device {rate:.2} M/s, {bandwidth:.2} GB/s");
    }
}

fn median(values: &[f64]) -> f64 {
    Sorted::new(values.to_vec()).median()
}

/// Rounds up to which [`report`] prints one line per round; more are
/// printed as their ratios, [`RATIOS_PER_LINE`] to a line.
const ROUNDS_LISTED: usize = 10;
const RATIOS_PER_LINE: usize = 12;

/// Prints one goal's rounds (each a measurement and its reference,
/// named by `names`) and the median of their ratios (with its 95 %
/// interval when there are more than [`ROUNDS_LISTED`] rounds).
fn report(goal: &str, unit: &str, names: (&str, &str), rounds: &[(f64, f64)]) {
    println!("{goal}:");
    let ratios: Vec<f64> = rounds.iter().map(|(d, b)| d / b).collect();
    let devices: Vec<f64> = rounds.iter().map(|(d, _)| *d).collect();
    let many = rounds.len() > ROUNDS_LISTED;
    if many {
        for (line, chunk) in ratios.chunks(RATIOS_PER_LINE).enumerate() {
            let listed: Vec<String> = chunk.iter().map(|r| format!("{r:.2}")).collect();
            let from = line * RATIOS_PER_LINE;
            println!(
                "  ratios of rounds {from}-{}: {}",
                from + chunk.len() - 1,
                listed.join(" ")
            );
        }
    } else {
        for (i, (device, reference)) in rounds.iter().enumerate() {
            println!(
                "  round {i}: {} {device:.2} {unit}, {} {reference:.2} {unit}, ratio {:.2}",
                names.0,
                names.1,
                device / reference
            );
        }
    }
    let sorted = Sorted::new(ratios);
    let interval = if many {
        let (low, high) = sorted.median_interval();
        format!(" (95 % interval {low:.2}-{high:.2})")
    } else {
        String::new()
    };
    println!(
        "  median: {} {:.2} {unit}, ratio {:.2}{interval}",
        names.0,
        median(&devices),
        sorted.median()
    );
}

const PING_PONGS: usize = 20_000;

/// Times [`PING_PONGS`] round trips (`round_trip(i)`, `i` from 1), each
/// halved, in microseconds.
fn half_round_trips(mut round_trip: impl FnMut(u64)) -> Vec<f64> {
    (1..=PING_PONGS as u64)
        .map(|i| {
            let start = Instant::now();
            round_trip(i);
            start.elapsed().as_secs_f64() * 1e6 / 2.0
        })
        .collect()
}

fn latency(rounds: usize) {
    let (a, b) = pair(false);
    let mut blocking = Vec::new();
    let mut sends_blocking = Vec::new();
    let mut spinning = Vec::new();
    let mut sends = Vec::new();
    let mut transport = Vec::new();
    for _ in 0..rounds {
        let device = device_ping_pong(&a, &b, Exchange::Write);
        let spin = spinning_ping_pong();
        let processes = process_ping_pong();
        blocking.push((device, processes));
        spinning.push((device, spin));
        let send = device_ping_pong(&a, &b, Exchange::Send);
        sends_blocking.push((send, processes));
        sends.push((send, spin));
        transport.push((
            (device, transport_ping_pong(Exchange::Write)),
            (send, transport_ping_pong(Exchange::Send)),
        ));
    }
    report(
        "8-byte write_lat, typical half round trip (against blocking UDP calls between two processes)",
        "us",
        ("device", "bare UDP"),
        &blocking,
    );
    report(
        "8-byte send_lat against the same blocking rounds",
        "us",
        ("device", "bare UDP"),
        &sends_blocking,
    );
    // The device's threads spin (as write_lat's do); a bare pair that
    // spins too needs no scheduler wake-up either.
    report(
        "the same device rounds against a bare UDP ping-pong that spins on non-blocking calls",
        "us",
        ("device", "spinning bare UDP"),
        &spinning,
    );
    report(
        "8-byte send_lat against the same spinning bare UDP rounds",
        "us",
        ("device", "spinning bare UDP"),
        &sends,
    );
    // What the kernel's UDP path and the socket layer cost these exchanges
    // by themselves: the rest is the queue pairs' and the verbs' own.
    let (writes, sends): (Vec<_>, Vec<_>) = transport.into_iter().unzip();
    let names = ("device", "its datagrams alone");
    report(
        "write_lat rounds against a ping-pong of their datagrams through the device's socket layer",
        "us",
        names,
        &writes,
    );
    report(
        "send_lat rounds against a ping-pong of their datagrams through the device's socket layer",
        "us",
        names,
        &sends,
    );
}

/// Set in the environment of the bench binary run as the other process
/// of [`process_ping_pong`].
const ECHO_PROCESS: &str = "SMALL_ECHO_PROCESS";

/// The other process of [`process_ping_pong`]: prints the port of a
/// blocking UDP socket on loopback, then sends back [`PING_PONGS`]
/// datagrams to where they came from.
fn echo_process() {
    let socket = UdpSocket::bind((LOCALHOST, 0)).unwrap();
    println!("{}", socket.local_addr().unwrap().port());
    let mut buf = [0u8; 64];
    for _ in 0..PING_PONGS {
        let (n, from) = socket.recv_from(&mut buf).unwrap();
        socket.send_to(&buf[..n], from).unwrap();
    }
}

/// The reference exactly: a ping-pong of 36-byte datagrams with
/// blocking calls between two single-threaded processes (this binary run
/// again as the other); the median half round trip in microseconds.
fn process_ping_pong() -> f64 {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut echo = Command::new(std::env::current_exe().unwrap())
        .env(ECHO_PROCESS, "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut port = String::new();
    BufReader::new(echo.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let here = UdpSocket::bind((LOCALHOST, 0)).unwrap();
    here.connect((LOCALHOST, port.trim().parse::<u16>().unwrap()))
        .unwrap();
    let mut buf = [0u8; 64];
    let times = half_round_trips(|_| {
        here.send(&[7u8; 36]).unwrap();
        here.recv(&mut buf).unwrap();
    });
    assert!(echo.wait().unwrap().success());
    median(&times)
}

/// A ping-pong of the datagrams a latency tool's half round trip sends
/// (the request, 8 bytes of data, and the acknowledgement of the
/// previous one, in the device's order: after a WRITE in one GSO send,
/// ahead of a SEND), through the device's socket layer (GSO send, GRO
/// receive, ICRC sealed and checked) between two threads that spin as the
/// device's do, without queue pairs; the median half round trip in
/// microseconds.
fn transport_ping_pong(exchange: Exchange) -> f64 {
    // BTH, RETH or nothing, 8 bytes, ICRC; an ACK is BTH, AETH, ICRC.
    let lens: &[usize] = match exchange {
        Exchange::Write => &[12 + 16 + 8 + 4, 12 + 4 + 4],
        Exchange::Send => &[12 + 4 + 4, 12 + 8 + 4],
    };
    let config = SocketConfig {
        gro: true,
        ..SocketConfig::default()
    };
    let open = || RoceSocket::bind_with(SocketAddr::new(LOCALHOST, 0), config.clone()).unwrap();
    let (here, there) = (open(), open());
    let send = |from: &RoceSocket, to: SocketAddr| {
        let mut bufs = [[0u8; 64]; 2];
        let [first, second] = &mut bufs;
        let mut packets = [
            OutPacket::new(to, &mut first[..lens[0]]),
            OutPacket::new(to, &mut second[..lens[1]]),
        ];
        send_all(from, &mut packets);
    };
    let receive = |on: &RoceSocket, slots: &mut [RecvSlot]| {
        let mut got = 0;
        while got < lens.len() {
            let n = on.recv_batch(slots, None).unwrap();
            got += slots[..n]
                .iter()
                .map(|s| s.packets().count())
                .sum::<usize>();
            if n == 0 {
                std::thread::yield_now();
            }
        }
    };
    let slots = || -> Vec<RecvSlot> { (0..4).map(|_| RecvSlot::new(GRO_SLOT_CAPACITY)).collect() };
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut slots = slots();
            for _ in 0..PING_PONGS {
                receive(&there, &mut slots);
                send(&there, here.local_addr());
            }
        });
        let mut slots = slots();
        let times = half_round_trips(|_| {
            send(&here, there.local_addr());
            receive(&here, &mut slots);
        });
        median(&times)
    })
}

/// The exchange of a latency tool.
#[derive(Clone, Copy, PartialEq)]
enum Exchange {
    /// `write_lat`: each side polls its memory for the peer's WRITE.
    Write,
    /// `send_lat`: each side waits for the receive completion of the
    /// peer's SEND.
    Send,
}

/// The word at `offset` of `end`'s region.
fn word(end: &End, offset: usize) -> *mut u64 {
    (end.mr.addr() as usize + offset) as *mut u64
}

/// Writes `value` into `from`'s staging word and sends it to `to` as the
/// tools do: a signaled 8-byte WRITE into word 0 of `to` (or a SEND),
/// then a wait for its completion.
fn post_word(from: &End, to: &End, value: u64, exchange: Exchange) {
    // SAFETY: offset 64 of the region is this side's staging word, which
    // only this thread writes.
    unsafe { word(from, 64).write_volatile(value) };
    let op = match exchange {
        Exchange::Write => write_op(to, 0),
        Exchange::Send => SendOp::Send,
    };
    from.qp
        .post_send(&[SendWr {
            wr_id: value,
            op,
            sg_list: &[from.mr.sge(64, 8)],
            signaled: true,
            solicited: false,
        }])
        .unwrap();
    if exchange == Exchange::Write {
        let mut wc = [WorkCompletion::default()];
        reap(&from.cq, &mut wc);
    }
}

/// Waits for the peer's `value`: spins until word 0 of `end` holds it,
/// receiving for the device in this thread meanwhile (as `write_lat`
/// does), or waits for completions until the receive of its SEND (as
/// `send_lat` does) and posts a new receive.
fn await_word(end: &End, value: u64, exchange: Exchange) {
    if exchange == Exchange::Send {
        let mut wc = [WorkCompletion::default()];
        while {
            reap(&end.cq, &mut wc);
            wc[0].opcode != WcOpcode::Recv
        } {}
        repost(end, 1, 8);
        return;
    }
    // SAFETY: word 0 is in the region; the device writes it, this thread
    // only reads it.
    while unsafe { word(end, 0).read_volatile() } != value {
        // Nothing came in: let the other threads have the CPU (two cores
        // for two spinning threads and two device threads).
        if end.ctx.progress() == 0 {
            std::thread::yield_now();
        }
    }
}

/// A latency tool's exchange, `a` first; the median half round trip in
/// microseconds (the time between `a`'s posts, halved, as perftest
/// reports it).
fn device_ping_pong(a: &End, b: &End, exchange: Exchange) -> f64 {
    // SAFETY: both words are in the regions; no transfer is in flight.
    unsafe {
        word(a, 0).write_volatile(0);
        word(b, 0).write_volatile(0);
    }
    if exchange == Exchange::Send {
        repost(a, 1, 8);
        repost(b, 1, 8);
    }
    let base = 1 << 32;
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 1..=PING_PONGS as u64 {
                await_word(b, base + i, exchange);
                post_word(b, a, base + i, exchange);
            }
        });
        let times = half_round_trips(|i| {
            post_word(a, b, base + i, exchange);
            await_word(a, base + i, exchange);
        });
        let name = match exchange {
            Exchange::Write => "device write_lat",
            Exchange::Send => "device send_lat",
        };
        typical_after_tail(name, &times)
    })
}

/// The median of `times` (half round trips in microseconds), after
/// printing their tail as perftest reports it (99th and 99.9th
/// percentiles) and the slowest, under `name`.
fn typical_after_tail(name: &str, times: &[f64]) -> f64 {
    let sorted = Sorted::new(times.to_vec());
    println!(
        "  ({name}: 99 % {:.1} us, 99.9 % {:.1} us, slowest {:.0} us)",
        sorted.at(0.99),
        sorted.at(0.999),
        sorted.at(1.0)
    );
    sorted.median()
}

/// A ping-pong of 36-byte datagrams between two threads whose receives do
/// not block but are retried until a datagram is there (yielding the CPU
/// between tries, as the device's waits do); the median half round trip in
/// microseconds.
fn spinning_ping_pong() -> f64 {
    let here = UdpSocket::bind((LOCALHOST, 0)).unwrap();
    let there = UdpSocket::bind((LOCALHOST, 0)).unwrap();
    here.connect(there.local_addr().unwrap()).unwrap();
    there.connect(here.local_addr().unwrap()).unwrap();
    here.set_nonblocking(true).unwrap();
    there.set_nonblocking(true).unwrap();
    let recv = |socket: &UdpSocket, buf: &mut [u8]| loop {
        match socket.recv(buf) {
            Ok(n) => return n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::yield_now(),
            Err(e) => panic!("recv: {e}"),
        }
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut buf = [0u8; 64];
            for _ in 0..PING_PONGS {
                let n = recv(&there, &mut buf);
                there.send(&buf[..n]).unwrap();
            }
        });
        let mut buf = [0u8; 64];
        let times = half_round_trips(|_| {
            here.send(&[7u8; 36]).unwrap();
            recv(&here, &mut buf);
        });
        typical_after_tail("spinning bare pair", &times)
    })
}

const RATE_MESSAGES: usize = 200_000;

/// The 64-byte message rate against bare datagrams, with perftest's
/// placement ([`CYCLE_BUFFER`]) and through the whole region.
fn message_rate(rounds: usize) {
    let (a, b) = pair(false);
    let udp = BareUdp::new();
    let mut bufs = write_only_buffers();
    let device = |span| RATE_MESSAGES as f64 / device_stream(&a, &b, 64, RATE_MESSAGES, span) / 1e6;
    let (mut cycled, mut ringed) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        // A window the receive buffer holds, so nothing is dropped.
        let bare_run = |count| udp.run(count, 64, 16_384, &mut bufs);
        let bare = RATE_MESSAGES as f64 / warmed_seconds(bare_run, RATE_MESSAGES) / 1e6;
        cycled.push((device(CYCLE_BUFFER), bare));
        ringed.push((device(REGION), bare));
    }
    let names = ("device", "bare UDP");
    report("64-byte RDMA WRITE message rate", "M/s", names, &cycled);
    let goal = "64-byte RDMA WRITEs through an 8 MiB ring on both ends";
    report(goal, "M/s", names, &ringed);
}

/// Bytes per size and round in the multi-packet comparison.
const MULTI_BYTES: usize = 64 << 20;

/// Rounds of the multi-packet comparison. A round's four streams take
/// about 20 ms each, and five rounds' medians swung from run to run
/// (8-packet messages: 0.86-0.92 of the bare ratio in four runs of the
/// same code); 41 rounds' medians stayed within 0.91-0.96 over fourteen.
const MULTI_ROUNDS: usize = 41;

/// The requester's window in packets.
const UNACKED_PACKETS: usize = 128;

/// Multi-packet against one-packet RDMA WRITE bandwidth, and the same
/// ratio for two bare streams of datagrams in the device's packet sequence
/// (FIRST with a RETH, then MIDDLEs and a LAST 16 bytes shorter: the
/// kernel's GSO cuts a run at every FIRST, while one-packet messages of
/// equal size share runs of up to 15): one through the device's socket
/// layer (ICRC sealed and judged), one through the kernel's UDP sockets
/// alone ([`KernelUdp`]). They show what multi-packet messages cost apart
/// from what the device adds.
fn multi_packet(rounds: usize, packet_counts: &[usize]) {
    let (a, b) = pair(false);
    let udp = BareUdp::new();
    let kernel = KernelUdp::new();
    let device = |size: usize| {
        MULTI_BYTES as f64 / device_stream(&a, &b, size, MULTI_BYTES / size, REGION) / 1e9
    };
    // The device's window: its requester has at most 128 packets
    // unacknowledged (rxe's RXE_MAX_UNACKED_PSNS), whatever the message
    // size; the one-packet streams have the same.
    let bare = |packets: usize| {
        let mut bufs = write_message_buffers(packets);
        let run = |messages| udp.run_messages(messages, packets, UNACKED_PACKETS, &mut bufs);
        MULTI_BYTES as f64 / warmed_seconds(run, MULTI_BYTES / (packets * MTU)) / 1e9
    };
    let sockets_alone = |packets: usize| {
        let mut bufs = write_message_buffers(packets);
        let lens = write_sequence(packets);
        let run =
            |messages| kernel.run_lengths(&lens, messages * packets, UNACKED_PACKETS, &mut bufs);
        MULTI_BYTES as f64 / warmed_seconds(run, MULTI_BYTES / (packets * MTU)) / 1e9
    };
    for &packets in packet_counts {
        let size = packets * MTU;
        let mut device_rounds = Vec::new();
        let mut bare_rounds = Vec::new();
        let mut kernel_rounds = Vec::new();
        for round in 0..rounds {
            // Which size goes first alternates from round to round.
            let multi_first = round % 2 == 0;
            device_rounds.push(in_order(multi_first, || device(size), || device(MTU)));
            bare_rounds.push(in_order(multi_first, || bare(packets), || bare(1)));
            kernel_rounds.push(in_order(
                multi_first,
                || sockets_alone(packets),
                || sockets_alone(1),
            ));
        }
        let names = ("multi-packet", "one-packet");
        let goal = format!("{packets}-packet RDMA WRITEs ({size} B)");
        report(&goal, "GB/s", names, &device_rounds);
        let goal = format!("bare datagrams in the sequence of {packets}-packet WRITEs");
        report(&goal, "GB/s", names, &bare_rounds);
        let goal = format!("the kernel's sockets alone, same sequence ({packets}-packet)");
        report(&goal, "GB/s", names, &kernel_rounds);
        let goal = format!("{packets}-packet messages: the device's ratio against the bare one");
        report(
            &goal,
            "",
            ("device", "bare"),
            &relative(&device_rounds, &bare_rounds),
        );
        let goal = format!("{packets}-packet messages: the device's ratio against the sockets'");
        let names = ("device", "sockets");
        report(&goal, "", names, &relative(&device_rounds, &kernel_rounds));
    }
}

/// Per round, the multi- to one-packet ratio of `measured` and of
/// `reference`.
fn relative(measured: &[(f64, f64)], reference: &[(f64, f64)]) -> Vec<(f64, f64)> {
    measured
        .iter()
        .zip(reference)
        .map(|((dm, d1), (bm, b1))| (dm / d1, bm / b1))
        .collect()
}

/// Seconds `run(count)` takes, after an untimed `run` of a
/// [`WARM_UP_DIVISOR`]th of `count`.
fn warmed_seconds(mut run: impl FnMut(usize), count: usize) -> f64 {
    run(count.div_ceil(WARM_UP_DIVISOR));
    let start = Instant::now();
    run(count);
    start.elapsed().as_secs_f64()
}

/// `(first(), second())`, `second` measured first unless `first_first`.
fn in_order(
    first_first: bool,
    first: impl FnOnce() -> f64,
    second: impl FnOnce() -> f64,
) -> (f64, f64) {
    if first_first {
        let a = first();
        (a, second())
    } else {
        let b = second();
        (first(), b)
    }
}
