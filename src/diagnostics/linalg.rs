//! The linear algebra behind the residual-stream metrics: the `T x T` Gram matrix
//! `X X^T` of a token matrix, its mean-centred and row-normalised variant, and the
//! eigenvalues of a symmetric matrix.
//!
//! Everything is computed in f64. Singular values come from the eigenvalues of the
//! Gram matrix (their squares), found by nalgebra's symmetric eigensolver (Householder
//! tridiagonalisation, then implicit QR with Wilkinson shifts), so no LAPACK is needed.

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

/// Eigenvalues of the symmetric `n x n` row-major matrix `a`, in descending order; all
/// NaN when `a` holds a value that is not finite.
pub fn symmetric_eigenvalues(a: Vec<f64>, n: usize) -> Vec<f64> {
    assert_eq!(a.len(), n * n);
    // nalgebra iterates until convergence with no cap, which a NaN would never reach.
    if a.iter().any(|v| !v.is_finite()) {
        return vec![f64::NAN; n];
    }
    // Read column-major, a symmetric matrix is itself, so the row-major buffer serves.
    let mut e: Vec<f64> = nalgebra::DMatrix::from_vec(n, n, a)
        .symmetric_eigenvalues()
        .iter()
        .copied()
        .collect();
    e.sort_by(|x, y| y.total_cmp(x));
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostics::testing::{close, f32s, noise};

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
}
