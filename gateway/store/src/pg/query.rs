//! The session search on PostgreSQL ([`SessionSearch`] for [`PgStore`]): the same filters, order
//! and aggregates as SQLite's (`crate::session_query`), written in PostgreSQL's SQL. Every value a
//! search carries is a parameter, never SQL. The index's text columns use the `C` collation, so
//! rows sort byte by byte as on SQLite whatever the database's locale.

use std::future::Future;

use tokio_postgres::types::ToSql;

use crate::pg::PgStore;
use crate::session_index::IndexedSession;
use crate::session_query::{
    Aggregates, Failing, OpsFilter, SessionQuery, SessionSearch, Verification, BUSIEST, FAILING,
};
use crate::store::StoreError;

/// A PostgreSQL error as the store reports it ([`crate::pg::pg_err`]: the server's code and
/// message, never its detail, which can quote a row).
pub(crate) fn db(e: tokio_postgres::Error) -> StoreError {
    crate::pg::pg_err(e)
}

/// `f` with a pooled connection, on the store's runtime, waited for here.
pub(crate) fn with_client<T, F, Fut>(store: &PgStore, f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(deadpool_postgres::Object) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
{
    with_client_as(store, f)
}

/// [`with_client`] for an operation with errors of its own (the vault's).
pub(crate) fn with_client_as<T, E, F, Fut>(store: &PgStore, f: F) -> Result<T, E>
where
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
    F: FnOnce(deadpool_postgres::Object) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
{
    let pool = store.db();
    store.block(async move {
        let client = pool.get().await?;
        f(client).await
    })
}

/// A search's parameter.
#[derive(Debug, Clone)]
enum Param {
    Text(String),
    Int(i64),
}

impl Param {
    fn sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Param::Text(t) => t,
            Param::Int(i) => i,
        }
    }
}

fn refs(params: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(Param::sql).collect()
}

