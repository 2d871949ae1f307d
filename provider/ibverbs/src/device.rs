//! The device list: `srxe-<if>` and `srxe6-<if>`, as the project's tools
//! name them, each on the interface's first usable address of its family
//! ([`provider::devices`] lists one entry per address; an IPv6 link-local
//! address cannot be a device's, as it needs a scope).
//!
//! Devices live for the life of the process (contexts keep pointing at
//! theirs after `ibv_free_device_list`, as verbs allows): each distinct
//! (name, address) is allocated once, so the registry is bounded by the
//! addresses the host ever had.

use std::ffi::{CStr, c_char, c_int};
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};

use provider::DeviceInfo;

use crate::errno::{pointer, set_errno};
use crate::sys::{ibv_device, ibv_node_type_IBV_NODE_CA, ibv_transport_type_IBV_TRANSPORT_IB};

/// A device as verbs sees it; `ibv` first, so a `*mut ibv_device` handed
/// out is a `*mut Device`.
#[repr(C)]
pub(crate) struct Device {
    ibv: ibv_device,
    /// The interface address the device binds.
    pub(crate) info: DeviceInfo,
    /// The interface's name.
    pub(crate) interface: String,
    /// The interface's MAC (zeros for one without).
    pub(crate) mac: [u8; 6],
    /// Position in the registry (`ibv_get_device_index`).
    pub(crate) index: usize,
}

impl Device {
    /// The device behind a pointer this library handed out.
    ///
    /// # Safety
    /// `dev` is null or came from [`ibv_get_device_list`].
    pub(crate) unsafe fn from_ptr<'a>(dev: *mut ibv_device) -> Option<&'a Device> {
        // SAFETY: registry devices are never freed and `ibv` is their
        // first field (repr(C)).
        unsafe { dev.cast::<Device>().as_ref() }
    }

    /// The GUID: an EUI-64 of the MAC, or for an interface without one the
    /// address's last 8 bytes (IPv4-mapped for IPv4), so that devices
    /// differ.
    pub(crate) fn guid(&self) -> u64 {
        if self.mac != [0; 6] {
            let m = self.mac;
            u64::from_be_bytes([m[0] ^ 2, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]])
        } else {
            let gid = provider::Gid::from_ip(self.info.addr).0;
            u64::from_be_bytes(gid[8..].try_into().unwrap_or_default())
        }
    }

    /// The GID table of the device's interface in kernel rxe's order: the
    /// link-local address made from the MAC, then the interface's IPv4
    /// addresses, then its other IPv6 addresses.
    pub(crate) fn gid_table(&self) -> Vec<IpAddr> {
        let mut gids = vec![IpAddr::V6(link_local_of_mac(self.mac))];
        let all = provider::devices().unwrap_or_default();
        let on_if: Vec<&DeviceInfo> = all
            .iter()
            .filter(|d| interface_of(&d.name) == Some(self.interface.as_str()))
            .collect();
        let v4 = on_if.iter().filter(|d| d.addr.is_ipv4());
        let v6 = on_if.iter().filter(|d| d.addr.is_ipv6());
        for d in v4.chain(v6) {
            if !gids.contains(&d.addr) {
                gids.push(d.addr);
            }
        }
        if !gids.contains(&self.info.addr) {
            gids.push(self.info.addr);
        }
        gids
    }
}

/// The interface a device name stands for.
fn interface_of(device_name: &str) -> Option<&str> {
    device_name
        .strip_prefix("srxe6-")
        .or_else(|| device_name.strip_prefix("srxe-"))
}

/// rxe's default GID: `fe80::` and the EUI-64 of the MAC.
fn link_local_of_mac(mac: [u8; 6]) -> std::net::Ipv6Addr {
    let mut b = [0u8; 16];
    b[..2].copy_from_slice(&[0xfe, 0x80]);
    b[8..].copy_from_slice(&[
        mac[0] ^ 2,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ]);
    std::net::Ipv6Addr::from(b)
}

/// The MAC of `interface` from sysfs (zeros for one without, such as `lo`).
fn mac_of(interface: &str) -> [u8; 6] {
    let text = std::fs::read_to_string(format!("/sys/class/net/{interface}/address"));
    let mut mac = [0u8; 6];
    if let Ok(text) = text {
        let bytes: Vec<u8> = text
            .trim()
            .split(':')
            .filter_map(|p| u8::from_str_radix(p, 16).ok())
            .collect();
        if bytes.len() == 6 {
            mac.copy_from_slice(&bytes);
        }
    }
    mac
}

/// Copies `text` into a C char array, truncated and NUL-terminated.
pub(crate) fn fill_c_string(dst: &mut [c_char], text: &str) {
    let n = text.len().min(dst.len().saturating_sub(1));
    for (d, s) in dst.iter_mut().zip(&text.as_bytes()[..n]) {
        *d = *s as c_char;
    }
    if let Some(end) = dst.get_mut(n) {
        *end = 0;
    }
}

/// A registry entry: a leaked device, never freed.
struct Entry(*mut Device);

// SAFETY: the device behind the pointer is immutable after creation and
// lives forever; the pointer is only shared, never written through.
unsafe impl Send for Entry {}

/// Every device handed out so far.
static REGISTRY: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

