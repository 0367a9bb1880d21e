//! The credential vault: device passwords the gateway injects, encrypted at rest.
//!
//! Every value is sealed with AES-256-GCM (aws-lc-rs) under a key-encryption key ([`Kek`]: 32
//! random bytes from a 0600 key file or an environment variable). The row stores the ciphertext,
//! its 96-bit random nonce and the key's fingerprint (first 8 bytes of SHA-256 of the key, hex),
//! so a value sealed under another key is named as such instead of failing as garbage, and
//! `ward vault rekey` can move every value to a new key in one transaction. The additional
//! authenticated data binds a value to its device, account and user name: a ciphertext copied
//! to another row (by anyone with write access to `ward.db`) does not decrypt there.
//!
//! Rotation keeps two values: the new one (`pending` until a login with it succeeds) and the
//! previous one, so a rotation that fails half-way leaves a working credential
//! ([`VaultStore::begin_rotation`], [`VaultStore::commit_rotation`],
//! [`VaultStore::abort_rotation`]). Listings ([`VaultEntry`]) never carry a value, and no error
//! here carries one either.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use base64::Engine as _;
use rusqlite::OptionalExtension;
use serde::Serialize;
use ward_core::inject::{Credential, VaultConfig};
use ward_core::secret::Secret;
use zeroize::{Zeroize, Zeroizing};

use crate::store::{SqliteStore, StoreError};

/// The key file's default name, in the state dir.
pub const DEFAULT_KEY_FILE: &str = "vault.key";
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
    #[error("the vaulted value for {device}/{account} was sealed under the vault key with fingerprint {stored}, but this key's fingerprint is {current}: start with the key {stored} (the [vault] key_file or key_env it was made with), or re-encrypt with `ward vault rekey`")]
    WrongKey {
        /// Device id.
        device: String,
        /// Account.
        account: String,
        /// The fingerprint stored with the value (the key it needs).
        stored: String,
        /// The fingerprint of the key at hand.
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

struct KekInner {
    key: LessSafeKey,
    raw: Zeroizing<[u8; 32]>,
    fingerprint: String,
}

/// The vault's key-encryption key. `Debug` shows the fingerprint only. Cheap to clone.
#[derive(Clone)]
pub struct Kek(Arc<KekInner>);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kek({})", self.fingerprint())
    }
}

