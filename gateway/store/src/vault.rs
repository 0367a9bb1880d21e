//! The credential vault: device passwords the gateway injects, encrypted at rest.
//!
//! Every value is sealed by the store's key-encryption key ([`crate::keywrap`]: a [`KeyRing`]
//! behind the store's [`crate::keywrap::KeyHandle`], today AES-256-GCM under a file-based
//! [`Kek`]). The row stores the ciphertext, its nonce and the key's fingerprint, so a value
//! sealed under another key is named as such instead of failing as garbage, and `ward keys rotate
//! --kek` (alias `ward vault rekey`) moves every value to a new key in one transaction. The
//! additional authenticated data binds a value to its device, account and user name: a
//! ciphertext copied to another row (by anyone with write access to `ward.db`) does not decrypt
//! there. The key is taken from the handle while the store's connection is held, so a rotation's
//! re-encryption never misses a value written during it.
//!
//! Rotation keeps two values: the new one (`pending` until a login with it succeeds) and the
//! previous one, so a rotation that fails half-way leaves a working credential
//! ([`VaultStore::begin_rotation`], [`VaultStore::commit_rotation`],
//! [`VaultStore::abort_rotation`]). Listings ([`VaultEntry`]) never carry a value, and no error
//! here carries one either.

use rusqlite::OptionalExtension;
use serde::Serialize;
use ward_core::inject::Credential;
use ward_core::secret::Secret;
use zeroize::Zeroize;

pub use crate::keywrap::{Kek, KeySource, DEFAULT_KEY_FILE};
use crate::keywrap::{KeyError, KeyRing, Wrapped};
use crate::store::{SqliteStore, StoreError};
/// Longest vaulted value, in bytes.
pub const MAX_SECRET_LEN: usize = 1024;
/// Longest device-side user name, in bytes.
pub const MAX_USERNAME_LEN: usize = 128;
/// Longest account name.
pub const MAX_ACCOUNT_LEN: usize = 64;

/// Why a vault operation failed. No variant carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The value was sealed under another key.
    #[error("the vaulted value for {device}/{account} was sealed under the key-encryption key with fingerprint {stored}, but this gateway holds {current}: start with the key {stored} (the [vault] key_file or key_env it was made with), or set the value again with `ward vault set {device} {account}`")]
    WrongKey {
        /// Device id.
        device: String,
        /// Account.
        account: String,
        /// The fingerprint stored with the value (the key it needs).
        stored: String,
        /// The fingerprints of the keys at hand.
        current: String,
    },
    /// The value does not decrypt under the right key: it was altered, or moved from another row.
    #[error("the vaulted value for {device}/{account} fails its integrity check (altered, or copied from another row of ward.db): set it again with `ward vault set {device} {account}`")]
    Tampered {
        /// Device id.
        device: String,
        /// Account.
        account: String,
    },
    /// The key could not be read, created or parsed.
    #[error("vault key: {0}")]
    Key(String),
    /// A name or value refused before it reached the database (the text never quotes a value).
    #[error("{0}")]
    Invalid(String),
    /// Nothing is vaulted under that name.
    #[error("no vaulted credential for {device}/{account}; an admin runs `ward vault set {device} {account}`")]
    NotFound {
        /// Device id.
        device: String,
        /// Account.
        account: String,
    },
    /// The entry is not in the state the operation needs (e.g. no rotation pending).
    #[error("{0}")]
    State(String),
    /// The crypto library failed (no randomness, …).
    #[error("vault encryption failed: {0}")]
    Crypto(&'static str),
}

impl From<rusqlite::Error> for VaultError {
    fn from(e: rusqlite::Error) -> Self {
        VaultError::Store(StoreError::Db(e))
    }
}

impl From<KeyError> for VaultError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Crypto(what) => VaultError::Crypto(what),
            other => VaultError::Key(other.to_string()),
        }
    }
}

/// A [`KeyError`] about the value of (device, account), as the vault names it.
fn key_error(e: KeyError, device: &str, account: &str) -> VaultError {
    match e {
        KeyError::Missing { needed, held, .. } => VaultError::WrongKey {
            device: device.to_owned(),
            account: account.to_owned(),
            stored: needed,
            current: held,
        },
        KeyError::Tampered { .. } => VaultError::Tampered {
            device: device.to_owned(),
            account: account.to_owned(),
        },
        other => other.into(),
    }
}

