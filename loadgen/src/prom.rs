//! Prometheus histograms read from a `/metrics` page (the text exposition format):
//! parsing a histogram's series out of the page, and the arithmetic the benchmarks do
//! on them (the difference between two scrapes, a mean, the bucket a quantile falls in).
//!
//! Pure: fetching the page is `client::histograms`.

use anyhow::Context;

/// A Prometheus histogram read from a /metrics page: cumulative counts per bucket.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Histogram {
    /// `(le, cumulative count)` in the order of the page (ascending `le`, `+Inf` last).
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum: f64,
}

/// A histogram's series, keyed by their labels (without `le`, e.g. `river="accounts"`;
/// empty for an unlabelled one), in the order they first appear on the page.
pub type Histograms = Vec<(String, Histogram)>;

impl Histogram {
    /// What was observed between the scrape `earlier` and this one. A bucket `earlier`
    /// lacks counts from zero; a counter that went backwards (the process restarted)
    /// counts as zero rather than wrapping.
    pub fn minus(&self, earlier: &Histogram) -> Histogram {
        let buckets = self
            .buckets
            .iter()
            .map(|(le, n)| {
                let before = earlier.buckets.iter().find(|(l, _)| l == le).map(|(_, m)| *m).unwrap_or(0);
                (*le, n.saturating_sub(before))
            })
            .collect();
        Histogram { buckets, count: self.count.saturating_sub(earlier.count), sum: self.sum - earlier.sum }
    }

    /// Mean observation in milliseconds (the histograms are in seconds); 0 when empty.
    pub fn mean_ms(&self) -> f64 {
        if self.count == 0 { 0.0 } else { self.sum / self.count as f64 * 1000.0 }
    }

    /// The upper bound, in seconds, of the bucket holding quantile `q` (histograms know
    /// no more); `None` when it is beyond the last finite bucket or nothing was observed.
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        let want = (self.count as f64 * q).ceil() as u64;
        match self.buckets.iter().find(|(_, n)| *n >= want.max(1)) {
            Some((le, _)) if le.is_finite() => Some(*le),
            _ => None,
        }
    }
}

/// The series of histogram `name` on a /metrics page (`text`), keyed by their labels.
/// Lines of other metrics, comments, and samples of other metrics whose names merely
/// start with `name` are skipped.
pub fn parse_histograms(text: &str, name: &str) -> anyhow::Result<Histograms> {
    let mut all = Histograms::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else { continue };
        let (kind, rest) = rest.split_at(rest.find(['{', ' ']).unwrap_or(rest.len()));
        if !matches!(kind, "_bucket" | "_count" | "_sum") {
            continue;
        }
        let (labels, value) = match rest.strip_prefix('{') {
            Some(rest) => rest.split_once("} ").with_context(|| format!("a labelled sample: {line}"))?,
            None => ("", rest.trim()),
        };
        let mut le = None;
        let series: Vec<&str> = labels
            .split(',')
            .filter(|l| !l.is_empty())
            .filter(|l| match l.strip_prefix("le=") {
                Some(v) => {
                    le = Some(v.trim_matches('"').to_owned());
                    false
                }
                None => true,
            })
            .collect();
        let series = series.join(",");
        let at = match all.iter().position(|(l, _)| *l == series) {
            Some(at) => at,
            None => {
                all.push((series, Histogram::default()));
                all.len() - 1
            }
        };
        let histogram = &mut all[at].1;
        // a sample may carry a timestamp after its value
        let value = value.split_whitespace().next().unwrap_or("");
        match (kind, le) {
            ("_bucket", Some(le)) => {
                let le =
                    if le == "+Inf" { f64::INFINITY } else { le.parse().with_context(|| format!("le in {line}"))? };
                histogram.buckets.push((le, parse_count(value).with_context(|| format!("count in {line}"))?));
            }
            ("_count", _) => histogram.count = parse_count(value).with_context(|| format!("count in {line}"))?,
            ("_sum", _) => histogram.sum = value.parse().with_context(|| format!("sum in {line}"))?,
            _ => {}
        }
    }
    Ok(all)
}

/// A count, which some exporters print as a float (`12` or `12.0`, `1e+06`).
fn parse_count(value: &str) -> anyhow::Result<u64> {
    if let Ok(n) = value.parse::<u64>() {
        return Ok(n);
    }
    let f: f64 = value.parse()?;
    anyhow::ensure!(f.is_finite() && f >= 0.0 && f.fract() == 0.0, "not a count: {value}");
    Ok(f as u64)
}

