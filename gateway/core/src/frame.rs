//! Control frames of the Ward session protocol (see `docs/protocol.md`).
//!
//! Every QUIC bidirectional stream (or TLS-over-TCP connection) starts with exactly one request
//! frame from the client and one response frame from the gateway. After `Opened`, device bytes
//! travel in `DATA`/`EOF` frames with the same header (type bytes reserved in [`frame_type`],
//! handled by the I/O layer's data path), and the gateway may end with one `Closed` frame.
//!
//! Layout: `[u8 type][u32 big-endian payload length][payload]`, payload = a UTF-8 JSON object
//! with exactly the fields of the frame type (unknown fields are rejected), at most
//! [`MAX_PAYLOAD`] bytes. [`decode`] works on whatever bytes have arrived so far and returns
//! `Ok(None)` until a whole frame is there, so the I/O layer just appends and retries.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::device::Protocol;
use crate::policy::Lock;
pub use crate::policy::LockTarget;

/// Protocol version; bump it together with [`ALPN`].
pub const VERSION: u8 = 1;
/// The TLS ALPN protocol id for this version. The version is negotiated here, not in frames.
pub const ALPN: &[u8] = b"ward/1";
/// Largest payload accepted or produced (16 KiB).
pub const MAX_PAYLOAD: usize = 16 * 1024;
/// Bytes before the payload: type (1) + length (4).
pub const HEADER_LEN: usize = 5;

/// Why bytes could not be decoded into a frame, or a frame encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The type byte names no frame type.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    /// The declared (decode) or actual (encode) payload length exceeds [`MAX_PAYLOAD`].
    #[error("frame payload of {len} bytes exceeds the {MAX_PAYLOAD}-byte limit")]
    TooLarge {
        /// The length.
        len: usize,
    },
    /// The payload is not UTF-8.
    #[error("{frame} frame payload is not UTF-8")]
    NotUtf8 {
        /// The frame type's name.
        frame: &'static str,
    },
    /// A request where a response was expected, or the other way round.
    #[error("unexpected {frame} frame: expected a {expected}")]
    WrongDirection {
        /// The frame type's name.
        frame: &'static str,
        /// `request` or `response`.
        expected: &'static str,
    },
    /// The payload is not the JSON object this frame type requires.
    #[error("bad {frame} frame payload: {message}")]
    BadJson {
        /// The frame type's name.
        frame: &'static str,
        /// The JSON error.
        message: String,
    },
}

/// What a client asks for; the first frame on every stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Open a session to a device; on `Opened` the stream becomes the device's byte stream.
    Open {
        /// Device id.
        device: String,
        /// Ask for emergency access (recorded and alerted on; policy decides).
        break_glass: bool,
        /// Free-text justification, recorded in the audit log.
        reason: Option<String>,
    },
    /// List the devices this client can open now.
    ListDevices,
    /// Lock a principal, device or org (security staff).
    Lock {
        /// What to lock.
        target: LockTarget,
        /// For how long; `None` = until unlocked.
        for_secs: Option<u64>,
        /// Why (shown to whoever is locked out).
        reason: String,
        /// Lock even though the target matches nothing the gateway knows (e.g. a principal that
        /// has not connected yet); audited as forced. On the wire only when true.
        force: bool,
    },
    /// Remove a lock.
    Unlock {
        /// What to unlock.
        target: LockTarget,
    },
    /// List current locks.
    ListLocks,
    /// A security-team review operation (security and admin identities only; audited).
    Review(Review),
    /// Log in with password (+ TOTP) and a CSR; answered with `Issued`. The only request a
    /// connection without a client certificate may make.
    Login(Login),
    /// Access requests, approvals, grants and users (answered with `Access`, `Stream` or `Ok`).
    Access(AccessOp),
    /// Credential-vault operations (admins; answered with `Vault`, `Stream` or `Ok`).
    Vault(VaultOp),
    /// Show, confirm or remove the certificate pin of a device that speaks TLS itself
    /// (security/admin; answered with `DevicePin`).
    PinDevice(PinDevice),
    /// Live sessions: list them, or end one (security/admin; answered with `Stream` + JSON lines,
    /// or `Ok`).
    Live(LiveOp),
    /// The store's key-encryption key: status, or an online rotation (admins; answered with
    /// `Stream` + JSON lines).
    Keys(KeysOp),
    /// Start a `ward login --sso`: the gateway keeps the CSR and answers `SsoPending` with a URL
    /// and a code for a signed-in browser to approve. Like `Login`, a connection without a client
    /// certificate may send it (one request per such connection).
    SsoStart(SsoStart),
    /// Ask how a `ward login --sso` stands: answered `SsoPending` (not approved yet), `Issued`
    /// (approved: the certificate, once), or `Denied` (refused in the browser, expired, unknown).
    SsoPoll {
        /// The `poll` id from `SsoPending`.
        poll: String,
    },
    /// The gateway's signing keys: list every public key, or rotate (answered with `Ok`).
    SigningKeys(SigningKeysOp),
}

/// `ward audit pubkey --all` and `ward audit rotate-key`, carried by [`Request::SigningKeys`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum SigningKeysOp {
    /// Every public key the gateway ever signed with (security/admin; audited
    /// `public_keys_read`): `Ok` whose message is the keyring's JSON lines.
    List,
    /// Make a new signing key (admin; audited `signing_key_rotated`): `Ok` naming the old and new
    /// key ids.
    Rotate,
}

/// `ward login --sso`'s first request, carried by [`Request::SsoStart`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SsoStart {
    /// The `[[oidc]]` provider the browser should sign in with (its `name`); absent: any
    /// sign-in the console offers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// PEM CSR made on the client; only its public key is used.
    pub csr: String,
}

/// A `ward login --sso` waiting for a browser, carried by [`Response::SsoPending`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SsoPending {
    /// Where to approve it: the console's page `<console>/#/sso/cli/<poll>`.
    pub url: String,
    /// The code the page shows too (`WDJB-MJHT`), for the user to compare.
    pub user_code: String,
    /// The id to poll with (`SsoPoll`); 256 random bits.
    pub poll: String,
    /// When it expires unapproved (Unix seconds).
    pub expires_unix: i64,
}

/// `ward live` and `ward end`, carried by [`Request::Live`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum LiveOp {
    /// The sessions in progress (answered with `Stream` + one JSON line per session).
    List,
    /// End one session; its client is told "terminated by <who>: <reason>".
    End {
        /// The session id.
        session: String,
        /// Why (required).
        reason: String,
    },
}

/// `ward keys status` and `ward keys rotate --kek`, carried by [`Request::Keys`] (admins only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum KeysOp {
    /// The key-encryption keys and how many stored values each seals (`Stream` + one JSON line
    /// per key).
    Status,
    /// A new key-encryption key, every stored secret re-encrypted under it in one transaction
    /// while the gateway serves, the old key file removed (`Stream` + one JSON line; audited
    /// `kek_rotated`).
    RotateKek,
}

/// `ward devices pin DEVICE [--confirm sha256:…] [--remove]`, carried by [`Request::PinDevice`].
/// Without `confirm` or `remove` the gateway connects to the device and shows the certificate it
/// presents; with `confirm` it stores the pin if the device presents that certificate now (a
/// completed handshake); with `remove` it drops the stored pin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinDevice {
    /// Device id.
    pub device: String,
    /// The fingerprint to pin (`sha256:` and 64 hex digits), as the show step printed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm: Option<String>,
    /// Remove the stored pin.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remove: bool,
}

