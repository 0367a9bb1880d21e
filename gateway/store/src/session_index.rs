//! The session index: one row per recorded session, so that `ward sessions` lists from a table
//! instead of reading and verifying every recording (security case TBD, issue 12 item 4).
//!
//! Rows are written by the recorder when a session opens (`open`) and when its recording is sealed
//! (`ok`, with its end, byte counts and the file's length and mtime), and by crash recovery at
//! start for any recording the index lacks or still shows open (a backfill from the scan recovery
//! already does). A listing uses a row only while the file's length and mtime are the ones indexed
//! at sealing; a recording changed since (or not indexed) is read and verified as before. What a
//! row cannot show is a file altered with its mtime put back: `ward audit verify --all` verifies
//! every file, which is its job.
//!
//! Kept behind [`SessionIndex`] so that it can move with the recordings to another store.

use std::path::Path;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use ward_recording::{EndInfo, SessionMeta};

use crate::recording_store::RecordingStore;
use crate::store::{SqliteStore, StoreError};

/// A session as listed by `ward sessions`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SessionSummary {
    /// Session id.
    pub id: String,
    /// `vendor acme/jdoe`.
    pub principal: String,
    /// Certificate serial.
    pub serial: String,
    /// Device id.
    pub device: String,
    /// Device protocol.
    pub protocol: String,
    /// Client address.
    pub source: String,
    /// Rule that permitted it.
    pub rule: String,
    /// Start, RFC 3339 UTC.
    pub start: String,
    /// Start, Unix seconds.
    pub start_unix: i64,
    /// Duration in seconds (until the last record for unfinished recordings).
    pub duration_s: f64,
    /// Bytes client → device.
    pub bytes_up: u64,
    /// Bytes device → client.
    pub bytes_down: u64,
    /// Why it ended (`open` while live, `interrupted` after a crash).
    pub end_reason: String,
    /// `ok`, `interrupted`, `open` or `FAILED: <first error>`.
    pub verification: String,
    /// Emergency access.
    pub break_glass: bool,
    /// The distinct operations decoded (`dicom:C-STORE`, `http:POST /config`), sorted, at most
    /// `ward_decode::summary::MAX_INDEXED_OPS` (issue 15).
    #[serde(default)]
    pub ops: Vec<String>,
    /// Where decoding gave up (`dicom up at byte 7: …`), if it did: the rest of the session was
    /// passed and recorded undecoded.
    #[serde(default)]
    pub undecodable: Option<String>,
    /// How many operations the policy refused.
    #[serde(default)]
    pub denied_ops: u64,
    /// Some operation is not in `ops` as decoded (more than the index keeps, or a name cut):
    /// `ward ops` lists them all, and a search `ops` does not answer reads the recording.
    #[serde(default)]
    pub ops_truncated: bool,
    /// The operations above were not read from the recording's events (a row recovery indexed
    /// from the recording's verification alone): a listing reads the recording instead.
    #[serde(skip)]
    pub ops_unknown: bool,
}

/// What a session's recording says it did operation by operation, as the index keeps it (the
/// recorder's summary of the events it recorded).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionOps {
    /// Distinct `protocol:name`s.
    pub ops: Vec<String>,
    /// Where decoding gave up.
    pub undecodable: Option<String>,
    /// Operations refused.
    pub denied_ops: u64,
    /// Some operation is not in `ops` as decoded.
    pub truncated: bool,
}

/// RFC 3339 UTC of Unix seconds (empty if out of range).
pub fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// A recording's identity as indexed: its length and modification time (ns), as the recording
/// store's backend reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    /// Length in bytes.
    pub len: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
}

impl FileStamp {
    /// The stamp of the file at `path` (a `stat`: the file is not read).
    pub fn of(path: &Path) -> std::io::Result<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path)?;
        Ok(FileStamp {
            len: m.len(),
            mtime_ns: m.mtime().saturating_mul(1_000_000_000) + m.mtime_nsec(),
        })
    }
}

/// A row: the listing's summary and, once sealed, the file's stamp.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexedSession {
    /// What `ward sessions` shows.
    pub summary: SessionSummary,
    /// The session's start, Unix milliseconds: the duration written at close is measured from it
    /// (the summary's `start_unix` has whole seconds only).
    pub start_ms: i64,
    /// The file's stamp when it was indexed sealed (`None` while open).
    pub stamp: Option<FileStamp>,
}

