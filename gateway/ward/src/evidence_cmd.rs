//! `ward evidence export|verify`: evidence bundles (docs/evidence.md). The bundle logic is pure
//! (`ward::evidence`); this fetches its inputs (from a state dir, or through the gateway, which
//! signs and audits) and writes or reads the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use ward::evidence::{self, ExportInput, KeyEntry, Payload, Trust};
use ward_ca::{Clock, SystemClock};
use ward_client::Transport;
use ward_core::frame::Review;
use ward_core::Escaped;
use ward_recording::evidence as ev;

/// `ward evidence`.
#[derive(Debug, Subcommand)]
pub enum EvidenceCommand {
    /// Write one file holding sessions' recordings, the audit-log slice about them, the gateway's
    /// public keys and anchors, a signed SHA256SUMS and a report (security and admin; audited
    /// `evidence_exported` through --gateway).
    #[command(
        after_help = "Examples:\n  ward evidence export 00c0ffee00c0ffee --state-dir /var/lib/ward --out case-42.ward-evidence\n  \
                            ward evidence export 00c0ffee00c0ffee 00c0ffee00c0ffef --gateway gw:4433 --out case-42.ward-evidence\n  \
                            ward evidence export 00c0ffee00c0ffee --gateway gw:4433 --identity-key me.age --recipient age1… --out case-42.ward-evidence"
    )]
    Export(ExportArgs),
    /// Check a bundle end to end on any machine, without the gateway or its state dir: the sums,
    /// the signature, every recording, the payload files, the audit slice, recordings vs slice,
    /// anchors. Exits non-zero naming the first failure; prints the key ids to compare with the
    /// gateway's published keys.
    Verify(VerifyArgs),
}

/// Where an export reads from.
#[derive(Debug, Args)]
pub struct ExportSource {
    /// On the gateway host: read the state dir named in this gateway config (signs with its key).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// On the gateway host: read this state dir (signs with its key, `audit.key`).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Through a gateway, HOST:PORT: recordings and the audit log fetched as a review, the
    /// bundle signed by the gateway (security and admin identities; audited).
    #[arg(long, env = "WARD_GATEWAY", value_name = "HOST:PORT")]
    gateway: Option<String>,
    /// With --gateway: your identity (PREFIX.crt, PREFIX.key; default ~/.ward/identity).
    #[arg(long, env = "WARD_IDENTITY", value_name = "PREFIX")]
    identity: Option<PathBuf>,
    /// With --gateway: Ward's root certificate (default: beside the identity, then ~/.ward/root.crt).
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// With --gateway: how to reach it.
    #[arg(long, value_enum, default_value_t = Transport::Auto)]
    transport: Transport,
}

/// `ward evidence export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Session ids (from `ward sessions`).
    #[arg(required = true, num_args = 1..)]
    sessions: Vec<String>,
    /// The bundle to write (a tar file; refused if it exists).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Re-encrypt each encrypted recording's records (as JSON lines) to this age recipient
    /// (`age1…`) in `payload/<id>.age`, for an auditor who holds its identity. Needs
    /// --identity-key to decrypt them first. Without it, the recordings' own sealed segments go
    /// in as standalone age files (`payload/<id>/NNNN.age`).
    #[arg(long, value_name = "AGE_RECIPIENT", requires = "identity_key")]
    recipient: Option<String>,
    /// An age identity file (AGE-SECRET-KEY-1…) that opens the recordings (with --recipient).
    #[arg(long, env = "WARD_IDENTITY_KEY", value_name = "FILE")]
    identity_key: Option<PathBuf>,
    /// Include the anchors published for this gateway (an anchor file, JSON lines): those about
    /// the audit slice and these sessions go into `anchors.jsonl`.
    #[arg(long, value_name = "FILE")]
    anchors: Option<PathBuf>,
    #[command(flatten)]
    source: ExportSource,
}

