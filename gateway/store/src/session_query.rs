//! Paginated, filtered queries and aggregates over the session index: the web console's session
//! search and overview (docs/web.md), answered by SQL over `ward.db`'s `sessions` table instead
//! of a walk over every row or every recording.
//!
//! The queries are behind [`SessionSearch`], which SQLite ([`SqliteSearch`]: its own read-only
//! connections, like [`crate::session_index::read_only`], so a listing never waits on the
//! gateway's writes) and PostgreSQL (`crate::pg`, the index several gateways share) answer alike. What a row says is trusted only as far as
//! [`freshen`] checks it: the rows of one page are `stat`ed (at most `per_page` of them) and a
//! recording changed since it was indexed sealed, or gone, is never shown as `ok` — it is read
//! and verified again through the caller's `reread` (the review service's summary of a recording,
//! the same one `ward sessions` makes), or marked missing.
//!
//! A recording present in the store but absent from the index is not listed here: crash recovery
//! indexes every recording the index lacks when the gateway starts, and the recorder indexes
//! every session it opens, so only a file copied into the recordings directory behind a running
//! gateway's back is missing until the next start (`ward sessions` on the host reads it at once).

use std::path::Path;

use rusqlite::types::Value;
use serde::Serialize;

use crate::recording_store::RecordingStore;
use crate::session_index::{row_of, IndexedSession, SessionSummary, COLUMNS};
use crate::store::StoreError;

/// Largest page a query answers.
pub const MAX_PER_PAGE: u32 = 200;
/// The page size when none is asked for.
pub const DEFAULT_PER_PAGE: u32 = 50;

/// A verification class a search can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// Sealed and verified.
    Ok,
    /// Anything that did not verify (`FAILED: …`, or a recorder's error not yet verified).
    Failed,
    /// No end record yet: live, or cut short.
    Open,
    /// Sealed by crash recovery.
    Interrupted,
}

impl Verification {
    /// `ok`, `failed`, `open` or `interrupted`.
    pub fn parse(text: &str) -> Option<Verification> {
        match text {
            "ok" => Some(Verification::Ok),
            "failed" => Some(Verification::Failed),
            "open" => Some(Verification::Open),
            "interrupted" => Some(Verification::Interrupted),
            _ => None,
        }
    }

    pub(crate) fn sql(self) -> &'static str {
        match self {
            Verification::Ok => "verification = 'ok'",
            Verification::Open => "substr(verification, 1, 4) = 'open'",
            Verification::Interrupted => "verification = 'interrupted'",
            Verification::Failed => {
                "NOT (verification = 'ok' OR verification = 'interrupted' \
                 OR substr(verification, 1, 4) = 'open')"
            }
        }
    }
}

/// Which indexed sessions a search wants (every field optional; all given must hold).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionQuery {
    /// The principal's name, `org/name`, or the whole `kind org/name` (as `ward sessions`
    /// matches it).
    pub principal: Option<String>,
    /// The principal's organisation.
    pub org: Option<String>,
    /// Device id.
    pub device: Option<String>,
    /// Started at or after (Unix seconds).
    pub since: Option<i64>,
    /// Started before (Unix seconds).
    pub until: Option<i64>,
    /// Why it ended: the end reason starts with this text (`terminated` finds every
    /// `terminated by …`).
    pub end_reason: Option<String>,
    /// Its verification class.
    pub verification: Option<Verification>,
}

/// One page of a search, as the API answers it.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SessionPage {
    /// The sessions, newest first.
    pub sessions: Vec<SessionSummary>,
    /// 1-based.
    pub page: u32,
    /// Page size.
    pub per_page: u32,
    /// How many sessions match (for a text search: how many matched among those scanned).
    pub total: u64,
    /// More matches follow this page (for a text search: may follow, past what was scanned).
    pub has_more: bool,
    /// For a text search: how many recordings were read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scanned: Option<u64>,
}

/// `page` (1-based) and `per_page` made sane: page at least 1, size between 1 and
/// [`MAX_PER_PAGE`].
pub fn paging(page: Option<u32>, per_page: Option<u32>) -> (u32, u32) {
    (
        page.unwrap_or(1).max(1),
        per_page.unwrap_or(DEFAULT_PER_PAGE).clamp(1, MAX_PER_PAGE),
    )
}

fn offset_of(page: u32, per_page: u32) -> u64 {
    u64::from(page.saturating_sub(1)) * u64::from(per_page)
}

