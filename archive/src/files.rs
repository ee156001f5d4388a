//! The archive's files: where each lies and what it holds.
//!
//! Every event is one row of a Parquet file at
//! `events/day=<YYYY-MM-DD>/shard=<shard id>/<first>-<last>.parquet`: the day the event
//! was recorded (UTC; Hive-style, so query engines see `day` and `shard` as columns),
//! the Kinesis shard it was read from, and the sequence numbers of its first and last
//! record, zero-padded to [`SEQUENCE_WIDTH`] digits so that keys sort as the numbers do.
//!
//! The columns are the envelope's main fields, its whole JSON (`envelope`), and where it
//! was read (`shard_id`, `sequence_number`). Written without arrow: the rows column by
//! column through the `parquet` crate's own writer, Snappy-compressed.

use bytes::Bytes;
use chrono::{DateTime, NaiveDate, Utc};
use eventstore::envelope::Envelope;
use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, Int32Type, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::record::RowAccessor;
use std::sync::Arc;
use uuid::Uuid;

/// Where the events lie in the bucket.
pub const EVENTS_PREFIX: &str = "events/";
/// The digits of a sequence number in a file's name (Kinesis's have 56 at most).
pub const SEQUENCE_WIDTH: usize = 64;

/// The columns, in this order.
const SCHEMA: &str = "
message event {
  REQUIRED BYTE_ARRAY event_id (STRING);
  REQUIRED BYTE_ARRAY event_type (STRING);
  REQUIRED BYTE_ARRAY stream_id (STRING);
  REQUIRED BYTE_ARRAY stream_type (STRING);
  REQUIRED INT32 version;
  REQUIRED INT64 position;
  REQUIRED INT32 schema_version;
  REQUIRED INT64 recorded_at (TIMESTAMP(MICROS,true));
  REQUIRED BYTE_ARRAY source (STRING);
  REQUIRED BYTE_ARRAY actor (STRING);
  REQUIRED BYTE_ARRAY data (JSON);
  REQUIRED BYTE_ARRAY envelope (JSON);
  REQUIRED BYTE_ARRAY shard_id (STRING);
  REQUIRED BYTE_ARRAY sequence_number (STRING);
}
";

/// One event as the archive holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchivedEvent {
    pub shard_id: String,
    pub sequence_number: String,
    pub envelope: Envelope,
}

/// Why a file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("an archived row: {0}")]
    Row(String),
}

/// The day an event falls in (UTC).
pub fn day_of(recorded_at: DateTime<Utc>) -> NaiveDate {
    recorded_at.date_naive()
}

/// A sequence number as it appears in a key (zero-padded).
pub fn padded(sequence: &str) -> String {
    format!("{sequence:0>SEQUENCE_WIDTH$}")
}

/// The prefix of one shard's files of one day.
pub fn shard_prefix(day: NaiveDate, shard: &str) -> String {
    format!("{EVENTS_PREFIX}day={day}/shard={shard}/")
}

/// The key of the file of one shard's records `first` to `last` recorded on `day`.
pub fn key(day: NaiveDate, shard: &str, first: &str, last: &str) -> String {
    format!("{}{}-{}.parquet", shard_prefix(day, shard), padded(first), padded(last))
}

/// The first and last sequence numbers (padded) a key names; `None` for another key.
pub fn range_of(key: &str) -> Option<(&str, &str)> {
    let name = key.rsplit('/').next()?.strip_suffix(".parquet")?;
    let (first, last) = name.split_once('-')?;
    (first.len() == SEQUENCE_WIDTH && last.len() == SEQUENCE_WIDTH).then_some((first, last))
}

/// The day a key's partition names; `None` for another key.
pub fn day_of_key(key: &str) -> Option<NaiveDate> {
    let part = key.strip_prefix(EVENTS_PREFIX)?.split('/').next()?.strip_prefix("day=")?;
    part.parse().ok()
}

