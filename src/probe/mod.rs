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
//! # Model and objective
//!
//! Two classes get one weight vector and the logistic loss; more classes get the
//! multinomial (softmax) model with one weight vector per class. The objective is
//! scikit-learn's `LogisticRegression` objective exactly,
//!
//! ```text
//! (1/n) sum_i loss_i  +  1/(2 C n) ||W||^2        (intercepts not penalised)
//! ```
//!
//! and the stopping rule is scikit-learn's `lbfgs` one: largest absolute gradient
//! component `<= tolerance` (its `tol`), or a relative decrease of the objective of at
//! most 64 machine epsilons, or `max_iter` iterations.
//!
//! linfa-logistic 0.8.1 minimises `sum_i loss_i + alpha/2 ||W||^2` with the intercept
//! unpenalised (`logistic_loss` / `multi_logistic_loss` in its `lib.rs`), which is `n`
//! times the objective above when `alpha = 1/C`. `tests/probe.rs` checks that mapping
//! against linfa itself and these fits against scikit-learn.
//!
//! # Why the fit is not linfa's
//!
//! linfa's `fit` spends most of its time outside the arithmetic: per L-BFGS iteration it
//! runs three forward and two backward products (argmin asks for the cost and the
//! gradient separately, then the gradient again), and each goes through
//! `matrixmultiply`, which copies ("packs") the whole feature matrix on every call; a
//! profile of a 1600 x 576 fit showed 61 % of the time in packing and 21 % in the
//! product. It also cannot report whether it converged. On a 1067 x 576, four-class fit
//! (one thread, CPU time, C = 0.1 / 10) linfa took 0.15 / 0.38 s, scikit-learn
//! 0.058 / 0.099 s on float32 input, and this module 0.028 / 0.063 s: one pass over the
//! rows computes the loss and the gradient together, the features stay in f32 (half the
//! memory traffic; all arithmetic is f64), and the L-BFGS below reports iterations and
//! why it stopped.

use std::collections::VecDeque;
use std::fmt;

use anyhow::{bail, ensure, Result};
use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;
use serde::Serialize;

use crate::stats::metrics;
use crate::stats::sampling;

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
    let runs: Vec<FoldRun> = folds
        .par_iter()
        .enumerate()
        .map(|(f, test)| run_fold(features, labels, num_classes, cfg, &grid, f, test))
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

/// The held-out index sets of `k` stratified folds: each class's examples, shuffled
/// with a ChaCha8 generator seeded by `seed`, are dealt to the folds in turn, so every
/// fold holds `floor` or `ceil` of `count / k` examples of each class and fold sizes
/// differ by at most one. Each set is sorted; its training set is everything else.
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

/// Column means and scales of some rows, as scikit-learn's `StandardScaler`: population
/// standard deviation, and scale 1 for columns whose variance is indistinguishable from
/// rounding error of a constant (scikit-learn's `_is_constant_feature` bound).
#[derive(Debug, Clone, PartialEq)]
pub struct Standardizer {
    mean: Vec<f64>,
    scale: Vec<f64>,
}

impl Standardizer {
    /// Fits on the rows `rows` of `x`.
    ///
    /// # Panics
    /// If `rows` is empty.
    pub fn fit(x: ArrayView2<f32>, rows: &[usize]) -> Standardizer {
        assert!(!rows.is_empty(), "Standardizer::fit needs at least one row");
        let d = x.ncols();
        let n = rows.len() as f64;
        let mut mean = vec![0.0; d];
        for &i in rows {
            for (m, &v) in mean.iter_mut().zip(x.row(i)) {
                *m += f64::from(v);
            }
        }
        mean.iter_mut().for_each(|m| *m /= n);
        let mut var = vec![0.0; d];
        for &i in rows {
            for ((s, &v), m) in var.iter_mut().zip(x.row(i)).zip(&mean) {
                let dv = f64::from(v) - m;
                *s += dv * dv;
            }
        }
        let eps = f64::EPSILON;
        let scale = var
            .iter()
            .zip(&mean)
            .map(|(&s, &m)| {
                let var = s / n;
                let bound = n * eps * var + (n * m * eps).powi(2);
                if var <= bound {
                    1.0
                } else {
                    var.sqrt()
                }
            })
            .collect();
        Standardizer { mean, scale }
    }

    /// The standardised rows `rows` of `x`, row-major, in f32.
    pub fn transform(&self, x: ArrayView2<f32>, rows: &[usize]) -> Array2<f32> {
        let d = x.ncols();
        let mut out = Vec::with_capacity(rows.len() * d);
        for &i in rows {
            let row = x.row(i);
            out.extend(
                row.iter()
                    .zip(self.mean.iter().zip(&self.scale))
                    .map(|(&v, (m, s))| ((f64::from(v) - m) / s) as f32),
            );
        }
        Array2::from_shape_vec((rows.len(), d), out).expect("rows * d values")
    }
}

