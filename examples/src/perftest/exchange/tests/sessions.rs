//! The per-tool plans, and the driver over loopback TCP: full sequences,
//! byte transcripts against scripted perftest peers, and peers that close,
//! stall or send garbage.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use super::super::*;
use super::{GID_VECTOR, gid_key, no_gid_key};

const T: Duration = Duration::from_secs(5);

/// A distinct key message for QP `qp` of side `side`.
fn key(side: u8, qp: u8) -> KeyMessage {
    let n = u32::from(side) << 8 | u32::from(qp);
    KeyMessage {
        lid: 0,
        out_reads: 16,
        qpn: 0x100 + n,
        psn: 0xa0_0000 + n,
        rkey: 0x5000 + n,
        vaddr: 0x7f00_0000_0000 + u64::from(n) * 0x1_0000,
        gid: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, side, qp],
        srqn: 0,
    }
}

// ---------------------------------------------------------------- plans

#[test]
fn plans_match_the_tools() {
    use Step::*;
    let regular = PlanOptions::default();
    let head = [Versions, SysData, Mtu];
    let with = |tail: &[Step]| [&head[..], tail].concat();
    assert_eq!(
        plan(Tool::WriteBw, Role::Client, regular),
        with(&[
            Keys, ConnectQps, Keys, Handshake, Run, Handshake, BwResults, Close
        ])
    );
    assert_eq!(
        plan(Tool::WriteBw, Role::Server, regular),
        with(&[
            Keys, ConnectQps, Keys, Handshake, Handshake, BwResults, Close
        ])
    );
    let duplex_all = PlanOptions {
        duplex: true,
        run_all_sizes: Some(2),
        duration: false,
    };
    assert_eq!(
        plan(Tool::ReadBw, Role::Server, duplex_all),
        with(&[
            Keys, ConnectQps, Keys, Handshake, Handshake, Run, Handshake, BwResults, Handshake,
            Run, Handshake, BwResults, Close
        ])
    );
    assert_eq!(
        plan(Tool::SendBw, Role::Server, regular),
        with(&[Keys, ConnectQps, Handshake, Keys, Handshake, Run, Close])
    );
    assert_eq!(
        plan(Tool::WriteLat, Role::Server, regular),
        with(&[Handshake, Keys, ConnectQps, Keys, Handshake, Run])
    );
    assert_eq!(
        plan(Tool::ReadLat, Role::Server, regular),
        with(&[Handshake, Keys, ConnectQps, Keys, Handshake, Close])
    );
    assert_eq!(
        plan(Tool::SendLat, Role::Client, regular),
        with(&[Keys, ConnectQps, Handshake, Keys, Handshake, Run, Close])
    );
    assert_eq!(Tool::ALL.iter().filter(|t| t.is_bw()).count(), 4);
    assert_eq!(Tool::AtomicLat.perftest_binary(), "ib_atomic_lat");
}

/// Every option combination worth distinguishing.
fn all_options() -> Vec<PlanOptions> {
    let mut all = Vec::new();
    for duplex in [false, true] {
        for run_all_sizes in [None, Some(3)] {
            for duration in [false, true] {
                all.push(PlanOptions {
                    duplex,
                    run_all_sizes,
                    duration,
                });
            }
        }
    }
    all
}

#[test]
fn client_and_server_plans_agree_on_the_socket() {
    for tool in Tool::ALL {
        for options in all_options() {
            let on_socket = |role| {
                plan(tool, role, options)
                    .into_iter()
                    .filter(|s| s.uses_socket())
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                on_socket(Role::Client),
                on_socket(Role::Server),
                "{tool:?} {options:?}"
            );
        }
    }
}

// ---------------------------------------------------------------- driver

/// A connected client/server pair on loopback.
fn pair(timeout: Duration) -> (Exchange, Exchange) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || Exchange::accept(&listener, timeout).unwrap());
    let client = Exchange::connect("127.0.0.1", port, timeout).unwrap();
    (client, server.join().unwrap())
}

