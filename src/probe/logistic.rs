//! The probe's classifier as a linfa estimator: L2-regularised binary or multinomial
//! logistic regression with scikit-learn's objective, fitted by this crate's L-BFGS.
//!
//! The objective and the swap for linfa-logistic are documented on [`LogisticParams`].
//!
//! # Why the fit is not linfa-logistic's
//!
//! linfa-logistic's fit spends most of its time outside the arithmetic: per L-BFGS
//! iteration it runs three forward and two backward products (argmin asks for the cost
//! and the gradient separately, then the gradient again), and each goes through
//! `matrixmultiply`, which copies ("packs") the whole feature matrix on every call. It
//! also cannot report whether it converged. Here one pass over the rows computes the
//! loss and the gradient together, the features stay in f32 (half the memory traffic;
//! all arithmetic is f64), and the L-BFGS reports iterations and why it stopped.
//! Measurements are in `docs/benchmarks.md`.

use std::fmt;

use anyhow::{bail, ensure, Result};
use linfa::dataset::{AsSingleTargets, DatasetBase};
use linfa::traits::{Fit, FitWith, PredictInplace};
use ndarray::{Array1, Array2, ArrayBase, ArrayView2, CowArray, Data, Ix2};

use super::lbfgs::{minimize, FitReport};
use super::simd::{Simd, BLOCK};

/// Settings of one logistic-regression fit: linfa's parameters type for
/// [`LogisticModel`]. The defaults are scikit-learn's (`C = 1`, `max_iter = 100`,
/// `tol = 1e-4`).
///
/// # Model and objective
///
/// Two classes get one weight vector and the logistic loss; more classes get the
/// multinomial (softmax) model with one weight vector per class. The objective is
/// scikit-learn's `LogisticRegression` objective exactly,
///
/// ```text
/// (1/n) sum_i loss_i  +  1/(2 C n) ||W||^2        (intercepts not penalised)
/// ```
///
/// and the stopping rule is scikit-learn's `lbfgs` one: largest absolute gradient
/// component `<= tolerance` (its `tol`), or a relative decrease of the objective of at
/// most 64 machine epsilons, or `max_iter` iterations; [`FitReport`] says which.
///
/// # A linfa estimator
///
/// It implements linfa's [`Fit`] (and [`FitWith`], which warm-starts from an earlier
/// model) on a `linfa::Dataset` whose records are an `[n, d]` array of standardised
/// features (f32, or f64 rounded to f32, see [`Feature`]) and whose targets are class
/// indices `0..k`, every class present. The [`LogisticModel`] implements
/// [`PredictInplace`], so linfa's `Predict` gives an `Array1<usize>` of classes.
/// linfa-logistic 0.8.1 minimises `sum_i loss_i + alpha/2 ||W||^2` with the intercept
/// unpenalised (`logistic_loss` / `multi_logistic_loss` in its `lib.rs`), which is `n`
/// times the objective above when `alpha = 1/C`, so swapping estimators is one line:
///
/// ```
/// use harness::probe::LogisticParams;
/// use linfa::prelude::*;
/// use ndarray::array;
///
/// let records = array![[-1.5, 0.2], [-0.5, -0.1], [0.5, 0.1], [1.5, -0.2]];
/// let data = Dataset::new(records, array![0usize, 0, 1, 1]);
/// let ours = LogisticParams::default().c(10.0).fit(&data).unwrap();
/// let linfa = linfa_logistic::LogisticRegression::default().alpha(0.1).fit(&data).unwrap();
/// let (a, b): (ndarray::Array1<usize>, ndarray::Array1<usize>) =
///     (ours.predict(&data), linfa.predict(&data));
/// assert_eq!(a, b);
/// ```
///
/// `tests/probe.rs` fits both through one generic function and checks the mapping
/// against linfa itself and these fits against scikit-learn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogisticParams {
    c: f64,
    max_iter: usize,
    tolerance: f64,
}

impl Default for LogisticParams {
    fn default() -> Self {
        LogisticParams {
            c: 1.0,
            max_iter: 100,
            tolerance: 1e-4,
        }
    }
}

impl LogisticParams {
    /// Inverse regularisation strength (scikit-learn's `C`; linfa-logistic's `alpha` is
    /// `1 / C`).
    pub fn c(mut self, c: f64) -> Self {
        self.c = c;
        self
    }

    /// Iteration limit (scikit-learn's `max_iter`).
    pub fn max_iterations(mut self, max_iter: usize) -> Self {
        self.max_iter = max_iter;
        self
    }

    /// Stop once the largest absolute gradient component is at most this (scikit-learn's
    /// `tol`).
    pub fn gradient_tolerance(mut self, tolerance: f64) -> Self {
        self.tolerance = tolerance;
        self
    }
}

/// Why a fit could not run (mismatched lengths, a missing class, an invalid setting), as
/// one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FitError(String);

impl fmt::Display for FitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FitError {}

// linfa's `Fit` asks every estimator's error type to take linfa's own errors.
impl From<linfa::Error> for FitError {
    fn from(error: linfa::Error) -> Self {
        FitError(error.to_string())
    }
}

/// Record types the probe fits and predicts: f32, the type it keeps features in, is
/// borrowed as it is; f64 (linfa's usual type) is rounded to f32 first.
pub trait Feature: Copy {
    /// `x` as f32, borrowed where it already is.
    fn as_f32<S: Data<Elem = Self>>(x: &ArrayBase<S, Ix2>) -> CowArray<'_, f32, Ix2>;
}

