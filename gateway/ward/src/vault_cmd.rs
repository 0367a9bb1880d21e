//! `ward vault set|list|remove|rotate|rekey`: device credentials the gateway injects, through the
//! gateway (an admin identity) or on the gateway host (`--config` or `--state-dir`).
//!
//! A value is read from a no-echo prompt or one line of standard input, never from an argument
//! (arguments are visible to every user of the machine in `ps` and land in shell history), and
//! is never printed.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use ward_ca::{Clock, SystemClock};
use ward_client::{Client, Transport, VaultAnswer};
use ward_core::frame::{VaultEntryInfo, VaultOp};
use ward_core::inject::VaultConfig;
use ward_core::secret::Secret;
use ward_core::Escaped;
use ward_store::vault::{Kek, VaultStore};

/// Where a vault command acts: through the gateway, or on the gateway host.
#[derive(Debug, Args)]
pub struct VaultTarget {
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
    /// On the gateway host: the gateway's config file (its state dir holds the vault, its
    /// [vault] section names the key).
    #[arg(long, value_name = "FILE", conflicts_with = "state_dir")]
    config: Option<PathBuf>,
    /// On the gateway host: the gateway's state dir (the key is its vault.key).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

/// The host side: the state dir, the vault config, and the configured device ids (when known).
struct Host {
    state_dir: PathBuf,
    vault: VaultConfig,
    devices: Option<Vec<String>>,
}

impl VaultTarget {
    fn remote(&self) -> anyhow::Result<Option<Client>> {
        match (&self.gateway, &self.config, &self.state_dir) {
            (Some(g), None, None) => Ok(Some(crate::make_client(
                g,
                self.identity.as_ref(),
                self.ca.as_ref(),
                self.transport,
            )?)),
            (None, Some(_), None) | (None, None, Some(_)) => Ok(None),
            _ => bail!("give --gateway HOST:PORT (through the gateway, admin identity) or --config FILE / --state-dir DIR (on the gateway host)"),
        }
    }

    fn host(&self) -> anyhow::Result<Host> {
        if let Some(path) = &self.config {
            let config = ward_server::gateway::load_config(path)?;
            return Ok(Host {
                state_dir: config.gateway.state_dir.clone(),
                vault: config.inject.vault.clone(),
                devices: Some(config.devices.iter().map(|d| d.id.to_string()).collect()),
            });
        }
        let dir = self
            .state_dir
            .clone()
            .context("give --config FILE or --state-dir DIR")?;
        Ok(Host {
            state_dir: dir,
            vault: VaultConfig::default(),
            devices: None,
        })
    }
}

impl Host {
    fn store(&self) -> anyhow::Result<ward_store::store::SqliteStore> {
        std::fs::create_dir_all(&self.state_dir)
            .with_context(|| format!("creating {}", self.state_dir.display()))?;
        Ok(ward_store::store::SqliteStore::open(&self.state_dir)?)
    }

