//! Evidence bundles (`ward evidence export|verify`, docs/evidence.md), pure: bytes and `now` in,
//! bytes and reports out. The CLI (`evidence_cmd.rs`) fetches the inputs and writes the file.
//!
//! A bundle is one tar file:
//!
//! | Path | What |
//! |---|---|
//! | `SHA256SUMS` | `sha256sum -c` format, over every other file but the signature |
//! | `SHA256SUMS.sig` | raw Ed25519 signature of `SHA256SUMS` by the gateway's current key |
//! | `manifest.json` | [`Manifest`]: format, sessions, gateway, created, key ids |
//! | `recordings/<id>.wrec` | each recording as stored |
//! | `payload/<id>/NNNN.age` | each sealed segment as a standalone age file, or |
//! | `payload/<id>.age` | the decrypted records re-encrypted to a named recipient |
//! | `audit/slice.jsonl` | the audit log from the checkpoint before the first event about the sessions to the one after the last |
//! | `keys/audit-keys.jsonl`, `keys/<id>.pem` | the gateway's public keys |
//! | `anchors.jsonl` | the published anchors covering the slice and the recordings (when configured) |
//! | `report.html` | who, what, when, decision, verification, timeline |
//!
//! [`prepare`] builds every file and `SHA256SUMS`; the signature comes from the state dir's key
//! or the gateway ([`ward_recording::evidence::sign_sums`]); [`write_tar`] writes the file.
//! [`read_tar`] and [`verify`] check one without the gateway.

pub mod report;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use serde::{Deserialize, Serialize};
use ward_recording::evidence::{self as ev, SUMS, SUMS_SIG};
use ward_recording::trail::{self, Level};
use ward_recording::VerifyReport;

/// Where the audit slice lives in a bundle.
pub const SLICE: &str = "audit/slice.jsonl";
/// The key list in a bundle.
pub const KEYS: &str = "keys/audit-keys.jsonl";
/// The manifest.
pub const MANIFEST: &str = "manifest.json";
/// The report.
pub const REPORT: &str = "report.html";
/// The anchors.
pub const ANCHORS: &str = "anchors.jsonl";
/// The largest bundle `read_tar` accepts as one entry (a recording): 16 GiB.
const MAX_ENTRY: u64 = 16 << 30;

/// One public key of the gateway, as `keys/audit-keys.jsonl` holds it (the state dir's
/// `audit.keys` format: never a private key).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct KeyEntry {
    /// Hex of the first 8 bytes of SHA-256(public key).
    pub key_id: String,
    /// The 32-byte Ed25519 public key, hex.
    pub public: String,
    /// When it was made (RFC 3339), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Retired by a rotation.
    #[serde(default)]
    pub retired: bool,
}

impl KeyEntry {
    /// An entry for `public`.
    pub fn of(public: &[u8; 32]) -> KeyEntry {
        KeyEntry {
            key_id: ward_recording::key_id_of(public),
            public: hex::encode(public),
            created: None,
            retired: false,
        }
    }

    /// The key, if its hex is 32 bytes and its id matches.
    pub fn key(&self) -> Option<[u8; 32]> {
        let mut k = [0u8; 32];
        hex::decode_to_slice(&self.public, &mut k).ok()?;
        (ward_recording::key_id_of(&k) == self.key_id).then_some(k)
    }
}

/// What the payload files hold.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PayloadKind {
    /// Plain recordings: the payload is in the recordings themselves.
    None,
    /// `payload/<id>/NNNN.age`: the recordings' sealed segments as standalone age files, to the
    /// recipients the recordings were made for.
    SealedSegments,
    /// `payload/<id>.age`: each recording's records, decrypted by the exporter and encrypted to
    /// the recipient named in the manifest.
    Reencrypted,
}

/// One recording in the manifest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ManifestRecording {
    /// The session.
    pub session_id: String,
    /// `recordings/<id>.wrec`.
    pub file: String,
    /// Its payload files.
    #[serde(default)]
    pub payload: Vec<String>,
    /// sealed / interrupted.
    pub status: String,
}

/// `manifest.json`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// `ward-evidence-v1`.
    pub format: String,
    /// Which gateway (as the exporter named it: its address, or the state dir).
    pub gateway: String,
    /// When the bundle was made, RFC 3339 UTC.
    pub created: String,
    /// Who made it (the identity through `--gateway`; `local` from a state dir).
    pub exported_by: String,
    /// The sessions, sorted.
    pub sessions: Vec<String>,
    /// The key id that signed `SHA256SUMS`.
    pub signing_key_id: String,
    /// Every key id in `keys/`.
    pub key_ids: Vec<String>,
    /// The recordings.
    pub recordings: Vec<ManifestRecording>,
    /// What the payload files hold.
    pub payload: PayloadKind,
    /// The recipient of re-encrypted payloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// `seq` of the slice's first and last lines.
    pub audit_slice: (u64, u64),
    /// Whether `anchors.jsonl` is present.
    pub anchors: bool,
    /// The ward version that made it.
    pub tool: String,
}

