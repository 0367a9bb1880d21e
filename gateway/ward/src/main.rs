//! The `ward` command: one binary for the gateway, the client, the CA and the security team's tools.
#![forbid(unsafe_code)]

mod access_cmd;
mod audit_cmd;
mod ca_cmd;
mod evidence_cmd;
mod gateways_cmd;
mod keys_cmd;
mod live_cmd;
mod review_cmd;
mod show;
mod store_cmd;
mod vault_cmd;
mod whoami;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use ward::telemetry::LogFormat;
use ward_ca::{Clock, SystemClock};
use ward_client::{Client, IdentityFiles, SessionEnd, Transport};
use ward_core::frame::{LockTarget, Reach, Request, Response};
use ward_core::Escaped;

/// Ward: zero-trust access to legacy medical devices.
///
/// Vendors and clinicians reach device consoles through the gateway with short-lived certificates;
/// every session is authorized on its own against policy.
#[derive(Debug, Parser)]
#[command(name = "ward", version, propagate_version = true)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Export tracing spans to this OTLP/HTTP endpoint (e.g. http://127.0.0.1:4318/v1/traces).
    #[arg(long, global = true, value_name = "URL", env = "WARD_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Show times in this machine's time zone instead of UTC (`--json` output stays RFC 3339 UTC).
    #[arg(long, global = true)]
    local: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Set up a development CA, identities, two simulated devices and a running gateway.
    Quickstart(QuickstartArgs),
    /// Run the gateway (or check its config).
    Gateway(GatewayArgs),
    /// Open a session to a device: on a local port (--listen) or on stdin/stdout.
    Connect(ConnectArgs),
    /// List the devices you may reach now, by request or by break-glass, as the gateway decides.
    Devices(DevicesArgs),
    /// Show who your identity says you are: name, kind, org, roles, serial, expiry, gateway.
    Whoami(whoami::WhoamiArgs),
    /// Lock a principal, device or organisation out: live sessions end, new ones are refused.
    Lock(LockArgs),
    /// Remove a lock.
    Unlock(UnlockArgs),
    /// List active locks.
    Locks(GatewayClientArgs),
    /// List the sessions in progress: who, device, since, bytes, break-glass (security and admin).
    Live(live_cmd::LiveArgs),
    /// End one live session with a reason its user is told (security and admin; audited).
    End(live_cmd::EndArgs),
    /// List and search recorded sessions (security and admin).
    Sessions(review_cmd::SessionsArgs),
    /// Replay a recorded session with its original timing (verifies it first).
    Replay(review_cmd::ReplayArgs),
    /// Export a recorded session as asciicast, pcap, raw bytes, JSON lines, or its operations.
    Export(review_cmd::ExportArgs),
    /// List a recorded session's operations (DICOM, HL7, HTTP, telnet commands), their answers
    /// and refusals; patient data masked unless --show-phi (security and admin, audited).
    Ops(review_cmd::OpsArgs),
    /// Verify recordings and the audit log; print the gateway's signing key.
    #[command(subcommand)]
    Audit(review_cmd::AuditCommand),
    /// Evidence bundles: export sessions with their audit trail, keys and a signed manifest into
    /// one file; verify one anywhere without the gateway.
    #[command(subcommand)]
    Evidence(evidence_cmd::EvidenceCommand),
    /// Ward's certificate authority: create it, issue short-lived identities, inspect certificates.
    #[command(subcommand)]
    Ca(ca_cmd::CaCommand),
    /// Log in with password and authenticator code, or with --sso through a browser sign-in;
    /// stores a short-lived certificate in ~/.ward/.
    #[command(
        after_help = "Examples:\n  ward login --user tech\n  ward login --sso                  \
                            # prints a URL and a code; approve them in the browser\n  ward login --sso --no-browser     \
                            # over ssh: open the URL on any device where you can sign in"
    )]
    Login(access_cmd::LoginArgs),
    /// Ask for access to a device for a time window (approvers decide).
    Request(access_cmd::RequestArgs),
    /// List pending access requests you made or may approve (--all: decided ones too).
    Requests(access_cmd::ListArgs),
    /// Approve an access request.
    Approve(access_cmd::ApproveArgs),
    /// Deny an access request.
    Deny(access_cmd::DenyArgs),
    /// List access grants (approved windows).
    Grants(access_cmd::ListArgs),
    /// Revoke a grant: live sessions on it end within a second.
    Revoke(access_cmd::RevokeArgs),
    /// Manage users who log in with `ward login` (admins).
    #[command(subcommand)]
    User(access_cmd::UserCommand),
    /// Device credentials the gateway logs in with, so nobody types them (admins): set, list,
    /// remove, rotate, rekey. Passwords are never arguments and never printed.
    #[command(subcommand)]
    Vault(vault_cmd::VaultCommand),
    /// The key-encryption key that seals the store's secrets (vault values, TOTP seeds):
    /// status, and online rotation (admins).
    #[command(subcommand)]
    Keys(keys_cmd::KeysCommand),
    /// The gateway's store: `migrate` moves a gateway's SQLite state into a PostgreSQL several
    /// gateways share (on the gateway host, the gateway stopped).
    #[command(subcommand)]
    Store(store_cmd::StoreCommand),
    /// The gateways sharing this gateway's store, with their health (on a gateway host; exits 1
    /// when one is down).
    Gateways(gateways_cmd::GatewaysArgs),
}

