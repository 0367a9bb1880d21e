//! The gateway's TOML configuration, parsed into types that are valid by construction.
//!
//! [`Config::parse`] reads the text (the caller reads the file) with serde and
//! `deny_unknown_fields` into raw, span-carrying structs, then checks every semantic rule and
//! builds [`Device`]s, [`Rule`]s and [`GatewayConfig`]. Every error names the file, the line and
//! column, and the field (`rule[1].hours`), see [`ConfigError`]. The format is documented in
//! `docs/config.md`; [`SAMPLE_CONFIG`] is a complete commented example.

// `ConfigError` is ~150 bytes. Parsing runs once at startup and returns the first error, so the
// size costs nothing measurable; boxing it would only put the public fields behind a pointer.
#![allow(clippy::result_large_err)]

mod audit;
mod inject;
mod oidc;
mod recording;
mod review;
mod store;
pub use audit::{parse_anchor_sink, AnchorSink, AuditConfig};
pub use inject::InjectConfig;
pub use oidc::{is_loopback, OidcProvider, SsoMfa};
pub use recording::{
    parse_size, ObjectStoreConfig, RecordingConfig, Retention, RetentionMode, DEFAULT_SPOOL_DIR,
};
pub use review::ReviewConfig;
pub use store::{check_store_url, PostgresConfig, StoreConfig, StoreTls};

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use serde_spanned::Spanned;
use time::UtcOffset;

use crate::access::{ApprovalPolicy, BreakGlass, DEFAULT_MAX_DURATION, DEFAULT_PENDING_EXPIRY};
use crate::device::{check_label, check_name, DeviceError};
pub use crate::device::{CertPin, Device, DeviceAddress, DeviceId, DeviceTls, Protocol};
use crate::duration::{parse_duration, DurationError};
use crate::operations::{OpList, OpProtocol, Operations};
pub use crate::policy::{DeviceSelector, Rule, Who};
use crate::principal::{PrincipalKind, UnknownPrincipalKind};
use crate::window::{parse_offset, Hours, Window, WindowError};

/// A complete, commented configuration. It parses (a unit test checks), and `docs/config.md`
/// walks through it.
pub const SAMPLE_CONFIG: &str = r#"# Ward gateway configuration. Relative paths are relative to this file's directory.

[gateway]
listen = "127.0.0.1:4433"          # QUIC (UDP)
listen_tcp = "127.0.0.1:4433"      # TLS over TCP fallback; omit to disable
ca = "certs-dev"                   # CA dir: root.crt, issuing.crt, ca.json
cert = "certs-dev/gateway.crt"
key = "certs-dev/gateway.key"
state_dir = "var/ward"             # locks, audit log, recordings
# timezone_offset = "+01:00"       # fixed offset for rule hours; default UTC
# Limits (these are the defaults):
# handshake_timeout = "10s"
# idle_timeout = "15m"
# device_connect_timeout = "5s"
# shutdown_grace = "10s"
# max_connections = 1024
# max_connections_per_source = 64  # both transports together
# max_anonymous_connections = 256  # handshaking or certificate-less; the rest is reserved
# first_request_timeout = "10s"     # from handshake to a connection's first request
# anonymous_timeout = "60s"         # a certificate-less connection's whole life (its one login)
# max_sessions = 4096
# max_sessions_per_connection = 256
# disk_alert_percent = 90          # recording disk this full: high-severity audit alert
# disk_refuse_percent = 98         # this full: new sessions refused (fail closed)

[[device]]
id = "pump-12"
address = "10.20.0.12:23"          # ip:port or hostname:port
protocol = "telnet"                # telnet | http | dicom | hl7 | raw
labels = { class = "infusion-pump", vendor = "acme", unit = "icu" }
maintenance = ["Tue 02:00-04:00", "Thu 02:00-04:00"]  # vendor sessions only then, unless a grant covers the time
break_glass = true                 # clinicians may open a recorded emergency session (30m cap)
login = { profile = "generic-telnet" }  # how the gateway logs in for a rule with `inject` (docs/vault.md)

[[device]]
id = "monitor-3"
address = "monitor-3.icu.hospital.example:80"
protocol = "http"
labels = { class = "patient-monitor", vendor = "globex", unit = "icu" }
break_glass = { who = { kind = "clinician", roles = ["icu"] }, max = "15m" }
http_auth = { scheme = "basic" }   # or { header = "X-Api-Key" }: where an injected credential goes
# tls = true                       # a device serving TLS itself (HTTPS, DICOM TLS): only its pinned
                                   # certificate is accepted (`ward devices pin monitor-3`), or
                                   # tls = { pin = "sha256:…", server_name = "monitor-3.local" }

[[device]]
id = "pacs-1"
address = "10.30.0.5:104"
protocol = "dicom"
labels = { class = "pacs", unit = "radiology" }

# Device credentials (`ward vault set DEVICE ACCOUNT`) are encrypted under this key: a 0600 file
# (relative to state_dir, created on first use) or an environment variable (base64 of 32 bytes).
[vault]
key_file = "vault.key"
# key_env = "WARD_VAULT_KEY"
# rotate_every = "30d"             # `ward vault rotate` on a schedule

# A console whose prompts differ from the defaults (login:/Username:, Password:, a > # $ prompt).
[[login_profile]]
name = "acme-pump"
password_prompt = ["password:", "pin:"]
success = ["pump>"]
timeout = "10s"
rotate = { command = "passwd", steps = [
  { expect = ["old password:"], send = "old" },
  { expect = ["new password:"], send = "new" },
  { expect = ["retype new password:"], send = "new" },
], success = ["password changed"] }

[[rule]]
name = "acme-maintains-its-pumps"
who = { kind = "vendor", org = "acme" }
devices = { labels = { vendor = "acme" } }
max_session = "2h"
inject = "service"                 # the gateway logs in with the vaulted `service` account: nobody types its password
operations.telnet = { deny = ["factory-reset*", "passwd*"] }  # typed commands refused (docs/protocols.md)

[[rule]]
name = "icu-nurses-see-icu-consoles"
who = { kind = "clinician", roles = ["icu", "nurse"] }
devices = { ids = ["monitor-3"] }
hours = "Mon-Fri 07:00-19:00"
operations.http = { allow = ["GET /*"] }  # read the monitor's pages; any other request gets a 403

[[rule]]
name = "radiology-weekend-maintenance"
who = { kind = "vendor", org = "globex" }
devices = { labels = { unit = "radiology" } }
hours = ["Sat 22:00-06:00", "Sun 22:00-06:00"]
max_session = "4h"
operations.dicom = { allow = ["C-ECHO", "C-FIND"] }  # check and query; never store or move studies

[[rule]]
name = "admins-reach-everything"
who = { kind = "admin" }
devices = { all = true }
max_session = "1h"

# Vendors hold no standing access to pumps: they ask (`ward request`), and one ICU clinician and
# one biomedical engineer approve. The approved window is the grant: it opens the device to that
# vendor alone, even outside maintenance windows, and the vendor's login certificate ends with it.
[[approval]]
name = "pump-maintenance"
who = { kind = "vendor" }
devices = { labels = { class = "infusion-pump" } }
approvers = [ { kind = "clinician", roles = ["icu"] }, { roles = ["biomed"] } ]
required = 2                       # distinct people; at least one per approver group
max_duration = "8h"
pending_expiry = "1h"

[login]
mfa = ["security"]                 # TOTP is always required for vendor and admin; add kinds here
cert_ttl = "8h"                    # login certificates; capped by the CA's per-kind cap and grants

[web]
listen = "127.0.0.1:8443"          # the web console (docs/web.md); omit to turn it off
consoles_listen = "127.0.0.1:8444" # devices' own HTTP consoles in the browser, on an origin of their own
idle_timeout = "15m"               # a browser session ends after this long without a request
max_session = "8h"                 # ...and this long after sign-in

# Recordings encrypted to [recording] recipients are opened by reviewers with their own key
# (`ward replay --identity-key FILE`). Give the gateway a reviewer identity only if the web console
# must play them: the gateway host can then read them (docs/recording-format.md).
# [review]
# identity_file = "/etc/ward/reviewer-age-key.txt"   # 0600

# Recordings encrypted at rest to the security team's age keys (docs/recording-format.md). Without
# a recipient they are stored in plain text and the gateway warns at start.
# [recording]
# recipients = ["age1..."]         # public keys only (`age-keygen -y KEYFILE` prints one)
# recipients_file = "/etc/ward/recording-recipients.txt"   # one age1... per line, # comments

# Off-host anchors of the audit log's signed checkpoints and every recording's final checkpoint
# (docs/recording-format.md, "Anchors"): a separate append-only mount, an HTTP collector, OTel.
# [audit]
# anchors = ["file:/mnt/ward-anchors/anchors.jsonl", "https://collector.example/ward", "otel"]
# anchor_ca_file = "/etc/ward/collector-ca.pem"

# Sign-in with the hospital's identity provider (OpenID Connect; docs/web.md, docs/config.md):
# [[oidc]]
# name = "hospital"
# display = "St Mary's account"
# issuer = "https://login.hospital.example/realms/staff"
# client_id = "ward"
# client_secret_file = "/etc/ward/oidc-secret"
# redirect_url = "https://ward.hospital.example:8443/api/v1/sso/callback"
# scopes = ["openid", "profile", "groups"]
# require_amr = ["mfa"]            # the IdP must report MFA (or mfa = "ward": Ward's TOTP after it)
# [[oidc.map]]
# claim = "groups"
# value = "icu-nurses"
# kind = "clinician"
# org = "st-mary"
# roles = ["icu"]
"#;

/// Line and column (both 1-based, column in characters) of an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

impl Location {
    fn of(text: &str, offset: usize) -> Location {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = text.get(..offset).unwrap_or("");
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
        Location { line, column }
    }
}

/// A configuration error: `ward.toml:12:9: rule[1].hours: bad window "Mon-Fry 07:00-19:00": …`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file name given to [`Config::parse`].
    pub file: String,
    /// Where in the file, when known.
    pub location: Option<Location>,
    /// The field path, e.g. `gateway.listen`, `device[2].address`, `rule[0].who`
    /// (array indexes are 0-based, in file order).
    pub field: String,
    /// What is wrong.
    pub kind: ConfigErrorKind,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some(Location { line, column }) => write!(f, "{}:{line}:{column}: ", self.file)?,
            None => write!(f, "{}: ", self.file)?,
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        write!(f, "{}", self.kind)
    }
}

