//! Solving for the unknown IPv4 identification field of a received packet.
//!
//! The ICRC covers the IPv4 header's ID, which a UDP socket never sees.
//! Kernel rxe's IDs run up by one per packet towards a destination from an
//! unknown start (and jump after idle periods), so a receiver cannot guess
//! them. CRC-32 is affine over GF(2): for two messages of the same length
//! that differ only in the ID, `crc(a) ^ crc(b)` depends only on the XOR of
//! the two IDs. Computing the ICRC with ID 0 and XORing it with the trailer
//! gives a 32-bit syndrome `delta`; the packet is consistent iff `delta` is
//! the effect of some 16-bit ID pattern, and that pattern is then the ID.
//!
//! The effect of the ID bits on the final CRC register is their effect on the
//! register right after the ID field, carried through the `n` bytes that
//! follow (multiplication by x^(8n) mod P, an invertible map). So instead of
//! building 16 basis deltas per length and eliminating, [`solve_ipv4_id`]
//! runs the register *backwards* over the `n` bytes (with precomputed
//! matrices for 2^k zero bytes, O(log n) matrix-vector products) and then 16
//! bits further over the ID field itself. Running the CRC step backwards
//! over a bit whose value is unknown inserts that bit at the bottom of the
//! register; after the 16 ID bits the register must be all zero (the
//! messages agree before the ID), which leaves 16 checkable bits (the top
//! half must be zero) and reads the ID off the bottom half. Same result as
//! the 16-basis-vector elimination (the tests check both agree), about 600
//! word operations per packet instead of 16 CRC runs. The whole backwards
//! run is linear in the syndrome, so for a length that recurs (GSO and GRO
//! runs have one) it becomes four lookups in byte tables.
//!
//! Remaining protection: 32 - 16 = 16 bits. A random corruption is accepted
//! with probability 2^-16; see the module docs of `net` for the discussion.

use crate::wire::icrc::LRH_LEN;
use crate::wire::ip_udp::ipv4;

/// The reflected CRC-32 polynomial (zlib, Ethernet, Linux `crc32_le`).
const POLY: u32 = 0xEDB8_8320;

/// Offset of the IPv4 ID in the ICRC message: 8 bytes of masked LRH, then
/// the IPv4 header, whose bytes 4..6 are the ID.
pub(crate) const ID_OFFSET_IN_CRC_MESSAGE: usize = LRH_LEN + ipv4::ID.start;

/// The CRC register one step backwards over an input bit of 0 (a linear
/// map). Forward: `s' = (s >> 1) ^ (s & 1) * POLY`; as POLY has bit 31 set
/// and `s >> 1` has not, bit 31 of `s'` is the bit that was shifted out.
const fn unstep(s: u32) -> u32 {
    let c = s >> 31;
    ((s ^ (POLY & c.wrapping_neg())) << 1) | c
}

/// A 32x32 GF(2) matrix as its columns: `m[j]` is the image of `1 << j`.
type Matrix = [u32; 32];

const fn mat_vec(m: &Matrix, v: u32) -> u32 {
    let mut r = 0;
    let mut j = 0;
    while j < 32 {
        // Branch-free: syndromes are random, a branch would mispredict.
        r ^= m[j] & ((v >> j) & 1).wrapping_neg();
        j += 1;
    }
    r
}

const fn mat_square(m: &Matrix) -> Matrix {
    let mut out = [0u32; 32];
    let mut j = 0;
    while j < 32 {
        out[j] = mat_vec(m, m[j]);
        j += 1;
    }
    out
}

/// `UNSTEP_POW[k]` runs the register backwards over 2^k zero bytes.
static UNSTEP_POW: [Matrix; 16] = {
    let mut byte = [0u32; 32];
    let mut j = 0;
    while j < 32 {
        let mut s = 1u32 << j;
        let mut b = 0;
        while b < 8 {
            s = unstep(s);
            b += 1;
        }
        byte[j] = s;
        j += 1;
    }
    let mut pows = [[0u32; 32]; 16];
    pows[0] = byte;
    let mut k = 1;
    while k < 16 {
        pows[k] = mat_square(&pows[k - 1]);
        k += 1;
    }
    pows
};