/// The payload of the recordings, as the exporter got it.
#[derive(Debug, Clone)]
pub enum Payload {
    /// Plain recordings.
    None,
    /// Each recording's sealed segments as standalone age files (by session).
    Segments(BTreeMap<String, Vec<Vec<u8>>>),
    /// Each recording's records re-encrypted to `recipient` (by session).
    Reencrypted {
        /// `age1…`.
        recipient: String,
        /// One age file per session.
        files: BTreeMap<String, Vec<u8>>,
    },
}

/// Everything a bundle is made from.
#[derive(Debug, Clone)]
pub struct ExportInput {
    /// Which gateway.
    pub gateway: String,
    /// Who exports.
    pub exported_by: String,
    /// Now.
    pub now: time::OffsetDateTime,
    /// Session id → recording bytes as stored.
    pub recordings: BTreeMap<String, Vec<u8>>,
    /// The payload files.
    pub payload: Payload,
    /// The whole audit log (the slice is cut here).
    pub audit_log: Vec<u8>,
    /// Every public key of the gateway.
    pub keys: Vec<KeyEntry>,
    /// The key that will sign `SHA256SUMS`.
    pub signing_key: [u8; 32],
    /// Anchor lines (JSON lines), when configured; those about the slice and the sessions are kept.
    pub anchors: Option<Vec<u8>>,
}

/// A bundle before its signature.
#[derive(Debug, Clone)]
pub struct Unsigned {
    /// Every file but `SHA256SUMS` and its signature, by path.
    pub files: BTreeMap<String, Vec<u8>>,
    /// `SHA256SUMS` over them.
    pub sums: Vec<u8>,
    /// The manifest (also in `files`).
    pub manifest: Manifest,
    /// What verifying the inputs found (also in the report).
    pub checks: Vec<Check>,
}

/// One verification step's outcome.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was found.
    pub detail: String,
}

impl Check {
    fn new(name: impl Into<String>, ok: bool, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            ok,
            detail: detail.into(),
        }
    }
}

/// Recordings verified against a set of keys (by key id): the report of the key that verifies it,
/// or of the first key when none does.
pub fn verify_recording(bytes: &[u8], keys: &[[u8; 32]]) -> VerifyReport {
    let mut first = None;
    for k in keys {
        let r = ward_recording::verify(bytes, k);
        if r.ok {
            return r;
        }
        // Keep the most telling failure: one that is not about the key.
        let about_key = r
            .first_error
            .as_ref()
            .is_some_and(|e| e.what.contains("signature does not verify"));
        match &first {
            None => first = Some(r),
            Some(_) if !about_key => first = Some(r),
            _ => {}
        }
    }
    first.unwrap_or_else(|| ward_recording::verify(bytes, &[0u8; 32]))
}

fn key_lookup(keys: &[[u8; 32]]) -> impl Fn(&[u8; 8]) -> Option<[u8; 32]> + '_ {
    move |id| {
        keys.iter()
            .find(|k| ward_recording::key_id_of(k) == hex::encode(id))
            .copied()
    }
}

fn why(r: &VerifyReport) -> String {
    r.first_error
        .as_ref()
        .map(|e| e.to_string())
        .unwrap_or_else(|| format!("{} (not sealed)", r.status))
}

