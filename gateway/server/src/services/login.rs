//! Login: user name, password and (where MFA applies) a TOTP code for a short-lived certificate.
//! Never says which part was wrong (except a reused code, once the password was right); the audit
//! log does. The decisions are `ward_core::{password, totp, ratelimit}`; this service runs them
//! against the user store and the CA.
//!
//! argon2id takes tens of milliseconds and 19 MiB: the frame front end runs
//! [`LoginService::login`] on a blocking thread behind the login gate ([`crate::login_gate`]),
//! which bounds how many run at once.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use time::OffsetDateTime;
use ward_ca::{Ca, IssueRequest};
use ward_core::access::Grant;
use ward_core::config::Config;
use ward_core::frame::Login;
use ward_core::ratelimit::{LoginLimiter, Reserved};
use ward_core::{password, totp, PrincipalKind};

mod sso;

pub use sso::SsoSignIn;

use super::principal::principal_kind;
use super::{Context, Refusal, Trail};
use crate::audit::Event;
use crate::store::StoreError;
use crate::store_async::AsyncUserStore;
use crate::users::User;

/// What a login with a right password and an already used TOTP code is told (the client prints
/// it for `ErrorCode::TotpReused`).
pub use ward_core::messages::TOTP_REUSED;

const LOGIN_FAILED: &str =
    "login failed: wrong user name, password or code (failed logins are rate-limited and audited)";

/// What login keeps between attempts: the issuing CA and the failed-login back-off.
pub struct LoginState {
    ca: Option<Ca>,
    limiter: Mutex<LoginLimiter>,
}

impl LoginState {
    /// `ca` is the issuing CA when its key is readable; without it login answers with a clear
    /// error.
    pub fn new(ca: Option<Ca>) -> Self {
        Self {
            ca,
            limiter: Mutex::new(LoginLimiter::new()),
        }
    }
}

/// A certificate issued by a login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The certificate chain (PEM).
    pub chain_pem: String,
    /// When the certificate ends.
    pub not_after_unix: i64,
    /// The grant it is bound to.
    pub grant: Option<String>,
}

/// Login.
#[derive(Clone)]
pub struct LoginService {
    ctx: Context,
    users: Arc<dyn AsyncUserStore>,
    state: Arc<LoginState>,
}

/// The audit event of a web console sign-in (password and TOTP, no certificate).
pub const WEB_SIGNIN: &str = "web_signin";
/// The audit event of a web console session's end (sign-out, timeout, a disabled user).
pub const WEB_SIGNOUT: &str = "web_signout";

/// A user name, password and TOTP code for a sign-in that issues no certificate (the web
/// console). `Debug` hides the password and the code.
#[derive(Clone, serde::Deserialize)]
pub struct Credentials {
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
    /// TOTP code: always required on this path.
    #[serde(default)]
    pub totp: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .field("totp", &self.totp.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

/// Who a [`LoginService::sign_in`] verified: the user record without its secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedIn {
    /// The user name.
    pub name: String,
    /// The user's certificate kind.
    pub kind: ward_ca::Kind,
    /// Organisation.
    pub org: Option<String>,
    /// Roles.
    pub roles: Vec<String>,
}

/// When a TOTP code is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mfa {
    /// As `[login]` says for the user's kind, or whenever the user has a TOTP secret.
    AsConfigured,
    /// Always (the web console: MFA on every path).
    Always,
}

/// One attempt's context for its audit events.
struct Attempt {
    /// The audit event's name (`login`, [`WEB_SIGNIN`]).
    event: &'static str,
    trail: Trail,
    peer: SocketAddr,
    user: String,
    now: OffsetDateTime,
    past_others: bool,
    /// Details every event of the attempt carries (`via`, the approving browser session).
    details: Vec<(&'static str, serde_json::Value)>,
}

/// Who a certificate is issued to: the user a login verified, or the identity of the signed-in
/// browser session that approved a `ward login --sso` ([`LoginService::issue_approved`]).
struct Holder<'a> {
    kind: ward_ca::Kind,
    name: &'a str,
    org: Option<&'a str>,
    roles: &'a [String],
}

