//! The audit log writer: one JSON object per line in `<state_dir>/audit.log`, hash-chained and signed
//! by `ward_recording::audit::AuditChain`, written by one task fed through a bounded channel, with
//! fsync batched (at most [`SYNC_EVERY`] behind). Every event is also a tracing event (target
//! `audit`), so it reaches stderr logs and, with `--otlp-endpoint`, the OpenTelemetry pipeline.
//!
//! **The gate (SR 2.10).** An audited operation's answer leaves the gateway only after
//! [`AuditLog::commit`] (or, on the session-open path, [`AuditLog::written`]) said every event
//! emitted before it is in the file. When a write or fsync fails the writer does not give up: it
//! cuts the file back to its last good line, answers every barrier with [`AuditUnavailable`] (so
//! every audited operation is refused), counts what it could not write, and retries every
//! [`RETRY_EVERY`]; once a write succeeds again it first writes an `audit_gap` event saying what
//! was lost and from when to when. A torn last line found at start is saved aside and reported
//! (`audit_log_torn`), never silently dropped.
//!
//! **The tail is signed on a quiet gateway:** whenever the writer has been idle for [`SYNC_EVERY`]
//! with unsigned lines, it writes a checkpoint and fsyncs, so `ward audit verify` on a live gateway
//! fails only for lines younger than that.

use std::collections::BTreeMap;
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use ward_ca::Clock;
use ward_recording::audit::{rfc3339_ms, AuditChain, AuditEvent, AuditPrincipal};
use ward_recording::{CheckpointPolicy, PublicKeys, Signer};

use crate::anchors::Anchors;

/// The audit log file name inside the state dir.
pub const AUDIT_LOG: &str = "audit.log";

/// How far durability may lag: the writer fsyncs (and signs the tail) at least this often while it
/// has unsynced lines, and at once when it has been idle this long.
pub const SYNC_EVERY: Duration = Duration::from_millis(500);

/// While the log cannot be written, how often the writer tries again.
pub const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Builder for one audit event.
#[derive(Debug, Clone)]
pub struct Event(pub AuditEvent);

impl Event {
    /// The same event, stamped `now` (a template built ahead, emitted later).
    pub fn at(mut self, now: OffsetDateTime) -> Self {
        self.0.time = rfc3339_ms(now);
        self
    }

    /// A new event of type `event` with `outcome` (success | failure | denied) at `now`.
    pub fn new(event: &str, outcome: &str, now: OffsetDateTime) -> Self {
        Event(AuditEvent {
            time: rfc3339_ms(now),
            event: event.into(),
            outcome: outcome.into(),
            severity: "info".into(),
            principal: None,
            source: None,
            device: None,
            session_id: None,
            reason: None,
            detail: Default::default(),
        })
    }
    /// Who.
    pub fn principal(mut self, id: &ward_ca::Identity) -> Self {
        self.0.principal = Some(AuditPrincipal {
            name: id.name.clone(),
            kind: id.kind.to_string(),
            org: id.org.clone(),
            serial: id.serial.clone(),
        });
        self
    }
    /// Who, for events before a certificate exists (login): the user's kind, name and org.
    pub fn user(mut self, kind: &str, name: &str, org: Option<&str>) -> Self {
        self.0.principal = Some(AuditPrincipal {
            name: name.to_owned(),
            kind: kind.to_owned(),
            org: org.map(str::to_owned),
            serial: String::new(),
        });
        self
    }
    /// From where.
    pub fn source(mut self, s: impl ToString) -> Self {
        self.0.source = Some(s.to_string());
        self
    }
    /// Which device.
    pub fn device(mut self, d: impl Into<String>) -> Self {
        self.0.device = Some(d.into());
        self
    }
    /// Which session.
    pub fn session(mut self, s: impl Into<String>) -> Self {
        self.0.session_id = Some(s.into());
        self
    }
    /// Why.
    pub fn reason(mut self, r: impl Into<String>) -> Self {
        self.0.reason = Some(r.into());
        self
    }
    /// Severity (info | warning | high).
    pub fn severity(mut self, s: &str) -> Self {
        self.0.severity = s.into();
        self
    }
    /// An extra detail field.
    pub fn detail(mut self, k: &str, v: impl Into<serde_json::Value>) -> Self {
        self.0.detail.insert(k.into(), v.into());
        self
    }
}

