//! Protection domains on a verbs device.

use std::ptr::NonNull;
use std::sync::Arc;

use verbs_sys as sys;

use super::{RdmaContext, last_error};
use crate::VerbsError;

/// A protection domain (`ibv_pd`); it keeps its context open.
pub(crate) struct RdmaPd {
    raw: NonNull<sys::ibv_pd>,
    pub(crate) ctx: Arc<RdmaContext>,
}

// SAFETY: verbs objects may be used from any thread; the pointer is freed
// only in Drop.
unsafe impl Send for RdmaPd {}
// SAFETY: as for Send.
unsafe impl Sync for RdmaPd {}

impl RdmaPd {
    /// Allocates a protection domain on `ctx`.
    ///
    /// # Errors
    /// `ibv_alloc_pd` failed.
    pub(crate) fn new(ctx: &Arc<RdmaContext>) -> Result<Arc<RdmaPd>, VerbsError> {
        // SAFETY: a live context.
        let raw = NonNull::new(unsafe { sys::ibv_alloc_pd(ctx.raw()) })
            .ok_or_else(|| last_error("ibv_alloc_pd"))?;
        Ok(Arc::new(RdmaPd {
            raw,
            ctx: Arc::clone(ctx),
        }))
    }

    /// The raw domain, for verbs calls.
    pub(crate) fn raw(&self) -> *mut sys::ibv_pd {
        self.raw.as_ptr()
    }
}

impl Drop for RdmaPd {
    fn drop(&mut self) {
        // Regions and queue pairs keep their domain alive, so none is left.
        // SAFETY: the domain is live and freed once.
        unsafe { sys::ibv_dealloc_pd(self.raw()) };
    }
}
