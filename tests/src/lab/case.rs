//! Running one case: capture on the bridge, start the server side, run
//! the client side, each under a time limit; then check the capture with
//! `roce-dump --check` and read both sides' figures.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::LabError;
use super::dev_exec::PUSH_DIR;
use super::guest::{GUEST_V4, GUEST_V6, Guest, GuestOutput};
use super::matrix::{Case, Direction, Kind};
use super::table::{Figures, figures};

/// The host's addresses on the lab's bridge.
pub const HOST_V4: &str = "198.18.0.1";
/// The host's IPv6 address.
pub const HOST_V6: &str = "fd00:4791::1";
/// The bridge the host side uses.
pub const BRIDGE: &str = "labbr0";

/// Where things are.
#[derive(Clone, Debug)]
pub struct Setup {
    /// The folder of the project's binaries (`write_bw`, `roce-dump`).
    pub tools: PathBuf,
    /// The folder for this run's outputs and captures.
    pub out: PathBuf,
}

/// What one case gave.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Passed, or why not.
    pub verdict: Result<(), String>,
    /// perftest's figures.
    pub theirs: Figures,
    /// The project tool's figures.
    pub ours: Figures,
    /// The capture check's summary line.
    pub capture: String,
    /// Wall time.
    pub elapsed: Duration,
    /// Why the case ran a second time, if it did (see [`run`]).
    pub rerun: Option<&'static str>,
}

impl Outcome {
    /// An outcome without figures: a case that could not run, or one test
    /// of the backend (`capture` holds its note).
    pub fn without_figures(verdict: Result<(), String>, capture: &str, elapsed: Duration) -> Self {
        Outcome {
            verdict,
            theirs: Figures::default(),
            ours: Figures::default(),
            capture: capture.to_string(),
            elapsed,
            rerun: None,
        }
    }
}

/// A failure on perftest's side that is the TCG guest's, not the
/// protocol's: rerun once.
fn guest_flake(text: &str) -> bool {
    text.contains("Can't produce a report") || text.contains("Correlation coefficient")
}

/// Runs `case` (number `index`, which picks its TCP port), once more if
/// it failed for a reason of the guest's own: perftest's clock calibration
/// under TCG, or kernel rxe's requester stopping inside a message (see
/// [`super::stall`]).
pub fn run(setup: &Setup, guest: &Guest, case: &Case, index: usize) -> Outcome {
    let start = Instant::now();
    let mut outcome = attempt(setup, guest, case, index, 0);
    let rerun = match &outcome.verdict {
        Ok(()) => None,
        Err(_) if outcome.theirs.flaked => Some("perftest clock"),
        Err(why) if why.contains(" timed out") && !why.starts_with("ours") => {
            let pcap = setup.out.join(format!("{index:03}-0.pcap"));
            guest_stalled(setup, &pcap).then_some("kernel rxe's sender stalled mid-message")
        }
        Err(_) => None,
    };
    if rerun.is_some() {
        outcome = attempt(setup, guest, case, index, 1);
    }
    outcome.rerun = rerun;
    outcome.elapsed = start.elapsed();
    outcome
}

/// Whether the capture at `pcap` shows the guest's sender stopping inside
/// a message on its own ([`super::stall::guest_stopped_mid_message`]).
fn guest_stalled(setup: &Setup, pcap: &Path) -> bool {
    let Ok(out) = Command::new(setup.tools.join("roce-dump"))
        .arg(pcap)
        .output()
    else {
        return false;
    };
    let dump = String::from_utf8_lossy(&out.stdout);
    [GUEST_V4, GUEST_V6]
        .iter()
        .any(|guest| super::stall::guest_stopped_mid_message(&dump, guest))
}

