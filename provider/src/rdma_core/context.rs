//! An open verbs device: its attributes, its port and its RoCEv2 GIDs.

use std::collections::HashMap;
use std::ffi::CStr;
use std::net::IpAddr;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, PoisonError};

use verbs_sys as sys;

use super::{check, last_error};
use super::{convert, mr};
use crate::{
    AccessFlags, DeviceAttr, Gid, OdpCaps, OdpEventSources, PortAttr, SelfCheck, VerbsError,
};

/// The port every call uses (RoCE devices have one).
pub(crate) const PORT: u8 = 1;

/// What the process knows about one device, whichever context opened it:
/// the ODP self-check runs once per device per process.
#[derive(Default)]
pub(crate) struct DeviceShared {
    /// The verdict; the lock is held while the check runs, so it runs once.
    pub(crate) self_check: Mutex<Option<SelfCheck>>,
    pub(crate) counters: super::mr::ModeCounters,
}

/// The shared state of the device named `name`.
fn shared(name: &str) -> Arc<DeviceShared> {
    static ALL: Mutex<Option<HashMap<String, Arc<DeviceShared>>>> = Mutex::new(None);
    let mut all = ALL.lock().unwrap_or_else(PoisonError::into_inner);
    Arc::clone(
        all.get_or_insert_with(HashMap::new)
            .entry(name.to_owned())
            .or_default(),
    )
}

/// Limits read once at open (`ibv_query_device_ex`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) max_qp: u32,
    pub(crate) max_qp_wr: u32,
    pub(crate) max_sge: u32,
    pub(crate) max_cqe: u32,
    pub(crate) max_mr_size: u64,
    pub(crate) max_qp_rd_atom: u32,
    pub(crate) atomic: bool,
    pub(crate) odp: OdpCaps,
}

/// A RoCEv2 GID of port 1 and its table index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GidEntry {
    pub(crate) index: u8,
    pub(crate) gid: Gid,
    /// The network interface behind it (0: unknown).
    pub(crate) ifindex: u32,
}

/// An open device (`ibv_context`).
pub(crate) struct RdmaContext {
    raw: NonNull<sys::ibv_context>,
    pub(crate) name: String,
    pub(crate) limits: Limits,
    pub(crate) port: PortAttr,
    /// The RoCEv2 GID with an IPv4-mapped address, if any.
    pub(crate) gid_v4: Option<GidEntry>,
    /// The RoCEv2 GID with a global IPv6 address, if any.
    pub(crate) gid_v6: Option<GidEntry>,
    pub(crate) shared: Arc<DeviceShared>,
    /// Pin-on-demand regions by key.
    pub(crate) pod: super::pod::PodTable,
    /// Queue pairs' pending work requests and the completion queues.
    pub(crate) completions: super::pod::Completions,
}

// SAFETY: libibverbs contexts may be used from any thread (the library
// and its providers lock what they share); the pointer is only freed in
// Drop, once.
unsafe impl Send for RdmaContext {}
// SAFETY: as for Send: every verb on a context is thread-safe.
unsafe impl Sync for RdmaContext {}

impl std::fmt::Debug for RdmaContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdmaContext")
            .field("name", &self.name)
            .finish()
    }
}

impl RdmaContext {
    /// Opens the device called `name`.
    ///
    /// # Errors
    /// [`VerbsError::InvalidArgument`] if no such device is listed; a
    /// failed verbs call.
    pub(crate) fn open(name: &str) -> Result<Arc<RdmaContext>, VerbsError> {
        let raw = super::list::with_devices(|devices| {
            let dev = devices
                .iter()
                .copied()
                // SAFETY: each entry is a live device of the list.
                .find(|&d| {
                    // SAFETY: a live device of the list; its name is a C string.
                    unsafe { CStr::from_ptr(sys::ibv_get_device_name(d)) }.to_bytes()
                        == name.as_bytes()
                })
                .ok_or(VerbsError::InvalidArgument("no verbs device of that name"))?;
            // SAFETY: `dev` is a device of the live list; the context
            // outlives the list.
            NonNull::new(unsafe { sys::ibv_open_device(dev) })
                .ok_or_else(|| last_error("ibv_open_device"))
        })??;
        // From here on Drop closes the context, whatever fails.
        let mut ctx = RdmaContext {
            raw,
            name: name.to_owned(),
            limits: Limits {
                max_qp: 0,
                max_qp_wr: 0,
                max_sge: 0,
                max_cqe: 0,
                max_mr_size: 0,
                max_qp_rd_atom: 0,
                atomic: false,
                odp: convert::NO_ODP,
            },
            port: PortAttr {
                max_mtu: crate::Mtu::Mtu256,
                active_mtu: crate::Mtu::Mtu256,
                gid_tbl_len: 0,
            },
            gid_v4: None,
            gid_v6: None,
            shared: shared(name),
            pod: super::pod::PodTable::default(),
            completions: super::pod::Completions::default(),
        };
        ctx.limits = ctx.query_limits()?;
        ctx.port = ctx.query_port()?;
        (ctx.gid_v4, ctx.gid_v6) = ctx.roce_v2_gids()?;
        Ok(Arc::new(ctx))
    }

