//! Helpers shared by the end-to-end tests: services started on port 0 over a
//! per-test database, tokens, a small HTTP client, and event-store look-ups.
//!
//! The tests expect what `scripts/test` provides: `DATABASE_URL` (a server where each
//! `#[sqlx::test]` gets its own database), `KINESIS_ENDPOINT` and `JWT_SECRET`.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used)]

use rapids::config::RiverArgs;
use rapids::{Rapids, RapidsConfig};
use serde_json::Value;
use service_kit::auth::{Role, issue_hs256};
use service_kit::config::{AuthArgs, DatabaseArgs, ServiceArgs};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use service_kit::auth::Role::{Admin, Customer, Service, Teller};

pub mod load;

/// The JWT secret the services under test check tokens with.
pub fn secret() -> String {
    std::env::var("JWT_SECRET").expect("JWT_SECRET (scripts/test makes a random one per run)")
}

/// A valid token for `sub` with `role`.
pub fn token(sub: &str, role: Role) -> String {
    issue_hs256(&secret(), sub, role, 600).unwrap()
}

/// The token of the tests' teller, who takes cash in (`POST /accounts/{id}/deposits`).
pub fn teller_token() -> String {
    token("teller-tess", Role::Teller)
}

/// A token that expired an hour ago.
pub fn expired_token(sub: &str) -> String {
    issue_hs256(&secret(), sub, Role::Customer, -3600).unwrap()
}

/// A pool of its own on the test's database: sqlx::test's pools borrow from one
/// parent of 20 connections shared by every test of the binary, too few for services
/// under concurrent load.
pub async fn pool(_borrowed: PgPoolOptions, connect: PgConnectOptions) -> PgPool {
    PgPoolOptions::new().max_connections(30).connect_with(connect).await.unwrap()
}

/// The Kinesis API server scripts/test started.
#[track_caller]
pub fn rapids_config() -> RapidsConfig {
    let endpoint =
        std::env::var("KINESIS_ENDPOINT").expect("KINESIS_ENDPOINT is not set: run the tests with scripts/test");
    RapidsConfig {
        efo_endpoint: std::env::var("KINESIS_EFO_ENDPOINT").ok(),
        ca_file: std::env::var_os("KINESIS_CA_FILE").map(Into::into),
        ..RapidsConfig::local(&endpoint, &std::env::var("KINESIS_STREAM").unwrap_or_else(|_| "rapids".into()))
    }
}

/// A service running in this process on a free port; stopped when dropped.
pub struct Running {
    pub base: String,
    shutdown: CancellationToken,
}

impl Running {
    pub fn api(&self) -> Api {
        Api::new(&self.base)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The arguments every service of a test shares, as a value: the test's JWT secret
/// and its database (the services get the test's pool handed over directly).
pub fn service_args(pool: &PgPool) -> ServiceArgs {
    ServiceArgs {
        database: DatabaseArgs::new(database_url(&pool.connect_options())),
        auth: AuthArgs::hs256(secret()),
        ..ServiceArgs::default()
    }
}

/// How the tests' rivers read: `RIVER_READ_MODE` (`poll` unless `efo`; scripts/test
/// runs the rapids suite with enhanced fan-out against kinesis-local).
pub fn read_mode() -> rapids::river::ReadMode {
    match std::env::var("RIVER_READ_MODE").as_deref() {
        Ok("efo") => rapids::river::ReadMode::Efo,
        _ => rapids::river::ReadMode::Poll,
    }
}

/// A server of [`spawn_https`]: its `https://localhost:PORT` base and the PEM file of
/// the CA that signed its certificate.
pub struct Https {
    pub running: Running,
    pub ca_file: std::path::PathBuf,
}

/// Serves `router` over HTTPS on a free port of 127.0.0.1, with a certificate for
/// `localhost` and `127.0.0.1` signed by a CA made here (its PEM in a file of its own),
/// until the returned [`Https`] is dropped.
pub async fn spawn_https(router: axum::Router) -> Https {
    use tokio_rustls::rustls::{self, pki_types};
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "bank test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let ca_file = std::env::temp_dir().join(format!("bank-test-ca-{}.pem", uuid::Uuid::new_v4()));
    std::fs::write(&ca_file, ca.pem()).unwrap();

    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            pki_types::PrivateKeyDer::Pkcs8(pki_types::PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("https://localhost:{}", tcp.local_addr().unwrap().port());
    let listener = TlsListener { tcp, acceptor: tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)) };
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move { axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned()).await });
    Https { running: Running { base, shutdown }, ca_file }
}

