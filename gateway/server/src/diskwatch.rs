//! Disk-usage watch for the recording disk (IEC 62443-3-3 SR 2.9): an alert before the disk holding
//! `<state_dir>/recordings` is full, then fail closed.
//!
//! Two parts. [`Monitor`] is the pure decision: usage percentages in, [`Level`] transitions out, with
//! hysteresis so a disk hovering at a threshold raises one alert per crossing, not one per tick.
//! [`DiskWatch`] is the driver: it measures through a [`UsageSource`] ([`Statvfs`] on the real
//! filesystem, something else in tests), feeds the monitor, and turns transitions into audit events
//! and warnings. It runs every second ([`DiskWatch::run`]) and again each time a recording is about
//! to be created ([`GuardedSink`]), so a disk that filled between two ticks still alerts before the
//! session it refuses — and a full disk refuses new sessions with a clear reason.
//!
//! Recordings that go to object storage (issue 19) are written to a local spool first. The same
//! watch then measures the spool against its `spool_limit` ([`DiskWatch::spool`]: `spool_high` at
//! [`SPOOL_ALERT_PERCENT`], new sessions refused at the limit, `spool_cleared` when it drains),
//! alongside the spool disk's own watch, and [`watch_object_store`] turns the uploader's view of
//! the object store into `object_store_down` / `object_store_restored` / `recording_upload_conflict`
//! audit events.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ward_ca::Clock;

use crate::audit::{AuditLog, Event};
use crate::recorder::{Sink, SinkFile};

/// How often the background task measures.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// A level is left only once usage is this many percentage points below its threshold.
pub const HYSTERESIS_POINTS: u8 = 2;

/// One measurement of a filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Size of the filesystem in bytes.
    pub total_bytes: u64,
    /// Bytes an unprivileged writer can still use.
    pub available_bytes: u64,
}

impl Usage {
    /// Percent used, rounded up (so "98%" means at least 98% is gone); `None` for a filesystem
    /// that reports no size (nothing to decide on).
    pub fn percent_used(&self) -> Option<u8> {
        if self.total_bytes == 0 {
            return None;
        }
        let total = u128::from(self.total_bytes);
        let used = total.saturating_sub(u128::from(self.available_bytes.min(self.total_bytes)));
        let pct = (used * 100).div_ceil(total);
        u8::try_from(pct.min(100)).ok()
    }
}

/// How full the recording disk is, as far as the gateway is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Below the alert threshold.
    Ok,
    /// At or above the alert threshold: the security team has been told.
    Alert,
    /// At or above the refuse threshold: new sessions are refused.
    Full,
}

/// The two thresholds, in percent used (`alert < refuse`, both 1..=100; the config checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Raise the alert at this usage.
    pub alert_percent: u8,
    /// Refuse new sessions at this usage.
    pub refuse_percent: u8,
}

impl Thresholds {
    /// From the gateway's configured limits.
    pub fn from_limits(l: &ward_core::config::Limits) -> Self {
        Self {
            alert_percent: l.disk_alert_percent,
            refuse_percent: l.disk_refuse_percent,
        }
    }
}

/// A change of level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The level before.
    pub from: Level,
    /// The level now.
    pub to: Level,
    /// The usage that caused it.
    pub percent: u8,
}

/// The pure decision: feed it percentages, it says when the level changes.
#[derive(Debug, Clone)]
pub struct Monitor {
    thresholds: Thresholds,
    level: Level,
}

impl Monitor {
    /// Starts at [`Level::Ok`].
    pub fn new(thresholds: Thresholds) -> Self {
        Self {
            thresholds,
            level: Level::Ok,
        }
    }

    /// The current level.
    pub fn level(&self) -> Level {
        self.level
    }

    /// Take one measurement; returns the transition if the level changed. Rising takes effect at
    /// the threshold; falling only [`HYSTERESIS_POINTS`] below it.
    pub fn observe(&mut self, percent: u8) -> Option<Transition> {
        let t = self.thresholds;
        let mut next = if percent >= t.refuse_percent {
            Level::Full
        } else if percent >= t.alert_percent {
            Level::Alert
        } else {
            Level::Ok
        };
        let held = |threshold: u8| percent.saturating_add(HYSTERESIS_POINTS) >= threshold;
        if self.level == Level::Full && held(t.refuse_percent) {
            next = next.max(Level::Full);
        }
        if self.level >= Level::Alert && held(t.alert_percent) {
            next = next.max(Level::Alert);
        }
        if next == self.level {
            return None;
        }
        let from = std::mem::replace(&mut self.level, next);
        Some(Transition {
            from,
            to: next,
            percent,
        })
    }
}

