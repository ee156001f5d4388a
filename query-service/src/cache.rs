//! The current rows of `GET /accounts/{id}` (with its recent transactions) and
//! `GET /transfers/{id}`, kept in memory: a bounded map, least recently used out,
//! filled on read and kept honest by view-updater's announcements, which the LISTEN
//! connection of [`crate::waiters`] already receives (`<stream id>:<version>`, sent at
//! the commit of each view write).
//!
//! The rules, each for a reason:
//!
//! * **An entry is never older than asked.** A read with `min_version` uses an entry
//!   only at that version or later; otherwise it loads (and waits) as without a cache.
//! * **An entry is never older than what was announced.** An announcement drops the
//!   entry of its stream when the entry is at that version or below. Below: the entry
//!   is stale. At: the row may have been rewritten at the same version (a repair by
//!   `rebuild_account`); one more load is cheap.
//! * **A load never goes back in time.** A loaded row is put in the map only if no
//!   announcement for its stream reached its version while it was loading (a row
//!   loaded before a commit and put after its announcement would otherwise stay), no
//!   clear happened meanwhile, and the entry already there is not newer.
//!   Announcements before a load began need no record: NOTIFY is delivered after the
//!   commit, so the load's snapshot already holds what they announce.
//! * **No announcements, no cache.** Announcements are missed while the LISTEN
//!   connection is down, so the map is emptied when it drops and again when it is
//!   back, and nothing is served from it or put in it in between.
//!
//! The caller checks access on every answer, from here or from the database (see
//! [`crate::http`]): the cache holds rows, not permissions. Negative answers (no such
//! row) are not kept: the row may appear before its announcement is read.

use bank_api::views::{AccountDetail, TransferRow};
use lru::LruCache;
use prometheus::{IntCounter, IntGauge, Registry};
use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use uuid::Uuid;

/// A cached row (ids are stream ids, unique over both kinds).
#[derive(Debug, Clone)]
pub enum Row {
    Account(Arc<AccountDetail>),
    Transfer(Arc<TransferRow>),
}

/// What the cache may hold.
pub trait Cacheable: Sized {
    fn into_row(row: Arc<Self>) -> Row;
    fn from_row(row: &Row) -> Option<Arc<Self>>;
}

impl Cacheable for AccountDetail {
    fn into_row(row: Arc<Self>) -> Row {
        Row::Account(row)
    }
    fn from_row(row: &Row) -> Option<Arc<Self>> {
        match row {
            Row::Account(a) => Some(a.clone()),
            Row::Transfer(_) => None,
        }
    }
}

impl Cacheable for TransferRow {
    fn into_row(row: Arc<Self>) -> Row {
        Row::Transfer(row)
    }
    fn from_row(row: &Row) -> Option<Arc<Self>> {
        match row {
            Row::Transfer(t) => Some(t.clone()),
            Row::Account(_) => None,
        }
    }
}

/// The cache's counters, on the service's registry.
#[derive(Clone)]
pub struct CacheMetrics {
    /// Reads answered from memory.
    pub hits: IntCounter,
    /// Reads that went to the database (no entry, an entry too old, or not listening).
    pub misses: IntCounter,
    /// Entries pushed out to make room.
    pub evictions: IntCounter,
    /// Entries held now.
    pub entries: IntGauge,
}

impl CacheMetrics {
    fn new() -> prometheus::Result<Self> {
        Ok(CacheMetrics {
            hits: IntCounter::new("query_cache_hits_total", "Reads answered from the in-memory view cache")?,
            misses: IntCounter::new("query_cache_misses_total", "Reads of cacheable rows that went to the database")?,
            evictions: IntCounter::new(
                "query_cache_evictions_total",
                "View cache entries pushed out (least recently used) to make room",
            )?,
            entries: IntGauge::new("query_cache_entries", "Rows held by the view cache")?,
        })
    }

    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = Self::new()?;
        registry.register(Box::new(metrics.hits.clone()))?;
        registry.register(Box::new(metrics.misses.clone()))?;
        registry.register(Box::new(metrics.evictions.clone()))?;
        registry.register(Box::new(metrics.entries.clone()))?;
        Ok(metrics)
    }
}

struct Entry {
    version: i64,
    row: Row,
}

