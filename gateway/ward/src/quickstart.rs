//! `ward quickstart`: a development CA, identities, a sample config, two simulated legacy devices and
//! a running gateway, with the commands to try it printed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use ward_ca::{Ca, Clock, IssueRequest, Kind};

/// What quickstart set up.
#[derive(Debug)]
pub struct Setup {
    /// The directory holding the CA, identities and config.
    pub dir: PathBuf,
    /// The config file written.
    pub config: PathBuf,
    /// The ports used.
    pub ports: Ports,
    /// The network namespace the devices are in (`--isolated`), if any.
    pub netns: Option<String>,
}

/// Ports quickstart uses.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// Gateway port (QUIC on UDP and the TLS fallback on TCP).
    pub gateway: u16,
    /// The telnet pump console.
    pub telnet: u16,
    /// The HTTP monitor console.
    pub http: u16,
    /// The web console (HTTPS on 127.0.0.1).
    pub web: u16,
    /// Devices' own HTTP consoles in the browser (HTTPS on 127.0.0.1, `[web] consoles_listen`).
    pub consoles: u16,
}

fn issue(
    ca: &Ca,
    dir: &Path,
    out: &str,
    req: IssueRequest,
    clock: &dyn Clock,
) -> anyhow::Result<()> {
    let issued = ca
        .issue(&req, clock.now())
        .with_context(|| format!("issuing the {out} identity"))?;
    issued.write(&dir.join(out))?;
    Ok(())
}

fn person(kind: Kind, name: &str, org: Option<&str>, roles: &[&str]) -> IssueRequest {
    IssueRequest {
        kind,
        name: name.into(),
        org: org.map(Into::into),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        ttl: None,
        csr_pem: None,
        dns: vec![],
        ips: vec![],
    }
}

/// Create (or reuse) the CA in `dir`, issue fresh identities and write `dir/ward.toml` (devices
/// dialled inside network namespace `netns` when given).
pub fn prepare(
    dir: &Path,
    ports: Ports,
    netns: Option<&str>,
    clock: &dyn Clock,
) -> anyhow::Result<Setup> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca = if dir.join("ca.json").exists() {
        Ca::load(dir)?
    } else {
        Ca::init(dir, "ward.dev", false, clock.now())?
    };
    let mut gw = person(Kind::Gateway, "gateway", None, &[]);
    gw.dns = vec!["localhost".into()];
    gw.ips = vec!["127.0.0.1".parse()?, "::1".parse()?];
    issue(&ca, dir, "gateway", gw, clock)?;
    issue(
        &ca,
        dir,
        "vendor",
        person(Kind::Vendor, "jdoe", Some("acme"), &[]),
        clock,
    )?;
    issue(
        &ca,
        dir,
        "clinician",
        person(Kind::Clinician, "alice", None, &["icu"]),
        clock,
    )?;
    issue(
        &ca,
        dir,
        "biomed",
        person(Kind::Clinician, "bob", None, &["biomed"]),
        clock,
    )?;
    issue(
        &ca,
        dir,
        "security",
        person(Kind::Security, "sam", None, &["soc"]),
        clock,
    )?;
    issue(
        &ca,
        dir,
        "admin",
        person(Kind::Admin, "root", None, &[]),
        clock,
    )?;
    let config = dir.join("ward.toml");
    let recipient = reviewer_key(dir)?;
    let text = sample_config(ports, netns) + &recording_section(&recipient);
    std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
    add_login_user(dir, &config, clock)?;
    add_console_user(dir, &config, clock)?;
    add_clinician_user(dir, &config, clock)?;
    Ok(Setup {
        dir: dir.to_path_buf(),
        config,
        ports,
        netns: netns.map(Into::into),
    })
}

/// The file holding the quickstart vendor's login (development only, mode 0600).
pub const USERS_FILE: &str = "login-users.txt";

