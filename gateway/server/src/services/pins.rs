//! Certificate pins of devices that speak TLS themselves (`ward devices pin`; security and admin
//! identities only).
//!
//! The gateway itself connects to the device to learn its certificate, so the fingerprint shown
//! is the one sessions will see (not one fetched from elsewhere on the network). Confirming stores
//! the pin only when the device completes a handshake with that certificate now (it holds the
//! key). Confirmations, refusals and removals are audited as `device_pinned` with the old and new
//! fingerprints.

use std::sync::Arc;
use std::time::Duration;

use ward_core::config::{CertPin, Device};
use ward_store::pins::{PinStore, StoredPin};

use super::{Caller, Context, Refusal, Role};
use crate::audit::Event;
use crate::device_tls::{self, CertSummary, Presented, TlsRefusal};

/// Where a device's effective pin comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PinSource {
    /// `tls = { pin = "…" }` in the config (wins over the store).
    Config,
    /// Confirmed with `ward devices pin`.
    Store,
    /// Not pinned: sessions are refused.
    None,
}

impl PinSource {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            PinSource::Config => "config",
            PinSource::Store => "store",
            PinSource::None => "none",
        }
    }
}

/// What a pin request found or did.
#[derive(Debug, Clone)]
pub(crate) struct PinReport {
    /// Device id.
    pub(crate) device: String,
    /// What the device presented (not contacted for a removal).
    pub(crate) presented: Option<(Presented, CertSummary)>,
    /// The pin sessions check against now.
    pub(crate) pinned: Option<CertPin>,
    /// Where it comes from.
    pub(crate) source: PinSource,
    /// What was done and what to do next.
    pub(crate) message: String,
}

/// What to do.
#[derive(Debug, Clone)]
pub(crate) enum PinAction {
    /// Connect and show the certificate.
    Show,
    /// Pin this fingerprint if the device presents it now.
    Confirm(String),
    /// Drop the stored pin.
    Remove,
}

/// The pin operations.
#[derive(Clone)]
pub(crate) struct PinService {
    ctx: Context,
    pins: Arc<dyn PinStore>,
    timeout: Duration,
}

fn store_failed(e: impl std::fmt::Display) -> Refusal {
    Refusal::Unavailable(format!("the pin store failed: {e}; nothing was changed"))
}

impl PinService {
    /// Over `pins`; devices are dialled within `timeout` (connect and handshake).
    pub(crate) fn new(ctx: Context, pins: Arc<dyn PinStore>, timeout: Duration) -> Self {
        Self { ctx, pins, timeout }
    }

    fn event(&self, caller: Caller<'_>, outcome: &str, device: &str) -> Event {
        caller
            .event("device_pinned", outcome, self.ctx.clock.now())
            .device(device)
    }

