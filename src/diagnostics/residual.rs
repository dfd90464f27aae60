//! What the residual stream of one prompt shows at one layer, as pure functions of its
//! token matrix `X` (`T x D`, one row per real token, row 0 the first token): the
//! first token's norm against the others', massive activations, and the matrix entropy
//! of `X` with Theorem 1's bound on it. Definitions follow `PAPER.md`;
//! `docs/analyze.md` states every choice the paper leaves open.

use super::linalg::{centered_normalized_gram, gram, symmetric_eigenvalues};

/// Sun et al.: a massive activation exceeds this magnitude...
pub const MASSIVE_ABS: f64 = 100.0;
/// ...and this multiple of the median magnitude of its hidden state.
pub const MASSIVE_REL: f64 = 1000.0;
/// Eigenvalues of `X X^T` below this fraction of the largest count as zero for the rank.
/// The Gram eigenvalues carry an absolute error near 1e-14 of the largest, and real
/// token matrices have none much below 1e-10, so the cut sits between the two.
pub const RANK_TOL: f64 = 1e-12;
/// Slack (bits) allowed when checking the entropy bound, for rounding when it is tight.
pub const BOUND_SLACK_BITS: f64 = 1e-9;

/// What the residual stream of one prompt shows at one layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResidMetrics {
    /// `||x_0||`.
    pub first_norm: f64,
    /// `c = M / R`, `M = ||x_0||^2`, `R = sum_{i>0} ||x_i||^2`.
    pub norm_ratio: f64,
    /// `||x_0||` over the median norm of the other tokens.
    pub first_over_median: f64,
    /// Scalars with `|a| > 100` and `|a| > 1000 x` the median `|a|` of the whole `T x D`
    /// hidden state (Sun et al.'s median, over every token and dimension).
    pub massive_count: f64,
    /// `p_1 = sigma_1^2 / ||X||_F^2`.
    pub anisotropy: f64,
    /// `sigma_1^2 / sum_{j>=2} sigma_j^2`.
    pub dominance: f64,
    /// Matrix entropy `-sum p_j log2 p_j`.
    pub entropy_bits: f64,
    /// The entropy over `log min(T, D)`, in `[0, 1]`.
    pub entropy_normalized: f64,
    /// The entropy of `X` after mean-centring the rows and scaling each to unit norm
    /// (Skean et al.'s variant).
    pub entropy_centered_bits: f64,
    /// Theorem 1's upper bound on the entropy, in bits.
    pub entropy_bound_bits: f64,
    /// Theorem 1's lower bound `p` on the anisotropy.
    pub anisotropy_bound: f64,
    /// 1 when the entropy respects the bound, else 0.
    pub bound_holds: f64,
}

impl ResidMetrics {
    /// Names as written in `analyze.json`, in output order.
    pub const NAMES: [&'static str; 12] = [
        "first_norm",
        "norm_ratio",
        "first_over_median",
        "massive_count",
        "anisotropy",
        "dominance",
        "entropy_bits",
        "entropy_normalized",
        "entropy_centered_bits",
        "entropy_bound_bits",
        "anisotropy_bound",
        "bound_holds",
    ];

    /// The values in the order of [`Self::NAMES`].
    pub fn values(&self) -> [f64; 12] {
        [
            self.first_norm,
            self.norm_ratio,
            self.first_over_median,
            self.massive_count,
            self.anisotropy,
            self.dominance,
            self.entropy_bits,
            self.entropy_normalized,
            self.entropy_centered_bits,
            self.entropy_bound_bits,
            self.anisotropy_bound,
            self.bound_holds,
        ]
    }
}

