//! The gateway's signing keys on disk and in memory: the current Ed25519 key (swapped on rotation),
//! the keyring of every public key it ever had, and the gateway's stable id.
//!
//! State dir files:
//!
//! * `audit.key`: the current private key (PKCS#8, 0600). Rotation overwrites it in place with the
//!   new key, so the retired private key's bytes are gone from the file (on SSDs and copy-on-write
//!   filesystems the old blocks may survive until reused: deletion there is best effort).
//! * `audit.pub`: the current public key (hex), kept for compatibility.
//! * `audit.keys`: the keyring, JSON lines, every public key ever (`ward_recording::Keyring`),
//!   never a private key. Created at first start from `audit.key` (existing state dirs migrate).
//! * `gateway.id`: the gateway's id in anchors: the key id of its first signing key, written once.
//!
//! Rotation order (crash-safe): the new key is written to `audit.key.new`; the keyring names it
//! current (atomic rename), so nothing is ever signed by a key the keyring lacks; `audit.key` is
//! overwritten with it; `audit.key.new` is removed. A start that finds `audit.key.new` finishes the
//! rotation if the keyring names it current, and discards it otherwise.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use arc_swap::ArcSwap;
use time::OffsetDateTime;
use ward_core::secret::Secret;
use ward_recording::audit::rfc3339_ms;
use ward_recording::keyring::{Keyring, PublicKeys};
use ward_recording::Signer;

/// The keyring file inside the state dir.
pub const AUDIT_KEYS: &str = "audit.keys";
/// The gateway id file inside the state dir.
pub const GATEWAY_ID: &str = "gateway.id";
/// A rotation's new private key, before it replaces `audit.key`.
const AUDIT_KEY_NEW: &str = "audit.key.new";

/// The current signer and the keyring, swapped together.
struct KeyState {
    signer: Arc<Signer>,
    keyring: Arc<Keyring>,
}

/// The gateway's signing keys (cheap to clone): sessions take [`SigningKeys::signer`] when they
/// start and keep it to the end; verification uses the keyring ([`PublicKeys`]).
#[derive(Clone)]
pub struct SigningKeys {
    state: Arc<ArcSwap<KeyState>>,
    state_dir: PathBuf,
    gateway_id: Arc<str>,
    /// One rotation at a time.
    rotating: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeys")
            .field("current", &self.signer().key_id())
            .field("gateway_id", &self.gateway_id)
            .finish()
    }
}

impl PublicKeys for SigningKeys {
    fn public_for(&self, key_id: &[u8; ward_recording::signer::KEY_ID_LEN]) -> Option<[u8; 32]> {
        self.state.load().keyring.public_for(key_id)
    }

    fn unknown_key(&self, key_id: &[u8; ward_recording::signer::KEY_ID_LEN]) -> String {
        self.state.load().keyring.unknown_key(key_id)
    }
}

/// Keys a reviewer verifies with: every key of the gateway ([`PublicKeys`]), and the current one
/// (what `ward audit pubkey` prints). [`SigningKeys`] (follows rotations), or one `[u8; 32]`.
pub trait VerifyKeys: PublicKeys + Send + Sync {
    /// The current public key.
    fn current(&self) -> [u8; 32];
    /// Every key.
    fn all(&self) -> Keyring;
}

impl VerifyKeys for [u8; 32] {
    fn current(&self) -> [u8; 32] {
        *self
    }
    fn all(&self) -> Keyring {
        Keyring::single(*self, "")
    }
}

impl VerifyKeys for SigningKeys {
    fn current(&self) -> [u8; 32] {
        self.signer().public_key()
    }
    fn all(&self) -> Keyring {
        (*self.keyring()).clone()
    }
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    /// The retired key's id.
    pub old_key_id: String,
    /// The new current key's id.
    pub new_key_id: String,
}

