//! Faults survived under a transfer load, every part of the system a real process
//! (tailer, account-service, transfer-service, view-updater, query-service):
//!
//! * Postgres restarted (`pg_ctl restart -m fast`, then `-m immediate`): every
//!   service reconnects by itself, every acknowledged command is kept, every
//!   transfer settles, and the views equal a rebuild (`view-updater rebuild --verify`).
//! * The Kinesis API server SIGKILLed and started again on the same port over the
//!   same data: the tailer retries, the rivers resume from their checkpoints, and
//!   every transfer settles exactly once; every stored event is on the stream.
//!
//! The tests run one at a time: a restart of Postgres cuts every connection of this
//! binary's tests.
#![allow(clippy::unwrap_used)]

use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tests::{Api, Customer, token};
use tokio::process::Child;
use uuid::Uuid;

/// One fault at a time (each `#[sqlx::test]` runs on a runtime of its own; a tokio
/// mutex does not care).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const ACCOUNTS: usize = 8;
const OPENING: i64 = 10_000;

/// A service binary running as a process of its own.
struct Process {
    name: &'static str,
    child: Child,
    api: Api,
}

/// The whole system over one database and one stream.
struct System {
    processes: Vec<Process>,
}

impl System {
    /// Starts every binary; `endpoint` is a Kinesis API server of the test's own
    /// (default: scripts/test's).
    async fn start(url: &str, stream: &str, endpoint: Option<&str>) -> System {
        let mut common = vec![
            ("DATABASE_URL", url.to_owned()),
            ("KINESIS_STREAM", stream.to_owned()),
            ("RIVER_LEASE_MS", "3000".into()),
            ("RIVER_RENEW_MS", "300".into()),
            ("RIVER_SHARD_SYNC_MS", "1000".into()),
            ("RIVER_IDLE_POLL_MS", "50".into()),
            ("RIVER_GET_RECORDS_BUDGET", "0".into()),
            ("RIVER_READ_INTERVAL_MS", "20".into()),
            ("DATABASE_CONNECT_TIMEOUT_SECS", "120".into()),
            ("REQUEST_TIMEOUT_MS", "5000".into()),
        ];
        if let Some(endpoint) = endpoint {
            common.push(("KINESIS_ENDPOINT", endpoint.to_owned()));
        }
        let mut processes = Vec::new();
        for (name, addr_var) in [
            ("tailer", "TAILER_ADDR"),
            ("account-service", "ACCOUNT_SERVICE_ADDR"),
            ("transfer-service", "TRANSFER_SERVICE_ADDR"),
            ("view-updater", "VIEW_UPDATER_ADDR"),
            ("query-service", "QUERY_SERVICE_ADDR"),
        ] {
            let port = tests::free_port();
            let mut env = common.clone();
            env.push((addr_var, format!("127.0.0.1:{port}")));
            if name == "tailer" {
                env.extend([("TAILER_SOURCE", "poll".into()), ("TAILER_SLOT", "poll".into())]);
            }
            let child = tests::spawn_binary(name, port, &env).await;
            processes.push(Process { name, child, api: Api::new(&format!("http://127.0.0.1:{port}")) });
        }
        System { processes }
    }

    fn api(&self, name: &str) -> Api {
        self.processes.iter().find(|p| p.name == name).unwrap().api.clone()
    }

    /// No process exited: each one came through the fault by itself.
    #[track_caller]
    fn assert_running(&mut self) {
        for process in &mut self.processes {
            let exited = process.child.try_wait().unwrap();
            assert!(exited.is_none(), "{} exited during the fault: {exited:?}", process.name);
        }
    }

    /// Every process answers `/ready` (its database, and for query-service its LISTEN
    /// connection) again.
    async fn wait_ready(&self) {
        for process in &self.processes {
            let api = &process.api;
            tests::wait_for(Duration::from_secs(60), &format!("{} to be ready", process.name), || async move {
                let reply = api.get("/ready").send_result().await;
                reply.is_ok_and(|r| r.status == 200).then_some(())
            })
            .await;
        }
    }

