//! Open devices (`ibv_context` inside rdma-core's `verbs_context`): device
//! and port attributes, the GID table, and the ops tables that the inline
//! verbs of `<infiniband/verbs.h>` call through.

use std::ffi::{c_int, c_void};
use std::net::IpAddr;
use std::sync::OnceLock;

use provider::{Context, Gid, Mtu};

use crate::async_event::AsyncEvents;
use crate::device::{Device, fill_c_string};
use crate::errno::{errno_of, pointer, set_errno, status};
use crate::sys::*;

/// An open device; `vctx` first, so the `ibv_context` at its end is found
/// from a `*mut Ctx` and back by a fixed offset.
#[repr(C)]
pub(crate) struct Ctx {
    vctx: verbs_context,
    /// A provider context on the device's address, for the attributes:
    /// the one of `data` or, when another process holds the device's UDP
    /// port, one on a port of its own (so `ibv_devinfo` works meanwhile).
    query: Context,
    /// The context on UDP port 4791 that carries traffic, opened by the
    /// first protection domain or completion queue.
    data: OnceLock<Context>,
    /// The device it was opened from.
    pub(crate) device: &'static Device,
    /// The interface's GID table in rxe's order, as of opening.
    pub(crate) gids: Vec<IpAddr>,
    /// Asynchronous events and the `async_fd` that signals them.
    async_events: AsyncEvents,
}

/// Where `verbs_context::context` sits.
const CONTEXT_OFFSET: usize = std::mem::offset_of!(verbs_context, context);

impl Ctx {
    /// The context behind an `ibv_context` this library handed out.
    ///
    /// # Safety
    /// `context` is null or came from [`ibv_open_device`] and is not closed.
    pub(crate) unsafe fn from_ptr<'a>(context: *mut ibv_context) -> Option<&'a Ctx> {
        if context.is_null() {
            return None;
        }
        // SAFETY: the ibv_context lies CONTEXT_OFFSET bytes into a live Ctx
        // (vctx is its first field).
        unsafe { Some(&*context.cast::<u8>().sub(CONTEXT_OFFSET).cast::<Ctx>()) }
    }

    /// The provider's context that carries traffic (UDP port 4791),
    /// opened now if it is not yet.
    pub(crate) fn device(&self) -> Result<&Context, i32> {
        if let Some(dev) = self.data.get() {
            return Ok(dev);
        }
        let dev = Context::open(self.device.info.addr).map_err(|e| errno_of(&e))?;
        // Two threads racing open one shared device (same address and
        // port); either context serves.
        let _ = self.data.set(dev);
        self.data.get().ok_or(libc::EIO)
    }

    /// The context's asynchronous events.
    pub(crate) fn async_events(&self) -> &AsyncEvents {
        &self.async_events
    }

    /// Device limits (as [`Context::query_device`]).
    pub(crate) fn limits(&self) -> provider::DeviceAttr {
        self.query.query_device()
    }

    /// The address of the `ibv_context` applications use.
    pub(crate) fn ibv_ptr(&self) -> *mut ibv_context {
        (&raw const self.vctx.context).cast_mut()
    }

    /// The index of the device's own address in the GID table.
    pub(crate) fn own_gid_index(&self) -> Option<usize> {
        self.gids.iter().position(|&ip| ip == self.device.info.addr)
    }

