//! The session index on PostgreSQL: one table every gateway sharing the database writes its
//! sessions to (so `ward sessions` and the console on any of them list them all), each row naming
//! the gateway that recorded it. The rows and their meaning are SQLite's
//! (`crate::session_index`); [`PgIndex`] is the [`SessionIndex`] one gateway writes through.

use std::sync::Arc;

use ward_recording::EndInfo;

use crate::pg::query::{db, with_client};
use crate::pg::PgStore;
use crate::session_index::{FileStamp, IndexedSession, SessionIndex, SessionOps, SessionSummary};
use crate::store::StoreError;

/// The columns a row is read as ([`row_of`]), in order; the same as SQLite's.
pub(crate) const COLUMNS: &str = "id, principal, serial, device, protocol, source, rule, \
     start_unix_ms, end_unix_ms, end_reason, bytes_up, bytes_down, sealed, verification, \
     break_glass, duration_s, file_len, file_mtime_ns, ops, undecodable, denied_ops, ops_known, \
     ops_truncated";

/// The session index as one gateway writes it: rows it puts carry its id.
#[derive(Clone)]
pub struct PgIndex {
    store: Arc<PgStore>,
    gateway: Option<String>,
}

impl PgIndex {
    /// The index in `store`, written by the gateway `gateway` (its `gateway.id`; `None` leaves
    /// the column empty, as on rows from before).
    pub fn new(store: Arc<PgStore>, gateway: Option<String>) -> PgIndex {
        PgIndex { store, gateway }
    }

