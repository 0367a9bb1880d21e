//! Just-in-time access at the gateway: login (password + TOTP → short-lived certificate),
//! access requests, approvals, grants, revocation and users. The decisions are the pure
//! functions in `ward_core::access`, `totp`, `password` and `ratelimit`; this module does the
//! I/O around them (store, CA, audit log, cutting live sessions) and answers the frames.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::io::AsyncWrite;
use ward_ca::{Ca, Identity, IssueRequest, Kind};
use ward_core::access::{self, AccessRequest, Grant, RequestState};
use ward_core::frame::{AccessOp, AccessReply, ErrorCode, Login, Response};
use ward_core::ratelimit::{LoginLimiter, Reserved};
use ward_core::{password, totp, Principal, PrincipalKind};

use crate::access_store::DecisionError;
use crate::audit::Event;
use crate::datapath::{self, FrameWriter};
use crate::gateway::Shared;
use crate::store::SqliteStore;
use crate::users::{User, UserStore};

/// How often the gateway re-reads grants and disabled users from the store (host-side changes,
/// other gateways), and cuts sessions that lost their footing.
pub const REFRESH_EVERY: Duration = Duration::from_millis(400);

/// JIT state held by the gateway.
pub struct Jit {
    pub(crate) db: Arc<SqliteStore>,
    /// Swapped whole by [`refresh`]; a session open takes a reference, not a copy.
    pub(crate) grants: RwLock<Arc<[Grant]>>,
    pub(crate) disabled: RwLock<HashSet<String>>,
    ca: Option<Ca>,
    limiter: Mutex<LoginLimiter>,
    /// Bounds the logins (argon2id) running and waiting at once.
    pub(crate) gate: crate::login_gate::LoginGate,
}

impl Jit {
    /// Loads current grants and disabled users. `ca` is the issuing CA when its key is readable
    /// (login needs it); without it login answers with a clear error.
    pub fn new(db: Arc<SqliteStore>, ca: Option<Ca>, now: OffsetDateTime) -> anyhow::Result<Jit> {
        let grants = db.grants(now, false)?;
        let disabled = db.disabled_users()?.into_iter().collect();
        Ok(Jit {
            db,
            grants: RwLock::new(grants.into()),
            disabled: RwLock::new(disabled),
            ca,
            limiter: Mutex::new(LoginLimiter::new()),
            gate: crate::login_gate::LoginGate::for_this_machine(),
        })
    }

    /// Current grants (live or upcoming): a shared snapshot. A poisoned lock reads as no grants
    /// (fail closed).
    pub fn grants(&self) -> Arc<[Grant]> {
        self.grants
            .read()
            .map(|g| Arc::clone(&g))
            .unwrap_or_else(|_| Arc::from(Vec::new()))
    }

    /// Whether a user name is disabled.
    pub fn is_disabled(&self, name: &str) -> bool {
        self.disabled
            .read()
            .map(|d| d.contains(name))
            .unwrap_or(true)
    }
}

fn random_id(prefix: &str) -> String {
    format!("{prefix}-{}", hex::encode(rand::random::<[u8; 6]>()))
}

fn principal_kind(k: Kind) -> PrincipalKind {
    match k {
        Kind::Vendor => PrincipalKind::Vendor,
        Kind::Clinician => PrincipalKind::Clinician,
        Kind::Security => PrincipalKind::Security,
        Kind::Admin => PrincipalKind::Admin,
        Kind::Gateway => PrincipalKind::Gateway,
    }
}

fn kind_of(k: PrincipalKind) -> Option<Kind> {
    match k {
        PrincipalKind::Vendor => Some(Kind::Vendor),
        PrincipalKind::Clinician => Some(Kind::Clinician),
        PrincipalKind::Security => Some(Kind::Security),
        PrincipalKind::Admin => Some(Kind::Admin),
        PrincipalKind::Gateway => None,
    }
}

