//! Linear probes: how well a layer's pooled embeddings predict a label, measured by
//! cross-validated, L2-regularised logistic regression.
//!
//! # Protocol
//!
//! [`evaluate`] runs stratified k-fold cross-validation with folds that depend only on
//! the labels and the seed ([`stratified_folds`]), so every layer of a model is scored
//! on identical splits. On each training fold it standardises the features with that
//! fold's mean and standard deviation, picks `C` from the grid by an inner stratified
//! cross-validation on the training fold alone (each inner split standardised on its own
//! training part), refits on the whole training fold and predicts the held-out fold.
//! Every example is predicted exactly once, by a model that never saw it.
//!
//! # Probes are linfa probes
//!
//! Each fit is a linfa estimator: [`LogisticParams`] implements `linfa::traits::Fit` on a
//! `linfa::Dataset` of records and class indices, and its [`LogisticModel`] implements
//! `PredictInplace`, so `linfa_logistic::MultiLogisticRegression` (with `alpha = 1/C`)
//! fits the same model in its place; [`LogisticParams`] documents the objective and that
//! mapping. The L-BFGS behind the fit is this crate's own (faster, and it reports
//! convergence; `src/probe/logistic.rs` says why), and so are the folds
//! (`src/probe/cv.rs` says why linfa's cannot express them).
//!
//! # Layout
//!
//! This file holds the protocol's entry point, settings, results and input checks;
//! `cv` the folds and the choice of `C`; `standardize` the per-fold scaling; `logistic`
//! the model, its objective and linfa traits; `lbfgs` the optimiser; `simd` its kernels.

mod cv;
mod lbfgs;
mod logistic;
mod simd;
mod standardize;

use std::fmt;

use anyhow::{bail, ensure, Result};
use ndarray::ArrayView2;
use rayon::prelude::*;
use serde::Serialize;

use crate::stats::metrics;

pub use cv::stratified_folds;
pub use lbfgs::{FitReport, Stop};
pub use logistic::{Feature, FitError, LogisticModel, LogisticParams};
pub use standardize::Standardizer;

/// Settings of [`evaluate`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeConfig {
    /// Number of outer cross-validation folds.
    pub folds: usize,
    /// Seed of the fold assignment (outer and inner).
    pub seed: u64,
    /// Candidate inverse regularisation strengths, in scikit-learn's `C` convention.
    pub c_grid: Vec<f64>,
    /// Number of inner folds, on the training fold only, that choose `C`. Unused when
    /// the grid has a single value.
    pub inner_folds: usize,
    /// Iteration limit of each fit (scikit-learn's `max_iter`).
    pub max_iter: usize,
    /// Gradient tolerance of each fit (scikit-learn's `tol`).
    pub tolerance: f64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            folds: 5,
            seed: 0,
            c_grid: vec![0.01, 0.1, 1.0, 10.0],
            inner_folds: 3,
            max_iter: 300,
            tolerance: 1e-4,
        }
    }
}

/// Result of [`evaluate`] for one layer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeOutcome {
    /// Out-of-fold prediction for every example, in input order.
    pub predictions: Vec<usize>,
    /// Accuracy of `predictions`.
    pub accuracy: f64,
    /// Macro-F1 of `predictions` ([`metrics::macro_f1`]).
    pub macro_f1: f64,
    /// One entry per outer fold, in fold order.
    pub folds: Vec<FoldOutcome>,
    /// How the fits ended.
    pub convergence: Convergence,
}

/// One outer fold of [`evaluate`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FoldOutcome {
    /// Number of held-out examples.
    pub test_size: usize,
    /// The `C` chosen on the training fold.
    pub c: f64,
    /// Mean inner-validation accuracy of that `C` (NaN when the grid has one value).
    pub inner_accuracy: f64,
    /// Accuracy on the held-out fold.
    pub accuracy: f64,
    /// Macro-F1 on the held-out fold.
    pub macro_f1: f64,
}

/// Summary of how the L-BFGS fits of one [`evaluate`] call ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Convergence {
    /// Number of fits (inner fits for every `C`, plus one refit per fold).
    pub fits: usize,
    /// Fits stopped by `max_iter` before meeting the tolerance.
    pub hit_max_iter: usize,
    /// Fits whose line search could not decrease the objective any more before meeting
    /// the tolerance (usually a gradient just above it, at the limit of precision).
    pub stalled: usize,
    /// L-BFGS iterations over all fits.
    pub iterations: usize,
    /// Largest final `max |gradient|` over all fits.
    pub worst_gradient: f64,
    /// The tolerance the fits aimed at.
    pub tolerance: f64,
    /// The iteration limit of each fit.
    pub max_iter: usize,
}

impl Convergence {
    /// Whether every fit met the gradient or objective-decrease criterion.
    pub fn all_converged(&self) -> bool {
        self.hit_max_iter == 0 && self.stalled == 0
    }
}

impl fmt::Display for Convergence {
    /// One line for logs and reports, e.g. "all 65 fits converged (...)".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.all_converged() {
            write!(
                f,
                "all {} fits converged (max|grad| <= {:.0e}; {} iterations in all)",
                self.fits, self.tolerance, self.iterations
            )
        } else {
            write!(
                f,
                "{} of {} fits did not reach max|grad| <= {:.0e}: {} stopped at max_iter = {}, \
                 {} stalled in the line search; worst final max|grad| {:.2e}",
                self.hit_max_iter + self.stalled,
                self.fits,
                self.tolerance,
                self.hit_max_iter,
                self.max_iter,
                self.stalled,
                self.worst_gradient
            )
        }
    }
}

