//! What can go wrong between `ward` and a gateway, typed: each variant is decided from a typed
//! value (a QUIC close code or transport error, a TLS alert, rustls's own certificate verdict, a
//! timeout, the gateway's typed answer), never from error text, and prints as one sentence that
//! says what to do. The TCP fallback is decided on the variant too ([`ClientError::falls_back`]).

use std::net::SocketAddr;
use std::time::Duration;

use ward_core::admission as adm;
use ward_core::frame::ErrorCode;

use crate::refusal::Refused;

/// Why the gateway said "busy".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// Too many connections from the user's address (QUIC close 0x5701).
    Source,
    /// Too many connections in all (0x5702).
    All,
    /// Evicted to make room for others (0x5703).
    Evicted,
    /// The QUIC handshake was refused before admission (`CONNECTION_REFUSED`).
    Refused,
    /// Too many logins in progress ([`ErrorCode::LoginBusy`]).
    Logins,
}

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Busy::Source => "gateway busy: too many connections from your address; retry later",
            Busy::All => "gateway busy: too many connections; retry later",
            Busy::Evicted => {
                "gateway busy: the connection was closed to make room for others; retry"
            }
            Busy::Refused => "gateway busy: it refused the connection (too many connections from your address or in all); retry later",
            Busy::Logins => ward_core::messages::LOGIN_BUSY,
        })
    }
}

/// A failure of a client call, with the sentence the user reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The gateway refused our certificate as expired (`not_after`, when we could read it).
    #[error("the gateway refused your certificate: {}. Run `ward login` to get a new one", expired_text(.not_after.as_deref()))]
    CertificateExpired {
        /// When it expired, for people.
        not_after: Option<String>,
    },
    /// The gateway refused our certificate as not valid yet.
    #[error("the gateway refused your certificate: it is not valid yet (valid from {not_before}). Check this computer's clock, or wait until then")]
    CertificateNotYetValid {
        /// When it becomes valid, for people.
        not_before: String,
    },
    /// Our certificate was issued by another CA (another Ward).
    #[error("the gateway refused your certificate: it was issued by another Ward (another CA). Run `ward login` against this gateway, or pass the identity it issued with --identity")]
    OtherWard,
    /// The CA's own certificate was passed as the identity.
    #[error("that is a CA certificate, not an identity: pass --identity PREFIX of an identity from `ward login` or `ward ca issue`, never the CA's own files")]
    CaAsIdentity,
    /// Our certificate is not a client identity (kind, key usage).
    #[error("the gateway refused your certificate: it is not a client identity (wrong kind or key usage). Run `ward login` to get one")]
    NotAnIdentity,
    /// The gateway could not read our certificate.
    #[error("the gateway refused your certificate: it could not be read. Run `ward login` to get a new one")]
    UnreadableCertificate,
    /// The gateway refused our certificate for a reason only its audit log names.
    #[error("the gateway refused your certificate; its audit log says why. Run `ward login` to get a new one")]
    CertificateRefused,
    /// The gateway's certificate is not signed by the root we trust (`root`: the file).
    #[error("the gateway's certificate is not signed by Ward's root{}: this is another Ward, or the wrong --ca", in_file(.root.as_deref()))]
    GatewayNotTrusted {
        /// The root file we checked against.
        root: Option<String>,
    },
    /// The gateway's own certificate is out of its validity.
    #[error("the gateway's own certificate has expired or is not valid yet: tell the gateway's administrator")]
    GatewayCertificateExpired,
    /// The gateway's certificate does not name the address used.
    #[error("the gateway's certificate does not name the address you used (--gateway): use the name or address it was issued for")]
    WrongGatewayName,
    /// The gateway is at a limit.
    #[error("{0}")]
    Busy(Busy),
    /// The gateway closed the connection with its own reason (e.g. a handshake deadline).
    #[error("the gateway closed the connection: {said}")]
    ClosedByGateway {
        /// Its words, control characters removed.
        said: String,
    },
    /// Nothing answered in time.
    #[error("gateway {gateway} did not answer over {transport} within {}s: check --gateway (host and port) and that your network lets you reach it{}", .after.as_secs(), udp_hint(.transport))]
    TimedOut {
        /// The address tried.
        gateway: SocketAddr,
        /// `QUIC` or `TCP`.
        transport: &'static str,
        /// How long we waited.
        after: Duration,
    },
    /// The connection could not be made (refused, no route…).
    #[error("could not reach gateway {gateway} over {transport} ({why}): check --gateway (host and port) and that the gateway is running")]
    Unreachable {
        /// The address tried.
        gateway: SocketAddr,
        /// `QUIC` or `TCP`.
        transport: &'static str,
        /// The system's words.
        why: String,
    },
    /// The connection failed in a way not listed above (a QUIC transport error, a reset…).
    #[error("the connection to the gateway failed: {0}")]
    Connection(String),
    /// Policy said no; the gateway's reason.
    #[error("denied: {0}")]
    Denied(String),
    /// The TOTP code was used already.
    #[error("{}", ward_core::messages::TOTP_REUSED)]
    TotpReused,
    /// The gateway answered with a typed error.
    #[error("{code:?}: {message}")]
    Gateway {
        /// Its code.
        code: ErrorCode,
        /// Its words.
        message: String,
    },
    /// The gateway answered something this client does not expect here.
    #[error("unexpected answer from the gateway: {0}")]
    Unexpected(String),
    /// Several gateways were given (or a name with several addresses) and none could be used:
    /// every address tried, in order, and why.
    #[error("no gateway could be reached; tried {}. Check --gateway (hosts and ports) and that the gateways are running", tried_text(.tried))]
    NoGateway {
        /// Each address tried, with what went wrong on each transport.
        tried: Vec<Tried>,
    },
}

