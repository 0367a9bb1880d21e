//! Unauthenticated noise: what reaches the audit log from peers that have not authenticated
//! (requests without a client certificate, failed handshakes).
//!
//! Pure: the caller passes `now`. Time is cut into intervals of [`NoiseLimits::interval`]. In
//! each, the first event of a kind from a source is written as it is ([`Verdict::Write`]); the
//! rest are only counted ([`Verdict::Count`]) and reported once, as a summary per source and
//! kind, when the interval ends ([`NoiseLimiter::flush`]). At most
//! [`NoiseLimits::max_written`] events are written per interval across all sources; beyond that
//! new sources are counted too. A source that sends more than [`NoiseLimits::drop_after`]
//! events in one interval is dropped early ([`Verdict::Drop`], [`NoiseLimiter::is_dropped`])
//! for the rest of that interval and the next. At most [`NoiseLimits::max_sources`] sources are
//! tracked; the rest are counted together, so a flood of sources cannot grow memory.
//!
//! So the audit log grows by at most `max_written + max_sources · kinds` lines per interval,
//! whatever the peers send, and every event is still counted.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use time::{Duration, OffsetDateTime};

/// Bounds on unauthenticated noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoiseLimits {
    /// How long one counting interval lasts.
    pub interval: Duration,
    /// Events written as they are, per interval, across all sources.
    pub max_written: u32,
    /// Events from one source in one interval after which it is dropped early.
    pub drop_after: u32,
    /// Sources tracked one by one; the rest are counted together.
    pub max_sources: usize,
}

impl Default for NoiseLimits {
    fn default() -> Self {
        NoiseLimits {
            interval: Duration::seconds(60),
            max_written: 100,
            drop_after: 100,
            max_sources: 1024,
        }
    }
}

/// What to do with one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write it to the audit log.
    Write,
    /// Count it; the interval's summary reports it.
    Count,
    /// Count it, and drop the peer: its source has sent too much this interval.
    Drop,
}

/// One line of an interval's summary: `count` events of `kind` from `source` (`None`: sources
/// beyond the tracking bound), of which `written` were written as they were.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The source, or `None` for sources counted together.
    pub source: Option<IpAddr>,
    /// The event type.
    pub kind: String,
    /// Events seen in the interval.
    pub count: u64,
    /// Of those, written one by one.
    pub written: u64,
    /// The interval.
    pub from: OffsetDateTime,
    /// Its end (or the flush time, at shutdown).
    pub until: OffsetDateTime,
    /// Whether the source was dropped early.
    pub dropped: bool,
}

#[derive(Debug, Default, Clone)]
struct Counts {
    by_kind: BTreeMap<String, (u64, u64)>,
    total: u64,
}

/// The per-interval counters.
#[derive(Debug)]
pub struct NoiseLimiter {
    limits: NoiseLimits,
    start: Option<OffsetDateTime>,
    written: u32,
    sources: HashMap<IpAddr, Counts>,
    others: Counts,
    /// Sources dropped, until when.
    dropped: HashMap<IpAddr, OffsetDateTime>,
}

impl NoiseLimiter {
    /// A limiter with `limits`.
    pub fn new(limits: NoiseLimits) -> Self {
        NoiseLimiter {
            limits,
            start: None,
            written: 0,
            sources: HashMap::new(),
            others: Counts::default(),
            dropped: HashMap::new(),
        }
    }

    /// Count one event of `kind` from `source` at `now`. The interval starts with its first event
    /// and lasts until [`NoiseLimiter::flush`] ends it: call that regularly (the gateway does
    /// every second).
    pub fn observe(&mut self, source: IpAddr, kind: &str, now: OffsetDateTime) -> Verdict {
        self.start.get_or_insert(now);
        let tracked =
            self.sources.contains_key(&source) || self.sources.len() < self.limits.max_sources;
        let counts = if tracked {
            self.sources.entry(source).or_default()
        } else {
            &mut self.others
        };
        let entry = counts.by_kind.entry(kind.to_owned()).or_insert((0, 0));
        entry.0 += 1;
        counts.total += 1;
        let first_of_kind = entry.0 == 1;
        let over = counts.total > u64::from(self.limits.drop_after);
        let write = first_of_kind && self.written < self.limits.max_written;
        if write {
            entry.1 += 1;
            self.written += 1;
        }
        // Only a source tracked by itself is dropped: the sources counted together are many.
        if over && tracked {
            let until = now + self.limits.interval + self.limits.interval;
            self.dropped.insert(source, until);
            return Verdict::Drop;
        }
        if write {
            Verdict::Write
        } else {
            Verdict::Count
        }
    }

    /// Whether connections from `source` are dropped before any work (it tripped the cap).
    pub fn is_dropped(&self, source: IpAddr, now: OffsetDateTime) -> bool {
        self.dropped.get(&source).is_some_and(|until| now < *until)
    }

