//! The store's key-encryption key (KEK) and the seam behind it.
//!
//! Every secret Ward keeps in `ward.db` (vaulted device passwords, TOTP seeds) is sealed by a
//! [`KeyWrapper`] and stored as a [`Wrapped`] value: ciphertext, nonce and the fingerprint of the
//! key that sealed it. The additional authenticated data binds each value to its row (a vault
//! value to its device, account and user name; a TOTP seed to its user and purpose), so a
//! ciphertext copied to another row does not open there.
//!
//! [`Kek`] is the file-based wrapper: AES-256-GCM (aws-lc-rs) under 32 random bytes read from a
//! 0600 file (default `<state_dir>/vault.key`, created at the gateway's first start) or an
//! environment variable. A PKCS#11 token or a cloud KMS plugs in as another [`KeyWrapper`]: its
//! `wrap`/`unwrap` call the HSM or KMS (the key never leaves it), its `fingerprint` names the key
//! version, and a [`KeyRing`] holds it like any other wrapper.
//!
//! A [`KeyRing`] is what the store uses: the current wrapper (everything new is sealed under it)
//! and older ones that still open values (during and after an interrupted rotation). A
//! [`KeyHandle`] is the ring the running gateway shares between its tables and its services; a
//! rotation swaps the ring in it. [`rotate_file_kek`] is the online rotation; its order of
//! operations is what makes a crash at any point recoverable at the next start (see its doc).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use ward_core::inject::VaultConfig;
use ward_core::secret::Secret;
use zeroize::{Zeroize, Zeroizing};

/// The key file's default name, in the state dir (the name predates the other tables it protects).
pub const DEFAULT_KEY_FILE: &str = "vault.key";

/// Why a key operation failed. No variant carries a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The value was sealed under a key this gateway does not hold.
    #[error("{what} is sealed under the key-encryption key with fingerprint {needed}, which this gateway does not hold (it holds {held}): start with the key file (or [vault] key_env) whose fingerprint is {needed}, or set the value again")]
    Missing {
        /// What the value is (e.g. `the TOTP seed of user alice`).
        what: String,
        /// The fingerprint stored with the value: the key it needs.
        needed: String,
        /// The fingerprints at hand, comma-separated (or `none`).
        held: String,
    },
    /// The value does not open under the key it names: altered, or moved from another row.
    #[error("{what} fails its integrity check (altered, or copied from another row of ward.db)")]
    Tampered {
        /// What the value is.
        what: String,
    },
    /// There is no key at all (yet).
    #[error("no key-encryption key: {0}")]
    NoKey(String),
    /// The key could not be read, created, parsed or replaced.
    #[error("key-encryption key: {0}")]
    Key(String),
    /// The crypto library failed (no randomness, …).
    #[error("encryption failed: {0}")]
    Crypto(&'static str),
}

/// A sealed value as stored: the fingerprint of the key that sealed it, the nonce and the
/// ciphertext (with its tag). Never holds plaintext.
#[derive(Clone, PartialEq, Eq)]
pub struct Wrapped {
    /// Fingerprint of the wrapping key.
    pub kek: String,
    /// The nonce (for AES-256-GCM, 12 random bytes).
    pub nonce: Vec<u8>,
    /// Ciphertext and tag.
    pub ct: Vec<u8>,
}

impl std::fmt::Debug for Wrapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Wrapped(kek {}, {} bytes)", self.kek, self.ct.len())
    }
}

/// Seals and opens the store's secrets. The file-based [`Kek`] implements it; a PKCS#11 or
/// cloud-KMS implementation calls out to the token or service in `wrap` and `unwrap` and never
/// holds the key. `what` in errors is filled in by the caller ([`KeyRing::unwrap`]).
pub trait KeyWrapper: Send + Sync {
    /// A short stable name of the key (hex), stored with every value it seals.
    fn fingerprint(&self) -> &str;
    /// Seals `plaintext`, bound to `aad`.
    fn wrap(&self, plaintext: &[u8], aad: &[u8]) -> Result<Wrapped, KeyError>;
    /// Opens a value this key sealed with the same `aad`.
    fn unwrap(&self, wrapped: &Wrapped, aad: &[u8]) -> Result<Secret<Vec<u8>>, KeyError>;
}

struct KekInner {
    key: LessSafeKey,
    raw: Zeroizing<[u8; 32]>,
    fingerprint: String,
}

/// The file-based key-encryption key: 32 random bytes, AES-256-GCM. `Debug` shows the
/// fingerprint only. Cheap to clone.
#[derive(Clone)]
pub struct Kek(Arc<KekInner>);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kek({})", self.fingerprint())
    }
}

