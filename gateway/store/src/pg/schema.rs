//! Versioned migrations for the PostgreSQL store: `sql/000N_*.sql`, applied in order at connect,
//! each in its own transaction with its row in `ward_schema (version, applied)`. They run under a
//! session advisory lock ([`MIGRATION_LOCK`]): when several gateways start at once, one migrates
//! and the others wait, then find nothing left to do. A database at a version newer than this
//! binary knows is refused (an older gateway must not write to a schema it does not understand).

use std::sync::Arc;

use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::Socket;

use super::Tls;
use crate::store::StoreError;

/// One migration.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Its version (1, 2, …; the `ward_schema` row).
    pub version: i32,
    /// What it does, for logs.
    pub name: &'static str,
    /// Its SQL (several statements).
    pub sql: &'static str,
}

/// Every migration, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "core: locks, users and login back-off, access requests and grants, pins, gateways, change feed",
        sql: include_str!("sql/0001_core.sql"),
    },
    Migration {
        version: 2,
        name: "session index and vault",
        sql: include_str!("sql/0002_index_vault.sql"),
    },
];

/// The version this binary brings a database to.
pub fn latest() -> i32 {
    MIGRATIONS.iter().map(|m| m.version).max().unwrap_or(0)
}

/// The advisory lock key the migrating gateway holds ("ward" and the issue that added it).
pub const MIGRATION_LOCK: i64 = 0x7761_7264_0019;

/// Connects on a connection of its own and brings the database to [`latest`].
pub(crate) async fn migrate(
    config: &tokio_postgres::Config,
    tls: &Tls,
    describe: &Arc<str>,
) -> Result<Vec<i32>, StoreError> {
    match tls {
        Tls::Plain(t) => migrate_with(config, *t, describe).await,
        Tls::Rustls(t) => migrate_with(config, t.clone(), describe).await,
    }
}

async fn migrate_with<T>(
    config: &tokio_postgres::Config,
    tls: T,
    describe: &Arc<str>,
) -> Result<Vec<i32>, StoreError>
where
    T: MakeTlsConnect<Socket> + Send,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let (mut client, connection) = config.connect(tls).await.map_err(|e| {
        StoreError::Remote(format!("{describe}: connecting: {}", super::pg_text(&e)))
    })?;
    let driver = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "migration connection ended");
        }
    });
    let out = run(&mut client, describe).await;
    // Closing the connection releases the advisory lock, whatever happened.
    drop(client);
    let _ = driver.await;
    out
}

async fn run(
    client: &mut tokio_postgres::Client,
    describe: &Arc<str>,
) -> Result<Vec<i32>, StoreError> {
    let ctx = |what: &str, e: tokio_postgres::Error| {
        StoreError::Remote(format!("{describe}: {what}: {}", super::pg_text(&e)))
    };
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| ctx("waiting for the migration lock", e))?;
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS ward_schema (
                 version integer PRIMARY KEY,
                 applied timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await
        .map_err(|e| ctx("creating ward_schema", e))?;
    let applied: Vec<i32> = client
        .query("SELECT version FROM ward_schema ORDER BY version", &[])
        .await
        .map_err(|e| ctx("reading ward_schema", e))?
        .iter()
        .map(|r| r.try_get::<_, i32>(0))
        .collect::<Result<_, _>>()
        .map_err(|e| ctx("reading ward_schema", e))?;
    let newest = applied.iter().copied().max().unwrap_or(0);
    if newest > latest() {
        return Err(StoreError::Remote(format!(
            "{describe}: the database schema is at version {newest}, newer than this ward \
             (which knows up to version {}): upgrade ward on this gateway",
            latest()
        )));
    }
    let mut done = Vec::new();
    for m in MIGRATIONS {
        if applied.contains(&m.version) {
            continue;
        }
        let tx = client
            .transaction()
            .await
            .map_err(|e| ctx("starting a migration", e))?;
        tx.batch_execute(m.sql)
            .await
            .map_err(|e| ctx(&format!("migration {} ({})", m.version, m.name), e))?;
        tx.execute(
            "INSERT INTO ward_schema (version, applied) VALUES ($1, now())",
            &[&m.version],
        )
        .await
        .map_err(|e| ctx("recording a migration", e))?;
        tx.commit()
            .await
            .map_err(|e| ctx(&format!("committing migration {}", m.version), e))?;
        tracing::info!(db = %describe, version = m.version, name = m.name, "database migrated");
        done.push(m.version);
    }
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| ctx("releasing the migration lock", e))?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_one_to_n_in_order() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i32::try_from(i).unwrap() + 1, "{}", m.name);
        }
        assert_eq!(latest(), i32::try_from(MIGRATIONS.len()).unwrap());
    }
}
