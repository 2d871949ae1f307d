//! roce-dump: decodes the RoCEv2 frames of a pcap or pcapng capture with
//! the provider's own wire code, recomputes each ICRC from the captured IP
//! and UDP headers, and emits every parsed packet again to compare it with
//! the captured bytes.

pub mod capture;
pub mod flows;
pub mod frame;
pub mod report;

use std::io::{self, Write};

use capture::CaptureError;
use flows::Flows;
use frame::{Classified, Problem};
use report::Counts;

/// What to print.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Print only the frames that fail (parse, ICRC, re-emit) and make the
    /// outcome a verdict.
    pub check: bool,
    /// Print per-connection summaries instead of frames.
    pub flows: bool,
    /// One JSON object per line instead of text.
    pub json: bool,
}

/// How a run ended.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The closing counts.
    pub counts: Counts,
    /// Indices of the RoCEv2 frames that failed a check.
    pub failed: Vec<usize>,
    /// Why reading stopped early, if it did.
    pub read_error: Option<CaptureError>,
}

impl Outcome {
    /// Whether everything read was RoCEv2-clean and the file was whole.
    pub fn passed(&self) -> bool {
        self.failed.is_empty() && self.read_error.is_none()
    }
}

/// Decodes `file` (the bytes of a capture) and writes the report to `out`.
///
/// # Errors
/// The capture cannot be read at all ([`CaptureError`] as
/// `InvalidData`), or writing to `out` failed.
pub fn run(file: &[u8], options: Options, out: &mut impl Write) -> io::Result<Outcome> {
    let (records, read_error) =
        capture::read(file).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let start = records.first().map(|r| r.time).unwrap_or_default();
    let mut outcome = Outcome::default();
    let mut flows = Flows::default();
    let c = &mut outcome.counts;
    for record in &records {
        c.frames += 1;
        let Classified::Roce(f) = frame::examine(record) else {
            continue;
        };
        c.roce += 1;
        match f.icrc_good {
            Some(true) => c.icrc_good += 1,
            Some(false) => c.icrc_bad += 1,
            None => {}
        }
        if f.reemit_identical == Some(false) {
            c.reemit_mismatches += 1;
        }
        if f.problems
            .iter()
            .any(|p| matches!(p, Problem::Truncated { .. } | Problem::Malformed(_)))
        {
            c.unparsed += 1;
        }
        let failed = !f.problems.is_empty();
        if failed {
            outcome.failed.push(f.index);
        }
        if options.flows {
            flows.add(&f);
        } else if !options.check || failed {
            if options.json {
                writeln!(out, "{}", report::frame_json(&f))?;
            } else {
                writeln!(out, "{}", report::frame_line(&f, start))?;
            }
        }
    }
    if options.flows {
        for (key, flow) in &flows.0 {
            if options.json {
                writeln!(out, "{}", report::flow_json(key, flow))?;
            } else {
                writeln!(out, "{}", report::flow_line(key, flow))?;
            }
        }
    }
    if let Some(e) = &read_error {
        if options.json {
            writeln!(out, "{}", serde_json::json!({ "error": e.to_string() }))?;
        } else {
            writeln!(out, "error: {e}")?;
        }
    }
    if options.json {
        writeln!(out, "{}", report::counts_json(&outcome.counts))?;
    } else {
        writeln!(out, "{}", report::counts_line(&outcome.counts))?;
    }
    outcome.read_error = read_error;
    Ok(outcome)
}
