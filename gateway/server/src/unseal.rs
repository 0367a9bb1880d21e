//! Opening encrypted recordings for review (format v3, `ward_recording::sealed`).
//!
//! A recording whose metadata names age recipients (`[recording] recipients`) holds its data and
//! event records inside Sealed records; only a reviewer's age identity opens them. Verification
//! never needs one (the chain covers the stored bytes). Everything that shows what was recorded —
//! replay, exports, operations, text search, the web player — reads the recording through
//! [`Opener`], which hands out the records with every Sealed record replaced by the records inside
//! it, or fails with [`OpenError::Encrypted`] when no identity was given: a reader never shows an
//! encrypted recording as an empty one.
//!
//! Where the identity comes from: the reviewer's `--identity-key FILE` (`WARD_IDENTITY_KEY`) on
//! their machine, or the gateway's `[review] identity_file` (docs/recording-format.md, “Reviewing
//! encrypted recordings”: the trade-off).

use std::path::Path;
use std::sync::Arc;

use ward_core::secret::Secret;
use ward_recording::sealed::{self, Unsealer};
use ward_recording::{ReadError, Reader, Record, SessionMeta};

/// A reviewer's age identity (`AGE-SECRET-KEY-1…`, as `age-keygen` writes it): the private key
/// of one of `[recording] recipients`. Held as its file's text, wiped from memory when the last
/// clone goes, never printed; parsed again for each recording it opens.
#[derive(Clone)]
pub struct IdentityKey {
    text: Arc<Secret<String>>,
    /// Where it came from (a path), for messages.
    source: String,
}

impl std::fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityKey")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl IdentityKey {
    /// An identity from its file's text; `source` names it in messages. Refused unless it holds
    /// at least one age identity.
    pub fn from_text(text: String, source: &str) -> anyhow::Result<IdentityKey> {
        let text = Secret::new(text);
        let ids = sealed::load_identities(text.expose()).map_err(|e| {
            anyhow::anyhow!("{source} is not an age identity file (AGE-SECRET-KEY-1…, as `age-keygen -o FILE` writes it): {e}")
        })?;
        if ids.is_empty() {
            anyhow::bail!("{source} holds no age identity (AGE-SECRET-KEY-1…): create one with `age-keygen -o FILE`");
        }
        Ok(IdentityKey {
            text: Arc::new(text),
            source: source.to_string(),
        })
    }

    /// The identity in `path`, which must not be readable by group or others (`chmod 600`), as
    /// ssh treats private keys.
    pub fn read(path: &Path) -> anyhow::Result<IdentityKey> {
        use std::os::unix::fs::PermissionsExt;
        let shown = path.display();
        let meta = std::fs::metadata(path)
            .map_err(|e| anyhow::anyhow!("reading identity key {shown}: {e}"))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            anyhow::bail!("identity key {shown} is readable by others (mode {mode:o}): `chmod 600 {shown}`, and treat the key as exposed");
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading identity key {shown}: {e}"))?;
        IdentityKey::from_text(text, &shown.to_string())
    }

    /// Where it came from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// What opens recording `id` (metadata `meta`) with this identity.
    fn unsealer(&self, meta: &SessionMeta, id: &str) -> Result<Unsealer, OpenError> {
        let ids = sealed::load_identities(self.text.expose()).map_err(|e| OpenError::Key {
            id: id.to_string(),
            why: format!("{}: {e}", self.source),
        })?;
        Unsealer::new(meta, &ids).map_err(|e| OpenError::Key {
            id: id.to_string(),
            why: format!("{} does not open it: {e}", self.source),
        })
    }
}

