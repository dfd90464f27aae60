//! Per-layer diagnostics of one prompt, as pure functions of its token matrix `X`
//! (`T x D`, one row per real token, row 0 the first token) and of a block's attention
//! probabilities. Definitions follow `PAPER.md`; `docs/analyze.md` states every choice
//! the paper leaves open.
//!
//! Everything is computed in f64. Singular values come from the eigenvalues of the
//! `T x T` Gram matrix `X X^T` (their squares), found by Householder tridiagonalisation
//! and implicit QL, so no LAPACK is needed.

/// Threshold on the first token's sink score for a head to count as a sink.
pub const SINK_TAU: f64 = 0.3;
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

/// What one block's attention over one prompt shows, averaged over heads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionMetrics {
    /// Fraction of heads whose first-token sink score `(1/T) sum_t A_t0` is at least tau.
    pub sink_rate: f64,
    /// The same with Gu et al.'s score, which divides by the number of queries that see
    /// the first key. Without a sliding window shorter than `T` that number is `T`, and
    /// the two rates are equal.
    pub sink_rate_gu: f64,
    /// Mean over heads and query rows of the row entropy over log of the row's visible
    /// length; rows that see one key have no choice and are left out.
    pub mixing: f64,
    /// Column-sum concentration `1 + (1/log T) sum_j c_j log c_j`, mean over heads.
    pub colsum: f64,
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

