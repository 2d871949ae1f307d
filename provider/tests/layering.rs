//! The provider's modules are layered without cycles: `rc` (the engine)
//! uses only `wire` and `net`; `device` uses `rc`, `net` and `wire`;
//! `verbs` builds on both; `pin_on_demand` uses none of them. Checked on the source text: every `crate::`
//! path outside comments must start with a module the layer may use, and
//! no code line may name a module above it.

use std::fs;
use std::path::{Path, PathBuf};

/// The `.rs` files under `dir`, recursively, except those under `skip`.
fn sources(dir: &Path, skip: Option<&Path>) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).expect("source directory") {
        let path = entry.expect("directory entry").path();
        if Some(path.as_path()) == skip {
            continue;
        }
        if path.is_dir() {
            files.extend(sources(&path, skip));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// The lines of `text` that are code (not comments), with their numbers.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim_start().starts_with("//"))
        .map(|(i, line)| (i + 1, line))
}

/// The first path segment after each `crate::` in `line`.
fn crate_paths(line: &str) -> Vec<&str> {
    line.match_indices("crate::")
        .map(|(at, m)| {
            let rest = &line[at + m.len()..];
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect()
}

/// Every violation of the layer rooted at `dir`: `crate::` paths outside
/// `allowed`, and code lines naming a `forbidden` module.
fn violations(
    dir: &Path,
    skip: Option<&Path>,
    allowed: &[&str],
    forbidden: &[&str],
) -> Vec<String> {
    let mut found = Vec::new();
    for file in sources(dir, skip) {
        let text = fs::read_to_string(&file).expect("source file");
        for (number, line) in code_lines(&text) {
            let bad_path = crate_paths(line)
                .into_iter()
                .any(|first| !first.is_empty() && !allowed.contains(&first));
            let names_forbidden = forbidden
                .iter()
                .any(|module| line.contains(&format!("{module}::")));
            if bad_path || names_forbidden {
                found.push(format!("{}:{number}: {}", file.display(), line.trim()));
            }
        }
    }
    found
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn the_engine_depends_on_neither_verbs_nor_the_device() {
    let rc = src().join("rc");
    // The simulator is the engine's test harness: it drives queue pairs
    // with the verbs API's real memory regions and completion queues, a
    // layer above, and is compiled only for tests.
    let sim = rc.join("sim");
    let found = violations(
        &rc,
        Some(&sim),
        &["rc", "wire", "net"],
        &["verbs", "device"],
    );
    assert!(found.is_empty(), "rc reaches up:\n{}", found.join("\n"));
}

#[test]
fn the_device_does_not_depend_on_verbs() {
    let found = violations(
        &src().join("device"),
        None,
        &["rc", "wire", "net", "device"],
        &["verbs"],
    );
    assert!(found.is_empty(), "device reaches up:\n{}", found.join("\n"));
}

#[test]
fn pin_on_demand_depends_on_no_other_module() {
    // Device-independent: the rdma-core backend builds on it, not the
    // other way round. Its tests drive it as the backend would.
    let pod = src().join("pin_on_demand");
    let found = violations(
        &pod,
        Some(&pod.join("tests")),
        &["pin_on_demand"],
        &["verbs", "device"],
    );
    assert!(
        found.is_empty(),
        "pin_on_demand reaches out:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_finds_a_path_to_a_higher_layer() {
    let line = "use crate::verbs::{CqInner, MrInner};";
    assert_eq!(crate_paths(line), ["verbs"]);
    assert_eq!(crate_paths("pub(crate) fn f() {}"), Vec::<&str>::new());
    assert_eq!(
        code_lines("// crate::verbs\nuse crate::Context;").collect::<Vec<_>>(),
        [(2, "use crate::Context;")]
    );
}
