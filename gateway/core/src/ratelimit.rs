//! Login back-off, per (user, source) pair, per user name and per source address.
//!
//! Pure: the caller passes `now`. Each key counts consecutive failures; the first
//! [`Backoff::free_failures`] cost nothing, each one after doubles the wait from [`Backoff::base`]
//! up to [`Backoff::cap`]. Three maps, with their own schedules ([`Limits::default`]):
//!
//! - the **pair** (this user from this address): two free, then 2 s, 4 s, 8 s, … 900 s. This is
//!   what holds off someone guessing one user's password from one address.
//! - the **user** (from any address): ten free, then the same doubling. It bounds guessing spread
//!   over many addresses, but sits higher so a few typos elsewhere do not lock the user out.
//! - the **source** (any user from this address): twenty free, then the same doubling. It bounds
//!   spraying many user names from one address, but sits high enough that a hospital NAT's
//!   ordinary typos do not lock out everyone behind it.
//!
//! [`LoginLimiter::reserve`] checks and counts an attempt in one step, *before* the credentials
//! are verified, so parallel guesses cannot all pass the check before any is counted: a burst
//! gets exactly what the same attempts one after another would. A success then clears what the
//! attempt counted. A refused attempt counts nothing (it does not extend the wait).
//!
//! The pair's back-off is the attempter's own and always binds. The user's and the source's may
//! have been caused by others (an attacker elsewhere, a colleague behind the same NAT): an attempt
//! that carries a second factor (the user has TOTP and gave a code) is let through them, to be
//! verified in full ([`Reserved::PastOthers`]); only the right password *and* a fresh code then
//! log in, and that success clears only the pair, so the others' back-off stays for the others.
//! Without a second factor the user's and the source's back-off bind as well.
//!
//! An entry idle for [`Backoff::forget_after`] (24 h) is forgotten, and at most
//! [`Backoff::max_keys`] entries are kept per map (the least recently failed go first), so a
//! flood of made-up names or sources cannot grow memory without bound.

use std::collections::HashMap;
use std::hash::Hash;

use time::{Duration, OffsetDateTime};

/// The back-off schedule and memory bounds of one map.
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
    /// Most entries kept in the map.
    pub max_keys: usize,
}

impl Default for Backoff {
    /// The pair's schedule: two free, then 2 s doubling to 900 s.
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

/// The three schedules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// One user from one address (default: 2 free).
    pub pair: Backoff,
    /// One user from anywhere (default: 10 free).
    pub user: Backoff,
    /// Anyone from one address (default: 20 free).
    pub source: Backoff,
}

/// Free failures per user name, from any address.
pub const USER_FREE_FAILURES: u32 = 10;
/// Free failures per address, for any user.
pub const SOURCE_FREE_FAILURES: u32 = 20;

impl Default for Limits {
    fn default() -> Self {
        let pair = Backoff::default();
        Self {
            pair,
            user: Backoff {
                free_failures: USER_FREE_FAILURES,
                ..pair
            },
            source: Backoff {
                free_failures: SOURCE_FREE_FAILURES,
                ..pair
            },
        }
    }
}

impl Limits {
    /// The same schedule for all three maps (tests, benchmarks).
    pub fn uniform(b: Backoff) -> Self {
        Self {
            pair: b,
            user: b,
            source: b,
        }
    }
}

/// How a reserved attempt was let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Reserved {
    /// Nothing was waiting.
    Clear,
    /// The user's or the source's back-off (caused elsewhere) was waiting and the attempt was
    /// let through because it carries a second factor: it must pass password *and* TOTP.
    PastOthers,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last_failure: OffsetDateTime,
}

type Pair = (String, String);

/// Failure counters per (user, source), per user name and per source.
#[derive(Debug, Clone, Default)]
pub struct LoginLimiter {
    limits: Limits,
    pairs: HashMap<Pair, Entry>,
    users: HashMap<String, Entry>,
    sources: HashMap<String, Entry>,
}