/// One gateway address tried, and why it was not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tried {
    /// The address as given, with what it resolved to (`gw1.example:4433 (10.0.0.1:4433)`).
    pub gateway: String,
    /// Why, per transport tried (`QUIC: no answer within 1s`, `TCP: Connection refused`).
    pub why: Vec<String>,
}

fn tried_text(tried: &[Tried]) -> String {
    let each: Vec<String> = tried
        .iter()
        .map(|t| format!("{} ({})", t.gateway, t.why.join("; then ")))
        .collect();
    each.join(", ")
}

fn expired_text(not_after: Option<&str>) -> String {
    match not_after {
        Some(t) => format!("it expired at {t}"),
        None => "it has expired or is not valid yet".into(),
    }
}

fn in_file(root: Option<&str>) -> String {
    root.map(|r| format!(" in {r}")).unwrap_or_default()
}

fn udp_hint(transport: &str) -> &'static str {
    if transport == "QUIC" {
        " (UDP may be blocked: try --transport tcp)"
    } else {
        ""
    }
}

impl ClientError {
    /// Whether `--transport auto` should try TLS over TCP after this QUIC failure: only when QUIC
    /// itself did not get through (no answer, unreachable, a transport failure). A refused
    /// certificate, a busy gateway or a denial would be the same over TCP.
    pub fn falls_back(&self) -> bool {
        matches!(
            self,
            ClientError::TimedOut { .. }
                | ClientError::Unreachable { .. }
                | ClientError::Connection(_)
        )
    }

    /// Whether a client given several gateways should try the next one after this failure to
    /// connect: the address did not answer, is at a limit, closed the connection, or is not a
    /// gateway we trust under the name used (another gateway is checked on its own). A refusal of
    /// our own certificate would be the same on every gateway of the fleet, and a denial is a
    /// decision: neither is retried elsewhere (a client never shops for a gateway that says yes).
    pub fn fails_over(&self) -> bool {
        matches!(
            self,
            ClientError::TimedOut { .. }
                | ClientError::Unreachable { .. }
                | ClientError::Connection(_)
                | ClientError::Busy(_)
                | ClientError::ClosedByGateway { .. }
                | ClientError::GatewayNotTrusted { .. }
                | ClientError::GatewayCertificateExpired
                | ClientError::WrongGatewayName
        )
    }

    /// One transport's failure in a few words, for the list of gateways tried.
    pub fn short(&self) -> String {
        match self {
            ClientError::TimedOut {
                transport, after, ..
            } => format!("{transport}: no answer within {after:?}"),
            ClientError::Unreachable { transport, why, .. } => format!("{transport}: {why}"),
            other => other.to_string(),
        }
    }

    /// The gateway's typed error answer.
    pub fn from_gateway(code: ErrorCode, message: String) -> Self {
        match code {
            ErrorCode::LoginBusy => ClientError::Busy(Busy::Logins),
            ErrorCode::TotpReused => ClientError::TotpReused,
            code => ClientError::Gateway { code, message },
        }
    }

