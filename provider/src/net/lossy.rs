//! Seeded fault injection on send, for the engine's tests: drop, duplicate,
//! reorder and corrupt packets at configured rates, deterministically for a
//! given seed and sequence of sends.

use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use super::packet::{OutPacket, RecvSlot};
use super::socket::RoceSocket;
use super::{NetError, Transport};

/// Fault rates, each a probability per packet in 0..=1, and the seed. A
/// packet is first dropped or not; a kept one is then corrupted, held back
/// (unless one already is) and, if not held back, duplicated, each
/// independently at its rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Lossy {
    /// The packet is not sent.
    pub drop: f64,
    /// The packet is sent twice, back to back.
    pub duplicate: f64,
    /// The packet is held back and sent after the next one (or at
    /// [`LossySocket::flush`]).
    pub reorder: f64,
    /// One bit of the sealed packet (BTH to ICRC, except BTH byte 4 whose
    /// FECN/BECN bits the ICRC deliberately masks) is flipped, so the
    /// receiver sees a bad ICRC (a receiver under
    /// [`super::Ipv4IdPolicy::Solve`] may instead, with odds of about
    /// 2^-16, see a consistent wrong IPv4 ID).
    pub corrupt: f64,
    /// Seed of the generator.
    pub seed: u64,
}

impl Lossy {
    /// No faults.
    pub fn none(seed: u64) -> Self {
        Self {
            drop: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            corrupt: 0.0,
            seed,
        }
    }
}

/// What the wrapper did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LossyStats {
    /// Packets the caller asked to send.
    pub offered: u64,
    /// Of those, dropped.
    pub dropped: u64,
    /// Extra copies sent.
    pub duplicated: u64,
    /// Packets held back past the next one.
    pub reordered: u64,
    /// Packets sent with a flipped bit.
    pub corrupted: u64,
    /// Datagrams handed to the socket.
    pub sent: u64,
}

/// BTH byte 4 (FECN, BECN, reserved): not covered by the ICRC.
const MASKED_BYTE: usize = 4;

/// splitmix64: small, fast and plenty for fault decisions.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Where a packet goes: (UDP source port, destination).
type Route = (u16, SocketAddr);

#[derive(Debug)]
struct State {
    rng: Rng,
    stats: LossyStats,
    /// A packet held back for reordering.
    held: Option<(Route, Vec<u8>)>,
    /// Reused copies of outgoing packets.
    pool: Vec<Vec<u8>>,
    /// Outgoing order: (route, pool index).
    order: Vec<(Route, usize)>,
}

/// A [`RoceSocket`] whose sends suffer seeded faults. Receiving is passed
/// through. Sends copy every packet (test use only) and never use GSO.
#[derive(Debug)]
pub struct LossySocket {
    inner: RoceSocket,
    faults: Lossy,
    state: Mutex<State>,
}