/// Re-reads grants and disabled users and publishes them in the policy snapshot when they changed:
/// sessions on a revoked or vanished grant, and sessions of disabled users, then end.
pub(crate) fn refresh(shared: &Shared) {
    let now = shared.clock.now();
    let jit = &shared.jit;
    match jit.db.grants(now, false) {
        Ok(g) => {
            if let Ok(mut cur) = jit.grants.write() {
                *cur = g.into();
            }
        }
        Err(e) => tracing::warn!(event = "store_failed", reason = %e, "reading grants"),
    }
    match jit.db.disabled_users() {
        Ok(d) => {
            if let Ok(mut cur) = jit.disabled.write() {
                *cur = d.into_iter().collect();
            }
        }
        Err(e) => tracing::warn!(event = "store_failed", reason = %e, "reading users"),
    }
    // Live sessions on a revoked or ended grant, and those of disabled users, see the change in
    // the policy snapshot and end themselves.
    shared.publish_jit();
}

/// The periodic refresh task.
pub(crate) async fn refresh_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        refresh(&shared);
    }
}

const LOGIN_FAILED: &str =
    "login failed: wrong user name, password or code (failed logins are rate-limited and audited)";

/// Reserves a login attempt with the back-off (`ward_core::ratelimit`), or the refusal to send.
fn reserve(
    shared: &Shared,
    user: &str,
    peer: SocketAddr,
    second_factor: bool,
    now: OffsetDateTime,
) -> Result<Reserved, Response> {
    let reserved = match shared.jit.limiter.lock() {
        Ok(mut limiter) => limiter.reserve(user, &peer.ip().to_string(), second_factor, now),
        Err(_) => {
            return Err(Response::Error {
                code: ErrorCode::Internal,
                message: "login is unavailable after an internal error".into(),
            })
        }
    };
    reserved.map_err(|wait| {
        shared.audit.emit(
            Event::new("login", "denied", now)
                .source(peer)
                .detail("user", user.to_owned())
                .severity("warning")
                .reason(format!(
                    "rate-limited for {}s after repeated failures",
                    wait.whole_seconds()
                )),
        );
        Response::Denied {
            reason: format!(
                "too many failed logins for this user or from this address; try again in {} s",
                wait.whole_seconds().max(1)
            ),
        }
    })
}

/// What a login with a right password and an already used TOTP code is told (the client prints
/// it for [`ErrorCode::TotpReused`]).
pub const TOTP_REUSED: &str = "this code was used already: wait for the next one";

