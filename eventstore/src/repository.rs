//! Runs commands against aggregates.
//!
//! Each command runs in a task of its own (it finishes even when its caller stops
//! waiting) and: takes the stream's in-process lock (commands on one stream run one
//! at a time in this process, so commuting commands such as deposits never conflict
//! with each other here); replays an Idempotency-Key's stored response if there is
//! one; takes the state from the cache or loads it (snapshot + tail); decides; and
//! appends the events, the snapshot when due and the idempotency record in one
//! statement, through the group-commit queue. A conflict (another process wrote the
//! stream) drops the cached state, reloads and decides again, a bounded number of
//! times.
//!
//! The cache only ever holds a state that was committed, so it can be behind the
//! store but never ahead of it: an accepted command then conflicts and re-runs, and a
//! refusal or an empty decision (which appends nothing, so nothing would conflict)
//! decided on the cache is decided again on the store's state.

use crate::aggregate::Aggregate;
use crate::envelope::EventMetadata;
use crate::group_commit::GroupCommit;
use crate::metrics::StoreMetrics;
use crate::store::{Append, EventStore, IdempotencyWrite, Loaded, NewEvent, SnapshotWrite, StoreError};
use crate::watches::StreamWatches;
use rand::Rng;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

/// Tuning of a [`Repository`].
#[derive(Debug, Clone, Copy)]
pub struct RepositoryConfig {
    /// Write a snapshot whenever a stream's version crosses a multiple of this.
    pub snapshot_every: u32,
    /// How many times a command runs before a conflict is reported (409).
    pub max_attempts: u32,
    /// Streams whose state is kept in memory (0 disables the cache).
    pub cache_capacity: usize,
    /// Writer tasks of the group-commit queue (0: every command appends on its own).
    pub append_writers: usize,
    /// Most appends one group commit carries.
    pub append_batch_max: usize,
}

impl Default for RepositoryConfig {
    fn default() -> Self {
        RepositoryConfig {
            snapshot_every: 100,
            max_attempts: 5,
            cache_capacity: 100_000,
            append_writers: 1,
            append_batch_max: 64,
        }
    }
}

/// The Idempotency-Key of a request.
#[derive(Debug, Clone)]
pub struct IdempotencyRequest {
    pub actor: String,
    pub key: String,
    /// Hash of what the request asked (method, path, canonical body).
    pub request_hash: String,
    /// Skip the look-up before deciding: a repeat is caught when its append meets the
    /// record's unique key (the stored answer is then returned), and looked up when
    /// the decision refuses or decides nothing. For callers whose repeats are rare (a
    /// river's redeliveries): one round trip less per command.
    pub optimistic: bool,
}

/// Who asks, and under which conditions.
#[derive(Debug, Clone, Default)]
pub struct CommandContext {
    pub metadata: EventMetadata,
    pub idempotency: Option<IdempotencyRequest>,
    /// Refuse the command unless the stream is at exactly this version.
    pub expected_version: Option<i32>,
}

/// The answer of a command, as given the first time: an opaque document that the
/// caller builds from the new state (the HTTP layer decides how to send it).
#[derive(Debug, Clone, PartialEq)]
pub struct CommandReply {
    pub body: serde_json::Value,
    /// True when this is a stored response replayed for a repeated Idempotency-Key.
    pub replayed: bool,
}

/// Why a command was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError<E> {
    #[error("command rejected: {0}")]
    Domain(E),
    #[error("stream is at version {current}, not {expected}")]
    VersionMismatch { current: i32, expected: i32 },
    #[error("still conflicting after {attempts} attempts")]
    Conflict { attempts: u32 },
    #[error("the Idempotency-Key was used for another request")]
    IdempotencyMismatch,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The answer a command's caller waits for.
type Outcome<A> = Result<CommandReply, ExecuteError<<A as Aggregate>::Error>>;
/// How a command's answer is built from the new state and version.
type ReplyFn<A> = Box<dyn Fn(&A, i32) -> serde_json::Value + Send + Sync>;

/// A command waiting for its stream's lock.
struct Job<A: Aggregate> {
    fresh: bool,
    command: A::Command,
    ctx: CommandContext,
    reply: ReplyFn<A>,
    answer: tokio::sync::oneshot::Sender<Outcome<A>>,
}