impl Drop for Https {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.ca_file);
    }
}

/// TCP connections that become TLS sessions; a failed handshake is dropped.
struct TlsListener {
    tcp: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.tcp.accept().await else { continue };
            if let Ok(tls) = self.acceptor.accept(stream).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// River settings for tests: leases that expire in seconds, shards polled often.
pub fn fast_river() -> RiverArgs {
    RiverArgs {
        river_read_mode: read_mode(),
        river_lease_ms: 3000,
        river_renew_ms: 300,
        river_shard_sync_ms: 1000,
        river_idle_poll_ms: 20,
        river_read_interval_ms: 20,
        // the emulator has no GetRecords limit
        river_get_records_budget: 0.0,
        river_max_attempts: 3,
        ..RiverArgs::default()
    }
}

/// Serves `router` on a free port until the returned [`Running`] is dropped.
pub async fn spawn(router: axum::Router) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    tokio::spawn(service_kit::http::serve(listener, router, shutdown.clone()));
    Running { base, shutdown }
}

/// account-service over `pool`, its configuration changed by `configure`.
pub async fn start_accounts(pool: &PgPool, configure: impl FnOnce(&mut account_service::Config)) -> Running {
    start_accounts_with(pool, configure, Rapids::connect(&rapids_config()).await).await
}

/// account-service with a Kinesis client of the test's choosing.
pub async fn start_accounts_with(
    pool: &PgPool,
    configure: impl FnOnce(&mut account_service::Config),
    rapids: Rapids,
) -> Running {
    let mut config = account_service::Config::new(service_args(pool));
    configure(&mut config);
    let state = account_service::AppState::new(&config, pool.clone(), Some(rapids)).unwrap();
    spawn(account_service::router(state)).await
}

/// transfer-service over `pool`, its configuration changed by `configure`.
pub async fn start_transfers(pool: &PgPool, configure: impl FnOnce(&mut transfer_service::Config)) -> Running {
    let mut config = transfer_service::Config::new(service_args(pool));
    configure(&mut config);
    let rapids = Rapids::connect(&rapids_config()).await;
    let state = transfer_service::AppState::new(&config, pool.clone(), Some(rapids)).unwrap();
    spawn(transfer_service::router(state)).await
}

/// A JSON-over-HTTP client for one service.
#[derive(Clone)]
pub struct Api {
    client: reqwest::Client,
    base: String,
}

/// An answer: status, JSON body (Null when there is none) and headers.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Reply {
    /// The stable error code of an error body.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    /// Asserts the status and returns the body.
    #[track_caller]
    pub fn expect(&self, status: u16) -> &Value {
        assert_eq!(self.status, status, "unexpected status; body: {}", self.body);
        &self.body
    }

    /// Asserts an error status and code, and that the error has a message.
    #[track_caller]
    pub fn expect_error(&self, status: u16, code: &str) {
        assert_eq!((self.status, self.code()), (status, code), "unexpected answer; body: {}", self.body);
        assert!(
            self.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
            "error without message: {}",
            self.body
        );
    }

    #[track_caller]
    pub fn id(&self) -> Uuid {
        Uuid::parse_str(self.body["id"].as_str().unwrap()).unwrap()
    }

    #[track_caller]
    pub fn version(&self) -> i64 {
        self.body["version"].as_i64().unwrap()
    }
}

/// A request being built.
pub struct Request {
    builder: reqwest::RequestBuilder,
}

impl Request {
    pub fn token(mut self, token: &str) -> Self {
        self.builder = self.builder.bearer_auth(token);
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.builder = self.builder.header(name, value);
        self
    }

    pub fn idempotency_key(self, key: &str) -> Self {
        self.header("Idempotency-Key", key)
    }

    pub fn json(mut self, body: Value) -> Self {
        self.builder = self.builder.json(&body);
        self
    }

    /// A body sent as it is, with `Content-Type: application/json`.
    pub fn raw(mut self, body: impl Into<reqwest::Body>) -> Self {
        self.builder = self.builder.header("content-type", "application/json").body(body);
        self
    }

    pub async fn send(self) -> Reply {
        self.send_result().await.unwrap()
    }