impl Kek {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Kek, VaultError> {
        let raw = Zeroizing::new(bytes);
        let unbound = UnboundKey::new(&AES_256_GCM, raw.as_slice())
            .map_err(|_| VaultError::Crypto("AES-256-GCM key setup"))?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, raw.as_slice());
        let fingerprint = hex::encode(digest.as_ref().get(..8).unwrap_or_default());
        Ok(Kek(Arc::new(KekInner {
            key: LessSafeKey::new(unbound),
            raw,
            fingerprint,
        })))
    }

    /// A fresh random key.
    pub fn generate() -> Result<Kek, VaultError> {
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| VaultError::Crypto("no randomness"))?;
        let k = Kek::from_bytes(bytes);
        bytes.zeroize();
        k
    }

    /// A key from base64 of 32 bytes (`what` names where it came from, for the error).
    pub fn from_base64(text: &str, what: &str) -> Result<Kek, VaultError> {
        let decoded = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|_| {
                    VaultError::Key(format!(
                        "{what} is not base64 (it must hold base64 of 32 random bytes, e.g. `head -c 32 /dev/urandom | base64`)"
                    ))
                })?,
        );
        let mut bytes = [0u8; 32];
        if decoded.len() != bytes.len() {
            return Err(VaultError::Key(format!(
                "{what} holds {} bytes; a vault key is 32 bytes (base64, e.g. `head -c 32 /dev/urandom | base64`)",
                decoded.len()
            )));
        }
        bytes.copy_from_slice(&decoded);
        let k = Kek::from_bytes(bytes);
        bytes.zeroize();
        k
    }

    /// The key as base64 (to write a key file).
    pub fn to_base64(&self) -> Secret<String> {
        Secret::new(base64::engine::general_purpose::STANDARD.encode(self.0.raw.as_slice()))
    }

    /// First 8 bytes of SHA-256 of the key, hex: stored with every value it seals.
    pub fn fingerprint(&self) -> &str {
        &self.0.fingerprint
    }

    /// The key in `path` (base64, mode 0600), created with a fresh random key if absent and
    /// `create`. `Ok(None)`: absent and not created.
    pub fn from_file(path: &Path, create: bool) -> Result<Option<Kek>, VaultError> {
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let shown = path.display();
        match std::fs::metadata(path) {
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(VaultError::Key(format!(
                        "{shown} is readable by others (mode {mode:o}): `chmod 600 {shown}`, and treat the key as exposed (`ward vault rekey`)"
                    )));
                }
                let text = Zeroizing::new(
                    std::fs::read_to_string(path)
                        .map_err(|e| VaultError::Key(format!("reading {shown}: {e}")))?,
                );
                Kek::from_base64(&text, &shown.to_string()).map(Some)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !create {
                    return Ok(None);
                }
                let kek = Kek::generate()?;
                let mut f = match std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                {
                    Ok(f) => f,
                    // Somebody else created it first: use theirs.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        return Kek::from_file(path, false)
                    }
                    Err(e) => return Err(VaultError::Key(format!("creating {shown}: {e}"))),
                };
                let text = kek.to_base64();
                f.write_all(text.expose().as_bytes())
                    .and_then(|()| f.write_all(b"\n"))
                    .and_then(|()| f.sync_all())
                    .map_err(|e| VaultError::Key(format!("writing {shown}: {e}")))?;
                tracing::info!(event = "vault_key_created", path = %shown, fingerprint = kek.fingerprint(), "created the vault key");
                Ok(Some(kek))
            }
            Err(e) => Err(VaultError::Key(format!("reading {shown}: {e}"))),
        }
    }

    /// The key in environment variable `var` (base64 of 32 bytes).
    pub fn from_env(var: &str) -> Result<Kek, VaultError> {
        let text = Zeroizing::new(std::env::var(var).map_err(|_| {
            VaultError::Key(format!(
                "environment variable {var} is not set: set it to base64 of 32 random bytes (e.g. `head -c 32 /dev/urandom | base64`), or configure [vault] key_file instead"
            ))
        })?);
        Kek::from_base64(&text, &format!("environment variable {var}"))
    }

    /// Seals `plain` for (device, account, username): (ciphertext with tag, nonce).
    fn seal(
        &self,
        device: &str,
        account: &str,
        username: &str,
        plain: &[u8],
    ) -> Result<SealedPair, VaultError> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| VaultError::Crypto("no randomness"))?;
        let mut buf = Vec::with_capacity(plain.len() + AES_256_GCM.tag_len());
        buf.extend_from_slice(plain);
        // Sealed in place: the buffer holds no plaintext afterwards (or is wiped on failure).
        let sealed = self.0.key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(device, account, username)),
            &mut buf,
        );
        if sealed.is_err() {
            buf.zeroize();
            return Err(VaultError::Crypto("sealing"));
        }
        Ok((buf, nonce.to_vec()))
    }

    /// Opens a value sealed by [`Kek::seal`] for the same names.
    fn open(
        &self,
        sealed: &Sealed,
        device: &str,
        account: &str,
        username: &str,
    ) -> Result<Secret<String>, VaultError> {
        if sealed.fp != self.fingerprint() {
            return Err(VaultError::WrongKey {
                device: device.to_owned(),
                account: account.to_owned(),
                stored: sealed.fp.clone(),
                current: self.fingerprint().to_owned(),
            });
        }
        let tampered = || VaultError::Tampered {
            device: device.to_owned(),
            account: account.to_owned(),
        };
        let nonce = Nonce::try_assume_unique_for_key(&sealed.nonce).map_err(|_| tampered())?;
        let mut buf = Zeroizing::new(sealed.ciphertext.clone());
        let len = self
            .0
            .key
            .open_in_place(
                nonce,
                Aad::from(aad(device, account, username)),
                buf.as_mut_slice(),
            )
            .map_err(|_| tampered())?
            .len();
        buf.truncate(len);
        let bytes = std::mem::take(&mut *buf);
        match String::from_utf8(bytes) {
            Ok(s) => Ok(Secret::new(s)),
            Err(e) => {
                let mut b = e.into_bytes();
                b.zeroize();
                Err(tampered())
            }
        }
    }

    /// Where `[vault]` says the key is, relative to `state_dir`: `Env(var)` or `File(path)`.
    pub fn source(config: &VaultConfig, state_dir: &Path) -> KeySource {
        match (&config.key_env, &config.key_file) {
            (Some(var), _) => KeySource::Env(var.clone()),
            (None, Some(f)) if f.is_absolute() => KeySource::File(f.clone()),
            (None, Some(f)) => KeySource::File(state_dir.join(f)),
            (None, None) => KeySource::File(state_dir.join(DEFAULT_KEY_FILE)),
        }
    }
}