/// Why an encrypted recording could not be opened. The messages say what happened; the front
/// ends add what to do ([`OpenError::for_cli`], [`OpenError::for_gateway`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The recording is encrypted and no identity was given.
    #[error("recording {id} is encrypted at rest")]
    Encrypted {
        /// The session.
        id: String,
    },
    /// The identity given is not one of the recording's recipients (or its header is damaged).
    #[error("recording {id} cannot be decrypted: {why}")]
    Key {
        /// The session.
        id: String,
        /// What the decryption said.
        why: String,
    },
    /// A Sealed record did not decrypt or held something other than records.
    #[error("recording {id}: an encrypted record cannot be opened: {why}")]
    Damaged {
        /// The session.
        id: String,
        /// Which record, and what is wrong.
        why: String,
    },
}

impl OpenError {
    /// The message for a reviewer at the command line: what to give.
    pub fn for_cli(&self) -> String {
        match self {
            OpenError::Encrypted { .. } => format!(
                "{self}: give --identity-key FILE (or set WARD_IDENTITY_KEY), the age identity of one of its recipients ([recording] recipients); `ward audit verify` needs none"
            ),
            OpenError::Key { .. } => format!(
                "{self}: give the identity of one of its recipients with --identity-key FILE"
            ),
            OpenError::Damaged { .. } => format!("{self} (see `ward audit verify`)"),
        }
    }

    /// The message from the gateway (its web console, its `Review` answers): it holds no
    /// reviewer identity, so the reviewer decrypts on their own machine.
    pub fn for_gateway(&self) -> String {
        match self {
            OpenError::Encrypted { id } => format!(
                "{self} and this gateway holds no key to read it (by design: see docs/recording-format.md, section “Reviewing encrypted recordings”): replay it on your machine with `ward replay {id} --gateway HOST:PORT --identity-key FILE` (or `ward export … --identity-key FILE`), or give the gateway a reviewer identity ([review] identity_file)"
            ),
            OpenError::Key { .. } => {
                format!("{self}: [review] identity_file is not one of its recipients")
            }
            OpenError::Damaged { .. } => format!("{self} (see `ward audit verify`)"),
        }
    }
}

/// Opens the Sealed records of one recording as they are read, in order (a whole recording or
/// one record at a time): the identity is applied at the first Sealed record, so a recording
/// without any (a plaintext one, or one encrypted but empty) needs none.
pub struct Opener {
    key: Option<IdentityKey>,
    id: String,
    meta: Option<SessionMeta>,
    unsealer: Option<Arc<Unsealer>>,
}

impl Opener {
    /// For recording `id` (empty: the id its metadata gives), with `key` if the reader has one.
    pub fn new(key: Option<&IdentityKey>, id: &str) -> Self {
        Opener {
            key: key.cloned(),
            id: id.to_string(),
            meta: None,
            unsealer: None,
        }
    }

    /// For a live session's recording `id`, with what its recorder opens it with
    /// ([`live_keys`]), if it registered one; else as [`Opener::new`].
    pub fn live(key: Option<&IdentityKey>, id: &str) -> Self {
        let mut opener = Opener::new(key, id);
        opener.unsealer = live_keys().get(id);
        opener
    }

    /// Whether the recording's metadata (read so far) says it is encrypted.
    pub fn encrypted(&self) -> bool {
        self.meta.as_ref().is_some_and(sealed::is_sealed)
    }

    /// `record` as the reader sees it: a Sealed record opened into the records inside it, any
    /// other as is (the metadata is kept: it says who the recording is encrypted to).
    pub fn open(&mut self, record: Record) -> Result<Vec<Record>, OpenError> {
        match record {
            Record::Sealed { t_ns, body } => {
                if self.unsealer.is_none() {
                    let key = self.key.as_ref().ok_or_else(|| OpenError::Encrypted {
                        id: self.id.clone(),
                    })?;
                    let meta = self.meta.as_ref().ok_or_else(|| OpenError::Damaged {
                        id: self.id.clone(),
                        why: "an encrypted record before the metadata".into(),
                    })?;
                    self.unsealer = Some(Arc::new(key.unsealer(meta, &self.id)?));
                }
                let unsealer = self.unsealer.as_ref().ok_or_else(|| OpenError::Encrypted {
                    id: self.id.clone(),
                })?;
                unsealer.open(&body).map_err(|e| OpenError::Damaged {
                    id: self.id.clone(),
                    why: format!(
                        "the encrypted record ending at {:.3} s: {e}",
                        t_ns as f64 / 1e9
                    ),
                })
            }
            Record::Meta(m) => {
                if self.id.is_empty() {
                    self.id.clone_from(&m.session_id);
                }
                self.meta = Some(m.clone());
                Ok(vec![Record::Meta(m)])
            }
            other => Ok(vec![other]),
        }
    }
}

