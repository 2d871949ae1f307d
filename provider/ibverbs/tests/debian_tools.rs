//! Debian's own verbs programs (ibverbs-utils, perftest 4.5) over this
//! library, through `LD_LIBRARY_PATH`: `ibv_devices`, `ibv_devinfo -v`,
//! `ibv_rc_pingpong -c` (it checks the data it receives) and every perftest
//! tool, with and without ODP, each pair of processes in two network
//! namespaces joined by a veth pair that the test creates.
//!
//! Needs the Debian packages (`.ci/run` installs them) and, for the
//! namespaces, root; without them the tests print why and pass, unless
//! `SRXE_IBVERBS_REQUIRE_TOOLS=1` (set by `.ci/run` as root) makes that a
//! failure.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Set to make a missing tool or missing root a failure instead of a skip.
const REQUIRE_ENV: &str = "SRXE_IBVERBS_REQUIRE_TOOLS";
/// Seconds any one program may run before `timeout` stops it.
const RUN_LIMIT: &str = "60";
/// The TCP port both ibv_rc_pingpong and perftest listen on.
const EXCHANGE_PORT: u16 = 18515;

/// Whether the test can run; prints the reason and fails if required.
fn can_run(tools: &[&str], need_root: bool) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| !Path::new("/usr/bin").join(t).exists())
        .collect();
    // SAFETY: getuid has no preconditions.
    let root = unsafe { libc::getuid() } == 0;
    let reason = if !missing.is_empty() {
        format!("missing {missing:?} (apt-get install ibverbs-utils perftest)")
    } else if need_root && !root {
        "needs root (network namespaces)".to_owned()
    } else {
        return true;
    };
    if std::env::var_os(REQUIRE_ENV).is_some_and(|v| v == "1") {
        panic!("required but cannot run: {reason}");
    }
    eprintln!("skipped: {reason}");
    false
}

/// The launcher that runs a program over the library this test run built
/// (the line README.md gives users).
const LAUNCHER: &str = env!("CARGO_BIN_EXE_srxe-verbs");

/// Runs a command, panicking if it cannot start.
fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs `ip` with `args`, which must succeed.
fn ip(args: &[&str]) {
    let out = run(Command::new("ip").args(args));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two network namespaces joined by a veth pair, `10.47.91.1` and
/// `fd00:4791::1` in the first (interface `sv0`), `10.47.91.2` and
/// `fd00:4791::2` in the second (`sv1`); deleted on drop.
struct NamespacePair {
    names: [String; 2],
}

impl NamespacePair {
    const ADDRS: [&str; 2] = ["10.47.91.1", "10.47.91.2"];
    const ADDRS6: [&str; 2] = ["fd00:4791::1", "fd00:4791::2"];
    const IFACES: [&str; 2] = ["sv0", "sv1"];

    fn new() -> NamespacePair {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let base = format!("srxe-{}-{n}", std::process::id());
        let names = [format!("{base}a"), format!("{base}b")];
        for name in &names {
            ip(&["netns", "add", name]);
        }
        let pair = NamespacePair { names };
        let [a, b] = &pair.names;
        ip(&[
            "-n", a, "link", "add", "sv0", "type", "veth", "peer", "name", "sv1", "netns", b,
        ]);
        for (i, ns) in pair.names.iter().enumerate() {
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", Self::ADDRS[i]),
                "dev",
                Self::IFACES[i],
            ]);
            let v6 = format!("{}/64", Self::ADDRS6[i]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &v6,
                "dev",
                Self::IFACES[i],
                "nodad",
            ]);
            ip(&["-n", ns, "link", "set", Self::IFACES[i], "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }

    /// A command running `program` in namespace `side` over the library.
    fn command(&self, side: usize, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.names[side], LAUNCHER])
            .args(["timeout", RUN_LIMIT, program]);
        cmd
    }

    /// Waits until something listens on the exchange port in namespace
    /// `side` (the server is ready for its client).
    fn wait_for_listener(&self, side: usize) {
        let needle = format!(":{EXCHANGE_PORT:04X} 00000000:0000 0A");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let out = run(Command::new("ip").args([
                "netns",
                "exec",
                &self.names[side],
                "cat",
                "/proc/net/tcp",
            ]));
            if String::from_utf8_lossy(&out.stdout).contains(&needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no server listening on port {EXCHANGE_PORT}");
    }

    /// Runs `program` as server in the first namespace and client in the
    /// second with the same `args` (plus the device, `srxe-` or `srxe6-`
    /// after `prefix`, and the server's IPv4 address for the client's
    /// exchange); returns both outputs.
    fn run_pair(&self, prefix: &str, program: &str, args: &[&str]) -> [Output; 2] {
        let device = |side: usize| format!("{prefix}-{}", Self::IFACES[side]);
        let server = self
            .command(0, program)
            .args(["-d", &device(0)])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start server");
        self.wait_for_listener(0);
        let client = run(self
            .command(1, program)
            .args(["-d", &device(1)])
            .args(args)
            .arg(Self::ADDRS[0]));
        let server = server.wait_with_output().expect("server output");
        [server, client]
    }
}

impl Drop for NamespacePair {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "delete", name]).status();
        }
    }
}

