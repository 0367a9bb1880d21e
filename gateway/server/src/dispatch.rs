//! The frame front end of the services: frame → service → frame. Each arm decodes the request
//! into the service's typed request, calls the service, and encodes its answer; a refusal becomes
//! a frame in one place ([`refusal_frame`]). Listings are streamed as JSON lines. A web console is
//! another adapter over the same [`Services`].
//!
//! Also the gateway's side of the services: [`Services::of`] builds them over the running
//! gateway's store, audit log and [`LiveState`].

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWrite;
use ward_core::frame::{
    self, AccessOp, AccessReply, ErrorCode, LiveOp, LockTarget, Login, Request, Response,
    VaultEntryInfo, VaultOp, VaultReply,
};
use ward_core::policy::Lock;
use ward_core::Principal;

use crate::datapath::{self, FrameWriter};
use crate::gateway::{gated, Shared};
use crate::services::access::{AccessService, NewRequest};
use crate::services::devices::DeviceService;
use crate::services::live::{LiveService, LiveSession, LiveSessions};
use crate::services::locks::{LockRequest, LockService};
use crate::services::login::{LoginService, TOTP_REUSED};
use crate::services::pins::{PinAction, PinReport, PinService};
use crate::services::sso::{Poll, SsoCliService};
use crate::services::users::{NewUser, UserService};
use crate::services::vault::VaultService;
use crate::services::{Audit, Caller, Context, LiveState, Refusal};
use crate::users::User;

/// An error frame. The one constructor.
pub(crate) fn error_frame(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::Error {
        code,
        message: message.into(),
    }
}

/// A service's refusal as a frame. The one mapping.
pub fn refusal_frame(r: Refusal) -> Response {
    match r {
        Refusal::Denied(reason) => Response::Denied { reason },
        Refusal::Forbidden(m) => error_frame(ErrorCode::Forbidden, m),
        Refusal::NotFound(m) | Refusal::Invalid(m) => error_frame(ErrorCode::BadRequest, m),
        Refusal::Unavailable(m) => error_frame(ErrorCode::Internal, m),
        Refusal::TotpReused => error_frame(ErrorCode::TotpReused, TOTP_REUSED),
    }
}

fn answer<T>(r: Result<T, Refusal>, ok: impl FnOnce(T) -> Response) -> Response {
    r.map_or_else(refusal_frame, ok)
}

/// The services over a running gateway.
#[derive(Clone)]
pub struct Services {
    /// Access requests and grants.
    pub access: AccessService,
    /// User administration.
    pub users: UserService,
    /// Login.
    pub login: LoginService,
    /// Locks.
    pub locks: LockService,
    /// The device listing.
    pub devices: DeviceService,
    /// Live sessions: the list, and ending one.
    pub live: LiveService,
    /// The credential vault.
    pub vault: VaultService,
    /// The store's key-encryption key.
    pub keys: crate::services::keys::KeysService,
    /// Certificate pins of devices that speak TLS.
    pub(crate) pins: PinService,
    /// `ward login --sso`: CLI logins a signed-in browser approves.
    pub sso_cli: SsoCliService,
    /// The signing keys: the list, and rotation.
    pub signing: crate::services::signing::SigningService,
}

impl Services {
    /// The services over `shared` (a few reference counts: built per request).
    pub(crate) fn of(shared: &Arc<Shared>) -> Services {
        let ctx = Context {
            clock: shared.clock.clone(),
            audit: Audit::new(shared.audit.clone()),
            live: Arc::new(GatewayState(shared.clone())),
        };
        let jit = &shared.jit;
        let stores = &jit.services;
        let login = LoginService::new(ctx.clone(), stores.users.clone(), jit.login.clone());
        Services {
            access: AccessService::new(ctx.clone(), stores.access.clone()),
            users: UserService::new(ctx.clone(), stores.users.clone()),
            login: login.clone(),
            sso_cli: SsoCliService::new(ctx.clone(), shared.sso_cli.clone(), login),
            locks: LockService::new(ctx.clone(), stores.locks.clone(), stores.users.clone()),
            vault: VaultService::new(ctx.clone(), shared.vault.clone()),
            keys: crate::services::keys::KeysService::new(ctx.clone(), shared.vault.clone()),
            pins: PinService::new(
                ctx.clone(),
                shared.pins.clone(),
                shared.limits().device_connect_timeout,
            ),
            live: LiveService::new(ctx.clone(), Arc::new(GatewayState(shared.clone()))),
            signing: crate::services::signing::SigningService::new(
                ctx.clone(),
                shared.keys.clone(),
                shared.audit.clone(),
            ),
            devices: DeviceService::new(ctx),
        }
    }
}

