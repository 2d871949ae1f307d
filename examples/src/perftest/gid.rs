//! perftest's `-x`: an index into the GID table of the interface, in the
//! order kernel rxe builds it, worked out from the interface's addresses.
//!
//! rxe's table for a netdev starts with the default GID, the link-local
//! IPv6 address made from the MAC (EUI-64, `fe80::...`), then takes the
//! interface's IPv4 addresses (as IPv4-mapped GIDs), then its IPv6
//! addresses other than the default one (the kernel's
//! `enum_netdev_ipv4_ips` before `enum_netdev_ipv6_ips`, duplicates
//! dropped). So an interface with one IPv4 and one global IPv6 address
//! has 0 = link-local, 1 = IPv4-mapped, 2 = global IPv6.

use std::net::{IpAddr, Ipv6Addr};

use provider::DeviceInfo;

/// The interface a device name (`srxe-<if>`, `srxe6-<if>`) stands for.
pub fn interface_of(device_name: &str) -> Option<&str> {
    device_name
        .strip_prefix("srxe6-")
        .or_else(|| device_name.strip_prefix("srxe-"))
}

/// The default GID rxe derives from a MAC: `fe80::` and the EUI-64.
pub fn link_local_of_mac(mac: [u8; 6]) -> Ipv6Addr {
    let mut b = [0u8; 16];
    b[0] = 0xfe;
    b[1] = 0x80;
    b[8] = mac[0] ^ 2;
    b[9] = mac[1];
    b[10] = mac[2];
    b[11] = 0xff;
    b[12] = 0xfe;
    b[13] = mac[3];
    b[14] = mac[4];
    b[15] = mac[5];
    Ipv6Addr::from(b)
}

/// Parses `aa:bb:cc:dd:ee:ff` (the form of `/sys/class/net/<if>/address`).
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The GID table of `interface` in rxe's order, from `mac` and the
/// interface's addresses as `devices` lists them (in the kernel's order).
pub fn table(interface: &str, mac: [u8; 6], devices: &[DeviceInfo]) -> Vec<IpAddr> {
    let default = IpAddr::V6(link_local_of_mac(mac));
    let on_if = |d: &&DeviceInfo| interface_of(&d.name) == Some(interface);
    let mut gids = vec![default];
    let v4 = devices.iter().filter(on_if).filter(|d| d.addr.is_ipv4());
    let v6 = devices.iter().filter(on_if).filter(|d| d.addr.is_ipv6());
    for d in v4.chain(v6) {
        if !gids.contains(&d.addr) {
            gids.push(d.addr);
        }
    }
    gids
}

/// The MAC of `interface` (all zeros for one without, such as `lo`).
pub fn mac_of(interface: &str) -> [u8; 6] {
    std::fs::read_to_string(format!("/sys/class/net/{interface}/address"))
        .ok()
        .and_then(|t| parse_mac(&t))
        .unwrap_or_default()
}

/// The GID table of this host's `interface`.
///
/// # Errors
/// The interfaces could not be listed.
pub fn host_table(interface: &str) -> Result<Vec<IpAddr>, provider::VerbsError> {
    Ok(table(interface, mac_of(interface), &provider::devices()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(name: &str, addr: &str) -> DeviceInfo {
        DeviceInfo {
            name: name.into(),
            addr: addr.parse().unwrap(),
            if_mtu: 1500,
            backend: provider::DeviceBackend::Userspace,
        }
    }

    #[test]
    fn rxe_order_link_local_then_ipv4_then_ipv6() {
        let mac = parse_mac("52:54:00:12:34:56\n").unwrap();
        let listed = [
            dev("srxe-lo", "127.0.0.1"),
            dev("srxe-br0", "198.18.0.1"),
            dev("srxe6-br0", "fd00:4791::1"),
            // The kernel's own link-local duplicates the default GID.
            dev("srxe6-br0", "fe80::5054:ff:fe12:3456"),
            dev("srxe-br0", "198.18.0.9"),
        ];
        let t = table("br0", mac, &listed);
        let want: Vec<IpAddr> = [
            "fe80::5054:ff:fe12:3456",
            "198.18.0.1",
            "198.18.0.9",
            "fd00:4791::1",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        assert_eq!(t, want);
        // An interface without addresses still has the default GID.
        assert_eq!(table("eth9", [0; 6], &listed).len(), 1);
    }

    #[test]
    fn names_and_macs() {
        assert_eq!(interface_of("srxe6-br0"), Some("br0"));
        assert_eq!(interface_of("srxe-eth0"), Some("eth0"));
        assert_eq!(interface_of("mlx5_0"), None);
        assert_eq!(parse_mac("52:54:00:12:34"), None);
        assert_eq!(parse_mac("52:54:00:12:34:56:78"), None);
        assert_eq!(parse_mac("zz:54:00:12:34:56"), None);
        assert_eq!(link_local_of_mac([0; 6]).to_string(), "fe80::200:ff:fe00:0");
    }
}
