//! The signed parts of an evidence bundle (`docs/evidence.md`), pure: no files, no clock.
//!
//! * [`make_sums`] / [`parse_sums`]: `SHA256SUMS` in the format `sha256sum -c` reads (one
//!   `<64 lowercase hex>  <path>\n` line per file, sorted by path); paths are restricted to
//!   [`valid_path`] so no line needs `sha256sum`'s backslash escaping.
//! * [`sign_sums`] / [`verify_sums`]: a raw Ed25519 signature over the `SHA256SUMS` bytes by the
//!   gateway's signing key, what `openssl pkeyutl -verify -rawin` checks. Only a well-formed
//!   `SHA256SUMS` is ever signed: it starts with a hex digit, so it can never be mistaken for a
//!   checkpoint message (those start with `ward-`), whoever asks the gateway to sign.
//! * [`spki_pem`] / [`parse_spki_pem`]: Ed25519 public keys as SubjectPublicKeyInfo PEM (what
//!   `openssl` reads).
//! * [`audit_slice`] / [`verify_audit_slice`]: the part of the audit log about some sessions, cut
//!   at signed checkpoints so that it verifies on its own: its first line is a checkpoint (whose
//!   `seq` and `chain` are where the slice's chain starts) or the log's first line, its last line a
//!   checkpoint.

use std::collections::BTreeSet;

use crate::audit::AuditEvent;
use crate::signer::{key_id_of, sha256_parts, verify_sig, Signer, KEY_ID_LEN, SIG_LEN};
use crate::verify::VerifyError;

/// The bundle format name, in `manifest.json`.
pub const FORMAT: &str = "ward-evidence-v1";
/// The name of the checksum file.
pub const SUMS: &str = "SHA256SUMS";
/// The name of the signature over [`SUMS`].
pub const SUMS_SIG: &str = "SHA256SUMS.sig";
/// Longest path inside a bundle.
pub const MAX_PATH: usize = 200;

/// Same constants as `crate::audit` (the slice verifier walks lines the same way, from a
/// checkpoint instead of the log's start; `slice_of_a_whole_log_verifies_like_verify_audit`
/// keeps the two in step).
const AUDIT_GENESIS: &[u8] = b"ward-audit-v1";
const AUDIT_CHECKPOINT_DOMAIN: &[u8] = b"ward-audit-checkpoint-v1";
const CHAIN_TAG: &[u8] = b",\"chain\":\"";
const CHAIN_SUFFIX_LEN: usize = 10 + 64 + 2;

/// Why bundle data could not be made or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvidenceError {
    /// A `SHA256SUMS` line is not `<64 hex>  <path>`.
    #[error("SHA256SUMS line {line}: {what}")]
    BadSums {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        what: String,
    },
    /// A path that a bundle may not hold.
    #[error("{0:?} is not a valid path inside an evidence bundle (relative; letters, digits, `._-/`; no `..`)")]
    BadPath(String),
    /// The audit log has nothing (signed) about the sessions.
    #[error("{0}")]
    NoSlice(String),
    /// age encryption or decryption failed.
    #[error("age: {0}")]
    Age(String),
    /// Not an Ed25519 public key in SPKI PEM.
    #[error("not an Ed25519 public key in PEM (SubjectPublicKeyInfo): {0}")]
    BadPem(String),
}

/// Whether `path` may name a file in a bundle: relative, non-empty components of ASCII letters,
/// digits, `.`, `_`, `-`, separated by `/`; no `.` or `..` component; at most [`MAX_PATH`] bytes.
pub fn valid_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= MAX_PATH
        && path.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    sha256_parts(&[bytes])
}

