//! Percentile bootstrap confidence intervals and the paired bootstrap test.
//!
//! Every resample draws `n_items` item indices uniformly with replacement, the caller's
//! statistic is recomputed on those indices, and the interval is read off the sorted
//! resampled values. Items are whatever the caller indexes (examples, queries, sentence
//! pairs); what is resampled is always the evaluation items, never the fitted model.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;

/// The confidence level of [`bootstrap_ci`] and [`paired_bootstrap`].
pub const DEFAULT_LEVEL: f64 = 0.95;

/// 95 % percentile bootstrap interval of `statistic` over `n_items` items.
///
/// See [`bootstrap_ci_level`].
pub fn bootstrap_ci(
    n_items: usize,
    resamples: usize,
    seed: u64,
    statistic: impl Fn(&[usize]) -> f64 + Sync,
) -> (f64, f64) {
    bootstrap_ci_level(n_items, resamples, seed, DEFAULT_LEVEL, statistic)
}

/// Percentile bootstrap interval at confidence `level` (e.g. 0.95).
///
/// Each of `resamples` resamples draws `n_items` indices in `0..n_items` uniformly with
/// replacement and calls `statistic` on them (an index may repeat; the statistic must
/// count it each time). The bounds are the `(1 - level) / 2` and `(1 + level) / 2`
/// quantiles of the resampled values, interpolated linearly as `numpy.percentile`
/// does. Non-finite resampled values (say, a correlation of a constant resample) are
/// left out; `(NaN, NaN)` when nothing is left or there are no items.
///
/// Resample `r` draws from its own ChaCha8 stream of `seed`, so the interval depends on
/// the seed only, not on how rayon schedules the resamples.
pub fn bootstrap_ci_level(
    n_items: usize,
    resamples: usize,
    seed: u64,
    level: f64,
    statistic: impl Fn(&[usize]) -> f64 + Sync,
) -> (f64, f64) {
    if n_items == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mut values: Vec<f64> = (0..resamples)
        .into_par_iter()
        .map(|r| statistic(&resample(n_items, seed, r)))
        .filter(|v| v.is_finite())
        .collect();
    percentile_interval(&mut values, level)
}

/// A paired bootstrap comparison of two statistics on the same items.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PairedComparison {
    /// `stat_a - stat_b` on all items.
    pub diff: f64,
    /// Lower end of the percentile interval of the difference.
    pub ci_low: f64,
    /// Upper end of the percentile interval of the difference.
    pub ci_high: f64,
    /// One-sided p-value for "a is not better than b": `(1 + #{resamples with
    /// a - b <= 0}) / (1 + resamples)`.
    pub p_value: f64,
}

/// Paired bootstrap of `stat_a - stat_b` with a 95 % percentile interval, e.g. whether a
/// task's best layer beats the final layer on the same examples.
///
/// Both statistics see the same resampled indices in each resample (drawn as in
/// [`bootstrap_ci_level`]), which is what makes the comparison paired. The p-value counts
/// resamples where a does not beat b, with the +1 correction so that it is never 0.
/// Resamples where either statistic is not finite are left out. All fields are NaN when
/// there are no items or no usable resamples.
pub fn paired_bootstrap(
    n_items: usize,
    resamples: usize,
    seed: u64,
    stat_a: impl Fn(&[usize]) -> f64 + Sync,
    stat_b: impl Fn(&[usize]) -> f64 + Sync,
) -> PairedComparison {
    let nan = PairedComparison {
        diff: f64::NAN,
        ci_low: f64::NAN,
        ci_high: f64::NAN,
        p_value: f64::NAN,
    };
    if n_items == 0 {
        return nan;
    }
    let all: Vec<usize> = (0..n_items).collect();
    let diff = stat_a(&all) - stat_b(&all);
    let mut diffs: Vec<f64> = (0..resamples)
        .into_par_iter()
        .map(|r| {
            let items = resample(n_items, seed, r);
            stat_a(&items) - stat_b(&items)
        })
        .filter(|v| v.is_finite())
        .collect();
    if diffs.is_empty() {
        return PairedComparison { diff, ..nan };
    }
    let not_better = diffs.iter().filter(|&&d| d <= 0.0).count();
    let p_value = (1 + not_better) as f64 / (1 + diffs.len()) as f64;
    let (ci_low, ci_high) = percentile_interval(&mut diffs, DEFAULT_LEVEL);
    PairedComparison {
        diff,
        ci_low,
        ci_high,
        p_value,
    }
}

