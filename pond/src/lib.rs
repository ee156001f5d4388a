//! The ponds' bucket on S3 ([`s3`]) and where the statements lie in it
//! ([`statements`]): what the archiver and query-service share. No Kinesis here, so
//! query-service links none.
#![forbid(unsafe_code)]

pub mod s3;
pub mod statements;