/// `SHA256SUMS` over `files` (path, bytes), sorted by path, as `sha256sum` writes it.
pub fn make_sums<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<Vec<u8>, EvidenceError> {
    let mut rows: Vec<(&str, [u8; 32])> = Vec::new();
    for (path, bytes) in files {
        if !valid_path(path) {
            return Err(EvidenceError::BadPath(path.to_owned()));
        }
        rows.push((path, sha256(bytes)));
    }
    rows.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = Vec::with_capacity(rows.len() * 100);
    for (path, digest) in rows {
        out.extend_from_slice(hex::encode(digest).as_bytes());
        out.extend_from_slice(b"  ");
        out.extend_from_slice(path.as_bytes());
        out.push(b'\n');
    }
    Ok(out)
}

/// Parse a `SHA256SUMS` this module wrote: every line `<64 lowercase hex>  <path>\n`, paths valid
/// ([`valid_path`]), sorted and unique, at least one line. Anything else is refused, naming the
/// line.
pub fn parse_sums(text: &[u8]) -> Result<Vec<(String, [u8; 32])>, EvidenceError> {
    let bad = |line: usize, what: &str| EvidenceError::BadSums {
        line,
        what: what.to_owned(),
    };
    let body = text
        .strip_suffix(b"\n")
        .ok_or_else(|| bad(0, "empty, or the last line has no newline"))?;
    let mut out: Vec<(String, [u8; 32])> = Vec::new();
    for (i, line) in body.split(|b| *b == b'\n').enumerate() {
        let n = i + 1;
        let (hex_part, rest) = line
            .split_at_checked(64)
            .ok_or_else(|| bad(n, "shorter than a SHA-256 and a path"))?;
        let mut digest = [0u8; 32];
        if hex_part.iter().any(|b| b.is_ascii_uppercase())
            || hex::decode_to_slice(hex_part, &mut digest).is_err()
        {
            return Err(bad(n, "does not start with 64 lowercase hex digits"));
        }
        let path = rest
            .strip_prefix(b"  ")
            .ok_or_else(|| bad(n, "the digest is not followed by two spaces"))?;
        let path = std::str::from_utf8(path)
            .ok()
            .filter(|p| valid_path(p))
            .ok_or_else(|| bad(n, "names an invalid path"))?;
        if let Some((prev, _)) = out.last() {
            if prev.as_str() >= path {
                return Err(bad(n, "paths are not sorted and unique"));
            }
        }
        out.push((path.to_owned(), digest));
    }
    Ok(out)
}

/// Sign `sums` (a `SHA256SUMS`) with the gateway's key: a raw Ed25519 signature over its bytes.
/// Refuses anything that is not a well-formed `SHA256SUMS` ([`parse_sums`]), so this key never
/// signs a message of another kind (a checkpoint message starts with `ward-`, `SHA256SUMS` with a
/// hex digit).
pub fn sign_sums(signer: &Signer, sums: &[u8]) -> Result<[u8; SIG_LEN], EvidenceError> {
    parse_sums(sums)?;
    Ok(signer.sign(sums))
}

/// Whether `sig` is the Ed25519 signature of `sums` by `public_key`.
pub fn verify_sums(public_key: &[u8; 32], sums: &[u8], sig: &[u8]) -> bool {
    sig.len() == SIG_LEN && verify_sig(public_key, sums, sig)
}

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE { SEQUENCE { OID 1.3.101.112 },
/// BIT STRING (0 unused bits) … }, followed by the 32 key bytes.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// An Ed25519 public key as SPKI PEM (`-----BEGIN PUBLIC KEY-----`), as `openssl pkey -pubout`
/// writes it.
pub fn spki_pem(public_key: &[u8; 32]) -> String {
    use base64::Engine as _;
    let mut der = SPKI_PREFIX.to_vec();
    der.extend_from_slice(public_key);
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(der)
    )
}

