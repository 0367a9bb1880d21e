//! The store's secrets on PostgreSQL ([`SecretStore`] for [`PgStore`]): counts per key, and the
//! re-encryption of every vault value and TOTP seed to the current key in one transaction, so
//! `ward keys rotate --kek` works on a shared database as on SQLite.
//!
//! The key-encryption key stays a file on each gateway: every gateway sharing the database needs
//! the same one. A rotation on one gateway re-encrypts the shared rows to its new key; the other
//! gateways then need that key file (copy it, restart them): until they have it, what they open
//! fails naming the key's fingerprint (docs/deployment.md).

use crate::keywrap::{
    key_counts_of, KeyCount, KeyError, KeyHandle, KeyRing, Rewrapped, SecretStore,
};
use crate::pg::query::with_client;
use crate::pg::PgStore;
use crate::store::StoreError;

/// The advisory lock re-encryption holds exclusively and every write that seals holds shared
/// (`"WARDKEK"`): a value is never sealed under a key a running re-encryption is moving away
/// from without that re-encryption seeing it.
pub(crate) const KEK_LOCK: i64 = 0x0057_4152_444b_454b;

fn pg_key(e: tokio_postgres::Error) -> KeyError {
    KeyError::Key(format!("the database: {}", crate::pg::query::db(e)))
}

fn store_key(e: StoreError) -> KeyError {
    KeyError::Key(e.to_string())
}

/// `(fingerprint, count)` rows of a counting query.
fn counted(rows: &[tokio_postgres::Row]) -> Result<Vec<(String, usize)>, KeyError> {
    rows.iter()
        .map(|r| {
            let fp: String = r.try_get(0).map_err(pg_key)?;
            let n: i64 = r.try_get(1).map_err(pg_key)?;
            Ok((fp, usize::try_from(n).unwrap_or(0)))
        })
        .collect()
}

impl SecretStore for PgStore {
    fn key_handle(&self) -> KeyHandle {
        self.keys().clone()
    }

    fn key_counts(&self) -> Result<Vec<KeyCount>, KeyError> {
        let counts: Result<_, StoreError> = with_client(self, move |c| async move {
            let vault = c
                .query(
                    "SELECT fp, COUNT(*) FROM (SELECT key_fp AS fp FROM vault \
                     UNION ALL SELECT prev_key_fp AS fp FROM vault WHERE prev_key_fp IS NOT NULL) v \
                     GROUP BY fp ORDER BY fp",
                    &[],
                )
                .await
                .map_err(crate::pg::query::db)?;
            let client: &tokio_postgres::Client = &c;
            let totp = crate::pg::users::counts(client).await?;
            Ok((vault, totp))
        });
        let (vault, totp) = counts.map_err(store_key)?;
        Ok(key_counts_of(
            self.keys().get().ok().as_deref(),
            counted(&vault)?,
            totp,
        ))
    }

    fn rewrap_all(&self, ring: &KeyRing) -> Result<Rewrapped, KeyError> {
        let ring = ring.clone();
        let out: Result<Result<Rewrapped, KeyError>, StoreError> = with_client(
            self,
            move |mut c| async move { Ok(rewrap(&mut c, &ring).await) },
        );
        out.map_err(store_key)?
    }
}

/// Every value and seed not under `ring`'s current key moved to it, in one transaction that
/// holds [`KEK_LOCK`] exclusively; a value no key opens rolls it all back (naming the key).
async fn rewrap(c: &mut deadpool_postgres::Object, ring: &KeyRing) -> Result<Rewrapped, KeyError> {
    let tx = c.transaction().await.map_err(pg_key)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&KEK_LOCK])
        .await
        .map_err(pg_key)?;
    let current = ring.fingerprint().to_owned();
    let mut done = Rewrapped::default();
    // The vault: current and previous values.
    let rows = tx
        .query(
            "SELECT device, account FROM vault WHERE key_fp <> $1 OR prev_key_fp <> $1 \
             ORDER BY device, account FOR UPDATE",
            &[&current],
        )
        .await
        .map_err(pg_key)?;
    for r in rows {
        let device: String = r.try_get(0).map_err(pg_key)?;
        let account: String = r.try_get(1).map_err(pg_key)?;
        let Some(row) = tx
            .query_opt(crate::pg::vault::ROW, &[&device, &account])
            .await
            .map_err(pg_key)?
        else {
            continue;
        };
        let row = crate::pg::vault::row_of(&row).map_err(pg_key)?;
        let a = crate::vault::aad(&device, &account, &row.username);
        let what = format!("the vaulted value for {device}/{account}");
        if let Some(w) = ring.rewrap(&row.current, &a, &what)? {
            tx.execute(
                "UPDATE vault SET ciphertext = $3, nonce = $4, key_fp = $5 \
                 WHERE device = $1 AND account = $2",
                &[&device, &account, &w.ct, &w.nonce, &w.kek],
            )
            .await
            .map_err(pg_key)?;
            done.vault_values += 1;
        }
        if let Some(prev) = &row.previous {
            if let Some(w) = ring.rewrap(prev, &a, &what)? {
                tx.execute(
                    "UPDATE vault SET prev_ciphertext = $3, prev_nonce = $4, prev_key_fp = $5 \
                     WHERE device = $1 AND account = $2",
                    &[&device, &account, &w.ct, &w.nonce, &w.kek],
                )
                .await
                .map_err(pg_key)?;
                done.vault_values += 1;
            }
        }
    }
    // TOTP seeds (and legacy plaintext ones): the users table's own re-encryption.
    let (moved, sealed) = crate::pg::users::rewrap(&tx, ring).await?;
    done.totp_seeds = moved;
    done.plaintext_seeds_sealed = sealed;
    tx.commit().await.map_err(pg_key)?;
    Ok(done)
}