/// All residual-stream metrics of `x`, `t` rows of `d` values; needs `t >= 2`.
pub fn resid_metrics(x: &[f32], t: usize, d: usize) -> ResidMetrics {
    assert!(t >= 2 && x.len() == t * d, "need at least two token rows");
    let g = gram(x, t, d);
    let sq: Vec<f64> = (0..t).map(|i| g[i * t + i]).collect();
    let (m, r) = (sq[0], sq[1..].iter().sum::<f64>());
    let c = m / r;
    let norms: Vec<f64> = sq.iter().map(|s| s.sqrt()).collect();
    let eig = symmetric_eigenvalues(g.clone(), t);
    let spec = Spectrum::new(&eig);
    let centered = Spectrum::new(&symmetric_eigenvalues(centered_normalized_gram(&g, t), t));
    // alpha R = sum_{i>0} ||x_i||^2 cos^2(theta_i) = sum_{i>0} (x_i . x_0)^2 / ||x_0||^2.
    let alpha = if m > 0.0 {
        (1..t).map(|i| g[i * t].powi(2)).sum::<f64>() / (m * r)
    } else {
        0.0
    };
    let p = ((c + alpha) / (c + 1.0)).clamp(0.0, 1.0);
    let bound_bits = entropy_bound(p, spec.rank) / std::f64::consts::LN_2;
    let bits = spec.entropy / std::f64::consts::LN_2;
    ResidMetrics {
        first_norm: norms[0],
        norm_ratio: c,
        first_over_median: norms[0] / median(&norms[1..]),
        massive_count: massive_count(x) as f64,
        anisotropy: spec.anisotropy,
        dominance: spec.dominance,
        entropy_bits: bits,
        entropy_normalized: spec.entropy / (t.min(d) as f64).ln(),
        entropy_centered_bits: centered.entropy / std::f64::consts::LN_2,
        entropy_bound_bits: bound_bits,
        anisotropy_bound: p,
        bound_holds: if bits <= bound_bits + BOUND_SLACK_BITS {
            1.0
        } else {
            0.0
        },
    }
}

/// What the eigenvalues `lambda_j = sigma_j^2` of `X X^T` say about `X`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spectrum {
    /// `lambda_1 / sum_j lambda_j`.
    pub anisotropy: f64,
    /// `lambda_1 / sum_{j>=2} lambda_j`.
    pub dominance: f64,
    /// Matrix entropy in nats.
    pub entropy: f64,
    /// Numerical rank: eigenvalues above [`RANK_TOL`] times the largest.
    pub rank: usize,
}

impl Spectrum {
    /// From eigenvalues in descending order; rounding below zero counts as zero.
    pub fn new(eig: &[f64]) -> Self {
        let lam: Vec<f64> = eig.iter().map(|&l| l.max(0.0)).collect();
        let total: f64 = lam.iter().sum();
        let top = lam.first().copied().unwrap_or(0.0);
        let entropy = lam
            .iter()
            .map(|&l| l / total)
            .filter(|&p| p > 0.0)
            .map(|p| -p * p.ln())
            .sum();
        Self {
            anisotropy: top / total,
            dominance: top / lam[1..].iter().sum::<f64>(),
            entropy,
            rank: lam.iter().filter(|&&l| l > RANK_TOL * top).count(),
        }
    }
}

/// Theorem 1's bound on the matrix entropy (nats) of a rank-`rank` matrix whose top
/// eigenvalue holds at least a fraction `p` of the energy:
/// `-p log p - (1-p) log(1-p) + (1-p) log(rank - 1)`.
pub fn entropy_bound(p: f64, rank: usize) -> f64 {
    let h = |q: f64| if q > 0.0 { -q * q.ln() } else { 0.0 };
    let spread = if rank > 1 {
        (1.0 - p) * ((rank - 1) as f64).ln()
    } else {
        0.0
    };
    h(p) + h(1.0 - p) + spread
}

/// Median of `v` (the mean of the two middle values for an even count).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