/// The 32-byte key of an Ed25519 SPKI PEM.
pub fn parse_spki_pem(text: &str) -> Result<[u8; 32], EvidenceError> {
    use base64::Engine as _;
    let body: String = text
        .trim()
        .strip_prefix("-----BEGIN PUBLIC KEY-----")
        .and_then(|t| t.strip_suffix("-----END PUBLIC KEY-----"))
        .ok_or_else(|| EvidenceError::BadPem("no BEGIN/END PUBLIC KEY lines".into()))?
        .split_whitespace()
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|e| EvidenceError::BadPem(format!("base64: {e}")))?;
    let key = der
        .strip_prefix(&SPKI_PREFIX)
        .ok_or_else(|| EvidenceError::BadPem("not an Ed25519 key".into()))?;
    key.try_into()
        .map_err(|_| EvidenceError::BadPem("wrong length".into()))
}

/// Age identities, as [`crate::sealed::load_identities`] reads them from an identity file.
pub type Identities = Vec<Box<dyn age::Identity + Send + Sync>>;

/// `plaintext` as an age file encrypted to `recipient` (`age1…`): what `age -d -i KEY` opens.
/// For re-encrypted payloads (`payload/<id>.age`).
pub fn age_encrypt(recipient: &str, plaintext: &[u8]) -> Result<Vec<u8>, EvidenceError> {
    use std::io::Write as _;
    let r = crate::sealed::parse_recipient(recipient).map_err(EvidenceError::Age)?;
    let enc = age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient))
        .map_err(|e| EvidenceError::Age(e.to_string()))?;
    let mut out = Vec::with_capacity(plaintext.len() + 256);
    let mut w = enc
        .wrap_output(&mut out)
        .map_err(|e| EvidenceError::Age(e.to_string()))?;
    w.write_all(plaintext)
        .and_then(|()| w.finish().map(|_| ()))
        .map_err(|e| EvidenceError::Age(e.to_string()))?;
    Ok(out)
}

/// The plaintext of an age file, with the first of `identities` that opens it.
pub fn age_decrypt(file: &[u8], identities: &Identities) -> Result<Vec<u8>, EvidenceError> {
    use std::io::Read as _;
    let d = age::Decryptor::new_buffered(file).map_err(|e| EvidenceError::Age(e.to_string()))?;
    let mut r = d
        .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .map_err(|e| EvidenceError::Age(e.to_string()))?;
    let mut out = Vec::new();
    r.read_to_end(&mut out)
        .map_err(|e| EvidenceError::Age(format!("the age file is damaged: {e}")))?;
    Ok(out)
}

/// Where a slice lies in the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SliceBounds {
    /// Byte offset of its first line.
    pub start: usize,
    /// Byte offset just past its last line (a checkpoint's newline).
    pub end: usize,
    /// `seq` of its first line.
    pub first_seq: u64,
    /// `seq` of its last line (a checkpoint).
    pub last_seq: u64,
}

/// Whether an event line is about one of `sessions`: its `session_id` is one of them, or (an
/// earlier `evidence_exported`) its `detail.sessions` names one.
fn names_a_session(
    obj: &serde_json::Map<String, serde_json::Value>,
    sessions: &BTreeSet<String>,
) -> bool {
    let direct = obj
        .get("session_id")
        .and_then(|v| v.as_str())
        .is_some_and(|s| sessions.contains(s));
    let listed = obj
        .get("detail")
        .and_then(|d| d.get("sessions"))
        .and_then(|v| v.as_array())
        .is_some_and(|a| {
            a.iter()
                .any(|v| v.as_str().is_some_and(|s| sessions.contains(s)))
        });
    direct || listed
}