fn sql_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Aggregates for the overview between two instants (Unix seconds, `[since, until)`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Aggregates {
    /// `(day, org or kind, sessions)`: a vendor's organisation, else the principal's kind.
    pub by_org: Vec<(String, String, u64)>,
    /// `(day, device, protocol, sessions)`: the caller maps devices to their class.
    pub by_device: Vec<(String, String, String, u64)>,
    /// `(day, sessions opened by break-glass)`.
    pub break_glass: Vec<(String, u64)>,
    /// `(device, sessions)`, most first, at most [`BUSIEST`].
    pub busiest: Vec<(String, u64)>,
    /// Sessions whose indexed verification failed, newest first, at most [`FAILING`] (of any
    /// time: a failed recording stays a problem until someone deals with it).
    pub failing: Vec<Failing>,
}

/// How many busiest devices the overview shows.
pub const BUSIEST: u32 = 10;
/// How many failing recordings the overview shows.
pub const FAILING: u32 = 50;

/// A recording the index shows failing verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failing {
    /// Session id.
    pub id: String,
    /// Device id.
    pub device: String,
    /// `kind org/name`.
    pub principal: String,
    /// What failed.
    pub verification: String,
}

/// The `WHERE` clause of `q` and its parameters (numbered from 1).
fn where_of(q: &SessionQuery) -> (String, Vec<Value>) {
    let mut terms: Vec<String> = Vec::new();
    let mut params: Vec<Value> = Vec::new();
    let mut param = |v: Value| {
        params.push(v);
        format!("?{}", params.len())
    };
    if let Some(p) = &q.principal {
        let p = param(Value::Text(p.clone()));
        // `kind org/name` or `kind name`: the whole, the part after the kind, or the name (the
        // part after the last `/`) — what `ward sessions --principal` matches.
        terms.push(format!(
            "principal <> '?' AND (principal = {p} \
             OR substr(principal, instr(principal, ' ') + 1) = {p} \
             OR (instr({p}, '/') = 0 AND substr(principal, -length({p}) - 1) = '/' || {p}))"
        ));
    }
    if let Some(o) = &q.org {
        let o = param(Value::Text(o.clone()));
        terms.push(format!(
            "instr(principal, ' ') > 0 AND \
             substr(principal, instr(principal, ' ') + 1, length({o}) + 1) = {o} || '/'"
        ));
    }
    if let Some(d) = &q.device {
        let d = param(Value::Text(d.clone()));
        terms.push(format!("device = {d}"));
    }
    if let Some(t) = q.since {
        let t = param(Value::Integer(t.saturating_mul(1000)));
        terms.push(format!("start_unix_ms >= {t}"));
    }
    if let Some(t) = q.until {
        let t = param(Value::Integer(t.saturating_mul(1000)));
        terms.push(format!("start_unix_ms < {t}"));
    }
    if let Some(e) = &q.end_reason {
        let e = param(Value::Text(e.clone()));
        terms.push(format!("substr(end_reason, 1, length({e})) = {e}"));
    }
    if let Some(v) = q.verification {
        terms.push(v.sql().to_string());
    }
    if terms.is_empty() {
        (String::new(), params)
    } else {
        (format!(" WHERE ({})", terms.join(") AND (")), params)
    }
}

/// Newest first; the id breaks ties (served by the `sessions_start_id` index).
const ORDER: &str = " ORDER BY start_unix_ms DESC, id DESC";

/// What the session search asks of the index, whichever store holds it (SQLite's `ward.db`, or
/// a PostgreSQL shared by several gateways): filtered, newest-first rows and counts, one row, the
/// overview's aggregates and, for `ward sessions`, every row. Object-safe; [`SqliteSearch`] (and
/// [`IndexReader`]) answer it over a read-only SQLite connection, `crate::pg::PgStore` over its
/// pool. Rows are what the index says: [`page`] freshens them against the recordings.
pub trait SessionSearch: Send + Sync {
    /// How many rows match `q`.
    fn count(&self, q: &SessionQuery) -> Result<u64, StoreError>;
    /// The rows matching `q`, newest first (the id breaks ties, descending), `limit` of them
    /// after skipping `offset`.
    fn rows(
        &self,
        q: &SessionQuery,
        offset: u64,
        limit: u64,
    ) -> Result<Vec<IndexedSession>, StoreError>;
    /// The rows matching `q` whose operations `keep` accepts (an operation pattern: not SQL),
    /// newest first, `limit` after skipping `offset`, and how many match in all.
    fn rows_where_ops(
        &self,
        q: &SessionQuery,
        keep: OpsFilter<'_>,
        offset: u64,
        limit: u64,
    ) -> Result<(Vec<IndexedSession>, u64), StoreError>;
    /// One session's row.
    fn one(&self, id: &str) -> Result<Option<IndexedSession>, StoreError>;
    /// The overview's aggregates over sessions started in `[since, until)` (Unix seconds), by
    /// UTC day (`YYYY-MM-DD`).
    fn aggregates(&self, since: i64, until: i64) -> Result<Aggregates, StoreError>;
    /// Every row (what `ward sessions` lists from; no order promised).
    fn all(&self) -> Result<Vec<IndexedSession>, StoreError>;
}

