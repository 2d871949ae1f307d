//! The bandwidth measurements: a requester streaming WRITEs, READs, SENDs
//! or fetch-and-adds with a bounded number in flight per queue pair, and
//! the receiver of a SEND test.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use provider::{RecvWr, SendOp, SendWr, WorkCompletion};

use super::exchange::{KeyMessage, Tool};
use super::side::{RX_DEPTH, Side};
use super::{AtomicType, ToolError, check_completion, interrupted};

/// Work requests posted with one call at most: half of perftest's
/// default window (128), so that one list is in flight while the next is
/// posted, and as many packets as one GSO send of the device carries. With
/// 32, 64-byte WRITEs ran at 0.8x (twice the system calls); with the whole
/// window, at 0.6x (the two ends take turns).
const POST_LIST: usize = 64;
/// No completion for this long means the peer is gone.
const STALL: Duration = Duration::from_secs(10);

/// When each message was posted and completed, in nanoseconds since the
/// clock's origin.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Timings {
    /// Post times.
    pub posted: Vec<u64>,
    /// Completion times.
    pub completed: Vec<u64>,
}

impl Timings {
    /// Room for `messages` timestamps of each kind, its pages touched
    /// before the clock starts (perftest allocates its arrays up front
    /// too): grown while streaming, the copies and page faults of every
    /// doubling fell on the thread that posts, a tenth of its time with
    /// 64-byte messages.
    fn prepare(&mut self, messages: usize) -> Result<(), ToolError> {
        for times in [&mut self.posted, &mut self.completed] {
            times.try_reserve_exact(messages).map_err(|_| {
                ToolError::Flags(format!(
                    "no memory for the timestamps of {messages} messages: use fewer iterations or --duration"
                ))
            })?;
            times.resize(messages, 0);
            times.clear();
        }
        Ok(())
    }
}

/// How long to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Length {
    /// This many messages per queue pair.
    Iterations(u64),
    /// For this long.
    Duration(Duration),
}

fn ns(origin: Instant) -> u64 {
    origin.elapsed().as_nanos() as u64
}

/// The operation a tool's requests carry toward the peer's buffer; atomics
/// carry perftest's values (add 1; compare 0 and swap 0).
pub fn operation(tool: Tool, atomic: AtomicType, key: &KeyMessage) -> SendOp {
    match tool {
        Tool::WriteBw | Tool::WriteLat => SendOp::Write {
            remote_addr: key.vaddr,
            rkey: key.rkey,
        },
        Tool::ReadBw | Tool::ReadLat => SendOp::Read {
            remote_addr: key.vaddr,
            rkey: key.rkey,
        },
        Tool::AtomicBw | Tool::AtomicLat => match atomic {
            AtomicType::FetchAndAdd => SendOp::FetchAdd {
                remote_addr: key.vaddr,
                rkey: key.rkey,
                add: 1,
            },
            AtomicType::CmpAndSwap => SendOp::CompareSwap {
                remote_addr: key.vaddr,
                rkey: key.rkey,
                compare: 0,
                swap: 0,
            },
        },
        Tool::SendBw | Tool::SendLat => SendOp::Send,
    }
}

/// Where the local side of message on queue pair `qp` is: READ results
/// land in the target half, everything else is sent from the source half.
pub fn local_offset(side: &Side, tool: Tool, qp: usize) -> usize {
    if matches!(tool, Tool::ReadBw | Tool::ReadLat) {
        side.target(qp)
    } else {
        side.source(qp)
    }
}