/// The anchor lines about `sessions` or the audit checkpoints in `first..=last`.
fn anchors_covering(lines: &[u8], sessions: &BTreeSet<String>, first: u64, last: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for line in lines.split(|b| *b == b'\n') {
        let Ok(serde_json::Value::Object(a)) = serde_json::from_slice(line) else {
            continue;
        };
        let keep = match a.get("kind").and_then(|k| k.as_str()) {
            Some("audit") => a
                .get("seq")
                .and_then(|s| s.as_u64())
                .is_some_and(|s| (first..=last).contains(&s)),
            Some("recording") => a
                .get("session_id")
                .and_then(|s| s.as_str())
                .is_some_and(|s| sessions.contains(s)),
            _ => false,
        };
        if keep {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
    }
    out
}

/// Build a bundle's files and `SHA256SUMS` from `input`, verifying what goes in: every recording
/// (with the gateway's keys), the audit slice, and the two against each other. Refuses (naming
/// the first problem) when anything fails: a bundle is evidence that verifies.
pub fn prepare(input: &ExportInput) -> Result<Unsigned, String> {
    if input.recordings.is_empty() {
        return Err("no session to export".into());
    }
    let keys: Vec<[u8; 32]> = input.keys.iter().filter_map(KeyEntry::key).collect();
    if keys.len() != input.keys.len() {
        return Err("a key in the gateway's key list is not a 32-byte key matching its id".into());
    }
    let signing_id = ward_recording::key_id_of(&input.signing_key);
    if !keys.contains(&input.signing_key) {
        return Err(format!(
            "the signing key {signing_id} is not among the gateway's keys"
        ));
    }
    let sessions: BTreeSet<String> = input.recordings.keys().cloned().collect();
    let mut files = BTreeMap::new();
    let mut checks = Vec::new();
    let mut reports = BTreeMap::new();
    for (id, bytes) in &input.recordings {
        if !ev::valid_path(id) || id.contains('/') {
            return Err(format!("{id:?} is not a session id"));
        }
        let r = verify_recording(bytes, &keys);
        if !r.ok {
            return Err(format!(
                "recording {id} fails verification ({}); an evidence bundle holds only recordings that verify",
                why(&r)
            ));
        }
        if r.meta.as_ref().map(|m| m.session_id.as_str()) != Some(id.as_str()) {
            return Err(format!("recording {id}'s metadata names another session"));
        }
        checks.push(Check::new(
            format!("recording {id}"),
            true,
            format!("{} records, {}", r.records, r.status),
        ));
        files.insert(format!("recordings/{id}.wrec"), bytes.clone());
        reports.insert(id.clone(), r);
    }
    let bounds = ev::audit_slice(&input.audit_log, &sessions).map_err(|e| e.to_string())?;
    let slice = input
        .audit_log
        .get(bounds.start..bounds.end)
        .ok_or("the audit slice is out of range")?
        .to_vec();
    let sr = ev::verify_audit_slice(&slice, &key_lookup(&keys));
    if !sr.ok {
        let e = sr.first_error.map(|e| e.to_string()).unwrap_or_default();
        return Err(format!("the audit log's slice fails verification ({e})"));
    }
    checks.push(Check::new(
        "audit slice",
        true,
        format!("lines {}..{} verify", sr.first_seq, sr.last_seq),
    ));
    let findings = cross_check(&slice, &reports);
    if let Some(f) = findings.iter().find(|f| f.level == Level::Problem) {
        return Err(format!(
            "session {}: the recording and the audit log disagree: {}",
            f.session_id, f.what
        ));
    }
    checks.push(Check::new(
        "recordings vs audit slice",
        true,
        cross_check_summary(&findings),
    ));
    files.insert(SLICE.into(), slice.clone());
    // Payload.
    let mut payload_of: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let (kind, recipient) = match &input.payload {
        Payload::None => (PayloadKind::None, None),
        Payload::Segments(by_id) => {
            for (id, segs) in by_id {
                if !sessions.contains(id) {
                    return Err(format!("payload for session {id}, which is not exported"));
                }
                for (i, seg) in segs.iter().enumerate() {
                    let path = format!("payload/{id}/{:04}.age", i + 1);
                    payload_of.entry(id.clone()).or_default().push(path.clone());
                    files.insert(path, seg.clone());
                }
            }
            (PayloadKind::SealedSegments, None)
        }
        Payload::Reencrypted {
            recipient,
            files: by_id,
        } => {
            for (id, age) in by_id {
                if !sessions.contains(id) {
                    return Err(format!("payload for session {id}, which is not exported"));
                }
                let path = format!("payload/{id}.age");
                payload_of.entry(id.clone()).or_default().push(path.clone());
                files.insert(path, age.clone());
            }
            (PayloadKind::Reencrypted, Some(recipient.clone()))
        }
    };
    // Keys.
    let mut key_lines = Vec::new();
    for k in &input.keys {
        key_lines.extend(serde_json::to_vec(k).map_err(|e| e.to_string())?);
        key_lines.push(b'\n');
        if let Some(key) = k.key() {
            files.insert(
                format!("keys/{}.pem", k.key_id),
                ev::spki_pem(&key).into_bytes(),
            );
        }
    }
    files.insert(KEYS.into(), key_lines);
    let anchors = input
        .anchors
        .as_ref()
        .map(|a| anchors_covering(a, &sessions, sr.first_seq, sr.last_seq));
    let anchored = anchors.as_ref().is_some_and(|a| !a.is_empty());
    if let Some(a) = anchors.filter(|a| !a.is_empty()) {
        let recs = input
            .recordings
            .iter()
            .map(|(k, v)| (k.clone(), v.as_slice()))
            .collect();
        let found = check_anchors(&a, &slice, &recs);
        if let Some(bad) = found.iter().find(|c| !c.ok) {
            return Err(format!("anchors: {}", bad.detail));
        }
        checks.extend(found);
        files.insert(ANCHORS.into(), a);
    }
    let manifest = Manifest {
        format: ev::FORMAT.into(),
        gateway: input.gateway.clone(),
        created: ward_recording::audit::rfc3339_ms(input.now),
        exported_by: input.exported_by.clone(),
        sessions: sessions.iter().cloned().collect(),
        signing_key_id: signing_id,
        key_ids: input.keys.iter().map(|k| k.key_id.clone()).collect(),
        recordings: reports
            .iter()
            .map(|(id, r)| ManifestRecording {
                session_id: id.clone(),
                file: format!("recordings/{id}.wrec"),
                payload: payload_of.get(id).cloned().unwrap_or_default(),
                status: r.status.to_string(),
            })
            .collect(),
        payload: kind,
        recipient,
        audit_slice: (sr.first_seq, sr.last_seq),
        anchors: anchored,
        tool: format!("ward {}", env!("CARGO_PKG_VERSION")),
    };
    let manifest_bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
    files.insert(MANIFEST.into(), manifest_bytes);
    let html = report::render(&manifest, &reports, &slice, &checks);
    files.insert(REPORT.into(), html.into_bytes());
    let sums = ev::make_sums(files.iter().map(|(p, b)| (p.as_str(), b.as_slice())))
        .map_err(|e| e.to_string())?;
    Ok(Unsigned {
        files,
        sums,
        manifest,
        checks,
    })
}

/// The cross-checks of `ward audit verify --all`, between the recordings and the slice: every
/// recording's session opened in the slice, its end matching the slice's close.
fn cross_check(slice: &[u8], reports: &BTreeMap<String, VerifyReport>) -> Vec<trail::Finding> {
    let trails = trail::session_trails(slice);
    reports
        .iter()
        .flat_map(|(id, r)| trail::check_recording(id, r, trails.get(id)))
        .collect()
}

fn cross_check_summary(findings: &[trail::Finding]) -> String {
    let warnings: Vec<String> = findings
        .iter()
        .filter(|f| f.level == Level::Warning)
        .map(|f| format!("session {}: {}", f.session_id, f.what))
        .collect();
    if warnings.is_empty() {
        "every recording's session is opened in the slice, and each close agrees with its recording"
            .into()
    } else {
        format!("agree, with warnings: {}", warnings.join("; "))
    }
}

/// The last checkpoint chain of a recording (its final checkpoint), hex.
fn final_chain(bytes: &[u8]) -> Option<(u64, String)> {
    let records = ward_recording::read_all(bytes).ok()?;
    records.iter().rev().find_map(|r| match r {
        ward_recording::Record::Checkpoint { index, chain, .. } => {
            Some((*index, hex::encode(chain)))
        }
        _ => None,
    })
}

/// Anchors against the slice and the recordings: an audit anchor's `seq` inside the slice must
/// be a checkpoint line there with the same chain; a recording anchor must match the recording's
/// final checkpoint. Anchors' own signatures are not checked here (`ward audit verify --anchors`
/// checks them, with `ward_recording::anchor::check`).
fn check_anchors(anchors: &[u8], slice: &[u8], recordings: &BTreeMap<String, &[u8]>) -> Vec<Check> {
    let mut cps: BTreeMap<u64, String> = BTreeMap::new();
    for line in slice.split(|b| *b == b'\n') {
        if let Ok(serde_json::Value::Object(o)) = serde_json::from_slice(line) {
            if o.get("type").and_then(|t| t.as_str()) == Some("checkpoint") {
                if let (Some(seq), Some(chain)) = (
                    o.get("seq").and_then(|s| s.as_u64()),
                    o.get("chain").and_then(|c| c.as_str()),
                ) {
                    cps.insert(seq, chain.to_owned());
                }
            }
        }
    }
    let mut out = Vec::new();
    let (mut audit, mut recs) = (0, 0);
    for line in anchors.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let Ok(serde_json::Value::Object(a)) = serde_json::from_slice(line) else {
            out.push(Check::new(
                "anchors",
                false,
                "an anchor line is not a JSON object",
            ));
            return out;
        };
        let chain = a.get("chain").and_then(|c| c.as_str()).unwrap_or_default();
        match a.get("kind").and_then(|k| k.as_str()) {
            Some("audit") => {
                let seq = a.get("seq").and_then(|s| s.as_u64()).unwrap_or(0);
                match cps.get(&seq) {
                    Some(c) if c == chain => audit += 1,
                    Some(_) => {
                        out.push(Check::new("anchors", false, format!("the anchored audit checkpoint at line {seq} has another chain than the slice's: the log was rewritten")));
                        return out;
                    }
                    None => {
                        out.push(Check::new("anchors", false, format!("an audit checkpoint was anchored at line {seq}, but the slice has no checkpoint there: lines deleted or inserted")));
                        return out;
                    }
                }
            }
            Some("recording") => {
                let id = a
                    .get("session_id")
                    .and_then(|s| s.as_str())
                    .unwrap_or_default();
                let Some(bytes) = recordings.get(id) else {
                    continue;
                };
                let index = a.get("index").and_then(|s| s.as_u64());
                match final_chain(bytes) {
                    Some((i, c)) if Some(i) == index && c == chain => recs += 1,
                    _ => {
                        out.push(Check::new("anchors", false, format!("recording {id} differs from its anchored final checkpoint (index {index:?}): replaced or re-signed")));
                        return out;
                    }
                }
            }
            _ => {}
        }
    }
    out.push(Check::new(
        "anchors",
        true,
        format!(
            "{audit} audit checkpoint(s) and {recs} recording(s) anchored agree with the bundle"
        ),
    ));
    out
}

