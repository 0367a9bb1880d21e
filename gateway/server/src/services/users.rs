//! User administration: create, disable, list (admins only at the gateway; the host-side command
//! uses [`create_user`] directly on the store).

use std::sync::Arc;

use time::OffsetDateTime;
use ward_core::{password, totp, PrincipalKind};

use super::principal::ca_kind;
use super::{Caller, Context, Refusal, Role};
use crate::store_async::AsyncUserStore;
use crate::users::{User, UserStore};

/// A user to create.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// The user name (the certificate's name).
    pub name: String,
    /// `vendor`, `clinician`, `security` or `admin`.
    pub kind: String,
    /// The organisation (vendors).
    pub org: Option<String>,
    /// Roles carried in the certificate.
    pub roles: Vec<String>,
    /// The initial password; generated when absent.
    pub password: Option<String>,
    /// The first login must set a new password (an initial password is known to whoever
    /// created the user; IEC 62443-3-3 SR 1.5, changing initial authenticators).
    pub must_change: bool,
}

impl NewUser {
    /// A user with a generated password that must change it at first login.
    pub fn new(name: impl Into<String>, kind: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            kind: kind.into(),
            org: None,
            roles: Vec::new(),
            password: None,
            must_change: true,
        }
    }
}

/// What [`create_user`] hands back once.
pub struct CreatedUser {
    /// The initial password.
    pub password: String,
    /// The TOTP provisioning URI, when the user has TOTP.
    pub totp_uri: Option<String>,
}

/// User administration.
#[derive(Clone)]
pub struct UserService {
    ctx: Context,
    users: Arc<dyn AsyncUserStore>,
}

impl UserService {
    /// A service over `users`.
    pub fn new(ctx: Context, users: Arc<dyn AsyncUserStore>) -> Self {
        Self { ctx, users }
    }

    /// Creates a user (admins only; the initial password must be changed at first login).
    pub async fn add(&self, caller: Caller<'_>, new: NewUser) -> Result<CreatedUser, Refusal> {
        let now = self.ctx.clock.now();
        let login = self.ctx.live.config().login.clone();
        let (name, kind) = (new.name.clone(), new.kind.clone());
        let mut trail = self.ctx.audit.trail();
        let ev = |outcome: &str| {
            caller
                .event("user_add", outcome, now)
                .detail("user", name.clone())
        };
        if let Err(r) = Role::Admin.require(caller.principal, "add users") {
            trail.push(ev("denied").reason("not an admin"));
            return Err(r);
        }
        // argon2id: off the async workers.
        let prepared = tokio::task::spawn_blocking(move || prepare_user(&login, new, now))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("could not prepare the user")));
        let added = match prepared {
            Ok((user, created)) => match self.users.add_user(&user).await {
                Ok(()) => Ok(created),
                Err(e) => Err(anyhow::Error::from(e)),
            },
            Err(e) => Err(e),
        };
        match added {
            Ok(created) => {
                trail.push(
                    ev("success")
                        .detail("kind", kind)
                        .detail("totp", created.totp_uri.is_some()),
                );
                Ok(created)
            }
            Err(e) => {
                trail.push(ev("failure").reason(format!("{e:#}")));
                Err(Refusal::Invalid(format!("{e:#}")))
            }
        }
    }

    /// Disables a user (admins only); their live sessions end.
    pub async fn disable(&self, caller: Caller<'_>, name: &str) -> Result<(), Refusal> {
        let now = self.ctx.clock.now();
        let mut trail = self.ctx.audit.trail();
        let ev = |outcome: &str| {
            caller
                .event("user_disable", outcome, now)
                .detail("user", name.to_owned())
        };
        if let Err(r) = Role::Admin.require(caller.principal, "disable users") {
            trail.push(ev("denied").reason("not an admin"));
            return Err(r);
        }
        match self.users.disable_user(name, now).await {
            Ok(true) => {}
            Ok(false) => return Err(Refusal::NotFound(format!("no user {name}"))),
            Err(e) => return Err(Refusal::Unavailable(format!("store error: {e}"))),
        }
        self.ctx.live.access_changed();
        trail.push(ev("success").severity("warning"));
        Ok(())
    }

    /// Every user (admins only).
    pub async fn list(&self, caller: Caller<'_>) -> Result<Vec<User>, Refusal> {
        Role::Admin.require(caller.principal, "list users")?;
        self.users
            .list_users()
            .await
            .map_err(|e| Refusal::Unavailable(format!("store error: {e}")))
    }
}

/// Creates a user with a generated (or given) password and, where MFA applies, a TOTP secret,
/// in a blocking store (the host-side command, quickstart). The gateway's [`UserService::add`]
/// does the same through the async store.
pub fn create_user(
    db: &dyn UserStore,
    login: &ward_core::config::LoginConfig,
    new: NewUser,
    now: OffsetDateTime,
) -> anyhow::Result<CreatedUser> {
    let (user, created) = prepare_user(login, new, now)?;
    db.add_user(&user)?;
    Ok(created)
}

/// The user record to store (its password hashed, its TOTP secret drawn) and what to hand back
/// once. Checks the kind, the CA's name rules and the password's strength.
fn prepare_user(
    login: &ward_core::config::LoginConfig,
    new: NewUser,
    now: OffsetDateTime,
) -> anyhow::Result<(User, CreatedUser)> {
    let NewUser {
        name,
        kind,
        org,
        roles,
        password: password_given,
        must_change,
    } = new;
    let name = name.as_str();
    let pkind: PrincipalKind = kind
        .parse()
        .map_err(|_| anyhow::anyhow!("kind must be vendor, clinician, security or admin"))?;
    let ca_kind = Some(ca_kind(pkind))
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
    Ok((user, CreatedUser { password, totp_uri }))
}
