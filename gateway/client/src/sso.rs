//! `ward login --sso`: a certificate approved in a browser. The client makes a key and a CSR,
//! sends `SsoStart` on a connection without a certificate, shows the URL and code the gateway
//! answers, and polls (`SsoPoll`, a fresh connection each time: the gateway answers one request
//! per connection without a certificate) every [`POLL_EVERY`] until the login is approved
//! (`Issued`), refused or expired (`Denied`), or the wait is over. The client never sees the
//! identity provider's tokens: the gateway is the OpenID client and issues the certificate.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::bail;
use ward_ca::Clock as _;
use ward_core::frame::{Request, Response, SsoPending, SsoStart};

use crate::targets::Candidate;
use crate::{key_and_csr, unexpected, Client, LoggedIn, Target};

/// How often the client asks whether the login was approved.
pub const POLL_EVERY: Duration = Duration::from_secs(2);
/// Polls in a row that may fail to reach the gateway before the client gives up.
const POLL_FAILURES: u32 = 3;

/// What the user is shown while the client waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsoPrompt {
    /// The page to open (the console's `#/sso/cli/<poll>`).
    pub url: String,
    /// The code the page shows too.
    pub user_code: String,
    /// When the login expires unapproved (Unix seconds).
    pub expires_unix: i64,
}

/// `url` with an unspecified host (`0.0.0.0`, `[::]`: the console listens on every address)
/// replaced by `host`, the name this client reached the gateway by.
pub fn console_url(url: &str, host: &str) -> String {
    for unspecified in ["https://0.0.0.0:", "https://[::]:"] {
        if let Some(rest) = url.strip_prefix(unspecified) {
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host.to_owned()
            };
            return format!("https://{host}:{rest}");
        }
    }
    url.to_owned()
}

impl Client {
    /// This client's gateways, trust and transport, without its connection: the next request
    /// opens a new one. With `only`, just that gateway (an SSO login in progress lives on the
    /// gateway that started it, so its polls go there).
    fn fresh(&self, only: Option<&Candidate>) -> Client {
        let targets = self
            .targets
            .iter()
            .filter(|t| match only {
                Some(o) => *o == t.at,
                None => true,
            })
            .map(|t| Target {
                at: t.at.clone(),
                fell_back: AtomicBool::new(t.fell_back.load(Ordering::Relaxed)),
                down_since: std::sync::Mutex::new(None),
            })
            .collect();
        Client {
            tls: self.tls.clone(),
            targets,
            unresolved: match only {
                Some(_) => Vec::new(),
                None => self.unresolved.clone(),
            },
            transport: self.transport,
            current: AtomicUsize::new(match only {
                Some(_) => 0,
                None => self.current.load(Ordering::Relaxed),
            }),
            quic: tokio::sync::Mutex::new(None),
            identity: None,
            local: self.local,
        }
    }

    /// One request on a connection of its own (to `only`, or the first gateway that answers);
    /// the answer and the gateway that gave it.
    async fn request_alone(
        &self,
        req: &Request,
        only: Option<&Candidate>,
    ) -> anyhow::Result<(Response, Option<Candidate>)> {
        let alone = self.fresh(only);
        let answer = alone.request(req).await?;
        let by = alone
            .targets
            .get(alone.current.load(Ordering::Relaxed))
            .map(|t| t.at.clone());
        Ok((answer, by))
    }

    /// Logs in through a browser: starts an SSO login (for `provider`, if given), calls `show`
    /// with the URL and code, and polls until it is approved (the certificate for a key made
    /// here), refused or expired, or `wait` has passed (at most the login's own expiry).
    pub async fn login_sso(
        &self,
        provider: Option<String>,
        wait: Duration,
        show: impl FnOnce(&SsoPrompt),
    ) -> anyhow::Result<LoggedIn> {
        let (key_pem, csr) = key_and_csr("ward login --sso")?;
        let start = Request::SsoStart(SsoStart { provider, csr });
        let (answer, by) = self.request_alone(&start, None).await?;
        let pending = match answer {
            Response::SsoPending(p) => p,
            Response::Denied { reason } => bail!("{reason}"),
            other => return Err(unexpected(other).into()),
        };
        let SsoPending {
            url,
            user_code,
            poll,
            expires_unix,
        } = pending;
        let prompt = SsoPrompt {
            url: console_url(&url, by.as_ref().map_or("", |c| c.host.as_str())),
            user_code,
            expires_unix,
        };
        show(&prompt);
        // The wait is bounded by the login's expiry, as this computer's clock sees it (a clock
        // far off: the gateway's 5 minutes).
        let now = ward_ca::SystemClock.now().unix_timestamp();
        let left = u64::try_from(expires_unix.saturating_sub(now))
            .ok()
            .filter(|s| (1..=600).contains(s))
            .map_or(Duration::from_secs(300), Duration::from_secs);
        let bounded = wait.min(left + POLL_EVERY);
        let deadline = tokio::time::Instant::now() + bounded;
        let ask = Request::SsoPoll { poll };
        let mut failures = 0;
        loop {
            let next = tokio::time::Instant::now() + POLL_EVERY;
            if next > deadline {
                tokio::time::sleep_until(deadline).await;
                let expiry = time::OffsetDateTime::from_unix_timestamp(expires_unix)
                    .ok()
                    .and_then(|t| {
                        t.format(&time::format_description::well_known::Rfc3339)
                            .ok()
                    })
                    .unwrap_or_else(|| "its expiry".into());
                if bounded < left {
                    bail!(
                        "nobody approved this login in the browser within {}s (--wait); it stays \
                         open on the gateway until {expiry}: run `ward login --sso` again to wait \
                         longer",
                        bounded.as_secs()
                    );
                }
                bail!(
                    "nobody approved this login in the browser before it expired ({expiry}): run \
                     `ward login --sso` again, open the URL it prints and approve the code"
                );
            }
            tokio::time::sleep_until(next).await;
            match self
                .request_alone(&ask, by.as_ref())
                .await
                .map(|(answer, _)| answer)
            {
                Ok(Response::SsoPending(_)) => failures = 0,
                Ok(Response::Issued {
                    chain_pem,
                    not_after_unix,
                    grant,
                }) => {
                    return Ok(LoggedIn {
                        chain_pem,
                        key_pem: ward_ca::Secret::new(key_pem),
                        not_after_unix,
                        grant,
                    })
                }
                Ok(Response::Denied { reason }) => bail!("{reason}"),
                Ok(other) => return Err(unexpected(other).into()),
                Err(e) => {
                    failures += 1;
                    if failures >= POLL_FAILURES {
                        return Err(e.context("asking the gateway whether the login was approved"));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_console_host_becomes_the_gateways_name() {
        let poll = "/#/sso/cli/abc";
        assert_eq!(
            console_url(&format!("https://0.0.0.0:8443{poll}"), "ward.hospital.org"),
            format!("https://ward.hospital.org:8443{poll}")
        );
        assert_eq!(
            console_url(&format!("https://[::]:8443{poll}"), "fd00::1"),
            format!("https://[fd00::1]:8443{poll}")
        );
        let fixed = format!("https://10.0.0.5:8443{poll}");
        assert_eq!(console_url(&fixed, "ward.hospital.org"), fixed);
    }
}
