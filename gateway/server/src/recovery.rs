//! Crash recovery at gateway start: seal the recordings a crash (kill -9, power loss) left open,
//! and only those.
//!
//! A recording without its final checkpoint is either one a crash left open or a sealed one that
//! someone cut (`truncate -s`). The file alone cannot tell them apart, and sealing signs it with
//! the gateway's key, so a cut recording sealed here would verify as "interrupted": laundered. The
//! audit log can tell them apart: recovery reads `<state_dir>/audit.log` (already verified by
//! `AuditLog::open`, which runs first) and applies `ward_recording::trail::may_seal`: only a
//! recording whose session the log opened (`session_open`, success) and never closed
//! (`session_close`) is sealed, and `seal_interrupted` still refuses one whose prefix does not
//! verify. Anything else is left byte for byte as it is, and a `recording_tampered` event of
//! severity high is logged (plus a `tracing::error!`), at every start until someone deals with it.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use anyhow::Context;
use time::OffsetDateTime;
use ward_recording::audit::{session_trails, SessionTrail};
use ward_recording::{SealStatus, VerifyReport};

use crate::anchors::Anchors;
use crate::signing::SigningKeys;

use crate::audit::{AuditLog, Event};
use crate::recording_store::RecordingStore;
use crate::review::{Filter, SessionSummary};
use crate::session_index::{FileStamp, IndexedSession};

/// What the interrupted record says about why.
const WHY: &str = "gateway stopped without closing this session (crash or kill -9)";

static NO_TRAILS: BTreeMap<String, SessionTrail> = BTreeMap::new();

/// Seal the recordings in `store` left open by a crash, as the audit log at `audit.path()`
/// allows, and index (backfill) the recordings the store's session index lacks. Returns how many were sealed.
/// Reading the audit log fails the start (no recovery without it, and no gateway without its log);
/// a log that does not exist yet opens no session.
/// Checkpoints of recordings started before a key rotation verify with the keyring (`keys`); a
/// recording is sealed with the current key, and its new final checkpoint is anchored (`anchors`).
pub fn recover_recordings(
    store: &RecordingStore,
    keys: &SigningKeys,
    audit: &AuditLog,
    anchors: Option<&Anchors>,
    now: OffsetDateTime,
) -> anyhow::Result<usize> {
    let index = store.index();
    // Sessions the index holds final rows for: the others are indexed from this scan (backfill).
    let indexed: HashSet<String> = index
        .and_then(|i| i.all().ok())
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.stamp.is_some())
        .map(|r| r.summary.id)
        .collect();
    let mut scan = Scan {
        store,
        keys,
        anchors,
        audit,
        now,
        trails: None,
        rows: Vec::new(),
        sealed: 0,
        local: None,
    };
    // Recordings on this host (all of them for local files; the spool's in front of object
    // storage) are the only ones a crash can have left open. Those elsewhere (uploaded, so
    // sealed) are only backfilled, and an object store that cannot list them does not stop the
    // start: the spool is recovered, and listings fail with the store's error until it is back.
    let local: HashSet<String> = store.list_local().unwrap_or_default().into_iter().collect();
    let ids = match store.list() {
        Ok(ids) => ids,
        Err(e) => {
            tracing::warn!(event = "recording_store_unlisted", store = %store.describe(), reason = %e,
                "cannot list the recording store at start: recovering the local spool only");
            local.iter().cloned().collect()
        }
    };
    scan.local = Some(&local);
    for session in ids {
        scan.one(&session, !indexed.contains(&session))?;
    }
    if let (Some(index), false) = (index, scan.rows.is_empty()) {
        if let Err(e) = index.put_all(&scan.rows) {
            tracing::warn!(error = %e, "session index not updated at start: listings read the recordings it lacks");
        }
    }
    Ok(scan.sealed)
}

/// Recovery's walk over the recordings.
struct Scan<'a> {
    store: &'a RecordingStore,
    keys: &'a SigningKeys,
    anchors: Option<&'a Anchors>,
    audit: &'a AuditLog,
    now: OffsetDateTime,
    /// The audit log's session trails, read once, and only when some recording needs them.
    trails: Option<BTreeMap<String, SessionTrail>>,
    /// Index rows to write (backfill).
    rows: Vec<IndexedSession>,
    sealed: usize,
    /// The recordings on this host (`None`: all of them).
    local: Option<&'a HashSet<String>>,
}

