//! Publishing to Kinesis without ever reordering a stream.
//!
//! A stream's records go out in commit order, several in one PutRecords request when
//! it has several waiting (a hot account's deposits: one round trip carries them all),
//! but never in two requests at once: its next records wait until the request in
//! flight came back. PutRecords may fail some records and accept the rest, so when a
//! record of a stream fails, it and every later record of that stream in the request
//! are sent again, in order, even those Kinesis accepted: the shard may then hold a
//! record twice, and a later record before an earlier one's last copy, but each
//! record's last copy comes after a copy of every earlier record of its stream. A
//! consumer that applies a stream's next version only (skipping what it has, filling
//! or waiting for a gap) therefore applies every record once, in order; the
//! `no_record_is_lost_nor_reordered` property test shows it under random partial
//! failures. A partition key that several streams share (bus events posted with the
//! producer's key) keeps the older rule, one record in flight, since its order is
//! across streams. Records of different keys share requests (up to 500 records and
//! 5 MB), and several requests may be in flight at once (the tailer's `in_flight`).
//!
//! [`Pipeline`] is that bookkeeping (pure logic): the records read and not yet
//! acknowledged, in commit order, and the source positions that may be acknowledged
//! once every record before them is. [`Publisher`] makes the calls.

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use chrono::{DateTime, Utc};
use eventstore::envelope::{Envelope, RecordedEvent};
use rapids::Rapids;
use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::time::{Duration, Instant};

const MAX_RECORDS: usize = 500;
const MAX_BYTES: usize = 5 * 1024 * 1024;
/// Kinesis refuses a record whose data and partition key exceed 1 MiB.
const MAX_RECORD_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("a record does not serialize: {0}")]
    Encode(String),
    /// Permanent: the tailer cannot go past this event. Publishing stops (loudly)
    /// rather than skip it; events are small by construction (the HTTP body limit).
    #[error("event {0} is larger than Kinesis accepts (1 MiB)")]
    TooLarge(uuid::Uuid),
}

/// The span an event is published in: from the tailer's read until Kinesis
/// acknowledged it, a child of the span that recorded it (its `traceparent`).
fn publish_span(envelope: &Envelope) -> tracing::Span {
    let span = tracing::info_span!(
        "publish",
        otel.name = format!("publish {}", envelope.event_type),
        otel.kind = "producer",
        event_type = %envelope.event_type,
        stream_id = %envelope.stream_id,
        version = envelope.version,
        event_id = %envelope.event_id,
    );
    eventstore::trace::continue_from(&span, envelope.traceparent.as_deref());
    span
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pending,
    InFlight,
    Acknowledged,
}

#[derive(Debug)]
struct Slot {
    key: String,
    /// Its key may carry other streams too (a bus event's producer key): then one
    /// record of the key per request, as a resent record's later copy could not be
    /// told from another stream's next event.
    alone: bool,
    data: Vec<u8>,
    recorded_at: DateTime<Utc>,
    state: State,
    /// The publishing's span of a traced event, open until Kinesis acknowledged it.
    span: Option<tracing::Span>,
}

/// One PutRecords request: which records (by pipeline id) and what they carry.
#[derive(Debug)]
pub struct Request {
    ids: Vec<u64>,
    records: Vec<(String, Vec<u8>)>,
}

/// What came of a request: which of its records Kinesis acknowledged.
#[derive(Debug)]
pub struct PutOutcome {
    ids: Vec<u64>,
    acknowledged: Vec<bool>,
    /// The call itself failed (nothing acknowledged).
    pub error: Option<String>,
    pub elapsed: Duration,
}

impl PutOutcome {
    /// True when some record was not acknowledged (it is sent again).
    pub fn any_failed(&self) -> bool {
        self.acknowledged.iter().any(|a| !a)
    }
}

/// The records read and not yet acknowledged by Kinesis, in commit order, and the
/// source positions (`A`) waiting for them.
#[derive(Debug)]
pub struct Pipeline<A> {
    /// The region the envelopes are tagged with.
    region: String,
    /// The event store's identity, put in every envelope.
    store: Option<uuid::Uuid>,
    records: VecDeque<Slot>,
    /// The id of `records[0]`; ids grow by one per record pushed.
    front: u64,
    /// Positions to acknowledge once every record before `end` is: `(end, bare, ack)`,
    /// `bare` when the batch had no records of its own.
    acks: VecDeque<(u64, bool, A)>,
}

impl<A> Default for Pipeline<A> {
    fn default() -> Self {
        Pipeline { region: String::new(), store: None, records: VecDeque::new(), front: 0, acks: VecDeque::new() }
    }
}

