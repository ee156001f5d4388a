//! Monthly statements: a finite job that writes, for each account and month, its
//! opening balance, every movement with its memo and running balance, and its closing
//! balance, as CSV and as PDF, into the archive's bucket at
//! `statements/<account id>/<YYYY-MM>.csv|.pdf`.
//!
//! The balances come from the event store: the account's events in order, decoded as
//! the account aggregate decodes them; each movement's `balance_after` must equal the
//! running balance, or the job fails. The files depend only on the events before the
//! month's end, so running the job again for a month writes the same bytes (a month
//! still under way gets the movements so far).
//!
//! `archiver statements --month M [--account ID|all]` runs the job and exits. The task
//! `statements.statement.generate` (`{"month": "YYYY-MM", "account": ID | "all"}`,
//! posted to the event bus by staff or a `service`) reaches the river `statements`,
//! which checks it and runs the job as a child process; when it succeeded it records
//! `statement.generated` (the task's id as its stream, so once), when it was refused
//! `statement.task_rejected`.

use crate::s3::Bucket;
use bank_domain::account::{AccountEvent, CREDIT_EVENTS};
use bank_domain::aggregate::decode_versioned;
use bank_domain::transfer::TransferEvent;
use chrono::{DateTime, Utc};
use eventstore::EventStore;
use eventstore::store::{Append, NewEvent};
use futures::StreamExt;
pub use pond::statements::{Month, PREFIX, key, list};
use rapids::river::{Handler, HandlerError, RiverEvent};
use rapids::tasks::{Refuser, StoredTask};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// The river that takes the task.
pub const RIVER: &str = "statements";
/// Its topics.
pub const TOPICS: &str = "statements.*";
/// Generate the statements of a month.
pub const GENERATE: &str = rapids::tasks::STATEMENTS_GENERATE;
/// The job's exit code when it refuses its arguments (no such account in that month).
pub const EXIT_REFUSED: i32 = 3;
/// The job's exit code when an account's events do not make a statement (the others
/// were written): an operator looks; running it again will not help.
pub const EXIT_FAILED: i32 = 4;
const REFUSER: Refuser = Refuser { service: "archiver", domain: "statement" };
/// Statements written at once.
const CONCURRENCY: usize = 8;

/// Whose statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    All,
    Account(Uuid),
}

impl Scope {
    pub fn parse(text: &str) -> Result<Scope, String> {
        match text {
            "all" => Ok(Scope::All),
            id => id
                .parse()
                .map(Scope::Account)
                .map_err(|_| format!("account must be an account id or \"all\" (got {id:?})")),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::All => f.write_str("all"),
            Scope::Account(id) => write!(f, "{id}"),
        }
    }
}

/// One movement of a statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Line {
    pub recorded_at: DateTime<Utc>,
    /// The event's type (`account.deposited`).
    pub event: String,
    pub description: String,
    pub memo: String,
    /// Minor units; negative for money out.
    pub amount: i64,
    /// The balance after it, in minor units.
    pub balance: i64,
}

/// One account's statement of one month.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Statement {
    pub account_id: Uuid,
    pub owner: String,
    pub currency: String,
    pub month: String,
    pub opening: i64,
    pub lines: Vec<Line>,
    pub closing: i64,
}

/// Why the job failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Its arguments name nothing to do (exit code [`EXIT_REFUSED`]).
    #[error("{0}")]
    Refused(String),
    /// The database or the bucket did not answer (exit 1): running it again may pass.
    #[error("{0}")]
    Unavailable(String),
    /// An account's events do not make a statement (exit [`EXIT_FAILED`]).
    #[error("{0}")]
    Failed(String),
}

impl From<eventstore::StoreError> for JobError {
    /// Events that do not decode, or a corrupt store, are the data's fault; the rest
    /// (the database away) may pass.
    fn from(e: eventstore::StoreError) -> Self {
        match e {
            eventstore::StoreError::Codec(_) | eventstore::StoreError::Corrupt(_) => JobError::Failed(e.to_string()),
            _ => JobError::Unavailable(e.to_string()),
        }
    }
}

