//! A whole run of a tool: server, client, or both in one process over
//! loopback; the exchange steps of perftest 6.06 in order; the tables and
//! the ODP counters.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::time::Duration;

use super::bw::{self, Length, Timings};
use super::exchange::{
    BwReport as WireReport, Exchange, KeyMessage, PlanOptions, Role, Step, SysData, Tool, plan,
};
use super::flags::AtomicType;
use super::flags::Flags;
use super::report::{self, RESULT_LINE, Units};
use super::side::{Side, device_address, gid_index_of, wire_mtu};
use super::{ToolError, lat, pattern};

/// How long any exchange step may take (a server waiting out the client's
/// run has no limit).
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a client keeps trying to reach a server that is not listening
/// yet.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A server waits this long for a client.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// The two ends of a loopback run (both on UDP port 4791).
const LOOPBACK_SERVER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const LOOPBACK_CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// Runs `tool` as `flags` say, writing perftest's output to `out`.
///
/// # Errors
/// Whatever stopped the run; with no server and no device given, an error
/// of either side of the loopback run.
pub fn run(tool: Tool, flags: &Flags, out: &mut dyn Write) -> Result<(), ToolError> {
    flags.validate(tool).map_err(ToolError::Flags)?;
    if flags.server.is_some() || flags.device.is_some() {
        let role = if flags.server.is_some() {
            Role::Client
        } else {
            Role::Server
        };
        return side_run(tool, flags, role, None, out);
    }
    // Loopback: the server in a thread (quiet), the client here.
    let listener = Exchange::listen(flags.port)?;
    let server_flags = Flags {
        device: Some(LOOPBACK_SERVER.to_string()),
        ..flags.clone()
    };
    let server = std::thread::spawn(move || {
        side_run(
            tool,
            &server_flags,
            Role::Server,
            Some(listener),
            &mut std::io::sink(),
        )
    });
    let client_flags = Flags {
        device: Some(LOOPBACK_CLIENT.to_string()),
        server: Some(LOOPBACK_SERVER.to_string()),
        ..flags.clone()
    };
    let client = side_run(tool, &client_flags, Role::Client, None, out);
    let server = server
        .join()
        .unwrap_or_else(|_| Err(ToolError::Protocol("the server thread panicked".into())));
    match (client, server) {
        (Ok(()), Ok(())) => {
            if flags.check && checks_data(tool, Role::Server) && !checks_data(tool, Role::Client) {
                writeln!(out, " Data check      : OK (verified by the server side)")?;
            }
            Ok(())
        }
        // Ctrl-C stops both; the server then sees the client go away.
        (Err(ToolError::Interrupted), _) | (_, Err(ToolError::Interrupted)) => {
            Err(ToolError::Interrupted)
        }
        // The first cause: a server failure usually makes the client fail.
        (_, Err(e)) => Err(ToolError::Protocol(format!("server side: {e}"))),
        (Err(e), Ok(())) => Err(e),
    }
}

/// What a run measured, for printing and for the results exchange.
enum Measured {
    Bw(report::BwReport),
    Lat(Option<report::LatReport>, Duration, u64),
}

fn print_preamble(
    out: &mut dyn Write,
    tool: Tool,
    flags: &Flags,
    side: &Side,
) -> Result<(), ToolError> {
    let odp = match (flags.implicit_odp, flags.odp) {
        (true, _) => "ON (implicit)",
        (false, true) if flags.odp_prefetch => "ON (prefetched)",
        (false, true) => "ON",
        _ => "OFF",
    };
    writeln!(out, "{RESULT_LINE}")?;
    let title = match (tool.is_atomic(), side.atomic) {
        (true, AtomicType::CmpAndSwap) => tool.title().replace("FETCH_AND_ADD", "CMP_AND_SWAP"),
        _ => tool.title().to_string(),
    };
    writeln!(out, "                    {title}")?;
    writeln!(
        out,
        " Number of qps   : {}\t\tTransport type : IB",
        side.qps.len()
    )?;
    writeln!(out, " Connection type : RC\t\tUsing SRQ      : OFF")?;
    writeln!(out, " ODP             : {odp}")?;
    if tool.is_bw() {
        writeln!(out, " TX depth        : {}", flags.tx_depth)?;
        writeln!(out, " CQ Moderation   : {}", flags.cq_mod)?;
    }
    writeln!(out, " Mtu             : {}[B]", side.mtu.bytes())?;
    writeln!(out, " Link type       : Ethernet")?;
    let gid_index = flags
        .gid_index
        .or_else(|| gid_index_of(side.local_addr().ip()))
        .unwrap_or(0);
    writeln!(out, " GID index       : {gid_index}")?;
    writeln!(out, " Device          : {}", side.local_addr())?;
    writeln!(out, " Data ex. method : Ethernet")?;
    writeln!(out, "{RESULT_LINE}")?;
    Ok(())
}

