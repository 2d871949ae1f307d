//! `write_lat` against a scripted peer that runs perftest 4.5's
//! `run_iter_lat_write` loop on a real device over loopback: the server
//! writes first, the client waits first. Our tool must pair with it in
//! both roles.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use examples::perftest::exchange::{Exchange, Role, SysData, Tool};
use examples::perftest::side::{Side, wire_mtu};
use examples::perftest::{Flags, ToolError};
use provider::{SendOp, SendWr, WorkCompletion};

const SIZE: u64 = 64;
const ITERS: u64 = 200;
const WAIT: Duration = Duration::from_secs(10);
/// The scripted server holds its first write this long, so a client that
/// writes first (not perftest's order) is caught in the act.
const HOLD: Duration = Duration::from_millis(300);

fn write_lat(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_write_lat"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The peer's side: a device on `addr`, set up through the exchange as
/// perftest's write_lat does it (handshake; keys; connect; keys;
/// handshake).
fn peer_side(
    addr: &str,
    mut ex: Exchange,
) -> (Side, Vec<examples::perftest::exchange::KeyMessage>) {
    let flags = Flags::try_parse_from(["write_lat", "-s", "64"]).unwrap();
    let mut side = Side::open(Tool::WriteLat, &flags, addr.parse().unwrap(), SIZE).unwrap();
    ex.versions().unwrap();
    ex.sys_data(SysData {
        cycle_buffer: 4096,
        cache_line_size: 64,
    })
    .unwrap();
    let agreed = ex.mtu(wire_mtu(side.mtu)).unwrap().agreed;
    let keys = side.keys(Tool::WriteLat);
    ex.handshake(&keys[0]).unwrap();
    let remote = ex.keys(&keys).unwrap();
    side.connect(&remote, agreed).unwrap();
    ex.keys(&keys).unwrap();
    ex.handshake(&keys[0]).unwrap();
    (side, remote)
}

/// Spins until the byte at `offset` is `value`.
fn await_byte(side: &Side, offset: usize, value: u8) -> Result<(), String> {
    let start = Instant::now();
    while side.byte(offset) != value {
        if start.elapsed() > WAIT {
            return Err(format!(
                "waited {WAIT:?} for mark {value}, memory has {}",
                side.byte(offset)
            ));
        }
        std::thread::yield_now();
    }
    Ok(())
}

/// perftest 4.5's `run_iter_lat_write`: every iteration waits for the
/// peer's mark `rcnt` (except the server's first), then writes its own
/// mark `scnt` in the last byte and polls the send completion.
fn perftest_write_lat(
    side: &Side,
    remote: &examples::perftest::exchange::KeyMessage,
    role: Role,
) -> Result<(), String> {
    let post_at = side.source(0) + SIZE as usize - 1;
    let poll_at = side.target(0) + SIZE as usize - 1;
    let sge = [side.sge(side.source(0), SIZE as u32)];
    let (mut scnt, mut ccnt, mut rcnt) = (0u64, 0u64, 0u64);
    while scnt < ITERS || ccnt < ITERS || rcnt < ITERS {
        if rcnt < ITERS && !(scnt < 1 && role == Role::Server) {
            rcnt += 1;
            await_byte(side, poll_at, rcnt as u8)?;
        }
        if scnt < ITERS {
            if role == Role::Server && scnt == 0 {
                std::thread::sleep(HOLD);
                if side.byte(poll_at) != 0 {
                    return Err("the client wrote before the server's first write".into());
                }
            }
            scnt += 1;
            side.write(post_at, &[scnt as u8]);
            let wr = SendWr {
                wr_id: scnt,
                op: SendOp::Write {
                    remote_addr: remote.vaddr,
                    rkey: remote.rkey,
                },
                sg_list: &sge,
                signaled: true,
                solicited: false,
            };
            side.qps[0].post_send(&[wr]).map_err(|e| e.to_string())?;
        }
        if ccnt < ITERS {
            let mut wc = [WorkCompletion::default()];
            if side.cq.poll_wait(&mut wc, WAIT) != 1 {
                return Err(format!("no completion for write {}", ccnt + 1));
            }
            examples::perftest::check_completion(&wc[0]).map_err(|e: ToolError| e.to_string())?;
            ccnt += 1;
        }
    }
    Ok(())
}

fn finish(child: Child, what: &str) -> String {
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what}: {text}");
    text
}

#[test]
fn our_client_against_perftests_server_order() {
    let port = "18611";
    let listener = Exchange::listen(port.parse().unwrap()).unwrap();
    let ours = write_lat(&[
        "-d",
        "127.0.0.6",
        "-p",
        port,
        "-s",
        "64",
        "-n",
        "200",
        "127.0.0.1",
    ]);
    let ex = Exchange::accept(&listener, WAIT).unwrap();
    let (side, remote) = peer_side("127.0.0.5", ex);
    let peer = perftest_write_lat(&side, &remote[0], Role::Server);
    let text = finish(ours, "our client");
    peer.unwrap_or_else(|e| panic!("scripted perftest server: {e}\nour client: {text}"));
    assert!(text.contains(" 64      200"), "{text}");
}

#[test]
fn our_server_against_perftests_client_order() {
    let port = "18612";
    let ours = write_lat(&["-d", "127.0.0.7", "-p", port, "-s", "64", "-n", "200"]);
    let ex = Exchange::connect("127.0.0.1", port.parse().unwrap(), WAIT).unwrap();
    let (side, remote) = peer_side("127.0.0.8", ex);
    let peer = perftest_write_lat(&side, &remote[0], Role::Client);
    drop(side);
    let text = finish(ours, "our server");
    peer.unwrap_or_else(|e| panic!("scripted perftest client: {e}\nour server: {text}"));
    assert!(text.contains(" 64      200"), "{text}");
}
