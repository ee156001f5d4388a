//! `bankctl`: the operator's and developer's command line.
//!
//! * `bankctl token --sub alice --role customer` prints a dev JWT (HS256, `JWT_SECRET`).
//! * `bankctl ensure-stream` creates the Kinesis stream unless it exists and waits
//!   until it is active.
//! * `bankctl migrate` applies the database migrations.

use clap::{Parser, Subcommand};
use service_kit::auth::{Role, issue_hs256};
use service_kit::config::{DatabaseArgs, KinesisArgs, Secret};
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
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Token { sub, role, ttl, jwt_secret } => {
            println!("{}", issue_hs256(jwt_secret.expose(), &sub, role, ttl)?);
        }
        Command::EnsureStream { kinesis, shards } => {
            let rapids = eventstore::rapids::Rapids::connect(&kinesis.rapids_config()).await;
            rapids.ensure_stream(shards, Duration::from_secs(30)).await?;
            println!("stream {} is active", rapids.stream());
        }
        Command::Migrate { database } => {
            let pool = service_kit::startup::connect(&database).await?;
            service_kit::startup::migrate(&pool).await?;
            println!("migrations applied");
        }
    }
    Ok(())
}