/// Where usage numbers come from.
pub trait UsageSource: Send + Sync + 'static {
    /// Measure now.
    fn usage(&self) -> io::Result<Usage>;
}

/// The real filesystem holding `path`, via `statvfs(2)`.
#[derive(Debug, Clone)]
pub struct Statvfs {
    path: PathBuf,
}

impl Statvfs {
    /// Watch the filesystem that holds `path`.
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
        }
    }
}

impl UsageSource for Statvfs {
    fn usage(&self) -> io::Result<Usage> {
        // The recordings dir may not exist yet (an injected sink): measure the state dir then.
        let s = match rustix::fs::statvfs(&self.path) {
            Err(rustix::io::Errno::NOENT) => match self.path.parent() {
                Some(parent) => rustix::fs::statvfs(parent),
                None => Err(rustix::io::Errno::NOENT),
            },
            other => other,
        }
        .map_err(io::Error::from)?;
        Ok(Usage {
            total_bytes: s.f_blocks.saturating_mul(s.f_frsize),
            available_bytes: s.f_bavail.saturating_mul(s.f_frsize),
        })
    }
}

/// The spool's alert threshold (percent of `spool_limit`).
pub const SPOOL_ALERT_PERCENT: u8 = 80;

/// Bytes spooled against the spool's limit, as a [`Usage`] (size = the limit).
#[derive(Debug, Clone)]
pub struct SpoolUsage {
    dir: PathBuf,
    limit: u64,
}

impl SpoolUsage {
    /// The spool in `dir`, which may hold `limit` bytes.
    pub fn new(dir: &Path, limit: u64) -> Self {
        Self {
            dir: dir.to_path_buf(),
            limit,
        }
    }
}

impl UsageSource for SpoolUsage {
    fn usage(&self) -> io::Result<Usage> {
        let used = ward_store::s3::spool_bytes(&self.dir)?;
        Ok(Usage {
            total_bytes: self.limit,
            available_bytes: self.limit.saturating_sub(used),
        })
    }
}

/// What a watch measures: the recording disk, or the spool of recordings on their way to
/// object storage.
enum Watched {
    Disk,
    Spool {
        limit: u64,
        remote: String,
        status: tokio::sync::watch::Receiver<ward_store::s3::RemoteStatus>,
    },
}

/// The driver: measures, decides, and reports.
pub struct DiskWatch {
    source: Box<dyn UsageSource>,
    what: String,
    watched: Watched,
    monitor: Mutex<Monitor>,
    audit: AuditLog,
    clock: Arc<dyn Clock>,
    /// Whether the last measurement failed (logged once per failure streak).
    failing: Mutex<bool>,
}

impl std::fmt::Debug for DiskWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskWatch")
            .field("what", &self.what)
            .field("level", &self.level())
            .finish_non_exhaustive()
    }
}

impl DiskWatch {
    /// Watch `source` (described as `what` in events, e.g. the recordings path).
    pub fn new(
        source: Box<dyn UsageSource>,
        what: impl Into<String>,
        thresholds: Thresholds,
        audit: AuditLog,
        clock: Arc<dyn Clock>,
    ) -> Arc<Self> {
        Arc::new(Self {
            source,
            what: what.into(),
            watched: Watched::Disk,
            monitor: Mutex::new(Monitor::new(thresholds)),
            audit,
            clock,
            failing: Mutex::new(false),
        })
    }

    /// Watch a spool against its limit: `spool_high` at [`SPOOL_ALERT_PERCENT`], sessions refused
    /// at the limit (within 1 %: the usage is rounded up to a whole percent).
    pub fn spool(
        info: &ward_store::s3::SpoolInfo,
        audit: AuditLog,
        clock: Arc<dyn Clock>,
    ) -> Arc<Self> {
        Self::spool_from(
            Box::new(SpoolUsage::new(&info.dir, info.limit)),
            info,
            audit,
            clock,
        )
    }