/// Where the vault key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// An environment variable (base64).
    Env(String),
    /// A 0600 file (base64), created on first use.
    File(PathBuf),
}

impl KeySource {
    /// The key; with `create`, a missing key file is created with a fresh key. `Ok(None)`: the
    /// file does not exist (and `create` was false).
    pub fn load(&self, create: bool) -> Result<Option<Kek>, VaultError> {
        match self {
            KeySource::Env(var) => Kek::from_env(var).map(Some),
            KeySource::File(path) => Kek::from_file(path, create),
        }
    }
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Env(v) => write!(f, "environment variable {v}"),
            KeySource::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// The additional authenticated data: a version tag and the length-prefixed names.
fn aad(device: &str, account: &str, username: &str) -> Vec<u8> {
    let mut out = b"ward-vault-v1".to_vec();
    for part in [device, account, username] {
        out.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(part.as_bytes());
    }
    out
}

/// Ciphertext (with tag) and nonce.
type SealedPair = (Vec<u8>, Vec<u8>);

/// A sealed value as stored.
#[derive(Clone)]
struct Sealed {
    ciphertext: Vec<u8>,
    nonce: Vec<u8>,
    fp: String,
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
/// [`Secret`]s; the key is an argument, never stored.
pub trait VaultStore: Send + Sync {
    /// Create or replace the value for (device, account). Replacing drops a pending rotation and
    /// the previous value (the admin has said what the password is).
    fn put_credential(
        &self,
        kek: &Kek,
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
        kek: &Kek,
        device: &str,
        account: &str,
        used_at: Option<i64>,
    ) -> Result<Credential, VaultError>;
    /// The previous value kept during a rotation, decrypted.
    fn previous_credential(
        &self,
        kek: &Kek,
        device: &str,
        account: &str,
    ) -> Result<Option<Credential>, VaultError>;
    /// Rotation, step 1 (before the device is changed): the current value becomes the previous
    /// one and `new` the current one, pending. Refused if a rotation is already pending.
    fn begin_rotation(
        &self,
        kek: &Kek,
        device: &str,
        account: &str,
        new: &Secret<String>,
        now: i64,
    ) -> Result<(), VaultError>;
    /// Rotation, done: a login with the new value succeeded. Drops the previous value.
    fn commit_rotation(&self, device: &str, account: &str, now: i64) -> Result<(), VaultError>;
    /// Rotation, undone: the previous value is current again (the device kept it).
    fn abort_rotation(&self, device: &str, account: &str, now: i64) -> Result<(), VaultError>;
    /// Re-encrypts every value (current and previous) from `old` to `new` in one transaction.
    /// Values already under `new` are left; a value under neither is refused (nothing changes).
    /// Returns how many values were re-encrypted.
    fn rekey(&self, old: &Kek, new: &Kek, now: i64) -> Result<usize, VaultError>;
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
    current: Sealed,
    previous: Option<Sealed>,
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
                    (Some(ciphertext), Some(nonce), Some(fp)) => Some(Sealed {
                        ciphertext,
                        nonce,
                        fp,
                    }),
                    _ => None,
                };
                Ok(Row {
                    username: r.get(0)?,
                    current: Sealed {
                        ciphertext: r.get(1)?,
                        nonce: r.get(2)?,
                        fp: r.get(3)?,
                    },
                    previous: prev,
                    pending: r.get(7)?,
                })
            },
        )
        .optional()?;
    Ok(row)
}

fn not_found(device: &str, account: &str) -> VaultError {
    VaultError::NotFound {
        device: device.to_owned(),
        account: account.to_owned(),
    }
}