/// The running gateway as the services see it.
struct GatewayState(Arc<Shared>);

impl LiveState for GatewayState {
    fn config(&self) -> Arc<ward_core::config::Config> {
        self.0.config()
    }

    fn grants(&self) -> Arc<[ward_core::access::Grant]> {
        self.0.jit.grants()
    }

    fn locks(&self) -> Vec<Lock> {
        self.0.policy.current().locks.to_vec()
    }

    fn live_principals(&self) -> Vec<Principal> {
        self.0.policy.live_principals()
    }

    fn access_changed(&self) {
        crate::jit::refresh(&self.0);
    }

    fn locked(&self, lock: &Lock) -> usize {
        self.0.publish_lock(lock.clone())
    }

    fn unlocked(&self, target: &LockTarget) {
        self.0.publish_unlock(target);
    }
}

impl LiveSessions for GatewayState {
    fn list(&self) -> Vec<LiveSession> {
        self.0.policy.live_sessions()
    }

    fn terminate(&self, id: &str, end: ward_core::EndReason) -> Option<LiveSession> {
        self.0.policy.terminate(id, end, self.0.clock.now())
    }
}

/// Answers a `Login`.
pub(crate) async fn login(
    services: &Services,
    peer: std::net::SocketAddr,
    login: &Login,
) -> Response {
    answer(services.login.login(peer, login).await, |i| {
        Response::Issued {
            chain_pem: i.chain_pem,
            not_after_unix: i.not_after_unix,
            grant: i.grant,
        }
    })
}

/// The console's origin for the URL `ward login --sso` prints; `None` when the console is off.
/// The bound `[web] listen`; when that is an unspecified address (`0.0.0.0`), the origin of an
/// `[[oidc]]` provider's `redirect_url` (the console's public name, registered at the IdP), else
/// the address as is (the client puts the host name it reached the gateway by in its place).
fn console_base(shared: &Shared) -> Option<String> {
    let bound = shared.web_addr?;
    if bound.ip().is_unspecified() {
        let config = shared.config();
        if let Some(origin) = config
            .oidc
            .iter()
            .find_map(|o| https_origin(&o.redirect_url))
        {
            return Some(origin);
        }
    }
    Some(format!("https://{bound}"))
}

/// `https://host:port` of an `https://` URL.
fn https_origin(url: &str) -> Option<String> {
    let rest = url.strip_prefix("https://")?;
    let host = rest.split(['/', '?', '#']).next()?;
    (!host.is_empty() && !host.contains('@')).then(|| format!("https://{host}"))
}

fn sso_pending(base: &str, p: crate::services::sso::Pending) -> Response {
    Response::SsoPending(frame::SsoPending {
        url: format!("{base}/{}{}", crate::web::sso_cli::PAGE_ROUTE, p.poll),
        user_code: p.user_code,
        poll: p.poll,
        expires_unix: p.expires.unix_timestamp(),
    })
}

