//! The rxe lab: the project's perftest-style tools against real perftest
//! (Debian bookworm's 4.5) on a real kernel rxe, in a qemu TCG guest on a
//! bridge in a network namespace the lab creates. `tests/lab/lab.sh` builds
//! the guest and the namespace and runs the `rxe-lab` binary inside it;
//! this module is that binary's logic: the cases ([`matrix`]), the guest
//! ([`guest`]), one run with its capture check ([`case`]) and the table
//! ([`table`]).

pub mod case;
pub mod datacheck;
pub mod dev_exec;
pub mod flow_ports;
pub mod guest;
pub mod matrix;
pub mod push;
pub mod rdma_core;
pub mod stall;
pub mod table;

/// Why the lab could not run (a case's own failure is an outcome, not an
/// error).
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A program could not be started.
    #[error("cannot start {0}: {1}")]
    Start(String, std::io::Error),
    /// The guest did not boot.
    #[error("guest boot: {0}")]
    Boot(String),
    /// The guest's command port failed.
    #[error("guest: {0}")]
    Guest(String),
    /// Files, sockets.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}