/// The slice of `log` about `sessions`: from the checkpoint line before the first line naming one
/// of them (or the log's first line when no checkpoint precedes it) to the first checkpoint line
/// after the last line naming one. Tolerant of what it does not understand (verification is
/// [`verify_audit_slice`]'s); an error when no line names them, or the last one is not yet
/// followed by a checkpoint.
pub fn audit_slice(log: &[u8], sessions: &BTreeSet<String>) -> Result<SliceBounds, EvidenceError> {
    struct Line {
        start: usize,
        end: usize,
        seq: u64,
        checkpoint: bool,
        relevant: bool,
    }
    let mut lines = Vec::new();
    let mut pos = 0usize;
    let mut n = 0u64;
    while let Some(nl) = log
        .get(pos..)
        .and_then(|r| r.iter().position(|b| *b == b'\n'))
    {
        n += 1;
        let end = pos + nl + 1;
        let text = log.get(pos..pos + nl).unwrap_or_default();
        let (checkpoint, relevant, seq) = match serde_json::from_slice(text) {
            Ok(serde_json::Value::Object(obj)) => (
                obj.get("type").and_then(|t| t.as_str()) == Some("checkpoint"),
                names_a_session(&obj, sessions),
                obj.get("seq").and_then(|s| s.as_u64()).unwrap_or(n),
            ),
            _ => (false, false, n),
        };
        lines.push(Line {
            start: pos,
            end,
            seq,
            checkpoint,
            relevant,
        });
        pos = end;
    }
    let first = lines.iter().position(|l| l.relevant).ok_or_else(|| {
        EvidenceError::NoSlice(format!(
            "the audit log has no event about session(s) {}",
            sessions.iter().cloned().collect::<Vec<_>>().join(", ")
        ))
    })?;
    let last = lines.iter().rposition(|l| l.relevant).unwrap_or(first);
    let from = lines
        .get(..first)
        .and_then(|b| b.iter().rposition(|l| l.checkpoint))
        .unwrap_or(0);
    let to = lines
        .iter()
        .enumerate()
        .skip(last + 1)
        .find(|(_, l)| l.checkpoint)
        .map(|(i, _)| i)
        .ok_or_else(|| {
            EvidenceError::NoSlice(format!(
                "the audit log's line {} about these sessions is not yet followed by a signed checkpoint; try again in a second",
                lines.get(last).map_or(0, |l| l.seq)
            ))
        })?;
    match (lines.get(from), lines.get(to)) {
        (Some(a), Some(b)) => Ok(SliceBounds {
            start: a.start,
            end: b.end,
            first_seq: a.seq,
            last_seq: b.seq,
        }),
        _ => Err(EvidenceError::NoSlice("the audit log is empty".into())),
    }
}

/// What [`verify_audit_slice`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceReport {
    /// Every line verified, the slice starts at a checkpoint (or the log's start) and ends with
    /// one.
    pub ok: bool,
    /// `seq` of its first line (0 if unreadable).
    pub first_seq: u64,
    /// `seq` of its last line.
    pub last_seq: u64,
    /// Lines read.
    pub lines: u64,
    /// Key ids of the checkpoints that verified.
    pub key_ids: BTreeSet<String>,
    /// The first problem: its `seq` and byte offset inside the slice.
    pub first_error: Option<VerifyError>,
}

fn audit_cp_message(seq: u64, key_id: &[u8; KEY_ID_LEN], chain: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(AUDIT_CHECKPOINT_DOMAIN.len() + 8 + KEY_ID_LEN + 32);
    m.extend_from_slice(AUDIT_CHECKPOINT_DOMAIN);
    m.extend_from_slice(&seq.to_le_bytes());
    m.extend_from_slice(key_id);
    m.extend_from_slice(chain);
    m
}

fn parse_hex<const N: usize>(v: Option<&serde_json::Value>) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(v?.as_str()?, &mut out).ok()?;
    Some(out)
}