/// Each series of `now` minus its value in `earlier` (a series new since then is kept whole).
pub fn since(now: Histograms, earlier: &Histograms) -> Histograms {
    now.into_iter()
        .map(|(labels, h)| {
            let before = earlier.iter().find(|(l, _)| *l == labels).map(|(_, h)| h.clone()).unwrap_or_default();
            let diff = h.minus(&before);
            (labels, diff)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP tailer_publish_lag_seconds Commit to Kinesis acknowledgement.
# TYPE tailer_publish_lag_seconds histogram
tailer_publish_lag_seconds_bucket{le="0.005"} 2
tailer_publish_lag_seconds_bucket{le="0.01"} 5
tailer_publish_lag_seconds_bucket{le="0.1"} 9
tailer_publish_lag_seconds_bucket{le="+Inf"} 10
tailer_publish_lag_seconds_sum 0.75
tailer_publish_lag_seconds_count 10
tailer_publish_lag_seconds_total_other 3
# TYPE river_delivery_seconds histogram
river_delivery_seconds_bucket{river="accounts",le="0.01"} 1
river_delivery_seconds_bucket{river="accounts",le="+Inf"} 4
river_delivery_seconds_sum{river="accounts"} 0.2
river_delivery_seconds_count{river="accounts"} 4
river_delivery_seconds_bucket{river="views",le="0.01"} 3
river_delivery_seconds_bucket{river="views",le="+Inf"} 3
river_delivery_seconds_sum{river="views"} 0.012
river_delivery_seconds_count{river="views"} 3
"#;

    #[test]
    fn parses_an_unlabelled_histogram_and_skips_lookalikes() -> anyhow::Result<()> {
        let all = parse_histograms(PAGE, "tailer_publish_lag_seconds")?;
        assert_eq!(all.len(), 1);
        let (labels, h) = &all[0];
        assert_eq!(labels, "");
        assert_eq!(h.buckets, vec![(0.005, 2), (0.01, 5), (0.1, 9), (f64::INFINITY, 10)]);
        assert_eq!(h.count, 10);
        assert_eq!(h.sum, 0.75);
        Ok(())
    }

    #[test]
    fn keys_series_by_their_labels_without_le() -> anyhow::Result<()> {
        let all = parse_histograms(PAGE, "river_delivery_seconds")?;
        let labels: Vec<&str> = all.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(labels, ["river=\"accounts\"", "river=\"views\""]);
        assert_eq!(all[0].1.buckets, vec![(0.01, 1), (f64::INFINITY, 4)]);
        assert_eq!(all[0].1.count, 4);
        assert_eq!(all[1].1.sum, 0.012);
        assert_eq!(all[1].1.count, 3);
        Ok(())
    }

    #[test]
    fn a_missing_histogram_is_no_series() -> anyhow::Result<()> {
        assert!(parse_histograms(PAGE, "tailer_put_records_seconds")?.is_empty());
        assert!(parse_histograms("", "x")?.is_empty());
        Ok(())
    }

    #[test]
    fn reads_float_counts_and_timestamps() -> anyhow::Result<()> {
        let page = "h_bucket{le=\"1\"} 3.0 1700000000000\nh_bucket{le=\"+Inf\"} 1e+01\nh_count 10\nh_sum 2.5\n";
        let all = parse_histograms(page, "h")?;
        assert_eq!(all[0].1.buckets, vec![(1.0, 3), (f64::INFINITY, 10)]);
        Ok(())
    }

    #[test]
    fn a_malformed_value_is_an_error() {
        assert!(parse_histograms("h_count ten\n", "h").is_err());
        assert!(parse_histograms("h_bucket{le=\"x\"} 1\n", "h").is_err());
        assert!(parse_histograms("h_bucket{le=\"1\" 1\n", "h").is_err());
    }

    fn lag() -> anyhow::Result<Histogram> {
        let mut all = parse_histograms(PAGE, "tailer_publish_lag_seconds")?;
        Ok(all.remove(0).1)
    }

    #[test]
    fn quantile_is_the_upper_bound_of_its_bucket() -> anyhow::Result<()> {
        let h = lag()?;
        assert_eq!(h.quantile_bound(0.10), Some(0.005)); // 1 of 10: first bucket
        assert_eq!(h.quantile_bound(0.20), Some(0.005)); // 2 of 10: still the first
        assert_eq!(h.quantile_bound(0.50), Some(0.01));
        assert_eq!(h.quantile_bound(0.90), Some(0.1));
        assert_eq!(h.quantile_bound(0.99), None); // the 10th is only in +Inf
        assert_eq!(Histogram::default().quantile_bound(0.5), None);
        Ok(())
    }

    #[test]
    fn minus_is_what_was_observed_between_two_scrapes() -> anyhow::Result<()> {
        let before = lag()?;
        let mut after = before.clone();
        after.buckets = vec![(0.005, 2), (0.01, 8), (0.1, 14), (0.5, 1), (f64::INFINITY, 16)];
        after.count = 16;
        after.sum = 1.05;
        let diff = after.minus(&before);
        assert_eq!(diff.buckets, vec![(0.005, 0), (0.01, 3), (0.1, 5), (0.5, 1), (f64::INFINITY, 6)]);
        assert_eq!(diff.count, 6);
        assert!((diff.sum - 0.3).abs() < 1e-12);
        assert!((diff.mean_ms() - 50.0).abs() < 1e-9);
        assert_eq!(diff.quantile_bound(0.5), Some(0.01));
        // a restarted process: counters went backwards, nothing wraps
        assert_eq!(before.minus(&after).count, 0);
        Ok(())
    }

    #[test]
    fn mean_of_an_empty_histogram_is_zero() {
        assert_eq!(Histogram::default().mean_ms(), 0.0);
    }

    #[test]
    fn since_subtracts_per_series_and_keeps_new_ones_whole() -> anyhow::Result<()> {
        let now = parse_histograms(PAGE, "river_delivery_seconds")?;
        let earlier = vec![now[0].clone()];
        let diff = since(now.clone(), &earlier);
        assert_eq!(diff[0].1.count, 0);
        assert_eq!(diff[1], now[1]);
        Ok(())
    }
}
