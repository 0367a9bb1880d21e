//! Several gateways on one store (docs/deployment.md): each registers itself in the store's
//! gateway table and heartbeats, so `ward gateways` lists them with their health, and reviewers on
//! any gateway can tell whose recordings they read.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use time::OffsetDateTime;
use ward_ca::Clock;
use ward_recording::keyring::{Keyring, PublicKeys};
use ward_recording::signer::KEY_ID_LEN;
use ward_store::gateways::{GatewayRegistry, GatewayRow};

use crate::signing::{SigningKeys, VerifyKeys};

/// How often a gateway refreshes its row.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

/// A gateway whose last heartbeat is older than this is reported down.
pub const DOWN_AFTER: Duration = Duration::from_secs(15);

/// What a gateway registers about itself.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Its stable id (`gateway.id`).
    pub id: String,
    /// Its bound QUIC address.
    pub quic: SocketAddr,
    /// Its bound TLS/TCP address.
    pub tcp: Option<SocketAddr>,
    /// Its web console.
    pub web: Option<SocketAddr>,
    /// When it started.
    pub started: OffsetDateTime,
}

impl Registration {
    /// Its row at `now`, with its current keyring (`keys`).
    pub fn row(&self, now: OffsetDateTime, keys: &Keyring) -> GatewayRow {
        GatewayRow {
            id: self.id.clone(),
            quic: self.quic.to_string(),
            tcp: self.tcp.map(|a| a.to_string()),
            web: self.web.map(|a| a.to_string()),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started: self.started,
            last_seen: now,
            keyring: String::from_utf8_lossy(&keys.to_jsonl()).into_owned(),
        }
    }
}

/// A gateway's health as seen at `now` from its last heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Heartbeat within [`DOWN_AFTER`].
    Up,
    /// No heartbeat for longer: stopped, crashed, or cut off from the store.
    Down {
        /// Seconds since its last heartbeat.
        silent_for: i64,
    },
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Health::Up => f.write_str("up"),
            Health::Down { silent_for } => write!(f, "down (no heartbeat for {silent_for}s)"),
        }
    }
}

/// Health of `row` at `now`.
pub fn health(row: &GatewayRow, now: OffsetDateTime) -> Health {
    let silent = now - row.last_seen;
    if silent <= time::Duration::try_from(DOWN_AFTER).unwrap_or(time::Duration::ZERO) {
        Health::Up
    } else {
        Health::Down {
            silent_for: silent.whole_seconds(),
        }
    }
}

/// Refreshes this gateway's row every [`HEARTBEAT_EVERY`] (a store that is down is logged and
/// tried again at the next beat: the gateway keeps serving, and shows as down in `ward gateways`
/// until the store is back).
pub(crate) async fn heartbeat_loop(
    registry: Arc<dyn GatewayRegistry>,
    me: Registration,
    keys: SigningKeys,
    fleet: FleetKeys,
    clock: Arc<dyn Clock>,
) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        let row = me.row(clock.now(), &keys.keyring());
        let registry = registry.clone();
        let f = fleet.clone();
        let beat = tokio::task::spawn_blocking(move || {
            registry.heartbeat(&row)?;
            // The others' keys, read at each beat (a new gateway, a rotated key).
            f.reload();
            Ok::<_, ward_store::store::StoreError>(())
        })
        .await;
        match beat {
            Ok(Ok(())) => {
                if failing {
                    tracing::info!(
                        event = "heartbeat_restored",
                        "gateway heartbeat written again"
                    );
                }
                failing = false;
            }
            Ok(Err(e)) => {
                if !failing {
                    tracing::warn!(event = "heartbeat_failed", reason = %e, "cannot write this gateway's heartbeat to the store");
                }
                failing = true;
            }
            Err(_) => failing = true,
        }
    }
}

/// The keys reviews verify with on a gateway sharing its store: its own keyring first, then the
/// keyrings the other gateways registered ([`GatewayRow::keyring`]), re-read at each heartbeat
/// and, at most once a second, when a recording names a key none of them has. So a recording
/// any gateway of the fleet signed verifies on every gateway; one signed by a key no gateway
/// registered still fails. Trust: whoever can write the store's gateway table can add a key
/// (docs/deployment.md, threat notes): the anchors (`[audit] anchors`) are the check that does
/// not rest on the database.
#[derive(Clone)]
pub struct FleetKeys {
    own: SigningKeys,
    registry: Arc<dyn GatewayRegistry>,
    others: Arc<ArcSwap<Vec<(String, Keyring)>>>,
    last_reload: Arc<Mutex<Option<Instant>>>,
}