impl From<crate::s3::S3Error> for JobError {
    fn from(e: crate::s3::S3Error) -> Self {
        JobError::Unavailable(e.to_string())
    }
}

/// The statement of `account` for `month` from its events; `None` when it was not
/// opened before the month's end.
pub async fn build(store: &EventStore, account: Uuid, month: Month) -> Result<Option<Statement>, JobError> {
    let events = store.read_stream(account, 0, None).await?;
    let (start, end) = (month.start(), month.end());
    let mut statement: Option<Statement> = None;
    let mut balance = 0i64;
    for recorded in events.into_iter().take_while(|e| e.recorded_at < end) {
        let decoded: AccountEvent = decode_versioned(&recorded.event_type, recorded.schema_version, recorded.data)
            .map_err(|e| JobError::Failed(format!("account {account}: {e}")))?;
        let movement = match &decoded {
            AccountEvent::Opened { owner, currency } => {
                statement = Some(Statement {
                    account_id: account,
                    owner: owner.clone(),
                    currency: currency.as_str().to_owned(),
                    month: month.to_string(),
                    opening: 0,
                    lines: Vec::new(),
                    closing: 0,
                });
                None
            }
            AccountEvent::Deposited { amount, balance_after, .. } => {
                Some((*amount, *balance_after, "Deposit".into(), None))
            }
            AccountEvent::Withdrawn { amount, balance_after, .. } => {
                Some((*amount, *balance_after, "Withdrawal".into(), None))
            }
            AccountEvent::PaymentReceived { reference, amount, balance_after, .. } => {
                Some((*amount, *balance_after, format!("Payment received, reference {reference}"), None))
            }
            AccountEvent::PaymentSent { reference, amount, balance_after, .. } => {
                Some((*amount, *balance_after, format!("Payment sent, reference {reference}"), None))
            }
            AccountEvent::Debited { transfer_id, amount, balance_after, counterparty, .. } => {
                Some((*amount, *balance_after, format!("Transfer to {counterparty}"), Some(*transfer_id)))
            }
            AccountEvent::Credited { transfer_id, amount, balance_after, counterparty, .. } => {
                Some((*amount, *balance_after, format!("Transfer from {counterparty}"), Some(*transfer_id)))
            }
            AccountEvent::Refunded { transfer_id, amount, balance_after, .. } => {
                Some((*amount, *balance_after, format!("Refund of transfer {transfer_id}"), Some(*transfer_id)))
            }
            AccountEvent::Closed {}
            | AccountEvent::DebitRejected { .. }
            | AccountEvent::CreditRejected { .. }
            | AccountEvent::RefundDiverted { .. } => None,
        };
        let Some((amount, balance_after, description, transfer)) = movement else { continue };
        let signed = if CREDIT_EVENTS.contains(&recorded.event_type.as_str()) { amount } else { -amount };
        balance = balance.checked_add(signed).filter(|b| *b == balance_after).ok_or_else(|| {
            JobError::Failed(format!("account {account}: version {} does not add up", recorded.version))
        })?;
        let Some(statement) = statement.as_mut() else {
            return Err(JobError::Failed(format!("account {account}: a movement before its opening")));
        };
        if recorded.recorded_at < start {
            statement.opening = balance;
        } else {
            let memo = match transfer {
                Some(id) => memo_of(store, id).await?,
                None => String::new(),
            };
            statement.lines.push(Line {
                recorded_at: recorded.recorded_at,
                event: recorded.event_type.clone(),
                description,
                memo,
                amount: signed,
                balance,
            });
        }
        statement.closing = balance;
    }
    Ok(statement)
}

/// The memo of a transfer (its `transfer.created`; empty when it had none).
async fn memo_of(store: &EventStore, transfer: Uuid) -> Result<String, JobError> {
    let first = store.read_stream(transfer, 0, Some(1)).await?;
    let Some(created) = first.into_iter().next() else { return Ok(String::new()) };
    match decode_versioned::<TransferEvent>(&created.event_type, created.schema_version, created.data) {
        Ok(TransferEvent::Created { memo, .. }) => Ok(memo),
        _ => Ok(String::new()),
    }
}

