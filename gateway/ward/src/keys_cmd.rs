//! `ward keys status|rotate --kek`: the key-encryption key that seals the secrets in the store
//! (vault values, TOTP seeds). Status works through the gateway (admin identity) or on the gateway
//! host; rotation runs in the running gateway, online (docs/vault.md, "The key-encryption key").

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use ward_client::Transport;
use ward_core::frame::KeysOp;
use ward_store::keywrap::{Kek, KeyCount, Rotated, SecretStore};

/// Where a keys command acts.
#[derive(Debug, Args)]
pub struct KeysTarget {
    /// Through the gateway, HOST:PORT (needs an admin identity).
    #[arg(long, env = "WARD_GATEWAY", value_name = "HOST:PORT", conflicts_with_all = ["config", "state_dir"])]
    gateway: Option<String>,
    /// Your identity (default ~/.ward/identity).
    #[arg(long, env = "WARD_IDENTITY", value_name = "PREFIX")]
    identity: Option<PathBuf>,
    /// Ward's root certificate.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// How to reach the gateway.
    #[arg(long, value_enum, default_value_t = Transport::Auto)]
    transport: Transport,
    /// On the gateway host (status only): the gateway's config file ([vault] names the key).
    #[arg(long, value_name = "FILE", conflicts_with = "state_dir")]
    config: Option<PathBuf>,
    /// On the gateway host (status only): the gateway's state dir (the key is its vault.key).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// The key-encryption keys: fingerprints, which one is current, and how many vault values
    /// and TOTP seeds each seals (`plaintext`: seeds of an older store the next start seals).
    Status {
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: KeysTarget,
    },
    /// Rotate a key, online, through the gateway (admin identity). With --kek: a new
    /// key-encryption key is written beside the old one, every vault value and TOTP seed is
    /// re-encrypted under it in one transaction while logins and sessions go on, then the old
    /// key file is removed. Audited as `kek_rotated`. (`ward vault rekey` is the offline
    /// variant, with a key you supply and the gateway stopped.)
    Rotate {
        /// Rotate the key-encryption key of the store (required: the one key this rotates; the
        /// audit signing key is `ward audit rotate-key`).
        #[arg(long, required = true)]
        kek: bool,
        /// JSON instead of a sentence.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: KeysTarget,
    },
}

/// Runs a `ward keys` command.
pub async fn run(cmd: KeysCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KeysCommand::Status { json, target } => {
            let counts: Vec<KeyCount> = match &target.gateway {
                Some(g) => {
                    let client = crate::make_client(
                        g,
                        target.identity.as_ref(),
                        target.ca.as_ref(),
                        target.transport,
                    )?;
                    let lines = client.keys(KeysOp::Status).await?;
                    parse_lines(&lines)?
                }
                None => local_status(&target)?,
            };
            if json {
                let mut out = std::io::stdout().lock();
                for c in &counts {
                    serde_json::to_writer(&mut out, c)?;
                    out.write_all(b"\n")?;
                }
            } else {
                print!("{}", status_table(&counts));
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Rotate { kek, json, target } => {
            if !kek {
                bail!("say which key: --kek");
            }
            let Some(g) = &target.gateway else {
                bail!("`ward keys rotate --kek` runs in the running gateway: give --gateway HOST:PORT (admin identity); with the gateway stopped, use `ward vault rekey --new-key-file FILE`");
            };
            let client = crate::make_client(
                g,
                target.identity.as_ref(),
                target.ca.as_ref(),
                target.transport,
            )?;
            let lines = client.keys(KeysOp::RotateKek).await?;
            let rotated: Vec<Rotated> = parse_lines(&lines)?;
            let r = rotated
                .first()
                .context("the gateway answered the rotation with nothing")?;
            if json {
                println!("{}", serde_json::to_string(r)?);
            } else {
                println!(
                    "rotated the key-encryption key {} -> {}: re-encrypted {} vault value(s) and {} TOTP seed(s){}; the old key file is removed",
                    r.old,
                    r.new,
                    r.rewrapped.vault_values,
                    r.rewrapped.totp_seeds,
                    if r.rewrapped.plaintext_seeds_sealed > 0 {
                        format!(", sealed {} plaintext seed(s)", r.rewrapped.plaintext_seeds_sealed)
                    } else {
                        String::new()
                    }
                );
                println!("back up the new key file with ward.db: a backup of ward.db opens only with the key it was made under");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn parse_lines<T: serde::de::DeserializeOwned>(lines: &[u8]) -> anyhow::Result<Vec<T>> {
    lines
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            serde_json::from_slice(l).context("the gateway's answer is not what this ward expects")
        })
        .collect()
}

/// On the gateway host: the store's counts, with the key `[vault]` names (never created here).
fn local_status(target: &KeysTarget) -> anyhow::Result<Vec<KeyCount>> {
    let (state_dir, vault) = match (&target.config, &target.state_dir) {
        (Some(path), _) => {
            let config = ward_server::gateway::load_config(path)?;
            (config.gateway.state_dir.clone(), config.inject.vault.clone())
        }
        (None, Some(dir)) => (dir.clone(), Default::default()),
        (None, None) => bail!(
            "give --gateway HOST:PORT (admin identity) or --config FILE / --state-dir DIR (on the gateway host)"
        ),
    };
    let db = ward_store::store::SqliteStore::open(&state_dir)?;
    let source = Kek::source(&vault, &state_dir);
    if let Some(ring) = source
        .load_ring(false)
        .with_context(|| format!("the key-encryption key ({source})"))?
    {
        db.keys().set(ring);
    }
    Ok(db.key_counts()?)
}

/// The status as a table.
fn status_table(counts: &[KeyCount]) -> String {
    let mut out = format!(
        "{:<18} {:<9} {:>12} {:>10}\n",
        "KEK", "STATE", "VAULT VALUES", "TOTP SEEDS"
    );
    for c in counts {
        let state = match (c.current, c.held, c.fingerprint.as_str()) {
            (_, _, "plaintext") => "unsealed",
            (true, _, _) => "current",
            (false, true, _) => "retiring",
            (false, false, _) => "MISSING",
        };
        out.push_str(&format!(
            "{:<18} {:<9} {:>12} {:>10}\n",
            c.fingerprint, state, c.vault_values, c.totp_seeds
        ));
    }
    if counts
        .iter()
        .any(|c| !c.held && c.fingerprint != "plaintext")
    {
        out.push_str("MISSING: values sealed under a key this gateway does not hold; they cannot be opened until that key file is restored\n");
    }
    out
}
