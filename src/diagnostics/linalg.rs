//! The linear algebra behind the residual-stream metrics: the `T x T` Gram matrix
//! `X X^T` of a token matrix, its mean-centred and row-normalised variant, and the
//! eigenvalues of a symmetric matrix.
//!
//! Everything is computed in f64. Singular values come from the eigenvalues of the
//! Gram matrix (their squares), found by Householder tridiagonalisation and implicit QL,
//! so no LAPACK is needed.

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