impl<A> Pipeline<A> {
    /// A pipeline whose envelopes carry the `region` tag and the store's identity.
    pub fn new(region: &str, store: Option<uuid::Uuid>) -> Self {
        Pipeline { region: region.to_owned(), store, ..Pipeline::default() }
    }
}

impl<A> Pipeline<A> {
    /// Records read and not yet settled.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.acks.is_empty()
    }

    /// True while a position pushed without records waits: it may change how the
    /// source reads (a finished backfill starts the stream), so nothing is read after
    /// it until it is acknowledged (which makes it the last position held).
    pub fn holds_bare_ack(&self) -> bool {
        self.acks.back().is_some_and(|(_, bare, _)| *bare)
    }

    /// Adds a batch read from the source: its events, then the position after them.
    pub fn push(&mut self, events: &[RecordedEvent], ack: Option<A>) -> Result<(), PublishError> {
        let mut slots = Vec::with_capacity(events.len());
        for event in events {
            let mut envelope = Envelope { store: self.store, ..Envelope::from_recorded(event.clone(), &self.region) };
            // a traced event is published in a span of its own, which its consumers continue
            let span = envelope.traceparent.is_some().then(|| publish_span(&envelope));
            if let Some(traceparent) = span.as_ref().and_then(eventstore::trace::traceparent) {
                envelope.traceparent = Some(traceparent);
            }
            // a stream's events share its partition key (aggregates: the stream id), so
            // one key never has two records in flight and keeps its order on its shard
            let key = envelope.partition_key.clone();
            let alone = key != envelope.stream_id.to_string();
            let data = serde_json::to_vec(&envelope).map_err(|err| PublishError::Encode(err.to_string()))?;
            if data.len() + key.len() > MAX_RECORD_BYTES {
                return Err(PublishError::TooLarge(event.event_id));
            }
            slots.push(Slot { key, alone, data, recorded_at: event.recorded_at, state: State::Pending, span });
        }
        self.records.extend(slots);
        if let Some(ack) = ack {
            self.acks.push_back((self.front + self.records.len() as u64, events.is_empty(), ack));
        }
        Ok(())
    }

    /// The next request: the waiting records of each stream that has nothing in
    /// flight, in commit order, within the request limits (a stream whose record does
    /// not fit sends nothing after it this time, so none of its later records can
    /// overtake it); of a key shared by several streams, one record. `None` when
    /// nothing can be sent.
    pub fn next_request(&mut self) -> Option<Request> {
        // streams that may send no more in this request: one in flight, or one whose
        // record did not fit
        let mut held: HashSet<&str> = HashSet::new();
        for slot in &self.records {
            if slot.state == State::InFlight {
                held.insert(slot.key.as_str());
            }
        }
        let mut chosen = Vec::new();
        let mut keys: HashSet<&str> = HashSet::new();
        let mut bytes = 0;
        for (i, slot) in self.records.iter().enumerate() {
            if slot.state != State::Pending || held.contains(slot.key.as_str()) {
                continue;
            }
            let size = slot.data.len() + slot.key.len();
            let room = chosen.len() < MAX_RECORDS && bytes + size <= MAX_BYTES;
            if room && !(slot.alone && keys.contains(slot.key.as_str())) {
                bytes += size;
                chosen.push(i);
                keys.insert(slot.key.as_str());
            } else {
                held.insert(slot.key.as_str());
            }
        }
        if chosen.is_empty() {
            return None;
        }
        let mut request = Request { ids: Vec::with_capacity(chosen.len()), records: Vec::with_capacity(chosen.len()) };
        for i in chosen {
            let slot = &mut self.records[i];
            slot.state = State::InFlight;
            request.ids.push(self.front + i as u64);
            request.records.push((slot.key.clone(), slot.data.clone()));
        }
        Some(request)
    }

    /// Takes in a request's outcome: a stream's records up to its first failed one are
    /// done; that one and every later one of its stream in the request are sent again
    /// (accepted or not). Returns when each acknowledged record was recorded.
    pub fn complete(&mut self, outcome: &PutOutcome) -> Vec<DateTime<Utc>> {
        let mut recorded = Vec::new();
        let mut failed: HashSet<String> = HashSet::new();
        for (&id, &acknowledged) in outcome.ids.iter().zip(&outcome.acknowledged) {
            let Some(slot) = id.checked_sub(self.front).and_then(|i| self.records.get_mut(i as usize)) else {
                continue;
            };
            if slot.state != State::InFlight {
                continue;
            }
            if acknowledged && !failed.contains(&slot.key) {
                slot.state = State::Acknowledged;
                slot.span = None;
                recorded.push(slot.recorded_at);
            } else {
                slot.state = State::Pending;
                failed.insert(slot.key.clone());
            }
        }
        recorded
    }

    /// The positions that may be acknowledged now, in order: every record before them
    /// was acknowledged by Kinesis.
    pub fn settle(&mut self) -> Vec<A> {
        while self.records.front().is_some_and(|s| s.state == State::Acknowledged) {
            self.records.pop_front();
            self.front += 1;
        }
        let mut ready = Vec::new();
        while self.acks.front().is_some_and(|(end, _, _)| *end <= self.front) {
            let Some((_, _, ack)) = self.acks.pop_front() else { break };
            ready.push(ack);
        }
        ready
    }
}

