//! The monthly statements in the bucket: `statements/<account id>/<YYYY-MM>.csv|.pdf`
//! (written by the archiver's statements job, read by query-service).

use crate::s3::{Bucket, S3Error};
use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use uuid::Uuid;

/// Where the statements lie in the bucket.
pub const PREFIX: &str = "statements/";

/// A calendar month (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Month {
    first: NaiveDate,
}

impl Month {
    /// `YYYY-MM`, from 2000-01 to the current month.
    pub fn parse(text: &str) -> Result<Month, String> {
        let bad = || format!("month must be YYYY-MM, from 2000-01 to this month (got {text:?})");
        let (year, month) = text.split_once('-').ok_or_else(bad)?;
        if year.len() != 4 || month.len() != 2 {
            return Err(bad());
        }
        if !year.bytes().chain(month.bytes()).all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let (year, month): (i32, u32) = (year.parse().map_err(|_| bad())?, month.parse().map_err(|_| bad())?);
        let first = NaiveDate::from_ymd_opt(year, month, 1).ok_or_else(bad)?;
        let month = Month { first };
        if year < 2000 || month.start() > Utc::now() {
            return Err(bad());
        }
        Ok(month)
    }

    /// Its first instant.
    pub fn start(&self) -> DateTime<Utc> {
        Utc.from_utc_datetime(&self.first.and_time(chrono::NaiveTime::MIN))
    }

    /// The first instant after it.
    pub fn end(&self) -> DateTime<Utc> {
        let next = if self.first.month() == 12 {
            NaiveDate::from_ymd_opt(self.first.year() + 1, 1, 1)
        } else {
            NaiveDate::from_ymd_opt(self.first.year(), self.first.month() + 1, 1)
        };
        Utc.from_utc_datetime(&next.unwrap_or(NaiveDate::MAX).and_time(chrono::NaiveTime::MIN))
    }
}

impl std::fmt::Display for Month {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.first.format("%Y-%m"))
    }
}

/// The key of a statement's file (`csv` or `pdf`).
pub fn key(account: Uuid, month: &str, format: &str) -> String {
    format!("{PREFIX}{account}/{month}.{format}")
}

/// An account's statements in the bucket: the months, newest first, with the formats
/// each has.
pub async fn list(bucket: &Bucket, account: Uuid) -> Result<Vec<(String, Vec<String>)>, S3Error> {
    let prefix = format!("{PREFIX}{account}/");
    let mut months: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for object in bucket.list(&prefix).await? {
        let name = object.key.trim_start_matches(&prefix);
        if let Some((month, format)) = name.split_once('.')
            && Month::parse(month).is_ok()
            && matches!(format, "csv" | "pdf")
        {
            months.entry(month.to_owned()).or_default().push(format.to_owned());
        }
    }
    Ok(months.into_iter().rev().collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn months_parse_and_bound() {
        let m = Month::parse("2025-12").unwrap();
        assert_eq!(m.to_string(), "2025-12");
        assert_eq!(m.start().to_rfc3339(), "2025-12-01T00:00:00+00:00");
        assert_eq!(m.end().to_rfc3339(), "2026-01-01T00:00:00+00:00");
        for bad in ["2025-13", "2025-1", "25-01", "1999-12", "2025/01", "", "9999-01", "2025-+1", "+025-01"] {
            assert!(Month::parse(bad).is_err(), "{bad:?} refused");
        }
    }
}
