//! The interop cases: which tool, which side serves, which flags on each
//! side; the full matrix and the fixed subset CI can afford.

use std::fmt;

/// Which side runs the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// perftest serves in the guest; the project's tool is the client.
    GuestServes,
    /// The project's tool serves on the host; perftest is the client.
    HostServes,
    /// Only the guest runs something (the rdma-core backend's tests).
    GuestOnly,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::GuestServes => "perftest srv",
            Direction::HostServes => "ours srv",
            Direction::GuestOnly => "guest",
        })
    }
}

/// What runs on the two sides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// perftest in the guest, the project's perftest-style tool on the host.
    Perftest,
    /// `rc_check` in the guest, `lab-datacheck` on the host: every byte of
    /// WRITEs and READs both ways compared.
    DataCheck,
    /// Debian's perftest on both sides, on the host over the project's
    /// `libibverbs.so.1` (provider/ibverbs, through `srxe-verbs`).
    Verbs,
    /// The project's tool built with the provider's `rdma-core` backend in
    /// the guest, on kernel rxe (`-d rxe0`), against the default build on
    /// the host; both sides check the data (`--check`).
    RdmaCore,
    /// The rdma-core backend's own tests (`provider/tests/rdma_core.rs`)
    /// run in the guest: one table row per test.
    RdmaCoreTests,
}

/// One interop run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Case {
    /// What runs.
    pub kind: Kind,
    /// Short label (tool and options).
    pub label: String,
    /// The project's binary (`write_bw`, ...); perftest's is `ib_` and this.
    pub tool: &'static str,
    /// Who serves.
    pub direction: Direction,
    /// IPv6 GIDs instead of IPv4-mapped ones.
    pub ipv6: bool,
    /// Flags both sides get (`-s`, `-n`, `-q`, `-a`, `-A`).
    pub common: Vec<String>,
    /// Flags only the project's tool gets.
    pub ours: Vec<String>,
    /// Flags only perftest gets.
    pub theirs: Vec<String>,
    /// Text the project's tool must print (for example the agreed MTU).
    pub ours_prints: Option<String>,
    /// The case runs perftest with `--odp` (needs rxe ODP in the kernel).
    pub kernel_odp: bool,
    /// Seconds the case may take before it is killed.
    pub timeout_secs: u64,
}

impl Case {
    fn new(tool: &'static str, direction: Direction, common: &str) -> Case {
        Case {
            kind: Kind::Perftest,
            label: String::new(),
            tool,
            direction,
            ipv6: false,
            common: words(common),
            ours: Vec::new(),
            theirs: Vec::new(),
            ours_prints: None,
            kernel_odp: false,
            timeout_secs: 90,
        }
        .labelled()
    }

    /// The data-checked case; `host_odp` / `guest_odp` register each
    /// side's buffer on demand.
    fn datacheck(ipv6: bool, host_odp: bool, guest_odp: bool) -> Case {
        let mut c = Case::new("datacheck", Direction::GuestServes, "");
        c.kind = Kind::DataCheck;
        c.ipv6 = ipv6;
        c.kernel_odp = guest_odp;
        if host_odp {
            c.ours = words("--odp");
        }
        if guest_odp {
            c.theirs = words("-o");
        }
        c.timeout_secs = 120;
        c.labelled()
    }

    /// Debian's perftest `tool` on the host over the project's
    /// `libibverbs.so.1`, against perftest on kernel rxe.
    fn verbs(tool: &'static str, direction: Direction, common: &str) -> Case {
        let mut c = Case::new(tool, direction, common);
        c.kind = Kind::Verbs;
        c.labelled()
    }

    /// The rdma-core build of `tool` in the guest against ours on the host.
    fn rdma_core(tool: &'static str, direction: Direction, common: &str) -> Case {
        let mut c = Case::new(tool, direction, common);
        c.kind = Kind::RdmaCore;
        c.labelled()
    }

    /// The row of one test of the rdma-core backend (`name` as libtest
    /// prints it), or, with `name` "tests", the run of them all.
    pub fn backend_test(name: &str) -> Case {
        let mut c = Case::new("rdma_core", Direction::GuestOnly, "");
        c.kind = Kind::RdmaCoreTests;
        c.label = format!("rdma-core: {name}");
        c.timeout_secs = 600;
        c
    }

