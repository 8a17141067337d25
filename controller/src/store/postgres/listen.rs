//! The change feed: a connection of its own that LISTENs on
//! `ruse_changes` (notified by the triggers of migration 2 as each
//! transaction commits) and passes each change on. Reconnects after a
//! second when the connection breaks, and then says `Resync`: what changed
//! meanwhile was not heard.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio_postgres::AsyncMessage;

use super::connect::{Connector, db};
use crate::store::{Change, StoreError};

/// Follows the feed until the store's runtime stops.
/// Incidents this store wrote itself (`incidents <me>`) are not passed on.
pub(super) async fn follow(
    connector: Arc<Connector>,
    changes: broadcast::Sender<Change>,
    me: Arc<str>,
) {
    loop {
        if let Err(e) = listen(&connector, &changes, &me).await {
            tracing::warn!(error = %e, "store change feed interrupted; reconnecting");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn listen(
    connector: &Connector,
    changes: &broadcast::Sender<Change>,
    me: &str,
) -> Result<(), StoreError> {
    let (client, mut connection) = connector.connect_parts().await?;
    let (heard, mut payloads) = mpsc::unbounded_channel::<String>();
    // The connection carries the LISTEN's reply and then notifications:
    // one task polls it for both.
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if heard.send(n.payload().to_owned()).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "store change feed connection failed");
                    return;
                }
                None => return,
            }
        }
    });
    client
        .batch_execute("LISTEN ruse_changes")
        .await
        .map_err(db)?;
    // Anything may have changed before the LISTEN took effect.
    let _ = changes.send(Change::Resync);
    while let Some(payload) = payloads.recv().await {
        // "<table> <key> <writer>" (migration 7), or "<table> <writer>"
        // for incidents and events: this store's own changes are left out.
        let mut words = payload.split(' ');
        let (Some(table), Some(key)) = (words.next(), words.next()) else {
            continue;
        };
        let writer = match table {
            "incidents" | "events" => Some(key),
            _ => words.next(),
        };
        if writer != Some(me) {
            // No receivers is fine.
            let _ = changes.send(Change::Record {
                table: table.to_owned(),
                key: key.to_owned(),
            });
        }
    }
    drop(client);
    let _ = driver.await;
    Err(StoreError::Engine(
        "the change feed's connection closed".into(),
    ))
}
