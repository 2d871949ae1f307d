//! Where the engine's timers read the time: the system clock, or, in the
//! engine's deterministic tests, a clock the test advances.

use std::time::Instant;

#[cfg(test)]
use std::sync::{Arc, Mutex, PoisonError};
#[cfg(test)]
use std::time::Duration;

/// The time source of a queue pair's timers.
#[derive(Clone, Debug, Default)]
pub(crate) enum Clock {
    /// `Instant::now()`.
    #[default]
    System,
    /// A clock that moves only when a test moves it.
    #[cfg(test)]
    Manual(Arc<ManualClock>),
}

impl Clock {
    pub(crate) fn now(&self) -> Instant {
        match self {
            Clock::System => Instant::now(),
            #[cfg(test)]
            Clock::Manual(clock) => clock.now(),
        }
    }
}

/// A clock that starts at a fixed instant and moves only by
/// [`ManualClock::advance`].
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct ManualClock {
    base: Instant,
    elapsed: Mutex<Duration>,
}

#[cfg(test)]
impl ManualClock {
    pub(crate) fn new() -> Arc<ManualClock> {
        Arc::new(ManualClock {
            base: Instant::now(),
            elapsed: Mutex::new(Duration::ZERO),
        })
    }

    pub(crate) fn now(&self) -> Instant {
        self.base + *self.elapsed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Moves the clock to `t` (never back).
    pub(crate) fn advance_to(&self, t: Instant) {
        let mut elapsed = self.elapsed.lock().unwrap_or_else(PoisonError::into_inner);
        *elapsed = (*elapsed).max(t.saturating_duration_since(self.base));
    }
}