/// A stream's lock with its cached state, and the commands waiting for it: whoever
/// takes the lock runs every command queued by then.
struct StreamSlot<A: Aggregate> {
    state: tokio::sync::Mutex<Option<Loaded<A>>>,
    queue: Mutex<Vec<Job<A>>>,
}

impl<A: Aggregate> Default for StreamSlot<A> {
    fn default() -> Self {
        StreamSlot { state: tokio::sync::Mutex::new(None), queue: Mutex::new(Vec::new()) }
    }
}

type Slot<A> = Arc<StreamSlot<A>>;
/// The per-stream slots, in shards so that looking one up locks only its shard.
type Slots<A> = Arc<[Mutex<HashMap<Uuid, Slot<A>>>]>;

/// Runs commands of one aggregate type. Cheap to clone; clones share the cache.
pub struct Repository<A: Aggregate> {
    store: EventStore,
    config: RepositoryConfig,
    metrics: StoreMetrics,
    shards: Slots<A>,
    group_commit: Option<GroupCommit>,
    /// Told the new version of each stream this repository appends to.
    watches: Arc<StreamWatches>,
}

impl<A: Aggregate> Clone for Repository<A> {
    fn clone(&self) -> Self {
        Repository {
            store: self.store.clone(),
            config: self.config,
            metrics: self.metrics.clone(),
            shards: self.shards.clone(),
            group_commit: self.group_commit.clone(),
            watches: self.watches.clone(),
        }
    }
}

const SHARDS: usize = 64;
/// Most commands of one stream that run together (and share one append).
const MAX_TOGETHER: usize = 64;

/// What came of running several commands of one stream together.
enum Together {
    /// One append carried them all: the new version, each command's answer.
    Done(i32, Vec<serde_json::Value>),
    /// They did not go together (a refusal, nothing to do, a conflict, a key taken):
    /// each runs alone.
    Alone,
    /// A fault whose outcome is unknown: every command is answered with it.
    Failed(StoreError),
}

impl<A: Aggregate> Repository<A> {
    /// A repository over `store`. With `append_writers > 0` it starts the group-commit
    /// writers, so it must be created inside a Tokio runtime.
    pub fn new(store: EventStore, config: RepositoryConfig, metrics: StoreMetrics) -> Self {
        let shards = (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect::<Vec<_>>();
        let group_commit = (config.append_writers > 0)
            .then(|| GroupCommit::spawn(store.clone(), config.append_writers, config.append_batch_max));
        Repository {
            store,
            config: RepositoryConfig { max_attempts: config.max_attempts.max(1), ..config },
            metrics,
            shards: shards.into(),
            group_commit,
            watches: Arc::default(),
        }
    }

    async fn append(&self, append: Append) -> Result<crate::store::Appended, StoreError> {
        match &self.group_commit {
            Some(queue) => queue.append(append).await,
            None => self.store.append(&append).await,
        }
    }

    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// The counters this repository reports to.
    pub fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }

    /// The versions this repository's appends reach, announced as they commit: a
    /// reader can wait on them for a stream to move on (appends by other processes
    /// are not announced here).
    pub fn watches(&self) -> &Arc<StreamWatches> {
        &self.watches
    }

    /// Runs a command on an existing (or not yet existing) stream. `reply` builds the
    /// response from the new state and version; it is stored with an Idempotency-Key.
    pub async fn execute(
        &self,
        stream_id: Uuid,
        command: A::Command,
        ctx: CommandContext,
        reply: impl Fn(&A, i32) -> serde_json::Value + Send + Sync + 'static,
    ) -> Result<CommandReply, ExecuteError<A::Error>> {
        self.run(stream_id, false, command, ctx, reply).await
    }

    /// Runs a command that creates a stream under a fresh id: nothing to load.
    pub async fn create(
        &self,
        stream_id: Uuid,
        command: A::Command,
        ctx: CommandContext,
        reply: impl Fn(&A, i32) -> serde_json::Value + Send + Sync + 'static,
    ) -> Result<CommandReply, ExecuteError<A::Error>> {
        self.run(stream_id, true, command, ctx, reply).await
    }

