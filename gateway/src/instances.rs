//! The instances of each upstream (`ACCOUNT_SERVICE_URLS=a,b,c`, …): which are ready,
//! from their `/ready` checked every `UPSTREAM_CHECK_MS`, and the order a request tries
//! them in (the ready ones in turn, then the others: with none ready, every instance
//! is still tried, as a load balancer does).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

pub struct Instances {
    urls: Vec<String>,
    ready: Vec<AtomicBool>,
    next: AtomicUsize,
}

impl Instances {
    /// Every instance counts as ready until its first check says otherwise.
    pub fn new(urls: Vec<String>) -> Self {
        let ready = urls.iter().map(|_| AtomicBool::new(true)).collect();
        Instances { urls, ready, next: AtomicUsize::new(0) }
    }

    pub fn url(&self, i: usize) -> &str {
        &self.urls[i]
    }

    pub fn len(&self) -> usize {
        self.urls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    pub fn is_ready(&self, i: usize) -> bool {
        self.ready[i].load(Ordering::Relaxed)
    }

    /// Marks an instance (not) ready until its next check.
    pub fn set_ready(&self, i: usize, ready: bool) {
        if self.ready[i].swap(ready, Ordering::Relaxed) != ready {
            tracing::info!(url = %self.urls[i], ready, "upstream instance readiness changed");
        }
    }

    pub fn any_ready(&self) -> bool {
        (0..self.len()).any(|i| self.is_ready(i))
    }

    /// The order a request tries the instances in: the ready ones, each request
    /// starting at the next one, then the others.
    pub fn order(&self) -> Vec<usize> {
        let n = self.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let turn = (0..n).map(|k| (start + k) % n);
        let (ready, not): (Vec<usize>, Vec<usize>) = turn.partition(|&i| self.is_ready(i));
        ready.into_iter().chain(not).collect()
    }

    /// Asks every instance's `/ready` (2 s at most each) and records the answers.
    pub async fn check(&self, client: &reqwest::Client) {
        let probes = self.urls.iter().map(|url| async move {
            let probe = client.get(format!("{}/ready", url.trim_end_matches('/'))).timeout(Duration::from_secs(2));
            probe.send().await.is_ok_and(|r| r.status().is_success())
        });
        for (i, ready) in futures::future::join_all(probes).await.into_iter().enumerate() {
            self.set_ready(i, ready);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_take_the_ready_instances_in_turn_then_the_others() {
        let instances = Instances::new(vec!["a".into(), "b".into(), "c".into()]);
        assert_eq!(instances.order(), vec![0, 1, 2]);
        assert_eq!(instances.order(), vec![1, 2, 0]);
        instances.set_ready(1, false);
        assert_eq!(instances.order(), vec![2, 0, 1]);
        assert_eq!(instances.order(), vec![0, 2, 1]);
        assert_eq!(instances.order(), vec![2, 0, 1], "b is skipped, not given a turn");
        instances.set_ready(0, false);
        instances.set_ready(2, false);
        assert!(!instances.any_ready());
        assert_eq!(instances.order().len(), 3, "with none ready, every instance is still tried");
    }
}
