//! Command-line flags, spelled as perftest spells them.

use std::time::Duration;

use clap::Parser;
use provider::OdpEvents;

use super::exchange::Tool;

/// perftest's atomic operations (`-A`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AtomicType {
    /// Fetch-and-add of 1 (perftest's default).
    #[default]
    #[value(name = "FETCH_AND_ADD")]
    FetchAndAdd,
    /// Compare-and-swap: compare 0, swap 0, as perftest sends it.
    #[value(name = "CMP_AND_SWAP")]
    CmpAndSwap,
}

impl AtomicType {
    /// perftest's name of the operation, as its title prints it.
    pub fn name(self) -> &'static str {
        match self {
            AtomicType::FetchAndAdd => "FETCH_AND_ADD",
            AtomicType::CmpAndSwap => "CMP_AND_SWAP",
        }
    }
}

/// Flags shared by every tool (`ib_*_bw` / `ib_*_lat` habits).
#[derive(Parser, Clone, Debug, PartialEq, Eq)]
#[command(version, about = None, long_about = None)]
pub struct Flags {
    /// Device name (`srxe-<interface>`, `srxe6-<interface>`) or an IP
    /// address of this host. Default: 127.0.0.1 for the server side of a
    /// loopback run, the address routing to the server otherwise.
    #[arg(short = 'd', long = "ib-dev")]
    pub device: Option<String>,
    /// GID table index, in kernel rxe's order for the interface: 0 the
    /// link-local IPv6 address, then the IPv4 addresses, then the other
    /// IPv6 ones. Default: the device's first address of its family
    /// (IPv4 for `srxe-`, IPv6 for `srxe6-`).
    #[arg(short = 'x', long = "gid-index")]
    pub gid_index: Option<usize>,
    /// The atomic operation of `atomic_bw` (perftest's `-A`).
    #[arg(short = 'A', long = "atomic_type", alias = "atomic-type", value_enum)]
    pub atomic_type: Option<AtomicType>,
    /// Message size in bytes (default: 65536 for bandwidth, 2 for latency,
    /// 8 for atomics).
    #[arg(short = 's', long = "size")]
    pub size: Option<u64>,
    /// Run every size from 2 to 2^23 bytes.
    #[arg(short = 'a', long = "all")]
    pub all: bool,
    /// Iterations (default: 5000 for write_bw, 1000 otherwise).
    #[arg(short = 'n', long = "iters")]
    pub iters: Option<u64>,
    /// Run for this many seconds instead of a number of iterations.
    #[arg(short = 'D', long = "duration")]
    pub duration: Option<u64>,
    /// Queue pairs.
    #[arg(short = 'q', long = "qp", default_value_t = 1)]
    pub qps: u32,
    /// Path MTU in bytes (256, 512, 1024, 2048, 4096); default: the port's.
    #[arg(short = 'm', long = "mtu")]
    pub mtu: Option<u32>,
    /// Work requests in flight per queue pair (bandwidth tools).
    #[arg(short = 't', long = "tx-depth", default_value_t = 128)]
    pub tx_depth: u32,
    /// TCP port of the connection exchange.
    #[arg(short = 'p', long = "port", default_value_t = 18515)]
    pub port: u16,
    /// Completions are requested every this many work requests.
    #[arg(short = 'Q', long = "cq-mod", default_value_t = 100)]
    pub cq_mod: u32,
    /// Report bandwidth in Gb/s instead of MB/s (2^20 bytes).
    #[arg(long = "report_gbits", alias = "report-gbits")]
    pub report_gbits: bool,
    /// Register memory on demand (no pinning).
    #[arg(long = "odp")]
    pub odp: bool,
    /// With --odp: prefetch the buffer (advise_mr) after registering it.
    #[arg(long = "odp-prefetch")]
    pub odp_prefetch: bool,
    /// Register the whole address space on demand (implies --odp).
    #[arg(long = "implicit-odp")]
    pub implicit_odp: bool,
    /// Which source reports unmaps of ODP memory: auto (the library's
    /// choice: the userfaultfd monitor unless SRXE_ODP_EVENTS=none), uffd,
    /// or none.
    #[arg(
        long = "odp-events",
        value_name = "auto|uffd|none",
        default_value = "auto"
    )]
    pub odp_events: OdpEvents,
    /// The receiving side checks every byte it got (both sides must be
    /// these tools).
    #[arg(long = "check")]
    pub check: bool,
    /// The server to connect to; none: be the server, or, with no device
    /// either, run server and client in this process over loopback.
    pub server: Option<String>,
}

/// The message sizes of `-a` (2^1 ..= 2^23, as perftest).
pub const ALL_SIZES: std::ops::RangeInclusive<u32> = 1..=23;

impl Flags {
    /// The sizes to run.
    pub fn sizes(&self, tool: Tool) -> Vec<u64> {
        if tool.is_atomic() {
            return vec![8];
        }
        if self.all {
            return ALL_SIZES.map(|k| 1u64 << k).collect();
        }
        vec![self.size.unwrap_or(if tool.is_bw() { 65536 } else { 2 })]
    }

    /// Iterations per size (per queue pair for bandwidth tools).
    pub fn iterations(&self, tool: Tool) -> u64 {
        self.iters
            .unwrap_or(if tool == Tool::WriteBw { 5000 } else { 1000 })
    }

    /// The run length in duration mode.
    pub fn duration(&self) -> Option<Duration> {
        self.duration.map(Duration::from_secs)
    }