    /// The attributes verbs reports for this device.
    fn device_attr(&self) -> ibv_device_attr {
        let a = self.query.query_device();
        let clamp = |v: u32| c_int::try_from(v).unwrap_or(c_int::MAX);
        // SAFETY: plain C data; all zeros is valid.
        let mut attr: ibv_device_attr = unsafe { std::mem::zeroed() };
        fill_c_string(&mut attr.fw_ver, env!("CARGO_PKG_VERSION"));
        attr.node_guid = self.device.guid().to_be();
        attr.sys_image_guid = attr.node_guid;
        attr.max_mr_size = a.max_mr_size;
        attr.page_size_cap = 0xffff_f000;
        attr.vendor_id = 0xffffff;
        attr.max_qp = clamp(a.max_qp);
        attr.max_qp_wr = clamp(a.max_qp_wr);
        attr.device_cap_flags = ibv_device_cap_flags_IBV_DEVICE_CURR_QP_STATE_MOD
            | ibv_device_cap_flags_IBV_DEVICE_SYS_IMAGE_GUID
            | ibv_device_cap_flags_IBV_DEVICE_RC_RNR_NAK_GEN;
        attr.max_sge = clamp(a.max_sge);
        attr.max_sge_rd = clamp(a.max_sge);
        attr.max_cq = 1 << 16;
        attr.max_cqe = clamp(a.max_cqe);
        attr.max_mr = 1 << 20;
        attr.max_pd = 1 << 16;
        attr.max_qp_rd_atom = clamp(a.max_qp_rd_atom);
        attr.max_res_rd_atom = clamp(a.max_qp_rd_atom);
        attr.max_qp_init_rd_atom = clamp(a.max_qp_rd_atom);
        attr.atomic_cap = if a.atomic {
            ibv_atomic_cap_IBV_ATOMIC_HCA
        } else {
            ibv_atomic_cap_IBV_ATOMIC_NONE
        };
        attr.max_pkeys = 1;
        attr.local_ca_ack_delay = 15;
        attr.phys_port_cnt = 1;
        attr
    }

    /// The extended attributes, ODP capabilities included.
    fn device_attr_ex(&self) -> ibv_device_attr_ex {
        // SAFETY: plain C data; all zeros is valid.
        let mut ex: ibv_device_attr_ex = unsafe { std::mem::zeroed() };
        ex.orig_attr = self.device_attr();
        let odp = self.query.query_device().odp_caps;
        if odp.general {
            ex.odp_caps.general_caps = u64::from(ibv_odp_general_caps_IBV_ODP_SUPPORT);
        }
        if odp.implicit {
            ex.odp_caps.general_caps |= u64::from(ibv_odp_general_caps_IBV_ODP_SUPPORT_IMPLICIT);
        }
        let rc = [
            (odp.rc_send, ibv_odp_transport_cap_bits_IBV_ODP_SUPPORT_SEND),
            (odp.rc_recv, ibv_odp_transport_cap_bits_IBV_ODP_SUPPORT_RECV),
            (
                odp.rc_write,
                ibv_odp_transport_cap_bits_IBV_ODP_SUPPORT_WRITE,
            ),
            (odp.rc_read, ibv_odp_transport_cap_bits_IBV_ODP_SUPPORT_READ),
            (
                odp.rc_atomic,
                ibv_odp_transport_cap_bits_IBV_ODP_SUPPORT_ATOMIC,
            ),
        ];
        ex.odp_caps.per_transport_caps.rc_odp_caps = rc
            .iter()
            .filter(|(on, _)| *on)
            .fold(0, |caps, (_, bit)| caps | bit);
        ex.phys_port_cnt_ex = 1;
        ex
    }

    /// The port's attributes (port 1, the only one).
    fn port_attr(&self) -> ibv_port_attr {
        let p = self.query.query_port();
        // SAFETY: plain C data; all zeros is valid.
        let mut attr: ibv_port_attr = unsafe { std::mem::zeroed() };
        attr.state = ibv_port_state_IBV_PORT_ACTIVE;
        attr.max_mtu = mtu_enum(p.max_mtu);
        attr.active_mtu = mtu_enum(p.active_mtu);
        attr.gid_tbl_len = c_int::try_from(self.gids.len()).unwrap_or(c_int::MAX);
        attr.port_cap_flags = ibv_port_cap_flags_IBV_PORT_CM_SUP;
        attr.max_msg_sz = 1 << 31;
        attr.pkey_tbl_len = 1;
        attr.max_vl_num = 1;
        attr.active_width = 1; // IBV_WIDTH_1X
        attr.active_speed = 1; // IBV_SPEED_SDR
        attr.phys_state = 5; // LinkUp
        attr.link_layer = IBV_LINK_LAYER_ETHERNET as u8;
        attr
    }

    /// The GID at `index`.
    fn gid(&self, index: usize) -> Option<ibv_gid> {
        let ip = *self.gids.get(index)?;
        Some(ibv_gid {
            raw: Gid::from_ip(ip).0,
        })
    }
}

