//! Users and the login back-off ([`UserStore`]) in PostgreSQL: the same rows as SQLite, TOTP
//! seeds sealed the same way (under the gateways' shared key-encryption key, bound to the user's
//! name). [`UserStore::record_totp_step`] and [`UserStore::note_login_failure`] are single
//! statements, atomic across gateways.

use time::OffsetDateTime;

use super::{pg_err, PgStore};
use crate::gateways::{from_unix_ms, unix_ms};
use crate::keywrap::{KeyError, KeyRing, Wrapped};
use crate::store::StoreError;
use crate::users::{
    check_user_name, failures_of, seal_totp, to_user, totp_aad, totp_what, Row, User, UserStore,
    COLUMNS,
};

fn read_row(r: &tokio_postgres::Row) -> Result<Row, StoreError> {
    let ct: Option<Vec<u8>> = r.try_get(11).map_err(pg_err)?;
    let nonce: Option<Vec<u8>> = r.try_get(12).map_err(pg_err)?;
    let kek: Option<String> = r.try_get(13).map_err(pg_err)?;
    Ok((
        r.try_get(0).map_err(pg_err)?,
        r.try_get(1).map_err(pg_err)?,
        r.try_get(2).map_err(pg_err)?,
        r.try_get(3).map_err(pg_err)?,
        r.try_get(4).map_err(pg_err)?,
        r.try_get(5).map_err(pg_err)?,
        r.try_get(6).map_err(pg_err)?,
        r.try_get(7).map_err(pg_err)?,
        r.try_get(8).map_err(pg_err)?,
        r.try_get(9).map_err(pg_err)?,
        r.try_get(10).map_err(pg_err)?,
        match (ct, nonce, kek) {
            (Some(ct), Some(nonce), Some(kek)) => Some(Wrapped { kek, nonce, ct }),
            _ => None,
        },
    ))
}

impl UserStore for PgStore {
    fn add_user(&self, user: &User) -> Result<(), StoreError> {
        check_user_name(&user.name)?;
        if !user.kind.is_person() {
            return Err(StoreError::Invalid(format!(
                "user {:?}: kind {} is not a person",
                user.name, user.kind
            )));
        }
        let roles = serde_json::to_string(&user.roles)
            .map_err(|e| StoreError::Invalid(format!("roles: {e}")))?;
        let sealed = match &user.totp_secret {
            Some(seed) => Some(seal_totp(&*self.keys().get()?, &user.name, seed)?),
            None => None,
        };
        let (db, u) = (self.db(), user.clone());
        self.block(async move {
            let c = db.get().await?;
            let n = c
                .execute(
                    &format!(
                        "INSERT INTO users ({COLUMNS}) VALUES \
                         ($1, $2, $3, $4, $5, NULL, $6, $7, $8, $9, $10, $11, $12, $13) \
                         ON CONFLICT (name) DO NOTHING"
                    ),
                    &[
                        &u.name,
                        &u.kind.as_str(),
                        &u.org,
                        &roles,
                        &u.password_phc,
                        &u.totp_last_step,
                        &u.disabled,
                        &u.created_unix,
                        &u.disabled_unix,
                        &u.must_change_password,
                        &sealed.as_ref().map(|w| w.ct.clone()),
                        &sealed.as_ref().map(|w| w.nonce.clone()),
                        &sealed.as_ref().map(|w| w.kek.clone()),
                    ],
                )
                .await
                .map_err(pg_err)?;
            if n == 0 {
                return Err(StoreError::Exists(format!("user {:?}", u.name)));
            }
            Ok(())
        })
    }

    fn user(&self, name: &str) -> Result<Option<User>, StoreError> {
        let (db, name) = (self.db(), name.to_owned());
        let row = self.block(async move {
            let c = db.get().await?;
            let row = c
                .query_opt(
                    &format!("SELECT {COLUMNS} FROM users WHERE name = $1"),
                    &[&name],
                )
                .await
                .map_err(pg_err)?;
            row.as_ref().map(read_row).transpose()
        })?;
        row.map(|r| to_user(r, self.keys())).transpose()
    }

