//! The cross-validation inside [`evaluate`](super::evaluate): seeded stratified folds,
//! the choice of `C` by inner cross-validation on each training fold, the refit and the
//! held-out predictions.
//!
//! The folds are not linfa's: `DatasetBase::fold` cuts the rows into contiguous,
//! unshuffled chunks and knows nothing of classes, and `DatasetBase::shuffle` draws
//! through `rand`, while the probe deals each class's examples, shuffled by SplitMix64
//! ([`sampling::shuffle`]), to the folds in turn, so that every fold holds each class in
//! proportion and the Python reference (`scripts/reference/eval_reference.py`) can
//! restate the folds exactly. Expressing that through linfa's folds would change which
//! examples each fold holds, and with it every probe result. The fits and predictions do
//! go through linfa's traits, on [`Dataset`]s.

use anyhow::Result;
use linfa::prelude::*;
use ndarray::{Array1, ArrayView2};
use rayon::prelude::*;

use super::{FitReport, LogisticModel, LogisticParams, ProbeConfig, Standardizer};
use crate::stats::{metrics, sampling};

/// The held-out index sets of `k` stratified folds: each class's examples, shuffled
/// with SplitMix64 ([`sampling::shuffle`]) from `seed`, are dealt to the folds in turn,
/// so every fold holds `floor` or `ceil` of `count / k` examples of each class and fold
/// sizes differ by at most one. Each set is sorted; its training set is everything else.
/// The result depends only on `labels`, `k` and `seed`.
///
/// # Panics
/// If `k` is 0.
pub fn stratified_folds(labels: &[usize], k: usize, seed: u64) -> Vec<Vec<usize>> {
    assert!(k > 0, "stratified_folds: k must be at least 1");
    let classes = labels.iter().max().map_or(0, |m| m + 1);
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &label) in labels.iter().enumerate() {
        members[label].push(i);
    }
    let mut state = seed;
    let mut folds = vec![Vec::with_capacity(labels.len() / k + 1); k];
    // Dealing continues across classes, so the folds' total sizes stay balanced too.
    for (position, i) in members
        .into_iter()
        .flat_map(|mut class| {
            sampling::shuffle(&mut class, &mut state);
            class
        })
        .enumerate()
    {
        folds[position % k].push(i);
    }
    for fold in &mut folds {
        fold.sort_unstable();
    }
    folds
}

/// What one outer fold hands back to [`evaluate`](super::evaluate).
pub(super) struct FoldRun {
    pub(super) predictions: Vec<usize>,
    pub(super) c: f64,
    pub(super) inner_accuracy: f64,
    pub(super) reports: Vec<FitReport>,
}

/// Chooses `C` on the training part of fold `fold`, refits and predicts its test part.
/// The checks of [`evaluate`](super::evaluate) leave every class in every training set
/// (outer and inner), so each fit sees all the classes.
pub(super) fn run_fold(
    features: ArrayView2<f32>,
    labels: &[usize],
    cfg: &ProbeConfig,
    grid: &[f64],
    fold: usize,
    test: &[usize],
) -> Result<FoldRun> {
    let train = complement(test, labels.len());
    let train_labels: Vec<usize> = train.iter().map(|&i| labels[i]).collect();
    let params = LogisticParams::default()
        .max_iterations(cfg.max_iter)
        .gradient_tolerance(cfg.tolerance);
    let mut reports = Vec::new();
    let (c, inner_accuracy, init) = if grid.len() == 1 {
        (grid[0], f64::NAN, None)
    } else {
        // A different seed per fold, so inner splits of overlapping training sets are
        // not aligned with each other.
        let inner_seed = cfg.seed ^ 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(fold as u64 + 1);
        let inner = stratified_folds(&train_labels, cfg.inner_folds, inner_seed);
        let paths: Vec<Vec<(f64, LogisticModel)>> = inner
            .par_iter()
            .map(|held| {
                let fit_rows: Vec<usize> = complement(held, train.len())
                    .iter()
                    .map(|&p| train[p])
                    .collect();
                let val_rows: Vec<usize> = held.iter().map(|&p| train[p]).collect();
                regularisation_path(features, labels, &fit_rows, &val_rows, grid, params)
            })
            .collect::<Result<_>>()?;
        let mean_accuracy: Vec<f64> = (0..grid.len())
            .map(|g| paths.iter().map(|path| path[g].0).sum::<f64>() / paths.len() as f64)
            .collect();
        // Ties go to the smaller C (the grid is ascending), as GridSearchCV's first best.
        let mut best = 0;
        for (g, &acc) in mean_accuracy.iter().enumerate() {
            if acc > mean_accuracy[best] {
                best = g;
            }
        }
        reports.extend(
            paths
                .iter()
                .flat_map(|path| path.iter().map(|(_, m)| m.report)),
        );
        // The inner fits at the chosen C were standardised on subsets of this training
        // fold, so their mean is a close starting point for the refit.
        let mut init = paths[0][best].1.clone();
        for path in &paths[1..] {
            init.coef += &path[best].1.coef;
            init.intercept
                .iter_mut()
                .zip(&path[best].1.intercept)
                .for_each(|(a, b)| *a += b);
        }
        let k = paths.len() as f64;
        init.coef /= k;
        init.intercept.iter_mut().for_each(|b| *b /= k);
        (grid[best], mean_accuracy[best], Some(init))
    };
    let scaler = Standardizer::fit(features, &train);
    let training = Dataset::new(
        scaler.transform(features, &train),
        Array1::from(train_labels),
    );
    let model = params.c(c).fit_with(init.as_ref(), &training)?;
    reports.push(model.report);
    let predictions: Array1<usize> = model.predict(&scaler.transform(features, test));
    Ok(FoldRun {
        predictions: predictions.to_vec(),
        c,
        inner_accuracy,
        reports,
    })
}

/// Fits every `C` of the ascending grid on `fit_rows`, each warm-started from the
/// previous (more regularised) solution, and scores each on `val_rows`.
fn regularisation_path(
    features: ArrayView2<f32>,
    labels: &[usize],
    fit_rows: &[usize],
    val_rows: &[usize],
    grid: &[f64],
    params: LogisticParams,
) -> Result<Vec<(f64, LogisticModel)>> {
    let scaler = Standardizer::fit(features, fit_rows);
    let fitting = Dataset::new(
        scaler.transform(features, fit_rows),
        fit_rows
            .iter()
            .map(|&i| labels[i])
            .collect::<Array1<usize>>(),
    );
    let x_val = scaler.transform(features, val_rows);
    let val_labels: Vec<usize> = val_rows.iter().map(|&i| labels[i]).collect();
    let mut path: Vec<(f64, LogisticModel)> = Vec::with_capacity(grid.len());
    for &c in grid {
        let init = path.last().map(|(_, model)| model);
        let model = params.c(c).fit_with(init, &fitting)?;
        let predictions: Array1<usize> = model.predict(&x_val);
        let accuracy = metrics::accuracy(&predictions.to_vec(), &val_labels);
        path.push((accuracy, model));
    }
    Ok(path)
}

/// The indices in `0..n` that are not in the sorted `taken`.
fn complement(taken: &[usize], n: usize) -> Vec<usize> {
    let mut rest = Vec::with_capacity(n - taken.len());
    let mut next = taken.iter().peekable();
    for i in 0..n {
        if next.peek() == Some(&&i) {
            next.next();
        } else {
            rest.push(i);
        }
    }
    rest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complement_lists_the_rest_in_order() {
        assert_eq!(complement(&[0, 3, 4], 6), vec![1, 2, 5]);
        assert_eq!(complement(&[], 2), vec![0, 1]);
    }
}