/// Answers `SsoStart` and `SsoPoll` (`ward login --sso`) on a stream: one request per
/// connection without a client certificate, like `Login`; a start's answer leaves once it is in
/// the audit log. Refusals of unauthenticated peers are audited as noise (aggregated per source).
pub(crate) async fn sso_cli<W: AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    peer: std::net::SocketAddr,
    anonymous: Option<&crate::login_gate::OneLogin>,
    request: Request,
    writer: &mut FrameWriter<W>,
) {
    let noise = |what: &str, why: String| {
        shared.audit_noise(
            peer,
            crate::audit::Event::new(what, "denied", shared.clock.now())
                .severity("warning")
                .source(peer)
                .reason(why)
                .detail("via", "sso"),
        );
    };
    let response = if anonymous.is_some_and(|once| !once.take()) {
        error_frame(ErrorCode::Forbidden, crate::login_gate::ONE_LOGIN)
    } else {
        let services = Services::of(shared);
        let base = console_base(shared);
        match (request, base) {
            (Request::SsoStart(_), None) => Response::Denied {
                reason: "this gateway's web console is off ([web] listen), and `ward login --sso` \
                         is approved there: use `ward login`, or ask an admin to turn the console on"
                    .into(),
            },
            (Request::SsoStart(start), Some(base)) => {
                match services.sso_cli.start(peer, start.provider, &start.csr) {
                    Ok(p) => gated(shared, sso_pending(&base, p)).await,
                    Err(r) => {
                        noise(crate::services::sso::SSO_CLI_START, r.to_string());
                        refusal_frame(r)
                    }
                }
            }
            (Request::SsoPoll { poll }, base) => match services.sso_cli.poll(&poll) {
                Poll::Waiting(p) => sso_pending(base.as_deref().unwrap_or("https://?"), p),
                Poll::Issued(i) => Response::Issued {
                    chain_pem: i.chain_pem,
                    not_after_unix: i.not_after_unix,
                    grant: i.grant,
                },
                Poll::Refused(reason) => Response::Denied { reason },
                Poll::Unknown => {
                    noise("sso_cli_poll", "unknown or expired poll id".into());
                    Response::Denied {
                        reason: crate::services::sso::UNKNOWN.into(),
                    }
                }
            },
            (_, _) => error_frame(ErrorCode::Internal, "request not handled here"),
        }
    };
    let _ = writer.write_response(&response).await;
    let _ = writer.finish().await;
}

/// Answers `ListDevices`, `Lock`, `Unlock` and `ListLocks` (what changes state passes the
/// audit gate).
pub(crate) async fn request(
    shared: &Arc<Shared>,
    caller: Caller<'_>,
    request: Request,
) -> Response {
    let services = Services::of(shared);
    match request {
        Request::ListDevices => list_devices(&services, caller),
        Request::ListLocks => list_locks(&services, caller),
        Request::Lock {
            target,
            for_secs,
            reason,
            force,
        } => {
            let answer = lock(&services, caller, target, for_secs, reason, force).await;
            gated(shared, answer).await
        }
        Request::Unlock { target } => {
            let answer = unlock(&services, caller, target).await;
            gated(shared, answer).await
        }
        Request::PinDevice(p) => {
            let answer = pin_device(&services, caller, p).await;
            gated(shared, answer).await
        }
        Request::SigningKeys(op) => {
            let answer = match op {
                frame::SigningKeysOp::List => {
                    answer(services.signing.list(caller).await, |k| Response::Ok {
                        message: String::from_utf8_lossy(&k.to_jsonl()).into_owned(),
                    })
                }
                frame::SigningKeysOp::Rotate => {
                    answer(services.signing.rotate(caller).await, |r| Response::Ok {
                        message: format!(
                            "signing key rotated: {} retired, {} signs from now on",
                            r.old_key_id, r.new_key_id
                        ),
                    })
                }
            };
            gated(shared, answer).await
        }
        Request::Open { .. }
        | Request::Access(_)
        | Request::Vault(_)
        | Request::Keys(_)
        | Request::Live(_)
        | Request::Review(_)
        | Request::SsoStart(_)
        | Request::SsoPoll { .. }
        | Request::Login(_) => error_frame(ErrorCode::Internal, "request not handled here"),
    }
}

/// Answers `PinDevice` (`ward devices pin`).
pub(crate) async fn pin_device(
    services: &Services,
    caller: Caller<'_>,
    p: frame::PinDevice,
) -> Response {
    let action = match (p.confirm, p.remove) {
        (Some(_), true) => {
            return error_frame(
                ErrorCode::BadRequest,
                "--confirm and --remove do not go together",
            )
        }
        (Some(pin), false) => PinAction::Confirm(pin),
        (None, true) => PinAction::Remove,
        (None, false) => PinAction::Show,
    };
    answer(
        services.pins.pin(caller, &p.device, action).await,
        |r: PinReport| {
            let (presented, summary) = match r.presented {
                Some((p, s)) => (Some(p.pin.to_string()), Some(s)),
                None => (None, None),
            };
            let summary = summary.unwrap_or_else(|| crate::device_tls::CertSummary {
                subject: String::new(),
                issuer: String::new(),
                not_before: String::new(),
                not_after: String::new(),
            });
            Response::DevicePin(Box::new(frame::DevicePinInfo {
                device: r.device,
                presented,
                subject: summary.subject,
                issuer: summary.issuer,
                not_before: summary.not_before,
                not_after: summary.not_after,
                pinned: r.pinned.map(|p| p.to_string()),
                source: r.source.as_str().to_owned(),
                message: r.message,
            }))
        },
    )
}

