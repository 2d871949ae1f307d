//! The lab's rdma-core cases: the provider's `rdma-core` backend on the
//! guest's kernel rxe. Its binaries (the `rdma_core` integration test, the
//! odp preload library, the tools built with the feature) are pushed into
//! the guest once per boot; the test executable's run becomes one table
//! row per test.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::LabError;
use super::case::Outcome;
use super::dev_exec::PUSH_DIR;
use super::guest::Guest;
use super::matrix::Case;

/// The tools the rdma-core cases run in the guest.
pub const TOOLS: [&str; 3] = ["write_bw", "read_bw", "send_bw"];

/// The preload library's file name.
const PRELOAD: &str = "libodp_preload.so";

/// The rdma-core build's files on the host.
#[derive(Clone, Debug)]
pub struct Backend {
    /// The `rdma_core` integration test executable.
    pub test_exe: PathBuf,
    /// `libodp_preload.so`.
    pub preload: PathBuf,
    /// The folder of the tools built with the `rdma-core` feature.
    pub tools: PathBuf,
}

impl Backend {
    /// Copies the test executable, the preload library and the tools to
    /// the guest's [`PUSH_DIR`].
    ///
    /// # Errors
    /// A file is missing or a push failed.
    pub fn push(&self, guest: &Guest) -> Result<(), LabError> {
        let mut files = vec![self.test_exe.clone(), self.preload.clone()];
        files.extend(TOOLS.iter().map(|t| self.tools.join(t)));
        for f in files {
            let name = f.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
                LabError::Guest(format!("rdma-core: {}: no file name", f.display()))
            })?;
            guest.push(&f, &format!("{PUSH_DIR}/{name}"))?;
        }
        Ok(())
    }

    /// The guest's command that runs the tests, one at a time, bounded by
    /// `timeout_secs`; `kernel_odp` says whether the guest's rxe has ODP.
    fn test_command(&self, kernel_odp: bool, timeout_secs: u64) -> String {
        let exe = self
            .test_exe
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!(
            "cd {PUSH_DIR} && SRXE_RDMA_CORE_REQUIRE=1 SRXE_LAB_KERNEL_ODP={} \
             SRXE_ODP_PRELOAD={PUSH_DIR}/{PRELOAD} timeout -s KILL {timeout_secs} \
             {PUSH_DIR}/{exe} --test-threads=1 < /dev/null 2>&1",
            u8::from(kernel_odp)
        )
    }
}

/// How one test ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestResult {
    /// `ok`.
    Passed,
    /// `FAILED`.
    Failed,
    /// `ignored` (not run).
    Ignored,
}

/// One test of a libtest run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestRow {
    /// Its name.
    pub name: String,
    /// How it ended (`None`: the run ended before it did).
    pub result: Option<TestResult>,
    /// What it printed: uncaptured output while it ran, then, for a
    /// failure, libtest's captured output.
    pub output: String,
    /// Index of its last output line (for its run time).
    pub last_line: usize,
}

/// The result word libtest prints after `test NAME ... `.
fn result_of(tail: &str) -> Option<TestResult> {
    match tail.trim() {
        "ok" => Some(TestResult::Passed),
        "FAILED" => Some(TestResult::Failed),
        t if t == "ignored" || t.starts_with("ignored, ") => Some(TestResult::Ignored),
        _ => None,
    }
}

/// Reads libtest's output (`--test-threads=1`): one row per `test NAME
/// ... RESULT` (output a test printed outside libtest's capture lands
/// between the name and the result word), failures' `---- NAME stdout ----`
/// blocks appended to their rows.
pub fn parse(lines: &[String]) -> Vec<TestRow> {
    let mut rows: Vec<TestRow> = Vec::new();
    let mut running: Option<usize> = None;
    let mut block: Option<usize> = None;
    for (i, line) in lines.iter().enumerate() {
        if let Some((name, tail)) = line
            .strip_prefix("test ")
            .and_then(|r| r.split_once(" ... "))
            .filter(|(n, _)| !n.contains(char::is_whitespace))
        {
            block = None;
            rows.push(TestRow {
                name: name.to_string(),
                result: result_of(tail),
                output: String::new(),
                last_line: i,
            });
            let at = rows.len() - 1;
            if rows[at].result.is_none() {
                rows[at].output = format!("{tail}\n");
                running = Some(at);
            } else {
                running = None;
            }
            continue;
        }
        if let Some(at) = running {
            rows[at].last_line = i;
            match result_of(line) {
                Some(r) => {
                    rows[at].result = Some(r);
                    running = None;
                }
                None => rows[at].output.push_str(&format!("{line}\n")),
            }
            continue;
        }
        if let Some(name) = line
            .strip_prefix("---- ")
            .and_then(|r| r.strip_suffix(" stdout ----"))
        {
            block = rows.iter().position(|r| r.name == name);
            continue;
        }
        if line == "failures:" || line.starts_with("test result:") {
            block = None;
        } else if let Some(at) = block {
            rows[at].output.push_str(&format!("{line}\n"));
        }
    }
    rows
}