    async fn stop(self) {
        for process in self.processes {
            tests::kill(process.child).await;
        }
    }
}

/// What the load got acknowledged (2xx).
#[derive(Default)]
struct Acked {
    transfers: Vec<Uuid>,
    /// `(account, version after the deposit, amount, balance after it)`
    deposits: Vec<(Uuid, i32, i64, i64)>,
    /// Commands refused or cut off (a 5xx, a transport error): fine during a fault.
    failed: usize,
}

/// A steady load until `stop`: 4 clients, each a command every 20 ms or so, one in
/// five a deposit and the rest transfers between the funded accounts.
fn start_load(
    accounts: Api,
    transfers: Api,
    ids: Vec<Uuid>,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Acked>>,
) -> tokio::task::JoinHandle<()> {
    let alice = token("alice", Customer);
    tokio::spawn(async move {
        let clients = (0..4).map(|_| {
            let (accounts, transfers, ids, stop, acked, alice) =
                (accounts.clone(), transfers.clone(), ids.clone(), stop.clone(), acked.clone(), alice.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    let from = rand::random_range(0..ids.len());
                    let amount: i64 = rand::random_range(1..=300);
                    if rand::random_range(0..5) == 0 {
                        let reply = accounts
                            .post(&format!("/accounts/{}/deposits", ids[from]))
                            .token(&tests::teller_token())
                            .json(json!({"amount": amount, "currency": "EUR"}))
                            .send_result()
                            .await;
                        let mut acked = acked.lock().unwrap();
                        match reply {
                            Ok(r) if r.status == 200 => {
                                let balance = r.body["balance"].as_i64().unwrap();
                                acked.deposits.push((ids[from], r.version() as i32, amount, balance));
                            }
                            Ok(r) if r.status >= 500 => acked.failed += 1,
                            Ok(r) => panic!("a deposit answered {}: {}", r.status, r.body),
                            Err(_) => acked.failed += 1,
                        }
                    } else {
                        let to = (from + rand::random_range(1..ids.len())) % ids.len();
                        let body = json!({"from": ids[from], "to": ids[to], "amount": amount, "currency": "EUR"});
                        let reply = transfers.post("/transfers").token(&alice).json(body).send_result().await;
                        let mut acked = acked.lock().unwrap();
                        match reply {
                            Ok(r) if r.status == 201 => acked.transfers.push(r.id()),
                            Ok(r) if r.status >= 500 => acked.failed += 1,
                            Ok(r) => panic!("a transfer answered {}: {}", r.status, r.body),
                            Err(_) => acked.failed += 1,
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(rand::random_range(10..30))).await;
                }
            }
        });
        futures::future::join_all(clients).await;
    })
}

/// Waits until `more` transfers beyond those acknowledged now are acknowledged.
async fn wait_acked(acked: &Mutex<Acked>, more: usize, what: &str) {
    let wanted = acked.lock().unwrap().transfers.len() + more;
    tests::wait_for(Duration::from_secs(90), what, || async move {
        (acked.lock().unwrap().transfers.len() >= wanted).then_some(())
    })
    .await;
}

/// Opens the funded accounts (alice's) and starts the load on them.
async fn open_and_load(system: &System) -> (Arc<AtomicBool>, Arc<Mutex<Acked>>, tokio::task::JoinHandle<()>) {
    let accounts = system.api("account-service");
    let alice = token("alice", Customer);
    let mut ids = Vec::new();
    for _ in 0..ACCOUNTS {
        ids.push(accounts.open_account(&alice, "EUR", OPENING).await);
    }
    let (stop, acked) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Acked::default())));
    let load = start_load(accounts, system.api("transfer-service"), ids, stop.clone(), acked.clone());
    (stop, acked, load)
}

