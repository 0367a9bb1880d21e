//! The change feed: triggers on `locks`, `grants`, `access_requests` and `users` (see
//! `sql/0001_core.sql`) run `pg_notify('ward_changes', <table>)`; one dedicated connection
//! `LISTEN`s and bumps a `watch` counter on every notification, and on every (re)connect, since
//! notifications sent while it was away are lost. The gateway refreshes its policy snapshot when
//! the counter moves, and keeps its periodic resync as a safety net.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{AsyncMessage, Socket};

use super::Tls;

/// The channel the triggers notify.
pub const CHANNEL: &str = "ward_changes";

/// How often the listener checks that its connection is alive (a silent network failure
/// otherwise goes unseen until TCP keepalives give up).
const PING_EVERY: Duration = Duration::from_secs(5);

/// The first wait before reconnecting; doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A counter that moves whenever shared state may have changed (a notification, or the
/// listener's reconnect). Only its movement means anything.
#[derive(Debug, Clone)]
pub struct ChangeFeed(pub watch::Receiver<u64>);

fn bump(tx: &watch::Sender<u64>) {
    tx.send_modify(|n| *n = n.wrapping_add(1));
}

/// Listens until the store's runtime stops, reconnecting with back-off.
pub(crate) async fn listen(
    config: tokio_postgres::Config,
    tls: Tls,
    describe: Arc<str>,
    tx: watch::Sender<u64>,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let outcome = match &tls {
            Tls::Plain(t) => session(&config, *t, &tx).await,
            Tls::Rustls(t) => session(&config, t.clone(), &tx).await,
        };
        match outcome {
            // It was up: start again quickly.
            Ok(()) => backoff = MIN_BACKOFF,
            Err(e) => {
                tracing::warn!(db = %describe, error = %e, "the database change feed is down; reconnecting");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's life: connect, `LISTEN`, bump, then bump on each notification until the
/// connection fails. `Ok` after a session that was established.
async fn session<T>(
    config: &tokio_postgres::Config,
    tls: T,
    tx: &watch::Sender<u64>,
) -> Result<(), String>
where
    T: MakeTlsConnect<Socket> + Send,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let (client, mut connection) = config.connect(tls).await.map_err(|e| super::pg_text(&e))?;
    // The connection's messages (notifications) arrive through this channel; it closes when the
    // connection ends.
    let (msg_tx, mut msg_rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    if msg_tx.send(n.payload().to_owned()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "change feed connection ended");
                    break;
                }
            }
        }
    });
    let result = async {
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .map_err(|e| super::pg_text(&e))?;
        // Listening again: whatever happened while away is unknown.
        bump(tx);
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            tokio::select! {
                m = msg_rx.recv() => match m {
                    Some(table) => {
                        tracing::trace!(%table, "store change");
                        bump(tx);
                    }
                    None => return Ok(()),
                },
                _ = ping.tick() => {
                    match tokio::time::timeout(PING_EVERY, client.simple_query("SELECT 1")).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Err(super::pg_text(&e)),
                        Err(_) => return Err("no answer to a ping".into()),
                    }
                }
            }
        }
    }
    .await;
    driver.abort();
    result
}
