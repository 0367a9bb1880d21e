//! Locks on principals, devices and orgs ([`LockStore`]) in PostgreSQL. A change notifies every
//! gateway (`locks_changed` trigger), so a lock set through one ends live sessions on all.

use time::OffsetDateTime;
use ward_core::frame::LockTarget;
use ward_core::policy::Lock;

use super::{pg_err, PgStore};
use crate::store::{LockStore, StoreError};

fn target_parts(t: &LockTarget) -> (&'static str, String) {
    match t {
        LockTarget::Principal(v) => ("principal", v.clone()),
        LockTarget::Device(v) => ("device", v.clone()),
        LockTarget::Org(v) => ("org", v.clone()),
    }
}

impl LockStore for PgStore {
    fn put_lock(&self, lock: &Lock) -> Result<(), StoreError> {
        let (kind, value) = target_parts(&lock.target);
        let until = lock.until.map(|t| t.unix_timestamp());
        let (reason, by) = (lock.reason.clone(), lock.by.clone());
        let db = self.db();
        self.block(async move {
            let c = db.get().await?;
            c.execute(
                "INSERT INTO locks (kind, value, until, reason, locked_by) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (kind, value) DO UPDATE
                 SET until = excluded.until, reason = excluded.reason, locked_by = excluded.locked_by",
                &[&kind, &value, &until, &reason, &by],
            )
            .await
            .map_err(pg_err)?;
            Ok(())
        })
    }

    fn remove_lock(&self, target: &LockTarget) -> Result<bool, StoreError> {
        let (kind, value) = target_parts(target);
        let db = self.db();
        self.block(async move {
            let c = db.get().await?;
            let n = c
                .execute(
                    "DELETE FROM locks WHERE kind = $1 AND value = $2",
                    &[&kind, &value],
                )
                .await
                .map_err(pg_err)?;
            Ok(n > 0)
        })
    }

    fn active_locks(&self, now: OffsetDateTime) -> Result<Vec<Lock>, StoreError> {
        let now = now.unix_timestamp();
        let db = self.db();
        self.block(async move {
            let c = db.get().await?;
            let rows = c
                .query(
                    "SELECT kind, value, until, reason, locked_by FROM locks
                     WHERE until IS NULL OR until > $1 ORDER BY kind, value",
                    &[&now],
                )
                .await
                .map_err(pg_err)?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let kind: String = row.try_get(0).map_err(pg_err)?;
                let value: String = row.try_get(1).map_err(pg_err)?;
                let until: Option<i64> = row.try_get(2).map_err(pg_err)?;
                let target = match kind.as_str() {
                    "principal" => LockTarget::Principal(value),
                    "device" => LockTarget::Device(value),
                    "org" => LockTarget::Org(value),
                    other => return Err(StoreError::Corrupt(format!("lock kind {other:?}"))),
                };
                let until = until
                    .map(OffsetDateTime::from_unix_timestamp)
                    .transpose()
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                out.push(Lock {
                    target,
                    until,
                    reason: row.try_get(3).map_err(pg_err)?,
                    by: row.try_get(4).map_err(pg_err)?,
                });
            }
            Ok(out)
        })
    }
}