    fn labelled(mut self) -> Case {
        if self.kind == Kind::RdmaCoreTests {
            return self;
        }
        let mut parts = vec![self.tool.to_string()];
        match self.kind {
            Kind::Verbs => parts.insert(0, "libibverbs:".into()),
            Kind::RdmaCore => parts.insert(0, "rdma-core:".into()),
            _ => {}
        }
        parts.extend(self.common.iter().cloned());
        if self.ipv6 {
            parts.push("IPv6".into());
        }
        if !self.ours.is_empty() {
            parts.push(format!("ours[{}]", self.ours.join(" ")));
        }
        if !self.theirs.is_empty() {
            let side = if self.kind == Kind::RdmaCore {
                "rxe0"
            } else {
                "perftest"
            };
            parts.push(format!("{side}[{}]", self.theirs.join(" ")));
        }
        self.label = parts.join(" ");
        self
    }

    fn v6(mut self) -> Case {
        self.ipv6 = true;
        self.labelled()
    }

    fn ours(mut self, flags: &str) -> Case {
        self.ours = words(flags);
        self.labelled()
    }

    fn theirs(mut self, flags: &str) -> Case {
        self.theirs = words(flags);
        // The rdma-core backend serves `--odp` without the kernel's ODP
        // (pin-on-demand); perftest needs the kernel's.
        self.kernel_odp = self.kind != Kind::RdmaCore && self.theirs.iter().any(|f| f == "--odp");
        self.labelled()
    }

    fn prints(mut self, text: &str) -> Case {
        self.ours_prints = Some(text.into());
        self
    }

