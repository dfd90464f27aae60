//! Per-fold feature standardisation, as scikit-learn's `StandardScaler`.

use ndarray::{Array2, ArrayView2};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