/// Runs `s` backwards over `n` zero bytes, one matrix per set bit of `n`.
fn unstep_bytes(mut s: u32, n: usize) -> u32 {
    for (k, m) in UNSTEP_POW.iter().enumerate() {
        if (n >> k) & 1 == 1 {
            s = mat_vec(m, s);
        }
    }
    s
}

/// Runs `s` backwards over the 16 bits of the ID field, as if they were
/// zero (see [`solve_ipv4_id`]).
fn unstep_id(mut s: u32) -> u32 {
    for _ in 0..16 {
        s = unstep(s);
    }
    s
}

/// The register before the ID field, from the syndrome `delta` of a
/// message with `n` bytes after the ID: `unstep_id(unstep_bytes(delta, n))`.
fn register_before_id(delta: u32, n: usize) -> u32 {
    unstep_id(unstep_bytes(delta, n))
}

/// A linear map of 32-bit vectors as four tables, one per byte of the
/// vector: applying it is four lookups.
struct ByteTables([[u32; 256]; 4]);

impl ByteTables {
    /// The tables of the map `f` (which must be linear).
    fn of(f: impl Fn(u32) -> u32) -> Box<Self> {
        let mut tables = Box::new(ByteTables([[0; 256]; 4]));
        for (byte, table) in tables.0.iter_mut().enumerate() {
            let columns: [u32; 8] = std::array::from_fn(|bit| f(1 << (8 * byte + bit)));
            for (value, entry) in table.iter_mut().enumerate() {
                *entry = (0..8)
                    .filter(|bit| (value >> bit) & 1 == 1)
                    .fold(0, |acc, bit| acc ^ columns[bit]);
            }
        }
        tables
    }

    fn apply(&self, s: u32) -> u32 {
        let [b0, b1, b2, b3] = s.to_le_bytes();
        self.0[0][usize::from(b0)]
            ^ self.0[1][usize::from(b1)]
            ^ self.0[2][usize::from(b2)]
            ^ self.0[3][usize::from(b3)]
    }
}

/// Lengths seen recently, each with [`register_before_id`] for that length
/// as byte tables once it came a second time. Packets come in runs of one
/// length (a GSO send, a GRO datagram, a stream of equal messages): the
/// solver then costs four table lookups instead of a matrix-vector product
/// per set bit of the length. A length seen once gets no tables (building
/// them costs 32 solves), so packets of ever-new lengths cost what they
/// did.
struct RecentLengths {
    entries: [(usize, Option<Box<ByteTables>>); 4],
    next: usize,
}

impl RecentLengths {
    const fn new() -> Self {
        Self {
            entries: [
                (usize::MAX, None),
                (usize::MAX, None),
                (usize::MAX, None),
                (usize::MAX, None),
            ],
            next: 0,
        }
    }

    fn register_before_id(&mut self, delta: u32, n: usize) -> u32 {
        let Some(i) = self.entries.iter().position(|(len, _)| *len == n) else {
            self.entries[self.next] = (n, None);
            self.next = (self.next + 1) % self.entries.len();
            return register_before_id(delta, n);
        };
        let tables = self.entries[i]
            .1
            .get_or_insert_with(|| ByteTables::of(|s| register_before_id(s, n)));
        tables.apply(delta)
    }
}

thread_local! {
    static RECENT_LENGTHS: std::cell::RefCell<RecentLengths> =
        const { std::cell::RefCell::new(RecentLengths::new()) };
}