fn attempt(setup: &Setup, guest: &Guest, case: &Case, index: usize, retry: u32) -> Outcome {
    let port = 19100 + (index as u32 * 2 + retry) % 20000;
    let stem = setup.out.join(format!("{index:03}-{}", retry));
    let pcap = stem.with_extension("pcap");
    let mut result = Outcome::without_figures(Ok(()), "", Duration::ZERO);
    let capture = match Capture::start(&pcap) {
        Ok(c) => c,
        Err(e) => {
            result.verdict = Err(format!("tcpdump: {e}"));
            return result;
        }
    };
    let sides = run_sides(setup, guest, case, port, &stem);
    capture.stop();
    let (theirs, ours) = match sides {
        Ok(pair) => pair,
        Err(e) => {
            result.verdict = Err(e.to_string());
            return result;
        }
    };
    let _ = std::fs::write(stem.with_extension("perftest.txt"), &theirs.text);
    result.theirs = figures(&theirs.text);
    result.theirs.flaked = guest_flake(&theirs.text);
    result.ours = figures(&ours.text);
    let datacheck_line = ours.text.lines().find(|l| l.starts_with("datacheck:"));
    if case.kind == Kind::DataCheck {
        result.ours = Figures {
            rows: 1,
            main: datacheck_line
                .and_then(|l| l.split(" transfers, ").nth(1))
                .and_then(|l| l.split(' ').next())
                .and_then(|n| n.parse().ok()),
            unit: "B ok",
            flaked: false,
        };
    }
    let check = check_capture(setup, &pcap).map(|summary| {
        let log = std::fs::read_to_string(pcap.with_extension("tcpdump.txt")).unwrap_or_default();
        match log.lines().find(|l| l.ends_with("dropped by kernel")) {
            Some(d) if !d.starts_with("0 ") => format!("{summary}; tcpdump: {d}"),
            _ => summary,
        }
    });
    result.capture = check.as_ref().map_or_else(|e| e.clone(), |s| s.clone());
    if let Some(known) = datacheck_line.filter(|l| l.contains("known kernel")) {
        result.capture = format!("{}; {known}", result.capture);
    }
    result.verdict = verdict(case, &theirs, &ours, &check);
    result
}

/// The project tool's side of a case.
struct HostOutput {
    status: Option<ExitStatus>,
    text: String,
}

fn verdict(
    case: &Case,
    theirs: &GuestOutput,
    ours: &HostOutput,
    check: &Result<String, String>,
) -> Result<(), String> {
    let guest_side = if case.kind == Kind::RdmaCore {
        "the rxe0 side"
    } else {
        "perftest"
    };
    match theirs.status {
        Some(0) => {}
        Some(124) | Some(137) | None => return Err(format!("{guest_side} timed out (killed)")),
        Some(code) => {
            let last = theirs.text.lines().rev().find(|l| !l.trim().is_empty());
            return Err(format!(
                "{guest_side} exited {code}{}",
                last.map(|l| format!(": {}", l.trim())).unwrap_or_default()
            ));
        }
    }
    match ours.status {
        Some(s) if s.success() => {}
        Some(s) => return Err(format!("ours exited {s}")),
        None => return Err("ours timed out (killed)".into()),
    }
    if case.kind == Kind::DataCheck {
        return check.clone().map(|_| ());
    }
    if let Some(want) = &case.ours_prints
        && !ours.text.contains(want.as_str())
    {
        return Err(format!("ours did not print {want:?}"));
    }
    let rows_needed = |f: &Figures| f.rows > 0;
    let theirs_f = figures(&theirs.text);
    let ours_f = figures(&ours.text);
    // Clients always print a table; servers of READ/atomic latency do not.
    let (client, server) = match case.direction {
        Direction::GuestServes => (&ours_f, &theirs_f),
        Direction::HostServes => (&theirs_f, &ours_f),
        Direction::GuestOnly => return Err("not an interop case".into()),
    };
    if !rows_needed(client) {
        return Err("the client printed no result".into());
    }
    let server_reports = !matches!(case.tool, "read_lat");
    if server_reports && !rows_needed(server) {
        return Err("the server printed no result".into());
    }
    if case.kind == Kind::RdmaCore {
        data_checked(case, &theirs.text, &ours.text)?;
    }
    check.clone().map(|_| ())
}

/// The side that received the data (the server of WRITE and SEND, the
/// client of READ) must have checked it: `--check` prints `Data check : OK`
/// there and fails the run on a difference.
fn data_checked(case: &Case, guest: &str, host: &str) -> Result<(), String> {
    let server_receives = case.tool != "read_bw";
    let guest_receives = server_receives == (case.direction == Direction::GuestServes);
    let (text, side) = if guest_receives {
        (guest, "the rxe0 side")
    } else {
        (host, "ours")
    };
    let ok = text
        .lines()
        .any(|l| l.starts_with(" Data check") && l.trim_end().ends_with(": OK"));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{side} received the data but printed no data check"
        ))
    }
}