/// Answer to [`Request::PinDevice`], carried by [`Response::DevicePin`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicePinInfo {
    /// Device id.
    pub device: String,
    /// The fingerprint of the certificate the device presented to the gateway (`None` when it was
    /// not contacted: `--remove`).
    #[serde(default)]
    pub presented: Option<String>,
    /// The presented certificate's subject, issuer and validity (RFC 3339), for people.
    #[serde(default)]
    pub subject: String,
    /// Issuer.
    #[serde(default)]
    pub issuer: String,
    /// Not before.
    #[serde(default)]
    pub not_before: String,
    /// Not after.
    #[serde(default)]
    pub not_after: String,
    /// The pin sessions check against after this request (`None`: unpinned).
    #[serde(default)]
    pub pinned: Option<String>,
    /// Where that pin comes from: `config`, `store` or `none`.
    pub source: String,
    /// What was done, and what to do next.
    pub message: String,
}

/// A login: the user's password and TOTP code, and a CSR for the key made on the client.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    /// User name.
    pub user: String,
    /// Password (never logged; `Debug` hides it).
    pub password: String,
    /// TOTP code, when the user has MFA.
    #[serde(default)]
    pub totp: Option<String>,
    /// PEM CSR; only its public key is used.
    pub csr_pem: String,
    /// Bind the certificate to this grant (its end caps the certificate).
    #[serde(default)]
    pub grant: Option<String>,
    /// Replace the password with this one once the login succeeds (e.g. the initial one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_password: Option<String>,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .field("totp", &self.totp.as_ref().map(|_| "<hidden>"))
            .field("grant", &self.grant)
            .field(
                "new_password",
                &self.new_password.as_ref().map(|_| "<hidden>"),
            )
            .finish_non_exhaustive()
    }
}

/// Just-in-time access operations, carried by [`Request::Access`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum AccessOp {
    /// Ask for access to a device for a window.
    Request {
        /// Device id.
        device: String,
        /// Why.
        reason: String,
        /// Window length in seconds.
        duration_secs: u64,
        /// Window start (Unix seconds); `None` = now.
        #[serde(default)]
        start_unix: Option<i64>,
    },
    /// Requests this principal may see (own, to approve, or all for security/admin); streams JSON lines.
    ListRequests {
        /// Include decided and expired requests.
        #[serde(default)]
        all: bool,
    },
    /// Approve a request.
    Approve {
        /// Request id.
        id: String,
        /// Optional comment.
        #[serde(default)]
        comment: Option<String>,
    },
    /// Deny a request.
    Deny {
        /// Request id.
        id: String,
        /// Why.
        reason: String,
    },
    /// Grants this principal may see; streams JSON lines.
    ListGrants {
        /// Include ended and revoked grants.
        #[serde(default)]
        all: bool,
    },
    /// Revoke a grant; live sessions on it end within a second.
    Revoke {
        /// Grant id.
        grant: String,
        /// Why.
        reason: String,
    },
    /// Add a user (admin only). Answered with `Access(UserCreated)`.
    UserAdd {
        /// Name.
        name: String,
        /// vendor | clinician | security | admin.
        kind: String,
        /// Organisation.
        #[serde(default)]
        org: Option<String>,
        /// Roles.
        #[serde(default)]
        roles: Vec<String>,
    },
    /// Disable a user (admin only): no more logins, live sessions end.
    UserDisable {
        /// Name.
        name: String,
    },
    /// List users (admin only); streams JSON lines.
    UserList,
}

/// Single-object answers to [`AccessOp`]s, carried by [`Response::Access`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
// One value per request/response; size differences between variants cost nothing measurable.
#[allow(clippy::large_enum_variant)]
pub enum AccessReply {
    /// A request (after `Request` or `Deny`).
    Request {
        /// The request.
        request: crate::access::AccessRequest,
    },
    /// An approval was recorded.
    Approved {
        /// The request, after the approval.
        request: crate::access::AccessRequest,
        /// Distinct approvers so far.
        count: u32,
        /// Needed in all.
        required: u32,
        /// The grant, when this approval completed the request.
        grant: Option<crate::access::Grant>,
    },
    /// A grant (after `Revoke`).
    Grant {
        /// The grant.
        grant: crate::access::Grant,
    },
    /// A user was created: the one-time initial password and the TOTP provisioning URI.
    UserCreated {
        /// Name.
        name: String,
        /// Initial password (shown once).
        password: String,
        /// `otpauth://` URI, when the user has TOTP.
        totp_uri: Option<String>,
    },
}

/// Credential-vault operations (admin identities only; audited, never with the value), carried by
/// [`Request::Vault`]. The one value that travels is `Set`'s, gateway-bound inside TLS; its
/// `Debug` is redacted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum VaultOp {
    /// Create or replace the credential for a device's account. Answered with `Vault(Entry)`.
    Set {
        /// Device id.
        device: String,
        /// The account (role on the device: `service`, `nurse`).
        account: String,
        /// The user name the device knows; absent: the entry's current one, else the account.
        #[serde(default)]
        username: Option<String>,
        /// The password.
        #[serde(with = "secret_text")]
        secret: crate::secret::Secret<String>,
    },
    /// Every entry (names, ages, key fingerprints; never values); streams JSON lines of
    /// [`VaultEntryInfo`].
    List,
    /// Remove an entry. Answered with `Ok`.
    Remove {
        /// Device id.
        device: String,
        /// The account.
        account: String,
    },
    /// Replace the device's password with a random one, through its console. Answered with
    /// `Vault(Entry)`.
    Rotate {
        /// Device id.
        device: String,
        /// The account.
        account: String,
    },
}

/// Single-object answers to [`VaultOp`]s, carried by [`Response::Vault`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum VaultReply {
    /// An entry after a change, and what was done.
    Entry {
        /// The entry.
        entry: VaultEntryInfo,
        /// What was done, for people.
        message: String,
    },
}

/// A vault entry as listed (never a value). Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultEntryInfo {
    /// Device id.
    pub device: String,
    /// The account.
    pub account: String,
    /// The user name the device knows.
    pub username: String,
    /// Fingerprint of the vault key the value is sealed under.
    pub key_fingerprint: String,
    /// When first set.
    pub created_unix: i64,
    /// When the value last changed.
    pub updated_unix: i64,
    /// When a session last used it.
    pub last_used_unix: Option<i64>,
    /// When a rotation last committed.
    pub last_rotated_unix: Option<i64>,
    /// A rotation stored a new value no login has confirmed yet (the previous one is kept).
    pub pending: bool,
}

/// A [`Secret`](crate::secret::Secret) string on the wire: a plain JSON string.
mod secret_text {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::secret::Secret;

