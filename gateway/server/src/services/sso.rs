//! `ward login --sso`: the gateway brokers a CLI login through a browser sign-in. The CLI never
//! sees an identity provider's tokens, nor a password: it sends a CSR (`SsoStart`, on a
//! connection without a client certificate), gets a URL and a short code, and polls (`SsoPoll`)
//! while its user opens the URL in a browser, signs in to the console (SSO or password + TOTP),
//! compares the code and approves. The certificate is issued for the CSR with the browser
//! session's identity, by the same CA path, caps and `[login] cert_ttl` as `ward login`
//! ([`LoginService::issue_approved`]), and audited as `login` with `detail.via = "sso"`.
//!
//! [`CliLogins`] is the registry of pending CLI logins: the pure part (bytes, ids and `now` in,
//! decisions out; no clock, no randomness, no I/O). Each entry has a 256-bit random poll id (the
//! registry keeps only its SHA-256), an 8-letter code from an unambiguous alphabet
//! (`WDJB-MJHT`), expires [`EXPIRY`] after it started, and is used once: the poll that collects
//! the certificate (or the refusal) removes it. At most [`MAX_PENDING`] wait at once, at most
//! [`MAX_PER_SOURCE`] per source address. [`SsoCliService`] runs it against the clock, the CA
//! and the audit log.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use sha2::Digest as _;
use time::OffsetDateTime;
use ward_ca::Identity;

use super::login::{Issued, LoginService};
use super::{Context, Refusal};
use crate::audit::Event;

/// How long a CLI login waits for a browser to approve it.
pub const EXPIRY: time::Duration = time::Duration::minutes(5);
/// Most CLI logins waiting at once.
pub const MAX_PENDING: usize = 256;
/// Most CLI logins waiting at once from one source address.
pub const MAX_PER_SOURCE: usize = 8;
/// The code's letters: consonants only (no vowels, so no words; no 0/O, 1/I/L confusion).
pub const CODE_ALPHABET: &[u8; 20] = b"BCDFGHJKLMNPQRSTVWXZ";
/// Letters in a code (shown as two groups of four).
pub const CODE_LEN: usize = 8;
/// The audit event of a CLI login started (and of one refused in the browser: `login`).
pub const SSO_CLI_START: &str = "sso_cli_start";

/// What the CLI is told when its poll id names nothing.
pub const UNKNOWN: &str = "this SSO login is unknown or has expired (a login waits 5 minutes \
                           for a browser to approve it): run `ward login --sso` again";

/// A fresh poll id (256 random bits, base64url) and code, drawn from the OS's generator.
pub fn draw() -> (String, String) {
    use rand::Rng as _;
    let poll = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let mut rng = rand::rng();
    let letters: Vec<u8> = (0..CODE_LEN)
        .map(|_| {
            CODE_ALPHABET
                .get(rng.random_range(0..CODE_ALPHABET.len()))
                .copied()
                .unwrap_or(b'X')
        })
        .collect();
    (poll, format_code(&letters))
}

/// `WDJBMJHT` as `WDJB-MJHT`.
fn format_code(letters: &[u8]) -> String {
    let text = String::from_utf8_lossy(letters);
    let (a, b) = text.split_at(text.len() / 2);
    format!("{a}-{b}")
}

/// Whether `poll` looks like a poll id (43 base64url characters); anything else is unknown
/// without a lookup.
fn well_formed(poll: &str) -> bool {
    poll.len() == 43
        && poll
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn key(poll: &str) -> [u8; 32] {
    sha2::Sha256::digest(poll.as_bytes()).into()
}

/// A CLI login that waits, as the CLI and the approving page see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The poll id (as the caller gave it).
    pub poll: String,
    /// The code.
    pub user_code: String,
    /// Where the CLI connected from.
    pub source: SocketAddr,
    /// The provider the CLI asked for.
    pub provider: Option<String>,
    /// When it started.
    pub started: OffsetDateTime,
    /// When it expires unapproved.
    pub expires: OffsetDateTime,
    /// `pending`, `approved` or `refused`.
    pub state: &'static str,
}

/// What a poll finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poll {
    /// Nobody decided yet: poll again.
    Waiting(Pending),
    /// Approved: the certificate (the entry is gone now).
    Issued(Issued),
    /// Refused in the browser, or the issuance failed: why (the entry is gone now).
    Refused(String),
    /// No such login (never, expired, or already collected).
    Unknown,
}

