//! The login service's part in sign-in with the hospital's OpenID provider (`web::sso`): the
//! audit of every outcome (`web_signin` with `detail.via = "sso"`, the provider and the IdP's
//! subject), and Ward's own TOTP step for a provider with `mfa = "ward"` — the same back-off,
//! code-reuse guard and audit as a password login's second factor.

use std::net::SocketAddr;

use ward_core::totp;

use super::{Attempt, LoginService, SignedIn, WEB_SIGNIN};
use crate::services::Refusal;

/// Who the IdP vouched for, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsoSignIn {
    /// The `[[oidc]]` provider's name.
    pub provider: String,
    /// The ID token's `sub`.
    pub subject: String,
    /// The ID token's issuer.
    pub issuer: String,
}

impl LoginService {
    /// Audits a browser sign-in through the IdP as [`WEB_SIGNIN`] (`via = "sso"`), naming the
    /// browser session `session`; `mfa` says how the second factor was proven (`"idp"`: the ID
    /// token's amr/acr, `"ward"`: Ward's TOTP).
    pub fn sso_signed_in(
        &self,
        peer: SocketAddr,
        who: &SsoSignIn,
        user: &SignedIn,
        session: &str,
        mfa: &str,
    ) {
        let mut trail = self.ctx.audit.trail();
        trail.push(
            crate::audit::Event::new(WEB_SIGNIN, "success", self.ctx.clock.now())
                .user(user.kind.as_str(), &user.name, user.org.as_deref())
                .source(peer)
                .reason(format!(
                    "signed in through identity provider {}; web session started",
                    who.provider
                ))
                .detail("via", "sso")
                .detail("provider", who.provider.clone())
                .detail("subject", who.subject.clone())
                .detail("issuer", who.issuer.clone())
                .detail("roles", user.roles.clone())
                .detail("web_session", session.to_owned())
                .detail("mfa", mfa.to_owned()),
        );
    }

    /// Audits a refused sign-in through the IdP as [`WEB_SIGNIN`] `denied` (`via = "sso"`).
    /// `subject` and `user` are what was known when it was refused.
    pub fn sso_refused(
        &self,
        peer: SocketAddr,
        provider: &str,
        subject: Option<&str>,
        user: Option<&str>,
        why: &str,
    ) {
        let mut trail = self.ctx.audit.trail();
        let mut e = crate::audit::Event::new(WEB_SIGNIN, "denied", self.ctx.clock.now())
            .severity("warning")
            .source(peer)
            .reason(why.to_owned())
            .detail("via", "sso")
            .detail("provider", provider.to_owned());
        if let Some(s) = subject {
            e = e.detail("subject", s.to_owned());
        }
        if let Some(u) = user {
            e = e.detail("user", u.to_owned());
        }
        trail.push(e);
    }

    /// Checks Ward's TOTP `code` of Ward user `name` after the IdP vouched for `who` (a provider
    /// with `mfa = "ward"`): the user must exist, be enabled and have a TOTP secret; the code is
    /// consumed as in a password login, under the same back-off. Refusals are audited.
    pub async fn sso_totp(
        &self,
        peer: SocketAddr,
        who: &SsoSignIn,
        name: &str,
        code: &str,
    ) -> Result<(), Refusal> {
        let mut a = Attempt {
            event: WEB_SIGNIN,
            trail: self.ctx.audit.trail(),
            peer,
            user: name.to_owned(),
            now: self.ctx.clock.now(),
            past_others: false,
            details: vec![
                ("via", "sso".into()),
                ("provider", who.provider.clone().into()),
                ("subject", who.subject.clone().into()),
            ],
        };
        let user = self
            .users
            .user(name)
            .await
            .map_err(|e| a.store_down(e, "read"))?;
        let reserved = self.reserve(&mut a, true)?;
        a.past_others = reserved == ward_core::ratelimit::Reserved::PastOthers;
        let refuse = |a: &mut Attempt, why: &str, user: Option<&crate::users::User>| {
            let mut e = a.ev("denied").severity("warning").reason(why.to_owned());
            if let Some(u) = user {
                e = e.user(u.kind.as_str(), &u.name, u.org.as_deref());
            }
            a.trail.push(e);
        };
        let Some(user) = user else {
            refuse(
                &mut a,
                "Ward TOTP after the IdP: no Ward user of that name",
                None,
            );
            return Err(Refusal::Denied(format!(
                "this provider asks for Ward's own TOTP code after the identity provider, but Ward has no user {name:?} with an authenticator: ask an admin to run `ward user add {name}`"
            )));
        };
        if user.disabled {
            refuse(&mut a, "user is disabled", Some(&user));
            return Err(Refusal::Denied(format!("{name} is disabled: ask an admin")));
        }
        let Some(secret) = user
            .totp_secret
            .as_deref()
            .and_then(|s| totp::TotpSecret::from_base32(s).ok())
        else {
            refuse(
                &mut a,
                "Ward TOTP after the IdP: the user has no TOTP secret",
                Some(&user),
            );
            return Err(Refusal::Denied(format!(
                "Ward has no authenticator for {name}: ask an admin to enrol one (`ward user add`)"
            )));
        };
        let verified = match totp::verify(
            &secret,
            code.trim(),
            a.now.unix_timestamp(),
            user.totp_last_step,
        ) {
            Err(totp::TotpError::Reused) => Err(Refusal::TotpReused),
            Err(_) => Err(Refusal::Denied(
                "wrong code: type the current code from your Ward authenticator".into(),
            )),
            Ok(step) => match self.users.record_totp_step(&user.name, step).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(Refusal::TotpReused),
                Err(e) => return Err(a.store_down(e, "write")),
            },
        };
        match verified {
            Ok(()) => {
                if let Ok(mut limiter) = self.state.limiter.lock() {
                    limiter.success(name, &peer.ip().to_string(), reserved);
                }
                Ok(())
            }
            Err(r) => {
                let why = match &r {
                    Refusal::TotpReused => "TOTP code reused",
                    _ => "wrong TOTP code",
                };
                refuse(&mut a, why, Some(&user));
                Err(r)
            }
        }
    }
}