/// Creates the `tech` vendor login (password + TOTP) once, writing its secrets to
/// [`USERS_FILE`] so a developer (or a test) can log in.
fn add_login_user(dir: &Path, config: &Path, clock: &dyn Clock) -> anyhow::Result<()> {
    use ward_store::users::UserStore;
    let cfg = ward_server::gateway::load_config(config)?;
    std::fs::create_dir_all(&cfg.gateway.state_dir)?;
    let db = ward_store::store::SqliteStore::open(&cfg.gateway.state_dir)?;
    if db.user("tech")?.is_some() {
        return Ok(());
    }
    let tech = ward_server::jit::NewUser {
        org: Some("acme".into()),
        // A development fixture whose secrets sit in a file for the printed flow and the tests;
        // users from `ward user add` must change their initial password at first login.
        must_change: false,
        ..ward_server::jit::NewUser::new("tech", "vendor")
    };
    let created = ward_server::jit::create_user(&db, &cfg.login, tech, clock.now())?;
    let secret = db
        .user("tech")?
        .and_then(|u| u.totp_secret)
        .unwrap_or_default();
    let text = format!(
        "# ward quickstart (development only): the vendor login `tech` (org acme)\nuser = tech\npassword = {}\ntotp_secret = {secret}\ntotp_uri = {}\n",
        created.password,
        created.totp_uri.unwrap_or_default()
    );
    write_private(&dir.join(USERS_FILE), &text)
}

/// The file holding the web console login of the quickstart's security user (development only,
/// mode 0600).
pub const CONSOLE_USER_FILE: &str = "web-login.txt";

/// The security user `sam` (the name of the `security` identity) who signs in to the web console
/// with password and TOTP, created once with its secrets in [`CONSOLE_USER_FILE`]; reused when it
/// exists. The web console always asks for a TOTP code, so `sam` gets a TOTP secret even though
/// `[login]` does not require one for security staff.
fn add_console_user(dir: &Path, config: &Path, clock: &dyn Clock) -> anyhow::Result<()> {
    use ward_store::users::UserStore;
    let cfg = ward_server::gateway::load_config(config)?;
    std::fs::create_dir_all(&cfg.gateway.state_dir)?;
    let db = ward_store::store::SqliteStore::open(&cfg.gateway.state_dir)?;
    if db.user("sam")?.is_some() {
        return Ok(());
    }
    let mut login = cfg.login.clone();
    login.mfa.push(ward_core::PrincipalKind::Security);
    let sam = ward_server::jit::NewUser {
        roles: vec!["soc".into()],
        // A development fixture, like `tech`: its secrets sit in a file for the printed flow and
        // the tests.
        must_change: false,
        ..ward_server::jit::NewUser::new("sam", "security")
    };
    let created = ward_server::jit::create_user(&db, &login, sam, clock.now())?;
    let secret = db
        .user("sam")?
        .and_then(|u| u.totp_secret)
        .unwrap_or_default();
    let text = format!(
        "# ward quickstart (development only): the web console login `sam` (security, role soc)\nuser = sam\npassword = {}\ntotp_secret = {secret}\ntotp_uri = {}\n",
        created.password,
        created.totp_uri.unwrap_or_default()
    );
    write_private(&dir.join(CONSOLE_USER_FILE), &text)
}

/// The file holding the web login of the quickstart's clinician (development only, mode 0600).
pub const CLINICIAN_USER_FILE: &str = "clinician-login.txt";

/// The clinician `alice` (role icu, the name of the `clinician` identity) who signs in to the web
/// console with password and TOTP and opens the monitor's HTTP console in the browser; created
/// once with its secrets in [`CLINICIAN_USER_FILE`], reused when it exists.
fn add_clinician_user(dir: &Path, config: &Path, clock: &dyn Clock) -> anyhow::Result<()> {
    use ward_store::users::UserStore;
    let cfg = ward_server::gateway::load_config(config)?;
    std::fs::create_dir_all(&cfg.gateway.state_dir)?;
    let db = ward_store::store::SqliteStore::open(&cfg.gateway.state_dir)?;
    if db.user("alice")?.is_some() {
        return Ok(());
    }
    // The web console always asks for a TOTP code.
    let mut login = cfg.login.clone();
    login.mfa.push(ward_core::PrincipalKind::Clinician);
    let alice = ward_server::jit::NewUser {
        roles: vec!["icu".into()],
        // A development fixture, like `tech` and `sam`.
        must_change: false,
        ..ward_server::jit::NewUser::new("alice", "clinician")
    };
    let created = ward_server::jit::create_user(&db, &login, alice, clock.now())?;
    let secret = db
        .user("alice")?
        .and_then(|u| u.totp_secret)
        .unwrap_or_default();
    let text = format!(
        "# ward quickstart (development only): the web login `alice` (clinician, role icu)\nuser = alice\npassword = {}\ntotp_secret = {secret}\ntotp_uri = {}\n",
        created.password,
        created.totp_uri.unwrap_or_default()
    );
    write_private(&dir.join(CLINICIAN_USER_FILE), &text)
}

