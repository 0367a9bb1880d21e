//! `ward login`, `ward request|requests|approve|deny|grants|revoke` and `ward user ...`.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use time::OffsetDateTime;
use ward_ca::{Clock, SystemClock};
use ward_client::{AccessAnswer, Client, Transport};
use ward_core::frame::{AccessOp, AccessReply};

use crate::show::when;
use crate::GatewayClientArgs;

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The gateway, HOST:PORT.
    #[arg(long, env = "WARD_GATEWAY", value_name = "HOST:PORT")]
    gateway: String,
    /// Your user name (not with --sso: the browser sign-in says who you are).
    #[arg(long, env = "WARD_USER", required_unless_present = "sso")]
    user: Option<String>,
    /// Log in through a browser instead of a password: prints a URL and a code; open the URL,
    /// sign in to the console (your hospital's SSO, or password and TOTP), check that it shows
    /// the same code and approve. The certificate is stored as a password login stores it.
    #[arg(long, conflicts_with_all = ["password_stdin", "change_password", "totp", "grant"])]
    sso: bool,
    /// With --sso: the identity provider to sign in with (its name in the gateway's `[[oidc]]`).
    #[arg(long, value_name = "NAME", requires = "sso")]
    sso_provider: Option<String>,
    /// With --sso: only print the URL; do not try to open a browser here (`xdg-open`). For ssh
    /// sessions and machines without one: open the URL on any device where you can sign in.
    #[arg(long, requires = "sso")]
    no_browser: bool,
    /// With --sso: give up after this long (e.g. 90s, 2m; default and most: until the login
    /// expires, 5 minutes after it starts).
    #[arg(long, value_name = "DURATION", requires = "sso")]
    wait: Option<String>,
    /// Read the password from standard input (one line; with --change-password, the new one on
    /// the second line) instead of asking on the terminal.
    #[arg(long)]
    password_stdin: bool,
    /// Set a new password as part of this login (required with the initial password you were given).
    #[arg(long)]
    change_password: bool,
    /// The 6-digit code from your authenticator app (asked on the terminal if needed and not given).
    #[arg(long, value_name = "CODE")]
    totp: Option<String>,
    /// Bind the certificate to this grant (vendors are bound to their current grant by default).
    #[arg(long, value_name = "GRANT")]
    grant: Option<String>,
    /// Ward's root certificate, to check the gateway (default ~/.ward/root.crt).
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Where to write the certificate and key: PREFIX.crt, PREFIX.key (default ~/.ward/identity,
    /// which `ward connect` uses by default).
    #[arg(long, value_name = "PREFIX")]
    out: Option<PathBuf>,
    /// How to reach the gateway.
    #[arg(long, value_enum, default_value_t = Transport::Auto)]
    transport: Transport,
}

fn ward_home() -> anyhow::Result<PathBuf> {
    Ok(ward_client::home_dir()
        .context("$HOME is not set; pass --out and --ca")?
        .join(".ward"))
}

fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