/// Write a bundle: a tar with `SHA256SUMS`, its signature, then every file in path order; every
/// entry a regular file, mode 0644, owner 0, mtime `created` (Unix seconds), so the same inputs
/// give the same bytes.
pub fn write_tar(unsigned: &Unsigned, sig: &[u8; 64], mtime: u64) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    b.mode(tar::HeaderMode::Deterministic);
    let mut add = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(mtime);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, data)
    };
    add(SUMS, &unsigned.sums)?;
    add(SUMS_SIG, sig)?;
    add(
        MANIFEST,
        unsigned.files.get(MANIFEST).map_or(&[][..], |v| v),
    )?;
    for (path, data) in &unsigned.files {
        if path != MANIFEST {
            add(path, data)?;
        }
    }
    b.into_inner()
}

/// Read a bundle: every entry a regular file with a valid path ([`ev::valid_path`]), no path
/// twice. Errors name the entry.
pub fn read_tar(bytes: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let mut archive = tar::Archive::new(std::io::Cursor::new(bytes));
    let mut out = BTreeMap::new();
    let entries = archive
        .entries()
        .map_err(|e| format!("not a tar file: {e}"))?;
    for (i, entry) in entries.enumerate() {
        let mut entry = entry.map_err(|e| format!("tar entry {}: unreadable: {e}", i + 1))?;
        let path = entry
            .path()
            .map_err(|e| format!("tar entry {}: bad path: {e}", i + 1))?
            .to_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("tar entry {}: path is not UTF-8", i + 1))?;
        if !ev::valid_path(&path) {
            return Err(format!(
                "tar entry {}: {path:?} is not a valid bundle path",
                i + 1
            ));
        }
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(format!("tar entry {path}: not a regular file"));
        }
        let size = entry.size();
        if size > MAX_ENTRY || size > bytes.len() as u64 {
            return Err(format!(
                "tar entry {path}: size {size} is larger than the bundle"
            ));
        }
        let mut data = Vec::with_capacity(size as usize);
        entry
            .read_to_end(&mut data)
            .map_err(|e| format!("tar entry {path}: {e}"))?;
        if out.insert(path.clone(), data).is_some() {
            return Err(format!("tar entry {path}: appears twice"));
        }
    }
    Ok(out)
}