/// The reviewer's age identity (development only, mode 0600): quickstart recordings are
/// encrypted to its public key, and `--identity-key` with this file reads them.
pub const REVIEWER_KEY_FILE: &str = "reviewer-age-key.txt";

/// The reviewer's recipient (`age1…`): from [`REVIEWER_KEY_FILE`] when an earlier quickstart in
/// this dir made one (its recordings stay readable), else from a new identity written there.
fn reviewer_key(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join(REVIEWER_KEY_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let recipient = text
            .lines()
            .find_map(|l| l.strip_prefix("# public key: "))
            .map(str::trim)
            .filter(|r| ward_recording::sealed::parse_recipient(r).is_ok());
        if let (Some(r), Ok(_)) = (recipient, ward_recording::sealed::load_identities(&text)) {
            return Ok(r.to_string());
        }
    }
    let id = ward_recording::sealed::NewIdentity::generate();
    let text = format!(
        "# The security team's key for `ward quickstart` recordings (development only): they are\n\
         # encrypted to its public key; read them with --identity-key {}.\n{}",
        path.display(),
        id.file_text()
    );
    write_private(&path, &text)?;
    Ok(id.recipient().to_string())
}

/// `[recording]`: quickstart recordings are encrypted to the reviewer's key.
fn recording_section(recipient: &str) -> String {
    format!(
        r#"
# Recordings are encrypted at rest to the security team's age key (docs/recording-format.md):
# the gateway holds only this public key; the identity is {REVIEWER_KEY_FILE} (keep it elsewhere
# in a real deployment). `ward audit verify` needs no key.
[recording]
recipients = ["{recipient}"]
"#
    )
}

/// Writes `text` to `path`, readable by its owner only.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// The quickstart config. Paths are relative to the config file's directory. With `netns`, the
/// gateway dials the devices inside that network namespace.
pub fn sample_config(p: Ports, netns: Option<&str>) -> String {
    let netns = match netns {
        Some(n) => format!(
            "netns = \"{n}\"                # dialled inside this network namespace (--isolated)\n"
        ),
        None => String::new(),
    };
    format!(
        r#"# Written by `ward quickstart` (development only). Paths are relative to this file.
[gateway]
listen = "127.0.0.1:{gw}"
listen_tcp = "127.0.0.1:{gw}"
ca = "."
cert = "gateway.crt"
key = "gateway.key"
state_dir = "state"

[[device]]
id = "pump-12"
address = "127.0.0.1:{telnet}"
protocol = "telnet"
labels = {{ class = "infusion-pump", vendor = "acme", unit = "icu" }}
{netns}
[[device]]
id = "monitor-3"
address = "127.0.0.1:{http}"
protocol = "http"
labels = {{ class = "patient-monitor", vendor = "vitalview", unit = "icu" }}
{netns}
[[rule]]
name = "acme-maintains-its-pumps"
who = {{ kind = "vendor", org = "acme" }}
devices = {{ labels = {{ vendor = "acme" }} }}
max_session = "2h"
inject = "service"                 # the gateway logs in with the vaulted `service` account (docs/vault.md)
operations.telnet = {{ deny = ["passwd*"] }}  # the vault owns the pump's password: `passwd` is refused (docs/protocols.md)

[[device]]
id = "pump-14"                     # same simulated console, but vendors need an approved request
address = "127.0.0.1:{telnet}"
protocol = "telnet"
labels = {{ class = "infusion-pump", vendor = "acme", unit = "icu", access = "jit" }}
maintenance = ["Tue 02:00-04:00"]  # vendor sessions only then, unless a grant covers the time
break_glass = true                 # clinicians may open a recorded, flagged 30-minute emergency session
{netns}
[[rule]]
name = "icu-nurses-see-icu-monitors"
who = {{ kind = "clinician", roles = ["icu"] }}
devices = {{ labels = {{ unit = "icu", class = "patient-monitor" }} }}
hours = "Mon-Sun 00:00-24:00"
inject = "console"                 # the monitor's Basic auth, from the vault
operations.http = {{ allow = ["GET *", "HEAD *"] }}  # nurses read the monitor's pages; any other request gets a 403

# Vendors hold no standing access to pump-14: they ask, one ICU clinician and one biomedical
# engineer approve, and the grant (that vendor, that device, that window) is the access.
[[approval]]
name = "pump-14-maintenance"
who = {{ kind = "vendor" }}
devices = {{ ids = ["pump-14"] }}
approvers = [ {{ kind = "clinician", roles = ["icu"] }}, {{ roles = ["biomed"] }} ]
max_duration = "8h"
pending_expiry = "1h"

[login]
cert_ttl = "8h"

# The web console (docs/web.md): HTTPS with the gateway's certificate; sign in with a client
# certificate from this CA, or with password + TOTP. Devices' own HTTP consoles open in the
# browser under https://127.0.0.1:{consoles}/d/<device>/, an origin of their own.
[web]
listen = "127.0.0.1:{web}"
consoles_listen = "127.0.0.1:{consoles}"
"#,
        gw = p.gateway,
        telnet = p.telnet,
        http = p.http,
        web = p.web,
        consoles = p.consoles
    )
}

