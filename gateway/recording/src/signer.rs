//! The gateway's Ed25519 recording/audit key.

use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};

use crate::RecError;

/// Length of an Ed25519 signature.
pub const SIG_LEN: usize = 64;
/// Length of the raw key id stored in checkpoints (first bytes of SHA-256 of the public key).
pub const KEY_ID_LEN: usize = 8;

/// An Ed25519 key pair that signs checkpoints. `Debug` never shows the key.
pub struct Signer {
    pair: Ed25519KeyPair,
    public: [u8; 32],
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Signer {
    /// A fresh key; also returns its PKCS#8 v2 document, which the caller stores (mode 0600).
    pub fn generate() -> Result<(Signer, Vec<u8>), RecError> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|e| RecError::Key(format!("generating an Ed25519 key: {e}")))?;
        let pkcs8 = doc.as_ref().to_vec();
        let signer = Signer::from_pkcs8(&pkcs8)?;
        Ok((signer, pkcs8))
    }

    /// Load a key from a PKCS#8 (v1 or v2) document.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Signer, RecError> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8)
            .map_err(|e| RecError::Key(format!("not an Ed25519 PKCS#8 key: {e}")))?;
        let mut public = [0u8; 32];
        let pk = pair.public_key().as_ref();
        if pk.len() != public.len() {
            return Err(RecError::Key(format!(
                "Ed25519 public key has {} bytes",
                pk.len()
            )));
        }
        public.copy_from_slice(pk);
        Ok(Signer { pair, public })
    }

    /// The raw 32-byte public key (what `ward audit verify` needs).
    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }

    /// Short key id: hex of the first 8 bytes of SHA-256(public key).
    pub fn key_id(&self) -> String {
        key_id_of(&self.public)
    }

    pub(crate) fn key_id_raw(&self) -> [u8; KEY_ID_LEN] {
        key_id_raw(&self.public)
    }

    /// A raw Ed25519 signature of `msg` (evidence bundles sign their `SHA256SUMS` with it).
    /// Checkpoints are signed inside this crate over domain-separated messages; never sign a
    /// message that could be mistaken for one (start it with a domain string of your own).
    pub fn sign_raw(&self, msg: &[u8]) -> [u8; SIG_LEN] {
        self.sign(msg)
    }

    pub(crate) fn sign(&self, msg: &[u8]) -> [u8; SIG_LEN] {
        let sig = self.pair.sign(msg);
        let mut out = [0u8; SIG_LEN];
        for (o, b) in out.iter_mut().zip(sig.as_ref()) {
            *o = *b;
        }
        out
    }
}

/// Key id of a public key: hex of the first 8 bytes of its SHA-256.
pub fn key_id_of(public_key: &[u8; 32]) -> String {
    hex::encode(key_id_raw(public_key))
}

pub(crate) fn key_id_raw(public_key: &[u8; 32]) -> [u8; KEY_ID_LEN] {
    let d = digest::digest(&digest::SHA256, public_key);
    let mut out = [0u8; KEY_ID_LEN];
    for (o, b) in out.iter_mut().zip(d.as_ref()) {
        *o = *b;
    }
    out
}

/// Whether `sig` is a valid Ed25519 signature of `msg` under `public_key`.
pub(crate) fn verify_sig(public_key: &[u8; 32], msg: &[u8], sig: &[u8]) -> bool {
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(msg, sig)
        .is_ok()
}

/// SHA-256 as a fixed array.
pub(crate) fn sha256_parts(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    to32(ctx.finish())
}

pub(crate) fn to32(d: digest::Digest) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (o, b) in out.iter_mut().zip(d.as_ref()) {
        *o = *b;
    }
    out
}