    fn slow(mut self, secs: u64) -> Case {
        self.timeout_secs = secs;
        self
    }
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

/// Every tool with its default flags for the lab (sizes and counts small
/// enough for a TCG guest).
const TOOLS: [(&str, &str); 8] = [
    ("write_bw", "-s 65536 -n 200"),
    ("read_bw", "-s 65536 -n 200"),
    ("send_bw", "-s 65536 -n 200"),
    ("atomic_bw", "-n 200 -A FETCH_AND_ADD"),
    ("atomic_bw", "-n 200 -A CMP_AND_SWAP"),
    ("write_lat", "-s 64 -n 200"),
    ("read_lat", "-s 64 -n 200"),
    ("send_lat", "-s 64 -n 200"),
];

const BOTH: [Direction; 2] = [Direction::GuestServes, Direction::HostServes];

/// Every tool once in each direction, IPv4 (compare-and-swap included),
/// and the data check with pinned memory on both sides; then perftest over
/// the project's `libibverbs.so.1`: the bandwidth tools (fetch-and-add for
/// atomics) in each direction, the latency tools once.
pub fn subset() -> Vec<Case> {
    let mut cases = vec![Case::datacheck(false, false, false)];
    for (tool, common) in TOOLS {
        for d in BOTH {
            cases.push(Case::new(tool, d, common));
        }
    }
    for (i, (tool, common)) in TOOLS.into_iter().enumerate() {
        match tool {
            "write_lat" | "read_lat" | "send_lat" => {
                cases.push(Case::verbs(tool, BOTH[i % 2], common));
            }
            _ if common.contains("CMP_AND_SWAP") => {}
            _ => cases.extend(BOTH.map(|d| Case::verbs(tool, d, common))),
        }
    }
    cases
}

/// The rdma-core backend in the guest: its own tests, then write, read
/// and send bandwidth of the tools built with it on `rxe0` against ours on
/// the host, every byte checked (`--check`), ODP on both sides, each way
/// (the backend's choice of ODP mode: pin-on-demand for the local buffer
/// and a pinned registration for the peer on 6.1 and on 7.3.4, whose ODP
/// fails the self-check, so these run on kernels without rxe ODP too);
/// and each tool once with pinned memory in the guest.
pub fn rdma_core() -> Vec<Case> {
    let mut cases = vec![Case::backend_test("tests")];
    let common = "-s 65536 -n 200 --check";
    for (i, tool) in ["write_bw", "read_bw", "send_bw"].into_iter().enumerate() {
        for d in BOTH {
            cases.push(
                Case::rdma_core(tool, d, common)
                    .ours("--odp")
                    .theirs("--odp"),
            );
        }
        cases.push(Case::rdma_core(tool, BOTH[i % 2], common).ours("--odp"));
    }
    cases
}

/// perftest over the project's `libibverbs.so.1` beyond the subset: every
/// tool both ways, `--odp` on the host.
fn verbs_full() -> Vec<Case> {
    let mut cases = Vec::new();
    for d in BOTH {
        for (tool, common) in TOOLS {
            cases.push(Case::verbs(tool, d, common));
        }
        for tool in ["write_bw", "read_bw", "send_bw"] {
            cases.push(Case::verbs(tool, d, "-s 65536 -n 200").ours("--odp"));
        }
    }
    cases.retain(|c| !subset().contains(c));
    cases
}

/// The whole matrix: the subset, then IPv6, MTU 256 and the agreed MTU,
/// `--odp` on each side (and `--implicit-odp` on ours), `-q 2`, `-a`,
/// sizes that need pad bytes; the data check over IPv6, with an ODP region
/// on our side and with one on the kernel's.
pub fn full() -> Vec<Case> {
    let mut cases = subset();
    cases.extend(verbs_full());
    cases.push(Case::datacheck(true, false, false));
    cases.push(Case::datacheck(false, true, false));
    cases.push(Case::datacheck(false, false, true));
    for d in BOTH {
        for (tool, common) in TOOLS {
            cases.push(Case::new(tool, d, common).v6());
        }
        for tool in ["write_bw", "read_bw", "send_bw"] {
            cases.push(Case::new(tool, d, "-s 8192 -n 200 -m 256"));
            cases.push(Case::new(tool, d, "-s 65536 -n 200 -q 2"));
            cases.push(Case::new(tool, d, "-s 65536 -n 200").ours("--odp"));
            cases.push(Case::new(tool, d, "-s 65536 -n 200").theirs("--odp"));
        }
        // 4096 asked, 1024 possible on a 1500-byte Ethernet MTU.
        cases.push(
            Case::new("write_bw", d, "-s 65536 -n 200")
                .ours("-m 4096")
                .prints(" Mtu             : 1024[B]"),
        );
        cases.push(Case::new("write_bw", d, "-s 65536 -n 200").ours("--implicit-odp"));
        cases.push(Case::new("write_bw", d, "-a -n 5").slow(240));
        cases.push(Case::new("write_lat", d, "-s 64 -n 200").ours("--odp"));
        cases.push(Case::new("send_lat", d, "-s 64 -n 200").ours("--odp"));
        for (tool, size) in [
            ("write_bw", "10003"),
            ("send_bw", "10003"),
            ("read_bw", "4097"),
            ("write_lat", "5"),
            ("read_lat", "7"),
            ("send_lat", "3"),
        ] {
            cases.push(Case::new(tool, d, &format!("-s {size} -n 200")));
        }
    }
    cases
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subset_covers_every_tool_both_ways() {
        let s = subset();
        for tool in [
            "write_bw",
            "read_bw",
            "send_bw",
            "atomic_bw",
            "write_lat",
            "read_lat",
            "send_lat",
        ] {
            for d in BOTH {
                assert!(s.iter().any(|c| c.tool == tool && c.direction == d));
            }
        }
        for d in BOTH {
            assert!(
                s.iter()
                    .any(|c| c.kind == Kind::Verbs && c.tool == "write_bw" && c.direction == d)
            );
        }
        assert!(s.iter().all(|c| c.kind != Kind::RdmaCore));
        let r = rdma_core();
        assert_eq!(r[0].kind, Kind::RdmaCoreTests);
        for tool in ["write_bw", "read_bw", "send_bw"] {
            let guest_odp = |c: &&Case| c.theirs.iter().any(|f| f == "--odp");
            for d in BOTH {
                assert!(
                    r.iter()
                        .filter(guest_odp)
                        .any(|c| c.tool == tool && c.direction == d)
                );
            }
            assert!(r.iter().any(|c| c.tool == tool && !guest_odp(&c)));
        }
        // The backend's ODP needs none from the kernel: every case runs on
        // 6.1 too.
        assert!(r.iter().all(|c| !c.kernel_odp));
        assert!(r.iter().all(|c| c.label.starts_with("rdma-core: ")));
        let f = full();
        assert!(f.len() > s.len());
        assert!(f.iter().any(|c| c.ipv6 && !c.kernel_odp));
        assert!(f.iter().any(|c| c.kernel_odp));
        assert!(f.iter().all(|c| !c.label.is_empty()));
    }
}