#[derive(Debug, Clone)]
enum State {
    Pending,
    Approved { issued: Issued },
    Refused { why: String },
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved { .. } => "approved",
            State::Refused { .. } => "refused",
        }
    }
}

/// A waiting login; the map's key is its poll id's SHA-256 (the id itself is not kept).
#[derive(Debug, Clone)]
struct Entry {
    user_code: String,
    source: SocketAddr,
    provider: Option<String>,
    csr: String,
    started: OffsetDateTime,
    state: State,
}

impl Entry {
    fn expires(&self) -> OffsetDateTime {
        self.started + EXPIRY
    }

    fn view(&self, poll: &str) -> Pending {
        Pending {
            poll: poll.to_owned(),
            user_code: self.user_code.clone(),
            source: self.source,
            provider: self.provider.clone(),
            started: self.started,
            expires: self.expires(),
            state: self.state.name(),
        }
    }
}

/// The pending CLI logins (see the module's documentation). Pure: ids, codes and `now` come in.
#[derive(Debug, Default)]
pub struct CliLogins {
    entries: Mutex<HashMap<[u8; 32], Entry>>,
}

/// A new CLI login.
#[derive(Debug)]
pub struct Start<'a> {
    /// Its poll id ([`draw`]).
    pub poll: String,
    /// Its code ([`draw`]).
    pub user_code: String,
    /// Where the CLI connected from.
    pub source: SocketAddr,
    /// The provider asked for.
    pub provider: Option<String>,
    /// The CSR, already checked ([`ward_ca::check_csr`]).
    pub csr: &'a str,
}

impl CliLogins {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn locked(&self) -> Result<std::sync::MutexGuard<'_, HashMap<[u8; 32], Entry>>, Refusal> {
        self.entries.lock().map_err(|_| {
            Refusal::Unavailable("SSO login is unavailable after an internal error".into())
        })
    }

    /// Registers `start` at `now`, unless the registry or the source's share of it is full.
    pub fn start(&self, start: Start<'_>, now: OffsetDateTime) -> Result<Pending, Refusal> {
        let mut map = self.locked()?;
        map.retain(|_, e| e.expires() > now);
        let ip: IpAddr = start.source.ip();
        if map.values().filter(|e| e.source.ip() == ip).count() >= MAX_PER_SOURCE {
            return Err(Refusal::Denied(format!(
                "too many SSO logins waiting from your address (at most {MAX_PER_SOURCE}); \
                 approve or let them expire (5 minutes), then try again"
            )));
        }
        if map.len() >= MAX_PENDING {
            return Err(Refusal::Denied(
                "too many SSO logins are waiting on this gateway; try again in a few minutes"
                    .into(),
            ));
        }
        let entry = Entry {
            user_code: start.user_code,
            source: start.source,
            provider: start.provider,
            csr: start.csr.to_owned(),
            started: now,
            state: State::Pending,
        };
        let view = entry.view(&start.poll);
        map.insert(key(&start.poll), entry);
        Ok(view)
    }

    /// The login `poll` names at `now`, for the approving page (not used up).
    pub fn view(&self, poll: &str, now: OffsetDateTime) -> Option<Pending> {
        if !well_formed(poll) {
            return None;
        }
        let mut map = self.locked().ok()?;
        map.retain(|_, e| e.expires() > now);
        map.get(&key(poll)).map(|e| e.view(poll))
    }

    /// The CLI's poll: waiting, or the decision (which removes the entry: single use).
    pub fn poll(&self, poll: &str, now: OffsetDateTime) -> Poll {
        if !well_formed(poll) {
            return Poll::Unknown;
        }
        let Ok(mut map) = self.locked() else {
            return Poll::Unknown;
        };
        map.retain(|_, e| e.expires() > now);
        let k = key(poll);
        match map.get(&k).map(|e| e.state.clone()) {
            None => Poll::Unknown,
            Some(State::Pending) => map
                .get(&k)
                .map_or(Poll::Unknown, |e| Poll::Waiting(e.view(poll))),
            Some(State::Approved { issued }) => {
                map.remove(&k);
                Poll::Issued(issued)
            }
            Some(State::Refused { why }) => {
                map.remove(&k);
                Poll::Refused(why)
            }
        }
    }

    /// Decides the pending login `poll` at `now`: `issue` gets its view and CSR and returns the
    /// certificate (approved) or a refusal (which the CLI is told). Only a pending login can be
    /// decided, once; the entry stays until the CLI collects the decision or it expires.
    pub fn decide(
        &self,
        poll: &str,
        now: OffsetDateTime,
        issue: impl FnOnce(&Pending, &str) -> Result<Issued, Refusal>,
    ) -> Result<(Pending, Issued), Refusal> {
        self.settle(poll, now, |view, csr| match issue(view, csr) {
            Ok(issued) => (
                State::Approved {
                    issued: issued.clone(),
                },
                Ok(issued),
            ),
            Err(refusal) => (
                State::Refused {
                    why: format!("the certificate could not be issued: {refusal}"),
                },
                Err(refusal),
            ),
        })
    }

    /// Refuses the pending login `poll` at `now` (the code did not match): the CLI is told `why`.
    pub fn refuse(&self, poll: &str, now: OffsetDateTime, why: String) -> Result<Pending, Refusal> {
        self.settle(poll, now, |_, _| (State::Refused { why }, Ok(())))
            .map(|(view, ())| view)
    }

    /// Moves the pending login `poll` to the state `f` picks, once.
    fn settle<T>(
        &self,
        poll: &str,
        now: OffsetDateTime,
        f: impl FnOnce(&Pending, &str) -> (State, Result<T, Refusal>),
    ) -> Result<(Pending, T), Refusal> {
        let not_found = || {
            Refusal::NotFound(
                "no such SSO login: it expired (they last 5 minutes), was already used, or the \
                 link is wrong; ask for a new one with `ward login --sso`"
                    .into(),
            )
        };
        if !well_formed(poll) {
            return Err(not_found());
        }
        let mut map = self.locked()?;
        map.retain(|_, e| e.expires() > now);
        let entry = map.get_mut(&key(poll)).ok_or_else(not_found)?;
        if !matches!(entry.state, State::Pending) {
            return Err(Refusal::Denied(format!(
                "this SSO login was already {} in a browser: each one can be decided once",
                entry.state.name()
            )));
        }
        let (state, result) = f(&entry.view(poll), &entry.csr);
        entry.state = state;
        let view = entry.view(poll);
        result.map(|t| (view, t))
    }
}

