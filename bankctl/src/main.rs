//! `bankctl`: the operator's and developer's command line.
//!
//! * `bankctl token --sub alice --role customer` prints a dev JWT (HS256, `JWT_SECRET`).
//! * `bankctl ensure-stream` creates the Kinesis stream unless it exists, waits
//!   until it is active, and sets its retention (`KINESIS_RETENTION_HOURS`).
//! * `bankctl migrate` applies the database migrations.
//! * `bankctl dead-letters [--river R]` lists events the rivers parked.
//! * `bankctl retry-dead-letters --river R [--id N]` hands parked events back to the
//!   river's handler (a running instance of the river picks them up).
//! * `bankctl status [--accounts URL] [--transfers URL] [--queries URL]` prints each
//!   service's `/ready` answer as JSON (through `bank-client`) and fails unless every
//!   one is ready.
//! * `bankctl send|subscribe|unsubscribe|listsubs|topics|advertise|readfrom …`: the
//!   event bus's control plane ([`verbs`]); each prints one JSON document, or one
//!   line on stderr and a non-zero exit. Token from `BANK_TOKEN`, else minted from
//!   `JWT_SECRET`; the bus at `BANK_BUS_URL` (default `http://127.0.0.1:8086`).
//! * `bankctl stuck [--older-than SECS]` (default 60): the transfers not settled after
//!   that long, with where each stopped (state, version, age), from the event bus's
//!   `GET /ops/unsettled`; token and URL as for the verbs above.
//! * `bankctl shell`: the same verbs at an interactive `cmd > ` prompt ([`shell`]).

use bank_client::{BankClient, ClientError, Readiness, Urls};
use clap::{Parser, Subcommand};
use rapids::config::KinesisArgs;
use rapids::river::dead_letter;
use serde_json::{Value, json};
use service_kit::auth::{Role, issue_hs256};
use service_kit::config::{DatabaseArgs, Secret};
use std::time::Duration;

mod shell;
mod verbs;

