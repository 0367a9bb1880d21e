//! The audit log writer: one JSON object per line in `<state_dir>/audit.log`, hash-chained and signed
//! by `ward_recording::audit::AuditChain`, written by one task fed through a bounded channel, with
//! fsync batched (at most one second behind). Every event is also a tracing event (target `audit`),
//! so it reaches stderr logs and, with `--otlp-endpoint`, the OpenTelemetry pipeline.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio::time::Instant;
use ward_recording::audit::{rfc3339_ms, AuditChain, AuditEvent, AuditPrincipal};
use ward_recording::{CheckpointPolicy, Signer};

/// The audit log file name inside the state dir.
pub const AUDIT_LOG: &str = "audit.log";

/// How far durability may lag: the writer fsyncs at least this often while it has unsynced lines.
pub const SYNC_EVERY: Duration = Duration::from_millis(500);

/// Builder for one audit event.
#[derive(Debug, Clone)]
pub struct Event(pub AuditEvent);

impl Event {
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

/// Handle for emitting audit events; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
    dropped: Arc<AtomicU64>,
    healthy: Arc<std::sync::atomic::AtomicBool>,
    path: PathBuf,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .finish()
    }
}

enum Msg {
    Event(Box<AuditEvent>),
    Flush(tokio::sync::oneshot::Sender<()>),
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

impl AuditLog {
    /// Open (or continue) `<state_dir>/audit.log`: verify the existing prefix, drop a torn last
    /// line, and start the writer.
    pub fn open(state_dir: &Path, signer: Arc<Signer>) -> anyhow::Result<(AuditLog, AuditWriter)> {
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
            AuditChain::resume(&existing, signer, policy).with_context(|| {
                format!(
                    "{} does not verify; move it aside and investigate",
                    path.display()
                )
            })?
        };
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
            .with_context(|| format!("truncating a torn line in {}", path.display()))?;
        let (tx, rx) = mpsc::channel(16 * 1024);
        let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let task = tokio::spawn(writer(file, keep, chain, rx, healthy.clone()));
        Ok((
            AuditLog {
                tx,
                dropped: Arc::new(AtomicU64::new(0)),
                healthy,
                path,
            },
            AuditWriter { task },
        ))
    }

    /// Emit an event without waiting. If the writer is overwhelmed the event is counted as dropped
    /// and a later `audit_overflow` event says how many.
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

    /// Checkpoint and fsync everything emitted so far; returns once it is durable (or the writer
    /// has failed).
    pub async fn flush(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// False once a write or fsync of the audit log failed: the gateway then refuses new sessions.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

async fn writer(
    file: std::fs::File,
    mut len: u64,
    mut chain: AuditChain,
    mut rx: mpsc::Receiver<Msg>,
    healthy: Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<()> {
    use std::io::Seek;
    let mut file = file;
    file.seek(std::io::SeekFrom::Start(len))
        .context("seeking the audit log")?;
    let start = Instant::now();
    let mut file = Some(file);
    let mut dirty = false;
    let mut last_sync = Instant::now();
    loop {
        let next = tokio::time::timeout(SYNC_EVERY, rx.recv()).await;
        let mut buf = Vec::new();
        let mut acks = Vec::new();
        let mut take =
            |m: Msg, buf: &mut Vec<u8>, acks: &mut Vec<tokio::sync::oneshot::Sender<()>>| match m {
                Msg::Event(ev) => buf.extend(chain.line(&ev, ns_since(start))),
                Msg::Flush(ack) => acks.push(ack),
            };
        let closed = match next {
            Ok(Some(m)) => {
                take(m, &mut buf, &mut acks);
                while let Ok(m) = rx.try_recv() {
                    take(m, &mut buf, &mut acks);
                }
                false
            }
            Ok(None) => true,
            Err(_) => false,
        };
        let sync_due = (dirty && last_sync.elapsed() >= SYNC_EVERY) || !acks.is_empty();
        if closed || sync_due {
            buf.extend(chain.checkpoint(ns_since(start)));
        }
        if buf.is_empty() && !sync_due && !closed {
            continue;
        }
        let f = file.take().context("audit file lost")?;
        let want_sync = closed || sync_due || !buf.is_empty() && last_sync.elapsed() >= SYNC_EVERY;
        let (f, res) = tokio::task::spawn_blocking(move || {
            let mut f = f;
            let r = (|| {
                f.write_all(&buf)?;
                if want_sync {
                    f.sync_data()?;
                }
                Ok::<usize, std::io::Error>(buf.len())
            })();
            (f, r)
        })
        .await
        .context("audit writer thread")?;
        file = Some(f);
        match res {
            Ok(n) => {
                len += n as u64;
                dirty = !want_sync;
                if want_sync {
                    last_sync = Instant::now();
                }
            }
            Err(e) => {
                // An fsync or write error is fatal for the file (no retry-and-carry-on).
                healthy.store(false, Ordering::Release);
                tracing::error!(target: "audit", error = %e, bytes = len, "audit log write failed; audit log is now closed");
                return Err(e).context("writing the audit log");
            }
        }
        for ack in acks {
            let _ = ack.send(());
        }
        if closed {
            return Ok(());
        }
    }
}

fn ns_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}
