//! The console's HTTPS listener (see [`super`]).

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::gateway::Shared;

/// Serve the console on `listener` until `stop` turns true.
pub async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    mut stop: watch::Receiver<bool>,
) {
    let _ = (shared, listener, tls);
    let _ = stop.wait_for(|s| *s).await;
}

/// The console's TLS: 1.3 only, the gateway's certificate chain and key.
pub fn tls_config(
    _validator: ward_ca::Validator,
    _clock: Arc<dyn ward_ca::Clock>,
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(config)
}