    /// The stored answer of an earlier request with this Idempotency-Key, if any (an
    /// error when the key was used for another request). For handlers that check more
    /// than the aggregate before running a command: a replay must not be re-validated.
    pub async fn replay(&self, ctx: &CommandContext) -> Result<Option<CommandReply>, ExecuteError<A::Error>> {
        self.stored_reply(ctx).await
    }

    /// A command runs to its end in a task of its own, even when its caller stops
    /// waiting (the client went away, the request timed out): the stream stays locked
    /// until the outcome is known and cached, so the next command on the stream (a
    /// retry with the same Idempotency-Key among them) sees that outcome.
    async fn run(
        &self,
        stream_id: Uuid,
        fresh: bool,
        command: A::Command,
        ctx: CommandContext,
        reply: impl Fn(&A, i32) -> serde_json::Value + Send + Sync + 'static,
    ) -> Result<CommandReply, ExecuteError<A::Error>> {
        let this = self.clone();
        let reply: ReplyFn<A> = Box::new(reply);
        let task = tokio::spawn(async move { this.run_to_end(stream_id, fresh, command, ctx, reply).await });
        match task.await {
            Ok(result) => result,
            Err(failed) => Err(StoreError::Corrupt(format!("the command task failed: {failed}")).into()),
        }
    }

    /// Queues the command on its stream, takes the stream's lock and runs every
    /// command queued by then (its own, unless an earlier holder ran it already): one
    /// alone, several of one stream together when they can share one append
    /// ([`Repository::run_together`]).
    async fn run_to_end(
        &self,
        stream_id: Uuid,
        fresh: bool,
        command: A::Command,
        ctx: CommandContext,
        reply: ReplyFn<A>,
    ) -> Outcome<A> {
        let slot = self.slot(stream_id);
        let (answer, mut answered) = tokio::sync::oneshot::channel();
        let job = Job { fresh, command, ctx, reply, answer };
        slot.queue.lock().unwrap_or_else(|p| p.into_inner()).push(job);
        let unanswered = || StoreError::Corrupt("a command was dropped unanswered".into()).into();
        // answered by a holder that ran it already: done, without waiting for the lock
        // (every command still queued has a caller waiting for the lock, who runs it)
        let mut cached = tokio::select! {
            biased;
            outcome = &mut answered => return outcome.unwrap_or_else(|_| Err(unanswered())),
            cached = slot.state.lock() => cached,
        };
        let jobs: Vec<Job<A>> = {
            let mut queue = slot.queue.lock().unwrap_or_else(|p| p.into_inner());
            let take = queue.len().min(MAX_TOGETHER);
            queue.drain(..take).collect()
        };
        let mut announce = None;
        if jobs.len() == 1 {
            for job in jobs {
                let (outcome, version) = self.run_one(stream_id, &mut cached, &job).await;
                announce = version;
                let _ = job.answer.send(outcome);
            }
        } else if !jobs.is_empty() {
            announce = self.run_together(stream_id, &mut cached, jobs).await;
        }
        // unlocked first: a woken reader may take the state from the cache
        drop(cached);
        if let Some(version) = announce {
            self.watches.announce(stream_id, i64::from(version));
        }
        answered.await.unwrap_or_else(|_| Err(unanswered()))
    }

    /// Runs commands of one stream queued together. Each Idempotency-Key is looked up
    /// first (a repeat is answered as stored). When every other command decides events
    /// on the state in turn, they go in one append (one commit; each event keeps its
    /// command's metadata, each key its record); otherwise, or when that append
    /// conflicts or meets a key taken meanwhile, each runs alone as if it had come
    /// alone. Returns the version to announce.
    async fn run_together(&self, stream_id: Uuid, cached: &mut Option<Loaded<A>>, jobs: Vec<Job<A>>) -> Option<i32> {
        let mut pending = Vec::with_capacity(jobs.len());
        for job in jobs {
            let optimistic = job.ctx.idempotency.as_ref().is_none_or(|i| i.optimistic);
            if !optimistic {
                match self.stored_reply(&job.ctx).await {
                    Ok(None) => {}
                    Ok(Some(stored)) => {
                        let _ = job.answer.send(Ok(stored));
                        continue;
                    }
                    Err(e) => {
                        let _ = job.answer.send(Err(e));
                        continue;
                    }
                }
            }
            pending.push(job);
        }
        let together = pending.len() > 1 && pending.iter().all(|j| !j.fresh && j.ctx.expected_version.is_none());
        if together {
            match self.append_together(stream_id, cached, &pending).await {
                Together::Done(version, bodies) => {
                    for (job, body) in pending.into_iter().zip(bodies) {
                        let _ = job.answer.send(Ok(CommandReply { body, replayed: false }));
                    }
                    return Some(version);
                }
                Together::Failed(error) => {
                    for job in pending {
                        let _ = job.answer.send(Err(error.shared().into()));
                    }
                    return None;
                }
                Together::Alone => {}
            }
        }
        let mut announce = None;
        for job in pending {
            let (outcome, version) = self.run_one(stream_id, cached, &job).await;
            announce = version.or(announce);
            let _ = job.answer.send(outcome);
        }
        announce
    }