/// Indices of bootstrap resample `r`: stream `r` of ChaCha8 seeded with `seed`.
fn resample(n_items: usize, seed: u64, r: usize) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(r as u64);
    // Drawing u64 rather than usize keeps the sequence the same on 32-bit targets.
    (0..n_items)
        .map(|_| rng.gen_range(0..n_items as u64) as usize)
        .collect()
}

fn percentile_interval(values: &mut [f64], level: f64) -> (f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    values.sort_by(f64::total_cmp);
    let tail = (1.0 - level) / 2.0;
    (quantile(values, tail), quantile(values, 1.0 - tail))
}

/// Quantile `q` of sorted values, interpolated linearly between neighbours
/// (numpy's default `method="linear"`).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let position = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let below = position.floor() as usize;
    let above = (below + 1).min(sorted.len() - 1);
    let frac = position - below as f64;
    sorted[below] + (sorted[above] - sorted[below]) * frac
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn quantile_matches_numpy_linear() {
        // numpy.percentile([1, 2, 3, 4], [2.5, 97.5]) = [1.075, 3.925]
        let mut v = vec![4.0, 1.0, 3.0, 2.0];
        let (lo, hi) = percentile_interval(&mut v, 0.95);
        assert!(close(lo, 1.075) && close(hi, 3.925));
    }

    #[test]
    fn bootstrap_is_deterministic_and_covers_the_mean() {
        let values: Vec<f64> = (0..200).map(|i| ((i * 37) % 100) as f64 / 100.0).collect();
        let mean = |idx: &[usize]| idx.iter().map(|&i| values[i]).sum::<f64>() / idx.len() as f64;
        let full = mean(&(0..200).collect::<Vec<_>>());
        let a = bootstrap_ci(200, 500, 7, mean);
        let b = bootstrap_ci(200, 500, 7, mean);
        assert_eq!(a, b);
        assert!(a.0 < full && full < a.1);
        // Standard error of the mean here is about 0.29 / sqrt(200) = 0.02, so the 95 %
        // interval is about 0.08 wide.
        assert!((a.1 - a.0 - 0.08).abs() < 0.02, "{a:?}");
        assert_ne!(a, bootstrap_ci(200, 500, 8, mean));
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        assert_eq!(one.install(|| bootstrap_ci(200, 500, 7, mean)), a);
        let wide = bootstrap_ci_level(200, 500, 7, 0.99, mean);
        assert!(wide.0 < a.0 && wide.1 > a.1);
        assert!(bootstrap_ci(0, 10, 1, mean).0.is_nan());
    }

    #[test]
    fn paired_bootstrap_separates_clear_and_null_differences() {
        let n = 300;
        // a is right on 80 % of items, b on 60 %, and b's hits are a subset of a's.
        let a: Vec<f64> = (0..n).map(|i| f64::from(i % 10 < 8)).collect();
        let b: Vec<f64> = (0..n).map(|i| f64::from(i % 10 < 6)).collect();
        let mean =
            |v: &[f64], idx: &[usize]| idx.iter().map(|&i| v[i]).sum::<f64>() / idx.len() as f64;
        let clear = paired_bootstrap(n, 1000, 3, |i| mean(&a, i), |i| mean(&b, i));
        assert!(close(clear.diff, 0.2));
        assert!(clear.ci_low > 0.1 && clear.ci_high < 0.3, "{clear:?}");
        assert!(close(clear.p_value, 1.0 / 1001.0));
        let same = paired_bootstrap(n, 1000, 3, |i| mean(&a, i), |i| mean(&a, i));
        assert!(close(same.diff, 0.0) && close(same.p_value, 1.0));
        let reversed = paired_bootstrap(n, 1000, 3, |i| mean(&b, i), |i| mean(&a, i));
        assert!(reversed.p_value > 0.99);
    }
}
