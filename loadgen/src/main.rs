//! `loadgen`: the benchmark command (not a test; it prints figures and asserts nothing).
//!
//! `loadgen deposits` opens M accounts and runs deposits over C connections for T
//! seconds against account-service, then prints commands/s, p50, p99 and errors; in
//! the same run it measures the raw single-row insert rate of the same Postgres with
//! pgbench (C clients, one insert per transaction into an events-like table) and
//! prints the ratio of the two.
//!
//! `loadgen long-stream` prints deposit latency on an account with N events next to a
//! fresh account's.
//!
//! `loadgen publish-lag` runs deposits while a tailer publishes them and prints the
//! tailer's commit → Kinesis lag.
//!
//! `loadgen view-latency` runs deposits at R per second and reads each one back from
//! query-service with `min_version` = the deposit's version: the time from the
//! command's answer until the view shows it (and from sending the command).
//!
//! `loadgen queries` reads `GET /accounts/{id}` over C connections for T seconds, and
//! the same service's `/health` the same way (the HTTP floor), and prints both rates.
//!
//! `loadgen transfers` creates transfers among M accounts at R per second from C
//! clients for T seconds, polls each until it is completed or failed, and prints
//! transfers/s, completion latency (created → settled as the polling client sees it)
//! and the tailer's commit → Kinesis lag over the same time; `--warmup W` runs the
//! same load for W seconds first and prints its figures apart.
//!
//! `loadgen hot-account` sends deposits to one account while transfers run among
//! others, and reads the stream for the hot account's publish lag and order.
//! `loadgen delay-proxy` puts a Kinesis API server at a region's distance.
//!
//! Every subcommand takes `--json FILE`: the figures it printed, also written to FILE
//! as one JSON object under snake_case keys (`scripts/bench` merges them into its
//! results file). The scenarios live in `scenarios/`, one module each; `client` makes
//! the HTTP calls, `load` offers the load, `prom` reads the services' histograms,
//! `report` holds percentiles and output, `pgbench` the raw-insert baseline.

mod client;
mod delay;
mod load;
mod pgbench;
mod procs;
mod prom;
mod report;
mod scenarios;

use clap::{Parser, Subcommand};
use scenarios::{deposits, hot_account, long_stream, publish_lag, queries, transfers, view_latency};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "loadgen", about = "Benchmarks of the bank's command side")]
struct Cli {
    #[command(subcommand)]
    command: Bench,
    /// Also write the figures to FILE as one JSON object (snake_case keys).
    #[arg(long, global = true, value_name = "FILE")]
    json: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Bench {
    /// Deposits over C connections for T seconds, next to pgbench's raw insert rate.
    Deposits(deposits::Args),
    /// Deposits for T seconds while a tailer publishes them; prints the tailer's
    /// commit → Kinesis lag from its metrics.
    PublishLag(publish_lag::Args),
    /// Transfers at a fixed rate; completion latency and publish lag.
    Transfers(transfers::Args),
    /// Deposits at a fixed rate, each read back from the views with min_version.
    ViewLatency(view_latency::Args),
    /// GET /accounts/{id} throughput next to /health's, same connections, same run.
    Queries(queries::Args),
    /// Deposit latency on an account with N events next to a fresh account's.
    LongStream(long_stream::Args),
    /// One account taking deposits while transfers run among others: its publish lag
    /// (read from the stream), its deposits/s next to spread ones, the others' p99.
    HotAccount(hot_account::Args),
    /// A TCP proxy adding a delay to every request (Kinesis at a region's distance).
    DelayProxy(delay::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let figures = match cli.command {
        Bench::Deposits(args) => deposits::run(args).await?,
        Bench::PublishLag(args) => publish_lag::run(args).await?,
        Bench::Transfers(args) => transfers::run(args).await?,
        Bench::ViewLatency(args) => view_latency::run(args).await?,
        Bench::Queries(args) => queries::run(args).await?,
        Bench::LongStream(args) => long_stream::run(args).await?,
        Bench::HotAccount(args) => hot_account::run(args).await?,
        Bench::DelayProxy(args) => delay::run(args).await?,
    };
    if let Some(path) = &cli.json {
        report::write_json(path, &figures)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_is_consistent_and_takes_the_flags_scripts_bench_passes() -> anyhow::Result<()> {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "loadgen",
            "transfers",
            "--url",
            "http://a",
            "--jwt-secret",
            "s",
            "--transfers-url",
            "http://x",
            "--tailer",
            "http://t",
            "--river-metrics",
            "http://a",
            "--river-metrics",
            "http://x",
            "--accounts",
            "200",
            "--connections",
            "16",
            "--rate",
            "200",
            "--seconds",
            "20",
            "--warmup",
            "10",
            "--long-poll-url",
            "http://x",
            "--process",
            "tailer=42",
            "--json",
            "/tmp/out.json",
        ])?;
        assert_eq!(cli.json, Some(PathBuf::from("/tmp/out.json")));
        let Bench::Transfers(args) = cli.command else { anyhow::bail!("not transfers") };
        assert_eq!(args.river_metrics, ["http://a", "http://x"]);
        assert_eq!((args.accounts, args.rate, args.warmup, args.poll_ms), (200, 200, 10, 25));
        assert_eq!(args.processes, [procs::Watched { name: "tailer".into(), pid: 42 }]);
        // --json may come before the subcommand too
        let cli = Cli::try_parse_from(["loadgen", "--json", "f", "long-stream", "--jwt-secret", "s", "--events", "5"])?;
        assert_eq!(cli.json, Some(PathBuf::from("f")));
        Ok(())
    }
}