    /// The commands' events in one append, when each decides events in turn.
    async fn append_together(&self, stream_id: Uuid, cached: &mut Option<Loaded<A>>, jobs: &[Job<A>]) -> Together {
        let loaded = match cached.take() {
            Some(loaded) => loaded,
            None => match self.load(stream_id).await {
                Ok(loaded) => loaded,
                Err(e) => return Together::Failed(e),
            },
        };
        let (mut state, mut version) = (loaded.state.clone(), loaded.version);
        let (mut events, mut bodies, mut keys) = (Vec::new(), Vec::new(), Vec::new());
        for job in jobs {
            let decided = match state.decide(&job.command) {
                Ok(decided) if !decided.is_empty() => decided,
                // a refusal or nothing to do is decided alone, on the store's state
                _ => {
                    *cached = Some(loaded);
                    return Together::Alone;
                }
            };
            state = state.apply_all(&decided);
            version += decided.len() as i32;
            let body = (job.reply)(&state, version);
            for event in &decided {
                match NewEvent::from_domain(event) {
                    Ok(new) => events.push(NewEvent { metadata: Some(job.ctx.metadata.clone()), ..new }),
                    Err(e) => {
                        *cached = Some(loaded);
                        return Together::Failed(e.into());
                    }
                }
            }
            if let Some(i) = &job.ctx.idempotency {
                keys.push(IdempotencyWrite {
                    actor: i.actor.clone(),
                    key: i.key.clone(),
                    request_hash: i.request_hash.clone(),
                    body: body.clone(),
                });
            }
            bodies.push(body);
        }
        let count = events.len() as u64;
        let append = match self.snapshot_due(loaded.version, version, &state) {
            Ok(snapshot) => Append {
                stream_id,
                stream_type: A::STREAM_TYPE,
                expected_version: loaded.version,
                events,
                metadata: jobs[0].ctx.metadata.clone(),
                snapshot,
                idempotency: keys,
            },
            Err(e) => {
                *cached = Some(loaded);
                return Together::Failed(e);
            }
        };
        match self.append(append).await {
            Ok(_) => {
                self.metrics.appends.with_label_values(&[A::STREAM_TYPE]).inc();
                self.metrics.events.with_label_values(&[A::STREAM_TYPE]).inc_by(count);
                *cached = self.keep(Loaded { state, version });
                Together::Done(version, bodies)
            }
            // another process wrote the stream: each command runs alone (and reloads)
            Err(StoreError::Conflict { .. }) => {
                self.metrics.conflicts.with_label_values(&[A::STREAM_TYPE]).inc();
                Together::Alone
            }
            // nothing was written; the command whose key was taken learns it alone
            Err(StoreError::IdempotencyKeyTaken) => {
                *cached = Some(loaded);
                Together::Alone
            }
            // the outcome is unknown: the cache stays empty, the next command reloads
            Err(e) => Together::Failed(e),
        }
    }

    /// Runs one command under its stream's lock (`cached` is the stream's cached
    /// state); returns its outcome and the version to announce.
    async fn run_one(
        &self,
        stream_id: Uuid,
        cached: &mut Option<Loaded<A>>,
        job: &Job<A>,
    ) -> (Outcome<A>, Option<i32>) {
        match self.run_one_inner(stream_id, cached, job).await {
            Ok((reply, version)) => (Ok(reply), version),
            Err(e) => (Err(e), None),
        }
    }

