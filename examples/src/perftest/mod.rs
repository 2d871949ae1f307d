//! perftest-compatible tools over this project's device: the connection
//! exchange of perftest 6.06, its flags, its measurements and its tables.
//! Each binary (`write_bw`, `read_bw`, `send_bw`, `atomic_bw`, `write_lat`,
//! `read_lat`, `send_lat`) is one call of [`main`].

pub mod bw;
pub mod exchange;
pub mod flags;
pub mod gid;
pub mod lat;
pub mod peak;
pub mod report;
pub mod session;
pub mod side;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Parser;
use provider::{VerbsError, WcStatus, WorkCompletion};

pub use exchange::Tool;
pub use flags::{AtomicType, Flags};

/// Why a tool stopped.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// A flag or a combination of flags is not allowed.
    #[error("{0}")]
    Flags(String),
    /// The device could not be found or opened.
    #[error("{0}")]
    Device(String),
    /// A verbs call failed.
    #[error("verbs: {0}")]
    Verbs(#[from] VerbsError),
    /// The connection exchange failed (unreachable peer, timeout, a peer
    /// speaking another protocol).
    #[error("connection exchange: {0}")]
    Exchange(#[from] exchange::ExchangeError),
    /// The two sides disagree.
    #[error("{0}")]
    Protocol(String),
    /// A work request completed with an error.
    #[error("work request {wr_id} completed with {status:?}")]
    Completion {
        /// Its id.
        wr_id: u64,
        /// Its status.
        status: WcStatus,
    },
    /// Nothing completed for this long: the peer is gone or stuck.
    #[error("no completion for {0:?}: is the peer still running?")]
    Stalled(Duration),
    /// `--check` found other bytes than were sent.
    #[error("data check failed: {0}")]
    Check(String),
    /// Ctrl-C.
    #[error("interrupted")]
    Interrupted,
    /// Writing the report failed.
    #[error("output: {0}")]
    Output(#[from] std::io::Error),
}

impl ToolError {
    /// For `map_err` on verbs calls.
    pub fn verbs(e: VerbsError) -> ToolError {
        ToolError::Verbs(e)
    }
}

/// Fails on an unsuccessful completion.
pub fn check_completion(wc: &WorkCompletion) -> Result<(), ToolError> {
    if wc.status == WcStatus::Success {
        Ok(())
    } else {
        Err(ToolError::Completion {
            wr_id: wc.wr_id,
            status: wc.status,
        })
    }
}

/// `len` rounded up to whole pages (at least one).
pub fn page_round(len: usize) -> usize {
    len.max(1).div_ceil(4096) * 4096
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether Ctrl-C was pressed.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// The first Ctrl-C asks the measurement loops to stop; a second one
/// kills the process (the handler resets itself).
fn catch_ctrl_c() {
    // SAFETY: all-zero is a valid sigaction; the handler only stores to an
    // atomic, which is async-signal-safe.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigint as *const () as libc::sighandler_t;
        sa.sa_flags = libc::SA_RESETHAND;
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
    }
}

/// A tool's `main`: parses the flags, runs, prints, and maps errors to
/// exit codes (2 bad flags, 130 Ctrl-C, 1 anything else).
pub fn main(tool: Tool) -> ExitCode {
    let flags = match Flags::try_parse() {
        Ok(f) => f,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    catch_ctrl_c();
    match session::run(tool, &flags, &mut std::io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(ToolError::Interrupted) => {
            eprintln!(
                "{}: interrupted",
                tool.perftest_binary().trim_start_matches("ib_")
            );
            ExitCode::from(130)
        }
        Err(e @ ToolError::Flags(_)) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The bytes `--check` expects: a pattern that differs by `seed`.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u64)
                .wrapping_mul(131)
                .wrapping_add(seed.wrapping_mul(7) + 1) as u8
        })
        .collect()
}
