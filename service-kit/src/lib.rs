//! What every HTTP service of the bank shares, so that each service's own crate holds
//! only its domain and its routes:
//!
//! * [`config`]: the environment variables every service reads (clap `env`), secrets
//!   that never print.
//! * [`telemetry`]: `tracing` set-up (text or JSON).
//! * [`error`]: [`ApiError`], the one error body of every service.
//! * [`auth`]: JWT verification (HS256 / RS256) and the [`auth::Caller`] extractor.
//! * [`extract`]: the JSON body extractor whose rejections are [`ApiError`]s, and the
//!   command metadata (request id, Idempotency-Key, request hash).
//! * [`metrics`]: Prometheus registry and per-route request metrics.
//! * [`http`]: the layer stack, `/health`, `/ready`, `/metrics`, `/openapi.json`, `serve`.
//! * [`limit`]: per-subject rate limits (429 with Retry-After).
//! * [`shutdown`]: one cancellation token for SIGINT/SIGTERM.
//! * [`startup`]: connect to Postgres (waiting for it) and run the migrations.
#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod error;
pub mod extract;
pub mod http;
pub mod limit;
pub mod metrics;
pub mod openapi;
pub mod shutdown;
pub mod startup;
pub mod telemetry;

pub use error::{ApiError, ErrorCode, Result};