    /// A QUIC connection error without a refusal in it: the gateway's own closes by their
    /// application code, timeouts and the rest by their quinn variant.
    pub fn from_quic(e: &quinn::ConnectionError, gateway: SocketAddr) -> Self {
        use quinn::ConnectionError as E;
        match e {
            E::ApplicationClosed(close) => {
                let code = close.error_code.into_inner();
                let said = String::from_utf8_lossy(&close.reason)
                    .chars()
                    .filter(|c| !c.is_control())
                    .collect::<String>();
                match u32::try_from(code) {
                    Ok(adm::CLOSE_BUSY_SOURCE) => ClientError::Busy(Busy::Source),
                    Ok(adm::CLOSE_BUSY) => ClientError::Busy(Busy::All),
                    Ok(adm::CLOSE_EVICTED) => ClientError::Busy(Busy::Evicted),
                    _ => ClientError::ClosedByGateway { said },
                }
            }
            E::ConnectionClosed(close)
                if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
            {
                ClientError::Busy(Busy::Refused)
            }
            E::TimedOut => ClientError::TimedOut {
                gateway,
                transport: "QUIC",
                after: QUIC_IDLE,
            },
            other => ClientError::Connection(other.to_string()),
        }
    }

    /// A TCP connect error.
    pub fn from_tcp_connect(e: &std::io::Error, gateway: SocketAddr) -> Self {
        match e.kind() {
            std::io::ErrorKind::TimedOut => ClientError::TimedOut {
                gateway,
                transport: "TCP",
                after: TCP_CONNECT,
            },
            _ => ClientError::Unreachable {
                gateway,
                transport: "TCP",
                why: e.to_string(),
            },
        }
    }

    /// A refused handshake as its variant, given our identity certificate (PEM) and root file
    /// name; `None` for alerts that carry no advice.
    pub fn from_refusal(
        refused: &Refused,
        identity_pem: Option<&str>,
        root: Option<&std::path::Path>,
        now: time::OffsetDateTime,
    ) -> Option<Self> {
        use rustls::{AlertDescription as A, CertificateError as C};
        let mine = identity_pem.and_then(|p| ward_ca::inspect(p, None, now).ok());
        let human = |t: &str| ward_core::when::human_rfc3339(t, time::UtcOffset::UTC);
        if matches!(refused, Refused::ByGateway(_)) && mine.as_ref().is_some_and(|m| m.is_ca) {
            return Some(ClientError::CaAsIdentity);
        }
        Some(match refused {
            Refused::ByGateway(A::CertificateExpired) => match &mine {
                Some(m) if m.remaining_seconds > 0 => ClientError::CertificateNotYetValid {
                    not_before: human(&m.not_before),
                },
                m => ClientError::CertificateExpired {
                    not_after: m.as_ref().map(|m| human(&m.not_after)),
                },
            },
            Refused::ByGateway(A::UnknownCA | A::DecryptError) => ClientError::OtherWard,
            Refused::ByGateway(A::UnsupportedCertificate) => ClientError::NotAnIdentity,
            Refused::ByGateway(A::BadCertificate) => ClientError::UnreadableCertificate,
            Refused::ByGateway(A::AccessDenied | A::CertificateUnknown) => {
                ClientError::CertificateRefused
            }
            Refused::ByUs(C::UnknownIssuer | C::BadSignature) => ClientError::GatewayNotTrusted {
                root: root.map(|r| r.display().to_string()),
            },
            Refused::ByUs(C::Expired | C::NotValidYet) => ClientError::GatewayCertificateExpired,
            Refused::ByUs(C::NotValidForName) => ClientError::WrongGatewayName,
            _ => return None,
        })
    }
}