impl<'a> Holder<'a> {
    fn of_user(user: &'a User) -> Self {
        Holder {
            kind: user.kind,
            name: &user.name,
            org: user.org.as_deref(),
            roles: &user.roles,
        }
    }
}

/// What a certificate is issued for: the client's CSR, the grant it names, the latest it may
/// end (besides the caps and grants), and the audit reason of a success.
struct Issuance<'a> {
    csr_pem: &'a str,
    grant: Option<&'a str>,
    until: Option<OffsetDateTime>,
    how: &'static str,
}

impl Attempt {
    fn ev(&self, outcome: &str) -> Event {
        let mut e = Event::new(self.event, outcome, self.now)
            .source(self.peer)
            .detail("user", self.user.clone());
        for (k, v) in &self.details {
            e = e.detail(k, v.clone());
        }
        e
    }

    fn who(&self, outcome: &str, user: &User) -> Event {
        self.holder(outcome, &Holder::of_user(user))
    }

    fn holder(&self, outcome: &str, h: &Holder<'_>) -> Event {
        self.ev(outcome).user(h.kind.as_str(), h.name, h.org)
    }

    /// Fail closed when the user store cannot be read or written.
    fn store_down(&mut self, e: StoreError, what: &str) -> Refusal {
        let e = self.ev("failure").reason(format!("store: {e}"));
        self.trail.push(e);
        Refusal::Unavailable(format!(
            "login is unavailable: the gateway cannot {what} its user store"
        ))
    }

    /// A refusal counted by the reservation.
    fn denied(&mut self, why: &str, user: Option<&User>) {
        let mut e = self.ev("denied").severity("warning").reason(why.to_owned());
        if self.past_others {
            e = e.detail("past_others_backoff", true);
        }
        if let Some(u) = user {
            e = e.user(u.kind.as_str(), &u.name, u.org.as_deref());
        }
        self.trail.push(e);
    }

    fn fail(&mut self, why: &str, user: Option<&User>) -> Refusal {
        self.denied(why, user);
        Refusal::Denied(LOGIN_FAILED.to_owned())
    }

    /// Refused by a back-off: audited, and told how long to wait.
    fn rate_limited(&mut self, wait: time::Duration) -> Refusal {
        let e = self.ev("denied").severity("warning").reason(format!(
            "rate-limited for {}s after repeated failures",
            wait.whole_seconds()
        ));
        self.trail.push(e);
        Refusal::Denied(format!(
            "too many failed logins for this user or from this address; try again in {} s",
            wait.whole_seconds().max(1)
        ))
    }

    /// A right password with a code already used: say so (only reachable with the password).
    fn reused(&mut self, why: &str, user: &User) -> Refusal {
        self.denied(why, Some(user));
        Refusal::TotpReused
    }
}

/// The wait the per-user schedule imposes after `failures` consecutive failures, the last at
/// `last`, at `now` (none once it is forgotten).
fn shared_wait(failures: u32, last: Option<OffsetDateTime>, now: OffsetDateTime) -> time::Duration {
    let schedule = ward_core::ratelimit::Limits::default().user;
    let Some(last) = last else {
        return time::Duration::ZERO;
    };
    let since = now - last;
    if since >= schedule.forget_after {
        return time::Duration::ZERO;
    }
    // A clock stepped backwards must not turn into a wait longer than the cap.
    (schedule.delay(failures) - since).clamp(time::Duration::ZERO, schedule.cap)
}

impl LoginService {
    /// Login over `users`, with the CA and back-off in `state`.
    pub fn new(ctx: Context, users: Arc<dyn AsyncUserStore>, state: Arc<LoginState>) -> Self {
        Self { ctx, users, state }
    }

    /// Answers a login from `peer`.
    pub async fn login(&self, peer: SocketAddr, login: &Login) -> Result<Issued, Refusal> {
        let mut a = Attempt {
            event: "login",
            trail: self.ctx.audit.trail(),
            peer,
            user: login.user.clone(),
            now: self.ctx.clock.now(),
            past_others: false,
            details: Vec::new(),
        };
        self.attempt(&mut a, login).await
    }