#[derive(Parser)]
#[command(name = "bankctl", about = "Operate the bank's backend")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum ArchiveCommand {
    /// Compare the archive with the event store, event by event: report what is missing,
    /// extra, duplicated or under another stream or version; exit 1 on any difference.
    /// Events the archiver has not reached yet count as missing.
    Verify {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        s3: archive::s3::S3Args,
        /// Only this day's events (UTC, YYYY-MM-DD) and partition.
        #[arg(long)]
        day: Option<chrono::NaiveDate>,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Print a signed dev token (HS256 with JWT_SECRET) for a subject and role.
    Token {
        /// The customer (or staff member) the token speaks for: the `sub` claim.
        #[arg(long)]
        sub: String,
        #[arg(long, value_enum, default_value = "customer")]
        role: Role,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: i64,
        #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
        jwt_secret: Secret,
    },
    /// Create the Kinesis stream unless it exists, and wait until it is active.
    EnsureStream {
        #[command(flatten)]
        kinesis: KinesisArgs,
        #[arg(long, env = "KINESIS_SHARDS", default_value_t = 4)]
        shards: i32,
        /// How long the stream keeps records, in hours (24 to 8,760 on AWS).
        #[arg(long, env = "KINESIS_RETENTION_HOURS", default_value_t = 24)]
        retention_hours: i32,
    },
    /// Apply the database migrations.
    Migrate {
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Print the event store's identity (in every envelope the tailer publishes); with
    /// --renew, give it a new one first: a step of every restore, so that the rivers
    /// skip the stream's events of the timeline the restore left at once.
    StoreIdentity {
        #[command(flatten)]
        database: DatabaseArgs,
        #[arg(long)]
        renew: bool,
    },
    /// Check the books once (the reconciliation, incremental from where the last check
    /// stopped) and print the report as JSON; exit 1 on any difference: a currency whose
    /// balances do not sum to zero, in_transit not equal to what the open transfers hold,
    /// a finding (naming the account or transfer).
    Reconcile {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Forget what the ledger read and check the whole event store again.
        #[arg(long)]
        full: bool,
    },
    /// The archive on S3 (the river `archive`'s Parquet files).
    Archive {
        #[command(subcommand)]
        command: ArchiveCommand,
    },
    /// List the events the rivers parked (not yet resolved).
    DeadLetters {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Only this river's.
        #[arg(long)]
        river: Option<String>,
    },
    /// Ask a river to hand parked events to its handler again.
    RetryDeadLetters {
        #[command(flatten)]
        database: DatabaseArgs,
        #[arg(long)]
        river: String,
        /// Only this dead letter (default: every parked event of the river).
        #[arg(long)]
        id: Option<i64>,
    },
    /// Print each service's /ready answer (status and body) as JSON; fail unless all
    /// are ready. `https://` URLs are verified against the system's roots and the CAs
    /// in BANK_CA_FILE.
    Status {
        /// account-service base URL.
        #[arg(long, env = "ACCOUNT_SERVICE_URL", default_value = "http://127.0.0.1:8081")]
        accounts: String,
        /// transfer-service base URL.
        #[arg(long, env = "TRANSFER_SERVICE_URL", default_value = "http://127.0.0.1:8082")]
        transfers: String,
        /// query-service base URL.
        #[arg(long, env = "QUERY_SERVICE_URL", default_value = "http://127.0.0.1:8083")]
        queries: String,
    },
    #[command(flatten)]
    Verb(verbs::Verb),
    /// An interactive prompt (`cmd > `) taking the verbs above, `help` and `exit`.
    Shell,
}

/// How long `status` waits for each service's answer.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// Each service's `/ready`, asked at once; the report and whether all are ready.
async fn status(urls: Urls, http: reqwest::Client) -> (Value, bool) {
    let bank = BankClient::anonymous(urls.clone()).with_http(http);
    let ask = |base: String| {
        let bank = bank.clone();
        async move {
            let answer = tokio::time::timeout(READY_TIMEOUT, bank.ready(&base)).await;
            (base, answer.map_err(|_| format!("no answer within {} s", READY_TIMEOUT.as_secs())))
        }
    };
    let (a, t, q) = tokio::join!(ask(urls.accounts), ask(urls.transfers), ask(urls.queries));
    report([("account-service", a), ("transfer-service", t), ("query-service", q)])
}

type Answer = (String, Result<Result<Readiness, ClientError>, String>);

/// `{service: {url, status, body} | {url, error}}`, and whether every service is ready.
fn report(answers: [(&str, Answer); 3]) -> (Value, bool) {
    let mut all_ready = true;
    let mut out = serde_json::Map::new();
    for (service, (url, answer)) in answers {
        let entry = match answer {
            Ok(Ok(ready)) => {
                all_ready &= ready.is_ready();
                json!({"url": url, "status": ready.status, "body": ready.body})
            }
            Ok(Err(e)) => {
                all_ready = false;
                json!({"url": url, "error": e.to_string()})
            }
            Err(timeout) => {
                all_ready = false;
                json!({"url": url, "error": timeout})
            }
        };
        out.insert(service.to_owned(), entry);
    }
    (Value::Object(out), all_ready)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Token { sub, role, ttl, jwt_secret } => {
            println!("{}", issue_hs256(jwt_secret.expose(), &sub, role, ttl)?);
        }
        Command::EnsureStream { kinesis, shards, retention_hours } => {
            let rapids = rapids::Rapids::connect(&kinesis.rapids_config()).await;
            rapids.ensure_stream(shards, Duration::from_secs(30)).await?;
            rapids.set_retention(retention_hours, Duration::from_secs(30)).await?;
            println!("stream {} is active, retention {retention_hours} h", rapids.stream());
        }
        Command::Migrate { database } => {
            let pool = service_kit::startup::connect(&database).await?;
            service_kit::startup::migrate(&pool).await?;
            println!("migrations applied");
        }
        Command::StoreIdentity { database, renew } => {
            let pool = service_kit::startup::connect(&database).await?;
            let id = if renew {
                eventstore::identity::renew(&pool).await?
            } else {
                eventstore::identity::identity(&pool).await?
            };
            println!("{id}");
        }
        Command::Reconcile { database, full } => {
            let pool = service_kit::startup::connect(&database).await?;
            if full {
                ledger::reset(&pool).await?;
            }
            let report = ledger::check_now(&pool).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            if !report.balanced() {
                std::process::exit(1);
            }
        }
        Command::Archive { command: ArchiveCommand::Verify { database, s3, day } } => {
            let pool = service_kit::startup::connect(&database).await?;
            let bucket = archive::s3::Bucket::connect(&s3).await;
            let report = archive::verify::verify(&pool, &bucket, day).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            if report.differences() > 0 {
                std::process::exit(1);
            }
        }
        Command::DeadLetters { database, river } => {
            let pool = service_kit::startup::connect(&database).await?;
            let letters = dead_letter::list(&pool, river.as_deref()).await?;
            println!(
                "{:>6}  {:<10} {:<22} {:<8} {:<26} {:<38} {:>7} {:>8}  error",
                "id", "river", "shard", "status", "event", "stream", "version", "attempts"
            );
            for l in &letters {
                println!(
                    "{:>6}  {:<10} {:<22} {:<8} {:<26} {:<38} {:>7} {:>8}  {}",
                    l.id,
                    l.river,
                    l.shard_id,
                    l.status,
                    l.event_type.as_deref().unwrap_or("-"),
                    l.stream_id.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
                    l.version.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
                    l.attempts,
                    l.error
                );
            }
            println!("{} dead letter(s)", letters.len());
        }
        Command::RetryDeadLetters { database, river, id } => {
            let pool = service_kit::startup::connect(&database).await?;
            let marked = dead_letter::request_retry(&pool, &river, id).await?;
            println!("{marked} dead letter(s) of river {river} marked for retry");
        }
        Command::Status { accounts, transfers, queries } => {
            let (report, all_ready) = status(Urls { accounts, transfers, queries }, verbs::reqwest_client()?).await;
            println!("{}", serde_json::to_string_pretty(&report)?);
            if !all_ready {
                anyhow::bail!("not every service is ready");
            }
        }
        Command::Verb(verb) => {
            let done = match verbs::client_from_env() {
                Ok(bus) => verbs::run(&bus, verb).await,
                Err(e) => Err(e),
            };
            if let Err(e) = done {
                eprintln!("error: {e:#}");
                std::process::exit(1);
            }
        }
        Command::Shell => shell::run().await?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_takes_the_dev_ports_unless_told_otherwise() -> anyhow::Result<()> {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let Command::Status { accounts, transfers, queries } =
            Cli::try_parse_from(["bankctl", "status", "--queries", "http://q:1"])?.command
        else {
            anyhow::bail!("not status")
        };
        // the environment may name the first two; the flag wins for the third
        if std::env::var_os("ACCOUNT_SERVICE_URL").is_none() {
            assert_eq!(accounts, "http://127.0.0.1:8081");
        }
        if std::env::var_os("TRANSFER_SERVICE_URL").is_none() {
            assert_eq!(transfers, "http://127.0.0.1:8082");
        }
        assert_eq!(queries, "http://q:1");
        Ok(())
    }

    fn verb(args: &[&str]) -> anyhow::Result<verbs::Verb> {
        match Cli::try_parse_from(std::iter::once("bankctl").chain(args.iter().copied()))?.command {
            Command::Verb(verb) => Ok(verb),
            _ => anyhow::bail!("{args:?} is not a verb"),
        }
    }

    #[test]
    fn the_control_plane_verbs_parse() -> anyhow::Result<()> {
        use verbs::Verb;
        let send = verb(&["send", "ViewPage", "TheSource", r#"{"name":"Sally"}"#])?;
        let Verb::Send { event, source, data, partition_key, event_id, tags } = send else { anyhow::bail!("{send:?}") };
        assert_eq!((event.as_str(), source.as_str()), ("ViewPage", "TheSource"));
        assert_eq!((data.as_deref(), partition_key, event_id), (Some(r#"{"name":"Sally"}"#), None, None));
        assert!(tags.is_empty());
        let tagged = verb(&["send", "ViewPage", "TheSource", "{}", "--tag", "vip", "--tag", "segment=rw"])?;
        let Verb::Send { tags, .. } = tagged else { anyhow::bail!("{tagged:?}") };
        assert_eq!(tags, ["vip", "segment=rw"]);
        let Verb::Send { data: None, .. } = verb(&["send", "ViewPage", "TheSource"])? else { anyhow::bail!("data") };

        let river = || "r1".to_owned();
        let topic = || "ViewPage".to_owned();
        assert_eq!(
            verb(&["subscribe", "r1", "ViewPage"])?,
            Verb::Subscribe { river: river(), topic: topic(), tags: vec![] }
        );
        assert_eq!(
            verb(&["subscribe", "r1", "ViewPage", "--tag", "vip"])?,
            Verb::Subscribe { river: river(), topic: topic(), tags: vec!["vip".into()] }
        );
        assert_eq!(
            verb(&["unsubscribe", "r1", "ViewPage"])?,
            Verb::Unsubscribe { river: river(), topic: topic(), tags: vec![] }
        );
        assert_eq!(verb(&["listsubs", "r1"])?, Verb::Listsubs { river: river() });
        assert_eq!(verb(&["topics"])?, Verb::Topics);
        assert_eq!(verb(&["advertise", "ViewPage"])?, Verb::Advertise { topic: topic(), description: None });
        assert_eq!(
            verb(&["readfrom", "r1"])?,
            Verb::Readfrom { river: river(), max: 10, wait_ms: 3000, visibility_ms: None }
        );
        assert_eq!(
            verb(&["readfrom", "r1", "--max", "5", "--wait-ms", "0"])?,
            Verb::Readfrom { river: river(), max: 5, wait_ms: 0, visibility_ms: None }
        );

        assert_eq!(verb(&["stuck"])?, Verb::Stuck { older_than: 60 });
        assert_eq!(verb(&["stuck", "--older-than", "1"])?, Verb::Stuck { older_than: 1 });

        for wrong in [
            &["stuck", "--older-than", "-1"][..],
            &["stuck", "5"],
            &["subscribe", "r1"],
            &["listsubs"],
            &["topics", "extra"],
            &["readfrom", "r1", "--max", "0"],
            &["readfrom", "r1", "--max", "101"],
            &["send", "ViewPage"],
            &["send", "A", "B", "{}", "extra"],
        ] {
            assert!(Cli::try_parse_from(std::iter::once("bankctl").chain(wrong.iter().copied())).is_err(), "{wrong:?}");
        }
        // the existing commands are still there, beside the shell
        assert!(matches!(Cli::try_parse_from(["bankctl", "shell"])?.command, Command::Shell));
        assert!(matches!(
            Cli::try_parse_from(["bankctl", "token", "--sub", "a", "--jwt-secret", "s"])?.command,
            Command::Token { .. }
        ));
        Ok(())
    }

    #[test]
    fn one_service_not_ready_fails_the_status() {
        let ready = |status| Ok(Ok(Readiness { status, body: json!({"status": "ready"}) }));
        let (report, all_ready) = report([
            ("account-service", ("http://a".into(), ready(200))),
            ("transfer-service", ("http://t".into(), ready(503))),
            ("query-service", ("http://q".into(), Err("no answer within 5 s".into()))),
        ]);
        assert!(!all_ready);
        assert_eq!(report["account-service"], json!({"url": "http://a", "status": 200, "body": {"status": "ready"}}));
        assert_eq!(report["transfer-service"]["status"], 503);
        assert_eq!(report["query-service"]["error"], "no answer within 5 s");
        let (_, all_ready) = report_of_ready();
        assert!(all_ready);
    }

    fn report_of_ready() -> (Value, bool) {
        let ready = || ("u".to_owned(), Ok(Ok(Readiness { status: 200, body: json!({}) })));
        report([("a", ready()), ("t", ready()), ("q", ready())])
    }
}