/// A text cell a spreadsheet will not run: one starting with `=`, `+`, `-`, `@`, a tab
/// or a carriage return (a memo is the payer's words) gets a leading `'`.
fn inert(text: &str) -> String {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{text}") } else { text.to_owned() }
}

/// The statement as CSV: one row per movement between an opening and a closing row;
/// amounts and balances in minor units.
pub fn csv(statement: &Statement) -> Vec<u8> {
    let mut out = csv::Writer::from_writer(Vec::new());
    let header =
        ["account_id", "currency", "recorded_at", "event", "description", "memo", "amount_minor", "balance_minor"];
    let id = statement.account_id.to_string();
    let month = Month::parse(&statement.month).ok();
    let time = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let mut rows: Vec<[String; 8]> = Vec::new();
    let (start, end) = month.map_or((String::new(), String::new()), |m| (time(m.start()), time(m.end())));
    rows.push([
        id.clone(),
        statement.currency.clone(),
        start,
        "opening_balance".into(),
        "Opening balance".into(),
        String::new(),
        String::new(),
        statement.opening.to_string(),
    ]);
    for line in &statement.lines {
        rows.push([
            id.clone(),
            statement.currency.clone(),
            time(line.recorded_at),
            line.event.clone(),
            inert(&line.description),
            inert(&line.memo),
            line.amount.to_string(),
            line.balance.to_string(),
        ]);
    }
    rows.push([
        id,
        statement.currency.clone(),
        end,
        "closing_balance".into(),
        "Closing balance".into(),
        String::new(),
        String::new(),
        statement.closing.to_string(),
    ]);
    // writing to a Vec fails only on a row of another length: every row has 8
    let _ = out.write_record(header);
    for row in &rows {
        let _ = out.write_record(row);
    }
    out.into_inner().unwrap_or_default()
}

/// Text for the PDF's standard font (WinAnsi): Latin-1 kept, anything else `?`.
fn latin1(text: &str, max_chars: usize) -> Vec<u8> {
    let mut out: Vec<u8> = text
        .chars()
        .take(max_chars)
        .map(|c| match u32::from(c) {
            0x20..=0x7e | 0xa0..=0xff => u32::from(c) as u8,
            _ => b'?',
        })
        .collect();
    if text.chars().count() > max_chars {
        out.extend_from_slice(b"...");
    }
    out
}

/// The statement as a PDF (A4, Helvetica, as many pages as its lines need). Nothing
/// in it depends on when it was made.
pub fn pdf(statement: &Statement) -> Vec<u8> {
    use pdf_writer::{Content, Name, Pdf, Rect, Ref, Str};
    const LINES_PER_PAGE: usize = 45;
    let font = Name(b"F1");
    let (catalog, tree, font_id) = (Ref::new(1), Ref::new(2), Ref::new(3));
    let chunks: Vec<&[Line]> =
        if statement.lines.is_empty() { vec![&[]] } else { statement.lines.chunks(LINES_PER_PAGE).collect() };
    let pages: Vec<(Ref, Ref)> =
        (0..chunks.len()).map(|i| (Ref::new(4 + 2 * i as i32), Ref::new(5 + 2 * i as i32))).collect();
    let mut pdf = Pdf::new();
    pdf.catalog(catalog).pages(tree);
    pdf.pages(tree).kids(pages.iter().map(|(page, _)| *page)).count(pages.len() as i32);
    for (i, (chunk, (page_id, content_id))) in chunks.iter().zip(&pages).enumerate() {
        let mut page = pdf.page(*page_id);
        page.media_box(Rect::new(0.0, 0.0, 595.0, 842.0));
        page.parent(tree);
        page.contents(*content_id);
        page.resources().fonts().pair(font, font_id);
        drop(page);
        let mut content = Content::new();
        let mut y = 800.0;
        let text = |content: &mut Content, x: f32, y: f32, size: f32, bytes: &[u8]| {
            content.begin_text().set_font(font, size).next_line(x, y).show(Str(bytes)).end_text();
        };
        let heading = format!("Statement {} - account {}", statement.month, statement.account_id);
        text(&mut content, 40.0, y, 13.0, &latin1(&heading, 90));
        y -= 18.0;
        let who = format!(
            "Owner: {}   Currency: {} (amounts in minor units)   Page {} of {}",
            statement.owner,
            statement.currency,
            i + 1,
            pages.len()
        );
        text(&mut content, 40.0, y, 9.0, &latin1(&who, 110));
        y -= 22.0;
        if i == 0 {
            text(&mut content, 40.0, y, 10.0, format!("Opening balance: {}", statement.opening).as_bytes());
            y -= 18.0;
        }
        for (x, title) in
            [(40.0, "Date (UTC)"), (150.0, "Description"), (330.0, "Memo"), (460.0, "Amount"), (520.0, "Balance")]
        {
            text(&mut content, x, y, 9.0, title.as_bytes());
        }
        y -= 14.0;
        for line in chunk.iter() {
            let date = line.recorded_at.format("%Y-%m-%d %H:%M:%S").to_string();
            text(&mut content, 40.0, y, 8.0, date.as_bytes());
            text(&mut content, 150.0, y, 8.0, &latin1(&line.description, 40));
            text(&mut content, 330.0, y, 8.0, &latin1(&line.memo, 28));
            text(&mut content, 460.0, y, 8.0, line.amount.to_string().as_bytes());
            text(&mut content, 520.0, y, 8.0, line.balance.to_string().as_bytes());
            y -= 14.0;
        }
        if i + 1 == pages.len() {
            y -= 8.0;
            text(&mut content, 40.0, y, 10.0, format!("Closing balance: {}", statement.closing).as_bytes());
        }
        pdf.stream(*content_id, &content.finish().into_vec());
    }
    pdf.type1_font(font_id).base_font(Name(b"Helvetica")).encoding_predefined(Name(b"WinAnsiEncoding"));
    pdf.finish()
}