impl VaultStore for SqliteStore {
    fn put_credential(
        &self,
        kek: &Kek,
        device: &str,
        account: &str,
        username: &str,
        secret: &Secret<String>,
        now: i64,
    ) -> Result<PutOutcome, VaultError> {
        check_names(device, account)?;
        check_value(username, secret)?;
        let (ct, nonce) = kek.seal(device, account, username, secret.expose().as_bytes())?;
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let updated = tx.execute(
            "UPDATE vault SET username = ?3, ciphertext = ?4, nonce = ?5, key_fp = ?6, updated_unix = ?7,
                 prev_ciphertext = NULL, prev_nonce = NULL, prev_key_fp = NULL, pending = 0
             WHERE device = ?1 AND account = ?2",
            rusqlite::params![device, account, username, ct, nonce, kek.fingerprint(), now],
        )?;
        let outcome = if updated > 0 {
            PutOutcome::Replaced
        } else {
            tx.execute(
                "INSERT INTO vault (device, account, username, ciphertext, nonce, key_fp, created_unix, updated_unix, pending)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, 0)",
                rusqlite::params![device, account, username, ct, nonce, kek.fingerprint(), now],
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
        kek: &Kek,
        device: &str,
        account: &str,
        used_at: Option<i64>,
    ) -> Result<Credential, VaultError> {
        let conn = self.conn()?;
        let row = read_row(&conn, device, account)?.ok_or_else(|| not_found(device, account))?;
        let secret = kek.open(&row.current, device, account, &row.username)?;
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
        kek: &Kek,
        device: &str,
        account: &str,
    ) -> Result<Option<Credential>, VaultError> {
        let conn = self.conn()?;
        let row = read_row(&conn, device, account)?.ok_or_else(|| not_found(device, account))?;
        let Some(prev) = row.previous else {
            return Ok(None);
        };
        let secret = kek.open(&prev, device, account, &row.username)?;
        Ok(Some(Credential {
            account: account.to_owned(),
            username: row.username,
            secret,
        }))
    }

    fn begin_rotation(
        &self,
        kek: &Kek,
        device: &str,
        account: &str,
        new: &Secret<String>,
        now: i64,
    ) -> Result<(), VaultError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let row = read_row(&tx, device, account)?.ok_or_else(|| not_found(device, account))?;
        if row.pending {
            return Err(VaultError::State(format!(
                "a rotation of {device}/{account} is already pending"
            )));
        }
        check_value(&row.username, new)?;
        // The current value must open under this key before it is kept as the fallback.
        drop(kek.open(&row.current, device, account, &row.username)?);
        let (ct, nonce) = kek.seal(device, account, &row.username, new.expose().as_bytes())?;
        tx.execute(
            "UPDATE vault SET prev_ciphertext = ciphertext, prev_nonce = nonce, prev_key_fp = key_fp,
                 ciphertext = ?3, nonce = ?4, key_fp = ?5, updated_unix = ?6, pending = 1
             WHERE device = ?1 AND account = ?2",
            rusqlite::params![device, account, ct, nonce, kek.fingerprint(), now],
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

    fn rekey(&self, old: &Kek, new: &Kek, now: i64) -> Result<usize, VaultError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let keys: Vec<(String, String)> = {
            let mut stmt =
                tx.prepare("SELECT device, account FROM vault ORDER BY device, account")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut count = 0;
        for (device, account) in keys {
            let row =
                read_row(&tx, &device, &account)?.ok_or_else(|| not_found(&device, &account))?;
            let mut reseal = |sealed: &Sealed| -> Result<Option<SealedPair>, VaultError> {
                if sealed.fp == new.fingerprint() {
                    // Already under the new key (it must still open).
                    drop(new.open(sealed, &device, &account, &row.username)?);
                    return Ok(None);
                }
                let plain = old.open(sealed, &device, &account, &row.username)?;
                count += 1;
                new.seal(&device, &account, &row.username, plain.expose().as_bytes())
                    .map(Some)
            };
            if let Some((ct, nonce)) = reseal(&row.current)? {
                tx.execute(
                    "UPDATE vault SET ciphertext = ?3, nonce = ?4, key_fp = ?5, updated_unix = ?6
                     WHERE device = ?1 AND account = ?2",
                    rusqlite::params![device, account, ct, nonce, new.fingerprint(), now],
                )?;
            }
            if let Some(prev) = &row.previous {
                if let Some((ct, nonce)) = reseal(prev)? {
                    tx.execute(
                        "UPDATE vault SET prev_ciphertext = ?3, prev_nonce = ?4, prev_key_fp = ?5
                         WHERE device = ?1 AND account = ?2",
                        rusqlite::params![device, account, ct, nonce, new.fingerprint()],
                    )?;
                }
            }
        }
        tx.commit()?;
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    const T0: i64 = 1_795_514_400;

    fn secret(s: &str) -> Secret<String> {
        Secret::new(s.to_owned())
    }

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        (dir, s)
    }

    #[test]
    fn round_trip_and_replace() {
        let (_d, s) = store();
        let k = Kek::generate().unwrap();
        let put = s
            .put_credential(
                &k,
                "pump-12",
                "service",
                "admin",
                &secret("Factory-pw-1"),
                T0,
            )
            .unwrap();
        assert_eq!(put, PutOutcome::Created);
        let c = s
            .credential(&k, "pump-12", "service", Some(T0 + 5))
            .unwrap();
        assert_eq!(c.username, "admin");
        assert_eq!(c.account, "service");
        assert_eq!(c.secret.expose(), "Factory-pw-1");
        let e = s.credential_entry("pump-12", "service").unwrap().unwrap();
        assert_eq!(e.last_used_unix, Some(T0 + 5));
        assert_eq!(e.key_fingerprint, k.fingerprint());
        let put = s
            .put_credential(&k, "pump-12", "service", "svc", &secret("second"), T0 + 9)
            .unwrap();
        assert_eq!(put, PutOutcome::Replaced);
        let c = s.credential(&k, "pump-12", "service", None).unwrap();
        assert_eq!(
            (c.username.as_str(), c.secret.expose().as_str()),
            ("svc", "second")
        );
        let e = s.credential_entry("pump-12", "service").unwrap().unwrap();
        assert_eq!((e.created_unix, e.updated_unix), (T0, T0 + 9));
        assert!(s.remove_credential("pump-12", "service").unwrap());
        assert!(!s.remove_credential("pump-12", "service").unwrap());
        let err = s.credential(&k, "pump-12", "service", None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no vaulted credential for pump-12/service; an admin runs `ward vault set pump-12 service`"
        );
    }

    #[test]
    fn the_database_never_holds_the_value_in_clear() {
        let (dir, s) = store();
        let k = Kek::generate().unwrap();
        let pw = "Zq8-unique-needle-7731";
        s.put_credential(&k, "pump-12", "service", "admin", &secret(pw), T0)
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
        let k = Kek::generate().unwrap();
        let other = Kek::generate().unwrap();
        s.put_credential(&k, "pump-12", "service", "admin", &secret("pw-one"), T0)
            .unwrap();
        let err = s
            .credential(&other, "pump-12", "service", None)
            .unwrap_err();
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
        let err = s
            .credential(&other, "pump-12", "service", None)
            .unwrap_err();
        assert!(matches!(err, VaultError::Tampered { .. }), "{err:?}");
    }

    #[test]
    fn a_value_moved_to_another_row_does_not_decrypt() {
        let (_d, s) = store();
        let k = Kek::generate().unwrap();
        s.put_credential(&k, "pump-12", "service", "admin", &secret("service-pw"), T0)
            .unwrap();
        s.put_credential(&k, "pump-12", "nurse", "nurse", &secret("nurse-pw"), T0)
            .unwrap();
        s.put_credential(&k, "mri-3", "service", "admin", &secret("mri-pw"), T0)
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
            let err = s.credential(&k, device, account, None).unwrap_err();
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
    fn rekey_moves_every_value_in_one_transaction() {
        let (_d, s) = store();
        let old = Kek::generate().unwrap();
        let new = Kek::generate().unwrap();
        s.put_credential(&old, "pump-12", "service", "admin", &secret("a-pw"), T0)
            .unwrap();
        s.put_credential(&old, "mri-3", "service", "admin", &secret("b-pw"), T0)
            .unwrap();
        s.begin_rotation(&old, "mri-3", "service", &secret("b-new"), T0 + 1)
            .unwrap();
        assert_eq!(s.rekey(&old, &new, T0 + 2).unwrap(), 3);
        for e in s.list_credentials().unwrap() {
            assert_eq!(e.key_fingerprint, new.fingerprint());
        }
        assert_eq!(
            s.credential(&new, "pump-12", "service", None)
                .unwrap()
                .secret
                .expose(),
            "a-pw"
        );
        assert_eq!(
            s.previous_credential(&new, "mri-3", "service")
                .unwrap()
                .unwrap()
                .secret
                .expose(),
            "b-pw"
        );
        assert!(matches!(
            s.credential(&old, "pump-12", "service", None),
            Err(VaultError::WrongKey { .. })
        ));
        // Again: nothing left under the old key, nothing to do.
        assert_eq!(s.rekey(&old, &new, T0 + 3).unwrap(), 0);
        // A value under a third key stops the whole rekey: nothing changes.
        let third = Kek::generate().unwrap();
        s.put_credential(
            &third,
            "infusion-1",
            "service",
            "admin",
            &secret("c-pw"),
            T0,
        )
        .unwrap();
        let newer = Kek::generate().unwrap();
        let err = s.rekey(&new, &newer, T0 + 4).unwrap_err();
        assert!(matches!(err, VaultError::WrongKey { .. }), "{err:?}");
        assert_eq!(
            s.credential(&new, "pump-12", "service", None)
                .unwrap()
                .secret
                .expose(),
            "a-pw"
        );
    }

    #[test]
    fn rotation_keeps_the_previous_value_until_commit_or_abort() {
        let (_d, s) = store();
        let k = Kek::generate().unwrap();
        s.put_credential(&k, "pump-12", "service", "admin", &secret("old-pw"), T0)
            .unwrap();
        s.begin_rotation(&k, "pump-12", "service", &secret("new-pw"), T0 + 1)
            .unwrap();
        let e = s.credential_entry("pump-12", "service").unwrap().unwrap();
        assert!(e.pending && e.has_previous);
        assert_eq!(
            s.credential(&k, "pump-12", "service", None)
                .unwrap()
                .secret
                .expose(),
            "new-pw"
        );
        assert_eq!(
            s.previous_credential(&k, "pump-12", "service")
                .unwrap()
                .unwrap()
                .secret
                .expose(),
            "old-pw"
        );
        // Only one rotation at a time.
        assert!(matches!(
            s.begin_rotation(&k, "pump-12", "service", &secret("x-pw"), T0 + 2),
            Err(VaultError::State(_))
        ));
        s.abort_rotation("pump-12", "service", T0 + 2).unwrap();
        assert_eq!(
            s.credential(&k, "pump-12", "service", None)
                .unwrap()
                .secret
                .expose(),
            "old-pw"
        );
        let e = s.credential_entry("pump-12", "service").unwrap().unwrap();
        assert!(!e.pending && !e.has_previous && e.last_rotated_unix.is_none());
        s.begin_rotation(&k, "pump-12", "service", &secret("new-pw2"), T0 + 3)
            .unwrap();
        s.commit_rotation("pump-12", "service", T0 + 4).unwrap();
        let e = s.credential_entry("pump-12", "service").unwrap().unwrap();
        assert!(!e.pending && !e.has_previous);
        assert_eq!(e.last_rotated_unix, Some(T0 + 4));
        assert!(s
            .previous_credential(&k, "pump-12", "service")
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
        let k = Kek::generate().unwrap();
        s.put_credential(
            &k,
            "pump-12",
            "service",
            "admin",
            &secret("needle-pw-42"),
            T0,
        )
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
        let k = Kek::generate().unwrap();
        for (d, a) in [
            ("pump 12", "service"),
            ("pump-12", "Service"),
            ("pump-12", ""),
            ("", "x"),
        ] {
            assert!(
                matches!(
                    s.put_credential(&k, d, a, "admin", &secret("pw"), T0),
                    Err(VaultError::Invalid(_))
                ),
                "{d}/{a}"
            );
        }
        let err = s
            .put_credential(
                &k,
                "pump-12",
                "service",
                "admin",
                &secret("line\nbreak-secret"),
                T0,
            )
            .unwrap_err();
        assert!(!err.to_string().contains("break-secret"));
        assert!(s
            .put_credential(&k, "pump-12", "service", "admin", &secret(""), T0)
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
