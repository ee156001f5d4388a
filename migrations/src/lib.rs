//! The SQL migrations of every schema (`es`, `rapids`, `views`), embedded at build time.
//!
//! Every service runs [`MIGRATOR`] at start-up. sqlx takes a Postgres advisory lock
//! around the run, so services starting at the same moment apply each migration once
//! and the others wait, then find nothing left to do.
#![forbid(unsafe_code)]

/// All migrations, in order. Use with `MIGRATOR.run(&pool)` or
/// `#[sqlx::test(migrator = "migrations::MIGRATOR")]`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./sql");
