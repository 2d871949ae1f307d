//! The host side of the rxe lab's data-checked case: this project's device
//! against `rc_check` in the guest (see `integration_tests::lab::datacheck`).
//! Prints one line per transfer and a summary; exits 1 on a difference
//! that is not the kernel's known ODP one.

use std::net::IpAddr;
use std::process::ExitCode;

use clap::Parser;
use integration_tests::lab::datacheck;

/// Checks every byte of WRITEs and READs both ways against kernel rxe.
#[derive(Parser, Debug)]
struct Args {
    /// This host's address on the lab's bridge (IPv4 or IPv6: the GID).
    #[arg(long)]
    local: IpAddr,
    /// The guest's address for the TCP exchange.
    #[arg(long)]
    guest: String,
    /// rc_check's TCP port.
    #[arg(short = 'p', long)]
    port: u16,
    /// Register the host's buffer on demand.
    #[arg(long)]
    odp: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match datacheck::run(&args.guest, args.port, args.local, args.odp) {
        Ok(report) => {
            for line in &report.lines {
                println!("{line}");
            }
            let verdict = if report.passed() { "passed" } else { "FAILED" };
            println!(
                "datacheck: {} transfers, {} bytes checked, {} with differences{} ({verdict})",
                report.lines.len(),
                report.bytes,
                report.mismatches,
                if report.guest_odp && report.mismatches > 0 {
                    ", the known kernel rxe ODP difference (guest region on demand)"
                } else {
                    ""
                }
            );
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("lab-datacheck: {e}");
            ExitCode::from(2)
        }
    }
}