/// verbs' `enum ibv_mtu` for an MTU.
pub(crate) fn mtu_enum(mtu: Mtu) -> ibv_mtu {
    match mtu {
        Mtu::Mtu256 => ibv_mtu_IBV_MTU_256,
        Mtu::Mtu512 => ibv_mtu_IBV_MTU_512,
        Mtu::Mtu1024 => ibv_mtu_IBV_MTU_1024,
        Mtu::Mtu2048 => ibv_mtu_IBV_MTU_2048,
        Mtu::Mtu4096 => ibv_mtu_IBV_MTU_4096,
    }
}

/// Copies `value` into a caller's structure of `size` bytes (an older
/// program's smaller version of it, or a newer one's larger).
///
/// # Safety
/// `dst` points to `size` writable bytes.
unsafe fn copy_sized<T>(value: &T, dst: *mut c_void, size: usize) {
    let n = size.min(std::mem::size_of::<T>());
    // SAFETY: `value` has size_of::<T>() bytes and `dst` `size`; n is the
    // smaller; they cannot overlap (one is ours on the stack).
    unsafe { std::ptr::copy_nonoverlapping((value as *const T).cast::<u8>(), dst.cast::<u8>(), n) };
}

/// `ibv_open_device`.
pub(crate) unsafe extern "C" fn ibv_open_device(device: *mut ibv_device) -> *mut ibv_context {
    // SAFETY: NULL or a device from ibv_get_device_list.
    let Some(dev) = (unsafe { Device::from_ptr(device) }) else {
        return pointer(Err(libc::EINVAL));
    };
    pointer(open(dev).map(|ctx| Box::leak(ctx).ibv_ptr()))
}

/// Opens the provider's device and builds the context around it.
fn open(device: &'static Device) -> Result<Box<Ctx>, i32> {
    let data = OnceLock::new();
    let query = match Context::open(device.info.addr) {
        Ok(dev) => {
            let _ = data.set(dev.clone());
            dev
        }
        Err(provider::VerbsError::Io(e)) if e.kind() == std::io::ErrorKind::AddrInUse => {
            Context::open_with_port(device.info.addr, 0).map_err(|e| errno_of(&e))?
        }
        Err(e) => return Err(errno_of(&e)),
    };
    let async_events = AsyncEvents::new()?;
    // SAFETY: plain C data (pointers, integers, optional function
    // pointers, a pthread mutex whose all-zero state is
    // PTHREAD_MUTEX_INITIALIZER in glibc); all zeros is valid.
    let mut vctx: verbs_context = unsafe { std::mem::zeroed() };
    vctx.sz = std::mem::size_of::<verbs_context>();
    vctx.query_port = Some(query_port_ex);
    vctx.query_device_ex = Some(query_device_ex);
    vctx.advise_mr = Some(crate::mr::advise_mr);
    vctx.create_qp_ex = Some(crate::qp_ex::create_qp_ex);
    let c = &mut vctx.context;
    c.device = (device as *const Device).cast_mut().cast::<ibv_device>();
    c.cmd_fd = -1;
    c.async_fd = async_events.raw_fd();
    c.num_comp_vectors = 1;
    // __VERBS_ABI_IS_EXTENDED: tells the inline verbs this is a
    // verbs_context.
    c.abi_compat = usize::MAX as *mut c_void;
    c.ops.poll_cq = Some(crate::cq::poll_cq);
    c.ops.req_notify_cq = Some(crate::cq::req_notify_cq);
    c.ops.post_send = Some(crate::qp::post_send);
    c.ops.post_recv = Some(crate::qp::post_recv);
    c.ops.post_srq_recv = Some(crate::unsupported::post_srq_recv);
    c.ops.alloc_mw = Some(crate::unsupported::alloc_mw);
    c.ops.bind_mw = Some(crate::unsupported::bind_mw);
    c.ops.dealloc_mw = Some(crate::unsupported::dealloc_mw);
    Ok(Box::new(Ctx {
        vctx,
        query,
        data,
        device,
        gids: device.gid_table(),
        async_events,
    }))
}

/// `ibv_close_device`. Objects still open keep the provider's device alive
/// (they hold its `Arc`s); the application must not use them after this.
pub(crate) unsafe extern "C" fn ibv_close_device(context: *mut ibv_context) -> c_int {
    if context.is_null() {
        return status(Err(libc::EINVAL));
    }
    // SAFETY: a context from ibv_open_device, boxed there and closed once.
    let ctx = unsafe { Box::from_raw(context.cast::<u8>().sub(CONTEXT_OFFSET).cast::<Ctx>()) };
    drop(ctx);
    0
}