/// Answers `ListDevices`.
pub(crate) fn list_devices(services: &Services, caller: Caller<'_>) -> Response {
    answer(services.devices.list(caller), |devices| Response::Devices {
        devices,
    })
}

/// Answers `Lock`.
pub(crate) async fn lock(
    services: &Services,
    caller: Caller<'_>,
    target: LockTarget,
    for_secs: Option<u64>,
    reason: String,
    force: bool,
) -> Response {
    let req = LockRequest {
        target,
        duration: for_secs.map(Duration::from_secs),
        reason,
        force,
    };
    answer(services.locks.lock(caller, req).await, |l| Response::Ok {
        message: format!(
            "locked {}{}; {} live session(s) ended",
            ward_core::escape(&l.lock.target.to_string()),
            if l.forced { " (forced)" } else { "" },
            l.sessions_ended
        ),
    })
}

/// Answers `Unlock`.
pub(crate) async fn unlock(
    services: &Services,
    caller: Caller<'_>,
    target: LockTarget,
) -> Response {
    answer(services.locks.unlock(caller, &target).await, |()| {
        Response::Ok {
            message: format!("unlocked {target}"),
        }
    })
}

/// Answers `ListLocks`.
pub(crate) fn list_locks(services: &Services, caller: Caller<'_>) -> Response {
    answer(services.locks.list(caller), |locks| Response::Locks {
        locks: locks.iter().map(frame::LockInfo::from).collect(),
    })
}

/// JSON lines of `items`.
fn json_lines<T: serde::Serialize>(items: impl IntoIterator<Item = T>) -> Vec<u8> {
    let mut out = Vec::new();
    for item in items {
        if let Ok(mut s) = serde_json::to_vec(&item) {
            s.push(b'\n');
            out.extend_from_slice(&s);
        }
    }
    out
}

/// A listing: JSON lines to stream, or a frame (a refusal).
enum Answer {
    Frame(Response),
    Lines(&'static str, Vec<u8>),
}

fn listing<T, I: serde::Serialize>(
    r: Result<T, Refusal>,
    what: &'static str,
    lines: impl FnOnce(T) -> Vec<I>,
) -> Answer {
    match r {
        Ok(v) => Answer::Lines(what, json_lines(lines(v))),
        Err(e) => Answer::Frame(refusal_frame(e)),
    }
}

/// Answers an [`AccessOp`]; listings are streamed as JSON lines.
pub(crate) async fn access_op<W: AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    caller: Caller<'_>,
    op: AccessOp,
    writer: &mut FrameWriter<W>,
) {
    let services = Services::of(shared);
    match access_answer(&services, caller, op).await {
        Answer::Lines(what, bytes) => stream(shared, writer, what, &bytes).await,
        Answer::Frame(response) => {
            let response = gated(shared, response).await;
            let _ = writer.write_response(&response).await;
        }
    }
}

async fn access_answer(s: &Services, caller: Caller<'_>, op: AccessOp) -> Answer {
    let reply = |r: AccessReply| Response::Access(Box::new(r));
    let frame = Answer::Frame;
    match op {
        AccessOp::Request {
            device,
            reason,
            duration_secs,
            start_unix,
        } => {
            let new = NewRequest {
                device,
                reason,
                duration: Duration::from_secs(duration_secs),
                start_unix,
            };
            frame(answer(s.access.request(caller, new).await, |request| {
                reply(AccessReply::Request { request })
            }))
        }
        AccessOp::ListRequests { all } => {
            listing(s.access.list_requests(caller, all).await, "requests", |v| v)
        }
        AccessOp::Approve { id, comment } => frame(answer(
            s.access.approve(caller, &id, comment).await,
            |out| {
                reply(AccessReply::Approved {
                    request: out.request,
                    count: u32::try_from(out.approved.count).unwrap_or(u32::MAX),
                    required: u32::try_from(out.approved.required).unwrap_or(u32::MAX),
                    grant: out.grant,
                })
            },
        )),
        AccessOp::Deny { id, reason } => frame(answer(
            s.access.deny(caller, &id, &reason).await,
            |request| reply(AccessReply::Request { request }),
        )),
        AccessOp::ListGrants { all } => {
            listing(s.access.list_grants(caller, all).await, "grants", |v| v)
        }
        AccessOp::Revoke { grant, reason } => frame(answer(
            s.access.revoke(caller, &grant, &reason).await,
            |grant| reply(AccessReply::Grant { grant }),
        )),
        AccessOp::UserAdd {
            name,
            kind,
            org,
            roles,
        } => {
            let new = NewUser {
                org,
                roles,
                ..NewUser::new(name.clone(), kind)
            };
            frame(answer(s.users.add(caller, new).await, |created| {
                reply(AccessReply::UserCreated {
                    name,
                    password: created.password,
                    totp_uri: created.totp_uri,
                })
            }))
        }
        AccessOp::UserDisable { name } => {
            frame(answer(s.users.disable(caller, &name).await, |()| {
                Response::Ok {
                    message: format!("user {name} disabled; their live sessions are ending"),
                }
            }))
        }
        AccessOp::UserList => listing(s.users.list(caller).await, "users", |users| {
            users.iter().map(user_line).collect()
        }),
    }
}

