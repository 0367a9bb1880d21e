//! The credential vault on PostgreSQL ([`VaultStore`] for [`PgStore`]): the rows, the sealing and
//! the rotation steps are SQLite's (`crate::vault`): each value sealed by the store's key ring
//! (AES-256-GCM under the key-encryption key, its fingerprint beside it, the additional data
//! binding it to its device, account and user name), so the database never holds a value in
//! clear and a value copied to another row does not open there.
//!
//! Every gateway sharing the database needs the same key file: a value sealed by one is opened by
//! another. Writes that seal take the key ring while holding a shared advisory lock that
//! re-encryption (`crate::pg::secrets`) takes exclusively, so `ward keys rotate --kek` never
//! misses a value written during it.

use ward_core::inject::Credential;
use ward_core::secret::Secret;

use crate::keywrap::Wrapped;
use crate::pg::query::{db, with_client_as};
use crate::pg::secrets::KEK_LOCK;
use crate::pg::PgStore;
use crate::vault::{
    check_names, check_value, not_found, open, seal, PutOutcome, VaultEntry, VaultError, VaultStore,
};

const ENTRY_COLUMNS: &str = "device, account, username, key_fp, created_unix, updated_unix, \
     last_used_unix, last_rotated_unix, pending, prev_ciphertext IS NOT NULL";

fn verr(e: tokio_postgres::Error) -> VaultError {
    VaultError::Store(db(e))
}

fn entry_of(r: &tokio_postgres::Row) -> Result<VaultEntry, VaultError> {
    Ok(VaultEntry {
        device: r.try_get(0).map_err(verr)?,
        account: r.try_get(1).map_err(verr)?,
        username: r.try_get(2).map_err(verr)?,
        key_fingerprint: r.try_get(3).map_err(verr)?,
        created_unix: r.try_get(4).map_err(verr)?,
        updated_unix: r.try_get(5).map_err(verr)?,
        last_used_unix: r.try_get(6).map_err(verr)?,
        last_rotated_unix: r.try_get(7).map_err(verr)?,
        pending: r.try_get(8).map_err(verr)?,
        has_previous: r.try_get(9).map_err(verr)?,
    })
}

/// A vault row's sealed values.
pub(crate) struct Row {
    pub(crate) username: String,
    pub(crate) current: Wrapped,
    pub(crate) previous: Option<Wrapped>,
    pub(crate) pending: bool,
}

pub(crate) const ROW: &str = "SELECT username, ciphertext, nonce, key_fp, prev_ciphertext, \
     prev_nonce, prev_key_fp, pending FROM vault WHERE device = $1 AND account = $2";

pub(crate) fn row_of(r: &tokio_postgres::Row) -> Result<Row, tokio_postgres::Error> {
    let prev = match (
        r.try_get::<_, Option<Vec<u8>>>(4)?,
        r.try_get::<_, Option<Vec<u8>>>(5)?,
        r.try_get::<_, Option<String>>(6)?,
    ) {
        (Some(ct), Some(nonce), Some(kek)) => Some(Wrapped { ct, nonce, kek }),
        _ => None,
    };
    Ok(Row {
        username: r.try_get(0)?,
        current: Wrapped {
            ct: r.try_get(1)?,
            nonce: r.try_get(2)?,
            kek: r.try_get(3)?,
        },
        previous: prev,
        pending: r.try_get(7)?,
    })
}