impl LoginLimiter {
    /// A limiter with the default schedules.
    pub fn new() -> Self {
        Self::default()
    }

    /// A limiter with other schedules.
    pub fn with_limits(limits: Limits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Check an attempt for `user` from `source` at `now` and, if it may go ahead, count it as a
    /// failure already (a later [`LoginLimiter::success`] takes that back). `second_factor`: the
    /// attempt carries a TOTP code for a user who has TOTP, so it may pass back-off that others
    /// caused. `Err` is how long until it may be tried; a refused attempt counts nothing.
    pub fn reserve(
        &mut self,
        user: &str,
        source: &str,
        second_factor: bool,
        now: OffsetDateTime,
    ) -> Result<Reserved, Duration> {
        let l = self.limits;
        let pair = (user.to_owned(), source.to_owned());
        let own = wait(&self.pairs, &l.pair, &pair, now);
        if own > Duration::ZERO {
            return Err(own);
        }
        let others =
            wait(&self.users, &l.user, user, now).max(wait(&self.sources, &l.source, source, now));
        let reserved = if others == Duration::ZERO {
            Reserved::Clear
        } else if second_factor {
            Reserved::PastOthers
        } else {
            return Err(others);
        };
        bump(&mut self.pairs, &l.pair, pair, now);
        bump(&mut self.users, &l.user, user.to_owned(), now);
        bump(&mut self.sources, &l.source, source.to_owned(), now);
        Ok(reserved)
    }

    /// The attempt reserved as `how` logged in: clear the pair; after a [`Reserved::Clear`]
    /// attempt also the user's and the source's counters. One let past others' back-off leaves
    /// theirs in place, only taking back its own count.
    pub fn success(&mut self, user: &str, source: &str, how: Reserved) {
        self.pairs.remove(&(user.to_owned(), source.to_owned()));
        match how {
            Reserved::Clear => {
                self.users.remove(user);
                self.sources.remove(source);
            }
            Reserved::PastOthers => {
                unbump(&mut self.users, user);
                unbump(&mut self.sources, source);
            }
        }
    }

    /// `Ok` if an attempt without a second factor could be tried now; otherwise the wait.
    /// Counts nothing.
    pub fn check(&self, user: &str, source: &str, now: OffsetDateTime) -> Result<(), Duration> {
        let l = &self.limits;
        let pair = (user.to_owned(), source.to_owned());
        let w = wait(&self.pairs, &l.pair, &pair, now)
            .max(wait(&self.users, &l.user, user, now))
            .max(wait(&self.sources, &l.source, source, now));
        if w > Duration::ZERO {
            Err(w)
        } else {
            Ok(())
        }
    }

    /// Consecutive failures currently counted for a user name from any address.
    pub fn user_failures(&self, user: &str, now: OffsetDateTime) -> u32 {
        live(&self.users, &self.limits.user, user, now).map_or(0, |e| e.failures)
    }

    /// Consecutive failures currently counted for a source, any user.
    pub fn source_failures(&self, source: &str, now: OffsetDateTime) -> u32 {
        live(&self.sources, &self.limits.source, source, now).map_or(0, |e| e.failures)
    }

    /// Consecutive failures currently counted for a user from one source.
    pub fn pair_failures(&self, user: &str, source: &str, now: OffsetDateTime) -> u32 {
        let pair = (user.to_owned(), source.to_owned());
        live(&self.pairs, &self.limits.pair, &pair, now).map_or(0, |e| e.failures)
    }

    /// Entries held (pairs, users, sources), forgotten ones included until they are pruned.
    pub fn len(&self) -> (usize, usize, usize) {
        (self.pairs.len(), self.users.len(), self.sources.len())
    }

    /// True when no entry is held.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty() && self.users.is_empty() && self.sources.is_empty()
    }