/// What the verifier trusts for the signing keys.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// Keys given by the auditor (`--pubkey`, `--keys`): only these are accepted. Empty: the
    /// bundle's own `keys/`, whose ids the auditor compares with the gateway's published ones.
    pub pinned: Vec<[u8; 32]>,
}

/// Decrypts payload files; provided by the CLI when `--identity-key` is given.
pub trait PayloadOpener {
    /// Check the payload files of one recording (`age` files as in the bundle) against it:
    /// `Ok(detail)` or `Err(what is wrong)`.
    fn check(&self, recording: &[u8], kind: PayloadKind, files: &[&[u8]])
        -> Result<String, String>;
}

/// What [`verify`] found: every check in order, the first failure, the key ids.
#[derive(Debug, Clone, Default)]
pub struct Verification {
    /// Every check made, in order; it stops after the first failure.
    pub checks: Vec<Check>,
    /// Key ids that signed something in the bundle (the sums, recordings, the slice).
    pub key_ids: BTreeSet<String>,
    /// The manifest, when it could be read.
    pub manifest: Option<Manifest>,
}

impl Verification {
    /// The first failed check.
    pub fn failure(&self) -> Option<&Check> {
        self.checks.iter().find(|c| !c.ok)
    }

    fn pass(&mut self, name: impl Into<String>, detail: impl Into<String>) {
        self.checks.push(Check::new(name, true, detail));
    }

    fn fail(mut self, name: impl Into<String>, detail: impl Into<String>) -> Verification {
        self.checks.push(Check::new(name, false, detail));
        self
    }
}