    async fn run_one_inner(
        &self,
        stream_id: Uuid,
        cached: &mut Option<Loaded<A>>,
        job: &Job<A>,
    ) -> Result<(CommandReply, Option<i32>), ExecuteError<A::Error>> {
        let Job { fresh, command, ctx, reply, .. } = job;
        let fresh = *fresh;
        // under the stream's lock: an earlier request with this key on this stream has ended
        let optimistic = ctx.idempotency.as_ref().is_some_and(|i| i.optimistic);
        if !optimistic && let Some(stored) = self.stored_reply(ctx).await? {
            return Ok((stored, None));
        }
        let mut fresh = fresh;
        for attempt in 1..=self.config.max_attempts {
            let (mut loaded, mut from_store) = match cached.take() {
                Some(loaded) => (loaded, false),
                None if fresh => (Loaded::new_stream(), true),
                None => (self.load(stream_id).await?, true),
            };
            fresh = false;
            let mut decided = loaded.state.decide(command);
            let mismatch = |loaded: &Loaded<A>| ctx.expected_version.filter(|expected| *expected != loaded.version);
            let nothing = decided.as_ref().is_ok_and(|events| events.is_empty());
            if !from_store && (decided.is_err() || nothing || mismatch(&loaded).is_some()) {
                // a refusal, or deciding nothing, must not rest on a cached state another
                // instance has overtaken: an empty decision appends nothing, so no version
                // check would catch it
                loaded = self.load(stream_id).await?;
                from_store = true;
                decided = loaded.state.decide(command);
            }
            debug_assert!(from_store || (decided.as_ref().is_ok_and(|e| !e.is_empty()) && mismatch(&loaded).is_none()));
            if optimistic && !decided.as_ref().is_ok_and(|events| !events.is_empty()) {
                // a refusal or nothing to do may be a repeat of a request that succeeded
                if let Some(stored) = self.stored_reply(ctx).await? {
                    *cached = self.keep(loaded);
                    return Ok((stored, None));
                }
            }
            let events = match decided {
                Ok(events) => events,
                Err(e) => {
                    *cached = self.keep(loaded);
                    return Err(ExecuteError::Domain(e));
                }
            };
            // after the decision, so that not-found and not-yours come first
            if let Some(expected) = mismatch(&loaded) {
                let current = loaded.version;
                *cached = self.keep(loaded);
                return Err(ExecuteError::VersionMismatch { current, expected });
            }
            if events.is_empty() {
                // nothing happens (e.g. an idempotent saga step seen before)
                let body = reply(&loaded.state, loaded.version);
                *cached = self.keep(loaded);
                return Ok((CommandReply { body, replayed: false }, None));
            }

            let new_version = loaded.version + events.len() as i32;
            let new_state = loaded.state.clone().apply_all(&events);
            let body = reply(&new_state, new_version);
            let append = self.build_append(stream_id, loaded.version, &events, &new_state, ctx, &body)?;
            match self.append(append).await {
                Ok(_) => {
                    self.metrics.appends.with_label_values(&[A::STREAM_TYPE]).inc();
                    self.metrics.events.with_label_values(&[A::STREAM_TYPE]).inc_by(events.len() as u64);
                    *cached = self.keep(Loaded { state: new_state, version: new_version });
                    return Ok((CommandReply { body, replayed: false }, Some(new_version)));
                }
                Err(StoreError::Conflict { .. }) => {
                    self.metrics.conflicts.with_label_values(&[A::STREAM_TYPE]).inc();
                    if attempt < self.config.max_attempts {
                        self.metrics.retries.with_label_values(&[A::STREAM_TYPE]).inc();
                        let pause = rand::rng().random_range(1..=5 * attempt as u64);
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                    }
                }
                Err(StoreError::IdempotencyKeyTaken) => {
                    // a concurrent request with the same key won; answer as it did
                    return match self.stored_reply(ctx).await? {
                        Some(stored) => Ok((stored, None)),
                        None => Err(StoreError::Corrupt("idempotency record vanished".into()).into()),
                    };
                }
                // the outcome is unknown: the cache stays empty, the next command reloads
                Err(e) => return Err(e.into()),
            }
        }
        Err(ExecuteError::Conflict { attempts: self.config.max_attempts })
    }

