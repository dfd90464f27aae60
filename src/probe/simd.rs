//! The inner loops of the logistic objective (dot products, four-row blocks, f32 to f64
//! widening), with AVX where the CPU has it and a portable version that adds in the same
//! order.

/// Rows per block: each loaded chunk of a weight row serves four examples' scores, and
/// each pass over a gradient row folds in four examples, a quarter of the loads and
/// stores of one at a time.
pub(super) const BLOCK: usize = 4;

/// The inner loops of the objective. Both implementations add the same products in the
/// same order (two four-lane partial sums per dot product, no fused multiply-add), so fits
/// give bit-identical results with or without AVX, and `dot4` gives exactly `dot` per row.
#[derive(Debug, Clone, Copy)]
pub(super) enum Simd {
    #[cfg(target_arch = "x86_64")]
    Avx,
    Portable,
}

impl Simd {
    pub(super) fn detect() -> Simd {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx") {
            return Simd::Avx;
        }
        Simd::Portable
    }

    /// `sum x[j] w[j]`.
    pub(super) fn dot(self, x: &[f64], w: &[f64]) -> f64 {
        assert_eq!(x.len(), w.len());
        match self {
            // SAFETY: Avx is only chosen when the CPU has AVX; lengths are equal.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx => unsafe { avx::dot(x, w) },
            Simd::Portable => portable::dot(x, w),
        }
    }

    /// `dot(rows[r], w)` for four rows at once: each loaded chunk of `w` serves four rows.
    pub(super) fn dot4(self, rows: [&[f64]; BLOCK], w: &[f64]) -> [f64; BLOCK] {
        assert!(rows.iter().all(|r| r.len() == w.len()));
        match self {
            // SAFETY: Avx is only chosen when the CPU has AVX; lengths are equal.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx => unsafe { avx::dot4(rows, w) },
            Simd::Portable => rows.map(|row| portable::dot(row, w)),
        }
    }

    /// `g[j] += a[0] rows[0][j] + ... + a[3] rows[3][j]`.
    pub(super) fn axpy4(self, a: [f64; BLOCK], rows: [&[f64]; BLOCK], g: &mut [f64]) {
        assert!(rows.iter().all(|r| r.len() == g.len()));
        match self {
            // SAFETY: Avx is only chosen when the CPU has AVX; lengths are equal.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx => unsafe { avx::axpy4(a, rows, g) },
            Simd::Portable => portable::axpy4(a, rows, g),
        }
    }

    /// `dst[j] = src[j]` converted to f64 (exact).
    pub(super) fn widen(self, src: &[f32], dst: &mut [f64]) {
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
}
