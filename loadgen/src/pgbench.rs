//! The raw-insert baseline: pgbench's single-row insert rate into an events-shaped
//! table of the same Postgres, and the checkpoint taken before each measured phase so
//! that neither pays for the other's writes. Runs `psql` and `pgbench` (psql is found
//! next to pgbench).

use anyhow::{Context, bail};
use std::path::Path;
use std::process::Command;

pub fn checkpoint(pgbench: &Path, url: &str) -> anyhow::Result<()> {
    let status =
        Command::new(pgbench.with_file_name("psql")).args(["-q", "-X", "-d", url, "-c", "checkpoint"]).status()?;
    if !status.success() {
        bail!("checkpoint failed");
    }
    Ok(())
}

/// pgbench, C clients, T seconds, one insert per transaction into a table shaped like
/// es.events (identity position, two unique indexes, jsonb). Returns transactions/s.
pub fn insert_rate(pgbench: &Path, url: &str, clients: usize, seconds: u64) -> anyhow::Result<f64> {
    let psql = pgbench.with_file_name("psql");
    let setup = "drop table if exists bench_events;
        create table bench_events (
            position bigint generated always as identity primary key,
            stream_id uuid not null, stream_type text not null, version int not null,
            event_id uuid not null unique, type text not null, schema_version smallint not null default 1,
            data jsonb not null, metadata jsonb not null default '{}', recorded_at timestamptz not null default now(),
            unique (stream_id, version));";
    let status = Command::new(&psql).args(["-q", "-X", "-d", url, "-c", setup]).status().context("psql")?;
    if !status.success() {
        bail!("creating the pgbench table failed");
    }
    let script = std::env::temp_dir().join(format!("bank-pgbench-{}.sql", std::process::id()));
    std::fs::write(
        &script,
        "insert into bench_events (stream_id, stream_type, version, event_id, type, data, metadata)
         values (gen_random_uuid(), 'account', 1, gen_random_uuid(), 'account.deposited',
                 '{\"amount\": 1, \"currency\": \"EUR\", \"balance_after\": 1}', '{\"actor\": \"bench\"}');\n",
    )?;
    let output = Command::new(pgbench)
        .args(["-n", "-c", &clients.to_string(), "-j", "2", "-T", &seconds.to_string(), "-f"])
        .arg(&script)
        .arg(url)
        .output()
        .context("pgbench")?;
    let _ = std::fs::remove_file(&script);
    let _ = Command::new(&psql).args(["-q", "-X", "-d", url, "-c", "drop table if exists bench_events"]).status();
    let text = String::from_utf8_lossy(&output.stdout);
    tps(&text).with_context(|| format!("pgbench printed no tps: {}", String::from_utf8_lossy(&output.stderr)))
}

/// The transactions/s of pgbench's report (`tps = 1234.5 (without initial connection time)`).
fn tps(report: &str) -> Option<f64> {
    report
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.trim_start_matches("tps = ").split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
}

#[cfg(test)]
mod tests {
    use super::tps;

    #[test]
    fn reads_tps_from_pgbench_report() {
        let report = "transaction type: /tmp/bank-pgbench-1.sql\nscaling factor: 1\n\
            number of clients: 16\nlatency average = 3.1 ms\n\
            initial connection time = 12.345 ms\ntps = 5123.456789 (without initial connection time)\n";
        assert_eq!(tps(report), Some(5123.456789));
        assert_eq!(tps("tps = oops\n"), None);
        assert_eq!(tps("pgbench: error: connection failed\n"), None);
    }
}
