//! Login back-off, per user name and per source address.
//!
//! Pure: the caller passes `now`. Each key (a user name in one map, a source in the other)
//! counts consecutive failures; the first [`Backoff::free_failures`] cost nothing, each one after
//! doubles the wait from [`Backoff::base`] up to [`Backoff::cap`] (defaults: two free, then 2 s,
//! 4 s, 8 s, … 900 s). A login is refused while either its user or its source is waiting.
//! Success clears both. An entry idle for [`Backoff::forget_after`] (24 h) is forgotten, and at
//! most [`Backoff::max_keys`] entries are kept per map (the least recently failed go first), so
//! a flood of made-up names or sources cannot grow memory without bound.
//!
//! Call [`LoginLimiter::check`] before checking credentials, and [`LoginLimiter::failure`] only
//! after a check passed and the credentials were then wrong: refused attempts do not extend the
//! wait. A per-user limit lets anyone delay one user's logins by up to the cap; that is the price
//! of stopping password guessing spread over many sources.

use std::collections::HashMap;

use time::{Duration, OffsetDateTime};

/// The back-off schedule and memory bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Consecutive failures allowed without any wait.
    pub free_failures: u32,
    /// Wait after the first failure beyond the free ones; doubles with each further failure.
    pub base: Duration,
    /// Longest wait.
    pub cap: Duration,
    /// An entry with no failure for this long is forgotten.
    pub forget_after: Duration,
    /// Most entries kept per map (users, sources).
    pub max_keys: usize,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            free_failures: 2,
            base: Duration::seconds(2),
            cap: Duration::seconds(900),
            forget_after: Duration::hours(24),
            max_keys: 100_000,
        }
    }
}

impl Backoff {
    /// The wait after `failures` consecutive failures.
    pub fn delay(&self, failures: u32) -> Duration {
        let Some(extra) = failures.checked_sub(self.free_failures + 1) else {
            return Duration::ZERO;
        };
        // base · 2^extra, saturating well before overflow.
        let factor = 1i32.checked_shl(extra.min(30)).unwrap_or(i32::MAX);
        self.base
            .checked_mul(factor)
            .map_or(self.cap, |d| d.min(self.cap))
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last_failure: OffsetDateTime,
}

/// Failure counters per user name and per source.
#[derive(Debug, Clone, Default)]
pub struct LoginLimiter {
    policy: Backoff,
    users: HashMap<String, Entry>,
    sources: HashMap<String, Entry>,
}

impl LoginLimiter {
    /// A limiter with the default schedule.
    pub fn new() -> Self {
        Self::default()
    }

    /// A limiter with another schedule.
    pub fn with_policy(policy: Backoff) -> Self {
        Self {
            policy,
            ..Self::default()
        }
    }

    /// `Ok` if a login for `user` from `source` may be tried at `now`; otherwise how long until
    /// it may (the longer of the user's and the source's waits).
    pub fn check(&self, user: &str, source: &str, now: OffsetDateTime) -> Result<(), Duration> {
        let wait = self
            .wait(&self.users, user, now)
            .max(self.wait(&self.sources, source, now));
        if wait > Duration::ZERO {
            Err(wait)
        } else {
            Ok(())
        }
    }

    /// Record a failed login (wrong password or code, unknown or disabled user).
    pub fn failure(&mut self, user: &str, source: &str, now: OffsetDateTime) {
        let policy = self.policy;
        bump(&mut self.users, &policy, user, now);
        bump(&mut self.sources, &policy, source, now);
    }

    /// Record a successful login: clears the user's and the source's counters.
    pub fn success(&mut self, user: &str, source: &str) {
        self.users.remove(user);
        self.sources.remove(source);
    }

    /// Consecutive failures currently counted for a user name (0 if none or forgotten).
    pub fn user_failures(&self, user: &str, now: OffsetDateTime) -> u32 {
        self.live(&self.users, user, now).map_or(0, |e| e.failures)
    }

    /// Consecutive failures currently counted for a source (0 if none or forgotten).
    pub fn source_failures(&self, source: &str, now: OffsetDateTime) -> u32 {
        self.live(&self.sources, source, now)
            .map_or(0, |e| e.failures)
    }

    /// Entries held (users, sources), forgotten ones included until they are pruned.
    pub fn len(&self) -> (usize, usize) {
        (self.users.len(), self.sources.len())
    }

