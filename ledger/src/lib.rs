//! The reconciliation: the bank's books kept from the event store, incrementally, and
//! checked all the time.
//!
//! A check reads the events committed since the last one (an `(xid, position)` cursor
//! below the oldest running transaction, as the tailer's poll source, so no commit is
//! passed over) and keeps, in `ledger.*`:
//!
//! * every account's balance: a customer's as its events say (`balance_after`, what
//!   the aggregate folds), each of the bank's own accounts as the sum of the postings
//!   against it (see [`bank_domain::ledger`]);
//! * per currency the sum of all of them, which is 0 when the books balance. An event
//!   whose balance change is not its posting (written past the aggregate, say) moves
//!   the sum off 0 and is recorded as a finding naming its account;
//! * per transfer what the accounts moved into `in_transit` for it: a settled transfer
//!   holds nothing, an unsettled one its amount or nothing;
//! * whether the views show each customer's account as the store does (compared once
//!   the views reach the version the ledger has read).
//!
//! Only one check runs at a time across processes (a transaction-scoped advisory
//! lock); the others skip their turn. [`run`] checks every interval and exports
//! `ledger_imbalance_minor{currency}`, the age of the last complete check and the
//! number of findings; [`check_now`] is `bankctl reconcile`.
#![forbid(unsafe_code)]

use bank_domain::account::AccountEvent;
use bank_domain::ledger::{self, BankAccount};
use bank_domain::transfer::TransferEvent;
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The advisory lock that lets one check run at a time.
const LOCK: i64 = 0x6c65_6467_6572; // "ledger"
/// Events read per round of a check.
const BATCH: i64 = 5_000;

/// What a check or a report failed on.
#[derive(Debug, thiserror::Error)]
#[error("reconciliation: {0}")]
pub struct Error(#[from] pub sqlx::Error);

/// One thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Finding {
    /// `unbalanced` (an event's balance change is not its posting), `undecodable`,
    /// `view_differs`, `in_transit` (a transfer holds the wrong amount in transit).
    pub kind: String,
    pub account_id: Option<Uuid>,
    pub transfer_id: Option<Uuid>,
    /// The event's position in the store, when an event is at fault.
    pub position: Option<i64>,
    pub detail: String,
}

/// Where the books stand.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Report {
    /// Whether nothing is wrong (see [`Report::balanced`]).
    pub balanced: bool,
    /// Events read since the ledger began.
    pub events: i64,
    /// When the last complete check ended.
    pub checked_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Per currency, the sum of every balance (0: balanced).
    pub imbalance: BTreeMap<String, i64>,
    /// Per currency, the `in_transit` account's balance and what the unsettled transfers hold.
    pub in_transit: BTreeMap<String, InTransit>,
    pub findings: Vec<Finding>,
}

/// A currency's `in_transit` account beside what its unsettled transfers hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct InTransit {
    pub balance: i64,
    pub open_transfers: i64,
    pub held_by_open_transfers: i64,
}

impl Report {
    /// True when nothing is wrong: every currency at 0, `in_transit` equal to what the
    /// open transfers hold, no finding.
    pub fn balanced(&self) -> bool {
        self.imbalance.values().all(|v| *v == 0)
            && self.in_transit.values().all(|t| t.balance == t.held_by_open_transfers)
            && self.findings.is_empty()
    }
}

/// One incremental check: reads what committed since the last one, in rounds, until it
/// has caught up. Returns how many events it read, or `None` when another process was
/// checking.
pub async fn check(pool: &PgPool) -> Result<Option<u64>, Error> {
    let mut read = 0u64;
    loop {
        let mut tx = pool.begin().await?;
        let locked: bool =
            sqlx::query_scalar("select pg_try_advisory_xact_lock($1)").bind(LOCK).fetch_one(&mut *tx).await?;
        if !locked {
            return Ok(None);
        }
        let n = round(&mut tx).await?;
        read += n as u64;
        if n < BATCH as usize {
            compare_views(&mut tx).await?;
            sqlx::query("update ledger.cursor set checked_at = now()").execute(&mut *tx).await?;
            tx.commit().await?;
            return Ok(Some(read));
        }
        tx.commit().await?;
    }
}

