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
use std::io::{Seek, Write};
use std::path::Path;

use anyhow::Context;
use time::OffsetDateTime;
use ward_recording::audit::{session_trails, SessionTrail};
use ward_recording::{SealStatus, Signer};

use crate::audit::{AuditLog, Event};
use crate::review::{Filter, SessionSummary};
use crate::session_index::{FileStamp, IndexedSession, SessionIndex};

/// What the interrupted record says about why.
const WHY: &str = "gateway stopped without closing this session (crash or kill -9)";

static NO_TRAILS: BTreeMap<String, SessionTrail> = BTreeMap::new();

/// Seal recordings in `dir` left open by a crash, as the audit log at `audit.path()` allows.
/// Returns how many were sealed. Reading the audit log fails the start (no recovery without it,
/// and no gateway without its log); a log that does not exist yet opens no session.
pub fn recover_recordings(
    dir: &Path,
    signer: &Signer,
    audit: &AuditLog,
    now: OffsetDateTime,
    index: Option<&dyn SessionIndex>,
) -> anyhow::Result<usize> {
    // Sessions the index holds final rows for: the others are indexed from this scan (backfill).
    let indexed: HashSet<String> = index
        .and_then(|i| i.all().ok())
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.stamp.is_some())
        .map(|r| r.summary.id)
        .collect();
    let mut rows = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(0);
    };
    let mut trails: Option<BTreeMap<String, SessionTrail>> = None;
    let mut sealed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some(crate::recorder::EXT) {
            continue;
        }
        let session = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        // Verified through a bounded window: a sealed recording is never held in memory here.
        let file =
            std::fs::File::open(&path).with_context(|| format!("reading {}", path.display()))?;
        let report =
            ward_recording::verify_read(std::io::BufReader::new(file), &signer.public_key())
                .with_context(|| format!("reading {}", path.display()))?;
        if report.status != SealStatus::Unsealed {
            if !indexed.contains(&session) {
                match crate::review::summary_of_ended(&report) {
                    Some(summary) => rows.push(IndexedSession {
                        stamp: stamp_if_sealed(&summary, &path),
                        summary,
                    }),
                    None => {
                        let bytes = std::fs::read(&path)
                            .with_context(|| format!("reading {}", path.display()))?;
                        backfill(&mut rows, &path, &bytes, &signer.public_key(), &session);
                    }
                }
            }
            continue;
        }
        // Unsealed (rare): read whole, to decide and to seal.
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let report = ward_recording::verify(&bytes, &signer.public_key());
        if report.status != SealStatus::Unsealed {
            continue; // sealed meanwhile: indexed at the next start
        }
        // The log is read once, and only when some recording needs it.
        if trails.is_none() {
            trails = Some(read_trails(audit.path())?);
        }
        let trails = trails.as_ref().unwrap_or(&NO_TRAILS);
        if let Err(why) = ward_recording::trail::may_seal(&session, &report, trails) {
            tracing::error!(
                event = "recording_tampered",
                session_id = %session,
                file = %path.display(),
                reason = %why,
                "a recording is not sealed, and the audit log says it is not one a crash left open: NOT sealing it; left as it is for investigation"
            );
            audit.emit(
                Event::new("recording_tampered", "failure", now)
                    .severity("high")
                    .session(session)
                    .reason(format!("not sealed at recovery: {why}"))
                    .detail("status", format!("{:?}", report.status))
                    .detail("file_bytes", bytes.len())
                    .detail("verified_records", report.verified_records),
            );
            continue;
        }
        let mut tail = Vec::new();
        match ward_recording::seal_interrupted(&bytes, signer, WHY, 0, &mut tail) {
            Ok(keep) => {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .with_context(|| format!("opening {}", path.display()))?;
                f.set_len(keep)?;
                f.seek(std::io::SeekFrom::Start(keep))?;
                f.write_all(&tail)?;
                f.sync_all()?;
                sealed += 1;
                let mut now_bytes = bytes.get(..keep as usize).unwrap_or_default().to_vec();
                now_bytes.extend_from_slice(&tail);
                backfill(&mut rows, &path, &now_bytes, &signer.public_key(), &session);
                audit.emit(
                    Event::new("recording_interrupted", "failure", now)
                        .severity("warning")
                        .session(session)
                        .reason(format!("sealed as interrupted: {WHY}"))
                        .detail("verified_records", report.verified_records)
                        .detail("kept_bytes", keep),
                );
            }
            Err(e) => {
                tracing::error!(event = "recording_interrupted", session_id = %session, error = %e, "could not seal an interrupted recording");
                audit.emit(
                    Event::new("recording_interrupted", "failure", now)
                        .severity("high")
                        .session(session)
                        .reason(format!("could not seal an interrupted recording: {e}")),
                );
            }
        }
    }
    if let (Some(index), false) = (index, rows.is_empty()) {
        if let Err(e) = index.put_all(&rows) {
            tracing::warn!(error = %e, "session index not updated at start: listings read the recordings it lacks");
        }
    }
    Ok(sealed)
}

/// The index row of a recording from the bytes the scan read (its summary, verified, and the
/// file's stamp if it verifies as sealed). Best effort: a listing reads a recording the index lacks.
fn backfill(
    rows: &mut Vec<IndexedSession>,
    path: &Path,
    bytes: &[u8],
    key: &[u8; 32],
    session: &str,
) {
    let Some(summary) = crate::review::summarise(bytes, key, &Filter::default(), session) else {
        return;
    };
    rows.push(IndexedSession {
        stamp: stamp_if_sealed(&summary, path),
        summary,
    });
}

/// The file's stamp if its summary verified as sealed (the index then vouches for it until it
/// changes), else `None` (a listing verifies it again).
fn stamp_if_sealed(summary: &SessionSummary, path: &Path) -> Option<FileStamp> {
    match summary.verification.as_str() {
        "ok" | "interrupted" => FileStamp::of(path).ok(),
        _ => None,
    }
}

fn read_trails(path: &Path) -> anyhow::Result<BTreeMap<String, SessionTrail>> {
    match std::fs::read(path) {
        Ok(log) => Ok(session_trails(&log)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e).with_context(|| format!("reading {} for crash recovery", path.display())),
    }
}
