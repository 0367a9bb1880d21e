//! The gateways sharing one store: each registers itself and heartbeats, so `ward gateways` can
//! list them with their health (docs/deployment.md). On SQLite the table holds the one gateway.

use time::OffsetDateTime;

use crate::store::StoreError;

/// One gateway as it registered itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRow {
    /// The gateway's stable id (`<state_dir>/gateway.id`).
    pub id: String,
    /// Where clients reach it over QUIC (`host:port`), as the gateway knows it.
    pub quic: String,
    /// Where clients reach it over TLS/TCP, if it listens there.
    pub tcp: Option<String>,
    /// The web console, if it serves one.
    pub web: Option<String>,
    /// Ward's version.
    pub version: String,
    /// When this run of it started.
    pub started: OffsetDateTime,
    /// Its last heartbeat.
    pub last_seen: OffsetDateTime,
    /// Its public signing keyring (`audit.keys` JSON lines: public keys only), so every gateway
    /// verifies the others' recordings and audit chains.
    pub keyring: String,
}

/// The registry of gateways sharing a store.
pub trait GatewayRegistry: Send + Sync {
    /// Insert or refresh this gateway's row (its heartbeat).
    fn heartbeat(&self, row: &GatewayRow) -> Result<(), StoreError>;
    /// Every gateway ever registered, oldest first.
    fn gateways(&self) -> Result<Vec<GatewayRow>, StoreError>;
}

/// Unix milliseconds (the precision the registry keeps).
pub(crate) fn unix_ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// From Unix milliseconds.
pub(crate) fn from_unix_ms(ms: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_err(|e| StoreError::Corrupt(format!("gateway time {ms}: {e}")))
}

impl GatewayRegistry for crate::store::SqliteStore {
    fn heartbeat(&self, row: &GatewayRow) -> Result<(), StoreError> {
        let conn = self.conn()?;
        conn.execute(
            "INSERT INTO gateways (id, quic, tcp, web, version, started_unix_ms, last_seen_unix_ms, keyring)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (id) DO UPDATE SET quic = excluded.quic, tcp = excluded.tcp,
                 web = excluded.web, version = excluded.version,
                 started_unix_ms = excluded.started_unix_ms,
                 last_seen_unix_ms = excluded.last_seen_unix_ms, keyring = excluded.keyring",
            rusqlite::params![
                row.id,
                row.quic,
                row.tcp,
                row.web,
                row.version,
                unix_ms(row.started),
                unix_ms(row.last_seen),
                row.keyring
            ],
        )?;
        Ok(())
    }

    fn gateways(&self) -> Result<Vec<GatewayRow>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT id, quic, tcp, web, version, started_unix_ms, last_seen_unix_ms, keyring
             FROM gateways ORDER BY started_unix_ms, id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, String>(7)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, quic, tcp, web, version, started, seen, keyring) = row?;
            out.push(GatewayRow {
                id,
                quic,
                tcp,
                web,
                version,
                started: from_unix_ms(started)?,
                last_seen: from_unix_ms(seen)?,
                keyring,
            });
        }
        Ok(out)
    }
}
