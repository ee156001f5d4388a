//! How load is offered, whatever it is: closed-loop GET workers (`hammer`), each
//! sending its next request when the last is answered, and a fixed-rate ticker
//! (`slots`) that open-loop scenarios share out among their clients.

use crate::report::percentile;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A closed loop's result: answered requests per second, their latency, and failures.
pub struct Outcome {
    pub rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub ok: u64,
    pub errors: u64,
}

impl Outcome {
    pub fn from_latencies(latencies: &[f64], errors: u64, elapsed_s: f64) -> Outcome {
        Outcome {
            rate: latencies.len() as f64 / elapsed_s,
            p50_ms: percentile(latencies, 0.50),
            p99_ms: percentile(latencies, 0.99),
            ok: latencies.len() as u64,
            errors,
        }
    }

    /// `{<prefix>_per_s, <prefix>_p50_ms, <prefix>_p99_ms, <prefix>_ok, <prefix>_errors}`.
    pub fn figures(&self, prefix: &str) -> Value {
        json!({
            format!("{prefix}_per_s"): self.rate,
            format!("{prefix}_p50_ms"): self.p50_ms,
            format!("{prefix}_p99_ms"): self.p99_ms,
            format!("{prefix}_ok"): self.ok,
            format!("{prefix}_errors"): self.errors,
        })
    }
}

/// GETs from `connections` workers for `seconds`; `request(n)` names the URL and token.
pub async fn hammer(
    client: &reqwest::Client,
    seconds: u64,
    connections: usize,
    request: impl Fn(usize) -> (String, Option<String>) + Send + Sync + 'static,
) -> Outcome {
    let request = Arc::new(request);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let workers: Vec<_> = (0..connections)
        .map(|w| {
            let (client, request) = (client.clone(), request.clone());
            tokio::spawn(async move {
                let (mut latencies, mut errors) = (Vec::new(), 0u64);
                let mut n = w;
                while Instant::now() < deadline {
                    let (url, token) = request(n);
                    n += connections;
                    let t = Instant::now();
                    let mut get = client.get(url);
                    if let Some(token) = token {
                        get = get.bearer_auth(token);
                    }
                    match get.send().await {
                        Ok(r) if r.status() == 200 => {
                            let _ = r.bytes().await;
                            latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                        }
                        _ => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let (mut latencies, mut errors) = (Vec::new(), 0);
    for w in workers {
        if let Ok((l, e)) = w.await {
            latencies.extend(l);
            errors += e;
        }
    }
    Outcome::from_latencies(&latencies, errors, started.elapsed().as_secs_f64())
}

/// The receiving end of `slots`, shared by the clients.
pub type Slots = Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<u64>>>;

/// Slots handed out `rate` times a second for `seconds` (numbered from 0), from a
/// channel the clients share; the ticker task ends when the time is up.
pub fn slots(rate: u64, seconds: u64, clients: usize) -> (tokio::task::JoinHandle<()>, Slots) {
    let (slots, taken) = tokio::sync::mpsc::channel(clients.max(1));
    let ticker = tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
        // a late tick (a busy machine, all clients busy) is made up for: the rate asked
        // is the rate offered, on average
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let end = Instant::now() + Duration::from_secs(seconds);
        let mut n: u64 = 0;
        while Instant::now() < end {
            interval.tick().await;
            if slots.send(n).await.is_err() {
                break;
            }
            n += 1;
        }
    });
    (ticker, Arc::new(tokio::sync::Mutex::new(taken)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outcome_summarises_its_latencies_under_prefixed_keys() {
        let outcome = Outcome::from_latencies(&[4.0, 1.0, 3.0, 2.0], 2, 2.0);
        assert_eq!(outcome.rate, 2.0);
        assert_eq!(outcome.ok, 4);
        assert_eq!(outcome.p50_ms, 3.0); // index round(3 * 0.5) = 2
        assert_eq!(
            outcome.figures("deposits"),
            json!({"deposits_per_s": 2.0, "deposits_p50_ms": 3.0, "deposits_p99_ms": 4.0,
                   "deposits_ok": 4, "deposits_errors": 2})
        );
    }
}