/// What is wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigErrorKind {
    /// TOML syntax, a wrong value type, an unknown or a missing field.
    #[error("{0}")]
    Syntax(String),
    /// Two devices with the same id.
    #[error("duplicate device id {id:?} (first defined on line {first_line})")]
    DuplicateDevice {
        /// The id.
        id: String,
        /// Line of the first definition.
        first_line: usize,
    },
    /// Two rules with the same name.
    #[error("duplicate rule name {name:?} (first defined on line {first_line})")]
    DuplicateRule {
        /// The name.
        name: String,
        /// Line of the first definition.
        first_line: usize,
    },
    /// A bad device id, rule name, label, protocol or address.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// A bad duration string.
    #[error(transparent)]
    Duration(#[from] DurationError),
    /// A bad `hours` window or `timezone_offset`.
    #[error(transparent)]
    Window(#[from] WindowError),
    /// A bad `who.kind`.
    #[error(transparent)]
    Kind(#[from] UnknownPrincipalKind),
    /// A rule names a device id that no `[[device]]` defines.
    #[error("no device with id {0:?} is defined")]
    UnknownDevice(String),
    /// A rule's `who` sets no field, which would match nobody (or, worse, everybody).
    #[error("`who` must set at least one of kind, org, name, roles")]
    EmptyWho,
    /// A rule's `devices` does not set exactly one of `ids`, `labels`, `all = true`.
    #[error("`devices` must set exactly one of ids = [..], labels = {{..}}, all = true")]
    Selector,
    /// A listen address that is not `ip:port`.
    #[error(
        "bad listen address {0:?}: expected ip:port, e.g. \"127.0.0.1:4433\" or \"[::]:4433\""
    )]
    Listen(String),
    /// An empty string where a value is required.
    #[error("must not be empty")]
    Empty,
    /// A limit that is zero or inconsistent with another.
    #[error("{0}")]
    Limit(String),
}

/// Connection, session and timing limits, with safe defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest a TLS/QUIC handshake may take (then `first_request_timeout` runs). Default 10s.
    pub handshake_timeout: Duration,
    /// A session with no bytes either way for this long is closed. Default 15m.
    pub idle_timeout: Duration,
    /// Longest the gateway waits for a device's TCP connect. Default 5s.
    pub device_connect_timeout: Duration,
    /// On shutdown, sessions get this long before they are cut. Default 10s.
    pub shutdown_grace: Duration,
    /// Concurrent client connections. Default 1024.
    pub max_connections: u32,
    /// Concurrent connections from one source IP, QUIC and TCP together. Default 64.
    pub max_connections_per_source: u32,
    /// Concurrent connections that have not presented a certificate (handshaking, or anonymous
    /// login-only), all sources; the rest of `max_connections` is reserved for certificate
    /// holders. When full, the oldest such connection of the source holding the most is evicted
    /// to make room. Default 256.
    pub max_anonymous_connections: u32,
    /// Longest from the end of the handshake to a connection's first request. Default 10s.
    pub first_request_timeout: Duration,
    /// Longest a connection without a client certificate stays open (its handshake and its one
    /// login included). Default 60s.
    pub anonymous_timeout: Duration,
    /// Concurrent device sessions, all clients. Default 4096.
    pub max_sessions: u32,
    /// Concurrent sessions (streams) in one connection. Default 256.
    pub max_sessions_per_connection: u32,
    /// Recording disk usage (percent) that raises a high-severity alert. Default 90.
    pub disk_alert_percent: u8,
    /// Recording disk usage (percent) above which new sessions are refused. Default 98.
    pub disk_refuse_percent: u8,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(15 * 60),
            device_connect_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(10),
            max_connections: 1024,
            max_connections_per_source: 64,
            max_anonymous_connections: 256,
            first_request_timeout: Duration::from_secs(10),
            anonymous_timeout: Duration::from_secs(60),
            max_sessions: 4096,
            max_sessions_per_connection: 256,
            disk_alert_percent: 90,
            disk_refuse_percent: 98,
        }
    }
}

/// The `[gateway]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    /// QUIC (UDP) listen address.
    pub listen: SocketAddr,
    /// TLS-over-TCP fallback listen address; `None` = disabled.
    pub listen_tcp: Option<SocketAddr>,
    /// CA directory (`root.crt`, `issuing.crt`, `ca.json`).
    pub ca: PathBuf,
    /// Gateway certificate chain (PEM).
    pub cert: PathBuf,
    /// Gateway private key (PEM).
    pub key: PathBuf,
    /// Where locks, audit log and recordings live.
    pub state_dir: PathBuf,
    /// Fixed offset at which rule `hours` are evaluated. Default UTC.
    pub timezone_offset: UtcOffset,
    /// Limits.
    pub limits: Limits,
}

impl GatewayConfig {
    /// The `[gateway]` fields that differ between the running config (`self`) and `new` and that
    /// cannot change without a restart, named as in the file (`gateway.listen`). That is every
    /// field but `timezone_offset`, which only shapes rule hours and maintenance windows (reloaded
    /// with them): listeners, TLS material and the state dir are bound at start, and the limits
    /// are read as one fixed set for the gateway's life (some size the QUIC transport and the
    /// disk watch). Destructured, so a new field does not compile until it is classified here.
    pub fn restart_only_changes(&self, new: &GatewayConfig) -> Vec<&'static str> {
        let GatewayConfig {
            listen,
            listen_tcp,
            ca,
            cert,
            key,
            state_dir,
            timezone_offset: _,
            limits,
        } = self;
        let Limits {
            handshake_timeout,
            idle_timeout,
            device_connect_timeout,
            shutdown_grace,
            max_connections,
            max_connections_per_source,
            max_anonymous_connections,
            first_request_timeout,
            anonymous_timeout,
            max_sessions,
            max_sessions_per_connection,
            disk_alert_percent,
            disk_refuse_percent,
        } = limits;
        let n = &new.limits;
        [
            ("gateway.listen", *listen != new.listen),
            ("gateway.listen_tcp", *listen_tcp != new.listen_tcp),
            ("gateway.ca", *ca != new.ca),
            ("gateway.cert", *cert != new.cert),
            ("gateway.key", *key != new.key),
            ("gateway.state_dir", *state_dir != new.state_dir),
            (
                "gateway.handshake_timeout",
                *handshake_timeout != n.handshake_timeout,
            ),
            ("gateway.idle_timeout", *idle_timeout != n.idle_timeout),
            (
                "gateway.device_connect_timeout",
                *device_connect_timeout != n.device_connect_timeout,
            ),
            (
                "gateway.shutdown_grace",
                *shutdown_grace != n.shutdown_grace,
            ),
            (
                "gateway.max_connections",
                *max_connections != n.max_connections,
            ),
            (
                "gateway.max_connections_per_source",
                *max_connections_per_source != n.max_connections_per_source,
            ),
            (
                "gateway.max_anonymous_connections",
                *max_anonymous_connections != n.max_anonymous_connections,
            ),
            (
                "gateway.first_request_timeout",
                *first_request_timeout != n.first_request_timeout,
            ),
            (
                "gateway.anonymous_timeout",
                *anonymous_timeout != n.anonymous_timeout,
            ),
            ("gateway.max_sessions", *max_sessions != n.max_sessions),
            (
                "gateway.max_sessions_per_connection",
                *max_sessions_per_connection != n.max_sessions_per_connection,
            ),
            (
                "gateway.disk_alert_percent",
                *disk_alert_percent != n.disk_alert_percent,
            ),
            (
                "gateway.disk_refuse_percent",
                *disk_refuse_percent != n.disk_refuse_percent,
            ),
        ]
        .into_iter()
        .filter_map(|(field, changed)| changed.then_some(field))
        .collect()
    }
}

/// A whole, validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `[gateway]`.
    pub gateway: GatewayConfig,
    /// `[[device]]`, in file order, ids unique.
    pub devices: Vec<Device>,
    /// `[[rule]]`, in file order, names unique.
    pub rules: Vec<Rule>,
    /// `[[approval]]`: devices whose sessions need an approved access request.
    pub approvals: Vec<ApprovalPolicy>,
    /// `[login]`.
    pub login: LoginConfig,
    /// `[access]`.
    pub access: AccessConfig,
    /// `[vault]`, `[[login_profile]]`, devices' `login`/`http_auth` and rules' `inject`: what the
    /// gateway logs in to devices with (docs/vault.md).
    pub inject: InjectConfig,
    /// Rules' `operations`: the operation lists each rule gives, by rule name (docs/protocols.md).
    /// A rule without `operations` is absent.
    pub operations: BTreeMap<String, Operations>,
    /// `[web]`: the web console's listener and its sign-in sessions (docs/web.md). Off unless
    /// `listen` is set.
    pub web: WebConfig,
    /// `[[oidc]]`: the hospital's OpenID providers people sign in with (docs/web.md), in file
    /// order, names unique.
    pub oidc: Vec<OidcProvider>,
    /// `[recording]`: the age recipients recordings are encrypted to (docs/recording-format.md).
    pub recording: RecordingConfig,
    /// `[review]`: a reviewer identity the gateway may open encrypted recordings with (none by
    /// default).
    pub review: ReviewConfig,
    /// `[audit]`: where the audit log's signed checkpoints are anchored off the host.
    pub audit: AuditConfig,
    /// `[store]`: the embedded SQLite store (default) or a PostgreSQL shared by several gateways.
    pub store: StoreConfig,
}

/// The `[web]` table: the web console (docs/web.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebConfig {
    /// Where the console listens (HTTPS, TLS 1.3, the gateway's certificate); `None`: off.
    pub listen: Option<SocketAddr>,
    /// Where devices' own HTTP consoles are served to browsers (`/d/<device>/…`), on an origin
    /// (port) other than the console's, so a device's pages can never script the console;
    /// `None`: off. Needs `listen`.
    pub consoles_listen: Option<SocketAddr>,
    /// A signed-in browser session ends after this long without a request (default 15 min).
    pub idle_timeout: Duration,
    /// A signed-in browser session ends this long after sign-in whatever it does (default 8 h).
    pub max_session: Duration,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            listen: None,
            consoles_listen: None,
            idle_timeout: Duration::from_secs(15 * 60),
            max_session: Duration::from_secs(8 * 3600),
        }
    }
}