/// How long a QUIC connection waits for the gateway before it counts as timed out.
pub const QUIC_IDLE: Duration = Duration::from_secs(60);
/// How long a TCP connect may take.
pub const TCP_CONNECT: Duration = Duration::from_secs(10);
/// How long `--transport auto` gives QUIC before falling back to TCP.
pub const AUTO_QUIC_WAIT: Duration = Duration::from_millis(1000);
/// With several gateways: how long one address may take to connect over one transport (QUIC
/// handshake; TCP connect, then the TLS handshake) before the next address is tried.
pub const FAILOVER_CONNECT: Duration = Duration::from_secs(5);
/// With several gateways: the QUIC idle timeout, so a gateway that vanished (killed, cut off) is
/// noticed within it and new sessions go to another.
pub const FAILOVER_IDLE: Duration = Duration::from_secs(5);
/// With several gateways: the QUIC keep-alive, well inside [`FAILOVER_IDLE`] (a live gateway
/// acknowledges it, so only a silent one lets the idle timeout run out).
pub const FAILOVER_KEEPALIVE: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{AlertDescription, CertificateError};

    fn addr() -> SocketAddr {
        "127.0.0.1:4433".parse().unwrap()
    }

    #[test]
    fn only_transport_failures_fall_back_to_tcp() {
        let timed_out = ClientError::from_quic(&quinn::ConnectionError::TimedOut, addr());
        assert!(timed_out.falls_back());
        assert!(
            timed_out.to_string().contains("--transport tcp"),
            "{timed_out}"
        );
        let reset = ClientError::from_quic(&quinn::ConnectionError::Reset, addr());
        assert!(reset.falls_back());
        for no in [
            ClientError::Busy(Busy::Source),
            ClientError::OtherWard,
            ClientError::CertificateExpired { not_after: None },
            ClientError::Denied("no rule".into()),
        ] {
            assert!(!no.falls_back(), "{no:?}");
        }
    }

    #[test]
    fn only_connection_failures_move_to_the_next_gateway() {
        for yes in [
            ClientError::from_quic(&quinn::ConnectionError::TimedOut, addr()),
            ClientError::from_tcp_connect(
                &std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
                addr(),
            ),
            ClientError::Busy(Busy::All),
            ClientError::WrongGatewayName,
            ClientError::GatewayNotTrusted { root: None },
        ] {
            assert!(yes.fails_over(), "{yes:?}");
        }
        for no in [
            ClientError::Denied("no rule".into()),
            ClientError::CertificateExpired { not_after: None },
            ClientError::OtherWard,
            ClientError::CertificateRefused,
            ClientError::TotpReused,
            ClientError::Gateway {
                code: ErrorCode::LoginBusy,
                message: "x".into(),
            },
            ClientError::NoGateway { tried: vec![] },
        ] {
            assert!(!no.fails_over(), "{no:?}");
        }
    }

    #[test]
    fn no_gateway_lists_every_address_and_why() {
        let quic = ClientError::TimedOut {
            gateway: addr(),
            transport: "QUIC",
            after: AUTO_QUIC_WAIT,
        };
        let tcp = ClientError::Unreachable {
            gateway: addr(),
            transport: "TCP",
            why: "Connection refused (os error 111)".into(),
        };
        let e = ClientError::NoGateway {
            tried: vec![
                Tried {
                    gateway: "127.0.0.1:4433".into(),
                    why: vec![quic.short(), tcp.short()],
                },
                Tried {
                    gateway: "gw2.example:4433".into(),
                    why: vec!["failed to lookup address information".into()],
                },
            ],
        };
        assert_eq!(
            e.to_string(),
            "no gateway could be reached; tried 127.0.0.1:4433 (QUIC: no answer within 1s; then TCP: Connection refused (os error 111)), gw2.example:4433 (failed to lookup address information). Check --gateway (hosts and ports) and that the gateways are running"
        );
        assert!(!e.falls_back());
    }

    #[test]
    fn gateway_codes_have_their_sentences() {
        assert_eq!(
            ClientError::from_gateway(ErrorCode::LoginBusy, "whatever".into()).to_string(),
            ward_core::messages::LOGIN_BUSY
        );
        assert_eq!(
            ClientError::from_gateway(ErrorCode::TotpReused, "x".into()).to_string(),
            ward_core::messages::TOTP_REUSED
        );
    }

    #[test]
    fn refusals_say_what_to_do() {
        let now = time::OffsetDateTime::UNIX_EPOCH;
        let s = |r: Refused| {
            ClientError::from_refusal(&r, None, Some(std::path::Path::new("/r.crt")), now)
                .map(|e| e.to_string())
        };
        assert!(s(Refused::ByGateway(AlertDescription::NoRenegotiation)).is_none());
        let expired = s(Refused::ByGateway(AlertDescription::CertificateExpired)).unwrap();
        assert!(expired.contains("ward login"), "{expired}");
        let other = s(Refused::ByGateway(AlertDescription::UnknownCA)).unwrap();
        assert!(other.contains("another Ward"), "{other}");
        let ours = s(Refused::ByUs(CertificateError::UnknownIssuer)).unwrap();
        assert!(ours.contains("in /r.crt"), "{ours}");
    }
}
