//! The perftest exchange's message decoders on arbitrary bytes. Input: a
//! selector byte, then the message. The selector's low three bits pick the
//! decoder (version, sys data, MTU, key message with and without GID,
//! results with and without per-port fields); its high bit fits the
//! message to the decoder's slot (cut or zero-padded), so the fuzzer also
//! spends its time inside the decoders rather than at the length check.
//! Properties besides "no panic": a decoder accepts only its slot's
//! length, and what it accepts encodes back (byte for byte where the
//! format has one spelling) and decodes to the same value.

use examples::perftest::exchange::{
    BwReport, KeyFormat, KeyMessage, MTU_MESSAGE_LEN, Mtu, PeerVersion, SYS_DATA_FIELD_LEN,
    SysData, VERSION_MESSAGE_LEN, encode_version,
};

/// Which decoder, by the selector's low three bits.
#[derive(Clone, Copy, Debug)]
enum Decoder {
    Version,
    SysData,
    Mtu,
    Key(KeyFormat),
    Report { per_port: bool },
}

impl Decoder {
    fn from_selector(selector: u8) -> Decoder {
        match selector & 7 {
            0 => Decoder::Version,
            1 => Decoder::SysData,
            2 => Decoder::Mtu,
            3 => Decoder::Key(KeyFormat::Gid),
            4 => Decoder::Key(KeyFormat::NoGid),
            5 => Decoder::Report { per_port: false },
            6 => Decoder::Report { per_port: true },
            // 7: the key message again, the format that needs most input.
            _ => Decoder::Key(KeyFormat::Gid),
        }
    }

    /// The slot length the decoder reads.
    fn slot(self) -> usize {
        match self {
            Decoder::Version => VERSION_MESSAGE_LEN,
            Decoder::SysData => 2 * SYS_DATA_FIELD_LEN,
            Decoder::Mtu => MTU_MESSAGE_LEN,
            Decoder::Key(format) => format.message_len(),
            Decoder::Report { per_port } => BwReport::wire_len(per_port),
        }
    }
}

/// Runs every check on `data`.
pub fn check(data: &[u8]) {
    let Some((&selector, msg)) = data.split_first() else {
        return;
    };
    let decoder = Decoder::from_selector(selector);
    let mut msg = msg.to_vec();
    if selector & 0x80 != 0 {
        msg.resize(decoder.slot(), 0);
    }
    let fits = msg.len() == decoder.slot();
    match decoder {
        Decoder::Version => {
            let decoded = PeerVersion::decode(&msg);
            assert_eq!(decoded.is_ok(), fits, "any 16 bytes are a version");
            if let Ok(v) = decoded {
                assert!(!v.text.contains('\0'));
                let _ = v.is_compatible();
                if let Ok(again) = encode_version(&v.text) {
                    assert_eq!(
                        PeerVersion::decode(&again).ok().map(|w| w.text),
                        Some(v.text)
                    );
                }
            }
        }
        Decoder::SysData => {
            let decoded = SysData::decode(&msg);
            assert_eq!(decoded.is_ok(), fits, "any 8 bytes are sys data");
            if let Ok(s) = decoded {
                assert_eq!(&s.encode()[..], &msg[..]);
                let _ = s.agree(&SysData::default());
            }
        }
        Decoder::Mtu => match Mtu::decode(&msg) {
            Ok(m) => {
                assert!(fits);
                assert_eq!(Mtu::decode(&m.encode()).ok(), Some(m));
                assert_eq!(Mtu::from_bytes(m.bytes()), Some(m));
            }
            Err(e) => {
                let _ = e.to_string();
            }
        },
        Decoder::Key(format) => match KeyMessage::decode(&msg, format) {
            Ok(k) => {
                assert!(fits);
                let encoded = k.encode(format).expect("a decoded key message encodes");
                assert_eq!(KeyMessage::decode(&encoded, format).ok(), Some(k));
            }
            Err(e) => {
                let _ = e.to_string();
            }
        },
        Decoder::Report { per_port } => {
            let decoded = BwReport::decode(&msg, per_port);
            assert_eq!(decoded.is_ok(), fits, "any bits are a report");
            if let Ok(r) = decoded {
                // Doubles keep their bits, NaN payloads included.
                assert_eq!(r.encode(per_port), msg);
            }
        }
    }
}