#[derive(Debug, Args)]
struct QuickstartArgs {
    /// Where to put the CA, identities, config and state.
    #[arg(long, default_value = "certs-dev")]
    dir: PathBuf,
    /// Gateway port on 127.0.0.1 (QUIC on UDP, TLS fallback on TCP).
    #[arg(long, default_value_t = 4433)]
    port: u16,
    /// Write the setup and exit without starting anything.
    #[arg(long)]
    no_run: bool,
    /// Put the simulated devices in a network namespace of their own that only the gateway dials
    /// into, so nothing else on this machine reaches them (needs root and iproute2's `ip netns`).
    #[arg(long, conflicts_with = "no_run")]
    isolated: bool,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct GatewayArgs {
    /// Run the gateway with this config file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate this config file (syntax, fields, CA and certificates) and exit.
    #[arg(long, value_name = "FILE")]
    check_config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct GatewayClientArgs {
    /// The gateway, HOST:PORT. For failover give several: comma-separated or the option repeated
    /// (or a name with several addresses). They are tried in order, each with the QUIC→TCP
    /// fallback; an address that does not connect within 5 s per transport (QUIC gets 1 s with
    /// --transport auto) is skipped, and the error lists every address tried.
    #[arg(
        long,
        env = "WARD_GATEWAY",
        value_name = "HOST:PORT[,HOST:PORT...]",
        required = true,
        action = clap::ArgAction::Append
    )]
    gateway: Vec<String>,
    /// Your identity: PREFIX.crt and PREFIX.key (default ~/.ward/identity, written by `ward login`).
    #[arg(long, env = "WARD_IDENTITY", value_name = "PREFIX")]
    identity: Option<PathBuf>,
    /// Ward's root certificate (default: root.crt beside the identity, then ~/.ward/root.crt).
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// How to reach the gateway.
    #[arg(long, value_enum, default_value_t = Transport::Auto)]
    transport: Transport,
}

impl GatewayClientArgs {
    pub(crate) fn client(&self) -> anyhow::Result<Client> {
        make_client(
            &self.gateway.join(","),
            self.identity.as_ref(),
            self.ca.as_ref(),
            self.transport,
        )
    }
}

/// A client for `gateway` with the given (or default) identity, after checking it has not expired.
pub(crate) fn make_client(
    gateway: &str,
    identity: Option<&PathBuf>,
    ca: Option<&PathBuf>,
    transport: Transport,
) -> anyhow::Result<Client> {
    let prefix = match identity {
        Some(p) => p.clone(),
        None => ward_client::home_dir()
            .map(|h| h.join(".ward").join("identity"))
            .context("no --identity given and $HOME is not set")?,
    };
    let files = IdentityFiles::resolve(&prefix, ca.map(|p| p.as_path()))?;
    preflight_identity(&files)?;
    Client::new(gateway, &files, transport)
}