/// The session search over a state dir's `ward.db`, read only: a listing never waits on the
/// gateway's writes. Connections are opened as needed and kept for the next query (as many as
/// queries ran at once). Before the gateway's first start (no `ward.db`) every answer is empty,
/// and a listing then reads every recording.
pub struct SqliteSearch {
    path: std::path::PathBuf,
    idle: std::sync::Mutex<Vec<rusqlite::Connection>>,
}

impl SqliteSearch {
    /// The search over `<state_dir>/ward.db`.
    pub fn new(state_dir: &Path) -> SqliteSearch {
        SqliteSearch {
            path: state_dir.join("ward.db"),
            idle: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// `f` over an idle (or new) read-only connection, or `empty` if there is no database yet.
    fn with<T>(
        &self,
        empty: impl FnOnce() -> T,
        f: impl FnOnce(&rusqlite::Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let idle = self.idle.lock().map_err(|_| StoreError::Poisoned)?.pop();
        let conn = match idle {
            Some(c) => c,
            None => match open_read_only(&self.path)? {
                Some(c) => c,
                None => return Ok(empty()),
            },
        };
        let out = f(&conn);
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
        }
        out
    }
}

impl SessionSearch for SqliteSearch {
    fn count(&self, q: &SessionQuery) -> Result<u64, StoreError> {
        self.with(|| 0, |c| count(c, q))
    }
    fn rows(
        &self,
        q: &SessionQuery,
        offset: u64,
        limit: u64,
    ) -> Result<Vec<IndexedSession>, StoreError> {
        self.with(Vec::new, |c| rows(c, q, offset, limit))
    }
    fn rows_where_ops(
        &self,
        q: &SessionQuery,
        keep: OpsFilter<'_>,
        offset: u64,
        limit: u64,
    ) -> Result<(Vec<IndexedSession>, u64), StoreError> {
        self.with(
            || (Vec::new(), 0),
            |c| rows_where_ops(c, q, keep, offset, limit),
        )
    }
    fn one(&self, id: &str) -> Result<Option<IndexedSession>, StoreError> {
        self.with(|| None, |c| one(c, id))
    }
    fn aggregates(&self, since: i64, until: i64) -> Result<Aggregates, StoreError> {
        self.with(Aggregates::default, |c| aggregates(c, since, until))
    }
    fn all(&self) -> Result<Vec<IndexedSession>, StoreError> {
        self.with(Vec::new, crate::session_index::all)
    }
}

/// `path` opened read only; `None` if it does not exist.
fn open_read_only(path: &Path) -> Result<Option<rusqlite::Connection>, StoreError> {
    if !path.exists() {
        return Ok(None);
    }
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    Ok(Some(conn))
}

/// A read-only view of a state dir's session index over one connection (the benchmark, tests).
pub struct IndexReader {
    conn: std::sync::Mutex<rusqlite::Connection>,
}

impl IndexReader {
    /// The index of `state_dir`, read only; `None` if it has none yet (no `ward.db`).
    pub fn open(state_dir: &Path) -> Result<Option<IndexReader>, StoreError> {
        Ok(open_read_only(&state_dir.join("ward.db"))?.map(IndexReader::over))
    }

    /// A reader over an open connection (tests, and a store that holds one already).
    pub fn over(conn: rusqlite::Connection) -> IndexReader {
        IndexReader {
            conn: std::sync::Mutex::new(conn),
        }
    }

    fn conn(&self) -> Result<std::sync::MutexGuard<'_, rusqlite::Connection>, StoreError> {
        self.conn.lock().map_err(|_| StoreError::Poisoned)
    }
}

impl SessionSearch for IndexReader {
    fn count(&self, q: &SessionQuery) -> Result<u64, StoreError> {
        count(&*self.conn()?, q)
    }
    fn rows(
        &self,
        q: &SessionQuery,
        offset: u64,
        limit: u64,
    ) -> Result<Vec<IndexedSession>, StoreError> {
        rows(&*self.conn()?, q, offset, limit)
    }
    fn rows_where_ops(
        &self,
        q: &SessionQuery,
        keep: OpsFilter<'_>,
        offset: u64,
        limit: u64,
    ) -> Result<(Vec<IndexedSession>, u64), StoreError> {
        rows_where_ops(&*self.conn()?, q, keep, offset, limit)
    }
    fn one(&self, id: &str) -> Result<Option<IndexedSession>, StoreError> {
        one(&*self.conn()?, id)
    }
    fn aggregates(&self, since: i64, until: i64) -> Result<Aggregates, StoreError> {
        aggregates(&*self.conn()?, since, until)
    }
    fn all(&self) -> Result<Vec<IndexedSession>, StoreError> {
        crate::session_index::all(&*self.conn()?)
    }
}

/// How many rows match `q`.
fn count(conn: &rusqlite::Connection, q: &SessionQuery) -> Result<u64, StoreError> {
    let (w, params) = where_of(q);
    let n: i64 = conn.query_row(
        &format!("SELECT COUNT(*) FROM sessions{w}"),
        rusqlite::params_from_iter(params),
        |r| r.get(0),
    )?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// The rows matching `q`, newest first, `limit` of them after skipping `offset`.
fn rows(
    conn: &rusqlite::Connection,
    q: &SessionQuery,
    offset: u64,
    limit: u64,
) -> Result<Vec<IndexedSession>, StoreError> {
    let (w, mut params) = where_of(q);
    params.push(Value::Integer(sql_i64(limit)));
    let l = params.len();
    params.push(Value::Integer(sql_i64(offset)));
    let o = params.len();
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM sessions{w}{ORDER} LIMIT ?{l} OFFSET ?{o}"
    ))?;
    let rows = stmt.query_map(rusqlite::params_from_iter(params), row_of)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The rows matching `q` whose operations `keep` accepts (an operation pattern: not SQL),
/// newest first, `limit` after skipping `offset`, and how many match in all. The operations
/// of every row `q` matches are read (one column), the page's rows whole.
fn rows_where_ops(
    conn: &rusqlite::Connection,
    q: &SessionQuery,
    keep: OpsFilter<'_>,
    offset: u64,
    limit: u64,
) -> Result<(Vec<IndexedSession>, u64), StoreError> {
    let (w, params) = where_of(q);
    let mut stmt = conn.prepare(&format!("SELECT id, ops FROM sessions{w}{ORDER}"))?;
    let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
    let (mut total, mut ids) = (0u64, Vec::new());
    while let Some(r) = rows.next()? {
        let ops: String = r.get(1)?;
        let ops: Vec<String> = ops
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        if !keep(&ops) {
            continue;
        }
        if total >= offset && total < offset.saturating_add(limit) {
            ids.push(r.get::<_, String>(0)?);
        }
        total += 1;
    }
    let mut page = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(row) = one(conn, &id)? {
            page.push(row);
        }
    }
    Ok((page, total))
}

