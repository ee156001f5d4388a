//! `bankctl`: the operator's and developer's command line.
//!
//! * `bankctl token --sub alice --role customer` prints a dev JWT (HS256, `JWT_SECRET`).
//! * `bankctl ensure-stream` creates the Kinesis stream unless it exists and waits
//!   until it is active.
//! * `bankctl migrate` applies the database migrations.
//! * `bankctl dead-letters [--river R]` lists events the rivers parked.
//! * `bankctl retry-dead-letters --river R [--id N]` hands parked events back to the
//!   river's handler (a running instance of the river picks them up).

use clap::{Parser, Subcommand};
use rapids::config::KinesisArgs;
use rapids::river::dead_letter;
use service_kit::auth::{Role, issue_hs256};
use service_kit::config::{DatabaseArgs, Secret};
use std::time::Duration;

#[derive(Parser)]
#[command(name = "bankctl", about = "Operate the bank's backend")]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    },
    /// Apply the database migrations.
    Migrate {
        #[command(flatten)]
        database: DatabaseArgs,
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
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Token { sub, role, ttl, jwt_secret } => {
            println!("{}", issue_hs256(jwt_secret.expose(), &sub, role, ttl)?);
        }
        Command::EnsureStream { kinesis, shards } => {
            let rapids = rapids::Rapids::connect(&kinesis.rapids_config()).await;
            rapids.ensure_stream(shards, Duration::from_secs(30)).await?;
            println!("stream {} is active", rapids.stream());
        }
        Command::Migrate { database } => {
            let pool = service_kit::startup::connect(&database).await?;
            service_kit::startup::migrate(&pool).await?;
            println!("migrations applied");
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
    }
    Ok(())
}