/// Asserts that both sides exited 0, showing their output otherwise.
fn assert_both_succeeded(what: &str, outputs: &[Output; 2]) {
    for (side, out) in ["server", "client"].iter().zip(outputs) {
        assert!(
            out.status.success(),
            "{what}: {side} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn ibv_devices_lists_a_device_per_interface_address() {
    if !can_run(&["ibv_devices"], false) {
        return;
    }
    let out = run(Command::new(LAUNCHER).arg("ibv_devices"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ibv_devices failed: {text}");
    assert!(text.contains("srxe-lo"), "no loopback device in:\n{text}");
}

#[test]
fn ibv_devinfo_shows_odp_capabilities_and_the_gid_table() {
    if !can_run(&["ibv_devinfo"], true) {
        return;
    }
    let pair = NamespacePair::new();
    let out = run(pair
        .command(0, "ibv_devinfo")
        .args(["-v", "-d", "srxe-sv0"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ibv_devinfo failed: {text}");
    for expected in [
        "hca_id:\tsrxe-sv0",
        "ODP_SUPPORT_IMPLICIT",
        "SUPPORT_SEND",
        "SUPPORT_RECV",
        "SUPPORT_WRITE",
        "SUPPORT_READ",
        "SUPPORT_ATOMIC",
        "PORT_ACTIVE",
        "link_layer:\t\tEthernet",
        // rxe's order: the link-local GID from the MAC, then IPv4, then
        // the other IPv6 addresses.
        "GID[  1]:\t\t::ffff:10.47.91.1, RoCE v2",
        "GID[  2]:\t\tfd00:4791::1, RoCE v2",
    ] {
        assert!(text.contains(expected), "no {expected:?} in:\n{text}");
    }
    let link_local = text
        .lines()
        .find(|l| l.contains("GID[  0]:"))
        .unwrap_or_default();
    assert!(
        link_local.contains("fe80::"),
        "GID 0 is not link-local: {link_local}"
    );
}

/// ibv_rc_pingpong with data checking (`-c`) and `extra` options, over
/// IPv4 (GID 1 of `srxe-sv*`).
fn pingpong(extra: &[&str]) {
    pingpong_on("srxe", "1", extra);
}

/// ibv_rc_pingpong on devices `prefix-sv*` with GID index `gid`.
fn pingpong_on(prefix: &str, gid: &str, extra: &[&str]) {
    if !can_run(&["ibv_rc_pingpong"], true) {
        return;
    }
    let pair = NamespacePair::new();
    let mut args = vec!["-g", gid, "-c", "-n", "200"];
    args.extend_from_slice(extra);
    let outputs = pair.run_pair(prefix, "ibv_rc_pingpong", &args);
    assert_both_succeeded(&format!("ibv_rc_pingpong {args:?}"), &outputs);
    for out in &outputs {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("200 iters in"), "no result line in:\n{text}");
    }
}

#[test]
fn rc_pingpong_checked() {
    pingpong(&[]);
}

/// Over IPv6: `srxe6-sv*`, GID 2 (the global address).
#[test]
fn rc_pingpong_ipv6() {
    pingpong_on("srxe6", "2", &["-o"]);
}

/// 200 bytes fit the inline room the library reports, so ibv_rc_pingpong
/// sends with `IBV_SEND_INLINE`.
#[test]
fn rc_pingpong_inline() {
    pingpong(&["-s", "200"]);
}

/// The `ibv_wr_*` send API (`ibv_create_qp_ex`, `ibv_qp_to_qp_ex`).
#[test]
fn rc_pingpong_new_send_api() {
    pingpong(&["-N"]);
    pingpong(&["-N", "-s", "200"]);
}

#[test]
fn rc_pingpong_odp() {
    pingpong(&["-o", "-s", "65536"]);
}

#[test]
fn rc_pingpong_implicit_odp() {
    pingpong(&["-O"]);
}

#[test]
fn rc_pingpong_odp_prefetch() {
    pingpong(&["-o", "-P"]);
}

#[test]
fn rc_pingpong_implicit_odp_prefetch() {
    pingpong(&["-O", "-P"]);
}

#[test]
fn rc_pingpong_completion_events() {
    pingpong(&["-e"]);
}

/// A perftest tool between the namespaces, with `extra` options.
fn perftest(tool: &str, extra: &[&str]) {
    if !can_run(&[tool], true) {
        return;
    }
    let pair = NamespacePair::new();
    let mut args = vec!["-x", "1", "-n", "200"];
    args.extend_from_slice(extra);
    let outputs = pair.run_pair("srxe", tool, &args);
    assert_both_succeeded(&format!("{tool} {args:?}"), &outputs);
    let text = String::from_utf8_lossy(&outputs[1].stdout);
    assert!(text.contains("#bytes"), "no results in:\n{text}");
}

#[test]
fn perftest_write_bw() {
    perftest("ib_write_bw", &[]);
    perftest("ib_write_bw", &["--odp"]);
    perftest("ib_write_bw", &["-q", "4"]);
}

#[test]
fn perftest_read_bw() {
    perftest("ib_read_bw", &[]);
    perftest("ib_read_bw", &["--odp"]);
}

#[test]
fn perftest_send_bw() {
    perftest("ib_send_bw", &[]);
    perftest("ib_send_bw", &["--odp"]);
    perftest("ib_send_bw", &["-e"]);
}

/// perftest 4.5 itself refuses `--odp` with atomics ("ODP does not support
/// ATOMICS for now"), so only without.
#[test]
fn perftest_atomic_bw() {
    perftest("ib_atomic_bw", &[]);
    perftest("ib_atomic_bw", &["-A", "CMP_AND_SWAP"]);
}

#[test]
fn perftest_write_lat() {
    perftest("ib_write_lat", &[]);
    perftest("ib_write_lat", &["--odp"]);
}

#[test]
fn perftest_read_lat() {
    perftest("ib_read_lat", &[]);
    perftest("ib_read_lat", &["--odp"]);
    perftest("ib_read_lat", &["-e"]);
}

#[test]
fn perftest_send_lat() {
    perftest("ib_send_lat", &[]);
    perftest("ib_send_lat", &["--odp"]);
    perftest("ib_send_lat", &["-e"]);
}

/// What the device lacks makes the tools stop with their own message and
/// exit status, never a crash: completion timestamps and device memory
/// (ibv_rc_pingpong), UD and UC queue pairs and rdma_cm (perftest).
#[test]
fn unsupported_features_fail_cleanly() {
    use std::os::unix::process::ExitStatusExt;
    if !can_run(&["ibv_rc_pingpong", "ib_send_bw"], true) {
        return;
    }
    let pair = NamespacePair::new();
    for (option, message) in [("-t", "completion timestamp"), ("-j", "dm allocation")] {
        let out = run(pair
            .command(0, "ibv_rc_pingpong")
            .args(["-d", "srxe-sv0", "-g", "1", option]));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            out.status.code(),
            Some(1),
            "ibv_rc_pingpong {option}: {text}"
        );
        assert!(text.contains(message), "ibv_rc_pingpong {option}: {text}");
    }
    // UD and UC fail once the two sides have exchanged their addresses.
    for qp_type in ["UD", "UC"] {
        let outputs = pair.run_pair("srxe", "ib_send_bw", &["-x", "1", "-n", "5", "-c", qp_type]);
        for out in &outputs {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.status.signal().is_none(),
                "ib_send_bw -c {qp_type} crashed: {text}"
            );
            assert!(
                !out.status.success(),
                "ib_send_bw -c {qp_type} succeeded: {text}"
            );
        }
        let client = String::from_utf8_lossy(&outputs[1].stdout).into_owned()
            + &String::from_utf8_lossy(&outputs[1].stderr);
        assert!(
            client.contains("Unable to create QP"),
            "ib_send_bw -c {qp_type}: {client}"
        );
    }
    // rdma_cm is the kernel's, which knows nothing of these devices.
    let out = run(pair
        .command(0, "ib_send_bw")
        .args(["-d", "srxe-sv0", "-x", "1", "-R"]));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.signal().is_none() && !out.status.success(),
        "ib_send_bw -R: {text}"
    );
    assert!(
        text.contains("rdma_create_event_channel failed"),
        "ib_send_bw -R: {text}"
    );
}

/// While one process uses a device (its UDP port 4791), another can still
/// open it for its attributes; only its traffic needs the port.
#[test]
fn ibv_devinfo_works_while_another_process_uses_the_device() {
    if !can_run(&["ibv_devinfo", "ibv_rc_pingpong"], true) {
        return;
    }
    let pair = NamespacePair::new();
    let mut server = pair
        .command(0, "ibv_rc_pingpong")
        .args(["-d", "srxe-sv0", "-g", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start server");
    pair.wait_for_listener(0);
    let out = run(pair.command(0, "ibv_devinfo").args(["-d", "srxe-sv0"]));
    // `timeout` passes SIGTERM on to the waiting server.
    // SAFETY: signals the process this test started.
    unsafe { libc::kill(server.id() as libc::pid_t, libc::SIGTERM) };
    let _ = server.wait();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ibv_devinfo failed: {text}");
    assert!(text.contains("hca_id:\tsrxe-sv0"), "no device in:\n{text}");
}
