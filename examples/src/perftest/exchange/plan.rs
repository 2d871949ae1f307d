//! The order of the exchange steps in each perftest 6.06 tool, per role, as
//! read from the tools' `main` functions (perftest v4.5-0.17 src/*_bw.c,
//! src/*_lat.c; see the module documentation for line references).

use super::Role;

/// A perftest tool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tool {
    /// `ib_write_bw`.
    WriteBw,
    /// `ib_read_bw`.
    ReadBw,
    /// `ib_send_bw`.
    SendBw,
    /// `ib_atomic_bw`.
    AtomicBw,
    /// `ib_write_lat`.
    WriteLat,
    /// `ib_read_lat`.
    ReadLat,
    /// `ib_send_lat`.
    SendLat,
    /// `ib_atomic_lat`.
    AtomicLat,
}

impl Tool {
    /// Every tool.
    pub const ALL: [Tool; 8] = [
        Tool::WriteBw,
        Tool::ReadBw,
        Tool::SendBw,
        Tool::AtomicBw,
        Tool::WriteLat,
        Tool::ReadLat,
        Tool::SendLat,
        Tool::AtomicLat,
    ];

    /// The perftest binary's name.
    pub fn perftest_binary(self) -> &'static str {
        match self {
            Tool::WriteBw => "ib_write_bw",
            Tool::ReadBw => "ib_read_bw",
            Tool::SendBw => "ib_send_bw",
            Tool::AtomicBw => "ib_atomic_bw",
            Tool::WriteLat => "ib_write_lat",
            Tool::ReadLat => "ib_read_lat",
            Tool::SendLat => "ib_send_lat",
            Tool::AtomicLat => "ib_atomic_lat",
        }
    }

    /// Whether this is a bandwidth tool.
    pub fn is_bw(self) -> bool {
        matches!(
            self,
            Tool::WriteBw | Tool::ReadBw | Tool::SendBw | Tool::AtomicBw
        )
    }

    /// Whether the tool runs atomics (8-byte messages).
    pub fn is_atomic(self) -> bool {
        matches!(self, Tool::AtomicBw | Tool::AtomicLat)
    }

    /// The title perftest prints above its parameters.
    pub fn title(self) -> &'static str {
        match self {
            Tool::WriteBw => "RDMA_Write BW Test",
            Tool::ReadBw => "RDMA_Read BW Test",
            Tool::SendBw => "Send BW Test",
            Tool::AtomicBw => "Atomic FETCH_AND_ADD BW Test",
            Tool::WriteLat => "RDMA_Write Latency Test",
            Tool::ReadLat => "RDMA_Read Latency Test",
            Tool::SendLat => "Send Latency Test",
            Tool::AtomicLat => "Atomic FETCH_AND_ADD Latency Test",
        }
    }
}

/// One step of a tool's sequence. Steps other than [`Step::ConnectQps`] and
/// [`Step::Run`] use the socket, and both sides take them in the same order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Step {
    /// [`Exchange::versions`](super::Exchange::versions).
    Versions,
    /// [`Exchange::sys_data`](super::Exchange::sys_data).
    SysData,
    /// [`Exchange::mtu`](super::Exchange::mtu).
    Mtu,
    /// [`Exchange::keys`](super::Exchange::keys): one key message per QP.
    Keys,
    /// Local only: move the QPs to RTR/RTS with the remote keys.
    ConnectQps,
    /// [`Exchange::handshake`](super::Exchange::handshake) with QP 0's keys.
    Handshake,
    /// Local only: the measurement for one message size.
    Run,
    /// [`Exchange::bw_results`](super::Exchange::bw_results).
    BwResults,
    /// [`Exchange::close`](super::Exchange::close).
    Close,
}

impl Step {
    /// Whether the step sends and receives on the socket.
    pub fn uses_socket(self) -> bool {
        !matches!(self, Step::ConnectQps | Step::Run)
    }
}

/// The perftest options that change the sequence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlanOptions {
    /// `-b`: bidirectional (bw tools only; ignored by latency tools).
    pub duplex: bool,
    /// `-a`: the number of message sizes run (perftest runs 2^1..=2^23, 23
    /// sizes, but `ib_send_bw`/`ib_send_lat` over UD stop at the MTU).
    /// `None` is a single size.
    pub run_all_sizes: Option<u32>,
    /// `-D`: duration mode (`ib_send_bw` then swaps no duplex results).
    pub duration: bool,
}

/// The steps `tool` takes as `role` in perftest 6.06, from connection to
/// close. `ib_write_lat` ends without [`Step::Close`]: both sides just
/// close the socket.
pub fn plan(tool: Tool, role: Role, options: PlanOptions) -> Vec<Step> {
    use Step::*;
    let client = role == Role::Client;
    let sizes = options.run_all_sizes.map_or(1, |n| n.max(1));
    let run_all = options.run_all_sizes.is_some();
    let mut steps = vec![Versions, SysData, Mtu];
    match tool {
        Tool::WriteBw | Tool::ReadBw | Tool::AtomicBw => {
            // ib_atomic_bw runs `-a` as a single run.
            let sizes = if tool == Tool::AtomicBw { 1 } else { sizes };
            steps.extend([Keys, ConnectQps, Keys, Handshake]);
            if !options.duplex {
                if client {
                    steps.extend((0..sizes).map(|_| Run));
                }
                steps.extend([Handshake, BwResults]);
            } else if run_all && tool != Tool::AtomicBw {
                for _ in 0..sizes {
                    steps.extend([Handshake, Run, Handshake, BwResults]);
                }
            } else {
                steps.extend([Handshake, Run, BwResults]);
            }
            steps.push(Close);
        }
        Tool::SendBw => {
            steps.extend([Keys, ConnectQps, Handshake, Keys]);
            let results = options.duplex && !options.duration;
            for _ in 0..sizes {
                steps.extend([Handshake, Run]);
                if results {
                    steps.push(BwResults);
                }
                if run_all {
                    steps.push(Handshake);
                }
            }
            steps.push(Close);
        }
        Tool::WriteLat => {
            steps.extend([Handshake, Keys, ConnectQps, Keys, Handshake]);
            steps.extend((0..sizes).map(|_| Run));
        }
        Tool::ReadLat | Tool::AtomicLat => {
            steps.extend([Handshake, Keys, ConnectQps, Keys, Handshake]);
            if client {
                // ib_atomic_lat has no `-a` loop.
                let runs = if tool == Tool::ReadLat { sizes } else { 1 };
                steps.extend((0..runs).map(|_| Run));
            }
            steps.push(Close);
        }
        Tool::SendLat => {
            steps.extend([Keys, ConnectQps, Handshake, Keys]);
            for _ in 0..sizes {
                steps.extend([Handshake, Run]);
            }
            steps.push(Close);
        }
    }
    steps
}