/// What was announced for a stream while loads of it ran.
struct Loading {
    /// Loads of the stream running now.
    loads: usize,
    /// The highest version announced while any of them ran.
    announced: i64,
    /// The sequence number of the latest such announcement.
    announced_at: u64,
}

struct Inner {
    rows: LruCache<Uuid, Entry>,
    loading: HashMap<Uuid, Loading>,
    /// Counts announcements and clears: a load notes it when it begins.
    seq: u64,
    /// `seq` at the latest clear: loads begun before it put nothing.
    cleared_at: u64,
    /// Whether announcements are being received.
    listening: bool,
}

impl Inner {
    fn clear(&mut self, metrics: &CacheMetrics) {
        self.rows.clear();
        self.seq += 1;
        self.cleared_at = self.seq;
        metrics.entries.set(0);
    }
}

/// The view cache; [`ViewCache::disabled`] when `QUERY_CACHE_SIZE` is 0.
pub struct ViewCache {
    inner: Option<Mutex<Inner>>,
    pub metrics: CacheMetrics,
}

impl Default for ViewCache {
    fn default() -> Self {
        Self::disabled()
    }
}

impl ViewCache {
    /// A cache of up to `capacity` rows (0: no cache), counted in `metrics`. It serves
    /// nothing until [`ViewCache::resume`] says announcements are received.
    pub fn new(capacity: usize, metrics: CacheMetrics) -> Self {
        let inner = NonZeroUsize::new(capacity).map(|capacity| {
            Mutex::new(Inner {
                rows: LruCache::new(capacity),
                loading: HashMap::new(),
                seq: 0,
                cleared_at: 0,
                listening: false,
            })
        });
        ViewCache { inner, metrics }
    }

    /// No cache: every read loads.
    pub fn disabled() -> Self {
        #[allow(clippy::expect_used)]
        let metrics = CacheMetrics::new().expect("the metrics' names are valid");
        ViewCache { inner: None, metrics }
    }