    /// Sends, returning transport errors instead of panicking on them.
    pub async fn send_result(self) -> Result<Reply, reqwest::Error> {
        let response = self.builder.send().await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Ok(Reply { status, body, headers })
    }
}

impl Api {
    pub fn new(base: &str) -> Self {
        Api { client: reqwest::Client::new(), base: base.trim_end_matches('/').to_owned() }
    }

    /// The base URL (`http://host:port`).
    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn get(&self, path: &str) -> Request {
        Request { builder: self.client.get(format!("{}{path}", self.base)) }
    }

    pub fn post(&self, path: &str) -> Request {
        Request { builder: self.client.post(format!("{}{path}", self.base)) }
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> Request {
        Request { builder: self.client.request(method, format!("{}{path}", self.base)) }
    }

    /// The typed client (`bank-client`, as loadgen and bankctl use it) for this
    /// service, on behalf of `token`.
    pub fn client(&self, token: &str) -> bank_client::BankClient {
        let urls =
            bank_client::Urls { accounts: self.base.clone(), transfers: self.base.clone(), queries: self.base.clone() };
        bank_client::BankClient::new(urls, token).with_http(self.client.clone())
    }

    /// Opens an account for the token's subject (through the typed client) and, when
    /// `initial_deposit` is not 0, a teller takes that much cash in for it (customers
    /// bring no money of their own): returns its id.
    pub async fn open_account(&self, token: &str, currency: &str, initial_deposit: i64) -> Uuid {
        let request = bank_api::accounts::OpenRequest { currency: currency.into(), initial_deposit: None, owner: None };
        let opened = self.client(token).open_account(&request).await.unwrap_or_else(|e| panic!("open_account: {e}"));
        if initial_deposit != 0 {
            self.post(&format!("/accounts/{}/deposits", opened.id))
                .token(&teller_token())
                .json(serde_json::json!({"amount": initial_deposit, "currency": currency}))
                .send()
                .await
                .expect(200);
        }
        opened.id
    }

    /// A teller takes `amount` EUR minor units of cash in for the account (`POST
    /// /accounts/{id}/deposits`); asserts 200 and returns the account's new version.
    pub async fn deposit(&self, id: Uuid, amount: i64) -> i64 {
        let reply = self
            .post(&format!("/accounts/{id}/deposits"))
            .token(&teller_token())
            .json(serde_json::json!({"amount": amount, "currency": "EUR"}))
            .send()
            .await;
        reply.expect(200)["version"].as_i64().unwrap()
    }

    /// `POST /transfers` of `amount` EUR minor units for the token's subject (with an
    /// Idempotency-Key when given); asserts 201 and returns the transfer's id.
    pub async fn create_transfer(&self, token: &str, key: Option<&str>, from: Uuid, to: Uuid, amount: i64) -> Uuid {
        let mut request = self.post("/transfers").token(token);
        if let Some(key) = key {
            request = request.idempotency_key(key);
        }
        let body =
            serde_json::json!({"from": from.to_string(), "to": to.to_string(), "amount": amount, "currency": "EUR"});
        let reply = request.json(body).send().await;
        reply.expect(201);
        reply.id()
    }

    /// Waits until the transfer is `completed` or `failed` (read as `token`'s
    /// subject); returns its JSON.
    pub async fn settled_transfer(&self, token: &str, id: Uuid) -> Value {
        wait_for(Duration::from_secs(30), &format!("transfer {id} to settle"), || {
            let request = self.get(&format!("/transfers/{id}")).token(token).send();
            async move {
                let body = request.await.expect(200).clone();
                matches!(body["state"].as_str(), Some("completed" | "failed")).then_some(body)
            }
        })
        .await
    }
}

/// `(version, type, data)` of every event of a stream, oldest first.
pub async fn stream_events(pool: &PgPool, stream_id: Uuid) -> Vec<(i32, String, Value)> {
    let rows: Vec<(i32, String, sqlx::types::Json<Value>)> =
        sqlx::query_as("select version, type, data from es.events where stream_id = $1 order by version")
            .bind(stream_id)
            .fetch_all(pool)
            .await
            .unwrap();
    rows.into_iter().map(|(v, t, d)| (v, t, d.0)).collect()
}

/// Events in the whole store.
pub async fn total_events(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from es.events").fetch_one(pool).await.unwrap()
}

/// A Kinesis stream of its own for one test (`rapids-test-<uuid>`), created and active.
pub async fn fresh_stream(shards: i32) -> Rapids {
    let config = RapidsConfig { stream: format!("rapids-test-{}", Uuid::now_v7().simple()), ..rapids_config() };
    let rapids = Rapids::connect(&config).await;
    rapids.ensure_stream(shards, std::time::Duration::from_secs(30)).await.unwrap();
    rapids
}

/// Every record of every shard of the stream, each shard's in order.
pub async fn read_shards(rapids: &Rapids) -> Vec<Vec<eventstore::envelope::Envelope>> {
    use aws_sdk_kinesis::types::ShardIteratorType;
    let client = rapids.client();
    let shards = client.list_shards().stream_name(rapids.stream()).send().await.unwrap();
    let mut out = Vec::new();
    for shard in shards.shards() {
        let mut iterator = client
            .get_shard_iterator()
            .stream_name(rapids.stream())
            .shard_id(shard.shard_id())
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .unwrap()
            .shard_iterator
            .unwrap();
        let mut records = Vec::new();
        loop {
            let page = client.get_records().shard_iterator(&iterator).limit(10_000).send().await.unwrap();
            for record in page.records() {
                records.push(serde_json::from_slice(record.data().as_ref()).unwrap());
            }
            let caught_up = page.records().is_empty() && page.millis_behind_latest().unwrap_or(0) == 0;
            match page.next_shard_iterator {
                Some(next) if !caught_up => iterator = next,
                _ => break,
            }
        }
        out.push(records);
    }
    out
}

/// The service binaries sit next to the test binary's parent (target/<profile>/).
pub fn binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: scripts/test builds the binaries before the tests", path.display());
    path
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The URL of the test's own database (for processes started by a test).
pub fn database_url(connect: &PgConnectOptions) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL (run with scripts/test)");
    let (server, _) = base.rsplit_once('/').unwrap();
    format!("{server}/{}", connect.get_database().unwrap())
}