/// `ward evidence verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The bundle (`.ward-evidence`).
    bundle: PathBuf,
    /// An age identity file that opens the payload files: decrypted and checked against the
    /// recordings (byte counts; records, when it also opens the recordings).
    #[arg(long, env = "WARD_IDENTITY_KEY", value_name = "FILE")]
    identity_key: Option<PathBuf>,
    /// Trust only these public keys (hex, as `ward audit pubkey` prints), not the bundle's own.
    #[arg(long, value_name = "HEX", conflicts_with = "keys")]
    pubkey: Vec<String>,
    /// Trust only the keys in this file: `audit.keys` / `keys/audit-keys.jsonl` JSON lines, hex
    /// keys one per line, or SPKI PEM.
    #[arg(long, value_name = "FILE")]
    keys: Option<PathBuf>,
}

/// Run `ward evidence …`.
pub async fn run(cmd: EvidenceCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        EvidenceCommand::Export(args) => export(args).await,
        EvidenceCommand::Verify(args) => verify(args),
    }
}

fn read_keys_file(path: &Path) -> anyhow::Result<Vec<[u8; 32]>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if text.contains("BEGIN PUBLIC KEY") {
        let mut out = Vec::new();
        for block in text.split_inclusive("-----END PUBLIC KEY-----") {
            if block.contains("BEGIN PUBLIC KEY") {
                let start = block.find("-----BEGIN").unwrap_or(0);
                out.push(
                    ev::parse_spki_pem(block.get(start..).unwrap_or_default())
                        .with_context(|| path.display().to_string())?,
                );
            }
        }
        return Ok(out);
    }
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .enumerate()
        .map(|(i, l)| {
            let hex_text = if l.starts_with('{') {
                serde_json::from_str::<KeyEntry>(l)
                    .with_context(|| format!("{} line {}", path.display(), i + 1))?
                    .public
            } else {
                l.to_owned()
            };
            ward_server::review::parse_public_key(&hex_text)
                .with_context(|| format!("{} line {}", path.display(), i + 1))
        })
        .collect()
}

/// The state dir's public keys: `audit.keys` (every key ever) when present, else `audit.pub`.
fn local_keys(state_dir: &Path) -> anyhow::Result<Vec<KeyEntry>> {
    let all = state_dir.join("audit.keys");
    match std::fs::read_to_string(&all) {
        Ok(text) => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str::<KeyEntry>(l)
                    .with_context(|| format!("{} line {}", all.display(), i + 1))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![KeyEntry::of(
            &ward_server::review::public_key(state_dir)?,
        )]),
        Err(e) => Err(e).with_context(|| format!("reading {}", all.display())),
    }
}

fn local_signer(state_dir: &Path) -> anyhow::Result<ward_recording::Signer> {
    let path = state_dir.join(ward_server::AUDIT_KEY);
    ward_ca::check_private_key(&path)?;
    let pkcs8 = std::fs::read(&path).with_context(|| {
        format!(
            "reading {} (the state dir's signing key; run this on the gateway host as its user, or use --gateway)",
            path.display()
        )
    })?;
    ward_recording::Signer::from_pkcs8(&pkcs8)
        .with_context(|| format!("{} is not a Ward signing key", path.display()))
}

/// An age identity file's identities (never printed).
fn identities(path: &Path) -> anyhow::Result<ev::Identities> {
    ward_ca::check_private_key(path)?;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    ward_recording::sealed::load_identities(&text)
        .with_context(|| format!("--identity-key {}", path.display()))
}

fn meta_of(bytes: &[u8]) -> Option<ward_recording::SessionMeta> {
    match ward_recording::read_all(bytes).ok()?.into_iter().next()? {
        ward_recording::Record::Meta(m) => Some(m),
        _ => None,
    }
}

