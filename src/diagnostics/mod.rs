//! Per-layer diagnostics of the Mix-Compress-Refine account, behind `harness analyze`:
//! the metrics of one prompt's residual stream ([`residual`]) and attention
//! ([`attention`]) with the linear algebra they need ([`linalg`]), their capture during
//! a forward pass ([`capture`]), their summary over prompts ([`summary`]) into the
//! per-layer form results store ([`layers`]) and what is read off the per-layer curves
//! ([`phases`]). Definitions follow `PAPER.md`;
//! `docs/analyze.md` states every choice the paper leaves open.

pub mod attention;
pub mod capture;
pub mod layers;
pub mod linalg;
pub mod phases;
pub mod residual;
pub mod summary;

pub use attention::AttentionMetrics;
pub use residual::ResidMetrics;

/// Helpers shared by the unit tests of the metric modules.
#[cfg(test)]
mod testing {
    /// Whether `a` is within `tol` of `b`, relative to `1 + |b|`.
    pub fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * (1.0 + b.abs())
    }

    /// A deterministic pseudo-random stream in [-1, 1).
    pub fn noise(seed: u64, n: usize) -> Vec<f64> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
            })
            .collect()
    }

    /// `v` rounded to f32, as hidden states arrive.
    pub fn f32s(v: &[f64]) -> Vec<f32> {
        v.iter().map(|&x| x as f32).collect()
    }
}