/// `ward login --sso` as a service: start, poll, and the browser's approve/refuse.
#[derive(Clone)]
pub struct SsoCliService {
    ctx: Context,
    logins: Arc<CliLogins>,
    login: LoginService,
}

/// A CLI login approved: the login and the certificate's end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approved {
    /// The login (its state now `approved`).
    pub login: Pending,
    /// The certificate's not-after (Unix seconds).
    pub not_after_unix: i64,
}

impl SsoCliService {
    /// The service over the gateway's registry and login service.
    pub fn new(ctx: Context, logins: Arc<CliLogins>, login: LoginService) -> Self {
        Self { ctx, logins, login }
    }

    /// Starts a CLI login from `source` for `csr` (checked as `ward login` checks it), with
    /// `provider` asked for (one of the `[[oidc]]` names). Audited as [`SSO_CLI_START`].
    pub fn start(
        &self,
        source: SocketAddr,
        provider: Option<String>,
        csr: &str,
    ) -> Result<Pending, Refusal> {
        if let Some(p) = &provider {
            let ok = !p.is_empty()
                && p.len() <= 64
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                return Err(Refusal::Invalid(
                    "--sso-provider must be a provider's name: lowercase letters, digits and -"
                        .into(),
                ));
            }
            let config = self.ctx.live.config();
            let known: Vec<&str> = config.oidc.iter().map(|o| o.name.as_str()).collect();
            if !known.contains(&p.as_str()) {
                return Err(Refusal::Invalid(if known.is_empty() {
                    "this gateway has no identity provider ([[oidc]]): leave out --sso-provider \
                     and sign in to the console with your password and TOTP"
                        .into()
                } else {
                    format!(
                        "no identity provider {p} on this gateway: --sso-provider takes one of {}",
                        known.join(", ")
                    )
                }));
            }
        }
        ward_ca::check_csr(csr).map_err(|e| {
            Refusal::Invalid(format!("{e}: make the key and CSR with `ward login --sso`"))
        })?;
        let (poll, user_code) = draw();
        let now = self.ctx.clock.now();
        let pending = self.logins.start(
            Start {
                poll,
                user_code,
                source,
                provider,
                csr,
            },
            now,
        )?;
        let mut trail = self.ctx.audit.trail();
        let mut e = Event::new(SSO_CLI_START, "success", now)
            .source(source)
            .reason("ward login --sso waits for a browser to approve it")
            .detail("via", "sso")
            .detail("user_code", pending.user_code.clone())
            .detail("expires", pending.expires.unix_timestamp());
        if let Some(p) = &pending.provider {
            e = e.detail("provider", p.clone());
        }
        trail.push(e);
        Ok(pending)
    }

    /// The CLI's poll.
    pub fn poll(&self, poll: &str) -> Poll {
        self.logins.poll(poll, self.ctx.clock.now())
    }

    /// The login `poll` names, for the approving page.
    pub fn view(&self, poll: &str) -> Result<Pending, Refusal> {
        self.logins.view(poll, self.ctx.clock.now()).ok_or_else(|| {
            Refusal::NotFound(
                "no such SSO login: it expired (they last 5 minutes), was already used, or the \
                 link is wrong; ask for a new one with `ward login --sso`"
                    .into(),
            )
        })
    }

    /// Approves the login `poll` as `approver`, a signed-in browser session (its identity's
    /// serial names it) at `peer`: issues the certificate with that identity (audited `login`,
    /// `via = sso`). A front end refuses callers that are not browser sessions before this.
    pub fn approve(
        &self,
        poll: &str,
        approver: &Identity,
        peer: SocketAddr,
    ) -> Result<Approved, Refusal> {
        let now = self.ctx.clock.now();
        let (login, issued) = self.logins.decide(poll, now, |pending, csr| {
            self.login
                .issue_approved(pending.source, approver, peer, &pending.user_code, csr)
        })?;
        Ok(Approved {
            login,
            not_after_unix: issued.not_after_unix,
        })
    }

    /// Refuses the login `poll` as `approver` at `peer` (the code did not match what the
    /// terminal shows): the CLI is told so; audited as `login` denied, `via = sso`.
    pub fn refuse(
        &self,
        poll: &str,
        approver: &Identity,
        peer: SocketAddr,
    ) -> Result<Pending, Refusal> {
        let now = self.ctx.clock.now();
        let why = format!(
            "refused in the browser by {}: the code there did not match this terminal's",
            approver.principal()
        );
        let pending = self.logins.refuse(poll, now, why.clone())?;
        let mut trail = self.ctx.audit.trail();
        trail.push(
            Event::new("login", "denied", now)
                .severity("warning")
                .source(pending.source)
                .principal(approver)
                .reason(why)
                .detail("via", "sso")
                .detail("web_session", approver.serial.clone())
                .detail("approver_source", peer.to_string())
                .detail("user_code", pending.user_code.clone()),
        );
        Ok(pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    fn src(last: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, last], 40000))
    }

    fn start(reg: &CliLogins, source: SocketAddr, now: OffsetDateTime) -> Result<Pending, Refusal> {
        let (poll, user_code) = draw();
        reg.start(
            Start {
                poll,
                user_code,
                source,
                provider: None,
                csr: "csr",
            },
            now,
        )
    }

    fn issued() -> Issued {
        Issued {
            chain_pem: "chain".into(),
            not_after_unix: 1,
            grant: None,
        }
    }

    #[test]
    fn ids_and_codes_have_their_shape() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let (poll, code) = draw();
            assert!(well_formed(&poll), "{poll}");
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&poll)
                .unwrap();
            assert_eq!(raw.len(), 32);
            assert_eq!(code.len(), 9, "{code}");
            assert_eq!(code.as_bytes()[4], b'-', "{code}");
            assert!(
                code.bytes()
                    .filter(|b| *b != b'-')
                    .all(|b| CODE_ALPHABET.contains(&b)),
                "{code}"
            );
            assert!(seen.insert(poll));
        }
        assert_eq!(format_code(b"WDJBMJHT"), "WDJB-MJHT");
        for ambiguous in b"AEIOUY01" {
            assert!(!CODE_ALPHABET.contains(ambiguous));
        }
    }

    #[test]
    fn a_login_is_decided_once_and_collected_once() {
        let reg = CliLogins::new();
        let p = start(&reg, src(1), t0()).unwrap();
        assert_eq!(p.state, "pending");
        assert_eq!(p.expires, t0() + EXPIRY);
        let later = t0() + time::Duration::seconds(10);
        assert_eq!(reg.poll(&p.poll, later), Poll::Waiting(p.clone()));
        assert_eq!(reg.view(&p.poll, later).unwrap().user_code, p.user_code);
        let mut csr_seen = String::new();
        let (view, got) = reg
            .decide(&p.poll, later, |v, csr| {
                csr_seen = csr.to_owned();
                assert_eq!(v.user_code, p.user_code);
                Ok(issued())
            })
            .unwrap();
        assert_eq!(csr_seen, "csr");
        assert_eq!(view.poll, p.poll);
        assert_eq!(got, issued());
        // A second approval or a refusal fails; the page still sees it approved.
        let again = reg.decide(&p.poll, later, |_, _| panic!("issued twice"));
        assert!(
            matches!(&again, Err(Refusal::Denied(w)) if w.contains("already approved")),
            "{again:?}"
        );
        assert!(reg.refuse(&p.poll, later, "no".into()).is_err());
        assert_eq!(reg.view(&p.poll, later).unwrap().state, "approved");
        // The CLI collects the certificate once.
        assert_eq!(reg.poll(&p.poll, later), Poll::Issued(issued()));
        assert_eq!(reg.poll(&p.poll, later), Poll::Unknown);
        assert!(reg.view(&p.poll, later).is_none());
        assert!(matches!(
            reg.decide(&p.poll, later, |_, _| Ok(issued())),
            Err(Refusal::NotFound(_))
        ));
    }

    #[test]
    fn refused_and_failed_logins_tell_the_cli_why() {
        let reg = CliLogins::new();
        let p = start(&reg, src(1), t0()).unwrap();
        let v = reg.refuse(&p.poll, t0(), "refused by x".into()).unwrap();
        assert_eq!(v.state, "refused");
        assert!(reg.decide(&p.poll, t0(), |_, _| Ok(issued())).is_err());
        assert_eq!(
            reg.poll(&p.poll, t0()),
            Poll::Refused("refused by x".into())
        );
        assert_eq!(reg.poll(&p.poll, t0()), Poll::Unknown);

        let p = start(&reg, src(1), t0()).unwrap();
        let r = reg.decide(&p.poll, t0(), |_, _| {
            Err(Refusal::Unavailable("no issuing CA key".into()))
        });
        assert_eq!(r, Err(Refusal::Unavailable("no issuing CA key".into())));
        match reg.poll(&p.poll, t0()) {
            Poll::Refused(why) => assert!(why.contains("no issuing CA key"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn logins_expire_after_five_minutes() {
        let reg = CliLogins::new();
        let p = start(&reg, src(1), t0()).unwrap();
        let just_before = t0() + EXPIRY - time::Duration::seconds(1);
        assert!(matches!(reg.poll(&p.poll, just_before), Poll::Waiting(_)));
        let at = t0() + EXPIRY;
        assert!(reg.view(&p.poll, at).is_none());
        assert!(matches!(
            reg.decide(&p.poll, at, |_, _| Ok(issued())),
            Err(Refusal::NotFound(_))
        ));
        assert_eq!(reg.poll(&p.poll, at), Poll::Unknown);
        // Unknown and malformed ids are unknown.
        assert_eq!(reg.poll(&draw().0, t0()), Poll::Unknown);
        assert_eq!(reg.poll("../../etc", t0()), Poll::Unknown);
        assert_eq!(reg.poll("", t0()), Poll::Unknown);
    }

    #[test]
    fn the_registry_is_bounded_per_source_and_in_all() {
        let reg = CliLogins::new();
        for _ in 0..MAX_PER_SOURCE {
            start(&reg, src(1), t0()).unwrap();
        }
        let refused = start(&reg, src(1), t0());
        assert!(
            matches!(&refused, Err(Refusal::Denied(w)) if w.contains("your address")),
            "{refused:?}"
        );
        // Another port of the same address is the same source.
        let mut other_port = src(1);
        other_port.set_port(1);
        assert!(start(&reg, other_port, t0()).is_err());
        // Other sources fill the rest, then the registry is full for everybody.
        let mut n = MAX_PER_SOURCE;
        'fill: for a in 2..=255u8 {
            for _ in 0..MAX_PER_SOURCE {
                if n == MAX_PENDING {
                    break 'fill;
                }
                start(&reg, src(a), t0()).unwrap();
                n += 1;
            }
        }
        let full = start(&reg, SocketAddr::from(([10, 1, 0, 1], 1)), t0());
        assert!(
            matches!(&full, Err(Refusal::Denied(w)) if w.contains("on this gateway")),
            "{full:?}"
        );
        // Once they expire there is room again.
        assert!(start(&reg, src(1), t0() + EXPIRY).is_ok());
    }
}