/// A Parquet file of `events`, in their order.
pub fn write(events: &[ArchivedEvent]) -> Result<Vec<u8>, FileError> {
    let schema = Arc::new(parquet::schema::parser::parse_message_type(SCHEMA)?);
    let properties = Arc::new(
        WriterProperties::builder().set_compression(Compression::SNAPPY).set_created_by("bank archiver".into()).build(),
    );
    let envelopes: Vec<String> = events
        .iter()
        .map(|e| serde_json::to_string(&e.envelope).map_err(|e| FileError::Row(e.to_string())))
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    let mut writer = SerializedFileWriter::new(&mut out, schema, properties)?;
    let mut group = writer.next_row_group()?;
    let mut column = 0;
    while let Some(mut writing) = group.next_column()? {
        let strings = |f: &dyn Fn(usize, &ArchivedEvent) -> ByteArray| -> Vec<ByteArray> {
            events.iter().enumerate().map(|(i, e)| f(i, e)).collect()
        };
        let text = |s: &str| ByteArray::from(s.as_bytes().to_vec());
        match column {
            0 => writing.typed::<ByteArrayType>().write_batch(
                &strings(&|_, e| text(&e.envelope.event_id.to_string())),
                None,
                None,
            )?,
            1 => writing.typed::<ByteArrayType>().write_batch(
                &strings(&|_, e| text(&e.envelope.event_type)),
                None,
                None,
            )?,
            2 => writing.typed::<ByteArrayType>().write_batch(
                &strings(&|_, e| text(&e.envelope.stream_id.to_string())),
                None,
                None,
            )?,
            3 => writing.typed::<ByteArrayType>().write_batch(
                &strings(&|_, e| text(&e.envelope.stream_type)),
                None,
                None,
            )?,
            4 => {
                let versions: Vec<i32> = events.iter().map(|e| e.envelope.version).collect();
                writing.typed::<Int32Type>().write_batch(&versions, None, None)?
            }
            5 => {
                let positions: Vec<i64> = events.iter().map(|e| e.envelope.position).collect();
                writing.typed::<Int64Type>().write_batch(&positions, None, None)?
            }
            6 => {
                let versions: Vec<i32> = events.iter().map(|e| i32::from(e.envelope.schema_version)).collect();
                writing.typed::<Int32Type>().write_batch(&versions, None, None)?
            }
            7 => {
                let times: Vec<i64> = events.iter().map(|e| e.envelope.recorded_at.timestamp_micros()).collect();
                writing.typed::<Int64Type>().write_batch(&times, None, None)?
            }
            8 => {
                writing.typed::<ByteArrayType>().write_batch(&strings(&|_, e| text(&e.envelope.source)), None, None)?
            }
            9 => writing.typed::<ByteArrayType>().write_batch(&strings(&|_, e| text(&e.envelope.actor)), None, None)?,
            10 => writing.typed::<ByteArrayType>().write_batch(
                &strings(&|_, e| text(&e.envelope.data.to_string())),
                None,
                None,
            )?,
            11 => writing.typed::<ByteArrayType>().write_batch(&strings(&|i, _| text(&envelopes[i])), None, None)?,
            12 => writing.typed::<ByteArrayType>().write_batch(&strings(&|_, e| text(&e.shard_id)), None, None)?,
            _ => {
                writing.typed::<ByteArrayType>().write_batch(&strings(&|_, e| text(&e.sequence_number)), None, None)?
            }
        };
        writing.close()?;
        column += 1;
    }
    group.close()?;
    writer.close()?;
    Ok(out)
}

/// The events of a Parquet file written by [`write`], in its order.
pub fn read(file: Vec<u8>) -> Result<Vec<ArchivedEvent>, FileError> {
    let reader = SerializedFileReader::new(Bytes::from(file))?;
    let mut out = Vec::new();
    for row in reader.get_row_iter(None)? {
        let row = row?;
        let envelope: Envelope =
            serde_json::from_str(row.get_string(11)?).map_err(|e| FileError::Row(e.to_string()))?;
        let event_id: Uuid = row.get_string(0)?.parse().map_err(|_| FileError::Row("an event id".into()))?;
        if event_id != envelope.event_id {
            return Err(FileError::Row(format!("event {event_id}: its envelope holds another id")));
        }
        out.push(ArchivedEvent {
            shard_id: row.get_string(12)?.clone(),
            sequence_number: row.get_string(13)?.clone(),
            envelope,
        });
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn event(version: i32, sequence: &str) -> ArchivedEvent {
        let recorded = eventstore::envelope::RecordedEvent {
            position: i64::from(version) * 10,
            stream_id: Uuid::from_u128(7),
            stream_type: "account".into(),
            version,
            event_id: Uuid::now_v7(),
            event_type: "account.deposited".into(),
            schema_version: 1,
            data: serde_json::json!({"amount": 5, "memo": "ünïcode"}),
            metadata: Default::default(),
            recorded_at: "2026-12-06T23:59:59.123456Z".parse().unwrap(),
        };
        ArchivedEvent {
            shard_id: "shardId-000000000001".into(),
            sequence_number: sequence.into(),
            envelope: Envelope::from(recorded),
        }
    }

    #[test]
    fn a_file_reads_back_as_written() {
        let events = vec![event(1, "49600"), event(2, "49601"), event(3, "49602")];
        let file = write(&events).unwrap();
        assert_eq!(&file[..4], b"PAR1");
        assert_eq!(read(file).unwrap(), events);
    }

    #[test]
    fn keys_sort_as_sequence_numbers_and_name_their_range() {
        let day = "2026-12-06".parse().unwrap();
        let (a, b) = (key(day, "shardId-1", "999", "1000"), key(day, "shardId-1", "1001", "1002"));
        assert!(a < b, "{a} sorts before {b}");
        assert_eq!(range_of(&a), Some((padded("999").as_str(), padded("1000").as_str())));
        assert_eq!(day_of_key(&a), Some(day));
        assert!(a.starts_with("events/day=2026-12-06/shard=shardId-1/"));
        assert_eq!(range_of("events/day=2026-12-06/shard=x/notes.txt"), None);
    }
}