    async fn load(&self, stream_id: Uuid) -> Result<Loaded<A>, StoreError> {
        Ok(self.store.load::<A>(stream_id).await?.unwrap_or_else(Loaded::new_stream))
    }

    #[allow(clippy::too_many_arguments)]
    fn build_append(
        &self,
        stream_id: Uuid,
        expected_version: i32,
        events: &[A::Event],
        new_state: &A,
        ctx: &CommandContext,
        body: &serde_json::Value,
    ) -> Result<Append, StoreError> {
        let new_version = expected_version + events.len() as i32;
        let snapshot = self.snapshot_due(expected_version, new_version, new_state)?;
        Ok(Append {
            stream_id,
            stream_type: A::STREAM_TYPE,
            expected_version,
            events: events.iter().map(NewEvent::from_domain).collect::<Result<_, _>>()?,
            metadata: ctx.metadata.clone(),
            snapshot,
            idempotency: ctx
                .idempotency
                .iter()
                .map(|i| IdempotencyWrite {
                    actor: i.actor.clone(),
                    key: i.key.clone(),
                    request_hash: i.request_hash.clone(),
                    body: body.clone(),
                })
                .collect(),
        })
    }

    /// The snapshot to write when a stream goes from `from` to `to`: one whenever it
    /// crosses a multiple of `snapshot_every`.
    fn snapshot_due(&self, from: i32, to: i32, state: &A) -> Result<Option<SnapshotWrite>, StoreError> {
        let every = self.config.snapshot_every.max(1) as i32;
        if self.config.snapshot_every == 0 || to / every == from / every {
            return Ok(None);
        }
        let state = serde_json::to_value(state).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(Some(SnapshotWrite { version: to, schema_version: A::SNAPSHOT_SCHEMA_VERSION, state }))
    }

    async fn stored_reply(&self, ctx: &CommandContext) -> Result<Option<CommandReply>, ExecuteError<A::Error>> {
        let Some(idem) = &ctx.idempotency else { return Ok(None) };
        match self.store.find_idempotent_response(&idem.actor, &idem.key).await? {
            None => Ok(None),
            Some(stored) if stored.request_hash == idem.request_hash => {
                self.metrics.idempotent_replays.with_label_values(&[A::STREAM_TYPE]).inc();
                Ok(Some(CommandReply { body: stored.body, replayed: true }))
            }
            Some(_) => Err(ExecuteError::IdempotencyMismatch),
        }
    }

    fn keep(&self, loaded: Loaded<A>) -> Option<Loaded<A>> {
        (self.config.cache_capacity > 0).then_some(loaded)
    }

    /// The state this repository holds in memory for `stream_id`, if any and if no
    /// command is running on it right now. Always a committed state, but other
    /// instances may have moved the stream on since: a reader may answer from it only
    /// what a version at least this old satisfies (e.g. a wait for `min_version`).
    pub fn cached(&self, stream_id: Uuid) -> Option<Loaded<A>> {
        let shard = &self.shards[(stream_id.as_u128() % SHARDS as u128) as usize];
        let slot = shard.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(&stream_id).cloned()?;
        let cached = slot.state.try_lock().ok()?;
        cached.as_ref().map(|loaded| Loaded { state: loaded.state.clone(), version: loaded.version })
    }

    /// The stream's lock (and cached state). Idle slots are evicted when a shard is full.
    fn slot(&self, stream_id: Uuid) -> Slot<A> {
        let shard = &self.shards[(stream_id.as_u128() % SHARDS as u128) as usize];
        let mut map = shard.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(slot) = map.get(&stream_id) {
            return slot.clone();
        }
        let cap = (self.config.cache_capacity / SHARDS).max(16);
        if map.len() >= cap {
            // drop idle slots (held by nobody but the map) until half the room is free
            let mut excess = map.len() - cap / 2;
            map.retain(|_, slot| {
                if excess > 0 && Arc::strong_count(slot) == 1 {
                    excess -= 1;
                    false
                } else {
                    true
                }
            });
        }
        map.entry(stream_id).or_default().clone()
    }
}