    /// True when no entry is held.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.sources.is_empty()
    }

    /// Drop entries idle longer than `forget_after`. `failure` does this itself when a map is
    /// full; a caller may also run it periodically.
    pub fn prune(&mut self, now: OffsetDateTime) {
        let forget = self.policy.forget_after;
        self.users.retain(|_, e| !expired(e, forget, now));
        self.sources.retain(|_, e| !expired(e, forget, now));
    }

    fn live<'a>(
        &self,
        map: &'a HashMap<String, Entry>,
        key: &str,
        now: OffsetDateTime,
    ) -> Option<&'a Entry> {
        map.get(key)
            .filter(|e| !expired(e, self.policy.forget_after, now))
    }

    fn wait(&self, map: &HashMap<String, Entry>, key: &str, now: OffsetDateTime) -> Duration {
        let Some(e) = self.live(map, key, now) else {
            return Duration::ZERO;
        };
        let until = e.last_failure + self.policy.delay(e.failures);
        // A clock stepped backwards must not turn into a wait longer than the cap.
        (until - now).clamp(Duration::ZERO, self.policy.cap)
    }
}

fn expired(e: &Entry, forget_after: Duration, now: OffsetDateTime) -> bool {
    now - e.last_failure >= forget_after
}

fn bump(map: &mut HashMap<String, Entry>, policy: &Backoff, key: &str, now: OffsetDateTime) {
    if let Some(e) = map.get_mut(key) {
        if expired(e, policy.forget_after, now) {
            e.failures = 0;
        }
        e.failures = e.failures.saturating_add(1);
        e.last_failure = e.last_failure.max(now);
        return;
    }
    if map.len() >= policy.max_keys {
        make_room(map, policy, now);
    }
    map.insert(
        key.to_owned(),
        Entry {
            failures: 1,
            last_failure: now,
        },
    );
}