/// What one side saw while running a plan.
#[derive(Debug, Default, PartialEq)]
struct Seen {
    version: Option<PeerVersion>,
    sys: Option<SysDataAgreement>,
    mtu: Option<MtuAgreement>,
    keys: Vec<Vec<KeyMessage>>,
    handshakes: Vec<KeyMessage>,
    reports: Vec<BwReport>,
    close: Option<CloseOutcome>,
}

/// The values side `side` (1 = client, 2 = server) contributes.
fn side_values(side: u8) -> (SysData, Mtu, Vec<KeyMessage>, BwReport) {
    let sys = SysData {
        cycle_buffer: 4096 << side,
        cache_line_size: 64 * i32::from(side),
    };
    let mtu = if side == 1 {
        Mtu::Mtu4096
    } else {
        Mtu::Mtu1024
    };
    let keys = vec![key(side, 0), key(side, 1)];
    let report = BwReport {
        size: 65536,
        iters: 5000,
        bw_avg: f64::from(side) * 1000.5,
        ..BwReport::default()
    };
    (sys, mtu, keys, report)
}

/// Runs `steps` on `ex` with side `side`'s values.
fn run_plan(mut ex: Exchange, steps: &[Step], side: u8) -> Result<Seen, ExchangeError> {
    let (sys, mtu, keys, report) = side_values(side);
    let mut seen = Seen::default();
    for step in steps {
        match step {
            Step::Versions => seen.version = Some(ex.versions()?),
            Step::SysData => seen.sys = Some(ex.sys_data(sys)?),
            Step::Mtu => seen.mtu = Some(ex.mtu(mtu)?),
            Step::Keys => seen.keys.push(ex.keys(&keys)?),
            Step::Handshake => seen.handshakes.push(ex.handshake(&keys[0])?),
            Step::BwResults => seen.reports.push(ex.bw_results(&report)?),
            Step::Close => {
                seen.close = Some(ex.close(&keys[0])?);
                return Ok(seen);
            }
            Step::ConnectQps | Step::Run => {}
        }
    }
    Ok(seen)
}

/// Runs `tool` on both sides of a loopback pair.
fn run_both(tool: Tool, options: PlanOptions) -> (Seen, Seen) {
    let (client, server) = pair(T);
    let server_steps = plan(tool, Role::Server, options);
    let server = thread::spawn(move || run_plan(server, &server_steps, 2));
    let client = run_plan(client, &plan(tool, Role::Client, options), 1).unwrap();
    (client, server.join().unwrap().unwrap())
}

#[test]
fn write_bw_sequence_over_loopback() {
    // versions, sys data, MTU, keys for 2 QPs twice, the extra handshake,
    // the post-run handshake, results and close: ib_write_bw half duplex.
    let (client, server) = run_both(Tool::WriteBw, PlanOptions::default());
    let (c_sys, c_mtu, c_keys, c_report) = side_values(1);
    let (s_sys, s_mtu, s_keys, s_report) = side_values(2);
    for seen in [&client, &server] {
        assert_eq!(seen.version.as_ref().unwrap().text, "6.06");
        let sys = seen.sys.unwrap();
        assert_eq!(
            sys.agreed,
            SysData {
                cycle_buffer: 16384,
                cache_line_size: 128
            }
        );
        assert_eq!(seen.mtu.unwrap().agreed, Mtu::Mtu1024);
        assert_eq!(seen.handshakes.len(), 2);
        assert!(seen.close.unwrap().peer_sent_done);
    }
    assert_eq!(client.sys.unwrap().remote, s_sys);
    assert_eq!(server.sys.unwrap().remote, c_sys);
    assert_eq!(client.mtu.unwrap().remote, Some(s_mtu));
    assert_eq!(server.mtu.unwrap().remote, Some(c_mtu));
    assert_eq!(client.keys, vec![s_keys.clone(), s_keys.clone()]);
    assert_eq!(server.keys, vec![c_keys.clone(), c_keys.clone()]);
    assert_eq!(client.handshakes, vec![s_keys[0]; 2]);
    assert_eq!(server.handshakes, vec![c_keys[0]; 2]);
    assert_eq!(client.close.unwrap().remote_key, s_keys[0]);
    assert_eq!(server.close.unwrap().remote_key, c_keys[0]);
    assert_eq!(client.reports, vec![s_report]);
    assert_eq!(server.reports, vec![c_report]);
}