/// Runs a check, waiting for another process's to end first, then reports.
pub async fn check_now(pool: &PgPool) -> Result<Report, Error> {
    for _ in 0..600 {
        if check(pool).await?.is_some() {
            return report(pool).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Error(sqlx::Error::PoolTimedOut))
}

/// Forgets everything the ledger read, so that the next check reads the whole store.
pub async fn reset(pool: &PgPool) -> Result<(), Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("select pg_advisory_xact_lock($1)").bind(LOCK).execute(&mut *tx).await?;
    sqlx::query("truncate ledger.balances, ledger.totals, ledger.in_transit, ledger.findings")
        .execute(&mut *tx)
        .await?;
    sqlx::query("update ledger.cursor set xid = '0', position = 0, events = 0, checked_at = null")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Where the books stand, as the last check left them.
pub async fn report(pool: &PgPool) -> Result<Report, Error> {
    let (events, checked_at): (i64, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("select events, checked_at from ledger.cursor").fetch_one(pool).await?;
    let imbalance: Vec<(String, i64)> =
        sqlx::query_as("select currency, total from ledger.totals order by currency").fetch_all(pool).await?;
    let transit: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "select b.currency, b.balance,
                (select count(*) from ledger.in_transit t where t.currency = b.currency and t.amount <> 0),
                (select coalesce(sum(t.amount), 0)::int8 from ledger.in_transit t where t.currency = b.currency)
         from ledger.balances b where b.bank and b.account_id = any($1)",
    )
    .bind(in_transit_ids(pool).await?)
    .fetch_all(pool)
    .await?;
    let findings: Vec<Finding> = sqlx::query_as(
        "select kind, account_id, transfer_id, position, detail from ledger.findings order by id limit 1000",
    )
    .fetch_all(pool)
    .await?;
    let mut report = Report {
        balanced: false,
        events,
        checked_at,
        imbalance: imbalance.into_iter().collect(),
        in_transit: transit
            .into_iter()
            .map(|(c, balance, open, held)| {
                (c, InTransit { balance, open_transfers: open, held_by_open_transfers: held })
            })
            .collect(),
        findings,
    };
    report.balanced = report.balanced();
    Ok(report)
}

/// The `in_transit` accounts of the currencies the ledger has seen.
async fn in_transit_ids(pool: &PgPool) -> Result<Vec<Uuid>, Error> {
    let currencies: Vec<String> = sqlx::query_scalar("select currency from ledger.totals").fetch_all(pool).await?;
    Ok(currencies
        .iter()
        .filter_map(|c| bank_domain::Currency::parse(c).ok())
        .map(|c| BankAccount::InTransit.id(c))
        .collect())
}

#[derive(sqlx::FromRow)]
struct EventRow {
    xid_txt: String,
    position: i64,
    stream_id: Uuid,
    stream_type: String,
    version: i32,
    event_type: String,
    schema_version: i16,
    data: sqlx::types::Json<Value>,
}

#[derive(Debug, Clone)]
struct Balance {
    currency: String,
    bank: bool,
    balance: i64,
    version: i64,
}

#[derive(Debug, Clone)]
struct Transit {
    currency: String,
    amount: i64,
    transfer_amount: i64,
    state: String,
}

/// One round: up to [`BATCH`] events, folded into the ledger. Returns how many.
async fn round(tx: &mut PgConnection) -> Result<usize, Error> {
    let (xid, position): (String, i64) =
        sqlx::query_as("select xid::text, position from ledger.cursor").fetch_one(&mut *tx).await?;
    let rows: Vec<EventRow> = sqlx::query_as(
        // the alias differs from the column: `order by xid` must sort the xid8, not its text
        "select xid::text as xid_txt, position, stream_id, stream_type, version, type as event_type, schema_version, data
         from es.events
         where (xid, position) > ($1::text::xid8, $2)
           and xid < pg_snapshot_xmin(pg_current_snapshot())
           and stream_type in ('account', 'transfer')
         order by xid, position
         limit $3",
    )
    .bind(&xid)
    .bind(position)
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    let Some(last) = rows.last() else { return Ok(0) };
    let cursor = (last.xid_txt.clone(), last.position);

    // the rows this round touches, read at once
    let mut account_ids: Vec<Uuid> = Vec::new();
    let mut transfer_ids: Vec<Uuid> = Vec::new();
    for r in &rows {
        if r.stream_type == "account" {
            account_ids.push(r.stream_id);
        } else {
            transfer_ids.push(r.stream_id);
        }
        if let Some(t) = r.data.0.get("transfer_id").and_then(|t| t.as_str()).and_then(|t| t.parse().ok()) {
            transfer_ids.push(t);
        }
        if let Some(c) =
            r.data.0.get("currency").and_then(|c| c.as_str()).and_then(|c| bank_domain::Currency::parse(c).ok())
        {
            account_ids.extend(BankAccount::ALL.map(|k| k.id(c)));
        }
    }
    account_ids.sort_unstable();
    account_ids.dedup();
    transfer_ids.sort_unstable();
    transfer_ids.dedup();
    let mut balances: HashMap<Uuid, Balance> = sqlx::query_as::<_, (Uuid, String, bool, i64, i64)>(
        "select account_id, currency, bank, balance, version from ledger.balances where account_id = any($1)",
    )
    .bind(&account_ids)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|(id, currency, bank, balance, version)| (id, Balance { currency, bank, balance, version }))
    .collect();
    let mut transits: HashMap<Uuid, Transit> = sqlx::query_as::<_, (Uuid, String, i64, i64, String)>(
        "select transfer_id, currency, amount, transfer_amount, state from ledger.in_transit where transfer_id = any($1)",
    )
    .bind(&transfer_ids)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|(id, currency, amount, transfer_amount, state)| (id, Transit { currency, amount, transfer_amount, state }))
    .collect();

    let mut fold = Fold {
        balances: &mut balances,
        transits: &mut transits,
        changed_accounts: Vec::new(),
        changed_transfers: Vec::new(),
        totals: BTreeMap::new(),
        findings: Vec::new(),
    };
    for r in &rows {
        fold.event(r);
    }
    let Fold { changed_accounts, changed_transfers, totals, mut findings, .. } = fold;
    for id in &changed_transfers {
        if let Some(t) = transits.get(id) {
            findings.extend(transit_finding(*id, t));
        }
    }

    write_balances(tx, &balances, &changed_accounts).await?;
    write_transits(tx, &transits, &changed_transfers).await?;
    sqlx::query(
        "insert into ledger.totals (currency, total) select * from unnest($1::text[], $2::int8[])
         on conflict (currency) do update set total = ledger.totals.total + excluded.total",
    )
    .bind(totals.keys().cloned().collect::<Vec<_>>())
    .bind(totals.values().copied().collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    insert_findings(tx, &findings).await?;
    sqlx::query("update ledger.cursor set xid = $1::text::xid8, position = $2, events = events + $3")
        .bind(&cursor.0)
        .bind(cursor.1)
        .bind(rows.len() as i64)
        .execute(&mut *tx)
        .await?;
    Ok(rows.len())
}

