//! Base Transport Header opcodes and the extended headers each one carries
//! (IBTA Vol. 1, 9.2; the values and layouts of Linux `ib_pack.h` and
//! `rxe_opcode.c`).

use super::{AethRepr, AtomicAckEthRepr, AtomicEthRepr, RethRepr};

/// A BTH opcode: transport in bits 7:5, operation in bits 4:0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Opcode(pub u8);

/// Which extended transport headers follow the BTH, in wire order, and
/// whether a payload may follow them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    /// RDMA Extended Transport Header (16 bytes).
    pub reth: bool,
    /// Atomic Extended Transport Header (28 bytes).
    pub atomic_eth: bool,
    /// ACK Extended Transport Header (4 bytes).
    pub aeth: bool,
    /// Atomic ACK Extended Transport Header (8 bytes).
    pub atomic_ack_eth: bool,
    /// Immediate data (4 bytes).
    pub immdt: bool,
    /// Invalidate Extended Transport Header (4 bytes).
    pub ieth: bool,
    /// The packet may carry a payload.
    pub payload: bool,
}

/// An extended transport header. Those a layout has follow the BTH in the
/// order of this enum's variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ext {
    Reth,
    AtomicEth,
    Aeth,
    AtomicAckEth,
    ImmDt,
    Ieth,
}

impl Ext {
    /// Every extended header, in wire order.
    pub(crate) const ALL: [Ext; 6] = [
        Ext::Reth,
        Ext::AtomicEth,
        Ext::Aeth,
        Ext::AtomicAckEth,
        Ext::ImmDt,
        Ext::Ieth,
    ];

    /// The header's name as the specification abbreviates it.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Ext::Reth => "RETH",
            Ext::AtomicEth => "AtomicETH",
            Ext::Aeth => "AETH",
            Ext::AtomicAckEth => "AtomicAckETH",
            Ext::ImmDt => "ImmDt",
            Ext::Ieth => "IETH",
        }
    }

    /// Length on the wire.
    pub(crate) const fn len(self) -> usize {
        match self {
            Ext::Reth => RethRepr::LEN,
            Ext::AtomicEth => AtomicEthRepr::LEN,
            Ext::Aeth => AethRepr::LEN,
            Ext::AtomicAckEth => AtomicAckEthRepr::LEN,
            Ext::ImmDt | Ext::Ieth => 4,
        }
    }
}

impl Layout {
    /// Length of the extended headers (without the BTH).
    pub fn ext_len(&self) -> usize {
        self.ext_len_before(Ext::ALL.len())
    }

    /// Where `ext` starts, counted from the end of the BTH; `None` if the
    /// layout lacks it.
    pub(crate) fn ext_offset(&self, ext: Ext) -> Option<usize> {
        self.has(ext).then(|| self.ext_len_before(ext as usize))
    }

    /// Length of the headers of this layout among the first `n` of
    /// [`Ext::ALL`].
    fn ext_len_before(&self, n: usize) -> usize {
        Ext::ALL[..n]
            .iter()
            .filter(|&&e| self.has(e))
            .map(|e| e.len())
            .sum()
    }

    /// Whether the layout has `ext`.
    pub(crate) fn has(&self, ext: Ext) -> bool {
        match ext {
            Ext::Reth => self.reth,
            Ext::AtomicEth => self.atomic_eth,
            Ext::Aeth => self.aeth,
            Ext::AtomicAckEth => self.atomic_ack_eth,
            Ext::ImmDt => self.immdt,
            Ext::Ieth => self.ieth,
        }
    }
}

const fn layout(reth: bool, aeth: bool, immdt: bool, payload: bool) -> Layout {
    Layout {
        reth,
        atomic_eth: false,
        aeth,
        atomic_ack_eth: false,
        immdt,
        ieth: false,
        payload,
    }
}