    /// Whether the current interval has ended at `now`.
    pub fn due(&self, now: OffsetDateTime) -> bool {
        self.start.is_some_and(|s| now - s >= self.limits.interval)
    }

    /// End the current interval (when [`NoiseLimiter::due`], or at shutdown with `force`) and
    /// return its summary: one line per source and kind with more events than were written.
    pub fn flush(&mut self, now: OffsetDateTime, force: bool) -> Vec<Summary> {
        let Some(from) = self.start else {
            return Vec::new();
        };
        if !force && !self.due(now) {
            return Vec::new();
        }
        let until = if force {
            now
        } else {
            from + self.limits.interval
        };
        let mut out = Vec::new();
        let sources = std::mem::take(&mut self.sources);
        let others = std::mem::take(&mut self.others);
        let rows = sources
            .into_iter()
            .map(|(s, c)| (Some(s), c))
            .chain(std::iter::once((None, others)));
        for (source, counts) in rows {
            let dropped = source.is_some_and(|s| self.dropped.contains_key(&s));
            for (kind, (count, written)) in counts.by_kind {
                if count > written {
                    out.push(Summary {
                        source,
                        kind,
                        count,
                        written,
                        from,
                        until,
                        dropped,
                    });
                }
            }
        }
        out.sort_by(|a, b| (a.source, &a.kind).cmp(&(b.source, &b.kind)));
        self.start = None;
        self.written = 0;
        self.dropped.retain(|_, until| now < *until);
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2026-11-27 16:00 UTC);

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    fn limits() -> NoiseLimits {
        NoiseLimits {
            interval: Duration::seconds(60),
            max_written: 3,
            drop_after: 10,
            max_sources: 4,
        }
    }

    #[test]
    fn first_event_per_source_and_kind_is_written_the_rest_counted_and_summarised() {
        let mut n = NoiseLimiter::new(limits());
        assert_eq!(
            n.observe(ip(1), "unauthenticated_request", T0),
            Verdict::Write
        );
        for _ in 0..5 {
            assert_eq!(
                n.observe(ip(1), "unauthenticated_request", T0),
                Verdict::Count
            );
        }
        assert_eq!(n.observe(ip(1), "handshake_failed", T0), Verdict::Write);
        assert_eq!(
            n.observe(ip(2), "unauthenticated_request", T0),
            Verdict::Write
        );
        assert!(
            n.flush(T0 + Duration::seconds(59), false).is_empty(),
            "not due"
        );
        let s = n.flush(T0 + Duration::seconds(61), false);
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!(s[0].source, Some(ip(1)));
        assert_eq!((s[0].count, s[0].written), (6, 1));
        assert_eq!(s[0].until, T0 + Duration::seconds(60));
        // A new interval writes the first event again.
        let t1 = T0 + Duration::seconds(62);
        assert_eq!(
            n.observe(ip(1), "unauthenticated_request", t1),
            Verdict::Write
        );
    }

    #[test]
    fn written_events_are_capped_across_sources() {
        let mut n = NoiseLimiter::new(limits());
        let verdicts: Vec<_> = (1..=4)
            .map(|i| n.observe(ip(i), "unauthenticated_request", T0))
            .collect();
        assert_eq!(
            verdicts,
            [
                Verdict::Write,
                Verdict::Write,
                Verdict::Write,
                Verdict::Count
            ]
        );
        let s = n.flush(T0, true);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].source, Some(ip(4)));
    }

    #[test]
    fn a_source_over_the_cap_is_dropped_and_others_are_not() {
        let mut n = NoiseLimiter::new(limits());
        let mut last = Verdict::Write;
        for _ in 0..11 {
            last = n.observe(ip(1), "unauthenticated_request", T0);
        }
        assert_eq!(last, Verdict::Drop);
        assert!(n.is_dropped(ip(1), T0 + Duration::seconds(1)));
        assert!(!n.is_dropped(ip(2), T0 + Duration::seconds(1)));
        let s = n.flush(T0 + Duration::seconds(60), false);
        assert!(s[0].dropped && s[0].count == 11);
        // Still dropped in the next interval, forgotten after it.
        assert!(n.is_dropped(ip(1), T0 + Duration::seconds(100)));
        assert!(!n.is_dropped(ip(1), T0 + Duration::seconds(121)));
    }

    #[test]
    fn untracked_sources_are_counted_together_and_memory_stays_bounded() {
        let mut n = NoiseLimiter::new(limits());
        for i in 1..=200u8 {
            n.observe(ip(i), "handshake_failed", T0);
        }
        assert!(n.sources.len() <= 4);
        let s = n.flush(T0, true);
        let others = s.iter().find(|r| r.source.is_none()).unwrap();
        assert_eq!(others.count, 196);
        let total: u64 = s.iter().map(|r| r.count).sum::<u64>() + 3;
        assert_eq!(total, 200, "every event is counted: {s:?}");
    }
}
