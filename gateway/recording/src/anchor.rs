//! Off-host anchors: the signed checkpoints of the audit log and of every finished recording,
//! published where root on the gateway host cannot rewrite them, and the pure checker that
//! compares a log and the recordings with them (`ward audit verify --anchors`).
//!
//! An anchor is one JSON line carrying the very values a checkpoint signs, so anyone holding the
//! gateway's public keys can check it without the gateway:
//!
//! ```text
//! {"v":1,"kind":"audit","gateway":ID,"seq":N,"chain":HEX,"key_id":HEX,"sig":HEX,"time":RFC3339}
//! {"v":1,"kind":"recording","gateway":ID,"session_id":S,"index":N,"t_ns":T,"chain":HEX,"key_id":HEX,"sig":HEX,"status":"sealed|interrupted","time":RFC3339}
//! ```
//!
//! `sig` is the checkpoint's Ed25519 signature (audit: over `"ward-audit-checkpoint-v1" ‖ seq ‖
//! key id ‖ chain`; recording: over the recording checkpoint message, which binds the session id,
//! the record index and `t_ns`). `time` is when the anchor was published and is not signed.
//!
//! What the anchors catch that the files alone cannot ([`check`]): an audit log cut after a signed
//! checkpoint (the log ends before a line an anchor pins), a rewritten history (the log's chain at
//! an anchored line differs: the attacker held the host's key and re-signed), a recording that was
//! deleted, cut or rewritten after it was sealed, and forged anchors (a signature that does not
//! verify with the gateway's keyring). Pure: bytes in, findings out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::format::{checkpoint_message, code, CheckpointBody, CHECKPOINT_BODY_LEN};
use crate::keyring::PublicKeys;
use crate::signer::{verify_sig, KEY_ID_LEN, SIG_LEN};
use crate::RECORD_HEADER_LEN;

/// The anchor format version (`"v"`).
pub const ANCHOR_VERSION: u32 = 1;

/// Hex (de)serialization of fixed-size byte arrays.
mod hexn {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer, const N: usize>(v: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let text = String::deserialize(d)?;
        let mut out = [0u8; N];
        hex::decode_to_slice(&text, &mut out)
            .map_err(|e| serde::de::Error::custom(format!("expected {} hex digits: {e}", 2 * N)))?;
        Ok(out)
    }
}

/// An audit-log checkpoint, published.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditAnchor {
    /// [`ANCHOR_VERSION`].
    pub v: u32,
    /// Always `audit`.
    pub kind: String,
    /// The gateway's id (`<state_dir>/gateway.id`).
    pub gateway: String,
    /// The checkpoint line's number in the log.
    pub seq: u64,
    /// The chain after every event line before it.
    #[serde(with = "hexn")]
    pub chain: [u8; 32],
    /// The signing key's id.
    #[serde(with = "hexn")]
    pub key_id: [u8; KEY_ID_LEN],
    /// The checkpoint's signature.
    #[serde(with = "hexn")]
    pub sig: [u8; SIG_LEN],
    /// When it was published (RFC 3339; not signed).
    pub time: String,
}

/// A recording's final checkpoint, published when the recording was sealed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingAnchor {
    /// [`ANCHOR_VERSION`].
    pub v: u32,
    /// Always `recording`.
    pub kind: String,
    /// The gateway's id.
    pub gateway: String,
    /// The session.
    pub session_id: String,
    /// The final checkpoint's record ordinal.
    pub index: u64,
    /// Its time (nanoseconds since the session started; signed).
    pub t_ns: u64,
    /// The chain over every record before it.
    #[serde(with = "hexn")]
    pub chain: [u8; 32],
    /// The signing key's id.
    #[serde(with = "hexn")]
    pub key_id: [u8; KEY_ID_LEN],
    /// The checkpoint's signature.
    #[serde(with = "hexn")]
    pub sig: [u8; SIG_LEN],
    /// `sealed` (an end record) or `interrupted` (sealed by crash recovery).
    pub status: String,
    /// When it was published (RFC 3339; not signed).
    pub time: String,
}

/// One anchor line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Anchor {
    /// An audit-log checkpoint.
    Audit(AuditAnchor),
    /// A recording's final checkpoint.
    Recording(RecordingAnchor),
}

