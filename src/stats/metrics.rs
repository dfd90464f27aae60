//! Task metrics; their confidence intervals are in [`super::bootstrap`].
//!
//! Each metric reproduces the reference implementation a reader would compare against:
//! scikit-learn for classification, pytrec_eval / MTEB for retrieval, SciPy for
//! correlations. `tests/golden/probe_reference.json` holds those libraries' answers on
//! small inputs and `tests/probe.rs` checks them to 1e-9.

use std::collections::HashSet;

use ndarray::{linalg::general_mat_mul, Array2, ArrayView2, Axis};
use rayon::prelude::*;

/// Fraction of items whose prediction equals the gold label; NaN for no items.
///
/// # Panics
/// If the two slices differ in length.
pub fn accuracy(pred: &[usize], gold: &[usize]) -> f64 {
    check_lengths("accuracy", pred.len(), gold.len());
    if gold.is_empty() {
        return f64::NAN;
    }
    let hits = pred.iter().zip(gold).filter(|(p, g)| p == g).count();
    hits as f64 / gold.len() as f64
}

/// Unweighted mean of per-class F1, as scikit-learn's `f1_score(average="macro")`.
///
/// The average runs over the classes that occur in `gold` or in `pred` (scikit-learn's
/// default `labels`); a class that is never predicted scores 0. Labels must be below
/// `num_classes`. NaN for no items.
///
/// # Panics
/// If the slices differ in length or a label is not below `num_classes`.
pub fn macro_f1(pred: &[usize], gold: &[usize], num_classes: usize) -> f64 {
    check_lengths("macro_f1", pred.len(), gold.len());
    let mut true_pos = vec![0usize; num_classes];
    let mut false_pos = vec![0usize; num_classes];
    let mut false_neg = vec![0usize; num_classes];
    for (&p, &g) in pred.iter().zip(gold) {
        assert!(
            p < num_classes && g < num_classes,
            "macro_f1: label {} is not below num_classes = {num_classes}",
            p.max(g)
        );
        if p == g {
            true_pos[p] += 1;
        } else {
            false_pos[p] += 1;
            false_neg[g] += 1;
        }
    }
    let mut sum = 0.0;
    let mut present = 0usize;
    for c in 0..num_classes {
        // 2TP + FP + FN is zero exactly when the class is in neither slice.
        let denom = 2 * true_pos[c] + false_pos[c] + false_neg[c];
        if denom > 0 {
            sum += (2 * true_pos[c]) as f64 / denom as f64;
            present += 1;
        }
    }
    if present == 0 {
        f64::NAN
    } else {
        sum / present as f64
    }
}

/// NDCG@k of one query with binary relevance and the log2 discount of pytrec_eval's
/// `ndcg_cut` (what MTEB reports): `sum 1/log2(rank + 1)` over relevant items in the
/// top `k`, divided by the same sum for an ideal ranking. 0 when nothing is relevant.
///
/// `ranking` lists corpus ids best first, each at most once; `relevant` lists the ids
/// judged relevant (duplicates are ignored).
pub fn ndcg_at_k(ranking: &[usize], relevant: &[usize], k: usize) -> f64 {
    let relevant: HashSet<usize> = relevant.iter().copied().collect();
    let discount = |position: usize| 1.0 / ((position + 2) as f64).log2();
    let dcg: f64 = ranking
        .iter()
        .take(k)
        .enumerate()
        .filter(|(_, id)| relevant.contains(id))
        .map(|(position, _)| discount(position))
        .sum();
    let ideal: f64 = (0..relevant.len().min(k)).map(discount).sum();
    if ideal == 0.0 {
        0.0
    } else {
        dcg / ideal
    }
}

/// Expected [`ndcg_at_k`] of a uniformly random ranking of a corpus of `corpus` items
/// of which `relevant` are relevant: the chance level of retrieval.
///
/// Every position holds a relevant item with probability `relevant / corpus`, so the
/// expected DCG is that share of the discounts of the first `min(k, corpus)`
/// positions; the ideal DCG does not depend on the ranking. 0 when nothing is relevant.
pub fn random_ndcg_at_k(relevant: usize, corpus: usize, k: usize) -> f64 {
    let relevant = relevant.min(corpus);
    let discount = |position: usize| 1.0 / ((position + 2) as f64).log2();
    let ideal: f64 = (0..relevant.min(k)).map(discount).sum();
    if ideal == 0.0 {
        return 0.0;
    }
    let all: f64 = (0..corpus.min(k)).map(discount).sum();
    relevant as f64 / corpus as f64 * all / ideal
}