/// What the gateway keeps about recorded sessions.
pub trait SessionIndex: Send + Sync {
    /// Insert or replace a row.
    fn put(&self, row: &IndexedSession) -> Result<(), StoreError>;
    /// Insert or replace rows, in one transaction (the start-up backfill).
    fn put_all(&self, rows: &[IndexedSession]) -> Result<(), StoreError>;
    /// Record a session's end: its recording is sealed (`verification` `ok`) or failed, and
    /// what it did operation by operation.
    fn close(
        &self,
        id: &str,
        end: &EndInfo,
        verification: &str,
        stamp: Option<FileStamp>,
        ops: &SessionOps,
    ) -> Result<(), StoreError>;
    /// Every row.
    fn all(&self) -> Result<Vec<IndexedSession>, StoreError>;
}

/// `kind org/name` (or `kind name`) of a recording's metadata.
pub fn who(m: &SessionMeta) -> String {
    match &m.principal_org {
        Some(org) => format!("{} {org}/{}", m.principal_kind, m.principal_name),
        None => format!("{} {}", m.principal_kind, m.principal_name),
    }
}

/// What a session's row holds while it is live.
pub fn opened(meta: &SessionMeta) -> IndexedSession {
    let start_unix = meta.started_unix_ms.div_euclid(1000);
    IndexedSession {
        summary: SessionSummary {
            id: meta.session_id.clone(),
            principal: who(meta),
            serial: meta.cert_serial.clone(),
            device: meta.device.clone(),
            protocol: meta.protocol.clone(),
            source: meta.source.clone(),
            rule: meta.rule.clone(),
            start: rfc3339(start_unix),
            start_unix,
            duration_s: 0.0,
            bytes_up: 0,
            bytes_down: 0,
            end_reason: "open".into(),
            verification: OPEN.into(),
            break_glass: meta.break_glass,
            ops: Vec::new(),
            undecodable: None,
            denied_ops: 0,
            ops_truncated: false,
            ops_unknown: false,
        },
        start_ms: meta.started_unix_ms,
        stamp: None,
    }
}

/// The verification shown for a session whose recording has no end record yet.
pub const OPEN: &str = "open (no end record yet: live, or cut short)";

pub(crate) const COLUMNS: &str =
    "id, principal, serial, device, protocol, source, rule, start_unix_ms, \
     end_unix_ms, end_reason, bytes_up, bytes_down, sealed, verification, break_glass, duration_s, \
     file_len, file_mtime_ns, ops, undecodable, denied_ops, ops_known, ops_truncated";

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn put(conn: &rusqlite::Connection, row: &IndexedSession) -> Result<(), StoreError> {
    let s = &row.summary;
    let sealed = s.verification == "ok" || s.verification == "interrupted";
    conn.execute(
        &format!(
            "INSERT OR REPLACE INTO sessions ({COLUMNS}) VALUES \
             (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, \
             ?21, ?22, ?23)"
        ),
        rusqlite::params![
            s.id,
            s.principal,
            s.serial,
            s.device,
            s.protocol,
            s.source,
            s.rule,
            row.start_ms,
            None::<i64>,
            s.end_reason,
            i64_of(s.bytes_up),
            i64_of(s.bytes_down),
            sealed,
            s.verification,
            s.break_glass,
            s.duration_s,
            row.stamp.map(|t| i64_of(t.len)),
            row.stamp.map(|t| t.mtime_ns),
            ops_text(&s.ops),
            s.undecodable,
            i64_of(s.denied_ops),
            !s.ops_unknown,
            s.ops_truncated,
        ],
    )?;
    Ok(())
}

/// The `ops` column: one per line (an operation name never holds a line break: the decoders
/// reconstruct lines, and anything else is escaped).
fn ops_text(ops: &[String]) -> String {
    ops.iter()
        .map(|o| o.replace(['\n', '\r'], " "))
        .collect::<Vec<_>>()
        .join("\n")
}

fn ops_of_text(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

fn close(
    conn: &rusqlite::Connection,
    id: &str,
    end: &EndInfo,
    verification: &str,
    stamp: Option<FileStamp>,
    ops: &SessionOps,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE sessions SET end_unix_ms = ?2, end_reason = ?3, bytes_up = ?4, bytes_down = ?5, \
         sealed = ?6, verification = ?7, duration_s = (?2 - start_unix_ms) / 1000.0, \
         file_len = ?8, file_mtime_ns = ?9, ops = ?10, undecodable = ?11, denied_ops = ?12, \
         ops_truncated = ?13, ops_known = 1 WHERE id = ?1",
        rusqlite::params![
            id,
            end.ended_unix_ms,
            end.reason,
            i64_of(end.bytes_up),
            i64_of(end.bytes_down),
            verification == "ok",
            verification,
            stamp.map(|t| i64_of(t.len)),
            stamp.map(|t| t.mtime_ns),
            ops_text(&ops.ops),
            ops.undecodable,
            i64_of(ops.denied_ops),
            ops.truncated,
        ],
    )?;
    Ok(())
}

