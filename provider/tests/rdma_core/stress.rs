//! Pin-on-demand under fire, seeded: one thread WRITEs from and READs
//! into a pin-on-demand region on kernel rxe while another discards random
//! pages of it through `odp`'s `madvise` wrapper. A shadow model says what
//! each transfer may leave: per page, the bytes the program last put there
//! or (if a discard hit that page meanwhile) zeros; never the bytes of an
//! earlier round, which is what a chunk left pinned on discarded pages
//! would send. (A READ into a stale chunk would leave zeros in the new
//! page, which this model cannot tell from a discard: the remap tests
//! check that direction.)
//!
//! The test's own CPU copies into and out of the region hold a lock the
//! discarding thread takes too: a discard in the middle of a `memcpy`
//! would leave a page partly written (a `memcpy` does not store in address
//! order: it may keep its first bytes for last), and the model speaks of
//! whole pages. The device's transfers run without it, concurrently with
//! the discards.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use provider::{AccessFlags, OdpMode, SendOp, WcStatus};
use rand::{Rng, SeedableRng, rngs::StdRng};

use super::support::{Mapping, Pair, device, pattern};

const PAGE: usize = 4096;
/// The region: three 2 MiB chunks and a bit.
const LEN: usize = (6 << 20) + 5 * PAGE;
const ROUNDS: usize = 400;

/// Copies `len` bytes at `addr` out (the other thread may discard them
/// meanwhile, so no slice is formed over them).
fn read_bytes(addr: usize, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    // SAFETY: `addr..addr + len` lies in a live mapping of the test; the
    // kernel may replace its pages with zero pages, never unmap them.
    unsafe { std::ptr::copy_nonoverlapping(addr as *const u8, out.as_mut_ptr(), len) };
    out
}

fn write_bytes(addr: usize, bytes: &[u8]) {
    // SAFETY: as in read_bytes.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), addr as *mut u8, bytes.len()) };
}

/// Checks `got` (the bytes at `addr`) against `want`, page by page of the
/// address space: each piece equals `want` or is all zeros. Returns the
/// number of zeroed pieces, or what went wrong.
fn check(addr: usize, got: &[u8], want: &[u8], what: &str, round: usize) -> Result<usize, String> {
    let mut zeroed = 0;
    let mut at = 0;
    while at < got.len() {
        let end = (((addr + at) / PAGE + 1) * PAGE - addr).min(got.len());
        let (g, w) = (&got[at..end], &want[at..end]);
        if g != w {
            if !g.iter().all(|&b| b == 0) {
                return Err(format!(
                    "round {round}: {what} at offset {at}: neither the expected bytes nor a discarded page"
                ));
            }
            zeroed += 1;
        }
        at = end;
    }
    Ok(zeroed)
}

#[test]
fn pin_on_demand_stays_coherent_while_another_thread_discards_pages() {
    let Some((_, ctx)) = device() else { return };
    match run(&ctx, true) {
        Ok(()) | Err(Outcome::NotEmulated) => {}
        Err(Outcome::Mismatch(m)) => panic!("{m}"),
    }
}

#[test]
fn the_shadow_model_catches_a_pinned_region_under_discards() {
    let Some((_, ctx)) = device() else { return };
    // A pinned region keeps the discarded pages: the WRITEs send bytes of
    // earlier rounds, which the model must notice.
    match run(&ctx, false) {
        Err(Outcome::Mismatch(m)) => eprintln!("as expected: {m}"),
        other => panic!("the model missed the pinned region's stale pages: {other:?}"),
    }
}

/// Why a run stopped early.
#[derive(Debug)]
enum Outcome {
    /// The device's own ODP serves the region.
    NotEmulated,
    /// The shadow model was violated.
    Mismatch(String),
}