/// Vault the simulated devices' credentials before the gateway starts: the pumps' `service`
/// account (the random password the simulated pump was given) and the monitor's `console`
/// account (its factory admin/admin). Replaces what an earlier quickstart in this dir stored.
fn vault_devices(
    config: &ward_core::Config,
    service: &ward_core::secret::Secret<String>,
    clock: &dyn Clock,
) -> anyhow::Result<()> {
    use ward_store::vault::{Kek, VaultStore};
    let state_dir = &config.gateway.state_dir;
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let source = Kek::source(&config.inject.vault, state_dir);
    let ring = source
        .load_ring(true)?
        .ok_or_else(|| anyhow::anyhow!("the key-encryption key ({source}) could not be created"))?;
    let db = ward_store::store::SqliteStore::open(state_dir)?;
    db.keys().set(ring);
    let now = clock.now().unix_timestamp();
    let admin = ward_core::secret::Secret::new("admin".to_string());
    for (device, account, user, secret) in [
        ("pump-12", "service", "service", service),
        ("pump-14", "service", "service", service),
        ("monitor-3", "console", "admin", &admin),
    ] {
        db.put_credential(device, account, user, secret, now)
            .with_context(|| format!("vaulting {device}/{account}"))?;
    }
    Ok(())
}

/// The commands a person runs to try the quickstart gateway.
pub fn instructions(exe: &str, setup: &Setup, gateway: SocketAddr) -> String {
    let d = setup.dir.display();
    let (telnet, http) = (setup.ports.telnet, setup.ports.http);
    let reach = match &setup.netns {
        Some(ns) => format!(
            "They listen on 127.0.0.1:{telnet} and 127.0.0.1:{http} inside network namespace {ns}, which only\n\
             Ward dials into: nothing else on this machine reaches them (telnet 127.0.0.1 {telnet} is refused here).\n\
             The namespace is deleted when quickstart stops."
        ),
        None => format!(
            "They listen on 127.0.0.1:{telnet} and 127.0.0.1:{http}, so any local user of this machine can also reach\n\
             them directly: this is a demo. In a hospital the devices sit on a network only Ward can reach;\n\
             `{exe} quickstart --isolated` (as root, with iproute2) shows that here by putting them in a\n\
             network namespace of their own."
        ),
    };
    format!(
        r#"
Ward is running (development CA in {d}, config {cfg}).
Devices: pump-12 (telnet console) and monitor-3 (HTTP console, Basic auth). Their passwords are in
Ward's vault: the pump's `service` account has a random password nobody was shown, the monitor keeps
its factory admin/admin. The gateway logs in for vendors and clinicians; nobody types a password.
{reach}

As the vendor (acme/jdoe) — reach the pump's telnet console (you land at `pump>`, already logged in):
  {exe} connect pump-12 --gateway {gateway} --identity {d}/vendor --listen 127.0.0.1:2323
  telnet 127.0.0.1 2323
At `pump>`, `rate` answers; `passwd` is refused by Ward and never reaches the pump (the vault owns
that password): every typed command is an operation, decided, recorded and findable.

As the clinician (alice, role icu) — reach the monitor's HTTP console (no credentials needed):
  {exe} connect monitor-3 --gateway {gateway} --identity {d}/clinician --listen 127.0.0.1:8080
  curl http://127.0.0.1:8080/
  curl -X POST http://127.0.0.1:8080/config      # Ward answers 403: the rule allows GET and HEAD only

The vault (admin identity): what is stored (never a value), and a rotation of the pump's password
on the device itself; vendors still reach its console afterwards:
  {exe} vault list --gateway {gateway} --identity {d}/admin
  {exe} vault rotate pump-12 service --gateway {gateway} --identity {d}/admin

The clinician is refused the vendor's pump:
  {exe} connect pump-12 --gateway {gateway} --identity {d}/clinician < /dev/null

What each identity may reach, as the gateway decides:
  {exe} devices --gateway {gateway} --identity {d}/vendor

Just-in-time access to pump-14 (no standing access). The vendor login `tech` is a development
fixture: its password and TOTP secret are in {d}/login-users.txt (or scan its otpauth URI into an
authenticator app), and unlike users made with `{exe} user add` it needs no --change-password at
its first login:
  {exe} login --gateway {gateway} --user tech --ca {d}/root.crt --out {d}/tech     # password + code
  {exe} request pump-14 --reason "firmware 2.1" --duration 1h --gateway {gateway} --identity {d}/tech
  {exe} requests --gateway {gateway} --identity {d}/clinician                       # alice (ICU)
  {exe} approve REQUEST --gateway {gateway} --identity {d}/clinician
  {exe} approve REQUEST --gateway {gateway} --identity {d}/biomed                    # bob (biomed)
Every session is checked against the live grant, so tech's certificate opens pump-14 as soon as the
second approval lands (logging in again is optional: it gives a certificate that ends with the grant):
  {exe} connect pump-14 --gateway {gateway} --identity {d}/tech --listen 127.0.0.1:2324
  {exe} grants --gateway {gateway} --identity {d}/security
  {exe} revoke GRANT --reason "done early" --gateway {gateway} --identity {d}/security

Break-glass (emergency, recorded and flagged): alice has no rule for pump-14, but may break the glass:
  {exe} connect pump-14 --break-glass --reason "pump alarm, patient bed 4" --gateway {gateway} --identity {d}/clinician

As security (sam) — lock the vendor out, then let them back:
  {exe} lock --org acme --for 1h --reason "incident 42" --gateway {gateway} --identity {d}/security
  {exe} unlock --org acme --gateway {gateway} --identity {d}/security

The web console, for the security team and approvers: {web_url}
  Sign in as sam (security) with the password and a TOTP code from {d}/web-login.txt (scan its
  otpauth URI into an authenticator app), or with the `security` client certificate:
  openssl pkcs12 -export -in {d}/security.crt -inkey {d}/security.key -out {d}/security.p12
  and import {d}/security.p12 into the browser. The browser must trust {d}/root.crt (import it as
  an authority) or it warns about the gateway's certificate. From a script:
  curl --cacert {d}/root.crt --cert {d}/security.crt --key {d}/security.key {web_url}api/v1/whoami

The monitor's own web console in the browser, through Ward: {monitor_url}
  Sign in at {web_url} as alice (clinician, role icu) with the password and TOTP code from
  {d}/clinician-login.txt first (or import {d}/clinician.crt and .key as a .p12, as above), then
  open that address: the monitor's pages come without its password (the vault injects it), stay
  under /d/monitor-3/, and are one recorded session; Ward refuses anything but GET and HEAD.

As security (sam) — every session is recorded, encrypted at rest to the reviewer's age key
{d}/{key} (mode 0600; the gateway holds only its public key, `[recording] recipients`);
list, replay, export and verify them (verifying needs no key):
  {exe} sessions --state-dir {d}/state
  {exe} replay SESSION --identity-key {d}/{key} --state-dir {d}/state   # SESSION from the listing
  {exe} export SESSION --format asciicast --out session.cast --identity-key {d}/{key} --state-dir {d}/state
  {exe} audit verify --all --state-dir {d}/state
  {exe} sessions --op 'telnet:passwd*' --state-dir {d}/state   # sessions by what was done in them
  {exe} ops SESSION --identity-key {d}/{key} --state-dir {d}/state   # a session's operations (patient data masked)
  {exe} sessions --gateway {gateway} --identity {d}/security   # the same, through the gateway (audited)

Press Ctrl-C to stop.
"#,
        cfg = setup.config.display(),
        key = REVIEWER_KEY_FILE,
        web_url = console_url(setup),
        monitor_url = device_console_url(setup, "monitor-3"),
    )
}