/// The fold of one round's events over the rows it read.
struct Fold<'a> {
    balances: &'a mut HashMap<Uuid, Balance>,
    transits: &'a mut HashMap<Uuid, Transit>,
    changed_accounts: Vec<Uuid>,
    changed_transfers: Vec<Uuid>,
    /// Per currency, how much this round moved the sum of all balances.
    totals: BTreeMap<String, i64>,
    findings: Vec<Finding>,
}

impl Fold<'_> {
    fn event(&mut self, r: &EventRow) {
        if r.stream_type == "transfer" {
            self.transfer_event(r);
            return;
        }
        let event: AccountEvent =
            match eventstore::aggregate::decode_versioned(&r.event_type, r.schema_version, r.data.0.clone()) {
                Ok(e) => e,
                Err(e) => {
                    self.findings.push(Finding {
                        kind: "undecodable".into(),
                        account_id: Some(r.stream_id),
                        transfer_id: None,
                        position: Some(r.position),
                        detail: format!("{} v{}: {e}", r.event_type, r.version),
                    });
                    return;
                }
            };
        let account = r.stream_id;
        if let AccountEvent::Opened { currency, .. } = &event {
            let row = Balance { currency: currency.as_str().into(), bank: false, balance: 0, version: 0 };
            self.balances.entry(account).or_insert(row);
        }
        let Some(own) = self.balances.get_mut(&account) else {
            self.findings.push(Finding {
                kind: "unbalanced".into(),
                account_id: Some(account),
                transfer_id: None,
                position: Some(r.position),
                detail: format!("{} v{} of an account never opened", r.event_type, r.version),
            });
            return;
        };
        own.version = i64::from(r.version);
        self.changed_accounts.push(account);
        let Some(posting) = ledger::posting(account, &event) else { return };
        let currency = posting.currency.as_str().to_owned();
        if currency != own.currency {
            // a posting in another currency than the account holds: counted nowhere
            // (it balances nothing), recorded as a finding
            let detail = format!(
                "{} v{}: a posting in {currency} on an account that holds {}",
                r.event_type, r.version, own.currency
            );
            self.findings.push(unbalanced(account, &event, r.position, detail));
            // what the account gained or lost has no other side: the imbalance shows it
            let after = ledger::balance_after(&event).unwrap_or(own.balance);
            *self.totals.entry(own.currency.clone()).or_default() += after.saturating_sub(own.balance);
            own.balance = after;
            return;
        }
        // what the account's own balance moved by: as its event says, and as its posting says
        let before = own.balance;
        let after = ledger::balance_after(&event).unwrap_or(before);
        let posted = if posting.to == account {
            posting.amount
        } else if posting.from == account {
            -posting.amount
        } else {
            0
        };
        own.balance = after;
        let mut moved = after.saturating_sub(before);
        if moved != posted {
            let detail = format!(
                "{} v{}: the balance moved by {moved}, its posting by {posted} {currency}",
                r.event_type, r.version
            );
            self.findings.push(unbalanced(account, &event, r.position, detail));
        }
        // the bank's side (both sides, for a refund diverted to suspense)
        for (side, change) in [(posting.from, -posting.amount), (posting.to, posting.amount)] {
            if side == account {
                continue;
            }
            let bank = self.balances.entry(side).or_insert_with(|| Balance {
                currency: currency.clone(),
                bank: true,
                balance: 0,
                version: 0,
            });
            bank.balance += change;
            bank.version += 1;
            moved += change;
            self.changed_accounts.push(side);
        }
        *self.totals.entry(currency.clone()).or_default() += moved;
        if let Some((transfer, change)) = ledger::in_transit_change(&event) {
            let t = self.transits.entry(transfer).or_insert_with(|| Transit {
                currency,
                amount: 0,
                transfer_amount: 0,
                state: "unknown".into(),
            });
            t.amount += change;
            self.changed_transfers.push(transfer);
        }
    }

    fn transfer_event(&mut self, r: &EventRow) {
        let Ok(event) =
            eventstore::aggregate::decode_versioned::<TransferEvent>(&r.event_type, r.schema_version, r.data.0.clone())
        else {
            self.findings.push(Finding {
                kind: "undecodable".into(),
                account_id: None,
                transfer_id: Some(r.stream_id),
                position: Some(r.position),
                detail: format!("{} v{}", r.event_type, r.version),
            });
            return;
        };
        let t = self.transits.entry(r.stream_id).or_insert_with(|| Transit {
            currency: String::new(),
            amount: 0,
            transfer_amount: 0,
            state: "unknown".into(),
        });
        t.state = match event {
            TransferEvent::Created { amount, currency, .. } => {
                t.transfer_amount = amount;
                t.currency = currency.as_str().into();
                "initiated"
            }
            TransferEvent::Debited { .. } => "debited",
            TransferEvent::RefundRequested { .. } => "refunding",
            TransferEvent::Completed {} => "completed",
            TransferEvent::Failed { .. } => "failed",
        }
        .into();
        self.changed_transfers.push(r.stream_id);
    }
}