    /// Drop entries idle longer than their `forget_after`. Reservations do this themselves when
    /// a map is full; a caller may also run it periodically.
    pub fn prune(&mut self, now: OffsetDateTime) {
        let l = self.limits;
        self.pairs
            .retain(|_, e| !expired(e, l.pair.forget_after, now));
        self.users
            .retain(|_, e| !expired(e, l.user.forget_after, now));
        self.sources
            .retain(|_, e| !expired(e, l.source.forget_after, now));
    }
}

fn live<'a, K, Q>(
    map: &'a HashMap<K, Entry>,
    policy: &Backoff,
    key: &Q,
    now: OffsetDateTime,
) -> Option<&'a Entry>
where
    K: std::borrow::Borrow<Q> + Hash + Eq,
    Q: Hash + Eq + ?Sized,
{
    map.get(key)
        .filter(|e| !expired(e, policy.forget_after, now))
}

fn wait<K, Q>(map: &HashMap<K, Entry>, policy: &Backoff, key: &Q, now: OffsetDateTime) -> Duration
where
    K: std::borrow::Borrow<Q> + Hash + Eq,
    Q: Hash + Eq + ?Sized,
{
    let Some(e) = live(map, policy, key, now) else {
        return Duration::ZERO;
    };
    let until = e.last_failure + policy.delay(e.failures);
    // A clock stepped backwards must not turn into a wait longer than the cap.
    (until - now).clamp(Duration::ZERO, policy.cap)
}

fn expired(e: &Entry, forget_after: Duration, now: OffsetDateTime) -> bool {
    now - e.last_failure >= forget_after
}

fn bump<K: Hash + Eq>(map: &mut HashMap<K, Entry>, policy: &Backoff, key: K, now: OffsetDateTime) {
    if let Some(e) = map.get_mut(&key) {
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
        key,
        Entry {
            failures: 1,
            last_failure: now,
        },
    );
}

/// Take back one reserved count (the attempt turned out to be a success).
fn unbump(map: &mut HashMap<String, Entry>, key: &str) {
    if let Some(e) = map.get_mut(key) {
        e.failures = e.failures.saturating_sub(1);
    }
}