/// Reciprocal rank of the first relevant item within the top `k` (0 when none is).
pub fn mrr_at_k(ranking: &[usize], relevant: &[usize], k: usize) -> f64 {
    ranking
        .iter()
        .take(k)
        .position(|id| relevant.contains(id))
        .map_or(0.0, |position| 1.0 / (position + 1) as f64)
}

/// Fraction of the relevant items found in the top `k` (pytrec_eval's `recall`);
/// 0 when nothing is relevant.
pub fn recall_at_k(ranking: &[usize], relevant: &[usize], k: usize) -> f64 {
    let relevant: HashSet<usize> = relevant.iter().copied().collect();
    if relevant.is_empty() {
        return 0.0;
    }
    let found = ranking
        .iter()
        .take(k)
        .filter(|id| relevant.contains(id))
        .count();
    found as f64 / relevant.len() as f64
}

/// Item ids ordered by descending score; equal scores keep the lower id first, so a
/// ranking never depends on sort stability. NaN scores rank last.
pub fn ranking_from_scores(scores: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| descending(scores[a], scores[b]).then(a.cmp(&b)));
    order
}

/// The ids of the `k` corpus rows most cosine-similar to each query row, best first
/// (ties: lower id first). Queries `[q, d]` and corpus `[c, d]` must have the same
/// width; a zero row has similarity 0 to everything.
///
/// Scores are computed block by block with a matrix product, so memory stays bounded
/// for large corpora; query blocks run in parallel and each query's answer is
/// independent of the thread count.
///
/// # Panics
/// If the widths differ.
pub fn top_k_cosine(
    queries: ArrayView2<f32>,
    corpus: ArrayView2<f32>,
    k: usize,
) -> Vec<Vec<usize>> {
    assert_eq!(
        queries.ncols(),
        corpus.ncols(),
        "top_k_cosine: queries have {} columns, the corpus {}",
        queries.ncols(),
        corpus.ncols()
    );
    const QUERY_BLOCK: usize = 64;
    const CORPUS_BLOCK: usize = 2048;
    let k = k.min(corpus.nrows());
    let queries = unit_rows(queries);
    let corpus = unit_rows(corpus);
    let starts: Vec<usize> = (0..queries.nrows()).step_by(QUERY_BLOCK).collect();
    let blocks: Vec<Vec<Vec<usize>>> = starts
        .into_par_iter()
        .map(|start| {
            let q = queries.slice(ndarray::s![
                start..(start + QUERY_BLOCK).min(queries.nrows()),
                ..
            ]);
            let mut best: Vec<Vec<(f32, usize)>> = vec![Vec::new(); q.nrows()];
            let mut scores = Array2::<f32>::zeros((q.nrows(), CORPUS_BLOCK.min(corpus.nrows())));
            for (block, c) in corpus.axis_chunks_iter(Axis(0), CORPUS_BLOCK).enumerate() {
                let offset = block * CORPUS_BLOCK;
                let mut scores = scores.slice_mut(ndarray::s![.., ..c.nrows()]);
                general_mat_mul(1.0, &q, &c.t(), 0.0, &mut scores);
                for (row, kept) in scores.rows().into_iter().zip(&mut best) {
                    for (j, &s) in row.iter().enumerate() {
                        kept.push((s, offset + j));
                    }
                    keep_best(kept, k);
                }
            }
            best.into_iter()
                .map(|mut kept| {
                    kept.sort_by(by_score_then_id);
                    kept.into_iter().map(|(_, id)| id).collect()
                })
                .collect()
        })
        .collect();
    blocks.into_iter().flatten().collect()
}

/// Spearman's rank correlation with average ranks for ties, as `scipy.stats.spearmanr`.
/// NaN when an input is constant, has fewer than two items, or holds NaN.
///
/// # Panics
/// If the slices differ in length.
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    check_lengths("spearman", a.len(), b.len());
    if a.iter().chain(b).any(|v| v.is_nan()) {
        return f64::NAN;
    }
    pearson(&average_ranks(a), &average_ranks(b))
}

/// Pearson's correlation coefficient, as `scipy.stats.pearsonr`. NaN when an input is
/// constant or has fewer than two items.
///
/// # Panics
/// If the slices differ in length.
pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    check_lengths("pearson", a.len(), b.len());
    if a.len() < 2 {
        return f64::NAN;
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (mean_a, mean_b) = (mean(a), mean(b));
    let (mut cross, mut sq_a, mut sq_b) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        let (dx, dy) = (x - mean_a, y - mean_b);
        cross += dx * dy;
        sq_a += dx * dx;
        sq_b += dy * dy;
    }
    if sq_a == 0.0 || sq_b == 0.0 {
        return f64::NAN;
    }
    (cross / (sq_a.sqrt() * sq_b.sqrt())).clamp(-1.0, 1.0)
}

