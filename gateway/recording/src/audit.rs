//! The audit log: one JSON object per line, hash-chained and signed like recordings.
//!
//! An event line is the event's JSON with `"seq"` (its 1-based line number) first and `"chain"`
//! last: `{"seq":N,<event fields>,"chain":"<hex>"}` + `\n`, where
//! `chain = SHA-256(previous chain ‖ the line's bytes before ,"chain")` and the chain starts at
//! `SHA-256("ward-audit-v1")`. A checkpoint line
//! `{"type":"checkpoint","seq":N,"chain":"<hex>","key_id":"<hex>","sig":"<hex>"}` signs, with
//! Ed25519, `"ward-audit-checkpoint-v1" ‖ u64 seq ‖ key id ‖ chain`: the chain after every event
//! line before it. serde_json escapes quotes, newlines and control characters (ESC becomes
//! `\u001b`), so no field value can forge a line.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use time::{OffsetDateTime, UtcOffset};

use crate::encoder::CheckpointPolicy;
use crate::keyring::PublicKeys;
use crate::signer::{sha256_parts, verify_sig, Signer, KEY_ID_LEN};
use crate::verify::{SealStatus, VerifyError, VerifyReport};
use crate::RecError;

pub use crate::trail::{session_trails, SessionTrail};

const GENESIS_DOMAIN: &[u8] = b"ward-audit-v1";
const CHECKPOINT_DOMAIN: &[u8] = b"ward-audit-checkpoint-v1";
/// `,"chain":"` + 64 hex + `"}`.
const CHAIN_SUFFIX_LEN: usize = 10 + 64 + 2;
const CHAIN_TAG: &[u8] = b",\"chain\":\"";

/// Who an audit event is about.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AuditPrincipal {
    /// Certificate name.
    pub name: String,
    /// Principal kind.
    pub kind: String,
    /// Organisation, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// Certificate serial (hex).
    pub serial: String,
}

/// One audit event (HIPAA 164.312(b)): when, what, outcome, who, from where, to which device.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AuditEvent {
    /// RFC 3339 UTC with milliseconds ([`rfc3339_ms`]).
    pub time: String,
    /// Event type: session_open, session_deny, session_close, handshake_failed, lock, ...
    pub event: String,
    /// success | failure | denied.
    pub outcome: String,
    /// info | warning | high.
    pub severity: String,
    /// Who.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<AuditPrincipal>,
    /// Client address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Device id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Session id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Why (denial reason, close reason, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Anything else, as JSON values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub detail: BTreeMap<String, serde_json::Value>,
}

/// `2026-11-22T08:15:57.123Z`: RFC 3339, UTC, milliseconds.
pub fn rfc3339_ms(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

fn genesis() -> [u8; 32] {
    sha256_parts(&[GENESIS_DOMAIN])
}

pub(crate) fn checkpoint_message(seq: u64, key_id: &[u8; KEY_ID_LEN], chain: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CHECKPOINT_DOMAIN.len() + 8 + KEY_ID_LEN + 32);
    m.extend_from_slice(CHECKPOINT_DOMAIN);
    m.extend_from_slice(&seq.to_le_bytes());
    m.extend_from_slice(key_id);
    m.extend_from_slice(chain);
    m
}

fn checkpoint_line(seq: u64, chain: &[u8; 32], key_id: &[u8], sig: &[u8]) -> Vec<u8> {
    format!(
        "{{\"type\":\"checkpoint\",\"seq\":{seq},\"chain\":\"{}\",\"key_id\":\"{}\",\"sig\":\"{}\"}}\n",
        hex::encode(chain),
        hex::encode(key_id),
        hex::encode(sig)
    )
    .into_bytes()
}

/// Turns events into chained lines and writes checkpoint lines. Pure: the caller writes the
/// returned bytes to the log file. Cloning it lets a writer prepare lines and keep the new state
/// only once they are on disk.
#[derive(Debug, Clone)]
pub struct AuditChain {
    signer: Arc<Signer>,
    policy: CheckpointPolicy,
    chain: [u8; 32],
    next_seq: u64,
    since_cp: u64,
    last_cp_t: Option<u64>,
}

impl AuditChain {
    /// A fresh, empty log.
    pub fn new(signer: Arc<Signer>, policy: CheckpointPolicy) -> Self {
        AuditChain {
            signer,
            policy,
            chain: genesis(),
            next_seq: 1,
            since_cp: 0,
            last_cp_t: None,
        }
    }