pub struct Publisher {
    rapids: Rapids,
}

impl Publisher {
    pub fn new(rapids: Rapids) -> Self {
        Publisher { rapids }
    }

    /// The region of the stream it publishes to.
    pub fn region(&self) -> &str {
        self.rapids.region()
    }

    /// Sends one request; the future owns what it needs, so several can be in flight.
    pub fn put(&self, request: Request) -> impl Future<Output = PutOutcome> + Send + 'static {
        let client = self.rapids.client().clone();
        let stream = self.rapids.stream().to_owned();
        async move {
            let Request { ids, records } = request;
            let mut acknowledged = vec![false; ids.len()];
            let entries = records
                .into_iter()
                .map(|(key, data)| PutRecordsRequestEntry::builder().partition_key(key).data(Blob::new(data)).build())
                .collect::<Result<Vec<_>, _>>();
            let started = Instant::now();
            let error = match entries {
                Err(e) => Some(e.to_string()),
                Ok(entries) => match client.put_records().stream_name(stream).set_records(Some(entries)).send().await {
                    Ok(output) => {
                        for (j, result) in output.records().iter().enumerate().take(acknowledged.len()) {
                            acknowledged[j] = result.error_code().is_none() && result.sequence_number().is_some();
                        }
                        None
                    }
                    Err(error) => Some(rapids::describe(&error)),
                },
            };
            PutOutcome { ids, acknowledged, error, elapsed: started.elapsed() }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn event(stream: u128, version: i32, size: usize) -> RecordedEvent {
        RecordedEvent {
            position: i64::from(version),
            stream_id: uuid::Uuid::from_u128(stream),
            stream_type: "test".into(),
            version,
            event_id: uuid::Uuid::now_v7(),
            event_type: "test.happened".into(),
            schema_version: 1,
            data: serde_json::json!({ "pad": "x".repeat(size) }),
            metadata: Default::default(),
            recorded_at: Utc::now(),
        }
    }

    fn events(streams: &[u128]) -> Vec<RecordedEvent> {
        streams.iter().enumerate().map(|(i, &s)| event(s, i as i32 + 1, 1)).collect()
    }

    fn outcome(request: &Request, acknowledged: &[bool]) -> PutOutcome {
        PutOutcome {
            ids: request.ids.clone(),
            acknowledged: acknowledged.to_vec(),
            error: None,
            elapsed: Duration::ZERO,
        }
    }

    #[test]
    fn a_request_carries_each_streams_waiting_records_in_order() {
        let mut p = Pipeline::default();
        p.push(&events(&[1, 2, 1, 3, 2, 1]), Some("end")).unwrap();
        assert_eq!(p.next_request().unwrap().ids, vec![0, 1, 2, 3, 4, 5]);
        // the three streams are in flight: nothing else may go
        assert!(p.next_request().is_none());
    }

    #[test]
    fn a_stream_with_a_record_in_flight_waits_while_others_go() {
        let mut p = Pipeline::default();
        p.push(&events(&[1, 2]), Some(1)).unwrap();
        let first = p.next_request().unwrap();
        assert_eq!(first.ids, vec![0, 1]);
        p.push(&events(&[1, 3, 1]), Some(2)).unwrap();
        // stream 1's next records wait for its first; stream 3 goes at once
        assert_eq!(p.next_request().unwrap().ids, vec![3]);
        assert_eq!(p.complete(&outcome(&first, &[true, true])).len(), 2);
        assert_eq!(p.settle(), vec![1]);
        assert_eq!(p.next_request().unwrap().ids, vec![2, 4]);
    }

    #[test]
    fn a_failed_record_is_sent_again_with_every_later_one_of_its_stream() {
        let mut p = Pipeline::default();
        p.push(&events(&[1, 2, 1, 1]), Some("all")).unwrap();
        let first = p.next_request().unwrap();
        assert_eq!(first.ids, vec![0, 1, 2, 3]);
        // stream 1: its first accepted, its second failed, its third accepted
        assert_eq!(p.complete(&outcome(&first, &[true, true, false, true])).len(), 2);
        assert!(p.settle().is_empty(), "record 2 is not acknowledged");
        let again = p.next_request().unwrap();
        assert_eq!(again.ids, vec![2, 3], "the failed record and the accepted one after it, in order");
        assert_eq!(p.complete(&outcome(&again, &[true, true])).len(), 2);
        assert_eq!(p.settle(), vec!["all"]);
        assert!(p.is_empty());
    }

    #[test]
    fn a_key_shared_by_several_streams_has_one_record_in_flight() {
        // bus events: streams of one event each, posted with one producer key
        let shared: Vec<RecordedEvent> = (10..13u128)
            .map(|s| {
                let mut e = event(s, 1, 1);
                e.stream_type = "bus".into();
                e.metadata.partition_key = Some("user-7".into());
                e
            })
            .collect();
        let mut p = Pipeline::default();
        p.push(&shared, Some(())).unwrap();
        let first = p.next_request().unwrap();
        assert_eq!(first.ids, vec![0]);
        assert!(p.next_request().is_none(), "the key's next record waits for the first");
        p.complete(&outcome(&first, &[true]));
        assert_eq!(p.next_request().unwrap().ids, vec![1]);
    }

    #[test]
    fn a_failed_call_puts_every_record_back() {
        let mut p = Pipeline::default();
        p.push(&events(&[1, 2]), Some(())).unwrap();
        let request = p.next_request().unwrap();
        let failed = PutOutcome {
            ids: request.ids.clone(),
            acknowledged: vec![false, false],
            error: Some("connection reset".into()),
            elapsed: Duration::ZERO,
        };
        assert!(failed.any_failed());
        assert!(p.complete(&failed).is_empty());
        assert_eq!(p.next_request().unwrap().ids, vec![0, 1]);
    }

    #[test]
    fn positions_are_acknowledged_in_order_only() {
        let mut p = Pipeline::default();
        p.push(&events(&[1]), Some("a")).unwrap();
        p.push(&events(&[2]), Some("b")).unwrap();
        let first = p.next_request().unwrap();
        p.push(&events(&[3]), Some("c")).unwrap();
        let second = p.next_request().unwrap();
        assert_eq!((first.ids.clone(), second.ids.clone()), (vec![0, 1], vec![2]));
        // the later request comes back first: its position must wait for the earlier
        p.complete(&outcome(&second, &[true]));
        assert!(p.settle().is_empty());
        p.complete(&outcome(&first, &[true, true]));
        assert_eq!(p.settle(), vec!["a", "b", "c"]);
        assert_eq!(p.len(), 0);
    }

    #[test]
    fn a_bare_position_holds_reading_until_acknowledged() {
        let mut p = Pipeline::default();
        p.push(&events(&[1]), Some("backfill")).unwrap();
        p.push(&[], Some("backfill done")).unwrap();
        assert!(p.holds_bare_ack());
        let request = p.next_request().unwrap();
        p.complete(&outcome(&request, &[true]));
        assert_eq!(p.settle(), vec!["backfill", "backfill done"]);
        assert!(!p.holds_bare_ack());
        // with nothing before it, a bare position settles at once
        p.push(&[], Some("again")).unwrap();
        assert_eq!(p.settle(), vec!["again"]);
    }

    #[test]
    fn a_record_that_does_not_fit_waits_and_so_does_its_stream() {
        // 501 streams: the 501st waits, and so does its later record
        let mut streams: Vec<u128> = (0..501).collect();
        streams.push(500);
        let mut p = Pipeline::default();
        p.push(&events(&streams), None::<()>).unwrap();
        let request = p.next_request().unwrap();
        assert_eq!(request.ids.len(), 500);
        assert!(!request.ids.contains(&500) && !request.ids.contains(&501));
        // stream 500's two records, together and in order
        assert_eq!(p.next_request().unwrap().ids, vec![500, 501]);
        // by size: a stream whose record would pass 5 MB waits
        let mut p = Pipeline::default();
        let big = 900 * 1024;
        let batch: Vec<RecordedEvent> = (0..7).map(|s| event(s, 1, big)).collect();
        p.push(&batch, None::<()>).unwrap();
        let request = p.next_request().unwrap();
        assert_eq!(request.ids.len(), 5, "five records of ~900 KiB fit in 5 MB, a sixth does not");
        assert_eq!(p.next_request().unwrap().ids, vec![5, 6]);
    }

    #[test]
    fn a_record_over_one_mebibyte_is_refused() {
        let mut p = Pipeline::default();
        let error = p.push(&[event(1, 1, 1024 * 1024)], None::<()>).unwrap_err();
        assert!(matches!(error, PublishError::TooLarge(_)));
        assert_eq!(p.len(), 0, "nothing of the batch is kept");
    }

    use proptest::prelude::*;

    /// One step of a run: read a batch of these streams' next events, send a request,
    /// or complete the request in flight at this index with these acceptances.
    #[derive(Debug, Clone)]
    enum Step {
        Read(Vec<u128>),
        Send,
        Complete(usize, Vec<bool>),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            prop::collection::vec(0u128..4, 1..8).prop_map(Step::Read),
            Just(Step::Send),
            (0usize..4, prop::collection::vec(any::<bool>(), 0..20)).prop_map(|(i, a)| Step::Complete(i, a)),
        ]
    }