/// Drop forgotten entries; if that frees less than a tenth of the map, also drop the least
/// recently failed entries down to 90 % of `max_keys`. Evicting in batches keeps the cost per
/// failure amortized O(log n) even when every failure brings a new key.
fn make_room<K: Hash + Eq>(map: &mut HashMap<K, Entry>, policy: &Backoff, now: OffsetDateTime) {
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

    /// A wrong attempt without a second factor: reserve and (implicitly) fail.
    fn fail(l: &mut LoginLimiter, user: &str, source: &str, now: OffsetDateTime) {
        let _ = l.reserve(user, source, false, now).unwrap();
    }

    #[test]
    fn schedules() {
        let b = Backoff::default();
        let secs: Vec<i64> = (0..=14).map(|n| b.delay(n).whole_seconds()).collect();
        assert_eq!(
            secs,
            [0, 0, 0, 2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900, 900]
        );
        assert_eq!(b.delay(u32::MAX), Duration::seconds(900));
        let l = Limits::default();
        assert_eq!(l.user.delay(10), Duration::ZERO);
        assert_eq!(l.user.delay(11), Duration::seconds(2));
        assert_eq!(l.source.delay(20), Duration::ZERO);
        assert_eq!(l.source.delay(21), Duration::seconds(2));
    }

    #[test]
    fn two_free_failures_then_growing_waits() {
        let mut l = LoginLimiter::new();
        let now = t0();
        for _ in 0..3 {
            fail(&mut l, "alice", "10.0.0.1", now);
        }
        assert_eq!(
            l.reserve("alice", "10.0.0.1", false, now),
            Err(Duration::seconds(2))
        );
        assert_eq!(
            l.reserve("alice", "10.0.0.1", true, now + Duration::seconds(1)),
            Err(Duration::seconds(1)),
            "a second factor does not pass the pair's own back-off"
        );
        let later = now + Duration::seconds(2);
        fail(&mut l, "alice", "10.0.0.1", later);
        assert_eq!(
            l.check("alice", "10.0.0.1", later),
            Err(Duration::seconds(4))
        );
        assert_eq!(l.pair_failures("alice", "10.0.0.1", later), 4);
        assert_eq!(l.user_failures("alice", later), 4);
        assert_eq!(l.source_failures("10.0.0.1", later), 4);
    }

    #[test]
    fn a_burst_gets_what_one_at_a_time_gets() {
        // All 40 reserved before any is verified (the race of checking before, counting after).
        let mut l = LoginLimiter::new();
        let now = t0();
        let admitted = (0..40)
            .filter(|_| l.reserve("alice", "10.0.0.1", false, now).is_ok())
            .count();
        assert_eq!(admitted, 3);
        // Refused attempts counted nothing.
        assert_eq!(l.pair_failures("alice", "10.0.0.1", now), 3);
        assert_eq!(l.check("alice", "10.0.0.1", now), Err(Duration::seconds(2)));
    }

    #[test]
    fn one_address_does_not_lock_the_user_out_elsewhere() {
        let mut l = LoginLimiter::new();
        let now = t0();
        for _ in 0..40 {
            let _ = l.reserve("alice", "10.0.0.1", false, now);
        }
        assert!(l.check("alice", "10.0.0.1", now).is_err());
        assert_eq!(l.check("alice", "10.0.0.2", now), Ok(()));
    }

    #[test]
    fn user_and_source_limit_independently() {
        let mut l = LoginLimiter::new();
        let now = t0();
        // Guessing one user's password from many addresses: past the user's ceiling (eleven
        // failures from eleven addresses) the next from anywhere waits.
        for i in 0..USER_FREE_FAILURES + 1 {
            fail(&mut l, "alice", &format!("10.0.1.{i}"), now);
        }
        assert_eq!(
            l.reserve("alice", "10.9.9.9", false, now),
            Err(Duration::seconds(2))
        );
        // Other users from those addresses are unaffected.
        assert_eq!(l.check("bob", "10.0.1.1", now), Ok(()));
        // Spraying many user names from one address: past its ceiling the address waits, for
        // every user, and other addresses do not.
        for i in 0..SOURCE_FREE_FAILURES + 1 {
            fail(&mut l, &format!("user{i}"), "192.0.2.7", now);
        }
        assert_eq!(
            l.check("carol", "192.0.2.7", now),
            Err(Duration::seconds(2))
        );
        assert_eq!(l.check("carol", "192.0.2.8", now), Ok(()));
    }

    #[test]
    fn the_source_ceiling_bounds_spraying_but_spares_a_nat() {
        let mut l = LoginLimiter::new();
        let now = t0();
        // A NAT's colleagues mistyping: five users, once each; the others still get in.
        for i in 0..5 {
            fail(&mut l, &format!("nurse{i}"), "192.0.2.7", now);
        }
        assert_eq!(l.check("carol", "192.0.2.7", now), Ok(()));
        // Spraying: past the source's ceiling every user from it waits.
        for i in 5..=SOURCE_FREE_FAILURES {
            fail(&mut l, &format!("nurse{i}"), "192.0.2.7", now);
        }
        assert_eq!(
            l.check("carol", "192.0.2.7", now),
            Err(Duration::seconds(2))
        );
        assert_eq!(l.check("carol", "192.0.2.8", now), Ok(()));
    }

    #[test]
    fn a_second_factor_passes_what_others_caused_and_leaves_it_for_them() {
        let mut l = LoginLimiter::new();
        let now = t0();
        // Twenty wrong guesses from twenty addresses, each with a made-up code (so each is let
        // through and counted even once the user waits).
        for i in 0..20 {
            let _ = l
                .reserve("alice", &format!("10.0.1.{i}"), true, now)
                .unwrap();
        }
        let wait = l.check("alice", "10.0.2.1", now).unwrap_err();
        // Without a second factor: refused, nothing counted.
        assert_eq!(l.reserve("alice", "10.0.2.1", false, now), Err(wait));
        assert_eq!(l.user_failures("alice", now), 20);
        // With one: let through to be verified in full, and counted until it succeeds.
        let how = l.reserve("alice", "10.0.2.1", true, now).unwrap();
        assert_eq!(how, Reserved::PastOthers);
        assert_eq!(l.user_failures("alice", now), 21);
        l.success("alice", "10.0.2.1", how);
        // The success takes back its own count; the back-off others caused stays for them.
        assert_eq!(l.user_failures("alice", now), 20);
        assert_eq!(l.pair_failures("alice", "10.0.2.1", now), 0);
        assert!(l.check("alice", "10.0.3.1", now).is_err());
    }

    #[test]
    fn success_clears_pair_user_and_source() {
        let mut l = LoginLimiter::new();
        let now = t0();
        fail(&mut l, "alice", "10.0.0.1", now);
        fail(&mut l, "alice", "10.0.0.1", now);
        let how = l.reserve("alice", "10.0.0.1", false, now).unwrap();
        assert_eq!(how, Reserved::Clear);
        l.success("alice", "10.0.0.1", how);
        assert_eq!(l.check("alice", "10.0.0.1", now), Ok(()));
        assert!(l.is_empty());
        fail(&mut l, "alice", "10.0.0.1", now);
        assert_eq!(l.user_failures("alice", now), 1);
    }

    #[test]
    fn wait_is_capped_and_entries_forget_after_a_day() {
        let mut l = LoginLimiter::with_limits(Limits::uniform(Backoff::default()));
        let mut now = t0();
        // Forty failures, each after the previous wait ran out.
        for _ in 0..40 {
            let wait = l.check("alice", "10.0.0.1", now).err().unwrap_or_default();
            now += wait;
            fail(&mut l, "alice", "10.0.0.1", now);
        }
        assert_eq!(
            l.check("alice", "10.0.0.1", now),
            Err(Duration::seconds(900))
        );
        let t1 = now + Duration::seconds(900);
        assert_eq!(l.check("alice", "10.0.0.1", t1), Ok(()));
        let t2 = now + Duration::hours(24);
        assert_eq!(l.user_failures("alice", t2), 0);
        fail(&mut l, "alice", "10.0.0.1", t2);
        assert_eq!(l.pair_failures("alice", "10.0.0.1", t2), 1);
        // A clock stepped back an hour still waits no more than the cap.
        let mut at = t2;
        for _ in 0..40 {
            at += l.check("alice", "10.0.0.1", at).err().unwrap_or_default();
            fail(&mut l, "alice", "10.0.0.1", at);
        }
        assert_eq!(
            l.check("alice", "10.0.0.1", at - Duration::hours(1)),
            Err(Duration::seconds(900))
        );
        l.prune(at + Duration::hours(25));
        assert!(l.is_empty());
    }

    #[test]
    fn memory_is_bounded_and_oldest_go_first() {
        let mut l = LoginLimiter::with_limits(Limits::uniform(Backoff {
            max_keys: 100,
            free_failures: 10,
            ..Backoff::default()
        }));
        let now = t0();
        // "target" fails often and recently; it must survive a flood of one-off names.
        for _ in 0..5 {
            fail(
                &mut l,
                "target",
                "198.51.100.1",
                now + Duration::seconds(10_000),
            );
        }
        for i in 0..10_000i64 {
            fail(
                &mut l,
                &format!("junk{i}"),
                &format!("src{i}"),
                now + Duration::seconds(i),
            );
            let (p, u, s) = l.len();
            assert!(p <= 100 && u <= 100 && s <= 100, "{p} {u} {s}");
        }
        let at = now + Duration::seconds(10_000);
        assert_eq!(l.user_failures("target", at), 5);
        assert_eq!(l.user_failures("junk9999", at), 1);
        assert_eq!(l.user_failures("junk0", at), 0);
    }
}