/// After the load: every transfer settles, and nothing acknowledged is lost, nothing
/// done twice, no money made or lost.
async fn assert_settled(pool: &PgPool, rapids: &rapids::Rapids, system: &mut System, acked: &Acked) {
    let settled_sql = "select not exists (
        select 1 from es.events t where t.stream_type = 'transfer' and t.version = 1 and not exists (
          select 1 from es.events s where s.stream_id = t.stream_id and s.type in ('transfer.completed', 'transfer.failed')))";
    tests::wait_until_true(pool, Duration::from_secs(120), "every transfer to settle", settled_sql, &[]).await;
    system.assert_running();
    system.wait_ready().await;

    // every acknowledged transfer is kept, and transfer-service reads it settled
    let transfers = system.api("transfer-service");
    let alice = token("alice", Customer);
    for id in &acked.transfers {
        let version: Option<i32> = sqlx::query_scalar("select max(version) from es.events where stream_id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .unwrap();
        let version = version.unwrap_or_else(|| panic!("the acknowledged transfer {id} is not in the store"));
        let reply =
            transfers.get(&format!("/transfers/{id}?min_version={version}&wait_ms=5000")).token(&alice).send().await;
        let state = reply.expect(200)["state"].as_str().unwrap().to_owned();
        assert!(state == "completed" || state == "failed", "transfer {id} is {state}");
    }
    // each transfer settled exactly once, and no saga step was appended twice
    let not_once: Vec<(Uuid, i64)> = sqlx::query_as(
        "select stream_id, count(*) filter (where type in ('transfer.completed', 'transfer.failed'))
         from es.events where stream_type = 'transfer' group by 1
         having count(*) filter (where type in ('transfer.completed', 'transfer.failed')) <> 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(not_once.is_empty(), "transfers not settled exactly once: {not_once:?}");
    let doubled: Vec<(String, String, i64)> = sqlx::query_as(
        "select data->>'transfer_id', type, count(*) from es.events
         where stream_type = 'account' and data ? 'transfer_id' group by 1, 2 having count(*) > 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(doubled.is_empty(), "saga steps appended twice: {doubled:?}");
    let parked: i64 =
        sqlx::query_scalar("select count(*) from rapids.river_dead_letters").fetch_one(pool).await.unwrap();
    assert_eq!(parked, 0, "events parked as dead letters");

    // every acknowledged deposit is kept, as it was answered
    for (account, version, amount, balance) in &acked.deposits {
        let events = tests::stream_events(pool, *account).await;
        let event = events.iter().find(|e| e.0 == *version);
        let kept = event.is_some_and(|(_, kind, data)| {
            kind == "account.deposited" && data["amount"] == *amount && data["balance_after"] == *balance
        });
        assert!(kept, "the acknowledged deposit of {amount} into {account} (version {version}) is not kept: {event:?}");
    }
    // transfers move money, never make or lose it: the balances add up to the deposits
    // (the opening ones and every one the store has, acknowledged or cut off after
    // its commit)
    let deposited: i64 = sqlx::query_scalar(
        "select coalesce(sum((data->>'amount')::int8), 0)::int8 from es.events where type = 'account.deposited'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let acked_deposits: i64 = acked.deposits.iter().map(|d| d.2).sum();
    assert!(deposited >= ACCOUNTS as i64 * OPENING + acked_deposits, "deposits lost: {deposited}");
    let store = eventstore::EventStore::new(pool.clone());
    let ids: Vec<Uuid> = sqlx::query_scalar("select distinct stream_id from es.events where stream_type = 'account'")
        .fetch_all(pool)
        .await
        .unwrap();
    let mut total = 0;
    let queries = system.api("query-service");
    for id in &ids {
        let account = store.load::<bank_domain::account::Account>(*id).await.unwrap().unwrap();
        assert!(account.state.balance >= 0, "{id}: {}", account.state.balance);
        total += account.state.balance;
        // query-service (its LISTEN connection back) answers the account at its version
        let reply = queries
            .get(&format!("/accounts/{id}?min_version={}&wait_ms=5000", account.version))
            .token(&alice)
            .send()
            .await;
        let body = reply.expect(200);
        let view_balance = body["balance"].as_i64().or_else(|| body["account"]["balance"].as_i64());
        assert_eq!(view_balance, Some(account.state.balance), "{body}");
    }
    assert_eq!(total, deposited, "the balances do not add up to the deposits");

    // the tailer published everything (the stream kept what it had through a
    // restart of its server): every stored event is on the stream
    let stored: Vec<(Uuid, Uuid, i32, String)> =
        sqlx::query_as("select event_id, stream_id, version, type from es.events").fetch_all(pool).await.unwrap();
    let on_stream: HashSet<Uuid> = tests::read_shards(rapids).await.into_iter().flatten().map(|e| e.event_id).collect();
    let missing: Vec<_> = stored.iter().filter(|e| !on_stream.contains(&e.0)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} stored events are not on the stream: {missing:?}",
        missing.len(),
        stored.len()
    );

    // the views equal a replay of the store
    views_caught_up(pool).await;
    assert_eq!(balances_now(pool).await, total);
    let url = tests::database_url(&pool.connect_options());
    let out = tokio::process::Command::new(tests::binary("view-updater"))
        .args(["rebuild", "--verify", "--quiet"])
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "error")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(", 0 differences"), "{stdout}");
    eprintln!("{stdout}");
}