/// The accounts with a statement for `month`: `scope`'s, opened before its end.
async fn accounts(pool: &PgPool, month: Month, scope: Scope) -> Result<Vec<Uuid>, JobError> {
    let opened: Vec<Uuid> = sqlx::query_scalar(
        "select stream_id from es.events
         where stream_type = 'account' and version = 1 and recorded_at < $1 and ($2::uuid is null or stream_id = $2)
         order by stream_id",
    )
    .bind(month.end())
    .bind(match scope {
        Scope::All => None,
        Scope::Account(id) => Some(id),
    })
    .fetch_all(pool)
    .await
    .map_err(|e| JobError::Unavailable(e.to_string()))?;
    if let (Scope::Account(id), true) = (scope, opened.is_empty()) {
        return Err(JobError::Refused(format!("no account {id} was open by the end of {month}")));
    }
    Ok(opened)
}

/// What the job did.
#[derive(Debug, Serialize)]
pub struct Done {
    pub month: String,
    pub scope: String,
    pub statements: usize,
    pub files: usize,
}

/// The job: writes the statements of `month` for `scope` (CSV and PDF each).
pub async fn run(pool: &PgPool, bucket: &Bucket, month: Month, scope: Scope) -> Result<Done, JobError> {
    let store = EventStore::new(pool.clone());
    let accounts = accounts(pool, month, scope).await?;
    let written = futures::stream::iter(accounts)
        .map(|account| {
            let store = store.clone();
            async move {
                let Some(statement) = build(&store, account, month).await? else { return Ok(0) };
                let month = statement.month.clone();
                bucket.put(&key(account, &month, "csv"), csv(&statement), "text/csv; charset=utf-8").await?;
                bucket.put(&key(account, &month, "pdf"), pdf(&statement), "application/pdf").await?;
                Ok::<usize, JobError>(1)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    // every account that can have its statement gets it; then the first outage, or
    // the accounts whose events do not make one
    let mut statements = 0;
    let mut failed = Vec::new();
    for outcome in written {
        match outcome {
            Ok(n) => statements += n,
            Err(JobError::Failed(why)) => failed.push(why),
            Err(e) => return Err(e),
        }
    }
    if !failed.is_empty() {
        tracing::error!(%month, %scope, statements, failed = failed.len(), "statements not written: {}", failed.join("; "));
        return Err(JobError::Failed(format!("{} statements not written: {}", failed.len(), failed.join("; "))));
    }
    tracing::info!(%month, %scope, statements, "statements written");
    Ok(Done { month: month.to_string(), scope: scope.to_string(), statements, files: 2 * statements })
}

/// The task's body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateTask {
    /// `YYYY-MM`.
    pub month: String,
    /// An account's id, or `all`.
    pub account: String,
}

/// The river `statements`: runs the job for each task `statements.statement.generate`.
pub struct Tasks {
    pool: PgPool,
    store: EventStore,
    /// What the job's child process needs beside the inherited environment.
    env: Vec<(&'static str, String)>,
}

impl Tasks {
    pub fn new(pool: PgPool, config: &crate::Config) -> Self {
        let mut env = vec![
            ("DATABASE_URL", config.service.database.database_url.expose().to_owned()),
            ("ARCHIVE_BUCKET", config.s3.archive_bucket.clone()),
        ];
        if let Some(region) = &config.s3.s3_region {
            env.push(("S3_REGION", region.clone()));
        }
        if let Some(endpoint) = &config.s3.s3_endpoint {
            env.push(("S3_ENDPOINT", endpoint.clone()));
        }
        Tasks { store: EventStore::new(pool.clone()), pool, env }
    }

    async fn run_task(&self, event: &RiverEvent) -> Result<(), HandlerError> {
        let Some(task) = rapids::tasks::load(&self.pool, event).await? else { return Ok(()) };
        if task.name != GENERATE {
            return self.reject(&task, "unknown_task", "the archiver takes statements.statement.generate only").await;
        }
        if !matches!(task.metadata.role.as_deref(), Some("teller" | "admin" | "service")) {
            return self.reject(&task, "forbidden", "only staff or a service start the statements job").await;
        }
        let parsed = serde_json::from_value::<GenerateTask>(task.data.clone())
            .map_err(|e| e.to_string())
            .and_then(|body| Ok((Month::parse(&body.month)?, Scope::parse(&body.account)?)));
        let (month, scope) = match parsed {
            Ok(parsed) => parsed,
            Err(message) => return self.reject(&task, "invalid_body", &message).await,
        };
        // a redelivery of a task already done (or refused) runs nothing again
        let done: bool = sqlx::query_scalar(
            "select exists (select 1 from es.events where stream_id = $1 and stream_type in ('statement_job', 'task'))",
        )
        .bind(task.id)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| HandlerError::Transient(e.to_string()))?;
        if done {
            return Ok(());
        }
        // one run of a task at a time, across instances (a lease taken over mid-job
        // hands the page to another reader while this one still runs it)
        // (a connection of its own, closed at the end, so that the session's lock never
        // goes back to the pool if this future is dropped mid-job)
        let mut lock = self.pool.acquire().await.map_err(|e| HandlerError::Transient(e.to_string()))?.detach();
        let key = i64::from_be_bytes(task.id.as_bytes()[8..].try_into().unwrap_or_default());
        let locked: bool = sqlx::query_scalar("select pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut lock)
            .await
            .map_err(|e| HandlerError::Transient(e.to_string()))?;
        if !locked {
            return Err(HandlerError::Transient(format!("task {} is running elsewhere", task.id)));
        }
        let outcome = self.run_job(&task, month, scope).await;
        let _ = sqlx::query("select pg_advisory_unlock($1)").bind(key).execute(&mut lock).await;
        outcome
    }

    /// Runs the job as a child process and records its outcome.
    async fn run_job(&self, task: &StoredTask, month: Month, scope: Scope) -> Result<(), HandlerError> {
        let exe = std::env::current_exe().map_err(|e| HandlerError::Permanent(e.to_string()))?;
        let status = tokio::process::Command::new(exe)
            .args(["statements", "--month", &month.to_string(), "--account", &scope.to_string()])
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .status()
            .await
            .map_err(|e| HandlerError::Transient(format!("the statements job did not start: {e}")))?;
        match status.code() {
            Some(0) => self.record_done(task, month, scope).await,
            Some(EXIT_REFUSED) => {
                self.reject(task, "account_not_found", &format!("no account {scope} was open by the end of {month}"))
                    .await
            }
            // an account's events that do not make a statement: parked for an operator
            Some(EXIT_FAILED) => {
                Err(HandlerError::Permanent(format!("the statements job for {month} ({scope}) failed: {status}")))
            }
            // the database or the bucket away, or the job killed: again until it passes
            _ => Err(HandlerError::Transient(format!(
                "the statements job for {month} ({scope}) did not finish: {status}"
            ))),
        }
    }

    /// `statement.generated`, once per task (its id is the stream).
    async fn record_done(&self, task: &StoredTask, month: Month, scope: Scope) -> Result<(), HandlerError> {
        let append = Append {
            stream_id: task.id,
            stream_type: "statement_job",
            expected_version: 0,
            events: vec![NewEvent {
                event_id: Uuid::now_v7(),
                event_type: "statement.generated".into(),
                schema_version: 1,
                data: serde_json::json!({"task_id": task.id, "month": month.to_string(), "account": scope.to_string()}),
                metadata: None,
            }],
            metadata: eventstore::envelope::EventMetadata {
                source: Some(REFUSER.domain.into()),
                service: Some(REFUSER.service.into()),
                ..task.causes(REFUSER.service, None)
            },
            snapshot: None,
            idempotency: Vec::new(),
        };
        // the job is done: a few tries here rather than the whole job again
        let mut pause = std::time::Duration::from_millis(200);
        for attempt in 1.. {
            match self.store.append(&append).await {
                Ok(_) => {
                    tracing::info!(task_id = %task.id, %month, %scope, "statements job done");
                    return Ok(());
                }
                Err(eventstore::StoreError::Conflict { .. }) => return Ok(()),
                Err(e) if attempt >= 5 => return Err(HandlerError::Transient(e.to_string())),
                Err(_) => {
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
            }
        }
        Ok(())
    }

    async fn reject(&self, task: &StoredTask, code: &str, message: &str) -> Result<(), HandlerError> {
        rapids::tasks::reject(&self.store, REFUSER, task, code, message).await
    }
}

impl Handler for Tasks {
    async fn handle(&self, _tx: &mut PgConnection, events: &[RiverEvent]) -> Result<(), HandlerError> {
        for event in events.iter().filter(|e| rapids::tasks::is_task(e, "statements.")) {
            use tracing::Instrument;
            self.run_task(event).instrument(event.span()).await?;
        }
        Ok(())
    }

    fn transactional(&self) -> bool {
        false
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_files_say_the_same_and_are_the_same_each_time() {
        let statement = Statement {
            account_id: Uuid::from_u128(1),
            owner: "alice".into(),
            currency: "EUR".into(),
            month: "2025-11".into(),
            opening: 1000,
            lines: vec![Line {
                recorded_at: "2025-11-03T10:00:00Z".parse().unwrap(),
                event: "account.debited".into(),
                description: "Transfer to x".into(),
                memo: "rent, \"november\" – ünï".into(),
                amount: -250,
                balance: 750,
            }],
            closing: 750,
        };
        let text = String::from_utf8(csv(&statement)).unwrap();
        let mut rows = csv::Reader::from_reader(text.as_bytes());
        let rows: Vec<csv::StringRecord> = rows.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 3);
        assert_eq!(&rows[0][3], "opening_balance");
        assert_eq!(&rows[0][7], "1000");
        assert_eq!(&rows[1][5], "rent, \"november\" – ünï");
        assert_eq!((&rows[1][6], &rows[1][7]), ("-250", "750"));
        assert_eq!((&rows[2][3], &rows[2][7]), ("closing_balance", "750"));
        let mut formula = statement.clone();
        formula.lines[0].memo = "=HYPERLINK(\"http://x\")".into();
        let text = String::from_utf8(csv(&formula)).unwrap();
        let row = csv::Reader::from_reader(text.as_bytes()).records().nth(1).unwrap().unwrap();
        assert_eq!(&row[5], "'=HYPERLINK(\"http://x\")");
        let file = pdf(&statement);
        assert!(file.starts_with(b"%PDF-"));
        assert_eq!(file, pdf(&statement));
        let closing: &[u8] = b"(Closing balance: 750) Tj";
        assert!(file.windows(closing.len()).any(|w| w == closing));
    }
}
