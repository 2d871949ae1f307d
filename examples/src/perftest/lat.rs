//! The latency measurements, as perftest runs them: WRITE ping-pong (each
//! side polls its memory for the peer's write), SEND ping-pong, and READs
//! one at a time.

use std::time::{Duration, Instant};

use provider::{SendWr, WcOpcode, WorkCompletion};

use super::bw::{Length, post_receives};
use super::exchange::{KeyMessage, Role, Tool};
use super::side::Side;
use super::{ToolError, check_completion, interrupted};

const STALL: Duration = Duration::from_secs(10);
/// In duration mode the responder runs until the initiator goes quiet for
/// this long after the duration.
const QUIET: Duration = Duration::from_millis(300);

/// How long a wait may last: `Ok(false)` from a wait means the run is over
/// (a responder in duration mode whose peer stopped), a stall is an error.
#[derive(Clone, Copy)]
struct Patience {
    /// After this, a quiet period of [`QUIET`] ends the run.
    quiet_after: Option<Instant>,
}

impl Patience {
    /// Whether waiting since `since` should stop: `Some(Ok(false))` at the
    /// end of a duration run, `Some(Err)` on a stall or Ctrl-C.
    fn give_up(self, since: Instant) -> Option<Result<bool, ToolError>> {
        if interrupted() {
            return Some(Err(ToolError::Interrupted));
        }
        if self
            .quiet_after
            .is_some_and(|t| Instant::now() > t && since.elapsed() > QUIET)
        {
            return Some(Ok(false));
        }
        (since.elapsed() > STALL).then_some(Err(ToolError::Stalled(STALL)))
    }
}

const ALWAYS: Patience = Patience { quiet_after: None };

/// Waits for one completion (of any kind) and checks it.
fn next_completion(side: &Side, patience: Patience) -> Result<Option<WorkCompletion>, ToolError> {
    let start = Instant::now();
    let mut wc = [WorkCompletion::default()];
    loop {
        if side.cq.poll_wait(&mut wc, Duration::from_millis(50)) == 1 {
            check_completion(&wc[0])?;
            return Ok(Some(wc[0]));
        }
        if let Some(end) = patience.give_up(start) {
            return end.map(|_| None);
        }
    }
}

/// Waits for the next receive completion (send completions met on the way
/// are only checked) and reposts the receive.
fn await_receive(side: &Side, patience: Patience) -> Result<bool, ToolError> {
    while let Some(c) = next_completion(side, patience)? {
        if c.opcode == WcOpcode::Recv {
            post_receives(side, 0, 1)?;
            return Ok(true);
        }
    }
    Ok(false)
}

/// Spins until the byte at `offset` equals `value` (the peer's WRITE
/// landed).
fn await_byte(
    side: &Side,
    offset: usize,
    value: u8,
    patience: Patience,
) -> Result<bool, ToolError> {
    let start = Instant::now();
    let mut spins = 0u32;
    while side.byte(offset) != value {
        spins += 1;
        if spins.is_multiple_of(64)
            && let Some(end) = patience.give_up(start)
        {
            return end;
        }
        // Receive in this thread (no hand-over to the device's thread);
        // with nothing to receive, let the other threads have the CPU.
        if side.ctx.progress() == 0 {
            std::thread::yield_now();
        }
    }
    Ok(true)
}

/// Whether to keep going after `i` iterations.
fn more(length: Length, i: u64, start: Instant) -> bool {
    match length {
        Length::Iterations(n) => i < n,
        Length::Duration(d) => start.elapsed() < d,
    }
}

/// One latency run; returns the post times (nanoseconds from the start).
pub fn run(
    side: &Side,
    remote: &KeyMessage,
    tool: Tool,
    role: Role,
    size: u64,
    length: Length,
) -> Result<Vec<u64>, ToolError> {
    let start = Instant::now();
    let ns = || start.elapsed().as_nanos() as u64;
    let mut posted = Vec::new();
    let qp = &side.qps[0];
    let source = [side.sge(super::bw::local_offset(side, tool, 0), size as u32)];
    let op = super::bw::operation(tool, side.atomic, remote);
    let post = |wr_id: u64| {
        qp.post_send(&[SendWr {
            wr_id,
            op,
            sg_list: &source,
            signaled: true,
            solicited: false,
        }])
        .map_err(ToolError::verbs)
    };
    let mut i = 0u64;
    // The responder waits for the peer before each message; the initiator
    // sends first and decides when a duration run ends, the responder
    // answers until it goes quiet. perftest 4.5's `run_iter_lat_write`
    // skips the first wait on the server (the server writes first), and
    // its `run_iter_lat_send` skips it on the client.
    let responder = match tool {
        Tool::WriteLat => role == Role::Client,
        _ => role == Role::Server,
    };
    let patience = match length {
        Length::Duration(d) if responder => Patience {
            quiet_after: Some(start + d),
        },
        _ => ALWAYS,
    };
    let go_on =
        |i: u64| responder && matches!(length, Length::Duration(_)) || more(length, i, start);
    match tool {
        Tool::WriteLat => {
            // The last byte carries the iteration, so the peer can see the
            // whole message has landed.
            let marker_out = side.source(0) + size as usize - 1;
            let marker_in = side.target(0) + size as usize - 1;
            while go_on(i) {
                let mark = (i as u8).wrapping_add(1);
                if responder && !await_byte(side, marker_in, mark, patience)? {
                    break;
                }
                side.write(marker_out, &[mark]);
                posted.push(ns());
                post(i)?;
                next_completion(side, ALWAYS)?;
                if !responder {
                    await_byte(side, marker_in, mark, ALWAYS)?;
                }
                i += 1;
            }
        }
        Tool::SendLat => {
            while go_on(i) {
                if responder && !await_receive(side, patience)? {
                    break;
                }
                posted.push(ns());
                post(i)?;
                if !responder {
                    await_receive(side, ALWAYS)?;
                }
                i += 1;
            }
        }
        _ => {
            // READ (and atomics): one at a time, client only.
            while more(length, i, start) {
                posted.push(ns());
                post(i)?;
                next_completion(side, ALWAYS)?;
                i += 1;
            }
        }
    }
    Ok(posted)
}