/// Settings of one logistic-regression fit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitOptions {
    /// Inverse regularisation strength (scikit-learn's `C`).
    pub c: f64,
    /// Iteration limit.
    pub max_iter: usize,
    /// Stop once the largest absolute gradient component is at most this.
    pub tolerance: f64,
}

/// Why an L-BFGS fit stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Stop {
    /// The largest absolute gradient component met the tolerance.
    Gradient,
    /// The objective's relative decrease fell to 64 machine epsilons (scikit-learn's
    /// `ftol`), i.e. it cannot improve further in f64.
    Objective,
    /// The iteration limit was reached first.
    MaxIter,
    /// No step along the search direction decreased the objective.
    LineSearch,
}

/// How one fit ended.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FitReport {
    /// L-BFGS iterations (accepted steps), as scikit-learn's `n_iter_`.
    pub iterations: usize,
    /// Why it stopped.
    pub stop: Stop,
    /// Final largest absolute gradient component.
    pub gradient: f64,
}

impl FitReport {
    /// Whether the fit met a convergence criterion rather than giving up.
    pub fn converged(&self) -> bool {
        matches!(self.stop, Stop::Gradient | Stop::Objective)
    }
}

/// A fitted binary or multinomial logistic regression on standardised features.
#[derive(Debug, Clone, PartialEq)]
pub struct LogisticModel {
    /// Weights as scikit-learn's `coef_`: `[1, d]` (class 1 against class 0) for two
    /// classes, `[classes, d]` for more.
    pub coef: Array2<f64>,
    /// Intercepts as scikit-learn's `intercept_`: one for two classes, one per class
    /// otherwise.
    pub intercept: Vec<f64>,
    /// How the fit ended.
    pub report: FitReport,
}

impl LogisticModel {
    /// Class probabilities `[n, classes]` of standardised rows `x`.
    pub fn predict_proba(&self, x: ArrayView2<f32>) -> Array2<f64> {
        let scores = self.decision(x);
        let (n, outputs) = scores.dim();
        if outputs == 1 {
            Array2::from_shape_fn((n, 2), |(i, c)| {
                let p = sigmoid(scores[[i, 0]]);
                if c == 1 {
                    p
                } else {
                    1.0 - p
                }
            })
        } else {
            let mut probs = scores;
            for mut row in probs.rows_mut() {
                let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                row.mapv_inplace(|z| (z - max).exp());
                let sum = row.sum();
                row.mapv_inplace(|e| e / sum);
            }
            probs
        }
    }

    /// Predicted class of each standardised row of `x`: class 1 when the score is
    /// positive for two classes, else the first class with the largest score (as
    /// scikit-learn).
    pub fn predict(&self, x: ArrayView2<f32>) -> Vec<usize> {
        let scores = self.decision(x);
        scores
            .rows()
            .into_iter()
            .map(|row| {
                if row.len() == 1 {
                    usize::from(row[0] > 0.0)
                } else {
                    let mut best = 0;
                    for (c, &z) in row.iter().enumerate() {
                        if z > row[best] {
                            best = c;
                        }
                    }
                    best
                }
            })
            .collect()
    }

    fn decision(&self, x: ArrayView2<f32>) -> Array2<f64> {
        let x = x.as_standard_layout();
        let d = x.ncols();
        assert_eq!(
            d,
            self.coef.ncols(),
            "model has {} features, input {d}",
            self.coef.ncols()
        );
        let simd = Simd::detect();
        let weights: Vec<f64> = self.coef.iter().copied().collect();
        let mut row64 = vec![0.0; d];
        let mut scores = Array2::zeros((x.nrows(), self.intercept.len()));
        for (row, mut out) in x.rows().into_iter().zip(scores.rows_mut()) {
            simd.widen(row.as_slice().expect("standard layout"), &mut row64);
            for (o, (w, b)) in out
                .iter_mut()
                .zip(weights.chunks_exact(d).zip(&self.intercept))
            {
                *o = simd.dot(&row64, w) + b;
            }
        }
        scores
    }

    fn parameters(&self) -> Vec<f64> {
        self.coef.iter().chain(&self.intercept).copied().collect()
    }
}