/// Drop forgotten entries; if that frees less than a tenth of the map, also drop the least
/// recently failed entries down to 90 % of `max_keys`. Evicting in batches keeps the cost per
/// failure amortized O(log n) even when every failure brings a new key.
fn make_room(map: &mut HashMap<String, Entry>, policy: &Backoff, now: OffsetDateTime) {
    map.retain(|_, e| !expired(e, policy.forget_after, now));
    let target = policy.max_keys.saturating_sub(policy.max_keys.div_ceil(10));
    if map.len() <= target {
        return;
    }
    let mut times: Vec<OffsetDateTime> = map.values().map(|e| e.last_failure).collect();
    let drop = map.len() - target;
    // The `drop`-th oldest time: entries at or before it go (ties may take a few more).
    times.select_nth_unstable(drop - 1);
    if let Some(&cutoff) = times.get(drop - 1) {
        map.retain(|_, e| e.last_failure > cutoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    #[test]
    fn schedule() {
        let b = Backoff::default();
        let secs: Vec<i64> = (0..=14).map(|n| b.delay(n).whole_seconds()).collect();
        assert_eq!(
            secs,
            [0, 0, 0, 2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900, 900]
        );
        assert_eq!(b.delay(u32::MAX), Duration::seconds(900));
    }

    #[test]
    fn two_free_failures_then_growing_waits() {
        let mut l = LoginLimiter::new();
        let now = t0();
        l.failure("alice", "10.0.0.1", now);
        l.failure("alice", "10.0.0.1", now);
        assert_eq!(l.check("alice", "10.0.0.1", now), Ok(()));
        l.failure("alice", "10.0.0.1", now);
        assert_eq!(l.check("alice", "10.0.0.1", now), Err(Duration::seconds(2)));
        assert_eq!(
            l.check("alice", "10.0.0.1", now + Duration::seconds(1)),
            Err(Duration::seconds(1))
        );
        let later = now + Duration::seconds(2);
        assert_eq!(l.check("alice", "10.0.0.1", later), Ok(()));
        l.failure("alice", "10.0.0.1", later);
        assert_eq!(
            l.check("alice", "10.0.0.1", later),
            Err(Duration::seconds(4))
        );
        assert_eq!(l.user_failures("alice", later), 4);
        assert_eq!(l.source_failures("10.0.0.1", later), 4);
    }

    #[test]
    fn user_and_source_limit_independently() {
        let mut l = LoginLimiter::new();
        let now = t0();
        // Guessing one user's password from many sources: the user waits.
        for i in 0..5 {
            l.failure("alice", &format!("10.0.0.{i}"), now);
        }
        assert_eq!(l.check("alice", "10.9.9.9", now), Err(Duration::seconds(8)));
        // Other users from those sources are unaffected (each source failed once).
        assert_eq!(l.check("bob", "10.0.0.1", now), Ok(()));
        // Spraying many user names from one source: the source waits.
        for i in 0..5 {
            l.failure(&format!("user{i}"), "192.0.2.7", now);
        }
        assert_eq!(
            l.check("carol", "192.0.2.7", now),
            Err(Duration::seconds(8))
        );
        assert_eq!(l.check("carol", "192.0.2.8", now), Ok(()));
        // Both waiting: the longer wait wins.
        assert_eq!(
            l.check("alice", "192.0.2.7", now),
            Err(Duration::seconds(8))
        );
        l.failure("alice", "10.0.0.9", now);
        assert_eq!(
            l.check("alice", "192.0.2.7", now),
            Err(Duration::seconds(16))
        );
    }

    #[test]
    fn success_clears_user_and_source() {
        let mut l = LoginLimiter::new();
        let now = t0();
        for _ in 0..6 {
            l.failure("alice", "10.0.0.1", now);
        }
        assert!(l.check("alice", "10.0.0.1", now).is_err());
        l.success("alice", "10.0.0.1");
        assert_eq!(l.check("alice", "10.0.0.1", now), Ok(()));
        assert_eq!(l.user_failures("alice", now), 0);
        assert!(l.is_empty());
        // Counting starts again from zero.
        l.failure("alice", "10.0.0.1", now);
        assert_eq!(l.user_failures("alice", now), 1);
    }

    #[test]
    fn wait_is_capped_and_entries_forget_after_a_day() {
        let mut l = LoginLimiter::new();
        let now = t0();
        for _ in 0..40 {
            l.failure("alice", "10.0.0.1", now);
        }
        assert_eq!(
            l.check("alice", "10.0.0.1", now),
            Err(Duration::seconds(900))
        );
        assert_eq!(
            l.check("alice", "10.0.0.1", now + Duration::seconds(900)),
            Ok(())
        );
        // A failure after the wait keeps the count: the next wait is the cap again.
        let t1 = now + Duration::seconds(900);
        l.failure("alice", "10.0.0.1", t1);
        assert_eq!(
            l.check("alice", "10.0.0.1", t1),
            Err(Duration::seconds(900))
        );
        // A day later the count is gone: the next failure is the first again.
        let t2 = t1 + Duration::hours(24);
        assert_eq!(l.user_failures("alice", t2), 0);
        l.failure("alice", "10.0.0.1", t2);
        assert_eq!(l.user_failures("alice", t2), 1);
        assert_eq!(l.check("alice", "10.0.0.1", t2), Ok(()));
        // A clock stepped back an hour still waits no more than the cap.
        for _ in 0..40 {
            l.failure("alice", "10.0.0.1", t2);
        }
        assert_eq!(
            l.check("alice", "10.0.0.1", t2 - Duration::hours(1)),
            Err(Duration::seconds(900))
        );
        l.prune(t2 + Duration::hours(25));
        assert!(l.is_empty());
    }

    #[test]
    fn memory_is_bounded_and_oldest_go_first() {
        let mut l = LoginLimiter::with_policy(Backoff {
            max_keys: 100,
            ..Backoff::default()
        });
        let now = t0();
        // "target" fails often and recently; it must survive a flood of one-off names.
        for _ in 0..5 {
            l.failure("target", "198.51.100.1", now + Duration::seconds(10_000));
        }
        for i in 0..10_000i64 {
            l.failure(
                &format!("junk{i}"),
                &format!("src{i}"),
                now + Duration::seconds(i),
            );
            let (u, s) = l.len();
            assert!(u <= 100 && s <= 100, "{u} {s}");
        }
        let at = now + Duration::seconds(10_000);
        assert_eq!(l.user_failures("target", at), 5);
        assert!(l.check("target", "elsewhere", at).is_err());
        // The newest junk entries are still there, the oldest are gone.
        assert_eq!(l.user_failures("junk9999", at), 1);
        assert_eq!(l.user_failures("junk0", at), 0);
    }
}