/// The `[access]` table: limits on access requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessConfig {
    /// How far ahead a request's window may start (`max_start_ahead`, default 30 days).
    pub max_start_ahead: Duration,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            max_start_ahead: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// The `[login]` table: password + TOTP login that issues short-lived certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginConfig {
    /// Kinds that must give a TOTP code. Vendor and admin are always in it.
    pub mfa: Vec<PrincipalKind>,
    /// Lifetime of a login certificate (also capped by the CA's per-kind cap and by a grant's
    /// end). Default 8h.
    pub cert_ttl: Duration,
}

impl Default for LoginConfig {
    fn default() -> Self {
        LoginConfig {
            mfa: vec![PrincipalKind::Vendor, PrincipalKind::Admin],
            cert_ttl: Duration::from_secs(8 * 3600),
        }
    }
}

impl LoginConfig {
    /// Whether users of `kind` must give a TOTP code.
    pub fn needs_mfa(&self, kind: PrincipalKind) -> bool {
        matches!(kind, PrincipalKind::Vendor | PrincipalKind::Admin) || self.mfa.contains(&kind)
    }

    /// Adds to `mfa` every kind that may break glass on some device: an emergency session on a
    /// patient device is never opened on a password alone. A break-glass `who` without a kind
    /// matches any kind, so then every person kind needs TOTP.
    pub fn cover_break_glass(&mut self, devices: &[Device]) {
        const PERSONS: [PrincipalKind; 4] = [
            PrincipalKind::Vendor,
            PrincipalKind::Clinician,
            PrincipalKind::Security,
            PrincipalKind::Admin,
        ];
        for bg in devices.iter().filter_map(|d| d.break_glass.as_ref()) {
            let kinds = match bg.who.kind {
                Some(k) => vec![k],
                None => PERSONS.to_vec(),
            };
            for k in kinds {
                if k != PrincipalKind::Gateway && !self.mfa.contains(&k) {
                    self.mfa.push(k);
                }
            }
        }
    }
}

impl Config {
    /// Parses and validates configuration text. `file_name` is only used in error messages.
    pub fn parse(text: &str, file_name: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let location = e.span().map(|s| Location::of(text, s.start));
            let field = e
                .span()
                .map(|s| syntax_field(text, s, e.message()))
                .unwrap_or_default();
            ConfigError {
                file: file_name.to_owned(),
                location,
                field,
                kind: ConfigErrorKind::Syntax(e.message().to_owned()),
            }
        })?;
        let cx = Cx {
            text,
            file: file_name,
        };
        let gateway = cx.gateway(raw.gateway)?;
        let listeners: Vec<SocketAddr> = std::iter::once(gateway.listen)
            .chain(gateway.listen_tcp)
            .collect();
        let mut raw_devices = raw.device;
        let device_inject: Vec<inject::DeviceInject> = raw_devices
            .iter_mut()
            .map(|d| {
                let d = d.get_mut();
                inject::DeviceInject {
                    login: d.login.take(),
                    http_auth: d.http_auth.take(),
                }
            })
            .collect();
        let mut raw_rules = raw.rule;
        let rule_inject: Vec<(String, Option<Spanned<String>>)> = raw_rules
            .iter_mut()
            .map(|r| {
                let r = r.get_mut();
                (r.name.get_ref().clone(), r.inject.take())
            })
            .collect();
        let mut operations = BTreeMap::new();
        for (i, r) in raw_rules.iter_mut().enumerate() {
            let r = r.get_mut();
            if let Some(ops) = r.operations.take() {
                let parsed = cx.operations(ops, &format!("rule[{i}].operations"))?;
                operations.insert(r.name.get_ref().clone(), parsed);
            }
        }
        let devices = cx.devices(raw_devices, gateway.timezone_offset, &listeners)?;
        let rules = cx.rules(raw_rules, &devices, gateway.timezone_offset)?;
        let inject = cx.inject(
            raw.vault,
            raw.login_profile,
            &devices,
            device_inject,
            rule_inject,
        )?;
        let approvals = cx.approvals(raw.approval, &devices)?;
        let mut login = cx.login(raw.login)?;
        login.cover_break_glass(&devices);
        let access = AccessConfig {
            max_start_ahead: cx.duration(
                raw.access.max_start_ahead,
                "access.max_start_ahead",
                AccessConfig::default().max_start_ahead,
            )?,
        };
        let web = cx.web(raw.web, &listeners)?;
        let oidc = cx.oidc(raw.oidc)?;
        let recording = cx.recording(raw.recording)?;
        let review = cx.review(raw.review)?;
        if let (Some(first), None) = (oidc.first(), web.listen) {
            return Err(ConfigError {
                file: file_name.to_owned(),
                location: None,
                field: "oidc[0]".into(),
                kind: ConfigErrorKind::Syntax(format!(
                    "[[oidc]] {} signs people in to the web console: set [web] listen too",
                    first.name
                )),
            });
        }
        let audit = cx.audit(raw.audit)?;
        let store = cx.store(raw.store)?;
        Ok(Config {
            gateway,
            devices,
            rules,
            approvals,
            login,
            access,
            inject,
            operations,
            web,
            oidc,
            recording,
            review,
            audit,
            store,
        })
    }

    /// Joins every relative path (`ca`, `cert`, `key`, `state_dir`) onto `base`, normally the
    /// config file's directory. Pure path arithmetic: nothing is read or canonicalized.
    pub fn resolve_paths(&mut self, base: &Path) {
        self.store.resolve_paths(base);
        let g = &mut self.gateway;
        for path in [&mut g.ca, &mut g.cert, &mut g.key, &mut g.state_dir] {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
        self.recording.resolve_paths(base);
        if let Some(path) = self
            .review
            .identity_file
            .as_mut()
            .filter(|p| p.is_relative())
        {
            *path = base.join(&*path);
        }
    }

    /// The device with this id.
    pub fn device(&self, id: &str) -> Option<&Device> {
        self.devices.iter().find(|d| d.id.as_str() == id)
    }
}

/// Longest `max_session` a rule may set (366 days): beyond it a typo, and date arithmetic on it
/// could overflow.
pub const MAX_SESSION_CAP: Duration = Duration::from_secs(366 * 24 * 3600);

