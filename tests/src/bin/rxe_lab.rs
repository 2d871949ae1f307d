//! The rxe lab's runner; `tests/lab/lab.sh` starts it inside the lab's
//! network namespace. Boots the guest, runs the cases, prints the table,
//! exits 1 if any case failed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use integration_tests::lab::case::{self, Setup};
use integration_tests::lab::guest::{Guest, GuestImage};
use integration_tests::lab::matrix;
use integration_tests::lab::table;

/// Runs the project's tools against perftest on kernel rxe in a guest.
#[derive(Parser, Debug)]
struct Args {
    /// The guest kernel.
    #[arg(long)]
    kernel: PathBuf,
    /// The guest initramfs.
    #[arg(long)]
    initrd: PathBuf,
    /// qemu's tap script (puts the tap on the bridge).
    #[arg(long)]
    ifup: PathBuf,
    /// The folder of the project's release binaries.
    #[arg(long)]
    tools: PathBuf,
    /// Where outputs, captures and the console log go.
    #[arg(long)]
    out: PathBuf,
    /// Run the whole matrix instead of the subset (every tool once each way).
    #[arg(long)]
    full: bool,
    /// The kernel has no rxe ODP: leave out cases with `--odp` on its side.
    #[arg(long)]
    no_kernel_odp: bool,
    /// Only cases whose label contains this.
    #[arg(long)]
    only: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut cases = if args.full {
        matrix::full()
    } else {
        matrix::subset()
    };
    cases.retain(|c| !(args.no_kernel_odp && c.kernel_odp));
    if let Some(only) = &args.only {
        cases.retain(|c| c.label.contains(only.as_str()));
    }
    if let Err(e) = std::fs::create_dir_all(&args.out) {
        eprintln!("rxe-lab: {}: {e}", args.out.display());
        return ExitCode::from(2);
    }
    let image = GuestImage {
        kernel: args.kernel,
        initrd: args.initrd,
        ifup: args.ifup,
    };
    let setup = Setup {
        tools: args.tools,
        out: args.out.clone(),
    };
    let start = Instant::now();
    let mut boots = 0;
    let mut guest: Option<Guest> = None;
    let mut results = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        // A guest that died (or whose last case timed out) is replaced.
        if guest.as_mut().is_none_or(|g| !g.alive()) {
            boots += 1;
            let console = args.out.join(format!("console-{boots}.log"));
            match Guest::boot(&image, &console) {
                Ok(g) => {
                    eprintln!(
                        "rxe-lab: guest up, kernel {} ({:.0?})",
                        g.release,
                        start.elapsed()
                    );
                    guest = Some(g);
                }
                Err(e) => {
                    eprintln!("rxe-lab: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        let Some(g) = guest.as_ref() else { continue };
        let outcome = case::run(&setup, g, c, i);
        let mark = if outcome.verdict.is_ok() {
            "PASS"
        } else {
            "FAIL"
        };
        eprintln!(
            "rxe-lab: [{}/{}] {mark} {} {} ({:.1}s){}",
            i + 1,
            cases.len(),
            c.direction,
            c.label,
            outcome.elapsed.as_secs_f64(),
            outcome
                .verdict
                .as_ref()
                .err()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
        let timed_out = outcome
            .verdict
            .as_ref()
            .is_err_and(|e| e.contains("timed out"));
        results.push((c.clone(), outcome));
        if timed_out && let Some(g) = guest.take() {
            // A stuck case may leave the guest's rxe in a bad state.
            g.stop();
        }
    }
    if let Some(g) = guest.take() {
        g.stop();
    }
    let report = table::render(&results);
    print!("{report}");
    println!(
        "boots: {boots}, wall time: {:.0}s",
        start.elapsed().as_secs_f64()
    );
    let _ = std::fs::write(args.out.join("table.txt"), &report);
    if results.iter().all(|(_, o)| o.verdict.is_ok()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