    /// [`DiskWatch::spool`] measured through `source` (tests).
    pub fn spool_from(
        source: Box<dyn UsageSource>,
        info: &ward_store::s3::SpoolInfo,
        audit: AuditLog,
        clock: Arc<dyn Clock>,
    ) -> Arc<Self> {
        Arc::new(Self {
            source,
            what: info.dir.display().to_string(),
            watched: Watched::Spool {
                limit: info.limit,
                remote: info.remote.clone(),
                status: info.status.clone(),
            },
            monitor: Mutex::new(Monitor::new(Thresholds {
                alert_percent: SPOOL_ALERT_PERCENT,
                refuse_percent: 100,
            })),
            audit,
            clock,
            failing: Mutex::new(false),
        })
    }

    /// Why a session is refused at [`Level::Full`].
    fn refusal(&self) -> String {
        match &self.watched {
            Watched::Disk => format!(
                "the recording disk {} is at or above its refuse threshold of {}% used",
                self.what,
                self.monitor
                    .lock()
                    .map(|m| m.thresholds.refuse_percent)
                    .unwrap_or(100)
            ),
            Watched::Spool {
                limit,
                remote,
                status,
            } => {
                let why = status
                    .borrow()
                    .last_error
                    .clone()
                    .map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default();
                format!(
                    "the recording spool {} is at its limit of {limit} bytes (spool_limit): recordings are not leaving it for {remote}{why}; new sessions are refused until the object store takes them",
                    self.what
                )
            }
        }
    }

    /// The level as of the last measurement.
    pub fn level(&self) -> Level {
        self.monitor
            .lock()
            .map(|m| m.level())
            .unwrap_or(Level::Full)
    }

    /// Measure now, update the level, report any crossing; returns the new level. A failed
    /// measurement keeps the previous level (a recording that cannot be written still ends its
    /// session, and one that cannot be created is still refused).
    pub fn check(&self) -> Level {
        let usage = self.source.usage();
        let Ok(mut monitor) = self.monitor.lock() else {
            return Level::Full;
        };
        let percent = match usage {
            Ok(u) => u.percent_used(),
            Err(e) => {
                if let Ok(mut failing) = self.failing.lock() {
                    if !*failing {
                        tracing::warn!(event = "disk_usage_unknown", path = %self.what, reason = %e,
                            "cannot measure the recording disk");
                    }
                    *failing = true;
                }
                return monitor.level();
            }
        };
        if let Ok(mut failing) = self.failing.lock() {
            *failing = false;
        }
        let Some(percent) = percent else {
            return monitor.level();
        };
        let thresholds = monitor.thresholds;
        if let Some(t) = monitor.observe(percent) {
            // Reported under the lock, so events from the ticker and from session opens stay in
            // the order the levels changed.
            self.report(t, thresholds);
        }
        monitor.level()
    }

    fn report(&self, t: Transition, th: Thresholds) {
        if let Watched::Spool { limit, remote, .. } = &self.watched {
            return self.report_spool(t, *limit, remote);
        }
        let now = self.clock.now();
        let base = |event: &str, outcome: &str, severity: &str| {
            Event::new(event, outcome, now)
                .severity(severity)
                .detail("path", self.what.as_str())
                .detail("percent_used", t.percent)
                .detail("alert_percent", th.alert_percent)
                .detail("refuse_percent", th.refuse_percent)
        };
        if t.to > t.from {
            if t.from == Level::Ok {
                let reason = format!(
                    "recording disk {} is {}% full (alert threshold {}%); free space or add capacity before it reaches {}% and new sessions are refused",
                    self.what, t.percent, th.alert_percent, th.refuse_percent
                );
                tracing::warn!(event = "disk_usage_alert", path = %self.what, percent_used = t.percent, "{reason}");
                self.audit
                    .emit(base("disk_usage_alert", "failure", "high").reason(reason));
            }
            if t.to == Level::Full {
                let reason = format!(
                    "recording disk {} is {}% full (refuse threshold {}%): new sessions are refused until space is freed",
                    self.what, t.percent, th.refuse_percent
                );
                tracing::warn!(event = "disk_full", path = %self.what, percent_used = t.percent, "{reason}");
                self.audit
                    .emit(base("disk_full", "failure", "high").reason(reason));
            }
        } else {
            let reason = match t.to {
                Level::Alert => format!(
                    "recording disk {} is down to {}%: new sessions accepted again (still above the {}% alert threshold)",
                    self.what, t.percent, th.alert_percent
                ),
                _ => format!(
                    "recording disk {} is down to {}%, below the {}% alert threshold",
                    self.what, t.percent, th.alert_percent
                ),
            };
            tracing::info!(event = "disk_usage_cleared", path = %self.what, percent_used = t.percent, "{reason}");
            self.audit
                .emit(base("disk_usage_cleared", "success", "warning").reason(reason));
        }
    }

