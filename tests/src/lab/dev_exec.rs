//! The lab's developer loop (`tests/lab/guest-exec.sh`): boot the guest,
//! push files into it, run one command there (and optionally one on the
//! host side of the bridge at the same time), print the output, power off.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::LabError;
use super::guest::{Guest, GuestImage, GuestOutput};

/// Where pushed files land in the guest (and the guest command's working
/// folder, first on its `PATH`).
pub const PUSH_DIR: &str = "/tmp/push";

/// What to do in one boot.
#[derive(Clone, Debug)]
pub struct Request {
    /// Host files to copy to [`PUSH_DIR`]`/<file name>`.
    pub push: Vec<PathBuf>,
    /// A shell command run on the host side (in the lab's namespace)
    /// while the guest command runs, started first.
    pub host: Option<String>,
    /// The guest command's words, joined with spaces into one `sh -c`
    /// text (as `ssh` does).
    pub command: Vec<String>,
    /// Seconds the guest command may run before it is killed.
    pub timeout_secs: u64,
    /// Seconds the host command may run on after the guest command ended.
    pub host_grace_secs: u64,
}

/// `text` as one single-quoted shell word.
pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The guest side's shell text: the command in [`PUSH_DIR`], with that
/// folder first on `PATH`, without stdin (the command port's input carries
/// the end marker), bounded by the guest's `timeout`.
fn guest_command(req: &Request) -> String {
    format!(
        "mkdir -p {PUSH_DIR} && cd {PUSH_DIR} && PATH={PUSH_DIR}:$PATH timeout -s KILL {} sh -c {} \
         < /dev/null 2>&1",
        req.timeout_secs,
        shell_quote(&req.command.join(" "))
    )
}

/// Boots the guest from `image` (console in `out`), carries out `req`,
/// powers off. Returns the exit status for the caller's process: the
/// guest command's, or (when that is 0) the host command's; 124 if the
/// guest command was killed at its time limit or its output never ended.
///
/// # Errors
/// The guest did not boot, a push failed, the host command could not
/// start.
pub fn run(image: &GuestImage, out: &Path, req: &Request) -> Result<i32, LabError> {
    let start = Instant::now();
    let guest = Guest::boot(image, &out.join("console.log"))?;
    eprintln!(
        "guest-exec: guest up, kernel {} ({:.0?})",
        guest.release,
        start.elapsed()
    );
    let result = run_in(&guest, req);
    guest.stop();
    result
}

fn run_in(guest: &Guest, req: &Request) -> Result<i32, LabError> {
    for file in &req.push {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| LabError::Guest(format!("push: {}: no file name", file.display())))?;
        let t = Instant::now();
        guest.push(file, &format!("{PUSH_DIR}/{name}"))?;
        let size = std::fs::metadata(file)?.len();
        eprintln!(
            "guest-exec: pushed {} to {PUSH_DIR}/{name} ({size} bytes, {:.1?})",
            file.display(),
            t.elapsed()
        );
    }
    let mut host = match &req.host {
        Some(cmd) => Some(
            Command::new("sh")
                .args(["-c", cmd])
                .stdin(Stdio::null())
                // Its own process group, so that whatever it starts ends
                // with it.
                .process_group(0)
                .spawn()
                .map_err(|e| LabError::Start(format!("host command {cmd:?}"), e))?,
        ),
        None => None,
    };
    let limit = Duration::from_secs(req.timeout_secs + 15);
    let out = guest.exec_streaming(&guest_command(req), limit, &mut |l| println!("{l}"));
    let guest_status = match &out {
        Ok(GuestOutput {
            status: Some(code), ..
        }) => *code,
        Ok(_) => {
            eprintln!("guest-exec: the guest command did not end within {limit:?}");
            124
        }
        Err(_) => 125,
    };
    // A host server whose guest client failed would wait for ever.
    let grace = if guest_status == 0 {
        Duration::from_secs(req.host_grace_secs)
    } else {
        Duration::from_secs(2)
    };
    let host_status = host.as_mut().map(|h| finish(h, grace));
    out?;
    if guest_status != 0 {
        eprintln!("guest-exec: the guest command exited {guest_status}");
        return Ok(guest_status);
    }
    Ok(match host_status {
        Some(Some(0)) | None => 0,
        Some(Some(code)) => {
            eprintln!("guest-exec: the host command exited {code}");
            code
        }
        Some(None) => {
            eprintln!("guest-exec: the host command was killed (signal or time limit)");
            124
        }
    })
}

/// Whether the child `pid` has ended, leaving it unreaped (so that its
/// pid, the id of its process group, stays reserved).
fn ended(pid: libc::pid_t) -> bool {
    // SAFETY: siginfo_t is plain data for which all zeroes is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid(2) on our own child, writing into `info`, which lives
    // across the call; WNOWAIT leaves the child to be reaped later.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: waitid filled `info` (r == 0); si_pid is 0 while the child runs.
    r != 0 || unsafe { info.si_pid() } != 0
}

/// Waits for the host command up to `grace`, then kills what is left of
/// its process group (the command itself too, past `grace`) and reaps it;
/// its exit code (`None`: killed or ended by a signal).
fn finish(child: &mut Child, grace: Duration) -> Option<i32> {
    let pid = child.id() as libc::pid_t;
    let start = Instant::now();
    while !ended(pid) && start.elapsed() < grace {
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill(2) of the process group our child leads (spawned with
    // process_group(0)); the child is not reaped yet, so its pid, and with
    // it the group's id, cannot have been reused.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    child.wait().ok().and_then(|s| s.code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_command_is_one_quoted_word() {
        let req = Request {
            push: Vec::new(),
            host: None,
            command: vec!["echo".into(), "it's".into(), "$HOME;".into()],
            timeout_secs: 60,
            host_grace_secs: 30,
        };
        let text = guest_command(&req);
        assert!(text.contains(r"sh -c 'echo it'\''s $HOME;' < /dev/null"));
        assert!(text.contains("timeout -s KILL 60 "));
        assert_eq!(shell_quote(""), "''");
    }
}
