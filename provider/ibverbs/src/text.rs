//! The string and rate helpers of libibverbs.

use std::ffi::{CStr, c_char, c_int};

use crate::sys::*;

/// `ibv_wc_status_str`.
pub(crate) extern "C" fn ibv_wc_status_str(status: ibv_wc_status) -> *const c_char {
    const NAMES: [&CStr; 24] = [
        c"success",
        c"local length error",
        c"local QP operation error",
        c"local EE context operation error",
        c"local protection error",
        c"Work Request Flushed Error",
        c"memory management operation error",
        c"bad response error",
        c"local access error",
        c"remote invalid request error",
        c"remote access error",
        c"remote operation error",
        c"transport retry counter exceeded",
        c"RNR retry counter exceeded",
        c"local RDD violation error",
        c"remote invalid RD request",
        c"aborted error",
        c"invalid EE context number",
        c"invalid EE context state",
        c"fatal error",
        c"response timeout error",
        c"general error",
        c"TM error",
        c"TM software rendezvous",
    ];
    NAMES
        .get(status as usize)
        .copied()
        .unwrap_or(c"unknown")
        .as_ptr()
}

/// `ibv_node_type_str`.
pub(crate) extern "C" fn ibv_node_type_str(node_type: ibv_node_type) -> *const c_char {
    const NAMES: [&CStr; 7] = [
        c"unknown",
        c"InfiniBand channel adapter",
        c"InfiniBand switch",
        c"InfiniBand router",
        c"iWARP NIC",
        c"usNIC",
        c"usNIC UDP",
    ];
    let index = usize::try_from(node_type + 1).unwrap_or(0);
    NAMES.get(index).copied().unwrap_or(c"unknown").as_ptr()
}

/// `ibv_port_state_str`.
pub(crate) extern "C" fn ibv_port_state_str(state: ibv_port_state) -> *const c_char {
    const NAMES: [&CStr; 6] = [
        c"PORT_NOP",
        c"PORT_DOWN",
        c"PORT_INIT",
        c"PORT_ARMED",
        c"PORT_ACTIVE",
        c"PORT_ACTIVE_DEFER",
    ];
    NAMES
        .get(state as usize)
        .copied()
        .unwrap_or(c"unknown")
        .as_ptr()
}

/// `ibv_event_type_str`.
pub(crate) extern "C" fn ibv_event_type_str(event: ibv_event_type) -> *const c_char {
    const NAMES: [&CStr; 20] = [
        c"CQ error",
        c"local work queue catastrophic error",
        c"invalid request local work queue error",
        c"local access violation work queue error",
        c"communication established",
        c"send queue drained",
        c"path migrated",
        c"path migration request error",
        c"local catastrophic error",
        c"port active",
        c"port error",
        c"LID change",
        c"P_Key change",
        c"SM change",
        c"SRQ catastrophic error",
        c"SRQ limit reached",
        c"last WQE reached",
        c"client reregistration",
        c"GID table change",
        c"WQ fatal",
    ];
    NAMES
        .get(event as usize)
        .copied()
        .unwrap_or(c"unknown")
        .as_ptr()
}

/// The static rates: (enum value, multiple of 2.5 Gb/s, Mb/s).
const RATES: [(ibv_rate, c_int, c_int); 23] = [
    (ibv_rate_IBV_RATE_2_5_GBPS, 1, 2500),
    (ibv_rate_IBV_RATE_5_GBPS, 2, 5000),
    (ibv_rate_IBV_RATE_10_GBPS, 4, 10000),
    (ibv_rate_IBV_RATE_20_GBPS, 8, 20000),
    (ibv_rate_IBV_RATE_30_GBPS, 12, 30000),
    (ibv_rate_IBV_RATE_40_GBPS, 16, 40000),
    (ibv_rate_IBV_RATE_60_GBPS, 24, 60000),
    (ibv_rate_IBV_RATE_80_GBPS, 32, 80000),
    (ibv_rate_IBV_RATE_120_GBPS, 48, 120000),
    (ibv_rate_IBV_RATE_14_GBPS, 6, 14062),
    (ibv_rate_IBV_RATE_56_GBPS, 22, 56250),
    (ibv_rate_IBV_RATE_112_GBPS, 45, 112500),
    (ibv_rate_IBV_RATE_168_GBPS, 67, 168750),
    (ibv_rate_IBV_RATE_25_GBPS, 10, 25781),
    (ibv_rate_IBV_RATE_100_GBPS, 40, 103125),
    (ibv_rate_IBV_RATE_200_GBPS, 80, 206250),
    (ibv_rate_IBV_RATE_300_GBPS, 120, 309375),
    (ibv_rate_IBV_RATE_28_GBPS, 11, 28125),
    (ibv_rate_IBV_RATE_50_GBPS, 20, 53125),
    (ibv_rate_IBV_RATE_400_GBPS, 160, 425000),
    (ibv_rate_IBV_RATE_600_GBPS, 240, 637500),
    (ibv_rate_IBV_RATE_800_GBPS, 320, 850000),
    (ibv_rate_IBV_RATE_1200_GBPS, 480, 1275000),
];

/// `ibv_rate_to_mult`: -1 for an unknown rate.
pub(crate) extern "C" fn ibv_rate_to_mult(rate: ibv_rate) -> c_int {
    RATES.iter().find(|r| r.0 == rate).map_or(-1, |r| r.1)
}

/// `mult_to_ibv_rate`: `IBV_RATE_MAX` for an unknown multiple.
pub(crate) extern "C" fn mult_to_ibv_rate(mult: c_int) -> ibv_rate {
    RATES
        .iter()
        .find(|r| r.1 == mult)
        .map_or(ibv_rate_IBV_RATE_MAX, |r| r.0)
}

/// `ibv_rate_to_mbps`: -1 for an unknown rate.
pub(crate) extern "C" fn ibv_rate_to_mbps(rate: ibv_rate) -> c_int {
    RATES.iter().find(|r| r.0 == rate).map_or(-1, |r| r.2)
}

/// `mbps_to_ibv_rate`: `IBV_RATE_MAX` for an unknown rate.
pub(crate) extern "C" fn mbps_to_ibv_rate(mbps: c_int) -> ibv_rate {
    RATES
        .iter()
        .find(|r| r.2 == mbps)
        .map_or(ibv_rate_IBV_RATE_MAX, |r| r.0)
}
