//! `ward store migrate`: an existing gateway's SQLite store copied into an empty PostgreSQL one,
//! every table, in one transaction, the counts checked before it commits and again after.
//!
//! The copy is by column name: every table of the source (`ward.db`, brought to the current
//! schema first, as the gateway's own start would) must exist in the target, every column that
//! holds a value must exist there too, and values are converted to the target column's type
//! (SQLite's integers to `bigint`, `integer` or `boolean`, blobs to `bytea`, …). A target that
//! already holds rows in any of these tables is refused: the copy never merges two stores.
//! Secrets (vault values, TOTP seeds) are copied sealed, as they are: the gateways on the
//! database need the source gateway's key file.

use std::path::{Path, PathBuf};

use rusqlite::types::Value;
use tokio_postgres::types::ToSql;

use crate::pg::query::{db, with_client};
use crate::pg::PgStore;
use crate::store::StoreError;

/// One table as copied.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TableCount {
    /// The table.
    pub table: String,
    /// Rows in the source.
    pub source: u64,
    /// Rows in the target after the commit.
    pub target: u64,
}

/// What a migration did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Imported {
    /// The source database file.
    pub source: PathBuf,
    /// The gateway id the source's session rows were recorded by (its `gateway.id`), if known.
    pub gateway: Option<String>,
    /// Per table, in copy order.
    pub tables: Vec<TableCount>,
    /// Fingerprints of the keys the copied secrets are sealed under (the gateways on the target
    /// need these key files).
    pub key_fingerprints: Vec<String>,
}

/// Rows read from the source at a time.
const BATCH: i64 = 500;

/// The source's `ward.db`: `path` itself, or `path/ward.db` for a state dir.
pub fn source_db(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join("ward.db")
    } else {
        path.to_owned()
    }
}

/// Columns named otherwise on PostgreSQL: `(table, SQLite's name, PostgreSQL's)` (`by` is a
/// reserved word there).
const RENAMED: &[(&str, &str, &str)] = &[("locks", "by", "locked_by")];

/// The target's name of `table`'s source column `column`.
fn renamed<'a>(table: &str, column: &'a str) -> &'a str {
    RENAMED
        .iter()
        .find(|(t, from, _)| *t == table && *from == column)
        .map_or(column, |(_, _, to)| *to)
}

/// A column of a source table.
#[derive(Debug, Clone)]
struct Column {
    /// Its name in the source.
    source: String,
    /// Its name in the target.
    name: String,
    /// The target's `data_type` (`information_schema.columns`), once matched.
    pg_type: String,
}

/// Copy the SQLite store at `source` (a state dir or its `ward.db`; the gateway stopped) into
/// `target`, whose tables must all be empty.
pub fn import_sqlite(source: &Path, target: &PgStore) -> Result<Imported, StoreError> {
    let file = source_db(source);
    if !file.is_file() {
        return Err(StoreError::Io(format!(
            "{}: no such SQLite store (give the gateway's state dir or its ward.db)",
            file.display()
        )));
    }
    let dir = file.parent().map(Path::to_owned).unwrap_or_default();
    // The source at the current schema (what the gateway's next start would do to it).
    crate::schema::migrate(&rusqlite::Connection::open(&file)?)?;
    let gateway = std::fs::read_to_string(dir.join("gateway.id"))
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    let conn = rusqlite::Connection::open_with_flags(
        &file,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let tables = source_tables(&conn)?;
    let mut counts = Vec::with_capacity(tables.len());
    for t in &tables {
        let n: i64 = conn.query_row(&format!("SELECT COUNT(*) FROM {}", quote(t)), [], |r| {
            r.get(0)
        })?;
        counts.push(u64::try_from(n).unwrap_or(0));
    }
    let key_fingerprints = fingerprints(&conn)?;
    let gw = gateway.clone();
    let copied = with_client(target, move |mut c| async move {
        copy_all(&mut c, conn, &tables, counts, gw).await
    })?;
    // Again after the commit, on a fresh connection: what the gateways will see.
    let mut out = Vec::with_capacity(copied.len());
    for (table, source) in copied {
        let sql = format!("SELECT COUNT(*) FROM {}", quote(&table));
        let target: i64 = with_client(target, move |c| async move {
            c.query_one(&sql, &[])
                .await
                .map_err(db)?
                .try_get(0)
                .map_err(db)
        })?;
        let target = u64::try_from(target).unwrap_or(0);
        if target != source {
            return Err(StoreError::Remote(format!(
                "after the commit, table {table} holds {target} row(s) but the source has {source}: check the database (is a gateway already writing to it?)"
            )));
        }
        out.push(TableCount {
            table,
            source,
            target,
        });
    }
    Ok(Imported {
        source: file,
        gateway,
        tables: out,
        key_fingerprints,
    })
}

/// The source's tables, in a fixed order (by name).
fn source_tables(conn: &rusqlite::Connection) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         ORDER BY name",
    )?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The keys the source's secrets are sealed under.
