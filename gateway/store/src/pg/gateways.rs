//! The gateways sharing the database ([`GatewayRegistry`]): each upserts its row on every
//! heartbeat; times are kept to the millisecond.

use super::{pg_err, PgStore};
use crate::gateways::{from_unix_ms, unix_ms, GatewayRegistry, GatewayRow};
use crate::store::StoreError;

impl GatewayRegistry for PgStore {
    fn heartbeat(&self, row: &GatewayRow) -> Result<(), StoreError> {
        let (db, r) = (self.db(), row.clone());
        self.block(async move {
            let c = db.get().await?;
            c.execute(
                "INSERT INTO gateways (id, quic, tcp, web, version, started_unix_ms, last_seen_unix_ms, keyring)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (id) DO UPDATE SET quic = excluded.quic, tcp = excluded.tcp,
                     web = excluded.web, version = excluded.version,
                     started_unix_ms = excluded.started_unix_ms,
                     last_seen_unix_ms = excluded.last_seen_unix_ms, keyring = excluded.keyring",
                &[
                    &r.id,
                    &r.quic,
                    &r.tcp,
                    &r.web,
                    &r.version,
                    &unix_ms(r.started),
                    &unix_ms(r.last_seen),
                    &r.keyring,
                ],
            )
            .await
            .map_err(pg_err)?;
            Ok(())
        })
    }

    fn gateways(&self) -> Result<Vec<GatewayRow>, StoreError> {
        let db = self.db();
        self.block(async move {
            let c = db.get().await?;
            let rows = c
                .query(
                    "SELECT id, quic, tcp, web, version, started_unix_ms, last_seen_unix_ms, keyring
                     FROM gateways ORDER BY started_unix_ms, id",
                    &[],
                )
                .await
                .map_err(pg_err)?;
            rows.iter()
                .map(|r| {
                    let started: i64 = r.try_get(5).map_err(pg_err)?;
                    let seen: i64 = r.try_get(6).map_err(pg_err)?;
                    Ok(GatewayRow {
                        id: r.try_get(0).map_err(pg_err)?,
                        quic: r.try_get(1).map_err(pg_err)?,
                        tcp: r.try_get(2).map_err(pg_err)?,
                        web: r.try_get(3).map_err(pg_err)?,
                        version: r.try_get(4).map_err(pg_err)?,
                        started: from_unix_ms(started)?,
                        last_seen: from_unix_ms(seen)?,
                        keyring: r.try_get(7).map_err(pg_err)?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()
        })
    }
}
