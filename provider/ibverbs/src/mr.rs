//! Protection domains and memory regions: `ibv_reg_mr` with and without
//! `IBV_ACCESS_ON_DEMAND`, implicit ODP, and `ibv_advise_mr`.

use std::ffi::{c_int, c_uint, c_void};

use odp::Advice;
use provider::{AccessFlags, MemoryRegion, ProtectionDomain, Sge};

use crate::context::Ctx;
use crate::errno::{errno_of, pointer, status};
use crate::sys::*;

/// A protection domain; `ibv` first, so `*mut ibv_pd` is `*mut Pd`.
#[repr(C)]
pub(crate) struct Pd {
    ibv: ibv_pd,
    /// The provider's domain.
    pub(crate) pd: ProtectionDomain,
}

impl Pd {
    /// The domain behind a pointer this library handed out.
    ///
    /// # Safety
    /// `pd` is null or came from [`ibv_alloc_pd`] and is not freed.
    pub(crate) unsafe fn from_ptr<'a>(pd: *mut ibv_pd) -> Option<&'a Pd> {
        // SAFETY: `ibv` is the first field of a live, boxed Pd.
        unsafe { pd.cast::<Pd>().as_ref() }
    }

    /// The context the domain was allocated on.
    pub(crate) fn ibv_context(&self) -> *mut ibv_context {
        self.ibv.context
    }
}

/// A memory region; `ibv` first.
#[repr(C)]
struct Mr {
    ibv: ibv_mr,
    _mr: MemoryRegion,
}

/// `ibv_alloc_pd`.
pub(crate) unsafe extern "C" fn ibv_alloc_pd(context: *mut ibv_context) -> *mut ibv_pd {
    // SAFETY: NULL or an open context.
    let Some(ctx) = (unsafe { Ctx::from_ptr(context) }) else {
        return pointer(Err(libc::EINVAL));
    };
    let pd = match ctx
        .device()
        .and_then(|d| d.alloc_pd().map_err(|e| errno_of(&e)))
    {
        Ok(pd) => pd,
        Err(code) => return pointer(Err(code)),
    };
    let pd = Box::new(Pd {
        ibv: ibv_pd { context, handle: 0 },
        pd,
    });
    Box::into_raw(pd).cast()
}

/// `ibv_dealloc_pd`. Regions and queue pairs keep what they need of the
/// domain alive.
pub(crate) unsafe extern "C" fn ibv_dealloc_pd(pd: *mut ibv_pd) -> c_int {
    if pd.is_null() {
        return status(Err(libc::EINVAL));
    }
    // SAFETY: a domain from ibv_alloc_pd, freed once.
    drop(unsafe { Box::from_raw(pd.cast::<Pd>()) });
    0
}

/// The access rights verbs asks for, or `EOPNOTSUPP` for what the device
/// lacks (zero-based regions). Optional flags (relaxed ordering) and hints
/// (huge pages, memory-window binding) are accepted and ignored.
fn access_of(access: c_uint) -> Result<AccessFlags, i32> {
    if access & ibv_access_flags_IBV_ACCESS_ZERO_BASED != 0 {
        return Err(libc::EOPNOTSUPP);
    }
    let known = ibv_access_flags_IBV_ACCESS_LOCAL_WRITE
        | ibv_access_flags_IBV_ACCESS_REMOTE_WRITE
        | ibv_access_flags_IBV_ACCESS_REMOTE_READ
        | ibv_access_flags_IBV_ACCESS_REMOTE_ATOMIC
        | ibv_access_flags_IBV_ACCESS_ON_DEMAND;
    Ok(AccessFlags::from_bits_truncate(access & known))
}