fn print_key(out: &mut dyn Write, which: &str, tool: Tool, k: &KeyMessage) -> std::io::Result<()> {
    write!(
        out,
        " {which} address: LID {:#06x} QPN {:#08x} PSN {:#08x}",
        k.lid, k.qpn, k.psn
    )?;
    if matches!(tool, Tool::ReadBw | Tool::ReadLat) {
        write!(out, " OUT {:#04x}", k.out_reads)?;
    }
    if !matches!(tool, Tool::SendBw | Tool::SendLat) {
        write!(out, " RKey {:#010x} VAddr {:#018x}", k.rkey, k.vaddr)?;
    }
    let gid: Vec<String> = k.gid.iter().map(|b| format!("{b:02}")).collect();
    writeln!(out, "\n GID: {}", gid.join(":"))
}

/// The data the peer reads (READ tests) is put in place before the keys
/// go out; sources are filled before each run.
fn seed_for(tool: Tool) -> u64 {
    tool as u64 + 11
}

fn side_run(
    tool: Tool,
    flags: &Flags,
    role: Role,
    listener: Option<TcpListener>,
    out: &mut dyn Write,
) -> Result<(), ToolError> {
    let sizes = flags.sizes(tool);
    let max = sizes.iter().copied().max().unwrap_or(8);
    let server_name = flags.server.as_deref();
    let fallback = if role == Role::Server {
        LOOPBACK_SERVER
    } else {
        LOOPBACK_CLIENT
    };
    let addr = device_address(flags, server_name, fallback)?;
    let mut side = Side::open(tool, flags, addr, max)?;
    let mut ex = match (role, server_name) {
        (Role::Client, Some(server)) => {
            let mut ex = Exchange::connect(server, flags.port, CONNECT_TIMEOUT)?;
            ex.set_timeout(Some(EXCHANGE_TIMEOUT))?;
            ex
        }
        _ => {
            let listener = match listener {
                Some(l) => l,
                None => Exchange::listen(flags.port)?,
            };
            let mut ex = Exchange::accept(&listener, ACCEPT_TIMEOUT)?;
            ex.set_timeout(Some(EXCHANGE_TIMEOUT))?;
            ex
        }
    };
    let passive_target = matches!(tool, Tool::ReadBw | Tool::ReadLat) && role == Role::Server;
    if flags.check && passive_target {
        for q in 0..side.qps.len() {
            side.write(side.target(q), &pattern(max as usize, seed_for(tool)));
        }
    }
    let local_keys = side.keys(tool);
    let options = PlanOptions {
        duplex: false,
        run_all_sizes: flags.all.then_some(sizes.len() as u32),
        duration: flags.duration.is_some(),
    };
    let steps = plan(tool, role, options);
    let units = if flags.report_gbits {
        Units::GigaBits
    } else {
        Units::MegaBytes
    };
    let mut remote = Vec::new();
    let mut keys_seen = 0;
    let mut runs = 0;
    let mut last_report = WireReport::default();
    let mut header_printed = false;
    let runs_total = steps.iter().filter(|s| **s == Step::Run).count();
    for (i, step) in steps.iter().enumerate() {
        // A server with no run of its own waits in the next handshake for
        // the whole of the client's run.
        let waits_for_run = role == Role::Server && runs_total == 0 && *step == Step::Handshake;
        ex.set_timeout(if waits_for_run && i + 1 < steps.len() {
            None
        } else {
            Some(EXCHANGE_TIMEOUT)
        })?;
        match step {
            Step::Versions => {
                ex.versions()?;
            }
            Step::SysData => {
                ex.sys_data(SysData {
                    cycle_buffer: 4096,
                    cache_line_size: 64,
                })?;
            }
            Step::Mtu => {
                let agreed = ex.mtu(wire_mtu(side.mtu))?.agreed;
                side.mtu = super::side::path_mtu(256 << (agreed as u32 - 1));
                // perftest prints its parameters once the MTU is agreed.
                print_preamble(out, tool, flags, &side)?;
            }
            Step::Keys => {
                remote = ex.keys(&local_keys)?;
                keys_seen += 1;
                if keys_seen == 2 {
                    for (l, r) in local_keys.iter().zip(&remote) {
                        print_key(out, "local", tool, l)?;
                        print_key(out, "remote", tool, r)?;
                    }
                    writeln!(out, "{RESULT_LINE}")?;
                }
            }
            Step::ConnectQps => {
                side.connect(&remote, wire_mtu(side.mtu))?;
                if matches!(tool, Tool::SendBw | Tool::SendLat) {
                    bw::prepost(&side)?;
                }
            }
            Step::Handshake => {
                ex.handshake(&local_keys[0])?;
            }
            Step::Run => {
                let size = sizes[runs.min(sizes.len() - 1)];
                runs += 1;
                if !header_printed {
                    header_printed = true;
                    writeln!(out, "{RESULT_LINE}")?;
                    if tool.is_bw() {
                        writeln!(out, "{}", report::bw_header(units))?;
                    } else if flags.duration.is_some() {
                        writeln!(out, "{}", report::LAT_DURATION_HEADER)?;
                    } else {
                        writeln!(out, "{}", report::LAT_HEADER)?;
                    }
                }
                match measure(tool, flags, role, &side, &remote, size, units)? {
                    Measured::Bw(r) => {
                        writeln!(out, "{}", r.row())?;
                        last_report = WireReport {
                            size: r.size,
                            iters: r.iters,
                            bw_peak: r.peak,
                            bw_avg: r.average,
                            msg_rate_avg: r.msg_rate,
                            ..WireReport::default()
                        };
                    }
                    Measured::Lat(Some(r), _, _) => writeln!(out, "{}", r.row())?,
                    Measured::Lat(None, elapsed, iters) => {
                        writeln!(
                            out,
                            "{}",
                            report::lat_duration_row(size, iters, elapsed, tool)
                        )?;
                    }
                }
                check_after_run(tool, flags, role, &side, size)?;
            }
            Step::BwResults => {
                let theirs = ex.bw_results(&last_report)?;
                if runs_total == 0 {
                    // A half-duplex server prints the client's results, as
                    // perftest's does.
                    header_printed = true;
                    writeln!(out, "{RESULT_LINE}\n{}", report::bw_header(units))?;
                    writeln!(out, "{}", peer_row(&theirs))?;
                }
            }
            Step::Close => {
                ex.close(&local_keys[0])?;
                break;
            }
        }
    }
    if !header_printed && tool.is_bw() {
        // A half-duplex server: perftest prints the header, the client has
        // the numbers.
        writeln!(out, "{RESULT_LINE}\n{}", report::bw_header(units))?;
    }
    writeln!(out, "{RESULT_LINE}")?;
    if flags.odp || flags.implicit_odp {
        let c = side.mr.odp_counters();
        writeln!(
            out,
            " ODP counters: faults {}, pages faulted {}, retries {}, invalidations {}, prefetches {}, event sources {}",
            c.faults,
            c.pages_faulted,
            c.retries,
            c.invalidations,
            c.prefetches,
            side.ctx.query_device().odp_events
        )?;
        let mode = |mr: &provider::MemoryRegion| {
            mr.odp_mode()
                .map_or("pinned".to_owned(), |m| format!("{m:?}"))
        };
        match &side.remote_mr {
            Some(remote) => writeln!(
                out,
                " ODP mode: {} for local SGEs, {} for the peer",
                mode(&side.mr),
                mode(remote)
            )?,
            None => writeln!(out, " ODP mode: {}", mode(&side.mr))?,
        }
    }
    if flags.check {
        check_at_end(tool, flags, role, &side, *sizes.last().unwrap_or(&8))?;
        if checks_data(tool, role) {
            writeln!(out, " Data check      : OK")?;
        }
    }
    Ok(())
}

