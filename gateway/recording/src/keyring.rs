//! Every public key that ever signed for a gateway, by key id: verification across rotations.
//!
//! A gateway's signing key rotates (`ward audit rotate-key`); recordings and audit checkpoints
//! name the key that signed them by its 8-byte key id (the first 8 bytes of SHA-256 of the public
//! key, see [`crate::key_id_of`]). The [`Keyring`] is the set of those public keys, stored by the
//! gateway as JSON lines in `<state_dir>/audit.keys` (never a private key):
//!
//! ```text
//! {"key_id":"<16 hex>","public":"<64 hex>","created":"<RFC 3339>","retired":false}
//! {"key_id":"<16 hex>","public":"<64 hex>","created":"<RFC 3339>","retired":true,"retired_at":"<RFC 3339>"}
//! ```
//!
//! Verification takes any [`PublicKeys`]: one raw public key (`[u8; 32]`, as before rotation
//! existed: only that key verifies) or a [`Keyring`] (any key of the gateway's verifies; a
//! checkpoint naming a key that was never the gateway's fails with
//! `signed by key <id>, which was never this gateway's`). Pure: bytes in, values out.

use serde::{Deserialize, Serialize};

use crate::signer::{key_id_of, key_id_raw, KEY_ID_LEN};

/// A set of public keys that may have signed a checkpoint, looked up by key id.
pub trait PublicKeys {
    /// The public key whose id is `key_id`, if it is in the set.
    fn public_for(&self, key_id: &[u8; KEY_ID_LEN]) -> Option<[u8; 32]>;

    /// What to say about a checkpoint naming `key_id`, which is not in the set.
    fn unknown_key(&self, key_id: &[u8; KEY_ID_LEN]) -> String;
}

impl PublicKeys for [u8; 32] {
    fn public_for(&self, key_id: &[u8; KEY_ID_LEN]) -> Option<[u8; 32]> {
        (key_id_raw(self) == *key_id).then_some(*self)
    }

    fn unknown_key(&self, key_id: &[u8; KEY_ID_LEN]) -> String {
        format!(
            "signature does not verify with the gateway key {} (checkpoint names key {}: re-signed with another key?)",
            key_id_of(self),
            hex::encode(key_id)
        )
    }
}

impl<T: PublicKeys + ?Sized> PublicKeys for &T {
    fn public_for(&self, key_id: &[u8; KEY_ID_LEN]) -> Option<[u8; 32]> {
        (**self).public_for(key_id)
    }

    fn unknown_key(&self, key_id: &[u8; KEY_ID_LEN]) -> String {
        (**self).unknown_key(key_id)
    }
}

impl<T: PublicKeys + ?Sized> PublicKeys for std::sync::Arc<T> {
    fn public_for(&self, key_id: &[u8; KEY_ID_LEN]) -> Option<[u8; 32]> {
        (**self).public_for(key_id)
    }

    fn unknown_key(&self, key_id: &[u8; KEY_ID_LEN]) -> String {
        (**self).unknown_key(key_id)
    }
}

/// One key of a [`Keyring`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// Hex key id (16 hex digits): first 8 bytes of SHA-256 of `public`.
    pub key_id: String,
    /// The Ed25519 public key, 64 hex digits.
    #[serde(with = "hex_key")]
    pub public: [u8; 32],
    /// When the key was made (RFC 3339).
    pub created: String,
    /// Replaced by a newer key; its private key was deleted. Still verifies what it signed.
    #[serde(default)]
    pub retired: bool,
    /// When it was retired (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<String>,
}

mod hex_key {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut out)
            .map_err(|e| serde::de::Error::custom(format!("not a 32-byte hex public key: {e}")))?;
        Ok(out)
    }
}

/// Why a keyring file could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    /// A line is not a key entry (names the line).
    #[error("line {line}: {what}")]
    BadLine {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        what: String,
    },
    /// The file holds no key.
    #[error("the keyring holds no key")]
    Empty,
}

/// Every public key of a gateway, oldest first; the last one not retired is the current key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Keyring {
    entries: Vec<KeyEntry>,
}

impl Keyring {
    /// A keyring of one current key, created at `created` (RFC 3339).
    pub fn single(public: [u8; 32], created: &str) -> Keyring {
        let mut k = Keyring::default();
        k.add(public, created);
        k
    }