    /// The raw context, for verbs calls.
    pub(crate) fn raw(&self) -> *mut sys::ibv_context {
        self.raw.as_ptr()
    }

    fn query_limits(&self) -> Result<Limits, VerbsError> {
        // SAFETY: plain data; zero is a valid value for every field.
        let mut attr: sys::ibv_device_attr_ex = unsafe { std::mem::zeroed() };
        // SAFETY: a live context and a properly sized out-struct; the input
        // pointer may be null (no comp_mask asked for).
        let rc = unsafe { sys::ibv_query_device_ex(self.raw(), std::ptr::null(), &mut attr) };
        check("ibv_query_device_ex", rc)?;
        let a = &attr.orig_attr;
        Ok(Limits {
            max_qp: a.max_qp.max(0) as u32,
            max_qp_wr: a.max_qp_wr.max(0) as u32,
            max_sge: a.max_sge.max(0) as u32,
            max_cqe: a.max_cqe.max(0) as u32,
            max_mr_size: a.max_mr_size,
            max_qp_rd_atom: a.max_qp_rd_atom.max(0) as u32,
            atomic: a.atomic_cap != sys::ibv_atomic_cap_IBV_ATOMIC_NONE,
            odp: convert::odp_caps(&attr.odp_caps),
        })
    }

    fn query_port(&self) -> Result<PortAttr, VerbsError> {
        // SAFETY: plain data; zero is a valid value for every field.
        let mut attr: sys::ibv_port_attr = unsafe { std::mem::zeroed() };
        // SAFETY: a live context and a full-size ibv_port_attr, which the
        // wrapper passes with its size.
        let rc = unsafe { sys::___ibv_query_port(self.raw(), PORT, &mut attr) };
        check("ibv_query_port", rc)?;
        Ok(PortAttr {
            max_mtu: convert::mtu_from(attr.max_mtu),
            active_mtu: convert::mtu_from(attr.active_mtu),
            gid_tbl_len: attr.gid_tbl_len.max(0) as u32,
        })
    }

    /// The first RoCEv2 GID of port 1 with an IPv4-mapped address, and
    /// the first with a global IPv6 address.
    fn roce_v2_gids(&self) -> Result<(Option<GidEntry>, Option<GidEntry>), VerbsError> {
        let max = self.port.gid_tbl_len.max(1) as usize;
        // SAFETY: plain data; zero is a valid value for every field.
        let mut entries: Vec<sys::ibv_gid_entry> = vec![unsafe { std::mem::zeroed() }; max];
        // SAFETY: `entries` has room for `max` entries of the size the
        // wrapper passes.
        let n = unsafe { sys::ibv_query_gid_table(self.raw(), entries.as_mut_ptr(), max, 0) };
        if n < 0 {
            return Err(VerbsError::DeviceCall {
                call: "ibv_query_gid_table",
                errno: (-n) as i32,
            });
        }
        let (mut v4, mut v6) = (None, None);
        for e in &entries[..(n as usize).min(max)] {
            if e.port_num != u32::from(PORT) || e.gid_type != sys::ibv_gid_type_IBV_GID_TYPE_ROCE_V2
            {
                continue;
            }
            // An address vector names its source GID in 8 bits: an entry
            // past index 255 cannot be used.
            let Ok(index) = u8::try_from(e.gid_index) else {
                continue;
            };
            // SAFETY: the GID union is 16 plain bytes.
            let gid = Gid(unsafe { e.gid.raw });
            let entry = GidEntry {
                index,
                gid,
                ifindex: e.ndev_ifindex,
            };
            match gid.ip() {
                IpAddr::V4(_) => {
                    v4.get_or_insert(entry);
                }
                IpAddr::V6(ip) if !ip.is_unicast_link_local() && !ip.is_unspecified() => {
                    v6.get_or_insert(entry);
                }
                IpAddr::V6(_) => {}
            }
        }
        Ok((v4, v6))
    }