/// Sun et al.'s massive activations in one hidden state: scalars above [`MASSIVE_ABS`]
/// and above [`MASSIVE_REL`] times the median magnitude over the whole state. The median
/// is the lower middle value for an even count, as `torch.median` (their code) takes it.
pub fn massive_count(x: &[f32]) -> usize {
    let mut mags: Vec<f32> = x.iter().map(|v| v.abs()).collect();
    let mid = (mags.len() - 1) / 2;
    let (_, &mut med, _) = mags.select_nth_unstable_by(mid, f32::total_cmp);
    let cut = MASSIVE_ABS.max(MASSIVE_REL * med as f64);
    x.iter().filter(|v| v.abs() as f64 > cut).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostics::testing::{close, f32s, noise};

    const LN2: f64 = std::f64::consts::LN_2;

    #[test]
    fn gram_eigenvalues_keep_trace_and_frobenius_norm() {
        let (t, d) = (60, 17);
        let x = f32s(&noise(3, t * d));
        let g = gram(&x, t, d);
        let e = symmetric_eigenvalues(g.clone(), t);
        let trace: f64 = (0..t).map(|i| g[i * t + i]).sum();
        let frob: f64 = g.iter().map(|v| v * v).sum();
        assert!(close(e.iter().sum(), trace, 1e-12));
        assert!(close(e.iter().map(|l| l * l).sum(), frob, 1e-12));
        // Rank d: the other t - d eigenvalues vanish.
        assert_eq!(Spectrum::new(&e).rank, d);
        assert!(e[d..].iter().all(|l| l.abs() < 1e-12 * e[0]));
    }

    #[test]
    fn rank_one_matrix_has_zero_entropy() {
        let (t, d) = (6, 5);
        let v = [1.0, -2.0, 0.5, 3.0, 1.5];
        let x: Vec<f32> = (0..t)
            .flat_map(|i| v.iter().map(move |&a| (a * (i as f64 + 1.0)) as f32))
            .collect();
        let m = resid_metrics(&x, t, d);
        assert!(m.entropy_bits.abs() < 1e-6, "{m:?}");
        assert!(close(m.anisotropy, 1.0, 1e-12));
        assert!(close(m.anisotropy_bound, 1.0, 1e-12));
        assert_eq!(m.bound_holds, 1.0);
        // Every row is a multiple of x_0: norms 1..=6, so c = 1 / (4 + 9 + ... + 36).
        assert!(close(m.norm_ratio, 1.0 / 90.0, 1e-12));
        assert!(close(m.first_over_median, 1.0 / 4.0, 1e-12));
    }

    #[test]
    fn orthogonal_rows_have_maximal_entropy() {
        let (t, d) = (8, 8);
        let x: Vec<f32> = (0..t * d)
            .map(|k| if k / d == k % d { 2.0 } else { 0.0 })
            .collect();
        let m = resid_metrics(&x, t, d);
        assert!(close(m.entropy_bits, 3.0, 1e-12));
        assert!(close(m.entropy_normalized, 1.0, 1e-12));
        assert!(close(m.anisotropy, 1.0 / 8.0, 1e-12));
        assert!(close(m.dominance, 1.0 / 7.0, 1e-12));
        assert!(close(m.norm_ratio, 1.0 / 7.0, 1e-12));
        // Orthogonal rows: alpha = 0, p = c / (c + 1) = 1/8, and the bound is
        // h(1/8) + (7/8) log2 7 = log2 8: tight.
        assert!(close(m.anisotropy_bound, 1.0 / 8.0, 1e-12));
        assert!(close(m.entropy_bound_bits, 3.0, 1e-12));
        assert_eq!(m.bound_holds, 1.0);
        // Mean-centred, the rows span 7 dimensions equally.
        assert!(close(m.entropy_centered_bits, 7f64.log2(), 1e-12));
    }

    #[test]
    fn one_huge_row_meets_the_bound() {
        let (t, d) = (12, 20);
        let mut x = noise(11, t * d);
        x[..d].iter_mut().for_each(|v| *v *= 1e3);
        let m = resid_metrics(&f32s(&x), t, d);
        assert!(m.norm_ratio > 1e4, "{m:?}");
        assert!(m.anisotropy > 0.9999 && m.anisotropy >= m.anisotropy_bound);
        assert!(m.entropy_bits < m.entropy_bound_bits);
        assert!(m.entropy_bound_bits < 0.01);
        assert_eq!(m.bound_holds, 1.0);
    }

    #[test]
    fn bound_holds_on_random_matrices() {
        for seed in 0..20 {
            let (t, d) = (5 + seed as usize, 9);
            let mut x = noise(seed, t * d);
            x[..d].iter_mut().for_each(|v| *v *= seed as f64);
            let m = resid_metrics(&f32s(&x), t, d);
            assert!(m.anisotropy + 1e-12 >= m.anisotropy_bound, "{seed}: {m:?}");
            assert_eq!(m.bound_holds, 1.0, "{seed}: {m:?}");
        }
    }

    #[test]
    fn entropy_bound_by_hand() {
        let p: f64 = 0.6;
        let want = -p * p.ln() - 0.4 * 0.4f64.ln() + 0.4 * 4f64.ln();
        assert!(close(entropy_bound(p, 5), want, 1e-15));
        assert_eq!(entropy_bound(1.0, 7), 0.0);
        assert!(close(entropy_bound(0.5, 1), LN2, 1e-15));
    }

    #[test]
    fn massive_activations_need_both_thresholds() {
        let mut x = vec![0.01f32; 1000];
        x[3] = 150.0; // > 100 and > 1000 x 0.01
        x[4] = -99.0; // > 1000 x median but not > 100
        x[5] = 5.0;
        assert_eq!(massive_count(&x), 1);
        // A median of 1 lifts the relative cut to 1000.
        let mut y = vec![1.0f32; 1000];
        y[0] = 500.0;
        y[1] = 1500.0;
        assert_eq!(massive_count(&y), 1);
        // The lower median of an even count: [0, 0, 1, 1] -> 0, so only |a| > 100 counts.
        assert_eq!(massive_count(&[0.0, 0.0, 1.0, 101.0]), 1);
    }

    #[test]
    fn median_of_even_and_odd_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
