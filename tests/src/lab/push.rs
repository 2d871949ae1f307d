//! Copying a host file into the running guest: a one-shot `socat`
//! listener in the guest writes what the host streams to it over the lab's
//! bridge; size and SHA-256 are compared afterwards.

use std::fs::File;
use std::io::{BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use super::LabError;
use super::guest::{GUEST_V4, Guest};

/// The first TCP port of the guest's one-shot listeners (the command port
/// is 4700); each push takes the next one, so a listener left over from a
/// failed push never receives another file.
static NEXT_PORT: AtomicU16 = AtomicU16::new(4701);

/// How long the guest's listener may take at least; beyond that, one more
/// second per MiB (TCG moves tens of MB/s over the tap).
const BASE_LIMIT: Duration = Duration::from_secs(30);

/// Whether `path` is an absolute guest path the guest's shell and socat's
/// address syntax take literally (no quoting, no `,` or `:`).
fn plain_guest_path(path: &str) -> bool {
    path.starts_with('/')
        && !path.ends_with('/')
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._+-".contains(&b))
}

/// The SHA-256 of `file`, as `sha256sum` prints it.
fn sha256(file: &Path) -> Result<String, LabError> {
    let out = Command::new("sha256sum")
        .arg(file)
        .output()
        .map_err(|e| LabError::Start("sha256sum".into(), e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.split_whitespace().next() {
        Some(sum) if out.status.success() && sum.len() == 64 => Ok(sum.to_string()),
        _ => Err(LabError::Guest(format!(
            "sha256sum {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
    }
}

/// Connects to the guest's listener on `port`, retrying while it is not
/// listening yet, until `deadline`.
fn connect(port: u16, deadline: Instant) -> Result<TcpStream, LabError> {
    let addr: SocketAddr = (
        GUEST_V4
            .parse::<std::net::Ipv4Addr>()
            .map_err(|_| LabError::Guest("bad guest address".into()))?,
        port,
    )
        .into();
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() > deadline => {
                return Err(LabError::Guest(format!("push: connect to {addr}: {e}")));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Streams `local` to `port` and closes the sending side (socat's end of
/// input).
fn stream_file(local: &Path, port: u16, deadline: Instant) -> Result<u64, LabError> {
    let mut file = BufReader::with_capacity(1 << 16, File::open(local)?);
    let mut conn = connect(port, deadline)?;
    let sent = std::io::copy(&mut file, &mut conn)?;
    conn.flush()?;
    conn.shutdown(Shutdown::Write)?;
    Ok(sent)
}

impl Guest {
    /// Copies the host file `local` to `guest_path` in the guest (its
    /// folder is created, the file made executable) and checks that the
    /// guest holds the same bytes (size and SHA-256).
    ///
    /// # Errors
    /// `guest_path` is not a plain absolute path, the file cannot be read,
    /// the transfer failed or timed out, or the guest's copy differs.
    pub fn push(&self, local: &Path, guest_path: &str) -> Result<(), LabError> {
        if !plain_guest_path(guest_path) {
            return Err(LabError::Guest(format!(
                "push: {guest_path:?} is not an absolute path of letters, digits and ._+-/"
            )));
        }
        let size = std::fs::metadata(local)?.len();
        let want = sha256(local)?;
        let port = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
        let limit = BASE_LIMIT + Duration::from_secs(size >> 20);
        let dir = guest_path.rsplit_once('/').map_or("/", |(d, _)| d);
        let dir = if dir.is_empty() { "/" } else { dir };
        let receive = format!(
            "mkdir -p {dir} && timeout -s KILL {secs} socat -u TCP-LISTEN:{port},reuseaddr \
             OPEN:{guest_path},creat,trunc && chmod +x {guest_path} && wc -c < {guest_path} \
             && sha256sum {guest_path}",
            secs = limit.as_secs()
        );
        let deadline = Instant::now() + limit;
        let (guest_side, sent) = std::thread::scope(|s| {
            let g = s.spawn(|| self.exec(&receive, limit + Duration::from_secs(10)));
            let sent = stream_file(local, port, deadline);
            (g.join(), sent)
        });
        let out =
            guest_side.map_err(|_| LabError::Guest("push: guest thread panicked".into()))??;
        let sent = sent?;
        let got_size = out.text.lines().find_map(|l| l.trim().parse::<u64>().ok());
        let got_sum = out
            .text
            .lines()
            .find(|l| l.ends_with(guest_path))
            .and_then(|l| l.split_whitespace().next());
        if out.status != Some(0) || got_size != Some(size) || sent != size {
            return Err(LabError::Guest(format!(
                "push {} -> {guest_path}: sent {sent} of {size} bytes, guest has {got_size:?} \
                 (status {:?}): {}",
                local.display(),
                out.status,
                out.text.trim()
            )));
        }
        if got_sum != Some(want.as_str()) {
            return Err(LabError::Guest(format!(
                "push {} -> {guest_path}: SHA-256 differs (host {want}, guest {got_sum:?})",
                local.display()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The guest path comes from a developer's command line: anything the
    /// shell or socat would interpret is refused, not quoted.
    #[test]
    fn only_plain_absolute_guest_paths() {
        assert!(plain_guest_path("/tmp/push/write_bw"));
        assert!(plain_guest_path("/tmp/push/rdma_core-0a1b2c.d"));
        for bad in [
            "tmp/x",
            "/tmp/",
            "/tmp/a b",
            "/tmp/a;rm",
            "/tmp/a,b",
            "/tmp/a:b",
            "/tmp/$x",
            "",
        ] {
            assert!(!plain_guest_path(bad), "{bad:?}");
        }
    }
}