    /// What a shard holds of each stream: every version Kinesis accepted, in the
    /// order it accepted them (one request's records in request order).
    type Shards = std::collections::HashMap<String, Vec<i32>>;

    fn apply(p: &mut Pipeline<usize>, shards: &mut Shards, request: &Request, acknowledged: &[bool]) -> Vec<usize> {
        for ((key, data), &accepted) in request.records.iter().zip(acknowledged) {
            if accepted {
                let envelope: serde_json::Value = serde_json::from_slice(data).unwrap();
                let version = envelope["version"].as_i64().unwrap() as i32;
                shards.entry(key.clone()).or_default().push(version);
            }
        }
        let outcome = PutOutcome {
            ids: request.ids.clone(),
            acknowledged: acknowledged.to_vec(),
            error: None,
            elapsed: Duration::ZERO,
        };
        p.complete(&outcome);
        p.settle()
    }

    proptest! {
        /// Under any interleaving of reads, requests in flight and partial failures:
        /// a consumer that applies each stream's next version only applies every
        /// version once and in order, and positions are acknowledged in order, each
        /// only once every record before it was accepted.
        #[test]
        fn no_record_is_lost_nor_reordered(steps in prop::collection::vec(step(), 1..60)) {
            let mut p: Pipeline<usize> = Pipeline::default();
            let mut shards = Shards::new();
            let mut next_version: std::collections::HashMap<u128, i32> = Default::default();
            let mut in_flight: Vec<Request> = Vec::new();
            let (mut batches, mut settled) = (0usize, Vec::new());
            for step in steps {
                match step {
                    Step::Read(streams) => {
                        let batch: Vec<RecordedEvent> = streams.iter().map(|&s| {
                            let v = next_version.entry(s).or_insert(0);
                            *v += 1;
                            event(s, *v, 1)
                        }).collect();
                        p.push(&batch, Some(batches)).unwrap();
                        batches += 1;
                    }
                    Step::Send => in_flight.extend(p.next_request()),
                    Step::Complete(i, accepted) => {
                        if in_flight.is_empty() { continue; }
                        let request = in_flight.remove(i % in_flight.len());
                        let acknowledged: Vec<bool> =
                            (0..request.ids.len()).map(|j| accepted.get(j).copied().unwrap_or(true)).collect();
                        settled.extend(apply(&mut p, &mut shards, &request, &acknowledged));
                    }
                }
            }
            // then Kinesis accepts everything until the pipeline drains
            for request in in_flight.drain(..) {
                let all = vec![true; request.ids.len()];
                settled.extend(apply(&mut p, &mut shards, &request, &all));
            }
            while let Some(request) = p.next_request() {
                let all = vec![true; request.ids.len()];
                settled.extend(apply(&mut p, &mut shards, &request, &all));
            }
            prop_assert!(p.is_empty());
            prop_assert_eq!(settled, (0..batches).collect::<Vec<_>>());
            for (&stream, &last) in &next_version {
                let key = uuid::Uuid::from_u128(stream).to_string();
                let seen = shards.get(&key).cloned().unwrap_or_default();
                let mut applied = 0;
                for &version in &seen {
                    if version == applied + 1 {
                        applied = version;
                    }
                }
                prop_assert_eq!(applied, last, "stream {} on its shard: {:?}", stream, seen);
            }
        }
    }
}
