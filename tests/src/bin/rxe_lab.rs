//! The rxe lab's runner; `tests/lab/lab.sh` and `tests/lab/guest-exec.sh`
//! start it inside the lab's network namespace. `cases`: boots the guest,
//! runs the interop cases, prints the table, exits 1 if any case failed.
//! `exec`: boots the guest, pushes files, runs one command in it and exits
//! with its status.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use integration_tests::lab::case::{self, Outcome, Setup};
use integration_tests::lab::dev_exec::{self, Request};
use integration_tests::lab::guest::{Guest, GuestImage};
use integration_tests::lab::matrix::{self, Case, Kind};
use integration_tests::lab::rdma_core::{self, Backend};
use integration_tests::lab::table;

/// The rxe lab: the project's tools against kernel rxe in a qemu guest.
#[derive(Parser, Debug)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Runs the interop cases and prints the pass/fail table.
    Cases(CasesArgs),
    /// Pushes files into the guest and runs one command there.
    Exec(ExecArgs),
}

/// What boots the guest, and where its outputs go.
#[derive(Args, Debug)]
struct GuestArgs {
    /// The guest kernel.
    #[arg(long)]
    kernel: PathBuf,
    /// The guest initramfs.
    #[arg(long)]
    initrd: PathBuf,
    /// qemu's tap script (puts the tap on the bridge).
    #[arg(long)]
    ifup: PathBuf,
    /// Where outputs, captures and the console log go.
    #[arg(long)]
    out: PathBuf,
}

impl GuestArgs {
    fn image(&self) -> GuestImage {
        GuestImage {
            kernel: self.kernel.clone(),
            initrd: self.initrd.clone(),
            ifup: self.ifup.clone(),
        }
    }
}

/// Runs the project's tools against perftest on kernel rxe in a guest.
#[derive(Args, Debug)]
struct CasesArgs {
    #[command(flatten)]
    guest: GuestArgs,
    /// The folder of the project's release binaries.
    #[arg(long)]
    tools: PathBuf,
    /// Run the whole matrix instead of the subset (every tool once each way).
    #[arg(long)]
    full: bool,
    /// The kernel has no rxe ODP: leave out cases with `--odp` on its side.
    #[arg(long)]
    no_kernel_odp: bool,
    /// Only cases whose label contains this.
    #[arg(long)]
    only: Option<String>,
    /// The rdma-core backend's test executable (`provider/tests/rdma_core.rs`,
    /// built with the `rdma-core` feature); with the two below it adds the
    /// `rdma-core:` cases.
    #[arg(long)]
    rdma_core_tests: Option<PathBuf>,
    /// The folder of the tools built with the `rdma-core` feature.
    #[arg(long)]
    rdma_core_tools: Option<PathBuf>,
    /// `libodp_preload.so`, for the backend's tests.
    #[arg(long)]
    odp_preload: Option<PathBuf>,
}

/// Boots the guest, copies files into it, runs one command.
#[derive(Args, Debug)]
struct ExecArgs {
    #[command(flatten)]
    guest: GuestArgs,
    /// A host file to copy to /tmp/push/<its name> in the guest (repeatable).
    #[arg(long)]
    push: Vec<PathBuf>,
    /// A shell command to run on the host side of the bridge (198.18.0.1)
    /// while the guest command runs; started first.
    #[arg(long)]
    host: Option<String>,
    /// Seconds the guest command may run.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Seconds the host command may run on after the guest command ended.
    #[arg(long, default_value_t = 30)]
    host_grace: u64,
    /// The command (run with `sh -c` in /tmp/push, which is first on PATH).
    #[arg(required = true, last = true)]
    command: Vec<String>,
}

fn main() -> ExitCode {
    match Cli::parse().mode {
        Mode::Cases(args) => cases(args),
        Mode::Exec(args) => exec(args),
    }
}

fn exec(args: ExecArgs) -> ExitCode {
    if let Err(e) = std::fs::create_dir_all(&args.guest.out) {
        eprintln!("rxe-lab: {}: {e}", args.guest.out.display());
        return ExitCode::from(2);
    }
    let req = Request {
        push: args.push,
        host: args.host,
        command: args.command,
        timeout_secs: args.timeout,
        host_grace_secs: args.host_grace,
    };
    match dev_exec::run(&args.guest.image(), &args.guest.out, &req) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("rxe-lab exec: {e}");
            ExitCode::from(125)
        }
    }
}