    /// Shows, confirms or removes `device`'s pin.
    pub(crate) async fn pin(
        &self,
        caller: Caller<'_>,
        device: &str,
        action: PinAction,
    ) -> Result<PinReport, Refusal> {
        let mut trail = self.ctx.audit.trail();
        let shown = ward_core::escape(device);
        let audited = !matches!(action, PinAction::Show);
        if let Err(r) = Role::Security.require(caller.principal, "pin device certificates") {
            if audited {
                trail.push(self.event(caller, "denied", &shown).reason(r.to_string()));
            }
            return Err(r);
        }
        let config = self.ctx.live.config();
        let Some(dev) = config.device(device) else {
            return Err(Refusal::NotFound(format!(
                "no device {shown} in the gateway's config (`ward devices` lists them)"
            )));
        };
        let Some(tls) = &dev.tls else {
            return Err(Refusal::Invalid(format!(
                "device {shown} does not speak TLS (its config has no `tls`): there is nothing to pin"
            )));
        };
        let stored = self.stored(device).await?;
        let (pinned, source) = match (tls.pin, stored) {
            (Some(p), _) => (Some(p), PinSource::Config),
            (None, Some(p)) => (Some(p), PinSource::Store),
            (None, None) => (None, PinSource::None),
        };
        match action {
            PinAction::Remove => {
                let old = self
                    .spawn_store(device, |s, d| s.remove_device_pin(&d))
                    .await?;
                let old = old.map(|o| o.pin);
                let ev = self
                    .event(caller, "success", &shown)
                    .detail("change", "removed")
                    .detail("old", old.clone().unwrap_or_else(|| "none".into()));
                trail.push(ev.reason("stored pin removed"));
                let (pinned, source) = match tls.pin {
                    Some(p) => (Some(p), PinSource::Config),
                    None => (None, PinSource::None),
                };
                let message = match (&old, source) {
                    (None, _) => format!("device {shown} had no stored pin"),
                    (Some(o), PinSource::Config) => format!(
                        "removed the stored pin {o} of device {shown}; the config's pin still applies"
                    ),
                    (Some(o), _) => format!(
                        "removed the stored pin {o} of device {shown}: its sessions are refused until it is pinned again"
                    ),
                };
                Ok(PinReport {
                    device: device.to_owned(),
                    presented: None,
                    pinned,
                    source,
                    message,
                })
            }
            PinAction::Show => {
                let presented = self.probe(dev, pinned).await?;
                let summary = device_tls::describe(&presented.der);
                let message = if pinned == Some(presented.pin) {
                    format!(
                        "device {shown} presents its pinned certificate {} (pin from the {}); nothing to do",
                        presented.pin,
                        source.as_str()
                    )
                } else {
                    let now = match pinned {
                        Some(p) => format!(
                            "it is pinned to {p} (from the {}), so its sessions are refused",
                            source.as_str()
                        ),
                        None => "it is not pinned, so its sessions are refused".to_string(),
                    };
                    format!(
                        "device {shown} presents the certificate {}; {now}. Check this fingerprint against the device itself (its settings screen, or its vendor), then confirm it: ward devices pin {shown} --confirm {}",
                        presented.pin, presented.pin
                    )
                };
                Ok(PinReport {
                    device: device.to_owned(),
                    presented: Some((presented, summary)),
                    pinned,
                    source,
                    message,
                })
            }
            PinAction::Confirm(text) => {
                let ev = |outcome: &str| self.event(caller, outcome, &shown);
                let want: CertPin = match text.parse() {
                    Ok(p) => p,
                    Err(e) => {
                        let r = Refusal::Invalid(e.to_string());
                        trail.push(ev("failure").reason(r.to_string()));
                        return Err(r);
                    }
                };
                if let (Some(p), PinSource::Config) = (pinned, source) {
                    if p != want {
                        let r = Refusal::Invalid(format!(
                            "device {shown} is pinned to {p} in the gateway's config, which wins over a stored pin: an admin changes `tls.pin` there"
                        ));
                        trail.push(ev("failure").reason(r.to_string()));
                        return Err(r);
                    }
                }
                let presented = match self.probe(dev, Some(want)).await {
                    Ok(p) if p.pin == want => p,
                    Ok(p) => {
                        let r = Refusal::Invalid(format!(
                            "device {shown} presents {}, not the {want} to confirm; nothing was pinned (run `ward devices pin {shown}` and check the fingerprint again)",
                            p.pin
                        ));
                        trail.push(
                            ev("failure")
                                .detail("presented", p.pin.to_string())
                                .detail("new", want.to_string())
                                .reason(r.to_string()),
                        );
                        return Err(r);
                    }
                    Err(r) => {
                        trail.push(ev("failure").reason(r.to_string()));
                        return Err(r);
                    }
                };
                let row = StoredPin {
                    device: device.to_owned(),
                    pin: want.to_string(),
                    set_by: caller.principal.to_string(),
                    set_unix: self.ctx.clock.now().unix_timestamp(),
                };
                let old = self
                    .spawn_store(device, move |s, _| s.set_device_pin(&row))
                    .await?
                    .map(|o| o.pin);
                let summary = device_tls::describe(&presented.der);
                trail.push(
                    ev("success")
                        .severity("medium")
                        .detail("change", if old.is_some() { "replaced" } else { "created" })
                        .detail("old", old.clone().unwrap_or_else(|| "none".into()))
                        .detail("new", want.to_string())
                        .detail("subject", summary.subject.clone())
                        .detail("not_after", summary.not_after.clone())
                        .reason(format!("certificate of device {shown} pinned")),
                );
                let source = if source == PinSource::Config {
                    PinSource::Config
                } else {
                    PinSource::Store
                };
                let message = match old {
                    Some(o) if o != want.to_string() => format!(
                        "device {shown} re-pinned: {want} replaces {o}; sessions accept only the new certificate"
                    ),
                    _ => format!(
                        "device {shown} pinned to {want}; sessions accept only this certificate"
                    ),
                };
                Ok(PinReport {
                    device: device.to_owned(),
                    presented: Some((presented, summary)),
                    pinned: Some(want),
                    source,
                    message,
                })
            }
        }
    }

    /// Connect to the device and learn its certificate; with `pinned` equal to what it presents,
    /// the handshake completes (proof it holds the key).
    async fn probe(&self, dev: &Device, pinned: Option<CertPin>) -> Result<Presented, Refusal> {
        let start = tokio::time::Instant::now();
        let tcp = crate::session::connect(dev, self.timeout)
            .await
            .map_err(|(_, msg)| Refusal::Unavailable(msg))?;
        let left = self.timeout.saturating_sub(start.elapsed());
        match device_tls::handshake(dev, tcp, pinned, left).await {
            Ok((mut tls, presented)) => {
                use tokio::io::AsyncWriteExt;
                let _ = tokio::time::timeout(Duration::from_secs(1), tls.shutdown()).await;
                Ok(presented)
            }
            Err(TlsRefusal::Unpinned { presented } | TlsRefusal::Changed { presented, .. }) => {
                Ok(presented)
            }
            Err(e @ TlsRefusal::Failed(_)) => Err(Refusal::Unavailable(e.reason(dev.id.as_str()))),
        }
    }

    async fn stored(&self, device: &str) -> Result<Option<CertPin>, Refusal> {
        device_tls::stored_pin(&self.pins, device)
            .await
            .map_err(Refusal::Unavailable)
    }

    async fn spawn_store<T: Send + 'static>(
        &self,
        device: &str,
        f: impl FnOnce(&dyn PinStore, String) -> Result<T, ward_store::store::StoreError>
            + Send
            + 'static,
    ) -> Result<T, Refusal> {
        let store = Arc::clone(&self.pins);
        let device = device.to_owned();
        tokio::task::spawn_blocking(move || f(&*store, device))
            .await
            .map_err(store_failed)?
            .map_err(store_failed)
    }
}
