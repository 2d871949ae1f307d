//! Errors of the perftest exchange: bad bytes from the peer, and a socket
//! that fails, stalls or closes.

use std::io;
use std::time::Duration;

/// Why an encode, a decode or a step of the exchange failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExchangeError {
    /// A message had the wrong length for its fixed-size slot.
    #[error("{what}: expected {expected} bytes, got {got}")]
    Length {
        /// Which message.
        what: &'static str,
        /// The fixed length perftest reads and writes.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// The local version string does not fit perftest's 16-byte field with
    /// a terminating NUL, or contains a NUL.
    #[error("version string {0:?} does not fit the 16-byte version field")]
    VersionTooLong(String),
    /// The peer's version is older than 5.70, which perftest 6.06 refuses.
    #[error("peer perftest version {text:?} is older than 5.70, which perftest refuses")]
    IncompatibleVersion {
        /// The version text the peer sent.
        text: String,
    },
    /// The peer's MTU message is not an `ibv_mtu` value 1..=5.
    #[error("MTU message {text:?} is not an ibv_mtu value 1..=5")]
    InvalidMtu {
        /// The message text up to its NUL.
        text: String,
    },
    /// A key message is not ASCII text.
    #[error("key message is not ASCII text")]
    KeyNotText,
    /// A key message ends before one of its fields.
    #[error("key message lacks its {field} field")]
    KeyMissingField {
        /// The missing field.
        field: String,
    },
    /// A key message field is not a hexadecimal number that fits the field.
    #[error("key message field {field} = {token:?}: {reason}")]
    KeyField {
        /// The field.
        field: String,
        /// The text between the colons.
        token: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A value to encode needs more hex digits than perftest's fixed-width
    /// field, which would change the message length.
    #[error("key field {field} = {value:#x} does not fit in {digits} hex digits")]
    KeyValueRange {
        /// The field.
        field: &'static str,
        /// The value.
        value: u64,
        /// The field width in hex digits.
        digits: usize,
    },
    /// A timeout of zero was given; `std` cannot express it.
    #[error("a timeout must be longer than zero")]
    ZeroTimeout,
    /// The server address could not be resolved.
    #[error("could not resolve {target}: {source}")]
    Resolve {
        /// `host:port`.
        target: String,
        /// The resolver's error.
        source: io::Error,
    },
    /// No connection to the server could be made before the deadline.
    #[error("could not connect to {target} within {timeout:?}: {source}")]
    Connect {
        /// `host:port`.
        target: String,
        /// How long connecting was tried.
        timeout: Duration,
        /// The last connect error.
        source: io::Error,
    },
    /// No client connected before the deadline.
    #[error("no client connected within {0:?}")]
    AcceptTimeout(Duration),
    /// The peer did not send (or take) a message in time.
    #[error("{step}: no answer from the peer within {timeout:?}")]
    Timeout {
        /// The exchange step.
        step: &'static str,
        /// The timeout in force.
        timeout: Option<Duration>,
    },
    /// The peer closed (or reset) the connection during a step.
    #[error("{step}: the peer closed the connection")]
    PeerClosed {
        /// The exchange step.
        step: &'static str,
    },
    /// Another socket error.
    #[error("{step}: {source}")]
    Io {
        /// The exchange step or socket operation.
        step: &'static str,
        /// The error.
        source: io::Error,
    },
}