impl Kek {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Kek, KeyError> {
        let raw = Zeroizing::new(bytes);
        let unbound = UnboundKey::new(&AES_256_GCM, raw.as_slice())
            .map_err(|_| KeyError::Crypto("AES-256-GCM key setup"))?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, raw.as_slice());
        let fingerprint = hex::encode(digest.as_ref().get(..8).unwrap_or_default());
        Ok(Kek(Arc::new(KekInner {
            key: LessSafeKey::new(unbound),
            raw,
            fingerprint,
        })))
    }

    /// A fresh random key.
    pub fn generate() -> Result<Kek, KeyError> {
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| KeyError::Crypto("no randomness"))?;
        let k = Kek::from_bytes(bytes);
        bytes.zeroize();
        k
    }

    /// A key from base64 of 32 bytes (`what` names where it came from, for the error).
    pub fn from_base64(text: &str, what: &str) -> Result<Kek, KeyError> {
        let decoded = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|_| {
                    KeyError::Key(format!(
                        "{what} is not base64 (it must hold base64 of 32 random bytes, e.g. `head -c 32 /dev/urandom | base64`)"
                    ))
                })?,
        );
        let mut bytes = [0u8; 32];
        if decoded.len() != bytes.len() {
            return Err(KeyError::Key(format!(
                "{what} holds {} bytes; a key-encryption key is 32 bytes (base64, e.g. `head -c 32 /dev/urandom | base64`)",
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
    pub fn from_file(path: &Path, create: bool) -> Result<Option<Kek>, KeyError> {
        let shown = path.display();
        match std::fs::metadata(path) {
            Ok(meta) => {
                use std::os::unix::fs::PermissionsExt;
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(KeyError::Key(format!(
                        "{shown} is readable by others (mode {mode:o}): `chmod 600 {shown}`, and treat the key as exposed (`ward keys rotate --kek`)"
                    )));
                }
                let text = Zeroizing::new(
                    std::fs::read_to_string(path)
                        .map_err(|e| KeyError::Key(format!("reading {shown}: {e}")))?,
                );
                Kek::from_base64(&text, &shown.to_string()).map(Some)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !create {
                    return Ok(None);
                }
                let kek = Kek::generate()?;
                match kek.write_new(path) {
                    Ok(()) => {}
                    // Somebody else created it first: use theirs.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        return Kek::from_file(path, false)
                    }
                    Err(e) => return Err(KeyError::Key(format!("creating {shown}: {e}"))),
                }
                tracing::info!(event = "kek_created", path = %shown, fingerprint = kek.fingerprint(), "created the key-encryption key");
                Ok(Some(kek))
            }
            Err(e) => Err(KeyError::Key(format!("reading {shown}: {e}"))),
        }
    }

    /// Writes the key to a new file at `path` (mode 0600, synced); fails if it exists.
    pub fn write_new(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        let text = self.to_base64();
        f.write_all(text.expose().as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()
    }

    /// The key in environment variable `var` (base64 of 32 bytes).
    pub fn from_env(var: &str) -> Result<Kek, KeyError> {
        let text = Zeroizing::new(std::env::var(var).map_err(|_| {
            KeyError::Key(format!(
                "environment variable {var} is not set: set it to base64 of 32 random bytes (e.g. `head -c 32 /dev/urandom | base64`), or configure [vault] key_file instead"
            ))
        })?);
        Kek::from_base64(&text, &format!("environment variable {var}"))
    }

    /// Where `[vault]` says the key is, relative to `state_dir`: `Env(var)` or `File(path)`.
    pub fn source(config: &VaultConfig, state_dir: &Path) -> KeySource {
        KeySource::of(config, state_dir)
    }
}

impl KeyWrapper for Kek {
    fn fingerprint(&self) -> &str {
        &self.0.fingerprint
    }

    fn wrap(&self, plaintext: &[u8], aad: &[u8]) -> Result<Wrapped, KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| KeyError::Crypto("no randomness"))?;
        let mut buf = Vec::with_capacity(plaintext.len() + AES_256_GCM.tag_len());
        buf.extend_from_slice(plaintext);
        // Sealed in place: the buffer holds no plaintext afterwards (or is wiped on failure).
        if self
            .0
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf,
            )
            .is_err()
        {
            buf.zeroize();
            return Err(KeyError::Crypto("sealing"));
        }
        Ok(Wrapped {
            kek: self.0.fingerprint.clone(),
            nonce: nonce.to_vec(),
            ct: buf,
        })
    }

    fn unwrap(&self, wrapped: &Wrapped, aad: &[u8]) -> Result<Secret<Vec<u8>>, KeyError> {
        let tampered = || KeyError::Tampered {
            what: "the value".into(),
        };
        if wrapped.kek != self.0.fingerprint {
            return Err(KeyError::Missing {
                what: "the value".into(),
                needed: wrapped.kek.clone(),
                held: self.0.fingerprint.clone(),
            });
        }
        let nonce = Nonce::try_assume_unique_for_key(&wrapped.nonce).map_err(|_| tampered())?;
        let mut buf = Zeroizing::new(wrapped.ct.clone());
        let len = self
            .0
            .key
            .open_in_place(nonce, Aad::from(aad), buf.as_mut_slice())
            .map_err(|_| tampered())?
            .len();
        buf.truncate(len);
        Ok(Secret::new(std::mem::take(&mut *buf)))
    }
}

