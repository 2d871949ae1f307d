//! The flow of a connection on the wire: the IPv6 flow label and the UDP
//! source port that kernel rxe derives from a queue-pair pair, so that the
//! packets of one connection take one path through an ECMP fabric while
//! different connections spread over the paths.
//!
//! Linux computes both in `include/rdma/ib_verbs.h`
//! (`rdma_calc_flow_label`, `rdma_flow_label_to_udp_sport`,
//! `rdma_get_udp_sport`); kernel rxe sends every packet of a queue pair,
//! requests and responses alike, from the port these give.

/// The lowest UDP source port RoCEv2 uses for flow entropy (IBTA A17.4.3:
/// 0xC000..=0xFFFF).
pub const FLOW_SOURCE_PORT_BASE: u16 = 0xC000;

/// The 20-bit flow label of the connection between queue pairs `local_qpn`
/// and `remote_qpn`: their product folded onto 20 bits. Symmetric, so both
/// ends of a connection compute the same label.
pub fn flow_label(local_qpn: u32, remote_qpn: u32) -> u32 {
    let mut v = u64::from(local_qpn) * u64::from(remote_qpn);
    v ^= v >> 20;
    v ^= v >> 40;
    (v & 0xf_ffff) as u32
}

/// The UDP source port of a flow: the label's high 6 bits folded into its
/// low 14, in the RoCEv2 entropy range. A `flow_label` of 0 (none set in
/// the address vector) means the one [`flow_label`] derives from the QPNs.
pub fn udp_source_port(flow_label_or_zero: u32, local_qpn: u32, remote_qpn: u32) -> u16 {
    let label = match flow_label_or_zero & 0xf_ffff {
        0 => flow_label(local_qpn, remote_qpn),
        label => label,
    };
    let low = (label & 0x3fff) ^ (label >> 14);
    FLOW_SOURCE_PORT_BASE | low as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_measured_on_kernel_rxe() {
        // Kernel 7.3.4 rxe: QPN 17 to 17 sent from 0xC121, QPNs 0x11 and
        // 0x12 (either way round) from 49458.
        assert_eq!(udp_source_port(0, 17, 17), 0xC121);
        assert_eq!(udp_source_port(0, 0x11, 0x12), 49458);
        assert_eq!(udp_source_port(0, 0x12, 0x11), 49458);
    }

    #[test]
    fn every_port_is_in_the_entropy_range() {
        for (a, b) in [
            (0, 0),
            (1, 0xff_ffff),
            (0xff_ffff, 0xff_ffff),
            (0x12345, 0xabcde),
        ] {
            assert!(udp_source_port(0, a, b) >= FLOW_SOURCE_PORT_BASE);
        }
        // A label given by the address vector wins over the derived one.
        assert_eq!(udp_source_port(0x4002, 5, 6), 0xC000 | (2 ^ 1));
        assert_eq!(udp_source_port(0xf_ffff, 5, 6), 0xC000 | (0x3fff ^ 0x3f));
    }
}
