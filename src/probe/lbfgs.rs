//! The optimiser behind the probe's fits: L-BFGS with a backtracking Armijo line search,
//! stopping as scikit-learn's `lbfgs` solver does, and reporting how it stopped.

use std::collections::VecDeque;

use serde::Serialize;

use super::logistic::Objective;

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
pub(super) fn minimize(
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

#[cfg(test)]
mod tests {
    use super::Stop;
    use crate::probe::LogisticParams;
    use linfa::prelude::*;
    use ndarray::{Array1, Array2};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn lbfgs_meets_a_tight_tolerance() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let x = Array2::from_shape_fn((60, 5), |_| rng.gen_range(-2.0f32..2.0));
        let labels: Array1<usize> = (0..60)
            .map(|i| usize::from(f64::from(x[[i, 0]] - x[[i, 1]]) + rng.gen_range(-1.0..1.0) > 0.0))
            .collect();
        let data = Dataset::new(x, labels);
        let params = LogisticParams::default()
            .c(1.0)
            .max_iterations(1000)
            .gradient_tolerance(1e-10);
        let model = params.fit(&data).unwrap();
        assert!(model.report.converged(), "{:?}", model.report);
        assert!(model.report.gradient <= 1e-10 || model.report.stop == Stop::Objective);
        // Warm-starting from the optimum needs no iteration at all.
        let again = params
            .gradient_tolerance(1e-8)
            .fit_with(Some(&model), &data)
            .unwrap();
        assert_eq!(again.report.iterations, 0);
        let capped = params.max_iterations(2).fit(&data).unwrap();
        assert_eq!(
            (capped.report.stop, capped.report.iterations),
            (Stop::MaxIter, 2)
        );
    }
}