    pub fn serialize<S: Serializer>(v: &Secret<String>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v.expose())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Secret<String>, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

/// Security-team review operations, carried by [`Request::Review`]. Answers that can be large
/// (listings, recordings, the audit log) come back as [`Response::Stream`] followed by the bytes
/// in data frames and `EOF`, exactly like a session's data phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Review {
    /// List recorded sessions matching the filter; streams one JSON object per line.
    ListSessions {
        /// Principal name (or `org/name`) to match.
        principal: Option<String>,
        /// Device id to match.
        device: Option<String>,
        /// Sessions that started at or after this Unix time.
        since_unix: Option<i64>,
        /// Sessions that started before this Unix time.
        until_unix: Option<i64>,
        /// Only sessions whose recorded bytes contain this text.
        grep: Option<String>,
        /// Only sessions that did an operation matching this `protocol:glob` (`dicom:C-STORE`,
        /// `http:POST`, `telnet:rate *`). Left out when not asked, so a gateway from before
        /// operations still answers the other filters.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        operation: Option<String>,
    },
    /// Stream one recording's file, for replay, export or verification on the reviewer's machine.
    Recording {
        /// The session.
        session_id: String,
        /// `replay`, `export` or `verify` (audited as such).
        purpose: String,
        /// The reviewer chose to proceed although the recording failed verification (audited).
        force: bool,
    },
    /// Stream one session's operations (decoded protocol operations, their answers, refusals,
    /// where decoding gave up), read from its recording by the gateway: one JSON object per
    /// line, patient data masked unless `show_phi` (security case 49).
    Operations {
        /// The session.
        session_id: String,
        /// Show patient data (fields `phi.*`) unmasked: an explicit request, audited as
        /// `phi_viewed`.
        show_phi: bool,
        /// Read a recording that fails verification (its verified records only; audited).
        force: bool,
    },
    /// Stream the audit log file.
    AuditLog,
    /// The gateway's recording/audit public key (hex) in an `Ok` message.
    PublicKey,
    /// Sign an evidence bundle's `SHA256SUMS` (`ward evidence export --gateway`) with the
    /// gateway's current signing key. The `SHA256SUMS` bytes follow the request as data frames,
    /// then `EOF` (at most [`MAX_EVIDENCE_SUMS`] bytes). The gateway checks that each session's
    /// `recordings/<id>.wrec` line is the SHA-256 of its stored recording, audits
    /// `evidence_exported` (sessions, digest) and answers `Ok` whose message is the JSON
    /// `{"key_id","public","sig"}` (hex). Security and admin identities only.
    SignEvidence {
        /// The sessions in the bundle.
        sessions: Vec<String>,
    },
}

/// The largest `SHA256SUMS` a [`Review::SignEvidence`] may send: 8 MiB (about 80,000 files).
pub const MAX_EVIDENCE_SUMS: usize = 8 << 20;

/// Error classes in [`Response::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request frame was malformed (client's fault; do not retry unchanged).
    BadRequest,
    /// The device could not be reached (connection refused, no route).
    DeviceUnreachable,
    /// The device did not answer within `device_connect_timeout`.
    DeviceTimeout,
    /// A connection or session limit was hit (retry later).
    Overloaded,
    /// The gateway is shutting down (retry on another gateway or later).
    ShuttingDown,
    /// A bug or unexpected failure in the gateway.
    Internal,
    /// The request is not allowed for this principal (e.g. `Lock` by a non-security principal).
    Forbidden,
    /// The session or operation cannot be recorded (its recording or the audit log cannot be
    /// written), so it is refused (fail closed).
    RecordingUnavailable,
    /// Too many logins are being checked at once (password hashing is bounded); retry in a
    /// moment.
    LoginBusy,
    /// The TOTP code was right but already used; wait for the next one.
    TotpReused,
}

/// One device in a [`Response::Devices`] listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceInfo {
    /// Device id.
    pub id: String,
    /// Protocol it speaks.
    pub protocol: Protocol,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// The rule that lets this client reach it (empty unless [`Reach::Open`]).
    pub rule: String,
    /// How this client may reach it; absent (and so from older gateways) means now, by `rule`.
    #[serde(default, skip_serializing_if = "Reach::is_open")]
    pub reach: Reach,
    /// The operation list a session opened now would be held to (docs/protocols.md); absent:
    /// none (or a gateway from before operation lists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operations: Option<crate::operations::OpList>,
    /// The gateway reaches the device over TLS with a pinned certificate.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls: bool,
}

/// How a client may reach a device in a [`Response::Devices`] listing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reach {
    /// Now, through a rule or a live grant.
    #[default]
    Open,
    /// After an approved access request (`ward request`).
    Request,
    /// Only as a break-glass session (`ward connect --break-glass`).
    BreakGlass,
    /// After an approved request, or as break-glass in an emergency.
    RequestOrBreakGlass,
}

impl Reach {
    /// Reachable now.
    pub fn is_open(&self) -> bool {
        matches!(self, Reach::Open)
    }

    /// For people: `open`, `request`, `break-glass`, `request|break-glass`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reach::Open => "open",
            Reach::Request => "request",
            Reach::BreakGlass => "break-glass",
            Reach::RequestOrBreakGlass => "request|break-glass",
        }
    }
}

/// One lock in a [`Response::Locks`] listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockInfo {
    /// What is locked.
    pub target: LockTarget,
    /// When it lifts (Unix seconds); `None` = until unlocked.
    pub until_unix: Option<i64>,
    /// Why.
    pub reason: String,
    /// Who locked it.
    pub by: String,
}

/// What the gateway answers; exactly one per request, plus `Closed` (see below).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// The session is open: every following byte on the stream is device traffic.
    Opened {
        /// Session id (also names the recording).
        session_id: String,
        /// Device id.
        device: String,
        /// The rule that allowed it.
        rule: String,
        /// When the gateway will end it at the latest (Unix seconds).
        ends_at_unix: i64,
        /// What ends it then, e.g. `certificate expiry`, `maximum session duration`.
        end_reason_if_uncut: String,
    },
    /// Policy said no; `reason` is meant for the user.
    Denied {
        /// Why.
        reason: String,
    },
    /// Something other than policy failed.
    Error {
        /// Error class.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
    },
    /// Answer to `ListDevices`.
    Devices {
        /// The devices.
        devices: Vec<DeviceInfo>,
    },
    /// Answer to `Lock` / `Unlock`.
    Ok {
        /// What was done.
        message: String,
    },
    /// Answer to `ListLocks`.
    Locks {
        /// The locks.
        locks: Vec<LockInfo>,
    },
    /// The gateway ended the session on this stream (lock, expiry, window end, idle, shutdown).
    /// Sent in the data phase, at a data-frame boundary, as the last frame before the gateway
    /// finishes the stream. See `docs/protocol.md`.
    Closed {
        /// Why, e.g. `locked: credential leak`.
        reason: String,
    },
    /// The answer to a [`Review`] follows as data frames, then `EOF`.
    Stream {
        /// What is being sent (e.g. `sessions`, `recording 3f…`, `audit log`).
        what: String,
    },
    /// Answer to `Login`: the certificate chain for the client's key.
    Issued {
        /// PEM chain (leaf first).
        chain_pem: String,
        /// The certificate's not-after (Unix seconds).
        not_after_unix: i64,
        /// The grant the certificate is bound to, if any.
        grant: Option<String>,
    },
    /// Answer to an [`AccessOp`] that returns one object.
    Access(Box<AccessReply>),
    /// Answer to a [`VaultOp`] that returns one object.
    Vault(Box<VaultReply>),
    /// Answer to [`Request::PinDevice`].
    DevicePin(Box<DevicePinInfo>),
    /// Answer to `SsoStart`, and to `SsoPoll` while no browser approved it yet.
    SsoPending(SsoPending),
}