#[test]
fn every_tool_plan_runs_over_loopback() {
    for tool in Tool::ALL {
        for options in all_options() {
            let (client, server) = run_both(tool, options);
            let steps = plan(tool, Role::Client, options);
            let count = |s: Step| steps.iter().filter(|&&x| x == s).count();
            for seen in [&client, &server] {
                assert_eq!(seen.keys.len(), count(Step::Keys), "{tool:?} {options:?}");
                assert_eq!(
                    seen.handshakes.len(),
                    count(Step::Handshake),
                    "{tool:?} {options:?}"
                );
                assert_eq!(
                    seen.reports.len(),
                    count(Step::BwResults),
                    "{tool:?} {options:?}"
                );
                assert_eq!(
                    seen.close.is_some(),
                    tool != Tool::WriteLat,
                    "{tool:?} {options:?}"
                );
            }
        }
    }
}

#[test]
fn per_port_results_swap_nine_fields() {
    let (mut client, mut server) = pair(T);
    client.set_report_per_port(true);
    server.set_report_per_port(true);
    let mine = BwReport {
        bw_avg_p2: 7.0,
        msg_rate_avg_p1: 3.5,
        ..BwReport::default()
    };
    let theirs = BwReport {
        size: 1,
        bw_avg_p1: 9.0,
        ..BwReport::default()
    };
    let s = thread::spawn(move || server.bw_results(&theirs).unwrap());
    assert_eq!(client.bw_results(&mine).unwrap(), theirs);
    assert_eq!(s.join().unwrap(), mine);
}

#[test]
fn client_transcript_is_byte_exact() {
    // A scripted perftest 6.06 ib_write_bw server (half duplex, one QP),
    // checking the exact bytes our client writes.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let peer = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let expect = |s: &mut TcpStream, want: &[u8], reply: &[u8]| {
            let mut got = vec![0u8; want.len()];
            s.read_exact(&mut got).unwrap();
            assert_eq!(got, want);
            s.write_all(reply).unwrap();
        };
        let version = encode_version("6.06").unwrap();
        expect(&mut s, &version, &version);
        expect(&mut s, &[0, 0, 0x10, 0], &[0, 0, 0x40, 0]);
        expect(&mut s, &[0, 0, 0, 0x40], &[0, 0, 0, 0x80]);
        expect(&mut s, b"5\0", b"2\0");
        for _ in 0..4 {
            expect(&mut s, GID_VECTOR, &server_key_vector());
        }
        let report = BwReport {
            size: 65536,
            iters: 5000,
            bw_peak: 1.5,
            bw_avg: 1.5,
            msg_rate_avg: 0.25,
            ..Default::default()
        };
        for field in report.wire_fields(false) {
            expect(&mut s, &field, &[0xaa; 8]);
        }
        expect(&mut s, GID_VECTOR, GID_VECTOR);
        expect(&mut s, DONE_MESSAGE, DONE_MESSAGE);
        // perftest closes here.
    });
    let mut ex = Exchange::connect("127.0.0.1", port, T).unwrap();
    assert_eq!(ex.role(), Role::Client);
    assert!(ex.versions().unwrap().is_compatible());
    let sys = ex.sys_data(SysData::default()).unwrap();
    assert_eq!(
        sys.agreed,
        SysData {
            cycle_buffer: 16384,
            cache_line_size: 128
        }
    );
    let mtu = ex.mtu(Mtu::Mtu4096).unwrap();
    assert_eq!((mtu.remote, mtu.agreed), (Some(Mtu::Mtu512), Mtu::Mtu512));
    let remote = ex.keys(&[gid_key()]).unwrap();
    assert_eq!(remote[0].qpn, 0x42);
    ex.keys(&[gid_key()]).unwrap();
    ex.handshake(&gid_key()).unwrap();
    ex.handshake(&gid_key()).unwrap();
    let report = BwReport {
        size: 65536,
        iters: 5000,
        bw_peak: 1.5,
        bw_avg: 1.5,
        msg_rate_avg: 0.25,
        ..Default::default()
    };
    let theirs = ex.bw_results(&report).unwrap();
    assert_eq!(theirs.size, 0xaaaa_aaaa_aaaa_aaaa);
    let closed = ex.close(&gid_key()).unwrap();
    assert!(closed.peer_sent_done);
    assert_eq!(closed.remote_key, gid_key());
    peer.join().unwrap();
}