/// One session's row.
fn one(conn: &rusqlite::Connection, id: &str) -> Result<Option<IndexedSession>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM sessions WHERE id = ?1"))?;
    let mut rows = stmt.query_map([id], row_of)?;
    Ok(rows.next().transpose()?)
}

/// The overview's aggregates over sessions started in `[since, until)` (Unix seconds), by
/// UTC day (`YYYY-MM-DD`).
fn aggregates(
    conn: &rusqlite::Connection,
    since: i64,
    until: i64,
) -> Result<Aggregates, StoreError> {
    let range = [since.saturating_mul(1000), until.saturating_mul(1000)];
    const DAY: &str = "date(start_unix_ms / 1000, 'unixepoch')";
    const IN: &str = "start_unix_ms >= ?1 AND start_unix_ms < ?2";
    let count = |r: &rusqlite::Row<'_>, i: usize| -> rusqlite::Result<u64> {
        Ok(u64::try_from(r.get::<_, i64>(i)?).unwrap_or(0))
    };
    // `kind org/name` → org; `kind name` → kind.
    let org = "CASE WHEN instr(substr(principal, instr(principal, ' ') + 1), '/') > 0 \
         THEN substr(principal, instr(principal, ' ') + 1, \
              instr(substr(principal, instr(principal, ' ') + 1), '/') - 1) \
         WHEN instr(principal, ' ') > 0 THEN substr(principal, 1, instr(principal, ' ') - 1) \
         ELSE principal END";
    let by_org = conn
        .prepare(&format!(
            "SELECT {DAY} AS day, {org} AS k, COUNT(*) FROM sessions WHERE {IN} \
             GROUP BY day, k ORDER BY day, k"
        ))?
        .query_map(range, |r| Ok((r.get(0)?, r.get(1)?, count(r, 2)?)))?
        .collect::<Result<_, _>>()?;
    let by_device = conn
        .prepare(&format!(
            "SELECT {DAY} AS day, device, protocol, COUNT(*) FROM sessions WHERE {IN} \
             GROUP BY day, device, protocol ORDER BY day, device"
        ))?
        .query_map(range, |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, count(r, 3)?))
        })?
        .collect::<Result<_, _>>()?;
    let break_glass = conn
        .prepare(&format!(
            "SELECT {DAY} AS day, COUNT(*) FROM sessions WHERE {IN} AND break_glass <> 0 \
             GROUP BY day ORDER BY day"
        ))?
        .query_map(range, |r| Ok((r.get(0)?, count(r, 1)?)))?
        .collect::<Result<_, _>>()?;
    let busiest = conn
        .prepare(&format!(
            "SELECT device, COUNT(*) AS n FROM sessions WHERE {IN} \
             GROUP BY device ORDER BY n DESC, device LIMIT {BUSIEST}"
        ))?
        .query_map(range, |r| Ok((r.get(0)?, count(r, 1)?)))?
        .collect::<Result<_, _>>()?;
    let failing = conn
        .prepare(&format!(
            "SELECT id, device, principal, verification FROM sessions WHERE {}{ORDER} \
             LIMIT {FAILING}",
            Verification::Failed.sql()
        ))?
        .query_map([], |r| {
            Ok(Failing {
                id: r.get(0)?,
                device: r.get(1)?,
                principal: r.get(2)?,
                verification: r.get(3)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(Aggregates {
        by_org,
        by_device,
        break_glass,
        busiest,
        failing,
    })
}

/// What a row's recording is now, by a `stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness {
    /// The row vouches for it: sealed, and the file's length and mtime are the ones indexed; or
    /// still open (an open row claims nothing but `open`).
    Current,
    /// Changed since it was indexed sealed, or the row does not know its operations: read it.
    Stale,
    /// Indexed, but no longer in the store.
    Missing,
}

/// Whether `row` still describes its recording in `store` (a `stat`; the recording is not read).
pub fn freshness(store: &RecordingStore, row: &IndexedSession) -> Freshness {
    match store.stamp(&row.summary.id) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Freshness::Missing,
        Err(_) => Freshness::Stale,
        Ok(_) if row.summary.ops_unknown => Freshness::Stale,
        Ok(now) => match row.stamp {
            None => Freshness::Current,
            Some(indexed) if indexed == now => Freshness::Current,
            Some(_) => Freshness::Stale,
        },
    }
}

/// What a listing shows for a session whose recording is gone from the store.
pub const MISSING: &str = "FAILED: recording missing from the store (indexed, but its file is gone; run ward audit verify --all)";

/// The summaries of `rows` as they are now: a row [`freshness`] vouches for as indexed; a stale
/// one replaced by `reread(id)` (its recording read and verified again; an error is shown as
/// `FAILED: …`); a missing one marked [`MISSING`]. At most one `stat` per row.
pub fn freshen(
    store: &RecordingStore,
    rows: Vec<IndexedSession>,
    reread: &mut dyn FnMut(&str) -> Result<SessionSummary, String>,
) -> Vec<SessionSummary> {
    rows.into_iter()
        .map(|row| match freshness(store, &row) {
            Freshness::Current => row.summary,
            Freshness::Missing => SessionSummary {
                verification: MISSING.into(),
                ..row.summary
            },
            Freshness::Stale => match reread(&row.summary.id) {
                Ok(s) => s,
                Err(e) => SessionSummary {
                    verification: format!("FAILED: {e}"),
                    ..row.summary
                },
            },
        })
        .collect()
}

/// One page of the sessions matching `q` (and, with `ops`, whose operations it accepts), fresh
/// ([`freshen`]).
pub fn page(
    reader: &dyn SessionSearch,
    store: &RecordingStore,
    q: &SessionQuery,
    ops: Option<OpsFilter<'_>>,
    (page, per_page): (u32, u32),
    reread: &mut dyn FnMut(&str) -> Result<SessionSummary, String>,
) -> Result<SessionPage, StoreError> {
    let offset = offset_of(page, per_page);
    let (rows, total) = match ops {
        Some(keep) => reader.rows_where_ops(q, keep, offset, u64::from(per_page))?,
        None => (
            reader.rows(q, offset, u64::from(per_page))?,
            reader.count(q)?,
        ),
    };
    Ok(SessionPage {
        sessions: freshen(store, rows, reread),
        page,
        per_page,
        total,
        has_more: offset.saturating_add(u64::from(per_page)) < total,
        scanned: None,
    })
}

/// A filter on a row's operations (an operation pattern, matched outside SQL).
pub type OpsFilter<'a> = &'a dyn Fn(&[String]) -> bool;

/// Bounds on a text search (it reads recordings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanLimits {
    /// Recordings read at most, per request.
    pub recordings: u64,
    /// Bytes read at most, per request.
    pub bytes: u64,
}

