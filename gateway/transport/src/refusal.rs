//! `ward connect`'s sentences for a refused handshake, decided from typed errors (the TLS alert the
//! gateway sent, or the client's own certificate check) and the client's own certificate, not
//! from the error text.

use rustls::{AlertDescription, CertificateError};
use time::OffsetDateTime;

/// Who refused, and with what.
#[derive(Debug, Clone, PartialEq)]
pub enum Refused {
    /// The gateway sent this alert about our certificate.
    ByGateway(AlertDescription),
    /// We refused the gateway's certificate.
    ByUs(CertificateError),
}

/// The typed refusal in a QUIC connection error, if it is one.
pub fn from_quic(e: &quinn::ConnectionError) -> Option<Refused> {
    // RFC 9001 §4.8: a TLS alert is the transport error 0x100 + alert.
    let alert = |code: quinn::TransportErrorCode| {
        let code = u64::from(code);
        (0x100..0x200)
            .contains(&code)
            .then(|| AlertDescription::from(u8::try_from(code - 0x100).unwrap_or(0)))
    };
    match e {
        quinn::ConnectionError::ConnectionClosed(c) => alert(c.error_code).map(Refused::ByGateway),
        quinn::ConnectionError::TransportError(t) => match alert(t.code)? {
            // Our own verifier's refusals surface as the alert we sent.
            AlertDescription::UnknownCA => Some(Refused::ByUs(CertificateError::UnknownIssuer)),
            AlertDescription::CertificateExpired => Some(Refused::ByUs(CertificateError::Expired)),
            AlertDescription::BadCertificate => {
                Some(Refused::ByUs(CertificateError::NotValidForName))
            }
            _ => None,
        },
        _ => None,
    }
}

/// The typed refusal in a TLS-over-TCP connect error, if it is one.
pub fn from_tcp(e: &std::io::Error) -> Option<Refused> {
    match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(a) => Some(Refused::ByGateway(*a)),
        rustls::Error::InvalidCertificate(c) => Some(Refused::ByUs(c.clone())),
        _ => None,
    }
}

/// A human sentence for `refused`, given our identity certificate (PEM) and root file name.
pub fn sentence(
    refused: &Refused,
    identity_pem: Option<&str>,
    root: Option<&std::path::Path>,
    now: OffsetDateTime,
) -> Option<String> {
    let mine = identity_pem.and_then(|p| ward_ca::inspect(p, None, now).ok());
    let root = root
        .map(|r| format!(" in {}", r.display()))
        .unwrap_or_default();
    if matches!(refused, Refused::ByGateway(_)) && mine.as_ref().is_some_and(|m| m.is_ca) {
        return Some("that is a CA certificate, not an identity: pass --identity PREFIX of an identity from `ward login` or `ward ca issue`, never the CA's own files".into());
    }
    Some(match refused {
        Refused::ByGateway(AlertDescription::CertificateExpired) => match &mine {
            Some(m) if m.remaining_seconds > 0 => format!(
                "the gateway refused your certificate: it is not valid yet (valid from {}). Check this computer's clock, or wait until then",
                m.not_before
            ),
            Some(m) => format!(
                "the gateway refused your certificate: it expired at {}. Run `ward login` to get a new one",
                m.not_after
            ),
            None => "the gateway refused your certificate: it has expired or is not valid yet. Run `ward login` to get a new one".into(),
        },
        Refused::ByGateway(AlertDescription::UnknownCA | AlertDescription::DecryptError) => {
            "the gateway refused your certificate: it was issued by another Ward (another CA). Run `ward login` against this gateway, or pass the identity it issued with --identity".into()
        }
        Refused::ByGateway(AlertDescription::UnsupportedCertificate) => {
            "the gateway refused your certificate: it is not a client identity (wrong kind or key usage). Run `ward login` to get one".into()
        }
        Refused::ByGateway(AlertDescription::BadCertificate) => {
            "the gateway refused your certificate: it could not be read. Run `ward login` to get a new one".into()
        }
        Refused::ByGateway(AlertDescription::AccessDenied | AlertDescription::CertificateUnknown) => {
            "the gateway refused your certificate; its audit log says why. Run `ward login` to get a new one".into()
        }
        Refused::ByUs(CertificateError::UnknownIssuer | CertificateError::BadSignature) => format!(
            "the gateway's certificate is not signed by Ward's root{root}: this is another Ward, or the wrong --ca"
        ),
        Refused::ByUs(CertificateError::Expired | CertificateError::NotValidYet) => {
            "the gateway's own certificate has expired or is not valid yet: tell the gateway's administrator".into()
        }
        Refused::ByUs(CertificateError::NotValidForName) => {
            "the gateway's certificate does not name the address you used (--gateway): use the name or address it was issued for".into()
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_alerts_have_no_sentence() {
        let now = OffsetDateTime::UNIX_EPOCH;
        assert!(sentence(
            &Refused::ByGateway(AlertDescription::NoRenegotiation),
            None,
            None,
            now
        )
        .is_none());
        let s = sentence(
            &Refused::ByGateway(AlertDescription::UnknownCA),
            None,
            None,
            now,
        )
        .unwrap();
        assert!(s.contains("another Ward"), "{s}");
    }
}
