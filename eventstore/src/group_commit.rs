//! Group commit: concurrent appends to different streams share one statement and
//! one commit.
//!
//! Commands hand their append to a queue; a few writer tasks each take what is
//! waiting (up to a maximum) and append it with [`EventStore::append_batch`]. Under
//! load a commit carries many appends, so Postgres flushes WAL and runs commit
//! processing once for all of them, and the service makes one round trip instead of
//! many; an idle system sees a batch of one, so latency does not grow. Semantics are
//! those of single appends: each append gets its own result, a conflict of one never
//! fails another, and a caller that stops waiting does not cancel a queued append
//! (exactly like a dropped single append whose statement was already sent).

use crate::store::{Append, Appended, EventStore, StoreError};
use std::sync::Arc;
use tokio::sync::{Mutex, mpsc, oneshot};

struct Job {
    append: Append,
    reply: oneshot::Sender<Result<Appended, StoreError>>,
}

/// The queue in front of the store. Cheap to clone; the writers stop when the last
/// clone is dropped.
#[derive(Clone)]
pub struct GroupCommit {
    queue: mpsc::Sender<Job>,
}

impl GroupCommit {
    /// Starts `writers` writer tasks (each holds at most one connection at a time),
    /// batching at most `max_batch` appends per statement. Needs a Tokio runtime.
    pub fn spawn(store: EventStore, writers: usize, max_batch: usize) -> Self {
        let (queue, receiver) = mpsc::channel(writers.max(1) * max_batch.max(1) * 4);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..writers.max(1) {
            tokio::spawn(write(store.clone(), receiver.clone(), max_batch.max(1)));
        }
        GroupCommit { queue }
    }

    /// Appends through the queue and waits for this append's own result.
    pub async fn append(&self, append: Append) -> Result<Appended, StoreError> {
        let (reply, result) = oneshot::channel();
        let stopped = || StoreError::Corrupt("the append queue has stopped".into());
        self.queue.send(Job { append, reply }).await.map_err(|_| stopped())?;
        result.await.map_err(|_| stopped())?
    }
}

async fn write(store: EventStore, receiver: Arc<Mutex<mpsc::Receiver<Job>>>, max_batch: usize) {
    let mut carried: Option<Job> = None;
    loop {
        let mut batch: Vec<Job> = Vec::new();
        {
            let mut receiver = receiver.lock().await;
            let first = match carried.take() {
                Some(job) => job,
                None => match receiver.recv().await {
                    Some(job) => job,
                    None => return,
                },
            };
            batch.push(first);
            while batch.len() < max_batch {
                let Ok(job) = receiver.try_recv() else { break };
                // one append per stream per statement (a snapshot upsert may touch a row once)
                if batch.iter().any(|b| b.append.stream_id == job.append.stream_id) {
                    carried = Some(job);
                    break;
                }
                batch.push(job);
            }
        }
        // the same order in every instance, so two batches never wait on each other
        // in a cycle (Postgres would abort both as a deadlock)
        batch.sort_by_key(|job| job.append.stream_id);
        let (appends, replies): (Vec<Append>, Vec<_>) = batch.into_iter().map(|j| (j.append, j.reply)).unzip();
        match store.append_batch(&appends).await {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(error) => {
                tracing::warn!(%error, appends = appends.len(), "a batch of appends failed");
                for reply in replies {
                    let _ = reply.send(Err(error.shared()));
                }
            }
        }
    }
}