    /// Continue an existing log after a restart: verifies it with this signer's key, drops a torn
    /// last line, and returns the chain state plus the length to truncate the file to. Lines after
    /// the last checkpoint are kept (their chain verifies) and the next checkpoint signs them.
    ///
    /// Fails with [`RecError::Tampered`] if any complete line does not verify.
    pub fn resume(
        existing: &[u8],
        signer: Arc<Signer>,
        policy: CheckpointPolicy,
    ) -> Result<(Self, u64), RecError> {
        let public = signer.public_key();
        Self::resume_keys(existing, &public, signer, policy)
    }

    /// [`AuditChain::resume`] of a log whose checkpoints may be signed by any of `keys` (the
    /// gateway's keyring, after a key rotation); new checkpoints are signed by `signer`.
    pub fn resume_keys<K: PublicKeys + ?Sized>(
        existing: &[u8],
        keys: &K,
        signer: Arc<Signer>,
        policy: CheckpointPolicy,
    ) -> Result<(Self, u64), RecError> {
        let w = walk(existing, keys);
        match w.error {
            None | Some((_, Fail::Torn)) | Some((_, Fail::Tail)) => {}
            Some((e, Fail::Integrity)) => return Err(RecError::Tampered(e)),
        }
        let st = w.cur;
        let chain = AuditChain {
            signer,
            policy,
            chain: st.chain,
            next_seq: st.next_seq,
            since_cp: st.since_cp,
            last_cp_t: if st.since_cp > 0 { Some(0) } else { None },
        };
        Ok((chain, st.offset as u64))
    }

    /// One event as a line (`\n`-terminated), followed by a checkpoint line when one is due.
    pub fn line(&mut self, ev: &AuditEvent, t_ns: u64) -> Vec<u8> {
        let json = serde_json::to_vec(ev).unwrap_or_else(|e| {
            // Not reachable with these types (string keys only); keep the line well-formed anyway.
            serde_json::json!({"time": ev.time, "event": "audit_encode_failed", "outcome": "failure",
                "severity": "high", "reason": e.to_string()})
            .to_string()
            .into_bytes()
        });
        let body = json
            .strip_prefix(b"{")
            .and_then(|s| s.strip_suffix(b"}"))
            .unwrap_or_default();
        let mut line = Vec::with_capacity(json.len() + 32 + CHAIN_SUFFIX_LEN);
        line.extend_from_slice(format!("{{\"seq\":{}", self.next_seq).as_bytes());
        if !body.is_empty() {
            line.push(b',');
            line.extend_from_slice(body);
        }
        self.chain = sha256_parts(&[&self.chain, &line]);
        line.extend_from_slice(CHAIN_TAG);
        line.extend_from_slice(hex::encode(self.chain).as_bytes());
        line.extend_from_slice(b"\"}\n");
        self.next_seq += 1;
        self.since_cp += 1;
        if self.last_cp_t.is_none() {
            self.last_cp_t = Some(t_ns);
        }
        if self.checkpoint_due(t_ns) {
            line.extend(self.checkpoint(t_ns));
        }
        line
    }

    /// Whether events were written since the last checkpoint and `every_records` of them or
    /// `every_ns` have passed.
    pub fn checkpoint_due(&self, t_ns: u64) -> bool {
        self.since_cp > 0
            && (self.since_cp >= self.policy.every_records.max(1)
                || self
                    .last_cp_t
                    .is_some_and(|t| t_ns.saturating_sub(t) >= self.policy.every_ns))
    }

    /// A checkpoint line signing every line so far; empty if nothing was written since the last.
    pub fn checkpoint(&mut self, t_ns: u64) -> Vec<u8> {
        if self.since_cp == 0 {
            return Vec::new();
        }
        let key_id = self.signer.key_id_raw();
        let sig = self
            .signer
            .sign(&checkpoint_message(self.next_seq, &key_id, &self.chain));
        let line = checkpoint_line(self.next_seq, &self.chain, &key_id, &sig);
        self.next_seq += 1;
        self.since_cp = 0;
        self.last_cp_t = Some(t_ns);
        line
    }

    /// Sign the next checkpoints with `signer` (key rotation). The caller writes a checkpoint with
    /// the old key first ([`AuditChain::checkpoint`]), so every line is signed by the key that was
    /// current when it was written.
    pub fn set_signer(&mut self, signer: Arc<Signer>) {
        self.signer = signer;
    }