/// Any frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Client to gateway.
    Request(Request),
    /// Gateway to client.
    Response(Response),
}

impl From<Request> for Frame {
    fn from(r: Request) -> Self {
        Frame::Request(r)
    }
}

impl From<Response> for Frame {
    fn from(r: Response) -> Self {
        Frame::Response(r)
    }
}

/// Frame type bytes. Requests are `0x0_`, data-phase frames `0x1_`, responses `0x8_`.
pub mod frame_type {
    /// [`Request::Open`](super::Request::Open).
    pub const OPEN: u8 = 0x01;
    /// [`Request::ListDevices`](super::Request::ListDevices).
    pub const LIST_DEVICES: u8 = 0x02;
    /// [`Request::Lock`](super::Request::Lock).
    pub const LOCK: u8 = 0x03;
    /// [`Request::Unlock`](super::Request::Unlock).
    pub const UNLOCK: u8 = 0x04;
    /// [`Request::ListLocks`](super::Request::ListLocks).
    pub const LIST_LOCKS: u8 = 0x05;
    /// [`Request::Review`](super::Request::Review).
    pub const REVIEW: u8 = 0x06;
    /// `Login`.
    pub const LOGIN: u8 = 0x07;
    /// `Access`.
    pub const ACCESS: u8 = 0x08;
    /// `Vault`.
    pub const VAULT: u8 = 0x09;
    /// `Issued`.
    pub const ISSUED: u8 = 0x89;
    /// `Access` (response).
    pub const ACCESS_REPLY: u8 = 0x8a;
    /// `Vault` (response).
    pub const VAULT_REPLY: u8 = 0x8b;
    /// `PinDevice`.
    pub const PIN_DEVICE: u8 = 0x0d;
    /// `DevicePin` (response).
    pub const DEVICE_PIN: u8 = 0x8d;
    /// `Live`.
    pub const LIVE: u8 = 0x0e;
    /// `Keys`.
    pub const KEYS: u8 = 0x0f;
    /// `SigningKeys`.
    pub const SIGNING_KEYS: u8 = 0x0c;
    /// `SsoStart`.
    pub const SSO_START: u8 = 0x0a;
    /// `SsoPoll`.
    pub const SSO_POLL: u8 = 0x0b;
    /// `SsoPending` (response).
    pub const SSO_PENDING: u8 = 0x8c;
    /// [`Response::Opened`](super::Response::Opened).
    pub const OPENED: u8 = 0x81;
    /// [`Response::Denied`](super::Response::Denied).
    pub const DENIED: u8 = 0x82;
    /// [`Response::Error`](super::Response::Error).
    pub const ERROR: u8 = 0x83;
    /// [`Response::Devices`](super::Response::Devices).
    pub const DEVICES: u8 = 0x84;
    /// [`Response::Ok`](super::Response::Ok).
    pub const OK: u8 = 0x85;
    /// [`Response::Locks`](super::Response::Locks).
    pub const LOCKS: u8 = 0x86;
    /// [`Response::Closed`](super::Response::Closed).
    pub const CLOSED: u8 = 0x87;
    /// [`Response::Stream`](super::Response::Stream).
    pub const STREAM: u8 = 0x88;
    /// Reserved: a data-phase chunk of device bytes (handled by the I/O layer's data path, never
    /// by [`decode`](super::decode), which reports it as an unknown type).
    pub const DATA: u8 = 0x10;
    /// Reserved: data-phase end of one direction (half-close); see [`DATA`].
    pub const EOF: u8 = 0x11;
}

