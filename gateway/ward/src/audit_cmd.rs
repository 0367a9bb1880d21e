//! `ward audit rotate-key`, `ward audit pubkey --all` and the anchors part of `ward audit verify
//! --anchors FILE|URL` (the rest of `ward audit` is in `review_cmd`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use ward_ca::{Clock, SystemClock};
use ward_client::{Client, Transport};
use ward_core::frame::{Request, Response, Review, SigningKeysOp};
use ward_recording::anchor::{self, FinalCheckpoint};
use ward_recording::Keyring;
use ward_server::review;

use crate::show;

/// `ward audit rotate-key`.
#[derive(Debug, Args)]
pub struct RotateArgs {
    /// On the gateway host, with the gateway stopped: the state dir named in this config.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// On the gateway host, with the gateway stopped: this state dir.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Through a running gateway, HOST:PORT (admin identities only; audited
    /// `signing_key_rotated`).
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

/// Run `ward audit rotate-key`.
pub async fn rotate(args: RotateArgs) -> anyhow::Result<ExitCode> {
    match (&args.config, &args.state_dir, &args.gateway) {
        (Some(cfg), None, None) => {
            let config = ward_server::gateway::load_config(cfg)?;
            rotate_local(&config.gateway.state_dir).await
        }
        (None, Some(dir), None) => rotate_local(dir).await,
        (None, None, Some(gw)) => {
            let client = crate::make_client(
                gw,
                args.identity.as_ref(),
                args.ca.as_ref(),
                args.transport,
            )?;
            match client
                .request(&Request::SigningKeys(SigningKeysOp::Rotate))
                .await?
            {
                Response::Ok { message } => {
                    println!("{}", review::printable(&message));
                    println!("new sessions and the audit log are signed with the new key; `ward audit pubkey --all` lists every key");
                    Ok(ExitCode::SUCCESS)
                }
                other => Err(ward_client::unexpected(other).into()),
            }
        }
        (None, None, None) => bail!("say which gateway: --gateway HOST:PORT (a running gateway, admin identity), or on the host with the gateway stopped --config FILE or --state-dir DIR"),
        _ => bail!("give only one of --config, --state-dir, --gateway"),
    }
}

/// Rotate the key of a stopped gateway's state dir: the state lock proves it is not running (a
/// running gateway rotates through `--gateway`, so that its writer switches keys in order).
async fn rotate_local(state_dir: &Path) -> anyhow::Result<ExitCode> {
    if !state_dir.join(ward_server::AUDIT_KEY).exists() {
        bail!(
            "{} has no signing key ({}): not a gateway state dir",
            state_dir.display(),
            ward_server::AUDIT_KEY
        );
    }
    let _lock = ward_server::state_lock::StateLock::acquire(state_dir).map_err(|e| match e {
        ward_server::state_lock::StateLockError::InUse { .. } => anyhow::anyhow!(
            "{e}; or rotate through the running gateway: ward audit rotate-key --gateway HOST:PORT (admin)"
        ),
        other => other.into(),
    })?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let now = clock.now();
    let keys = ward_server::signing::SigningKeys::load_or_create(state_dir, now)?;
    let (log, writer) = ward_server::audit::AuditLog::open_with(
        state_dir,
        &*keys.keyring(),
        keys.signer(),
        clock.clone(),
        None,
    )?;
    let (new, _keyring, rotated) = ward_server::signing::rotate_on_disk(state_dir, now)?;
    // The old key signs what it has not signed yet, then the writer switches.
    let switched = log.rotate(Arc::new(new)).await;
    log.emit(
        ward_server::audit::Event::new("signing_key_rotated", "success", clock.now())
            .severity("warning")
            .source("host: ward audit rotate-key")
            .reason(format!(
                "signing key {} retired (its private key deleted), {} signs from now on (rotated on the host with the gateway stopped)",
                rotated.old_key_id, rotated.new_key_id
            ))
            .detail("old_key_id", rotated.old_key_id.clone())
            .detail("new_key_id", rotated.new_key_id.clone()),
    );
    let committed = log.commit().await;
    drop(log);
    writer.finish().await?;
    switched?;
    committed?;
    println!(
        "signing key rotated: {} retired, {} signs from now on",
        rotated.old_key_id, rotated.new_key_id
    );
    println!("the retired key's public key stays in {}/audit.keys, so everything it signed still verifies; its private key was overwritten (on SSDs and copy-on-write filesystems, best effort)", state_dir.display());
    Ok(ExitCode::SUCCESS)
}

/// The keyring of a running gateway (falls back to its one current key for a gateway from
/// before rotation).
pub async fn remote_keyring(client: &Client) -> anyhow::Result<Keyring> {
    match client
        .request(&Request::SigningKeys(SigningKeysOp::List))
        .await
    {
        Ok(Response::Ok { message }) => {
            Keyring::parse(message.as_bytes()).context("the gateway sent a malformed keyring")
        }
        Ok(Response::Error { message, .. }) if message.contains("unknown frame type") => {
            let text = client.review(Review::PublicKey).await?;
            Ok(Keyring::single(
                review::parse_public_key(&String::from_utf8_lossy(&text))?,
                "",
            ))
        }
        Ok(other) => Err(ward_client::unexpected(other).into()),
        Err(e) => Err(e),
    }
}

/// A keyring file (`--keys`): JSON lines, or one hex public key (`audit.pub`).
pub fn keys_file(path: &Path) -> anyhow::Result<Keyring> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let trimmed = String::from_utf8_lossy(&text).trim().to_owned();
    if trimmed.len() == 64 && trimmed.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(Keyring::single(review::parse_public_key(&trimmed)?, ""));
    }
    Keyring::parse(&text).with_context(|| {
        format!(
            "{} is neither a keyring (JSON lines, `ward audit pubkey --all --json`) nor a hex public key",
            path.display()
        )
    })
}