    fn report_spool(&self, t: Transition, limit: u64, remote: &str) {
        let base = |event: &str, outcome: &str, severity: &str| {
            Event::new(event, outcome, self.clock.now())
                .severity(severity)
                .detail("path", self.what.as_str())
                .detail("remote", remote)
                .detail("percent_used", t.percent)
                .detail("spool_limit", limit)
        };
        if t.to > t.from {
            if t.from == Level::Ok {
                let reason = format!(
                    "the recording spool {} is {}% full ({limit} bytes limit): recordings are not reaching {remote} fast enough; at the limit new sessions are refused",
                    self.what, t.percent
                );
                tracing::warn!(event = "spool_high", path = %self.what, percent_used = t.percent, "{reason}");
                self.audit
                    .emit(base("spool_high", "failure", "high").reason(reason));
            }
            if t.to == Level::Full {
                let reason = self.refusal();
                tracing::warn!(event = "spool_full", path = %self.what, percent_used = t.percent, "{reason}");
                self.audit
                    .emit(base("spool_full", "failure", "high").reason(reason));
            }
        } else {
            let reason = format!(
                "the recording spool {} is down to {}% of its limit{}",
                self.what,
                t.percent,
                if t.to == Level::Alert {
                    ": new sessions accepted again"
                } else {
                    ""
                }
            );
            tracing::info!(event = "spool_cleared", path = %self.what, percent_used = t.percent, "{reason}");
            self.audit
                .emit(base("spool_cleared", "success", "warning").reason(reason));
        }
    }

    /// Measure every [`CHECK_EVERY`] until the task is aborted.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // In line, not on the blocking pool: statvfs on a local filesystem takes microseconds,
            // and a once-a-second blocking task would keep up to ten idle blocking-pool threads
            // alive forever (the pool wakes its idle threads in turn, each within its 10 s
            // keep-alive), which the load test counts as threads not returning to baseline.
            self.check();
        }
    }
}

/// A [`Sink`] that refuses to create recordings while the disk (or the spool) is at
/// [`Level::Full`], measuring first — so the refusal carries a clear reason and the alert is
/// always on record before it.
pub struct GuardedSink {
    inner: Arc<dyn Sink>,
    watches: Vec<Arc<DiskWatch>>,
}

impl GuardedSink {
    /// Guard `inner` with `watch`.
    pub fn new(inner: Arc<dyn Sink>, watch: Arc<DiskWatch>) -> Self {
        Self {
            inner,
            watches: vec![watch],
        }
    }

    /// Also refuse while `watch` is full (the spool's limit besides its disk).
    pub fn also(mut self, watch: Arc<DiskWatch>) -> Self {
        self.watches.push(watch);
        self
    }
}

/// The error inside a [`GuardedSink`] refusal (kind `StorageFull`): the full reason, and
/// whether it is the spool's limit rather than a disk, so the session can tell the client which
/// (see [`refused_by_spool`]).
#[derive(Debug)]
pub struct Refusal {
    /// The full reason (paths, limit, the object store's last error): for the audit log.
    pub reason: String,
    /// The spool at its `spool_limit`, not a disk at its refuse threshold.
    pub spool: bool,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for Refusal {}

/// Whether `e` is a [`GuardedSink`] refusal for the spool's limit.
pub fn refused_by_spool(e: &io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<Refusal>())
        .is_some_and(|r| r.spool)
}

impl Sink for GuardedSink {
    fn create(&self, session_id: &str) -> io::Result<Box<dyn SinkFile>> {
        for watch in &self.watches {
            if watch.check() == Level::Full {
                let refusal = Refusal {
                    reason: watch.refusal(),
                    spool: matches!(watch.watched, Watched::Spool { .. }),
                };
                return Err(io::Error::new(io::ErrorKind::StorageFull, refusal));
            }
        }
        self.inner.create(session_id)
    }
}