macro_rules! opcodes {
    ($($(#[$doc:meta])* $name:ident = $value:literal, $text:literal, $layout:expr;)*) => {
        impl Opcode {
            $($(#[$doc])* pub const $name: Opcode = Opcode($value);)*

            /// The opcode's name as Wireshark and the kernel spell it, if
            /// known.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some($text),)*
                    _ => None,
                }
            }

            /// The headers this opcode carries; `None` for opcodes this
            /// implementation does not know.
            pub fn layout(self) -> Option<Layout> {
                match self.0 {
                    $($value => Some($layout),)*
                    _ => None,
                }
            }
        }
    };
}

opcodes! {
    /// RC SEND, first packet of a multi-packet message.
    RC_SEND_FIRST = 0x00, "RC_SEND_FIRST", layout(false, false, false, true);
    /// RC SEND, middle packet.
    RC_SEND_MIDDLE = 0x01, "RC_SEND_MIDDLE", layout(false, false, false, true);
    /// RC SEND, last packet.
    RC_SEND_LAST = 0x02, "RC_SEND_LAST", layout(false, false, false, true);
    /// RC SEND, last packet, with immediate data.
    RC_SEND_LAST_WITH_IMMEDIATE = 0x03, "RC_SEND_LAST_WITH_IMMEDIATE", layout(false, false, true, true);
    /// RC SEND in one packet.
    RC_SEND_ONLY = 0x04, "RC_SEND_ONLY", layout(false, false, false, true);
    /// RC SEND in one packet, with immediate data.
    RC_SEND_ONLY_WITH_IMMEDIATE = 0x05, "RC_SEND_ONLY_WITH_IMMEDIATE", layout(false, false, true, true);
    /// RC RDMA WRITE, first packet.
    RC_RDMA_WRITE_FIRST = 0x06, "RC_RDMA_WRITE_FIRST", layout(true, false, false, true);
    /// RC RDMA WRITE, middle packet.
    RC_RDMA_WRITE_MIDDLE = 0x07, "RC_RDMA_WRITE_MIDDLE", layout(false, false, false, true);
    /// RC RDMA WRITE, last packet.
    RC_RDMA_WRITE_LAST = 0x08, "RC_RDMA_WRITE_LAST", layout(false, false, false, true);
    /// RC RDMA WRITE, last packet, with immediate data.
    RC_RDMA_WRITE_LAST_WITH_IMMEDIATE = 0x09, "RC_RDMA_WRITE_LAST_WITH_IMMEDIATE", layout(false, false, true, true);
    /// RC RDMA WRITE in one packet.
    RC_RDMA_WRITE_ONLY = 0x0a, "RC_RDMA_WRITE_ONLY", layout(true, false, false, true);
    /// RC RDMA WRITE in one packet, with immediate data.
    RC_RDMA_WRITE_ONLY_WITH_IMMEDIATE = 0x0b, "RC_RDMA_WRITE_ONLY_WITH_IMMEDIATE", layout(true, false, true, true);
    /// RC RDMA READ request.
    RC_RDMA_READ_REQUEST = 0x0c, "RC_RDMA_READ_REQUEST", layout(true, false, false, false);
    /// RC RDMA READ response, first packet.
    RC_RDMA_READ_RESPONSE_FIRST = 0x0d, "RC_RDMA_READ_RESPONSE_FIRST", layout(false, true, false, true);
    /// RC RDMA READ response, middle packet (no AETH).
    RC_RDMA_READ_RESPONSE_MIDDLE = 0x0e, "RC_RDMA_READ_RESPONSE_MIDDLE", layout(false, false, false, true);
    /// RC RDMA READ response, last packet.
    RC_RDMA_READ_RESPONSE_LAST = 0x0f, "RC_RDMA_READ_RESPONSE_LAST", layout(false, true, false, true);
    /// RC RDMA READ response in one packet.
    RC_RDMA_READ_RESPONSE_ONLY = 0x10, "RC_RDMA_READ_RESPONSE_ONLY", layout(false, true, false, true);
    /// RC acknowledgement (ACK, NAK or RNR NAK).
    RC_ACKNOWLEDGE = 0x11, "RC_ACKNOWLEDGE", layout(false, true, false, false);
    /// RC atomic acknowledgement, with the original value.
    RC_ATOMIC_ACKNOWLEDGE = 0x12, "RC_ATOMIC_ACKNOWLEDGE", Layout { aeth: true, atomic_ack_eth: true, ..Layout::NONE };
    /// RC atomic compare and swap.
    RC_COMPARE_SWAP = 0x13, "RC_COMPARE_SWAP", Layout { atomic_eth: true, ..Layout::NONE };
    /// RC atomic fetch and add.
    RC_FETCH_ADD = 0x14, "RC_FETCH_ADD", Layout { atomic_eth: true, ..Layout::NONE };
    /// RC SEND, last packet, invalidating an rkey.
    RC_SEND_LAST_WITH_INVALIDATE = 0x16, "RC_SEND_LAST_WITH_INVALIDATE", Layout { ieth: true, payload: true, ..Layout::NONE };
    /// RC SEND in one packet, invalidating an rkey.
    RC_SEND_ONLY_WITH_INVALIDATE = 0x17, "RC_SEND_ONLY_WITH_INVALIDATE", Layout { ieth: true, payload: true, ..Layout::NONE };
}

impl Layout {
    /// No extended header and no payload.
    pub const NONE: Layout = layout(false, false, false, false);
}

impl Opcode {
    /// Whether this is a request (as opposed to a response the requester
    /// receives: read responses and acknowledgements).
    pub fn is_request(self) -> bool {
        !matches!(self.0, 0x0d..=0x12)
    }

    /// Whether this opcode starts a message (FIRST or ONLY).
    pub fn is_first(self) -> bool {
        matches!(
            self,
            Opcode::RC_SEND_FIRST
                | Opcode::RC_SEND_ONLY
                | Opcode::RC_SEND_ONLY_WITH_IMMEDIATE
                | Opcode::RC_SEND_ONLY_WITH_INVALIDATE
                | Opcode::RC_RDMA_WRITE_FIRST
                | Opcode::RC_RDMA_WRITE_ONLY
                | Opcode::RC_RDMA_WRITE_ONLY_WITH_IMMEDIATE
                | Opcode::RC_RDMA_READ_RESPONSE_FIRST
                | Opcode::RC_RDMA_READ_RESPONSE_ONLY
        )
    }

    /// Whether this opcode ends a message (LAST or ONLY).
    pub fn is_last(self) -> bool {
        matches!(
            self,
            Opcode::RC_SEND_LAST
                | Opcode::RC_SEND_LAST_WITH_IMMEDIATE
                | Opcode::RC_SEND_LAST_WITH_INVALIDATE
                | Opcode::RC_SEND_ONLY
                | Opcode::RC_SEND_ONLY_WITH_IMMEDIATE
                | Opcode::RC_SEND_ONLY_WITH_INVALIDATE
                | Opcode::RC_RDMA_WRITE_LAST
                | Opcode::RC_RDMA_WRITE_LAST_WITH_IMMEDIATE
                | Opcode::RC_RDMA_WRITE_ONLY
                | Opcode::RC_RDMA_WRITE_ONLY_WITH_IMMEDIATE
                | Opcode::RC_RDMA_READ_RESPONSE_LAST
                | Opcode::RC_RDMA_READ_RESPONSE_ONLY
        )
    }
}

impl std::fmt::Display for Opcode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "opcode {:#04x}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_rxe_table() {
        assert_eq!(Opcode::RC_SEND_ONLY.layout().unwrap().ext_len(), 0);
        assert_eq!(
            Opcode::RC_RDMA_WRITE_ONLY_WITH_IMMEDIATE
                .layout()
                .unwrap()
                .ext_len(),
            20
        );
        assert_eq!(Opcode::RC_RDMA_READ_REQUEST.layout().unwrap().ext_len(), 16);
        assert_eq!(
            Opcode::RC_RDMA_READ_RESPONSE_MIDDLE
                .layout()
                .unwrap()
                .ext_len(),
            0
        );
        assert_eq!(
            Opcode::RC_ATOMIC_ACKNOWLEDGE.layout().unwrap().ext_len(),
            12
        );
        assert_eq!(Opcode::RC_COMPARE_SWAP.layout().unwrap().ext_len(), 28);
        assert!(!Opcode::RC_ACKNOWLEDGE.layout().unwrap().payload);
        assert_eq!(Opcode(0x15).layout(), None);
        assert_eq!(Opcode(0x64).to_string(), "opcode 0x64");
        assert!(
            Opcode::RC_RDMA_READ_RESPONSE_ONLY.is_first()
                && Opcode::RC_RDMA_READ_RESPONSE_ONLY.is_last()
        );
        assert!(!Opcode::RC_ACKNOWLEDGE.is_request() && Opcode::RC_FETCH_ADD.is_request());
    }

    #[test]
    fn extended_headers_follow_the_bth_in_wire_order() {
        let ack = Opcode::RC_ATOMIC_ACKNOWLEDGE.layout().unwrap();
        assert_eq!(ack.ext_offset(Ext::Aeth), Some(0));
        assert_eq!(ack.ext_offset(Ext::AtomicAckEth), Some(4));
        assert_eq!(ack.ext_offset(Ext::Reth), None);
        let write_imm = Opcode::RC_RDMA_WRITE_ONLY_WITH_IMMEDIATE.layout().unwrap();
        assert_eq!(write_imm.ext_offset(Ext::Reth), Some(0));
        assert_eq!(write_imm.ext_offset(Ext::ImmDt), Some(16));
        let cas = Opcode::RC_COMPARE_SWAP.layout().unwrap();
        assert_eq!(cas.ext_offset(Ext::AtomicEth), Some(0));
    }
}