pub async fn login(args: LoginArgs) -> anyhow::Result<ExitCode> {
    let home = ward_home();
    let root = match &args.ca {
        Some(p) => p.clone(),
        None => home
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .join("root.crt"),
    };
    if !root.exists() {
        bail!("no Ward root certificate at {}; get it from your gateway's administrator and pass --ca FILE", root.display());
    }
    if args.sso {
        return login_sso(args, home, root).await;
    }
    let user = args.user.clone().unwrap_or_default();
    let (password, new_password) = if args.password_stdin {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the password from stdin")?;
        let mut lines = s.lines();
        let old = lines.next().unwrap_or("").to_owned();
        let new = match args.change_password {
            true => Some(
                lines
                    .next()
                    .filter(|l| !l.is_empty())
                    .context("--change-password with --password-stdin: put the new password on the second line")?
                    .to_owned(),
            ),
            false => None,
        };
        (old, new)
    } else {
        let old = rpassword::prompt_password(format!("Password for {user}: "))
            .context("reading the password (no terminal? use --password-stdin)")?;
        let new = match args.change_password {
            true => {
                let a = rpassword::prompt_password("New password (12+ characters): ")?;
                let b = rpassword::prompt_password("New password again: ")?;
                if a != b {
                    bail!("the new passwords differ; nothing was changed");
                }
                Some(a)
            }
            false => None,
        };
        (old, new)
    };
    let totp = match args.totp.clone() {
        Some(c) => Some(c),
        None if !args.password_stdin && std::io::stdin().is_terminal() => {
            let c = rpassword::prompt_password("Authenticator code (Enter if you have none): ")?;
            Some(c).filter(|c| !c.trim().is_empty())
        }
        None => None,
    };
    let client = Client::anonymous(&args.gateway, &root, args.transport)?;
    let logged = client
        .login(
            &user,
            password,
            totp,
            args.grant.clone(),
            new_password.clone(),
        )
        .await?;
    let crt = store_identity(args.out.as_deref(), home, &root, &logged)?;
    let until = crate::show::when_unix(logged.not_after_unix);
    if new_password.is_some() {
        println!("password changed");
    }
    println!(
        "logged in as {user}: certificate {} valid until {until}",
        crt.display()
    );
    if let Some(g) = logged.grant {
        println!("bound to grant {g}: the certificate ends no later than the grant");
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes a login's certificate and key (0600) at `out` (default ~/.ward/identity, its directory
/// 0700) and the root beside them if none is there; returns the certificate's path. Every
/// login (password or `--sso`) stores its identity here.
fn store_identity(
    out: Option<&Path>,
    home: anyhow::Result<PathBuf>,
    root: &Path,
    logged: &ward_client::LoggedIn,
) -> anyhow::Result<PathBuf> {
    let prefix = match out {
        Some(p) => p.to_path_buf(),
        None => {
            let dir = home?;
            std::fs::create_dir_all(&dir)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
            dir.join("identity")
        }
    };
    let crt = ward_ca::Issued::cert_path(&prefix);
    let key = ward_ca::Issued::key_path(&prefix);
    write_private(&key, logged.key_pem.expose().as_bytes())?;
    write_private(&crt, logged.chain_pem.as_bytes())?;
    // `ward connect` looks for root.crt beside the identity.
    let beside = prefix.parent().unwrap_or(Path::new(".")).join("root.crt");
    if !beside.exists() {
        std::fs::copy(root, &beside)
            .with_context(|| format!("copying the root to {}", beside.display()))?;
    }
    Ok(crt)
}

/// `ward login --sso`: the URL and code, a browser (unless --no-browser), the wait, the
/// certificate stored as `ward login` stores it.
async fn login_sso(
    args: LoginArgs,
    home: anyhow::Result<PathBuf>,
    root: PathBuf,
) -> anyhow::Result<ExitCode> {
    let wait = match &args.wait {
        Some(w) => {
            ward_core::parse_duration(w).with_context(|| format!("--wait {w:?} (e.g. 90s, 2m)"))?
        }
        None => std::time::Duration::from_secs(600),
    };
    let client = Client::anonymous(&args.gateway, &root, args.transport)?;
    let no_browser = args.no_browser;
    let logged = client
        .login_sso(args.sso_provider.clone(), wait, |p| {
            let expires = crate::show::when_unix(p.expires_unix);
            println!("To log in, open this page in a browser and sign in:");
            println!();
            println!("    {}", p.url);
            println!();
            println!(
                "Check that the page shows the code {} and approve it.",
                p.user_code
            );
            println!("code: {}", p.user_code);
            println!("url: {}", p.url);
            if !no_browser {
                open_browser(&p.url);
            }
            println!("Waiting for the approval (until {expires}; Ctrl-C gives up)...");
        })
        .await?;
    let crt = store_identity(args.out.as_deref(), home, &root, &logged)?;
    let who = ward_ca::inspect(&logged.chain_pem, None, SystemClock.now())
        .ok()
        .and_then(|i| i.principal)
        .unwrap_or_else(|| "the approving user".into());
    let until = crate::show::when_unix(logged.not_after_unix);
    println!(
        "logged in as {who}: certificate {} valid until {until}",
        crt.display()
    );
    if let Some(g) = logged.grant {
        println!("bound to grant {g}: the certificate ends no later than the grant");
    }
    Ok(ExitCode::SUCCESS)
}

/// Tries `xdg-open URL` (not waited for; its output discarded). Says so when it cannot run.
fn open_browser(url: &str) {
    let spawned = std::process::Command::new("xdg-open")
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    match spawned {
        Ok(mut child) => {
            // Reaped in the background; the login does not wait for the browser.
            std::thread::spawn(move || {
                let _ = child.wait();
            });
        }
        Err(_) => println!("(no browser could be opened here: open the URL on any device)"),
    }
}

#[derive(Debug, Args)]
pub struct RequestArgs {
    /// Device id.
    device: String,
    /// Why you need access (shown to approvers, audited).
    #[arg(long)]
    reason: String,
    /// How long (e.g. 2h, 30m).
    #[arg(long)]
    duration: String,
    /// When the window starts: RFC 3339 (2026-11-28T09:00:00Z), or a duration from now (+2h or
    /// 2h); default now.
    #[arg(long, allow_hyphen_values = true, value_name = "TIME")]
    start: Option<String>,
    #[command(flatten)]
    gw: GatewayClientArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Include decided, expired, ended and revoked entries.
    #[arg(long)]
    all: bool,
    /// Print JSON lines.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    gw: GatewayClientArgs,
}

#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// Request id (from `ward requests`).
    id: String,
    /// Optional comment (audited).
    #[arg(long)]
    comment: Option<String>,
    #[command(flatten)]
    gw: GatewayClientArgs,
}

#[derive(Debug, Args)]
pub struct DenyArgs {
    /// Request id.
    id: String,
    /// Why (shown to the requester, audited).
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    gw: GatewayClientArgs,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// Grant id (from `ward grants`).
    grant: String,
    /// Why (audited).
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    gw: GatewayClientArgs,
}

fn print_reply(reply: AccessReply) {
    match reply {
        AccessReply::Request { request } => println!(
            "request {} for {} is {} (window {} to {}; expires {} if not approved)",
            request.id,
            request.device,
            request.state.as_str(),
            when(request.start),
            when(request.end),
            when(request.expires)
        ),
        AccessReply::Approved {
            request,
            count,
            required,
            grant,
        } => match grant {
            Some(g) => println!(
                "approved ({count}/{required}): grant {} gives {} access to {} from {} to {}",
                g.id,
                g.principal,
                g.device,
                when(g.start),
                when(g.end)
            ),
            None => println!(
                "approval recorded for {} ({count} of {required} needed so far)",
                request.id
            ),
        },
        AccessReply::Grant { grant } => println!(
            "grant {} revoked ({}); live sessions on it are ending",
            grant.id,
            grant.revoked.unwrap_or_default()
        ),
        AccessReply::UserCreated {
            name,
            password,
            totp_uri,
        } => print_created(&name, &password, totp_uri.as_deref()),
    }
}

fn print_created(name: &str, password: &str, totp_uri: Option<&str>) {
    println!("user {name} created.");
    println!("One-time initial password (shown once; hand it over in person): {password}");
    println!("The first login must replace it: `ward login --user {name} --change-password` (a login without it is refused).");
    if let Some(uri) = totp_uri {
        println!("TOTP provisioning URI (scan it with an authenticator app): {uri}");
        match qrcode::QrCode::new(uri.as_bytes()) {
            Ok(code) => println!(
                "{}",
                code.render::<qrcode::render::unicode::Dense1x2>()
                    .quiet_zone(true)
                    .build()
            ),
            Err(e) => println!("(could not render a QR code: {e})"),
        }
    }
}

async fn access(gw: &GatewayClientArgs, op: AccessOp) -> anyhow::Result<AccessAnswer> {
    gw.client()?.access(op).await
}

fn done(answer: AccessAnswer) -> anyhow::Result<ExitCode> {
    match answer {
        AccessAnswer::Reply(r) => print_reply(*r),
        AccessAnswer::Message(m) => println!("{m}"),
        AccessAnswer::Lines(l) => std::io::stdout().write_all(&l)?,
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn request(args: RequestArgs) -> anyhow::Result<ExitCode> {
    let duration = ward_core::parse_duration(&args.duration)
        .with_context(|| format!("--duration {}", args.duration))?;
    let start_unix = match &args.start {
        Some(s) => Some(parse_start(s, SystemClock.now())?),
        None => None,
    };
    let op = AccessOp::Request {
        device: args.device.clone(),
        reason: args.reason.clone(),
        duration_secs: duration.as_secs(),
        start_unix,
    };
    let answer = access(&args.gw, op).await?;
    let r = done(answer);
    println!(
        "approvers see it with `ward requests`; once approved, `ward login` then `ward connect {}`",
        args.device
    );
    r
}

/// `--start`: RFC 3339, or a duration from now (`+2h`, `2h`). A request window cannot start in
/// the past, so `-1h` gets a sentence instead of clap's "unexpected argument".
fn parse_start(text: &str, now: OffsetDateTime) -> anyhow::Result<i64> {
    use time::format_description::well_known::Rfc3339;
    let text = text.trim();
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(t.unix_timestamp());
    }
    if text.starts_with('-') {
        bail!("--start {text}: a request window cannot start in the past; leave --start out to start now, or give a time ahead, e.g. `--start +1h` or `--start 2026-11-28T09:00:00Z`");
    }
    let ahead = text.strip_prefix('+').unwrap_or(text);
    match ward_core::parse_duration(ahead) {
        Ok(d) => Ok(now.unix_timestamp().saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))),
        Err(_) => bail!("--start {text:?} is not a time: give RFC 3339 (`--start 2026-11-28T09:00:00Z`) or a duration from now (`--start +1h`)"),
    }
}