/// The additional authenticated data for a value: a domain tag, then each part length-prefixed
/// (u32 BE), so no two different rows give the same bytes.
pub fn aad(tag: &str, parts: &[&str]) -> Vec<u8> {
    let mut out = tag.as_bytes().to_vec();
    for part in parts {
        out.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(part.as_bytes());
    }
    out
}

/// The keys the store seals and opens with: the current one and older ones that still open
/// values (a rotation in progress, or one a crash interrupted).
#[derive(Clone)]
pub struct KeyRing {
    current: Arc<dyn KeyWrapper>,
    others: Vec<Arc<dyn KeyWrapper>>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyRing({})", self.fingerprints().join(", "))
    }
}

impl KeyRing {
    /// A ring of one key.
    pub fn single(current: Arc<dyn KeyWrapper>) -> KeyRing {
        KeyRing {
            current,
            others: Vec::new(),
        }
    }

    /// A ring of one file-based key.
    pub fn of(kek: Kek) -> KeyRing {
        KeyRing::single(Arc::new(kek))
    }

    /// The current key and others that still open values (duplicates of the current one are
    /// dropped).
    pub fn new(current: Arc<dyn KeyWrapper>, others: Vec<Arc<dyn KeyWrapper>>) -> KeyRing {
        let mut kept: Vec<Arc<dyn KeyWrapper>> = Vec::new();
        for o in others {
            if o.fingerprint() != current.fingerprint()
                && !kept.iter().any(|k| k.fingerprint() == o.fingerprint())
            {
                kept.push(o);
            }
        }
        KeyRing {
            current,
            others: kept,
        }
    }

    /// A ring with `new` as the current key and every key of this one still opening values.
    pub fn with_current(&self, new: Arc<dyn KeyWrapper>) -> KeyRing {
        let mut held = vec![self.current.clone()];
        held.extend(self.others.iter().cloned());
        KeyRing::new(new, held)
    }

    /// The key new values are sealed under.
    pub fn current(&self) -> &Arc<dyn KeyWrapper> {
        &self.current
    }

    /// The current key's fingerprint.
    pub fn fingerprint(&self) -> &str {
        self.current.fingerprint()
    }

    /// Every fingerprint, the current one first.
    pub fn fingerprints(&self) -> Vec<String> {
        std::iter::once(&self.current)
            .chain(self.others.iter())
            .map(|k| k.fingerprint().to_owned())
            .collect()
    }

    /// The same ring without the older keys.
    pub fn current_only(&self) -> KeyRing {
        KeyRing::single(self.current.clone())
    }

    /// Seals under the current key.
    pub fn wrap(&self, plaintext: &[u8], aad: &[u8]) -> Result<Wrapped, KeyError> {
        self.current.wrap(plaintext, aad)
    }

    /// Opens with the key the value names; `what` says which value, for the errors.
    pub fn unwrap(
        &self,
        wrapped: &Wrapped,
        aad: &[u8],
        what: &str,
    ) -> Result<Secret<Vec<u8>>, KeyError> {
        let key = std::iter::once(&self.current)
            .chain(self.others.iter())
            .find(|k| k.fingerprint() == wrapped.kek)
            .ok_or_else(|| KeyError::Missing {
                what: what.to_owned(),
                needed: wrapped.kek.clone(),
                held: self.fingerprints().join(", "),
            })?;
        key.unwrap(wrapped, aad).map_err(|e| match e {
            KeyError::Tampered { .. } => KeyError::Tampered {
                what: what.to_owned(),
            },
            KeyError::Missing { needed, held, .. } => KeyError::Missing {
                what: what.to_owned(),
                needed,
                held,
            },
            other => other,
        })
    }

    /// Re-seals `wrapped` under the current key if it is under another one (`None`: already
    /// current, and it opens).
    pub fn rewrap(
        &self,
        wrapped: &Wrapped,
        aad: &[u8],
        what: &str,
    ) -> Result<Option<Wrapped>, KeyError> {
        let plain = self.unwrap(wrapped, aad, what)?;
        if wrapped.kek == self.fingerprint() {
            return Ok(None);
        }
        self.wrap(plain.expose(), aad).map(Some)
    }
}

/// Where the key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// An environment variable (base64).
    Env(String),
    /// A 0600 file (base64), created at first start.
    File(PathBuf),
}

impl KeySource {
    /// Where `[vault]` says the key is, relative to `state_dir`.
    pub fn of(config: &VaultConfig, state_dir: &Path) -> KeySource {
        match (&config.key_env, &config.key_file) {
            (Some(var), _) => KeySource::Env(var.clone()),
            (None, Some(f)) if f.is_absolute() => KeySource::File(f.clone()),
            (None, Some(f)) => KeySource::File(state_dir.join(f)),
            (None, None) => KeySource::File(state_dir.join(DEFAULT_KEY_FILE)),
        }
    }