/// `ibv_query_device`.
pub(crate) unsafe extern "C" fn ibv_query_device(
    context: *mut ibv_context,
    attr: *mut ibv_device_attr,
) -> c_int {
    // SAFETY: NULL or an open context.
    let Some(ctx) = (unsafe { Ctx::from_ptr(context) }) else {
        return status(Err(libc::EINVAL));
    };
    if attr.is_null() {
        return status(Err(libc::EINVAL));
    }
    // SAFETY: the caller passes a writable ibv_device_attr.
    unsafe { attr.write(ctx.device_attr()) };
    0
}

/// `verbs_context::query_device_ex`, behind the inline
/// `ibv_query_device_ex`.
unsafe extern "C" fn query_device_ex(
    context: *mut ibv_context,
    input: *const ibv_query_device_ex_input,
    attr: *mut ibv_device_attr_ex,
    attr_size: usize,
) -> c_int {
    // SAFETY: NULL or an open context.
    let Some(ctx) = (unsafe { Ctx::from_ptr(context) }) else {
        return libc::EINVAL;
    };
    // SAFETY: NULL or the caller's input structure.
    if attr.is_null() || unsafe { input.as_ref() }.is_some_and(|i| i.comp_mask != 0) {
        return libc::EINVAL;
    }
    // SAFETY: the inline verb passes sizeof(*attr) as the caller knows it.
    unsafe { copy_sized(&ctx.device_attr_ex(), attr.cast(), attr_size) };
    0
}

/// `ibv_query_port` (the exported one, with rdma-core's compat layout).
pub(crate) unsafe extern "C" fn ibv_query_port(
    context: *mut ibv_context,
    port_num: u8,
    attr: *mut _compat_ibv_port_attr,
) -> c_int {
    // SAFETY: as query_port_ex; the compat structure is a prefix.
    unsafe {
        query_port_ex(
            context,
            port_num,
            attr.cast(),
            std::mem::size_of::<_compat_ibv_port_attr>(),
        )
    }
}

/// `verbs_context::query_port`, behind the inline `ibv_query_port`.
unsafe extern "C" fn query_port_ex(
    context: *mut ibv_context,
    port_num: u8,
    attr: *mut ibv_port_attr,
    attr_len: usize,
) -> c_int {
    // SAFETY: NULL or an open context.
    let Some(ctx) = (unsafe { Ctx::from_ptr(context) }) else {
        return status(Err(libc::EINVAL));
    };
    if port_num != 1 || attr.is_null() {
        return status(Err(libc::EINVAL));
    }
    // SAFETY: the caller passes attr_len writable bytes.
    unsafe { copy_sized(&ctx.port_attr(), attr.cast(), attr_len) };
    0
}

/// `ibv_query_gid`: 0, or -1 for a bad port or index.
pub(crate) unsafe extern "C" fn ibv_query_gid(
    context: *mut ibv_context,
    port_num: u8,
    index: c_int,
    gid: *mut ibv_gid,
) -> c_int {
    // SAFETY: NULL or an open context.
    let ctx = unsafe { Ctx::from_ptr(context) };
    let found = ctx
        .filter(|_| port_num == 1 && !gid.is_null())
        .and_then(|ctx| ctx.gid(usize::try_from(index).ok()?));
    match found {
        // SAFETY: the caller passes a writable ibv_gid.
        Some(value) => unsafe {
            gid.write(value);
            0
        },
        None => {
            set_errno(libc::EINVAL);
            -1
        }
    }
}

/// `ibv_query_gid_type` (rdma-core private, with the private
/// `enum ibv_gid_type_sysfs`): every GID is RoCE v2, as on kernel rxe.
pub(crate) unsafe extern "C" fn ibv_query_gid_type(
    context: *mut ibv_context,
    port_num: u8,
    index: u32,
    gid_type: *mut u32,
) -> c_int {
    // SAFETY: NULL or an open context.
    let ctx = unsafe { Ctx::from_ptr(context) };
    if port_num != 1 || gid_type.is_null() || ctx.and_then(|c| c.gids.get(index as usize)).is_none()
    {
        set_errno(libc::EINVAL);
        return -1;
    }
    // SAFETY: the caller passes a writable gid type.
    unsafe { gid_type.write(GID_TYPE_SYSFS_ROCE_V2) };
    0
}