/// Runs the backend's tests in the guest (already pushed there) and makes
/// one table row per test; a run that printed no test, exited non-zero
/// without a failed test, or was cut off adds a failing row of its own.
pub fn run_tests(guest: &Guest, backend: &Backend, kernel_odp: bool) -> Vec<(Case, Outcome)> {
    let limit = Case::backend_test("tests").timeout_secs;
    let start = Instant::now();
    let mut lines: Vec<String> = Vec::new();
    let mut stamps: Vec<Instant> = Vec::new();
    let out = guest.exec_streaming(
        &backend.test_command(kernel_odp, limit),
        Duration::from_secs(limit + 15),
        &mut |l| {
            lines.push(l.to_string());
            stamps.push(Instant::now());
        },
    );
    let rows = parse(&lines);
    let mut results = Vec::new();
    let mut since = start;
    for row in &rows {
        let end = stamps.get(row.last_line).copied().unwrap_or(since);
        let verdict = match row.result {
            Some(TestResult::Passed) | Some(TestResult::Ignored) => Ok(()),
            Some(TestResult::Failed) => Err(format!("FAILED\n{}", row.output.trim_end())),
            None => Err(format!("did not finish\n{}", row.output.trim_end())),
        };
        let note = if row.result == Some(TestResult::Ignored) {
            "ignored (not run)"
        } else {
            ""
        };
        results.push((
            Case::backend_test(&row.name),
            Outcome::without_figures(verdict, note, end.saturating_duration_since(since)),
        ));
        since = end;
    }
    let tail = || lines[lines.len().saturating_sub(30)..].join("\n");
    let run_error = match &out {
        Err(e) => Some(format!("{e}")),
        Ok(o) => match o.status {
            Some(0) if rows.is_empty() => Some(format!("no test ran\n{}", tail())),
            Some(0) => None,
            Some(124) | Some(137) | None => {
                Some(format!("timed out (killed after {limit} s)\n{}", tail()))
            }
            Some(_) if rows.iter().any(|r| r.result == Some(TestResult::Failed)) => None,
            Some(code) => Some(format!("the test executable exited {code}\n{}", tail())),
        },
    };
    if let Some(e) = run_error {
        results.push((
            Case::backend_test("tests"),
            Outcome::without_figures(Err(e), "", start.elapsed()),
        ));
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(String::from).collect()
    }

    #[test]
    fn libtest_rows_with_uncaptured_output_and_failures() {
        let out = lines(
            "\nrunning 4 tests\n\
             test opens_rxe0 ... ok\n\
             test odp_write ... child says hello\n\
             more from the child\n\
             FAILED\n\
             test slow ... ignored, needs a second device\n\
             test ok_word_in_output ... it is ok\n\
             ok\n\
             \nfailures:\n\n\
             ---- odp_write stdout ----\n\
             thread 'odp_write' panicked at provider/tests/rdma_core.rs:10:5:\n\
             bytes differ\n\n\
             failures:\n    odp_write\n\n\
             test result: FAILED. 2 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out\n",
        );
        let rows = parse(&out);
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            ["opens_rxe0", "odp_write", "slow", "ok_word_in_output"]
        );
        let results: Vec<_> = rows.iter().map(|r| r.result).collect();
        assert_eq!(
            results,
            [
                Some(TestResult::Passed),
                Some(TestResult::Failed),
                Some(TestResult::Ignored),
                Some(TestResult::Passed)
            ]
        );
        assert!(rows[1].output.contains("child says hello"));
        assert!(rows[1].output.contains("more from the child"));
        assert!(rows[1].output.contains("bytes differ"));
        assert!(!rows[1].output.contains("test result"));
        assert_eq!(rows[1].last_line, 5);
        assert!(rows[3].output.contains("it is ok"));
    }

    #[test]
    fn a_run_cut_off_leaves_the_test_unfinished() {
        let rows = parse(&lines("running 1 test\ntest hangs ... waiting\n"));
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].result, None);
        assert!(parse(&lines("running 0 tests\n\ntest result: ok. 0 passed")).is_empty());
    }

    #[test]
    fn the_guest_command_sets_the_lab_environment() {
        let b = Backend {
            test_exe: PathBuf::from("/x/target/rdma-core/release/deps/rdma_core-0123abcd"),
            preload: PathBuf::from("/x/libodp_preload.so"),
            tools: PathBuf::from("/x"),
        };
        let on = b.test_command(true, 300);
        assert!(on.contains("SRXE_RDMA_CORE_REQUIRE=1 SRXE_LAB_KERNEL_ODP=1 "));
        assert!(on.contains("SRXE_ODP_PRELOAD=/tmp/push/libodp_preload.so"));
        assert!(on.contains("timeout -s KILL 300 /tmp/push/rdma_core-0123abcd --test-threads=1"));
        assert!(
            b.test_command(false, 300)
                .contains("SRXE_LAB_KERNEL_ODP=0 ")
        );
    }
}