/// Verify a bundle end to end, without the gateway: the tar, the sums, the signature, every
/// recording, the payload files (sealed segments compared with the recordings; with an
/// `opener`, decrypted and checked), the slice, recordings vs slice, anchors vs slice, and the
/// manifest against what is there. Stops at the first failure.
pub fn verify(bundle: &[u8], trust: &Trust, opener: Option<&dyn PayloadOpener>) -> Verification {
    let mut v = Verification::default();
    let files = match read_tar(bundle) {
        Ok(f) => f,
        Err(e) => return v.fail("bundle", e),
    };
    v.pass("bundle", format!("a tar of {} files", files.len()));
    let get = |p: &str| files.get(p).map(Vec::as_slice);
    let (Some(sums), Some(sig)) = (get(SUMS), get(SUMS_SIG)) else {
        return v.fail("bundle", "SHA256SUMS or SHA256SUMS.sig is missing");
    };
    // Sums.
    let listed = match ev::parse_sums(sums) {
        Ok(l) => l,
        Err(e) => return v.fail("SHA256SUMS", e.to_string()),
    };
    for (path, digest) in &listed {
        match get(path) {
            None => {
                return v.fail(
                    "SHA256SUMS",
                    format!("{path}: listed but missing from the bundle"),
                )
            }
            Some(b) if ev::sha256(b) != *digest => {
                return v.fail(
                    "SHA256SUMS",
                    format!("{path}: FAILED (its SHA-256 differs: the file was altered)"),
                )
            }
            Some(_) => {}
        }
    }
    let names: BTreeSet<&str> = listed.iter().map(|(p, _)| p.as_str()).collect();
    if let Some(extra) = files
        .keys()
        .find(|p| !names.contains(p.as_str()) && *p != SUMS && *p != SUMS_SIG)
    {
        return v.fail(
            "SHA256SUMS",
            format!("{extra}: in the bundle but not in SHA256SUMS (added)"),
        );
    }
    v.pass("SHA256SUMS", format!("{} files match", listed.len()));
    // Keys.
    let key_text = get(KEYS).unwrap_or_default();
    let mut bundle_keys = Vec::new();
    for (i, line) in key_text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        let entry: Option<KeyEntry> = serde_json::from_slice(line).ok();
        let Some((entry, key)) = entry.and_then(|e| e.key().map(|k| (e, k))) else {
            return v.fail(
                "keys",
                format!(
                    "{KEYS} line {}: not a key entry whose id matches its key",
                    i + 1
                ),
            );
        };
        let pem = get(&format!("keys/{}.pem", entry.key_id))
            .and_then(|p| std::str::from_utf8(p).ok())
            .map(ev::parse_spki_pem);
        match pem {
            Some(Ok(k)) if k == key => {}
            Some(_) => {
                return v.fail(
                    "keys",
                    format!("keys/{}.pem is not the key {KEYS} lists", entry.key_id),
                )
            }
            None => return v.fail("keys", format!("keys/{}.pem is missing", entry.key_id)),
        }
        bundle_keys.push(key);
    }
    let keys = if trust.pinned.is_empty() {
        bundle_keys
    } else {
        trust.pinned.clone()
    };
    if keys.is_empty() {
        return v.fail("keys", "the bundle holds no public key");
    }
    // Signature.
    let Some(signer) = keys.iter().find(|k| ev::verify_sums(k, sums, sig)) else {
        let whose = if trust.pinned.is_empty() {
            "any key in the bundle"
        } else {
            "the key(s) you gave"
        };
        return v.fail("signature", format!("SHA256SUMS.sig does not verify with {whose}: SHA256SUMS or its signature was altered, or another key signed it"));
    };
    let signer_id = ward_recording::key_id_of(signer);
    v.key_ids.insert(signer_id.clone());
    v.pass("signature", format!("SHA256SUMS signed by key {signer_id}"));
    // Manifest.
    let manifest: Manifest = match get(MANIFEST).map(serde_json::from_slice) {
        Some(Ok(m)) => m,
        Some(Err(e)) => return v.fail("manifest", format!("manifest.json does not parse: {e}")),
        None => return v.fail("manifest", "manifest.json is missing"),
    };
    if manifest.format != ev::FORMAT {
        return v.fail(
            "manifest",
            format!("format {:?}, expected {}", manifest.format, ev::FORMAT),
        );
    }
    if manifest.signing_key_id != signer_id {
        return v.fail(
            "manifest",
            format!(
                "names signing key {}, but {signer_id} signed",
                manifest.signing_key_id
            ),
        );
    }
    v.manifest = Some(manifest.clone());
    // Recordings.
    let mut reports = BTreeMap::new();
    let on_disk: BTreeSet<String> = files
        .keys()
        .filter_map(|p| {
            p.strip_prefix("recordings/")?
                .strip_suffix(".wrec")
                .map(str::to_owned)
        })
        .collect();
    let sessions: BTreeSet<String> = manifest.sessions.iter().cloned().collect();
    if on_disk != sessions {
        return v.fail(
            "manifest",
            format!(
                "lists sessions {:?}, the bundle holds recordings {:?}",
                sessions, on_disk
            ),
        );
    }
    for id in &sessions {
        let bytes = get(&format!("recordings/{id}.wrec")).unwrap_or_default();
        let r = verify_recording(bytes, &keys);
        if !r.ok {
            return v.fail(format!("recording {id}"), why(&r));
        }
        if r.meta.as_ref().map(|m| m.session_id.as_str()) != Some(id.as_str()) {
            return v.fail(
                format!("recording {id}"),
                "its metadata names another session: renamed",
            );
        }
        for r in ward_recording::read_all(bytes).unwrap_or_default() {
            if let ward_recording::Record::Checkpoint { key_id, .. } = r {
                v.key_ids.insert(key_id);
            }
        }
        v.pass(
            format!("recording {id}"),
            format!("{} records, {}", r.records, r.status),
        );
        reports.insert(id.clone(), r);
    }
    // Payload: exactly the files the manifest names.
    let named: BTreeSet<&str> = manifest
        .recordings
        .iter()
        .flat_map(|m| m.payload.iter().map(String::as_str))
        .collect();
    if let Some(stray) = files
        .keys()
        .find(|p| p.starts_with("payload/") && !named.contains(p.as_str()))
    {
        return v.fail(
            "manifest",
            format!("{stray} is not a payload file of any recording in the manifest"),
        );
    }
    let listed_recs: BTreeSet<&str> = manifest
        .recordings
        .iter()
        .map(|m| m.session_id.as_str())
        .collect();
    if listed_recs != sessions.iter().map(String::as_str).collect() {
        return v.fail("manifest", "its recordings are not its sessions");
    }
    for m in &manifest.recordings {
        let payload: Vec<&[u8]> = m.payload.iter().filter_map(|p| get(p)).collect();
        if payload.len() != m.payload.len() {
            return v.fail(
                format!("payload {}", m.session_id),
                "a payload file the manifest names is missing",
            );
        }
        let rec = get(&m.file).unwrap_or_default();
        let checked = match (manifest.payload, opener) {
            (PayloadKind::None, _) if payload.is_empty() => continue,
            (PayloadKind::None, _) => Err("payload files in a bundle of plain recordings".into()),
            (kind, Some(o)) => o.check(rec, kind, &payload),
            (PayloadKind::SealedSegments, None) => check_segments(rec, &payload),
            (PayloadKind::Reencrypted, None) => Ok(format!(
                "{} file(s), not opened (no --identity-key): vouched for by the signature only",
                payload.len()
            )),
        };
        match checked {
            Ok(d) => v.pass(format!("payload {}", m.session_id), d),
            Err(e) => return v.fail(format!("payload {}", m.session_id), e),
        }
    }
    // Slice.
    let Some(slice) = get(SLICE) else {
        return v.fail("audit slice", "audit/slice.jsonl is missing");
    };
    let sr = ev::verify_audit_slice(slice, &key_lookup(&keys));
    if !sr.ok {
        let e = sr.first_error.map(|e| e.to_string()).unwrap_or_default();
        return v.fail("audit slice", e);
    }
    if (sr.first_seq, sr.last_seq) != manifest.audit_slice {
        return v.fail(
            "audit slice",
            format!(
                "lines {}..{}, the manifest says {}..{}",
                sr.first_seq, sr.last_seq, manifest.audit_slice.0, manifest.audit_slice.1
            ),
        );
    }
    v.key_ids.extend(sr.key_ids.iter().cloned());
    v.pass(
        "audit slice",
        format!(
            "lines {}..{} verify from their first checkpoint",
            sr.first_seq, sr.last_seq
        ),
    );
    // Cross-checks.
    let findings = cross_check(slice, &reports);
    if let Some(f) = findings.iter().find(|f| f.level == Level::Problem) {
        return v.fail(
            "recordings vs audit slice",
            format!("session {}: {}", f.session_id, f.what),
        );
    }
    v.pass("recordings vs audit slice", cross_check_summary(&findings));
    // Anchors.
    match get(ANCHORS) {
        Some(a) => {
            let recs = sessions
                .iter()
                .map(|id| {
                    (
                        id.clone(),
                        get(&format!("recordings/{id}.wrec")).unwrap_or_default(),
                    )
                })
                .collect();
            for c in check_anchors(a, slice, &recs) {
                if !c.ok {
                    return v.fail(c.name, c.detail);
                }
                v.checks.push(c);
            }
        }
        None if manifest.anchors => {
            return v.fail(
                "anchors",
                "the manifest says anchors are included, but anchors.jsonl is missing",
            )
        }
        None => v.pass(
            "anchors",
            "none in the bundle (the gateway published none, or none covers it)",
        ),
    }
    v
}