/// `ward audit pubkey --all`.
pub fn print_keys(keys: &Keyring, json: bool) -> anyhow::Result<()> {
    if json {
        use std::io::Write;
        std::io::stdout().write_all(&keys.to_jsonl())?;
        return Ok(());
    }
    let current = keys.current().map(|c| c.public);
    let mut table = show::Table::new(&["KEY ID", "CREATED", "STATUS", "PUBLIC KEY"]);
    for e in keys.entries() {
        let status = match (&e.retired_at, Some(e.public) == current) {
            (_, true) => "current".to_owned(),
            (Some(at), false) => format!("retired {}", show::when_text(at)),
            (None, false) => "retired".to_owned(),
        };
        let created = if e.created.is_empty() {
            "-".to_owned()
        } else {
            show::when_text(&e.created)
        };
        table.row(vec![
            e.key_id.clone(),
            created,
            status,
            hex::encode(e.public),
        ]);
    }
    table.print()?;
    Ok(())
}

/// `--anchors FILE|URL`: the anchor lines.
pub async fn read_anchors(from: &str, ca_file: Option<&Path>) -> anyhow::Result<Vec<u8>> {
    if from.starts_with("https://") || from.starts_with("http://") {
        return ward_server::anchors::fetch(from, ca_file)
            .await
            .with_context(|| format!("fetching the anchors from {from}"));
    }
    let path = PathBuf::from(from.strip_prefix("file:").unwrap_or(from));
    ward_server::anchors::read_file(&path)
}

/// Every recording's final checkpoint in a state dir (read from the end of each file).
pub fn local_finals(state_dir: &Path) -> anyhow::Result<BTreeMap<String, Option<FinalCheckpoint>>> {
    let store = ward_server::recording_store::RecordingStore::local(state_dir);
    let ids = store
        .list()
        .with_context(|| format!("listing the recordings in {}", state_dir.display()))?;
    let mut out = BTreeMap::new();
    for id in ids {
        let tail = ward_server::anchors::read_tail(&store, &id)
            .with_context(|| format!("reading recording {id}"))?;
        out.insert(id, anchor::final_checkpoint(&tail));
    }
    Ok(out)
}

/// Check the log and recordings against the anchors; prints one line per problem and a
/// summary. Returns the number of problems.
pub fn check_anchors(
    log: &[u8],
    anchors: &[u8],
    finals: Option<&BTreeMap<String, Option<FinalCheckpoint>>>,
    keys: &Keyring,
    gateway: Option<&str>,
) -> usize {
    let r = anchor::check(log, anchors, finals, keys, gateway);
    for f in &r.findings {
        println!("anchors: FAILED: {}", review::printable(&f.what));
    }
    let mut notes = Vec::new();
    if r.recordings_unchecked > 0 {
        notes.push(format!(
            "{} recording anchors not checked: add --all",
            r.recordings_unchecked
        ));
    }
    if r.other_gateways > 0 {
        notes.push(format!("{} of other gateways skipped", r.other_gateways));
    }
    let notes = if notes.is_empty() {
        String::new()
    } else {
        format!("; {}", notes.join("; "))
    };
    let upto = r
        .highest_seq
        .map(|s| format!(" up to line {s}"))
        .unwrap_or_default();
    if r.audit + r.recordings == 0 && r.findings.is_empty() {
        println!(
            "anchors: WARNING: no anchor of gateway {} found{notes}",
            gateway.unwrap_or("(any)")
        );
    }
    if r.findings.is_empty() {
        println!(
            "anchors: ok ({} audit anchors{upto}, {} recording anchors{notes})",
            r.audit, r.recordings
        );
    } else {
        println!(
            "anchors: FAILED ({} problems; {} audit anchors{upto}, {} recording anchors{notes})",
            r.findings.len(),
            r.audit,
            r.recordings
        );
    }
    r.findings.len()
}