impl Anchor {
    /// The JSON line, `\n`-terminated.
    pub fn to_line(&self) -> Vec<u8> {
        let json = match self {
            Anchor::Audit(a) => serde_json::to_vec(a),
            Anchor::Recording(r) => serde_json::to_vec(r),
        };
        // Strings, integers and arrays rendered as hex: serializing cannot fail.
        let mut line = json.unwrap_or_default();
        line.push(b'\n');
        line
    }

    /// Parse one line (without its newline).
    pub fn parse(line: &[u8]) -> Result<Anchor, String> {
        let v: serde_json::Value =
            serde_json::from_slice(line).map_err(|e| format!("not JSON ({e})"))?;
        let version = v.get("v").and_then(|v| v.as_u64());
        if version != Some(u64::from(ANCHOR_VERSION)) {
            return Err(format!(
                "anchor version {} is not {ANCHOR_VERSION}",
                version.map_or_else(|| "missing".into(), |n| n.to_string())
            ));
        }
        match v.get("kind").and_then(|k| k.as_str()) {
            Some("audit") => serde_json::from_value(v)
                .map(Anchor::Audit)
                .map_err(|e| format!("not an audit anchor ({e})")),
            Some("recording") => serde_json::from_value(v)
                .map(Anchor::Recording)
                .map_err(|e| format!("not a recording anchor ({e})")),
            _ => Err("kind is neither audit nor recording".into()),
        }
    }

    /// The gateway it names.
    pub fn gateway(&self) -> &str {
        match self {
            Anchor::Audit(a) => &a.gateway,
            Anchor::Recording(r) => &r.gateway,
        }
    }

    /// When it was published.
    pub fn time(&self) -> &str {
        match self {
            Anchor::Audit(a) => &a.time,
            Anchor::Recording(r) => &r.time,
        }
    }

    /// Whether its signature verifies with one of `keys`; `Err` says why not.
    pub fn verify<K: PublicKeys + ?Sized>(&self, keys: &K) -> Result<(), String> {
        let (key_id, msg, sig) = match self {
            Anchor::Audit(a) => (
                a.key_id,
                crate::audit::checkpoint_message(a.seq, &a.key_id, &a.chain),
                a.sig,
            ),
            Anchor::Recording(r) => (
                r.key_id,
                checkpoint_message(&r.session_id, r.index, r.t_ns, &r.key_id, &r.chain),
                r.sig,
            ),
        };
        match keys.public_for(&key_id) {
            None => Err(format!(
                "signed by key {}, which was never this gateway's: a forged anchor",
                hex::encode(key_id)
            )),
            Some(pk) if !verify_sig(&pk, &msg, &sig) => Err(format!(
                "its signature does not verify with the gateway key {}: a forged or altered anchor",
                hex::encode(key_id)
            )),
            Some(_) => Ok(()),
        }
    }

    /// A short name for messages: `audit line N` or `recording S`.
    pub fn name(&self) -> String {
        match self {
            Anchor::Audit(a) => format!("audit line {}", a.seq),
            Anchor::Recording(r) => format!("recording {}", r.session_id),
        }
    }
}

/// The anchors of every checkpoint line in `written` (bytes just appended to the audit log).
pub fn audit_anchors(written: &[u8], gateway: &str, time: &str) -> Vec<Anchor> {
    written
        .split(|b| *b == b'\n')
        .filter(|l| l.starts_with(b"{\"type\":\"checkpoint\""))
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_slice(l).ok()?;
            let hexf = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
            let mut chain = [0u8; 32];
            let mut key_id = [0u8; KEY_ID_LEN];
            let mut sig = [0u8; SIG_LEN];
            hex::decode_to_slice(hexf("chain")?, &mut chain).ok()?;
            hex::decode_to_slice(hexf("key_id")?, &mut key_id).ok()?;
            hex::decode_to_slice(hexf("sig")?, &mut sig).ok()?;
            Some(Anchor::Audit(AuditAnchor {
                v: ANCHOR_VERSION,
                kind: "audit".into(),
                gateway: gateway.to_owned(),
                seq: v.get("seq")?.as_u64()?,
                chain,
                key_id,
                sig,
                time: time.to_owned(),
            }))
        })
        .collect()
}

/// A recording's last checkpoint, as read from the end of its file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinalCheckpoint {
    /// Its record ordinal.
    pub index: u64,
    /// Its time.
    pub t_ns: u64,
    /// The signing key's id.
    pub key_id: [u8; KEY_ID_LEN],
    /// The chain it signs.
    pub chain: [u8; 32],
    /// The signature.
    pub sig: [u8; SIG_LEN],
}