    /// Which gateway recorded each session: `(session id, gateway id)` for the rows that say.
    pub fn gateways_of(&self, ids: &[String]) -> Result<Vec<(String, String)>, StoreError> {
        let ids = ids.to_vec();
        with_client(&self.store, move |c| async move {
            let rows = c
                .query(
                    "SELECT id, gateway FROM sessions WHERE id = ANY($1::text[]) AND gateway IS NOT NULL",
                    &[&ids],
                )
                .await
                .map_err(db)?;
            rows.iter()
                .map(|r| Ok((r.try_get(0).map_err(db)?, r.try_get(1).map_err(db)?)))
                .collect()
        })
    }
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The `ops` column: one per line (as SQLite's).
fn ops_text(ops: &[String]) -> String {
    ops.iter()
        .map(|o| o.replace(['\n', '\r'], " "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A row's values, owned (they cross to the store's runtime).
struct Put {
    id: String,
    principal: String,
    serial: String,
    device: String,
    protocol: String,
    source: String,
    rule: String,
    start_ms: i64,
    end_reason: String,
    bytes_up: i64,
    bytes_down: i64,
    sealed: bool,
    verification: String,
    break_glass: bool,
    duration_s: f64,
    file_len: Option<i64>,
    file_mtime_ns: Option<i64>,
    ops: String,
    undecodable: Option<String>,
    denied_ops: i64,
    ops_known: bool,
    ops_truncated: bool,
    gateway: Option<String>,
}

impl Put {
    fn of(row: &IndexedSession, gateway: &Option<String>) -> Put {
        let s = &row.summary;
        Put {
            id: s.id.clone(),
            principal: s.principal.clone(),
            serial: s.serial.clone(),
            device: s.device.clone(),
            protocol: s.protocol.clone(),
            source: s.source.clone(),
            rule: s.rule.clone(),
            start_ms: row.start_ms,
            end_reason: s.end_reason.clone(),
            bytes_up: i64_of(s.bytes_up),
            bytes_down: i64_of(s.bytes_down),
            sealed: s.verification == "ok" || s.verification == "interrupted",
            verification: s.verification.clone(),
            break_glass: s.break_glass,
            duration_s: s.duration_s,
            file_len: row.stamp.map(|t| i64_of(t.len)),
            file_mtime_ns: row.stamp.map(|t| t.mtime_ns),
            ops: ops_text(&s.ops),
            undecodable: s.undecodable.clone(),
            denied_ops: i64_of(s.denied_ops),
            ops_known: !s.ops_unknown,
            ops_truncated: s.ops_truncated,
            gateway: gateway.clone(),
        }
    }
}

/// Insert or replace (SQLite's `INSERT OR REPLACE`); a row put without a gateway keeps the one
/// it had.
const PUT: &str = "INSERT INTO sessions (id, principal, serial, device, protocol, source, rule, \
     start_unix_ms, end_unix_ms, end_reason, bytes_up, bytes_down, sealed, verification, \
     break_glass, duration_s, file_len, file_mtime_ns, ops, undecodable, denied_ops, ops_known, \
     ops_truncated, gateway) VALUES \
     ($1, $2, $3, $4, $5, $6, $7, $8, NULL, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, \
     $20, $21, $22, $23) \
     ON CONFLICT (id) DO UPDATE SET principal = EXCLUDED.principal, serial = EXCLUDED.serial, \
     device = EXCLUDED.device, protocol = EXCLUDED.protocol, source = EXCLUDED.source, \
     rule = EXCLUDED.rule, start_unix_ms = EXCLUDED.start_unix_ms, end_unix_ms = NULL, \
     end_reason = EXCLUDED.end_reason, bytes_up = EXCLUDED.bytes_up, \
     bytes_down = EXCLUDED.bytes_down, sealed = EXCLUDED.sealed, \
     verification = EXCLUDED.verification, break_glass = EXCLUDED.break_glass, \
     duration_s = EXCLUDED.duration_s, file_len = EXCLUDED.file_len, \
     file_mtime_ns = EXCLUDED.file_mtime_ns, ops = EXCLUDED.ops, \
     undecodable = EXCLUDED.undecodable, denied_ops = EXCLUDED.denied_ops, \
     ops_known = EXCLUDED.ops_known, ops_truncated = EXCLUDED.ops_truncated, \
     gateway = COALESCE(EXCLUDED.gateway, sessions.gateway)";

async fn put(c: &deadpool_postgres::Transaction<'_>, p: &Put) -> Result<(), StoreError> {
    let stmt = c.prepare_cached(PUT).await.map_err(db)?;
    c.execute(
        &stmt,
        &[
            &p.id,
            &p.principal,
            &p.serial,
            &p.device,
            &p.protocol,
            &p.source,
            &p.rule,
            &p.start_ms,
            &p.end_reason,
            &p.bytes_up,
            &p.bytes_down,
            &p.sealed,
            &p.verification,
            &p.break_glass,
            &p.duration_s,
            &p.file_len,
            &p.file_mtime_ns,
            &p.ops,
            &p.undecodable,
            &p.denied_ops,
            &p.ops_known,
            &p.ops_truncated,
            &p.gateway,
        ],
    )
    .await
    .map_err(db)?;
    Ok(())
}

async fn put_rows(mut c: deadpool_postgres::Object, rows: Vec<Put>) -> Result<(), StoreError> {
    let tx = c.transaction().await.map_err(db)?;
    for p in &rows {
        put(&tx, p).await?;
    }
    tx.commit().await.map_err(db)
}

impl SessionIndex for PgIndex {
    fn put(&self, row: &IndexedSession) -> Result<(), StoreError> {
        let p = vec![Put::of(row, &self.gateway)];
        with_client(&self.store, move |c| put_rows(c, p))
    }

    fn put_all(&self, rows: &[IndexedSession]) -> Result<(), StoreError> {
        let p: Vec<Put> = rows.iter().map(|r| Put::of(r, &self.gateway)).collect();
        with_client(&self.store, move |c| put_rows(c, p))
    }

    fn close(
        &self,
        id: &str,
        end: &EndInfo,
        verification: &str,
        stamp: Option<FileStamp>,
        ops: &SessionOps,
    ) -> Result<(), StoreError> {
        let (id, verification) = (id.to_owned(), verification.to_owned());
        let (ended, reason) = (end.ended_unix_ms, end.reason.clone());
        let (up, down) = (i64_of(end.bytes_up), i64_of(end.bytes_down));
        let (len, mtime) = (stamp.map(|t| i64_of(t.len)), stamp.map(|t| t.mtime_ns));
        let (ops_text, undecodable) = (ops_text(&ops.ops), ops.undecodable.clone());
        let (denied, truncated) = (i64_of(ops.denied_ops), ops.truncated);
        with_client(&self.store, move |c| async move {
            c.execute(
                "UPDATE sessions SET end_unix_ms = $2, end_reason = $3, bytes_up = $4, \
                 bytes_down = $5, sealed = $6, verification = $7, \
                 duration_s = ($2::bigint - start_unix_ms)::double precision / 1000.0, \
                 file_len = $8, file_mtime_ns = $9, ops = $10, undecodable = $11, \
                 denied_ops = $12, ops_truncated = $13, ops_known = true WHERE id = $1",
                &[
                    &id,
                    &ended,
                    &reason,
                    &up,
                    &down,
                    &(verification == "ok"),
                    &verification,
                    &len,
                    &mtime,
                    &ops_text,
                    &undecodable,
                    &denied,
                    &truncated,
                ],
            )
            .await
            .map_err(db)?;
            Ok(())
        })
    }

    fn all(&self) -> Result<Vec<IndexedSession>, StoreError> {
        crate::session_query::SessionSearch::all(&*self.store)
    }
}

/// A row selected as [`COLUMNS`].
pub(crate) fn row_of(r: &tokio_postgres::Row) -> Result<IndexedSession, StoreError> {
    let start_ms: i64 = r.try_get(7).map_err(db)?;
    let start_unix = start_ms.div_euclid(1000);
    let len: Option<i64> = r.try_get(16).map_err(db)?;
    let mtime: Option<i64> = r.try_get(17).map_err(db)?;
    let ops: String = r.try_get(18).map_err(db)?;
    let get_u64 = |i: usize| -> Result<u64, StoreError> {
        Ok(u64::try_from(r.try_get::<_, i64>(i).map_err(db)?).unwrap_or(0))
    };
    Ok(IndexedSession {
        summary: SessionSummary {
            id: r.try_get(0).map_err(db)?,
            principal: r.try_get(1).map_err(db)?,
            serial: r.try_get(2).map_err(db)?,
            device: r.try_get(3).map_err(db)?,
            protocol: r.try_get(4).map_err(db)?,
            source: r.try_get(5).map_err(db)?,
            rule: r.try_get(6).map_err(db)?,
            start: crate::session_index::rfc3339(start_unix),
            start_unix,
            duration_s: r.try_get(15).map_err(db)?,
            bytes_up: get_u64(10)?,
            bytes_down: get_u64(11)?,
            end_reason: r.try_get(9).map_err(db)?,
            verification: r.try_get(13).map_err(db)?,
            break_glass: r.try_get(14).map_err(db)?,
            ops: ops
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect(),
            undecodable: r.try_get(19).map_err(db)?,
            denied_ops: get_u64(20)?,
            ops_unknown: !r.try_get::<_, bool>(21).map_err(db)?,
            ops_truncated: r.try_get(22).map_err(db)?,
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