/// Audit the object store's ups and downs as the spool's uploader sees them: `object_store_down`
/// (high) once per outage with the reason, `object_store_restored` when uploads succeed again, and
/// `recording_upload_conflict` (high) for each recording kept in the spool because the bucket
/// holds a different object under its key. Runs until the uploader is gone.
pub async fn watch_object_store(
    info: ward_store::s3::SpoolInfo,
    audit: AuditLog,
    clock: Arc<dyn Clock>,
) {
    let mut status = info.status.clone();
    let mut down = false;
    let mut conflicts = 0usize;
    loop {
        let now = status.borrow_and_update().clone();
        if !now.reachable && !down {
            down = true;
            let reason = format!(
                "the object store {} does not take recordings ({}): they stay in the spool {} until it does; at its limit new sessions are refused",
                info.remote,
                now.last_error.as_deref().unwrap_or("unknown error"),
                info.dir.display()
            );
            tracing::warn!(event = "object_store_down", remote = %info.remote, "{reason}");
            audit.emit(
                Event::new("object_store_down", "failure", clock.now())
                    .severity("high")
                    .detail("remote", info.remote.as_str())
                    .detail("pending", now.pending)
                    .reason(reason),
            );
        } else if now.reachable && down {
            down = false;
            let reason = format!(
                "the object store {} takes recordings again: the spool drains",
                info.remote
            );
            tracing::info!(event = "object_store_restored", remote = %info.remote, "{reason}");
            audit.emit(
                Event::new("object_store_restored", "success", clock.now())
                    .severity("warning")
                    .detail("remote", info.remote.as_str())
                    .detail("pending", now.pending)
                    .reason(reason),
            );
        }
        for key in now.conflicts.iter().skip(conflicts) {
            audit.emit(
                Event::new("recording_upload_conflict", "failure", clock.now())
                    .severity("high")
                    .detail("remote", info.remote.as_str())
                    .detail("key", key.as_str())
                    .reason(format!(
                        "the bucket holds a different object under {key}: not overwritten; the recording stays in the spool {} for investigation",
                        info.dir.display()
                    )),
            );
        }
        conflicts = now.conflicts.len();
        if status.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds {
        alert_percent: 90,
        refuse_percent: 98,
    };

    fn levels(seq: &[u8]) -> Vec<(u8, Level, bool)> {
        let mut m = Monitor::new(T);
        seq.iter()
            .map(|&p| {
                let changed = m.observe(p).is_some();
                (p, m.level(), changed)
            })
            .collect()
    }

    #[test]
    fn percent_used_rounds_up_and_handles_odd_numbers() {
        let u = |total, available| Usage {
            total_bytes: total,
            available_bytes: available,
        };
        assert_eq!(u(100, 100).percent_used(), Some(0));
        assert_eq!(u(100, 10).percent_used(), Some(90));
        assert_eq!(u(1000, 101).percent_used(), Some(90)); // 89.9% rounds up
        assert_eq!(u(1000, 99).percent_used(), Some(91));
        assert_eq!(u(100, 0).percent_used(), Some(100));
        assert_eq!(u(100, 500).percent_used(), Some(0)); // more free than size: clamp
        assert_eq!(u(0, 0).percent_used(), None);
        assert_eq!(u(u64::MAX, 0).percent_used(), Some(100));
    }

    /// Table: (usage sequence, expected level after each, whether each step changed the level).
    #[test]
    fn levels_rise_at_thresholds_and_fall_with_hysteresis() {
        use Level::*;
        type Case = (&'static str, Vec<u8>, Vec<(Level, bool)>);
        let cases: Vec<Case> = vec![
            (
                "quiet disk",
                vec![10, 50, 89],
                vec![(Ok, false), (Ok, false), (Ok, false)],
            ),
            (
                "alert at exactly the threshold",
                vec![89, 90],
                vec![(Ok, false), (Alert, true)],
            ),
            (
                "one alert while hovering",
                vec![90, 89, 90, 89, 88, 90],
                vec![
                    (Alert, true),
                    (Alert, false),
                    (Alert, false),
                    (Alert, false),
                    (Alert, false),
                    (Alert, false),
                ],
            ),
            (
                "cleared 2 points below, then alerts again",
                vec![90, 87, 90],
                vec![(Alert, true), (Ok, true), (Alert, true)],
            ),
            (
                "full at the refuse threshold",
                vec![90, 97, 98],
                vec![(Alert, true), (Alert, false), (Full, true)],
            ),
            (
                "straight from ok to full",
                vec![50, 99],
                vec![(Ok, false), (Full, true)],
            ),
            (
                "full holds until 2 below refuse",
                vec![98, 97, 96, 95],
                vec![(Full, true), (Full, false), (Full, false), (Alert, true)],
            ),
            (
                "full back to ok in one step",
                vec![100, 40],
                vec![(Full, true), (Ok, true)],
            ),
            (
                "full falls to alert band, held by alert hysteresis",
                vec![99, 88],
                vec![(Full, true), (Alert, true)],
            ),
        ];
        for (name, seq, want) in cases {
            let got: Vec<(Level, bool)> =
                levels(&seq).into_iter().map(|(_, l, c)| (l, c)).collect();
            assert_eq!(got, want, "{name}: {seq:?}");
        }
    }

    #[test]
    fn transitions_name_both_levels_and_the_usage() {
        let mut m = Monitor::new(T);
        assert_eq!(
            m.observe(99),
            Some(Transition {
                from: Level::Ok,
                to: Level::Full,
                percent: 99
            })
        );
        assert_eq!(m.observe(99), None);
    }

    #[test]
    fn thresholds_near_the_edges_do_not_overflow() {
        let mut m = Monitor::new(Thresholds {
            alert_percent: 1,
            refuse_percent: 100,
        });
        assert_eq!(m.observe(0), None);
        assert_eq!(m.observe(1).map(|t| t.to), Some(Level::Alert));
        assert_eq!(m.observe(0), None, "held: 0 + 2 >= 1");
        assert_eq!(m.observe(100).map(|t| t.to), Some(Level::Full));
        assert_eq!(m.observe(99), None, "held: 99 + 2 >= 100");
        assert_eq!(m.observe(97).map(|t| t.to), Some(Level::Alert));
    }

    /// Usage injected by the test.
    struct Fake(Arc<Mutex<io::Result<Usage>>>);

    impl UsageSource for Fake {
        fn usage(&self) -> io::Result<Usage> {
            match &*self.0.lock().unwrap() {
                Ok(u) => Ok(*u),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            }
        }
    }

    struct NullSink;

    impl Sink for NullSink {
        fn create(&self, _: &str) -> io::Result<Box<dyn SinkFile>> {
            struct F;
            impl SinkFile for F {
                fn write_all(&mut self, _: &[u8]) -> io::Result<()> {
                    Ok(())
                }
                fn sync(&mut self) -> io::Result<()> {
                    Ok(())
                }
            }
            Ok(Box::new(F))
        }
    }

    fn used(pct: u64) -> io::Result<Usage> {
        Ok(Usage {
            total_bytes: 1000,
            available_bytes: 1000 - pct * 10,
        })
    }

    #[tokio::test]
    async fn watch_audits_each_crossing_once_and_the_sink_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        let (signer, _) = ward_recording::Signer::generate().unwrap();
        let (audit, writer) =
            AuditLog::open(dir.path(), Arc::new(signer), Arc::new(ward_ca::SystemClock)).unwrap();
        let usage = Arc::new(Mutex::new(used(50)));
        let clock: Arc<dyn Clock> = Arc::new(ward_ca::SystemClock);
        let watch = DiskWatch::new(
            Box::new(Fake(usage.clone())),
            "/fake/recordings",
            T,
            audit.clone(),
            clock,
        );
        let sink = GuardedSink::new(Arc::new(NullSink), watch.clone());
        assert!(sink.create("a").is_ok());
        let set = |r: io::Result<Usage>| *usage.lock().unwrap() = r;
        set(used(91));
        assert_eq!(watch.check(), Level::Alert);
        assert_eq!(watch.check(), Level::Alert);
        assert!(sink.create("b").is_ok(), "alert alone refuses nothing");
        set(Err(io::Error::other("statvfs failed")));
        assert_eq!(
            watch.check(),
            Level::Alert,
            "a failed measurement keeps the level"
        );
        set(used(99));
        let err = sink.create("c").err().expect("full disk must refuse");
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert!(err.to_string().contains("/fake/recordings"), "{err}");
        assert!(sink.create("d").is_err());
        set(used(50));
        assert!(sink.create("e").is_ok());
        drop((sink, watch));
        audit.flush().await;
        drop(audit);
        writer.finish().await.unwrap();
        let log = std::fs::read_to_string(dir.path().join(crate::audit::AUDIT_LOG)).unwrap();
        let events: Vec<String> = log
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v.get("event").and_then(|e| e.as_str()).map(String::from))
            .collect();
        assert_eq!(
            events,
            ["disk_usage_alert", "disk_full", "disk_usage_cleared"],
            "{log}"
        );
        assert!(log.contains("\"severity\":\"high\""), "{log}");
    }
}
