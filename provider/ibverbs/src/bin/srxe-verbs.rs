//! Runs a verbs program over the userspace device:
//! `srxe-verbs PROGRAM [ARGS...]` starts PROGRAM with `LD_LIBRARY_PATH`
//! leading to this crate's `libibverbs.so.1` (cargo builds it as
//! `libibverbs.so` beside this executable or in `deps/`; a directory beside
//! the executable gets the `libibverbs.so.1` link the dynamic loader looks
//! for).

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Errors of the launcher.
#[derive(Debug, thiserror::Error)]
enum LaunchError {
    #[error("usage: srxe-verbs PROGRAM [ARGS...]")]
    Usage,
    #[error("cannot find this executable: {0}")]
    NoExe(std::io::Error),
    #[error("{0} is missing: build the srxe-ibverbs package")]
    NoLibrary(PathBuf),
    #[error("cannot make {0}: {1}")]
    Link(PathBuf, std::io::Error),
    #[error("cannot run {0:?}: {1}")]
    Exec(OsString, std::io::Error),
}

/// The directory holding `libibverbs.so.1`, made beside the library.
fn library_dir() -> Result<PathBuf, LaunchError> {
    let exe = std::env::current_exe().map_err(LaunchError::NoExe)?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    // `cargo build` leaves the library beside the executable; a build for
    // `cargo run` or `cargo test` only in deps/. The newer one is current.
    let modified = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let lib = [dir.join("libibverbs.so"), dir.join("deps/libibverbs.so")]
        .into_iter()
        .filter_map(|p| Some((modified(&p)?, p)))
        .max()
        .map(|(_, p)| p)
        .ok_or_else(|| LaunchError::NoLibrary(dir.join("libibverbs.so")))?;
    let link_dir = dir.join("srxe-ibverbs");
    let link = link_dir.join("libibverbs.so.1");
    if std::fs::read_link(&link).ok().as_deref() != Some(lib.as_path()) {
        // A fresh link renamed into place: launchers starting at the same
        // time never see a missing or half-made link.
        std::fs::create_dir_all(&link_dir).map_err(|e| LaunchError::Link(link_dir.clone(), e))?;
        let fresh = link_dir.join(format!(".libibverbs.so.1.{}", std::process::id()));
        let _ = std::fs::remove_file(&fresh);
        std::os::unix::fs::symlink(&lib, &fresh)
            .and_then(|()| std::fs::rename(&fresh, &link))
            .map_err(|e| LaunchError::Link(link.clone(), e))?;
    }
    Ok(link_dir)
}

/// Replaces this process with the program.
fn launch() -> Result<(), LaunchError> {
    let mut args = std::env::args_os().skip(1);
    let program = args.next().ok_or(LaunchError::Usage)?;
    let dir = library_dir()?;
    let mut path = OsString::from(dir.as_os_str());
    if let Some(old) = std::env::var_os("LD_LIBRARY_PATH").filter(|p| !p.is_empty()) {
        path.push(":");
        path.push(old);
    }
    let err = Command::new(&program)
        .args(args)
        .env("LD_LIBRARY_PATH", path)
        .exec();
    Err(LaunchError::Exec(program, err))
}

fn main() -> ExitCode {
    match launch() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("srxe-verbs: {e}");
            ExitCode::FAILURE
        }
    }
}