/// Solves for the IPv4 ID: `delta` is the trailer XOR the ICRC computed with
/// ID 0, `bytes_after_id` the number of CRC-message bytes after the ID field
/// (the rest of the IPv4 header from the flags on, 14 bytes, the UDP
/// header, 8, and BTH..pad). Returns the ID that makes the ICRC match, or `None`
/// when no ID does (the packet is corrupt, or not built with DF and no IP
/// options, or its headers are not the ones assumed).
pub fn solve_ipv4_id(delta: u32, bytes_after_id: usize) -> Option<u16> {
    if bytes_after_id >= 1 << 16 {
        return None;
    }
    // Running the syndrome back to just after the ID field, then over the
    // 16 ID bits: each unknown bit d_k (k in processing order) is XORed
    // into bit 0 and then shifted up by the k steps still to go, so the
    // register before the ID is `unstep^16(s) ^ sum(d_k << k)`, which must
    // be zero.
    let r =
        RECENT_LENGTHS.with_borrow_mut(|recent| recent.register_before_id(delta, bytes_after_id));
    if r >> 16 != 0 {
        return None;
    }
    // Reflected CRC: bytes in order, each least significant bit first. The
    // ID's high byte comes first on the wire.
    let hi = r & 0xff;
    let lo = (r >> 8) & 0xff;
    Some(((hi << 8) | lo) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crc(bytes: &[u8]) -> u32 {
        crc32fast::hash(bytes)
    }

    /// The textbook way: 16 basis deltas for this length, then Gaussian
    /// elimination.
    fn solve_by_basis(delta: u32, message_len: usize) -> Option<u16> {
        let zeros = vec![0u8; message_len];
        let base = crc(&zeros);
        // (column value, ID bit it stands for)
        let mut rows: Vec<(u32, u16)> = (0..16)
            .map(|bit| {
                let mut m = zeros.clone();
                let id = 1u16 << bit;
                m[ID_OFFSET_IN_CRC_MESSAGE..ID_OFFSET_IN_CRC_MESSAGE + 2]
                    .copy_from_slice(&id.to_be_bytes());
                (crc(&m) ^ base, id)
            })
            .collect();
        // Reduce: for each pivot bit, keep one vector with it and clear it
        // from the others and from delta.
        let mut d = delta;
        let mut id = 0u16;
        let mut used = vec![false; rows.len()];
        for pivot in (0..32).rev() {
            let Some(i) = (0..rows.len()).find(|&i| !used[i] && (rows[i].0 >> pivot) & 1 == 1)
            else {
                continue;
            };
            used[i] = true;
            let (v, tag) = rows[i];
            for (j, row) in rows.iter_mut().enumerate() {
                if j != i && (row.0 >> pivot) & 1 == 1 {
                    row.0 ^= v;
                    row.1 ^= tag;
                }
            }
            if (d >> pivot) & 1 == 1 {
                d ^= v;
                id ^= tag;
            }
        }
        assert_eq!(used.iter().filter(|u| **u).count(), 16, "independent");
        (d == 0).then_some(id)
    }

    fn message(len: usize, seed: u32, id: u16) -> Vec<u8> {
        let mut x = seed | 1;
        let mut m: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        m[ID_OFFSET_IN_CRC_MESSAGE..ID_OFFSET_IN_CRC_MESSAGE + 2]
            .copy_from_slice(&id.to_be_bytes());
        m
    }

    #[test]
    fn the_cached_map_of_a_recurring_length_equals_the_direct_one() {
        let mut recent = RecentLengths::new();
        let mut seed = 0x1234_5678u32;
        // Lengths recurring, interleaved, and more of them than entries.
        for round in 0..40 {
            let n = [40, 40, 1500, 4123, 1500, 9000, 77, 65_535, 65_535, 40][round % 10];
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            assert_eq!(
                recent.register_before_id(seed, n),
                register_before_id(seed, n),
                "length {n}"
            );
        }
        assert!(recent.entries.iter().any(|(_, m)| m.is_some()));
    }

    #[test]
    fn unstep_inverts_the_forward_step() {
        for s in [0u32, 1, 0x8000_0000, 0xdead_beef, 0x1234_5678] {
            let fwd = (s >> 1) ^ if s & 1 == 1 { POLY } else { 0 };
            assert_eq!(unstep(fwd), s);
        }
    }

    #[test]
    fn every_id_is_recovered_for_a_small_message() {
        let len = 8 + 20 + 8 + 12 + 4;
        let m0 = message(len, 7, 0);
        let c0 = crc(&m0);
        for id in 0..=u16::MAX {
            let found = crc(&message(len, 7, id));
            assert_eq!(solve_ipv4_id(found ^ c0, len - 14), Some(id), "{id}");
        }
    }

    #[test]
    fn agrees_with_the_basis_solver_across_lengths() {
        let mut seed = 99u32;
        for len in [
            48usize,
            49,
            50,
            51,
            64,
            100,
            300,
            1024 + 64,
            4096 + 64,
            9000,
            65_000,
        ] {
            for trial in 0..8 {
                seed = seed.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
                let id = (seed >> 7) as u16;
                let m = message(len, seed, id);
                let delta = crc(&m) ^ crc(&message(len, seed, 0));
                assert_eq!(solve_ipv4_id(delta, len - 14), Some(id), "{len}/{trial}");
                assert_eq!(solve_by_basis(delta, len), Some(id), "{len}/{trial}");
                // A random syndrome: both solvers agree on consistency.
                let junk = seed.rotate_left(11) ^ 0x5a5a_1234;
                assert_eq!(
                    solve_ipv4_id(junk, len - 14),
                    solve_by_basis(junk, len),
                    "{len}/{trial}"
                );
            }
        }
    }

    #[test]
    fn a_zero_syndrome_is_id_zero_and_lengths_past_64k_are_refused() {
        assert_eq!(solve_ipv4_id(0, 100), Some(0));
        assert_eq!(solve_ipv4_id(0, 1 << 16), None);
    }

    /// A single-bit error `j` bits after the ID field leaves the register
    /// `unstep^(j+16)(1)` after the ID is unwound (independent of the packet
    /// length); it goes unnoticed iff that has no bits above 15.
    #[test]
    fn single_bit_errors_alias_an_id_only_far_past_any_roce_mtu() {
        let mut s = 1u32;
        for _ in 0..16 {
            s = unstep(s);
        }
        let mut aliases = Vec::new();
        for j in 0..8 * 65_536usize {
            if s >> 16 == 0 {
                aliases.push(j);
            }
            s = unstep(s);
        }
        // Bits after the ID: 14 bytes of IPv4 header and 8 of UDP come
        // before the BTH; so the first alias is at BTH offset 26744 bytes.
        assert_eq!(aliases, [214_134, 227_786, 290_142, 290_143, 304_016]);
        assert_eq!(aliases[0] / 8 - 22, 26_744);
        // Cross-check one alias with the real solver and a real CRC.
        let len = 8 + 20 + 8 + 30_000;
        let m0 = message(len, 3, 0);
        let mut m1 = m0.clone();
        let j = aliases[0];
        let at = ID_OFFSET_IN_CRC_MESSAGE + 2 + j / 8;
        m1[at] ^= 1 << (j % 8);
        assert!(solve_ipv4_id(crc(&m1) ^ crc(&m0), len - 14).is_some());
        m1[at] ^= 1 << (j % 8);
        m1[at - 1] ^= 1;
        assert!(solve_ipv4_id(crc(&m1) ^ crc(&m0), len - 14).is_none());
    }

    /// Two-bit errors in a 1024-byte payload: the pair goes unnoticed iff
    /// both bits leave the same top half after unwinding.
    #[test]
    fn about_one_in_65536_two_bit_errors_aliases_an_id() {
        let mut s = 1u32;
        for _ in 0..16 + 22 * 8 {
            s = unstep(s); // the first payload bit, 22 bytes past the ID
        }
        let mut tops = std::collections::HashMap::new();
        for j in 0..1024 * 8 {
            if !(32..40).contains(&j) {
                *tops.entry(s >> 16).or_insert(0u64) += 1; // BTH byte 4 is masked
            }
            s = unstep(s);
        }
        let bits: u64 = tops.values().sum();
        let pairs = bits * (bits - 1) / 2;
        let missed: u64 = tops.values().map(|c| c * (c - 1) / 2).sum();
        assert_eq!(tops.get(&0), None, "no single-bit miss");
        let odds = pairs / missed;
        assert!((40_000..=100_000).contains(&odds), "1 in {odds}");
    }

    #[test]
    fn about_one_in_65536_random_syndromes_is_consistent() {
        let mut x = 0x9e37_79b9u32;
        let mut hits = 0;
        let n = 1 << 20;
        for _ in 0..n {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            hits += usize::from(solve_ipv4_id(x, 1100).is_some());
        }
        // Expected 16; a wide bound.
        assert!((2..=40).contains(&hits), "{hits}");
    }
}
