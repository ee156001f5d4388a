//! Publishing to Kinesis without ever reordering a stream.
//!
//! PutRecords may fail some records and accept the rest, so two records of one
//! partition key in one request could land in the wrong order if the first failed and
//! the second did not. A request therefore carries at most one record per stream (the
//! stream's oldest unacknowledged one); the next record of a stream goes out only after
//! the previous one was acknowledged. Records of different streams share requests (up
//! to 500 records and 5 MB). One stream alone is published at one record per round
//! trip, which is about Kinesis's own limit of 1,000 records/s per shard.

use super::TailerMetrics;
use crate::envelope::{Envelope, RecordedEvent};
use crate::rapids::Rapids;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use std::collections::HashSet;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const MAX_RECORDS: usize = 500;
const MAX_BYTES: usize = 5 * 1024 * 1024;
/// Kinesis refuses a record whose data and partition key exceed 1 MiB.
const MAX_RECORD_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("stopped before Kinesis acknowledged every record")]
    Stopped,
    #[error("a record does not serialize: {0}")]
    Encode(String),
    /// Permanent: the tailer cannot go past this event. Publishing stops (loudly)
    /// rather than skip it; events are small by construction (the HTTP body limit).
    #[error("event {0} is larger than Kinesis accepts (1 MiB)")]
    TooLarge(uuid::Uuid),
}

/// The records of the next request: the oldest pending record of each stream, in
/// commit order, within the request limits. A stream whose oldest record does not fit
/// sends nothing this round, so none of its later records can overtake it.
fn next_request(pending: &[(String, Vec<u8>)]) -> Vec<usize> {
    let mut keys = HashSet::new();
    let mut chosen = Vec::new();
    let mut bytes = 0;
    for (i, (key, data)) in pending.iter().enumerate() {
        if !keys.insert(key.as_str()) {
            continue;
        }
        if chosen.len() < MAX_RECORDS && bytes + data.len() + key.len() <= MAX_BYTES {
            bytes += data.len() + key.len();
            chosen.push(i);
        }
    }
    chosen
}

pub struct Publisher {
    rapids: Rapids,
}

impl Publisher {
    pub fn new(rapids: Rapids) -> Self {
        Publisher { rapids }
    }

    /// Returns once Kinesis acknowledged every event (retrying failed records and
    /// calls with backoff), or when `shutdown` stops it first.
    pub async fn publish(
        &self,
        events: &[RecordedEvent],
        metrics: &TailerMetrics,
        shutdown: &CancellationToken,
    ) -> Result<(), PublishError> {
        let mut pending: Vec<(String, Vec<u8>)> = events
            .iter()
            .map(|e| {
                let key = e.stream_id.to_string();
                serde_json::to_vec(&Envelope::from(e.clone()))
                    .map(|data| (key, data))
                    .map_err(|err| PublishError::Encode(err.to_string()))
            })
            .collect::<Result<_, _>>()?;
        for (event, (key, data)) in events.iter().zip(&pending) {
            if data.len() + key.len() > MAX_RECORD_BYTES {
                return Err(PublishError::TooLarge(event.event_id));
            }
        }
        let mut failures = 0u32;
        while !pending.is_empty() {
            let chosen = next_request(&pending);
            let entries = chosen
                .iter()
                .map(|&i| {
                    PutRecordsRequestEntry::builder()
                        .partition_key(pending[i].0.clone())
                        .data(Blob::new(pending[i].1.clone()))
                        .build()
                        .map_err(|e| PublishError::Encode(e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let started = std::time::Instant::now();
            let sent = self
                .rapids
                .client()
                .put_records()
                .stream_name(self.rapids.stream())
                .set_records(Some(entries))
                .send()
                .await;
            metrics.put_seconds.observe(started.elapsed().as_secs_f64());
            let mut acknowledged = vec![false; pending.len()];
            let mut any_failed = false;
            match sent {
                Ok(output) => {
                    for (j, result) in output.records().iter().enumerate() {
                        if result.error_code().is_none() && result.sequence_number().is_some() {
                            acknowledged[chosen[j]] = true;
                        } else {
                            any_failed = true;
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(error = %crate::rapids::describe(&error), "PutRecords failed");
                    any_failed = true;
                }
            }
            let mut i = 0;
            pending.retain(|_| {
                let keep = !acknowledged[i];
                i += 1;
                keep
            });
            if any_failed {
                metrics.retries.inc();
                failures = (failures + 1).min(10);
                let pause = Duration::from_millis(20 * 2u64.pow(failures.min(6)));
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(PublishError::Stopped),
                    _ = tokio::time::sleep(pause) => {}
                }
            } else {
                failures = 0;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(keys: &[&str]) -> Vec<(String, Vec<u8>)> {
        keys.iter().map(|k| ((*k).to_owned(), vec![0u8; 10])).collect()
    }

    #[test]
    fn a_request_carries_the_oldest_record_of_each_stream_only() {
        assert_eq!(next_request(&pending(&["a", "b", "a", "c", "b", "a"])), vec![0, 1, 3]);
    }

    #[test]
    fn a_stream_that_does_not_fit_sends_nothing_this_round() {
        // 501 streams: the 501st waits, and so does its later record
        let mut keys: Vec<String> = (0..501).map(|i| format!("s{i}")).collect();
        keys.push("s500".into());
        let p: Vec<(String, Vec<u8>)> = keys.iter().map(|k| (k.clone(), vec![0u8; 10])).collect();
        let chosen = next_request(&p);
        assert_eq!(chosen.len(), 500);
        assert!(!chosen.contains(&500) && !chosen.contains(&501));
        // by size: a stream whose record would pass 5 MB waits
        let big = vec![
            ("x".to_owned(), vec![0u8; 3 * 1024 * 1024]),
            ("y".to_owned(), vec![0u8; 3 * 1024 * 1024]),
            ("y".to_owned(), vec![0u8; 1]),
        ];
        assert_eq!(next_request(&big), vec![0]);
    }
}
