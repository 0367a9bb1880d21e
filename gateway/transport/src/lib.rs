//! Ward's wire, shared by the gateway and the client: the data phase's framing
//! ([`datapath`]), the TLS configurations and certificate checks of both ends ([`tls`]), QUIC
//! endpoint tuning ([`quic`]) and the decoding of a gateway's refusal at the handshake
//! ([`refusal`]). Neither end's logic lives here; both depend on it. See docs/architecture.md.
#![forbid(unsafe_code)]

pub mod datapath;
pub mod quic;
pub mod refusal;
pub mod tls;