/// A checkpoint line: canonical, signed by a key `key_of` knows. Returns its seq and chain.
fn check_checkpoint(
    obj: &serde_json::Map<String, serde_json::Value>,
    line: &[u8],
    key_of: &dyn Fn(&[u8; KEY_ID_LEN]) -> Option<[u8; 32]>,
    key_ids: &mut BTreeSet<String>,
) -> Result<(u64, [u8; 32]), String> {
    let seq = obj
        .get("seq")
        .and_then(|s| s.as_u64())
        .ok_or("no seq field: line altered")?;
    let (Some(chain), Some(key_id), Some(sig)) = (
        parse_hex::<32>(obj.get("chain")),
        parse_hex::<KEY_ID_LEN>(obj.get("key_id")),
        parse_hex::<SIG_LEN>(obj.get("sig")),
    ) else {
        return Err("checkpoint line lacks a valid chain, key_id or sig: line altered".into());
    };
    let canonical = format!(
        "{{\"type\":\"checkpoint\",\"seq\":{seq},\"chain\":\"{}\",\"key_id\":\"{}\",\"sig\":\"{}\"}}",
        hex::encode(chain),
        hex::encode(key_id),
        hex::encode(sig)
    );
    if canonical.as_bytes() != line {
        return Err("checkpoint line is not in canonical form: line altered".into());
    }
    let Some(public) = key_of(&key_id) else {
        return Err(format!(
            "checkpoint signed by key {}, which is not among the bundle's keys",
            hex::encode(key_id)
        ));
    };
    if !verify_sig(&public, &audit_cp_message(seq, &key_id, &chain), &sig) {
        return Err(format!(
            "signature does not verify with key {} (checkpoint altered)",
            key_id_of(&public)
        ));
    }
    key_ids.insert(hex::encode(key_id));
    Ok((seq, chain))
}

/// Verify a slice cut by [`audit_slice`] on its own: its first line is either a checkpoint (its
/// signature checked, its `seq` and `chain` the starting point) or the log's line 1 (the chain
/// starts at the genesis value); every following line is checked as `verify_audit` checks it
/// (seq, chain, checkpoint signatures under `key_of`'s keys); its last line is a checkpoint.
pub fn verify_audit_slice(
    slice: &[u8],
    key_of: &dyn Fn(&[u8; KEY_ID_LEN]) -> Option<[u8; 32]>,
) -> SliceReport {
    let mut r = SliceReport {
        ok: false,
        first_seq: 0,
        last_seq: 0,
        lines: 0,
        key_ids: BTreeSet::new(),
        first_error: None,
    };
    let mut chain = [0u8; 32];
    let mut next_seq = 0u64;
    let mut last_was_cp = false;
    let mut pos = 0usize;
    let fail = |r: &mut SliceReport, seq: u64, at: usize, what: String| {
        r.first_error = Some(VerifyError::line(seq, at as u64, what));
    };
    while pos < slice.len() {
        let rest = slice.get(pos..).unwrap_or_default();
        let Some(nl) = rest.iter().position(|b| *b == b'\n') else {
            fail(
                &mut r,
                next_seq,
                pos,
                "the slice's last line is incomplete (no newline): cut".into(),
            );
            return r;
        };
        let line = rest.get(..nl).unwrap_or_default();
        let seq_hint = if r.lines == 0 { 0 } else { next_seq };
        let obj = match serde_json::from_slice(line) {
            Ok(serde_json::Value::Object(obj)) => obj,
            _ => {
                fail(
                    &mut r,
                    seq_hint,
                    pos,
                    "not a JSON object: line altered".into(),
                );
                return r;
            }
        };
        let is_cp = obj.get("type").and_then(|t| t.as_str()) == Some("checkpoint");
        let seq = obj.get("seq").and_then(|s| s.as_u64()).unwrap_or(0);
        if r.lines == 0 {
            // Where the chain starts.
            if is_cp {
                match check_checkpoint(&obj, line, key_of, &mut r.key_ids) {
                    Ok((s, c)) => {
                        chain = c;
                        next_seq = s + 1;
                    }
                    Err(what) => {
                        fail(
                            &mut r,
                            seq,
                            pos,
                            format!("the slice's first checkpoint: {what}"),
                        );
                        return r;
                    }
                }
            } else if seq == 1 {
                chain = sha256_parts(&[AUDIT_GENESIS]);
                next_seq = 1;
            } else {
                fail(&mut r, seq, pos, format!("the slice starts at line {seq}, which is neither a signed checkpoint nor the log's first line: its chain cannot be checked"));
                return r;
            }
            r.first_seq = if is_cp { next_seq - 1 } else { 1 };
        }
        if !(r.lines == 0 && is_cp) {
            if seq != next_seq {
                fail(&mut r, next_seq, pos, format!("line has seq {seq}, expected {next_seq} (line deleted, inserted or reordered)"));
                return r;
            }
            if is_cp {
                match check_checkpoint(&obj, line, key_of, &mut r.key_ids) {
                    Ok((_, c)) if c == chain => {}
                    Ok(_) => {
                        fail(&mut r, seq, pos, "chain mismatch at checkpoint (line deleted, reordered or altered before it)".into());
                        return r;
                    }
                    Err(what) => {
                        fail(&mut r, seq, pos, what);
                        return r;
                    }
                }
            } else {
                match check_event(line, &chain) {
                    Ok(c) => chain = c,
                    Err(what) => {
                        fail(&mut r, seq, pos, what);
                        return r;
                    }
                }
                if serde_json::from_value::<AuditEvent>(serde_json::Value::Object(obj)).is_err() {
                    fail(&mut r, seq, pos, "not an audit event: line altered".into());
                    return r;
                }
            }
            next_seq += 1;
        }
        last_was_cp = is_cp;
        r.lines += 1;
        r.last_seq = next_seq - 1;
        pos += nl + 1;
    }
    if r.lines == 0 {
        fail(&mut r, 0, 0, "the slice is empty".into());
    } else if !last_was_cp {
        let last = r.last_seq;
        let what = format!("the slice ends at line {last} without a signed checkpoint (cut)");
        fail(&mut r, last, slice.len(), what);
    } else {
        r.ok = true;
    }
    r
}