impl Scan<'_> {
    /// Look at one recording: index it if `backfill`, seal it if a crash left it open.
    fn one(&mut self, session: &str, backfill: bool) -> anyhow::Result<()> {
        if self.local.is_some_and(|l| !l.contains(session)) {
            // Only in the object store: uploaded by the gateway that recorded it, sealed and
            // verified before the upload, and indexed by that gateway in the shared index. Another
            // gateway's recordings are signed with its keys, not this one's; reading every object
            // at each start would also cost the whole bucket. `ward audit verify --all` checks them.
            return Ok(());
        }
        let key = self.keys.keyring();
        let where_ = || format!("reading recording {session} in {}", self.store.describe());
        // Verified through a bounded window: a sealed recording is never held in memory here.
        let snap = self.store.open(session).with_context(where_)?;
        let reader = std::io::BufReader::new(std::io::Read::take(snap.reader, snap.len));
        let report = ward_recording::verify_read(reader, &key).with_context(where_)?;
        if report.status != SealStatus::Unsealed {
            if backfill {
                match crate::review::summary_of_stored(self.store, session, &report) {
                    Some(summary) => self.rows.push(IndexedSession {
                        stamp: self.stamp_if_sealed(&summary, session),
                        start_ms: report
                            .meta
                            .as_ref()
                            .map_or(summary.start_unix.saturating_mul(1000), |m| {
                                m.started_unix_ms
                            }),
                        summary,
                    }),
                    None => {
                        let bytes = self.store.read_all(session).with_context(where_)?;
                        self.backfill(&bytes, session);
                    }
                }
            }
            return Ok(());
        }
        // Unsealed (rare): read whole, to decide and to seal.
        let bytes = self.store.read_all(session).with_context(where_)?;
        let report = ward_recording::verify(&bytes, &key);
        if report.status != SealStatus::Unsealed {
            return Ok(()); // sealed meanwhile: indexed at the next start
        }
        if self.trails.is_none() {
            self.trails = Some(read_trails(self.audit.path())?);
        }
        let trails = self.trails.as_ref().unwrap_or(&NO_TRAILS);
        if let Err(why) = ward_recording::trail::may_seal(session, &report, trails) {
            self.tampered(session, &why, &report, bytes.len());
            return Ok(());
        }
        self.seal(session, &bytes, &report)
    }

    /// Leave a recording the log says no crash left open as it is, and say so loudly.
    fn tampered(&self, session: &str, why: &str, report: &VerifyReport, len: usize) {
        tracing::error!(
            event = "recording_tampered",
            session_id = %session,
            store = %self.store.describe(),
            reason = %why,
            "a recording is not sealed, and the audit log says it is not one a crash left open: NOT sealing it; left as it is for investigation"
        );
        self.audit.emit(
            Event::new("recording_tampered", "failure", self.now)
                .severity("high")
                .session(session.to_string())
                .reason(format!("not sealed at recovery: {why}"))
                .detail("status", format!("{:?}", report.status))
                .detail("file_bytes", len)
                .detail("verified_records", report.verified_records),
        );
    }

    /// Seal a recording a crash left open: its verified prefix, then an interrupted end.
    fn seal(&mut self, session: &str, bytes: &[u8], report: &VerifyReport) -> anyhow::Result<()> {
        let mut tail = Vec::new();
        let keyring = self.keys.keyring();
        let signer = self.keys.signer();
        match ward_recording::seal_interrupted_keys(bytes, &*keyring, &signer, WHY, 0, &mut tail) {
            Ok(keep) => {
                self.store.recover(session, keep, &tail).with_context(|| {
                    format!("sealing recording {session} in {}", self.store.describe())
                })?;
                self.sealed += 1;
                if let Some(anchors) = self.anchors {
                    anchors.recording_sealed_now(self.store, session, "interrupted");
                }
                let mut now_bytes = bytes
                    .get(..usize::try_from(keep).unwrap_or(usize::MAX))
                    .unwrap_or_default()
                    .to_vec();
                now_bytes.extend_from_slice(&tail);
                self.backfill(&now_bytes, session);
                self.audit.emit(
                    Event::new("recording_interrupted", "failure", self.now)
                        .severity("warning")
                        .session(session.to_string())
                        .reason(format!("sealed as interrupted: {WHY}"))
                        .detail("verified_records", report.verified_records)
                        .detail("kept_bytes", keep),
                );
            }
            Err(e) => {
                tracing::error!(event = "recording_interrupted", session_id = %session, error = %e, "could not seal an interrupted recording");
                self.audit.emit(
                    Event::new("recording_interrupted", "failure", self.now)
                        .severity("high")
                        .session(session.to_string())
                        .reason(format!("could not seal an interrupted recording: {e}")),
                );
            }
        }
        Ok(())
    }

    /// The index row of a recording from the bytes the scan read (its summary, verified, and the
    /// blob's stamp if it verifies as sealed). Best effort: a listing reads a recording the index
    /// lacks.
    fn backfill(&mut self, bytes: &[u8], session: &str) {
        let key = self.keys.keyring();
        let Some(summary) = crate::review::summarise(bytes, &*key, &Filter::default(), session)
        else {
            return;
        };
        self.rows.push(IndexedSession {
            stamp: self.stamp_if_sealed(&summary, session),
            // Sealed rows carry their duration; an unsealed one is closed by nobody.
            start_ms: summary.start_unix.saturating_mul(1000),
            summary,
        });
    }

    /// The blob's stamp if its summary verified as sealed (the index then vouches for it until it
    /// changes), else `None` (a listing verifies it again).
    fn stamp_if_sealed(&self, summary: &SessionSummary, session: &str) -> Option<FileStamp> {
        match summary.verification.as_str() {
            "ok" | "interrupted" => self.store.stamp(session).ok(),
            _ => None,
        }
    }
}

fn read_trails(path: &Path) -> anyhow::Result<BTreeMap<String, SessionTrail>> {
    match std::fs::read(path) {
        Ok(log) => Ok(session_trails(&log)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e).with_context(|| format!("reading {} for crash recovery", path.display())),
    }
}