    /// The GID at `index` of port 1.
    ///
    /// # Errors
    /// [`VerbsError::NoSuchGid`] outside the table or for an empty entry.
    pub(crate) fn query_gid(&self, index: usize) -> Result<Gid, VerbsError> {
        if index >= self.port.gid_tbl_len as usize {
            return Err(VerbsError::NoSuchGid(index));
        }
        // SAFETY: plain data; zero is a valid value.
        let mut gid: sys::ibv_gid = unsafe { std::mem::zeroed() };
        // SAFETY: a live context and a 16-byte out-buffer.
        let rc = unsafe { sys::ibv_query_gid(self.raw(), PORT, index as i32, &mut gid) };
        // SAFETY: the GID union is 16 plain bytes.
        let raw = unsafe { gid.raw };
        if rc != 0 || raw == [0; 16] {
            return Err(VerbsError::NoSuchGid(index));
        }
        Ok(Gid(raw))
    }

    /// Our GID of the same family as `remote` (IPv4-mapped or IPv6), for
    /// the address vector of a connection to it.
    pub(crate) fn gid_for(&self, remote: &Gid) -> Option<GidEntry> {
        match remote.ip() {
            IpAddr::V4(_) => self.gid_v4,
            IpAddr::V6(_) => self.gid_v6,
        }
    }

    /// The address the device is known by: its IPv4 GID's, else its IPv6
    /// GID's, else unspecified.
    pub(crate) fn addr(&self) -> IpAddr {
        self.gid_v4
            .or(self.gid_v6)
            .map_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |e| e.gid.ip())
    }

    /// The MTU of the network interface behind the device's GIDs (1500 if
    /// unknown).
    pub(crate) fn if_mtu(&self) -> u32 {
        let ifindex = self.gid_v4.or(self.gid_v6).map_or(0, |e| e.ifindex);
        let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
        // SAFETY: `name` has IF_NAMESIZE bytes, as if_indextoname needs.
        let found =
            ifindex != 0 && !unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) }.is_null();
        if !found {
            return 1500;
        }
        // SAFETY: if_indextoname wrote a NUL-terminated name.
        let name = unsafe { CStr::from_ptr(name.as_ptr()) }.to_string_lossy();
        std::fs::read_to_string(format!("/sys/class/net/{name}/mtu"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1500)
    }
}

impl RdmaContext {
    /// Polls every completion queue of the context into its set-aside
    /// queue, releasing the chunks of completed work requests (called
    /// while a pin-on-demand invalidation waits for them).
    pub(crate) fn drain_cqs(&self) {
        self.completions.drain();
    }

    /// Limits, ODP capabilities and the modes the device would choose now.
    pub(crate) fn device_attr(&self) -> DeviceAttr {
        // While the self-check runs its verdict is not known yet.
        let verdict = self
            .shared
            .self_check
            .try_lock()
            .ok()
            .and_then(|v| v.map(|v| v.passed));
        let odp = self.limits.odp;
        let local = AccessFlags::LOCAL_WRITE | AccessFlags::ON_DEMAND;
        let remote = local | AccessFlags::REMOTE_WRITE | AccessFlags::REMOTE_READ;
        let l = &self.limits;
        DeviceAttr {
            max_qp: l.max_qp,
            max_qp_wr: l.max_qp_wr,
            max_sge: l.max_sge,
            max_cqe: l.max_cqe,
            max_mr_size: l.max_mr_size,
            max_qp_rd_atom: l.max_qp_rd_atom,
            atomic: l.atomic,
            odp_caps: odp,
            odp_events: OdpEventSources::current(),
            odp_local: mr::device_choice(&odp, verdict, local, false),
            odp_remote: mr::device_choice(&odp, verdict, remote, false),
        }
    }
}

impl Drop for RdmaContext {
    fn drop(&mut self) {
        // Every object of the context keeps it alive through an Arc, so
        // none is left.
        // SAFETY: the context is live and closed once.
        unsafe { sys::ibv_close_device(self.raw()) };
    }
}