    /// The store's key ring as `[vault]` names it (the key and what a crashed rotation left
    /// beside it), set on `db`.
    fn keys(
        &self,
        db: &ward_store::store::SqliteStore,
        create: bool,
    ) -> anyhow::Result<Option<std::sync::Arc<ward_store::keywrap::KeyRing>>> {
        let source = Kek::source(&self.vault, &self.state_dir);
        let ring = source
            .load_ring(create)
            .with_context(|| format!("the key-encryption key ({source})"))?;
        Ok(ring.and_then(|r| {
            db.keys().set(r);
            db.keys().get().ok()
        }))
    }
}

#[derive(Debug, Subcommand)]
pub enum VaultCommand {
    /// Store (or replace) the password of a device's account. The password is asked without
    /// echo, or read as one line of standard input with --stdin; never give it as an argument.
    Set {
        /// The device id (as in the gateway's config).
        device: String,
        /// The account: the role on the device this credential is for (e.g. service, nurse);
        /// rules name it with `inject = "ACCOUNT"`.
        account: String,
        /// The user name the device knows (default: the entry's current one, else ACCOUNT).
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
        /// Read the password as one line of standard input instead of asking on the terminal.
        #[arg(long)]
        stdin: bool,
        #[command(flatten)]
        target: VaultTarget,
    },
    /// List vaulted credentials: device, account, user name, age, last use, last rotation and
    /// key fingerprint. Never a password.
    List {
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: VaultTarget,
    },
    /// Remove a device account's vaulted credential (sessions that inject it are refused until
    /// it is set again).
    Remove {
        /// The device id.
        device: String,
        /// The account.
        account: String,
        #[command(flatten)]
        target: VaultTarget,
    },
    /// Replace the device's password with a random one nobody knows, through its console (the
    /// login profile's rotate procedure). The new password is stored before the device is
    /// changed and the previous one kept until a login with the new one works; a failure says
    /// which password is current. Through the gateway only (it drives the device).
    Rotate {
        /// The device id.
        device: String,
        /// The account.
        account: String,
        #[command(flatten)]
        target: VaultTarget,
    },
    /// Re-encrypt every secret in the store (vaulted values and TOTP seeds) under a new
    /// key-encryption key you supply, in one transaction (on the gateway host, with the gateway
    /// stopped). The new key is read from FILE, or created there (0600) if it does not exist;
    /// then point [vault] key_file at it (or move it over vault.key) and start the gateway. The
    /// online rotation, with the gateway running and a key it makes, is `ward keys rotate --kek`.
    Rekey {
        /// The new key file (base64 of 32 bytes, mode 0600; created if absent).
        #[arg(long, value_name = "FILE")]
        new_key_file: PathBuf,
        /// The gateway's config file.
        #[arg(long, value_name = "FILE", conflicts_with = "state_dir")]
        config: Option<PathBuf>,
        /// The gateway's state dir.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
}

/// Runs a `ward vault` command.
pub async fn run(cmd: VaultCommand) -> anyhow::Result<ExitCode> {
    let now = SystemClock.now().unix_timestamp();
    match cmd {
        VaultCommand::Set {
            device,
            account,
            user,
            stdin,
            target,
        } => {
            let client = target.remote()?;
            let host = match client {
                Some(_) => None,
                None => Some(target.host()?),
            };
            let secret = read_secret(&device, &account, stdin)?;
            if let Some(client) = client {
                let op = VaultOp::Set {
                    device,
                    account,
                    username: user,
                    secret,
                };
                return done(client.vault(op).await?);
            }
            let host = host.context("no host")?;
            if let Some(devices) = &host.devices {
                if !devices.contains(&device) {
                    bail!(
                        "no device {} in the gateway's config; vault credentials for configured devices",
                        Escaped(&device)
                    );
                }
            }
            let db = host.store()?;
            let kek = host.keys(&db, true)?.context("no key-encryption key")?;
            let username = match user {
                Some(u) => u,
                None => db
                    .credential_entry(&device, &account)?
                    .map(|e| e.username)
                    .unwrap_or_else(|| account.clone()),
            };
            db.put_credential(&device, &account, &username, &secret, now)?;
            drop(secret);
            println!(
                "vaulted {}/{} (user {}, key {}); a running gateway uses it for the next session",
                Escaped(&device),
                Escaped(&account),
                Escaped(&username),
                kek.fingerprint()
            );
            Ok(ExitCode::SUCCESS)
        }
        VaultCommand::List { json, target } => {
            let entries: Vec<VaultEntryInfo> = match target.remote()? {
                Some(client) => match client.vault(VaultOp::List).await? {
                    VaultAnswer::Lines(lines) => lines
                        .split(|b| *b == b'\n')
                        .filter(|l| !l.is_empty())
                        .map(serde_json::from_slice)
                        .collect::<Result<_, _>>()
                        .context("the gateway's vault listing")?,
                    other => return done(other),
                },
                None => {
                    let host = target.host()?;
                    host.store()?
                        .list_credentials()?
                        .iter()
                        .map(ward_server::dispatch::vault_entry_info)
                        .collect()
                }
            };
            if json {
                let mut out = std::io::stdout().lock();
                for e in &entries {
                    serde_json::to_writer(&mut out, e)?;
                    out.write_all(b"\n")?;
                }
            } else {
                print_table(&entries, now)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        VaultCommand::Remove {
            device,
            account,
            target,
        } => {
            if let Some(client) = target.remote()? {
                return done(client.vault(VaultOp::Remove { device, account }).await?);
            }
            let db = target.host()?.store()?;
            if !db.remove_credential(&device, &account)? {
                bail!(
                    "no vaulted credential for {}/{}",
                    Escaped(&device),
                    Escaped(&account)
                );
            }
            println!(
                "removed the vaulted credential for {}/{}",
                Escaped(&device),
                Escaped(&account)
            );
            Ok(ExitCode::SUCCESS)
        }
        VaultCommand::Rotate {
            device,
            account,
            target,
        } => match target.remote()? {
            Some(client) => done(client.vault(VaultOp::Rotate { device, account }).await?),
            None => bail!("rotation drives the device through the gateway: give --gateway HOST:PORT with an admin identity"),
        },
        VaultCommand::Rekey {
            new_key_file,
            config,
            state_dir,
        } => {
            let target = VaultTarget {
                gateway: None,
                identity: None,
                ca: None,
                transport: Transport::Auto,
                config,
                state_dir,
            };
            rekey(&target.host()?, &new_key_file, now)
        }
    }
}

/// Re-encrypts the vault under the key in `new_key_file`, with the gateway stopped.
fn rekey(host: &Host, new_key_file: &Path, now: i64) -> anyhow::Result<ExitCode> {
    // A running gateway holds the old key in memory: it must not run meanwhile.
    let _lock = ward_server::state_lock::StateLock::acquire(&host.state_dir)
        .context("rekey needs the gateway stopped")?;
    let db = host.store()?;
    let old_source = Kek::source(&host.vault, &host.state_dir);
    let Some(old) = host.keys(&db, false)? else {
        bail!("there is no key-encryption key at {old_source}: nothing is sealed under it, nothing to re-encrypt");
    };
    let new = Kek::from_file(new_key_file, true)
        .with_context(|| format!("the new key ({})", new_key_file.display()))?
        .context("no new key")?;
    if new.fingerprint() == old.fingerprint() {
        bail!(
            "{} holds the current key ({}); give a new one",
            new_key_file.display(),
            old.fingerprint()
        );
    }
    let _ = now;
    let ring = old.with_current(std::sync::Arc::new(new.clone()));
    let done = ward_store::keywrap::SecretStore::rewrap_all(&db, &ring)?;
    let n = done.total();
    println!(
        "re-encrypted {n} value(s) (vault values and TOTP seeds) from key {} to key {}",
        old.fingerprint(),
        new.fingerprint()
    );
    println!(
        "next: make {} the gateway's key ([vault] key_file = \"{}\", or move it over {old_source}), then start the gateway; keep the old key until it runs",
        new_key_file.display(),
        new_key_file.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The password, from a no-echo prompt (asked twice) or one line of standard input.
fn read_secret(device: &str, account: &str, stdin: bool) -> anyhow::Result<Secret<String>> {
    if stdin || !std::io::stdin().is_terminal() {
        if !stdin {
            bail!("standard input is not a terminal: pass --stdin to read the password from it");
        }
        // Room for the longest value up front: a growing buffer would leave copies behind.
        let mut line = String::with_capacity(ward_store::vault::MAX_SECRET_LEN + 2);
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        let mut value = Secret::new(line);
        let keep = value.expose().trim_end_matches(['\r', '\n']).len();
        truncate(&mut value, keep);
        if value.expose().is_empty() {
            bail!("standard input held no password (one line expected)");
        }
        return Ok(value);
    }
    let prompt = format!("Password for {}/{}: ", Escaped(device), Escaped(account));
    let a = Secret::new(rpassword::prompt_password(prompt).context("reading the password")?);
    let b = Secret::new(rpassword::prompt_password("Again: ").context("reading the password")?);
    if a != b {
        bail!("the two entries differ; nothing was changed");
    }
    if a.expose().is_empty() {
        bail!("the password is empty; nothing was changed");
    }
    Ok(a)
}

/// Shortens a secret string (every copy is a `Secret`, wiped when dropped).
fn truncate(secret: &mut Secret<String>, len: usize) {
    let mut inner = secret.expose().clone();
    inner.truncate(len);
    // The untrimmed value is wiped as it is dropped.
    *secret = Secret::new(inner);
}

fn done(answer: VaultAnswer) -> anyhow::Result<ExitCode> {
    match answer {
        VaultAnswer::Entry { message, .. } | VaultAnswer::Message(message) => {
            println!("{}", Escaped(&message))
        }
        VaultAnswer::Lines(l) => std::io::stdout().write_all(&l)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// How long ago, for people: the largest unit (`3d`, `5h`, `12m`, `40s`).
fn age(secs: i64) -> String {
    let secs = u64::try_from(secs).unwrap_or(0);
    let unit = [(86_400, "d"), (3_600, "h"), (60, "m")]
        .into_iter()
        .find(|(n, _)| secs >= *n);
    match unit {
        Some((n, u)) => format!("{}{u}", secs / n),
        None => ward_core::format_duration(Duration::from_secs(secs)),
    }
}

fn print_table(entries: &[VaultEntryInfo], now: i64) -> anyhow::Result<()> {
    if entries.is_empty() {
        println!("nothing vaulted (ward vault set DEVICE ACCOUNT)");
        return Ok(());
    }
    let mut table = crate::show::Table::new(&[
        "DEVICE",
        "ACCOUNT",
        "USER",
        "AGE",
        "LAST USED",
        "LAST ROTATED",
        "KEY",
        "STATE",
    ]);
    let p = ward_server::review::printable;
    for e in entries {
        table.row(vec![
            p(&e.device),
            p(&e.account),
            p(&e.username),
            age(now - e.updated_unix),
            e.last_used_unix
                .map(crate::show::when_unix)
                .unwrap_or_else(|| "never".into()),
            e.last_rotated_unix
                .map(crate::show::when_unix)
                .unwrap_or_else(|| "never".into()),
            e.key_fingerprint.clone(),
            if e.pending {
                "rotation pending".into()
            } else {
                "ok".into()
            },
        ]);
    }
    table.print()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ages_read_in_the_largest_unit() {
        assert_eq!(age(0), "0s");
        assert_eq!(age(59), "59s");
        assert_eq!(age(61), "1m");
        assert_eq!(age(7_300), "2h");
        assert_eq!(age(3 * 86_400 + 5), "3d");
        assert_eq!(age(-5), "0s");
    }

    #[test]
    fn truncation_keeps_the_value() {
        let mut s = Secret::new("pw-line\r\n".to_owned());
        truncate(&mut s, 7);
        assert_eq!(s.expose(), "pw-line");
    }
}
