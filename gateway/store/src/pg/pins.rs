//! Device certificate pins ([`PinStore`]) in PostgreSQL. Set and remove lock the row, so the
//! pin they return as replaced is the one they replaced.

use super::{pg_err, PgStore};
use crate::pins::{PinStore, StoredPin};
use crate::store::StoreError;

async fn read(
    c: &impl tokio_postgres::GenericClient,
    device: &str,
    lock: bool,
) -> Result<Option<StoredPin>, StoreError> {
    let sql = if lock {
        "SELECT device, pin, set_by, set_unix FROM device_pins WHERE device = $1 FOR UPDATE"
    } else {
        "SELECT device, pin, set_by, set_unix FROM device_pins WHERE device = $1"
    };
    let row = c.query_opt(sql, &[&device]).await.map_err(pg_err)?;
    row.map(|r| {
        Ok(StoredPin {
            device: r.try_get(0).map_err(pg_err)?,
            pin: r.try_get(1).map_err(pg_err)?,
            set_by: r.try_get(2).map_err(pg_err)?,
            set_unix: r.try_get(3).map_err(pg_err)?,
        })
    })
    .transpose()
}

impl PinStore for PgStore {
    fn device_pin(&self, device: &str) -> Result<Option<StoredPin>, StoreError> {
        let (db, device) = (self.db(), device.to_owned());
        self.block(async move {
            let c = db.get().await?;
            read(&**c, &device, false).await
        })
    }

    fn set_device_pin(&self, pin: &StoredPin) -> Result<Option<StoredPin>, StoreError> {
        let (db, pin) = (self.db(), pin.clone());
        self.block(async move {
            let mut c = db.get().await?;
            let tx = c.transaction().await.map_err(pg_err)?;
            let old = read(&*tx, &pin.device, true).await?;
            tx.execute(
                "INSERT INTO device_pins (device, pin, set_by, set_unix) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (device) DO UPDATE
                 SET pin = excluded.pin, set_by = excluded.set_by, set_unix = excluded.set_unix",
                &[&pin.device, &pin.pin, &pin.set_by, &pin.set_unix],
            )
            .await
            .map_err(pg_err)?;
            tx.commit().await.map_err(pg_err)?;
            Ok(old)
        })
    }

    fn remove_device_pin(&self, device: &str) -> Result<Option<StoredPin>, StoreError> {
        let (db, device) = (self.db(), device.to_owned());
        self.block(async move {
            let c = db.get().await?;
            let row = c
                .query_opt(
                    "DELETE FROM device_pins WHERE device = $1 RETURNING device, pin, set_by, set_unix",
                    &[&device],
                )
                .await
                .map_err(pg_err)?;
            row.map(|r| {
                Ok(StoredPin {
                    device: r.try_get(0).map_err(pg_err)?,
                    pin: r.try_get(1).map_err(pg_err)?,
                    set_by: r.try_get(2).map_err(pg_err)?,
                    set_unix: r.try_get(3).map_err(pg_err)?,
                })
            })
            .transpose()
        })
    }
}