/// What is wrong with what a transfer holds in transit, if anything. Each step of the
/// accounts commits before the transfer's step it causes, so an unsettled transfer
/// holds its amount or nothing (debited and not yet credited, or credited and not yet
/// completed), and a settled one nothing, at every commit.
/// An account whose balance event and posting disagree (naming the transfer, if any).
fn unbalanced(account: Uuid, event: &AccountEvent, position: i64, detail: String) -> Finding {
    Finding {
        kind: "unbalanced".into(),
        account_id: Some(account),
        transfer_id: ledger::in_transit_change(event).map(|(t, _)| t),
        position: Some(position),
        detail,
    }
}

fn transit_finding(id: Uuid, t: &Transit) -> Option<Finding> {
    let expected: &[i64] = match t.state.as_str() {
        "initiated" | "debited" | "refunding" => &[0, t.transfer_amount],
        "completed" | "failed" => &[0],
        // an account step for a transfer never created: it commits after the transfer's
        // creation (the saga reacts to it), so the ledger has always read that first
        _ => &[0],
    };
    (!expected.contains(&t.amount)).then(|| Finding {
        kind: "in_transit".into(),
        account_id: None,
        transfer_id: Some(id),
        position: None,
        detail: format!("transfer {} holds {} {} in transit, of {}", t.state, t.amount, t.currency, t.transfer_amount),
    })
}