/// Perplexity `exp(total_nll / tokens)` from a negative log-likelihood summed in nats
/// over `tokens` predicted tokens; NaN for no tokens.
pub fn perplexity(total_nll: f64, tokens: usize) -> f64 {
    if tokens == 0 {
        return f64::NAN;
    }
    (total_nll / tokens as f64).exp()
}

fn check_lengths(what: &str, left: usize, right: usize) {
    assert_eq!(left, right, "{what}: inputs have {left} and {right} items");
}

/// Orders NaN after every number, larger numbers first.
fn descending(a: f64, b: f64) -> std::cmp::Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Greater,
        (false, true) => std::cmp::Ordering::Less,
        (false, false) => b.total_cmp(&a),
    }
}

/// Best first: higher score, then lower id.
fn by_score_then_id(a: &(f32, usize), b: &(f32, usize)) -> std::cmp::Ordering {
    descending(f64::from(a.0), f64::from(b.0)).then(a.1.cmp(&b.1))
}

/// Trims the candidates to the `k` best, in no particular order.
fn keep_best(kept: &mut Vec<(f32, usize)>, k: usize) {
    if k == 0 {
        kept.clear();
    } else if kept.len() > k {
        kept.select_nth_unstable_by(k - 1, by_score_then_id);
        kept.truncate(k);
    }
}

fn unit_rows(x: ArrayView2<f32>) -> Array2<f32> {
    let mut out = x.to_owned();
    for mut row in out.rows_mut() {
        let norm = row
            .iter()
            .map(|v| f64::from(*v) * f64::from(*v))
            .sum::<f64>()
            .sqrt();
        if norm > 0.0 {
            row.mapv_inplace(|v| (f64::from(v) / norm) as f32);
        }
    }
    out
}