impl Feature for f32 {
    fn as_f32<S: Data<Elem = f32>>(x: &ArrayBase<S, Ix2>) -> CowArray<'_, f32, Ix2> {
        x.view().into()
    }
}

impl Feature for f64 {
    fn as_f32<S: Data<Elem = f64>>(x: &ArrayBase<S, Ix2>) -> CowArray<'_, f32, Ix2> {
        x.mapv(|v| v as f32).into()
    }
}

impl<F, D, T> Fit<ArrayBase<D, Ix2>, T, FitError> for LogisticParams
where
    F: Feature,
    D: Data<Elem = F>,
    T: AsSingleTargets<Elem = usize>,
{
    type Object = LogisticModel;

    /// Fits on standardised records with targets `0..k`, every class present (`k` is the
    /// largest target plus one), minimising scikit-learn's objective ([`LogisticParams`]).
    ///
    /// # Errors
    /// Mismatched lengths, no feature columns, fewer than two classes, a class without
    /// examples, or a non-positive `C`.
    fn fit(&self, dataset: &DatasetBase<ArrayBase<D, Ix2>, T>) -> Result<LogisticModel, FitError> {
        self.fit_with(None, dataset)
    }
}

impl<'a, F, D, T> FitWith<'a, ArrayBase<D, Ix2>, T, FitError> for LogisticParams
where
    F: Feature,
    D: Data<Elem = F>,
    T: AsSingleTargets<Elem = usize>,
{
    type ObjectIn = Option<&'a LogisticModel>;
    type ObjectOut = LogisticModel;

    /// As [`Fit::fit`], warm-started from `init` (a model with the same shape) when
    /// given: the minimum does not depend on it, only the work to reach it.
    ///
    /// # Errors
    /// Those of [`Fit::fit`], and an `init` of the wrong shape.
    fn fit_with(
        &self,
        init: Option<&'a LogisticModel>,
        dataset: &'a DatasetBase<ArrayBase<D, Ix2>, T>,
    ) -> Result<LogisticModel, FitError> {
        let labels: Vec<usize> = dataset.as_single_targets().iter().copied().collect();
        let num_classes = labels.iter().max().map_or(0, |m| m + 1);
        fit(
            F::as_f32(dataset.records()).view(),
            &labels,
            num_classes,
            self,
            init,
        )
        .map_err(|e| FitError(e.to_string()))
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

impl<F: Feature, D: Data<Elem = F>> PredictInplace<ArrayBase<D, Ix2>, Array1<usize>>
    for LogisticModel
{
    /// The predicted class of each standardised row of `x`: class 1 when the score is
    /// positive for two classes, else the first class with the largest score (as
    /// scikit-learn).
    fn predict_inplace(&self, x: &ArrayBase<D, Ix2>, y: &mut Array1<usize>) {
        assert_eq!(x.nrows(), y.len(), "one target per row");
        for (class, row) in y.iter_mut().zip(self.decision(F::as_f32(x).view()).rows()) {
            *class = if row.len() == 1 {
                usize::from(row[0] > 0.0)
            } else {
                let mut best = 0;
                for (c, &z) in row.iter().enumerate() {
                    if z > row[best] {
                        best = c;
                    }
                }
                best
            };
        }
    }

    fn default_target(&self, x: &ArrayBase<D, Ix2>) -> Array1<usize> {
        Array1::zeros(x.nrows())
    }
}

/// Fits on standardised features `x` `[n, d]` with labels in `0..num_classes` (every
/// class must occur); see [`FitWith::fit_with`].
fn fit(
    x: ArrayView2<f32>,
    labels: &[usize],
    num_classes: usize,
    params: &LogisticParams,
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
        params.c > 0.0 && params.c.is_finite(),
        "C must be positive and finite, got {}",
        params.c
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
        penalty: 1.0 / (params.c * n as f64),
        simd: Simd::detect(),
    };
    let report = minimize(&objective, &mut theta, params.max_iter, params.tolerance);
    let intercept = theta.split_off(outputs * d);
    Ok(LogisticModel {
        coef: Array2::from_shape_vec((outputs, d), theta).expect("outputs * d weights"),
        intercept,
        report,
    })
}

/// scikit-learn's objective on row-major standardised features. Parameters are laid out
/// as `outputs` weight rows of length `d`, then `outputs` intercepts; `outputs` is 1 for
/// the binary model.
pub(super) struct Objective<'a> {
    x: &'a [f32],
    n: usize,
    d: usize,
    labels: &'a [usize],
    outputs: usize,
    /// `1 / (C n)`: the L2 weight of the per-example mean loss.
    penalty: f64,
    pub(super) simd: Simd,
}

impl Objective<'_> {
    /// The objective at `theta`; writes its gradient into `grad`. One pass over the rows
    /// computes scores, loss and gradient together.
    pub(super) fn value_and_gradient(&self, theta: &[f64], grad: &mut [f64]) -> f64 {
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn gradient_matches_finite_differences() {
        for (outputs, seed) in [(1usize, 1u64), (3, 2)] {
            let (n, d) = (7, 19);
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let x = Array2::from_shape_fn((n, d), |_| rng.gen_range(-2.0f32..2.0));
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
}