/// The table row of the peer's results from the results exchange.
fn peer_row(r: &WireReport) -> String {
    report::BwReport {
        size: r.size,
        iters: r.iters,
        peak: r.bw_peak,
        average: r.bw_avg,
        msg_rate: r.msg_rate_avg,
    }
    .row()
}

/// Whether this side verifies data under `--check` (the side that
/// receives it).
fn checks_data(tool: Tool, role: Role) -> bool {
    match tool {
        Tool::WriteBw | Tool::SendBw | Tool::AtomicBw => role == Role::Server,
        Tool::ReadBw | Tool::ReadLat => role == Role::Client,
        Tool::WriteLat | Tool::SendLat | Tool::AtomicLat => true,
    }
}

fn measure(
    tool: Tool,
    flags: &Flags,
    role: Role,
    side: &Side,
    remote: &[KeyMessage],
    size: u64,
    units: Units,
) -> Result<Measured, ToolError> {
    let length = match flags.duration() {
        Some(d) => Length::Duration(d),
        None => Length::Iterations(flags.iterations(tool)),
    };
    if flags.check && role == Role::Client || matches!(tool, Tool::WriteLat | Tool::SendLat) {
        for q in 0..side.qps.len() {
            let data = pattern(size as usize, size);
            side.write(side.source(q), &data);
        }
    }
    if tool.is_bw() {
        let t: Timings = if tool == Tool::SendBw && role == Role::Server {
            bw::receiver(side, length, side.qps.len() as u64)?
        } else {
            bw::requester(
                side,
                remote,
                tool,
                size,
                length,
                flags.tx_depth,
                flags.cq_mod,
            )?
        };
        if t.posted.is_empty() {
            return Err(ToolError::Protocol("nothing was transferred".into()));
        }
        // perftest reports no peak in duration mode.
        let peak_every = flags.duration.is_none().then_some(flags.cq_mod as usize);
        let r = report::bw(size, &t.posted, &t.completed, peak_every, units);
        return Ok(Measured::Bw(r));
    }
    let start = std::time::Instant::now();
    let posted = lat::run(side, &remote[0], tool, role, size, length)?;
    let one_way = matches!(tool, Tool::WriteLat | Tool::SendLat);
    if flags.duration.is_some() {
        return Ok(Measured::Lat(None, start.elapsed(), posted.len() as u64));
    }
    Ok(Measured::Lat(
        report::lat(size, &posted, one_way),
        start.elapsed(),
        posted.len() as u64,
    ))
}