/// Answers a `Login`. Never says which part was wrong (except a reused code, once the password
/// was right); the audit log does.
pub(crate) fn login(shared: &Shared, peer: SocketAddr, login: Login) -> Response {
    let now = shared.clock.now();
    // One config snapshot for the whole login (a reload may swap it meanwhile).
    let config = shared.config();
    let jit = &shared.jit;
    let source = peer.ip().to_string();
    let ev = |outcome: &str| {
        Event::new("login", outcome, now)
            .source(peer)
            .detail("user", login.user.clone())
    };
    // Fail closed when the user store cannot be read or written.
    let store_down = |e: crate::store::StoreError, what: &str| {
        shared
            .audit
            .emit(ev("failure").reason(format!("store: {e}")));
        Response::Error {
            code: ErrorCode::Internal,
            message: format!("login is unavailable: the gateway cannot {what} its user store"),
        }
    };
    let user = match jit.db.user(&login.user) {
        Ok(u) => u,
        Err(e) => return store_down(e, "read"),
    };
    // The attempt is counted before anything is verified, so parallel guesses cannot all pass
    // the back-off check before any of them is counted (ward_core::ratelimit).
    let second_factor =
        login.totp.is_some() && user.as_ref().is_some_and(|u| u.totp_secret.is_some());
    let reserved = match reserve(shared, &login.user, peer, second_factor, now) {
        Ok(r) => r,
        Err(refusal) => return refusal,
    };
    // Refusals below were counted by the reservation; a success takes the count back.
    let denied = |why: &str, user: Option<&User>| {
        let mut e = ev("denied").severity("warning").reason(why.to_owned());
        if reserved == Reserved::PastOthers {
            e = e.detail("past_others_backoff", true);
        }
        if let Some(u) = user {
            e = e.user(u.kind.as_str(), &u.name, u.org.as_deref());
        }
        shared.audit.emit(e);
    };
    let fail = |why: &str, user: Option<&User>| {
        denied(why, user);
        Response::Denied {
            reason: LOGIN_FAILED.to_owned(),
        }
    };
    // A right password with a code already used: say so (only reachable with the password).
    let reused = |why: &str, user: &User| {
        denied(why, Some(user));
        Response::Error {
            code: ErrorCode::TotpReused,
            message: TOTP_REUSED.to_owned(),
        }
    };
    let Some(user) = user else {
        password::verify_dummy(&login.password);
        return fail("unknown user", None);
    };
    if !password::verify_password(&user.password_phc, &login.password) {
        return fail("wrong password", Some(&user));
    }
    if user.disabled {
        return fail("user is disabled", Some(&user));
    }
    let pkind = principal_kind(user.kind);
    let needs_mfa = config.login.needs_mfa(pkind) || user.totp_secret.is_some();
    if needs_mfa {
        let Some(secret) = user
            .totp_secret
            .as_deref()
            .and_then(|s| totp::TotpSecret::from_base32(s).ok())
        else {
            return fail("MFA required but the user has no TOTP secret", Some(&user));
        };
        let Some(code) = login.totp.as_deref() else {
            return fail("TOTP code missing", Some(&user));
        };
        match totp::verify(&secret, code, now.unix_timestamp(), user.totp_last_step) {
            Err(totp::TotpError::Reused) => return reused("TOTP code reused", &user),
            Err(_) => return fail("wrong TOTP code", Some(&user)),
            Ok(step) => match jit.db.record_totp_step(&user.name, step) {
                Ok(true) => {}
                Ok(false) => return reused("TOTP code reused (concurrent login)", &user),
                Err(e) => return store_down(e, "write"),
            },
        }
    }
    // Authenticated. From here on refusals are not counted as failed logins.
    if let Ok(mut limiter) = jit.limiter.lock() {
        limiter.success(&login.user, &source, reserved);
    }
    let who = |e: Event| e.user(user.kind.as_str(), &user.name, user.org.as_deref());
    if user.must_change_password && login.new_password.is_none() {
        shared.audit.emit(
            who(ev("denied"))
                .reason("the initial password must be changed before a certificate is issued"),
        );
        return Response::Denied {
            reason: "your password is the initial one you were given and must be changed first: \
                     run `ward login` again with --change-password (your authenticator code was \
                     used; wait for the next one)"
                .into(),
        };
    }
    if let Some(new) = &login.new_password {
        if let Err(e) = password::check_strength(new, &user.name) {
            return Response::Denied {
                reason: format!("new password refused: {e}"),
            };
        }
        let stored = password::hash_password(new, rand::random())
            .map_err(|e| e.to_string())
            .and_then(|phc| {
                jit.db
                    .set_password(&user.name, &phc)
                    .map_err(|e| e.to_string())
            });
        match stored {
            Ok(true) => shared.audit.emit(
                who(ev("success"))
                    .reason("password changed at login")
                    .detail("password_changed", true),
            ),
            _ => {
                return Response::Error {
                    code: ErrorCode::Internal,
                    message: "the new password could not be stored; the old one still works".into(),
                }
            }
        }
    }
    let Some(ca) = &jit.ca else {
        shared
            .audit
            .emit(who(ev("failure")).reason("login disabled: no issuing CA key"));
        return Response::Error {
            code: ErrorCode::Internal,
            message: "login is not enabled on this gateway: its CA's issuing key is not readable"
                .into(),
        };
    };
    let kind = user.kind;
    // The certificate never outlives the grant it is for, nor the CA's cap for the kind.
    let mut ttl = time::Duration::try_from(config.login.cert_ttl)
        .unwrap_or(time::Duration::HOUR)
        .min(ca.caps().max_ttl(kind));
    let mine = |g: &&Grant| g.principal.name == user.name && g.principal.kind == pkind;
    let grants = jit.grants();
    let grant = match &login.grant {
        Some(id) => match grants
            .iter()
            .filter(mine)
            .find(|g| &g.id == id && g.is_current(now))
        {
            Some(g) => Some(g.clone()),
            None => {
                shared
                    .audit
                    .emit(who(ev("denied")).reason(format!("no current grant {id} for this user")));
                return Response::Denied {
                    reason: format!("you hold no current grant {id}; see `ward grants`"),
                };
            }
        },
        // Vendors are bound to their current grant automatically (the one live now, else the
        // next to start).
        None if pkind == PrincipalKind::Vendor => grants
            .iter()
            .filter(mine)
            .filter(|g| g.is_current(now))
            .min_by_key(|g| (!g.is_live(now), g.start))
            .cloned(),
        None => None,
    };
    if let Some(g) = &grant {
        // The CA counts from `now` in whole seconds and X.509 keeps whole seconds: measured that
        // way, the certificate ends on the grant's last whole second (within a second of the
        // grant's end, which the gateway then names as the session's end), never after it.
        let whole = |t: OffsetDateTime| t.replace_nanosecond(0).unwrap_or(t);
        ttl = ttl.min(whole(g.end) - whole(now));
    }
    if ttl < time::Duration::SECOND {
        return Response::Denied {
            reason: "the grant ends too soon to issue a certificate".into(),
        };
    }
    let mut req = IssueRequest::new(kind, user.name.clone());
    req.org = user.org.clone();
    req.roles = user.roles.clone();
    req.ttl = Some(ttl);
    req.csr_pem = Some(login.csr_pem.clone());
    match ca.issue(&req, now) {
        Ok(issued) => {
            let mut e = who(ev("success"))
                .reason("password and TOTP verified; certificate issued")
                .detail("serial", issued.identity.serial.clone())
                .detail("not_after", issued.identity.not_after.to_string())
                .detail("mfa", needs_mfa);
            if let Some(g) = &grant {
                e = e.detail("grant", g.id.clone());
            }
            shared.audit.emit(e);
            Response::Issued {
                chain_pem: issued.chain_pem,
                not_after_unix: issued.identity.not_after.unix_timestamp(),
                grant: grant.map(|g| g.id),
            }
        }
        Err(e) => {
            shared
                .audit
                .emit(who(ev("failure")).reason(format!("issuance failed: {e}")));
            Response::Error {
                code: ErrorCode::BadRequest,
                message: format!("certificate could not be issued: {e}"),
            }
        }
    }
}