/// Polls `check` until it yields a value; fails the test after `within`.
pub async fn wait_for<T, Fut>(within: Duration, what: &str, mut check: impl FnMut() -> Fut) -> T
where
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "waited {within:?} in vain for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Polls `sql`, a boolean query over text parameters `binds`, until it is true; fails
/// the test after `within`.
pub async fn wait_until_true(pool: &PgPool, within: Duration, what: &str, sql: &str, binds: &[&str]) {
    wait_for(within, what, || async move {
        let mut query = sqlx::query_scalar::<_, bool>(sql);
        for bind in binds {
            query = query.bind(*bind);
        }
        query.fetch_one(pool).await.unwrap().then_some(())
    })
    .await
}

/// Starts a binary of the workspace with `env` (its logs off) and waits until it
/// answers `GET /health` on `port`.
pub async fn spawn_binary(name: &str, port: u16, env: &[(&str, String)]) -> tokio::process::Child {
    let child = tokio::process::Command::new(binary(name))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/health");
    wait_for(Duration::from_secs(15), &format!("{name} to start"), || {
        let request = client.get(&url).send();
        async move { request.await.is_ok_and(|r| r.status() == 200).then_some(()) }
    })
    .await;
    child
}

/// SIGKILLs a process and waits for it to be gone.
pub async fn kill(mut child: tokio::process::Child) {
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}