/// Sealed segments without a key: each payload file must be, byte for byte, the age file made of
/// the recording's header and its sealed record (so it is covered by the recording's chain).
pub fn check_segments(recording: &[u8], files: &[&[u8]]) -> Result<String, String> {
    let expected = segments_of(recording)?;
    if expected.len() != files.len() {
        return Err(format!(
            "{} payload files, the recording has {} sealed segments",
            files.len(),
            expected.len()
        ));
    }
    for (i, (want, got)) in expected.iter().zip(files).enumerate() {
        if want.as_slice() != *got {
            return Err(format!(
                "payload file {:04}.age differs from the recording's sealed segment {} (altered)",
                i + 1,
                i + 1
            ));
        }
    }
    Ok(format!(
        "{} age file(s), each the recording's sealed segment byte for byte",
        files.len()
    ))
}

/// The standalone age files of a recording's sealed segments (none for a plain recording).
pub fn segments_of(recording: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    ward_recording::sealed::age_files(recording).map_err(|e| e.to_string())
}

/// What a re-encrypted payload holds for `recording`: its records, sealed ones opened with
/// `unsealer`, as JSON lines (`ward export --format jsonl`).
pub fn reencrypted_plaintext(
    recording: &[u8],
    unsealer: &ward_recording::sealed::Unsealer,
) -> Result<Vec<u8>, String> {
    let records = ward_recording::read_all(recording).map_err(|e| e.to_string())?;
    let open =
        ward_recording::sealed::open_records(records, Some(unsealer)).map_err(|e| e.to_string())?;
    Ok(ward_recording::export::json_lines(&open))
}