fn forbidden(message: String) -> Response {
    Response::Error {
        code: ErrorCode::Forbidden,
        message,
    }
}

fn internal(e: impl std::fmt::Display) -> Response {
    Response::Error {
        code: ErrorCode::Internal,
        message: format!("store error: {e}"),
    }
}

/// A request as listed: the request, its state at `now`, its approvals.
#[derive(serde::Serialize)]
struct RequestLine<'a> {
    #[serde(flatten)]
    request: &'a AccessRequest,
    state_now: RequestState,
    approvals: Vec<String>,
}

/// Answers an [`AccessOp`]; listings are streamed as JSON lines.
pub(crate) async fn access_op<W: AsyncWrite + Unpin>(
    shared: &Shared,
    identity: &Identity,
    principal: &Principal,
    peer: SocketAddr,
    op: AccessOp,
    writer: &mut FrameWriter<W>,
) {
    let now = shared.clock.now();
    let ev = |event: &str, outcome: &str| {
        Event::new(event, outcome, now)
            .principal(identity)
            .source(peer)
    };
    let jit = &shared.jit;
    // One config snapshot for the whole operation (a reload may swap it meanwhile).
    let cfg = shared.config();
    let response = match op {
        AccessOp::Request {
            device,
            reason,
            duration_secs,
            start_unix,
        } => {
            let start = match start_unix
                .map(OffsetDateTime::from_unix_timestamp)
                .transpose()
            {
                Ok(s) => s,
                Err(_) => {
                    let _ = writer
                        .write_response(&Response::Error {
                            code: ErrorCode::BadRequest,
                            message: "bad start time".into(),
                        })
                        .await;
                    return;
                }
            };
            match access::check_start_ahead(start, now, cfg.access.max_start_ahead).and_then(|()| {
                access::new_request(
                    &cfg.approvals,
                    &cfg.devices,
                    principal,
                    &device,
                    &reason,
                    start,
                    Duration::from_secs(duration_secs),
                    now,
                    random_id("req"),
                )
            }) {
                Err(e) => {
                    shared.audit.emit(
                        ev("access_request", "denied")
                            .device(device)
                            .reason(e.to_string()),
                    );
                    Response::Denied {
                        reason: e.to_string(),
                    }
                }
                Ok(r) => match jit.db.put_request(&r) {
                    Err(e) => internal(e),
                    Ok(()) => {
                        shared.audit.emit(
                            ev("access_request", "success")
                                .device(r.device.clone())
                                .reason(r.reason.clone())
                                .detail("request", r.id.clone())
                                .detail("policy", r.policy.clone())
                                .detail("start", r.start.to_string())
                                .detail("end", r.end.to_string())
                                .detail("expires", r.expires.to_string()),
                        );
                        Response::Access(Box::new(AccessReply::Request { request: r }))
                    }
                },
            }
        }
        AccessOp::ListRequests { all } => match jit.db.requests() {
            Err(e) => internal(e),
            Ok(rows) => {
                let mut out = Vec::new();
                for (r, a) in rows {
                    let state = r.state_at(now);
                    if !access::can_see(&r, &cfg.approvals, principal)
                        || (!all && state != RequestState::Pending)
                    {
                        continue;
                    }
                    let line = RequestLine {
                        request: &r,
                        state_now: state,
                        approvals: a.iter().map(|a| a.approver.name.clone()).collect(),
                    };
                    if let Ok(mut s) = serde_json::to_vec(&line) {
                        s.push(b'\n');
                        out.extend_from_slice(&s);
                    }
                }
                stream(shared, writer, "requests", &out).await;
                return;
            }
        },
        AccessOp::Approve { id, comment } => {
            let comment = comment.filter(|c| !c.trim().is_empty());
            let result = jit.db.approve(
                &id,
                |r, a| access::approve(r, a, &cfg.approvals, principal, comment.clone(), now),
                |r, a| access::grant_for(r, a, random_id("grant")),
            );
            match result {
                Ok(out) => {
                    shared.audit.emit(
                        ev("access_approve", "success")
                            .device(out.request.device.clone())
                            .detail("request", id.clone())
                            .detail("requester", out.request.requester.to_string())
                            .detail("approvals", out.approved.count)
                            .detail("required", out.approved.required)
                            .reason(comment.unwrap_or_default()),
                    );
                    if let Some(g) = &out.grant {
                        shared.audit.emit(
                            Event::new("access_grant", "success", now)
                                .device(g.device.clone())
                                .detail("grant", g.id.clone())
                                .detail("request", g.request.clone())
                                .detail("principal", g.principal.to_string())
                                .detail("start", g.start.to_string())
                                .detail("end", g.end.to_string())
                                .detail("approvers", g.approvers.join(","))
                                .reason("approved by every approver group"),
                        );
                        refresh(shared);
                    }
                    Response::Access(Box::new(AccessReply::Approved {
                        request: out.request,
                        count: u32::try_from(out.approved.count).unwrap_or(u32::MAX),
                        required: u32::try_from(out.approved.required).unwrap_or(u32::MAX),
                        grant: out.grant,
                    }))
                }
                Err(e) => decision_refused(shared, ev("access_approve", "denied"), &id, e),
            }
        }
        AccessOp::Deny { id, reason } => {
            if reason.trim().is_empty() {
                Response::Error {
                    code: ErrorCode::BadRequest,
                    message: "a reason is required: ward deny ID --reason TEXT".into(),
                }
            } else {
                match jit.db.deny(&id, |r| {
                    access::check_deny(r, &cfg.approvals, principal, now)
                }) {
                    Ok(r) => {
                        shared.audit.emit(
                            ev("access_deny", "success")
                                .device(r.device.clone())
                                .detail("request", id.clone())
                                .detail("requester", r.requester.to_string())
                                .reason(reason),
                        );
                        Response::Access(Box::new(AccessReply::Request { request: r }))
                    }
                    Err(e) => decision_refused(shared, ev("access_deny", "denied"), &id, e),
                }
            }
        }
        AccessOp::ListGrants { all } => match jit.db.grants(now, all) {
            Err(e) => internal(e),
            Ok(grants) => {
                let staff = matches!(
                    principal.kind,
                    PrincipalKind::Security | PrincipalKind::Admin
                );
                let mut out = Vec::new();
                for g in grants.iter().filter(|g| {
                    staff || access::can_revoke(g, &cfg.approvals, &cfg.devices, principal)
                }) {
                    if let Ok(mut s) = serde_json::to_vec(g) {
                        s.push(b'\n');
                        out.extend_from_slice(&s);
                    }
                }
                stream(shared, writer, "grants", &out).await;
                return;
            }
        },
        AccessOp::Revoke { grant, reason } => {
            let found = match jit.db.grant(&grant) {
                Ok(g) => g,
                Err(e) => {
                    let _ = writer.write_response(&internal(e)).await;
                    return;
                }
            };
            match found {
                Some(g) if access::can_revoke(&g, &cfg.approvals, &cfg.devices, principal) => {
                    if reason.trim().is_empty() {
                        Response::Error {
                            code: ErrorCode::BadRequest,
                            message: "a reason is required: ward revoke GRANT --reason TEXT".into(),
                        }
                    } else {
                        let why = format!("by {principal}: {reason}");
                        match jit.db.revoke_grant(&grant, now, &why) {
                            Ok(Some(g)) => {
                                refresh(shared);
                                shared.audit.emit(
                                    ev("access_revoke", "success")
                                        .severity("warning")
                                        .device(g.device.clone())
                                        .detail("grant", g.id.clone())
                                        .detail("principal", g.principal.to_string())
                                        .reason(reason),
                                );
                                Response::Access(Box::new(AccessReply::Grant { grant: g }))
                            }
                            Ok(None) => not_found_grant(&grant),
                            Err(e) => internal(e),
                        }
                    }
                }
                _ => {
                    shared.audit.emit(
                        ev("access_revoke", "denied")
                            .detail("grant", grant.clone())
                            .reason("not the holder, an approver, security or admin"),
                    );
                    not_found_grant(&grant)
                }
            }
        }
        AccessOp::UserAdd {
            name,
            kind,
            org,
            roles,
        } => match require_admin(principal, "add users") {
            Err(r) => {
                shared.audit.emit(
                    ev("user_add", "denied")
                        .detail("user", name)
                        .reason("not an admin"),
                );
                r
            }
            Ok(()) => match create_user(
                jit.db.as_ref(),
                &cfg.login,
                &name,
                &kind,
                org,
                roles,
                None,
                true,
                now,
            ) {
                Ok(created) => {
                    shared.audit.emit(
                        ev("user_add", "success")
                            .detail("user", name.clone())
                            .detail("kind", kind)
                            .detail("totp", created.totp_uri.is_some()),
                    );
                    Response::Access(Box::new(AccessReply::UserCreated {
                        name,
                        password: created.password,
                        totp_uri: created.totp_uri,
                    }))
                }
                Err(e) => {
                    shared.audit.emit(
                        ev("user_add", "failure")
                            .detail("user", name)
                            .reason(format!("{e:#}")),
                    );
                    Response::Error {
                        code: ErrorCode::BadRequest,
                        message: format!("{e:#}"),
                    }
                }
            },
        },
        AccessOp::UserDisable { name } => match require_admin(principal, "disable users") {
            Err(r) => {
                shared.audit.emit(
                    ev("user_disable", "denied")
                        .detail("user", name)
                        .reason("not an admin"),
                );
                r
            }
            Ok(()) => match jit.db.disable_user(&name, now) {
                Ok(true) => {
                    refresh(shared);
                    shared.audit.emit(
                        ev("user_disable", "success")
                            .severity("warning")
                            .detail("user", name.clone()),
                    );
                    Response::Ok {
                        message: format!("user {name} disabled; their live sessions are ending"),
                    }
                }
                Ok(false) => Response::Error {
                    code: ErrorCode::BadRequest,
                    message: format!("no user {name}"),
                },
                Err(e) => internal(e),
            },
        },
        AccessOp::UserList => match require_admin(principal, "list users") {
            Err(r) => r,
            Ok(()) => match jit.db.list_users() {
                Err(e) => internal(e),
                Ok(users) => {
                    let mut out = Vec::new();
                    for u in users {
                        if let Ok(mut s) = serde_json::to_vec(&user_line(&u)) {
                            s.push(b'\n');
                            out.extend_from_slice(&s);
                        }
                    }
                    stream(shared, writer, "users", &out).await;
                    return;
                }
            },
        },
    };
    let response = crate::gateway::gated(shared, response).await;
    let _ = writer.write_response(&response).await;
}