impl Default for ScanLimits {
    fn default() -> Self {
        ScanLimits {
            recordings: 2_000,
            bytes: 1 << 30,
        }
    }
}

/// What a text search's `scan` makes of one candidate: its summary if the recording holds the
/// text, and how many bytes it read.
pub type Scanned = (Option<SessionSummary>, u64);

/// One page of a text search: the candidates `q` matches (and `ops` accepts), newest first, each
/// read by `scan` (which verifies it and looks for the text), until the page is full and one more
/// match is seen, or `limits` are reached. `total` counts the matches among the recordings
/// scanned; `has_more` says more may follow (a match past the page, or candidates not scanned).
/// A recording `scan` cannot read is skipped (and logged).
pub fn grep_page(
    reader: &dyn SessionSearch,
    q: &SessionQuery,
    ops: Option<OpsFilter<'_>>,
    (page, per_page): (u32, u32),
    limits: ScanLimits,
    scan: &mut dyn FnMut(&IndexedSession) -> Result<Scanned, String>,
) -> Result<SessionPage, StoreError> {
    const BATCH: u64 = 256;
    let skip = offset_of(page, per_page);
    let end = skip.saturating_add(u64::from(per_page));
    let (mut out, mut matched, mut scanned, mut bytes) = (Vec::new(), 0u64, 0u64, 0u64);
    let mut has_more = false;
    let mut at = 0u64;
    'scan: loop {
        let batch = match ops {
            Some(keep) => reader.rows_where_ops(q, keep, at, BATCH)?.0,
            None => reader.rows(q, at, BATCH)?,
        };
        let exhausted = (batch.len() as u64) < BATCH;
        at = at.saturating_add(batch.len() as u64);
        for row in batch {
            if scanned >= limits.recordings || bytes >= limits.bytes {
                has_more = true;
                break 'scan;
            }
            scanned += 1;
            match scan(&row) {
                Ok((found, read)) => {
                    bytes = bytes.saturating_add(read);
                    if let Some(s) = found {
                        if matched >= end {
                            has_more = true;
                            break 'scan;
                        }
                        if matched >= skip {
                            out.push(s);
                        }
                        matched += 1;
                    }
                }
                Err(e) => {
                    tracing::warn!(session_id = %row.summary.id, error = %e, "text search skipped a recording it could not read");
                }
            }
        }
        if exhausted {
            break;
        }
    }
    Ok(SessionPage {
        sessions: out,
        page,
        per_page,
        total: matched,
        has_more,
        scanned: Some(scanned),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::session_index::{opened, FileStamp, SessionIndex};
    use crate::store::SqliteStore;
    use ward_recording::SessionMeta;

    fn meta(n: u32, who: (&str, &str, Option<&str>), device: &str, start_ms: i64) -> SessionMeta {
        SessionMeta {
            session_id: format!("{n:016x}"),
            principal_kind: who.0.into(),
            principal_name: who.1.into(),
            principal_org: who.2.map(str::to_owned),
            cert_serial: "02".into(),
            source: "127.0.0.1:5000".into(),
            device: device.into(),
            device_addr: "127.0.0.1:104".into(),
            protocol: "telnet".into(),
            rule: "r".into(),
            transport: "quic".into(),
            break_glass: n % 7 == 0,
            started_unix_ms: start_ms,
            recipients: Vec::new(),
            age_header: None,
        }
    }

    const DAY_MS: i64 = 86_400_000;

    /// 100 sessions over 4 days: even ones by vendor acme/jdoe on pump-1, odd by security sam on
    /// pacs; every tenth ended `terminated by sam: x`, every 25th failed verification.
    fn fixture() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteStore::open(dir.path()).unwrap();
        let mut rows = Vec::new();
        for n in 0..100u32 {
            let (who, dev) = if n % 2 == 0 {
                (("vendor", "jdoe", Some("acme")), "pump-1")
            } else {
                (("security", "sam", None), "pacs")
            };
            let mut row = opened(&meta(
                n,
                who,
                dev,
                1_700_000_000_000 + i64::from(n) * DAY_MS / 25,
            ));
            row.summary.end_reason = if n % 10 == 0 {
                "terminated by sam: x".into()
            } else {
                "client closed".into()
            };
            row.summary.verification = if n % 25 == 0 {
                "FAILED: record 3: bad".into()
            } else {
                "ok".into()
            };
            row.stamp = Some(FileStamp {
                len: 1,
                mtime_ns: 1,
            });
            rows.push(row);
        }
        db.put_all(&rows).unwrap();
        (dir, db)
    }

    fn reader(dir: &Path) -> IndexReader {
        IndexReader::open(dir).unwrap().unwrap()
    }

    #[test]
    fn pages_are_newest_first_and_counted() {
        let (dir, _db) = fixture();
        let r = reader(dir.path());
        let q = SessionQuery::default();
        assert_eq!(r.count(&q).unwrap(), 100);
        let one = r.rows(&q, 0, 30).unwrap();
        let two = r.rows(&q, 30, 30).unwrap();
        assert_eq!(one.len(), 30);
        assert_eq!(one[0].summary.id, format!("{:016x}", 99));
        assert_eq!(two[0].summary.id, format!("{:016x}", 69));
        let starts: Vec<i64> = one.iter().chain(&two).map(|r| r.start_ms).collect();
        assert!(starts.windows(2).all(|w| w[0] >= w[1]));
        assert!(r.rows(&q, 100, 30).unwrap().is_empty());
    }

    #[test]
    fn filters_match_like_the_cli() {
        let (dir, _db) = fixture();
        let r = reader(dir.path());
        let n = |q: SessionQuery| r.count(&q).unwrap();
        for p in ["jdoe", "acme/jdoe", "vendor acme/jdoe"] {
            assert_eq!(
                n(SessionQuery {
                    principal: Some(p.into()),
                    ..Default::default()
                }),
                50,
                "{p}"
            );
        }
        for p in ["acme", "doe", "vendor", "cme/jdoe", "x/jdoe"] {
            assert_eq!(
                n(SessionQuery {
                    principal: Some(p.into()),
                    ..Default::default()
                }),
                0,
                "{p}"
            );
        }
        assert_eq!(
            n(SessionQuery {
                principal: Some("sam".into()),
                ..Default::default()
            }),
            50
        );
        assert_eq!(
            n(SessionQuery {
                org: Some("acme".into()),
                ..Default::default()
            }),
            50
        );
        assert_eq!(
            n(SessionQuery {
                org: Some("acm".into()),
                ..Default::default()
            }),
            0
        );
        assert_eq!(
            n(SessionQuery {
                device: Some("pacs".into()),
                end_reason: Some("terminated".into()),
                ..Default::default()
            }),
            0,
            "terminated sessions are the even ones"
        );
        assert_eq!(
            n(SessionQuery {
                device: Some("pump-1".into()),
                end_reason: Some("terminated".into()),
                ..Default::default()
            }),
            10
        );
        assert_eq!(
            n(SessionQuery {
                verification: Some(Verification::Failed),
                ..Default::default()
            }),
            4
        );
        assert_eq!(
            n(SessionQuery {
                verification: Some(Verification::Ok),
                ..Default::default()
            }),
            96
        );
        // Times: [since, until) in seconds.
        let t0 = 1_700_000_000;
        assert_eq!(
            n(SessionQuery {
                since: Some(t0 + 86_400),
                until: Some(t0 + 2 * 86_400),
                ..Default::default()
            }),
            25
        );
        // Hostile text is a parameter, never SQL.
        assert_eq!(
            n(SessionQuery {
                principal: Some("' OR 1=1 --".into()),
                device: Some("x' OR '1'='1".into()),
                ..Default::default()
            }),
            0
        );
    }

    #[test]
    fn an_operation_filter_pages_and_counts() {
        let (dir, db) = fixture();
        let end = ward_recording::EndInfo {
            ended_unix_ms: 1_800_000_000_000,
            reason: "client closed".into(),
            bytes_up: 1,
            bytes_down: 1,
        };
        for n in [3u32, 5, 7] {
            let ops = crate::session_index::SessionOps {
                ops: vec!["telnet:reboot".into()],
                ..Default::default()
            };
            db.close(&format!("{n:016x}"), &end, "ok", None, &ops)
                .unwrap();
        }
        let r = reader(dir.path());
        let keep = |ops: &[String]| ops.iter().any(|o| o == "telnet:reboot");
        let (rows, total) = r
            .rows_where_ops(&SessionQuery::default(), &keep, 1, 1)
            .unwrap();
        assert_eq!(total, 3);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].summary.id, format!("{:016x}", 5));
    }

    #[test]
    fn aggregates_group_by_day_org_and_device() {
        let (dir, _db) = fixture();
        let r = reader(dir.path());
        let t0 = 1_700_000_000 - 86_400;
        let a = r.aggregates(t0, t0 + 10 * 86_400).unwrap();
        let orgs: u64 = a.by_org.iter().filter(|x| x.1 == "acme").map(|x| x.2).sum();
        let kinds: u64 = a
            .by_org
            .iter()
            .filter(|x| x.1 == "security")
            .map(|x| x.2)
            .sum();
        assert_eq!((orgs, kinds), (50, 50), "{:?}", a.by_org);
        assert!(a
            .by_org
            .iter()
            .all(|x| x.0.len() == 10 && x.0.starts_with("20")));
        let pacs: u64 = a
            .by_device
            .iter()
            .filter(|x| x.1 == "pacs" && x.2 == "telnet")
            .map(|x| x.3)
            .sum();
        assert_eq!(pacs, 50);
        assert_eq!(a.break_glass.iter().map(|x| x.1).sum::<u64>(), 15);
        assert_eq!(a.busiest.len(), 2);
        assert_eq!(a.failing.len(), 4);
        assert!(a.failing[0].verification.starts_with("FAILED"));
        // An empty window.
        let none = r.aggregates(0, 1).unwrap();
        assert!(none.by_org.is_empty() && none.busiest.is_empty());
    }

    #[test]
    fn a_text_search_pages_its_matches_and_stops_at_its_bounds() {
        let (dir, _db) = fixture();
        let r = reader(dir.path());
        let q = SessionQuery::default();
        // Every third session (newest first) "holds the text"; each recording is 10 bytes.
        let mut scan = |row: &IndexedSession| -> Result<Scanned, String> {
            let n = u32::from_str_radix(&row.summary.id, 16).map_err(|e| e.to_string())?;
            if n == 50 {
                return Err("unreadable".into());
            }
            Ok(((n % 3 == 0).then(|| row.summary.clone()), 10))
        };
        let ids =
            |p: &SessionPage| -> Vec<String> { p.sessions.iter().map(|s| s.id.clone()).collect() };
        let one = grep_page(&r, &q, None, (1, 5), ScanLimits::default(), &mut scan).unwrap();
        assert_eq!(
            ids(&one),
            [99, 96, 93, 90, 87].map(|n: u32| format!("{n:016x}"))
        );
        assert!(one.has_more);
        assert_eq!(
            one.scanned,
            Some(16),
            "stops at the first match past the page"
        );
        // The last page: every candidate read, nothing more.
        let last = grep_page(&r, &q, None, (7, 5), ScanLimits::default(), &mut scan).unwrap();
        assert_eq!(last.sessions.len(), 4, "34 matches: 0..=99 step 3");
        assert!(!last.has_more);
        assert_eq!((last.total, last.scanned), (34, Some(100)));
        // Bounded: by recordings, then by bytes.
        let few = ScanLimits {
            recordings: 10,
            bytes: u64::MAX,
        };
        let b = grep_page(&r, &q, None, (1, 50), few, &mut scan).unwrap();
        assert_eq!((b.scanned, b.total, b.has_more), (Some(10), 4, true));
        let small = ScanLimits {
            recordings: 1_000,
            bytes: 35,
        };
        let b = grep_page(&r, &q, None, (1, 50), small, &mut scan).unwrap();
        assert_eq!((b.scanned, b.has_more), (Some(4), true));
        // Filters narrow the candidates before anything is read.
        let pump = SessionQuery {
            device: Some("pump-1".into()),
            ..SessionQuery::default()
        };
        let p = grep_page(&r, &pump, None, (1, 50), ScanLimits::default(), &mut scan).unwrap();
        assert_eq!(p.scanned, Some(50));
        assert!(p.sessions.iter().all(|s| s.device == "pump-1"));
    }

    #[test]
    fn paging_is_bounded() {
        assert_eq!(paging(None, None), (1, DEFAULT_PER_PAGE));
        assert_eq!(paging(Some(0), Some(0)), (1, 1));
        assert_eq!(paging(Some(3), Some(100_000)), (3, MAX_PER_PAGE));
        assert_eq!(
            offset_of(u32::MAX, MAX_PER_PAGE),
            u64::from(u32::MAX - 1) * 200
        );
    }
}