/// Cross-validated linear probe of `features` `[n, d]` for `labels` in
/// `0..num_classes`; see the module documentation for the protocol.
///
/// Deterministic for a given seed: folds, fits and predictions do not depend on the
/// number of rayon threads (folds and inner folds run in parallel, each fit on one
/// thread).
///
/// # Errors
/// A one-line message for: mismatched lengths, labels outside `0..num_classes`, a label
/// column with one class, a class with fewer examples than folds, fewer examples than
/// folds, too few examples per class for the inner folds, non-finite features, and an
/// invalid configuration.
pub fn evaluate(
    features: ArrayView2<f32>,
    labels: &[usize],
    num_classes: usize,
    cfg: &ProbeConfig,
) -> Result<ProbeOutcome> {
    let grid = validate(features, labels, num_classes, cfg)?;
    let folds = stratified_folds(labels, cfg.folds, cfg.seed);
    let runs: Vec<cv::FoldRun> = folds
        .par_iter()
        .enumerate()
        .map(|(f, test)| cv::run_fold(features, labels, cfg, &grid, f, test))
        .collect::<Result<_>>()?;

    let mut predictions = vec![0; labels.len()];
    let mut fold_outcomes = Vec::with_capacity(runs.len());
    let mut reports = Vec::new();
    for (test, run) in folds.iter().zip(runs) {
        let gold: Vec<usize> = test.iter().map(|&i| labels[i]).collect();
        for (&i, &p) in test.iter().zip(&run.predictions) {
            predictions[i] = p;
        }
        fold_outcomes.push(FoldOutcome {
            test_size: test.len(),
            c: run.c,
            inner_accuracy: run.inner_accuracy,
            accuracy: metrics::accuracy(&run.predictions, &gold),
            macro_f1: metrics::macro_f1(&run.predictions, &gold, num_classes),
        });
        reports.extend(run.reports);
    }
    Ok(ProbeOutcome {
        accuracy: metrics::accuracy(&predictions, labels),
        macro_f1: metrics::macro_f1(&predictions, labels, num_classes),
        predictions,
        folds: fold_outcomes,
        convergence: summarise(&reports, cfg),
    })
}

/// Checks everything [`evaluate`] relies on and returns the `C` grid in ascending order.
fn validate(
    features: ArrayView2<f32>,
    labels: &[usize],
    num_classes: usize,
    cfg: &ProbeConfig,
) -> Result<Vec<f64>> {
    let n = labels.len();
    ensure!(
        features.nrows() == n,
        "features have {} rows but there are {n} labels",
        features.nrows()
    );
    ensure!(features.ncols() > 0, "features have no columns");
    ensure!(
        num_classes >= 2,
        "a probe needs at least two classes, got num_classes = {num_classes}"
    );
    ensure!(
        cfg.folds >= 2,
        "folds must be at least 2, got {}",
        cfg.folds
    );
    ensure!(
        !cfg.c_grid.is_empty() && cfg.c_grid.iter().all(|c| *c > 0.0 && c.is_finite()),
        "c_grid must hold positive finite values, got {:?}",
        cfg.c_grid
    );
    ensure!(
        cfg.tolerance >= 0.0 && cfg.tolerance.is_finite(),
        "tolerance must be finite and non-negative, got {}",
        cfg.tolerance
    );
    let mut counts = vec![0usize; num_classes];
    for (i, &label) in labels.iter().enumerate() {
        ensure!(
            label < num_classes,
            "label {label} of example {i} is not below num_classes = {num_classes}"
        );
        counts[label] += 1;
    }
    let present: Vec<usize> = (0..num_classes).filter(|&c| counts[c] > 0).collect();
    if present.len() == 1 {
        bail!(
            "label column has one class (class {}); a probe needs at least two",
            present[0]
        );
    }
    ensure!(
        n >= cfg.folds,
        "{n} examples cannot be split into {} folds",
        cfg.folds
    );
    for (c, &m) in counts.iter().enumerate() {
        ensure!(
            m > 0,
            "class {c} has no examples although num_classes = {num_classes}; renumber the labels"
        );
        ensure!(
            m >= cfg.folds,
            "class {c} has {m} examples, fewer than the {} folds; use at most {m} folds or drop the class",
            cfg.folds
        );
    }
    let mut grid = cfg.c_grid.clone();
    grid.sort_by(f64::total_cmp);
    grid.dedup();
    if grid.len() > 1 {
        ensure!(
            cfg.inner_folds >= 2,
            "inner_folds must be at least 2 to choose C from {} values, got {}",
            grid.len(),
            cfg.inner_folds
        );
        for (c, &m) in counts.iter().enumerate() {
            // A test fold takes at most ceil(m / folds) of the class (see stratified_folds).
            let kept = m - m.div_ceil(cfg.folds);
            ensure!(
                kept >= cfg.inner_folds,
                "class {c} has {m} examples, so a training fold keeps only {kept}, fewer than the \
                 {} inner folds that choose C; use fewer inner folds or a single C",
                cfg.inner_folds
            );
        }
    }
    for ((i, j), v) in features.indexed_iter() {
        ensure!(
            v.is_finite(),
            "feature [{i}, {j}] is {v}; features must be finite"
        );
    }
    Ok(grid)
}

/// Counts how the fits of one [`evaluate`] call ended.
fn summarise(reports: &[FitReport], cfg: &ProbeConfig) -> Convergence {
    Convergence {
        fits: reports.len(),
        hit_max_iter: reports.iter().filter(|r| r.stop == Stop::MaxIter).count(),
        stalled: reports
            .iter()
            .filter(|r| r.stop == Stop::LineSearch)
            .count(),
        iterations: reports.iter().map(|r| r.iterations).sum(),
        worst_gradient: reports.iter().map(|r| r.gradient).fold(0.0, f64::max),
        tolerance: cfg.tolerance,
        max_iter: cfg.max_iter,
    }
}