    /// Verifies a web console sign-in from `peer`: the same checks, back-off and audit as
    /// [`LoginService::login`], but a TOTP code is always required and no certificate is issued.
    /// Audited as [`WEB_SIGNIN`], naming the browser session `session` on success. A user whose
    /// initial password must still be changed is refused (`ward login --change-password`).
    pub async fn sign_in(
        &self,
        peer: SocketAddr,
        creds: &Credentials,
        session: &str,
    ) -> Result<SignedIn, Refusal> {
        let mut a = Attempt {
            event: WEB_SIGNIN,
            trail: self.ctx.audit.trail(),
            peer,
            user: creds.user.clone(),
            now: self.ctx.clock.now(),
            past_others: false,
            details: Vec::new(),
        };
        let config = self.ctx.live.config();
        let (user, _mfa) = self
            .verify(
                &mut a,
                &config,
                &creds.user,
                &creds.password,
                creds.totp.as_deref(),
                Mfa::Always,
            )
            .await?;
        if user.must_change_password {
            let e = a
                .who("denied", &user)
                .reason("the initial password must be changed before signing in");
            a.trail.push(e);
            return Err(Refusal::Denied(
                "your password is the initial one you were given and must be changed first: \
                 run `ward login --change-password` (your authenticator code was used; wait \
                 for the next one before signing in here)"
                    .into(),
            ));
        }
        let e = a
            .who("success", &user)
            .reason("password and TOTP verified; web session started")
            .detail("web_session", session.to_owned())
            .detail("mfa", true);
        a.trail.push(e);
        Ok(SignedIn {
            name: user.name,
            kind: user.kind,
            org: user.org,
            roles: user.roles,
        })
    }

    /// Audits the end of web console session `session` of `identity` from `peer` (`why`: signed
    /// out, idle timeout, …) as [`WEB_SIGNOUT`].
    pub fn signed_out(
        &self,
        identity: &ward_ca::Identity,
        peer: SocketAddr,
        session: &str,
        why: &str,
    ) {
        let mut trail = self.ctx.audit.trail();
        trail.push(
            Event::new(WEB_SIGNOUT, "success", self.ctx.clock.now())
                .principal(identity)
                .source(peer)
                .reason(why.to_owned())
                .detail("web_session", session.to_owned()),
        );
    }

    async fn attempt(&self, a: &mut Attempt, login: &Login) -> Result<Issued, Refusal> {
        // One config snapshot for the whole login (a reload may swap it meanwhile).
        let config = self.ctx.live.config();
        let (user, mfa) = self
            .verify(
                a,
                &config,
                &login.user,
                &login.password,
                login.totp.as_deref(),
                Mfa::AsConfigured,
            )
            .await?;
        self.change_password(a, &user, login).await?;
        let issuance = Issuance {
            csr_pem: &login.csr_pem,
            grant: login.grant.as_deref(),
            until: None,
            how: "password and TOTP verified; certificate issued",
        };
        self.issue(a, &config, &Holder::of_user(&user), mfa, &issuance)
    }

    /// Issues a certificate for `csr_pem` (a `ward login --sso` started from `peer`, shown with
    /// `user_code`) to `identity`, the signed-in browser session that approved it from
    /// `approver`: the same CA path, caps, `[login] cert_ttl` and vendor grant binding as
    /// [`LoginService::login`], audited as `login` with `detail.via = "sso"`, the browser
    /// session (its identity's serial) and the approver's address. The browser session proved
    /// MFA when it signed in; the certificate never outlives it (`identity.not_after`, the
    /// session's absolute end).
    pub fn issue_approved(
        &self,
        peer: SocketAddr,
        identity: &ward_ca::Identity,
        approver: SocketAddr,
        user_code: &str,
        csr_pem: &str,
    ) -> Result<Issued, Refusal> {
        let mut a = Attempt {
            event: "login",
            trail: self.ctx.audit.trail(),
            peer,
            user: identity.name.clone(),
            now: self.ctx.clock.now(),
            past_others: false,
            details: vec![
                ("via", "sso".into()),
                ("web_session", identity.serial.clone().into()),
                ("approver_source", approver.to_string().into()),
                ("user_code", user_code.to_owned().into()),
            ],
        };
        let config = self.ctx.live.config();
        let holder = Holder {
            kind: identity.kind,
            name: &identity.name,
            org: identity.org.as_deref(),
            roles: &identity.roles,
        };
        let issuance = Issuance {
            csr_pem,
            grant: None,
            until: Some(identity.not_after),
            how: "approved in a signed-in browser session; certificate issued",
        };
        self.issue(&mut a, &config, &holder, true, &issuance)
    }

