//! How figures are summarised and handed on: percentiles of latency samples, the text
//! a histogram quantile prints as, and the machine-readable copy of a run's
//! figures (`--json FILE`, one JSON object per run, which `scripts/bench` merges).
//!
//! Each scenario prints its own lines and names its own JSON keys next to them (so a
//! printed figure and its key cannot drift apart); the shared pieces are here.

use anyhow::Context;
use serde_json::Value;
use std::path::Path;

/// The sample at quantile `q` (0..=1, nearest rank) of `samples`; NaN when there are none
/// (JSON null).
pub fn percentile(samples: &[f64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = ((sorted.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

/// A histogram quantile's bucket bound (seconds) as it prints: `<= 12.5 ms`.
pub fn bound_text(bound: Option<f64>) -> String {
    match bound {
        Some(le) => format!("<= {:.1} ms", le * 1000.0),
        None => "beyond the last bucket".to_owned(),
    }
}

/// A histogram quantile's bucket bound in milliseconds for JSON; null beyond the last bucket.
pub fn bound_ms(bound: Option<f64>) -> Value {
    match bound {
        Some(le) => Value::from(le * 1000.0),
        None => Value::Null,
    }
}

/// Writes `figures` to `path` as pretty JSON. A NaN or infinite figure (no samples, a
/// zero rate divided by) is already null: serde_json turns non-finite floats into null.
pub fn write_json(path: &Path, figures: &Value) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(figures)?;
    text.push('\n');
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn percentile_is_the_nearest_rank_of_the_sorted_samples() {
        let samples = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(percentile(&samples, 0.0), 1.0);
        assert_eq!(percentile(&samples, 0.50), 3.0);
        assert_eq!(percentile(&samples, 1.0), 5.0);
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&hundred, 0.50), 51.0); // index round(99 * 0.5) = 50
        assert_eq!(percentile(&hundred, 0.99), 99.0); // index round(98.01) = 98
        assert_eq!(percentile(&[7.5], 0.99), 7.5);
    }

    #[test]
    fn percentile_of_nothing_is_nan_and_out_of_range_q_is_clamped() {
        assert!(percentile(&[], 0.5).is_nan());
        assert_eq!(percentile(&[1.0, 2.0], 1.5), 2.0);
        assert_eq!(percentile(&[1.0, 2.0], -1.0), 1.0);
    }

    #[test]
    fn bounds_print_in_ms_and_go_to_json_as_ms_or_null() {
        assert_eq!(bound_text(Some(0.0125)), "<= 12.5 ms");
        assert_eq!(bound_text(None), "beyond the last bucket");
        assert_eq!(bound_ms(Some(0.25)), json!(250.0));
        assert_eq!(bound_ms(None), Value::Null);
    }

    #[test]
    fn non_finite_figures_are_null_in_json() -> anyhow::Result<()> {
        let figures = json!({"p99_ms": percentile(&[], 0.99), "ratio": 1.0_f64 / 0.0, "rate": 2.5});
        assert_eq!(figures, json!({"p99_ms": null, "ratio": null, "rate": 2.5}));
        let path = std::env::temp_dir().join(format!("loadgen-report-{}.json", std::process::id()));
        write_json(&path, &figures)?;
        let back: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        std::fs::remove_file(&path)?;
        assert_eq!(back, figures);
        Ok(())
    }
}