/// 1-based ranks with ties sharing the mean of the ranks they span.
fn average_ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        // Positions start..end hold ranks start+1..=end; their mean is (start+1+end)/2.
        let rank = (start + 1 + end) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = rank;
        }
        start = end;
    }
    ranks
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn accuracy_counts_hits() {
        assert!(close(accuracy(&[0, 1, 2, 2], &[0, 1, 1, 2]), 0.75));
        assert!(accuracy(&[], &[]).is_nan());
    }

    #[test]
    #[should_panic(expected = "inputs have 2 and 3 items")]
    fn accuracy_rejects_mismatched_lengths() {
        accuracy(&[0, 1], &[0, 1, 1]);
    }

    #[test]
    fn macro_f1_by_hand() {
        // gold 0 0 1 1 2, pred 0 1 1 1 1:
        // class 0: tp 1, fp 0, fn 1 -> 2/3; class 1: tp 2, fp 2, fn 0 -> 4/6;
        // class 2: never predicted, tp 0, fn 1 -> 0. Mean = (2/3 + 2/3 + 0) / 3 = 4/9.
        assert!(close(
            macro_f1(&[0, 1, 1, 1, 1], &[0, 0, 1, 1, 2], 3),
            4.0 / 9.0
        ));
        // Class 3 occurs nowhere, so like scikit-learn it is not averaged in.
        assert!(close(
            macro_f1(&[0, 1, 1, 1, 1], &[0, 0, 1, 1, 2], 4),
            4.0 / 9.0
        ));
        assert!(close(macro_f1(&[1, 0], &[1, 0], 2), 1.0));
    }

    #[test]
    fn ndcg_by_hand() {
        // Relevant {7, 9}; ranking 3 7 9: DCG = 1/log2(3) + 1/log2(4) = 0.63093 + 0.5,
        // ideal = 1 + 1/log2(3).
        let expected = (1.0 / 3f64.log2() + 0.5) / (1.0 + 1.0 / 3f64.log2());
        assert!(close(ndcg_at_k(&[3, 7, 9], &[7, 9], 10), expected));
        // At k = 1 only position 1 counts; ideal still has one relevant there.
        assert!(close(ndcg_at_k(&[3, 7, 9], &[7, 9], 1), 0.0));
        assert!(close(ndcg_at_k(&[7, 3, 9], &[7, 9], 1), 1.0));
        assert!(close(ndcg_at_k(&[7, 9], &[7, 9, 9], 2), 1.0));
        assert!(close(ndcg_at_k(&[1, 2], &[], 2), 0.0));
    }

    #[test]
    fn mrr_and_recall_by_hand() {
        assert!(close(mrr_at_k(&[3, 7, 9], &[9, 7], 10), 0.5));
        assert!(close(mrr_at_k(&[3, 7, 9], &[9], 2), 0.0));
        assert!(close(recall_at_k(&[3, 7, 9], &[9, 7, 4], 2), 1.0 / 3.0));
        assert!(close(recall_at_k(&[3, 7, 9], &[9, 7, 4], 3), 2.0 / 3.0));
    }

    #[test]
    fn ranking_breaks_ties_by_id_and_puts_nan_last() {
        assert_eq!(
            ranking_from_scores(&[0.5, f64::NAN, 0.9, 0.5, -1.0]),
            vec![2, 0, 3, 4, 1]
        );
    }

    #[test]
    fn top_k_cosine_matches_brute_force() {
        // Corpus larger than one block, to cover merging across blocks.
        let (q, c, d) = (5, 4500, 7);
        let value =
            |i: usize, j: usize, s: usize| (((i * 31 + j * 17 + s) % 23) as f32 - 11.0) / 7.0;
        let queries = Array2::from_shape_fn((q, d), |(i, j)| value(i, j, 1));
        let mut corpus = Array2::from_shape_fn((c, d), |(i, j)| value(i, j, 5));
        corpus.row_mut(4).fill(0.0);
        let got = top_k_cosine(queries.view(), corpus.view(), 12);
        for (i, ids) in got.iter().enumerate() {
            let cos: Vec<f64> = (0..c)
                .map(|r| {
                    let (a, b) = (queries.row(i), corpus.row(r));
                    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x * y)).sum();
                    let na = a.iter().map(|x| f64::from(x * x)).sum::<f64>().sqrt();
                    let nb = b.iter().map(|x| f64::from(x * x)).sum::<f64>().sqrt();
                    if nb == 0.0 {
                        0.0
                    } else {
                        dot / (na * nb)
                    }
                })
                .collect();
            assert_eq!(ids.len(), 12);
            // The returned scores must be the 12 largest (ids may differ only within ties
            // that f32 rounding breaks differently, so compare the score sequence).
            let mut sorted = cos.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            for (rank, &id) in ids.iter().enumerate() {
                assert!(
                    (cos[id] - sorted[rank]).abs() < 1e-6,
                    "query {i} rank {rank}"
                );
            }
        }
        assert_eq!(
            top_k_cosine(queries.view(), corpus.view(), 0),
            vec![Vec::<usize>::new(); q]
        );
        let few = top_k_cosine(queries.view(), corpus.slice(ndarray::s![..3, ..]), 10);
        assert!(few.iter().all(|ids| ids.len() == 3));
    }

    #[test]
    fn top_k_cosine_orders_exact_ties_by_id() {
        let queries = array![[1.0f32, 0.0]];
        let corpus = array![[0.0f32, 1.0], [2.0, 0.0], [1.0, 0.0], [3.0, 0.0]];
        assert_eq!(
            top_k_cosine(queries.view(), corpus.view(), 4),
            vec![vec![1, 2, 3, 0]]
        );
    }

    #[test]
    fn spearman_with_ties_by_hand() {
        // a ranks: 1, 2.5, 2.5, 4; b ranks: 1, 2, 3, 4.
        // Pearson of the ranks: cov = 4.5/4... computed directly below.
        let ra = [1.0, 2.5, 2.5, 4.0];
        let rb = [1.0, 2.0, 3.0, 4.0];
        let expected = {
            let (ma, mb) = (2.5, 2.5);
            let cross: f64 = ra.iter().zip(&rb).map(|(a, b)| (a - ma) * (b - mb)).sum();
            let sa: f64 = ra.iter().map(|a| (a - ma) * (a - ma)).sum();
            let sb: f64 = rb.iter().map(|b| (b - mb) * (b - mb)).sum();
            cross / (sa * sb).sqrt()
        };
        // cross = 2.25 + 0 + 0 + 2.25 = 4.5, sa = 4.5, sb = 5 -> 4.5 / sqrt(22.5).
        assert!(close(expected, 4.5 / 22.5f64.sqrt()));
        assert!(close(
            spearman(&[1.0, 5.0, 5.0, 9.0], &[10.0, 20.0, 30.0, 40.0]),
            expected
        ));
        assert!(close(spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), -1.0));
        assert!(spearman(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]).is_nan());
    }

    /// Every ordering of `0..n`, by Heap's algorithm.
    fn permutations(n: usize) -> Vec<Vec<usize>> {
        fn heap(k: usize, v: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
            if k <= 1 {
                out.push(v.clone());
                return;
            }
            for i in 0..k {
                heap(k - 1, v, out);
                v.swap(if k.is_multiple_of(2) { i } else { 0 }, k - 1);
            }
        }
        let mut out = Vec::new();
        heap(n, &mut (0..n).collect(), &mut out);
        out
    }

    #[test]
    fn random_ndcg_is_the_mean_over_every_ranking() {
        for (corpus, relevant, k) in [(5, 1, 10), (5, 2, 3), (6, 3, 2), (4, 4, 10), (6, 1, 1)] {
            let rankings = permutations(corpus);
            assert_eq!(rankings.len(), (1..=corpus).product::<usize>());
            let gold: Vec<usize> = (0..relevant).collect();
            let mean = rankings.iter().map(|r| ndcg_at_k(r, &gold, k)).sum::<f64>()
                / rankings.len() as f64;
            assert!(
                close(random_ndcg_at_k(relevant, corpus, k), mean),
                "{corpus} {relevant} {k}: {mean}"
            );
        }
        // One relevant among two: rank 1 or 2, equally likely.
        assert!(close(
            random_ndcg_at_k(1, 2, 10),
            (1.0 + 1.0 / 3f64.log2()) / 2.0
        ));
        assert_eq!(random_ndcg_at_k(0, 5, 10), 0.0);
    }

    #[test]
    fn pearson_by_hand() {
        // x = 1 2 3, y = 1 3 2: cross = 1*... = (-1)(-1) + 0 + (1)(0) = 1, sx = 2, sy = 2.
        assert!(close(pearson(&[1.0, 2.0, 3.0], &[1.0, 3.0, 2.0]), 0.5));
        assert!(pearson(&[1.0], &[2.0]).is_nan());
    }

    #[test]
    fn perplexity_by_hand() {
        assert!(close(perplexity(4.0 * 2f64.ln(), 4), 2.0));
        assert!(perplexity(1.0, 0).is_nan());
    }

    /// Retrieval as `tasks::retrieval` scores it (cosine top 10, nDCG@10 per query,
    /// mean over queries) against scikit-learn on the same vectors: unit vectors at
    /// angles 0.25 j for 12 documents, queries at 0.01, 1.62 and 2.9 rad whose relevant
    /// documents are 3 (ranked 4th), 0 (outside the top 10) and 11 (ranked 1st).
    #[test]
    fn retrieval_ndcg_matches_scikit_learn() {
        let unit = |a: f64| [a.cos() as f32, a.sin() as f32];
        let docs = Array2::from_shape_fn((12, 2), |(j, k)| unit(0.25 * j as f64)[k]);
        let angles = [0.01, 1.62, 2.9];
        let queries = Array2::from_shape_fn((3, 2), |(i, k)| unit(angles[i])[k]);
        let relevant = [3, 0, 11];
        let ranked = top_k_cosine(queries.view(), docs.view(), 10);
        let per_query: Vec<f64> = ranked
            .iter()
            .zip(relevant)
            .map(|(r, rel)| ndcg_at_k(r, &[rel], 10))
            .collect();
        // scikit-learn 1.9.1: with docs = [[cos(.25 j), sin(.25 j)] for j in range(12)],
        // queries likewise at `angles` and y_true one-hot at `relevant`,
        // `ndcg_score(y_true[i:i+1], (queries @ docs.T)[i:i+1], k=10)` per row, and
        // `ndcg_score(y_true, queries @ docs.T, k=10)` for the mean.
        let sklearn = [0.4306765580733929, 0.0, 1.0];
        for (ours, theirs) in per_query.iter().zip(sklearn) {
            assert!((ours - theirs).abs() < 1e-9, "{ours} vs {theirs}");
        }
        let mean = per_query.iter().sum::<f64>() / 3.0;
        assert!((mean - 0.4768921860244643).abs() < 1e-9, "{mean}");
    }

    /// Similarity's Spearman with ties on both sides against scipy 1.17.1:
    /// `scipy.stats.spearmanr([0.2, 0.9, 0.4, 0.4, 0.7, 0.1, 0.9, 0.3],
    /// [1, 4, 2, 3, 3, 1, 5, 2]).statistic` = 0.9570732259820033.
    #[test]
    fn spearman_matches_scipy_with_ties() {
        let predicted = [0.2, 0.9, 0.4, 0.4, 0.7, 0.1, 0.9, 0.3];
        let gold = [1.0, 4.0, 2.0, 3.0, 3.0, 1.0, 5.0, 2.0];
        let rho = spearman(&predicted, &gold);
        assert!((rho - 0.9570732259820033).abs() < 1e-12, "{rho}");
    }
}
