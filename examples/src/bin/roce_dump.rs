//! roce-dump: decode and verify the RoCEv2 frames of a pcap or pcapng
//! capture. See `roce-dump --help`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use examples::dump::{self, Options};

/// Decodes the RoCEv2 frames (UDP port 4791, IPv4 and IPv6; Ethernet,
/// Linux cooked and raw-IP captures) of a pcap or pcapng file, recomputes
/// every ICRC from the captured IP and UDP headers, and emits every parsed
/// packet again to compare it with the captured bytes. The last line
/// counts frames read, RoCEv2 frames, ICRC good/bad and re-emit mismatches.
#[derive(Parser, Debug)]
#[command(name = "roce-dump", version)]
struct Args {
    /// Print only failing frames, with the reason; exit 0 only if every
    /// RoCEv2 frame parsed, had a good ICRC and re-emitted byte for byte.
    #[arg(long)]
    check: bool,
    /// Per-connection summary (source, destination, QPN) instead of frames.
    #[arg(long)]
    flows: bool,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    /// The capture file.
    file: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let bytes = match std::fs::read(&args.file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("roce-dump: cannot read {}: {e}", args.file.display());
            return ExitCode::from(2);
        }
    };
    let options = Options {
        check: args.check,
        flows: args.flows,
        json: args.json,
    };
    let mut out = std::io::stdout().lock();
    match dump::run(&bytes, options, &mut out) {
        Ok(outcome) if !args.check || outcome.passed() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        // `roce-dump FILE | head`: the reader has seen enough.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("roce-dump: {}: {e}", args.file.display());
            ExitCode::from(2)
        }
    }
}
