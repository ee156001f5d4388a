//! Waiting for a view to reach a version without holding a database connection.
//!
//! One LISTEN connection per process (channel `views_advanced`, payload
//! `<stream id>:<version>`, sent by view-updater at each commit) feeds a map of the
//! streams someone waits for, each a `watch` of the latest version announced. A waiter
//! subscribes, then queries once; it queries again only when an announcement reaches
//! the version it wants (or, after a lost LISTEN connection, once everyone is woken).
//! The same announcements keep the [`ViewCache`] current; it is emptied whenever the
//! connection drops and again when it is back.

use crate::cache::ViewCache;
use eventstore::watches::StreamWatches;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The NOTIFY channel view-updater announces on.
pub const CHANNEL: &str = "views_advanced";

/// The streams waited for, fed by view-updater's announcements.
#[derive(Default)]
pub struct Waiters {
    watches: StreamWatches,
    /// Whether the LISTEN connection is up (readiness reports it).
    listening: AtomicBool,
    /// The rows served from memory, kept by the same announcements.
    pub cache: ViewCache,
}

impl std::ops::Deref for Waiters {
    type Target = StreamWatches;
    fn deref(&self) -> &StreamWatches {
        &self.watches
    }
}

impl Waiters {
    /// Waiters that keep `cache` current too.
    pub fn with_cache(cache: ViewCache) -> Self {
        Waiters { watches: StreamWatches::default(), listening: AtomicBool::new(false), cache }
    }

    /// `true` while the LISTEN connection is up: waits then end as soon as the views advance.
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }

    /// Relays one announcement, `<stream id>:<version>` (anything else is ignored).
    fn announce(&self, payload: &str) {
        let Some((id, version)) = payload.split_once(':') else { return };
        if let (Ok(id), Ok(version)) = (id.parse::<Uuid>(), version.parse::<i64>()) {
            // the cache first: a waiter woken by the watch must not find the stale entry
            self.cache.announce(id, version);
            self.watches.announce(id, version);
        }
    }

    /// Listens until `shutdown`, reconnecting with a pause when the connection drops.
    pub async fn listen(self: Arc<Self>, pool: sqlx::PgPool, shutdown: CancellationToken) {
        loop {
            let listening = async {
                let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
                listener.listen(CHANNEL).await?;
                // whatever was announced while not listening: the cache forgets it all,
                // and every waiter loads once more
                self.cache.resume();
                self.listening.store(true, Ordering::Relaxed);
                self.wake_all();
                loop {
                    // not `recv`: it reconnects quietly, and what was announced in
                    // between would be missed without anyone knowing
                    match listener.try_recv().await? {
                        Some(note) => self.announce(note.payload()),
                        None => {
                            let lost = std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "connection lost");
                            return Err(sqlx::Error::Io(lost));
                        }
                    }
                }
                #[allow(unreachable_code)]
                Ok::<(), sqlx::Error>(())
            };
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return,
                outcome = listening => outcome,
            };
            self.listening.store(false, Ordering::Relaxed);
            // announcements are missed from here on: nothing from memory until back
            self.cache.suspend();
            if let Err(error) = outcome {
                tracing::warn!(%error, "not listening for view updates; reconnecting");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn announcements_are_relayed_to_their_stream_and_garbage_is_ignored() {
        let waiters = Waiters::default();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let watch_a = waiters.watch(a);
        let mut rx = watch_a.subscribe();
        waiters.announce(&format!("{b}:7"));
        assert!(!rx.has_changed().unwrap());
        waiters.announce("garbage");
        waiters.announce(&format!("{a}:x"));
        assert!(!rx.has_changed().unwrap());
        waiters.announce(&format!("{a}:3"));
        assert_eq!(*rx.borrow_and_update(), (0, 3));
    }
}