    /// Reads the user, reserves the attempt with the back-off, checks the password and (as `mfa`
    /// says) the TOTP code; a success takes the back-off's count back. Every refusal is audited.
    async fn verify(
        &self,
        a: &mut Attempt,
        config: &Config,
        name: &str,
        password: &str,
        totp: Option<&str>,
        mfa: Mfa,
    ) -> Result<(User, bool), Refusal> {
        let user = self
            .users
            .user(name)
            .await
            .map_err(|e| a.store_down(e, "read"))?;
        // The attempt is counted before anything is verified, so parallel guesses cannot all
        // pass the back-off check before any of them is counted (ward_core::ratelimit).
        let second_factor =
            totp.is_some() && user.as_ref().is_some_and(|u| u.totp_secret.is_some());
        // The user name's failures on every gateway sharing the store bind first (a guesser
        // spreading attempts over the gateways meets the same back-off); then this gateway's
        // own per-address and per-pair counters.
        let shared_wait = self.shared_backoff(a, name).await?;
        if shared_wait > time::Duration::ZERO && !second_factor {
            return Err(a.rate_limited(shared_wait));
        }
        let reserved = self.reserve(a, second_factor)?;
        a.past_others = reserved == Reserved::PastOthers || shared_wait > time::Duration::ZERO;
        // Counted in the store before anything is verified, like the local reservation; a
        // success takes it back.
        self.users
            .note_login_failure(name, a.now)
            .await
            .map_err(|e| a.store_down(e, "write"))?;
        // Refusals in `authenticate` were counted by the reservation; a success takes the count
        // back.
        let verified = self
            .authenticate(a, config, user, password, totp, mfa)
            .await?;
        // Authenticated. From here on refusals are not counted as failed logins.
        if let Ok(mut limiter) = self.state.limiter.lock() {
            limiter.success(name, &a.peer.ip().to_string(), reserved);
        }
        // One let past others' back-off leaves the user's shared count in place (as the local
        // limiter does); a clear one forgets it.
        if !a.past_others {
            if let Err(e) = self.users.clear_login_failures(name).await {
                tracing::warn!(event = "store_failed", reason = %e, "clearing a user's failed logins");
            }
        }
        Ok(verified)
    }

    /// How long the user name's shared back-off (its failures on every gateway sharing the
    /// store, `ward_core::ratelimit`'s per-user schedule) still holds at `a.now`.
    async fn shared_backoff(&self, a: &mut Attempt, name: &str) -> Result<time::Duration, Refusal> {
        let (failures, last) = self
            .users
            .login_failures(name)
            .await
            .map_err(|e| a.store_down(e, "read"))?;
        Ok(shared_wait(failures, last, a.now))
    }

    /// Reserves a login attempt with the back-off (`ward_core::ratelimit`).
    fn reserve(&self, a: &mut Attempt, second_factor: bool) -> Result<Reserved, Refusal> {
        let source = a.peer.ip().to_string();
        let reserved = match self.state.limiter.lock() {
            Ok(mut limiter) => limiter.reserve(&a.user, &source, second_factor, a.now),
            Err(_) => {
                return Err(Refusal::Unavailable(
                    "login is unavailable after an internal error".into(),
                ))
            }
        };
        reserved.map_err(|wait| a.rate_limited(wait))
    }