/// The rdma-core build's files, if all three were given.
fn backend(args: &CasesArgs) -> Result<Option<Backend>, String> {
    match (
        &args.rdma_core_tests,
        &args.rdma_core_tools,
        &args.odp_preload,
    ) {
        (Some(t), Some(d), Some(p)) => Ok(Some(Backend {
            test_exe: t.clone(),
            tools: d.clone(),
            preload: p.clone(),
        })),
        (None, None, None) => Ok(None),
        _ => Err("--rdma-core-tests, --rdma-core-tools and --odp-preload go together".into()),
    }
}

fn cases(args: CasesArgs) -> ExitCode {
    let backend = match backend(&args) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("rxe-lab: {e}");
            return ExitCode::from(2);
        }
    };
    let mut cases = if args.full {
        matrix::full()
    } else {
        matrix::subset()
    };
    if backend.is_some() {
        cases.extend(matrix::rdma_core());
    }
    cases.retain(|c| !(args.no_kernel_odp && c.kernel_odp));
    if let Some(only) = &args.only {
        cases.retain(|c| c.label.contains(only.as_str()));
    }
    if let Err(e) = std::fs::create_dir_all(&args.guest.out) {
        eprintln!("rxe-lab: {}: {e}", args.guest.out.display());
        return ExitCode::from(2);
    }
    let image = args.guest.image();
    let setup = Setup {
        tools: args.tools.clone(),
        out: args.guest.out.clone(),
    };
    let start = Instant::now();
    let mut boots = 0;
    let mut guest: Option<Guest> = None;
    // Whether the current guest holds the rdma-core build's files.
    let mut pushed = false;
    let mut results = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        // A guest that died (or whose last case timed out) is replaced.
        if guest.as_mut().is_none_or(|g| !g.alive()) {
            boots += 1;
            pushed = false;
            let console = args.guest.out.join(format!("console-{boots}.log"));
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
        let rows = match (&backend, c.kind) {
            (Some(b), Kind::RdmaCore | Kind::RdmaCoreTests) if !pushed => match b.push(g) {
                Ok(()) => {
                    pushed = true;
                    run_case(&setup, g, b, c, i, !args.no_kernel_odp)
                }
                Err(e) => vec![(
                    c.clone(),
                    Outcome::without_figures(
                        Err(format!("push into the guest: {e}")),
                        "",
                        Duration::ZERO,
                    ),
                )],
            },
            (Some(b), _) => run_case(&setup, g, b, c, i, !args.no_kernel_odp),
            (None, _) => vec![(c.clone(), case::run(&setup, g, c, i))],
        };
        let mut timed_out = false;
        for (row, outcome) in rows {
            report(i, cases.len(), &row, &outcome);
            timed_out |= outcome
                .verdict
                .as_ref()
                .is_err_and(|e| e.contains("timed out"));
            results.push((row, outcome));
        }
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
    let _ = std::fs::write(args.guest.out.join("table.txt"), &report);
    if results.iter().all(|(_, o)| o.verdict.is_ok()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs case `c` (number `i`): the backend's tests give a row per test.
fn run_case(
    setup: &Setup,
    g: &Guest,
    b: &Backend,
    c: &Case,
    i: usize,
    kernel_odp: bool,
) -> Vec<(Case, Outcome)> {
    if c.kind == Kind::RdmaCoreTests {
        rdma_core::run_tests(g, b, kernel_odp)
    } else {
        vec![(c.clone(), case::run(setup, g, c, i))]
    }
}

/// One line on stderr as a case (or a test of the backend) ends.
fn report(i: usize, n: usize, c: &Case, outcome: &Outcome) {
    let mark = if outcome.verdict.is_ok() {
        "PASS"
    } else {
        "FAIL"
    };
    let why = outcome
        .verdict
        .as_ref()
        .err()
        .and_then(|e| e.lines().next())
        .map(|e| format!(": {e}"))
        .unwrap_or_default();
    eprintln!(
        "rxe-lab: [{}/{n}] {mark} {} {} ({:.1}s){why}",
        i + 1,
        table::server(c),
        c.label,
        outcome.elapsed.as_secs_f64(),
    );
}
