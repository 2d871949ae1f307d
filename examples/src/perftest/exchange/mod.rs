//! The perftest out-of-band connection exchange: the TCP conversation that
//! perftest's `ib_*_bw` / `ib_*_lat` tools hold before, between and after
//! their RDMA traffic when rdma_cm is not used.
//!
//! # Which perftest this matches
//!
//! The byte format and the order of the exchanges match **perftest 6.06**,
//! the `VERSION` of upstream tag `v4.5-0.17` (linux-rdma/perftest commit
//! `e63987c4`, July 2022; `AC_INIT([perftest],[6.06])` in `configure.ac`).
//! That is the release Debian bookworm ships as package `perftest`
//! `4.5+0.17-1`; its `ib_write_bw` binary carries the version string `6.06`,
//! both key-message format strings, `"done"` and the 5.70 compatibility
//! message, as the sources below say. Source files read, all at tag
//! `v4.5-0.17`:
//!
//! - perftest v4.5-0.17 src/perftest_communication.c: `ethernet_write_keys` /
//!   `ethernet_read_keys` (L288-428), `ethernet_client_connect` /
//!   `ethernet_server_connect` (L655-760), `set_up_connection` (L765-900),
//!   `establish_connection` (L1350), `ctx_hand_shake` (L1380-1425),
//!   `ctx_xchg_data_ethernet` (L1431-1460), `ethernet_write_data` /
//!   `ethernet_read_data` (L1569-1595), `xchg_bw_reports` (L1615-1705),
//!   `ctx_close_connection` (L1759-1781), `exchange_versions` (L1786),
//!   `check_version_compatibility` (L1799), `check_sys_data` (L1811-1850),
//!   `check_mtu` (L1852-1965);
//! - perftest v4.5-0.17 src/perftest_communication.h: byte-order macros
//!   (L47-73), `KEY_MSG_SIZE` / `KEY_MSG_SIZE_GID` (L75-76), `KEY_PRINT_FMT`
//!   / `KEY_PRINT_FMT_GID` (L80-83);
//! - perftest v4.5-0.17 src/perftest_parameters.h: `DEF_PORT` 18515 (L104),
//!   `DEF_CACHE_LINE_SIZE` / `DEF_PAGE_SIZE` (L129-130), `MAX_VERSION` 16
//!   (L320), `cycle_buffer` / `cache_line_size` as `int` (L596-597),
//!   `struct bw_report_data` (L624-635);
//! - perftest v4.5-0.17 src/perftest_parameters.c: defaults of
//!   `cache_line_size` / `cycle_buffer` (L799-804), `set_mtu` (L1876-1916),
//!   `gid_index` forced to 0 on Ethernet links and `out_reads` (L3049-3081);
//! - perftest v4.5-0.17 src/write_bw.c, read_bw.c, atomic_bw.c, send_bw.c,
//!   write_lat.c, read_lat.c, atomic_lat.c, send_lat.c (`main`).
//!
//! # How 6.06 differs from newer perftest
//!
//! Newer releases (6.2x, the ones the project's research notes summarise)
//! keep every message below but add a parameter-negotiation step
//! (`negotiate_params`, upstream commit `5453511`, December 2025) that is
//! only entered when the peer's version is at least 6.28. 6.06 has **no**
//! negotiation struct at all, and because this module advertises `6.06`, a
//! newer perftest skips its negotiation when talking to us. Newer releases
//! also add `--data_validation` key variants (76/125 bytes) that 6.06 lacks,
//! and they no longer send the `"done"` message after the final handshake.
//!
//! # Messages
//!
//! All exchanges use `ctx_xchg_data_ethernet` / `ctx_hand_shake`: **the
//! client writes its message first and then reads the peer's; the server
//! reads first and then writes.** Both messages of one exchange have the
//! same fixed length, and perftest treats a short `read` as a failure, so
//! each message is written with a single `write`.
//!
//! | step | bytes | content |
//! |------|-------|---------|
//! | version | 16 | `strncpy` of `"6.06"`, NUL padded ([`encode_version`]) |
//! | sys data | 4 + 4 | `cycle_buffer`, then `cache_line_size`: big-endian `int`s, two separate exchanges ([`SysData`]) |
//! | MTU | 2 | `sprintf("%d")` of the `ibv_mtu` enum, e.g. `"3\0"` ([`Mtu`]) |
//! | key | 108 (RoCE) / 59 (IB, no GID) | `printf` text with a NUL ([`KeyMessage`]) |
//! | bw results | 5 × 8 (or 9 × 8) | big-endian `u64`/`f64`, one exchange per field ([`BwReport`]) |
//! | done | 5 | `"done\0"`, written by each side after the final handshake, never read by perftest |
//!
//! The version-dependent branches of 6.06 (sys data only for peers ≥ 5.32,
//! a 4-byte MTU message below 5.31, no MTU exchange below 5.1, 4-byte
//! `iters` below 5.33) are unreachable: 6.06 exits when the peer is older
//! than 5.70, and [`Exchange::versions`] refuses such a peer the same way.
//!
//! # Sequences
//!
//! Every tool starts alike on both sides: the client connects to port
//! 18515 (the server binds `0.0.0.0`, accepts one connection and closes its
//! listener), then both exchange the **version**, the **sys data** and the
//! **MTU** (`ib_write_bw` sleeps one second before that). "Keys" below is
//! one key exchange per QP (QP 0 first); "handshake" is one key exchange of
//! QP 0's message used as a barrier: perftest overwrites its copy of the
//! remote QP 0 keys with what arrives, so it must carry the real QP 0 keys
//! every time. "Close" is a handshake followed by `"done\0"`. [`plan`]
//! returns the same lists.
//!
//! - `ib_write_bw`, `ib_read_bw`, `ib_atomic_bw` (write_bw.c L120-405,
//!   read_bw.c L115-400, atomic_bw.c L117-351): keys; connect the QPs
//!   (RTR/RTS); keys again (each side prints the remote data); handshake
//!   ("additional handshake after RTR"). Then:
//!   - half duplex (default): the server does handshake, results, close
//!     right away and so waits in that handshake while the client runs; the
//!     client runs (with `-a`, every size without any exchange), then
//!     handshake, results, close. Only the client's report is meaningful:
//!     the server sends an uninitialised `bw_report_data`, which the client
//!     receives and ignores;
//!   - duplex (`-b`): both sides do handshake, run, results, close; with
//!     `-a` (write/read only) each size is handshake, run, handshake,
//!     results, and close comes once at the end. `ib_atomic_bw` treats `-a`
//!     like a single run.
//! - `ib_send_bw` (send_bw.c L234-576): keys; connect; handshake; keys
//!   again. Both sides run (the server receives). One run is handshake
//!   (after posting receives), run, then results only when duplex and not
//!   `-D`; with `-a` each size is handshake, run, (results,) handshake.
//!   Then close. Half duplex exchanges no results: each side prints its own.
//! - `ib_write_lat` (write_lat.c L134-281): handshake; keys; connect; keys;
//!   handshake; both sides run the ping-pong (with `-a` every size, no
//!   exchange in between). There is **no** close handshake and no `"done"`:
//!   each process just exits and the socket closes.
//! - `ib_read_lat`, `ib_atomic_lat` (read_lat.c L126-308, atomic_lat.c
//!   L126-283): handshake; keys; connect; keys; handshake. The server then
//!   closes at once (and waits in that handshake); the client runs (read_lat
//!   `-a`: every size) and closes.
//! - `ib_send_lat` (send_lat.c L246-470): keys; connect; handshake; keys;
//!   then per run (per size with `-a`) handshake (after posting receives)
//!   and run; then close.
//!
//! No latency tool exchanges results. A half-duplex bw server (and a
//! read/atomic latency server) sits in a handshake for the client's whole
//! run, so its timeout must cover the run ([`Exchange::set_timeout`]).
//!
//! Not covered: rdma_cm (`-R`, `-z`), multicast, XRC/DC (whose `-b` doubles
//! the QP count), raw Ethernet, dual port, `--run_infinitely` (the client
//! never reaches its closing exchanges) and 32-bit peers, where `unsigned
//! long` in the results is 4 bytes.
//!
//! # Filling the key message like perftest
//!
//! `set_up_connection` fills each QP's message with: `lid` the port LID (0
//! on RoCE), `out_reads` the device's `max_qp_rd_atom` (or `-o`) for READ
//! and ATOMIC tests and 1 otherwise, `qpn` the QP number, `psn`
//! `lrand48() & 0xffffff`, `rkey` the data MR's rkey, `vaddr` the buffer
//! base plus `(num_qps + i) * max(size, cycle_buffer)` for QP `i`, `gid` the
//! selected GID (always sent on Ethernet links, where perftest forces
//! `gid_index` to at least 0), and `srqn` 0 unless XRC or DC.

mod driver;
mod error;
mod plan;
mod wire;

#[cfg(test)]
mod tests;

pub use driver::{CloseOutcome, Exchange, MtuAgreement, Role, SysDataAgreement};
pub use error::ExchangeError;
pub use plan::{PlanOptions, Step, Tool, plan};
pub use wire::{
    BwReport, DEFAULT_PORT, DONE_MESSAGE, KEY_MSG_SIZE, KEY_MSG_SIZE_GID, KeyFormat, KeyMessage,
    MIN_PEER_VERSION, MTU_MESSAGE_LEN, Mtu, PERFTEST_VERSION, PeerVersion, REPORT_FIELD_LEN,
    SYS_DATA_FIELD_LEN, SysData, VERSION_MESSAGE_LEN, encode_version,
};
