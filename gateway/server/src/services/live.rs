//! Live sessions: the list security staff watch, and ending one of them (the kill switch for a
//! single session; locks, which end every session of a principal, device or org and refuse new
//! ones, are [`super::locks`]).
//!
//! Ending a session is a policy change like a lock: the gateway publishes it through the watched
//! policy snapshot ([`crate::policy_watch`]) and the session ends itself with
//! [`EndReason::Terminated`], whose text its client is told, its recording sealed with and its
//! `session_close` audited with.

use std::net::SocketAddr;
use std::sync::Arc;

use time::OffsetDateTime;
use ward_core::{EndReason, Escaped, Principal};

use super::{Caller, Context, Refusal, Role};

/// One live session as the live list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveSession {
    /// The session id (its recording's name, its audit events' `session`).
    pub id: String,
    /// Who is connected.
    pub principal: Principal,
    /// The device's id.
    pub device: String,
    /// The device's protocol.
    pub protocol: String,
    /// The client's address.
    pub source: SocketAddr,
    /// When the session was asked for.
    pub since: OffsetDateTime,
    /// Bytes from the client to the device so far.
    pub bytes_up: u64,
    /// Bytes from the device to the client so far.
    pub bytes_down: u64,
    /// A break-glass session.
    pub break_glass: bool,
    /// The rule (or grant) that permits it.
    pub rule: String,
}

impl LiveSession {
    /// The session as the web console's `GET /api/v1/live` and `ward live` show it: `id`,
    /// `principal` (`vendor acme/jdoe`), `name` (`acme/jdoe`, what a lock takes), `kind`, `org`,
    /// `serial`, `device`, `protocol`, `source`, `since` (RFC 3339 UTC) and `since_unix`,
    /// `bytes_up`, `bytes_down`, `break_glass`, `rule`.
    pub fn json(&self) -> serde_json::Value {
        let since = self
            .since
            .to_offset(time::UtcOffset::UTC)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| self.since.unix_timestamp().to_string());
        serde_json::json!({
            "id": self.id,
            "principal": self.principal.to_string(),
            "name": self.principal.qualified_name(),
            "kind": self.principal.kind.as_str(),
            "org": self.principal.org,
            "serial": self.principal.serial,
            "device": self.device,
            "protocol": self.protocol,
            "source": self.source.to_string(),
            "since": since,
            "since_unix": self.since.unix_timestamp(),
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "break_glass": self.break_glass,
            "rule": self.rule,
        })
    }
}

/// The running gateway's live sessions, as the service reads and ends them.
pub trait LiveSessions: Send + Sync {
    /// The live sessions, oldest first.
    fn list(&self) -> Vec<LiveSession>;
    /// End the live session `id` with `end`; the session as it was, or `None` when no live
    /// session has that id.
    fn terminate(&self, id: &str, end: EndReason) -> Option<LiveSession>;
}

/// Live sessions (security and admin).
#[derive(Clone)]
pub struct LiveService {
    ctx: Context,
    sessions: Arc<dyn LiveSessions>,
}

impl LiveService {
    /// A service over the gateway's `sessions`.
    pub fn new(ctx: Context, sessions: Arc<dyn LiveSessions>) -> Self {
        Self { ctx, sessions }
    }

    /// The live sessions, oldest first (security and admin).
    pub fn list(&self, caller: Caller<'_>) -> Result<Vec<LiveSession>, Refusal> {
        Role::Security.require(caller.principal, "list live sessions")?;
        Ok(self.sessions.list())
    }