/// A miss re-reads the registry at most this often.
const RELOAD_ON_MISS_EVERY: Duration = Duration::from_secs(1);

impl FleetKeys {
    /// Own keys plus the others' from `registry` (read now).
    pub fn new(own: SigningKeys, registry: Arc<dyn GatewayRegistry>) -> Self {
        let k = FleetKeys {
            own,
            registry,
            others: Arc::new(ArcSwap::from_pointee(Vec::new())),
            last_reload: Arc::new(Mutex::new(None)),
        };
        k.reload();
        k
    }

    /// Re-reads the other gateways' keyrings (blocking: a store round trip). A row whose keyring
    /// does not parse is skipped (logged): it verifies nothing.
    pub fn reload(&self) {
        if let Ok(mut last) = self.last_reload.lock() {
            *last = Some(Instant::now());
        }
        let rows = match self.registry.gateways() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(event = "store_failed", reason = %e, "reading the other gateways' keys");
                return;
            }
        };
        let own = self.own.gateway_id();
        let mut others = Vec::new();
        for r in rows.into_iter().filter(|r| r.id != own) {
            if r.keyring.trim().is_empty() {
                continue;
            }
            match Keyring::parse(r.keyring.as_bytes()) {
                Ok(k) => others.push((r.id, k)),
                Err(e) => {
                    tracing::warn!(event = "gateway_keyring_unreadable", gateway = %ward_core::Escaped(&r.id), reason = %e, "a registered gateway's keyring does not parse; its recordings do not verify here")
                }
            }
        }
        self.others.store(Arc::new(others));
    }

    /// The gateway whose keyring holds `key_id` (this one's id for its own keys).
    pub fn owner_of(&self, key_id: &[u8; KEY_ID_LEN]) -> Option<String> {
        if self.own.public_for(key_id).is_some() {
            return Some(self.own.gateway_id().to_owned());
        }
        self.find(key_id).map(|(id, _)| id)
    }

    fn find(&self, key_id: &[u8; KEY_ID_LEN]) -> Option<(String, [u8; 32])> {
        let hit = |others: &[(String, Keyring)]| {
            others
                .iter()
                .find_map(|(id, k)| k.public_for(key_id).map(|p| (id.clone(), p)))
        };
        if let Some(h) = hit(&self.others.load()) {
            return Some(h);
        }
        let due = self
            .last_reload
            .lock()
            .map(|l| l.is_none_or(|t| t.elapsed() >= RELOAD_ON_MISS_EVERY))
            .unwrap_or(false);
        if !due {
            return None;
        }
        self.reload();
        hit(&self.others.load())
    }
}

impl PublicKeys for FleetKeys {
    fn public_for(&self, key_id: &[u8; KEY_ID_LEN]) -> Option<[u8; 32]> {
        self.own
            .public_for(key_id)
            .or_else(|| self.find(key_id).map(|(_, p)| p))
    }

    fn unknown_key(&self, key_id: &[u8; KEY_ID_LEN]) -> String {
        format!(
            "{}; nor is it any other gateway's registered in the store",
            self.own.unknown_key(key_id)
        )
    }
}

impl VerifyKeys for FleetKeys {
    fn current(&self) -> [u8; 32] {
        self.own.current()
    }
    fn all(&self) -> Keyring {
        self.own.all()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn health_follows_the_last_heartbeat() {
        let start = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let me = Registration {
            id: "gw1".into(),
            quic: "127.0.0.1:7443".parse().unwrap(),
            tcp: None,
            web: None,
            started: start,
        };
        let row = me.row(start, &Keyring::default());
        assert_eq!(health(&row, start), Health::Up);
        assert_eq!(
            health(&row, start + time::Duration::seconds(15)),
            Health::Up
        );
        let later = start + time::Duration::seconds(16);
        assert_eq!(health(&row, later), Health::Down { silent_for: 16 });
        assert_eq!(
            health(&row, later).to_string(),
            "down (no heartbeat for 16s)"
        );
    }
}