/// The registry's device for `info`, allocated on first sight.
fn device_for(registry: &mut Vec<Entry>, info: DeviceInfo) -> *mut Device {
    if let Some(e) = registry.iter().find(|e| {
        // SAFETY: registry pointers are live, immutable devices.
        let d = unsafe { &*e.0 };
        d.info.name == info.name && d.info.addr == info.addr
    }) {
        return e.0;
    }
    let interface = interface_of(&info.name).unwrap_or_default().to_owned();
    // SAFETY: ibv_device is plain C data (integers and arrays) for which
    // all zeros is a valid value.
    let mut ibv: ibv_device = unsafe { std::mem::zeroed() };
    ibv.node_type = ibv_node_type_IBV_NODE_CA;
    ibv.transport_type = ibv_transport_type_IBV_TRANSPORT_IB;
    fill_c_string(&mut ibv.name, &info.name);
    fill_c_string(&mut ibv.dev_name, &info.name);
    fill_c_string(&mut ibv.dev_path, &format!("/sys/class/net/{interface}"));
    fill_c_string(
        &mut ibv.ibdev_path,
        &format!("/sys/class/infiniband/{}", info.name),
    );
    let device = Box::new(Device {
        ibv,
        mac: mac_of(&interface),
        interface,
        info,
        index: registry.len(),
    });
    let ptr = Box::into_raw(device);
    registry.push(Entry(ptr));
    ptr
}

/// One device per name: the first of its addresses that is not IPv6
/// link-local.
fn usable(infos: Vec<DeviceInfo>) -> Vec<DeviceInfo> {
    let mut kept: Vec<DeviceInfo> = Vec::new();
    for info in infos {
        let link_local = matches!(info.addr, IpAddr::V6(v6) if v6.is_unicast_link_local());
        if !link_local && !kept.iter().any(|k| k.name == info.name) {
            kept.push(info);
        }
    }
    kept
}

/// `ibv_get_device_list`: a NULL-terminated array of this host's devices.
pub(crate) unsafe extern "C" fn ibv_get_device_list(
    num_devices: *mut c_int,
) -> *mut *mut ibv_device {
    let infos = match provider::devices() {
        Ok(infos) => infos,
        Err(e) => return pointer(Err(crate::errno::errno_of(&e))),
    };
    let mut registry = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
    let mut list: Vec<*mut ibv_device> = usable(infos)
        .into_iter()
        .map(|info| device_for(&mut registry, info).cast::<ibv_device>())
        .collect();
    if !num_devices.is_null() {
        // SAFETY: the caller passes NULL or a writable int.
        unsafe { *num_devices = c_int::try_from(list.len()).unwrap_or(c_int::MAX) };
    }
    list.push(std::ptr::null_mut());
    Box::into_raw(list.into_boxed_slice()).cast::<*mut ibv_device>()
}

/// `ibv_free_device_list`: frees the array (the devices stay).
pub(crate) unsafe extern "C" fn ibv_free_device_list(list: *mut *mut ibv_device) {
    if list.is_null() {
        return;
    }
    let mut len = 0;
    // SAFETY: `list` came from ibv_get_device_list: NULL-terminated.
    while !unsafe { *list.add(len) }.is_null() {
        len += 1;
    }
    // SAFETY: the array was a boxed slice of len + 1 entries.
    drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(list, len + 1)) });
}

/// `ibv_get_device_name`.
pub(crate) unsafe extern "C" fn ibv_get_device_name(device: *mut ibv_device) -> *const c_char {
    if device.is_null() {
        set_errno(libc::EINVAL);
        return std::ptr::null();
    }
    // SAFETY: a device of ours; `name` is NUL-terminated.
    unsafe { (*device).name.as_ptr() }
}

/// `ibv_get_device_guid`: the node GUID in network byte order.
pub(crate) unsafe extern "C" fn ibv_get_device_guid(device: *mut ibv_device) -> u64 {
    // SAFETY: NULL or a device of ours.
    unsafe { Device::from_ptr(device) }.map_or(0, |d| d.guid().to_be())
}

/// `ibv_get_device_index`.
pub(crate) unsafe extern "C" fn ibv_get_device_index(device: *mut ibv_device) -> c_int {
    // SAFETY: NULL or a device of ours.
    unsafe { Device::from_ptr(device) }.map_or(-1, |d| c_int::try_from(d.index).unwrap_or(-1))
}

/// `ibv_get_sysfs_path`: where sysfs is mounted.
pub(crate) extern "C" fn ibv_get_sysfs_path() -> *const c_char {
    c"/sys".as_ptr()
}

/// `ibv_read_sysfs_file`: reads `dir/file` into `buf` without the trailing
/// newline; the length, or -1.
pub(crate) unsafe extern "C" fn ibv_read_sysfs_file(
    dir: *const c_char,
    file: *const c_char,
    buf: *mut c_char,
    size: usize,
) -> c_int {
    if dir.is_null() || file.is_null() || buf.is_null() || size == 0 {
        set_errno(libc::EINVAL);
        return -1;
    }
    // SAFETY: the caller passes NUL-terminated strings.
    let (dir, file) = unsafe { (CStr::from_ptr(dir), CStr::from_ptr(file)) };
    let path = format!("{}/{}", dir.to_string_lossy(), file.to_string_lossy());
    let Ok(mut text) = std::fs::read(path) else {
        set_errno(libc::ENOENT);
        return -1;
    };
    text.truncate(size - 1);
    if text.last() == Some(&b'\n') {
        text.pop();
    }
    // SAFETY: `buf` has `size` bytes; we write at most size - 1 plus NUL.
    let out = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), size) };
    out[..text.len()].copy_from_slice(&text);
    out[text.len()] = 0;
    c_int::try_from(text.len()).unwrap_or(-1)
}