/// Refuse early, with advice, when the user's own certificate has expired.
fn preflight_identity(files: &IdentityFiles) -> anyhow::Result<()> {
    let pem = std::fs::read_to_string(&files.cert)
        .with_context(|| format!("reading {}", files.cert.display()))?;
    let now = SystemClock.now();
    let inspection = ward_ca::inspect(&pem, None, now)
        .with_context(|| format!("{} is not a usable certificate", files.cert.display()))?;
    if inspection.remaining_seconds <= 0 {
        bail!(
            "your certificate {} expired at {}; get a new one (`ward login`, or `ward ca issue` for development identities)",
            files.cert.display(),
            show::when_text(&inspection.not_after)
        );
    }
    Ok(())
}

#[derive(Debug, Args)]
struct ConnectArgs {
    /// Device id, as in `ward devices`.
    device: String,
    #[command(flatten)]
    gw: GatewayClientArgs,
    /// Forward this local address: every connection to it becomes its own session.
    /// Without it, the session runs on stdin/stdout (usable as an ssh ProxyCommand).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Emergency access outside your usual rules, where the device's policy allows it: recorded,
    /// flagged, raised as a high-severity event, and capped (default 30 minutes). Needs --reason.
    #[arg(long, requires = "reason")]
    break_glass: bool,
    /// Why (required with --break-glass; recorded in the audit log).
    #[arg(long)]
    reason: Option<String>,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct DevicesArgs {
    #[command(subcommand)]
    cmd: Option<DevicesCmd>,
    #[command(flatten)]
    gw: Option<GatewayClientArgs>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum DevicesCmd {
    /// Pin the certificate of a device that speaks TLS itself (security/admin; audited). Without
    /// --confirm: the gateway connects to the device and shows the certificate it presents. With
    /// --confirm FINGERPRINT: pins it if the device presents that certificate now.
    Pin(PinArgs),
}

#[derive(Debug, Args)]
struct PinArgs {
    /// Device id, as in `ward devices`.
    device: String,
    /// The fingerprint to pin (`sha256:…`), as `ward devices pin DEVICE` showed it.
    #[arg(long, value_name = "SHA256", conflicts_with = "remove")]
    confirm: Option<String>,
    /// Remove the stored pin (the device's sessions are refused until it is pinned again).
    #[arg(long)]
    remove: bool,
    #[command(flatten)]
    gw: GatewayClientArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
#[group(id = "target", required = true, multiple = false)]
struct TargetArgs {
    /// A principal, as shown in sessions: its name (e.g. jdoe).
    #[arg(long, group = "target")]
    principal: Option<String>,
    /// A device id.
    #[arg(long, group = "target")]
    device: Option<String>,
    /// An organisation (a vendor's company).
    #[arg(long, group = "target")]
    org: Option<String>,
}

impl TargetArgs {
    fn target(&self) -> anyhow::Result<LockTarget> {
        Ok(match (&self.principal, &self.device, &self.org) {
            (Some(p), None, None) => LockTarget::Principal(p.clone()),
            (None, Some(d), None) => LockTarget::Device(d.clone()),
            (None, None, Some(o)) => LockTarget::Org(o.clone()),
            _ => bail!("give exactly one of --principal, --device, --org"),
        })
    }
}

#[derive(Debug, Args)]
struct LockArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// How long the lock lasts (e.g. 30m, 1h); without it, until `ward unlock`.
    #[arg(long = "for", value_name = "DURATION")]
    for_: Option<String>,
    /// Why (recorded in the audit log and shown to the locked-out user).
    #[arg(long)]
    reason: String,
    /// Lock even if the target matches no configured device, known org or known principal (e.g.
    /// a principal that has not connected yet); audited as forced.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    gw: GatewayClientArgs,
}

#[derive(Debug, Args)]
struct UnlockArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    gw: GatewayClientArgs,
}

/// jemalloc with background purging: memory freed when sessions close goes back to the system
/// within seconds (glibc's malloc kept the heap a load peak grew, as fragmentation).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // First, while the process has one thread: the local zone can only be read then.
    show::set_zone(cli.local);
    let _guard = match ward::telemetry::init(cli.log_format, cli.otlp_endpoint.as_deref()) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("ward: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ward: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// `ward connect` runs on one thread: a forwarder's work is a chain of hand-offs (local socket →
/// QUIC stream → UDP), and keeping them on one thread saves the cross-thread wake-ups that add
/// latency to every keystroke.
fn client_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    match command {
        Command::Ca(cmd) => ca_cmd::run(cmd, clock.as_ref()).map(|()| ExitCode::SUCCESS),
        Command::Gateway(args) => runtime()?.block_on(gateway(args, clock)),
        Command::Quickstart(args) => runtime()?.block_on(quickstart(args, clock)),
        Command::Connect(args) => client_runtime()?.block_on(connect(args)),
        Command::Devices(args) => runtime()?.block_on(devices(args)),
        Command::Whoami(args) => whoami::run(args),
        Command::Lock(args) => runtime()?.block_on(async move {
            let for_secs = match &args.for_ {
                Some(d) => Some(
                    ward_core::parse_duration(d)
                        .with_context(|| format!("--for {d}"))?
                        .as_secs(),
                ),
                None => None,
            };
            let req = Request::Lock {
                target: args.target.target()?,
                for_secs,
                reason: args.reason.clone(),
                force: args.force,
            };
            simple(&args.gw, req).await
        }),
        Command::Unlock(args) => runtime()?.block_on(async move {
            simple(
                &args.gw,
                Request::Unlock {
                    target: args.target.target()?,
                },
            )
            .await
        }),
        Command::Locks(args) => runtime()?.block_on(simple(&args, Request::ListLocks)),
        Command::Sessions(args) => runtime()?.block_on(review_cmd::sessions(args)),
        Command::Replay(args) => runtime()?.block_on(review_cmd::replay(args)),
        Command::Export(args) => runtime()?.block_on(review_cmd::export(args)),
        Command::Ops(args) => runtime()?.block_on(review_cmd::ops(args)),
        Command::Audit(cmd) => runtime()?.block_on(review_cmd::audit(cmd)),
        Command::Evidence(cmd) => runtime()?.block_on(evidence_cmd::run(cmd)),
        Command::Login(args) => client_runtime()?.block_on(access_cmd::login(args)),
        Command::Request(args) => client_runtime()?.block_on(access_cmd::request(args)),
        Command::Live(args) => client_runtime()?.block_on(live_cmd::live(args)),
        Command::End(args) => client_runtime()?.block_on(live_cmd::end(args)),
        Command::Requests(args) => client_runtime()?.block_on(access_cmd::requests(args)),
        Command::Approve(args) => client_runtime()?.block_on(access_cmd::approve(args)),
        Command::Deny(args) => client_runtime()?.block_on(access_cmd::deny(args)),
        Command::Grants(args) => client_runtime()?.block_on(access_cmd::grants(args)),
        Command::Revoke(args) => client_runtime()?.block_on(access_cmd::revoke(args)),
        Command::User(cmd) => client_runtime()?.block_on(access_cmd::user(cmd)),
        Command::Vault(cmd) => client_runtime()?.block_on(vault_cmd::run(cmd)),
        Command::Keys(cmd) => client_runtime()?.block_on(keys_cmd::run(cmd)),
        Command::Store(cmd) => store_cmd::run(cmd),
        Command::Gateways(args) => gateways_cmd::run(args),
    }
}

async fn simple(gw: &GatewayClientArgs, req: Request) -> anyhow::Result<ExitCode> {
    let client = gw.client()?;
    match client.request(&req).await? {
        Response::Ok { message } => println!("{}", Escaped(&message)),
        Response::Locks { locks } => {
            if locks.is_empty() {
                println!("no active locks");
                return Ok(ExitCode::SUCCESS);
            }
            let mut table = show::Table::new(&["TARGET", "UNTIL", "BY", "REASON"]);
            for l in locks {
                let until = match l.until_unix {
                    Some(t) => show::when_unix(t),
                    None => "until unlocked".into(),
                };
                table.row(vec![
                    Escaped(&l.target.to_string()).to_string(),
                    until,
                    Escaped(&l.by).to_string(),
                    Escaped(&l.reason).to_string(),
                ]);
            }
            table.print()?;
        }
        // The gateway's words: escaped, so its text cannot drive this terminal.
        other => bail!("{}", Escaped(&ward_client::unexpected(other).to_string())),
    }
    Ok(ExitCode::SUCCESS)
}

async fn gateway(args: GatewayArgs, clock: Arc<dyn Clock>) -> anyhow::Result<ExitCode> {
    if let Some(path) = args.check_config {
        let config = ward_server::gateway::load_config(&path)?;
        // Beyond syntax: the CA and the gateway certificate must load.
        ward_ca::Validator::from_dir(&config.gateway.ca)
            .with_context(|| format!("{}: ca = {}", path.display(), config.gateway.ca.display()))?;
        ward_transport::tls::load_certs(&config.gateway.cert)?;
        ward_transport::tls::load_key(&config.gateway.key)?;
        println!(
            "{}: ok ({} devices, {} rules)",
            path.display(),
            config.devices.len(),
            config.rules.len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let path = args.config.context("--config FILE is required")?;
    let config = ward_server::gateway::load_config(&path)?;
    let grace = config.gateway.limits.shutdown_grace;
    // Handlers go in before the listeners open: SIGHUP's default action is to kill, and a SIGHUP
    // (logrotate's) that lands as soon as the gateway answers must reload, not crash it.
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let gw = ward_server::gateway::Gateway::start(config, clock).await?;
    let sig = loop {
        tokio::select! {
            _ = int.recv() => break "SIGINT",
            _ = term.recv() => break "SIGTERM",
            _ = hup.recv() => {
                tracing::info!(signal = "SIGHUP", config = %path.display(), "reloading the config");
                // Logged and audited inside (config_reloaded / config_reload_failed); a refused
                // reload leaves the gateway running on the config it has.
                let _ = gw.reload(&path);
            }
        }
    };
    tracing::info!(signal = sig, "stopping");
    gw.shutdown(grace).await;
    Ok(ExitCode::SUCCESS)
}

async fn quickstart(args: QuickstartArgs, clock: Arc<dyn Clock>) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "ward".into());
    if args.no_run {
        let ports = ward::quickstart::Ports {
            gateway: args.port,
            telnet: 2300,
            http: 8000,
            web: 8443,
            consoles: 8444,
        };
        let setup = ward::quickstart::prepare(&args.dir, ports, None, clock.as_ref())?;
        println!("Wrote the development CA, identities and {} (devices are only started by `ward quickstart` without --no-run).", setup.config.display());
        println!(
            "Run the gateway: {exe} gateway --config {}",
            setup.config.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    // As for `ward gateway`: handlers in before anything answers; SIGHUP reloads ward.toml.
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let running = ward::quickstart::run(&args.dir, args.port, args.isolated, clock).await?;
    println!(
        "{}",
        ward::quickstart::instructions(&exe, &running.setup, running.gateway.quic_addr())
    );
    loop {
        tokio::select! {
            _ = int.recv() => break,
            _ = term.recv() => break,
            _ = hup.recv() => {
                // Audited inside; a refused reload keeps the running config.
                let _ = running.gateway.reload(&running.setup.config);
            }
        }
    }
    let ward::quickstart::Running {
        gateway, namespace, ..
    } = running;
    gateway.shutdown(Duration::from_secs(2)).await;
    // The devices' namespace goes last, after the gateway stopped dialling into it.
    drop(namespace);
    Ok(ExitCode::SUCCESS)
}

async fn connect(args: ConnectArgs) -> anyhow::Result<ExitCode> {
    let client = Arc::new(args.gw.client()?);
    if let Some(addr) = args.listen {
        if args.break_glass {
            bail!("--break-glass opens one session on stdin/stdout; it cannot be combined with --listen");
        }
        ward_client::listen(client, args.device, addr, None).await?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.break_glass {
        eprintln!("ward: BREAK-GLASS: this emergency session is recorded, flagged and reported to the security team");
    }
    let session = match client
        .open(&args.device, args.break_glass, args.reason.clone())
        .await
    {
        Ok(s) => s,
        Err(e) => {
            // The gateway's words: escaped, so its text cannot drive this terminal.
            eprintln!("ward: {}", Escaped(&format!("{e:#}")));
            return Ok(ExitCode::from(2));
        }
    };
    let via = session
        .gateway
        .as_ref()
        .map(|g| format!(" via {g}"))
        .unwrap_or_default();
    eprintln!(
        "ward: session {} to {} opened (rule {}){via}",
        session.session_id, args.device, session.rule
    );
    match session.run(tokio::io::stdin(), tokio::io::stdout()).await {
        SessionEnd::Completed => Ok(ExitCode::SUCCESS),
        SessionEnd::ClosedByGateway(reason) => {
            eprintln!("ward: session ended by the gateway: {}", Escaped(&reason));
            Ok(ExitCode::from(3))
        }
        SessionEnd::Broken(why) => {
            eprintln!("ward: session broke: {why}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `ward devices pin DEVICE [--confirm SHA256 | --remove]`.
async fn pin_device(args: PinArgs) -> anyhow::Result<ExitCode> {
    let client = args.gw.client()?;
    let req = Request::PinDevice(ward_core::frame::PinDevice {
        device: args.device,
        confirm: args.confirm,
        remove: args.remove,
    });
    let info = match client.request(&req).await? {
        Response::DevicePin(info) => info,
        Response::Denied { reason } => anyhow::bail!("refused: {reason}"),
        Response::Error { message, .. } => anyhow::bail!("{}", Escaped(&message)),
        other => return Err(ward_client::unexpected(other).into()),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("device:      {}", Escaped(&info.device));
    if let Some(p) = &info.presented {
        println!("presented:   {p}");
        println!("subject:     {}", Escaped(&info.subject));
        println!("issuer:      {}", Escaped(&info.issuer));
        println!(
            "valid:       {} to {}",
            Escaped(&info.not_before),
            Escaped(&info.not_after)
        );
    }
    println!(
        "pinned:      {} ({})",
        info.pinned.as_deref().unwrap_or("none"),
        Escaped(&info.source)
    );
    println!("{}", Escaped(&info.message));
    Ok(ExitCode::SUCCESS)
}

async fn devices(args: DevicesArgs) -> anyhow::Result<ExitCode> {
    let gw = match (args.cmd, args.gw) {
        (Some(DevicesCmd::Pin(pin)), _) => return pin_device(pin).await,
        (None, Some(gw)) => gw,
        (None, None) => anyhow::bail!("--gateway HOST:PORT (or WARD_GATEWAY) is required"),
    };
    let client = gw.client()?;
    let devices = match client.request(&Request::ListDevices).await? {
        Response::Devices { devices } => devices,
        other => return Err(ward_client::unexpected(other).into()),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&devices)?);
        return Ok(ExitCode::SUCCESS);
    }
    if devices.is_empty() {
        println!("no device is reachable with this identity now, by request or by break-glass");
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = show::Table::new(&[
        "DEVICE",
        "PROTOCOL",
        "ACCESS",
        "RULE",
        "OPERATIONS",
        "LABELS",
    ]);
    for d in &devices {
        let labels: Vec<String> = d.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let rule = if d.rule.is_empty() { "-" } else { &d.rule };
        let protocol = if d.tls {
            format!("{} (TLS)", d.protocol)
        } else {
            d.protocol.to_string()
        };
        table.row(vec![
            Escaped(&d.id).to_string(),
            protocol,
            d.reach.as_str().into(),
            Escaped(rule).to_string(),
            // What a session may do is known for a device open now; by request, once granted.
            if d.reach == Reach::Open {
                Escaped(&operations_cell(d.operations.as_ref())).to_string()
            } else {
                "-".into()
            },
            Escaped(&labels.join(",")).to_string(),
        ]);
    }
    table.print()?;
    if devices.iter().any(|d| d.operations.is_some()) {
        println!("operations: what a session may do on the device (docs/protocols.md); anything else is refused and audited");
    }
    let has = |r: &[Reach]| devices.iter().any(|d| r.contains(&d.reach));
    if has(&[Reach::Request, Reach::RequestOrBreakGlass]) {
        println!("request: ask with `ward request DEVICE --reason ... --duration 2h`; it opens once approvers approve");
    }
    if has(&[Reach::BreakGlass, Reach::RequestOrBreakGlass]) {
        println!("break-glass: emergencies only, `ward connect DEVICE --break-glass --reason ...` (recorded, flagged and reported)");
    }
    Ok(ExitCode::SUCCESS)
}

/// `ward devices`' OPERATIONS cell: `any` without a list, else the allowed and refused patterns.
fn operations_cell(ops: Option<&ward_core::operations::OpList>) -> String {
    let Some(ops) = ops else {
        return "any".into();
    };
    let mut parts = Vec::new();
    if !ops.allow.is_empty() {
        parts.push(format!("only {}", ops.allow.join(", ")));
    }
    if !ops.deny.is_empty() {
        parts.push(format!("not {}", ops.deny.join(", ")));
    }
    parts.join("; ")
}
