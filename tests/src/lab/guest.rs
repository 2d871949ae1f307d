//! The qemu guest: boot (TCG, a tap on the lab's bridge, console to a
//! file), run shell commands in it over its command port, power off.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::LabError;

/// The guest's addresses on the lab's bridge.
pub const GUEST_V4: &str = "198.18.0.2";
/// The guest's IPv6 address.
pub const GUEST_V6: &str = "fd00:4791::2";
/// The guest's command port (a shell per connection).
const COMMAND_PORT: u16 = 4700;
/// How long a boot may take under TCG.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// The marker after a command's output.
const EXIT_MARKER: &str = "LAB-EXIT-";

/// What boots the guest.
#[derive(Clone, Debug)]
pub struct GuestImage {
    /// The kernel (`vmlinuz`).
    pub kernel: PathBuf,
    /// The initramfs `build-guest.sh` built.
    pub initrd: PathBuf,
    /// The tap script that puts the tap on the bridge.
    pub ifup: PathBuf,
}

/// A running guest.
pub struct Guest {
    qemu: Child,
    console: PathBuf,
    /// The kernel release the guest reported.
    pub release: String,
}

/// A command's result in the guest.
#[derive(Clone, Debug)]
pub struct GuestOutput {
    /// Its exit status (`None`: the lab gave up waiting).
    pub status: Option<i32>,
    /// stdout and stderr, interleaved.
    pub text: String,
}

