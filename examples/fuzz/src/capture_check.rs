//! roce-dump's whole pipeline on arbitrary bytes taken as a capture file:
//! the pcap/pcapng reader, the frame decoding and checks, the flow
//! summaries and the text and JSON reports, under every output option.
//! Properties besides "no panic": an unreadable file is an `InvalidData`
//! error with nothing written; otherwise the report is UTF-8, ends with the
//! counts (the same counts under every option), JSON output is one valid
//! object per line, and the counts add up.

use std::io::ErrorKind;

use examples::dump::report::counts_line;
use examples::dump::{self, Options};

/// The option sets roce-dump's flags can make.
const OPTIONS: [Options; 6] = [
    Options {
        check: false,
        flows: false,
        json: false,
    },
    Options {
        check: true,
        flows: false,
        json: false,
    },
    Options {
        check: false,
        flows: false,
        json: true,
    },
    Options {
        check: false,
        flows: true,
        json: false,
    },
    Options {
        check: false,
        flows: true,
        json: true,
    },
    Options {
        check: true,
        flows: false,
        json: true,
    },
];

/// Runs every check on `data`.
pub fn check(data: &[u8]) {
    let mut counts = None;
    for options in OPTIONS {
        let mut out = Vec::new();
        let outcome = match dump::run(data, options, &mut out) {
            Ok(outcome) => outcome,
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
                assert!(out.is_empty(), "an unreadable file printed a report");
                assert!(counts.is_none(), "readable under other options");
                continue;
            }
        };
        let text = String::from_utf8(out).expect("the report is UTF-8");
        let last = text
            .lines()
            .last()
            .expect("the report ends with the counts");
        if options.json {
            for line in text.lines() {
                let _: serde_json::Value =
                    serde_json::from_str(line).expect("a JSON object a line");
            }
        } else {
            assert_eq!(last, counts_line(&outcome.counts));
        }
        let c = outcome.counts;
        assert!(c.roce <= c.frames);
        assert!(c.icrc_good + c.icrc_bad <= c.roce);
        assert!(c.unparsed <= c.roce && c.reemit_mismatches <= c.roce);
        assert!(outcome.failed.len() as u64 <= c.roce);
        assert_eq!(
            outcome.passed(),
            outcome.failed.is_empty() && outcome.read_error.is_none()
        );
        if let Some(before) = counts {
            assert_eq!(before, c, "counts differ between output options");
        }
        counts = Some(c);
    }
}
