//! Reading the figures out of perftest-style output, and the lab's
//! pass/fail table.

use std::fmt::Write;

use super::case::Outcome;
use super::matrix::{Case, Direction, Kind};

/// What one side printed in its result table.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Figures {
    /// Rows in the table (one per size).
    pub rows: usize,
    /// The last row's main figure: average bandwidth (MB/s) of a bandwidth
    /// table, typical latency (usec) of a latency table.
    pub main: Option<f64>,
    /// Its unit.
    pub unit: &'static str,
    /// perftest's clock calibration failed (a TCG artefact).
    pub flaked: bool,
}

/// The table rows of perftest-style output: the lines between a header
/// starting ` #bytes` and the next dashed line.
pub fn figures(text: &str) -> Figures {
    let mut f = Figures::default();
    let mut column = None;
    for line in text.lines() {
        if line.starts_with(" #bytes") {
            let bw = line.contains("BW average");
            f.unit = if bw { "MB/s" } else { "us" };
            // Bandwidth: field 3 is the average; latency: field 4 is typical.
            column = Some(if bw { 3 } else { 4 });
            continue;
        }
        if line.starts_with("----") {
            column = None;
            continue;
        }
        let Some(c) = column else { continue };
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() > c && fields[0].parse::<u64>().is_ok() {
            f.rows += 1;
            f.main = fields[c].parse().ok();
        }
    }
    f
}

fn show(f: &Figures) -> String {
    match f.main {
        Some(v) if f.rows > 1 => format!("{v:.2} {} ({} rows)", f.unit, f.rows),
        Some(v) => format!("{v:.2} {}", f.unit),
        None => "-".into(),
    }
}

/// Who serves in `case`, as the table's column says it.
pub fn server(case: &Case) -> String {
    match (case.kind, case.direction) {
        (Kind::RdmaCore, Direction::GuestServes) => "rxe0 srv".into(),
        _ => case.direction.to_string(),
    }
}

/// The pass/fail table: one line per case with both sides' figures; a
/// failure's further lines (a failed test's output) follow its line,
/// indented.
pub fn render(results: &[(Case, Outcome)]) -> String {
    let mut s = String::new();
    let width = results
        .iter()
        .map(|(c, _)| c.label.len())
        .max()
        .unwrap_or(0)
        .max(50);
    let _ = writeln!(
        s,
        "{:<3} {:<4} {:<12} {:<width$} {:>16} {:>16} {:>5}  why / capture",
        "#", "ok", "server", "case", "perftest", "ours", "secs"
    );
    for (i, (case, o)) in results.iter().enumerate() {
        let ok = if o.verdict.is_ok() { "PASS" } else { "FAIL" };
        let why = match &o.verdict {
            Ok(()) => o.capture.clone(),
            Err(e) => e.clone(),
        };
        let (why, more) = why.split_once('\n').unwrap_or((&why, ""));
        let retried = o
            .rerun
            .map(|why| format!(" (rerun: {why})"))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "{:<3} {:<4} {:<12} {:<width$} {:>16} {:>16} {:>5.1}  {why}{retried}",
            i,
            ok,
            server(case),
            case.label,
            show(&o.theirs),
            show(&o.ours),
            o.elapsed.as_secs_f64()
        );
        for line in more.lines() {
            let _ = writeln!(s, "      | {line}");
        }
    }
    let failed = results.iter().filter(|(_, o)| o.verdict.is_err()).count();
    let _ = writeln!(
        s,
        "{} cases, {} passed, {failed} failed",
        results.len(),
        results.len() - failed
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_of_bandwidth_and_latency_tables() {
        let bw = " #bytes     #iterations    BW peak[MB/sec]    BW average[MB/sec]   MsgRate[Mpps]\n \
                  65536      200              58.56              57.25  \t\t   0.000937\n\
                  ---------------------------------------------------------------------------------------\n";
        let f = figures(bw);
        assert_eq!((f.rows, f.main, f.unit), (1, Some(57.25), "MB/s"));
        let lat = " #bytes #iterations    t_min[usec]    t_max[usec]  t_typical[usec]    t_avg[usec]\n \
                   2       1000          3.50           12.25        4.00     \t       4.10\n \
                   4       1000          3.50           12.25        5.00     \t       4.10\n\
                   ----\n";
        let f = figures(lat);
        assert_eq!((f.rows, f.main, f.unit), (2, Some(5.0), "us"));
        assert_eq!(figures("no table here").rows, 0);
    }

    #[test]
    fn a_failure_s_further_lines_follow_its_row() {
        let outcome = |verdict| {
            Outcome::without_figures(verdict, "ignored (not run)", std::time::Duration::ZERO)
        };
        let long = Case::backend_test("a_test_name_longer_than_the_fifty_columns_of_the_table");
        let t = render(&[
            (
                long.clone(),
                outcome(Err("FAILED\nline one\nline two".into())),
            ),
            (Case::backend_test("skipped"), outcome(Ok(()))),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[1].contains(&long.label) && lines[1].ends_with("FAILED"));
        assert_eq!(lines[2], "      | line one");
        assert_eq!(lines[3], "      | line two");
        assert!(lines[4].starts_with("1   PASS guest") && lines[4].ends_with("ignored (not run)"));
        assert_eq!(lines[5], "2 cases, 1 passed, 1 failed");
    }
}