    /// Checks the combinations perftest also refuses.
    ///
    /// # Errors
    /// A message naming the bad flag.
    pub fn validate(&self, tool: Tool) -> Result<(), String> {
        if self.qps == 0 {
            return Err("-q: at least one queue pair".into());
        }
        if self.tx_depth == 0 || self.cq_mod == 0 {
            return Err("-t and -Q must be at least 1".into());
        }
        if let Some(m) = self.mtu
            && ![256, 512, 1024, 2048, 4096].contains(&m)
        {
            return Err(format!(
                "-m {m}: the MTU is one of 256, 512, 1024, 2048, 4096"
            ));
        }
        if let Some(s) = self.size {
            if s == 0 || s > 1 << 23 {
                return Err(format!("-s {s}: sizes are 1 to 8388608 bytes"));
            }
            if tool.is_atomic() && s != 8 {
                return Err("-s: atomics are 8 bytes".into());
            }
        }
        if self.iters.is_some_and(|n| n < 5) {
            return Err("-n: at least 5 iterations".into());
        }
        if self.duration.is_some() && (self.iters.is_some() || self.all) {
            return Err("-D cannot be combined with -n or -a".into());
        }
        if self.duration == Some(0) {
            return Err("-D: at least one second".into());
        }
        if (self.odp_prefetch) && !(self.odp || self.implicit_odp) {
            return Err("--odp-prefetch needs --odp or --implicit-odp".into());
        }
        if self.odp_events != OdpEvents::Auto && !(self.odp || self.implicit_odp) {
            return Err("--odp-events needs --odp or --implicit-odp".into());
        }
        if self.atomic_type.is_some() && !tool.is_atomic() {
            return Err("-A: only atomic tools take an atomic type".into());
        }
        if !tool.is_bw() && self.qps != 1 {
            return Err("-q: latency tools use one queue pair".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Flags, clap::Error> {
        Flags::try_parse_from(std::iter::once("write_bw").chain(args.iter().copied()))
    }

    #[test]
    fn perftest_spellings_parse() {
        let f = parse(&[
            "-d",
            "srxe-lo",
            "-x",
            "1",
            "-s",
            "4096",
            "-n",
            "100",
            "-q",
            "2",
            "-m",
            "1024",
            "-t",
            "64",
            "-p",
            "19000",
            "--report_gbits",
            "--odp",
            "--odp-prefetch",
            "10.0.0.2",
        ])
        .unwrap();
        assert_eq!(f.device.as_deref(), Some("srxe-lo"));
        assert_eq!(
            (f.gid_index, f.size, f.iters, f.qps),
            (Some(1), Some(4096), Some(100), 2)
        );
        assert_eq!((f.mtu, f.tx_depth, f.port), (Some(1024), 64, 19000));
        assert!(f.report_gbits && f.odp && f.odp_prefetch);
        assert_eq!(f.server.as_deref(), Some("10.0.0.2"));
        assert!(f.validate(Tool::WriteBw).is_ok());
        assert_eq!(f.sizes(Tool::WriteBw), [4096]);
        assert_eq!(f.odp_events, OdpEvents::Auto);
        let all = parse(&["-a", "--implicit-odp", "--odp-events", "none"]).unwrap();
        assert_eq!(all.odp_events, OdpEvents::None);
        let uffd = parse(&["--odp", "--odp-events", "uffd"]).unwrap();
        assert_eq!(uffd.odp_events, OdpEvents::Userfaultfd);
        assert_eq!(all.sizes(Tool::ReadBw).len(), 23);
        assert_eq!(all.sizes(Tool::ReadBw)[22], 1 << 23);
        assert_eq!(all.sizes(Tool::AtomicBw), [8]);
        assert_eq!(parse(&[]).unwrap().iterations(Tool::WriteBw), 5000);
        assert_eq!(parse(&[]).unwrap().sizes(Tool::WriteLat), [2]);
    }

    #[test]
    fn bad_flags_are_clear_errors() {
        assert!(parse(&["-s", "lots"]).is_err());
        assert!(parse(&["--no-such-flag"]).is_err());
        assert!(parse(&["--odp", "--odp-events", "always"]).is_err());
        assert!(parse(&["-A", "SWAP"]).is_err());
        let cas = parse(&["-A", "CMP_AND_SWAP"]).unwrap();
        assert_eq!(cas.atomic_type, Some(AtomicType::CmpAndSwap));
        assert!(cas.validate(Tool::AtomicBw).is_ok());
        let faa = parse(&["--atomic_type", "FETCH_AND_ADD"]).unwrap();
        assert_eq!(faa.atomic_type, Some(AtomicType::FetchAndAdd));
        assert_eq!(parse(&[]).unwrap().gid_index, None);
        for (args, tool, needle) in [
            (&["-m", "1500"][..], Tool::WriteBw, "-m 1500"),
            (&["-s", "0"], Tool::WriteBw, "-s 0"),
            (&["-s", "16"], Tool::AtomicBw, "atomics are 8 bytes"),
            (&["-n", "2"], Tool::WriteBw, "at least 5"),
            (&["-D", "2", "-a"], Tool::WriteBw, "-D cannot"),
            (&["--odp-prefetch"], Tool::WriteBw, "needs --odp"),
            (&["--odp-events", "uffd"], Tool::WriteBw, "needs --odp"),
            (&["-q", "2"], Tool::WriteLat, "one queue pair"),
            (&["-q", "0"], Tool::WriteBw, "at least one"),
            (&["-A", "CMP_AND_SWAP"], Tool::WriteBw, "only atomic tools"),
        ] {
            let err = parse(args).unwrap().validate(tool).unwrap_err();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }
}