    fn list_users(&self) -> Result<Vec<User>, StoreError> {
        let db = self.db();
        let rows = self.block(async move {
            let c = db.get().await?;
            let rows = c
                .query(&format!("SELECT {COLUMNS} FROM users ORDER BY name"), &[])
                .await
                .map_err(pg_err)?;
            rows.iter().map(read_row).collect::<Result<Vec<_>, _>>()
        })?;
        rows.into_iter().map(|r| to_user(r, self.keys())).collect()
    }

    fn disable_user(&self, name: &str, now: OffsetDateTime) -> Result<bool, StoreError> {
        let (db, name, now) = (self.db(), name.to_owned(), now.unix_timestamp());
        self.block(async move {
            let c = db.get().await?;
            let n = c
                .execute(
                    "UPDATE users SET disabled = true, disabled_unix = $2
                     WHERE name = $1 AND NOT disabled",
                    &[&name, &now],
                )
                .await
                .map_err(pg_err)?;
            Ok(n > 0)
        })
    }

    fn set_password(&self, name: &str, phc: &str) -> Result<bool, StoreError> {
        let (db, name, phc) = (self.db(), name.to_owned(), phc.to_owned());
        self.block(async move {
            let c = db.get().await?;
            let n = c
                .execute(
                    "UPDATE users SET password_phc = $2, must_change_password = false WHERE name = $1",
                    &[&name, &phc],
                )
                .await
                .map_err(pg_err)?;
            Ok(n > 0)
        })
    }

    fn set_totp(&self, name: &str, secret_base32: Option<&str>) -> Result<bool, StoreError> {
        let sealed = match secret_base32 {
            Some(seed) => Some(seal_totp(&*self.keys().get()?, name, seed)?),
            None => None,
        };
        let (db, name) = (self.db(), name.to_owned());
        self.block(async move {
            let c = db.get().await?;
            let n = c
                .execute(
                    "UPDATE users SET totp_secret = NULL, totp_ct = $2, totp_nonce = $3,
                     totp_kek = $4, totp_last_step = NULL WHERE name = $1",
                    &[
                        &name,
                        &sealed.as_ref().map(|w| w.ct.clone()),
                        &sealed.as_ref().map(|w| w.nonce.clone()),
                        &sealed.as_ref().map(|w| w.kek.clone()),
                    ],
                )
                .await
                .map_err(pg_err)?;
            Ok(n > 0)
        })
    }

    fn record_totp_step(&self, name: &str, step: i64) -> Result<bool, StoreError> {
        let (db, name) = (self.db(), name.to_owned());
        self.block(async move {
            let c = db.get().await?;
            // One statement: a racing login on another gateway waits for this row's lock, then
            // re-checks the condition against the committed step.
            let n = c
                .execute(
                    "UPDATE users SET totp_last_step = $2
                     WHERE name = $1 AND (totp_last_step IS NULL OR totp_last_step < $2)",
                    &[&name, &step],
                )
                .await
                .map_err(pg_err)?;
            Ok(n > 0)
        })
    }

    fn disabled_users(&self) -> Result<Vec<String>, StoreError> {
        let db = self.db();
        self.block(async move {
            let c = db.get().await?;
            let rows = c
                .query("SELECT name FROM users WHERE disabled ORDER BY name", &[])
                .await
                .map_err(pg_err)?;
            rows.iter().map(|r| r.try_get(0).map_err(pg_err)).collect()
        })
    }

    fn note_login_failure(&self, name: &str, now: OffsetDateTime) -> Result<u32, StoreError> {
        let (db, name, now) = (self.db(), name.to_owned(), unix_ms(now));
        self.block(async move {
            let c = db.get().await?;
            // Two gateways inserting the first failure for a name at once: one inserts, the
            // other's conflict turns into the update; no retry needed.
            let row = c
                .query_one(
                    "INSERT INTO login_failures (name, failures, last_unix_ms) VALUES ($1, 1, $2)
                     ON CONFLICT (name) DO UPDATE
                     SET failures = login_failures.failures + 1,
                         last_unix_ms = GREATEST(login_failures.last_unix_ms, excluded.last_unix_ms)
                     RETURNING failures",
                    &[&name, &now],
                )
                .await
                .map_err(pg_err)?;
            let n: i32 = row.try_get(0).map_err(pg_err)?;
            Ok(failures_of(i64::from(n)))
        })
    }