/// Whether a device at `address` would be the gateway's own listener `l` (same port, and the same
/// address, `localhost` for a loopback listener, or any address for a wildcard listener).
fn is_listener(address: &DeviceAddress, l: &SocketAddr) -> bool {
    match address {
        DeviceAddress::Ip(a) => {
            a.port() == l.port()
                && (a.ip() == l.ip()
                    || l.ip().is_unspecified()
                    || (a.ip().is_loopback() && l.ip().is_loopback()))
        }
        DeviceAddress::Host { host, port } => {
            *port == l.port()
                && host.eq_ignore_ascii_case("localhost")
                && (l.ip().is_loopback() || l.ip().is_unspecified())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw (as written) structures.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    gateway: RawGateway,
    #[serde(default)]
    device: Vec<Spanned<RawDevice>>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
    #[serde(default)]
    approval: Vec<Spanned<RawApproval>>,
    #[serde(default)]
    login: RawLogin,
    #[serde(default)]
    access: RawAccess,
    #[serde(default)]
    vault: inject::RawVault,
    #[serde(default)]
    login_profile: Vec<Spanned<inject::RawLoginProfile>>,
    #[serde(default)]
    web: RawWeb,
    #[serde(default)]
    oidc: Vec<Spanned<oidc::RawOidc>>,
    #[serde(default)]
    recording: recording::RawRecording,
    #[serde(default)]
    review: review::RawReview,
    #[serde(default)]
    audit: audit::RawAudit,
    #[serde(default)]
    store: store::RawStore,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWeb {
    listen: Option<Spanned<String>>,
    consoles_listen: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    max_session: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAccess {
    max_start_ahead: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    listen: Spanned<String>,
    listen_tcp: Option<Spanned<String>>,
    ca: Spanned<PathBuf>,
    cert: Spanned<PathBuf>,
    key: Spanned<PathBuf>,
    state_dir: Spanned<PathBuf>,
    timezone_offset: Option<Spanned<String>>,
    handshake_timeout: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    device_connect_timeout: Option<Spanned<String>>,
    shutdown_grace: Option<Spanned<String>>,
    max_connections: Option<Spanned<u32>>,
    max_connections_per_source: Option<Spanned<u32>>,
    max_anonymous_connections: Option<Spanned<u32>>,
    first_request_timeout: Option<Spanned<String>>,
    anonymous_timeout: Option<Spanned<String>>,
    max_sessions: Option<Spanned<u32>>,
    max_sessions_per_connection: Option<Spanned<u32>>,
    disk_alert_percent: Option<Spanned<u32>>,
    disk_refuse_percent: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    id: Spanned<String>,
    address: Spanned<String>,
    protocol: Spanned<String>,
    #[serde(default)]
    labels: BTreeMap<String, Spanned<String>>,
    maintenance: Option<Spanned<RawHours>>,
    break_glass: Option<Spanned<RawBreakGlass>>,
    netns: Option<Spanned<String>>,
    /// A telnet device's login profile (`login = { profile = "…" }`), for injection.
    login: Option<Spanned<inject::RawLoginProfile>>,
    /// How an HTTP device takes an injected credential.
    http_auth: Option<Spanned<inject::RawHttpAuth>>,
    /// The device speaks TLS itself (`tls = true` or `tls = { pin = "sha256:…" }`).
    tls: Option<Spanned<RawTls>>,
}

/// `tls = true` or `tls = { pin = "sha256:…", server_name = "pacs.local" }`.
enum RawTls {
    Flag(bool),
    Table(RawTlsTable),
}

impl<'de> Deserialize<'de> for RawTls {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawTls;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false, or a table like { pin = \"sha256:…\", server_name = \"pacs.local\" }")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawTls, E> {
                Ok(RawTls::Flag(v))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<RawTls, A::Error> {
                RawTlsTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawTls::Table)
            }
        }
        deserializer.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTlsTable {
    pin: Option<Spanned<String>>,
    server_name: Option<Spanned<String>>,
}

/// `break_glass = true` or `break_glass = { who = {..}, max = "30m" }`.
enum RawBreakGlass {
    Flag(bool),
    Table(RawBreakGlassTable),
}

impl<'de> Deserialize<'de> for RawBreakGlass {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawBreakGlass;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false, or a table like { who = { kind = \"clinician\" }, max = \"30m\" }")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawBreakGlass, E> {
                Ok(RawBreakGlass::Flag(v))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<RawBreakGlass, A::Error> {
                RawBreakGlassTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawBreakGlass::Table)
            }
        }
        deserializer.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBreakGlassTable {
    who: Option<Spanned<RawWho>>,
    max: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApproval {
    name: Spanned<String>,
    who: Spanned<RawWho>,
    devices: Spanned<RawDevices>,
    approvers: Spanned<Vec<Spanned<RawWho>>>,
    required: Option<Spanned<u32>>,
    max_duration: Option<Spanned<String>>,
    pending_expiry: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLogin {
    mfa: Option<Vec<Spanned<String>>>,
    cert_ttl: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    who: Spanned<RawWho>,
    devices: Spanned<RawDevices>,
    max_session: Option<Spanned<String>>,
    hours: Option<Spanned<RawHours>>,
    /// The vault account sessions under this rule get (`inject = "service"`).
    inject: Option<Spanned<String>>,
    /// Operation lists per protocol (`operations.dicom = { allow = [..] }`).
    operations: Option<Spanned<RawOperations>>,
}

/// A rule's `operations` table.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawOperations {
    dicom: Option<RawOpList>,
    hl7: Option<RawOpList>,
    http: Option<RawOpList>,
    telnet: Option<RawOpList>,
}

/// One protocol's `{ allow = [..], deny = [..] }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOpList {
    allow: Option<Vec<String>>,
    deny: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWho {
    kind: Option<Spanned<String>>,
    org: Option<Spanned<String>>,
    name: Option<Spanned<String>>,
    roles: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevices {
    ids: Option<Vec<Spanned<String>>>,
    labels: Option<BTreeMap<String, Spanned<String>>>,
    all: Option<bool>,
}

/// `hours = "Mon-Fri 07:00-19:00"` or `hours = ["…", "…"]`.
struct RawHours(Vec<String>);

impl<'de> Deserialize<'de> for RawHours {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawHours;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a window string like \"Mon-Fri 07:00-19:00\" or a list of them")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawHours, E> {
                Ok(RawHours(vec![v.to_owned()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawHours, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(RawHours(out))
            }
        }
        deserializer.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------------------------
// Validation.

struct Cx<'a> {
    text: &'a str,
    file: &'a str,
}

impl Cx<'_> {
    fn err(
        &self,
        span: Range<usize>,
        field: impl Into<String>,
        kind: impl Into<ConfigErrorKind>,
    ) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            location: Some(Location::of(self.text, span.start)),
            field: field.into(),
            kind: kind.into(),
        }
    }

    fn line(&self, span: &Range<usize>) -> usize {
        Location::of(self.text, span.start).line
    }

    fn duration(
        &self,
        raw: Option<Spanned<String>>,
        field: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match raw {
            None => Ok(default),
            Some(s) => parse_duration(s.get_ref()).map_err(|e| self.err(s.span(), field, e)),
        }
    }

    fn count(
        &self,
        raw: Option<Spanned<u32>>,
        field: &str,
        default: u32,
    ) -> Result<u32, ConfigError> {
        match raw {
            None => Ok(default),
            Some(s) if *s.get_ref() == 0 => Err(self.err(
                s.span(),
                field,
                ConfigErrorKind::Limit("must be at least 1".into()),
            )),
            Some(s) => Ok(s.into_inner()),
        }
    }

    fn percent(
        &self,
        raw: Option<&Spanned<u32>>,
        field: &str,
        default: u8,
    ) -> Result<u8, ConfigError> {
        match raw {
            None => Ok(default),
            Some(s) => u8::try_from(*s.get_ref())
                .ok()
                .filter(|p| (1..=100).contains(p))
                .ok_or_else(|| {
                    self.err(
                        s.span(),
                        field,
                        ConfigErrorKind::Limit("must be a percentage from 1 to 100".into()),
                    )
                }),
        }
    }

    fn path(&self, raw: Spanned<PathBuf>, field: &str) -> Result<PathBuf, ConfigError> {
        if raw.get_ref().as_os_str().is_empty() {
            return Err(self.err(raw.span(), field, ConfigErrorKind::Empty));
        }
        Ok(raw.into_inner())
    }

    fn listen(&self, raw: &Spanned<String>, field: &str) -> Result<SocketAddr, ConfigError> {
        raw.get_ref().parse().map_err(|_| {
            self.err(
                raw.span(),
                field,
                ConfigErrorKind::Listen(raw.get_ref().clone()),
            )
        })
    }

    fn gateway(&self, g: RawGateway) -> Result<GatewayConfig, ConfigError> {
        let listen = self.listen(&g.listen, "gateway.listen")?;
        let listen_tcp = g
            .listen_tcp
            .as_ref()
            .map(|l| self.listen(l, "gateway.listen_tcp"))
            .transpose()?;
        let timezone_offset = match &g.timezone_offset {
            None => UtcOffset::UTC,
            Some(s) => parse_offset(s.get_ref())
                .map_err(|e| self.err(s.span(), "gateway.timezone_offset", e))?,
        };
        let d = Limits::default();
        let per_source_span = g.max_connections_per_source.as_ref().map(Spanned::span);
        let anonymous_span = g.max_anonymous_connections.as_ref().map(Spanned::span);
        let anonymous_given = g.max_anonymous_connections.is_some();
        let per_conn_span = g.max_sessions_per_connection.as_ref().map(Spanned::span);
        let limits = Limits {
            handshake_timeout: self.duration(
                g.handshake_timeout,
                "gateway.handshake_timeout",
                d.handshake_timeout,
            )?,
            idle_timeout: self.duration(g.idle_timeout, "gateway.idle_timeout", d.idle_timeout)?,
            device_connect_timeout: self.duration(
                g.device_connect_timeout,
                "gateway.device_connect_timeout",
                d.device_connect_timeout,
            )?,
            shutdown_grace: self.duration(
                g.shutdown_grace,
                "gateway.shutdown_grace",
                d.shutdown_grace,
            )?,
            max_connections: self.count(
                g.max_connections,
                "gateway.max_connections",
                d.max_connections,
            )?,
            max_connections_per_source: self.count(
                g.max_connections_per_source,
                "gateway.max_connections_per_source",
                d.max_connections_per_source,
            )?,
            max_anonymous_connections: self.count(
                g.max_anonymous_connections,
                "gateway.max_anonymous_connections",
                d.max_anonymous_connections,
            )?,
            first_request_timeout: self.duration(
                g.first_request_timeout,
                "gateway.first_request_timeout",
                d.first_request_timeout,
            )?,
            anonymous_timeout: self.duration(
                g.anonymous_timeout,
                "gateway.anonymous_timeout",
                d.anonymous_timeout,
            )?,
            max_sessions: self.count(g.max_sessions, "gateway.max_sessions", d.max_sessions)?,
            max_sessions_per_connection: self.count(
                g.max_sessions_per_connection,
                "gateway.max_sessions_per_connection",
                d.max_sessions_per_connection,
            )?,
            disk_alert_percent: self.percent(
                g.disk_alert_percent.as_ref(),
                "gateway.disk_alert_percent",
                d.disk_alert_percent,
            )?,
            disk_refuse_percent: self.percent(
                g.disk_refuse_percent.as_ref(),
                "gateway.disk_refuse_percent",
                d.disk_refuse_percent,
            )?,
        };
        let header_span = g.listen.span();
        let mut limits = limits;
        if !anonymous_given {
            // A smaller gateway keeps three quarters of its slots for certificate holders too.
            limits.max_anonymous_connections = d
                .max_anonymous_connections
                .min((limits.max_connections / 4).max(1));
        }
        if limits.max_anonymous_connections > limits.max_connections {
            return Err(self.err(
                anonymous_span.unwrap_or(header_span),
                "gateway.max_anonymous_connections",
                ConfigErrorKind::Limit(format!(
                    "{} is more than max_connections ({})",
                    limits.max_anonymous_connections, limits.max_connections
                )),
            ));
        }
        if limits.max_connections_per_source > limits.max_connections {
            return Err(self.err(
                per_source_span.unwrap_or(header_span),
                "gateway.max_connections_per_source",
                ConfigErrorKind::Limit(format!(
                    "{} is more than max_connections ({})",
                    limits.max_connections_per_source, limits.max_connections
                )),
            ));
        }
        if limits.max_sessions_per_connection > limits.max_sessions {
            return Err(self.err(
                per_conn_span.unwrap_or(header_span),
                "gateway.max_sessions_per_connection",
                ConfigErrorKind::Limit(format!(
                    "{} is more than max_sessions ({})",
                    limits.max_sessions_per_connection, limits.max_sessions
                )),
            ));
        }
        if limits.disk_alert_percent >= limits.disk_refuse_percent {
            let span = g
                .disk_alert_percent
                .as_ref()
                .or(g.disk_refuse_percent.as_ref())
                .map(Spanned::span);
            return Err(self.err(
                span.unwrap_or(header_span),
                "gateway.disk_alert_percent",
                ConfigErrorKind::Limit(format!(
                    "{} must be below disk_refuse_percent ({}): the alert has to come before sessions are refused",
                    limits.disk_alert_percent, limits.disk_refuse_percent
                )),
            ));
        }
        Ok(GatewayConfig {
            listen,
            listen_tcp,
            ca: self.path(g.ca, "gateway.ca")?,
            cert: self.path(g.cert, "gateway.cert")?,
            key: self.path(g.key, "gateway.key")?,
            state_dir: self.path(g.state_dir, "gateway.state_dir")?,
            timezone_offset,
            limits,
        })
    }

    fn labels(
        &self,
        raw: BTreeMap<String, Spanned<String>>,
        field: &str,
    ) -> Result<BTreeMap<String, String>, ConfigError> {
        raw.into_iter()
            .map(|(k, v)| {
                check_label(&k, v.get_ref())
                    .map_err(|e| self.err(v.span(), format!("{field}.{k}"), e))?;
                Ok((k, v.into_inner()))
            })
            .collect()
    }

    fn hours(
        &self,
        raw: Spanned<RawHours>,
        field: String,
        offset: UtcOffset,
    ) -> Result<Hours, ConfigError> {
        let span = raw.span();
        let windows = raw
            .into_inner()
            .0
            .iter()
            .map(|w| Window::parse(w))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(span.clone(), field.clone(), e))?;
        Hours::new(windows, offset).map_err(|e| self.err(span, field, e))
    }

    fn break_glass(
        &self,
        raw: Spanned<RawBreakGlass>,
        field: String,
    ) -> Result<Option<BreakGlass>, ConfigError> {
        match raw.into_inner() {
            RawBreakGlass::Flag(false) => Ok(None),
            RawBreakGlass::Flag(true) => Ok(Some(BreakGlass::default())),
            RawBreakGlass::Table(t) => {
                let d = BreakGlass::default();
                let who = match t.who {
                    Some(w) => self.who(w, &format!("{field}.who"))?,
                    None => d.who,
                };
                let max = self.duration(t.max, &format!("{field}.max"), d.max)?;
                Ok(Some(BreakGlass { who, max }))
            }
        }
    }

    /// A device's `tls`: `false` is plain TCP.
    fn device_tls(
        &self,
        raw: Spanned<RawTls>,
        field: &str,
    ) -> Result<Option<DeviceTls>, ConfigError> {
        match raw.into_inner() {
            RawTls::Flag(false) => Ok(None),
            RawTls::Flag(true) => Ok(Some(DeviceTls {
                pin: None,
                server_name: None,
            })),
            RawTls::Table(t) => {
                let pin = t
                    .pin
                    .map(|p| {
                        p.get_ref()
                            .parse::<CertPin>()
                            .map_err(|e| self.err(p.span(), format!("{field}.pin"), e))
                    })
                    .transpose()?;
                let server_name = match t.server_name {
                    Some(n) => {
                        DeviceTls::new(None, Some(n.get_ref()))
                            .map_err(|e| self.err(n.span(), format!("{field}.server_name"), e))?
                            .server_name
                    }
                    None => None,
                };
                Ok(Some(DeviceTls { pin, server_name }))
            }
        }
    }

    fn approvals(
        &self,
        raw: Vec<Spanned<RawApproval>>,
        devices: &[Device],
    ) -> Result<Vec<ApprovalPolicy>, ConfigError> {
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut out = Vec::with_capacity(raw.len());
        for (i, a) in raw.into_iter().enumerate() {
            let a = a.into_inner();
            let f = |name: &str| format!("approval[{i}].{name}");
            let name_span = a.name.span();
            check_name("approval name", a.name.get_ref())
                .map_err(|e| self.err(name_span.clone(), f("name"), e))?;
            if let Some(first_line) = seen.get(a.name.get_ref()) {
                return Err(self.err(
                    name_span,
                    f("name"),
                    ConfigErrorKind::DuplicateRule {
                        name: a.name.into_inner(),
                        first_line: *first_line,
                    },
                ));
            }
            seen.insert(a.name.get_ref().clone(), self.line(&name_span));
            let who = self.who(a.who, &f("who"))?;
            let selector = self.selector(a.devices, &f("devices"), devices)?;
            let approvers_span = a.approvers.span();
            let approvers = a
                .approvers
                .into_inner()
                .into_iter()
                .enumerate()
                .map(|(j, w)| self.who(w, &format!("approval[{i}].approvers[{j}]")))
                .collect::<Result<Vec<_>, _>>()?;
            if approvers.is_empty() {
                return Err(self.err(approvers_span, f("approvers"), ConfigErrorKind::Empty));
            }
            let groups = u32::try_from(approvers.len()).unwrap_or(u32::MAX);
            let required = match a.required {
                None => groups,
                Some(r) if *r.get_ref() < groups => {
                    return Err(self.err(
                        r.span(),
                        f("required"),
                        ConfigErrorKind::Limit(format!(
                            "{} is less than the number of approver groups ({groups}); each group must approve",
                            r.get_ref()
                        )),
                    ))
                }
                Some(r) => r.into_inner(),
            };
            let max_duration =
                self.duration(a.max_duration, &f("max_duration"), DEFAULT_MAX_DURATION)?;
            let pending_expiry = self.duration(
                a.pending_expiry,
                &f("pending_expiry"),
                DEFAULT_PENDING_EXPIRY,
            )?;
            out.push(ApprovalPolicy {
                name: a.name.into_inner(),
                devices: selector,
                who,
                approvers,
                required,
                max_duration,
                pending_expiry,
            });
        }
        Ok(out)
    }

    fn web(&self, raw: RawWeb, listeners: &[SocketAddr]) -> Result<WebConfig, ConfigError> {
        let d = WebConfig::default();
        let listen = self.web_listener(raw.listen.as_ref(), "web.listen", listeners, &[])?;
        let taken: Vec<SocketAddr> = listen.into_iter().collect();
        let consoles_listen = self.web_listener(
            raw.consoles_listen.as_ref(),
            "web.consoles_listen",
            listeners,
            &taken,
        )?;
        if let (Some(c), None) = (&raw.consoles_listen, listen) {
            return Err(self.err(
                c.span(),
                "web.consoles_listen",
                ConfigErrorKind::Syntax(
                    "device consoles in the browser need the web console: set [web] listen too"
                        .into(),
                ),
            ));
        }
        let idle_timeout = self.duration(raw.idle_timeout, "web.idle_timeout", d.idle_timeout)?;
        let max_session = self.duration(raw.max_session, "web.max_session", d.max_session)?;
        Ok(WebConfig {
            listen,
            consoles_listen,
            idle_timeout,
            max_session,
        })
    }

    /// A web listener's address (`field`), refused when it shares a port with a gateway
    /// listener or with `others` (port 0, tests: the system picks, never clashes).
    fn web_listener(
        &self,
        raw: Option<&Spanned<String>>,
        field: &'static str,
        listeners: &[SocketAddr],
        others: &[SocketAddr],
    ) -> Result<Option<SocketAddr>, ConfigError> {
        let Some(l) = raw else {
            return Ok(None);
        };
        let addr = self.listen(l, field)?;
        let clash = |g: &SocketAddr| {
            g.port() == addr.port()
                && (g.ip() == addr.ip() || g.ip().is_unspecified() || addr.ip().is_unspecified())
        };
        if addr.port() != 0 && listeners.iter().any(clash) {
            return Err(self.err(
                l.span(),
                field,
                ConfigErrorKind::Syntax(format!(
                    "{addr} is also a gateway listener; give the web console a port of its own"
                )),
            ));
        }
        if addr.port() != 0 && others.iter().any(clash) {
            return Err(self.err(
                l.span(),
                field,
                ConfigErrorKind::Syntax(format!(
                    "{addr} is also the web console's listener; device consoles need an origin (port) of their own"
                )),
            ));
        }
        Ok(Some(addr))
    }

    fn login(&self, raw: RawLogin) -> Result<LoginConfig, ConfigError> {
        let mut login = LoginConfig::default();
        for k in raw.mfa.unwrap_or_default() {
            let kind = k
                .get_ref()
                .parse::<PrincipalKind>()
                .map_err(|e| self.err(k.span(), "login.mfa", e))?;
            if !login.mfa.contains(&kind) {
                login.mfa.push(kind);
            }
        }
        login.cert_ttl = self.duration(raw.cert_ttl, "login.cert_ttl", login.cert_ttl)?;
        Ok(login)
    }

    fn devices(
        &self,
        raw: Vec<Spanned<RawDevice>>,
        offset: UtcOffset,
        listeners: &[SocketAddr],
    ) -> Result<Vec<Device>, ConfigError> {
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut out = Vec::with_capacity(raw.len());
        for (i, d) in raw.into_iter().enumerate() {
            let d = d.into_inner();
            let f = |name: &str| format!("device[{i}].{name}");
            let id =
                DeviceId::new(d.id.get_ref()).map_err(|e| self.err(d.id.span(), f("id"), e))?;
            if let Some(first_line) = seen.get(id.as_str()) {
                return Err(self.err(
                    d.id.span(),
                    f("id"),
                    ConfigErrorKind::DuplicateDevice {
                        id: id.to_string(),
                        first_line: *first_line,
                    },
                ));
            }
            seen.insert(id.to_string(), self.line(&d.id.span()));
            let address: DeviceAddress = d
                .address
                .get_ref()
                .parse()
                .map_err(|e| self.err(d.address.span(), f("address"), e))?;
            if let Some(l) = listeners.iter().find(|l| is_listener(&address, l)) {
                let why = format!("{address} is the gateway's own listener ({l}): a device there would loop sessions back into the gateway");
                return Err(self.err(d.address.span(), f("address"), ConfigErrorKind::Limit(why)));
            }
            let protocol: Protocol = d
                .protocol
                .get_ref()
                .parse()
                .map_err(|e| self.err(d.protocol.span(), f("protocol"), e))?;
            let labels = self.labels(d.labels, &f("labels"))?;
            let maintenance = d
                .maintenance
                .map(|h| self.hours(h, f("maintenance"), offset))
                .transpose()?;
            let break_glass = match d.break_glass {
                Some(b) => self.break_glass(b, f("break_glass"))?,
                None => None,
            };
            let netns = d
                .netns
                .map(|n| {
                    crate::device::check_netns(n.get_ref())
                        .map_err(|e| self.err(n.span(), f("netns"), e))?;
                    Ok(n.into_inner())
                })
                .transpose()?;
            let tls = match d.tls {
                Some(t) => self.device_tls(t, &f("tls"))?,
                None => None,
            };
            out.push(Device {
                id,
                address,
                protocol,
                labels,
                maintenance,
                break_glass,
                netns,
                tls,
            });
        }
        Ok(out)
    }

    fn non_empty(&self, raw: Spanned<String>, field: String) -> Result<String, ConfigError> {
        if raw.get_ref().trim().is_empty() {
            return Err(self.err(raw.span(), field, ConfigErrorKind::Empty));
        }
        Ok(raw.into_inner())
    }

    fn who(&self, raw: Spanned<RawWho>, field: &str) -> Result<Who, ConfigError> {
        let span = raw.span();
        let w = raw.into_inner();
        let kind = w
            .kind
            .map(|k| {
                k.get_ref()
                    .parse::<PrincipalKind>()
                    .map_err(|e| self.err(k.span(), format!("{field}.kind"), e))
            })
            .transpose()?;
        let org = w
            .org
            .map(|o| self.non_empty(o, format!("{field}.org")))
            .transpose()?;
        let name = w
            .name
            .map(|n| self.non_empty(n, format!("{field}.name")))
            .transpose()?;
        let roles = w
            .roles
            .unwrap_or_default()
            .into_iter()
            .map(|r| self.non_empty(r, format!("{field}.roles")))
            .collect::<Result<Vec<_>, _>>()?;
        let who = Who {
            kind,
            name,
            org,
            roles,
        };
        if who.is_empty() {
            return Err(self.err(span, field, ConfigErrorKind::EmptyWho));
        }
        Ok(who)
    }

    fn selector(
        &self,
        raw: Spanned<RawDevices>,
        field: &str,
        devices: &[Device],
    ) -> Result<DeviceSelector, ConfigError> {
        let span = raw.span();
        match raw.into_inner() {
            RawDevices {
                ids: Some(ids),
                labels: None,
                all: None,
            } if !ids.is_empty() => ids
                .into_iter()
                .map(|id| {
                    let f = format!("{field}.ids");
                    let parsed = DeviceId::new(id.get_ref())
                        .map_err(|e| self.err(id.span(), f.clone(), e))?;
                    if !devices.iter().any(|d| d.id == parsed) {
                        return Err(self.err(
                            id.span(),
                            f,
                            ConfigErrorKind::UnknownDevice(parsed.to_string()),
                        ));
                    }
                    Ok(parsed)
                })
                .collect::<Result<Vec<_>, _>>()
                .map(DeviceSelector::Ids),
            RawDevices {
                ids: None,
                labels: Some(labels),
                all: None,
            } if !labels.is_empty() => self
                .labels(labels, &format!("{field}.labels"))
                .map(DeviceSelector::Labels),
            RawDevices {
                ids: None,
                labels: None,
                all: Some(true),
            } => Ok(DeviceSelector::All),
            _ => Err(self.err(span, field, ConfigErrorKind::Selector)),
        }
    }

    /// A rule's `operations`: every list non-empty, every pattern a printable line.
    fn operations(
        &self,
        raw: Spanned<RawOperations>,
        field: &str,
    ) -> Result<Operations, ConfigError> {
        let span = raw.span();
        let raw = raw.into_inner();
        let mut out = Operations::default();
        let lists = [
            (OpProtocol::Dicom, raw.dicom, &mut out.dicom),
            (OpProtocol::Hl7, raw.hl7, &mut out.hl7),
            (OpProtocol::Http, raw.http, &mut out.http),
            (OpProtocol::Telnet, raw.telnet, &mut out.telnet),
        ];
        for (protocol, list, slot) in lists {
            let Some(list) = list else { continue };
            let f = format!("{field}.{protocol}");
            let (allow, deny) = (
                list.allow.unwrap_or_default(),
                list.deny.unwrap_or_default(),
            );
            if allow.is_empty() && deny.is_empty() {
                let why = format!(
                    "operations.{protocol} gives neither `allow` nor `deny`; list the operations to let through (`allow = [..]`) or to refuse (`deny = [..]`), or remove it"
                );
                return Err(self.err(span.clone(), f, ConfigErrorKind::Limit(why)));
            }
            for p in allow.iter().chain(&deny) {
                if p.trim().is_empty() || p.len() > 256 || p.chars().any(char::is_control) {
                    let why = format!(
                        "operation pattern {p:?} must be 1 to 256 printable characters (`*` matches any run)"
                    );
                    return Err(self.err(span.clone(), f, ConfigErrorKind::Limit(why)));
                }
            }
            *slot = Some(OpList { allow, deny });
        }
        if out.is_empty() {
            let why =
                "`operations` names no protocol (dicom, hl7, http, telnet); remove it".to_string();
            return Err(self.err(span, field.to_string(), ConfigErrorKind::Limit(why)));
        }
        Ok(out)
    }

    fn rules(
        &self,
        raw: Vec<Spanned<RawRule>>,
        devices: &[Device],
        offset: UtcOffset,
    ) -> Result<Vec<Rule>, ConfigError> {
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut out = Vec::with_capacity(raw.len());
        for (i, r) in raw.into_iter().enumerate() {
            let r = r.into_inner();
            let f = |name: &str| format!("rule[{i}].{name}");
            let name_span = r.name.span();
            check_name("rule name", r.name.get_ref())
                .map_err(|e| self.err(name_span.clone(), f("name"), e))?;
            if let Some(first_line) = seen.get(r.name.get_ref()) {
                return Err(self.err(
                    name_span,
                    f("name"),
                    ConfigErrorKind::DuplicateRule {
                        name: r.name.into_inner(),
                        first_line: *first_line,
                    },
                ));
            }
            seen.insert(r.name.get_ref().clone(), self.line(&name_span));
            let who_span = r.who.span();
            let who = self.who(r.who, &f("who"))?;
            if who.kind == Some(PrincipalKind::Gateway) {
                let why = "a rule may not be for the `gateway` kind: gateway certificates identify Ward itself, not people who reach devices";
                return Err(self.err(who_span, f("who.kind"), ConfigErrorKind::Limit(why.into())));
            }
            let selector = self.selector(r.devices, &f("devices"), devices)?;
            let max_session = r
                .max_session
                .map(|m| {
                    let d = parse_duration(m.get_ref())
                        .map_err(|e| self.err(m.span(), f("max_session"), e))?;
                    if d > MAX_SESSION_CAP {
                        let why =
                            format!("max_session {:?} is over the limit of 366d", m.get_ref());
                        return Err(self.err(
                            m.span(),
                            f("max_session"),
                            ConfigErrorKind::Limit(why),
                        ));
                    }
                    Ok(d)
                })
                .transpose()?;
            let hours = r
                .hours
                .map(|h| self.hours(h, f("hours"), offset))
                .transpose()?;
            out.push(Rule {
                name: r.name.into_inner(),
                who,
                devices: selector,
                max_session,
                hours,
            });
        }
        Ok(out)
    }
}

/// Best-effort field path for a TOML error at `span`: the enclosing table header (with a
/// 0-based index for arrays of tables), the key on the error's line when the error is in its
/// value, and the field named by `unknown field` / `missing field` messages.
fn syntax_field(text: &str, span: Range<usize>, message: &str) -> String {
    let loc = Location::of(text, span.start);
    let lines: Vec<&str> = text.lines().collect();
    let line_idx = loc.line.saturating_sub(1);
    let mut parts: Vec<String> = Vec::new();

    // Enclosing table: the nearest header at or above the error line.
    let header = lines
        .iter()
        .take(line_idx + 1)
        .enumerate()
        .rev()
        .find_map(|(i, l)| header_name(l).map(|h| (i, h)));
    let header_idx = header.as_ref().map(|(i, _)| *i);
    if let Some((header_line, (name, is_array))) = header {
        if is_array {
            let index = lines
                .iter()
                .take(header_line)
                .filter(|l| header_name(l) == Some((name.clone(), true)))
                .count();
            parts.push(format!("{name}[{index}]"));
        } else {
            parts.push(name);
        }
    }

    // The key whose value holds the error (`who = { knd = "v" }` → `who`).
    if let Some(line) = lines.get(line_idx) {
        if header_name(line).is_none() {
            if let Some(eq) = line.find('=') {
                let eq_col = line.get(..eq).map_or(0, |s| s.chars().count()) + 1;
                if loc.column > eq_col {
                    let key = line.get(..eq).unwrap_or("").trim().trim_matches('"');
                    if !key.is_empty() {
                        parts.push(key.to_owned());
                    }
                }
            }
        }
    }

    let named = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|p| message.strip_prefix(p))
        .and_then(|rest| rest.split('`').next());
    let on_header = header_idx == Some(line_idx);
    if on_header && message.starts_with("unknown field `") {
        // The header itself is the unknown key (`[gatway]`): drop it, keep its parent path.
        if let (Some(n), Some(last)) = (named, parts.pop()) {
            let parent = last.rsplit_once('.').map(|(p, _)| p.to_owned());
            parts.extend(parent);
            parts.push(n.to_owned());
            return parts.join(".");
        }
    }
    match named {
        Some(n) => parts.push(n.to_owned()),
        None => {
            // The error is on a `key = …` line at the key itself (e.g. a bad key): name it.
            if let Some(line) = lines.get(line_idx) {
                if header_name(line).is_none() && parts.len() < 2 {
                    if let Some((key, _)) = line.split_once('=') {
                        let key = key.trim().trim_matches('"');
                        if !key.is_empty() {
                            parts.push(key.to_owned());
                        }
                    }
                }
            }
        }
    }
    parts.join(".")
}

/// `[name]` → (name, false), `[[name]]` → (name, true).
fn header_name(line: &str) -> Option<(String, bool)> {
    let line = line.split('#').next().unwrap_or("").trim();
    if let Some(inner) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
        return Some((inner.trim().to_owned(), true));
    }
    line.strip_prefix('[')
        .and_then(|l| l.strip_suffix(']'))
        .map(|inner| (inner.trim().to_owned(), false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::WindowState;
    use time::macros::{datetime, offset};

    const GATEWAY: &str = r#"[gateway]
listen = "127.0.0.1:4433"
ca = "certs-dev"
cert = "certs-dev/gateway.crt"
key = "certs-dev/gateway.key"
state_dir = "var/ward"
"#;

    const DEVICE: &str = r#"
[[device]]
id = "pump-12"
address = "10.20.0.12:23"
protocol = "telnet"
labels = { vendor = "acme" }
"#;

    fn refused(text: &str) -> ConfigError {
        Config::parse(text, "w.toml").unwrap_err()
    }

    #[test]
    fn unreasonable_values_are_refused_with_the_field_named() {
        let rule = |who: &str, max: &str| {
            format!("{GATEWAY}{DEVICE}\n[[rule]]\nname = \"r\"\nwho = {who}\ndevices = {{ all = true }}\nmax_session = \"{max}\"\n")
        };
        let e = refused(&rule("{ kind = \"vendor\" }", "99999999999999d"));
        assert_eq!(e.field, "rule[0].max_session", "{e}");
        assert!(e.to_string().contains("366d"), "{e}");
        assert!(Config::parse(&rule("{ kind = \"vendor\" }", "366d"), "w.toml").is_ok());
        let e = refused(&rule("{ kind = \"gateway\" }", "1h"));
        assert_eq!(e.field, "rule[0].who.kind", "{e}");
        for address in ["127.0.0.1:4433", "localhost:4433", "127.0.0.2:4433"] {
            let text = format!("{GATEWAY}\n[[device]]\nid = \"loop\"\naddress = \"{address}\"\nprotocol = \"raw\"\n");
            let e = refused(&text);
            assert_eq!(e.field, "device[0].address", "{e}");
            assert!(e.to_string().contains("own listener"), "{e}");
        }
        let text = format!("{GATEWAY}\n[[device]]\nid = \"ok\"\naddress = \"127.0.0.1:4434\"\nprotocol = \"raw\"\n");
        assert!(Config::parse(&text, "w.toml").is_ok());
    }

    #[test]
    fn device_tls_forms() {
        let dev = |tls: &str| {
            format!("{GATEWAY}\n[[device]]\nid = \"pacs\"\naddress = \"pacs.local:443\"\nprotocol = \"http\"\n{tls}\n")
        };
        let tls_of = |tls: &str| {
            Config::parse(&dev(tls), "w.toml")
                .unwrap()
                .devices
                .remove(0)
                .tls
        };
        assert_eq!(tls_of(""), None);
        assert_eq!(tls_of("tls = false"), None);
        let plain = DeviceTls {
            pin: None,
            server_name: None,
        };
        assert_eq!(tls_of("tls = true"), Some(plain.clone()));
        assert_eq!(tls_of("tls = {}"), Some(plain));
        let pin = format!("sha256:{}", "0f".repeat(32));
        let t = tls_of(&format!(
            "tls = {{ pin = \"{}\", server_name = \"PACS.local\" }}",
            pin.to_uppercase().replace("SHA256", "sha256")
        ))
        .unwrap();
        assert_eq!(t.pin.unwrap().to_string(), pin);
        assert_eq!(t.server_name.as_deref(), Some("pacs.local"));
        let e = refused(&dev("tls = { pin = \"sha256:abc\" }"));
        assert_eq!(e.field, "device[0].tls.pin", "{e}");
        assert!(e.to_string().contains("64 hex digits"), "{e}");
        let e = refused(&dev("tls = { server_name = \"bad name\" }"));
        assert_eq!(e.field, "device[0].tls.server_name", "{e}");
        let e = refused(&dev("tls = { pinned = \"x\" }"));
        assert!(e.to_string().contains("pinned"), "{e}");
        let e = refused(&dev("tls = \"yes\""));
        assert!(e.field.contains("tls"), "{e}");
    }

    #[test]
    fn access_max_start_ahead_defaults_to_30_days() {
        let c = Config::parse(GATEWAY, "w.toml").unwrap();
        assert_eq!(c.access.max_start_ahead, Duration::from_secs(30 * 86400));
        let c = Config::parse(
            &format!("{GATEWAY}\n[access]\nmax_start_ahead = \"7d\"\n"),
            "w.toml",
        )
        .unwrap();
        assert_eq!(c.access.max_start_ahead, Duration::from_secs(7 * 86400));
        let e = refused(&format!(
            "{GATEWAY}\n[access]\nmax_start_ahead = \"soon\"\n"
        ));
        assert_eq!(e.field, "access.max_start_ahead", "{e}");
    }

    #[test]
    fn rules_carry_operation_lists() {
        let config = Config::parse(SAMPLE_CONFIG, "sample.toml").unwrap();
        let ops = &config.operations;
        assert_eq!(ops.len(), 3, "{ops:?}");
        let pumps = &ops["acme-maintains-its-pumps"];
        assert_eq!(
            pumps.telnet.as_ref().unwrap().deny,
            ["factory-reset*", "passwd*"]
        );
        assert!(pumps.dicom.is_none() && pumps.http.is_none() && pumps.hl7.is_none());
        assert_eq!(
            ops["radiology-weekend-maintenance"]
                .dicom
                .as_ref()
                .unwrap()
                .allow,
            ["C-ECHO", "C-FIND"]
        );
        assert!(!ops.contains_key("admins-reach-everything"));
        let base = SAMPLE_CONFIG.replace(
            "operations.http = { allow = [\"GET /*\"] }",
            "operations.http = OPS",
        );
        for (ops, field, says) in [
            (
                "{}",
                "rule[1].operations.http",
                "neither `allow` nor `deny`",
            ),
            (
                "{ allow = [\"\"] }",
                "rule[1].operations.http",
                "1 to 256 printable",
            ),
            (
                "{ allow = [\"GET\\n/x\"] }",
                "rule[1].operations.http",
                "printable",
            ),
        ] {
            let e = Config::parse(&base.replace("OPS", ops), "w.toml").unwrap_err();
            assert_eq!(e.field, field, "{ops}: {e}");
            assert!(e.to_string().contains(says), "{ops}: {e}");
        }
        let e = Config::parse(
            &base.replace(
                "operations.http = OPS",
                "operations.ftp = { allow = [\"x\"] }",
            ),
            "w.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("ftp"), "{e}");
        let e = Config::parse(
            &base.replace("operations.http = OPS", "operations = {}"),
            "w.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("names no protocol"), "{e}");
    }

    #[test]
    fn sample_config_parses() {
        let config = Config::parse(SAMPLE_CONFIG, "sample.toml").unwrap();
        assert_eq!(config.gateway.listen, "127.0.0.1:4433".parse().unwrap());
        assert_eq!(
            config.gateway.listen_tcp,
            Some("127.0.0.1:4433".parse().unwrap())
        );
        assert_eq!(config.gateway.limits, Limits::default());
        assert_eq!(config.devices.len(), 3);
        assert_eq!(config.rules.len(), 4);
        let rule = &config.rules[0];
        assert_eq!(rule.name, "acme-maintains-its-pumps");
        assert_eq!(rule.who.kind, Some(PrincipalKind::Vendor));
        assert_eq!(rule.who.org.as_deref(), Some("acme"));
        assert_eq!(rule.max_session, Some(Duration::from_secs(7200)));
        assert_eq!(
            rule.devices,
            DeviceSelector::Labels([("vendor".into(), "acme".into())].into())
        );
        assert_eq!(config.rules[2].hours.as_ref().unwrap().windows().len(), 2);
        assert_eq!(config.rules[3].devices, DeviceSelector::All);
        assert_eq!(
            config.device("monitor-3").unwrap().address,
            DeviceAddress::Host {
                host: "monitor-3.icu.hospital.example".into(),
                port: 80
            }
        );
    }

    #[test]
    fn optional_gateway_fields() {
        let text = format!(
            "{GATEWAY}listen_tcp = \"[::]:4433\"\ntimezone_offset = \"+01:00\"\nidle_timeout = \"1h30m\"\nmax_connections = 10\nmax_connections_per_source = 2\n\
             {DEVICE}\n[[rule]]\nname = \"r\"\nwho = {{ kind = \"vendor\" }}\ndevices = {{ ids = [\"pump-12\"] }}\nhours = \"Mon 09:00-10:00\"\n"
        );
        let config = Config::parse(&text, "w.toml").unwrap();
        let g = &config.gateway;
        assert_eq!(g.listen_tcp, Some("[::]:4433".parse().unwrap()));
        assert_eq!(g.timezone_offset, offset!(+1));
        assert_eq!(g.limits.idle_timeout, Duration::from_secs(5400));
        assert_eq!(g.limits.max_connections, 10);
        assert_eq!(g.limits.handshake_timeout, Duration::from_secs(10));
        // Rule hours use the gateway's offset: 08:30 UTC on a Monday is 09:30 at +01:00.
        let hours = config.rules[0].hours.as_ref().unwrap();
        assert!(matches!(
            hours.state(datetime!(2024-01-01 8:30 UTC)),
            WindowState::Open { .. }
        ));
    }

    #[test]
    fn resolve_paths_joins_relative_paths_only() {
        let text = GATEWAY.replace("\"var/ward\"", "\"/srv/ward\"");
        let mut config = Config::parse(&text, "w.toml").unwrap();
        config.resolve_paths(Path::new("/etc/ward"));
        assert_eq!(config.gateway.ca, PathBuf::from("/etc/ward/certs-dev"));
        assert_eq!(
            config.gateway.key,
            PathBuf::from("/etc/ward/certs-dev/gateway.key")
        );
        assert_eq!(config.gateway.state_dir, PathBuf::from("/srv/ward"));
    }

    /// `[web]`: off by default; a listener of its own; timeouts parsed; typos refused.
    #[test]
    fn web_table() {
        let off = Config::parse(GATEWAY, "w.toml").unwrap().web;
        assert_eq!(off, WebConfig::default());
        assert_eq!(off.listen, None);
        let on = Config::parse(
            &format!("{GATEWAY}\n[web]\nlisten = \"127.0.0.1:8443\"\nidle_timeout = \"5m\"\n"),
            "w.toml",
        )
        .unwrap()
        .web;
        assert_eq!(on.listen, Some("127.0.0.1:8443".parse().unwrap()));
        assert_eq!(on.idle_timeout, Duration::from_secs(300));
        assert_eq!(on.max_session, Duration::from_secs(8 * 3600));
        let gw = Config::parse(GATEWAY, "w.toml").unwrap().gateway.listen;
        let clash =
            Config::parse(&format!("{GATEWAY}\n[web]\nlisten = \"{gw}\"\n"), "w.toml").unwrap_err();
        assert_eq!(clash.field, "web.listen");
        assert!(clash.to_string().contains("port of its own"), "{clash}");
        let typo = Config::parse(
            &format!("{GATEWAY}\n[web]\nlisten_on = \"127.0.0.1:1\"\n"),
            "w.toml",
        )
        .unwrap_err();
        assert!(typo.to_string().contains("listen_on"), "{typo}");
        let bad = Config::parse(
            &format!("{GATEWAY}\n[web]\nidle_timeout = \"soon\"\n"),
            "w.toml",
        )
        .unwrap_err();
        assert_eq!(bad.field, "web.idle_timeout");
    }

    /// `[web] consoles_listen`: devices' HTTP consoles on an origin (port) of their own, only
    /// beside the web console, never on its port or a gateway listener's.
    #[test]
    fn web_consoles_listen() {
        let web = |body: &str| Config::parse(&format!("{GATEWAY}\n[web]\n{body}"), "w.toml");
        let on = web("listen = \"127.0.0.1:8443\"\nconsoles_listen = \"127.0.0.1:8444\"\n")
            .unwrap()
            .web;
        assert_eq!(on.listen, Some("127.0.0.1:8443".parse().unwrap()));
        assert_eq!(on.consoles_listen, Some("127.0.0.1:8444".parse().unwrap()));
        assert_eq!(
            web("listen = \"127.0.0.1:8443\"\n")
                .unwrap()
                .web
                .consoles_listen,
            None
        );
        // Port 0 (tests): the system picks two different ports.
        let zero = web("listen = \"127.0.0.1:0\"\nconsoles_listen = \"127.0.0.1:0\"\n").unwrap();
        assert_eq!(zero.web.consoles_listen.map(|a| a.port()), Some(0));
        // (config, expected fragment of the error); every error names the field.
        let refused = [
            (
                "consoles_listen = \"127.0.0.1:8444\"\n",
                "set [web] listen too",
            ),
            (
                "listen = \"127.0.0.1:8443\"\nconsoles_listen = \"127.0.0.1:8443\"\n",
                "origin (port) of their own",
            ),
            (
                "listen = \"0.0.0.0:8443\"\nconsoles_listen = \"127.0.0.1:8443\"\n",
                "origin (port) of their own",
            ),
            (
                "listen = \"127.0.0.1:8443\"\nconsoles_listen = \"127.0.0.1:4433\"\n",
                "port of its own",
            ),
            (
                "listen = \"127.0.0.1:8443\"\nconsoles_listen = \"consoles\"\n",
                "",
            ),
        ];
        for (body, fragment) in refused {
            let e = web(body).unwrap_err();
            assert_eq!(e.field, "web.consoles_listen", "{body}: {e}");
            assert!(e.to_string().contains(fragment), "{body}: {e}");
        }
    }

    /// What a reload may change in `[gateway]` (timezone_offset) and what it names and refuses.
    #[test]
    fn restart_only_changes_name_each_field() {
        let base = Config::parse(GATEWAY, "w.toml").unwrap().gateway;
        let cases: &[(&str, &str, &[&str])] = &[
            ("same", "", &[]),
            ("timezone only", "timezone_offset = \"+02:00\"\n", &[]),
            (
                "tcp listener added",
                "listen_tcp = \"127.0.0.1:4433\"\n",
                &["gateway.listen_tcp"],
            ),
            (
                "a limit",
                "max_sessions = 700\nidle_timeout = \"1m\"\n",
                &["gateway.idle_timeout", "gateway.max_sessions"],
            ),
            (
                "disk thresholds",
                "disk_alert_percent = 50\ndisk_refuse_percent = 60\n",
                &["gateway.disk_alert_percent", "gateway.disk_refuse_percent"],
            ),
        ];
        for (name, extra, want) in cases {
            let new = Config::parse(&format!("{GATEWAY}{extra}"), "w.toml")
                .unwrap()
                .gateway;
            assert_eq!(base.restart_only_changes(&new), *want, "{name}");
        }
        for (from, to, field) in [
            ("127.0.0.1:4433", "127.0.0.1:4434", "gateway.listen"),
            ("\"certs-dev\"", "\"other-ca\"", "gateway.ca"),
            ("certs-dev/gateway.crt", "other.crt", "gateway.cert"),
            ("certs-dev/gateway.key", "other.key", "gateway.key"),
            ("var/ward", "var/other", "gateway.state_dir"),
        ] {
            let new = Config::parse(&GATEWAY.replace(from, to), "w.toml")
                .unwrap()
                .gateway;
            assert_eq!(base.restart_only_changes(&new), [field], "{from} -> {to}");
        }
    }

    /// One fixture per error type: (name, config text, expected line, expected field, expected
    /// fragment of the message).
    #[test]
    fn invalid_configs_name_file_line_and_field() {
        let rule = |body: &str| format!("{GATEWAY}{DEVICE}\n[[rule]]\nname = \"r\"\n{body}\n");
        // GATEWAY is 6 lines, DEVICE adds 6 (blank + 5), so the first rule's `name` is line 15
        // and the line after it 16.
        let cases: Vec<(&str, String, usize, &str, &str)> = vec![
            ("toml syntax", format!("{GATEWAY}listen_tcp = \n"), 7, "gateway.listen_tcp", "quoted"),
            ("unknown top-level field", format!("{GATEWAY}\n[gatway]\n"), 8, "gatway", "unknown field `gatway`"),
            ("unknown gateway field", format!("{GATEWAY}lisen = \"x\"\n"), 7, "gateway.lisen", "unknown field `lisen`"),
            ("unknown field in inline table",
                rule("who = { knd = \"vendor\" }\ndevices = { all = true }"), 16, "rule[0].who.knd", "unknown field `knd`"),
            ("missing field", format!("{GATEWAY}\n[[device]]\nid = \"x\"\n"), 8, "device[0].address", "missing field `address`"),
            ("wrong type", format!("{GATEWAY}max_sessions = \"lots\"\n"), 7, "gateway.max_sessions", "invalid type"),
            ("negative count", format!("{GATEWAY}max_sessions = -1\n"), 7, "gateway.max_sessions", "u32"),
            ("zero count", format!("{GATEWAY}max_sessions = 0\n"), 7, "gateway.max_sessions", "at least 1"),
            ("percent over 100", format!("{GATEWAY}disk_alert_percent = 101\n"), 7, "gateway.disk_alert_percent", "from 1 to 100"),
            ("zero percent", format!("{GATEWAY}disk_refuse_percent = 0\n"), 7, "gateway.disk_refuse_percent", "from 1 to 100"),
            ("alert not below refuse", format!("{GATEWAY}disk_alert_percent = 95\ndisk_refuse_percent = 95\n"), 7,
                "gateway.disk_alert_percent", "must be below disk_refuse_percent"),
            ("inconsistent limits", format!("{GATEWAY}max_connections = 8\nmax_connections_per_source = 9\n"), 8,
                "gateway.max_connections_per_source", "more than max_connections"),
            ("bad listen", GATEWAY.replace("127.0.0.1:4433", "localhost:4433"), 2, "gateway.listen", "bad listen address"),
            ("bad duration", format!("{GATEWAY}idle_timeout = \"15 minutes\"\n"), 7, "gateway.idle_timeout", "bad duration"),
            ("bad offset", format!("{GATEWAY}timezone_offset = \"CET\"\n"), 7, "gateway.timezone_offset", "timezone offset"),
            ("empty path", GATEWAY.replace("\"var/ward\"", "\"\""), 6, "gateway.state_dir", "must not be empty"),
            ("duplicate device id", format!("{GATEWAY}{DEVICE}{DEVICE}"), 15, "device[1].id", "duplicate device id \"pump-12\" (first defined on line 9)"),
            ("bad device id", format!("{GATEWAY}{}", DEVICE.replace("pump-12", "pump 12")), 9, "device[0].id", "device id"),
            ("unknown protocol", format!("{GATEWAY}{}", DEVICE.replace("telnet", "ssh")), 11, "device[0].protocol", "unknown protocol \"ssh\""),
            ("bad address", format!("{GATEWAY}{}", DEVICE.replace("10.20.0.12:23", "10.20.0.12")), 10, "device[0].address", "bad address"),
            ("unsafe label value", format!("{GATEWAY}{}", DEVICE.replace("\"acme\"", "\"acme; rm -rf\"")), 12,
                "device[0].labels.vendor", "label value"),
            ("duplicate rule name",
                format!("{}\n[[rule]]\nname = \"r\"\nwho = {{ kind = \"admin\" }}\ndevices = {{ all = true }}\n",
                    rule("who = { kind = \"admin\" }\ndevices = { all = true }")),
                20, "rule[1].name", "duplicate rule name \"r\" (first defined on line 15)"),
            ("bad rule name", rule("who = { kind = \"admin\" }\ndevices = { all = true }").replace("name = \"r\"", "name = \"a rule\""),
                15, "rule[0].name", "rule name"),
            ("empty who", rule("who = {}\ndevices = { all = true }"), 16, "rule[0].who", "at least one of kind"),
            ("unknown kind", rule("who = { kind = \"doctor\" }\ndevices = { all = true }"), 16, "rule[0].who.kind", "unknown principal kind"),
            ("empty org", rule("who = { org = \"\" }\ndevices = { all = true }"), 16, "rule[0].who.org", "must not be empty"),
            ("unknown device id in rule", rule("who = { kind = \"admin\" }\ndevices = { ids = [\"pump-99\"] }"), 17,
                "rule[0].devices.ids", "no device with id \"pump-99\""),
            ("two selectors", rule("who = { kind = \"admin\" }\ndevices = { all = true, ids = [\"pump-12\"] }"), 17,
                "rule[0].devices", "exactly one of"),
            ("empty labels selector", rule("who = { kind = \"admin\" }\ndevices = { labels = {} }"), 17, "rule[0].devices", "exactly one of"),
            ("unsafe label in selector", rule("who = { kind = \"admin\" }\ndevices = { labels = { vendor = \"a/b\" } }"), 17,
                "rule[0].devices.labels.vendor", "label value"),
            ("bad max_session", rule("who = { kind = \"admin\" }\ndevices = { all = true }\nmax_session = \"0s\""), 18,
                "rule[0].max_session", "greater than zero"),
            ("bad window", rule("who = { kind = \"admin\" }\ndevices = { all = true }\nhours = \"Mon-Fry 07:00-19:00\""), 18,
                "rule[0].hours", "unknown day \"Fry\""),
            ("bad window in list", rule("who = { kind = \"admin\" }\ndevices = { all = true }\nhours = [\"Mon 07:00-08:00\", \"Tue 7-8\"]"), 18,
                "rule[0].hours", "bad window \"Tue 7-8\""),
            ("empty window list", rule("who = { kind = \"admin\" }\ndevices = { all = true }\nhours = []"), 18,
                "rule[0].hours", "no windows"),
            ("hours of wrong type", rule("who = { kind = \"admin\" }\ndevices = { all = true }\nhours = 7"), 18,
                "rule[0].hours", "window string"),
        ];
        for (name, text, line, field, fragment) in cases {
            let err = Config::parse(&text, "ward.toml").expect_err(name);
            let msg = err.to_string();
            assert_eq!(err.location.map(|l| l.line), Some(line), "{name}: {msg}");
            assert_eq!(err.field, field, "{name}: {msg}");
            assert!(
                msg.starts_with(&format!("ward.toml:{line}:")),
                "{name}: {msg}"
            );
            assert!(msg.contains(field), "{name}: {msg}");
            assert!(msg.contains(fragment), "{name}: {msg}");
        }
    }

    #[test]
    fn error_display_format() {
        let text = format!("{GATEWAY}{}", DEVICE.replace("telnet", "ssh"));
        let err = Config::parse(&text, "/etc/ward/ward.toml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/ward/ward.toml:11:12: device[0].protocol: unknown protocol \"ssh\" (expected telnet, http, dicom, hl7 or raw)"
        );
    }

    #[test]
    fn columns_count_characters() {
        assert_eq!(Location::of("ab\ncé=x", 6), Location { line: 2, column: 3 });
        assert_eq!(Location::of("", 10), Location { line: 1, column: 1 });
    }
}
