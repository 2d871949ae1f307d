//! One captured frame: is it RoCEv2, what do its headers say, is its ICRC
//! right, and does the project's own emitter reproduce its bytes.

use std::net::SocketAddr;
use std::time::Duration;

use provider::wire::{BthRepr, ICRC_LEN, PacketRepr, UdpDatagram, WireError, ip_of_ethernet};

use super::capture::{Link, Record};

/// The headers of a parsed packet: its repr with the payload left out (it
/// borrowed the capture), and the payload's length. Derefs to the repr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Headers {
    /// The packet's headers (`payload` empty).
    pub repr: PacketRepr<'static>,
    /// Payload bytes, without pad.
    pub payload_len: usize,
}

impl From<&PacketRepr<'_>> for Headers {
    fn from(p: &PacketRepr<'_>) -> Self {
        Headers {
            repr: p.headers_only(),
            payload_len: p.payload.len(),
        }
    }
}

impl std::ops::Deref for Headers {
    type Target = PacketRepr<'static>;

    fn deref(&self) -> &PacketRepr<'static> {
        &self.repr
    }
}

/// What is wrong with a RoCEv2 frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The capture holds fewer bytes than the UDP header announces.
    Truncated {
        /// UDP payload bytes announced.
        announced: usize,
        /// UDP payload bytes captured.
        captured: usize,
    },
    /// The transport headers do not parse.
    Malformed(WireError),
    /// The ICRC does not match the headers and payload.
    BadIcrc {
        /// The trailer.
        found: u32,
        /// What the frame's contents give.
        expected: u32,
    },
    /// Emitting the parsed packet gives other bytes, from this offset of
    /// the UDP payload on.
    ReEmitMismatch {
        /// First differing byte.
        at: usize,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Truncated {
                announced,
                captured,
            } => write!(
                f,
                "truncated: UDP payload of {announced} bytes, {captured} captured"
            ),
            Problem::Malformed(e) => write!(f, "malformed: {e}"),
            Problem::BadIcrc { found, expected } => {
                write!(
                    f,
                    "bad ICRC: found {found:#010x}, expected {expected:#010x}"
                )
            }
            Problem::ReEmitMismatch { at } => {
                write!(
                    f,
                    "re-emitted bytes differ from byte {at} of the UDP payload"
                )
            }
        }
    }
}

/// A RoCEv2 frame (UDP to port 4791) and what was found in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoceFrame {
    /// Position in the capture, from 1.
    pub index: usize,
    /// Capture time since the Unix epoch.
    pub time: Duration,
    /// Source address and UDP port.
    pub src: SocketAddr,
    /// Destination address and UDP port.
    pub dst: SocketAddr,
    /// The parsed headers, if the packet parsed.
    pub headers: Option<Headers>,
    /// The BTH, if at least that parsed.
    pub bth: Option<BthRepr>,
    /// Whether the ICRC matched (`None`: not checkable).
    pub icrc_good: Option<bool>,
    /// Whether re-emitting gave the captured bytes (`None`: not parsed).
    pub reemit_identical: Option<bool>,
    /// Everything wrong with it.
    pub problems: Vec<Problem>,
}

/// What a record turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Classified {
    /// A RoCEv2 frame.
    Roce(Box<RoceFrame>),
    /// Something else (other traffic, other link types), with why.
    Other(&'static str),
}

/// The IP packet inside a record, by link type.
fn ip_packet(record: &Record) -> Result<&[u8], &'static str> {
    let d = &record.data;
    let (at, ethertype) = match record.link {
        Link::RawIp => return Ok(d),
        Link::Ethernet => return ip_of_ethernet(d).map_err(|_| "not IP over Ethernet"),
        Link::LinuxSll => (16, d.get(14..16).ok_or("short Linux cooked header")?),
        Link::LinuxSll2 => (20, d.get(0..2).ok_or("short Linux cooked v2 header")?),
        Link::Other(_) => return Err("unsupported link type"),
    };
    match ethertype {
        [0x08, 0x00] | [0x86, 0xdd] => d.get(at..).ok_or("short frame"),
        _ => Err("not IP"),
    }
}

/// Classifies and checks one record.
pub fn examine(record: &Record) -> Classified {
    let ip = match ip_packet(record) {
        Ok(ip) => ip,
        Err(why) => return Classified::Other(why),
    };
    let frame = |src, dst| RoceFrame {
        index: record.index,
        time: record.time,
        src,
        dst,
        headers: None,
        bth: None,
        icrc_good: None,
        reemit_identical: None,
        problems: Vec::new(),
    };
    let datagram = match UdpDatagram::from_ip(ip) {
        Ok(d) if d.is_roce() => d,
        Ok(_) => return Classified::Other("UDP, not to port 4791"),
        Err(_) => {
            return match UdpDatagram::from_ip_cut(ip) {
                Ok(d) if d.is_roce() => {
                    let mut f = frame(d.src, d.dst);
                    f.bth = BthRepr::parse(d.payload).ok();
                    f.problems.push(Problem::Truncated {
                        announced: d.udp_payload_len(),
                        captured: d.payload.len(),
                    });
                    Classified::Roce(Box::new(f))
                }
                _ => Classified::Other("not UDP over IPv4/IPv6"),
            };
        }
    };
    let mut f = frame(datagram.src, datagram.dst);
    check(&datagram, &mut f);
    Classified::Roce(Box::new(f))
}

/// Parses, checks the ICRC and re-emits.
fn check(d: &UdpDatagram<'_>, f: &mut RoceFrame) {
    match d.icrc() {
        Ok((found, expected)) => {
            f.icrc_good = Some(found == expected);
            if found != expected {
                f.problems.push(Problem::BadIcrc { found, expected });
            }
        }
        Err(e) => f.problems.push(Problem::Malformed(e)),
    }
    let packet = match PacketRepr::parse(d.payload) {
        Ok(p) => p,
        Err(e) => {
            f.bth = BthRepr::parse(d.payload).ok();
            if !f.problems.contains(&Problem::Malformed(e)) {
                f.problems.push(Problem::Malformed(e));
            }
            return;
        }
    };
    f.headers = Some(Headers::from(&packet));
    f.bth = Some(packet.bth);
    // A parsed packet is valid, so its length is known.
    let mut out = vec![0u8; packet.len().unwrap_or(0)];
    let identical = match packet.emit(&mut out) {
        Ok(n) if n + ICRC_LEN == d.payload.len() => {
            // The ICRC is checked above; the emitter writes the rest.
            out[n..].copy_from_slice(&d.payload[n..]);
            out == d.payload
        }
        _ => false,
    };
    f.reemit_identical = Some(identical);
    if !identical {
        let at = out
            .iter()
            .zip(d.payload)
            .position(|(a, b)| a != b)
            .unwrap_or(out.len().min(d.payload.len()));
        f.problems.push(Problem::ReEmitMismatch { at });
    }
}