/// The additional authenticated data: a version tag and the length-prefixed names.
pub(crate) fn aad(device: &str, account: &str, username: &str) -> Vec<u8> {
    crate::keywrap::aad("ward-vault-v1", &[device, account, username])
}

/// Seals a value for (device, account, username) under the ring's current key.
pub(crate) fn seal(
    ring: &KeyRing,
    device: &str,
    account: &str,
    username: &str,
    plain: &[u8],
) -> Result<Wrapped, VaultError> {
    ring.wrap(plain, &aad(device, account, username))
        .map_err(|e| key_error(e, device, account))
}

/// Opens a value sealed by [`seal`] for the same names.
pub(crate) fn open(
    ring: &KeyRing,
    sealed: &Wrapped,
    device: &str,
    account: &str,
    username: &str,
) -> Result<Secret<String>, VaultError> {
    let what = format!("the vaulted value for {device}/{account}");
    let plain = ring
        .unwrap(sealed, &aad(device, account, username), &what)
        .map_err(|e| key_error(e, device, account))?;
    match String::from_utf8(plain.expose().clone()) {
        Ok(s) => Ok(Secret::new(s)),
        Err(e) => {
            let mut b = e.into_bytes();
            b.zeroize();
            Err(VaultError::Tampered {
                device: device.to_owned(),
                account: account.to_owned(),
            })
        }
    }
}

/// One vault entry as listed: names, key fingerprint and times (Unix seconds). Never a value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VaultEntry {
    /// Device id.
    pub device: String,
    /// The vault account (role on the device).
    pub account: String,
    /// The user name the device knows.
    pub username: String,
    /// Fingerprint of the key the current value is sealed under.
    pub key_fingerprint: String,
    /// When first set.
    pub created_unix: i64,
    /// When the value last changed (set, rotation, rekey).
    pub updated_unix: i64,
    /// When a session (or a rotation) last used it.
    pub last_used_unix: Option<i64>,
    /// When a rotation last committed.
    pub last_rotated_unix: Option<i64>,
    /// A rotation stored a new value that no login has confirmed yet; the previous value is kept.
    pub pending: bool,
    /// A previous value is kept (during a rotation).
    pub has_previous: bool,
}

/// What [`VaultStore::put_credential`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// A new entry.
    Created,
    /// An existing entry's value (and user name) was replaced; any pending rotation was dropped.
    Replaced,
}

/// Whether `device` and `account` are names the vault accepts (device ids as in the config,
/// accounts `[a-z0-9._-]`, starting with a letter or digit).
pub fn check_names(device: &str, account: &str) -> Result<(), VaultError> {
    ward_core::DeviceId::new(device).map_err(|e| VaultError::Invalid(e.to_string()))?;
    let mut b = account.bytes();
    let first = b
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest =
        b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-'));
    if !(first && rest && account.len() <= MAX_ACCOUNT_LEN) {
        return Err(VaultError::Invalid(format!(
            "account {:?} is not allowed: use 1-{MAX_ACCOUNT_LEN} of a-z 0-9 . _ -, starting with a letter or digit (e.g. service, nurse)",
            ward_core::escape(account)
        )));
    }
    Ok(())
}

/// Whether a user name and value can be vaulted (the text never quotes the value).
pub fn check_value(username: &str, secret: &Secret<String>) -> Result<(), VaultError> {
    if username.is_empty()
        || username.len() > MAX_USERNAME_LEN
        || username.chars().any(|c| c.is_control())
    {
        return Err(VaultError::Invalid(format!(
            "user name {:?} is not allowed: 1-{MAX_USERNAME_LEN} bytes, no control characters",
            ward_core::escape(username)
        )));
    }
    let s = secret.expose();
    if s.is_empty() {
        return Err(VaultError::Invalid("the password is empty".into()));
    }
    if s.len() > MAX_SECRET_LEN {
        return Err(VaultError::Invalid(format!(
            "the password is {} bytes; at most {MAX_SECRET_LEN}",
            s.len()
        )));
    }
    if s.chars().any(|c| c.is_control()) {
        return Err(VaultError::Invalid(
            "the password holds a control character (a line break, a tab, …); a console cannot take it".into(),
        ));
    }
    Ok(())
}

