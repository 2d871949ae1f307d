//! Two processes on one machine, each with its own device on a loopback
//! address, connected the way perftest connects: endpoints exchanged out of
//! band (here through the child's stdin and stdout).

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::time::Duration;

use odp::AddressSpace;
use provider::{
    AccessFlags, Context, Gid, Mtu, RecvWr, RemoteInfo, SendOp, SendWr, WcOpcode, WcStatus,
    WorkCompletion,
};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const LEN: usize = 1 << 20;

fn line(info: &RemoteInfo, addr: u64, rkey: u32) -> String {
    let gid: String = info.gid.0.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{} {} {} {} {} {}\n",
        info.qp_num, info.psn, gid, info.port, addr, rkey
    )
}

fn parse(line: &str) -> (RemoteInfo, u64, u32) {
    let f: Vec<&str> = line.split_whitespace().collect();
    let mut gid = [0u8; 16];
    for (i, b) in gid.iter_mut().enumerate() {
        *b = u8::from_str_radix(&f[2][2 * i..2 * i + 2], 16).unwrap();
    }
    (
        RemoteInfo {
            qp_num: f[0].parse().unwrap(),
            psn: f[1].parse().unwrap(),
            gid: Gid(gid),
            port: f[3].parse().unwrap(),
            mtu: Mtu::Mtu4096,
        },
        f[4].parse().unwrap(),
        f[5].parse().unwrap(),
    )
}

fn pattern() -> Vec<u8> {
    (0..LEN).map(|i| (i % 251) as u8).collect()
}

fn wait(cq: &provider::CompletionQueue) -> WorkCompletion {
    let mut wc = [WorkCompletion::default()];
    assert_eq!(
        cq.poll_wait(&mut wc, Duration::from_secs(10)),
        1,
        "no completion"
    );
    wc[0]
}

#[test]
fn a_peer_in_another_process_writes_and_sends_to_us() {
    let ctx = Context::open_with_port(LOCALHOST, 0).unwrap();
    let pd = ctx.alloc_pd().unwrap();
    let cq = ctx.create_cq(16).unwrap();
    let qp = pd.create_qp(&cq, &cq).build().unwrap();
    let buf = AddressSpace::process().map_anonymous(LEN, 0).unwrap();
    let access = AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE | AccessFlags::ON_DEMAND;
    // SAFETY: the mapping outlives the region and backs no Rust objects.
    let mr = unsafe { pd.reg_mr(buf.addr(), LEN, access) }.unwrap();
    qp.to_init().unwrap();
    qp.post_recv(&[RecvWr {
        wr_id: 1,
        sg_list: &[mr.sge(0, 64)],
    }])
    .unwrap();

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_peer",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut to_child = child.stdin.take().unwrap();
    to_child
        .write_all(line(&qp.endpoint(Mtu::Mtu4096), mr.addr() + 64, mr.rkey()).as_bytes())
        .unwrap();
    let mut from_child = BufReader::new(child.stdout.take().unwrap());
    let mut theirs = String::new();
    loop {
        theirs.clear();
        assert!(
            from_child.read_line(&mut theirs).unwrap() > 0,
            "child ended early"
        );
        // The test harness may print its own text before ours on the line.
        if let Some(at) = theirs.find("ENDPOINT ") {
            theirs = theirs[at + "ENDPOINT ".len()..].to_string();
            break;
        }
    }
    let (remote, _, _) = parse(&theirs);
    qp.connect(&remote).unwrap();
    to_child.write_all(b"go\n").unwrap();

    // The child writes 1 MiB - 64 bytes after our first 64, then sends 8
    // bytes that land in our receive.
    let wc = wait(&cq);
    assert_eq!(
        (wc.status, wc.opcode, wc.byte_len),
        (WcStatus::Success, WcOpcode::Recv, 8)
    );
    // SAFETY: our own mapping; the child is done writing (its SEND came
    // after its WRITE, in order).
    let got = unsafe { std::slice::from_raw_parts(buf.ptr(), LEN) };
    assert_eq!(&got[..8], b"finished");
    assert_eq!(&got[64..], &pattern()[..LEN - 64]);
    assert!(child.wait().unwrap().success());
}

#[test]
#[ignore = "runs as the child of a_peer_in_another_process_writes_and_sends_to_us"]
fn child_peer() {
    let mut stdin = BufReader::new(std::io::stdin());
    let mut theirs = String::new();
    stdin.read_line(&mut theirs).unwrap();
    let (remote, raddr, rkey) = parse(&theirs);
    // A device of its own: another address of the loopback network.
    let ctx = Context::open_with_port(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 0).unwrap();
    let pd = ctx.alloc_pd().unwrap();
    let cq = ctx.create_cq(16).unwrap();
    let qp = pd.create_qp(&cq, &cq).build().unwrap();
    let buf = AddressSpace::process().map_anonymous(LEN, 0).unwrap();
    // SAFETY: our own fresh mapping.
    unsafe { std::ptr::copy_nonoverlapping(pattern().as_ptr(), buf.ptr(), LEN) };
    // SAFETY: as in the parent.
    let mr = unsafe { pd.reg_mr(buf.addr(), LEN, AccessFlags::LOCAL_WRITE) }.unwrap();
    qp.connect(&remote).unwrap();
    println!(
        "ENDPOINT {}",
        line(&qp.endpoint(Mtu::Mtu4096), 0, 0).trim_end()
    );
    std::io::stdout().flush().unwrap();
    let mut go = String::new();
    stdin.read_line(&mut go).unwrap();
    let write = SendWr {
        wr_id: 1,
        op: SendOp::Write {
            remote_addr: raddr,
            rkey,
        },
        sg_list: &[mr.sge(0, (LEN - 64) as u32)],
        signaled: false,
        solicited: false,
    };
    // SAFETY: overwrites the last 8 bytes of our own mapping.
    unsafe { std::ptr::copy_nonoverlapping(b"finished".as_ptr(), buf.ptr().add(LEN - 8), 8) };
    let send = SendWr {
        wr_id: 2,
        op: SendOp::Send,
        sg_list: &[mr.sge((LEN - 8) as u64, 8)],
        signaled: true,
        solicited: false,
    };
    qp.post_send(&[write, send]).unwrap();
    assert_eq!(wait(&cq).status, WcStatus::Success);
}