impl AttentionMetrics {
    /// Names as written in `analyze.json`, in output order.
    pub const NAMES: [&'static str; 4] = ["sink_rate", "sink_rate_gu", "mixing", "colsum"];

    /// The values in the order of [`Self::NAMES`].
    pub fn values(&self) -> [f64; 4] {
        [self.sink_rate, self.sink_rate_gu, self.mixing, self.colsum]
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
    pub anisotropy: f64,
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

/// `X X^T` (`t x t`, row-major) in f64.
pub fn gram(x: &[f32], t: usize, d: usize) -> Vec<f64> {
    let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let mut g = vec![0f64; t * t];
    // SAFETY: `x64` holds t*d values read with row stride d; `g` holds t*t values
    // written with row stride t; beta = 0, so `g` is only written.
    unsafe {
        matrixmultiply::dgemm(
            t,
            d,
            t,
            1.0,
            x64.as_ptr(),
            d as isize,
            1,
            x64.as_ptr(),
            1,
            d as isize,
            0.0,
            g.as_mut_ptr(),
            t as isize,
            1,
        );
    }
    g
}

/// The Gram matrix of `X` with its mean row subtracted and each row then scaled to unit
/// norm, computed from `g = X X^T` alone. A row equal to the mean stays zero.
pub fn centered_normalized_gram(g: &[f64], t: usize) -> Vec<f64> {
    let n = t as f64;
    let row_mean: Vec<f64> = (0..t)
        .map(|i| g[i * t..(i + 1) * t].iter().sum::<f64>() / n)
        .collect();
    let all_mean = row_mean.iter().sum::<f64>() / n;
    let centered = |i: usize, j: usize| g[i * t + j] - row_mean[i] - row_mean[j] + all_mean;
    let scale: Vec<f64> = (0..t)
        .map(|i| {
            let sq = centered(i, i);
            if sq > 0.0 {
                1.0 / sq.sqrt()
            } else {
                0.0
            }
        })
        .collect();
    let mut out = vec![0f64; t * t];
    for i in 0..t {
        for j in 0..t {
            out[i * t + j] = centered(i, j) * scale[i] * scale[j];
        }
    }
    out
}

/// Eigenvalues of the symmetric `n x n` row-major matrix `a`, in descending order.
pub fn symmetric_eigenvalues(mut a: Vec<f64>, n: usize) -> Vec<f64> {
    assert_eq!(a.len(), n * n);
    let (mut d, mut e) = tridiagonalize(&mut a, n);
    tridiagonal_ql(&mut d, &mut e);
    d.sort_by(|x, y| y.total_cmp(x));
    d
}

/// Householder reduction of a symmetric matrix to tridiagonal form (Golub & Van Loan,
/// Algorithm 8.3.1), overwriting `a`. Returns the diagonal and the subdiagonal, where
/// `e[i]` couples rows `i` and `i + 1` and `e[n - 1] = 0`.
fn tridiagonalize(a: &mut [f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut d = vec![0f64; n];
    let mut e = vec![0f64; n];
    let mut v = vec![0f64; n];
    let mut w = vec![0f64; n];
    for k in 0..n.saturating_sub(2) {
        let m = k + 1;
        let norm = (m..n).map(|i| a[i * n + k].powi(2)).sum::<f64>().sqrt();
        d[k] = a[k * n + k];
        if norm == 0.0 {
            continue;
        }
        let x0 = a[m * n + k];
        // Reflect onto -sign(x0) ||x|| e_1, which avoids cancellation in v_0.
        let alpha = -norm.copysign(x0);
        e[k] = alpha;
        for i in m..n {
            v[i] = a[i * n + k];
        }
        v[m] -= alpha;
        let vv: f64 = (m..n).map(|i| v[i] * v[i]).sum();
        let beta = 2.0 / vv;
        // A22 <- H A22 H with H = I - beta v v^T, as A22 - v w^T - w v^T.
        // w = beta A22 v, accumulated by rows (A22 is symmetric) so the loop vectorises.
        w[m..].fill(0.0);
        for j in m..n {
            let vj = beta * v[j];
            for (wi, &aj) in w[m..].iter_mut().zip(&a[j * n + m..(j + 1) * n]) {
                *wi += aj * vj;
            }
        }
        let wv: f64 = (m..n).map(|i| w[i] * v[i]).sum();
        for i in m..n {
            w[i] -= 0.5 * beta * wv * v[i];
        }
        for i in m..n {
            let (vi, wi) = (v[i], w[i]);
            let row = &mut a[i * n + m..(i + 1) * n];
            for ((x, &vj), &wj) in row.iter_mut().zip(&v[m..]).zip(&w[m..]) {
                *x -= vi * wj + wi * vj;
            }
        }
    }
    if n >= 2 {
        d[n - 2] = a[(n - 2) * n + n - 2];
        e[n - 2] = a[(n - 1) * n + n - 2];
    }
    if n >= 1 {
        d[n - 1] = a[(n - 1) * n + n - 1];
    }
    (d, e)
}

/// Eigenvalues of a symmetric tridiagonal matrix by the implicit QL method with
/// Wilkinson shifts (the EISPACK `tql1` scheme). `d` becomes the eigenvalues; `e` is
/// destroyed.
fn tridiagonal_ql(d: &mut [f64], e: &mut [f64]) {
    let n = d.len();
    for l in 0..n {
        let mut iterations = 0;
        loop {
            let mut m = l;
            while m + 1 < n {
                let dd = d[m].abs() + d[m + 1].abs();
                if e[m].abs() <= f64::EPSILON * dd {
                    break;
                }
                m += 1;
            }
            // Convergence is quadratic; the cap only guards against a NaN input.
            if m == l || iterations == 64 {
                break;
            }
            iterations += 1;
            // Plain square roots rather than `hypot`, which is several times slower: the
            // Gram entries stay far below the square root of f64's range.
            let mut g = (d[l + 1] - d[l]) / (2.0 * e[l]);
            let mut r = (g * g + 1.0).sqrt();
            g = d[m] - d[l] + e[l] / (g + r.copysign(g));
            let (mut s, mut c, mut p) = (1.0f64, 1.0f64, 0.0f64);
            let mut deflated = false;
            for i in (l..m).rev() {
                let f = s * e[i];
                let b = c * e[i];
                r = (f * f + g * g).sqrt();
                e[i + 1] = r;
                if r == 0.0 {
                    d[i + 1] -= p;
                    e[m] = 0.0;
                    deflated = true;
                    break;
                }
                s = f / r;
                c = g / r;
                g = d[i + 1] - p;
                r = (d[i] - g) * s + 2.0 * c * b;
                p = s * r;
                d[i + 1] = g + p;
                g = c * r - b;
            }
            if deflated {
                continue;
            }
            d[l] -= p;
            e[l] = g;
            e[m] = 0.0;
        }
    }
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

/// Attention statistics of one prompt: `probs` holds `heads` blocks of `stride x stride`
/// probabilities `[query, key]`, of which the first `t` rows and columns are real.
/// `window` is the block's sliding window, if any: a query `q` sees keys
/// `q + 1 - window ..= q`.
pub fn attention_metrics(
    probs: &[f32],
    heads: usize,
    t: usize,
    stride: usize,
    window: Option<usize>,
) -> AttentionMetrics {
    assert!(t >= 2 && probs.len() >= heads * stride * stride);
    let first_visible = |q: usize| window.map_or(0, |w| (q + 1).saturating_sub(w));
    let sees_first = (0..t).filter(|&q| first_visible(q) == 0).count() as f64;
    let plogp = |p: f64| if p > 0.0 { p * p.ln() } else { 0.0 };
    let (mut sinks, mut sinks_gu, mut mixing, mut colsum) = (0.0, 0.0, 0.0, 0.0);
    let mut mixing_rows = 0usize;
    let mut cols = vec![0f64; t];
    for h in 0..heads {
        let head = &probs[h * stride * stride..];
        cols.fill(0.0);
        for q in 0..t {
            let row = &head[q * stride..q * stride + t];
            let mut entropy = 0.0;
            for (c, &p) in cols.iter_mut().zip(row) {
                let p = p as f64;
                *c += p;
                entropy -= plogp(p);
            }
            let visible = q + 1 - first_visible(q);
            if visible >= 2 {
                mixing += entropy / (visible as f64).ln();
                mixing_rows += 1;
            }
        }
        if cols[0] / t as f64 >= SINK_TAU {
            sinks += 1.0;
        }
        if cols[0] / sees_first >= SINK_TAU {
            sinks_gu += 1.0;
        }
        let concentration: f64 = cols.iter().map(|&c| plogp(c / t as f64)).sum();
        colsum += 1.0 + concentration / (t as f64).ln();
    }
    let heads = heads as f64;
    AttentionMetrics {
        sink_rate: sinks / heads,
        sink_rate_gu: sinks_gu / heads,
        mixing: mixing / mixing_rows as f64,
        colsum: colsum / heads,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LN2: f64 = std::f64::consts::LN_2;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * (1.0 + b.abs())
    }

    /// A deterministic pseudo-random stream in [-1, 1).
    fn noise(seed: u64, n: usize) -> Vec<f64> {
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

    fn f32s(v: &[f64]) -> Vec<f32> {
        v.iter().map(|&x| x as f32).collect()
    }

    #[test]
    fn eigenvalues_of_known_matrices() {
        let e = symmetric_eigenvalues(vec![2.0, 1.0, 1.0, 2.0], 2);
        assert!(close(e[0], 3.0, 1e-14) && close(e[1], 1.0, 1e-14), "{e:?}");
        let e = symmetric_eigenvalues(vec![5.0], 1);
        assert_eq!(e, vec![5.0]);
        let e = symmetric_eigenvalues(vec![0.0, 0.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0, -1.0], 3);
        assert_eq!(e, vec![3.0, 0.0, -1.0]);
        // The path-graph Laplacian: 2 - 2 cos(k pi / (n + 1)).
        let n = 40;
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            a[i * n + i] = 2.0;
            if i + 1 < n {
                a[i * n + i + 1] = -1.0;
                a[(i + 1) * n + i] = -1.0;
            }
        }
        let e = symmetric_eigenvalues(a, n);
        for (k, &l) in e.iter().enumerate() {
            let want = 2.0 - 2.0 * ((n - k) as f64 * std::f64::consts::PI / (n + 1) as f64).cos();
            assert!(close(l, want, 1e-12), "{k}: {l} vs {want}");
        }
    }

    #[test]
    fn eigenvalues_survive_a_similarity_transform() {
        // Q D Q^T with Q = I - 2 u u^T / (u^T u): the eigenvalues are D, repeats and
        // zeros included.
        let n = 25;
        let want: Vec<f64> = (0..n)
            .map(|i| match i {
                0..=4 => 0.0,
                5..=7 => 3.5,
                _ => (i * i) as f64 - 20.0,
            })
            .collect();
        let u = noise(7, n);
        let uu: f64 = u.iter().map(|x| x * x).sum();
        let q = |i: usize, j: usize| (i == j) as u8 as f64 - 2.0 * u[i] * u[j] / uu;
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = (0..n).map(|k| q(i, k) * want[k] * q(j, k)).sum();
            }
        }
        let e = symmetric_eigenvalues(a, n);
        let mut sorted = want.clone();
        sorted.sort_by(|x, y| y.total_cmp(x));
        for (got, want) in e.iter().zip(&sorted) {
            assert!((got - want).abs() < 1e-12 * sorted[0], "{got} vs {want}");
        }
    }

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
    fn centring_matches_the_explicit_computation() {
        let (t, d) = (9, 4);
        let x32 = f32s(&noise(5, t * d));
        let x: Vec<f64> = x32.iter().map(|&v| v as f64).collect();
        let mean: Vec<f64> = (0..d)
            .map(|j| (0..t).map(|i| x[i * d + j]).sum::<f64>() / t as f64)
            .collect();
        let mut y: Vec<f64> = (0..t * d).map(|k| x[k] - mean[k % d]).collect();
        for row in y.chunks_mut(d) {
            let n = row.iter().map(|v| v * v).sum::<f64>().sqrt();
            row.iter_mut().for_each(|v| *v /= n);
        }
        let g = centered_normalized_gram(&gram(&x32, t, d), t);
        for i in 0..t {
            for j in 0..t {
                let want: f64 = (0..d).map(|k| y[i * d + k] * y[j * d + k]).sum();
                assert!((g[i * t + j] - want).abs() < 1e-12, "{i},{j}");
            }
        }
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

    /// Causal attention `[heads, t, t]` with the given row weights.
    fn causal(heads: usize, t: usize, row: impl Fn(usize, usize, usize) -> f64) -> Vec<f32> {
        let mut a = vec![0f32; heads * t * t];
        for h in 0..heads {
            for q in 0..t {
                let w: Vec<f64> = (0..=q).map(|k| row(h, q, k)).collect();
                let s: f64 = w.iter().sum();
                for (k, v) in w.iter().enumerate() {
                    a[(h * t + q) * t + k] = (v / s) as f32;
                }
            }
        }
        a
    }

    #[test]
    fn uniform_causal_attention() {
        let t = 8;
        let a = causal(2, t, |_, _, _| 1.0);
        let m = attention_metrics(&a, 2, t, t, None);
        // Key 0 gets 1/(q+1) from each query: sink score H_t / t.
        let score: f64 = (1..=t).map(|q| 1.0 / q as f64).sum::<f64>() / t as f64;
        assert!(score >= SINK_TAU);
        assert_eq!(m.sink_rate, 1.0);
        assert_eq!(m.sink_rate_gu, 1.0);
        assert!(close(m.mixing, 1.0, 1e-6));
        let c: Vec<f64> = (0..t)
            .map(|k| (k + 1..=t).map(|q| 1.0 / q as f64).sum::<f64>() / t as f64)
            .collect();
        let want = 1.0 + c.iter().map(|c| c * c.ln()).sum::<f64>() / (t as f64).ln();
        assert!(close(m.colsum, want, 1e-6));
    }

    #[test]
    fn sink_score_of_uniform_square_attention_is_one_over_t() {
        // Every query spreads evenly over all t keys: a_0 = 1/t, which crosses
        // tau = 0.3 between t = 3 and t = 4; the columns are flat, so C = 0.
        for (t, rate) in [(3, 1.0), (4, 0.0)] {
            let a = vec![1.0 / t as f32; t * t];
            let m = attention_metrics(&a, 1, t, t, None);
            assert_eq!(m.sink_rate, rate, "t = {t}");
            assert!(m.colsum.abs() < 1e-7);
        }
    }

    #[test]
    fn all_weight_on_the_first_token() {
        let (heads, t) = (3, 7);
        // Heads 0 and 1 put everything on key 0; head 2 attends to itself.
        let a = causal(heads, t, |h, q, k| {
            let target = if h < 2 { 0 } else { q };
            if k == target {
                1.0
            } else {
                0.0
            }
        });
        let m = attention_metrics(&a, heads, t, t, None);
        assert!(close(m.sink_rate, 2.0 / 3.0, 1e-12));
        assert!(m.mixing.abs() < 1e-12);
        // Sink heads: C = 1. Diagonal head: columns 1/t each, C = 0.
        assert!(close(m.colsum, 2.0 / 3.0, 1e-6));
    }

    #[test]
    fn gu_score_counts_queries_that_see_the_first_key() {
        // Window 2: only queries 0 and 1 see key 0. Query 0 gives it 1, query 1 gives
        // it 0.5: (1/T) score 1.5/8 < 0.3, Gu's 1.5/2 >= 0.3.
        let t = 8;
        let mut a = vec![0f32; t * t];
        for q in 0..t {
            let from = (q + 1).saturating_sub(2);
            for k in from..=q {
                a[q * t + k] = 1.0 / (q + 1 - from) as f32;
            }
        }
        let m = attention_metrics(&a, 1, t, t, Some(2));
        assert_eq!(m.sink_rate, 0.0);
        assert_eq!(m.sink_rate_gu, 1.0);
        // Every row with two visible keys splits evenly: normalised entropy 1.
        assert!(close(m.mixing, 1.0, 1e-6));
    }

    #[test]
    fn padding_beyond_t_is_ignored() {
        // The same prompt padded to stride 6 with garbage outside the real block.
        let t = 4;
        let a = causal(2, t, |h, q, k| (1 + h + q * k) as f64);
        let stride = 6;
        let mut padded = vec![9f32; 2 * stride * stride];
        for h in 0..2 {
            for q in 0..t {
                for k in 0..t {
                    padded[(h * stride + q) * stride + k] = a[(h * t + q) * t + k];
                }
            }
        }
        assert_eq!(
            attention_metrics(&a, 2, t, t, None),
            attention_metrics(&padded, 2, t, stride, None)
        );
    }
}