/// The audit log cannot be written: the operation waiting on it must be refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the gateway cannot write its audit log ({0}); every audited operation is refused until it can (fail closed): tell the security team")]
pub struct AuditUnavailable(pub String);

/// Handle for emitting audit events; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
    dropped: Arc<AtomicU64>,
    healthy: Arc<AtomicBool>,
    path: PathBuf,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .finish()
    }
}

type Ack = oneshot::Sender<Result<(), AuditUnavailable>>;

enum Msg {
    Event(Box<AuditEvent>),
    /// Key rotation: checkpoint what the old key has not signed yet, then sign with this one.
    Rotate {
        signer: Arc<Signer>,
        ack: Ack,
    },
    /// A barrier: answered once every event before it is written (and fsynced when `sync`).
    Barrier {
        sync: bool,
        ack: Ack,
    },
}

/// The writer task; await [`AuditWriter::finish`] after dropping every [`AuditLog`] to flush.
pub struct AuditWriter {
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl AuditWriter {
    /// Wait for the writer to drain, checkpoint and fsync.
    pub async fn finish(self) -> anyhow::Result<()> {
        self.task.await.context("audit writer panicked")?
    }
}

fn trace(ev: &AuditEvent) {
    let principal = ev
        .principal
        .as_ref()
        .map(|p| format!("{} {}", p.kind, p.name));
    // A span of its own, so the event reaches OpenTelemetry (as a span with one event) even when it
    // happens outside a session, e.g. a failed handshake.
    let span = tracing::info_span!(target: "audit", "audit_event", event = %ev.event, outcome = %ev.outcome, severity = %ev.severity);
    let _entered = span.enter();
    macro_rules! emit {
        ($lvl:ident) => {
            tracing::$lvl!(target: "audit", event = %ev.event, outcome = %ev.outcome, severity = %ev.severity,
                principal = principal.as_deref(), source = ev.source.as_deref(), device = ev.device.as_deref(),
                session_id = ev.session_id.as_deref(), reason = ev.reason.as_deref(), "audit")
        };
    }
    match ev.severity.as_str() {
        "high" | "warning" => emit!(warn),
        _ => emit!(info),
    }
}

/// What [`AuditLog::open`] found in an existing log, reported as events once the writer runs.
fn resume_events(
    path: &Path,
    existing: &[u8],
    keep: u64,
    unsigned: u64,
    now: OffsetDateTime,
) -> anyhow::Result<Vec<Event>> {
    let mut out = Vec::new();
    let torn = existing.get(usize::try_from(keep).unwrap_or(usize::MAX)..);
    if let Some(torn) = torn.filter(|t| !t.is_empty()) {
        // Keep the evidence: the torn bytes go to a file of their own before the log is cut.
        let aside = path.with_extension(format!("log.torn-{}", now.unix_timestamp()));
        write_private(&aside, torn)?;
        out.push(
            Event::new("audit_log_torn", "failure", now)
                .severity("high")
                .reason(format!(
                    "the audit log ended in an incomplete line ({} bytes after line {}): the gateway \
                     stopped while writing it, or the disk was full; the bytes were saved to {} and \
                     the event they held is lost",
                    torn.len(),
                    existing.iter().filter(|b| **b == b'\n').count(),
                    aside.display()
                ))
                .detail("torn_bytes", torn.len())
                .detail("saved_to", aside.display().to_string()),
        );
    }
    if unsigned > 0 {
        out.push(
            Event::new("audit_log_resumed", "success", now)
                .severity("warning")
                .reason(format!(
                    "{unsigned} line(s) at the end of the audit log were not yet covered by a \
                     signed checkpoint when the gateway stopped; their hash chain verifies and \
                     the next checkpoint signs them"
                ))
                .detail("unsigned_lines", unsigned),
        );
    }
    Ok(out)
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

impl AuditLog {
    /// Open (or continue) `<state_dir>/audit.log`: verify the existing prefix, save and report a
    /// torn last line, and start the writer.
    pub fn open(
        state_dir: &Path,
        signer: Arc<Signer>,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<(AuditLog, AuditWriter)> {
        let public = signer.public_key();
        Self::open_with(state_dir, &public, signer, clock, None)
    }

    /// [`AuditLog::open`] of a log whose checkpoints may be signed by any of `keys` (the keyring,
    /// after rotations), publishing every checkpoint it writes to `anchors`.
    pub fn open_with<K: PublicKeys + ?Sized>(
        state_dir: &Path,
        keys: &K,
        signer: Arc<Signer>,
        clock: Arc<dyn Clock>,
        anchors: Option<Anchors>,
    ) -> anyhow::Result<(AuditLog, AuditWriter)> {
        let path = state_dir.join(AUDIT_LOG);
        let existing = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let policy = CheckpointPolicy::default();
        let (chain, keep) = if existing.is_empty() {
            (AuditChain::new(signer, policy), 0)
        } else {
            AuditChain::resume_keys(&existing, keys, signer, policy).with_context(|| {
                format!(
                    "{} does not verify; move it aside and investigate",
                    path.display()
                )
            })?
        };
        let found = resume_events(&path, &existing, keep, chain.unsigned_lines(), clock.now())?;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(false)
            .write(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // Also tighten a log created by an older version with the umask's mode.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("setting mode 0600 on {}", path.display()))?;
        file.set_len(keep)
            .with_context(|| format!("cutting a torn line off {}", path.display()))?;
        let (tx, rx) = mpsc::channel(16 * 1024);
        let healthy = Arc::new(AtomicBool::new(true));
        let writer = Writer {
            file: Some(file),
            len: keep,
            chain,
            healthy: healthy.clone(),
            clock,
            start: Instant::now(),
            last_sync: Instant::now(),
            dirty: false,
            outage: None,
            lost_since_barrier: false,
            anchors,
        };
        let log = AuditLog {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
            healthy,
            path,
        };
        for ev in found {
            log.emit(ev);
        }
        let task = tokio::spawn(writer.run(rx));
        Ok((log, AuditWriter { task }))
    }

    /// Emit an event without waiting. If the writer is overwhelmed the event is counted as dropped
    /// and a later `audit_overflow` event says how many. An operation that must not answer before
    /// its events are in the log follows its events with [`AuditLog::commit`].
    pub fn emit(&self, ev: Event) {
        trace(&ev.0);
        let dropped = self.dropped.swap(0, Ordering::AcqRel);
        if dropped > 0 {
            let note = Event::new("audit_overflow", "failure", OffsetDateTime::UNIX_EPOCH)
                .severity("high")
                .reason(format!(
                    "{dropped} audit events dropped: writer overwhelmed"
                ));
            let mut note = note.0;
            note.time = ev.0.time.clone();
            if self.tx.try_send(Msg::Event(Box::new(note))).is_err() {
                self.dropped.fetch_add(dropped, Ordering::AcqRel);
            }
        }
        if self.tx.try_send(Msg::Event(Box::new(ev.0))).is_err() {
            self.dropped.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Emit an event and wait until the writer has it (for events that must not be lost).
    pub async fn emit_wait(&self, ev: Event) {
        trace(&ev.0);
        let _ = self.tx.send(Msg::Event(Box::new(ev.0))).await;
    }

    /// The gate: returns once every event emitted before it is written, checkpointed and fsynced,
    /// or with [`AuditUnavailable`] when that cannot be done (the caller then refuses its
    /// operation). Events dropped by an overwhelmed writer fail it too.
    pub async fn commit(&self) -> Result<(), AuditUnavailable> {
        self.barrier(true).await
    }

    /// The light gate for the session-open path: every event emitted before it is in the file
    /// (fsynced at most [`SYNC_EVERY`] later), or [`AuditUnavailable`].
    pub async fn written(&self) -> Result<(), AuditUnavailable> {
        self.barrier(false).await
    }

    async fn barrier(&self, sync: bool) -> Result<(), AuditUnavailable> {
        if self.dropped.load(Ordering::Acquire) > 0 {
            return Err(AuditUnavailable(
                "audit events were dropped: the writer is overwhelmed".into(),
            ));
        }
        let (ack, rx) = oneshot::channel();
        let gone = || AuditUnavailable("the audit writer has stopped".into());
        self.tx
            .send(Msg::Barrier { sync, ack })
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Key rotation: every line emitted before is signed (checkpointed and fsynced) with the old
    /// key, then the writer signs with `signer`. Returns once the writer has switched; an error
    /// if the old key's checkpoint could not be written (the writer has switched anyway, and the
    /// next checkpoint signs those lines with the new key).
    pub async fn rotate(&self, signer: Arc<Signer>) -> Result<(), AuditUnavailable> {
        let (ack, rx) = oneshot::channel();
        let gone = || AuditUnavailable("the audit writer has stopped".into());
        self.tx
            .send(Msg::Rotate { signer, ack })
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// A handle that does not keep the writer running (for tasks the writer itself feeds).
    pub fn downgrade(&self) -> WeakAuditLog {
        WeakAuditLog {
            tx: self.tx.downgrade(),
            dropped: self.dropped.clone(),
            healthy: self.healthy.clone(),
            path: self.path.clone(),
        }
    }

    /// Checkpoint and fsync everything emitted so far (at shutdown; errors are the writer's to
    /// report).
    pub async fn flush(&self) {
        let _ = self.commit().await;
    }

    /// False while the audit log cannot be written: the gateway then refuses new sessions and
    /// every audited operation.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// An [`AuditLog`] that does not keep the writer open.
#[derive(Clone)]
pub struct WeakAuditLog {
    tx: mpsc::WeakSender<Msg>,
    dropped: Arc<AtomicU64>,
    healthy: Arc<AtomicBool>,
    path: PathBuf,
}

impl WeakAuditLog {
    /// The log, while the writer still runs.
    pub fn upgrade(&self) -> Option<AuditLog> {
        Some(AuditLog {
            tx: self.tx.upgrade()?,
            dropped: self.dropped.clone(),
            healthy: self.healthy.clone(),
            path: self.path.clone(),
        })
    }
}

/// What could not be written while the log was down, for the `audit_gap` event.
struct Outage {
    since: OffsetDateTime,
    error: String,
    lost: BTreeMap<String, u64>,
    last_try: Instant,
}

impl Outage {
    fn lose(&mut self, events: &[AuditEvent]) {
        for ev in events {
            *self.lost.entry(ev.event.clone()).or_insert(0) += 1;
        }
    }

    fn gap_event(&self, now: OffsetDateTime) -> AuditEvent {
        let lost: u64 = self.lost.values().sum();
        let by_type: serde_json::Map<String, serde_json::Value> = self
            .lost
            .iter()
            .map(|(k, v)| (k.clone(), (*v).into()))
            .collect();
        Event::new("audit_gap", "failure", now)
            .severity("high")
            .reason(format!(
                "the audit log could not be written from {} to {} ({}); {lost} event(s) in that \
                 time were lost, and every audited operation was refused meanwhile",
                rfc3339_ms(self.since),
                rfc3339_ms(now),
                self.error
            ))
            .detail("from", rfc3339_ms(self.since))
            .detail("until", rfc3339_ms(now))
            .detail("lost", lost)
            .detail("lost_events", serde_json::Value::Object(by_type))
            .detail("error", self.error.clone())
            .0
    }
}

/// One batch taken off the channel.
#[derive(Default)]
struct Batch {
    events: Vec<AuditEvent>,
    acks: Vec<Ack>,
    sync: bool,
    /// The channel closed: drain, sign, fsync and stop.
    closed: bool,
    /// Nothing arrived for [`SYNC_EVERY`].
    idle: bool,
    /// A key rotation ends the batch: after its events are signed with the old key.
    rotate: Option<Arc<Signer>>,
}

impl Batch {
    fn take(&mut self, m: Msg) {
        match m {
            Msg::Event(ev) => self.events.push(*ev),
            Msg::Barrier { sync, ack } => {
                self.sync |= sync;
                self.acks.push(ack);
            }
            Msg::Rotate { signer, ack } => {
                self.sync = true;
                self.acks.push(ack);
                self.rotate = Some(signer);
            }
        }
    }

    fn answer(self, r: &Result<(), AuditUnavailable>) {
        for ack in self.acks {
            let _ = ack.send(r.clone());
        }
    }
}

struct Writer {
    file: Option<std::fs::File>,
    len: u64,
    chain: AuditChain,
    healthy: Arc<AtomicBool>,
    clock: Arc<dyn Clock>,
    start: Instant,
    last_sync: Instant,
    dirty: bool,
    outage: Option<Outage>,
    /// Events were lost since the last barrier was answered.
    lost_since_barrier: bool,
    /// Where checkpoints are published off the host.
    anchors: Option<Anchors>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) -> anyhow::Result<()> {
        if let Some(f) = self.file.as_mut() {
            f.seek(std::io::SeekFrom::Start(self.len))
                .context("seeking the audit log")?;
        }
        loop {
            let mut batch = next_batch(&mut rx).await;
            let closed = batch.closed;
            if self.outage.is_some() {
                self.retry(closed).await;
            }
            let mut result = match self.outage.as_mut() {
                Some(o) => {
                    o.lose(&batch.events);
                    Err(AuditUnavailable(o.error.clone()))
                }
                None => self.write(&batch).await,
            };
            if result.is_err() {
                self.lost_since_barrier = true;
            }
            // A barrier passes only if nothing was lost since the last one was answered: an
            // event of the waiting operation may have been in a batch that failed before a retry
            // succeeded.
            if !batch.acks.is_empty() {
                if self.lost_since_barrier && result.is_ok() {
                    result = Err(AuditUnavailable(
                        "audit events were lost before the log became writable again".into(),
                    ));
                }
                self.lost_since_barrier = false;
            }
            if let Some(signer) = batch.rotate.take() {
                // The old key signed every line before (unless the log is down: then the next
                // checkpoint signs them with the new key, which the keyring already holds).
                self.chain.set_signer(signer);
            }
            let stop = closed.then(|| result.clone());
            batch.answer(&result);
            match stop {
                Some(Ok(())) => return Ok(()),
                Some(Err(e)) => return Err(anyhow::anyhow!("{e}")),
                None => {}
            }
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Write one batch; on failure cut the file back to its last good line and go down.
    async fn write(&mut self, batch: &Batch) -> Result<(), AuditUnavailable> {
        let t = self.now_ns();
        let mut next = self.chain.clone();
        let mut buf = Vec::new();
        for ev in &batch.events {
            buf.extend(next.line(ev, t));
        }
        let pending = self.dirty || !buf.is_empty() || next.unsigned_lines() > 0;
        let sync = pending
            && (batch.sync || batch.closed || batch.idle || self.last_sync.elapsed() >= SYNC_EVERY);
        // Every fsync signs what it makes durable, so a quiet gateway's tail is signed at once.
        if sync {
            buf.extend(next.checkpoint(t));
        }
        if buf.is_empty() && !sync {
            return Ok(());
        }
        let prepared = self.anchors.as_ref().map(|a| a.prepare_audit(&buf));
        match self.append(buf, sync).await {
            Ok(n) => {
                if let (Some(a), Some(anchors)) = (&self.anchors, prepared) {
                    a.publish_all(anchors);
                }
                self.chain = next;
                self.len += n;
                self.dirty = !sync;
                if sync {
                    self.last_sync = Instant::now();
                }
                Ok(())
            }
            Err(e) => {
                let now = self.clock.now();
                let mut outage = Outage {
                    since: batch
                        .events
                        .first()
                        .and_then(|ev| parse_time(&ev.time))
                        .unwrap_or(now),
                    error: e.to_string(),
                    lost: BTreeMap::new(),
                    last_try: Instant::now(),
                };
                outage.lose(&batch.events);
                self.healthy.store(false, Ordering::Release);
                tracing::error!(target: "audit", error = %e, bytes = self.len,
                    "audit log write failed; every audited operation is refused until it can be written again");
                let err = AuditUnavailable(outage.error.clone());
                self.outage = Some(outage);
                Err(err)
            }
        }
    }

    /// While down: at most every [`RETRY_EVERY`] (and at close), cut back to the last good line
    /// and try to write the `audit_gap` event; on success the log is healthy again.
    async fn retry(&mut self, force: bool) {
        let Some(outage) = self.outage.as_mut() else {
            return;
        };
        if !force && outage.last_try.elapsed() < RETRY_EVERY {
            return;
        }
        outage.last_try = Instant::now();
        let now = self.clock.now();
        let gap = outage.gap_event(now);
        let t = self.now_ns();
        let mut next = self.chain.clone();
        let mut buf = next.line(&gap, t);
        buf.extend(next.checkpoint(t));
        let prepared = self.anchors.as_ref().map(|a| a.prepare_audit(&buf));
        match self.append(buf, true).await {
            Ok(n) => {
                if let (Some(a), Some(anchors)) = (&self.anchors, prepared) {
                    a.publish_all(anchors);
                }
                self.chain = next;
                self.len += n;
                self.dirty = false;
                self.last_sync = Instant::now();
                self.outage = None;
                self.healthy.store(true, Ordering::Release);
                trace(&gap);
                tracing::warn!(target: "audit", "audit log writable again; the gap is recorded as an audit_gap event");
            }
            Err(e) => {
                if let Some(o) = self.outage.as_mut() {
                    o.error = e.to_string();
                }
            }
        }
    }

    /// Cut the file to the last good length, write `buf` there (fsync when `sync`), on a blocking
    /// thread. A failed write leaves at most a torn tail, which the next append cuts off.
    async fn append(&mut self, buf: Vec<u8>, sync: bool) -> std::io::Result<u64> {
        let Some(mut f) = self.file.take() else {
            return Err(std::io::Error::other("audit log file lost"));
        };
        let len = self.len;
        let cut = self.outage.is_some();
        let (f, r) = tokio::task::spawn_blocking(move || {
            let r = (|| {
                if cut {
                    f.set_len(len)?;
                    f.seek(std::io::SeekFrom::Start(len))?;
                }
                f.write_all(&buf)?;
                if sync {
                    f.sync_data()?;
                }
                Ok(buf.len() as u64)
            })();
            if r.is_err() {
                // Best effort: leave no torn line behind for the next start to trip over.
                let _ = f
                    .set_len(len)
                    .and_then(|()| f.seek(std::io::SeekFrom::Start(len)).map(drop));
            }
            (f, r)
        })
        .await
        .map_err(std::io::Error::other)?;
        self.file = Some(f);
        r
    }
}

fn parse_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

/// Wait up to [`SYNC_EVERY`] for a message, then take whatever else is queued with it.
async fn next_batch(rx: &mut mpsc::Receiver<Msg>) -> Batch {
    let mut batch = Batch::default();
    match tokio::time::timeout(SYNC_EVERY, rx.recv()).await {
        Ok(Some(m)) => {
            batch.take(m);
            while batch.rotate.is_none() {
                let Ok(m) = rx.try_recv() else { break };
                batch.take(m);
            }
        }
        Ok(None) => batch.closed = true,
        Err(_) => batch.idle = true,
    }
    batch
}
