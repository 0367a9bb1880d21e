//! A refused handshake, typed: the TLS alert the gateway sent, or the client's own certificate
//! check, read from quinn's and rustls's error values (never their text). The sentence for each is
//! [`ClientError::from_refusal`](crate::client_error::ClientError::from_refusal).

use rustls::{AlertDescription, CertificateError};

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