/// Registers `[addr, addr + length)`; `SIZE_MAX` at NULL with
/// `IBV_ACCESS_ON_DEMAND` is an implicit ODP region.
///
/// # Safety
/// `pd` is NULL or a live domain of this library.
unsafe fn register(
    pd: *mut ibv_pd,
    addr: *mut c_void,
    length: usize,
    access: c_uint,
) -> Result<*mut ibv_mr, i32> {
    // SAFETY: NULL or a live domain.
    let p = unsafe { Pd::from_ptr(pd) }.ok_or(libc::EINVAL)?;
    let flags = access_of(access)?;
    // SAFETY: the application hands the device this memory, as verbs
    // defines: it stays registered until ibv_dereg_mr, and Rust code of
    // this library never touches it.
    let mr = unsafe { p.pd.reg_mr(addr as usize, length, flags) }.map_err(|e| errno_of(&e))?;
    let ibv = ibv_mr {
        context: p.ibv.context,
        pd,
        addr,
        length,
        handle: 0,
        lkey: mr.lkey(),
        rkey: mr.rkey(),
    };
    Ok(Box::into_raw(Box::new(Mr { ibv, _mr: mr })).cast())
}

/// `ibv_reg_mr`.
pub(crate) unsafe extern "C" fn ibv_reg_mr(
    pd: *mut ibv_pd,
    addr: *mut c_void,
    length: usize,
    access: c_int,
) -> *mut ibv_mr {
    // SAFETY: the application's domain.
    pointer(unsafe { register(pd, addr, length, access as c_uint) })
}

/// `ibv_reg_mr_iova2`: only with the IOVA equal to the address (the
/// device addresses memory by virtual address).
pub(crate) unsafe extern "C" fn ibv_reg_mr_iova2(
    pd: *mut ibv_pd,
    addr: *mut c_void,
    length: usize,
    iova: u64,
    access: c_uint,
) -> *mut ibv_mr {
    if iova != addr as u64 {
        return pointer(Err(libc::EOPNOTSUPP));
    }
    // SAFETY: the application's domain.
    pointer(unsafe { register(pd, addr, length, access) })
}

/// `ibv_reg_mr_iova`.
pub(crate) unsafe extern "C" fn ibv_reg_mr_iova(
    pd: *mut ibv_pd,
    addr: *mut c_void,
    length: usize,
    iova: u64,
    access: c_int,
) -> *mut ibv_mr {
    // SAFETY: same contract.
    unsafe { ibv_reg_mr_iova2(pd, addr, length, iova, access as c_uint) }
}

/// `ibv_dereg_mr`: after it returns the device never touches the memory.
pub(crate) unsafe extern "C" fn ibv_dereg_mr(mr: *mut ibv_mr) -> c_int {
    if mr.is_null() {
        return status(Err(libc::EINVAL));
    }
    // SAFETY: a region from ibv_reg_mr*, freed once.
    drop(unsafe { Box::from_raw(mr.cast::<Mr>()) });
    0
}

/// `verbs_context::advise_mr`, behind the inline `ibv_advise_mr`.
pub(crate) unsafe extern "C" fn advise_mr(
    pd: *mut ibv_pd,
    advice: ib_uverbs_advise_mr_advice,
    _flags: u32,
    sg_list: *mut ibv_sge,
    num_sge: u32,
) -> c_int {
    // SAFETY: NULL or a live domain.
    let Some(p) = (unsafe { Pd::from_ptr(pd) }) else {
        return libc::EINVAL;
    };
    let advice = match advice {
        ib_uverbs_advise_mr_advice_IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH => Advice::Prefetch,
        ib_uverbs_advise_mr_advice_IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_WRITE => {
            Advice::PrefetchWrite
        }
        ib_uverbs_advise_mr_advice_IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_NO_FAULT => {
            Advice::PrefetchNoFault
        }
        _ => return libc::EOPNOTSUPP,
    };
    if sg_list.is_null() || num_sge == 0 {
        return libc::EINVAL;
    }
    // SAFETY: the caller passes num_sge SGEs.
    let sges = unsafe { std::slice::from_raw_parts(sg_list, num_sge as usize) };
    let sges: Vec<Sge> = sges
        .iter()
        .map(|s| Sge {
            addr: s.addr,
            length: s.length,
            lkey: s.lkey,
        })
        .collect();
    // Synchronous: the pages are present when it returns, which also
    // satisfies IB_UVERBS_ADVISE_MR_FLAG_FLUSH.
    match p.pd.advise_mr(advice, &sges) {
        Ok(()) => 0,
        Err(e) => errno_of(&e),
    }
}