/// `IBV_GID_TYPE_SYSFS_ROCE_V2` of rdma-core's private driver header.
const GID_TYPE_SYSFS_ROCE_V2: u32 = 1;

/// The GID table entry at `index`.
fn gid_entry(ctx: &Ctx, index: usize) -> Option<ibv_gid_entry> {
    Some(ibv_gid_entry {
        gid: ctx.gid(index)?,
        gid_index: u32::try_from(index).ok()?,
        port_num: 1,
        gid_type: ibv_gid_type_IBV_GID_TYPE_ROCE_V2,
        ndev_ifindex: ifindex(&ctx.device.interface),
    })
}

/// The interface's index (0 if unknown).
fn ifindex(interface: &str) -> u32 {
    let Ok(name) = std::ffi::CString::new(interface) else {
        return 0;
    };
    // SAFETY: a NUL-terminated name.
    unsafe { libc::if_nametoindex(name.as_ptr()) }
}

/// `_ibv_query_gid_ex`, behind the inline `ibv_query_gid_ex`.
pub(crate) unsafe extern "C" fn _ibv_query_gid_ex(
    context: *mut ibv_context,
    port_num: u32,
    gid_index: u32,
    entry: *mut ibv_gid_entry,
    flags: u32,
    entry_size: usize,
) -> c_int {
    // SAFETY: NULL or an open context.
    let Some(ctx) = (unsafe { Ctx::from_ptr(context) }) else {
        return libc::EINVAL;
    };
    if port_num != 1 || flags != 0 || entry.is_null() {
        return libc::EINVAL;
    }
    match gid_entry(ctx, gid_index as usize) {
        // SAFETY: the caller passes entry_size writable bytes.
        Some(e) => unsafe {
            copy_sized(&e, entry.cast(), entry_size);
            0
        },
        None => libc::ENODATA,
    }
}

/// `_ibv_query_gid_table`, behind the inline `ibv_query_gid_table`: the
/// number of entries written, or a negative errno.
pub(crate) unsafe extern "C" fn _ibv_query_gid_table(
    context: *mut ibv_context,
    entries: *mut ibv_gid_entry,
    max_entries: usize,
    flags: u32,
    entry_size: usize,
) -> isize {
    // SAFETY: NULL or an open context.
    let Some(ctx) = (unsafe { Ctx::from_ptr(context) }) else {
        return -(libc::EINVAL as isize);
    };
    if flags != 0 || entries.is_null() || entry_size < std::mem::size_of::<ibv_gid_entry>() {
        return -(libc::EINVAL as isize);
    }
    if max_entries < ctx.gids.len() {
        return -(libc::EINVAL as isize);
    }
    for index in 0..ctx.gids.len() {
        if let Some(e) = gid_entry(ctx, index) {
            // SAFETY: max_entries entries of entry_size bytes each.
            unsafe {
                copy_sized(
                    &e,
                    entries.cast::<u8>().add(index * entry_size).cast(),
                    entry_size,
                )
            };
        }
    }
    ctx.gids.len() as isize
}

/// `ibv_query_pkey`: the one default P_Key.
pub(crate) unsafe extern "C" fn ibv_query_pkey(
    context: *mut ibv_context,
    port_num: u8,
    index: c_int,
    pkey: *mut u16,
) -> c_int {
    if context.is_null() || port_num != 1 || index != 0 || pkey.is_null() {
        set_errno(libc::EINVAL);
        return -1;
    }
    // SAFETY: the caller passes a writable u16.
    unsafe { pkey.write(0xffff_u16.to_be()) };
    0
}

/// `ibv_get_pkey_index`: the index of the default P_Key.
pub(crate) unsafe extern "C" fn ibv_get_pkey_index(
    context: *mut ibv_context,
    port_num: u8,
    pkey: u16,
) -> c_int {
    if context.is_null() || port_num != 1 || u16::from_be(pkey) & 0x7fff != 0x7fff {
        set_errno(libc::EINVAL);
        return -1;
    }
    0
}