/// A server key message for the transcript: QPN 0x42, the rest of
/// [`GID_VECTOR`].
fn server_key_vector() -> Vec<u8> {
    KeyMessage {
        qpn: 0x42,
        ..gid_key()
    }
    .encode(KeyFormat::Gid)
    .unwrap()
}

#[test]
fn server_transcript_reads_first() {
    // A scripted perftest client: writes each message, then reads the answer.
    let listener = Exchange::listen(0).unwrap();
    let port = listener.local_addr().unwrap().port();
    let peer = thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut swap = |msg: &[u8]| {
            s.write_all(msg).unwrap();
            let mut got = vec![0u8; msg.len()];
            s.read_exact(&mut got).unwrap();
            got
        };
        let mut peer_version = [0u8; 16];
        peer_version[..4].copy_from_slice(b"6.29");
        assert_eq!(swap(&peer_version), encode_version("6.06").unwrap());
        assert_eq!(swap(&[0, 0, 0x10, 0]), [0, 0, 0x10, 0]);
        assert_eq!(swap(&[0, 0, 0, 0x40]), [0, 0, 0, 0x40]);
        assert_eq!(swap(b"3\0"), b"3\0");
        assert_eq!(swap(GID_VECTOR), GID_VECTOR);
        assert_eq!(swap(GID_VECTOR), GID_VECTOR);
        s.write_all(DONE_MESSAGE).unwrap();
    });
    let mut ex = Exchange::accept(&listener, T).unwrap();
    assert_eq!(ex.role(), Role::Server);
    assert_eq!(ex.versions().unwrap().text, "6.29");
    assert_eq!(ex.peer_version().unwrap().number as f32, 6.29);
    ex.sys_data(SysData::default()).unwrap();
    assert_eq!(ex.mtu(Mtu::Mtu1024).unwrap().agreed, Mtu::Mtu1024);
    assert_eq!(ex.keys(&[gid_key()]).unwrap(), vec![gid_key()]);
    assert!(ex.close(&gid_key()).unwrap().peer_sent_done);
    peer.join().unwrap();
}

#[test]
fn no_gid_keys_over_loopback() {
    let (mut client, mut server) = pair(T);
    client.set_key_format(KeyFormat::NoGid);
    server.set_key_format(KeyFormat::NoGid);
    assert_eq!(server.key_format(), KeyFormat::NoGid);
    let s = thread::spawn(move || server.keys(&[no_gid_key()]).unwrap());
    let got = client
        .keys(&[KeyMessage {
            gid: [0; 16],
            ..gid_key()
        }])
        .unwrap();
    assert_eq!(got, vec![no_gid_key()]);
    assert_eq!(s.join().unwrap()[0].qpn, gid_key().qpn);
}

/// A raw peer on loopback that answers each message of the exchange with
/// `script`, then holds the socket open until told to stop.
fn raw_server(script: impl FnOnce(TcpStream) + Send + 'static) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        script(s);
    });
    port
}