    fn login_failures(&self, name: &str) -> Result<(u32, Option<OffsetDateTime>), StoreError> {
        let (db, name) = (self.db(), name.to_owned());
        self.block(async move {
            let c = db.get().await?;
            let row = c
                .query_opt(
                    "SELECT failures, last_unix_ms FROM login_failures WHERE name = $1",
                    &[&name],
                )
                .await
                .map_err(pg_err)?;
            match row {
                Some(r) => {
                    let n: i32 = r.try_get(0).map_err(pg_err)?;
                    let last: i64 = r.try_get(1).map_err(pg_err)?;
                    Ok((failures_of(i64::from(n)), Some(from_unix_ms(last)?)))
                }
                None => Ok((0, None)),
            }
        })
    }

    fn clear_login_failures(&self, name: &str) -> Result<(), StoreError> {
        let (db, name) = (self.db(), name.to_owned());
        self.block(async move {
            let c = db.get().await?;
            c.execute("DELETE FROM login_failures WHERE name = $1", &[&name])
                .await
                .map_err(pg_err)?;
            Ok(())
        })
    }
}

/// Seeds (sealed and legacy plaintext) re-sealed under `ring`'s current key inside the caller's
/// transaction: (re-encrypted, plaintext sealed). For the PostgreSQL `SecretStore`.
pub async fn rewrap(
    tx: &tokio_postgres::Transaction<'_>,
    ring: &KeyRing,
) -> Result<(usize, usize), KeyError> {
    let db = |e: tokio_postgres::Error| KeyError::Key(format!("database: {}", super::pg_text(&e)));
    let rows = tx
        .query(
            "SELECT name, totp_secret, totp_ct, totp_nonce, totp_kek FROM users
             WHERE totp_secret IS NOT NULL OR (totp_kek IS NOT NULL AND totp_kek != $1)
             ORDER BY name FOR UPDATE",
            &[&ring.fingerprint()],
        )
        .await
        .map_err(db)?;
    let (mut moved, mut sealed) = (0, 0);
    for r in rows {
        let name: String = r.try_get(0).map_err(db)?;
        let plain: Option<String> = r.try_get(1).map_err(db)?;
        let ct: Option<Vec<u8>> = r.try_get(2).map_err(db)?;
        let nonce: Option<Vec<u8>> = r.try_get(3).map_err(db)?;
        let kek: Option<String> = r.try_get(4).map_err(db)?;
        let w = match (ct, nonce, kek) {
            (Some(ct), Some(nonce), Some(kek)) => {
                let old = Wrapped { kek, nonce, ct };
                match ring.rewrap(&old, &totp_aad(&name), &totp_what(&name))? {
                    Some(w) => {
                        moved += 1;
                        w
                    }
                    None => old,
                }
            }
            _ => match plain {
                Some(p) => {
                    let p = zeroize::Zeroizing::new(p);
                    sealed += 1;
                    seal_totp(ring, &name, &p)?
                }
                None => continue,
            },
        };
        tx.execute(
            "UPDATE users SET totp_secret = NULL, totp_ct = $2, totp_nonce = $3, totp_kek = $4
             WHERE name = $1",
            &[&name, &w.ct, &w.nonce, &w.kek],
        )
        .await
        .map_err(db)?;
    }
    Ok((moved, sealed))
}

/// TOTP seeds per key fingerprint; legacy plaintext seeds count under `plaintext`.
pub async fn counts(
    c: &impl tokio_postgres::GenericClient,
) -> Result<Vec<(String, usize)>, StoreError> {
    let rows = c
        .query(
            "SELECT COALESCE(totp_kek, 'plaintext') AS fp, COUNT(*) FROM users
             WHERE totp_kek IS NOT NULL OR totp_secret IS NOT NULL GROUP BY fp ORDER BY fp",
            &[],
        )
        .await
        .map_err(pg_err)?;
    rows.iter()
        .map(|r| {
            let fp: String = r.try_get(0).map_err(pg_err)?;
            let n: i64 = r.try_get(1).map_err(pg_err)?;
            Ok((fp, usize::try_from(n).unwrap_or(0)))
        })
        .collect()
}