/// Bytes from the end of a recording that hold its final checkpoint record.
pub const FINAL_CHECKPOINT_LEN: usize = RECORD_HEADER_LEN + CHECKPOINT_BODY_LEN;

/// The checkpoint record that ends `tail` (the last bytes of a recording, at least
/// [`FINAL_CHECKPOINT_LEN`] of them); `None` if the file does not end with one. It is not
/// verified here: [`crate::verify()`] does that.
pub fn final_checkpoint(tail: &[u8]) -> Option<FinalCheckpoint> {
    let start = tail.len().checked_sub(FINAL_CHECKPOINT_LEN)?;
    let rec = tail.get(start..)?;
    let (header, body) = rec.split_first_chunk::<RECORD_HEADER_LEN>()?;
    let (kind, len) = header.split_first()?;
    let len = u32::from_le_bytes(len.first_chunk::<4>().copied()?);
    if *kind != code::CHECKPOINT || usize::try_from(len).ok()? != CHECKPOINT_BODY_LEN {
        return None;
    }
    let cp = CheckpointBody::parse(body)?;
    Some(FinalCheckpoint {
        index: cp.index,
        t_ns: cp.t_ns,
        key_id: cp.key_id,
        chain: cp.chain,
        sig: cp.sig,
    })
}

/// The anchor of a sealed recording, from the end of its file; `None` if it does not end with a
/// checkpoint.
pub fn recording_anchor(
    tail: &[u8],
    session_id: &str,
    gateway: &str,
    status: &str,
    time: &str,
) -> Option<Anchor> {
    let cp = final_checkpoint(tail)?;
    Some(Anchor::Recording(RecordingAnchor {
        v: ANCHOR_VERSION,
        kind: "recording".into(),
        gateway: gateway.to_owned(),
        session_id: session_id.to_owned(),
        index: cp.index,
        t_ns: cp.t_ns,
        chain: cp.chain,
        key_id: cp.key_id,
        sig: cp.sig,
        status: status.to_owned(),
        time: time.to_owned(),
    }))
}

/// One problem [`check`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnchorFinding {
    /// The anchor file's line (1-based) it is about.
    pub line: u64,
    /// The session, for recording anchors.
    pub session_id: Option<String>,
    /// What is wrong.
    pub what: String,
}

/// What [`check`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AnchorReport {
    /// Problems: each one means the log, a recording or the anchors were tampered with.
    pub findings: Vec<AnchorFinding>,
    /// Audit anchors checked.
    pub audit: u64,
    /// Recording anchors checked.
    pub recordings: u64,
    /// Recording anchors not checked because no recording listing was given.
    pub recordings_unchecked: u64,
    /// Anchors of other gateways (skipped).
    pub other_gateways: u64,
    /// The highest audit line an anchor pins.
    pub highest_seq: Option<u64>,
}