/// A re-encrypted payload's plaintext (JSON lines) against its recording, without the
/// recording's key: the plaintext records (meta, checkpoints, end) must be the recording's own,
/// in order; the data lines are counted. Returns what it found.
pub fn check_reencrypted(recording: &[u8], plaintext: &[u8]) -> Result<String, String> {
    let records = ward_recording::read_all(recording).map_err(|e| e.to_string())?;
    let plain: Vec<ward_recording::Record> = records
        .into_iter()
        .filter(|r| !matches!(r, ward_recording::Record::Sealed { .. }))
        .collect();
    let want: Vec<serde_json::Value> = ward_recording::export::json_lines(&plain)
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice::<serde_json::Value>(l).ok())
        .map(strip_ordinal)
        .collect();
    let mut got = Vec::new();
    let (mut up, mut down, mut events) = (0u64, 0u64, 0u64);
    for (i, line) in plaintext
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        let v: serde_json::Value = serde_json::from_slice(line)
            .map_err(|e| format!("line {} of the decrypted payload is not JSON: {e}", i + 1))?;
        match v.get("type").and_then(|t| t.as_str()) {
            Some("data") => {
                let n = v.get("len").and_then(|n| n.as_u64()).unwrap_or(0);
                match v.get("dir").and_then(|d| d.as_str()) {
                    Some("up") => up += n,
                    _ => down += n,
                }
            }
            Some("event") => events += 1,
            Some("sealed") => return Err("the payload still holds a sealed record".into()),
            _ => got.push(strip_ordinal(v)),
        }
    }
    if got != want {
        return Err("its meta, checkpoint and end records are not the recording's (another recording's payload, or altered)".into());
    }
    Ok(format!(
        "decrypted: the recording's meta, {} checkpoint/end records, {up} bytes up, {down} down, {events} events",
        want.len().saturating_sub(1)
    ))
}

/// A JSON lines record without its ordinal (the payload's ordinals count the opened records).
fn strip_ordinal(mut v: serde_json::Value) -> serde_json::Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("record");
    }
    v
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn tar_round_trip_and_refusals() {
        let mut files = BTreeMap::new();
        files.insert(MANIFEST.to_string(), b"{}".to_vec());
        files.insert("recordings/a.wrec".to_string(), b"x".to_vec());
        let u = Unsigned {
            sums: ev::make_sums(files.iter().map(|(p, b)| (p.as_str(), b.as_slice()))).unwrap(),
            files,
            manifest: serde_json::from_value(serde_json::json!({
                "format": "ward-evidence-v1", "gateway": "g", "created": "c", "exported_by": "l",
                "sessions": [], "signing_key_id": "k", "key_ids": [], "recordings": [],
                "payload": "none", "audit_slice": [1, 2], "anchors": false, "tool": "t"}))
            .unwrap(),
            checks: Vec::new(),
        };
        let tar = write_tar(&u, &[7u8; 64], 1_700_000_000).unwrap();
        let back = read_tar(&tar).unwrap();
        assert_eq!(back.len(), 4);
        assert_eq!(back[SUMS_SIG], vec![7u8; 64]);
        assert_eq!(back["recordings/a.wrec"], b"x");
        assert_eq!(
            write_tar(&u, &[7u8; 64], 1_700_000_000).unwrap(),
            tar,
            "deterministic"
        );
        // A symlink, a path escaping, a duplicate: refused.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "x", "/etc/passwd").unwrap();
        assert!(read_tar(&b.into_inner().unwrap())
            .unwrap_err()
            .contains("not a regular file"));
        let mut b = tar::Builder::new(Vec::new());
        for _ in 0..2 {
            let mut h = tar::Header::new_ustar();
            h.set_size(1);
            b.append_data(&mut h, "a", &b"1"[..]).unwrap();
        }
        assert!(read_tar(&b.into_inner().unwrap())
            .unwrap_err()
            .contains("twice"));
        assert!(read_tar(b"garbage that is not a tar").is_err());
        // Truncated anywhere: an error, never a panic.
        for cut in (0..tar.len()).step_by(97) {
            let _ = read_tar(&tar[..cut]);
        }
    }
}