fn table(lines: &[u8], cols: &[(&str, &str)]) -> anyhow::Result<()> {
    table_or(lines, cols, "none")
}

/// Print JSON lines as a table of `cols` (heading, key); times for people; `empty` when none.
pub(crate) fn table_or(lines: &[u8], cols: &[(&str, &str)], empty: &str) -> anyhow::Result<()> {
    let rows: Vec<serde_json::Value> = lines
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect();
    if rows.is_empty() {
        println!("{empty}");
        return Ok(());
    }
    let header: Vec<&str> = cols.iter().map(|(h, _)| *h).collect();
    let mut table = crate::show::Table::new(&header);
    for r in rows {
        let cells: Vec<String> = cols
            .iter()
            .map(|(_, key)| match r.get(*key) {
                Some(serde_json::Value::String(s)) => {
                    crate::show::when_text(&ward_server::review::printable(s))
                }
                Some(serde_json::Value::Array(a)) if a.is_empty() => "-".into(),
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .map(ward_server::review::printable)
                            .unwrap_or_else(|| v.to_string())
                    })
                    .collect::<Vec<_>>()
                    .join(","),
                Some(serde_json::Value::Object(o)) => o
                    .get("name")
                    .and_then(|v| v.as_str())
                    .map(ward_server::review::printable)
                    .unwrap_or_default(),
                Some(serde_json::Value::Null) | None => "-".into(),
                Some(v) => v.to_string(),
            })
            .collect();
        table.row(cells);
    }
    table.print()?;
    Ok(())
}

