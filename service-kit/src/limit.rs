//! Per-subject rate limits: governor's keyed GCRA limiter, one bucket per token
//! subject. A refusal is 429 `rate_limited` with `Retry-After` (whole seconds, at
//! least 1), and is counted.

use crate::{ApiError, ErrorCode};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::HeaderValue;
use std::num::NonZeroU32;

/// A rate per subject: `per_s` sustained, `burst` at once.
pub struct SubjectLimit {
    limiter: DefaultKeyedRateLimiter<String>,
    refused: prometheus::IntCounter,
}

impl SubjectLimit {
    /// A limit of `per_s` a second with bursts of `burst` (each at least 1); refusals
    /// count on `refused`.
    pub fn new(per_s: u32, burst: u32, refused: prometheus::IntCounter) -> Self {
        let per_s = NonZeroU32::new(per_s).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        SubjectLimit { limiter: RateLimiter::keyed(Quota::per_second(per_s).allow_burst(burst)), refused }
    }

    /// One more request of `subject`: allowed, or 429 with the seconds to wait.
    pub fn check(&self, subject: &str) -> Result<(), ApiError> {
        let Err(not_until) = self.limiter.check_key(&subject.to_owned()) else {
            return Ok(());
        };
        self.refused.inc();
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        Err(ApiError::new(ErrorCode::RateLimited, ErrorCode::RateLimited.meaning())
            .with_header(http::header::RETRY_AFTER, HeaderValue::from(seconds.max(1))))
    }

    /// Forgets the subjects whose buckets are full again, so that the memory held is
    /// bounded by the subjects of the last few seconds (call it now and then).
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_subject_past_its_burst_waits_and_others_do_not() {
        let limit = SubjectLimit::new(1, 2, prometheus::IntCounter::new("refused", "refused").unwrap());
        assert!(limit.check("alice").is_ok());
        assert!(limit.check("alice").is_ok());
        let refused = limit.check("alice").unwrap_err();
        assert_eq!(refused.code, ErrorCode::RateLimited);
        let retry = refused.headers.iter().find(|(name, _)| name == http::header::RETRY_AFTER);
        assert_eq!(retry.map(|(_, v)| v.to_str().unwrap()), Some("1"));
        assert!(limit.check("bob").is_ok(), "bob has a bucket of his own");
        assert_eq!(limit.refused.get(), 1);
    }
}