/// Answers a [`LiveOp`] (`ward live`, `ward end`): the listing is streamed as JSON lines of
/// [`LiveSession::json`], the end answered `Ok` once audited.
pub(crate) async fn live_op<W: AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    caller: Caller<'_>,
    op: LiveOp,
    writer: &mut FrameWriter<W>,
) {
    let services = Services::of(shared);
    let answer = match op {
        LiveOp::List => listing(services.live.list(caller), "live", |v| {
            v.iter().map(LiveSession::json).collect()
        }),
        LiveOp::End { session, reason } => {
            Answer::Frame(answer(services.live.end(caller, &session, &reason), |s| {
                Response::Ok {
                    message: format!(
                        "ended session {} of {} on {}; they were told: terminated by {}: {}",
                        s.id,
                        ward_core::escape(&s.principal.to_string()),
                        ward_core::escape(&s.device),
                        ward_core::escape(&caller.identity.principal()),
                        ward_core::escape(reason.trim()),
                    ),
                }
            }))
        }
    };
    match answer {
        Answer::Lines(what, bytes) => stream(shared, writer, what, &bytes).await,
        Answer::Frame(response) => {
            let response = gated(shared, response).await;
            let _ = writer.write_response(&response).await;
        }
    }
}

/// Answers a [`VaultOp`]; the listing is streamed as JSON lines of [`VaultEntryInfo`].
pub(crate) async fn vault_op<W: AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    caller: Caller<'_>,
    op: VaultOp,
    writer: &mut FrameWriter<W>,
) {
    let services = Services::of(shared);
    match vault_answer(&services, caller, op).await {
        Answer::Lines(what, bytes) => stream(shared, writer, what, &bytes).await,
        Answer::Frame(response) => {
            let response = gated(shared, response).await;
            let _ = writer.write_response(&response).await;
        }
    }
}

async fn vault_answer(s: &Services, caller: Caller<'_>, op: VaultOp) -> Answer {
    let entry = |entry: VaultEntryInfo, message: String| {
        Response::Vault(Box::new(VaultReply::Entry { entry, message }))
    };
    match op {
        VaultOp::Set {
            device,
            account,
            username,
            secret,
        } => {
            let req = crate::services::vault::SetRequest {
                device,
                account,
                username,
                secret,
            };
            Answer::Frame(answer(s.vault.set(caller, req).await, |e| {
                let message = format!(
                    "vaulted {}/{} (user {}, key {}); sessions that inject it use it from now on",
                    ward_core::escape(&e.device),
                    ward_core::escape(&e.account),
                    ward_core::escape(&e.username),
                    e.key_fingerprint
                );
                entry(vault_entry_info(&e), message)
            }))
        }
        VaultOp::List => listing(s.vault.list(caller).await, "vault", |v| {
            v.iter().map(vault_entry_info).collect()
        }),
        VaultOp::Remove { device, account } => Answer::Frame(answer(
            s.vault.remove(caller, &device, &account).await,
            |()| Response::Ok {
                message: format!(
                    "removed the vaulted credential for {}/{}",
                    ward_core::escape(&device),
                    ward_core::escape(&account)
                ),
            },
        )),
        VaultOp::Rotate { device, account } => Answer::Frame(answer(
            s.vault.rotate(caller, &device, &account).await,
            |r| match r.entry {
                Some(e) => entry(vault_entry_info(&e), r.message),
                None => Response::Ok { message: r.message },
            },
        )),
    }
}