fn not_found_grant(id: &str) -> Response {
    forbidden(format!(
        "no grant {id} that you may revoke (holders, approvers, security and admin can)"
    ))
}

fn decision_refused(shared: &Shared, e: Event, id: &str, err: DecisionError) -> Response {
    let msg = err.to_string();
    shared
        .audit
        .emit(e.detail("request", id.to_owned()).reason(msg.clone()));
    match err {
        DecisionError::Store(e) => internal(e),
        DecisionError::NotFound(_) | DecisionError::Refused(_) => Response::Denied { reason: msg },
    }
}

fn require_admin(p: &Principal, what: &str) -> Result<(), Response> {
    if p.kind == PrincipalKind::Admin {
        Ok(())
    } else {
        Err(forbidden(format!(
            "{p} may not {what}: only admin identities can"
        )))
    }
}

async fn stream<W: AsyncWrite + Unpin>(
    shared: &Shared,
    writer: &mut FrameWriter<W>,
    what: &str,
    bytes: &[u8],
) {
    let head = crate::gateway::gated(shared, Response::Stream { what: what.into() }).await;
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

/// What [`create_user`] hands back once.
pub struct CreatedUser {
    /// The initial password.
    pub password: String,
    /// The TOTP provisioning URI, when the user has TOTP.
    pub totp_uri: Option<String>,
}

/// Creates a user with a generated (or given) password and, where MFA applies, a TOTP secret.
/// Shared by the gateway (`ward user add` through the gateway) and the host-side command.
/// `must_change`: the first login must set a new password (an initial password is known to
/// whoever created the user; IEC 62443-3-3 SR 1.5, changing initial authenticators).
#[allow(clippy::too_many_arguments)]
pub fn create_user(
    db: &SqliteStore,
    login: &ward_core::config::LoginConfig,
    name: &str,
    kind: &str,
    org: Option<String>,
    roles: Vec<String>,
    password_given: Option<String>,
    must_change: bool,
    now: OffsetDateTime,
) -> anyhow::Result<CreatedUser> {
    let pkind: PrincipalKind = kind
        .parse()
        .map_err(|_| anyhow::anyhow!("kind must be vendor, clinician, security or admin"))?;
    let ca_kind = kind_of(pkind)
        .filter(|k| k.is_person())
        .ok_or_else(|| anyhow::anyhow!("kind must be vendor, clinician, security or admin"))?;
    // The CA's own name rules, so a user that exists can always get a certificate.
    ward_ca::names::check_name(name).map_err(|e| anyhow::anyhow!("user name: {e}"))?;
    if let Some(o) = &org {
        ward_ca::names::check_org(o).map_err(|e| anyhow::anyhow!("org: {e}"))?;
    }
    ward_ca::names::check_roles(&roles).map_err(|e| anyhow::anyhow!("roles: {e}"))?;
    let password = match password_given {
        Some(p) => {
            password::check_strength(&p, name).map_err(|e| anyhow::anyhow!("password: {e}"))?;
            p
        }
        // A generated password is strong by construction; draw again in the (astronomically
        // unlikely) case the strength check says otherwise.
        None => (0..16)
            .map(|_| password::generate_password(rand::random()))
            .find(|p| password::check_strength(p, name).is_ok())
            .ok_or_else(|| anyhow::anyhow!("could not generate a password"))?,
    };
    let phc = password::hash_password(&password, rand::random())?;
    let secret = login
        .needs_mfa(pkind)
        .then(|| totp::TotpSecret::generate(rand::random()));
    let totp_uri = secret
        .as_ref()
        .map(|s| totp::provisioning_uri("Ward", name, s));
    let user = User {
        name: name.to_owned(),
        kind: ca_kind,
        org,
        roles,
        password_phc: phc,
        totp_secret: secret.map(|s| s.to_base32()),
        totp_last_step: None,
        disabled: false,
        created_unix: now.unix_timestamp(),
        disabled_unix: None,
        must_change_password: must_change,
    };
    db.add_user(&user)?;
    Ok(CreatedUser { password, totp_uri })
}