/// The seeded run, with a pin-on-demand region or (`on_demand` false) a
/// pinned one.
fn run(ctx: &provider::Context, on_demand: bool) -> Result<(), Outcome> {
    let seed = std::env::var("SRXE_STRESS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_4791u64);
    eprintln!("seed {seed} (SRXE_STRESS_SEED)");
    let p = Pair::new(ctx);
    let (local, target) = (Mapping::new(LEN), Mapping::new(LEN));
    let access = if on_demand {
        AccessFlags::LOCAL_WRITE | AccessFlags::ON_DEMAND
    } else {
        AccessFlags::LOCAL_WRITE
    };
    let local_mr = p.reg(&local, access, None);
    if on_demand && local_mr.odp_mode() != Some(OdpMode::PinOnDemand) {
        eprintln!("skipped: the device's ODP is used, nothing to emulate");
        return Err(Outcome::NotEmulated);
    }
    let all = AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE | AccessFlags::REMOTE_READ;
    let target_mr = p.reg(&target, all, None);

    let stop = Arc::new(AtomicBool::new(false));
    let discards = Arc::new(AtomicU64::new(0));
    // Held by the CPU copies of this thread and by each discard (module docs).
    let cpu = Arc::new(Mutex::new(()));
    let discarder = {
        let (stop, discards, base) = (Arc::clone(&stop), Arc::clone(&discards), local.addr);
        let cpu = Arc::clone(&cpu);
        std::thread::spawn(move || {
            let mut rng = StdRng::seed_from_u64(seed ^ 0xd15c);
            let aspace = odp::AddressSpace::process();
            while !stop.load(Ordering::Relaxed) {
                let pages = rng.random_range(1..=16);
                let first = rng.random_range(0..LEN / PAGE - pages);
                let addr = (base + first * PAGE) as *mut libc::c_void;
                let copies = cpu.lock().unwrap();
                // SAFETY: pages of the test's private anonymous mapping,
                // which nothing in Rust refers to.
                unsafe { aspace.madvise(addr, pages * PAGE, libc::MADV_DONTNEED) }.unwrap();
                drop(copies);
                discards.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_micros(300));
            }
        })
    };

    let mut rng = StdRng::seed_from_u64(seed);
    let (mut exact, mut zeroed) = (0usize, 0usize);
    let mut verdict = Ok(());
    for round in 0..ROUNDS {
        let len = rng.random_range(1..=32 << 10);
        let off = rng.random_range(0..LEN - len);
        let fill = pattern(len, round as u8);
        let remote = target_mr.addr() + off as u64;
        let sge = local_mr.sge(off as u64, len as u32);
        let copy_in = |at: usize, bytes: &[u8]| {
            let _copies = cpu.lock().unwrap();
            write_bytes(at, bytes);
        };
        let copy_out = |at: usize| {
            let _copies = cpu.lock().unwrap();
            read_bytes(at, len)
        };
        let (addr, want, what) = if rng.random_bool(0.5) {
            copy_in(local.addr + off, &fill);
            copy_in(target.addr + off, &vec![0xa5; len]);
            let wc = p.a_send(
                SendOp::Write {
                    remote_addr: remote,
                    rkey: target_mr.rkey(),
                },
                sge,
            );
            assert_eq!(wc.status, WcStatus::Success, "round {round}");
            // The target is pinned and not discarded: zeros there mean the
            // source page was discarded before the WRITE read it.
            (local.addr + off, copy_out(target.addr + off), "WRITE")
        } else {
            copy_in(target.addr + off, &fill);
            let wc = p.a_send(
                SendOp::Read {
                    remote_addr: remote,
                    rkey: target_mr.rkey(),
                },
                sge,
            );
            assert_eq!(wc.status, WcStatus::Success, "round {round}");
            (local.addr + off, copy_out(local.addr + off), "READ")
        };
        match check(addr, &want, &fill, what, round) {
            Ok(z) => {
                zeroed += z;
                exact += usize::from(z == 0);
            }
            Err(m) => {
                verdict = Err(Outcome::Mismatch(m));
                break;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    discarder.join().unwrap();
    verdict?;
    let counters = local_mr.odp_counters();
    eprintln!(
        "{ROUNDS} rounds: {exact} byte-exact, {zeroed} pieces zeroed by {} discards; {counters:?}",
        discards.load(Ordering::Relaxed)
    );
    if on_demand {
        assert!(
            counters.invalidations > 0,
            "the discards reached the region"
        );
        assert_eq!(
            counters.stale_pages, 0,
            "no chunk was unpinned under a request"
        );
    }
    assert!(exact > ROUNDS / 4, "most transfers ran between discards");
    drop((local_mr, target_mr));
    Ok(())
}
