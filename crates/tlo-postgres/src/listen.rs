//! LISTEN/NOTIFY wake-ups on a dedicated connection that reconnects with backoff.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::poll_fn;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::pool::{config, redact};
use crate::store::backoff;

/// Listens on `channel` forever, calling `wake` on every notification (and after each
/// reconnect, since notifications may have been missed meanwhile).
pub(crate) async fn listen(url: String, channel: String, wake: Arc<dyn Fn() + Send + Sync>) {
    let mut failures = 0;
    loop {
        let connected = match config(&url) {
            Ok(mut config) => {
                // A connection that only listens sends nothing: without keepalives a server
                // gone silent (a half-open connection) would go unnoticed for hours.
                config
                    .keepalives(true)
                    .keepalives_idle(Duration::from_secs(30))
                    .keepalives_interval(Duration::from_secs(10))
                    .keepalives_retries(3);
                config.connect(NoTls).await.map_err(|err| err.to_string())
            }
            Err(err) => Err(err.to_string()),
        };
        match connected {
            Ok((client, mut connection)) => {
                let driver = async {
                    loop {
                        match poll_fn(|cx| connection.poll_message(cx)).await {
                            Some(Ok(AsyncMessage::Notification(_))) => wake(),
                            Some(Ok(_)) => {}
                            Some(Err(err)) => return err.to_string(),
                            None => return "connection closed".to_string(),
                        }
                    }
                };
                let subscribe = async {
                    client
                        .batch_execute(&format!("LISTEN \"{channel}\""))
                        .await
                        .map_err(|err| err.to_string())?;
                    if failures > 0 {
                        tracing::info!(url = %redact(&url), "postgres: listening again");
                    }
                    failures = 0;
                    wake();
                    std::future::pending::<Result<(), String>>().await
                };
                let reason = tokio::select! {
                    reason = driver => reason,
                    Err(reason) = subscribe => reason,
                };
                tracing::warn!(url = %redact(&url), %reason, "postgres: lost the LISTEN connection; reconnecting");
            }
            Err(err) => {
                if failures == 0 {
                    tracing::warn!(url = %redact(&url), error = %err, "postgres: cannot LISTEN; retrying");
                }
            }
        }
        failures += 1;
        tokio::time::sleep(backoff(failures)).await;
    }
}