/// Fits L2-regularised logistic regression on standardised features `x` `[n, d]` with
/// labels in `0..num_classes` (every class must occur), minimising scikit-learn's
/// objective (module documentation). `init` warm-starts from an earlier model with the
/// same shape; the minimum does not depend on it, only the work to reach it.
///
/// # Errors
/// Mismatched lengths, no feature columns, fewer than two classes, a class without
/// examples, labels out of range, a non-positive `C`, or an `init` of the wrong shape.
pub fn fit_logistic(
    x: ArrayView2<f32>,
    labels: &[usize],
    num_classes: usize,
    options: &FitOptions,
    init: Option<&LogisticModel>,
) -> Result<LogisticModel> {
    ensure!(
        x.nrows() == labels.len(),
        "features have {} rows but there are {} labels",
        x.nrows(),
        labels.len()
    );
    ensure!(x.ncols() > 0, "features have no columns");
    ensure!(
        num_classes >= 2,
        "logistic regression needs at least two classes, got {num_classes}"
    );
    ensure!(
        options.c > 0.0 && options.c.is_finite(),
        "C must be positive and finite, got {}",
        options.c
    );
    let mut counts = vec![0usize; num_classes];
    for &label in labels {
        ensure!(
            label < num_classes,
            "label {label} is not below num_classes = {num_classes}"
        );
        counts[label] += 1;
    }
    if let Some(c) = counts.iter().position(|&m| m == 0) {
        bail!("class {c} has no training examples");
    }
    let x = x.as_standard_layout();
    let (n, d) = x.dim();
    let outputs = if num_classes == 2 { 1 } else { num_classes };
    let mut theta = match init {
        Some(model) => {
            ensure!(
                model.coef.dim() == (outputs, d) && model.intercept.len() == outputs,
                "initial model has shape {:?}, this fit needs ({outputs}, {d})",
                model.coef.dim()
            );
            model.parameters()
        }
        None => vec![0.0; outputs * (d + 1)],
    };
    let objective = Objective {
        x: x.as_slice().expect("standard layout"),
        n,
        d,
        labels,
        outputs,
        penalty: 1.0 / (options.c * n as f64),
        simd: Simd::detect(),
    };
    let report = minimize(&objective, &mut theta, options.max_iter, options.tolerance);
    let intercept = theta.split_off(outputs * d);
    Ok(LogisticModel {
        coef: Array2::from_shape_vec((outputs, d), theta).expect("outputs * d weights"),
        intercept,
        report,
    })
}