#[test]
fn peer_closing_early_is_an_error() {
    // The server hangs up right after accepting.
    let port = raw_server(drop);
    let mut ex = Exchange::connect("127.0.0.1", port, T).unwrap();
    assert!(matches!(
        ex.versions(),
        Err(ExchangeError::PeerClosed { .. })
    ));

    // The server answers the version, then hangs up mid sys data.
    let port = raw_server(|mut s| {
        let mut buf = [0u8; 16];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&buf).unwrap();
        s.write_all(&[0, 0]).unwrap();
    });
    let mut ex = Exchange::connect("127.0.0.1", port, T).unwrap();
    ex.versions().unwrap();
    assert!(matches!(
        ex.sys_data(SysData::default()),
        Err(ExchangeError::PeerClosed { .. })
    ));

    // A client that connects and hangs up.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(TcpStream::connect(("127.0.0.1", port)).unwrap());
    let mut ex = Exchange::accept(&listener, T).unwrap();
    assert!(matches!(
        ex.versions(),
        Err(ExchangeError::PeerClosed { .. })
    ));

    // A plan whose peer stops half way: the server closes after the keys.
    let (client, server) = pair(T);
    let s = thread::spawn(move || {
        run_plan(
            server,
            &[Step::Versions, Step::SysData, Step::Mtu, Step::Keys],
            2,
        )
    });
    let err = run_plan(
        client,
        &plan(Tool::WriteBw, Role::Client, PlanOptions::default()),
        1,
    )
    .unwrap_err();
    assert!(matches!(err, ExchangeError::PeerClosed { .. }), "{err}");
    s.join().unwrap().unwrap();
}

#[test]
fn silent_peer_times_out() {
    let short = Duration::from_millis(200);
    let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
    let port = raw_server(move |s| {
        let _ = hold_rx.recv();
        drop(s);
    });
    let mut ex = Exchange::connect("127.0.0.1", port, short).unwrap();
    let started = std::time::Instant::now();
    let err = ex.versions().unwrap_err();
    assert!(
        matches!(
            err,
            ExchangeError::Timeout {
                step: "version exchange",
                ..
            }
        ),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    hold_tx.send(()).unwrap();

    // A client that connects and says nothing.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let quiet = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut ex = Exchange::accept(&listener, short).unwrap();
    assert!(matches!(ex.versions(), Err(ExchangeError::Timeout { .. })));
    drop(quiet);

    // Nobody connects.
    assert!(matches!(
        Exchange::accept(&listener, short),
        Err(ExchangeError::AcceptTimeout(_))
    ));

    // Nobody listens.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    assert!(matches!(
        Exchange::connect("127.0.0.1", port, short),
        Err(ExchangeError::Connect { .. })
    ));
}

#[test]
fn old_or_garbage_versions_are_refused() {
    for reply in [&b"5.60"[..], b"", b"\xff\xfe", b"v6.06"] {
        let reply = reply.to_vec();
        let port = raw_server(move |mut s| {
            let mut msg = [0u8; 16];
            s.read_exact(&mut msg).unwrap();
            let mut out = [0u8; 16];
            out[..reply.len()].copy_from_slice(&reply);
            s.write_all(&out).unwrap();
        });
        let mut ex = Exchange::connect("127.0.0.1", port, T).unwrap();
        assert!(matches!(
            ex.versions(),
            Err(ExchangeError::IncompatibleVersion { .. })
        ));
        assert!(ex.peer_version().is_none());
    }
}

#[test]
fn garbage_mtu_keeps_the_local_one() {
    let (mut client, mut server) = pair(T);
    let s = thread::spawn(move || {
        let mut raw = [0u8; 2];
        server.stream_for_tests().read_exact(&mut raw).unwrap();
        server.stream_for_tests().write_all(b"z\0").unwrap();
        raw
    });
    let mtu = client.mtu(Mtu::Mtu2048).unwrap();
    assert_eq!((mtu.remote, mtu.agreed), (None, Mtu::Mtu2048));
    assert_eq!(s.join().unwrap(), *b"4\0");
}

#[test]
fn timeouts_must_be_nonzero() {
    assert!(matches!(
        Exchange::connect("127.0.0.1", 1, Duration::ZERO),
        Err(ExchangeError::ZeroTimeout)
    ));
    let (mut client, _server) = pair(T);
    assert!(matches!(
        client.set_timeout(Some(Duration::ZERO)),
        Err(ExchangeError::ZeroTimeout)
    ));
    client.set_timeout(None).unwrap();
    assert_eq!(client.timeout(), None);
    assert!(client.peer_addr().unwrap().ip().is_loopback());
}
