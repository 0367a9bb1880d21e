//! Credential injection for a session (issue 14): which vaulted credential a session gets, the
//! telnet login the gateway performs before the user's bytes flow, and the HTTP injector stage.
//!
//! Policy decides: a session permitted by a rule with `inject = "ACCOUNT"` gets the device's
//! vaulted `ACCOUNT` credential. The gateway fails closed: a rule that injects into a device it
//! cannot inject into (not telnet or http), a credential the vault does not hold or cannot
//! decrypt, and a device login that fails all refuse the session, with a reason that says what to
//! do. The secret itself goes only to the device: the recording holds a `credential_injected`
//! event in its place ([`crate::device_login`]'s transcript, the pipeline's secret spans).

use tokio::io::{AsyncRead, AsyncWrite};
use ward_ca::Clock;
use ward_core::config::{Config, Protocol};
use ward_core::inject::http::HttpInjector;
use ward_core::inject::{Credential, HttpAuth, LoginProfile};
use ward_core::session::Authorized;
use ward_core::stage::Stage;
use ward_recording::Direction;

use crate::device_login::{self, TranscriptItem};
use crate::gateway::Shared;
use crate::recorder;

/// The credential a session gets, and how it is given to the device.
pub(crate) struct Injection {
    /// The vault account (for audit events).
    pub(crate) account: String,
    credential: Credential,
    how: How,
}

enum How {
    /// The gateway logs in to the telnet console with this profile before the session starts.
    Telnet(Box<LoginProfile>),
    /// Every request's `Authorization` (or configured header) is replaced.
    Http(HttpAuth),
}

/// What `config` says a session on `device` permitted by `rule` gets: `Ok(None)` when the rule
/// injects nothing, `Err(reason)` (for the client and the audit event) when it cannot be given.
pub(crate) async fn for_session(
    shared: &Shared,
    config: &Config,
    session: &Authorized,
) -> Result<Option<Injection>, String> {
    let device = session.device();
    let Some((rule, account)) = account(config, session) else {
        return Ok(None);
    };
    let id = device.id.as_str();
    let how = match device.protocol {
        Protocol::Telnet => How::Telnet(Box::new(config.inject.login_for(id))),
        Protocol::Http => How::Http(config.inject.http_auth_for(id)),
        other => {
            return Err(format!(
            "rule {rule} injects the vaulted account {account}, but device {id} speaks {other}: \
                 the gateway injects credentials into telnet and http sessions only; an admin \
                 removes `inject` from the rule or narrows its devices"
        ))
        }
    };
    let credential = crate::services::vault::credential(shared, id, account)
        .await
        .map_err(|e| format!("session refused: {e}"))?;
    Ok(Some(Injection {
        account: account.to_string(),
        credential,
        how,
    }))
}

/// The rule whose `inject` applies to `session`, and its account. A session on a rule: that
/// rule's. A session on an access grant: the first rule with `inject` that covers the principal
/// and the device (its hours aside: the grant is the time window). Break-glass: none.
fn account<'c>(config: &'c Config, session: &Authorized) -> Option<(&'c str, &'c str)> {
    let permit = session.permit();
    if permit.break_glass() {
        return None;
    }
    if permit.grant().is_none() {
        let rule = config.rules.iter().find(|r| r.name == permit.rule())?;
        let account = config.inject.account_for_rule(&rule.name)?;
        return Some((rule.name.as_str(), account));
    }
    config
        .rules
        .iter()
        .filter(|r| r.covers(session.principal(), session.device()))
        .find_map(|r| {
            let account = config.inject.account_for_rule(&r.name)?;
            Some((r.name.as_str(), account))
        })
}

impl Injection {
    /// For a telnet device: log in on `device` (plain TCP or TLS) before the user's bytes flow, recording the
    /// dialogue (without the secret) through `tap`. `Ok(leftover)`: what the device showed after
    /// the login (its prompt), to send to the client, already recorded. `Err(reason)`: refuse.
    /// Nothing to do (an empty leftover) for other devices.
    pub(crate) async fn log_in<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        device_id: &str,
        device: &mut S,
        tap: Option<recorder::Tap>,
        clock: &dyn Clock,
    ) -> Result<Vec<u8>, String> {
        let How::Telnet(profile) = &self.how else {
            return Ok(Vec::new());
        };
        let result = device_login::login(device, device_id, &self.credential, profile, clock).await;
        let (transcript, outcome) = match result {
            Ok(done) => (done.transcript, Ok(done.leftover)),
            Err(failed) => (failed.transcript, Err(failed.reason)),
        };
        if let Some(tap) = tap {
            if let Err(e) = record(&tap, transcript).await {
                return Err(format!(
                    "session refused: the device login could not be recorded ({e}), and no session runs unrecorded"
                ));
            }
        }
        outcome
    }

    /// For an HTTP device: the injector stage, last in the session's pipeline (no stage after it
    /// may rewrite its output). None for other devices.
    pub(crate) fn stages(&self, device_id: &str) -> Vec<Box<dyn Stage>> {
        match &self.how {
            How::Http(auth) => vec![Box::new(HttpInjector::new(
                device_id,
                self.credential.clone(),
                auth.clone(),
            ))],
            How::Telnet(_) => Vec::new(),
        }
    }
}

/// Record a login dialogue: the device's output, what the gateway sent that is not secret, and
/// the events standing in for the secrets.
async fn record(tap: &recorder::Tap, transcript: Vec<TranscriptItem>) -> std::io::Result<()> {
    for item in transcript {
        match item {
            TranscriptItem::Down(bytes) => tap.record(Direction::Down, &bytes).await?,
            TranscriptItem::Up(bytes) => tap.record(Direction::Up, &bytes).await?,
            TranscriptItem::Event(ev) => tap.record_event(Direction::Up, ev).await?,
        }
    }
    Ok(())
}
