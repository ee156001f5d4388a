//! `GET /search`: transactions by the words of their transfer's memo (Postgres full-text
//! search, `simple` configuration, a GIN index on `views.transfers`), their kind or a
//! part of the other party's account id, by amount and by day; newest first or best
//! matches first (`order=relevance`), keyset-paged. A customer finds their own accounts' transactions only (a transfer's
//! memo is its reference: the recipient sees it on the credit, as on a statement);
//! staff everyone's, and the accounts whose owner starts with the words (decision 0042).

use crate::AppState;
use axum::Json;
use axum::extract::State;
use bank_api::views::{AccountRow, SearchHit, SearchOrder, SearchPage, SearchQuery};
use chrono::{DateTime, NaiveDate, Utc};
use service_kit::auth::Caller;
use service_kit::extract::{ApiQuery, in_range};
use service_kit::{ApiError, ErrorCode};
use uuid::Uuid;

/// The errors of `GET /search`, beside the common ones.
pub const SEARCH_ERRORS: &[ErrorCode] = &[ErrorCode::InvalidQuery, ErrorCode::Forbidden];

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidQuery, message)
}

/// Where a page ends: the last hit's `(rank, recorded_at, account_id, version)`; the
/// rank (a `real`, written as its bits) only in the order by relevance. A cursor read
/// in the other order is still a position: by newest its rank is not used, by
/// relevance a cursor without one starts from the best matches again.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Cursor {
    rank: Option<f32>,
    recorded_at: DateTime<Utc>,
    account_id: Uuid,
    version: i64,
}

/// A hit with the rank it was ordered by.
#[derive(sqlx::FromRow)]
struct Ranked {
    #[sqlx(flatten)]
    hit: SearchHit,
    rank: f32,
}

impl Cursor {
    fn after(ranked: &Ranked, order: SearchOrder) -> Self {
        let hit = &ranked.hit;
        let (recorded_at, version) = (hit.transaction.recorded_at, i64::from(hit.transaction.version));
        let rank = (order == SearchOrder::Relevance).then_some(ranked.rank);
        Cursor { rank, recorded_at, account_id: hit.account_id, version }
    }

    fn encode(&self) -> String {
        let rank = self.rank.map(|r| format!("r{:08x}_", r.to_bits())).unwrap_or_default();
        format!("{rank}{}_{}_{}", self.recorded_at.timestamp_micros(), self.account_id.simple(), self.version)
    }

    fn decode(text: &str, order: SearchOrder) -> Result<Self, ApiError> {
        let bad = || invalid("cursor is not a next_cursor this route gave");
        let (rank, text) = match text.strip_prefix('r') {
            Some(rest) => {
                let (bits, rest) = rest.split_once('_').ok_or_else(bad)?;
                let bits = u32::from_str_radix(bits, 16).ok().filter(|_| bits.len() == 8).ok_or_else(bad)?;
                (Some(f32::from_bits(bits)), rest)
            }
            None => (None, text),
        };
        let rank = match order {
            SearchOrder::Newest => None,
            // (a `real` above every rank: Postgres orders NaN above all numbers too)
            SearchOrder::Relevance => Some(rank.unwrap_or(f32::INFINITY)),
        };
        let mut parts = text.split('_');
        let (Some(micros), Some(account), Some(version), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        use chrono::Datelike;
        Ok(Cursor {
            rank,
            recorded_at: micros
                .parse()
                .ok()
                .and_then(DateTime::from_timestamp_micros)
                .filter(|t| YEARS.contains(&t.year()))
                .ok_or_else(bad)?,
            account_id: Uuid::parse_str(account).map_err(|_| bad())?,
            version: version.parse().map_err(|_| bad())?,
        })
    }
}

/// The years a day or a cursor may name (Postgres stores fewer than chrono reads).
const YEARS: std::ops::RangeInclusive<i32> = 1970..=9999;

/// The start of `day` (`YYYY-MM-DD`, UTC, 1970 to 9999), or of the day after it with
/// `next`.
fn day(name: &str, text: Option<&str>, next: bool) -> Result<Option<DateTime<Utc>>, ApiError> {
    use chrono::Datelike;
    let Some(text) = text else { return Ok(None) };
    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .filter(|d| YEARS.contains(&d.year()))
        .ok_or_else(|| invalid(format!("{name} must be a day from 1970 to 9999, YYYY-MM-DD")))?;
    let date = if next { date.succ_opt().ok_or_else(|| invalid(format!("{name} is out of range")))? } else { date };
    Ok(Some(date.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc()))
}

/// Transactions found, newest first (or the best matches first).
#[utoipa::path(get, path = "/search", tag = "search",
    params(SearchQuery),
    responses((status = 200, description = "a page of what was found", body = SearchPage)))]