    /// Parse `audit.keys` (JSON lines; blank lines skipped). Each line's `key_id` must be its
    /// public key's id; a key listed twice is kept once (the later line's retirement wins).
    pub fn parse(text: &[u8]) -> Result<Keyring, KeyringError> {
        let mut k = Keyring::default();
        for (i, line) in text.split(|b| *b == b'\n').enumerate() {
            let line_no = i + 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let entry: KeyEntry =
                serde_json::from_slice(line).map_err(|e| KeyringError::BadLine {
                    line: line_no,
                    what: format!("not a key entry ({e})"),
                })?;
            let id = key_id_of(&entry.public);
            if entry.key_id != id {
                return Err(KeyringError::BadLine {
                    line: line_no,
                    what: format!(
                        "key_id {} is not the id of its public key ({id})",
                        entry.key_id.escape_debug()
                    ),
                });
            }
            match k.entries.iter_mut().find(|e| e.public == entry.public) {
                Some(e) => *e = entry,
                None => k.entries.push(entry),
            }
        }
        if k.entries.is_empty() {
            return Err(KeyringError::Empty);
        }
        Ok(k)
    }

    /// The JSON lines of [`Keyring::parse`], one per key, oldest first.
    pub fn to_jsonl(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for e in &self.entries {
            // Serializing this struct (strings, a bool) cannot fail.
            if let Ok(line) = serde_json::to_vec(e) {
                out.extend(line);
                out.push(b'\n');
            }
        }
        out
    }

    /// Every key, oldest first.
    pub fn entries(&self) -> &[KeyEntry] {
        &self.entries
    }

    /// The current key: the newest one not retired.
    pub fn current(&self) -> Option<&KeyEntry> {
        self.entries.iter().rev().find(|e| !e.retired)
    }

    /// The key with this raw id.
    pub fn get(&self, key_id: &[u8; KEY_ID_LEN]) -> Option<&KeyEntry> {
        self.entries
            .iter()
            .find(|e| key_id_raw(&e.public) == *key_id)
    }

    /// Whether `public` is one of the keys.
    pub fn contains(&self, public: &[u8; 32]) -> bool {
        self.entries.iter().any(|e| e.public == *public)
    }

    /// Add `public` as a current key (nothing if it is there already).
    pub fn add(&mut self, public: [u8; 32], created: &str) {
        if self.contains(&public) {
            return;
        }
        self.entries.push(KeyEntry {
            key_id: key_id_of(&public),
            public,
            created: created.to_owned(),
            retired: false,
            retired_at: None,
        });
    }

    /// Rotation: `public` becomes the current key and every other key is retired at `now`.
    pub fn rotate(&mut self, public: [u8; 32], now: &str) {
        for e in &mut self.entries {
            if e.public != public && !e.retired {
                e.retired = true;
                e.retired_at = Some(now.to_owned());
            }
        }
        self.add(public, now);
    }