/// The web console's address, as printed.
pub fn console_url(setup: &Setup) -> String {
    format!("https://127.0.0.1:{}/", setup.ports.web)
}

/// A device's HTTP console in the browser (the consoles' origin), as printed.
pub fn device_console_url(setup: &Setup, device: &str) -> String {
    format!("https://127.0.0.1:{}/d/{device}/", setup.ports.consoles)
}

/// A running quickstart: the gateway, what was set up, and the devices' namespace (deleted when
/// this is dropped).
#[derive(Debug)]
pub struct Running {
    /// The gateway.
    pub gateway: ward_server::gateway::Gateway,
    /// The CA, identities and config.
    pub setup: Setup,
    /// The devices' network namespace under `--isolated`.
    pub namespace: Option<ward_server::netns::Namespace>,
}

/// The namespace `--isolated` makes for this process.
pub fn namespace_name() -> String {
    format!("ward-quickstart-{}", std::process::id())
}

/// Two TCP ports free on 127.0.0.1 now (held together while drawn, so they differ), for the web
/// console and the devices' consoles (the gateway binds them moments later; if something takes
/// one meanwhile, the start fails naming `[web] listen` or `[web] consoles_listen`).
fn free_loopback_ports() -> anyhow::Result<(u16, u16)> {
    let bind = || {
        std::net::TcpListener::bind(("127.0.0.1", 0))
            .context("finding a free port for the web console")
    };
    let (a, b) = (bind()?, bind()?);
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}