    /// The key; with `create`, a missing key file is created with a fresh key. `Ok(None)`: the
    /// file does not exist (and `create` was false).
    pub fn load(&self, create: bool) -> Result<Option<Kek>, KeyError> {
        match self {
            KeySource::Env(var) => Kek::from_env(var).map(Some),
            KeySource::File(path) => Kek::from_file(path, create),
        }
    }

    /// The ring: the current key and, for a file, any key a rotation left beside it
    /// (`<file>.retired-<fp>`, `<file>.next-<fp>`), so values under either open after a crash.
    pub fn load_ring(&self, create: bool) -> Result<Option<KeyRing>, KeyError> {
        let Some(current) = self.load(create)? else {
            return Ok(None);
        };
        let mut others: Vec<Arc<dyn KeyWrapper>> = Vec::new();
        if let KeySource::File(path) = self {
            for side in side_files(path)? {
                if let Some(k) = Kek::from_file(&side, false)? {
                    others.push(Arc::new(k));
                }
            }
        }
        Ok(Some(KeyRing::new(Arc::new(current), others)))
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

/// The key files a rotation leaves beside `path` (`<name>.retired-<fp>`, `<name>.next-<fp>`).
pub fn side_files(path: &Path) -> Result<Vec<PathBuf>, KeyError> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(Vec::new());
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let name = name.to_string_lossy();
    let retired = format!("{name}.retired-");
    let next = format!("{name}.next-");
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(KeyError::Key(format!("listing {}: {e}", dir.display()))),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let n = entry.file_name().to_string_lossy().into_owned();
        if n.starts_with(&retired) || n.starts_with(&next) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// The ring the running gateway shares between its tables and services. A rotation swaps it.
/// Before a ring is set, a handle made with a [`KeySource`] looks for the key there (without
/// creating it) each time it is asked, so a store opened before the gateway's first start finds
/// the key once it exists.
#[derive(Clone)]
pub struct KeyHandle {
    ring: Arc<RwLock<Option<Arc<KeyRing>>>>,
    source: Option<KeySource>,
}

impl std::fmt::Debug for KeyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.ring.read().ok().and_then(|r| r.clone()) {
            Some(r) => write!(f, "KeyHandle({r:?})"),
            None => f.write_str("KeyHandle(none)"),
        }
    }
}

impl KeyHandle {
    /// A handle that finds its ring at `source` when first asked.
    pub fn lazy(source: KeySource) -> KeyHandle {
        KeyHandle {
            ring: Arc::new(RwLock::new(None)),
            source: Some(source),
        }
    }

    /// A handle over a given ring.
    pub fn with(ring: KeyRing) -> KeyHandle {
        KeyHandle {
            ring: Arc::new(RwLock::new(Some(Arc::new(ring)))),
            source: None,
        }
    }

    /// The ring. Fails (naming what to do) when there is no key.
    pub fn get(&self) -> Result<Arc<KeyRing>, KeyError> {
        let poisoned = || KeyError::Key("the key ring's lock was poisoned".into());
        if let Some(r) = self.ring.read().map_err(|_| poisoned())?.clone() {
            return Ok(r);
        }
        let Some(source) = &self.source else {
            return Err(KeyError::NoKey("none was given".into()));
        };
        match source.load_ring(false)? {
            Some(ring) => {
                let ring = Arc::new(ring);
                let mut held = self.ring.write().map_err(|_| poisoned())?;
                Ok(held.get_or_insert(ring).clone())
            }
            None => Err(KeyError::NoKey(format!(
                "{source} does not exist (the gateway creates it at its first start)"
            ))),
        }
    }

    /// Whether a ring is available now.
    pub fn fingerprint(&self) -> Option<String> {
        self.get().ok().map(|r| r.fingerprint().to_owned())
    }

    /// Replaces the ring (every table sees it at its next operation).
    pub fn set(&self, ring: KeyRing) {
        match self.ring.write() {
            Ok(mut held) => *held = Some(Arc::new(ring)),
            Err(poisoned) => *poisoned.into_inner() = Some(Arc::new(ring)),
        }
    }
}

/// How many stored values are sealed under one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyCount {
    /// The key's fingerprint (`plaintext` for legacy values not yet sealed).
    pub fingerprint: String,
    /// Vault values (current and previous).
    pub vault_values: usize,
    /// TOTP seeds.
    pub totp_seeds: usize,
    /// Whether the running gateway holds this key.
    pub held: bool,
    /// Whether it is the current key.
    pub current: bool,
}

/// What a re-encryption did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rewrapped {
    /// Vault values moved to the current key.
    pub vault_values: usize,
    /// TOTP seeds moved to the current key.
    pub totp_seeds: usize,
    /// Legacy plaintext TOTP seeds sealed (the first start after the upgrade).
    pub plaintext_seeds_sealed: usize,
}