/// What one outer fold hands back to [`evaluate`].
struct FoldRun {
    predictions: Vec<usize>,
    c: f64,
    inner_accuracy: f64,
    reports: Vec<FitReport>,
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

/// Chooses `C` on the training part of fold `fold`, refits and predicts its test part.
fn run_fold(
    features: ArrayView2<f32>,
    labels: &[usize],
    num_classes: usize,
    cfg: &ProbeConfig,
    grid: &[f64],
    fold: usize,
    test: &[usize],
) -> Result<FoldRun> {
    let train = complement(test, labels.len());
    let train_labels: Vec<usize> = train.iter().map(|&i| labels[i]).collect();
    let options = |c| FitOptions {
        c,
        max_iter: cfg.max_iter,
        tolerance: cfg.tolerance,
    };
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
                regularisation_path(
                    features,
                    labels,
                    num_classes,
                    &fit_rows,
                    &val_rows,
                    grid,
                    &options,
                )
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
    let model = fit_logistic(
        scaler.transform(features, &train).view(),
        &train_labels,
        num_classes,
        &options(c),
        init.as_ref(),
    )?;
    reports.push(model.report);
    Ok(FoldRun {
        predictions: model.predict(scaler.transform(features, test).view()),
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
    num_classes: usize,
    fit_rows: &[usize],
    val_rows: &[usize],
    grid: &[f64],
    options: &(dyn Fn(f64) -> FitOptions + Sync),
) -> Result<Vec<(f64, LogisticModel)>> {
    let scaler = Standardizer::fit(features, fit_rows);
    let x_fit = scaler.transform(features, fit_rows);
    let x_val = scaler.transform(features, val_rows);
    let fit_labels: Vec<usize> = fit_rows.iter().map(|&i| labels[i]).collect();
    let val_labels: Vec<usize> = val_rows.iter().map(|&i| labels[i]).collect();
    let mut path: Vec<(f64, LogisticModel)> = Vec::with_capacity(grid.len());
    for &c in grid {
        let init = path.last().map(|(_, model)| model);
        let model = fit_logistic(x_fit.view(), &fit_labels, num_classes, &options(c), init)?;
        let accuracy = metrics::accuracy(&model.predict(x_val.view()), &val_labels);
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

/// scikit-learn's objective on row-major standardised features. Parameters are laid out
/// as `outputs` weight rows of length `d`, then `outputs` intercepts; `outputs` is 1 for
/// the binary model.
struct Objective<'a> {
    x: &'a [f32],
    n: usize,
    d: usize,
    labels: &'a [usize],
    outputs: usize,
    /// `1 / (C n)`: the L2 weight of the per-example mean loss.
    penalty: f64,
    simd: Simd,
}

/// Rows per block: each loaded chunk of a weight row serves four examples' scores, and
/// each pass over a gradient row folds in four examples, a quarter of the loads and
/// stores of one at a time.
const BLOCK: usize = 4;

impl Objective<'_> {
    /// The objective at `theta`; writes its gradient into `grad`. One pass over the rows
    /// computes scores, loss and gradient together.
    fn value_and_gradient(&self, theta: &[f64], grad: &mut [f64]) -> f64 {
        let (d, outputs) = (self.d, self.outputs);
        let (weights, intercepts) = theta.split_at(outputs * d);
        grad.fill(0.0);
        let (grad_w, grad_b) = grad.split_at_mut(outputs * d);
        let mut rows = vec![0.0; BLOCK * d];
        let mut residuals = vec![0.0; outputs * BLOCK];
        let mut scores = vec![0.0; BLOCK * outputs];
        let mut loss = 0.0;
        for start in (0..self.n).step_by(BLOCK) {
            let size = BLOCK.min(self.n - start);
            for (r, row) in rows.chunks_exact_mut(d).take(size).enumerate() {
                let i = start + r;
                self.simd.widen(&self.x[i * d..(i + 1) * d], row);
            }
            // A short last block repeats its first row; those scores are ignored and its
            // residuals set to 0, which adds exact zeros to the gradient.
            let block: [&[f64]; BLOCK] =
                std::array::from_fn(|r| &rows[if r < size { r } else { 0 } * d..][..d]);
            for (o, (w, b)) in weights.chunks_exact(d).zip(intercepts).enumerate() {
                let z = self.simd.dot4(block, w);
                for r in 0..size {
                    scores[r * outputs + o] = z[r] + b;
                }
            }
            residuals.fill(0.0);
            for r in 0..size {
                let z = &scores[r * outputs..(r + 1) * outputs];
                loss += self.loss_and_residuals(z, self.labels[start + r], |o, value| {
                    residuals[o * BLOCK + r] = value;
                });
            }
            for (o, coefs) in residuals.chunks_exact(BLOCK).enumerate() {
                let coefs: [f64; BLOCK] = coefs.try_into().expect("BLOCK residuals");
                self.simd
                    .axpy4(coefs, block, &mut grad_w[o * d..(o + 1) * d]);
                grad_b[o] += coefs[..size].iter().sum::<f64>();
            }
        }
        let inv_n = 1.0 / self.n as f64;
        let mut norm2 = 0.0;
        for (g, w) in grad_w.iter_mut().zip(weights) {
            *g = *g * inv_n + self.penalty * w;
            norm2 += w * w;
        }
        grad_b.iter_mut().for_each(|g| *g *= inv_n);
        loss * inv_n + 0.5 * self.penalty * norm2
    }

    /// Loss of one example with scores `z`; passes `d loss / d z_o` to `residual`.
    #[inline]
    fn loss_and_residuals(
        &self,
        z: &[f64],
        label: usize,
        mut residual: impl FnMut(usize, f64),
    ) -> f64 {
        if self.outputs == 1 {
            let y = if label == 1 { 1.0 } else { 0.0 };
            residual(0, sigmoid(z[0]) - y);
            // log(1 + e^z) - y z, without overflow.
            z[0].max(0.0) + (-z[0].abs()).exp().ln_1p() - y * z[0]
        } else {
            let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = z.iter().map(|v| (v - max).exp()).sum();
            for (o, &v) in z.iter().enumerate() {
                let target = if o == label { 1.0 } else { 0.0 };
                residual(o, (v - max).exp() / sum - target);
            }
            max + sum.ln() - z[label]
        }
    }
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// L-BFGS history length (scipy's and scikit-learn's `maxcor`).
const MEMORY: usize = 10;
/// Function evaluations allowed per line search (scikit-learn's `maxls`).
const MAX_LINE_SEARCH: usize = 50;
/// Sufficient-decrease constant of the Armijo condition.
const ARMIJO: f64 = 1e-4;

/// One stored L-BFGS pair: step `s`, gradient change `y` and `1 / (y.s)`.
struct Pair {
    s: Vec<f64>,
    y: Vec<f64>,
    rho: f64,
}

/// Minimises the convex objective from `theta` (updated in place) with L-BFGS and a
/// backtracking Armijo line search, stopping as scikit-learn's `lbfgs` solver does.
fn minimize(
    objective: &Objective,
    theta: &mut Vec<f64>,
    max_iter: usize,
    tolerance: f64,
) -> FitReport {
    let p = theta.len();
    let dot = |a: &[f64], b: &[f64]| objective.simd.dot(a, b);
    let mut grad = vec![0.0; p];
    let mut value = objective.value_and_gradient(theta, &mut grad);
    let mut trial = vec![0.0; p];
    let mut trial_grad = vec![0.0; p];
    let mut direction = vec![0.0; p];
    let mut history: VecDeque<Pair> = VecDeque::with_capacity(MEMORY);
    let mut alpha = [0.0; MEMORY];
    let mut iterations = 0;
    let stop = loop {
        if max_abs(&grad) <= tolerance {
            break Stop::Gradient;
        }
        if iterations >= max_iter {
            break Stop::MaxIter;
        }
        // Two-loop recursion for direction = -H grad: newest pair first, then oldest.
        direction.copy_from_slice(&grad);
        for (pair, a) in history.iter().rev().zip(alpha.iter_mut()) {
            *a = pair.rho * dot(&pair.s, &direction);
            axpy(-*a, &pair.y, &mut direction);
        }
        let first_step = match history.back() {
            Some(last) => {
                let gamma = dot(&last.s, &last.y) / dot(&last.y, &last.y);
                direction.iter_mut().for_each(|v| *v *= gamma);
                for (pair, a) in history.iter().zip(alpha[..history.len()].iter().rev()) {
                    let beta = pair.rho * dot(&pair.y, &direction);
                    axpy(a - beta, &pair.s, &mut direction);
                }
                1.0
            }
            // Without curvature information the first step has unit length, as in
            // scipy's L-BFGS-B.
            None => 1.0 / dot(&grad, &grad).sqrt(),
        };
        direction.iter_mut().for_each(|v| *v = -*v);
        let mut slope = dot(&grad, &direction);
        let mut step = first_step;
        if slope >= 0.0 {
            // Rounding cost H its positive definiteness: restart from steepest descent.
            history.clear();
            direction.iter_mut().zip(&grad).for_each(|(v, g)| *v = -g);
            slope = -dot(&grad, &grad);
            step = 1.0 / (-slope).sqrt();
        }

        let mut accepted = None;
        for _ in 0..MAX_LINE_SEARCH {
            for ((t, x), d) in trial.iter_mut().zip(theta.iter()).zip(&direction) {
                *t = x + step * d;
            }
            let trial_value = objective.value_and_gradient(&trial, &mut trial_grad);
            if trial_value <= value + ARMIJO * step * slope {
                accepted = Some(trial_value);
                break;
            }
            // Minimiser of the quadratic through value, slope and the trial value, kept
            // within [0.1, 0.5] of the step so the search neither stalls nor overshoots.
            let curvature = trial_value - value - slope * step;
            let next = if curvature.is_finite() && curvature > 0.0 {
                -slope * step * step / (2.0 * curvature)
            } else {
                0.1 * step
            };
            step = next.clamp(0.1 * step, 0.5 * step);
        }
        let Some(trial_value) = accepted else {
            break Stop::LineSearch;
        };

        // Accept the trial point; the old point and gradient, left in `trial` and
        // `trial_grad`, turn into the pair s = new - old (in `direction`) and
        // y = new gradient - old gradient (in `trial_grad`).
        std::mem::swap(theta, &mut trial);
        std::mem::swap(&mut grad, &mut trial_grad);
        for ((s, new), old) in direction.iter_mut().zip(theta.iter()).zip(&trial) {
            *s = new - old;
        }
        for (y, g) in trial_grad.iter_mut().zip(&grad) {
            *y = g - *y;
        }
        let sy = dot(&direction, &trial_grad);
        if sy > f64::EPSILON * dot(&trial_grad, &trial_grad) {
            let mut pair = if history.len() == MEMORY {
                history.pop_front().expect("full history")
            } else {
                Pair {
                    s: vec![0.0; p],
                    y: vec![0.0; p],
                    rho: 0.0,
                }
            };
            std::mem::swap(&mut pair.s, &mut direction);
            std::mem::swap(&mut pair.y, &mut trial_grad);
            pair.rho = 1.0 / sy;
            history.push_back(pair);
        }
        // Otherwise the pair lacks the curvature that keeps H positive definite and is
        // dropped, as scipy does.

        let decrease = (value - trial_value) / value.abs().max(trial_value.abs()).max(1.0);
        value = trial_value;
        iterations += 1;
        if decrease <= 64.0 * f64::EPSILON && max_abs(&grad) > tolerance {
            break Stop::Objective;
        }
    };
    FitReport {
        iterations,
        stop,
        gradient: max_abs(&grad),
    }
}

fn axpy(a: f64, x: &[f64], y: &mut [f64]) {
    y.iter_mut().zip(x).for_each(|(y, x)| *y += a * x);
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// The inner loops of the objective. Both implementations add the same products in the
/// same order (two four-lane partial sums per dot product, no fused multiply-add), so fits
/// give bit-identical results with or without AVX, and `dot4` gives exactly `dot` per row.
#[derive(Debug, Clone, Copy)]
enum Simd {
    #[cfg(target_arch = "x86_64")]
    Avx,
    Portable,
}

impl Simd {
    fn detect() -> Simd {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx") {
            return Simd::Avx;
        }
        Simd::Portable
    }

    /// `sum x[j] w[j]`.
    fn dot(self, x: &[f64], w: &[f64]) -> f64 {
        assert_eq!(x.len(), w.len());
        match self {
            // SAFETY: Avx is only chosen when the CPU has AVX; lengths are equal.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx => unsafe { avx::dot(x, w) },
            Simd::Portable => portable::dot(x, w),
        }
    }

    /// `dot(rows[r], w)` for four rows at once: each loaded chunk of `w` serves four rows.
    fn dot4(self, rows: [&[f64]; BLOCK], w: &[f64]) -> [f64; BLOCK] {
        assert!(rows.iter().all(|r| r.len() == w.len()));
        match self {
            // SAFETY: Avx is only chosen when the CPU has AVX; lengths are equal.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx => unsafe { avx::dot4(rows, w) },
            Simd::Portable => rows.map(|row| portable::dot(row, w)),
        }
    }

    /// `g[j] += a[0] rows[0][j] + ... + a[3] rows[3][j]`.
    fn axpy4(self, a: [f64; BLOCK], rows: [&[f64]; BLOCK], g: &mut [f64]) {
        assert!(rows.iter().all(|r| r.len() == g.len()));
        match self {
            // SAFETY: Avx is only chosen when the CPU has AVX; lengths are equal.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx => unsafe { avx::axpy4(a, rows, g) },
            Simd::Portable => portable::axpy4(a, rows, g),
        }
    }

    /// `dst[j] = src[j]` converted to f64 (exact).
    fn widen(self, src: &[f32], dst: &mut [f64]) {
        assert_eq!(src.len(), dst.len());
        match self {
            // SAFETY: Avx is only chosen when the CPU has AVX; lengths are equal.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx => unsafe { avx::widen(src, dst) },
            Simd::Portable => dst
                .iter_mut()
                .zip(src)
                .for_each(|(d, &s)| *d = f64::from(s)),
        }
    }
}

mod portable {
    use super::BLOCK;

    pub fn dot(x: &[f64], w: &[f64]) -> f64 {
        let body = x.len() / 8 * 8;
        let mut acc = [[0.0f64; 4]; 2];
        for (xc, wc) in x[..body].chunks_exact(8).zip(w[..body].chunks_exact(8)) {
            for (h, lanes) in acc.iter_mut().enumerate() {
                for (l, a) in lanes.iter_mut().enumerate() {
                    *a += xc[4 * h + l] * wc[4 * h + l];
                }
            }
        }
        finish(
            std::array::from_fn(|l| acc[0][l] + acc[1][l]),
            &x[body..],
            &w[body..],
        )
    }

    /// Reduces the four lanes of a dot product, then adds the tail that did not fill a
    /// chunk of eight.
    pub fn finish(lanes: [f64; 4], x: &[f64], w: &[f64]) -> f64 {
        let mut sum = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
        for (a, b) in x.iter().zip(w) {
            sum += a * b;
        }
        sum
    }

    pub fn axpy4(a: [f64; BLOCK], rows: [&[f64]; BLOCK], g: &mut [f64]) {
        for (j, gj) in g.iter_mut().enumerate() {
            let mut t = a[0] * rows[0][j];
            t += a[1] * rows[1][j];
            t += a[2] * rows[2][j];
            t += a[3] * rows[3][j];
            *gj += t;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use super::portable::finish;
    use super::BLOCK;
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support AVX and `x`, `w` must have equal lengths.
    #[target_feature(enable = "avx")]
    pub unsafe fn dot(x: &[f64], w: &[f64]) -> f64 {
        let body = x.len() / 8 * 8;
        let (xp, wp) = (x.as_ptr(), w.as_ptr());
        let (mut a0, mut a1) = (_mm256_setzero_pd(), _mm256_setzero_pd());
        let mut j = 0;
        while j < body {
            a0 = _mm256_add_pd(
                a0,
                _mm256_mul_pd(_mm256_loadu_pd(xp.add(j)), _mm256_loadu_pd(wp.add(j))),
            );
            a1 = _mm256_add_pd(
                a1,
                _mm256_mul_pd(
                    _mm256_loadu_pd(xp.add(j + 4)),
                    _mm256_loadu_pd(wp.add(j + 4)),
                ),
            );
            j += 8;
        }
        finish(lanes(_mm256_add_pd(a0, a1)), &x[body..], &w[body..])
    }

    /// # Safety
    /// The CPU must support AVX and every row must be as long as `w`.
    #[target_feature(enable = "avx")]
    pub unsafe fn dot4(rows: [&[f64]; BLOCK], w: &[f64]) -> [f64; BLOCK] {
        let body = w.len() / 8 * 8;
        let wp = w.as_ptr();
        let rp = rows.map(|r| r.as_ptr());
        let mut acc = [[_mm256_setzero_pd(); 2]; BLOCK];
        let mut j = 0;
        while j < body {
            let (w0, w1) = (_mm256_loadu_pd(wp.add(j)), _mm256_loadu_pd(wp.add(j + 4)));
            for (a, p) in acc.iter_mut().zip(rp) {
                a[0] = _mm256_add_pd(a[0], _mm256_mul_pd(_mm256_loadu_pd(p.add(j)), w0));
                a[1] = _mm256_add_pd(a[1], _mm256_mul_pd(_mm256_loadu_pd(p.add(j + 4)), w1));
            }
            j += 8;
        }
        std::array::from_fn(|r| {
            finish(
                lanes(_mm256_add_pd(acc[r][0], acc[r][1])),
                &rows[r][body..],
                &w[body..],
            )
        })
    }

    /// # Safety
    /// The CPU must support AVX and every row must be as long as `g`.
    #[target_feature(enable = "avx")]
    pub unsafe fn axpy4(a: [f64; BLOCK], rows: [&[f64]; BLOCK], g: &mut [f64]) {
        let n = g.len();
        let body = n / 4 * 4;
        let coef = a.map(|v| _mm256_set1_pd(v));
        let gp = g.as_mut_ptr();
        let mut j = 0;
        while j < body {
            let mut t = _mm256_mul_pd(coef[0], _mm256_loadu_pd(rows[0].as_ptr().add(j)));
            for r in 1..BLOCK {
                t = _mm256_add_pd(
                    t,
                    _mm256_mul_pd(coef[r], _mm256_loadu_pd(rows[r].as_ptr().add(j))),
                );
            }
            _mm256_storeu_pd(gp.add(j), _mm256_add_pd(_mm256_loadu_pd(gp.add(j)), t));
            j += 4;
        }
        for j in body..n {
            let mut t = a[0] * rows[0][j];
            t += a[1] * rows[1][j];
            t += a[2] * rows[2][j];
            t += a[3] * rows[3][j];
            g[j] += t;
        }
    }

    /// # Safety
    /// The CPU must support AVX and `src`, `dst` must have equal lengths.
    #[target_feature(enable = "avx")]
    pub unsafe fn widen(src: &[f32], dst: &mut [f64]) {
        let body = src.len() / 4 * 4;
        let mut j = 0;
        while j < body {
            _mm256_storeu_pd(
                dst.as_mut_ptr().add(j),
                _mm256_cvtps_pd(_mm_loadu_ps(src.as_ptr().add(j))),
            );
            j += 4;
        }
        for (d, &s) in dst[body..].iter_mut().zip(&src[body..]) {
            *d = f64::from(s);
        }
    }

    #[target_feature(enable = "avx")]
    unsafe fn lanes(v: __m256d) -> [f64; 4] {
        let mut out = [0.0; 4];
        _mm256_storeu_pd(out.as_mut_ptr(), v);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random(n: usize, d: usize, seed: u64) -> (Array2<f32>, ChaCha8Rng) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let x = Array2::from_shape_fn((n, d), |_| rng.gen_range(-2.0f32..2.0));
        (x, rng)
    }

    /// Central differences of the objective against its analytic gradient, on shapes
    /// that exercise the short last block (n % 4 != 0) and the dot tail (d % 16 != 0).
    #[test]
    fn gradient_matches_finite_differences() {
        for (outputs, seed) in [(1usize, 1u64), (3, 2)] {
            let (n, d) = (7, 19);
            let (x, mut rng) = random(n, d, seed);
            let classes = outputs.max(2);
            let labels: Vec<usize> = (0..n).map(|i| i % classes).collect();
            let objective = Objective {
                x: x.as_slice().unwrap(),
                n,
                d,
                labels: &labels,
                outputs,
                penalty: 0.3,
                simd: Simd::detect(),
            };
            let theta: Vec<f64> = (0..outputs * (d + 1))
                .map(|_| rng.gen_range(-0.5..0.5))
                .collect();
            let mut grad = vec![0.0; theta.len()];
            objective.value_and_gradient(&theta, &mut grad);
            let mut scratch = vec![0.0; theta.len()];
            for k in 0..theta.len() {
                let h = 1e-6;
                let mut plus = theta.clone();
                plus[k] += h;
                let mut minus = theta.clone();
                minus[k] -= h;
                let numeric = (objective.value_and_gradient(&plus, &mut scratch)
                    - objective.value_and_gradient(&minus, &mut scratch))
                    / (2.0 * h);
                assert!(
                    (numeric - grad[k]).abs() < 1e-7 * (1.0 + numeric.abs()),
                    "outputs {outputs}, parameter {k}: analytic {} numeric {numeric}",
                    grad[k]
                );
            }
        }
    }

    #[test]
    fn simd_kernels_match_the_portable_ones_bit_for_bit() {
        let simd = Simd::detect();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for len in 0..70 {
            let v = |rng: &mut ChaCha8Rng| -> Vec<f64> {
                (0..len).map(|_| rng.gen_range(-3.0..3.0)).collect()
            };
            let (x, w) = (v(&mut rng), v(&mut rng));
            assert_eq!(simd.dot(&x, &w).to_bits(), portable::dot(&x, &w).to_bits());
            let rows: Vec<Vec<f64>> = (0..BLOCK).map(|_| v(&mut rng)).collect();
            let rows: [&[f64]; BLOCK] = std::array::from_fn(|r| rows[r].as_slice());
            let four = simd.dot4(rows, &w);
            for r in 0..BLOCK {
                assert_eq!(four[r].to_bits(), portable::dot(rows[r], &w).to_bits());
            }
            let narrow: Vec<f32> = x.iter().map(|&v| v as f32).collect();
            let mut wide = vec![0.0; len];
            simd.widen(&narrow, &mut wide);
            assert!(wide.iter().zip(&narrow).all(|(a, &b)| *a == f64::from(b)));
            let a = [0.5, -1.25, 3.0, 0.1];
            let mut g1 = v(&mut rng);
            let mut g2 = g1.clone();
            simd.axpy4(a, rows, &mut g1);
            portable::axpy4(a, rows, &mut g2);
            assert!(
                g1.iter().zip(&g2).all(|(a, b)| a.to_bits() == b.to_bits()),
                "len {len}"
            );
        }
    }

    #[test]
    fn lbfgs_meets_a_tight_tolerance() {
        let (x, mut rng) = random(60, 5, 4);
        let labels: Vec<usize> = (0..60)
            .map(|i| usize::from(f64::from(x[[i, 0]] - x[[i, 1]]) + rng.gen_range(-1.0..1.0) > 0.0))
            .collect();
        let options = FitOptions {
            c: 1.0,
            max_iter: 1000,
            tolerance: 1e-10,
        };
        let model = fit_logistic(x.view(), &labels, 2, &options, None).unwrap();
        assert!(model.report.converged(), "{:?}", model.report);
        assert!(model.report.gradient <= 1e-10 || model.report.stop == Stop::Objective);
        // Warm-starting from the optimum needs no iteration at all.
        let looser = FitOptions {
            tolerance: 1e-8,
            ..options
        };
        let again = fit_logistic(x.view(), &labels, 2, &looser, Some(&model)).unwrap();
        assert_eq!(again.report.iterations, 0);
        let capped = fit_logistic(
            x.view(),
            &labels,
            2,
            &FitOptions {
                max_iter: 2,
                ..options
            },
            None,
        )
        .unwrap();
        assert_eq!(
            (capped.report.stop, capped.report.iterations),
            (Stop::MaxIter, 2)
        );
    }

    #[test]
    fn standardizer_matches_hand_values_and_keeps_constant_columns_finite() {
        let x = ndarray::array![[1.0f32, 5.0, 0.0], [3.0, 5.0, 10.0], [100.0, 5.0, 7.0]];
        let scaler = Standardizer::fit(x.view(), &[0, 1]);
        // Column 0 over rows 0, 1: mean 2, population std 1; column 1 is constant.
        assert_eq!(scaler.mean, vec![2.0, 5.0, 5.0]);
        assert_eq!(scaler.scale, vec![1.0, 1.0, 5.0]);
        let z = scaler.transform(x.view(), &[2, 0]);
        assert_eq!(z, ndarray::array![[98.0f32, 0.0, 0.4], [-1.0, 0.0, -1.0]]);
    }

    #[test]
    fn complement_lists_the_rest_in_order() {
        assert_eq!(complement(&[0, 3, 4], 6), vec![1, 2, 5]);
        assert_eq!(complement(&[], 2), vec![0, 1]);
    }
}
