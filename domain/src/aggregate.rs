//! The `Aggregate` trait and the given/when/then helpers for testing one.
//!
//! An aggregate is a pure state machine: [`Aggregate::decide`] turns a command into
//! events (or a domain error) without I/O, and [`Aggregate::apply`] folds one event
//! into the state. The store and the repository do all the I/O around them.

use serde::{Serialize, de::DeserializeOwned};
use std::fmt::Debug;

/// Errors turning stored rows into typed events.
#[derive(Debug, thiserror::Error)]
pub enum EventCodecError {
    #[error("event of type {event_type} does not decode: {source}")]
    Decode {
        event_type: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("event does not encode as {{\"type\", \"data\"}}")]
    Shape,
}

/// An event of one aggregate.
///
/// Implement it on an enum with `#[serde(tag = "type", content = "data")]` and one
/// `#[serde(rename = "<entity>.<past-tense verb>")]` struct variant per event type:
/// [`encode`] and [`decode`] rely on that shape. Unknown fields are ignored on read
/// and `#[serde(default)]` fields get their default (the weak schema).
///
/// Schema versions are per event type: when a type's `data` changes, its
/// [`schema_version`](DomainEvent::schema_version) grows by one and
/// [`upcast`](DomainEvent::upcast) gets the step from the previous version. Events
/// stored at an older version are brought to the current shape one step per version
/// ([`decode_versioned`]) before they are decoded: the enum only ever knows the newest
/// shape.
pub trait DomainEvent: Serialize + DeserializeOwned + Clone + Debug + Send + Sync + 'static {
    /// The version of `event_type`'s `data` shape that this code writes (stored with
    /// every event as `schema_version`). 1 for every type until one changes.
    fn schema_version(event_type: &str) -> i16 {
        let _ = event_type;
        1
    }

    /// One upcasting step: `data` of `event_type` as stored at version `from`, turned
    /// into the shape of version `from + 1`. Pure; the default changes nothing.
    fn upcast(event_type: &str, from: i16, data: serde_json::Value) -> serde_json::Value {
        let _ = (event_type, from);
        data
    }

    /// `<entity>.<past-tense verb>`, e.g. `account.deposited`.
    fn event_type(&self) -> &'static str;
}

/// Splits an event into its type name and its `data` object.
pub fn encode<E: DomainEvent>(event: &E) -> Result<(String, serde_json::Value), EventCodecError> {
    let value = serde_json::to_value(event).map_err(|_| EventCodecError::Shape)?;
    let serde_json::Value::Object(mut object) = value else {
        return Err(EventCodecError::Shape);
    };
    let event_type = match object.remove("type") {
        Some(serde_json::Value::String(t)) => t,
        _ => return Err(EventCodecError::Shape),
    };
    let data = object.remove("data").unwrap_or_else(|| serde_json::json!({}));
    Ok((event_type, data))
}

/// Rebuilds a typed event from a type name and a `data` object of the current schema
/// version (see [`decode_versioned`] for stored events).
pub fn decode<E: DomainEvent>(event_type: &str, data: serde_json::Value) -> Result<E, EventCodecError> {
    serde_json::from_value(serde_json::json!({ "type": event_type, "data": data }))
        .map_err(|source| EventCodecError::Decode { event_type: event_type.to_owned(), source })
}

/// Brings `data` of `event_type`, stored at `schema_version`, to the shape of the
/// code's version: one [`DomainEvent::upcast`] step per version. A version newer than
/// the code's (an instance of a newer release wrote it) is left as it is: versions
/// only add fields, which the weak schema ignores.
pub fn upcast<E: DomainEvent>(event_type: &str, schema_version: i16, data: serde_json::Value) -> serde_json::Value {
    // a version below 1 was never written; read it as 1
    (schema_version.max(1)..E::schema_version(event_type)).fold(data, |data, from| E::upcast(event_type, from, data))
}

/// Rebuilds a typed event from a stored (or published) type name, schema version and
/// `data` object, upcasting older versions first. What the store and the rivers use.
pub fn decode_versioned<E: DomainEvent>(
    event_type: &str,
    schema_version: i16,
    data: serde_json::Value,
) -> Result<E, EventCodecError> {
    decode(event_type, upcast::<E>(event_type, schema_version, data))
}

/// A consistency boundary whose state is the fold of its events.
pub trait Aggregate: Default + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Stored as `stream_type` with every event of this aggregate.
    const STREAM_TYPE: &'static str;
    /// The shape of the serialized state. Bump it whenever the state's fields change:
    /// snapshots of another schema version are ignored and the stream is replayed.
    const SNAPSHOT_SCHEMA_VERSION: i16;

    type Command: Debug + Send + Sync + 'static;
    type Event: DomainEvent;
    type Error: std::error::Error + Send + Sync + 'static;

    /// Decides which events a command produces, given the current state. Pure.
    fn decide(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Folds one event into the state. Pure and total: an event that was recorded
    /// has happened, so `apply` never fails.
    fn apply(self, event: &Self::Event) -> Self;

    /// Folds a sequence of events.
    fn apply_all<'a>(self, events: impl IntoIterator<Item = &'a Self::Event>) -> Self {
        events.into_iter().fold(self, Self::apply)
    }
}

/// Given/when/then tests for aggregates, in the style of cqrs-es's `TestFramework`.
///
/// ```ignore
/// given::<Account>(&[opened()]).when(&deposit(500)).then_events(&[deposited(500, 500)]);
/// given::<Account>(&[]).when(&withdraw(1)).then_error(&AccountError::NotOpen);
/// ```
pub mod testing {
    use super::Aggregate;
    use std::fmt::Debug;

    /// Starts a test from the state those events build.
    #[track_caller]
    pub fn given<A: Aggregate>(events: &[A::Event]) -> Given<A> {
        Given { state: A::default().apply_all(events) }
    }

    pub struct Given<A: Aggregate> {
        state: A,
    }

    impl<A: Aggregate> Given<A> {
        /// Runs the command against that state.
        pub fn when(self, command: &A::Command) -> Then<A> {
            let result = self.state.decide(command);
            Then { state: self.state, result }
        }
    }

    pub struct Then<A: Aggregate> {
        state: A,
        result: Result<Vec<A::Event>, A::Error>,
    }

    impl<A: Aggregate> Then<A>
    where
        A::Event: PartialEq,
        A::Error: PartialEq,
    {
        /// Asserts the command produced exactly these events; returns the new state.
        #[track_caller]
        pub fn then_events(self, expected: &[A::Event]) -> A {
            match self.result {
                Ok(events) => {
                    assert_eq!(events.as_slice(), expected, "unexpected events");
                    self.state.apply_all(&events)
                }
                Err(error) => panic!("expected events {expected:?}, got error {error:?}"),
            }
        }

        /// Asserts the command was rejected with this error.
        #[track_caller]
        pub fn then_error(self, expected: &A::Error)
        where
            A::Error: Debug,
        {
            match self.result {
                Ok(events) => panic!("expected error {expected:?}, got events {events:?}"),
                Err(error) => assert_eq!(&error, expected, "unexpected error"),
            }
        }
    }
}