pub async fn requests(args: ListArgs) -> anyhow::Result<ExitCode> {
    let empty = if args.all {
        "none"
    } else {
        "no pending requests (`ward requests --all` also shows approved, denied and expired ones)"
    };
    match access(&args.gw, AccessOp::ListRequests { all: args.all }).await? {
        AccessAnswer::Lines(l) if !args.json => table_or(
            &l,
            &[
                ("ID", "id"),
                ("STATE", "state_now"),
                ("REQUESTER", "requester"),
                ("DEVICE", "device"),
                ("START", "start"),
                ("END", "end"),
                ("APPROVALS", "approvals"),
                ("REASON", "reason"),
            ],
            empty,
        )?,
        other => return done(other),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn grants(args: ListArgs) -> anyhow::Result<ExitCode> {
    match access(&args.gw, AccessOp::ListGrants { all: args.all }).await? {
        AccessAnswer::Lines(l) if !args.json => table(
            &l,
            &[
                ("GRANT", "id"),
                ("PRINCIPAL", "principal"),
                ("DEVICE", "device"),
                ("START", "start"),
                ("END", "end"),
                ("APPROVERS", "approvers"),
                ("REVOKED", "revoked"),
            ],
        )?,
        other => return done(other),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn approve(args: ApproveArgs) -> anyhow::Result<ExitCode> {
    done(
        access(
            &args.gw,
            AccessOp::Approve {
                id: args.id.clone(),
                comment: args.comment.clone(),
            },
        )
        .await?,
    )
}

pub async fn deny(args: DenyArgs) -> anyhow::Result<ExitCode> {
    done(
        access(
            &args.gw,
            AccessOp::Deny {
                id: args.id.clone(),
                reason: args.reason.clone(),
            },
        )
        .await?,
    )
}

pub async fn revoke(args: RevokeArgs) -> anyhow::Result<ExitCode> {
    done(
        access(
            &args.gw,
            AccessOp::Revoke {
                grant: args.grant.clone(),
                reason: args.reason.clone(),
            },
        )
        .await?,
    )
}

/// Where a `ward user` command runs: through a gateway (as an admin identity) or on the gateway
/// host against its config's state dir.
#[derive(Debug, Args)]
pub struct UserTarget {
    /// On the gateway host: the gateway's config file (its state dir holds the user store).
    #[arg(long, value_name = "FILE", conflicts_with = "gateway")]
    config: Option<PathBuf>,
    /// Through the gateway, HOST:PORT (needs an admin identity).
    #[arg(long, env = "WARD_GATEWAY", value_name = "HOST:PORT")]
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
}

impl UserTarget {
    fn remote(&self) -> anyhow::Result<Option<Client>> {
        match (&self.gateway, &self.config) {
            (Some(g), None) => Ok(Some(crate::make_client(
                g,
                self.identity.as_ref(),
                self.ca.as_ref(),
                self.transport,
            )?)),
            (None, Some(_)) => Ok(None),
            _ => bail!("give --gateway HOST:PORT (through the gateway) or --config FILE (on the gateway host)"),
        }
    }

    fn local(
        &self,
    ) -> anyhow::Result<(
        std::sync::Arc<dyn ward_store::users::UserStore>,
        ward_core::config::LoginConfig,
    )> {
        let path = self
            .config
            .as_ref()
            .context("--config FILE is required here")?;
        let config = ward_server::gateway::load_config(path)?;
        std::fs::create_dir_all(&config.gateway.state_dir)?;
        // The store [store] names: the state dir's SQLite, or the PostgreSQL the gateways share.
        let db = ward_store::backend::Backend::open(&config, None)?;
        // TOTP seeds are sealed under the store's key-encryption key ([vault] names it; made at
        // the first start when this runs before any gateway did).
        let source =
            ward_store::keywrap::KeySource::of(&config.inject.vault, &config.gateway.state_dir);
        ward_store::keywrap::load_store_keys(&*db.shared_vault(), &source)
            .with_context(|| format!("the key-encryption key ({source})"))?;
        Ok((db.users, config.login))
    }
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user: prints a one-time initial password (the first login must change it) and, for MFA
    /// kinds, a TOTP QR code.
    Add {
        /// User name (also the certificate name).
        name: String,
        /// vendor | clinician | security | admin.
        #[arg(long)]
        kind: String,
        /// Organisation (a vendor's company).
        #[arg(long)]
        org: Option<String>,
        /// Roles, comma-separated (e.g. icu,nurse).
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// On the gateway host: read the password from stdin instead of generating one.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        target: UserTarget,
    },
    /// Disable a user: no more logins; their live sessions end within a second.
    Disable {
        /// User name.
        name: String,
        #[command(flatten)]
        target: UserTarget,
    },
    /// List users.
    List {
        #[command(flatten)]
        target: UserTarget,
    },
}

pub async fn user(cmd: UserCommand) -> anyhow::Result<ExitCode> {
    let now = SystemClock.now();
    match cmd {
        UserCommand::Add {
            name,
            kind,
            org,
            roles,
            password_stdin,
            target,
        } => {
            let roles: Vec<String> = roles.into_iter().filter(|r| !r.is_empty()).collect();
            if let Some(client) = target.remote()? {
                if password_stdin {
                    bail!("--password-stdin works on the gateway host only (--config); through the gateway the password is generated");
                }
                return done(
                    client
                        .access(AccessOp::UserAdd {
                            name,
                            kind,
                            org,
                            roles,
                        })
                        .await?,
                );
            }
            let password = if password_stdin {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s)?;
                Some(s.lines().next().unwrap_or("").to_owned())
            } else {
                None
            };
            let (db, login) = target.local()?;
            let new = ward_server::jit::NewUser {
                org,
                roles,
                password,
                ..ward_server::jit::NewUser::new(name.clone(), kind)
            };
            let created = ward_server::jit::create_user(&*db, &login, new, now)?;
            print_created(&name, &created.password, created.totp_uri.as_deref());
            Ok(ExitCode::SUCCESS)
        }
        UserCommand::Disable { name, target } => {
            if let Some(client) = target.remote()? {
                return done(client.access(AccessOp::UserDisable { name }).await?);
            }
            let (db, _) = target.local()?;
            if !db.disable_user(&name, now)? {
                bail!("no user {name}");
            }
            println!(
                "user {name} disabled; a running gateway ends their live sessions within a second"
            );
            Ok(ExitCode::SUCCESS)
        }
        UserCommand::List { target } => {
            let lines = match target.remote()? {
                Some(client) => match client.access(AccessOp::UserList).await? {
                    AccessAnswer::Lines(l) => l,
                    other => return done(other),
                },
                None => {
                    let (db, _) = target.local()?;
                    let mut out = Vec::new();
                    for u in db.list_users()? {
                        out.extend_from_slice(
                            serde_json::to_string(&ward_server::jit::user_line(&u))?.as_bytes(),
                        );
                        out.push(b'\n');
                    }
                    out
                }
            };
            table(
                &lines,
                &[
                    ("USER", "name"),
                    ("KIND", "kind"),
                    ("ORG", "org"),
                    ("ROLES", "roles"),
                    ("TOTP", "totp"),
                    ("MUST CHANGE PASSWORD", "must_change_password"),
                    ("DISABLED", "disabled"),
                ],
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