/// What the audit log holds, for [`check`]: its complete lines, and the chain of each checkpoint.
fn log_checkpoints(log: &[u8]) -> (u64, BTreeMap<u64, [u8; 32]>) {
    let mut pieces: Vec<&[u8]> = log.split(|b| *b == b'\n').collect();
    // The piece after the last newline is an incomplete line (or empty).
    pieces.pop();
    let mut cps = BTreeMap::new();
    for (i, line) in pieces.iter().enumerate() {
        if !line.starts_with(b"{\"type\":\"checkpoint\"") {
            continue;
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        let mut chain = [0u8; 32];
        let ok = v
            .get("chain")
            .and_then(|c| c.as_str())
            .is_some_and(|c| hex::decode_to_slice(c, &mut chain).is_ok());
        if ok {
            cps.insert(i as u64 + 1, chain);
        }
    }
    (pieces.len() as u64, cps)
}

fn short(chain: &[u8; 32]) -> String {
    hex::encode(chain.get(..8).unwrap_or_default())
}

/// Compare the audit `log` and the recordings with `anchors` (JSON lines).
///
/// `recordings`: every recording's final checkpoint by session id (`None`: the file exists but
/// does not end with a checkpoint); `None` skips the recording anchors (counted in
/// [`AnchorReport::recordings_unchecked`]). `gateway`: only this gateway's anchors are checked
/// (`None`: all). Every anchor's signature is checked with `keys` first; one that does not verify
/// is a finding and is not used.
pub fn check<K: PublicKeys + ?Sized>(
    log: &[u8],
    anchors: &[u8],
    recordings: Option<&BTreeMap<String, Option<FinalCheckpoint>>>,
    keys: &K,
    gateway: Option<&str>,
) -> AnchorReport {
    let mut report = AnchorReport::default();
    let (lines, cps) = log_checkpoints(log);
    // Past the end: only the highest is named, with how many others.
    let mut cut: Option<(u64, u64, String)> = None;
    let mut cut_count = 0u64;
    let mut finding = |line: u64, session_id: Option<String>, what: String| {
        report.findings.push(AnchorFinding {
            line,
            session_id,
            what,
        })
    };
    let mut pieces: Vec<&[u8]> = anchors.split(|b| *b == b'\n').collect();
    if pieces.last().is_some_and(|l| l.is_empty()) {
        pieces.pop();
    }
    let mut audit = 0u64;
    let mut recs = 0u64;
    let mut unchecked = 0u64;
    let mut other = 0u64;
    let mut highest: Option<u64> = None;
    for (i, line) in pieces.iter().enumerate() {
        let n = i as u64 + 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let anchor = match Anchor::parse(line) {
            Ok(a) => a,
            Err(why) => {
                finding(
                    n,
                    None,
                    format!(
                        "anchor line {n} is not an anchor: {why} (altered or not an anchor file)"
                    ),
                );
                continue;
            }
        };
        if gateway.is_some_and(|g| g != anchor.gateway()) {
            other += 1;
            continue;
        }
        let session = match &anchor {
            Anchor::Recording(r) => Some(r.session_id.clone()),
            Anchor::Audit(_) => None,
        };
        if let Err(why) = anchor.verify(keys) {
            finding(
                n,
                session,
                format!(
                    "anchor line {n} ({}, from {}): {why}",
                    anchor.name(),
                    anchor.time()
                ),
            );
            continue;
        }
        match &anchor {
            Anchor::Audit(a) => {
                audit += 1;
                highest = highest.max(Some(a.seq));
                if a.seq > lines {
                    cut_count += 1;
                    if cut.as_ref().is_none_or(|(seq, _, _)| a.seq > *seq) {
                        cut = Some((a.seq, n, a.time.clone()));
                    }
                    continue;
                }
                match cps.get(&a.seq) {
                    Some(chain) if *chain == a.chain => {}
                    Some(chain) => finding(
                        n,
                        None,
                        format!(
                            "the audit log's history was rewritten: an anchor from {} pins chain {}… at line {} (a signed checkpoint), the log has a checkpoint with chain {}… there",
                            a.time,
                            short(&a.chain),
                            a.seq,
                            short(chain)
                        ),
                    ),
                    None => finding(
                        n,
                        None,
                        format!(
                            "the audit log's history was rewritten: an anchor from {} pins a signed checkpoint (chain {}…) at line {}, the log has no checkpoint there",
                            a.time,
                            short(&a.chain),
                            a.seq
                        ),
                    ),
                }
            }
            Anchor::Recording(r) => {
                let Some(recordings) = recordings else {
                    unchecked += 1;
                    continue;
                };
                recs += 1;
                let id = &r.session_id;
                match recordings.get(id) {
                    None => finding(
                        n,
                        session,
                        format!(
                            "recording {id} is missing: an anchor from {} pins its final checkpoint (record {}, {}): deleted?",
                            r.time, r.index, r.status
                        ),
                    ),
                    Some(None) => finding(
                        n,
                        session,
                        format!(
                            "recording {id} does not end with a checkpoint, but an anchor from {} pins its final checkpoint (record {}, {}): cut or altered after it was sealed",
                            r.time, r.index, r.status
                        ),
                    ),
                    Some(Some(cp))
                        if cp.index != r.index || cp.chain != r.chain || cp.key_id != r.key_id =>
                    {
                        finding(
                            n,
                            session,
                            format!(
                                "recording {id} differs from its anchor from {}: the anchor pins record {} with chain {}… (key {}), the recording ends at record {} with chain {}… (key {}): rewritten or re-signed after it was sealed",
                                r.time,
                                r.index,
                                short(&r.chain),
                                hex::encode(r.key_id),
                                cp.index,
                                short(&cp.chain),
                                hex::encode(cp.key_id)
                            ),
                        )
                    }
                    Some(Some(_)) => {}
                }
            }
        }
    }
    if let Some((seq, n, time)) = cut {
        let others = match cut_count.saturating_sub(1) {
            0 => String::new(),
            k => format!(" ({k} earlier anchors also point past the end)"),
        };
        finding(
            n,
            None,
            format!(
                "the audit log ends at line {lines} but an anchor from {time} pins line {seq}: lines were cut{others}"
            ),
        );
    }
    report.audit = audit;
    report.recordings = recs;
    report.recordings_unchecked = unchecked;
    report.other_gateways = other;
    report.highest_seq = highest;
    report
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::audit::{AuditChain, AuditEvent};
    use crate::format::{EndInfo, SessionMeta};
    use crate::{CheckpointPolicy, Direction, Encoder, Keyring, Signer};

    fn event(n: u64) -> AuditEvent {
        AuditEvent {
            time: "2026-11-28T10:00:00.000Z".into(),
            event: "session_open".into(),
            outcome: "success".into(),
            severity: "info".into(),
            principal: None,
            source: None,
            device: None,
            session_id: Some(format!("s{n}")),
            reason: None,
            detail: BTreeMap::new(),
        }
    }

    /// A log of `n` checkpointed pairs of events, and its anchors.
    fn log_and_anchors(signer: &Arc<Signer>, n: u64) -> (Vec<u8>, Vec<u8>) {
        let mut chain = AuditChain::new(signer.clone(), CheckpointPolicy::default());
        let (mut log, mut anchors) = (Vec::new(), Vec::new());
        for i in 0..n {
            let mut written = chain.line(&event(2 * i), 0);
            written.extend(chain.line(&event(2 * i + 1), 0));
            written.extend(chain.checkpoint(0));
            for a in audit_anchors(&written, "gw1", &format!("t{i}")) {
                anchors.extend(a.to_line());
            }
            log.extend(written);
        }
        (log, anchors)
    }

    fn meta(id: &str) -> SessionMeta {
        SessionMeta {
            session_id: id.into(),
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
        }
    }

    fn recording(signer: &Arc<Signer>, id: &str, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = Encoder::start(
            &meta(id),
            signer.clone(),
            CheckpointPolicy::default(),
            &mut out,
        )
        .unwrap();
        enc.data(Direction::Up, 1, payload, &mut out);
        enc.finish(
            2,
            &EndInfo {
                ended_unix_ms: 1,
                reason: "done".into(),
                bytes_up: payload.len() as u64,
                bytes_down: 0,
            },
            &mut out,
        );
        out
    }

    fn texts(r: &AnchorReport) -> Vec<String> {
        r.findings.iter().map(|f| f.what.clone()).collect()
    }

    #[test]
    fn anchors_round_trip_and_verify() {
        let s = Arc::new(Signer::generate().unwrap().0);
        let (_, anchors) = log_and_anchors(&s, 2);
        let lines: Vec<_> = anchors
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(lines.len(), 2);
        let a = Anchor::parse(lines[0]).unwrap();
        assert_eq!(a.to_line().strip_suffix(b"\n").unwrap(), lines[0]);
        assert!(lines[0].starts_with(b"{\"v\":1,\"kind\":\"audit\",\"gateway\":\"gw1\",\"seq\":3,"));
        a.verify(&s.public_key()).unwrap();
        let other = Signer::generate().unwrap().0.public_key();
        assert!(a
            .verify(&other)
            .unwrap_err()
            .contains("never this gateway's"));
        let rec = recording(&s, "aa", b"hello");
        let r = recording_anchor(&rec, "aa", "gw1", "sealed", "t").unwrap();
        r.verify(&s.public_key()).unwrap();
        assert_eq!(
            Anchor::parse(r.to_line().strip_suffix(b"\n").unwrap()).unwrap(),
            r
        );
        // Bound to the session id: the same checkpoint claimed for another session fails.
        let moved = recording_anchor(&rec, "bb", "gw1", "sealed", "t").unwrap();
        assert!(moved
            .verify(&s.public_key())
            .unwrap_err()
            .contains("forged or altered"));
        assert!(final_checkpoint(&rec[..rec.len() - 1]).is_none());
        assert!(final_checkpoint(b"short").is_none());
    }

    /// The checker's table: what each tampering looks like with anchors.
    #[test]
    fn check_finds_cuts_rewrites_deletions_and_forgeries() {
        let s = Arc::new(Signer::generate().unwrap().0);
        let keys = Keyring::single(s.public_key(), "t");
        let (log, anchors) = log_and_anchors(&s, 3); // lines 1..=9, checkpoints at 3, 6, 9
        let rec = recording(&s, "aa", b"hello");
        let mut recs = BTreeMap::new();
        recs.insert("aa".to_string(), final_checkpoint(&rec));
        let mut all = anchors.clone();
        all.extend(
            recording_anchor(&rec, "aa", "gw1", "sealed", "tr")
                .unwrap()
                .to_line(),
        );

        // Untouched: no finding.
        let r = check(&log, &all, Some(&recs), &keys, Some("gw1"));
        assert!(r.findings.is_empty(), "{:?}", r.findings);
        assert_eq!((r.audit, r.recordings, r.highest_seq), (3, 1, Some(9)));

        // Cut exactly after the checkpoint at line 6: verifies alone, not with the anchors.
        let at6 = log
            .split_inclusive(|b| *b == b'\n')
            .take(6)
            .flatten()
            .copied()
            .collect::<Vec<u8>>();
        assert!(crate::audit::verify_audit(&at6, &keys).ok);
        let r = check(&at6, &all, Some(&recs), &keys, Some("gw1"));
        assert_eq!(
            texts(&r),
            vec!["the audit log ends at line 6 but an anchor from t2 pins line 9: lines were cut"]
        );

        // Rewritten: an attacker with the host's key rebuilds the log from line 4 on.
        let mut chain = AuditChain::new(s.clone(), CheckpointPolicy::default());
        let mut forged = Vec::new();
        for i in 0..3 {
            forged.extend(chain.line(&event(2 * i), 0));
            let mut e = event(2 * i + 1);
            if i > 0 {
                e.session_id = Some("hidden".into());
            }
            forged.extend(chain.line(&e, 0));
            forged.extend(chain.checkpoint(0));
        }
        assert!(crate::audit::verify_audit(&forged, &keys).ok);
        let r = check(&forged, &all, Some(&recs), &keys, Some("gw1"));
        assert_eq!(r.findings.len(), 2, "{:?}", r.findings);
        assert!(texts(&r)[0].contains("history was rewritten: an anchor from t1 pins chain"));
        assert!(texts(&r)[0].contains("at line 6"));

        // Deleted recording: named.
        let r = check(&log, &all, Some(&BTreeMap::new()), &keys, Some("gw1"));
        assert_eq!(r.findings.len(), 1);
        assert_eq!(r.findings[0].session_id.as_deref(), Some("aa"));
        assert!(texts(&r)[0].starts_with("recording aa is missing: an anchor from tr pins"));

        // Re-recorded (another payload, re-signed with the host's key): differs.
        let mut changed = BTreeMap::new();
        changed.insert(
            "aa".to_string(),
            final_checkpoint(&recording(&s, "aa", b"HELLO")),
        );
        let r = check(&log, &all, Some(&changed), &keys, Some("gw1"));
        assert!(
            texts(&r)[0].contains("recording aa differs from its anchor"),
            "{:?}",
            r
        );
        // Cut: no final checkpoint.
        let mut cut = BTreeMap::new();
        cut.insert("aa".to_string(), None);
        let r = check(&log, &all, Some(&cut), &keys, Some("gw1"));
        assert!(texts(&r)[0].contains("does not end with a checkpoint"));

        // Without a listing, recording anchors are counted, not checked.
        let r = check(&log, &all, None, &keys, Some("gw1"));
        assert!(r.findings.is_empty());
        assert_eq!(r.recordings_unchecked, 1);

        // A forged anchor (signed by a foreign key, pinning a later line): named, not used.
        let foreign = Arc::new(Signer::generate().unwrap().0);
        let (_, foreign_anchors) = log_and_anchors(&foreign, 4);
        let r = check(&log, &foreign_anchors, None, &keys, Some("gw1"));
        assert_eq!(r.findings.len(), 4);
        assert!(texts(&r)[3].contains("which was never this gateway's: a forged anchor"));
        // An altered anchor (seq changed): its signature no longer verifies.
        let text = String::from_utf8(anchors.clone())
            .unwrap()
            .replace("\"seq\":9,", "\"seq\":12,");
        let r = check(&log, text.as_bytes(), None, &keys, Some("gw1"));
        assert_eq!(r.findings.len(), 1);
        assert!(texts(&r)[0].contains("forged or altered anchor"));
        // Garbage lines are findings; other gateways are skipped.
        let r = check(&log, b"junk\n", None, &keys, Some("gw1"));
        assert!(texts(&r)[0].contains("anchor line 1 is not an anchor"));
        let r = check(&log, &anchors, None, &keys, Some("gw2"));
        assert!(r.findings.is_empty());
        assert_eq!(r.other_gateways, 3);
    }
}