    /// Checks the password and, where MFA applies, the TOTP code (consuming its step). Returns
    /// the user and whether MFA was verified.
    async fn authenticate(
        &self,
        a: &mut Attempt,
        config: &Config,
        user: Option<User>,
        password: &str,
        totp: Option<&str>,
        mfa: Mfa,
    ) -> Result<(User, bool), Refusal> {
        let Some(user) = user else {
            password::verify_dummy(password);
            return Err(a.fail("unknown user", None));
        };
        if !password::verify_password(&user.password_phc, password) {
            return Err(a.fail("wrong password", Some(&user)));
        }
        if user.disabled {
            return Err(a.fail("user is disabled", Some(&user)));
        }
        let needs_mfa = mfa == Mfa::Always
            || config.login.needs_mfa(principal_kind(user.kind))
            || user.totp_secret.is_some();
        if !needs_mfa {
            return Ok((user, false));
        }
        let Some(secret) = user
            .totp_secret
            .as_deref()
            .and_then(|s| totp::TotpSecret::from_base32(s).ok())
        else {
            return Err(a.fail("MFA required but the user has no TOTP secret", Some(&user)));
        };
        let Some(code) = totp else {
            return Err(a.fail("TOTP code missing", Some(&user)));
        };
        match totp::verify(&secret, code, a.now.unix_timestamp(), user.totp_last_step) {
            Err(totp::TotpError::Reused) => Err(a.reused("TOTP code reused", &user)),
            Err(_) => Err(a.fail("wrong TOTP code", Some(&user))),
            Ok(step) => match self.users.record_totp_step(&user.name, step).await {
                Ok(true) => Ok((user, true)),
                Ok(false) => Err(a.reused("TOTP code reused (concurrent login)", &user)),
                Err(e) => Err(a.store_down(e, "write")),
            },
        }
    }

    /// An initial password must be changed before a certificate is issued; a new password asked
    /// for is stored here.
    async fn change_password(
        &self,
        a: &mut Attempt,
        user: &User,
        login: &Login,
    ) -> Result<(), Refusal> {
        if user.must_change_password && login.new_password.is_none() {
            let e = a
                .who("denied", user)
                .reason("the initial password must be changed before a certificate is issued");
            a.trail.push(e);
            return Err(Refusal::Denied(
                "your password is the initial one you were given and must be changed first: \
                 run `ward login` again with --change-password (your authenticator code was \
                 used; wait for the next one)"
                    .into(),
            ));
        }
        let Some(new) = &login.new_password else {
            return Ok(());
        };
        if let Err(e) = password::check_strength(new, &user.name) {
            return Err(Refusal::Denied(format!("new password refused: {e}")));
        }
        let stored = match password::hash_password(new, rand::random()) {
            Ok(phc) => self.users.set_password(&user.name, &phc).await.ok(),
            Err(_) => None,
        };
        match stored {
            Some(true) => {
                let e = a
                    .who("success", user)
                    .reason("password changed at login")
                    .detail("password_changed", true);
                a.trail.push(e);
                Ok(())
            }
            _ => Err(Refusal::Unavailable(
                "the new password could not be stored; the old one still works".into(),
            )),
        }
    }

    /// The grant the certificate is bound to: the one named, or for vendors their current one
    /// (the one live now, else the next to start).
    fn bound_grant(
        &self,
        a: &mut Attempt,
        user: &Holder<'_>,
        grant: Option<&str>,
    ) -> Result<Option<Grant>, Refusal> {
        let now = a.now;
        let pkind = principal_kind(user.kind);
        let mine = |g: &&Grant| g.principal.name == user.name && g.principal.kind == pkind;
        let grants = self.ctx.live.grants();
        match grant {
            Some(id) => match grants
                .iter()
                .filter(mine)
                .find(|g| g.id == id && g.is_current(now))
            {
                Some(g) => Ok(Some(g.clone())),
                None => {
                    let e = a
                        .holder("denied", user)
                        .reason(format!("no current grant {id} for this user"));
                    a.trail.push(e);
                    Err(Refusal::Denied(format!(
                        "you hold no current grant {id}; see `ward grants`"
                    )))
                }
            },
            None if pkind == PrincipalKind::Vendor => Ok(grants
                .iter()
                .filter(mine)
                .filter(|g| g.is_current(now))
                .min_by_key(|g| (!g.is_live(now), g.start))
                .cloned()),
            None => Ok(None),
        }
    }

