//! PostgreSQL notifications followed by a replica: `LISTEN` on a connection of its own (never
//! one taken from the requests' pool), made again whenever it drops.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Database;

/// What a follower of a channel is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice<'a> {
    /// Listening now, after the first connection or a new one: notices sent while it was down
    /// are lost, so catch up by other means.
    Connected,
    /// A notice and its payload.
    Payload(&'a str),
}

impl Database {
    /// On PostgreSQL, follows `channel` until `stop` on its own connection (named
    /// `application_name`), calling `on` for each [`Notice`]; a lost connection is made again
    /// after 1 s. Returns false on SQLite, where there is nothing to follow (one replica).
    pub(crate) fn spawn_follower(
        &self,
        channel: &'static str,
        application_name: &'static str,
        stop: CancellationToken,
        mut on: impl FnMut(Notice<'_>) + Send + 'static,
    ) -> bool {
        let Some(options) = self.dedicated.clone() else { return false };
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(options.application_name(application_name));
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                let connected = async {
                    let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
                    listener.listen(channel).await?;
                    Ok::<_, sqlx::Error>(listener)
                };
                let mut listener = tokio::select! {
                    () = stop.cancelled() => return,
                    l = connected => match l {
                        Ok(l) => l,
                        Err(e) => {
                            if !std::mem::replace(&mut failing, true) {
                                tracing::warn!(channel, error = %e, "cannot listen for notices; retrying");
                            }
                            tokio::select! {
                                () = stop.cancelled() => return,
                                () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                            }
                        }
                    },
                };
                if std::mem::take(&mut failing) {
                    tracing::info!(channel, "listening for notices again");
                }
                on(Notice::Connected);
                loop {
                    let received = tokio::select! {
                        () = stop.cancelled() => return,
                        r = listener.try_recv() => r,
                    };
                    match received {
                        Ok(Some(notice)) => on(Notice::Payload(notice.payload())),
                        // The connection dropped and was made again: notices meanwhile are lost.
                        Ok(None) => {
                            tracing::info!(channel, "notice connection re-established");
                            on(Notice::Connected);
                        }
                        Err(e) => {
                            tracing::warn!(channel, error = %e, "notice connection lost; reconnecting");
                            break;
                        }
                    }
                }
            }
        });
        true
    }
}