/// Streams `size`-byte messages on every queue pair, at most `depth` in
/// flight on each, asking for a completion every `cq_mod` (and for the
/// last), until `length` is reached.
pub fn requester(
    side: &Side,
    remote: &[KeyMessage],
    tool: Tool,
    size: u64,
    length: Length,
    depth: u32,
    cq_mod: u32,
) -> Result<Timings, ToolError> {
    let qps = side.qps.len();
    let mut t = Timings::default();
    if let Length::Iterations(n) = length {
        t.prepare((n as usize).saturating_mul(qps))?;
    }
    let origin = Instant::now();
    let mut in_flight: Vec<VecDeque<usize>> = vec![VecDeque::new(); qps];
    let mut posted_on = vec![0u64; qps];
    let mut since_signal = vec![0u32; qps];
    let deadline = match length {
        Length::Duration(d) => Some(origin + d),
        Length::Iterations(_) => None,
    };
    let limit = match length {
        Length::Iterations(n) => n,
        Length::Duration(_) => u64::MAX,
    };
    let mut wc = vec![WorkCompletion::default(); 256];
    let mut last_progress = Instant::now();
    loop {
        if interrupted() {
            return Err(ToolError::Interrupted);
        }
        let time_up = deadline.is_some_and(|d| Instant::now() >= d);
        let mut posted_now = false;
        for q in 0..qps {
            // Post what the window allows as one list: one system call for
            // up to POST_LIST work requests.
            let room = (depth as usize).saturating_sub(in_flight[q].len());
            let left = limit.saturating_sub(posted_on[q]);
            let count = if time_up {
                0
            } else {
                room.min(POST_LIST).min(left.min(POST_LIST as u64) as usize)
            };
            if count == 0 {
                continue;
            }
            let len = if tool.is_atomic() { 8 } else { size as u32 };
            let sge = [side.sge(local_offset(side, tool, q), len)];
            let op = operation(tool, side.atomic, &remote[q]);
            let now = ns(origin);
            let mut wrs = Vec::with_capacity(count);
            for k in 0..count {
                let index = t.posted.len();
                posted_on[q] += 1;
                since_signal[q] += 1;
                let last = posted_on[q] == limit;
                let window_full = in_flight[q].len() + 1 >= depth as usize;
                // A completion every cq_mod, for the last one, for the one
                // that fills the window, and at the end of each list.
                let signaled = last || window_full || since_signal[q] >= cq_mod || k + 1 == count;
                if signaled {
                    since_signal[q] = 0;
                }
                t.posted.push(now);
                t.completed.push(0);
                in_flight[q].push_back(index);
                wrs.push(SendWr {
                    wr_id: index as u64,
                    op,
                    sg_list: &sge,
                    signaled,
                    solicited: false,
                });
            }
            side.qps[q].post_send(&wrs).map_err(ToolError::verbs)?;
            posted_now = true;
        }
        let outstanding: usize = in_flight.iter().map(VecDeque::len).sum();
        let finished = (time_up || posted_on.iter().all(|&p| p >= limit)) && outstanding == 0;
        if finished {
            return Ok(t);
        }
        let n = if posted_now {
            side.cq.poll(&mut wc)
        } else {
            side.cq.poll_wait(&mut wc, Duration::from_millis(100))
        };
        let now = ns(origin);
        for c in &wc[..n] {
            check_completion(c)?;
            let index = c.wr_id as usize;
            let q = side
                .qps
                .iter()
                .position(|qp| qp.qp_num() == c.qp_num)
                .unwrap_or(0);
            // RC completes in order: everything up to this one is done.
            while let Some(&i) = in_flight[q].front() {
                if i > index {
                    break;
                }
                t.completed[i] = now;
                in_flight[q].pop_front();
            }
        }
        if n > 0 || posted_now {
            last_progress = Instant::now();
        } else if last_progress.elapsed() > STALL {
            return Err(ToolError::Stalled(STALL));
        }
    }
}

/// Posts `count` receives on queue pair `qp`, each for a whole slot (the
/// largest message of the run).
pub fn post_receives(side: &Side, qp: usize, count: u32) -> Result<(), ToolError> {
    let sge = [side.sge(side.target(qp), side.slot as u32)];
    let wrs: Vec<RecvWr<'_>> = (0..count)
        .map(|_| RecvWr {
            wr_id: qp as u64,
            sg_list: &sge,
        })
        .collect();
    side.qps[qp].post_recv(&wrs).map_err(ToolError::verbs)
}

/// Keeps [`RX_DEPTH`] receives posted on every queue pair.
pub fn prepost(side: &Side) -> Result<(), ToolError> {
    (0..side.qps.len()).try_for_each(|q| post_receives(side, q, RX_DEPTH))
}

/// The receiving side of a SEND bandwidth test: counts `expected`
/// receives (or, for a duration, receives until the sender stops),
/// reposting each, and times them from now.
pub fn receiver(side: &Side, length: Length, qps: u64) -> Result<Timings, ToolError> {
    let origin = Instant::now();
    let mut t = Timings::default();
    let expected = match length {
        Length::Iterations(n) => n * qps,
        Length::Duration(_) => u64::MAX,
    };
    let mut wc = vec![WorkCompletion::default(); 256];
    let mut last_progress = Instant::now();
    while (t.completed.len() as u64) < expected {
        if interrupted() {
            return Err(ToolError::Interrupted);
        }
        let n = side.cq.poll_wait(&mut wc, Duration::from_millis(100));
        let now = ns(origin);
        for c in &wc[..n] {
            check_completion(c)?;
            // Receives report their own queue pair; sends never complete
            // here (the receiver posts none).
            t.posted.push(0);
            t.completed.push(now);
            post_receives(side, c.wr_id as usize, 1)?;
        }
        if n > 0 {
            last_progress = Instant::now();
        } else if let Length::Duration(d) = length {
            // The sender stops after `d`: once quiet after that, done.
            if origin.elapsed() > d && last_progress.elapsed() > Duration::from_millis(300) {
                break;
            }
        } else if last_progress.elapsed() > STALL {
            return Err(ToolError::Stalled(STALL));
        }
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_for_more_messages_than_memory_holds_are_a_clear_error() {
        let mut t = Timings::default();
        let err = t.prepare(usize::MAX / 4).unwrap_err();
        assert!(err.to_string().contains("fewer iterations"), "{err}");
        t.prepare(1000).unwrap();
        assert!(t.posted.capacity() >= 1000 && t.posted.is_empty());
        assert!(t.completed.capacity() >= 1000 && t.completed.is_empty());
    }
}