impl LossySocket {
    /// Wraps `inner`.
    ///
    /// # Errors
    /// [`NetError::BadRate`] if a rate is not within 0..=1.
    pub fn new(inner: RoceSocket, faults: Lossy) -> Result<Self, NetError> {
        for (name, value) in [
            ("drop", faults.drop),
            ("duplicate", faults.duplicate),
            ("reorder", faults.reorder),
            ("corrupt", faults.corrupt),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(NetError::BadRate { name, value });
            }
        }
        Ok(Self {
            inner,
            faults,
            state: Mutex::new(State {
                rng: Rng(faults.seed),
                stats: LossyStats::default(),
                held: None,
                pool: Vec::new(),
                order: Vec::new(),
            }),
        })
    }

    /// The wrapped socket.
    pub fn inner(&self) -> &RoceSocket {
        &self.inner
    }

    /// The configured faults.
    pub fn faults(&self) -> Lossy {
        self.faults
    }

    /// Counters so far.
    pub fn stats(&self) -> LossyStats {
        self.lock().stats
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves counters at worst stale.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends the packet held back for reordering, if any.
    ///
    /// # Errors
    /// The socket's send error.
    pub fn flush(&self) -> io::Result<()> {
        let mut st = self.lock();
        if let Some(((source_port, dest), mut buf)) = st.held.take() {
            let mut p = [OutPacket::from_port(source_port, dest, &mut buf)];
            send_all(&self.inner, &mut p)?;
            st.stats.sent += 1;
        }
        Ok(())
    }

    fn send_faulty(&self, packets: &mut [OutPacket<'_>]) -> io::Result<usize> {
        let mut guard = self.lock();
        let st = &mut *guard;
        st.order.clear();
        let mut used = 0;
        let f = self.faults;
        // Seal (and so validate) everything before any fault is drawn: an
        // invalid packet fails the call without consuming randomness.
        for p in packets.iter_mut() {
            self.inner.seal(p)?;
        }
        for p in packets.iter() {
            st.stats.offered += 1;
            // Always draw the same numbers per packet, whatever happens.
            let (d, c, r, u, bit) = (
                st.rng.unit(),
                st.rng.unit(),
                st.rng.unit(),
                st.rng.unit(),
                st.rng.next(),
            );
            if d < f.drop {
                st.stats.dropped += 1;
                continue;
            }
            let copy = take_buf(&mut st.pool, &mut used, p.buf);
            if c < f.corrupt {
                let b = &mut st.pool[copy];
                // Any bit but those of BTH byte 4, which the ICRC masks.
                let bits = (b.len() as u64 - 1) * 8;
                let mut bit = (bit % bits) as usize;
                if bit >= MASKED_BYTE * 8 {
                    bit += 8;
                }
                b[bit / 8] ^= 1 << (bit % 8);
                st.stats.corrupted += 1;
            }
            if r < f.reorder && st.held.is_none() {
                let held = std::mem::take(&mut st.pool[copy]);
                st.held = Some(((p.source_port, p.dest), held));
                st.stats.reordered += 1;
                continue;
            }
            st.order.push(((p.source_port, p.dest), copy));
            if u < f.duplicate {
                let bytes = std::mem::take(&mut st.pool[copy]);
                let dup = take_buf(&mut st.pool, &mut used, &bytes);
                st.pool[copy] = bytes;
                st.order.push(((p.source_port, p.dest), dup));
                st.stats.duplicated += 1;
            }
            if let Some((route, bytes)) = st.held.take() {
                let held = take_buf(&mut st.pool, &mut used, &bytes);
                st.order.push((route, held));
            }
        }
        // Hand the copies to the socket in the chosen order. Each entry has
        // its own pool buffer, so the &mut borrows do not overlap.
        let mut bufs: Vec<Option<&mut Vec<u8>>> = st.pool.iter_mut().map(Some).collect();
        let mut out: Vec<OutPacket<'_>> = Vec::with_capacity(st.order.len());
        for &((source_port, dest), i) in &st.order {
            if let Some(b) = bufs[i].take() {
                out.push(OutPacket::from_port(source_port, dest, b.as_mut_slice()));
            }
        }
        send_all(&self.inner, &mut out)?;
        st.stats.sent += out.len() as u64;
        Ok(packets.len())
    }
}

/// Copies `bytes` into the next pool buffer (reusing its allocation) and
/// returns its index.
fn take_buf(pool: &mut Vec<Vec<u8>>, used: &mut usize, bytes: &[u8]) -> usize {
    if *used == pool.len() {
        pool.push(Vec::new());
    }
    let b = &mut pool[*used];
    b.clear();
    b.extend_from_slice(bytes);
    *used += 1;
    *used - 1
}

fn send_all(sock: &RoceSocket, packets: &mut [OutPacket<'_>]) -> io::Result<()> {
    let mut done = 0;
    while done < packets.len() {
        match sock.send_sealed(&mut packets[done..])? {
            0 => return Err(io::Error::new(io::ErrorKind::WriteZero, "nothing sent")),
            n => done += n,
        }
    }
    Ok(())
}

impl Transport for LossySocket {
    fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr()
    }

    /// Seals every packet in the caller's buffer (which is otherwise left
    /// untouched: corruption applies to a copy), applies the faults and
    /// sends what remains. Returns `packets.len()`: dropped packets count as
    /// sent, as on a lossy wire.
    fn send_batch(&self, packets: &mut [OutPacket<'_>]) -> io::Result<usize> {
        self.send_faulty(packets)
    }

    fn recv_batch(&self, slots: &mut [RecvSlot], timeout: Option<Duration>) -> io::Result<usize> {
        self.inner.recv_batch(slots, timeout)
    }

    fn fault_stats(&self) -> Option<LossyStats> {
        Some(self.stats())
    }

    fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        self.inner.wait_readable(timeout)
    }

    fn open_source_port(&self, port: u16) -> Result<(), NetError> {
        self.inner.open_source_port(port)
    }

    fn close_source_port(&self, port: u16) {
        self.inner.close_source_port(port);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::net::socket_tests::{ip, receiver_with, recv_packets};
    use crate::net::testutil::{psn_of, send_only};
    use crate::net::{IcrcVerdict, Ipv4IdPolicy, SocketConfig};

    const RATES: Lossy = Lossy {
        drop: 0.05,
        duplicate: 0.03,
        reorder: 0.02,
        corrupt: 0.04,
        seed: 42,
    };

    /// What the receiver saw: PSNs in arrival order and verdicts.
    struct Seen {
        psns: Vec<u32>,
        bad: usize,
        stats: LossyStats,
    }

    fn run(rx_addr: &str, faults: Lossy, count: u32) -> Seen {
        let cfg = SocketConfig {
            ipv4_id: Ipv4IdPolicy::UpTo(0),
            ..SocketConfig::default()
        };
        let rx = receiver_with(rx_addr, cfg);
        let tx = LossySocket::new(RoceSocket::bind(ip("127.0.0.1"), 0).unwrap(), faults).unwrap();
        let dest = rx.local_addr();
        let mut seen = Seen {
            psns: Vec::new(),
            bad: 0,
            stats: LossyStats::default(),
        };
        let collect = |seen: &mut Seen, sent: u64| {
            let expect = (sent - (seen.psns.len() + seen.bad) as u64) as usize;
            for (bytes, v, _, _) in recv_packets(&rx, 2048, expect) {
                match v {
                    IcrcVerdict::Good => seen.psns.push(psn_of(&bytes)),
                    IcrcVerdict::Bad { .. } => seen.bad += 1,
                    other => panic!("{other:?}"),
                }
            }
        };
        for start in (0..count).step_by(50) {
            let mut bufs: Vec<Vec<u8>> = (start..(start + 50).min(count))
                .map(|i| send_only(i, 48))
                .collect();
            let mut p: Vec<_> = bufs.iter_mut().map(|b| OutPacket::new(dest, b)).collect();
            assert_eq!(Transport::send_batch(&tx, &mut p).unwrap(), p.len());
            // The caller's buffers are sealed and never corrupted.
            for b in &bufs {
                let v = crate::net::verify(&tx.local_addr(), &dest, b, Ipv4IdPolicy::UpTo(0));
                assert_eq!(v, IcrcVerdict::Good);
            }
            collect(&mut seen, tx.stats().sent);
        }
        tx.flush().unwrap();
        seen.stats = tx.stats();
        let sent = seen.stats.sent;
        collect(&mut seen, sent);
        seen
    }

    #[test]
    fn fault_rates_over_10k_packets_are_within_tolerance() {
        let n = 10_000u32;
        let seen = run("127.0.1.1", RATES, n);
        let s = seen.stats;
        assert_eq!(s.offered, u64::from(n));
        // Within 4 binomial standard deviations of the configured rate,
        // over the packets each fault is drawn for: drop over all, the
        // others over those not dropped, duplication over those not held
        // back either.
        let kept = s.offered - s.dropped;
        for (name, count, trials, p) in [
            ("drop", s.dropped, s.offered, RATES.drop),
            ("corrupt", s.corrupted, kept, RATES.corrupt),
            ("reorder", s.reordered, kept, RATES.reorder),
            (
                "duplicate",
                s.duplicated,
                kept - s.reordered,
                RATES.duplicate,
            ),
        ] {
            let mean = trials as f64 * p;
            let sd = (mean * (1.0 - p)).sqrt();
            assert!(
                (count as f64 - mean).abs() <= 4.0 * sd,
                "{name}: {count} vs {mean}"
            );
        }
        // The receiver agrees: every datagram arrived, corrupted ones are
        // exactly the Bad ones, duplicates and reorderings are visible.
        assert_eq!(seen.psns.len() + seen.bad, s.sent as usize);
        // (A corrupted packet that is also duplicated arrives bad twice.)
        let bad = seen.bad as u64;
        assert!(
            s.corrupted <= bad && bad <= s.corrupted + s.duplicated,
            "{bad}"
        );
        assert_eq!(s.sent, s.offered - s.dropped + s.duplicated);
        let mut distinct = HashSet::new();
        let dups = seen.psns.iter().filter(|p| !distinct.insert(**p)).count();
        assert!(dups as u64 <= s.duplicated && dups > 0);
        let mut max = 0;
        let mut late = 0;
        for &p in &seen.psns {
            if p < max {
                late += 1;
            }
            max = max.max(p);
        }
        assert!(
            late > 0 && late as u64 <= s.reordered + s.duplicated,
            "{late}"
        );
        eprintln!("lossy over {n}: {s:?}, duplicates seen {dups}, late {late}");
    }

    #[test]
    fn the_same_seed_gives_the_same_faults() {
        let a = run("127.0.1.2", RATES, 2000);
        let b = run("127.0.1.3", RATES, 2000);
        assert_eq!(a.stats, b.stats);
        assert_eq!(a.psns, b.psns);
        assert_eq!(a.bad, b.bad);
        let c = run("127.0.1.4", Lossy { seed: 43, ..RATES }, 2000);
        assert_ne!(a.psns, c.psns);
        let clean = run("127.0.1.5", Lossy::none(1), 500);
        assert_eq!(clean.psns, (0..500).collect::<Vec<_>>());
    }

    #[test]
    fn rates_outside_0_to_1_are_refused() {
        let s = RoceSocket::bind(ip("127.0.0.1"), 0).unwrap();
        let e = LossySocket::new(
            s,
            Lossy {
                drop: 1.5,
                ..Lossy::none(0)
            },
        )
        .unwrap_err();
        assert!(matches!(e, NetError::BadRate { name: "drop", .. }));
    }
}