pub(crate) fn all(conn: &rusqlite::Connection) -> Result<Vec<IndexedSession>, StoreError> {
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM sessions"))?;
    let rows = stmt.query_map([], row_of)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A row selected as [`COLUMNS`] (the session queries' too, `crate::session_query`).
pub(crate) fn row_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<IndexedSession> {
    let start_ms: i64 = r.get(7)?;
    let start_unix = start_ms.div_euclid(1000);
    let (len, mtime): (Option<i64>, Option<i64>) = (r.get(16)?, r.get(17)?);
    Ok(IndexedSession {
        summary: SessionSummary {
            id: r.get(0)?,
            principal: r.get(1)?,
            serial: r.get(2)?,
            device: r.get(3)?,
            protocol: r.get(4)?,
            source: r.get(5)?,
            rule: r.get(6)?,
            start: rfc3339(start_unix),
            start_unix,
            duration_s: r.get(15)?,
            bytes_up: u64::try_from(r.get::<_, i64>(10)?).unwrap_or(0),
            bytes_down: u64::try_from(r.get::<_, i64>(11)?).unwrap_or(0),
            end_reason: r.get(9)?,
            verification: r.get(13)?,
            break_glass: r.get(14)?,
            ops: ops_of_text(&r.get::<_, String>(18)?),
            undecodable: r.get(19)?,
            denied_ops: u64::try_from(r.get::<_, i64>(20)?).unwrap_or(0),
            ops_unknown: !r.get::<_, bool>(21)?,
            ops_truncated: r.get(22)?,
        },
        start_ms,
        stamp: match (len, mtime) {
            (Some(len), Some(mtime_ns)) => Some(FileStamp {
                len: u64::try_from(len).unwrap_or(0),
                mtime_ns,
            }),
            _ => None,
        },
    })
}

impl SessionIndex for SqliteStore {
    fn put(&self, row: &IndexedSession) -> Result<(), StoreError> {
        put(&*self.conn()?, row)
    }
    fn put_all(&self, rows: &[IndexedSession]) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        for row in rows {
            put(&tx, row)?;
        }
        tx.commit()?;
        Ok(())
    }
    fn close(
        &self,
        id: &str,
        end: &EndInfo,
        verification: &str,
        stamp: Option<FileStamp>,
        ops: &SessionOps,
    ) -> Result<(), StoreError> {
        close(&*self.conn()?, id, end, verification, stamp, ops)
    }
    fn all(&self) -> Result<Vec<IndexedSession>, StoreError> {
        all(&*self.conn()?)
    }
}

/// The index of a state dir, read only (host-side `ward sessions --state-dir`, and the gateway's
/// listings): `None` if there is none yet (a state dir from before the index), and the listing
/// then reads every recording.
pub fn read_only(state_dir: &Path) -> Option<Vec<IndexedSession>> {
    let path = state_dir.join("ward.db");
    if !path.exists() {
        return None;
    }
    let conn = rusqlite::Connection::open_with_flags(
        &path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .ok()?;
    match all(&conn) {
        Ok(rows) => Some(rows),
        Err(e) => {
            tracing::debug!(error = %e, "no session index: listing reads every recording");
            None
        }
    }
}

/// Keeps one session's row current from the recorder.
pub struct IndexHook {
    index: std::sync::Arc<dyn SessionIndex>,
    recordings: RecordingStore,
    id: String,
    /// The open row's write, awaited before the close is written (not before the session starts).
    opening: tokio::task::JoinHandle<Result<(), StoreError>>,
}

impl IndexHook {
    /// Index the session `meta` (recorded in `recordings`) as open, on a blocking thread.
    pub fn open(
        index: std::sync::Arc<dyn SessionIndex>,
        recordings: RecordingStore,
        meta: &SessionMeta,
    ) -> IndexHook {
        let row = opened(meta);
        let i = index.clone();
        let opening = tokio::task::spawn_blocking(move || i.put(&row));
        IndexHook {
            index,
            recordings,
            id: meta.session_id.clone(),
            opening,
        }
    }

    /// Index the session as ended: `ok` with the file's stamp if its recorder sealed it cleanly,
    /// with what it did operation by operation (the recorder's summary of the events it recorded).
    pub async fn close(self, end: EndInfo, outcome: Result<(), String>, ops: SessionOps) {
        let IndexHook {
            index,
            recordings,
            id,
            opening,
        } = self;
        if let Ok(Err(e)) = opening.await {
            tracing::warn!(session_id = %id, error = %e, "session index not updated at open: listings read this recording instead");
        }
        let done = tokio::task::spawn_blocking(move || {
            let (verification, stamp) = match outcome {
                Ok(()) => ("ok".to_string(), recordings.stamp(&id).ok()),
                Err(e) => (
                    format!("unknown (recording reported: {e}); run ward audit verify"),
                    None,
                ),
            };
            index
                .close(&id, &end, &verification, stamp, &ops)
                .map_err(|e| (id, e))
        })
        .await;
        if let Ok(Err((id, e))) = done {
            tracing::warn!(session_id = %id, error = %e, "session index not updated at close: listings read this recording instead");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn meta(id: &str) -> SessionMeta {
        SessionMeta {
            session_id: id.into(),
            principal_kind: "vendor".into(),
            principal_name: "jdoe".into(),
            principal_org: Some("acme".into()),
            cert_serial: "02".into(),
            source: "127.0.0.1:5000".into(),
            device: "pacs".into(),
            device_addr: "127.0.0.1:104".into(),
            protocol: "dicom".into(),
            rule: "r".into(),
            transport: "quic".into(),
            break_glass: false,
            started_unix_ms: 1_000,
            recipients: Vec::new(),
            age_header: None,
        }
    }

    #[test]
    fn a_closed_row_keeps_the_sessions_operations() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteStore::open(dir.path()).unwrap();
        let id = "00000000000000dd";
        db.put(&opened(&meta(id))).unwrap();
        let open = db.all().unwrap();
        assert!(open[0].summary.ops.is_empty() && !open[0].summary.ops_unknown);
        let end = EndInfo {
            ended_unix_ms: 2_000,
            reason: "client closed".into(),
            bytes_up: 1,
            bytes_down: 2,
        };
        let ops = SessionOps {
            ops: vec!["dicom:C-ECHO".into(), "dicom:C-STORE".into()],
            undecodable: Some("dicom up at byte 7: bad PDU".into()),
            denied_ops: 3,
            truncated: true,
        };
        let stamp = FileStamp {
            len: 10,
            mtime_ns: 5,
        };
        db.close(id, &end, "ok", Some(stamp), &ops).unwrap();
        let rows = db.all().unwrap();
        let s = &rows[0].summary;
        assert_eq!(s.ops, ops.ops);
        assert_eq!(s.undecodable, ops.undecodable);
        assert_eq!(s.denied_ops, 3);
        assert!(s.ops_truncated);
        assert!(!s.ops_unknown);
        // A row put without its operations read (recovery's) says so, and keeps saying so.
        let mut row = rows[0].clone();
        row.summary.ops_unknown = true;
        row.summary.ops.clear();
        db.put(&row).unwrap();
        assert!(db.all().unwrap()[0].summary.ops_unknown);
        // Reopening the store (the migration again) leaves it as it is.
        drop(db);
        let db = SqliteStore::open(dir.path()).unwrap();
        assert!(db.all().unwrap()[0].summary.ops_unknown);
    }

    #[test]
    fn a_store_from_before_operations_gains_them_empty() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = rusqlite::Connection::open(dir.path().join("ward.db")).unwrap();
            conn.execute_batch(
                "CREATE TABLE sessions (id TEXT PRIMARY KEY NOT NULL, principal TEXT NOT NULL,
                 serial TEXT NOT NULL, device TEXT NOT NULL, protocol TEXT NOT NULL,
                 source TEXT NOT NULL, rule TEXT NOT NULL, start_unix_ms INTEGER NOT NULL,
                 end_unix_ms INTEGER, end_reason TEXT NOT NULL, bytes_up INTEGER NOT NULL,
                 bytes_down INTEGER NOT NULL, sealed INTEGER NOT NULL, verification TEXT NOT NULL,
                 break_glass INTEGER NOT NULL, duration_s REAL NOT NULL, file_len INTEGER,
                 file_mtime_ns INTEGER);
                 INSERT INTO sessions VALUES ('00000000000000ee', 'vendor acme/jdoe', '02', 'pump',
                 'telnet', '127.0.0.1:1', 'r', 1000, 2000, 'client closed', 1, 2, 1, 'ok', 0, 1.0,
                 10, 5);",
            )
            .unwrap();
        }
        let db = SqliteStore::open(dir.path()).unwrap();
        let rows = db.all().unwrap();
        assert_eq!(rows.len(), 1);
        let s = &rows[0].summary;
        assert!(s.ops.is_empty() && s.undecodable.is_none() && s.denied_ops == 0);
        assert!(!s.ops_truncated);
        assert!(
            !s.ops_unknown,
            "sessions from before the decoders did no operations"
        );
    }
}