async fn write_balances(tx: &mut PgConnection, rows: &HashMap<Uuid, Balance>, changed: &[Uuid]) -> sqlx::Result<()> {
    let mut ids = changed.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let rows: Vec<(Uuid, &Balance)> = ids.iter().filter_map(|id| rows.get(id).map(|b| (*id, b))).collect();
    sqlx::query(
        "insert into ledger.balances (account_id, currency, bank, balance, version, view_checked)
         select *, false from unnest($1::uuid[], $2::text[], $3::bool[], $4::int8[], $5::int8[])
         on conflict (account_id) do update set balance = excluded.balance, version = excluded.version,
             view_checked = false",
    )
    .bind(rows.iter().map(|r| r.0).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.1.currency.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.1.bank).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.1.balance).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.1.version).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Writes the transfers this round changed; a settled one holding nothing is removed.
async fn write_transits(tx: &mut PgConnection, rows: &HashMap<Uuid, Transit>, changed: &[Uuid]) -> sqlx::Result<()> {
    let mut ids = changed.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let settled = |t: &Transit| matches!(t.state.as_str(), "completed" | "failed") && t.amount == 0;
    type Rows<'a> = Vec<(Uuid, &'a Transit)>;
    let (done, open): (Rows, Rows) =
        ids.iter().filter_map(|id| rows.get(id).map(|t| (*id, t))).partition(|(_, t)| settled(t));
    sqlx::query("delete from ledger.in_transit where transfer_id = any($1)")
        .bind(done.iter().map(|r| r.0).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "insert into ledger.in_transit (transfer_id, currency, amount, transfer_amount, state)
         select * from unnest($1::uuid[], $2::text[], $3::int8[], $4::int8[], $5::text[])
         on conflict (transfer_id) do update set currency = excluded.currency, amount = excluded.amount,
             transfer_amount = excluded.transfer_amount, state = excluded.state",
    )
    .bind(open.iter().map(|r| r.0).collect::<Vec<_>>())
    .bind(open.iter().map(|r| r.1.currency.as_str()).collect::<Vec<_>>())
    .bind(open.iter().map(|r| r.1.amount).collect::<Vec<_>>())
    .bind(open.iter().map(|r| r.1.transfer_amount).collect::<Vec<_>>())
    .bind(open.iter().map(|r| r.1.state.as_str()).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn insert_findings(tx: &mut PgConnection, findings: &[Finding]) -> sqlx::Result<()> {
    if findings.is_empty() {
        return Ok(());
    }
    for f in findings {
        tracing::error!(kind = %f.kind, account_id = ?f.account_id, transfer_id = ?f.transfer_id, detail = %f.detail, "ledger difference");
    }
    sqlx::query(
        "insert into ledger.findings (kind, account_id, transfer_id, position, detail)
         select * from unnest($1::text[], $2::uuid[], $3::uuid[], $4::int8[], $5::text[])",
    )
    .bind(findings.iter().map(|f| f.kind.as_str()).collect::<Vec<_>>())
    .bind(findings.iter().map(|f| f.account_id).collect::<Vec<_>>())
    .bind(findings.iter().map(|f| f.transfer_id).collect::<Vec<_>>())
    .bind(findings.iter().map(|f| f.position).collect::<Vec<_>>())
    .bind(findings.iter().map(|f| f.detail.as_str()).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Compares the views with the ledger where they show the same version of a
/// customer's account, once per change. The bank's own accounts are not compared: the
/// views sum their postings shard by shard, the ledger in commit order, so an equal
/// number of postings need not be the same postings (their views follow from the
/// customers' events, each of which is compared here).
async fn compare_views(tx: &mut PgConnection) -> Result<(), Error> {
    let rows: Vec<(Uuid, i64, i64)> = sqlx::query_as(
        "select l.account_id, l.balance, v.balance
         from ledger.balances l join views.accounts v on v.id = l.account_id and v.version = l.version
         where not l.view_checked and not l.bank",
    )
    .fetch_all(&mut *tx)
    .await?;
    let findings: Vec<Finding> = rows
        .iter()
        .filter(|(_, store, view)| store != view)
        .map(|(id, store, view)| Finding {
            kind: "view_differs".into(),
            account_id: Some(*id),
            transfer_id: None,
            position: None,
            detail: format!("the views show a balance of {view}, the event store {store}"),
        })
        .collect();
    insert_findings(tx, &findings).await?;
    sqlx::query("update ledger.balances set view_checked = true where account_id = any($1)")
        .bind(rows.iter().map(|r| r.0).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// The reconciliation's metrics.
#[derive(Clone)]
pub struct Metrics {
    imbalance: prometheus::IntGaugeVec,
    age: prometheus::Gauge,
    findings: prometheus::IntGauge,
    check_seconds: prometheus::Histogram,
}

impl Metrics {
    pub fn register(registry: &prometheus::Registry) -> prometheus::Result<Self> {
        let imbalance = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "ledger_imbalance_minor",
                "Per currency, the sum of every account's balance in minor units (0: the books balance)",
            ),
            &["currency"],
        )?;
        let age = prometheus::Gauge::new(
            "ledger_last_check_age_seconds",
            "Seconds since the reconciliation last completed a check",
        )?;
        let findings = prometheus::IntGauge::new(
            "ledger_findings",
            "Differences the reconciliation has found (unbalanced events, views that differ, money stuck in transit)",
        )?;
        let check_seconds = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "ledger_check_seconds",
                "Time of one complete incremental check (the events committed since the last)",
            )
            .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        )?;
        registry.register(Box::new(imbalance.clone()))?;
        registry.register(Box::new(age.clone()))?;
        registry.register(Box::new(findings.clone()))?;
        registry.register(Box::new(check_seconds.clone()))?;
        Ok(Metrics { imbalance, age, findings, check_seconds })
    }

    async fn update(&self, pool: &PgPool) -> Result<(), Error> {
        let totals: Vec<(String, i64)> =
            sqlx::query_as("select currency, total from ledger.totals").fetch_all(pool).await?;
        for (currency, total) in totals {
            self.imbalance.with_label_values(&[&currency]).set(total);
        }
        let (age, findings): (Option<f64>, i64) = sqlx::query_as(
            "select extract(epoch from now() - checked_at)::float8, (select count(*) from ledger.findings)
             from ledger.cursor",
        )
        .fetch_one(pool)
        .await?;
        self.age.set(age.unwrap_or(f64::INFINITY));
        self.findings.set(findings);
        Ok(())
    }
}

/// Checks every `interval` until `shutdown`, keeping `metrics` up to date.
pub async fn run(pool: PgPool, interval: Duration, metrics: Metrics, shutdown: CancellationToken) {
    loop {
        let started = std::time::Instant::now();
        match check(&pool).await {
            Ok(Some(read)) => {
                metrics.check_seconds.observe(started.elapsed().as_secs_f64());
                tracing::debug!(read, "ledger checked");
            }
            Ok(None) => tracing::debug!("another process is checking the ledger"),
            Err(e) => tracing::warn!(error = %e, "ledger check failed; trying again"),
        }
        if let Err(e) = metrics.update(&pool).await {
            tracing::warn!(error = %e, "ledger metrics not updated");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transit(state: &str, amount: i64) -> Transit {
        Transit { currency: "EUR".into(), amount, transfer_amount: 50, state: state.into() }
    }

    #[test]
    fn a_transfer_holds_its_amount_or_nothing_while_open_and_nothing_once_settled() {
        let id = Uuid::now_v7();
        for state in ["initiated", "debited", "refunding"] {
            for ok in [0, 50] {
                assert_eq!(transit_finding(id, &transit(state, ok)), None, "{state} holding {ok}");
            }
            for wrong in [-50, 10, 100] {
                assert!(transit_finding(id, &transit(state, wrong)).is_some(), "{state} holding {wrong}");
            }
        }
        for state in ["completed", "failed", "unknown"] {
            assert_eq!(transit_finding(id, &transit(state, 0)), None, "{state}");
            assert!(transit_finding(id, &transit(state, 50)).is_some(), "{state} holding 50");
        }
    }
}