    /// Event lines written since the last checkpoint (not yet covered by a signature).
    pub fn unsigned_lines(&self) -> u64 {
        self.since_cp
    }

    /// The line number the next line will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
}

#[derive(Clone, Debug)]
struct State {
    chain: [u8; 32],
    next_seq: u64,
    offset: usize,
    since_cp: u64,
    last_cp: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fail {
    /// The last line has no newline.
    Torn,
    /// A complete line does not verify.
    Integrity,
    /// Lines after the last checkpoint.
    Tail,
}

struct Walk {
    lines: u64,
    error: Option<(VerifyError, Fail)>,
    cur: State,
    cp: Option<State>,
}

fn parse_hex<const N: usize>(v: Option<&serde_json::Value>) -> Option<[u8; N]> {
    let s = v?.as_str()?;
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

fn walk<K: PublicKeys + ?Sized>(bytes: &[u8], keys: &K) -> Walk {
    let mut w = Walk {
        lines: 0,
        error: None,
        cur: State {
            chain: genesis(),
            next_seq: 1,
            offset: 0,
            since_cp: 0,
            last_cp: None,
        },
        cp: None,
    };
    let mut pos = 0usize;
    let mut n = 1u64;
    while pos < bytes.len() {
        let rest = bytes.get(pos..).unwrap_or_default();
        let Some(nl) = rest.iter().position(|b| *b == b'\n') else {
            if w.error.is_none() {
                let what =
                    format!("line {n} is incomplete (no newline at the end): truncated mid-line");
                w.error = Some((VerifyError::line(n, pos as u64, what), Fail::Torn));
            }
            break;
        };
        let line = rest.get(..nl).unwrap_or_default();
        let next = pos + nl + 1;
        w.lines += 1;
        if w.error.is_none() {
            if let Err(what) = check_line(&mut w.cur, line, n, keys) {
                w.error = Some((VerifyError::line(n, pos as u64, what), Fail::Integrity));
            } else {
                w.cur.next_seq = n + 1;
                w.cur.offset = next;
                if w.cur.since_cp == 0 {
                    w.cp = Some(w.cur.clone());
                }
            }
        }
        pos = next;
        n += 1;
    }
    if w.error.is_none() && w.cur.since_cp > 0 {
        let first = w.cur.last_cp.map_or(1, |l| l + 1);
        let last = w.cur.next_seq.saturating_sub(1);
        let offset = w.cp.as_ref().map_or(0, |c| c.offset) as u64;
        let what = format!(
            "lines {first}..{last} after the last checkpoint are not covered by a signature (tail cut, appended, or still being written)"
        );
        w.error = Some((VerifyError::line(first, offset, what), Fail::Tail));
    }
    w
}

fn check_line<K: PublicKeys + ?Sized>(
    st: &mut State,
    line: &[u8],
    n: u64,
    keys: &K,
) -> Result<(), String> {
    let v: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| format!("not valid JSON ({e}): line altered"))?;
    let obj = v.as_object().ok_or("not a JSON object: line altered")?;
    let seq = obj
        .get("seq")
        .and_then(|s| s.as_u64())
        .ok_or("no seq field: line altered")?;
    if seq != n {
        return Err(format!(
            "line has seq {seq}, expected {n} (line deleted, inserted or reordered)"
        ));
    }
    if obj.get("type").and_then(|t| t.as_str()) == Some("checkpoint") {
        let (Some(chain), Some(key_id), Some(sig)) = (
            parse_hex::<32>(obj.get("chain")),
            parse_hex::<KEY_ID_LEN>(obj.get("key_id")),
            parse_hex::<64>(obj.get("sig")),
        ) else {
            return Err("checkpoint line lacks a valid chain, key_id or sig: line altered".into());
        };
        if checkpoint_line(seq, &chain, &key_id, &sig).strip_suffix(b"\n") != Some(line) {
            return Err("checkpoint line is not in canonical form: line altered".into());
        }
        let public = keys.public_for(&key_id);
        if !public
            .is_some_and(|pk| verify_sig(&pk, &checkpoint_message(seq, &key_id, &chain), &sig))
        {
            return Err(match public {
                None => keys.unknown_key(&key_id),
                Some(_) => format!(
                    "signature does not verify with the gateway key {} (checkpoint altered)",
                    hex::encode(key_id)
                ),
            });
        }
        if chain != st.chain {
            let first = st.last_cp.map_or(1, |l| l + 1);
            return Err(format!(
                "chain mismatch at checkpoint (line deleted, reordered or altered among lines {first}..{})",
                n.saturating_sub(1)
            ));
        }
        st.since_cp = 0;
        st.last_cp = Some(n);
        return Ok(());
    }
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
    let stored = rest.strip_suffix(b"\"}").filter(|_| tag == CHAIN_TAG);
    let Some(stored) = stored else {
        return Err("event line does not end with its chain field: line altered".into());
    };
    let chain = sha256_parts(&[&st.chain, prefix]);
    if stored != hex::encode(chain).as_bytes() {
        return Err(
            "chain mismatch (line altered, or a line before it deleted, reordered or altered)"
                .into(),
        );
    }
    serde_json::from_value::<AuditEvent>(v.clone())
        .map_err(|e| format!("not an audit event ({e})"))?;
    st.chain = chain;
    st.since_cp += 1;
    Ok(())
}

/// Verify an audit log against the gateway's public key or keyring; names the first bad line (1-based).
///
/// `ok` is true if every line verifies and the log ends with a valid checkpoint (an empty log is
/// ok). Lines after the last checkpoint fail verification: they are unsigned (a log being written
/// has such lines for at most one checkpoint interval). A cut exactly after a checkpoint line
/// cannot be detected from the file alone; see `docs/recording-format.md`.
pub fn verify_audit<K: PublicKeys + ?Sized>(bytes: &[u8], keys: &K) -> VerifyReport {
    let w = walk(bytes, keys);
    let first_error = w.error.map(|(e, _)| e);
    let status = if first_error.is_none() {
        SealStatus::Sealed
    } else {
        SealStatus::Unsealed
    };
    VerifyReport {
        ok: first_error.is_none(),
        records: w.lines,
        verified_records: w.cp.as_ref().map_or(0, |c| c.next_seq.saturating_sub(1)),
        status,
        meta: None,
        end: None,
        first_error,
        valid_prefix_len: w.cp.as_ref().map_or(0, |c| c.offset as u64),
    }
}

/// Event types that record a problem with the audit log itself: lost events (`audit_gap`,
/// `audit_overflow`), a torn last line found at start (`audit_log_torn`), unsigned lines signed
/// after a restart (`audit_log_resumed`).
pub const INCIDENTS: &[&str] = &[
    "audit_gap",
    "audit_overflow",
    "audit_log_torn",
    "audit_log_resumed",
];

/// The log's own incidents ([`INCIDENTS`]) with their line numbers, for `ward audit verify` to
/// show. Reads every complete line that parses as an event; verification is [`verify_audit`]'s.
pub fn incidents(bytes: &[u8]) -> Vec<(u64, AuditEvent)> {
    bytes
        .split(|b| *b == b'\n')
        .zip(1u64..)
        .filter_map(|(line, n)| {
            let ev = serde_json::from_slice::<AuditEvent>(line).ok()?;
            INCIDENTS.contains(&ev.event.as_str()).then_some((n, ev))
        })
        .collect()
}

#[cfg(test)]
mod incident_tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn event(kind: &str) -> AuditEvent {
        AuditEvent {
            time: "2026-11-27T16:00:00.000Z".into(),
            event: kind.into(),
            outcome: "failure".into(),
            severity: "high".into(),
            principal: None,
            source: None,
            device: None,
            session_id: None,
            reason: Some("why".into()),
            detail: BTreeMap::new(),
        }
    }

    #[test]
    fn incidents_are_found_with_their_line_numbers() {
        let (signer, _) = Signer::generate().unwrap();
        let mut chain = AuditChain::new(Arc::new(signer), CheckpointPolicy::default());
        let mut log = Vec::new();
        log.extend(chain.line(&event("session_open"), 0));
        log.extend(chain.line(&event("audit_gap"), 0));
        log.extend(chain.checkpoint(0));
        log.extend(chain.line(&event("audit_log_torn"), 0));
        let found = incidents(&log);
        let kinds: Vec<_> = found.iter().map(|(n, e)| (*n, e.event.as_str())).collect();
        assert_eq!(kinds, vec![(2, "audit_gap"), (4, "audit_log_torn")]);
    }
}