/// Starts the server side, then the client side, each bounded.
fn run_sides(
    setup: &Setup,
    guest: &Guest,
    case: &Case,
    port: u32,
    stem: &Path,
) -> Result<(GuestOutput, HostOutput), LabError> {
    let limit = Duration::from_secs(case.timeout_secs);
    let gid = if case.ipv6 { "2" } else { "1" };
    let mut theirs: Vec<String> = vec![
        format!("ib_{}", case.tool),
        "-d".into(),
        "rxe0".into(),
        "-x".into(),
        gid.into(),
        "-p".into(),
        port.to_string(),
    ];
    theirs.extend(case.common.iter().cloned());
    theirs.extend(case.theirs.iter().cloned());
    let mut ours: Vec<String> = ["-d", &format!("srxe-{BRIDGE}"), "-x", gid, "-p"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    ours.push(port.to_string());
    ours.extend(case.common.iter().cloned());
    ours.extend(case.ours.iter().cloned());
    if case.kind == Kind::Verbs {
        // Debian's perftest on the host too, over libibverbs.so.1.
        ours = [
            format!("ib_{}", case.tool),
            "-d".into(),
            format!("srxe-{BRIDGE}"),
            "-x".into(),
            gid.into(),
            "-p".into(),
            port.to_string(),
        ]
        .into();
        ours.extend(case.common.iter().cloned());
        ours.extend(case.ours.iter().cloned());
    }
    if case.kind == Kind::RdmaCore {
        // The rdma-core build, pushed into the guest, on kernel rxe. It
        // picks rxe0's IPv4 GID itself (index 1, what -x 1 names) and
        // refuses -x on a kernel device.
        theirs = vec![
            format!("{PUSH_DIR}/{}", case.tool),
            "-d".into(),
            "rxe0".into(),
            "-p".into(),
            port.to_string(),
        ];
        theirs.extend(case.common.iter().cloned());
        theirs.extend(case.theirs.iter().cloned());
    }
    if case.kind == Kind::DataCheck {
        let mut guest_words = vec!["rc_check".to_string(), "-p".into(), port.to_string()];
        guest_words.extend(["-x".to_string(), gid.to_string()]);
        guest_words.extend(case.theirs.iter().cloned());
        theirs = guest_words;
        let local = if case.ipv6 { HOST_V6 } else { HOST_V4 };
        ours = ["--local", local, "--guest", GUEST_V4, "-p"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        ours.push(port.to_string());
        ours.extend(case.ours.iter().cloned());
    }
    let guest_cmd = |server: Option<&str>| {
        let mut words = theirs.clone();
        words.extend(server.map(String::from));
        format!("timeout -s KILL {} {}", case.timeout_secs, words.join(" "))
    };
    let out_file = stem.with_extension("ours.txt");
    match case.direction {
        Direction::GuestServes => {
            let cmd = guest_cmd(None);
            let remote = std::thread::scope(|s| {
                let g = s.spawn(|| guest.exec(&cmd, limit + Duration::from_secs(10)));
                // perftest listens once it has opened the device; ours
                // retries its connection for a few seconds.
                std::thread::sleep(Duration::from_millis(1500));
                if case.kind != Kind::DataCheck {
                    ours.push(GUEST_V4.into());
                }
                let tool = host_program(case);
                let mine = run_host(setup, tool, &ours, &out_file, limit);
                (g.join(), mine)
            });
            let theirs = remote
                .0
                .map_err(|_| LabError::Guest("the guest thread panicked".into()))??;
            Ok((theirs, remote.1?))
        }
        Direction::GuestOnly => Err(LabError::Guest(format!(
            "{}: not an interop case",
            case.label
        ))),
        Direction::HostServes => {
            let mut child = spawn_host(setup, host_program(case), &ours, &out_file)?;
            wait_listening(port as u16, Duration::from_secs(10));
            let theirs = guest.exec(&guest_cmd(Some(HOST_V4)), limit + Duration::from_secs(10));
            // Our server would wait the whole limit for a client that
            // failed: a few seconds to finish, then it is killed.
            let wait = match &theirs {
                Ok(GuestOutput {
                    status: Some(0), ..
                }) => limit,
                _ => Duration::from_secs(5),
            };
            let mine = finish_host(&mut child, &out_file, wait);
            Ok((theirs?, mine?))
        }
    }
}

/// The host side's program, in the folder of the project's binaries.
fn host_program(case: &Case) -> &'static str {
    match case.kind {
        Kind::Perftest | Kind::RdmaCore | Kind::RdmaCoreTests => case.tool,
        Kind::DataCheck => "lab-datacheck",
        Kind::Verbs => "srxe-verbs",
    }
}

fn spawn_host(setup: &Setup, tool: &str, args: &[String], out: &Path) -> Result<Child, LabError> {
    let file = File::create(out)?;
    Command::new(setup.tools.join(tool))
        .args(args)
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .map_err(|e| LabError::Start(tool.into(), e))
}

/// Waits for the child up to `limit` from now, killing it after that.
fn finish_host(child: &mut Child, out: &Path, limit: Duration) -> Result<HostOutput, LabError> {
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ok(HostOutput {
        status,
        text: std::fs::read_to_string(out).unwrap_or_default(),
    })
}

fn run_host(
    setup: &Setup,
    tool: &str,
    args: &[String],
    out: &Path,
    limit: Duration,
) -> Result<HostOutput, LabError> {
    let mut child = spawn_host(setup, tool, args, out)?;
    finish_host(&mut child, out, limit)
}

/// Waits until a TCP socket listens on `port` in this namespace
/// (`/proc/net/tcp`, state 0A), or `limit` passes.
fn wait_listening(port: u16, limit: Duration) {
    let start = Instant::now();
    let needle = format!(":{port:04X} ");
    while start.elapsed() < limit {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        if table.lines().any(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|a| format!("{a} ").ends_with(&needle))
                && l.split_whitespace().nth(3) == Some("0A")
        }) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// tcpdump on the bridge, RoCEv2 only.
struct Capture {
    child: Child,
}

impl Capture {
    fn start(file: &Path) -> Result<Capture, LabError> {
        let log = File::create(file.with_extension("tcpdump.txt"))?;
        let child = Command::new("tcpdump")
            .args(["-i", BRIDGE, "--immediate-mode", "-B", "65536", "-U", "-w"])
            .arg(file)
            .args(["udp", "port", "4791"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| LabError::Start("tcpdump".into(), e))?;
        // tcpdump says "listening on" once it captures.
        let start = Instant::now();
        let log = file.with_extension("tcpdump.txt");
        while start.elapsed() < Duration::from_secs(5) {
            if std::fs::read_to_string(&log).is_ok_and(|t| t.contains("listening on")) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Capture { child })
    }

    /// Stops the capture (SIGINT, so tcpdump flushes) and waits for it.
    fn stop(mut self) {
        // Frames still in flight reach the capture first.
        std::thread::sleep(Duration::from_millis(300));
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on the pid of our own child, which we have not
        // waited for yet, so the pid is still ours.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `roce-dump --check` of the capture: its summary line, or why it failed.
fn check_capture(setup: &Setup, pcap: &Path) -> Result<String, String> {
    let out = Command::new(setup.tools.join("roce-dump"))
        .arg("--check")
        .arg(pcap)
        .output()
        .map_err(|e| format!("roce-dump: {e}"))?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let summary = text
        .lines()
        .find(|l| l.starts_with("frames read:"))
        .unwrap_or("no summary")
        .to_string();
    let frames = summary
        .split("RoCEv2 frames: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    if !out.status.success() {
        return Err(format!("roce-dump --check failed: {summary}"));
    }
    if frames == 0 {
        return Err("the capture holds no RoCEv2 frame".into());
    }
    let ports = super::flow_ports::check(&setup.tools.join("roce-dump"), pcap)?;
    Ok(format!("capture: {frames} RoCEv2 frames checked, {ports}"))
}