fn fingerprints(conn: &rusqlite::Connection) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT key_fp FROM vault UNION SELECT prev_key_fp FROM vault WHERE prev_key_fp IS NOT NULL \
         UNION SELECT totp_kek FROM users WHERE totp_kek IS NOT NULL ORDER BY 1",
    )?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// `name` as an SQL identifier.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Every table copied in one transaction; the target's counts checked against `counts` before
/// the commit. Returns `(table, rows)`.
async fn copy_all(
    c: &mut deadpool_postgres::Object,
    src: rusqlite::Connection,
    tables: &[String],
    counts: Vec<u64>,
    gateway: Option<String>,
) -> Result<Vec<(String, u64)>, StoreError> {
    let tx = c.transaction().await.map_err(db)?;
    // The target's columns, and refuse a target that holds anything.
    let mut plans = Vec::with_capacity(tables.len());
    let mut missing = Vec::new();
    let mut nonempty = Vec::new();
    for t in tables {
        let cols = tx
            .query(
                "SELECT column_name::text, data_type::text FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = $1",
                &[t],
            )
            .await
            .map_err(db)?;
        if cols.is_empty() {
            missing.push(t.clone());
            continue;
        }
        let mut target: Vec<(String, String)> = Vec::with_capacity(cols.len());
        for r in &cols {
            target.push((r.try_get(0).map_err(db)?, r.try_get(1).map_err(db)?));
        }
        let any: bool = tx
            .query_one(&format!("SELECT EXISTS (SELECT 1 FROM {})", quote(t)), &[])
            .await
            .map_err(db)?
            .try_get(0)
            .map_err(db)?;
        if any {
            nonempty.push(t.clone());
        }
        plans.push((t.clone(), target));
    }
    if !missing.is_empty() {
        return Err(StoreError::Invalid(format!(
            "target: the PostgreSQL schema has no table {} (is the source from a newer Ward?)",
            missing.join(", ")
        )));
    }
    if !nonempty.is_empty() {
        return Err(StoreError::Invalid(format!(
            "target: the database already holds rows in {}: ward store migrate copies into an empty database only (it never merges two stores)",
            nonempty.join(", ")
        )));
    }
    let mut done = Vec::with_capacity(plans.len());
    for ((table, target), expected) in plans.into_iter().zip(counts) {
        let source_cols = source_columns(&src, &table)?;
        let mut cols: Vec<Column> = Vec::new();
        let mut dropped: Vec<String> = Vec::new();
        for name in source_cols {
            let to = renamed(&table, &name).to_owned();
            match target.iter().find(|(n, _)| *n == to) {
                Some((_, ty)) => cols.push(Column {
                    source: name,
                    name: to,
                    pg_type: ty.clone(),
                }),
                None => dropped.push(name),
            }
        }
        // A source column the target lacks may only be empty.
        for d in &dropped {
            let n: i64 = src.query_row(
                &format!(
                    "SELECT COUNT(*) FROM {} WHERE {} IS NOT NULL",
                    quote(&table),
                    quote(d)
                ),
                [],
                |r| r.get(0),
            )?;
            if n > 0 {
                return Err(StoreError::Invalid(format!(
                    "target: table {table} has no column {d}, which holds values in {n} source row(s){}",
                    if d == "totp_secret" {
                        " (TOTP seeds not sealed yet: start the source gateway once with its key, which seals them, then migrate)"
                    } else {
                        ""
                    }
                )));
            }
        }
        // The session rows: the gateway that recorded them.
        let add_gateway = table == "sessions"
            && gateway.is_some()
            && target.iter().any(|(n, _)| n == "gateway")
            && !cols.iter().any(|c| c.name == "gateway");
        let mut names: Vec<String> = cols.iter().map(|c| quote(&c.name)).collect();
        let mut holders: Vec<String> = cols
            .iter()
            .enumerate()
            .map(|(i, c)| placeholder(i + 1, &c.pg_type))
            .collect();
        if add_gateway {
            names.push(quote("gateway"));
            holders.push(format!("${}::text", cols.len() + 1));
        }
        let insert = tx
            .prepare(&format!(
                "INSERT INTO {} ({}) VALUES ({})",
                quote(&table),
                names.join(", "),
                holders.join(", ")
            ))
            .await
            .map_err(db)?;
        let select = format!(
            "SELECT rowid, {} FROM {} WHERE rowid > ?1 ORDER BY rowid LIMIT {BATCH}",
            if cols.is_empty() {
                "NULL".to_owned()
            } else {
                cols.iter()
                    .map(|c| quote(&c.source))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            quote(&table)
        );
        let mut after = i64::MIN;
        loop {
            let batch = read_batch(&src, &select, after, cols.len())?;
            let Some((last, _)) = batch.last() else {
                break;
            };
            after = *last;
            for (_, values) in batch {
                let mut params: Vec<Box<dyn ToSql + Sync + Send>> =
                    Vec::with_capacity(values.len() + 1);
                for (v, col) in values.into_iter().zip(&cols) {
                    params.push(convert(v, col, &table)?);
                }
                if add_gateway {
                    params.push(Box::new(gateway.clone()));
                }
                let refs: Vec<&(dyn ToSql + Sync)> = params
                    .iter()
                    .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                    .collect();
                tx.execute(&insert, &refs).await.map_err(db)?;
            }
        }
        let n: i64 = tx
            .query_one(&format!("SELECT COUNT(*) FROM {}", quote(&table)), &[])
            .await
            .map_err(db)?
            .try_get(0)
            .map_err(db)?;
        let n = u64::try_from(n).unwrap_or(0);
        if n != expected {
            return Err(StoreError::Remote(format!(
                "table {table}: {n} row(s) copied but the source has {expected}; nothing was committed"
            )));
        }
        done.push((table, n));
    }
    tx.commit().await.map_err(db)?;
    Ok(done)
}

/// The column names of a source table, in order.
fn source_columns(src: &rusqlite::Connection, table: &str) -> Result<Vec<String>, StoreError> {
    let mut stmt = src.prepare(&format!(
        "SELECT name FROM pragma_table_info({})",
        sql_text(table)
    ))?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// `text` as an SQL string literal.
fn sql_text(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Up to [`BATCH`] rows after rowid `after`: `(rowid, values)`.
fn read_batch(
    src: &rusqlite::Connection,
    select: &str,
    after: i64,
    columns: usize,
) -> Result<Vec<(i64, Vec<Value>)>, StoreError> {
    let mut stmt = src.prepare_cached(select)?;
    let rows = stmt.query_map([after], |r| {
        let rowid: i64 = r.get(0)?;
        let mut values = Vec::with_capacity(columns);
        for i in 0..columns {
            values.push(r.get::<_, Value>(i + 1)?);
        }
        Ok((rowid, values))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The placeholder for parameter `i` into a column of `pg_type` (a timestamp takes Unix seconds).
fn placeholder(i: usize, pg_type: &str) -> String {
    match pg_type {
        "timestamp with time zone" | "timestamp without time zone" => {
            format!("to_timestamp(${i}::double precision)")
        }
        _ => format!("${i}"),
    }
}

/// A source value as the target column's type.
fn convert(
    v: Value,
    col: &Column,
    table: &str,
) -> Result<Box<dyn ToSql + Sync + Send>, StoreError> {
    let bad = |what: &str| {
        StoreError::Corrupt(format!(
            "table {table}, column {}: {what} does not fit the target's {}",
            col.name, col.pg_type
        ))
    };
    let int = |v: &Value| -> Option<Option<i64>> {
        match v {
            Value::Null => Some(None),
            Value::Integer(i) => Some(Some(*i)),
            _ => None,
        }
    };
    let boxed: Box<dyn ToSql + Sync + Send> = match col.pg_type.as_str() {
        "bigint" => Box::new(int(&v).ok_or_else(|| bad("a non-integer"))?),
        "integer" => {
            let i = int(&v).ok_or_else(|| bad("a non-integer"))?;
            let i = i
                .map(i32::try_from)
                .transpose()
                .map_err(|_| bad("a large integer"))?;
            Box::new(i)
        }
        "smallint" => {
            let i = int(&v).ok_or_else(|| bad("a non-integer"))?;
            let i = i
                .map(i16::try_from)
                .transpose()
                .map_err(|_| bad("a large integer"))?;
            Box::new(i)
        }
        "boolean" => {
            let i = int(&v).ok_or_else(|| bad("a non-integer"))?;
            Box::new(i.map(|i| i != 0))
        }
        "double precision" | "real" | "numeric" => match v {
            Value::Null => Box::new(None::<f64>),
            Value::Real(f) => Box::new(Some(f)),
            Value::Integer(i) => Box::new(Some(i as f64)),
            _ => return Err(bad("a non-number")),
        },
        "timestamp with time zone" | "timestamp without time zone" => match v {
            Value::Null => Box::new(None::<f64>),
            Value::Integer(i) => Box::new(Some(i as f64)),
            Value::Real(f) => Box::new(Some(f)),
            _ => return Err(bad("a non-number")),
        },
        "bytea" => match v {
            Value::Null => Box::new(None::<Vec<u8>>),
            Value::Blob(b) => Box::new(Some(b)),
            Value::Text(t) => Box::new(Some(t.into_bytes())),
            _ => return Err(bad("a number")),
        },
        "text" | "character varying" | "character" => match v {
            Value::Null => Box::new(None::<String>),
            Value::Text(t) => Box::new(Some(t)),
            Value::Integer(i) => Box::new(Some(i.to_string())),
            Value::Real(f) => Box::new(Some(f.to_string())),
            Value::Blob(b) => Box::new(Some(
                String::from_utf8(b).map_err(|_| bad("a non-UTF-8 blob"))?,
            )),
        },
        other => {
            return Err(StoreError::Invalid(format!(
                "table {table}, column {}: Ward does not copy into a column of type {other}",
                col.name
            )))
        }
    };
    Ok(boxed)
}