fn compare(what: &str, got: &[u8], want: &[u8]) -> Result<(), ToolError> {
    match got.iter().zip(want).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(at) => Err(ToolError::Check(format!(
            "{what}: byte {at} is {:#04x}, expected {:#04x}",
            got[at], want[at]
        ))),
    }
}

/// Checks what this side received in the run just ended.
fn check_after_run(
    tool: Tool,
    flags: &Flags,
    role: Role,
    side: &Side,
    size: u64,
) -> Result<(), ToolError> {
    if !flags.check {
        return Ok(());
    }
    let len = size as usize;
    for q in 0..side.qps.len() {
        let got = side.read(side.target(q), len);
        match (tool, role) {
            (Tool::ReadBw | Tool::ReadLat, Role::Client) => {
                let want = pattern(side.slot, seed_for(tool));
                compare("READ data", &got, &want[..len])?;
            }
            (Tool::SendBw, Role::Server) if flags.duration.is_none() => {
                compare("received SEND", &got, &pattern(len, size))?;
            }
            (Tool::WriteLat | Tool::SendLat, _) => {
                // All but the last byte, which carries the iteration.
                let n = len.saturating_sub(1);
                compare("ping-pong data", &got[..n], &pattern(len, size)[..n])?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Checks, once the client is done, what a passive target received.
fn check_at_end(
    tool: Tool,
    flags: &Flags,
    role: Role,
    side: &Side,
    last_size: u64,
) -> Result<(), ToolError> {
    if role != Role::Server {
        return Ok(());
    }
    for q in 0..side.qps.len() {
        match tool {
            Tool::WriteBw => {
                let len = last_size as usize;
                compare(
                    "RDMA WRITE data",
                    &side.read(side.target(q), len),
                    &pattern(len, last_size),
                )?;
            }
            Tool::AtomicBw if flags.duration.is_none() => {
                let counter =
                    u64::from_ne_bytes(side.read(side.target(q), 8).try_into().unwrap_or_default());
                // Compare-and-swap of 0 with 0 leaves the zeroed target.
                let (want, sent) = match side.atomic {
                    AtomicType::FetchAndAdd => (flags.iterations(tool), "fetch-and-adds of 1"),
                    AtomicType::CmpAndSwap => (0, "compare-and-swaps of 0 with 0"),
                };
                if counter != want {
                    return Err(ToolError::Check(format!(
                        "queue pair {q}: the target is {counter} after {} {sent}, expected {want}",
                        flags.iterations(tool)
                    )));
                }
            }
            _ => {}
        }
    }
    Ok(())
}