impl Guest {
    /// Boots the guest and waits until its rxe device is up and its
    /// command port answers. The console goes to `console`.
    ///
    /// # Errors
    /// qemu could not start, or the guest did not get ready in time.
    pub fn boot(image: &GuestImage, console: &Path) -> Result<Guest, LabError> {
        let log = std::fs::File::create(console)?;
        let append =
            format!("console=ttyS0 panic=1 quiet lab.ip4={GUEST_V4}/24 lab.ip6={GUEST_V6}/64");
        let netdev = format!(
            "tap,id=n0,ifname=labtap0,script={},downscript=no",
            image.ifup.display()
        );
        let qemu = Command::new("nice")
            .args([
                "-n",
                "10",
                "qemu-system-x86_64",
                "-accel",
                "tcg",
                "-m",
                "1024",
            ])
            .args(["-smp", "1", "-nographic", "-no-reboot", "-kernel"])
            .arg(&image.kernel)
            .arg("-initrd")
            .arg(&image.initrd)
            .args(["-append", &append, "-netdev", &netdev])
            .args(["-device", "virtio-net-pci,netdev=n0,mac=52:54:00:47:91:02"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| LabError::Start("qemu-system-x86_64".into(), e))?;
        let mut guest = Guest {
            qemu,
            console: console.to_path_buf(),
            release: String::new(),
        };
        guest.release = guest.await_ready()?;
        guest.await_command_port()?;
        Ok(guest)
    }

    /// Waits for `LAB-READY <release>` on the console.
    fn await_ready(&mut self) -> Result<String, LabError> {
        let start = Instant::now();
        while start.elapsed() < BOOT_TIMEOUT {
            let text = std::fs::read_to_string(&self.console).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains("LAB-READY ")) {
                let release = line.split("LAB-READY ").nth(1).unwrap_or("").trim();
                return Ok(release.to_string());
            }
            if let Ok(Some(status)) = self.qemu.try_wait() {
                return Err(LabError::Boot(format!(
                    "qemu exited ({status}) before the guest was ready; console: {}",
                    self.console.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(LabError::Boot(format!(
            "the guest was not ready after {BOOT_TIMEOUT:?}; console: {}",
            self.console.display()
        )))
    }

    /// Waits until the command port runs commands (the guest starts
    /// serving it just after it reports ready).
    fn await_command_port(&mut self) -> Result<(), LabError> {
        let start = Instant::now();
        loop {
            match exec("true", Duration::from_secs(10), None, &mut |_| {}) {
                Ok(GuestOutput {
                    status: Some(0), ..
                }) => return Ok(()),
                Ok(_) | Err(_) if start.elapsed() < Duration::from_secs(30) => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Ok(out) => return Err(LabError::Guest(format!("command port: {}", out.text))),
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether qemu still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.qemu.try_wait(), Ok(None))
    }

    /// Runs `command` with `sh` in the guest and returns its output, giving
    /// up after `timeout` (the command itself should be bounded with the
    /// guest's `timeout`, so that it dies there too).
    ///
    /// # Errors
    /// The command port could not be reached.
    pub fn exec(&self, command: &str, timeout: Duration) -> Result<GuestOutput, LabError> {
        exec(command, timeout, Some(self.qemu.id()), &mut |_| {})
    }

    /// [`Guest::exec`], handing each line of output to `on_line` as it
    /// arrives (for output a person watches).
    ///
    /// # Errors
    /// The command port could not be reached.
    pub fn exec_streaming(
        &self,
        command: &str,
        timeout: Duration,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<GuestOutput, LabError> {
        exec(command, timeout, Some(self.qemu.id()), on_line)
    }

    /// Powers the guest off (and kills qemu if it does not stop).
    pub fn stop(mut self) {
        let _ = exec("poweroff -f", Duration::from_secs(2), None, &mut |_| {});
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if !self.alive() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if self.alive() {
            let _ = self.qemu.kill();
            let _ = self.qemu.wait();
        }
    }
}

/// Tells one command's end marker from any other (a command may print
/// text that looks like a marker of an earlier one).
fn marker() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{EXIT_MARKER}{}-{nanos}-{n} ", std::process::id())
}

/// The exit status in `line` if it ends with `marker` and a number, and
/// the text before the marker (a command whose output does not end with a
/// newline puts the marker on its last line).
fn split_marker<'a>(line: &'a str, marker: &str) -> Option<(&'a str, Option<i32>)> {
    let at = line.rfind(marker)?;
    let code = line[at + marker.len()..].trim();
    code.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| (&line[..at], code.parse().ok()))
}

/// Runs `command` over the guest's command port; the connection stays
/// open (the guest's shell would be cut off on end of input) until the
/// exit marker arrives or `timeout` passes, or the qemu process `qemu`
/// (our child, not reaped yet) has ended. Each complete line of output goes
/// to `on_line` as it arrives.
fn exec(
    command: &str,
    timeout: Duration,
    qemu: Option<u32>,
    on_line: &mut dyn FnMut(&str),
) -> Result<GuestOutput, LabError> {
    let addr: SocketAddr = format!("{GUEST_V4}:{COMMAND_PORT}")
        .parse()
        .map_err(|_| LabError::Guest("bad command address".into()))?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| LabError::Guest(format!("command port {addr}: {e}")))?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    let marker = marker();
    writeln!(stream, "{command}\necho \"{marker}$?\"")?;
    let deadline = Instant::now() + timeout;
    let mut reader = BufReader::new(stream);
    let mut text = String::new();
    let mut line = Vec::new();
    loop {
        if Instant::now() > deadline {
            return Ok(GuestOutput { status: None, text });
        }
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => return Ok(GuestOutput { status: None, text }),
            Ok(_) if line.ends_with(b"\n") => {
                let l = String::from_utf8_lossy(&line).into_owned();
                line.clear();
                if let Some((before, status)) = split_marker(l.trim_end(), &marker) {
                    if !before.is_empty() {
                        on_line(before);
                        text.push_str(before);
                        text.push('\n');
                    }
                    return Ok(GuestOutput { status, text });
                }
                on_line(l.trim_end_matches('\n'));
                text.push_str(&l);
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if qemu.is_some_and(ended) {
                    return Err(LabError::Guest(format!(
                        "qemu ended while running {command:?}; output so far: {text}"
                    )));
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether our child `pid` has ended: a zombie, or gone.
fn ended(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        // The state follows the command name, which is in parentheses.
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_differ_and_split_off_the_status() {
        let (a, b) = (marker(), marker());
        assert_ne!(a, b);
        assert_eq!(split_marker(&format!("{a}0"), &a), Some(("", Some(0))));
        assert_eq!(
            split_marker(&format!("no newline{a}137"), &a),
            Some(("no newline", Some(137)))
        );
        // Another command's marker, or text after the marker, is output.
        assert_eq!(split_marker(&format!("{b}0"), &a), None);
        assert_eq!(split_marker(&format!("{a}0 and more"), &a), None);
    }
}