/// The payload files for `recordings`: none for plain ones; the sealed segments of encrypted
/// ones, or with `recipient`, their records opened with `identity` and re-encrypted to it.
fn payload(
    recordings: &BTreeMap<String, Vec<u8>>,
    recipient: Option<&str>,
    identity: Option<&Path>,
) -> anyhow::Result<Payload> {
    let sealed: Vec<(&String, &Vec<u8>, ward_recording::SessionMeta)> = recordings
        .iter()
        .filter_map(|(id, b)| {
            meta_of(b)
                .filter(ward_recording::sealed::is_sealed)
                .map(|m| (id, b, m))
        })
        .collect();
    let Some(recipient) = recipient else {
        if sealed.is_empty() {
            return Ok(Payload::None);
        }
        let mut by_id = BTreeMap::new();
        for (id, bytes, _) in sealed {
            let files =
                evidence::segments_of(bytes).map_err(|e| anyhow::anyhow!("recording {id}: {e}"))?;
            by_id.insert(id.clone(), files);
        }
        return Ok(Payload::Segments(by_id));
    };
    if sealed.is_empty() {
        bail!("--recipient: none of these recordings is encrypted; their payload is in recordings/ as it is");
    }
    ward_recording::sealed::parse_recipient(recipient)
        .map_err(|e| anyhow::anyhow!("--recipient {recipient}: {e}"))?;
    let path = identity.context("--recipient needs --identity-key FILE to open the recordings")?;
    let ids = identities(path)?;
    let mut files = BTreeMap::new();
    for (id, bytes, meta) in sealed {
        let unsealer = ward_recording::sealed::Unsealer::new(&meta, &ids)
            .with_context(|| format!("recording {id}"))?;
        let plain = evidence::reencrypted_plaintext(bytes, &unsealer)
            .map_err(|e| anyhow::anyhow!("recording {id}: {e}"))?;
        files.insert(id.clone(), ev::age_encrypt(recipient, &plain)?);
    }
    Ok(Payload::Reencrypted {
        recipient: recipient.to_owned(),
        files,
    })
}

/// Opens payload files with the auditor's identity (`ward evidence verify --identity-key`).
struct Opener {
    ids: ev::Identities,
}

impl evidence::PayloadOpener for Opener {
    fn check(
        &self,
        recording: &[u8],
        kind: evidence::PayloadKind,
        files: &[&[u8]],
    ) -> Result<String, String> {
        let meta = meta_of(recording).ok_or("the recording has no meta record")?;
        // Opens the recording too, when the identity is one of its recipients.
        let unsealer = ward_recording::sealed::Unsealer::new(&meta, &self.ids).ok();
        match kind {
            evidence::PayloadKind::None => Ok("no payload files".into()),
            evidence::PayloadKind::SealedSegments => {
                let same = evidence::check_segments(recording, files)?;
                if unsealer.is_none() {
                    return Ok(format!("{same}; not decrypted: the identity given is not one of the recording's recipients"));
                }
                let mut bytes = 0;
                for (i, f) in files.iter().enumerate() {
                    let plain = ev::age_decrypt(f, &self.ids)
                        .map_err(|e| format!("payload file {:04}.age: {e}", i + 1))?;
                    bytes += plain.len();
                }
                Ok(format!(
                    "{same}; each decrypted with the identity ({bytes} plaintext bytes)"
                ))
            }
            evidence::PayloadKind::Reencrypted => {
                let [file] = files else {
                    return Err(format!("{} payload files, expected one", files.len()));
                };
                let plain = ev::age_decrypt(file, &self.ids).map_err(|e| {
                    format!("the payload does not open with the identity given: {e}")
                })?;
                let found = evidence::check_reencrypted(recording, &plain)?;
                match unsealer {
                    Some(u) => {
                        let want = evidence::reencrypted_plaintext(recording, &u)?;
                        if want != plain {
                            return Err("the decrypted payload differs from the recording's records (the identity opens both)".into());
                        }
                        Ok(format!("{found}; equal to the recording's records"))
                    }
                    None => Ok(format!("{found}; its data is vouched for by the exporter and the bundle's signature (the identity does not open the recording to compare)")),
                }
            }
        }
    }
}

async fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    for id in &args.sessions {
        ward_server::review::check_session_id(id)?;
    }
    if args.out.exists() {
        bail!(
            "{} exists; give another --out (a bundle is never overwritten)",
            args.out.display()
        );
    }
    let anchors = args
        .anchors
        .as_ref()
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .transpose()?;
    let now = SystemClock.now();
    let s = &args.source;
    let (mut input, local) = match (&s.config, &s.state_dir, &s.gateway) {
        (Some(_), None, None) | (None, Some(_), None) => {
            let state_dir = match &s.config {
                Some(cfg) => ward_server::gateway::load_config(cfg)?.gateway.state_dir,
                None => s.state_dir.clone().unwrap_or_default(),
            };
            let signer = local_signer(&state_dir)?;
            let mut recordings = BTreeMap::new();
            for id in &args.sessions {
                recordings.insert(
                    id.clone(),
                    ward_server::review::read_recording(&state_dir, id)?,
                );
            }
            let log_path = state_dir.join(ward_server::audit::AUDIT_LOG);
            let audit_log = std::fs::read(&log_path)
                .with_context(|| format!("reading {}", log_path.display()))?;
            let keys = local_keys(&state_dir)?;
            let input = ExportInput {
                gateway: format!("state dir {}", state_dir.display()),
                exported_by: "local (the state dir's key)".into(),
                now,
                recordings,
                payload: Payload::None,
                audit_log,
                keys,
                signing_key: signer.public_key(),
                anchors: anchors.clone(),
            };
            (input, Some(signer))
        }
        (None, None, Some(gw)) => {
            let client =
                crate::make_client(gw, s.identity.as_ref(), s.ca.as_ref(), s.transport)?;
            let mut recordings = BTreeMap::new();
            for id in &args.sessions {
                let bytes = client
                    .review(Review::Recording {
                        session_id: id.clone(),
                        purpose: "export".into(),
                        force: false,
                    })
                    .await
                    .with_context(|| format!("fetching recording {id}"))?;
                recordings.insert(id.clone(), bytes);
            }
            // After the recordings: the log the gateway hands out is signed to its last line,
            // the fetches above included.
            let audit_log = client
                .review(Review::AuditLog)
                .await
                .context("fetching the audit log")?;
            // Every key the gateway ever signed with (the slice may span a rotation); the
            // current one signs the bundle.
            let keys = remote_keys(&client).await?;
            let public = keys
                .iter()
                .rev()
                .find(|k| !k.retired)
                .and_then(KeyEntry::key)
                .context("the gateway lists no current signing key")?;
            let input = ExportInput {
                gateway: gw.clone(),
                exported_by: identity_name(s.identity.as_ref()),
                now,
                recordings,
                payload: Payload::None,
                audit_log,
                keys,
                signing_key: public,
                anchors: anchors.clone(),
            };
            let unsigned_input = input;
            let bundle = prepare_and_sign_remote(&client, &args, unsigned_input).await?;
            return write_bundle(&args.out, &bundle);
        }
        (None, None, None) => bail!("say where the recordings are: --config FILE or --state-dir DIR on the gateway host, or --gateway HOST:PORT"),
        _ => bail!("give only one of --config, --state-dir, --gateway"),
    };
    input.payload = payload(
        &input.recordings,
        args.recipient.as_deref(),
        args.identity_key.as_deref(),
    )?;
    let unsigned = evidence::prepare(&input).map_err(|e| anyhow::anyhow!("{}", Escaped(&e)))?;
    let signer = local.context("no signing key")?;
    let sig = ev::sign_sums(&signer, &unsigned.sums)?;
    let tar = evidence::write_tar(&unsigned, &sig, now.unix_timestamp().max(0) as u64)?;
    write_bundle(&args.out, &(tar, unsigned))
}

/// The gateway's keys (`ward audit pubkey --all`'s request).
async fn remote_keys(client: &ward_client::Client) -> anyhow::Result<Vec<KeyEntry>> {
    use ward_core::frame::{Request, Response, SigningKeysOp};
    let text = match client
        .request(&Request::SigningKeys(SigningKeysOp::List))
        .await?
    {
        Response::Ok { message } => message,
        other => bail!(
            "asking the gateway for its signing keys: {}",
            Escaped(&ward_client::unexpected(other).to_string())
        ),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<KeyEntry>(l).context("the gateway's key list"))
        .collect()
}

fn identity_name(identity: Option<&PathBuf>) -> String {
    let prefix = identity
        .cloned()
        .or_else(|| ward_client::home_dir().map(|h| h.join(".ward").join("identity")));
    let Some(prefix) = prefix else {
        return "a reviewer through the gateway".into();
    };
    let cert = PathBuf::from(format!("{}.crt", prefix.display()));
    std::fs::read_to_string(&cert)
        .ok()
        .and_then(|pem| ward_ca::inspect(&pem, None, SystemClock.now()).ok())
        .and_then(|i| i.principal.or(i.name))
        .map(|who| format!("{who} (through the gateway)"))
        .unwrap_or_else(|| "a reviewer through the gateway".into())
}

