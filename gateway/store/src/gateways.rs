//! The gateways sharing one store: each registers itself and heartbeats, so `ward gateways` can
//! list them with their health (docs/deployment.md). On SQLite the table holds the one gateway.

use time::OffsetDateTime;

use crate::store::StoreError;

/// One gateway as it registered itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRow {
    /// The gateway's stable id (`<state_dir>/gateway.id`).
    pub id: String,
    /// Where clients reach it over QUIC (`host:port`), as the gateway knows it.
    pub quic: String,
    /// Where clients reach it over TLS/TCP, if it listens there.
    pub tcp: Option<String>,
    /// The web console, if it serves one.
    pub web: Option<String>,
    /// Ward's version.
    pub version: String,
    /// When this run of it started.
    pub started: OffsetDateTime,
    /// Its last heartbeat.
    pub last_seen: OffsetDateTime,
    /// Its public signing keyring (`audit.keys` JSON lines: public keys only), so every gateway
    /// verifies the others' recordings and audit chains.
    pub keyring: String,
}

/// The registry of gateways sharing a store.
pub trait GatewayRegistry: Send + Sync {
    /// Insert or refresh this gateway's row (its heartbeat).
    fn heartbeat(&self, row: &GatewayRow) -> Result<(), StoreError>;
    /// Every gateway ever registered, oldest first.
    fn gateways(&self) -> Result<Vec<GatewayRow>, StoreError>;
}