// Wire payloads, one struct per frame type, so each type's JSON has exactly its own fields.

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenWire {
    device: String,
    #[serde(default)]
    break_glass: bool,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LockWire {
    target: LockTarget,
    #[serde(default)]
    for_secs: Option<u64>,
    reason: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    force: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UnlockWire {
    target: LockTarget,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenedWire {
    session_id: String,
    device: String,
    rule: String,
    ends_at_unix: i64,
    end_reason_if_uncut: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReasonWire {
    reason: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ErrorWire {
    code: ErrorCode,
    message: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DevicesWire {
    devices: Vec<DeviceInfo>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageWire {
    message: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamWire {
    what: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IssuedWire {
    chain_pem: String,
    not_after_unix: i64,
    #[serde(default)]
    grant: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PollWire {
    poll: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LocksWire {
    locks: Vec<LockInfo>,
}

fn type_name(t: u8) -> Option<&'static str> {
    use frame_type::*;
    Some(match t {
        OPEN => "Open",
        LIST_DEVICES => "ListDevices",
        LOCK => "Lock",
        UNLOCK => "Unlock",
        LIST_LOCKS => "ListLocks",
        REVIEW => "Review",
        LOGIN => "Login",
        ACCESS => "Access",
        ISSUED => "Issued",
        ACCESS_REPLY => "AccessReply",
        VAULT => "Vault",
        VAULT_REPLY => "VaultReply",
        PIN_DEVICE => "PinDevice",
        DEVICE_PIN => "DevicePin",
        LIVE => "Live",
        KEYS => "Keys",
        SIGNING_KEYS => "SigningKeys",
        SSO_START => "SsoStart",
        SSO_POLL => "SsoPoll",
        SSO_PENDING => "SsoPending",
        STREAM => "Stream",
        OPENED => "Opened",
        DENIED => "Denied",
        ERROR => "Error",
        DEVICES => "Devices",
        OK => "Ok",
        LOCKS => "Locks",
        CLOSED => "Closed",
        _ => return None,
    })
}

impl Frame {
    /// This frame's type byte.
    pub fn type_byte(&self) -> u8 {
        use frame_type::*;
        match self {
            Frame::Request(r) => match r {
                Request::Open { .. } => OPEN,
                Request::ListDevices => LIST_DEVICES,
                Request::Lock { .. } => LOCK,
                Request::Unlock { .. } => UNLOCK,
                Request::ListLocks => LIST_LOCKS,
                Request::Review(_) => REVIEW,
                Request::Login(_) => LOGIN,
                Request::Access(_) => ACCESS,
                Request::Vault(_) => VAULT,
                Request::PinDevice(_) => PIN_DEVICE,
                Request::Live(_) => LIVE,
                Request::Keys(_) => KEYS,
                Request::SigningKeys(_) => SIGNING_KEYS,
                Request::SsoStart(_) => SSO_START,
                Request::SsoPoll { .. } => SSO_POLL,
            },
            Frame::Response(r) => match r {
                Response::Opened { .. } => OPENED,
                Response::Denied { .. } => DENIED,
                Response::Error { .. } => ERROR,
                Response::Devices { .. } => DEVICES,
                Response::Ok { .. } => OK,
                Response::Locks { .. } => LOCKS,
                Response::Closed { .. } => CLOSED,
                Response::Stream { .. } => STREAM,
                Response::Issued { .. } => ISSUED,
                Response::Access(_) => ACCESS_REPLY,
                Response::Vault(_) => VAULT_REPLY,
                Response::DevicePin(_) => DEVICE_PIN,
                Response::SsoPending(_) => SSO_PENDING,
            },
        }
    }
}

/// Encodes a frame. Fails only with [`FrameError::TooLarge`] when the JSON payload would exceed
/// [`MAX_PAYLOAD`] (e.g. a `Devices` listing of a few hundred devices), so the sender learns of
/// it instead of the peer rejecting the frame.
pub fn encode(frame: &Frame) -> Result<Vec<u8>, FrameError> {
    let payload = match frame {
        Frame::Request(r) => match r.clone() {
            Request::Open {
                device,
                break_glass,
                reason,
            } => to_json(&OpenWire {
                device,
                break_glass,
                reason,
            }),
            Request::ListDevices | Request::ListLocks => to_json(&Empty {}),
            Request::Lock {
                target,
                for_secs,
                reason,
                force,
            } => to_json(&LockWire {
                target,
                for_secs,
                reason,
                force,
            }),
            Request::Unlock { target } => to_json(&UnlockWire { target }),
            Request::Review(review) => to_json(&review),
            Request::Login(login) => to_json(&login),
            Request::Access(op) => to_json(&op),
            Request::Vault(op) => to_json(&op),
            Request::PinDevice(p) => to_json(&p),
            Request::Live(op) => to_json(&op),
            Request::Keys(op) => to_json(&op),
            Request::SigningKeys(op) => to_json(&op),
            Request::SsoStart(start) => to_json(&start),
            Request::SsoPoll { poll } => to_json(&PollWire { poll }),
        },
        Frame::Response(r) => match r.clone() {
            Response::Opened {
                session_id,
                device,
                rule,
                ends_at_unix,
                end_reason_if_uncut,
            } => to_json(&OpenedWire {
                session_id,
                device,
                rule,
                ends_at_unix,
                end_reason_if_uncut,
            }),
            Response::Denied { reason } | Response::Closed { reason } => {
                to_json(&ReasonWire { reason })
            }
            Response::Error { code, message } => to_json(&ErrorWire { code, message }),
            Response::Devices { devices } => to_json(&DevicesWire { devices }),
            Response::Ok { message } => to_json(&MessageWire { message }),
            Response::Locks { locks } => to_json(&LocksWire { locks }),
            Response::Stream { what } => to_json(&StreamWire { what }),
            Response::Issued {
                chain_pem,
                not_after_unix,
                grant,
            } => to_json(&IssuedWire {
                chain_pem,
                not_after_unix,
                grant,
            }),
            Response::Access(reply) => to_json(&reply),
            Response::Vault(reply) => to_json(&reply),
            Response::DevicePin(info) => to_json(&info),
            Response::SsoPending(pending) => to_json(&pending),
        },
    }?;
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|_| payload.len() <= MAX_PAYLOAD)
        .ok_or(FrameError::TooLarge { len: payload.len() })?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.push(frame.type_byte());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// [`encode`] for a request.
pub fn encode_request(request: &Request) -> Result<Vec<u8>, FrameError> {
    encode(&Frame::Request(request.clone()))
}

/// [`encode`] for a response.
pub fn encode_response(response: &Response) -> Result<Vec<u8>, FrameError> {
    encode(&Frame::Response(response.clone()))
}

/// [`decode`] where only a request is valid (the gateway reading a client).
pub fn decode_request(buf: &[u8]) -> Result<Option<(Request, usize)>, FrameError> {
    match decode(buf)? {
        None => Ok(None),
        Some((Frame::Request(r), used)) => Ok(Some((r, used))),
        Some((frame @ Frame::Response(_), _)) => Err(FrameError::WrongDirection {
            frame: type_name(frame.type_byte()).unwrap_or("?"),
            expected: "request",
        }),
    }
}

/// [`decode`] where only a response is valid (a client reading the gateway).
pub fn decode_response(buf: &[u8]) -> Result<Option<(Response, usize)>, FrameError> {
    match decode(buf)? {
        None => Ok(None),
        Some((Frame::Response(r), used)) => Ok(Some((r, used))),
        Some((frame @ Frame::Request(_), _)) => Err(FrameError::WrongDirection {
            frame: type_name(frame.type_byte()).unwrap_or("?"),
            expected: "response",
        }),
    }
}

impl From<&Lock> for LockInfo {
    fn from(lock: &Lock) -> Self {
        LockInfo {
            target: lock.target.clone(),
            until_unix: lock.until.map(|t| t.unix_timestamp()),
            reason: lock.reason.clone(),
            by: lock.by.clone(),
        }
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, FrameError> {
    // Serializing these plain structs (string keys, no floats, no maps with non-string keys)
    // cannot fail; map the error anyway rather than assert it.
    serde_json::to_vec(value).map_err(|e| FrameError::BadJson {
        frame: "outgoing",
        message: e.to_string(),
    })
}

/// Decodes one frame from the start of `buf`. Returns `Ok(None)` if more bytes are needed,
/// `Ok(Some((frame, consumed)))` when a whole frame is there. Errors are reported as soon as
/// the bytes that prove them have arrived: an unknown type byte after 1 byte, an oversized
/// length after 5 (without waiting for the payload).
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
    let Some(&frame_type) = buf.first() else {
        return Ok(None);
    };
    let name = type_name(frame_type).ok_or(FrameError::UnknownType(frame_type))?;
    let Some(len_bytes) = buf.get(1..HEADER_LEN) else {
        return Ok(None);
    };
    let mut len = [0u8; 4];
    len.copy_from_slice(len_bytes);
    let len = usize::try_from(u32::from_be_bytes(len)).unwrap_or(usize::MAX);
    if len > MAX_PAYLOAD {
        return Err(FrameError::TooLarge { len });
    }
    let end = HEADER_LEN + len;
    let Some(payload) = buf.get(HEADER_LEN..end) else {
        return Ok(None);
    };
    let text = std::str::from_utf8(payload).map_err(|_| FrameError::NotUtf8 { frame: name })?;
    let frame = parse_payload(frame_type, name, text)?;
    Ok(Some((frame, end)))
}

fn from_json<T: DeserializeOwned>(name: &'static str, text: &str) -> Result<T, FrameError> {
    serde_json::from_str(text).map_err(|e| FrameError::BadJson {
        frame: name,
        message: e.to_string(),
    })
}

fn parse_payload(frame_type: u8, name: &'static str, text: &str) -> Result<Frame, FrameError> {
    use frame_type::*;
    Ok(match frame_type {
        OPEN => {
            let w: OpenWire = from_json(name, text)?;
            Request::Open {
                device: w.device,
                break_glass: w.break_glass,
                reason: w.reason,
            }
            .into()
        }
        LIST_DEVICES => {
            let Empty {} = from_json(name, text)?;
            Request::ListDevices.into()
        }
        LOCK => {
            let w: LockWire = from_json(name, text)?;
            Request::Lock {
                target: w.target,
                for_secs: w.for_secs,
                reason: w.reason,
                force: w.force,
            }
            .into()
        }
        UNLOCK => {
            let w: UnlockWire = from_json(name, text)?;
            Request::Unlock { target: w.target }.into()
        }
        LIST_LOCKS => {
            let Empty {} = from_json(name, text)?;
            Request::ListLocks.into()
        }
        REVIEW => Request::Review(from_json(name, text)?).into(),
        LOGIN => Request::Login(from_json(name, text)?).into(),
        ACCESS => Request::Access(from_json(name, text)?).into(),
        ACCESS_REPLY => Response::Access(Box::new(from_json(name, text)?)).into(),
        VAULT => Request::Vault(from_json(name, text)?).into(),
        VAULT_REPLY => Response::Vault(Box::new(from_json(name, text)?)).into(),
        PIN_DEVICE => Request::PinDevice(from_json(name, text)?).into(),
        DEVICE_PIN => Response::DevicePin(Box::new(from_json(name, text)?)).into(),
        LIVE => Request::Live(from_json(name, text)?).into(),
        KEYS => Request::Keys(from_json(name, text)?).into(),
        SIGNING_KEYS => Request::SigningKeys(from_json(name, text)?).into(),
        SSO_START => Request::SsoStart(from_json(name, text)?).into(),
        SSO_POLL => {
            let w: PollWire = from_json(name, text)?;
            Request::SsoPoll { poll: w.poll }.into()
        }
        SSO_PENDING => Response::SsoPending(from_json(name, text)?).into(),
        ISSUED => {
            let w: IssuedWire = from_json(name, text)?;
            Response::Issued {
                chain_pem: w.chain_pem,
                not_after_unix: w.not_after_unix,
                grant: w.grant,
            }
            .into()
        }
        STREAM => {
            let w: StreamWire = from_json(name, text)?;
            Response::Stream { what: w.what }.into()
        }
        OPENED => {
            let w: OpenedWire = from_json(name, text)?;
            Response::Opened {
                session_id: w.session_id,
                device: w.device,
                rule: w.rule,
                ends_at_unix: w.ends_at_unix,
                end_reason_if_uncut: w.end_reason_if_uncut,
            }
            .into()
        }
        DENIED => {
            let w: ReasonWire = from_json(name, text)?;
            Response::Denied { reason: w.reason }.into()
        }
        ERROR => {
            let w: ErrorWire = from_json(name, text)?;
            Response::Error {
                code: w.code,
                message: w.message,
            }
            .into()
        }
        DEVICES => {
            let w: DevicesWire = from_json(name, text)?;
            Response::Devices { devices: w.devices }.into()
        }
        OK => {
            let w: MessageWire = from_json(name, text)?;
            Response::Ok { message: w.message }.into()
        }
        LOCKS => {
            let w: LocksWire = from_json(name, text)?;
            Response::Locks { locks: w.locks }.into()
        }
        CLOSED => {
            let w: ReasonWire = from_json(name, text)?;
            Response::Closed { reason: w.reason }.into()
        }
        other => return Err(FrameError::UnknownType(other)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(t: u8, len: u32) -> Vec<u8> {
        let mut v = vec![t];
        v.extend_from_slice(&len.to_be_bytes());
        v
    }

    fn raw(t: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = header(t, payload.len() as u32);
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn open_wire_format_is_as_documented() {
        let bytes = encode(
            &Request::Open {
                device: "pump-12".into(),
                break_glass: false,
                reason: Some("ticket 4711".into()),
            }
            .into(),
        )
        .unwrap();
        let json = br#"{"device":"pump-12","break_glass":false,"reason":"ticket 4711"}"#;
        assert_eq!(bytes, raw(0x01, json));
    }

    #[test]
    fn open_defaults_break_glass_and_reason() {
        let (frame, used) = decode(&raw(0x01, br#"{"device":"pump-12"}"#))
            .unwrap()
            .unwrap();
        assert_eq!(used, 5 + 20);
        assert_eq!(
            frame,
            Frame::Request(Request::Open {
                device: "pump-12".into(),
                break_glass: false,
                reason: None
            })
        );
    }

    #[test]
    fn errors_are_typed() {
        assert_eq!(decode(&[0x42]), Err(FrameError::UnknownType(0x42)));
        assert_eq!(
            decode(&header(0x01, (MAX_PAYLOAD + 1) as u32)),
            Err(FrameError::TooLarge {
                len: MAX_PAYLOAD + 1
            })
        );
        assert_eq!(
            decode(&raw(0x01, &[0xff, 0xfe])),
            Err(FrameError::NotUtf8 { frame: "Open" })
        );
        assert!(matches!(
            decode(&raw(0x01, br#"{"device":"p","extra":1}"#)),
            Err(FrameError::BadJson { frame: "Open", .. })
        ));
        assert!(matches!(
            decode(&raw(0x02, b"")),
            Err(FrameError::BadJson {
                frame: "ListDevices",
                ..
            })
        ));
        assert!(matches!(
            decode(&raw(0x83, br#"{"code":"nope","message":""}"#)),
            Err(FrameError::BadJson { .. })
        ));
    }

    #[test]
    fn incomplete_input_waits() {
        assert_eq!(decode(&[]), Ok(None));
        assert_eq!(decode(&[0x01, 0, 0]), Ok(None));
        assert_eq!(decode(&header(0x01, 10)), Ok(None));
    }

    #[test]
    fn consumes_exactly_one_frame() {
        let mut bytes = encode(&Request::ListDevices.into()).unwrap();
        let first = bytes.len();
        bytes.extend_from_slice(b"device bytes follow");
        let (frame, used) = decode(&bytes).unwrap().unwrap();
        assert_eq!(frame, Frame::Request(Request::ListDevices));
        assert_eq!(used, first);
    }

    #[test]
    fn direction_is_checked() {
        let req = encode_request(&Request::ListLocks).unwrap();
        let resp = encode_response(&Response::Ok {
            message: "done".into(),
        })
        .unwrap();
        assert_eq!(
            decode_request(&req),
            Ok(Some((Request::ListLocks, req.len())))
        );
        assert_eq!(
            decode_response(&req),
            Err(FrameError::WrongDirection {
                frame: "ListLocks",
                expected: "response"
            })
        );
        assert!(matches!(
            decode_request(&resp),
            Err(FrameError::WrongDirection { frame: "Ok", .. })
        ));
        assert_eq!(decode_response(&resp[..3]), Ok(None));
        assert_eq!(
            decode(&[frame_type::DATA]),
            Err(FrameError::UnknownType(0x10))
        );
    }

    #[test]
    fn lock_force_is_on_the_wire_only_when_set() {
        let plain = Request::Lock {
            target: LockTarget::Device("pump-12".into()),
            for_secs: None,
            reason: "r".into(),
            force: false,
        };
        let bytes = encode_request(&plain).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("force"));
        let old = raw(
            frame_type::LOCK,
            br#"{"target":{"device":"pump-12"},"reason":"r"}"#,
        );
        assert_eq!(decode_request(&old).unwrap().unwrap().0, plain);
        let forced = Request::Lock {
            target: LockTarget::Device("pump-12".into()),
            for_secs: None,
            reason: "r".into(),
            force: true,
        };
        let bytes = encode_request(&forced).unwrap();
        assert_eq!(decode_request(&bytes).unwrap().unwrap().0, forced);
    }

    #[test]
    fn lock_info_from_lock() {
        let lock = Lock {
            target: LockTarget::Org("acme".into()),
            until: Some(time::macros::datetime!(2024-01-02 0:00 UTC)),
            reason: "leak".into(),
            by: "security/bob".into(),
        };
        let info = LockInfo::from(&lock);
        assert_eq!(info.until_unix, Some(1_704_153_600));
        assert_eq!(
            serde_json::to_string(&info).unwrap(),
            r#"{"target":{"org":"acme"},"until_unix":1704153600,"reason":"leak","by":"security/bob"}"#
        );
    }

    #[test]
    fn encode_refuses_oversized_payloads() {
        let frame = Frame::Response(Response::Denied {
            reason: "x".repeat(MAX_PAYLOAD),
        });
        assert!(matches!(encode(&frame), Err(FrameError::TooLarge { .. })));
    }

    fn arb_text() -> impl Strategy<Value = String> {
        "\\PC{0,20}"
    }

    fn arb_target() -> impl Strategy<Value = LockTarget> {
        prop_oneof![
            arb_text().prop_map(LockTarget::Principal),
            arb_text().prop_map(LockTarget::Device),
            arb_text().prop_map(LockTarget::Org),
        ]
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        let labels = proptest::collection::btree_map(arb_text(), arb_text(), 0..3);
        let device_info = (
            arb_text(),
            proptest::sample::select(Protocol::ALL.to_vec()),
            labels,
            arb_text(),
            any::<bool>(),
            proptest::option::of(proptest::collection::vec(arb_text(), 0..3)),
        )
            .prop_map(|(id, protocol, labels, rule, tls, allow)| DeviceInfo {
                id,
                protocol,
                labels,
                rule,
                reach: Reach::Open,
                operations: allow.map(|allow| crate::operations::OpList {
                    allow,
                    deny: vec!["x*".into()],
                }),
                tls,
            });
        let lock_info = (arb_target(), any::<Option<i64>>(), arb_text(), arb_text()).prop_map(
            |(target, until_unix, reason, by)| LockInfo {
                target,
                until_unix,
                reason,
                by,
            },
        );
        let code = proptest::sample::select(vec![
            ErrorCode::BadRequest,
            ErrorCode::DeviceUnreachable,
            ErrorCode::DeviceTimeout,
            ErrorCode::Overloaded,
            ErrorCode::ShuttingDown,
            ErrorCode::Internal,
            ErrorCode::Forbidden,
            ErrorCode::RecordingUnavailable,
            ErrorCode::LoginBusy,
            ErrorCode::TotpReused,
        ]);
        prop_oneof![
            (arb_text(), any::<bool>(), proptest::option::of(arb_text())).prop_map(
                |(device, break_glass, reason)| Request::Open {
                    device,
                    break_glass,
                    reason
                }
                .into()
            ),
            Just(Request::ListDevices.into()),
            (
                arb_target(),
                any::<Option<u64>>(),
                arb_text(),
                any::<bool>()
            )
                .prop_map(|(target, for_secs, reason, force)| Request::Lock {
                    target,
                    for_secs,
                    reason,
                    force
                }
                .into()),
            arb_target().prop_map(|target| Request::Unlock { target }.into()),
            Just(Request::ListLocks.into()),
            (arb_text(), arb_text(), arb_text(), any::<i64>(), arb_text()).prop_map(
                |(session_id, device, rule, ends_at_unix, end_reason_if_uncut)| Response::Opened {
                    session_id,
                    device,
                    rule,
                    ends_at_unix,
                    end_reason_if_uncut
                }
                .into()
            ),
            arb_text().prop_map(|reason| Response::Denied { reason }.into()),
            (code, arb_text()).prop_map(|(code, message)| Response::Error { code, message }.into()),
            proptest::collection::vec(device_info, 0..4)
                .prop_map(|devices| Response::Devices { devices }.into()),
            arb_text().prop_map(|message| Response::Ok { message }.into()),
            proptest::collection::vec(lock_info, 0..4)
                .prop_map(|locks| Response::Locks { locks }.into()),
            arb_text().prop_map(|reason| Response::Closed { reason }.into()),
            (proptest::option::of(arb_text()), arb_text()).prop_map(|(provider, csr)| {
                Request::SsoStart(SsoStart { provider, csr }).into()
            }),
            arb_text().prop_map(|poll| Request::SsoPoll { poll }.into()),
            (arb_text(), arb_text(), arb_text(), any::<i64>()).prop_map(
                |(url, user_code, poll, expires_unix)| Response::SsoPending(SsoPending {
                    url,
                    user_code,
                    poll,
                    expires_unix
                })
                .into()
            ),
        ]
    }

    proptest! {
        #[test]
        fn round_trips(frame in arb_frame()) {
            let bytes = encode(&frame).unwrap();
            prop_assert_eq!(decode(&bytes), Ok(Some((frame, bytes.len()))));
        }

        #[test]
        fn split_anywhere_is_incomplete_then_whole(frame in arb_frame(), cut in any::<prop::sample::Index>()) {
            let bytes = encode(&frame).unwrap();
            let cut = cut.index(bytes.len());
            prop_assert_eq!(decode(&bytes[..cut]), Ok(None));
            prop_assert_eq!(decode(&bytes), Ok(Some((frame, bytes.len()))));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn arbitrary_payloads_never_panic(t in any::<u8>(), payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            match decode(&raw(t, &payload)) {
                Ok(Some((_, used))) => prop_assert_eq!(used, payload.len() + 5),
                Ok(None) => prop_assert!(false, "a whole frame is never incomplete"),
                Err(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod access_frame_tests {
    use super::*;

    #[test]
    fn login_and_access_frames_round_trip() {
        let frames: Vec<Frame> = vec![
            Request::Login(Login {
                user: "tech".into(),
                password: "correct horse battery".into(),
                totp: Some("123456".into()),
                csr_pem: "-----BEGIN CERTIFICATE REQUEST-----".into(),
                grant: None,
                new_password: Some("a new long passphrase".into()),
            })
            .into(),
            Request::Access(AccessOp::Request {
                device: "pump-12".into(),
                reason: "firmware".into(),
                duration_secs: 7200,
                start_unix: None,
            })
            .into(),
            Request::Access(AccessOp::UserList).into(),
            Response::Issued {
                chain_pem: "pem".into(),
                not_after_unix: 1,
                grant: Some("grant-1".into()),
            }
            .into(),
            Response::Access(Box::new(AccessReply::UserCreated {
                name: "n".into(),
                password: "p".into(),
                totp_uri: None,
            }))
            .into(),
        ];
        for f in frames {
            let bytes = encode(&f).unwrap();
            let (back, used) = decode(&bytes).unwrap().unwrap();
            assert_eq!(used, bytes.len());
            assert_eq!(back, f);
        }
        let json = br#"{"op":"approve","id":"req-1"}"#;
        let mut raw = vec![frame_type::ACCESS];
        raw.extend_from_slice(&(json.len() as u32).to_be_bytes());
        raw.extend_from_slice(json);
        assert_eq!(
            decode_request(&raw).unwrap().unwrap().0,
            Request::Access(AccessOp::Approve {
                id: "req-1".into(),
                comment: None
            })
        );
    }

    /// `Keys` frames: code 0x0f, `{"op":"status"}` / `{"op":"rotate_kek"}`.
    #[test]
    fn keys_frames_round_trip() {
        for (r, json) in [
            (Request::Keys(KeysOp::Status), &br#"{"op":"status"}"#[..]),
            (
                Request::Keys(KeysOp::RotateKek),
                &br#"{"op":"rotate_kek"}"#[..],
            ),
        ] {
            let bytes = encode_request(&r).unwrap();
            assert_eq!(bytes[0], 0x0f);
            assert_eq!(bytes.get(5..), Some(json));
            assert_eq!(decode_request(&bytes).unwrap().unwrap().0, r);
        }
    }

    /// `Live` frames as docs/protocol.md writes them.
    #[test]
    fn live_frames_round_trip() {
        let end = Request::Live(LiveOp::End {
            session: "00aa".into(),
            reason: "incident 7".into(),
        });
        for r in [Request::Live(LiveOp::List), end.clone()] {
            let bytes = encode_request(&r).unwrap();
            assert_eq!(bytes[0], 0x0e);
            assert_eq!(decode_request(&bytes).unwrap().unwrap().0, r);
        }
        let raw = |json: &[u8]| {
            let mut v = vec![0x0e];
            v.extend_from_slice(&(json.len() as u32).to_be_bytes());
            v.extend_from_slice(json);
            v
        };
        let json = br#"{"op":"end","session":"00aa","reason":"incident 7"}"#;
        assert_eq!(decode_request(&raw(json)).unwrap().unwrap().0, end);
        assert!(decode_request(&raw(br#"{"op":"end","session":"x"}"#)).is_err());
        assert!(decode_request(&raw(br#"{"op":"kill"}"#)).is_err());
    }

    #[test]
    fn vault_frames_round_trip_and_hide_the_value() {
        let set = Request::Vault(VaultOp::Set {
            device: "pump-12".into(),
            account: "service".into(),
            username: None,
            secret: crate::secret::Secret::new("Factory-Needle-1".into()),
        });
        let entry = VaultEntryInfo {
            device: "pump-12".into(),
            account: "service".into(),
            username: "admin".into(),
            key_fingerprint: "00112233aabbccdd".into(),
            created_unix: 1,
            updated_unix: 2,
            last_used_unix: None,
            last_rotated_unix: Some(3),
            pending: false,
        };
        let frames: Vec<Frame> = vec![
            set.clone().into(),
            Request::Vault(VaultOp::List).into(),
            Request::Vault(VaultOp::Rotate {
                device: "pump-12".into(),
                account: "service".into(),
            })
            .into(),
            Response::Vault(Box::new(VaultReply::Entry {
                entry,
                message: "set".into(),
            }))
            .into(),
        ];
        for f in frames {
            let bytes = encode(&f).unwrap();
            let (back, used) = decode(&bytes).unwrap().unwrap();
            assert_eq!(used, bytes.len());
            assert_eq!(back, f);
        }
        let d = format!("{set:?}");
        assert!(!d.contains("Factory-Needle-1"), "{d}");
        // The wire form, as documented: the value as a JSON string.
        let bytes = encode_request(&set).unwrap();
        assert_eq!(bytes[0], frame_type::VAULT);
        assert_eq!(
            std::str::from_utf8(&bytes[HEADER_LEN..]).unwrap(),
            r#"{"op":"set","device":"pump-12","account":"service","username":null,"secret":"Factory-Needle-1"}"#
        );
    }

    #[test]
    fn device_pin_frames_round_trip() {
        let frames: Vec<Frame> = vec![
            Request::PinDevice(PinDevice {
                device: "pacs".into(),
                confirm: None,
                remove: false,
            })
            .into(),
            Request::PinDevice(PinDevice {
                device: "pacs".into(),
                confirm: Some(format!("sha256:{}", "ab".repeat(32))),
                remove: false,
            })
            .into(),
            Response::DevicePin(Box::new(DevicePinInfo {
                device: "pacs".into(),
                presented: Some("sha256:00".into()),
                subject: "CN=pacs".into(),
                issuer: "CN=pacs".into(),
                not_before: "2026-01-01T00:00:00Z".into(),
                not_after: "2027-01-01T00:00:00Z".into(),
                pinned: None,
                source: "none".into(),
                message: "confirm".into(),
            }))
            .into(),
        ];
        for f in frames {
            let bytes = encode(&f).unwrap();
            let (back, used) = decode(&bytes).unwrap().unwrap();
            assert_eq!(used, bytes.len());
            assert_eq!(back, f);
        }
        let bytes = encode_request(&Request::PinDevice(PinDevice {
            device: "pacs".into(),
            confirm: None,
            remove: false,
        }))
        .unwrap();
        assert_eq!(bytes[0], frame_type::PIN_DEVICE);
        assert_eq!(
            std::str::from_utf8(&bytes[HEADER_LEN..]).unwrap(),
            r#"{"device":"pacs"}"#
        );
    }

    /// `SsoStart`, `SsoPoll` and `SsoPending` as docs/protocol.md writes them.
    #[test]
    fn sso_frames_round_trip_in_their_documented_form() {
        let start = Request::SsoStart(SsoStart {
            provider: Some("hospital".into()),
            csr: "-----BEGIN CERTIFICATE REQUEST-----".into(),
        });
        let poll = Request::SsoPoll {
            poll: "q".repeat(43),
        };
        let pending = Response::SsoPending(SsoPending {
            url: "https://console.example:8443/#/sso/cli/abc".into(),
            user_code: "WDJB-MJHT".into(),
            poll: "abc".into(),
            expires_unix: 1_800_000_300,
        });
        for f in [
            start.clone().into(),
            poll.clone().into(),
            pending.clone().into(),
        ] {
            let bytes = encode(&f).unwrap();
            let (back, used) = decode(&bytes).unwrap().unwrap();
            assert_eq!(used, bytes.len());
            assert_eq!(back, f);
        }
        let wire = |f: &Frame| {
            let bytes = encode(f).unwrap();
            (
                bytes[0],
                String::from_utf8(bytes[HEADER_LEN..].to_vec()).unwrap(),
            )
        };
        assert_eq!(
            wire(&start.into()),
            (
                0x0a,
                r#"{"provider":"hospital","csr":"-----BEGIN CERTIFICATE REQUEST-----"}"#.into()
            )
        );
        let no_provider = Request::SsoStart(SsoStart {
            provider: None,
            csr: "pem".into(),
        });
        assert_eq!(wire(&no_provider.into()), (0x0a, r#"{"csr":"pem"}"#.into()));
        assert_eq!(wire(&poll.into()).0, 0x0b);
        assert_eq!(
            wire(&pending.into()),
            (
                0x8c,
                r#"{"url":"https://console.example:8443/#/sso/cli/abc","user_code":"WDJB-MJHT","poll":"abc","expires_unix":1800000300}"#.into()
            )
        );
        // Each is one direction only, and unknown or missing fields are refused.
        let raw = |t: u8, json: &[u8]| {
            let mut v = vec![t];
            v.extend_from_slice(&(json.len() as u32).to_be_bytes());
            v.extend_from_slice(json);
            v
        };
        assert!(decode_response(&raw(0x0b, br#"{"poll":"x"}"#)).is_err());
        assert!(decode_request(&raw(
            0x8c,
            br#"{"url":"u","user_code":"c","poll":"p","expires_unix":1}"#
        ))
        .is_err());
        assert!(decode_request(&raw(0x0a, br#"{"csr":"pem","user":"x"}"#)).is_err());
        assert!(decode_request(&raw(0x0a, br#"{"provider":"p"}"#)).is_err());
        assert!(decode_request(&raw(0x0b, br#"{}"#)).is_err());
    }

    #[test]
    fn login_debug_hides_secrets() {
        let l = Login {
            user: "tech".into(),
            password: "hunter2hunter2".into(),
            totp: Some("123456".into()),
            csr_pem: String::new(),
            grant: None,
            new_password: None,
        };
        let d = format!("{l:?}");
        assert!(!d.contains("hunter2") && !d.contains("123456"), "{d}");
    }
}