/// The records of recording `id` (`bytes`), read as far as they read (and the read error that
/// stopped them), every Sealed record opened with `key`.
pub fn open_prefix(
    bytes: &[u8],
    key: Option<&IdentityKey>,
    id: &str,
) -> Result<(Vec<Record>, Option<ReadError>), OpenError> {
    let mut opener = Opener::new(key, id);
    let mut out = Vec::new();
    for item in Reader::new(bytes) {
        match item {
            Ok((_, record)) => out.extend(opener.open(record)?),
            Err(e) => return Ok((out, Some(e))),
        }
    }
    Ok((out, None))
}

/// [`open_prefix`], failing on a recording that does not read to its end.
pub fn open_all(bytes: &[u8], key: Option<&IdentityKey>, id: &str) -> anyhow::Result<Vec<Record>> {
    match open_prefix(bytes, key, id) {
        Ok((records, None)) => Ok(records),
        Ok((_, Some(e))) => Err(anyhow::anyhow!("recording unreadable: {e}")),
        Err(e) => Err(anyhow::Error::new(e)),
    }
}

/// Whether recording `bytes` is encrypted (its metadata names recipients).
pub fn is_encrypted(bytes: &[u8]) -> bool {
    Reader::new(bytes)
        .next()
        .and_then(Result::ok)
        .is_some_and(|(_, r)| matches!(r, Record::Meta(m) if sealed::is_sealed(&m)))
}

/// The keys of the recordings being written now, by session id: what live watch opens a running
/// session's encrypted recording with ([`Opener::live`]). A recorder registers its recording's
/// [`Unsealer`] when it starts one ([`LiveKeys::register`]) and the entry goes when the returned
/// guard is dropped, as the recording ends: a finished recording is never opened from here. The
/// key is in the gateway's memory while the recording is written anyway (it seals each batch),
/// so this gives live watch nothing the gateway did not hold; it is never written anywhere.
pub struct LiveKeys {
    keys: std::sync::Mutex<std::collections::HashMap<String, Arc<Unsealer>>>,
}

/// The process's [`LiveKeys`]. (Session ids are random 64-bit numbers, so gateways sharing a
/// process — tests — do not collide.)
pub fn live_keys() -> &'static LiveKeys {
    static KEYS: std::sync::OnceLock<LiveKeys> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| LiveKeys {
        keys: std::sync::Mutex::default(),
    })
}

/// Removes its recording's key from [`LiveKeys`] when dropped.
#[must_use = "the key is forgotten when the guard is dropped: hold it while the recording is written"]
pub struct LiveKeyGuard {
    id: String,
}

impl Drop for LiveKeyGuard {
    fn drop(&mut self) {
        if let Ok(mut keys) = live_keys().keys.lock() {
            keys.remove(&self.id);
        }
    }
}

impl LiveKeys {
    /// Hold `unsealer` for session `id` until the guard is dropped.
    pub fn register(&self, id: &str, unsealer: Unsealer) -> LiveKeyGuard {
        if let Ok(mut keys) = self.keys.lock() {
            keys.insert(id.to_string(), Arc::new(unsealer));
        }
        LiveKeyGuard { id: id.to_string() }
    }

