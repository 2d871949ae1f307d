//! The perftest-style tools end to end: each binary in loopback mode (both
//! sides in one process, real devices on 127.0.0.1 and 127.0.0.2, the real
//! TCP exchange) with `--check`, and as separate server and client
//! processes; bad flags and unreachable peers.

use std::process::{Command, Output};
use std::sync::Mutex;

/// Loopback runs bind UDP port 4791 on fixed addresses: one at a time.
static LOOPBACK: Mutex<()> = Mutex::new(());

fn tool(name: &str, args: &[&str]) -> Output {
    tool_env(name, args, &[])
}

fn tool_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let bin = match name {
        "write_bw" => env!("CARGO_BIN_EXE_write_bw"),
        "read_bw" => env!("CARGO_BIN_EXE_read_bw"),
        "send_bw" => env!("CARGO_BIN_EXE_send_bw"),
        "atomic_bw" => env!("CARGO_BIN_EXE_atomic_bw"),
        "write_lat" => env!("CARGO_BIN_EXE_write_lat"),
        "read_lat" => env!("CARGO_BIN_EXE_read_lat"),
        "send_lat" => env!("CARGO_BIN_EXE_send_lat"),
        other => panic!("no tool {other}"),
    };
    Command::new(bin)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n{}{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The table rows of an output (lines after a header, before the closing
/// line), split into fields.
fn rows(o: &Output) -> Vec<Vec<String>> {
    let out = String::from_utf8_lossy(&o.stdout);
    let mut rows = Vec::new();
    let mut in_table = false;
    for line in out.lines() {
        if line.starts_with(" #bytes") {
            in_table = true;
        } else if line.starts_with("----") {
            in_table = false;
        } else if in_table {
            rows.push(line.split_whitespace().map(String::from).collect());
        }
    }
    rows
}

#[test]
fn every_tool_runs_in_loopback_and_checks_its_data() {
    let _one = LOOPBACK.lock().unwrap_or_else(|p| p.into_inner());
    for (name, args, size) in [
        (
            "write_bw",
            &["-s", "4096", "-n", "300", "--odp"][..],
            "4096",
        ),
        (
            "write_bw",
            &["-s", "3000", "-n", "100", "-q", "2", "-m", "1024"],
            "3000",
        ),
        (
            "read_bw",
            &["-s", "65536", "-n", "100", "--implicit-odp"],
            "65536",
        ),
        (
            "send_bw",
            &["-s", "1500", "-n", "300", "--odp", "--odp-prefetch"],
            "1500",
        ),
        ("atomic_bw", &["-n", "200"], "8"),
        ("atomic_bw", &["-n", "200", "-A", "CMP_AND_SWAP"], "8"),
        ("write_lat", &["-s", "64", "-n", "200", "--odp"], "64"),
        ("read_lat", &["-s", "4096", "-n", "100"], "4096"),
        ("send_lat", &["-s", "300", "-n", "200", "--odp"], "300"),
    ] {
        let mut all = vec!["--check", "-p", "18601"];
        all.extend_from_slice(args);
        let o = tool(name, &all);
        let t = text(&o);
        assert!(o.status.success(), "{name} {args:?}: {t}");
        let rows = rows(&o);
        assert_eq!(rows.len(), 1, "{name}: {t}");
        assert_eq!(rows[0][0], size, "{name}: {t}");
        // Bandwidth rows have 5 fields, latency rows 9; all positive.
        let fields = if name.ends_with("_bw") { 5 } else { 9 };
        assert_eq!(rows[0].len(), fields, "{name}: {t}");
        let average: f64 = rows[0][if fields == 5 { 3 } else { 5 }].parse().unwrap();
        assert!(average > 0.0, "{name}: {t}");
        assert!(t.contains(" Data check      : OK"), "{name}: {t}");
        if args.contains(&"--odp") || args.contains(&"--implicit-odp") {
            assert!(t.contains(" ODP counters: faults "), "{name}: {t}");
            // The default: the userfaultfd monitor follows every unmap.
            assert!(t.contains(", event sources uffd\n"), "{name}: {t}");
        }
        if args.contains(&"CMP_AND_SWAP") {
            assert!(t.contains("Atomic CMP_AND_SWAP BW Test"), "{t}");
        }
        if args.contains(&"--odp-prefetch") {
            assert!(!t.contains("prefetches 0"), "{name}: {t}");
        }
    }
}

#[test]
fn odp_event_sources_follow_the_flag_and_the_environment() {
    let _one = LOOPBACK.lock().unwrap_or_else(|p| p.into_inner());
    let warning = " ODP events: no source sees plain unmaps";
    let args = ["-s", "4096", "-n", "100", "--odp", "--check", "-p", "18605"];
    for (flag, env, sources) in [
        ("none", None, "none"),
        ("uffd", Some("none"), "uffd"),
        ("auto", Some("none"), "none"),
        ("auto", Some("uffd"), "uffd"),
    ] {
        let mut all = args.to_vec();
        all.extend(["--odp-events", flag]);
        let env: Vec<_> = env.map(|v| ("SRXE_ODP_EVENTS", v)).into_iter().collect();
        let o = tool_env("write_bw", &all, &env);
        let t = text(&o);
        assert!(o.status.success(), "{flag} {env:?}: {t}");
        let line = format!(", event sources {sources}\n");
        assert!(t.contains(&line), "{flag} {env:?}: {t}");
        // Both sides run in this one process: said once.
        let warned = if sources == "none" { 1 } else { 0 };
        assert_eq!(t.matches(warning).count(), warned, "{flag} {env:?}: {t}");
    }
}

#[test]
fn all_sizes_and_duration_mode() {
    let _one = LOOPBACK.lock().unwrap_or_else(|p| p.into_inner());
    let o = tool(
        "write_bw",
        &["-a", "-n", "5", "--odp", "--check", "-p", "18602"],
    );
    let sizes: Vec<String> = rows(&o).into_iter().map(|r| r[0].clone()).collect();
    let want: Vec<String> = (1..=23).map(|k| (1u64 << k).to_string()).collect();
    assert_eq!(sizes, want, "{}", text(&o));
    let o = tool("send_bw", &["-D", "1", "-s", "1024", "-p", "18602"]);
    assert!(o.status.success(), "{}", text(&o));
    let r = rows(&o);
    // Duration mode: no peak, a positive average.
    assert_eq!(r[0][2], "0.00", "{}", text(&o));
    assert!(r[0][3].parse::<f64>().unwrap() > 0.0);
    let o = tool("write_lat", &["-D", "1", "-p", "18602"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("t_avg[usec]    tps average"));
}

#[test]
fn server_and_client_as_separate_processes() {
    let _one = LOOPBACK.lock().unwrap_or_else(|p| p.into_inner());
    let server = Command::new(env!("CARGO_BIN_EXE_send_bw"))
        .args([
            "-d",
            "127.0.0.1",
            "-p",
            "18603",
            "-s",
            "2048",
            "-n",
            "500",
            "--check",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let client = tool(
        "send_bw",
        &[
            "-d",
            "127.0.0.2",
            "-p",
            "18603",
            "-s",
            "2048",
            "-n",
            "500",
            "--check",
            "127.0.0.1",
        ],
    );
    let server = server.wait_with_output().unwrap();
    assert!(client.status.success(), "{}", text(&client));
    assert!(server.status.success(), "{}", text(&server));
    // Both print their own measurement for SEND, and the server checked
    // what it received.
    assert_eq!(rows(&client)[0][1], "500");
    assert_eq!(rows(&server)[0][1], "500");
    assert!(text(&server).contains("Data check      : OK"));
}

#[test]
fn write_bw_server_prints_the_clients_results_the_agreed_mtu_and_its_gid() {
    let _one = LOOPBACK.lock().unwrap_or_else(|p| p.into_inner());
    // The server offers lo's 4096, the client asks for 1024: both run
    // and print 1024. `-x 1` on lo is 127.0.0.1 (0 is the link-local GID).
    let server = Command::new(env!("CARGO_BIN_EXE_write_bw"))
        .args(["-d", "srxe-lo", "-x", "1", "-p", "18605", "-s", "4096"])
        .args(["-n", "300"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let client = tool(
        "write_bw",
        &[
            "-d",
            "127.0.0.2",
            "-p",
            "18605",
            "-s",
            "4096",
            "-n",
            "300",
            "-m",
            "1024",
            "127.0.0.1",
        ],
    );
    let server = server.wait_with_output().unwrap();
    assert!(client.status.success(), "{}", text(&client));
    assert!(server.status.success(), "{}", text(&server));
    for o in [&client, &server] {
        assert!(
            text(o).contains(" Mtu             : 1024[B]"),
            "{}",
            text(o)
        );
    }
    assert!(
        text(&server).contains(" GID index       : 1"),
        "{}",
        text(&server)
    );
    assert!(text(&server).contains(" Device          : 127.0.0.1:4791"));
    // The server's row is the client's, from the results exchange.
    assert_eq!(rows(&server), rows(&client), "{}", text(&server));
    assert_eq!(rows(&server)[0][..2], ["4096", "300"]);
}

#[test]
fn gid_indexes_follow_rxes_table() {
    // lo's table: 0 link-local (unusable here), 1 127.0.0.1, 2 ::1.
    let o = tool("write_bw", &["-d", "srxe-lo", "-x", "9", "-p", "18606"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("-x 9: no such GID"), "{}", text(&o));
    assert!(text(&o).contains("1 = 127.0.0.1"), "{}", text(&o));
    let o = tool("write_bw", &["-d", "srxe-lo", "-x", "0", "-p", "18606"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("link-local"), "{}", text(&o));
    let o = tool("atomic_bw", &["-A", "SWAP"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn bad_flags_and_unreachable_peers_are_clear_errors() {
    let o = tool("write_bw", &["-m", "1500"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("-m 1500"), "{}", text(&o));
    let o = tool("read_bw", &["--no-such-flag"]);
    assert_eq!(o.status.code(), Some(2));
    let o = tool("write_lat", &["-q", "4"]);
    assert_eq!(o.status.code(), Some(2));
    // Nobody listens on this port: the client gives up after its connect
    // window with the reason.
    let o = tool("write_bw", &["-d", "127.0.0.3", "-p", "18604", "127.0.0.1"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("could not connect to 127.0.0.1:18604"),
        "{}",
        text(&o)
    );
    // A device that does not exist.
    let o = tool("send_bw", &["-d", "srxe-nonexistent0"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("no device srxe-nonexistent0"),
        "{}",
        text(&o)
    );
}