impl Rewrapped {
    /// Values changed in all.
    pub fn total(&self) -> usize {
        self.vault_values + self.totp_seeds + self.plaintext_seeds_sealed
    }
}

/// The store's view of its secrets, for `ward keys`: counts per key, and re-encryption of every
/// secret to the current key in one transaction. `SqliteStore` implements it.
pub trait SecretStore: Send + Sync {
    /// The store's key handle.
    fn key_handle(&self) -> KeyHandle;
    /// How many values are sealed under each key (and how many legacy plaintext seeds remain).
    fn key_counts(&self) -> Result<Vec<KeyCount>, KeyError>;
    /// Seals every value (and every legacy plaintext seed) under `ring`'s current key, in one
    /// transaction: all or nothing. A value no key in `ring` opens stops it (naming the key).
    fn rewrap_all(&self, ring: &KeyRing) -> Result<Rewrapped, KeyError>;
}

/// What [`rotate_file_kek`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotated {
    /// The previous key's fingerprint.
    pub old: String,
    /// The new key's fingerprint.
    pub new: String,
    /// What was re-encrypted.
    pub rewrapped: Rewrapped,
    /// Key files removed after the commit.
    pub retired_files_removed: usize,
}

fn sync_dir(path: &Path) -> Result<(), KeyError> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| KeyError::Key(format!("syncing {}: {e}", dir.display())))
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Online rotation of a file-based KEK at `path`, while the store keeps serving. In order:
///
/// 1. a new random key is written to `<path>.next-<new fp>` (0600, synced);
/// 2. the current key file is hard-linked to `<path>.retired-<old fp>` (synced);
/// 3. `<path>.next-<new fp>` is renamed over `<path>` (atomic; directory synced);
/// 4. the handle's ring becomes {new (current), old}: new values are sealed under the new key,
///    values under either key open;
/// 5. every value is re-encrypted to the new key in one transaction ([`SecretStore::rewrap_all`]);
/// 6. the ring becomes {new}, and the `.retired-*`/`.next-*` files are removed.
///
/// A crash anywhere leaves `<path>` and the side files on disk such that the next start's
/// [`KeySource::load_ring`] holds every key a value may be under; the start then finishes step 5
/// and 6 ([`finish_interrupted`]). Values are sealed under the new key only after it is in
/// `<path>` (step 3 before step 4), and the old key file is removed only after the transaction
/// commits.
pub fn rotate_file_kek(store: &dyn SecretStore, path: &Path) -> Result<Rotated, KeyError> {
    let handle = store.key_handle();
    let ring = handle.get()?;
    let on_disk = Kek::from_file(path, false)?.ok_or_else(|| {
        KeyError::Key(format!(
            "{} does not exist: the running gateway's key did not come from it",
            path.display()
        ))
    })?;
    if on_disk.fingerprint() != ring.fingerprint() {
        return Err(KeyError::Key(format!(
            "{} holds key {} but the gateway runs with key {}: restart the gateway, then rotate",
            path.display(),
            on_disk.fingerprint(),
            ring.fingerprint()
        )));
    }
    // Values under a key the gateway does not hold would stop step 5: refuse before any file
    // changes, naming the key.
    if let Some(c) = store
        .key_counts()?
        .into_iter()
        .find(|c| !c.held && c.fingerprint != "plaintext" && c.vault_values + c.totp_seeds > 0)
    {
        return Err(KeyError::Missing {
            what: format!(
                "{} vault value(s) and {} TOTP seed(s)",
                c.vault_values, c.totp_seeds
            ),
            needed: c.fingerprint,
            held: ring.fingerprints().join(", "),
        });
    }
    let old = ring.fingerprint().to_owned();
    let new = Kek::generate()?;
    // 1.
    let next = sibling(path, &format!(".next-{}", new.fingerprint()));
    new.write_new(&next)
        .map_err(|e| KeyError::Key(format!("writing {}: {e}", next.display())))?;
    // 2.
    let retired = sibling(path, &format!(".retired-{old}"));
    match std::fs::hard_link(path, &retired) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            let _ = std::fs::remove_file(&next);
            return Err(KeyError::Key(format!(
                "keeping the old key as {}: {e}",
                retired.display()
            )));
        }
    }
    sync_dir(path)?;
    // 3.
    std::fs::rename(&next, path).map_err(|e| {
        KeyError::Key(format!(
            "renaming {} to {}: {e} (both keys are kept; restart the gateway to finish)",
            next.display(),
            path.display()
        ))
    })?;
    sync_dir(path)?;
    tracing::info!(event = "kek_file_replaced", old = %old, new = new.fingerprint(), "new key-encryption key in place; re-encrypting");
    // 4.
    let both = ring.with_current(Arc::new(new.clone()));
    handle.set(both.clone());
    // 5. and 6.
    let (rewrapped, removed) = finish(store, &both, path)?;
    Ok(Rotated {
        old,
        new: new.fingerprint().to_owned(),
        rewrapped,
        retired_files_removed: removed,
    })
}