    /// Issues the certificate.
    fn issue(
        &self,
        a: &mut Attempt,
        config: &Config,
        user: &Holder<'_>,
        mfa: bool,
        issuance: &Issuance<'_>,
    ) -> Result<Issued, Refusal> {
        let now = a.now;
        let Some(ca) = &self.state.ca else {
            let e = a
                .holder("failure", user)
                .reason("login disabled: no issuing CA key");
            a.trail.push(e);
            return Err(Refusal::Unavailable(
                "login is not enabled on this gateway: its CA's issuing key is not readable".into(),
            ));
        };
        // The certificate never outlives the grant it is for, nor the CA's cap for the kind.
        let mut ttl = time::Duration::try_from(config.login.cert_ttl)
            .unwrap_or(time::Duration::HOUR)
            .min(ca.caps().max_ttl(user.kind));
        let grant = self.bound_grant(a, user, issuance.grant)?;
        if let Some(g) = &grant {
            // The CA counts from `now` in whole seconds and X.509 keeps whole seconds: measured
            // that way, the certificate ends on the grant's last whole second (within a second
            // of the grant's end, which the gateway then names as the session's end), never
            // after it.
            let whole = |t: OffsetDateTime| t.replace_nanosecond(0).unwrap_or(t);
            ttl = ttl.min(whole(g.end) - whole(now));
        }
        if let Some(until) = issuance.until {
            // Whole seconds, as for a grant: never past `until`.
            let whole = |t: OffsetDateTime| t.replace_nanosecond(0).unwrap_or(t);
            ttl = ttl.min(whole(until) - whole(now));
        }
        if ttl < time::Duration::SECOND {
            return Err(Refusal::Denied(
                "the grant (or the approving browser session) ends too soon to issue a \
                 certificate"
                    .into(),
            ));
        }
        let mut req = IssueRequest::new(user.kind, user.name.to_owned());
        req.org = user.org.map(str::to_owned);
        req.roles = user.roles.to_vec();
        req.ttl = Some(ttl);
        req.csr_pem = Some(issuance.csr_pem.to_owned());
        match ca.issue(&req, now) {
            Ok(issued) => {
                let mut e = a
                    .holder("success", user)
                    .reason(issuance.how)
                    .detail("serial", issued.identity.serial.clone())
                    .detail("not_after", issued.identity.not_after.to_string())
                    .detail("mfa", mfa);
                if let Some(g) = &grant {
                    e = e.detail("grant", g.id.clone());
                }
                a.trail.push(e);
                Ok(Issued {
                    chain_pem: issued.chain_pem,
                    not_after_unix: issued.identity.not_after.unix_timestamp(),
                    grant: grant.map(|g| g.id),
                })
            }
            Err(e) => {
                let ev = a
                    .holder("failure", user)
                    .reason(format!("issuance failed: {e}"));
                a.trail.push(ev);
                Err(Refusal::Invalid(format!(
                    "certificate could not be issued: {e}"
                )))
            }
        }
    }
}

#[cfg(test)]
mod shared_backoff_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_shared_count_follows_the_per_user_schedule() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let free = ward_core::ratelimit::USER_FREE_FAILURES;
        // None, or only free failures: no wait.
        assert_eq!(shared_wait(0, None, now), time::Duration::ZERO);
        assert_eq!(shared_wait(free, Some(now), now), time::Duration::ZERO);
        // Past the free ones: the schedule's wait, less the time since the last failure.
        assert_eq!(
            shared_wait(free + 1, Some(now), now),
            time::Duration::seconds(2)
        );
        assert_eq!(
            shared_wait(free + 3, Some(now - time::Duration::seconds(3)), now),
            time::Duration::seconds(5)
        );
        // Forgotten after a day; a last failure "in the future" waits at most the cap.
        assert_eq!(
            shared_wait(free + 20, Some(now - time::Duration::hours(25)), now),
            time::Duration::ZERO
        );
        assert_eq!(
            shared_wait(free + 20, Some(now + time::Duration::hours(5)), now),
            time::Duration::seconds(900)
        );
    }
}
