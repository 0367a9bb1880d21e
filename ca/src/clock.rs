//! Where `now` comes from.

use std::sync::{Arc, Mutex, PoisonError};

use time::{Duration, OffsetDateTime};

/// A source of the current time. Everything in Ward that depends on time takes a `now` that a
/// caller got from a `Clock`, so tests can move time by hand.
pub trait Clock: Send + Sync {
    /// The current time, in UTC.
    fn now(&self) -> OffsetDateTime;
}

impl<C: Clock + ?Sized> Clock for &C {
    fn now(&self) -> OffsetDateTime {
        (**self).now()
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> OffsetDateTime {
        (**self).now()
    }
}

/// The real clock: the only place in Ward that reads the system time.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the one sanctioned reader of the system clock
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that only moves when told to. Clones share the same time, so a test can hand one
/// clone to the code under test and move time with another.
#[derive(Clone, Debug)]
pub struct FixedClock(Arc<Mutex<OffsetDateTime>>);

impl FixedClock {
    /// A clock stopped at `t`.
    pub fn new(t: OffsetDateTime) -> Self {
        Self(Arc::new(Mutex::new(t)))
    }

    /// Move the clock (and every clone of it) to `t`.
    pub fn set(&self, t: OffsetDateTime) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = t;
    }

    /// Move the clock (and every clone of it) by `d`, which may be negative.
    pub fn advance(&self, d: Duration) {
        let mut guard = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *guard += d;
    }
}

impl Clock for FixedClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn fixed_clock_clones_share_time() {
        let a = FixedClock::new(datetime!(2026-01-01 00:00 UTC));
        let b = a.clone();
        a.advance(Duration::minutes(5));
        assert_eq!(b.now(), datetime!(2026-01-01 00:05 UTC));
        b.set(datetime!(2027-01-01 00:00 UTC));
        assert_eq!(a.now(), datetime!(2027-01-01 00:00 UTC));
        let dynamic: &dyn Clock = &a;
        assert_eq!(dynamic.now(), datetime!(2027-01-01 00:00 UTC));
    }

    #[test]
    fn system_clock_is_after_2024() {
        assert!(SystemClock.now() > time::macros::datetime!(2024-01-01 00:00 UTC));
    }
}