/// Steps 5 and 6 of a rotation: everything under `ring`'s current key, then the ring trimmed to
/// it and the side files removed (only when no value is left under another key).
fn finish(
    store: &dyn SecretStore,
    ring: &KeyRing,
    path: &Path,
) -> Result<(Rewrapped, usize), KeyError> {
    let rewrapped = store.rewrap_all(ring)?;
    // Nothing is under another key now: writers take the ring under the store's lock, and every
    // one after step 4 sealed under the current key.
    let left: usize = store
        .key_counts()?
        .iter()
        .filter(|c| !c.current)
        .map(|c| c.vault_values + c.totp_seeds)
        .sum();
    if left > 0 {
        return Err(KeyError::Key(format!(
            "{left} value(s) are still under an older key after re-encryption; the older key files are kept: run `ward keys rotate --kek` again"
        )));
    }
    store.key_handle().set(ring.current_only());
    let mut removed = 0;
    for side in side_files(path)? {
        match std::fs::remove_file(&side) {
            Ok(()) => removed += 1,
            Err(e) => {
                tracing::warn!(path = %side.display(), error = %e, "could not remove an old key file")
            }
        }
    }
    if removed > 0 {
        sync_dir(path)?;
    }
    Ok((rewrapped, removed))
}

/// At start: the ring from `source` (created at first start), set on the store's handle; values
/// under older keys a crashed rotation left beside the key file, and legacy plaintext seeds, are
/// sealed under the current key, and the side files removed. Returns what was re-encrypted.
pub fn open_store_keys(
    store: &dyn SecretStore,
    source: &KeySource,
) -> Result<(Arc<KeyRing>, Rewrapped), KeyError> {
    let ring = load_store_keys(store, source)?;
    let rewrapped = finish_interrupted(store, &ring, source)?;
    Ok((store.key_handle().get()?, rewrapped))
}

/// The first half of [`open_store_keys`]: the ring from `source` (the key file created at the
/// first start, but never over values sealed under a key that is gone), set on the store.
pub fn load_store_keys(store: &dyn SecretStore, source: &KeySource) -> Result<KeyRing, KeyError> {
    if let KeySource::File(path) = source {
        // The key file is gone but values are sealed under a key: do not make a new key over
        // them (a store restored without its key). Name the key they need.
        if !path.exists() {
            let sealed = store
                .key_counts()?
                .into_iter()
                .find(|c| c.fingerprint != "plaintext" && c.vault_values + c.totp_seeds > 0);
            if let Some(c) = sealed {
                let p = path.display();
                return Err(KeyError::NoKey(format!(
                    "{p} does not exist, but ward.db holds {} vault value(s) and {} TOTP seed(s) sealed under the key with fingerprint {}: restore that key file (from the backup made with ward.db); to give those values up instead, put a new key there (`head -c 32 /dev/urandom | base64 > {p}; chmod 600 {p}`) and set them again",
                    c.vault_values, c.totp_seeds, c.fingerprint
                )));
            }
        }
    }
    let ring = source
        .load_ring(true)?
        .ok_or_else(|| KeyError::NoKey(format!("{source} could not be created")))?;
    store.key_handle().set(ring.clone());
    Ok(ring)
}

/// Finishes what a crashed rotation (or an upgrade from plaintext seeds) left: see
/// [`open_store_keys`].
pub fn finish_interrupted(
    store: &dyn SecretStore,
    ring: &KeyRing,
    source: &KeySource,
) -> Result<Rewrapped, KeyError> {
    let pending = store
        .key_counts()?
        .iter()
        .any(|c| !c.current && c.vault_values + c.totp_seeds > 0);
    let has_side = match source {
        KeySource::File(p) => !side_files(p)?.is_empty(),
        KeySource::Env(_) => false,
    };
    if !pending && !has_side {
        return Ok(Rewrapped::default());
    }
    match source {
        KeySource::File(p) => finish(store, ring, p).map(|(r, _)| r),
        KeySource::Env(_) => store.rewrap_all(ring),
    }
}

/// The counts per key of `vault` values and `totp` seeds (per fingerprint, as the store counted
/// them), with every key `ring` holds (the store's [`SecretStore::key_counts`]).
pub(crate) fn key_counts_of(
    ring: Option<&KeyRing>,
    vault: Vec<(String, usize)>,
    totp: Vec<(String, usize)>,
) -> Vec<KeyCount> {
    let held = ring.as_ref().map(|r| r.fingerprints()).unwrap_or_default();
    let mut out: Vec<KeyCount> = held
        .iter()
        .map(|fp| KeyCount {
            fingerprint: fp.clone(),
            vault_values: 0,
            totp_seeds: 0,
            held: true,
            current: ring.as_ref().is_some_and(|r| r.fingerprint() == fp),
        })
        .collect();
    fn entry<'a>(out: &'a mut Vec<KeyCount>, fp: &str) -> Option<&'a mut KeyCount> {
        if !out.iter().any(|c| c.fingerprint == fp) {
            out.push(KeyCount {
                fingerprint: fp.to_owned(),
                vault_values: 0,
                totp_seeds: 0,
                held: false,
                current: false,
            });
        }
        out.iter_mut().find(|c| c.fingerprint == fp)
    }
    for (fp, n) in vault {
        if let Some(c) = entry(&mut out, &fp) {
            c.vault_values += n;
        }
    }
    for (fp, n) in totp {
        if let Some(c) = entry(&mut out, &fp) {
            c.totp_seeds += n;
        }
    }
    out
}

