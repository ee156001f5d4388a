//! Waiting for a stream to reach a version without holding a database connection.
//!
//! A map of the streams someone waits for, each a `watch` of the highest version
//! announced. Who announces depends on the reader: query-service relays
//! view-updater's NOTIFYs, the [`Repository`](crate::Repository) announces its own
//! appends. A waiter subscribes, then loads once; it loads again only when an
//! announcement reaches the version it wants, when everyone is woken (announcements
//! may have been missed), or at its recheck interval.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::watch;
use uuid::Uuid;

/// What a stream's waiters watch: (times everyone was woken, the highest version
/// announced).
pub type Announced = (u64, i64);
type Entry = Weak<watch::Sender<Announced>>;

#[derive(Default)]
pub struct StreamWatches {
    streams: Mutex<HashMap<Uuid, Entry>>,
}

impl StreamWatches {
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

    /// `stream_id` is at `version` now; wakes its waiters when that is news.
    pub fn announce(&self, stream_id: Uuid, version: i64) {
        let sender = self.streams.lock().unwrap_or_else(|p| p.into_inner()).get(&stream_id).and_then(Weak::upgrade);
        if let Some(sender) = sender {
            sender.send_if_modified(|(_, seen)| {
                let newer = version > *seen;
                *seen = (*seen).max(version);
                newer
            });
        }
    }

    /// Announcements may have been missed (a lost LISTEN connection): every current
    /// waiter loads once more.
    pub fn wake_all(&self) {
        let streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        for sender in streams.values().filter_map(Weak::upgrade) {
            sender.send_modify(|(wakes, _)| *wakes += 1);
        }
    }

    /// Loads `stream_id` (`load` answers the row and its version, or None) until it
    /// is at `wanted`: waits for announcements up to `wait`, loading again when one
    /// reaches `wanted`, when everyone is woken, and every `recheck` (for writers that
    /// announce elsewhere). `Ok(Err(current))` when the wait ended first.
    pub async fn at_version<T, E, F, Fut>(
        &self,
        stream_id: Uuid,
        wanted: i64,
        wait: Duration,
        recheck: Option<Duration>,
        mut load: F,
    ) -> Result<Result<Option<T>, i64>, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<(T, i64)>, E>>,
    {
        if wanted <= 0 {
            return Ok(Ok(load().await?.map(|(row, _)| row)));
        }
        let watch = self.watch(stream_id);
        let mut announced = watch.subscribe();
        let mut wakes = announced.borrow_and_update().0;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let found = load().await?;
            let current = found.as_ref().map_or(0, |(_, version)| *version);
            if current >= wanted {
                return Ok(Ok(found.map(|(row, _)| row)));
            }
            let next_check = recheck.map(|every| tokio::time::Instant::now() + every).filter(|at| *at < deadline);
            // until an announcement reaches the wanted version, a recheck, or the deadline
            loop {
                tokio::select! {
                    changed = announced.changed() => {
                        let (now_wakes, version) = *announced.borrow_and_update();
                        if changed.is_err() || version >= wanted || now_wakes != wakes {
                            wakes = now_wakes;
                            break;
                        }
                    }
                    _ = tokio::time::sleep_until(next_check.unwrap_or(deadline)), if next_check.is_some() => break,
                    _ = tokio::time::sleep_until(deadline) => return Ok(Err(current)),
                }
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
        let watches = StreamWatches::default();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let watch_a = watches.watch(a);
        let mut rx = watch_a.subscribe();
        watches.announce(b, 7);
        assert!(!rx.has_changed().unwrap());
        watches.announce(a, 3);
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().1, 3);
        watches.announce(a, 2);
        assert!(!rx.has_changed().unwrap(), "an older version wakes nobody");
        assert_eq!(watches.waiting(), 1);
        // waking everyone wakes each waiter once, and later announcements still do
        watches.wake_all();
        assert_eq!(*rx.borrow_and_update(), (1, 3));
        watches.announce(a, 4);
        assert_eq!(*rx.borrow_and_update(), (1, 4));
        drop(rx);
        drop(watch_a);
        assert_eq!(watches.waiting(), 0);
    }

    /// A stream whose version a test moves; `load` counts its calls.
    struct Fake {
        version: std::sync::atomic::AtomicI64,
        loads: std::sync::atomic::AtomicUsize,
    }

    impl Fake {
        fn new(version: i64) -> Arc<Self> {
            Arc::new(Fake { version: version.into(), loads: 0.into() })
        }

        async fn load(&self) -> Result<Option<(&'static str, i64)>, ()> {
            use std::sync::atomic::Ordering::SeqCst;
            self.loads.fetch_add(1, SeqCst);
            Ok(Some(("row", self.version.load(SeqCst))))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_loads_again_only_when_the_wanted_version_is_announced() {
        use std::sync::atomic::Ordering::SeqCst;
        let watches = Arc::new(StreamWatches::default());
        let id = Uuid::now_v7();
        let fake = Fake::new(1);
        let waiter = {
            let (watches, fake) = (watches.clone(), fake.clone());
            tokio::spawn(async move { watches.at_version(id, 3, Duration::from_secs(10), None, || fake.load()).await })
        };
        while watches.waiters() == 0 {
            tokio::task::yield_now().await;
        }
        tokio::task::yield_now().await;
        watches.announce(id, 2);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(fake.loads.load(SeqCst), 1, "version 2 is not the one wanted");
        fake.version.store(3, SeqCst);
        watches.announce(id, 3);
        assert_eq!(waiter.await.unwrap(), Ok(Ok(Some("row"))));
        assert_eq!(fake.loads.load(SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_rechecks_unannounced_writes_and_gives_up_at_the_deadline() {
        use std::sync::atomic::Ordering::SeqCst;
        let watches = StreamWatches::default();
        let id = Uuid::now_v7();
        let fake = Fake::new(1);
        let out = watches
            .at_version(id, 2, Duration::from_millis(1000), Some(Duration::from_millis(300)), || fake.load())
            .await;
        assert_eq!(out, Ok(Err(1)));
        // loads at 0, 300, 600 and 900 ms
        assert_eq!(fake.loads.load(SeqCst), 4);

        // a write nobody announced is found by the next recheck
        let fake = Fake::new(1);
        let writer = {
            let fake = fake.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(350)).await;
                fake.version.store(2, SeqCst);
            })
        };
        let started = tokio::time::Instant::now();
        let out = watches
            .at_version(id, 2, Duration::from_millis(1000), Some(Duration::from_millis(300)), || fake.load())
            .await;
        writer.await.unwrap();
        assert_eq!(out, Ok(Ok(Some("row"))));
        assert_eq!(started.elapsed(), Duration::from_millis(600));
    }
}
