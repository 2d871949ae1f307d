//! Which sources tell ODP regions that the address space changed, and the
//! policy that starts the userfaultfd monitor.
//!
//! Without a source that sees plain `munmap`, `mremap` and
//! `madvise(MADV_DONTNEED)` calls (a *backstop*: the interposition library
//! or the userfaultfd monitor), an ODP region keeps translations of memory
//! the program has given back; device copies then fail safely, as copy-time
//! checks catch the vanished pages, but nothing invalidates ahead of them.
//! So the first ODP registration of the process starts the monitor, unless
//! the device was opened with [`OdpEvents::None`], or with
//! [`OdpEvents::Auto`] and the environment variable [`ODP_EVENTS_ENV`] set
//! to `none`. Both sources serve the whole process, every device included.

use std::io;
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use odp::AddressSpace;

/// The environment variable that [`OdpEvents::Auto`] consults: `none`
/// opts out of the monitor, `uffd` (or `auto`, or nothing) keeps it.
pub const ODP_EVENTS_ENV: &str = "SRXE_ODP_EVENTS";

/// Which event source a device's ODP registrations start
/// ([`crate::DeviceOptions::odp_events`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OdpEvents {
    /// The library's choice: the userfaultfd monitor, unless
    /// [`ODP_EVENTS_ENV`] says `none`.
    #[default]
    Auto,
    /// The userfaultfd monitor, whatever the environment says.
    Userfaultfd,
    /// Nothing: changes reach ODP regions only through `odp`'s wrappers,
    /// the interposition library if the program preloads it, or a monitor
    /// that something else in the process started.
    None,
}

/// An [`OdpEvents`] spelling other than `auto`, `uffd` or `none`.
#[derive(Debug, thiserror::Error)]
#[error("unknown ODP event source {0:?} (auto, uffd or none)")]
pub struct UnknownOdpEvents(String);

impl FromStr for OdpEvents {
    type Err = UnknownOdpEvents;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(OdpEvents::Auto),
            "uffd" | "userfaultfd" => Ok(OdpEvents::Userfaultfd),
            "none" => Ok(OdpEvents::None),
            _ => Err(UnknownOdpEvents(s.to_owned())),
        }
    }
}

impl OdpEvents {
    /// Whether registrations should start the monitor; `Auto` reads the
    /// environment (an unknown value there keeps the monitor).
    fn wants_userfaultfd(self) -> bool {
        match self {
            OdpEvents::Userfaultfd => true,
            OdpEvents::None => false,
            OdpEvents::Auto => {
                std::env::var(ODP_EVENTS_ENV)
                    .ok()
                    .and_then(|v| v.parse::<OdpEvents>().ok())
                    != Some(OdpEvents::None)
            }
        }
    }
}

/// The event sources active in this process, as
/// [`crate::Context::query_device`] reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OdpEventSources {
    /// `libodp_preload.so` is preloaded: libc's `munmap`, `mremap`,
    /// `madvise`, ... invalidate before they change anything.
    pub interposition: bool,
    /// The userfaultfd monitor runs: unmaps, remaps and discards of faulted
    /// memory invalidate, raw system calls and glibc's own included.
    pub userfaultfd: bool,
    /// Times the kernel refused a userfaultfd when an ODP registration
    /// wanted the monitor.
    pub userfaultfd_refusals: u64,
    /// Why the last refusal happened.
    pub userfaultfd_error: Option<io::ErrorKind>,
    /// ODP registrations (attempted) while no backstop source was active.
    pub unwatched_registrations: u64,
}

impl OdpEventSources {
    /// Whether a source that sees plain libc calls is active (the
    /// interposition library or the monitor); without one, only `odp`'s
    /// wrappers invalidate ahead of a change, and copy-time checks catch
    /// the rest.
    pub fn backstop(&self) -> bool {
        self.interposition || self.userfaultfd
    }

    /// The sources of this process now.
    pub fn current() -> OdpEventSources {
        let aspace = AddressSpace::process();
        OdpEventSources {
            interposition: aspace.interposition_active(),
            userfaultfd: aspace.userfaultfd_stats().is_some(),
            userfaultfd_refusals: REFUSALS.load(Relaxed),
            userfaultfd_error: *LAST_ERROR.lock().unwrap_or_else(|e| e.into_inner()),
            unwatched_registrations: UNWATCHED.load(Relaxed),
        }
    }
}

/// The active backstop sources: `uffd`, `preload`, `uffd+preload` or
/// `none`.
impl std::fmt::Display for OdpEventSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match (self.userfaultfd, self.interposition) {
            (true, true) => "uffd+preload",
            (true, false) => "uffd",
            (false, true) => "preload",
            (false, false) => "none",
        })
    }
}

static REFUSALS: AtomicU64 = AtomicU64::new(0);
static UNWATCHED: AtomicU64 = AtomicU64::new(0);
static LAST_ERROR: Mutex<Option<io::ErrorKind>> = Mutex::new(None);

/// Called for every ODP registration of a device opened with `choice`:
/// starts the monitor if wanted (a refusal is counted, and registration
/// goes on without it), and counts the registration if no backstop is
/// active afterwards.
pub(crate) fn before_odp_registration(choice: OdpEvents) {
    let aspace = AddressSpace::process();
    if aspace.userfaultfd_stats().is_none()
        && choice.wants_userfaultfd()
        && let Err(e) = aspace.enable_userfaultfd()
    {
        REFUSALS.fetch_add(1, Relaxed);
        *LAST_ERROR.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.kind());
    }
    if !aspace.interposition_active() && aspace.userfaultfd_stats().is_none() {
        UNWATCHED.fetch_add(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_parse() {
        assert_eq!("auto".parse::<OdpEvents>().unwrap(), OdpEvents::Auto);
        assert_eq!("uffd".parse::<OdpEvents>().unwrap(), OdpEvents::Userfaultfd);
        assert_eq!("none".parse::<OdpEvents>().unwrap(), OdpEvents::None);
        let err = "always".parse::<OdpEvents>().unwrap_err().to_string();
        assert!(
            err.contains("always") && err.contains("auto, uffd or none"),
            "{err}"
        );
        let both = OdpEventSources {
            userfaultfd: true,
            interposition: true,
            ..OdpEventSources::default()
        };
        assert_eq!(both.to_string(), "uffd+preload");
        assert_eq!(OdpEventSources::default().to_string(), "none");
        assert!(OdpEvents::Userfaultfd.wants_userfaultfd());
        assert!(!OdpEvents::None.wants_userfaultfd());
    }
}