/// The `WHERE` clause of `q` and its parameters (numbered from 1): `crate::session_query`'s
/// terms in PostgreSQL's functions (`strpos` for `instr`, `right` for a negative `substr`).
fn where_of(q: &SessionQuery) -> (String, Vec<Param>) {
    let mut terms: Vec<String> = Vec::new();
    let mut params: Vec<Param> = Vec::new();
    let mut param = |v: Param| {
        let cast = match v {
            Param::Text(_) => "text",
            Param::Int(_) => "bigint",
        };
        params.push(v);
        format!("${}::{cast}", params.len())
    };
    if let Some(p) = &q.principal {
        let p = param(Param::Text(p.clone()));
        terms.push(format!(
            "principal <> '?' AND (principal = {p} \
             OR substr(principal, strpos(principal, ' ') + 1) = {p} \
             OR (strpos({p}, '/') = 0 AND right(principal, length({p}) + 1) = '/' || {p}))"
        ));
    }
    if let Some(o) = &q.org {
        let o = param(Param::Text(o.clone()));
        terms.push(format!(
            "strpos(principal, ' ') > 0 AND \
             substr(principal, strpos(principal, ' ') + 1, length({o}) + 1) = {o} || '/'"
        ));
    }
    if let Some(d) = &q.device {
        let d = param(Param::Text(d.clone()));
        terms.push(format!("device = {d}"));
    }
    if let Some(t) = q.since {
        let t = param(Param::Int(t.saturating_mul(1000)));
        terms.push(format!("start_unix_ms >= {t}"));
    }
    if let Some(t) = q.until {
        let t = param(Param::Int(t.saturating_mul(1000)));
        terms.push(format!("start_unix_ms < {t}"));
    }
    if let Some(e) = &q.end_reason {
        let e = param(Param::Text(e.clone()));
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

fn count_of(row: &tokio_postgres::Row, i: usize) -> Result<u64, StoreError> {
    let n: i64 = row.try_get(i).map_err(db)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

fn sql_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl SessionSearch for PgStore {
    fn count(&self, q: &SessionQuery) -> Result<u64, StoreError> {
        let (w, params) = where_of(q);
        with_client(self, move |c| async move {
            let row = c
                .query_one(&format!("SELECT COUNT(*) FROM sessions{w}"), &refs(&params))
                .await
                .map_err(db)?;
            count_of(&row, 0)
        })
    }

    fn rows(
        &self,
        q: &SessionQuery,
        offset: u64,
        limit: u64,
    ) -> Result<Vec<IndexedSession>, StoreError> {
        let (w, mut params) = where_of(q);
        params.push(Param::Int(sql_i64(limit)));
        let l = params.len();
        params.push(Param::Int(sql_i64(offset)));
        let o = params.len();
        let sql = format!(
            "SELECT {} FROM sessions{w}{ORDER} LIMIT ${l} OFFSET ${o}",
            crate::pg::index::COLUMNS
        );
        with_client(self, move |c| async move {
            let rows = c.query(&sql, &refs(&params)).await.map_err(db)?;
            rows.iter().map(crate::pg::index::row_of).collect()
        })
    }

    fn rows_where_ops(
        &self,
        q: &SessionQuery,
        keep: OpsFilter<'_>,
        offset: u64,
        limit: u64,
    ) -> Result<(Vec<IndexedSession>, u64), StoreError> {
        // The operations of every row `q` matches (one column), filtered here (the pattern is
        // not SQL); then the page's rows whole.
        let (w, params) = where_of(q);
        let sql = format!("SELECT id, ops FROM sessions{w}{ORDER}");
        let candidates: Vec<(String, String)> = with_client(self, move |c| async move {
            let rows = c.query(&sql, &refs(&params)).await.map_err(db)?;
            rows.iter()
                .map(|r| Ok((r.try_get(0).map_err(db)?, r.try_get(1).map_err(db)?)))
                .collect()
        })?;
        let (mut total, mut ids) = (0u64, Vec::new());
        for (id, ops) in candidates {
            let ops: Vec<String> = ops
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect();
            if !keep(&ops) {
                continue;
            }
            if total >= offset && total < offset.saturating_add(limit) {
                ids.push(id);
            }
            total += 1;
        }
        if ids.is_empty() {
            return Ok((Vec::new(), total));
        }
        let sql = format!(
            "SELECT {} FROM sessions WHERE id = ANY($1::text[])",
            crate::pg::index::COLUMNS
        );
        let wanted = ids.clone();
        let mut found: Vec<IndexedSession> = with_client(self, move |c| async move {
            let rows = c.query(&sql, &[&wanted]).await.map_err(db)?;
            rows.iter().map(crate::pg::index::row_of).collect()
        })?;
        // In the page's order (a row deleted in between is left out).
        let mut page = Vec::with_capacity(ids.len());
        for id in &ids {
            if let Some(i) = found.iter().position(|r| &r.summary.id == id) {
                page.push(found.swap_remove(i));
            }
        }
        Ok((page, total))
    }

    fn one(&self, id: &str) -> Result<Option<IndexedSession>, StoreError> {
        let sql = format!(
            "SELECT {} FROM sessions WHERE id = $1",
            crate::pg::index::COLUMNS
        );
        let id = id.to_owned();
        with_client(self, move |c| async move {
            let row = c.query_opt(&sql, &[&id]).await.map_err(db)?;
            row.as_ref().map(crate::pg::index::row_of).transpose()
        })
    }

    fn aggregates(&self, since: i64, until: i64) -> Result<Aggregates, StoreError> {
        let range = [since.saturating_mul(1000), until.saturating_mul(1000)];
        with_client(
            self,
            move |mut c| async move { aggregates(&mut c, range).await },
        )
    }

    fn all(&self) -> Result<Vec<IndexedSession>, StoreError> {
        let sql = format!("SELECT {} FROM sessions", crate::pg::index::COLUMNS);
        with_client(self, move |c| async move {
            let rows = c.query(&sql, &[]).await.map_err(db)?;
            rows.iter().map(crate::pg::index::row_of).collect()
        })
    }
}

/// The overview's aggregates over `[range.0, range.1)` (Unix ms), in one read-only transaction
/// (one snapshot: the parts agree with each other).
async fn aggregates(
    c: &mut deadpool_postgres::Object,
    range: [i64; 2],
) -> Result<Aggregates, StoreError> {
    const DAY: &str =
        "to_char(to_timestamp(start_unix_ms / 1000) AT TIME ZONE 'UTC', 'YYYY-MM-DD')";
    const IN: &str = "start_unix_ms >= $1::bigint AND start_unix_ms < $2::bigint";
    // `kind org/name` → org; `kind name` → kind.
    const REST: &str = "substr(principal, strpos(principal, ' ') + 1)";
    let org = format!(
        "CASE WHEN strpos({REST}, '/') > 0 THEN substr({REST}, 1, strpos({REST}, '/') - 1) \
         WHEN strpos(principal, ' ') > 0 THEN substr(principal, 1, strpos(principal, ' ') - 1) \
         ELSE principal END"
    );
    let p: [&(dyn ToSql + Sync); 2] = [&range[0], &range[1]];
    let c = c
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(db)?;
    let by_org = c
        .query(
            &format!(
                "SELECT {DAY} AS day, {org} AS k, COUNT(*) FROM sessions WHERE {IN} \
                     GROUP BY day, k ORDER BY day, k"
            ),
            &p,
        )
        .await
        .map_err(db)?
        .iter()
        .map(|r| {
            Ok((
                r.try_get(0).map_err(db)?,
                r.try_get(1).map_err(db)?,
                count_of(r, 2)?,
            ))
        })
        .collect::<Result<_, StoreError>>()?;
    let by_device = c
        .query(
            &format!(
                "SELECT {DAY} AS day, device, protocol, COUNT(*) FROM sessions WHERE {IN} \
                     GROUP BY day, device, protocol ORDER BY day, device"
            ),
            &p,
        )
        .await
        .map_err(db)?
        .iter()
        .map(|r| {
            Ok((
                r.try_get(0).map_err(db)?,
                r.try_get(1).map_err(db)?,
                r.try_get(2).map_err(db)?,
                count_of(r, 3)?,
            ))
        })
        .collect::<Result<_, StoreError>>()?;
    let break_glass = c
        .query(
            &format!(
                "SELECT {DAY} AS day, COUNT(*) FROM sessions WHERE {IN} AND break_glass \
                     GROUP BY day ORDER BY day"
            ),
            &p,
        )
        .await
        .map_err(db)?
        .iter()
        .map(|r| Ok((r.try_get(0).map_err(db)?, count_of(r, 1)?)))
        .collect::<Result<_, StoreError>>()?;
    let busiest = c
        .query(
            &format!(
                "SELECT device, COUNT(*) AS n FROM sessions WHERE {IN} \
                     GROUP BY device ORDER BY n DESC, device LIMIT {BUSIEST}"
            ),
            &p,
        )
        .await
        .map_err(db)?
        .iter()
        .map(|r| Ok((r.try_get(0).map_err(db)?, count_of(r, 1)?)))
        .collect::<Result<_, StoreError>>()?;
    let failing = c
        .query(
            &format!(
                "SELECT id, device, principal, verification FROM sessions WHERE {}{ORDER} \
                     LIMIT {FAILING}",
                Verification::Failed.sql()
            ),
            &[],
        )
        .await
        .map_err(db)?
        .iter()
        .map(|r| {
            Ok(Failing {
                id: r.try_get(0).map_err(db)?,
                device: r.try_get(1).map_err(db)?,
                principal: r.try_get(2).map_err(db)?,
                verification: r.try_get(3).map_err(db)?,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    // Read only: committing changes nothing.
    c.commit().await.map_err(db)?;
    Ok(Aggregates {
        by_org,
        by_device,
        break_glass,
        busiest,
        failing,
    })
}