/// The vault's table. Object-safe; `SqliteStore` implements it. Values go in and out as
/// [`Secret`]s; the store seals and opens them with its key ring ([`crate::keywrap::KeyHandle`]).
pub trait VaultStore: Send + Sync {
    /// Create or replace the value for (device, account). Replacing drops a pending rotation and
    /// the previous value (the admin has said what the password is).
    fn put_credential(
        &self,
        device: &str,
        account: &str,
        username: &str,
        secret: &Secret<String>,
        now: i64,
    ) -> Result<PutOutcome, VaultError>;
    /// Every entry, by device then account. Never a value.
    fn list_credentials(&self) -> Result<Vec<VaultEntry>, VaultError>;
    /// One entry.
    fn credential_entry(
        &self,
        device: &str,
        account: &str,
    ) -> Result<Option<VaultEntry>, VaultError>;
    /// Remove an entry; whether it existed.
    fn remove_credential(&self, device: &str, account: &str) -> Result<bool, VaultError>;
    /// The current value, decrypted; marks it used at `used_at` when given.
    fn credential(
        &self,
        device: &str,
        account: &str,
        used_at: Option<i64>,
    ) -> Result<Credential, VaultError>;
    /// The previous value kept during a rotation, decrypted.
    fn previous_credential(
        &self,
        device: &str,
        account: &str,
    ) -> Result<Option<Credential>, VaultError>;
    /// Rotation, step 1 (before the device is changed): the current value becomes the previous
    /// one and `new` the current one, pending. Refused if a rotation is already pending.
    fn begin_rotation(
        &self,
        device: &str,
        account: &str,
        new: &Secret<String>,
        now: i64,
    ) -> Result<(), VaultError>;
    /// Rotation, done: a login with the new value succeeded. Drops the previous value.
    fn commit_rotation(&self, device: &str, account: &str, now: i64) -> Result<(), VaultError>;
    /// Rotation, undone: the previous value is current again (the device kept it).
    fn abort_rotation(&self, device: &str, account: &str, now: i64) -> Result<(), VaultError>;
}

const ENTRY_COLUMNS: &str = "device, account, username, key_fp, created_unix, updated_unix, \
     last_used_unix, last_rotated_unix, pending, prev_ciphertext IS NOT NULL";

fn read_entry(row: &rusqlite::Row<'_>) -> rusqlite::Result<VaultEntry> {
    Ok(VaultEntry {
        device: row.get(0)?,
        account: row.get(1)?,
        username: row.get(2)?,
        key_fingerprint: row.get(3)?,
        created_unix: row.get(4)?,
        updated_unix: row.get(5)?,
        last_used_unix: row.get(6)?,
        last_rotated_unix: row.get(7)?,
        pending: row.get(8)?,
        has_previous: row.get(9)?,
    })
}

struct Row {
    username: String,
    current: Wrapped,
    previous: Option<Wrapped>,
    pending: bool,
}

fn read_row(
    conn: &rusqlite::Connection,
    device: &str,
    account: &str,
) -> Result<Option<Row>, VaultError> {
    let row = conn
        .query_row(
            "SELECT username, ciphertext, nonce, key_fp, prev_ciphertext, prev_nonce, prev_key_fp, pending
             FROM vault WHERE device = ?1 AND account = ?2",
            rusqlite::params![device, account],
            |r| {
                let prev = match (
                    r.get::<_, Option<Vec<u8>>>(4)?,
                    r.get::<_, Option<Vec<u8>>>(5)?,
                    r.get::<_, Option<String>>(6)?,
                ) {
                    (Some(ciphertext), Some(nonce), Some(fp)) => Some(Wrapped {
                        ct: ciphertext,
                        nonce,
                        kek: fp,
                    }),
                    _ => None,
                };
                Ok(Row {
                    username: r.get(0)?,
                    current: Wrapped {
                        ct: r.get(1)?,
                        nonce: r.get(2)?,
                        kek: r.get(3)?,
                    },
                    previous: prev,
                    pending: r.get(7)?,
                })
            },
        )
        .optional()?;
    Ok(row)
}

