//! The UDP source ports in a lab capture: ours must be the flow ports of
//! our queue-pair pairs ([`provider::wire::udp_source_port`], what kernel
//! rxe 7.x sends); the kernel's are reported as they are (older kernels
//! derive the port from the local QPN alone).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use provider::wire::udp_source_port;

use super::case::{HOST_V4, HOST_V6};

/// One frame's addresses, source port and destination QP.
struct Frame {
    src: String,
    dst: String,
    sport: u16,
    qpn: u32,
}

/// Reads the frames of `pcap` with `roce-dump --json`.
fn frames(roce_dump: &Path, pcap: &Path) -> Result<Vec<Frame>, String> {
    let out = Command::new(roce_dump)
        .arg("--json")
        .arg(pcap)
        .output()
        .map_err(|e| format!("roce-dump: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let frames = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            Some(Frame {
                src: v.get("src")?.as_str()?.to_string(),
                dst: v.get("dst")?.as_str()?.to_string(),
                sport: u16::try_from(v.get("sport")?.as_u64()?).ok()?,
                qpn: u32::try_from(v.get("qpn")?.as_u64()?).ok()?,
            })
        })
        .collect();
    Ok(frames)
}

/// Checks the source ports of `pcap`: every frame we sent left from the
/// flow port of its queue-pair pair. Returns a note on the kernel's ports.
///
/// # Errors
/// A frame of ours from another port, or the capture could not be read.
pub fn check(roce_dump: &Path, pcap: &Path) -> Result<String, String> {
    let frames = frames(roce_dump, pcap)?;
    // The QPs each address receives on: a frame's sender is one of them.
    let mut receives: BTreeMap<&str, BTreeSet<u32>> = BTreeMap::new();
    for f in &frames {
        receives.entry(&f.dst).or_default().insert(f.qpn);
    }
    let is_flow_port = |f: &Frame| {
        receives
            .get(f.src.as_str())
            .is_some_and(|qps| qps.iter().any(|&l| udp_source_port(0, l, f.qpn) == f.sport))
    };
    let ours = |f: &&Frame| f.src == HOST_V4 || f.src == HOST_V6;
    if let Some(f) = frames.iter().filter(ours).find(|f| !is_flow_port(f)) {
        return Err(format!(
            "our frame to QP {:#x} left from port {}, not its flow port",
            f.qpn, f.sport
        ));
    }
    let theirs: Vec<&Frame> = frames.iter().filter(|f| !ours(f)).collect();
    let flow = theirs.iter().filter(|f| is_flow_port(f)).count();
    Ok(if flow == theirs.len() {
        "flow ports as rxe's".to_string()
    } else {
        format!(
            "flow ports ours; rxe's per QP in {} of {} frames",
            theirs.len() - flow,
            theirs.len()
        )
    })
}
