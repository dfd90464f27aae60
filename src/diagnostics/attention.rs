//! What one block's attention over one prompt shows, from its attention probabilities:
//! first-token sinks, how evenly each query mixes, and how concentrated the columns
//! are. Definitions follow `PAPER.md`; `docs/analyze.md` states every choice the paper
//! leaves open.

/// Threshold on the first token's sink score for a head to count as a sink.
pub const SINK_TAU: f64 = 0.3;

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

impl AttentionMetrics {
    /// Names as written in `analyze.json`, in output order.
    pub const NAMES: [&'static str; 4] = ["sink_rate", "sink_rate_gu", "mixing", "colsum"];

    /// The values in the order of [`Self::NAMES`].
    pub fn values(&self) -> [f64; 4] {
        [self.sink_rate, self.sink_rate_gu, self.mixing, self.colsum]
    }
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
    use crate::diagnostics::testing::close;

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