    fn lock(&self) -> Option<MutexGuard<'_, Inner>> {
        self.inner.as_ref().map(|inner| inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Rows held now.
    pub fn len(&self) -> usize {
        self.lock().map_or(0, |inner| inner.rows.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The version of the row held for `id`, if any (without touching its recency).
    pub fn version_of(&self, id: Uuid) -> Option<i64> {
        self.lock().and_then(|inner| inner.rows.peek(&id).map(|e| e.version))
    }

    /// Announcements are received from now on: starts empty (some may have been
    /// missed before).
    pub fn resume(&self) {
        if let Some(mut inner) = self.lock() {
            inner.clear(&self.metrics);
            inner.listening = true;
        }
    }

    /// Announcements may be missed from now on: empties the cache and serves nothing
    /// until [`ViewCache::resume`].
    pub fn suspend(&self) {
        if let Some(mut inner) = self.lock() {
            inner.clear(&self.metrics);
            inner.listening = false;
        }
    }

    /// `id` is at `version` in the views now: its entry at that version or below goes,
    /// and loads running now will not put a row at that version or below.
    pub fn announce(&self, id: Uuid, version: i64) {
        let Some(mut inner) = self.lock() else { return };
        inner.seq += 1;
        let seq = inner.seq;
        if let Some(loading) = inner.loading.get_mut(&id) {
            loading.announced = loading.announced.max(version);
            loading.announced_at = seq;
        }
        if inner.rows.peek(&id).is_some_and(|entry| entry.version <= version) {
            inner.rows.pop(&id);
            self.metrics.entries.set(inner.rows.len() as i64);
        }
    }

    /// The row `id` at `wanted` or later from memory, else from `load` (which answers
    /// the row and its version, or None), keeping what it loaded when the rules allow.
    pub async fn get_or_load<T, E, Fut>(
        &self,
        id: Uuid,
        wanted: i64,
        load: impl FnOnce() -> Fut,
    ) -> Result<Option<(Arc<T>, i64)>, E>
    where
        T: Cacheable,
        Fut: Future<Output = Result<Option<(T, i64)>, E>>,
    {
        let Some(ticket) = self.lookup(id, wanted) else {
            return Ok(load().await?.map(|(row, version)| (Arc::new(row), version)));
        };
        let ticket = match ticket {
            Lookup::Hit(row, version) => return Ok(Some((row, version))),
            Lookup::Miss(ticket) => ticket,
        };
        let found = load().await?.map(|(row, version)| (Arc::new(row), version));
        if let Some((row, version)) = &found {
            ticket.keep(T::into_row(row.clone()), *version);
        }
        Ok(found)
    }

    /// None: no cache.
    fn lookup<T: Cacheable>(&self, id: Uuid, wanted: i64) -> Option<Lookup<'_, T>> {
        let mut inner = self.lock()?;
        if inner.listening
            && let Some(entry) = inner.rows.get(&id)
            && entry.version >= wanted
            && let Some(row) = T::from_row(&entry.row)
        {
            let version = entry.version;
            self.metrics.hits.inc();
            return Some(Lookup::Hit(row, version));
        }
        self.metrics.misses.inc();
        if !inner.listening {
            return Some(Lookup::Miss(Ticket { cache: self, id, seq: None }));
        }
        let seq = inner.seq;
        inner.loading.entry(id).or_insert(Loading { loads: 0, announced: i64::MIN, announced_at: 0 }).loads += 1;
        Some(Lookup::Miss(Ticket { cache: self, id, seq: Some(seq) }))
    }
}

enum Lookup<'a, T> {
    Hit(Arc<T>, i64),
    Miss(Ticket<'a>),
}

/// A load under way: what it finds may be kept ([`Ticket::keep`]); dropping it (the
/// load failed or the request went away) ends its record either way.
struct Ticket<'a> {
    cache: &'a ViewCache,
    id: Uuid,
    /// The sequence number when the load began (None: not listening, keep nothing).
    seq: Option<u64>,
}

impl Ticket<'_> {
    fn keep(&self, row: Row, version: i64) {
        let Some(began) = self.seq else { return };
        let Some(mut inner) = self.cache.lock() else { return };
        let inner = &mut *inner;
        if !inner.listening || inner.cleared_at > began {
            return;
        }
        // an announcement during the load that reaches the version loaded: the row may
        // be older than what is announced (or rewritten at that version)
        if let Some(loading) = inner.loading.get(&self.id)
            && loading.announced_at > began
            && loading.announced >= version
        {
            return;
        }
        if inner.rows.peek(&self.id).is_some_and(|entry| entry.version >= version) {
            return;
        }
        if let Some((evicted, _)) = inner.rows.push(self.id, Entry { version, row })
            && evicted != self.id
        {
            self.cache.metrics.evictions.inc();
        }
        self.cache.metrics.entries.set(inner.rows.len() as i64);
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.seq.is_none() {
            return;
        }
        let Some(mut inner) = self.cache.lock() else { return };
        if let Some(loading) = inner.loading.get_mut(&self.id) {
            loading.loads -= 1;
            if loading.loads == 0 {
                inner.loading.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bank_api::views::AccountRow;

    fn cache(capacity: usize) -> ViewCache {
        let cache = ViewCache::new(capacity, CacheMetrics::new().unwrap());
        cache.resume();
        cache
    }

    fn account(id: Uuid, version: i32) -> AccountDetail {
        let now = chrono::Utc::now();
        AccountDetail {
            account: AccountRow {
                id,
                owner: "alice".into(),
                currency: "EUR".into(),
                status: "open".into(),
                balance: i64::from(version) * 10,
                version,
                opened_at: now,
                updated_at: now,
            },
            recent_transactions: Vec::new(),
        }
    }

    /// Reads `id` through the cache; a load answers `version`.
    async fn read(cache: &ViewCache, id: Uuid, wanted: i64, version: i32) -> i64 {
        let found = cache
            .get_or_load(id, wanted, || async move { Ok::<_, ()>(Some((account(id, version), i64::from(version)))) })
            .await
            .unwrap();
        found.unwrap().1
    }

    #[tokio::test]
    async fn hits_misses_and_versions() {
        let cache = cache(10);
        let id = Uuid::now_v7();
        assert_eq!(read(&cache, id, 0, 3).await, 3);
        assert_eq!((cache.metrics.hits.get(), cache.metrics.misses.get()), (0, 1));
        // the load's answer is not used: the entry is
        assert_eq!(read(&cache, id, 0, 4).await, 3);
        assert_eq!(read(&cache, id, 3, 4).await, 3);
        assert_eq!(cache.metrics.hits.get(), 2);
        // older than asked: loaded, and the newer row replaces it
        assert_eq!(read(&cache, id, 4, 4).await, 4);
        assert_eq!(cache.version_of(id), Some(4));
        assert_eq!(cache.metrics.misses.get(), 2);
    }

    #[tokio::test]
    async fn an_announcement_drops_an_entry_at_or_below_it() {
        let cache = cache(10);
        let id = Uuid::now_v7();
        read(&cache, id, 0, 3).await;
        cache.announce(id, 2);
        assert_eq!(cache.version_of(id), Some(3), "an older announcement changes nothing");
        cache.announce(id, 3);
        assert_eq!(cache.version_of(id), None, "the same version may be a rewrite");
        read(&cache, id, 0, 4).await;
        cache.announce(id, 5);
        assert_eq!(cache.version_of(id), None);
    }

    #[tokio::test]
    async fn a_load_overtaken_by_an_announcement_is_not_kept() {
        let cache = cache(10);
        let id = Uuid::now_v7();
        // the load reads version 3, then version 4 is announced before it finishes
        let found = cache
            .get_or_load(id, 0, || async {
                cache.announce(id, 4);
                Ok::<_, ()>(Some((account(id, 3), 3)))
            })
            .await
            .unwrap();
        assert_eq!(found.unwrap().1, 3, "answered (it was current when read)");
        assert_eq!(cache.version_of(id), None, "but not kept");
        // the same version announced meanwhile: not kept either (a rewrite?)
        cache
            .get_or_load(id, 0, || async {
                cache.announce(id, 4);
                Ok::<_, ()>(Some((account(id, 4), 4)))
            })
            .await
            .unwrap();
        assert_eq!(cache.version_of(id), None);
        // an older announcement meanwhile does not stop a newer row
        cache
            .get_or_load(id, 0, || async {
                cache.announce(id, 4);
                Ok::<_, ()>(Some((account(id, 5), 5)))
            })
            .await
            .unwrap();
        assert_eq!(cache.version_of(id), Some(5));
        // a slow load never replaces a newer entry
        let slow = cache.get_or_load(id, 6, || async {
            // a faster read puts version 7 meanwhile
            read(&cache, id, 7, 7).await;
            Ok::<_, ()>(Some((account(id, 6), 6)))
        });
        assert_eq!(slow.await.unwrap().unwrap().1, 6);
        assert_eq!(cache.version_of(id), Some(7));
        assert!(cache.inner.as_ref().unwrap().lock().unwrap().loading.is_empty(), "loads end their records");
    }

    #[tokio::test]
    async fn not_listening_serves_and_keeps_nothing() {
        let cache = cache(10);
        let id = Uuid::now_v7();
        read(&cache, id, 0, 3).await;
        // the connection drops during a load
        cache
            .get_or_load(id, 9, || async {
                cache.suspend();
                Ok::<_, ()>(Some((account(id, 4), 4)))
            })
            .await
            .unwrap();
        assert!(cache.is_empty());
        assert_eq!(read(&cache, id, 0, 5).await, 5);
        assert!(cache.is_empty());
        let hits = cache.metrics.hits.get();
        // back: a load begun before the reconnection keeps nothing either
        cache
            .get_or_load(id, 0, || async {
                cache.resume();
                Ok::<_, ()>(Some((account(id, 6), 6)))
            })
            .await
            .unwrap();
        assert!(cache.is_empty());
        assert_eq!(read(&cache, id, 0, 7).await, 7);
        assert_eq!(read(&cache, id, 0, 8).await, 7);
        assert_eq!(cache.metrics.hits.get(), hits + 1);
    }

    #[tokio::test]
    async fn the_least_recently_used_goes_first() {
        let cache = cache(2);
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        read(&cache, a, 0, 1).await;
        read(&cache, b, 0, 1).await;
        read(&cache, a, 0, 1).await;
        read(&cache, c, 0, 1).await;
        assert_eq!((cache.version_of(a), cache.version_of(b), cache.version_of(c)), (Some(1), None, Some(1)));
        assert_eq!(cache.metrics.evictions.get(), 1);
        assert_eq!(cache.metrics.entries.get(), 2);
    }

    #[tokio::test]
    async fn size_zero_is_no_cache() {
        let cache = cache(0);
        let id = Uuid::now_v7();
        read(&cache, id, 0, 1).await;
        assert_eq!(read(&cache, id, 0, 2).await, 2);
        assert_eq!(cache.metrics.hits.get() + cache.metrics.misses.get(), 0);
    }
}