    /// Ends the live session `id` (security and admin); a reason is required and is what the
    /// session's user is told. Audited as `session_terminated`.
    pub fn end(&self, caller: Caller<'_>, id: &str, reason: &str) -> Result<LiveSession, Refusal> {
        let now = self.ctx.clock.now();
        let mut trail = self.ctx.audit.trail();
        let shown_id = ward_core::escape::escape_prefix(id, 64);
        if let Err(r) = Role::Security.require(caller.principal, "end a live session") {
            trail.push(
                caller
                    .event("session_terminated", "denied", now)
                    .session(shown_id)
                    .reason("only security and admin identities may end a live session"),
            );
            return Err(r);
        }
        let reason = reason.trim();
        if reason.is_empty() || reason.chars().count() > ward_core::access::MAX_TEXT {
            return Err(Refusal::Invalid(format!(
                "a reason is required (1 to {} characters): the user whose session ends is told it, and the audit log keeps it",
                ward_core::access::MAX_TEXT
            )));
        }
        let end = EndReason::Terminated {
            by: caller.identity.principal(),
            reason: reason.to_owned(),
        };
        let Some(ended) = self.sessions.terminate(id, end) else {
            trail.push(
                caller
                    .event("session_terminated", "failure", now)
                    .session(shown_id.clone())
                    .reason("no live session with that id"),
            );
            return Err(Refusal::NotFound(format!(
                "no live session {shown_id}: it has ended already, or the id is wrong (the live list shows the sessions in progress)"
            )));
        };
        trail.push(
            caller
                .event("session_terminated", "success", now)
                .severity("warning")
                .session(ended.id.clone())
                .device(ended.device.clone())
                .reason(reason.to_owned())
                .detail("target", ended.principal.to_string())
                .detail("serial", ended.principal.serial.clone()),
        );
        tracing::info!(session_id = %ended.id, by = %Escaped(&caller.identity.principal()),
            "live session ended by security staff");
        Ok(ended)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use ward_ca::{Clock, FixedClock, Identity, Kind};

    use super::*;
    use crate::audit::AuditLog;
    use crate::services::{principal_of, Audit};

    /// A stand-in for the gateway: one live session, and what it was told to end.
    struct Fake {
        live: LiveSession,
        ended: Mutex<Vec<(String, EndReason)>>,
    }

    impl LiveSessions for Fake {
        fn list(&self) -> Vec<LiveSession> {
            vec![self.live.clone()]
        }
        fn terminate(&self, id: &str, end: EndReason) -> Option<LiveSession> {
            if id != self.live.id {
                return None;
            }
            self.ended.lock().unwrap().push((id.to_owned(), end));
            Some(self.live.clone())
        }
    }

    fn identity(kind: Kind, name: &str, org: Option<&str>, now: OffsetDateTime) -> Identity {
        Identity {
            trust_domain: "ward.test".into(),
            kind,
            name: name.into(),
            org: org.map(Into::into),
            roles: vec![],
            serial: format!("{name}01"),
            not_before: now,
            not_after: now + time::Duration::days(1),
            uri: format!("spiffe://ward.test/{kind}/{name}"),
        }
    }

    /// Security staff end a session with a reason (audited, the reason carried in the end);
    /// a vendor may not, a blank reason and an unknown id are refused and nothing ends.
    #[tokio::test]
    async fn end_needs_security_a_reason_and_a_live_id() {
        let dir = tempfile::tempdir().unwrap();
        let clock = FixedClock::new(OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000));
        let now = clock.now();
        let (signer, _) = ward_recording::Signer::generate().unwrap();
        let clock_dyn: Arc<dyn Clock> = Arc::new(clock.clone());
        let (log, _writer) = AuditLog::open(dir.path(), Arc::new(signer), clock_dyn).unwrap();
        let vendor = identity(Kind::Vendor, "jdoe", Some("acme"), now);
        let live = LiveSession {
            id: "00aa".into(),
            principal: principal_of(&vendor),
            device: "pump-12".into(),
            protocol: "raw".into(),
            source: "127.0.0.1:4000".parse().unwrap(),
            since: now,
            bytes_up: 1,
            bytes_down: 2,
            break_glass: false,
            rule: "acme".into(),
        };
        let fake = Arc::new(Fake {
            live,
            ended: Mutex::new(Vec::new()),
        });
        let ctx = Context {
            clock: Arc::new(clock.clone()),
            audit: Audit::new(log.clone()),
            live: Arc::new(NoLive),
        };
        let svc = LiveService::new(ctx, fake.clone());
        let sam = identity(Kind::Security, "sam", None, now);
        let (p_sam, p_vendor) = (principal_of(&sam), principal_of(&vendor));
        let peer = "127.0.0.1:9".parse().unwrap();
        let staff = Caller {
            identity: &sam,
            principal: &p_sam,
            peer,
        };
        let other = Caller {
            identity: &vendor,
            principal: &p_vendor,
            peer,
        };
        assert!(matches!(svc.list(other), Err(Refusal::Forbidden(_))));
        assert!(matches!(
            svc.end(other, "00aa", "x"),
            Err(Refusal::Forbidden(_))
        ));
        assert!(matches!(
            svc.end(staff, "00aa", "  "),
            Err(Refusal::Invalid(_))
        ));
        assert!(matches!(
            svc.end(staff, "ffff", "why"),
            Err(Refusal::NotFound(_))
        ));
        assert!(fake.ended.lock().unwrap().is_empty());
        assert_eq!(svc.list(staff).unwrap().len(), 1);
        let ended = svc.end(staff, "00aa", " incident 4 ").unwrap();
        assert_eq!(ended.id, "00aa");
        let told = fake.ended.lock().unwrap().clone();
        let want = EndReason::Terminated {
            by: "security sam".into(),
            reason: "incident 4".into(),
        };
        assert_eq!(told, vec![("00aa".to_string(), want)]);
        log.flush().await;
        let text = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
        let events: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|e: &serde_json::Value| e["event"] == "session_terminated")
            .collect();
        let outcomes: Vec<&str> = events
            .iter()
            .map(|e| e["outcome"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(
            outcomes,
            vec!["denied", "failure", "success"],
            "{events:#?}"
        );
        let ok = &events[2];
        assert_eq!(ok["session_id"], "00aa");
        assert_eq!(ok["reason"], "incident 4");
        assert_eq!(ok["device"], "pump-12");
    }

    /// The services' view of a gateway this test does not need.
    struct NoLive;

    impl crate::services::LiveState for NoLive {
        fn config(&self) -> Arc<ward_core::config::Config> {
            unreachable!("not read by the live service")
        }
        fn grants(&self) -> Arc<[ward_core::access::Grant]> {
            Arc::from(Vec::new())
        }
        fn locks(&self) -> Vec<ward_core::policy::Lock> {
            Vec::new()
        }
        fn live_principals(&self) -> Vec<Principal> {
            Vec::new()
        }
        fn access_changed(&self) {}
        fn locked(&self, _: &ward_core::policy::Lock) -> usize {
            0
        }
        fn unlocked(&self, _: &ward_core::frame::LockTarget) {}
    }
}