impl SecretStore for crate::store::SqliteStore {
    fn key_handle(&self) -> KeyHandle {
        self.keys().clone()
    }

    fn key_counts(&self) -> Result<Vec<KeyCount>, KeyError> {
        let db = |e: rusqlite::Error| KeyError::Key(format!("ward.db: {e}"));
        let conn = self.conn().map_err(|e| KeyError::Key(e.to_string()))?;
        let vault = crate::vault::counts(&conn).map_err(db)?;
        let totp = crate::users::counts(&conn).map_err(db)?;
        drop(conn);
        Ok(key_counts_of(
            self.keys().get().ok().as_deref(),
            vault,
            totp,
        ))
    }

    fn rewrap_all(&self, ring: &KeyRing) -> Result<Rewrapped, KeyError> {
        let db = |e: rusqlite::Error| KeyError::Key(format!("ward.db: {e}"));
        let mut conn = self.conn().map_err(|e| KeyError::Key(e.to_string()))?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        let vault_values = crate::vault::rewrap(&tx, ring)?;
        let (totp_seeds, plaintext_seeds_sealed) = crate::users::rewrap(&tx, ring)?;
        tx.commit().map_err(db)?;
        if plaintext_seeds_sealed > 0 {
            // The seeds' old pages are in the WAL: copy the new ones over the database file and
            // empty the log (best effort: a reader elsewhere can keep it for a moment).
            if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);") {
                tracing::warn!(error = %e, "could not checkpoint ward.db after sealing TOTP seeds");
            }
        }
        Ok(Rewrapped {
            vault_values,
            totp_seeds,
            plaintext_seeds_sealed,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn wrap_binds_the_aad_and_names_the_key() {
        let k = Kek::generate().unwrap();
        let other = Kek::generate().unwrap();
        let a = aad("t", &["alice", "totp"]);
        let w = k.wrap(b"seed-bytes", &a).unwrap();
        assert_eq!(w.kek, k.fingerprint());
        assert!(!w.ct.windows(10).any(|x| x == b"seed-bytes"));
        let ring = KeyRing::of(k.clone());
        assert_eq!(ring.unwrap(&w, &a, "x").unwrap().expose(), b"seed-bytes");
        // Another row's AAD: refused.
        let err = ring
            .unwrap(&w, &aad("t", &["bob", "totp"]), "the seed of bob")
            .unwrap_err();
        assert_eq!(
            err,
            KeyError::Tampered {
                what: "the seed of bob".into()
            }
        );
        // A ring without the key names the fingerprint it needs.
        let err = KeyRing::of(other.clone())
            .unwrap(&w, &a, "the seed of alice")
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains(k.fingerprint()), "{text}");
        assert!(text.contains(other.fingerprint()), "{text}");
        // A ring holding both opens it, and rewraps it to the current key.
        let both = KeyRing::new(Arc::new(other.clone()), vec![Arc::new(k.clone())]);
        let moved = both.rewrap(&w, &a, "x").unwrap().unwrap();
        assert_eq!(moved.kek, other.fingerprint());
        assert!(both.rewrap(&moved, &a, "x").unwrap().is_none());
        assert!(format!("{w:?}").contains(k.fingerprint()));
        // Length-prefixed: ("ab","c") and ("a","bc") differ.
        assert_ne!(aad("t", &["ab", "c"]), aad("t", &["a", "bc"]));
    }

    #[test]
    fn load_ring_holds_side_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.key");
        let src = KeySource::File(path.clone());
        assert!(src.load_ring(false).unwrap().is_none());
        let ring = src.load_ring(true).unwrap().unwrap();
        assert_eq!(ring.fingerprints().len(), 1);
        let old = Kek::generate().unwrap();
        old.write_new(&sibling(&path, &format!(".retired-{}", old.fingerprint())))
            .unwrap();
        let ring2 = src.load_ring(false).unwrap().unwrap();
        assert_eq!(ring2.fingerprint(), ring.fingerprint());
        assert_eq!(
            ring2.fingerprints(),
            vec![ring.fingerprint().to_owned(), old.fingerprint().to_owned()]
        );
        let handle = KeyHandle::lazy(KeySource::File(dir.path().join("absent.key")));
        let err = handle.get().unwrap_err().to_string();
        assert!(err.contains("absent.key does not exist"), "{err}");
        let handle = KeyHandle::lazy(src);
        assert_eq!(handle.fingerprint().as_deref(), Some(ring.fingerprint()));
    }

    fn user(name: &str, seed: &str) -> crate::users::User {
        crate::users::User {
            name: name.into(),
            kind: ward_ca::Kind::Vendor,
            org: Some("acme".into()),
            roles: vec![],
            password_phc: "$argon2id$x".into(),
            totp_secret: Some(seed.into()),
            totp_last_step: None,
            disabled: false,
            created_unix: 1,
            disabled_unix: None,
            must_change_password: false,
        }
    }

    #[test]
    fn rotation_under_concurrent_writes_leaves_everything_under_the_new_key() {
        use crate::users::UserStore;
        use crate::vault::VaultStore;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DEFAULT_KEY_FILE);
        let store = Arc::new(crate::store::SqliteStore::open(dir.path()).unwrap());
        let src = KeySource::File(path.clone());
        let (ring, _) = open_store_keys(&*store, &src).unwrap();
        let old = ring.fingerprint().to_owned();
        for i in 0..50 {
            store
                .add_user(&user(&format!("u{i}"), "JBSWY3DPEHPK3PXP"))
                .unwrap();
        }
        store
            .put_credential(
                "pump-12",
                "service",
                "admin",
                &Secret::new("pw-1".to_string()),
                1,
            )
            .unwrap();
        // Writers and readers run while the rotation does.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let workers: Vec<_> = (0..3)
            .map(|w| {
                let (store, stop) = (store.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut n = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) || n < 20 {
                        let name = format!("w{w}-{n}");
                        store.add_user(&user(&name, "GEZDGNBVGY3TQOJQ")).unwrap();
                        assert_eq!(
                            store.user("u7").unwrap().unwrap().totp_secret.as_deref(),
                            Some("JBSWY3DPEHPK3PXP")
                        );
                        assert_eq!(
                            store
                                .credential("pump-12", "service", None)
                                .unwrap()
                                .secret
                                .expose(),
                            "pw-1"
                        );
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let rotated = rotate_file_kek(&*store, &path).unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let written: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
        assert_eq!(rotated.old, old);
        assert_ne!(rotated.new, old);
        assert_eq!(rotated.rewrapped.vault_values, 1);
        assert!(rotated.rewrapped.totp_seeds >= 50);
        // Everything (the workers' writes included) is under the new key, which alone is held.
        let counts = store.key_counts().unwrap();
        assert_eq!(counts.len(), 1, "{counts:?}");
        assert_eq!(counts[0].fingerprint, rotated.new);
        assert_eq!(counts[0].totp_seeds, 50 + written);
        assert!(side_files(&path).unwrap().is_empty());
        assert_eq!(
            Kek::from_file(&path, false).unwrap().unwrap().fingerprint(),
            rotated.new
        );
        // A fresh open (the next start) reads everything with the file alone.
        drop(store);
        let again = crate::store::SqliteStore::open(dir.path()).unwrap();
        assert_eq!(
            again.user("w0-0").unwrap().unwrap().totp_secret.as_deref(),
            Some("GEZDGNBVGY3TQOJQ")
        );
    }

    #[test]
    fn a_start_after_a_crash_at_any_step_opens_everything() {
        use crate::users::UserStore;
        // After step 1 (a .next file), after step 2 (.next and .retired), after step 3 (the new
        // key in place, the old one retired, nothing re-encrypted).
        for step in 1..=3 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(DEFAULT_KEY_FILE);
            let src = KeySource::File(path.clone());
            let store = crate::store::SqliteStore::open(dir.path()).unwrap();
            let (ring, _) = open_store_keys(&store, &src).unwrap();
            store.add_user(&user("alice", "JBSWY3DPEHPK3PXP")).unwrap();
            let old = ring.fingerprint().to_owned();
            drop(store);
            let new = Kek::generate().unwrap();
            let next = sibling(&path, &format!(".next-{}", new.fingerprint()));
            new.write_new(&next).unwrap();
            if step >= 2 {
                std::fs::hard_link(&path, sibling(&path, &format!(".retired-{old}"))).unwrap();
            }
            if step >= 3 {
                std::fs::rename(&next, &path).unwrap();
            }
            let store = crate::store::SqliteStore::open(dir.path()).unwrap();
            let (ring, done) = open_store_keys(&store, &src).unwrap();
            let want = if step >= 3 {
                new.fingerprint()
            } else {
                old.as_str()
            };
            assert_eq!(ring.fingerprint(), want, "step {step}");
            assert_eq!(done.totp_seeds, usize::from(step >= 3), "step {step}");
            assert_eq!(ring.fingerprints().len(), 1, "step {step}");
            assert!(side_files(&path).unwrap().is_empty(), "step {step}");
            assert_eq!(
                store.user("alice").unwrap().unwrap().totp_secret.as_deref(),
                Some("JBSWY3DPEHPK3PXP"),
                "step {step}"
            );
        }
    }
}