impl VaultStore for PgStore {
    fn put_credential(
        &self,
        device: &str,
        account: &str,
        username: &str,
        secret: &Secret<String>,
        now: i64,
    ) -> Result<PutOutcome, VaultError> {
        check_names(device, account)?;
        check_value(username, secret)?;
        let keys = self.keys().clone();
        let (device, account, username) =
            (device.to_owned(), account.to_owned(), username.to_owned());
        let secret = secret.clone();
        with_client_as(self, move |mut c| async move {
            let tx = c.transaction().await.map_err(verr)?;
            tx.execute("SELECT pg_advisory_xact_lock_shared($1)", &[&KEK_LOCK])
                .await
                .map_err(verr)?;
            let ring = keys.get()?;
            let w = seal(
                &ring,
                &device,
                &account,
                &username,
                secret.expose().as_bytes(),
            )?;
            // `xmax = 0`: the row was inserted, not updated.
            let row = tx
                .query_one(
                    "INSERT INTO vault (device, account, username, ciphertext, nonce, key_fp, \
                     created_unix, updated_unix, pending) VALUES ($1, $2, $3, $4, $5, $6, $7, $7, false) \
                     ON CONFLICT (device, account) DO UPDATE SET username = EXCLUDED.username, \
                     ciphertext = EXCLUDED.ciphertext, nonce = EXCLUDED.nonce, key_fp = EXCLUDED.key_fp, \
                     updated_unix = EXCLUDED.updated_unix, prev_ciphertext = NULL, prev_nonce = NULL, \
                     prev_key_fp = NULL, pending = false \
                     RETURNING (xmax = 0)",
                    &[&device, &account, &username, &w.ct, &w.nonce, &w.kek, &now],
                )
                .await
                .map_err(verr)?;
            let inserted: bool = row.try_get(0).map_err(verr)?;
            tx.commit().await.map_err(verr)?;
            Ok(if inserted {
                PutOutcome::Created
            } else {
                PutOutcome::Replaced
            })
        })
    }

    fn list_credentials(&self) -> Result<Vec<VaultEntry>, VaultError> {
        with_client_as(self, move |c| async move {
            let rows = c
                .query(
                    &format!("SELECT {ENTRY_COLUMNS} FROM vault ORDER BY device COLLATE \"C\", account COLLATE \"C\""),
                    &[],
                )
                .await
                .map_err(verr)?;
            rows.iter().map(entry_of).collect()
        })
    }

    fn credential_entry(
        &self,
        device: &str,
        account: &str,
    ) -> Result<Option<VaultEntry>, VaultError> {
        let (device, account) = (device.to_owned(), account.to_owned());
        with_client_as(self, move |c| async move {
            let row = c
                .query_opt(
                    &format!(
                        "SELECT {ENTRY_COLUMNS} FROM vault WHERE device = $1 AND account = $2"
                    ),
                    &[&device, &account],
                )
                .await
                .map_err(verr)?;
            row.as_ref().map(entry_of).transpose()
        })
    }

    fn remove_credential(&self, device: &str, account: &str) -> Result<bool, VaultError> {
        let (device, account) = (device.to_owned(), account.to_owned());
        with_client_as(self, move |c| async move {
            let n = c
                .execute(
                    "DELETE FROM vault WHERE device = $1 AND account = $2",
                    &[&device, &account],
                )
                .await
                .map_err(verr)?;
            Ok(n > 0)
        })
    }

    fn credential(
        &self,
        device: &str,
        account: &str,
        used_at: Option<i64>,
    ) -> Result<Credential, VaultError> {
        let keys = self.keys().clone();
        let (device, account) = (device.to_owned(), account.to_owned());
        with_client_as(self, move |c| async move {
            let row = c
                .query_opt(ROW, &[&device, &account])
                .await
                .map_err(verr)?
                .ok_or_else(|| not_found(&device, &account))?;
            let row = row_of(&row).map_err(verr)?;
            let secret = open(
                &*keys.get()?,
                &row.current,
                &device,
                &account,
                &row.username,
            )?;
            if let Some(t) = used_at {
                c.execute(
                    "UPDATE vault SET last_used_unix = $3 WHERE device = $1 AND account = $2",
                    &[&device, &account, &t],
                )
                .await
                .map_err(verr)?;
            }
            Ok(Credential {
                account,
                username: row.username,
                secret,
            })
        })
    }

    fn previous_credential(
        &self,
        device: &str,
        account: &str,
    ) -> Result<Option<Credential>, VaultError> {
        let keys = self.keys().clone();
        let (device, account) = (device.to_owned(), account.to_owned());
        with_client_as(self, move |c| async move {
            let row = c
                .query_opt(ROW, &[&device, &account])
                .await
                .map_err(verr)?
                .ok_or_else(|| not_found(&device, &account))?;
            let row = row_of(&row).map_err(verr)?;
            let Some(prev) = row.previous else {
                return Ok(None);
            };
            let secret = open(&*keys.get()?, &prev, &device, &account, &row.username)?;
            Ok(Some(Credential {
                account,
                username: row.username,
                secret,
            }))
        })
    }

