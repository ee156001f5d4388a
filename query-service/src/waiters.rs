//! Waiting for a view to reach a version without holding a database connection.
//!
//! One LISTEN connection per process (channel `views_advanced`, payload
//! `<stream id>:<version>`, sent by view-updater at each commit) feeds a map of the
//! streams someone waits for, each a `watch` of the latest version announced. A waiter
//! subscribes, then queries once; it queries again only when an announcement reaches
//! the version it wants (or, after a lost LISTEN connection, once everyone is woken).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The NOTIFY channel view-updater announces on.
pub const CHANNEL: &str = "views_advanced";

/// What a stream's waiters watch: (wake-ups after a lost LISTEN connection, the
/// highest version announced).
pub type Announced = (u64, i64);
type Entry = Weak<watch::Sender<Announced>>;

#[derive(Default)]
pub struct Waiters {
    streams: Mutex<HashMap<Uuid, Entry>>,
}

impl Waiters {
    /// The watch of a stream's announced versions (shared by its waiters).
    pub fn watch(&self, stream_id: Uuid) -> Arc<watch::Sender<Announced>> {
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sender) = streams.get(&stream_id).and_then(Weak::upgrade) {
            return sender;
        }
        if streams.len() >= 4096 {
            streams.retain(|_, entry| entry.strong_count() > 0);
        }
        let sender = Arc::new(watch::Sender::new((0, 0)));
        streams.insert(stream_id, Arc::downgrade(&sender));
        sender
    }

    /// How many reads wait now (over all streams).
    pub fn waiters(&self) -> usize {
        let streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        streams.values().filter_map(Weak::upgrade).map(|s| s.receiver_count()).sum()
    }

    /// How many streams have waiters now.
    pub fn waiting(&self) -> usize {
        self.streams.lock().unwrap_or_else(|p| p.into_inner()).values().filter(|e| e.strong_count() > 0).count()
    }

    fn announce(&self, payload: &str) {
        let Some((id, version)) = payload.split_once(':') else { return };
        let (Ok(id), Ok(version)) = (id.parse::<Uuid>(), version.parse::<i64>()) else { return };
        let sender = self.streams.lock().unwrap_or_else(|p| p.into_inner()).get(&id).and_then(Weak::upgrade);
        if let Some(sender) = sender {
            sender.send_if_modified(|(_, seen)| {
                let newer = version > *seen;
                *seen = (*seen).max(version);
                newer
            });
        }
    }

    /// After a lost LISTEN connection announcements may be missing: every current
    /// waiter queries once more.
    fn wake_all(&self) {
        let streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        for sender in streams.values().filter_map(Weak::upgrade) {
            sender.send_modify(|(wakes, _)| *wakes += 1);
        }
    }

    /// Listens until `shutdown`, reconnecting with a pause when the connection drops.
    pub async fn listen(self: Arc<Self>, pool: sqlx::PgPool, shutdown: CancellationToken) {
        loop {
            let listening = async {
                let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
                listener.listen(CHANNEL).await?;
                // whatever was announced while not listening
                self.wake_all();
                loop {
                    let note = listener.recv().await?;
                    self.announce(note.payload());
                }
                #[allow(unreachable_code)]
                Ok::<(), sqlx::Error>(())
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                outcome = listening => {
                    if let Err(error) = outcome {
                        tracing::warn!(%error, "not listening for view updates; reconnecting");
                    }
                }
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
    fn announcements_reach_the_waiters_of_their_stream_only() {
        let waiters = Waiters::default();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let watch_a = waiters.watch(a);
        let mut rx = watch_a.subscribe();
        waiters.announce(&format!("{b}:7"));
        assert!(!rx.has_changed().unwrap());
        waiters.announce(&format!("{a}:3"));
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().1, 3);
        waiters.announce(&format!("{a}:2"));
        assert!(!rx.has_changed().unwrap(), "an older version wakes nobody");
        waiters.announce("garbage");
        assert_eq!(waiters.waiting(), 1);
        // a reconnect wakes every waiter once, and later announcements still do
        waiters.wake_all();
        assert_eq!(*rx.borrow_and_update(), (1, 3));
        waiters.announce(&format!("{a}:4"));
        assert_eq!(*rx.borrow_and_update(), (1, 4));
        drop(rx);
        drop(watch_a);
        assert_eq!(waiters.waiting(), 0);
    }
}