/// SIGTERMs a process (a graceful stop) and waits until it exited on its own; fails
/// the test if it takes over 15 s or exits with an error.
pub async fn terminate(mut child: tokio::process::Child) {
    let pid = child.id().expect("the process is running").to_string();
    let sent = tokio::process::Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
    assert!(sent.success(), "kill -TERM {pid} failed");
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("the process did not stop within 15 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "the process exited with {status} after SIGTERM");
}

/// The whole system over the test's database and a Kinesis stream of its own: a
/// tailer (poll source), account-service and transfer-service (each with its saga
/// river), view-updater's river `views`, query-service and the event bus (with its
/// generic rivers). Everything stops when dropped.
pub struct Bank {
    pub accounts: Running,
    pub transfers: Running,
    /// query-service, over the views the bank's view-updater river keeps.
    pub queries: Running,
    pub query_state: query_service::AppState,
    pub rapids: Rapids,
    /// The account-service instance's state (its repository, its river metrics).
    pub account_state: account_service::AppState,
    pub transfer_state: transfer_service::AppState,
    /// The views river's metrics (forged envelopes it ignored, …).
    pub view_metrics: rapids::river::RiverMetrics,
    /// The event bus, with its generic rivers running.
    pub bus: Running,
    pub bus_state: event_bus::AppState,
    /// The archive query-service reads statements from (no archiver runs unless a
    /// test starts one: [`start_archiver`]).
    pub s3: archive::s3::S3Args,
    bus_shutdown: CancellationToken,
    shutdown: CancellationToken,
}

impl Bank {
    /// Stops the event bus: its routes and its generic rivers.
    pub fn stop_bus(&self) {
        self.bus_shutdown.cancel();
    }
}

impl Drop for Bank {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn start_bank(pool: &PgPool) -> Bank {
    start_bank_with(pool, fast_river()).await
}

/// [`start_bank`] with rivers of the test's choosing.
pub async fn start_bank_with(pool: &PgPool, river: RiverArgs) -> Bank {
    use tailer::{Tailer, TailerConfig, TailerMetrics, poll::PollSource, publish::Publisher};
    let rapids = fresh_stream(2).await;
    let shutdown = CancellationToken::new();
    let tailer = Tailer {
        pool: pool.clone(),
        source: PollSource::new(pool.clone(), "poll"),
        publisher: Publisher::new(rapids.clone()),
        metrics: TailerMetrics::register(&prometheus::Registry::new()).unwrap(),
        config: TailerConfig { batch_size: 500, idle_poll: Duration::from_millis(50), in_flight: 2 },
    };
    let stop = shutdown.clone();
    tokio::spawn(async move { tailer.run(stop).await.unwrap() });

    let config = account_service::Config { river: river.clone(), ..account_service::Config::new(service_args(pool)) };
    let account_state = account_service::AppState::new(&config, pool.clone(), Some(rapids.clone())).unwrap();
    account_service::start_river(&config, &account_state, rapids.clone(), shutdown.clone()).unwrap();
    let accounts = spawn(account_service::router(account_state.clone())).await;

    // a waiting GET /transfers/{id} is woken by this instance's appends only (no
    // recheck within a test), so a test sees that the wake-up works
    let config = transfer_service::Config {
        river: river.clone(),
        wait_recheck_ms: 600_000,
        ..transfer_service::Config::new(service_args(pool))
    };
    let transfer_state = transfer_service::AppState::new(&config, pool.clone(), Some(rapids.clone())).unwrap();
    transfer_service::start_river(&config, &transfer_state, rapids.clone(), shutdown.clone()).unwrap();
    let transfers = spawn(transfer_service::router(transfer_state.clone())).await;

    let config = view_updater::Config { river: river.clone(), ..view_updater::Config::new(service_args(pool)) };
    let view_state = view_updater::AppState::new(&config, pool.clone(), Some(rapids.clone())).unwrap();
    view_updater::start_river(&config, &view_state, rapids.clone(), shutdown.clone()).unwrap();

    // waits long enough for a loaded machine (the rule that a wait ends before the
    // request timeout is the service's own, tested apart)
    let mut config = query_service::Config::new(service_args(pool));
    // an archive of its own, where an archiver started by the test writes statements
    config.s3 = s3_args();
    config.service.http.request_timeout_ms = 30_000;
    config.max_wait_ms = 25_000;
    // a pool of its own, as the service would have (16 connections)
    let query_pool =
        PgPoolOptions::new().max_connections(16).connect_with((*pool.connect_options()).clone()).await.unwrap();
    let s3 = config.s3.clone();
    let query_state = query_service::AppState::new(&config, query_pool).unwrap();
    query_state.listen(shutdown.clone());
    let queries = spawn(query_service::router(query_state.clone())).await;

    let bus_shutdown = shutdown.child_token();
    let (bus, bus_state) = start_bus(pool, rapids.clone(), bus_shutdown.clone()).await;
    let view_metrics = view_state.river_metrics.clone();
    Bank {
        accounts,
        transfers,
        queries,
        query_state,
        rapids,
        account_state,
        transfer_state,
        view_metrics,
        bus,
        bus_state,
        s3,
        bus_shutdown,
        shutdown,
    }
}

/// A gateway in front of `bank` (its dev login on), its public address and its
/// operational one; it stops when dropped.
pub struct Gateway {
    pub api: Api,
    /// `/metrics`, `/ready`, `/health`, apart from the public address.
    pub admin: Api,
    _stop: tokio_util::sync::DropGuard,
}

/// Starts a gateway in front of `bank`, its configuration changed by `configure`.
pub async fn start_gateway(bank: &Bank, configure: impl FnOnce(&mut gateway::Config)) -> Gateway {
    use clap::Parser;
    let mut config = gateway::Config::try_parse_from(["gateway"]).expect("the defaults parse");
    config.auth.jwt_secret = Some(service_kit::config::Secret::new(secret()));
    config.account_service_url = bank.accounts.base.clone();
    config.transfer_service_url = bank.transfers.base.clone();
    config.query_service_url = bank.queries.base.clone();
    config.event_bus_url = bank.bus.base.clone();
    config.dev_login = true;
    configure(&mut config);
    let state = gateway::AppState::new(config).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (base, admin_base) =
        (format!("http://{}", listener.local_addr().unwrap()), format!("http://{}", admin.local_addr().unwrap()));
    let stop = CancellationToken::new();
    tokio::spawn(gateway::run(listener, admin, state, stop.clone()));
    Gateway { api: Api::new(&base), admin: Api::new(&admin_base), _stop: stop.drop_guard() }
}

/// An event bus over `pool` and `rapids`, its generic rivers polled often; it stops
/// when `shutdown` is cancelled.
pub async fn start_bus(pool: &PgPool, rapids: Rapids, shutdown: CancellationToken) -> (Running, event_bus::AppState) {
    let config =
        event_bus::Config { river: fast_river(), river_sync_ms: 100, ..event_bus::Config::new(service_args(pool)) };
    let state = event_bus::AppState::new(&config, pool.clone(), Some(rapids.clone())).unwrap();
    event_bus::start_background(&config, &state, rapids, shutdown.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(service_kit::http::serve(listener, event_bus::router(state.clone()), shutdown.child_token()));
    (Running { base, shutdown: shutdown.child_token() }, state)
}

/// The sum of a counter of a metrics vector over all its label values.
/// A sample's value in Prometheus text (`name` with its labels, as printed), if present.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

pub fn counter_sum(vec: &prometheus::IntCounterVec) -> u64 {
    use prometheus::core::Collector;
    vec.collect().iter().flat_map(|family| family.get_metric()).map(|m| m.get_counter().get_value() as u64).sum()
}

/// Puts an envelope on the rapids (partition key: its stream id); returns the
/// sequence number.
/// Puts every `account.*` and `transfer.*` event of `streams` onto the rapids again
/// and waits until the accounts river (it reads `transfer.*`) and the transfers river
/// (`account.*`) have handled that many more events; returns how many of each kind,
/// `(transfer.*, account.*)`.
pub async fn redeliver_saga_events(bank: &Bank, streams: &[Uuid]) -> (u64, u64) {
    let handled_before = (
        counter_sum(&bank.account_state.river_metrics.handled),
        counter_sum(&bank.transfer_state.river_metrics.handled),
    );
    let store = eventstore::EventStore::new(bank.account_state.kit.pool.clone());
    let mut redelivered = (0, 0);
    for stream in streams {
        for event in store.read_stream(*stream, 0, None).await.unwrap() {
            match event.event_type.split('.').next() {
                Some("transfer") => redelivered.0 += 1,
                Some("account") => redelivered.1 += 1,
                _ => continue,
            }
            put_envelope(&bank.rapids, &event.into()).await;
        }
    }
    wait_for(Duration::from_secs(30), "the rivers to handle the redelivered events", || {
        let handled = (
            counter_sum(&bank.account_state.river_metrics.handled),
            counter_sum(&bank.transfer_state.river_metrics.handled),
        );
        async move {
            (handled.0 >= handled_before.0 + redelivered.0 && handled.1 >= handled_before.1 + redelivered.1)
                .then_some(())
        }
    })
    .await;
    redelivered
}

pub async fn put_envelope(rapids: &Rapids, envelope: &eventstore::envelope::Envelope) -> String {
    let data = serde_json::to_vec(envelope).unwrap();
    let out = rapids
        .client()
        .put_record()
        .stream_name(rapids.stream())
        .partition_key(envelope.stream_id.to_string())
        .data(aws_sdk_kinesis::primitives::Blob::new(data))
        .send()
        .await
        .unwrap();
    out.sequence_number().to_string()
}

/// Waits until every account and transfer view is at its stream's version in the store.
pub async fn views_caught_up(pool: &PgPool) {
    wait_for(Duration::from_secs(60), "the views to catch up with the event store", || async {
        let behind: i64 = sqlx::query_scalar(
            "select count(*) from (select stream_id, stream_type, max(version) as version from es.events
                                   where stream_type in ('account', 'transfer') group by 1, 2) e
             left join views.accounts a on a.id = e.stream_id
             left join views.transfers t on t.id = e.stream_id
             where coalesce(a.version, t.version, 0) <> e.version",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        (behind == 0).then_some(())
    })
    .await;
}

/// A Kinesis stream of its own on the Kinesis API server at `endpoint` (a test's own
/// server, rather than the one scripts/test started), created and active.
pub async fn fresh_stream_at(endpoint: &str, shards: i32) -> Rapids {
    let config = RapidsConfig {
        stream: format!("rapids-test-{}", Uuid::now_v7().simple()),
        ..RapidsConfig::local(endpoint, "rapids")
    };
    let rapids = Rapids::connect(&config).await;
    rapids.ensure_stream(shards, std::time::Duration::from_secs(30)).await.unwrap();
    rapids
}

/// Runs `pg_ctl` with `args` on the cluster scripts/test started (`TEST_PG_DIR`), as
/// the postgres user when this process is root (as scripts/lib.sh's `pg_as` does);
/// its server log goes on in the cluster's `server.log`. Fails the test unless it
/// succeeds.
pub async fn pg_ctl(args: &[&str]) {
    let dir = std::env::var("TEST_PG_DIR").expect("TEST_PG_DIR (run with scripts/test)");
    let bin = std::env::var("PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
    let pg_ctl = format!("{bin}/pg_ctl");
    let (data, log) = (format!("{dir}/data"), format!("{dir}/server.log"));
    let mut full = vec![pg_ctl.as_str(), "-D", &data, "-l", &log];
    full.extend_from_slice(args);
    let root = std::process::Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
    let mut command = if root {
        let mut command = tokio::process::Command::new("runuser");
        command.args(["-u", "postgres", "--"]).args(&full);
        command
    } else {
        let mut command = tokio::process::Command::new(full[0]);
        command.args(&full[1..]);
        command
    };
    // pg_ctl's started server keeps no handle on our pipes (its output goes to the log)
    let out = command.stdin(std::process::Stdio::null()).output().await.unwrap();
    assert!(
        out.status.success(),
        "pg_ctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The envelope of an `account.*` or `transfer.*` event as the tailer would publish it
/// (version `version` of `stream_id`, the actor alice as a customer, no store named):
/// tests put it on the stream straight, changing what they need.
pub fn aggregate_envelope(
    event_type: &str,
    stream_id: Uuid,
    version: i32,
    data: Value,
) -> eventstore::envelope::Envelope {
    let stream_type = event_type.split('.').next().unwrap_or_default().to_owned();
    eventstore::envelope::Envelope {
        event_id: Uuid::now_v7(),
        event_type: event_type.into(),
        stream_id,
        source: stream_type.clone(),
        stream_type,
        version,
        position: 999_999,
        schema_version: 1,
        recorded_at: chrono::Utc::now(),
        correlation_id: None,
        causation_id: None,
        actor: "alice".into(),
        role: Some("customer".into()),
        tags: Default::default(),
        partition_key: stream_id.to_string(),
        timestamp: 0,
        store: None,
        traceparent: None,
        data,
    }
}

/// view-updater's reconciliation checking the books every 200 ms, and its routes
/// (`/metrics` with the ledger's gauges); both stop when the guard drops.
pub async fn start_reconciliation(pool: &PgPool) -> (Running, tokio_util::sync::DropGuard) {
    let config = view_updater::Config { reconcile_interval_ms: 200, ..view_updater::Config::new(service_args(pool)) };
    let state = view_updater::AppState::new(&config, pool.clone(), None).unwrap();
    let stop = CancellationToken::new();
    view_updater::start_reconciliation(&config, &state, stop.clone()).unwrap();
    (spawn(view_updater::router(state)).await, stop.drop_guard())
}

/// Writes, straight into the store past the aggregate, a deposit of 5 EUR at version 3
/// of `account` that says the balance went to 1,100 (after an opening deposit of 100:
/// the books are off by 995).
pub async fn write_unbalanced_deposit(pool: &PgPool, account: Uuid) {
    sqlx::query(
        "insert into es.events (stream_id, stream_type, version, event_id, type, schema_version, data, metadata)
         values ($1, 'account', 3, $2, 'account.deposited', 1,
                 '{\"amount\": 5, \"currency\": \"EUR\", \"balance_after\": 1100}', '{\"actor\": \"mallory\"}')",
    )
    .bind(account)
    .bind(Uuid::now_v7())
    .execute(pool)
    .await
    .unwrap();
}

/// Splits the stream's first shard (kinesalite), or doubles the shard count where
/// SplitShard is not supported; returns the new shards' ids.
pub async fn reshard(rapids: &Rapids) -> Vec<String> {
    let client = rapids.client();
    let before = client.list_shards().stream_name(rapids.stream()).send().await.unwrap();
    let old: Vec<String> = before.shards().iter().map(|s| s.shard_id().to_string()).collect();
    let first = &before.shards()[0];
    let range = first.hash_key_range().unwrap();
    let (start, end): (u128, u128) =
        (range.starting_hash_key().parse().unwrap(), range.ending_hash_key().parse().unwrap());
    let split = client
        .split_shard()
        .stream_name(rapids.stream())
        .shard_to_split(first.shard_id())
        .new_starting_hash_key((start + (end - start) / 2).to_string())
        .send()
        .await;
    if let Err(e) = split {
        eprintln!("SplitShard refused ({}); resharding with UpdateShardCount", rapids::describe(&e));
        client
            .update_shard_count()
            .stream_name(rapids.stream())
            .target_shard_count(old.len() as i32 * 2)
            .scaling_type(aws_sdk_kinesis::types::ScalingType::UniformScaling)
            .send()
            .await
            .unwrap();
    }
    rapids.ensure_stream(0, Duration::from_secs(30)).await.unwrap();
    let after = client.list_shards().stream_name(rapids.stream()).send().await.unwrap();
    let children: Vec<String> =
        after.shards().iter().map(|s| s.shard_id().to_string()).filter(|id| !old.contains(id)).collect();
    assert!(!children.is_empty(), "the reshard made new shards");
    children
}

/// An archive of its own for one test: a fresh bucket's name at the S3 API server
/// scripts/test started (`S3_ENDPOINT`); the bucket is made by whoever writes first.
#[track_caller]
pub fn s3_args() -> archive::s3::S3Args {
    let endpoint = std::env::var("S3_ENDPOINT").expect("S3_ENDPOINT is not set: run the tests with scripts/test");
    archive::s3::S3Args {
        archive_bucket: format!("test-{}", Uuid::now_v7().simple()),
        s3_endpoint: Some(endpoint),
        ..archive::s3::S3Args::default()
    }
}

/// The environment of an archiver binary over the test's database, `rapids` and
/// `s3` (leases that expire in 1.5 s), listening on `port`.
pub fn archiver_env(
    pool: &PgPool,
    rapids: &Rapids,
    s3: &archive::s3::S3Args,
    port: u16,
) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", database_url(&pool.connect_options())),
        ("KINESIS_STREAM", rapids.stream().to_owned()),
        ("ARCHIVE_BUCKET", s3.archive_bucket.clone()),
        ("S3_ENDPOINT", s3.s3_endpoint.clone().unwrap_or_default()),
        ("ARCHIVER_ADDR", format!("127.0.0.1:{port}")),
        ("RIVER_LEASE_MS", "1500".into()),
        ("RIVER_RENEW_MS", "300".into()),
        ("RIVER_SHARD_SYNC_MS", "500".into()),
        ("RIVER_IDLE_POLL_MS", "50".into()),
    ]
}

/// The archiver binary over the test's database, `rapids` and `s3`; its address.
pub async fn start_archiver(pool: &PgPool, rapids: &Rapids, s3: &archive::s3::S3Args) -> (tokio::process::Child, Api) {
    let port = free_port();
    let child = spawn_binary("archiver", port, &archiver_env(pool, rapids, s3, port)).await;
    (child, Api::new(&format!("http://127.0.0.1:{port}")))
}