    /// Key ids, oldest first, comma separated (for messages).
    pub fn ids(&self) -> String {
        self.entries
            .iter()
            .map(|e| e.key_id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl PublicKeys for Keyring {
    fn public_for(&self, key_id: &[u8; KEY_ID_LEN]) -> Option<[u8; 32]> {
        self.get(key_id).map(|e| e.public)
    }

    fn unknown_key(&self, key_id: &[u8; KEY_ID_LEN]) -> String {
        format!(
            "signed by key {}, which was never this gateway's (its keys: {}): re-signed with another key?",
            hex::encode(key_id),
            self.ids()
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::Signer;

    fn key() -> [u8; 32] {
        Signer::generate().unwrap().0.public_key()
    }

    #[test]
    fn round_trips_and_rotates() {
        let (a, b) = (key(), key());
        let mut k = Keyring::single(a, "2026-11-28T10:00:00.000Z");
        assert_eq!(k.current().unwrap().public, a);
        k.rotate(b, "2026-11-28T11:00:00.000Z");
        assert_eq!(k.current().unwrap().public, b);
        assert!(k.entries()[0].retired);
        assert_eq!(
            k.entries()[0].retired_at.as_deref(),
            Some("2026-11-28T11:00:00.000Z")
        );
        let text = k.to_jsonl();
        assert_eq!(Keyring::parse(&text).unwrap(), k);
        assert_eq!(text.iter().filter(|b| **b == b'\n').count(), 2);
        // Both keys verify; a third does not, and the message says it was never the gateway's.
        assert_eq!(k.public_for(&key_id_raw(&a)), Some(a));
        assert_eq!(k.public_for(&key_id_raw(&b)), Some(b));
        let c = key();
        assert_eq!(k.public_for(&key_id_raw(&c)), None);
        assert!(k
            .unknown_key(&key_id_raw(&c))
            .contains("which was never this gateway's"));
        // One raw key: only itself.
        assert_eq!(a.public_for(&key_id_raw(&a)), Some(a));
        assert_eq!(a.public_for(&key_id_raw(&b)), None);
    }

    /// A log signed by one key, then (after `set_signer`) by the next: verifies with the keyring,
    /// not with either key alone; resumes with the keyring. A recording started with the old key
    /// and cut by a crash is sealed with the new one and verifies with the keyring.
    #[test]
    fn logs_and_recordings_verify_across_a_rotation() {
        use std::sync::Arc;

        use crate::audit::{verify_audit, AuditChain, AuditEvent};
        use crate::format::SessionMeta;
        use crate::{seal_interrupted_keys, verify, CheckpointPolicy, Direction, Encoder};

        let (a, b) = (
            Arc::new(Signer::generate().unwrap().0),
            Arc::new(Signer::generate().unwrap().0),
        );
        let mut keys = Keyring::single(a.public_key(), "t0");
        keys.rotate(b.public_key(), "t1");
        let ev = AuditEvent {
            time: "2026-11-28T10:00:00.000Z".into(),
            event: "gateway_start".into(),
            outcome: "success".into(),
            severity: "info".into(),
            principal: None,
            source: None,
            device: None,
            session_id: None,
            reason: None,
            detail: Default::default(),
        };
        let mut chain = AuditChain::new(a.clone(), CheckpointPolicy::default());
        let mut log = chain.line(&ev, 0);
        log.extend(chain.checkpoint(0));
        chain.set_signer(b.clone());
        log.extend(chain.line(&ev, 0));
        log.extend(chain.checkpoint(0));
        assert!(verify_audit(&log, &keys).ok);
        let only_b = verify_audit(&log, &b.public_key());
        assert!(only_b
            .first_error
            .unwrap()
            .what
            .contains("re-signed with another key"));
        let only_a = Keyring::single(a.public_key(), "t0");
        let e = verify_audit(&log, &only_a).first_error.unwrap();
        assert_eq!(e.record, 4, "{e}");
        assert!(e.what.contains("which was never this gateway's"), "{e}");
        assert!(AuditChain::resume(&log, b.clone(), CheckpointPolicy::default()).is_err());
        let (_, keep) =
            AuditChain::resume_keys(&log, &keys, b.clone(), CheckpointPolicy::default()).unwrap();
        assert_eq!(keep, log.len() as u64);

        let meta = SessionMeta {
            session_id: "s1".into(),
            principal_kind: "vendor".into(),
            principal_name: "jdoe".into(),
            principal_org: None,
            cert_serial: "01".into(),
            source: "127.0.0.1:1".into(),
            device: "pump".into(),
            device_addr: "127.0.0.1:2".into(),
            protocol: "raw".into(),
            rule: "r".into(),
            transport: "quic".into(),
            break_glass: false,
            started_unix_ms: 0,
            recipients: Vec::new(),
            age_header: None,
        };
        let mut rec = Vec::new();
        let mut enc =
            Encoder::start(&meta, a.clone(), CheckpointPolicy::default(), &mut rec).unwrap();
        enc.data(Direction::Up, 1, b"before the crash", &mut rec);
        enc.checkpoint(2, &mut rec);
        let mut tail = Vec::new();
        let keep = seal_interrupted_keys(&rec, &keys, &b, "crash", 3, &mut tail).unwrap();
        rec.truncate(keep as usize);
        rec.extend(tail);
        let r = verify(&rec, &keys);
        assert!(r.ok, "{:?}", r.first_error);
        assert!(!verify(&rec, &a.public_key()).ok);
    }

    #[test]
    fn bad_files_name_the_line() {
        let a = key();
        let good = Keyring::single(a, "t").to_jsonl();
        let rows: &[(&[u8], &str)] = &[
            (b"", "holds no key"),
            (b"\n\n", "holds no key"),
            (b"{}\n", "line 1: not a key entry"),
            (b"not json\n", "line 1: not a key entry"),
        ];
        for (text, want) in rows {
            let e = Keyring::parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        // A key id that is not its key's.
        let mut lying = good.clone();
        lying.extend(
            format!(
                "{{\"key_id\":\"0000000000000000\",\"public\":\"{}\",\"created\":\"t\"}}\n",
                hex::encode(key())
            )
            .as_bytes(),
        );
        let e = Keyring::parse(&lying).unwrap_err().to_string();
        assert!(e.starts_with("line 2: key_id"), "{e}");
        // Unknown fields (a private key smuggled in) are refused.
        let private = format!(
            "{{\"key_id\":\"{}\",\"public\":\"{}\",\"created\":\"t\",\"private\":\"00\"}}\n",
            key_id_of(&a),
            hex::encode(a)
        );
        assert!(Keyring::parse(private.as_bytes()).is_err());
    }
}
