//! The benchmarks, one module each: its knobs (`Args`, the subcommand's flags), the
//! load it drives, the lines it prints, and the same figures as a JSON object under
//! stable snake_case keys (returned by its `run`, written by `--json FILE`).
//!
//! Shared across them: `client` for the HTTP calls, `load` for how load is offered,
//! `prom` for the services' histograms, `report` for percentiles and output.

pub mod deposits;
pub mod hot_account;
pub mod long_stream;
pub mod publish_lag;
pub mod queries;
pub mod transfers;
pub mod view_latency;