async fn balances_now(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select coalesce(sum(balance), 0)::int8 from views.accounts").fetch_one(pool).await.unwrap()
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn postgres_restarted_under_load_loses_nothing(options: PgPoolOptions, connect: PgConnectOptions) {
    let _serial = SERIAL.lock().await;
    let pool = tests::pool(options, connect.clone()).await;
    let url = tests::database_url(&connect);
    let rapids = tests::fresh_stream(2).await;
    let mut system = System::start(&url, rapids.stream(), None).await;
    let (stop, acked, load) = open_and_load(&system).await;

    for mode in ["fast", "immediate"] {
        wait_acked(&acked, 20, "transfers before the restart").await;
        let failed_before = acked.lock().unwrap().failed;
        tests::pg_ctl(&["restart", "-m", mode, "-w", "-t", "60"]).await;
        // commands are acknowledged again, by the same processes
        wait_acked(&acked, 30, &format!("transfers after the restart ({mode})")).await;
        system.assert_running();
        let a = acked.lock().unwrap();
        eprintln!(
            "restart -m {mode}: {} transfers and {} deposits acknowledged so far, {} commands failed during it",
            a.transfers.len(),
            a.deposits.len(),
            a.failed - failed_before
        );
    }
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let acked = Arc::try_unwrap(acked).ok().unwrap().into_inner().unwrap();
    assert_settled(&pool, &rapids, &mut system, &acked).await;
    system.stop().await;
}

/// A kinesalite of the test's own, persisted in `dir`, on `port`.
struct Kinesalite {
    child: Child,
}

impl Kinesalite {
    async fn start(port: u16, dir: &std::path::Path) -> Kinesalite {
        let cli = std::env::var("KINESALITE_CLI").expect("KINESALITE_CLI (run with scripts/test)");
        let child = tokio::process::Command::new("node")
            .arg(cli)
            .args(["--port", &port.to_string(), "--path"])
            .arg(dir)
            .args(["--createStreamMs", "0", "--deleteStreamMs", "0", "--updateStreamMs", "0", "--shardLimit", "100"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        tests::wait_for(Duration::from_secs(20), "kinesalite to listen", || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ())
        })
        .await;
        Kinesalite { child }
    }
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn the_kinesis_server_killed_and_restarted_under_load_loses_and_doubles_nothing(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let _serial = SERIAL.lock().await;
    let pool = tests::pool(options, connect.clone()).await;
    let url = tests::database_url(&connect);
    let dir = std::env::temp_dir().join(format!("faults-kinesis-{}", Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = tests::free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let kinesis = Kinesalite::start(port, &dir).await;
    let rapids = tests::fresh_stream_at(&endpoint, 2).await;
    let mut system = System::start(&url, rapids.stream(), Some(&endpoint)).await;
    let (stop, acked, load) = open_and_load(&system).await;

    wait_acked(&acked, 20, "transfers before the kill").await;
    // the saga under way: the rivers have checkpoints to resume from
    tests::wait_for(Duration::from_secs(30), "transfers to settle before the kill", || async {
        (settled(&pool).await >= 10).then_some(())
    })
    .await;
    let settled_before = settled(&pool).await;
    tests::kill(kinesis.child).await;
    // the commands go on (they need Postgres only); the saga stops; the tailer
    // retries, again and again
    let retries_before = tailer_retries(&system).await;
    wait_acked(&acked, 30, "transfers while Kinesis is down").await;
    let tailer = system.api("tailer");
    tests::wait_for(Duration::from_secs(30), "the tailer to retry a few times", || {
        let tailer = tailer.clone();
        async move { (metric(&tailer, "tailer_publish_retries_total").await? >= retries_before + 5).then_some(()) }
    })
    .await;
    let kinesis = Kinesalite::start(port, &dir).await;
    wait_acked(&acked, 30, "transfers after Kinesis is back").await;
    system.assert_running();
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let acked = Arc::try_unwrap(acked).ok().unwrap().into_inner().unwrap();
    eprintln!(
        "kinesis killed: {} transfers ({settled_before} settled before the kill) and {} deposits acknowledged, {} commands failed",
        acked.transfers.len(),
        acked.deposits.len(),
        acked.failed
    );
    assert_eq!(acked.failed, 0, "commands failed while only Kinesis was down");
    assert_settled(&pool, &rapids, &mut system, &acked).await;

    system.stop().await;
    tests::kill(kinesis.child).await;
    std::fs::remove_dir_all(&dir).unwrap();
}

async fn settled(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from es.events where type in ('transfer.completed', 'transfer.failed')")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A stream whose view is behind: id, type, version in the store, in the views.
type Behind = (Uuid, String, i32, Option<i32>, Option<i32>);

/// [`tests::views_caught_up`], telling which views are behind when they stay behind.
async fn views_caught_up(pool: &PgPool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let behind: Vec<Behind> = sqlx::query_as(
            "select e.stream_id, e.stream_type, e.version, a.version, t.version
             from (select stream_id, stream_type, max(version) as version from es.events
                   where stream_type in ('account', 'transfer') group by 1, 2) e
             left join views.accounts a on a.id = e.stream_id
             left join views.transfers t on t.id = e.stream_id
             where coalesce(a.version, t.version, 0) <> e.version",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        if behind.is_empty() {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let shards: Vec<(String, Option<String>, Option<String>)> =
                sqlx::query_as("select shard_id, owner, checkpoint from rapids.river_shards where river = 'views'")
                    .fetch_all(pool)
                    .await
                    .unwrap();
            let mut missing = Vec::new();
            for (stream, _, _, a, t) in behind.iter().take(5) {
                let view = a.or(*t).unwrap_or(0);
                let events: Vec<(i32, String, i64)> = sqlx::query_as(
                    "select version, type, position from es.events where stream_id = $1 and version > $2 order by version",
                )
                .bind(stream)
                .bind(view)
                .fetch_all(pool)
                .await
                .unwrap();
                missing.push((stream, events));
            }
            panic!(
                "the views stay behind the store: {} streams, e.g. {:?}; not in the views: {missing:?}; the river's shards: {shards:?}",
                behind.len(),
                &behind[..behind.len().min(5)]
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A metric's value from a process's `/metrics`.
async fn metric(api: &Api, name: &str) -> Option<u64> {
    let reply = api.get("/metrics").send_result().await.ok()?;
    tests::metric(reply.body.as_str()?, name).map(|v| v as u64)
}

async fn tailer_retries(system: &System) -> u64 {
    metric(&system.api("tailer"), "tailer_publish_retries_total").await.unwrap()
}