/// An event line's chain: recomputed from `prev` and compared with the one it carries.
fn check_event(line: &[u8], prev: &[u8; 32]) -> Result<[u8; 32], String> {
    let split = line
        .len()
        .checked_sub(CHAIN_SUFFIX_LEN)
        .ok_or("event line has no chain field")?;
    let (prefix, suffix) = line
        .split_at_checked(split)
        .ok_or("event line has no chain field")?;
    let (tag, rest) = suffix
        .split_at_checked(CHAIN_TAG.len())
        .ok_or("event line has no chain field")?;
    let stored = rest
        .strip_suffix(b"\"}")
        .filter(|_| tag == CHAIN_TAG)
        .ok_or("event line does not end with its chain field: line altered")?;
    let chain = sha256_parts(&[prev, prefix]);
    if stored != hex::encode(chain).as_bytes() {
        return Err(
            "chain mismatch (line altered, or a line before it deleted, reordered or altered)"
                .into(),
        );
    }
    Ok(chain)
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::audit::{verify_audit, AuditChain};
    use crate::encoder::CheckpointPolicy;
    use crate::signer::key_id_raw;

    fn event(kind: &str, session: Option<&str>) -> AuditEvent {
        AuditEvent {
            time: "2026-11-28T16:00:00.000Z".into(),
            event: kind.into(),
            outcome: "success".into(),
            severity: "info".into(),
            principal: None,
            source: None,
            device: None,
            session_id: session.map(str::to_owned),
            reason: None,
            detail: BTreeMap::new(),
        }
    }

    fn set(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    /// A log: 2 lines, cp(3), open aa (4), other (5), cp(6), close aa (7), cp(8), other (9), cp(10).
    fn log() -> (Vec<u8>, [u8; 32]) {
        let (signer, _) = Signer::generate().unwrap();
        let public = signer.public_key();
        let mut c = AuditChain::new(Arc::new(signer), CheckpointPolicy::default());
        let mut log = Vec::new();
        log.extend(c.line(&event("gateway_start", None), 0));
        log.extend(c.line(&event("config_loaded", None), 0));
        log.extend(c.checkpoint(0));
        log.extend(c.line(&event("session_open", Some("aa")), 0));
        log.extend(c.line(&event("session_open", Some("bb")), 0));
        log.extend(c.checkpoint(0));
        log.extend(c.line(&event("session_close", Some("aa")), 0));
        log.extend(c.checkpoint(0));
        log.extend(c.line(&event("session_close", Some("bb")), 0));
        log.extend(c.checkpoint(0));
        assert!(verify_audit(&log, &public).ok);
        (log, public)
    }

    fn keys(public: [u8; 32]) -> impl Fn(&[u8; KEY_ID_LEN]) -> Option<[u8; 32]> {
        move |id| (*id == key_id_raw(&public)).then_some(public)
    }

    #[test]
    fn sums_round_trip_and_refuse_what_sha256sum_would_escape() {
        let sums = make_sums([("b/x.wrec", &b"2"[..]), ("a.json", &b"1"[..])]).unwrap();
        let text = String::from_utf8(sums.clone()).unwrap();
        assert!(text.starts_with(&format!("{}  a.json\n", hex::encode(sha256(b"1")))));
        let parsed = parse_sums(&sums).unwrap();
        assert_eq!(parsed[1].0, "b/x.wrec");
        for bad in [
            "../x",
            "/etc/passwd",
            "a\\b",
            "a\nb",
            "a//b",
            "",
            "a b",
            "./a",
        ] {
            assert!(make_sums([(bad, &b""[..])]).is_err(), "{bad:?}");
        }
        let h = hex::encode(sha256(b""));
        let rows: &[(&str, &str)] = &[
            ("", "empty"),
            ("x\n", "shorter"),
            (&format!("{h} a\n"), "two spaces"),
            (&format!("{}  a\n", h.to_uppercase()), "lowercase"),
            (&format!("{h}  b\n{h}  a\n"), "sorted"),
            (&format!("{h}  a\n{h}  a\n"), "sorted"),
            (&format!("{h}  ../a\n"), "invalid path"),
            (&format!("{h}  a"), "newline"),
            (&format!("{h} *a\n"), "two spaces"),
        ];
        for (text, want) in rows {
            let e = parse_sums(text.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn the_key_signs_only_well_formed_sums() {
        let (signer, _) = Signer::generate().unwrap();
        let sums = make_sums([("a", &b"x"[..])]).unwrap();
        let sig = sign_sums(&signer, &sums).unwrap();
        assert!(verify_sums(&signer.public_key(), &sums, &sig));
        let mut other = sums.clone();
        other[0] ^= 1;
        assert!(!verify_sums(&signer.public_key(), &other, &sig));
        assert!(!verify_sums(&signer.public_key(), &sums, &sig[..63]));
        // A checkpoint message is never signed through this door.
        assert!(sign_sums(&signer, b"ward-audit-checkpoint-v1\x01\0\0\0\0\0\0\0").is_err());
    }

    #[test]
    fn age_round_trip() {
        let id = age::x25519::Identity::generate();
        let recipient = id.to_public().to_string();
        let file = age_encrypt(&recipient, b"records").unwrap();
        let ids: Vec<Box<dyn age::Identity + Send + Sync>> = vec![Box::new(id)];
        assert_eq!(age_decrypt(&file, &ids).unwrap(), b"records");
        let other: Vec<Box<dyn age::Identity + Send + Sync>> =
            vec![Box::new(age::x25519::Identity::generate())];
        assert!(age_decrypt(&file, &other).is_err());
        let mut bad = file.clone();
        let n = bad.len() - 3;
        bad[n] ^= 1;
        assert!(age_decrypt(&bad, &ids).is_err());
        assert!(age_encrypt("age1nope", b"x").is_err());
    }

    #[test]
    fn pem_round_trip() {
        let (signer, _) = Signer::generate().unwrap();
        let pem = spki_pem(&signer.public_key());
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA"));
        assert_eq!(parse_spki_pem(&pem).unwrap(), signer.public_key());
        assert!(
            parse_spki_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----").is_err()
        );
        assert!(parse_spki_pem("hello").is_err());
    }

    #[test]
    fn slices_start_and_end_at_checkpoints_and_verify_alone() {
        let (log, public) = log();
        let k = keys(public);
        let text = |b: SliceBounds| String::from_utf8(log[b.start..b.end].to_vec()).unwrap();
        // aa: from cp 3 to cp 8.
        let b = audit_slice(&log, &set(&["aa"])).unwrap();
        assert_eq!((b.first_seq, b.last_seq), (3, 8));
        assert!(text(b).starts_with("{\"type\":\"checkpoint\",\"seq\":3"));
        let r = verify_audit_slice(&log[b.start..b.end], &k);
        assert!(r.ok, "{r:?}");
        assert_eq!((r.first_seq, r.last_seq, r.lines), (3, 8, 6));
        // bb: from cp 3 to cp 10.
        let b = audit_slice(&log, &set(&["bb"])).unwrap();
        assert_eq!((b.first_seq, b.last_seq), (3, 10));
        // Nothing about it.
        assert!(audit_slice(&log, &set(&["cc"])).is_err());
        // Not yet signed after the last relevant line.
        let mut open = log.clone();
        open.extend_from_slice(b"{\"seq\":11,\"event\":\"x\",\"session_id\":\"cc\"}\n");
        let e = audit_slice(&open, &set(&["cc"])).unwrap_err().to_string();
        assert!(e.contains("not yet followed by a signed checkpoint"), "{e}");
    }

    #[test]
    fn slice_of_a_whole_log_verifies_like_verify_audit() {
        let (log, public) = log();
        let r = verify_audit_slice(&log, &keys(public));
        assert!(r.ok, "{r:?}");
        assert_eq!((r.first_seq, r.last_seq), (1, 10));
        // Flip each byte of the whole log: verify_audit and the slice verifier agree.
        for i in 0..log.len() {
            let mut bad = log.clone();
            bad[i] ^= 0x01;
            let full = verify_audit(&bad, &public).ok;
            let slice = verify_audit_slice(&bad, &keys(public)).ok;
            assert_eq!(full, slice, "byte {i}");
            assert!(!slice, "byte {i} flipped and still verifies");
        }
    }

    #[test]
    fn a_tampered_slice_fails_naming_the_line() {
        let (log, public) = log();
        let k = keys(public);
        let b = audit_slice(&log, &set(&["aa"])).unwrap();
        let slice = log[b.start..b.end].to_vec();
        // Every single flipped byte fails.
        for i in 0..slice.len() {
            let mut bad = slice.clone();
            bad[i] ^= 0x20;
            assert!(!verify_audit_slice(&bad, &k).ok, "byte {i}");
        }
        // Dropping the first checkpoint: starts at line 4, unverifiable.
        let nl = slice.iter().position(|b| *b == b'\n').unwrap();
        let r = verify_audit_slice(&slice[nl + 1..], &k);
        assert!(r
            .first_error
            .unwrap()
            .what
            .contains("neither a signed checkpoint"));
        // Cut before the last checkpoint.
        let cut = &slice[..slice.len() - 1];
        let last_nl = cut.iter().rposition(|b| *b == b'\n').unwrap();
        let r = verify_audit_slice(&slice[..last_nl + 1], &k);
        assert!(r
            .first_error
            .unwrap()
            .what
            .contains("without a signed checkpoint"));
        // A foreign key.
        let (other, _) = Signer::generate().unwrap();
        let r = verify_audit_slice(&slice, &keys(other.public_key()));
        let e = r.first_error.unwrap();
        assert!(e.what.contains("not among the bundle's keys"), "{e}");
        assert_eq!(e.record, 3);
    }
}