    fn begin_rotation(
        &self,
        device: &str,
        account: &str,
        new: &Secret<String>,
        now: i64,
    ) -> Result<(), VaultError> {
        let keys = self.keys().clone();
        let (device, account) = (device.to_owned(), account.to_owned());
        let new = new.clone();
        with_client_as(self, move |mut c| async move {
            let tx = c.transaction().await.map_err(verr)?;
            tx.execute("SELECT pg_advisory_xact_lock_shared($1)", &[&KEK_LOCK])
                .await
                .map_err(verr)?;
            let ring = keys.get()?;
            // The row is locked until the commit: a racing rotation (another gateway) waits,
            // then sees it pending.
            let row = tx
                .query_opt(&format!("{ROW} FOR UPDATE"), &[&device, &account])
                .await
                .map_err(verr)?
                .ok_or_else(|| not_found(&device, &account))?;
            let row = row_of(&row).map_err(verr)?;
            if row.pending {
                return Err(VaultError::State(format!(
                    "a rotation of {device}/{account} is already pending"
                )));
            }
            check_value(&row.username, &new)?;
            // The current value must open under this key before it is kept as the fallback.
            drop(open(&ring, &row.current, &device, &account, &row.username)?);
            let w = seal(
                &ring,
                &device,
                &account,
                &row.username,
                new.expose().as_bytes(),
            )?;
            tx.execute(
                "UPDATE vault SET prev_ciphertext = ciphertext, prev_nonce = nonce, \
                 prev_key_fp = key_fp, ciphertext = $3, nonce = $4, key_fp = $5, \
                 updated_unix = $6, pending = true WHERE device = $1 AND account = $2",
                &[&device, &account, &w.ct, &w.nonce, &w.kek, &now],
            )
            .await
            .map_err(verr)?;
            tx.commit().await.map_err(verr)?;
            Ok(())
        })
    }

    fn commit_rotation(&self, device: &str, account: &str, now: i64) -> Result<(), VaultError> {
        let (device, account) = (device.to_owned(), account.to_owned());
        with_client_as(self, move |c| async move {
            let n = c
                .execute(
                    "UPDATE vault SET prev_ciphertext = NULL, prev_nonce = NULL, prev_key_fp = NULL, \
                     pending = false, last_rotated_unix = $3, updated_unix = $3 \
                     WHERE device = $1 AND account = $2 AND pending",
                    &[&device, &account, &now],
                )
                .await
                .map_err(verr)?;
            if n == 0 {
                return Err(VaultError::State(format!(
                    "no rotation of {device}/{account} is pending"
                )));
            }
            Ok(())
        })
    }

    fn abort_rotation(&self, device: &str, account: &str, now: i64) -> Result<(), VaultError> {
        let (device, account) = (device.to_owned(), account.to_owned());
        with_client_as(self, move |mut c| async move {
            // Moves the previous value back: not while a re-encryption runs.
            let tx = c.transaction().await.map_err(verr)?;
            tx.execute("SELECT pg_advisory_xact_lock_shared($1)", &[&KEK_LOCK])
                .await
                .map_err(verr)?;
            let n = tx
                .execute(
                    "UPDATE vault SET ciphertext = prev_ciphertext, nonce = prev_nonce, \
                     key_fp = prev_key_fp, prev_ciphertext = NULL, prev_nonce = NULL, \
                     prev_key_fp = NULL, pending = false, updated_unix = $3 \
                     WHERE device = $1 AND account = $2 AND pending AND prev_ciphertext IS NOT NULL",
                    &[&device, &account, &now],
                )
                .await
                .map_err(verr)?;
            if n == 0 {
                return Err(VaultError::State(format!(
                    "no rotation of {device}/{account} is pending"
                )));
            }
            tx.commit().await.map_err(verr)?;
            Ok(())
        })
    }
}