pub(crate) fn not_found(device: &str, account: &str) -> VaultError {
    VaultError::NotFound {
        device: device.to_owned(),
        account: account.to_owned(),
    }
}

impl VaultStore for SqliteStore {
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
        let mut conn = self.conn()?;
        let ring = self.keys().get()?;
        let w = seal(&ring, device, account, username, secret.expose().as_bytes())?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let updated = tx.execute(
            "UPDATE vault SET username = ?3, ciphertext = ?4, nonce = ?5, key_fp = ?6, updated_unix = ?7,
                 prev_ciphertext = NULL, prev_nonce = NULL, prev_key_fp = NULL, pending = 0
             WHERE device = ?1 AND account = ?2",
            rusqlite::params![device, account, username, w.ct, w.nonce, w.kek, now],
        )?;
        let outcome = if updated > 0 {
            PutOutcome::Replaced
        } else {
            tx.execute(
                "INSERT INTO vault (device, account, username, ciphertext, nonce, key_fp, created_unix, updated_unix, pending)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, 0)",
                rusqlite::params![device, account, username, w.ct, w.nonce, w.kek, now],
            )?;
            PutOutcome::Created
        };
        tx.commit()?;
        Ok(outcome)
    }

    fn list_credentials(&self) -> Result<Vec<VaultEntry>, VaultError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(&format!(
            "SELECT {ENTRY_COLUMNS} FROM vault ORDER BY device, account"
        ))?;
        let rows = stmt.query_map([], read_entry)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn credential_entry(
        &self,
        device: &str,
        account: &str,
    ) -> Result<Option<VaultEntry>, VaultError> {
        let conn = self.conn()?;
        Ok(conn
            .query_row(
                &format!("SELECT {ENTRY_COLUMNS} FROM vault WHERE device = ?1 AND account = ?2"),
                rusqlite::params![device, account],
                read_entry,
            )
            .optional()?)
    }

    fn remove_credential(&self, device: &str, account: &str) -> Result<bool, VaultError> {
        let conn = self.conn()?;
        let n = conn.execute(
            "DELETE FROM vault WHERE device = ?1 AND account = ?2",
            rusqlite::params![device, account],
        )?;
        Ok(n > 0)
    }

    fn credential(
        &self,
        device: &str,
        account: &str,
        used_at: Option<i64>,
    ) -> Result<Credential, VaultError> {
        let conn = self.conn()?;
        let row = read_row(&conn, device, account)?.ok_or_else(|| not_found(device, account))?;
        let secret = open(
            &*self.keys().get()?,
            &row.current,
            device,
            account,
            &row.username,
        )?;
        if let Some(t) = used_at {
            conn.execute(
                "UPDATE vault SET last_used_unix = ?3 WHERE device = ?1 AND account = ?2",
                rusqlite::params![device, account, t],
            )?;
        }
        Ok(Credential {
            account: account.to_owned(),
            username: row.username,
            secret,
        })
    }

    fn previous_credential(
        &self,
        device: &str,
        account: &str,
    ) -> Result<Option<Credential>, VaultError> {
        let conn = self.conn()?;
        let row = read_row(&conn, device, account)?.ok_or_else(|| not_found(device, account))?;
        let Some(prev) = row.previous else {
            return Ok(None);
        };
        let secret = open(&*self.keys().get()?, &prev, device, account, &row.username)?;
        Ok(Some(Credential {
            account: account.to_owned(),
            username: row.username,
            secret,
        }))
    }

    fn begin_rotation(
        &self,
        device: &str,
        account: &str,
        new: &Secret<String>,
        now: i64,
    ) -> Result<(), VaultError> {
        let mut conn = self.conn()?;
        let ring = self.keys().get()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let row = read_row(&tx, device, account)?.ok_or_else(|| not_found(device, account))?;
        if row.pending {
            return Err(VaultError::State(format!(
                "a rotation of {device}/{account} is already pending"
            )));
        }
        check_value(&row.username, new)?;
        // The current value must open under this key before it is kept as the fallback.
        drop(open(&ring, &row.current, device, account, &row.username)?);
        let w = seal(
            &ring,
            device,
            account,
            &row.username,
            new.expose().as_bytes(),
        )?;
        tx.execute(
            "UPDATE vault SET prev_ciphertext = ciphertext, prev_nonce = nonce, prev_key_fp = key_fp,
                 ciphertext = ?3, nonce = ?4, key_fp = ?5, updated_unix = ?6, pending = 1
             WHERE device = ?1 AND account = ?2",
            rusqlite::params![device, account, w.ct, w.nonce, w.kek, now],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn commit_rotation(&self, device: &str, account: &str, now: i64) -> Result<(), VaultError> {
        let conn = self.conn()?;
        let n = conn.execute(
            "UPDATE vault SET prev_ciphertext = NULL, prev_nonce = NULL, prev_key_fp = NULL,
                 pending = 0, last_rotated_unix = ?3, updated_unix = ?3
             WHERE device = ?1 AND account = ?2 AND pending = 1",
            rusqlite::params![device, account, now],
        )?;
        if n == 0 {
            return Err(VaultError::State(format!(
                "no rotation of {device}/{account} is pending"
            )));
        }
        Ok(())
    }

    fn abort_rotation(&self, device: &str, account: &str, now: i64) -> Result<(), VaultError> {
        let conn = self.conn()?;
        let n = conn.execute(
            "UPDATE vault SET ciphertext = prev_ciphertext, nonce = prev_nonce, key_fp = prev_key_fp,
                 prev_ciphertext = NULL, prev_nonce = NULL, prev_key_fp = NULL,
                 pending = 0, updated_unix = ?3
             WHERE device = ?1 AND account = ?2 AND pending = 1 AND prev_ciphertext IS NOT NULL",
            rusqlite::params![device, account, now],
        )?;
        if n == 0 {
            return Err(VaultError::State(format!(
                "no rotation of {device}/{account} is pending"
            )));
        }
        Ok(())
    }
}

/// Re-encrypts every vault value (current and previous) not under `ring`'s current key, inside
/// the caller's transaction; a value no key opens stops it. Returns how many moved.
pub(crate) fn rewrap(tx: &rusqlite::Transaction<'_>, ring: &KeyRing) -> Result<usize, KeyError> {
    let db = |e: rusqlite::Error| KeyError::Key(format!("ward.db: {e}"));
    let keys: Vec<(String, String)> = {
        let mut stmt = tx
            .prepare("SELECT device, account FROM vault WHERE key_fp != ?1 OR prev_key_fp != ?1 ORDER BY device, account")
            .map_err(db)?;
        let rows = stmt
            .query_map([ring.fingerprint()], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)?
    };
    let mut count = 0;
    for (device, account) in keys {
        let Some(row) =
            read_row(tx, &device, &account).map_err(|e| KeyError::Key(e.to_string()))?
        else {
            continue;
        };
        let a = aad(&device, &account, &row.username);
        let what = format!("the vaulted value for {device}/{account}");
        if let Some(w) = ring.rewrap(&row.current, &a, &what)? {
            tx.execute(
                "UPDATE vault SET ciphertext = ?3, nonce = ?4, key_fp = ?5 WHERE device = ?1 AND account = ?2",
                rusqlite::params![device, account, w.ct, w.nonce, w.kek],
            )
            .map_err(db)?;
            count += 1;
        }
        if let Some(prev) = &row.previous {
            if let Some(w) = ring.rewrap(prev, &a, &what)? {
                tx.execute(
                    "UPDATE vault SET prev_ciphertext = ?3, prev_nonce = ?4, prev_key_fp = ?5 WHERE device = ?1 AND account = ?2",
                    rusqlite::params![device, account, w.ct, w.nonce, w.kek],
                )
                .map_err(db)?;
                count += 1;
            }
        }
    }
    Ok(count)
}

/// Vault values per key fingerprint (current and previous values).
pub(crate) fn counts(conn: &rusqlite::Connection) -> rusqlite::Result<Vec<(String, usize)>> {
    let mut stmt = conn.prepare(
        "SELECT fp, COUNT(*) FROM (SELECT key_fp AS fp FROM vault
             UNION ALL SELECT prev_key_fp AS fp FROM vault WHERE prev_key_fp IS NOT NULL)
         GROUP BY fp ORDER BY fp",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    rows.map(|r| r.map(|(f, n)| (f, usize::try_from(n).unwrap_or(0))))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use ward_core::inject::VaultConfig;

    const T0: i64 = 1_795_514_400;

    fn secret(s: &str) -> Secret<String> {
        Secret::new(s.to_owned())
    }

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        (dir, s)
    }

    /// A fresh key, made the store's only key.
    fn key(s: &SqliteStore) -> Kek {
        let k = Kek::generate().unwrap();
        use_key(s, &k);
        k
    }

    fn use_key(s: &SqliteStore, k: &Kek) {
        s.keys().set(crate::keywrap::KeyRing::of(k.clone()));
    }

    #[test]
    fn round_trip_and_replace() {
        let (_d, s) = store();
        let k = key(&s);
        let put = s
            .put_credential("pump-12", "service", "admin", &secret("Factory-pw-1"), T0)
            .unwrap();
        assert_eq!(put, PutOutcome::Created);
        let c = s.credential("pump-12", "service", Some(T0 + 5)).unwrap();
        assert_eq!(c.username, "admin");
        assert_eq!(c.account, "service");
        assert_eq!(c.secret.expose(), "Factory-pw-1");
        let e = s.credential_entry("pump-12", "service").unwrap().unwrap();
        assert_eq!(e.last_used_unix, Some(T0 + 5));
        assert_eq!(e.key_fingerprint, k.fingerprint());
        let put = s
            .put_credential("pump-12", "service", "svc", &secret("second"), T0 + 9)
            .unwrap();
        assert_eq!(put, PutOutcome::Replaced);
        let c = s.credential("pump-12", "service", None).unwrap();
        assert_eq!(
            (c.username.as_str(), c.secret.expose().as_str()),
            ("svc", "second")
        );
        let e = s.credential_entry("pump-12", "service").unwrap().unwrap();
        assert_eq!((e.created_unix, e.updated_unix), (T0, T0 + 9));
        assert!(s.remove_credential("pump-12", "service").unwrap());
        assert!(!s.remove_credential("pump-12", "service").unwrap());
        let err = s.credential("pump-12", "service", None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no vaulted credential for pump-12/service; an admin runs `ward vault set pump-12 service`"
        );
    }

    #[test]
    fn the_database_never_holds_the_value_in_clear() {
        let (dir, s) = store();
        key(&s);
        let pw = "Zq8-unique-needle-7731";
        s.put_credential("pump-12", "service", "admin", &secret(pw), T0)
            .unwrap();
        drop(s);
        for f in ["ward.db", "ward.db-wal"] {
            if let Ok(bytes) = std::fs::read(dir.path().join(f)) {
                assert!(
                    !bytes.windows(pw.len()).any(|w| w == pw.as_bytes()),
                    "{f} holds the value"
                );
            }
        }
    }

    #[test]
    fn a_wrong_key_is_named_by_fingerprint() {
        let (_d, s) = store();
        let k = key(&s);
        let other = Kek::generate().unwrap();
        s.put_credential("pump-12", "service", "admin", &secret("pw-one"), T0)
            .unwrap();
        use_key(&s, &other);
        let err = s.credential("pump-12", "service", None).unwrap_err();
        assert!(matches!(err, VaultError::WrongKey { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains(k.fingerprint()), "{text}");
        assert!(text.contains(other.fingerprint()), "{text}");
        assert!(!text.contains("pw-one"));
        // A key with a forged fingerprint (same fp, other bytes) fails the integrity check.
        let conn = s.conn().unwrap();
        conn.execute("UPDATE vault SET key_fp = ?1", [other.fingerprint()])
            .unwrap();
        drop(conn);
        let err = s.credential("pump-12", "service", None).unwrap_err();
        assert!(matches!(err, VaultError::Tampered { .. }), "{err:?}");
    }

    #[test]
    fn a_value_moved_to_another_row_does_not_decrypt() {
        let (_d, s) = store();
        key(&s);
        s.put_credential("pump-12", "service", "admin", &secret("service-pw"), T0)
            .unwrap();
        s.put_credential("pump-12", "nurse", "nurse", &secret("nurse-pw"), T0)
            .unwrap();
        s.put_credential("mri-3", "service", "admin", &secret("mri-pw"), T0)
            .unwrap();
        // Copy the service ciphertext (and nonce) onto the nurse row and onto another device.
        let conn = s.conn().unwrap();
        for (device, account) in [("pump-12", "nurse"), ("mri-3", "service")] {
            conn.execute(
                "UPDATE vault SET (ciphertext, nonce) = (SELECT ciphertext, nonce FROM vault WHERE device = 'pump-12' AND account = 'service')
                 WHERE device = ?1 AND account = ?2",
                [device, account],
            )
            .unwrap();
        }
        // And change the user name bound to a value.
        conn.execute(
            "UPDATE vault SET username = 'root' WHERE device = 'pump-12' AND account = 'service'",
            [],
        )
        .unwrap();
        drop(conn);
        for (device, account) in [
            ("pump-12", "nurse"),
            ("mri-3", "service"),
            ("pump-12", "service"),
        ] {
            let err = s.credential(device, account, None).unwrap_err();
            assert!(
                matches!(err, VaultError::Tampered { .. }),
                "{device}/{account}: {err:?}"
            );
            assert!(err
                .to_string()
                .contains(&format!("ward vault set {device} {account}")));
        }
    }

    #[test]
    fn rewrap_moves_every_value_in_one_transaction() {
        use crate::keywrap::{KeyRing, SecretStore};
        let (_d, s) = store();
        let old = key(&s);
        s.put_credential("pump-12", "service", "admin", &secret("a-pw"), T0)
            .unwrap();
        s.put_credential("mri-3", "service", "admin", &secret("b-pw"), T0)
            .unwrap();
        s.begin_rotation("mri-3", "service", &secret("b-new"), T0 + 1)
            .unwrap();
        let new = Kek::generate().unwrap();
        let both = KeyRing::new(
            std::sync::Arc::new(new.clone()),
            vec![std::sync::Arc::new(old.clone())],
        );
        assert_eq!(s.rewrap_all(&both).unwrap().vault_values, 3);
        for e in s.list_credentials().unwrap() {
            assert_eq!(e.key_fingerprint, new.fingerprint());
        }
        use_key(&s, &new);
        assert_eq!(
            s.credential("pump-12", "service", None)
                .unwrap()
                .secret
                .expose(),
            "a-pw"
        );
        assert_eq!(
            s.previous_credential("mri-3", "service")
                .unwrap()
                .unwrap()
                .secret
                .expose(),
            "b-pw"
        );
        use_key(&s, &old);
        assert!(matches!(
            s.credential("pump-12", "service", None),
            Err(VaultError::WrongKey { .. })
        ));
        // Again: nothing left under the old key, nothing to do.
        assert_eq!(s.rewrap_all(&both).unwrap().total(), 0);
        // A value under a third key stops the whole re-encryption: nothing changes.
        let third = key(&s);
        s.put_credential("infusion-1", "service", "admin", &secret("c-pw"), T0)
            .unwrap();
        let newer = Kek::generate().unwrap();
        let ring = KeyRing::new(
            std::sync::Arc::new(newer.clone()),
            vec![std::sync::Arc::new(new.clone())],
        );
        let err = s.rewrap_all(&ring).unwrap_err();
        assert!(err.to_string().contains(third.fingerprint()), "{err}");
        use_key(&s, &new);
        assert_eq!(
            s.credential("pump-12", "service", None)
                .unwrap()
                .secret
                .expose(),
            "a-pw"
        );
    }

    #[test]
    fn rotation_keeps_the_previous_value_until_commit_or_abort() {
        let (_d, s) = store();
        key(&s);
        s.put_credential("pump-12", "service", "admin", &secret("old-pw"), T0)
            .unwrap();
        s.begin_rotation("pump-12", "service", &secret("new-pw"), T0 + 1)
            .unwrap();
        let e = s.credential_entry("pump-12", "service").unwrap().unwrap();
        assert!(e.pending && e.has_previous);
        assert_eq!(
            s.credential("pump-12", "service", None)
                .unwrap()
                .secret
                .expose(),
            "new-pw"
        );
        assert_eq!(
            s.previous_credential("pump-12", "service")
                .unwrap()
                .unwrap()
                .secret
                .expose(),
            "old-pw"
        );
        // Only one rotation at a time.
        assert!(matches!(
            s.begin_rotation("pump-12", "service", &secret("x-pw"), T0 + 2),
            Err(VaultError::State(_))
        ));
        s.abort_rotation("pump-12", "service", T0 + 2).unwrap();
        assert_eq!(
            s.credential("pump-12", "service", None)
                .unwrap()
                .secret
                .expose(),
            "old-pw"
        );
        let e = s.credential_entry("pump-12", "service").unwrap().unwrap();
        assert!(!e.pending && !e.has_previous && e.last_rotated_unix.is_none());
        s.begin_rotation("pump-12", "service", &secret("new-pw2"), T0 + 3)
            .unwrap();
        s.commit_rotation("pump-12", "service", T0 + 4).unwrap();
        let e = s.credential_entry("pump-12", "service").unwrap().unwrap();
        assert!(!e.pending && !e.has_previous);
        assert_eq!(e.last_rotated_unix, Some(T0 + 4));
        assert!(s
            .previous_credential("pump-12", "service")
            .unwrap()
            .is_none());
        assert!(matches!(
            s.commit_rotation("pump-12", "service", T0 + 5),
            Err(VaultError::State(_))
        ));
    }

    #[test]
    fn listing_never_carries_a_value() {
        let (_d, s) = store();
        key(&s);
        s.put_credential("pump-12", "service", "admin", &secret("needle-pw-42"), T0)
            .unwrap();
        let list = s.list_credentials().unwrap();
        assert_eq!(list.len(), 1);
        let json = serde_json::to_string(&list).unwrap();
        assert!(!json.contains("needle-pw-42"));
        assert!(json.contains("\"key_fingerprint\""));
        assert!(!format!("{list:?}").contains("needle-pw-42"));
    }

    #[test]
    fn names_and_values_are_checked_without_quoting_the_value() {
        let (_d, s) = store();
        key(&s);
        for (d, a) in [
            ("pump 12", "service"),
            ("pump-12", "Service"),
            ("pump-12", ""),
            ("", "x"),
        ] {
            assert!(
                matches!(
                    s.put_credential(d, a, "admin", &secret("pw"), T0),
                    Err(VaultError::Invalid(_))
                ),
                "{d}/{a}"
            );
        }
        let err = s
            .put_credential(
                "pump-12",
                "service",
                "admin",
                &secret("line\nbreak-secret"),
                T0,
            )
            .unwrap_err();
        assert!(!err.to_string().contains("break-secret"));
        assert!(s
            .put_credential("pump-12", "service", "admin", &secret(""), T0)
            .is_err());
        assert!(s.list_credentials().unwrap().is_empty());
    }

    #[test]
    fn key_file_is_created_0600_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let src = Kek::source(&VaultConfig::default(), dir.path());
        assert_eq!(src, KeySource::File(dir.path().join("vault.key")));
        assert!(src.load(false).unwrap().is_none());
        let k = src.load(true).unwrap().unwrap();
        let path = dir.path().join("vault.key");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = src.load(true).unwrap().unwrap();
        assert_eq!(again.fingerprint(), k.fingerprint());
        assert_eq!(k.fingerprint().len(), 16);
        // A lax mode is refused, with what to do.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = src.load(false).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        // Garbage is named, not echoed.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "c2hvcnQ=\n").unwrap();
        let err = src.load(false).unwrap_err().to_string();
        assert!(err.contains("holds 5 bytes"), "{err}");
        // Relative key_file is under the state dir; key_env wins.
        let cfg = VaultConfig {
            key_file: Some("keys/v.key".into()),
            ..Default::default()
        };
        assert_eq!(
            Kek::source(&cfg, dir.path()),
            KeySource::File(dir.path().join("keys/v.key"))
        );
        let cfg = VaultConfig {
            key_env: Some("WARD_TEST_VAULT_KEY_UNSET_7".into()),
            ..cfg
        };
        let err = Kek::source(&cfg, dir.path())
            .load(true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("WARD_TEST_VAULT_KEY_UNSET_7 is not set"),
            "{err}"
        );
        assert_eq!(format!("{k:?}"), format!("Kek({})", k.fingerprint()));
        let b64 = k.to_base64();
        assert_eq!(
            Kek::from_base64(b64.expose(), "x").unwrap().fingerprint(),
            k.fingerprint()
        );
    }
}