pub async fn search(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<SearchQuery>,
) -> Result<Json<SearchPage>, ApiError> {
    caller.person()?;
    let words = match query.q.as_deref().map(str::trim) {
        Some("") => return Err(invalid("q must hold a word")),
        Some(q) if q.chars().count() > 200 => return Err(invalid("q is longer than 200 characters")),
        Some(q) if q.contains('\0') => return Err(invalid("q must not hold a NUL character")),
        other => other,
    };
    let amount = in_range("amount", query.amount, i64::MAX)?;
    if amount == Some(0) {
        return Err(invalid("amount must be at least 1"));
    }
    let (from, to) = (day("from", query.from.as_deref(), false)?, day("to", query.to.as_deref(), true)?);
    let account = query
        .account
        .as_deref()
        .map(|a| Uuid::parse_str(a).map_err(|_| invalid("account must be an account id")))
        .transpose()?;
    let limit = in_range("limit", query.limit, 100)?.unwrap_or(20);
    if limit < 1 {
        return Err(invalid("limit must be at least 1"));
    }
    // a part of an account id as the app shows it (`…1a2b3c4d`) or longer: 8 or more
    // hex digits and dashes; shorter words would match ids by chance
    let id_part = words
        .map(|w| w.trim_start_matches('…').to_ascii_lowercase())
        .filter(|w| w.len() >= 8 && w.len() <= 36 && w.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'));
    // by relevance without words every rank is 0: newest first
    let order = query.order.unwrap_or_default();
    let cursor = query.cursor.as_deref().map(|c| Cursor::decode(c, order)).transpose()?;
    // by relevance: how often and how close the words are in the memo (ts_rank), a
    // match of the kind or of the other party's account a little above none
    let (rank, after, by) = match order {
        SearchOrder::Newest => (
            "0",
            "(t.recorded_at, t.account_id, t.version) < ($7, $8, $9)",
            "t.recorded_at desc, t.account_id desc, t.version desc",
        ),
        SearchOrder::Relevance => (
            "coalesce(ts_rank(to_tsvector('simple', x.memo), websearch_to_tsquery('simple', $6)), 0)
             + case when t.kind = lower($6) or strpos(t.counterparty::text, $11) > 0 then 0.01 else 0 end",
            "(r.rank, t.recorded_at, t.account_id, t.version) < ($12, $7, $8, $9)",
            "r.rank desc, t.recorded_at desc, t.account_id desc, t.version desc",
        ),
    };
    // a customer: their own accounts only (another's account id finds nothing)
    let owner = (!caller.is_staff()).then_some(caller.subject.as_str());
    let pool = &state.kit.pool;
    let sql = format!(
        "select t.account_id, t.version, t.kind, t.amount, t.currency, t.balance_after, t.transfer_id,
                t.counterparty, coalesce(x.memo, '') as memo, t.recorded_at, r.rank
         from views.account_transactions t
         join views.accounts a on a.id = t.account_id
         left join views.transfers x on x.id = t.transfer_id
         cross join lateral (select ({rank})::real as rank) r
         where ($1::text is null or a.owner = $1)
           and ($2::uuid is null or t.account_id = $2)
           and ($3::int8 is null or t.amount = $3)
           and ($4::timestamptz is null or t.recorded_at >= $4)
           and ($5::timestamptz is null or t.recorded_at < $5)
           and ($6::text is null
                or t.transfer_id in (select id from views.transfers
                                     where to_tsvector('simple', memo) @@ websearch_to_tsquery('simple', $6))
                or t.kind = lower($6)
                or strpos(t.counterparty::text, $11) > 0)
           and ($7::timestamptz is null or {after})
         order by {by}
         limit $10"
    );
    let mut items: Vec<Ranked> = sqlx::query_as(&sql)
        .bind(owner)
        .bind(account)
        .bind(amount)
        .bind(from)
        .bind(to)
        .bind(words)
        .bind(cursor.map(|c| c.recorded_at))
        .bind(cursor.map(|c| c.account_id))
        .bind(cursor.map(|c| c.version))
        .bind(limit + 1)
        .bind(id_part)
        .bind(cursor.and_then(|c| c.rank))
        .fetch_all(pool)
        .await
        .map_err(crate::http::fault)?;
    let more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    let next_cursor = if more { items.last().map(|hit| Cursor::after(hit, order).encode()) } else { None };
    let items: Vec<SearchHit> = items.into_iter().map(|r| r.hit).collect();
    let accounts: Vec<AccountRow> = match words {
        Some(words) if caller.is_staff() && cursor.is_none() => sqlx::query_as(
            "select id, owner, currency, status, balance, version, opened_at, updated_at from views.accounts
             where starts_with(lower(owner), lower($1)) order by owner, opened_at limit 20",
        )
        .bind(words)
        .fetch_all(pool)
        .await
        .map_err(crate::http::fault)?,
        _ => Vec::new(),
    };
    Ok(Json(SearchPage { items, accounts, next_cursor }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_as_it_was_written_and_nothing_else_reads() {
        let cursor = Cursor {
            rank: None,
            recorded_at: DateTime::from_timestamp_micros(1_796_520_587_562_123).unwrap_or_default(),
            account_id: Uuid::now_v7(),
            version: 42,
        };
        assert_eq!(Cursor::decode(&cursor.encode(), SearchOrder::Newest).ok(), Some(cursor));
        let ranked = Cursor { rank: Some(0.0607927), ..cursor };
        assert!(ranked.encode().starts_with("r3d7901c4_"), "{}", ranked.encode());
        assert_eq!(Cursor::decode(&ranked.encode(), SearchOrder::Relevance).ok(), Some(ranked));
        // a cursor of the other order is a position still
        let plain = Cursor { rank: Some(f32::INFINITY), ..cursor };
        assert_eq!(Cursor::decode(&cursor.encode(), SearchOrder::Relevance).ok(), Some(plain));
        assert_eq!(Cursor::decode(&ranked.encode(), SearchOrder::Newest).ok(), Some(cursor));
        let nan = Cursor::decode(&format!("r7fc00000_{}", cursor.encode()), SearchOrder::Relevance).ok();
        assert!(nan.is_some_and(|c| c.rank.is_some_and(f32::is_nan)));
        assert!(Cursor::decode(&format!("r12_{}", cursor.encode()), SearchOrder::Relevance).is_err());
        let ancient = format!("-99999999999999999_{}_1", cursor.account_id.simple());
        for bad in [
            "",
            "1_2",
            "x_0190_1",
            "1_notauuid_1",
            &format!("{}_x", cursor.encode()),
            "99999999999999999999_0_1",
            &ancient,
        ] {
            assert!(Cursor::decode(bad, SearchOrder::Newest).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn days_are_utc_days_and_to_ends_with_its_day() {
        let start = day("from", Some("2026-12-06"), false).ok().flatten().map(|d| d.to_rfc3339());
        assert_eq!(start.as_deref(), Some("2026-12-06T00:00:00+00:00"));
        let end = day("to", Some("2026-12-31"), true).ok().flatten().map(|d| d.to_rfc3339());
        assert_eq!(end.as_deref(), Some("2027-01-01T00:00:00+00:00"));
        assert!(day("from", Some("2026-13-01"), false).is_err());
        assert!(day("from", Some("yesterday"), false).is_err());
        assert!(day("from", Some("-5000-01-01"), false).is_err());
        assert!(day("from", Some("1969-12-31"), false).is_err());
        let last = day("to", Some("9999-12-31"), true).ok().flatten().map(|d| d.to_rfc3339());
        assert_eq!(last.as_deref(), Some("+10000-01-01T00:00:00+00:00"));
        assert_eq!(day("from", None, false).ok(), Some(None));
    }
}