impl SigningKeys {
    /// Load the keys from `state_dir` (creating the key, the keyring and the gateway id at first
    /// start; migrating a state dir from before the keyring; finishing a rotation a crash cut).
    pub fn load_or_create(state_dir: &Path, now: OffsetDateTime) -> anyhow::Result<SigningKeys> {
        finish_rotation(state_dir)?;
        let signer = load_or_create_key(state_dir)?;
        let keyring = load_or_migrate_keyring(state_dir, &signer, now)?;
        write_public(state_dir, &signer)?;
        let gateway_id = load_or_create_gateway_id(state_dir, &keyring)?;
        Ok(SigningKeys {
            state: Arc::new(ArcSwap::from_pointee(KeyState {
                signer: Arc::new(signer),
                keyring: Arc::new(keyring),
            })),
            state_dir: state_dir.to_path_buf(),
            gateway_id: gateway_id.into(),
            rotating: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// The current signer: new sessions and the audit log sign with it.
    pub fn signer(&self) -> Arc<Signer> {
        self.state.load().signer.clone()
    }

    /// Every public key the gateway ever had.
    pub fn keyring(&self) -> Arc<Keyring> {
        self.state.load().keyring.clone()
    }

    /// The gateway's id in anchors.
    pub fn gateway_id(&self) -> &str {
        &self.gateway_id
    }

    /// Rotate the signing key while the gateway runs: a new key on disk (keyring first), then
    /// `switch` is awaited with the new signer (the audit writer checkpoints the old key's lines
    /// and switches), then new sessions get the new key. Running sessions finish with theirs.
    pub async fn rotate<F, Fut>(&self, now: OffsetDateTime, switch: F) -> anyhow::Result<Rotated>
    where
        F: FnOnce(Arc<Signer>) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let _one = self.rotating.lock().await;
        let dir = self.state_dir.clone();
        let (new, keyring, rotated) =
            tokio::task::spawn_blocking(move || rotate_on_disk(&dir, now))
                .await
                .context("rotating the signing key")??;
        let new = Arc::new(new);
        let keyring = Arc::new(keyring);
        // The keyring first: anything signed with the new key verifies from now on.
        let old = self.signer();
        self.state.store(Arc::new(KeyState {
            signer: old,
            keyring: keyring.clone(),
        }));
        switch(new.clone()).await;
        self.state.store(Arc::new(KeyState {
            signer: new,
            keyring,
        }));
        Ok(rotated)
    }
}

/// The keyring of a state dir, for readers (`ward audit verify`, review): `audit.keys`, or for a
/// state dir from before the keyring, its one key in `audit.pub`.
pub fn keyring(state_dir: &Path) -> anyhow::Result<Keyring> {
    let path = state_dir.join(AUDIT_KEYS);
    match std::fs::read(&path) {
        Ok(text) => Keyring::parse(&text).with_context(|| {
            format!(
                "{} is not a Ward keyring (JSON lines of public keys)",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let public = crate::review::public_key(state_dir)?;
            Ok(Keyring::single(public, ""))
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The gateway id of a state dir, if it has one yet.
pub fn gateway_id(state_dir: &Path) -> Option<String> {
    std::fs::read_to_string(state_dir.join(GATEWAY_ID))
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// Rotate the key of a state dir whose gateway is not running (the caller holds the state lock):
/// returns the new signer, the new keyring and what changed.
pub fn rotate_on_disk(
    state_dir: &Path,
    now: OffsetDateTime,
) -> anyhow::Result<(Signer, Keyring, Rotated)> {
    let current = load_or_create_key(state_dir)?;
    let mut keyring = load_or_migrate_keyring(state_dir, &current, now)?;
    let (new, pkcs8) = Signer::generate().context("generating the new signing key")?;
    let pkcs8 = Secret::new(pkcs8);
    let staged = state_dir.join(AUDIT_KEY_NEW);
    write_file(&staged, pkcs8.expose(), 0o600, true)?;
    keyring.rotate(new.public_key(), &rfc3339_ms(now));
    write_atomic(&state_dir.join(AUDIT_KEYS), &keyring.to_jsonl(), 0o644)?;
    replace_key(state_dir, pkcs8.expose())?;
    write_public(state_dir, &new)?;
    let rotated = Rotated {
        old_key_id: current.key_id(),
        new_key_id: new.key_id(),
    };
    Ok((new, keyring, rotated))
}

/// Overwrite `audit.key` in place with `pkcs8` (the retired key's bytes are overwritten, not just
/// unlinked), fsync, and drop the staged copy.
fn replace_key(state_dir: &Path, pkcs8: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = state_dir.join(crate::AUDIT_KEY);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let old_len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let new_len = pkcs8.len() as u64;
    // Zeros over whatever of the old key lies past the new one, then the new key over the rest.
    if old_len > new_len {
        f.write_all(&vec![0u8; usize::try_from(old_len).unwrap_or(0)])
            .and_then(|()| f.sync_data())
            .with_context(|| format!("overwriting {}", path.display()))?;
        std::io::Seek::rewind(&mut f)?;
    }
    f.write_all(pkcs8)
        .and_then(|()| f.set_len(new_len))
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing the new key into {}", path.display()))?;
    let staged = state_dir.join(AUDIT_KEY_NEW);
    match std::fs::remove_file(&staged) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", staged.display())),
    }
    sync_dir(state_dir);
    Ok(())
}

/// A rotation a crash interrupted: `audit.key.new` exists.
fn finish_rotation(state_dir: &Path) -> anyhow::Result<()> {
    let staged = state_dir.join(AUDIT_KEY_NEW);
    let pkcs8 = match std::fs::read(&staged) {
        Ok(b) => Secret::new(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", staged.display())),
    };
    let named_current = Signer::from_pkcs8(pkcs8.expose()).ok().is_some_and(|s| {
        std::fs::read(state_dir.join(AUDIT_KEYS))
            .ok()
            .and_then(|t| Keyring::parse(&t).ok())
            .and_then(|k| k.current().map(|c| c.public))
            == Some(s.public_key())
    });
    if named_current {
        tracing::warn!("finishing a signing-key rotation that was interrupted");
        replace_key(state_dir, pkcs8.expose())
    } else {
        // The keyring never named it: the rotation did not happen. Drop the staged key.
        std::fs::remove_file(&staged).with_context(|| format!("removing {}", staged.display()))
    }
}

fn load_or_create_key(state_dir: &Path) -> anyhow::Result<Signer> {
    let key_path = state_dir.join(crate::AUDIT_KEY);
    if key_path.exists() {
        ward_ca::check_private_key(&key_path)?;
    }
    match std::fs::read(&key_path) {
        Ok(pkcs8) => {
            let pkcs8 = Secret::new(pkcs8);
            Signer::from_pkcs8(pkcs8.expose())
                .with_context(|| format!("{} is not a Ward signing key", key_path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (signer, pkcs8) = Signer::generate().context("generating the audit signing key")?;
            let pkcs8 = Secret::new(pkcs8);
            write_file(&key_path, pkcs8.expose(), 0o600, true)?;
            Ok(signer)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", key_path.display())),
    }
}

/// `audit.keys`, created from the current key when missing (migration); the current key must be
/// the keyring's current one.
fn load_or_migrate_keyring(
    state_dir: &Path,
    signer: &Signer,
    now: OffsetDateTime,
) -> anyhow::Result<Keyring> {
    let path = state_dir.join(AUDIT_KEYS);
    let public = signer.public_key();
    match std::fs::read(&path) {
        Ok(text) => {
            let keyring = Keyring::parse(&text).with_context(|| {
                format!(
                    "{} is not a Ward keyring; restore it from a backup",
                    path.display()
                )
            })?;
            if keyring.current().map(|c| c.public) != Some(public) {
                bail!(
                    "{} does not name the key in {} ({}) as its current key: the key or the keyring was replaced; restore both from the same backup",
                    path.display(),
                    crate::AUDIT_KEY,
                    signer.key_id()
                );
            }
            Ok(keyring)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let keyring = Keyring::single(public, &rfc3339_ms(now));
            write_atomic(&path, &keyring.to_jsonl(), 0o644)?;
            Ok(keyring)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn load_or_create_gateway_id(state_dir: &Path, keyring: &Keyring) -> anyhow::Result<String> {
    if let Some(id) = gateway_id(state_dir) {
        return Ok(id);
    }
    // The id of the gateway's first key: stable across rotations, and one an auditor can match
    // with `ward audit pubkey --all`.
    let first = keyring
        .entries()
        .first()
        .map(|e| e.key_id.clone())
        .context("the keyring holds no key")?;
    write_atomic(
        &state_dir.join(GATEWAY_ID),
        format!("{first}\n").as_bytes(),
        0o644,
    )?;
    Ok(first)
}

fn write_public(state_dir: &Path, signer: &Signer) -> anyhow::Result<()> {
    let path = state_dir.join(crate::AUDIT_PUB);
    let text = format!("{}\n", hex::encode(signer.public_key()));
    if std::fs::read_to_string(&path).ok().as_deref() == Some(text.as_str()) {
        return Ok(());
    }
    write_atomic(&path, text.as_bytes(), 0o644)
}

fn write_file(path: &Path, bytes: &[u8], mode: u32, create_new: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .create_new(create_new)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// Write `path` through a temporary file and a rename, fsynced.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    write_file(&tmp, bytes, mode, true)?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir);
    }
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000)
    }

    #[test]
    fn first_start_migration_rotation_and_a_cut_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // First start: key, keyring of one, gateway id = that key's id.
        let keys = SigningKeys::load_or_create(d, now()).unwrap();
        let first = keys.signer().key_id();
        assert_eq!(keys.gateway_id(), first);
        assert_eq!(gateway_id(d).as_deref(), Some(first.as_str()));
        assert_eq!(keyring(d).unwrap().entries().len(), 1);

        // A state dir from before the keyring (audit.key only) migrates at the next start.
        std::fs::remove_file(d.join(AUDIT_KEYS)).unwrap();
        std::fs::remove_file(d.join(GATEWAY_ID)).unwrap();
        let keys = SigningKeys::load_or_create(d, now()).unwrap();
        assert_eq!(keys.signer().key_id(), first);
        assert_eq!(keys.keyring().current().unwrap().key_id, first);
        assert_eq!(keys.gateway_id(), first);

        // Rotation: the old key's bytes leave audit.key, its public key stays in the keyring.
        let old_private = std::fs::read(d.join(crate::AUDIT_KEY)).unwrap();
        let (new, ring, r) = rotate_on_disk(d, now()).unwrap();
        assert_eq!(r.old_key_id, first);
        assert_eq!(r.new_key_id, new.key_id());
        assert_eq!(ring.entries().len(), 2);
        assert!(ring.entries()[0].retired);
        let private = std::fs::read(d.join(crate::AUDIT_KEY)).unwrap();
        assert_ne!(private, old_private);
        assert!(!d.join(AUDIT_KEY_NEW).exists());
        let keys = SigningKeys::load_or_create(d, now()).unwrap();
        assert_eq!(keys.signer().key_id(), new.key_id());
        assert_eq!(
            keys.gateway_id(),
            first,
            "the gateway id survives rotations"
        );
        assert_eq!(
            std::fs::read_to_string(d.join(crate::AUDIT_PUB))
                .unwrap()
                .trim(),
            hex::encode(new.public_key())
        );

        // A crash after staging, before the keyring named the new key: the stage is dropped.
        let (stray, pkcs8) = Signer::generate().unwrap();
        std::fs::write(d.join(AUDIT_KEY_NEW), &pkcs8).unwrap();
        let keys = SigningKeys::load_or_create(d, now()).unwrap();
        assert_eq!(keys.signer().key_id(), new.key_id());
        assert!(!d.join(AUDIT_KEY_NEW).exists());
        // A crash after the keyring named it, before audit.key was replaced: finished at start.
        let mut ring = keyring(d).unwrap();
        ring.rotate(stray.public_key(), "t");
        std::fs::write(d.join(AUDIT_KEYS), ring.to_jsonl()).unwrap();
        std::fs::write(d.join(AUDIT_KEY_NEW), &pkcs8).unwrap();
        let keys = SigningKeys::load_or_create(d, now()).unwrap();
        assert_eq!(keys.signer().key_id(), stray.key_id());

        // A keyring that does not name audit.key as current: refused, saying what to do.
        let (other, _) = Signer::generate().unwrap();
        let mut ring = keyring(d).unwrap();
        ring.rotate(other.public_key(), "t");
        std::fs::write(d.join(AUDIT_KEYS), ring.to_jsonl()).unwrap();
        let e = SigningKeys::load_or_create(d, now())
            .unwrap_err()
            .to_string();
        assert!(e.contains("restore both from the same backup"), "{e}");
    }
}