async fn prepare_and_sign_remote(
    client: &ward_client::Client,
    args: &ExportArgs,
    mut input: ExportInput,
) -> anyhow::Result<(Vec<u8>, evidence::Unsigned)> {
    input.payload = payload(
        &input.recordings,
        args.recipient.as_deref(),
        args.identity_key.as_deref(),
    )?;
    let unsigned = evidence::prepare(&input).map_err(|e| anyhow::anyhow!("{}", Escaped(&e)))?;
    let answer = client
        .review_upload(
            Review::SignEvidence {
                sessions: input.recordings.keys().cloned().collect(),
            },
            &unsigned.sums,
        )
        .await
        .context("asking the gateway to sign the bundle")?;
    let signed: ward_server::services::review::EvidenceSignature =
        serde_json::from_slice(&answer).context("the gateway's signature answer")?;
    let public = ward_server::review::parse_public_key(&signed.public)?;
    let mut sig = [0u8; 64];
    hex::decode_to_slice(&signed.sig, &mut sig).context("the gateway's signature is not hex")?;
    if public != input.signing_key || !ev::verify_sums(&public, &unsigned.sums, &sig) {
        bail!("the gateway's signature does not verify with its published key (key rotated meanwhile? run the export again)");
    }
    let tar = evidence::write_tar(&unsigned, &sig, input.now.unix_timestamp().max(0) as u64)?;
    Ok((tar, unsigned))
}

fn write_bundle(
    out: &Path,
    (tar, unsigned): &(Vec<u8>, evidence::Unsigned),
) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)
        .with_context(|| format!("creating {}", out.display()))?;
    f.write_all(tar)?;
    f.sync_all()?;
    let m = &unsigned.manifest;
    println!(
        "wrote {} ({} sessions, {} files, {} bytes; signed by key {})",
        out.display(),
        m.sessions.len(),
        unsigned.files.len() + 2,
        tar.len(),
        m.signing_key_id
    );
    println!(
        "check it anywhere: ward evidence verify {}   (or by hand: docs/evidence.md)",
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(&args.bundle)
        .with_context(|| format!("reading {}", args.bundle.display()))?;
    let mut trust = Trust::default();
    for k in &args.pubkey {
        trust.pinned.push(ward_server::review::parse_public_key(k)?);
    }
    if let Some(path) = &args.keys {
        trust.pinned = read_keys_file(path)?;
        if trust.pinned.is_empty() {
            bail!("{} holds no key", path.display());
        }
    }
    let opener = opener(args.identity_key.as_deref())?;
    let v = evidence::verify(&bytes, &trust, opener.as_deref());
    for c in &v.checks {
        let status = if c.ok { "ok" } else { "FAILED" };
        println!("{}: {status} ({})", Escaped(&c.name), Escaped(&c.detail));
    }
    if let Some(m) = &v.manifest {
        println!(
            "bundle: sessions {}, gateway {}, created {}, exported by {}",
            Escaped(&m.sessions.join(", ")),
            Escaped(&m.gateway),
            Escaped(&m.created),
            Escaped(&m.exported_by)
        );
    }
    if !v.key_ids.is_empty() {
        let ids: Vec<&str> = v.key_ids.iter().map(String::as_str).collect();
        println!("signing key ids: {}", ids.join(", "));
    }
    match v.failure() {
        Some(f) => {
            println!(
                "evidence: FAILED: {}: {}",
                Escaped(&f.name),
                Escaped(&f.detail)
            );
            Ok(ExitCode::FAILURE)
        }
        None => {
            println!("evidence: ok");
            if trust.pinned.is_empty() {
                println!("compare the key ids above with the gateway's published keys (`ward audit pubkey --all` on the gateway, or your copy of its anchors): the bundle's own keys show it is consistent, not whose it is; --keys FILE or --pubkey HEX checks against keys you hold");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn opener(identity: Option<&Path>) -> anyhow::Result<Option<Box<dyn evidence::PayloadOpener>>> {
    match identity {
        None => Ok(None),
        Some(p) => Ok(Some(Box::new(Opener {
            ids: identities(p)?,
        }))),
    }
}