/// Answers a [`ward_core::frame::KeysOp`]: JSON lines (one per key for `status`, one for the
/// rotation).
pub(crate) async fn keys_op<W: AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    caller: Caller<'_>,
    op: ward_core::frame::KeysOp,
    writer: &mut FrameWriter<W>,
) {
    let services = Services::of(shared);
    let answer = match op {
        ward_core::frame::KeysOp::Status => {
            listing(services.keys.status(caller).await, "keys", |v| v)
        }
        ward_core::frame::KeysOp::RotateKek => {
            listing(services.keys.rotate_kek(caller).await, "keys", |r| vec![r])
        }
    };
    match answer {
        Answer::Lines(what, bytes) => stream(shared, writer, what, &bytes).await,
        Answer::Frame(response) => {
            let response = gated(shared, response).await;
            let _ = writer.write_response(&response).await;
        }
    }
}

/// A vault entry as listed and answered (never a value).
pub fn vault_entry_info(e: &ward_store::vault::VaultEntry) -> VaultEntryInfo {
    VaultEntryInfo {
        device: e.device.clone(),
        account: e.account.clone(),
        username: e.username.clone(),
        key_fingerprint: e.key_fingerprint.clone(),
        created_unix: e.created_unix,
        updated_unix: e.updated_unix,
        last_used_unix: e.last_used_unix,
        last_rotated_unix: e.last_rotated_unix,
        pending: e.pending,
    }
}

async fn stream<W: AsyncWrite + Unpin>(
    shared: &Shared,
    writer: &mut FrameWriter<W>,
    what: &str,
    bytes: &[u8],
) {
    let head = gated(shared, Response::Stream { what: what.into() }).await;
    let streaming = matches!(head, Response::Stream { .. });
    let _ = writer.write_response(&head).await;
    if !streaming {
        return;
    }
    let _ = datapath::write_stream(writer, bytes).await;
}

/// A user as listed (no secrets).
pub fn user_line(u: &User) -> serde_json::Value {
    serde_json::json!({
        "name": u.name,
        "kind": u.kind.as_str(),
        "org": u.org,
        "roles": u.roles,
        "totp": u.totp_secret.is_some(),
        "must_change_password": u.must_change_password,
        "disabled": u.disabled,
        "created_unix": u.created_unix,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_origin_comes_from_an_https_redirect_url() {
        assert_eq!(
            https_origin("https://ward.hospital.org:8443/api/v1/sso/callback").as_deref(),
            Some("https://ward.hospital.org:8443")
        );
        assert_eq!(
            https_origin("https://ward.hospital.org").as_deref(),
            Some("https://ward.hospital.org")
        );
        assert_eq!(https_origin("http://ward/api/v1/sso/callback"), None);
        assert_eq!(https_origin("https:///x"), None);
        assert_eq!(https_origin("https://user@evil/x"), None);
    }

    #[test]
    fn each_refusal_has_one_frame() {
        let code = |r: Refusal| match refusal_frame(r) {
            Response::Error { code, .. } => Some(code),
            Response::Denied { .. } => None,
            other => panic!("{other:?}"),
        };
        assert_eq!(code(Refusal::Denied("no".into())), None);
        assert_eq!(
            code(Refusal::Forbidden("x".into())),
            Some(ErrorCode::Forbidden)
        );
        assert_eq!(
            code(Refusal::NotFound("x".into())),
            Some(ErrorCode::BadRequest)
        );
        assert_eq!(
            code(Refusal::Invalid("x".into())),
            Some(ErrorCode::BadRequest)
        );
        assert_eq!(
            code(Refusal::Unavailable("x".into())),
            Some(ErrorCode::Internal)
        );
        assert_eq!(code(Refusal::TotpReused), Some(ErrorCode::TotpReused));
        // The text travels unchanged.
        assert_eq!(
            refusal_frame(Refusal::Invalid("a reason is required".into())),
            error_frame(ErrorCode::BadRequest, "a reason is required")
        );
        assert_eq!(
            refusal_frame(Refusal::TotpReused),
            error_frame(ErrorCode::TotpReused, TOTP_REUSED)
        );
    }
}