    fn get(&self, id: &str) -> Option<Arc<Unsealer>> {
        self.keys.lock().ok()?.get(id).cloned()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
    use super::*;
    use age::secrecy::ExposeSecret;
    use ward_recording::{CheckpointPolicy, Direction, Encoder, EndInfo, Signer};

    pub(crate) fn meta(id: &str) -> SessionMeta {
        SessionMeta {
            session_id: id.into(),
            principal_kind: "vendor".into(),
            principal_name: "jdoe".into(),
            principal_org: Some("acme".into()),
            cert_serial: "02".into(),
            source: "127.0.0.1:5000".into(),
            device: "pump".into(),
            device_addr: "127.0.0.1:23".into(),
            protocol: "raw".into(),
            rule: "r".into(),
            transport: "quic".into(),
            break_glass: false,
            started_unix_ms: 1_000,
            recipients: Vec::new(),
            age_header: None,
        }
    }

    /// A new age identity, as its file's text.
    pub(crate) fn identity() -> (String, age::x25519::Recipient) {
        let id = age::x25519::Identity::generate();
        let text = format!("# created: now\n{}\n", id.to_string().expose_secret());
        (text, id.to_public())
    }

    /// A finished recording of `id` encrypted to `to`, holding `up` and an operation event.
    pub(crate) fn sealed_recording(id: &str, to: &age::x25519::Recipient, up: &[u8]) -> Vec<u8> {
        sealed_recording_signed(id, to, up, &Arc::new(Signer::generate().unwrap().0))
    }

    /// [`sealed_recording`] signed by `signer`.
    pub(crate) fn sealed_recording_signed(
        id: &str,
        to: &age::x25519::Recipient,
        up: &[u8],
        signer: &Arc<Signer>,
    ) -> Vec<u8> {
        let signer = signer.clone();
        let mut out = Vec::new();
        let mut enc = Encoder::start_sealed(
            &meta(id),
            signer,
            CheckpointPolicy::default(),
            std::slice::from_ref(to),
            &mut out,
        )
        .unwrap();
        enc.data(Direction::Up, 1, up, &mut out);
        enc.flush(1, &mut out).unwrap();
        let fields = vec![
            ("protocol".to_string(), "telnet".to_string()),
            ("op".to_string(), "rate 5".to_string()),
        ];
        enc.event(Direction::Up, 2, "operation", &fields, &mut out);
        enc.data(Direction::Down, 3, b"ok\r\n", &mut out);
        let end = EndInfo {
            ended_unix_ms: 2_000,
            reason: "client closed".into(),
            bytes_up: up.len() as u64,
            bytes_down: 4,
        };
        enc.finish(4, &end, &mut out);
        out
    }

    fn up_bytes(records: &[Record]) -> Vec<u8> {
        ward_recording::export::raw(records).0
    }

    #[test]
    fn an_identity_opens_the_recording_and_nothing_else_does() {
        let (text, to) = identity();
        let bytes = sealed_recording("00000000000000a1", &to, b"secret marker");
        assert!(is_encrypted(&bytes));
        // The payload is nowhere in the stored bytes.
        assert!(!bytes.windows(13).any(|w| w == b"secret marker"));
        let key = IdentityKey::from_text(text, "reviewer.txt").unwrap();
        let (records, torn) = open_prefix(&bytes, Some(&key), "00000000000000a1").unwrap();
        assert!(torn.is_none());
        assert_eq!(up_bytes(&records), b"secret marker");
        assert!(records
            .iter()
            .any(|r| matches!(r, Record::Event { kind, .. } if kind == "operation")));
        assert!(!records.iter().any(|r| matches!(r, Record::Sealed { .. })));

        // No key: an error that names the recording, never an empty recording.
        let e = open_prefix(&bytes, None, "00000000000000a1").unwrap_err();
        assert_eq!(
            e,
            OpenError::Encrypted {
                id: "00000000000000a1".into()
            }
        );
        assert!(e.for_cli().contains("--identity-key"), "{}", e.for_cli());
        assert!(
            e.for_gateway().contains("ward replay 00000000000000a1"),
            "{}",
            e.for_gateway()
        );
        // Another reviewer's key: refused, naming the file (never its content).
        let (other, _) = identity();
        let other = IdentityKey::from_text(other, "other.txt").unwrap();
        let e = open_prefix(&bytes, Some(&other), "00000000000000a1").unwrap_err();
        assert!(
            matches!(&e, OpenError::Key { why, .. } if why.contains("other.txt")),
            "{e:?}"
        );
        assert!(!format!("{e} {e:?} {other:?}").contains("AGE-SECRET-KEY"));
        // An id taken from the metadata when the caller has none.
        let e = open_prefix(&bytes, None, "").unwrap_err();
        assert!(e.to_string().contains("00000000000000a1"), "{e}");
    }

    #[test]
    fn a_plaintext_recording_needs_no_key() {
        let signer = Arc::new(Signer::generate().unwrap().0);
        let mut out = Vec::new();
        let mut enc = Encoder::start(
            &meta("00000000000000a2"),
            signer,
            CheckpointPolicy::default(),
            &mut out,
        )
        .unwrap();
        enc.data(Direction::Up, 1, b"plain", &mut out);
        enc.finish(
            2,
            &EndInfo {
                ended_unix_ms: 2_000,
                reason: "done".into(),
                bytes_up: 5,
                bytes_down: 0,
            },
            &mut out,
        );
        assert!(!is_encrypted(&out));
        let records = open_all(&out, None, "00000000000000a2").unwrap();
        assert_eq!(up_bytes(&records), b"plain");
    }

    #[test]
    fn a_flipped_ciphertext_byte_is_named_not_shown() {
        let (text, to) = identity();
        let mut bytes = sealed_recording("00000000000000a3", &to, &[7u8; 4096]);
        // Inside the first sealed record's ciphertext.
        let at = ward_recording::Reader::new(&bytes)
            .find_map(|r| match r {
                Ok((off, Record::Sealed { .. })) => Some(off as usize + 5 + 8 + 16 + 100),
                _ => None,
            })
            .unwrap();
        bytes[at] ^= 1;
        let key = IdentityKey::from_text(text, "k").unwrap();
        let e = open_prefix(&bytes, Some(&key), "00000000000000a3").unwrap_err();
        assert!(matches!(e, OpenError::Damaged { .. }), "{e:?}");
    }

    #[test]
    fn identity_files_are_checked() {
        assert!(IdentityKey::from_text("# nothing\n".into(), "empty.txt").is_err());
        let e = IdentityKey::from_text("AGE-SECRET-KEY-1NOTAKEY\n".into(), "bad.txt").unwrap_err();
        assert!(e.to_string().contains("bad.txt"), "{e}");
        assert!(!e.to_string().contains("NOTAKEY"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.txt");
        std::fs::write(&path, identity().0).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = IdentityKey::read(&path).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(IdentityKey::read(&path).is_ok());
    }

    #[test]
    fn a_live_key_opens_a_running_recording_until_its_guard_goes() {
        let (text, to) = identity();
        let bytes = sealed_recording("00000000000000a4", &to, b"live");
        let meta = match ward_recording::Reader::new(&bytes).next() {
            Some(Ok((_, Record::Meta(m)))) => m,
            other => panic!("{other:?}"),
        };
        let key = IdentityKey::from_text(text, "k").unwrap();
        let unsealer = key.unsealer(&meta, "00000000000000a4").unwrap();
        let guard = live_keys().register("00000000000000a4", unsealer);
        let mut opener = Opener::live(None, "00000000000000a4");
        let mut records = Vec::new();
        for item in ward_recording::Reader::new(&bytes) {
            records.extend(opener.open(item.unwrap().1).unwrap());
        }
        assert_eq!(up_bytes(&records), b"live");
        drop(guard);
        let mut opener = Opener::live(None, "00000000000000a4");
        let failed = ward_recording::Reader::new(&bytes)
            .map(|item| opener.open(item.unwrap().1))
            .any(|r| r.is_err());
        assert!(failed, "the key is gone with the session");
    }
}