/// Start the simulated devices (inside a network namespace of their own when `isolated`), prepare
/// the setup for their ports, and start the gateway.
pub async fn run(
    dir: &Path,
    gateway_port: u16,
    isolated: bool,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Running> {
    let any: SocketAddr = "127.0.0.1:0".parse()?;
    let namespace = if isolated {
        let name = namespace_name();
        Some(
            ward_server::netns::Namespace::create(&name)
                .with_context(|| format!("--isolated: making network namespace {name}"))?,
        )
    } else {
        None
    };
    let listener =
        |ns: Option<&ward_server::netns::Namespace>| -> anyhow::Result<tokio::net::TcpListener> {
            let std = match ns {
                Some(ns) => ward_server::netns::bind_in(ns.name(), any)?,
                None => {
                    let l = std::net::TcpListener::bind(any)?;
                    l.set_nonblocking(true)?;
                    l
                }
            };
            Ok(tokio::net::TcpListener::from_std(std)?)
        };
    // The pump's `service` password: random, known only to the simulated pump and the vault.
    let pump_accounts = crate::sim::factory_accounts();
    let service = ward_server::services::vault::generate_password();
    pump_accounts
        .lock()
        .map_err(|_| anyhow::anyhow!("simulated pump accounts poisoned"))?
        .insert("service".into(), service.expose().clone());
    let telnet = crate::sim::telnet_console_with(listener(namespace.as_ref())?, pump_accounts)?;
    let http = crate::sim::http_console_on(listener(namespace.as_ref())?)?;
    let (web, consoles) = free_loopback_ports()?;
    let ports = Ports {
        gateway: gateway_port,
        telnet: telnet.addr.port(),
        http: http.addr.port(),
        web,
        consoles,
    };
    let netns = namespace.as_ref().map(|n| n.name().to_owned());
    let setup = prepare(dir, ports, netns.as_deref(), clock.as_ref())?;
    let config = ward_server::gateway::load_config(&setup.config)?;
    vault_devices(&config, &service, clock.as_ref())?;
    let gateway = ward_server::gateway::Gateway::start(config, clock)
        .await
        .with_context(|| format!("starting the gateway on port {gateway_port} (is another quickstart running? try --port)"))?;
    Ok(Running {
        gateway,
        setup,
        namespace,
    })
}
