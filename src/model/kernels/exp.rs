//! `exp` sixteen floats at a time, for SiLU, tanh-GELU and the softmax.
//!
//! libm's `expf`, one value per call, was 7-8% of a bf16 `harness embed` of SmolLM2 on
//! two threads (perf, Xeon family 6 model 167), once the matrix products ran on AMX.
//! No crate we depend on offers a vector `exp` (candle's CPU ops call libm per element),
//! so this is the Cephes single-precision polynomial: within 2 ulp of f64 (tested
//! below), against libm's 0.5 ulp, and every parity test against transformers still
//! passes with it. Without AVX-512 every function here falls back to libm, value by
//! value.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::mem::MaybeUninit;

#[cfg(target_arch = "x86_64")]
use super::avx512;

/// `silu(g) * u` element-wise into `out`: `g / (1 + e^-g) * u`. Returns `out`, written.
pub fn silu_mul<'a>(out: &'a mut [MaybeUninit<f32>], gate: &[f32], up: &[f32]) -> &'a mut [f32] {
    sigmoid_mul(out, gate, up, true)
}

/// `gelu_tanh(g) * u` element-wise into `out`. `0.5 g (1 + tanh(c (g + 0.044715 g^3)))`
/// equals `g / (1 + e^(-2 c (g + 0.044715 g^3)))`, so it shares SiLU's loop.
pub fn gelu_tanh_mul<'a>(
    out: &'a mut [MaybeUninit<f32>],
    gate: &[f32],
    up: &[f32],
) -> &'a mut [f32] {
    sigmoid_mul(out, gate, up, false)
}

/// `row <- softmax(row)`: `e^(x - max)` over the row, divided by its sum.
pub fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: the CPU has AVX-512F.
        return unsafe { x86::softmax(row, max) };
    }
    let mut sum = 0f32;
    for x in row.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|x| *x *= inv);
}

/// SiLU when `silu`, else tanh-GELU: the sigmoid's argument is `g` or
/// `2c (g + 0.044715 g^3)`. Without AVX-512, the reference formulas value by value.
fn sigmoid_mul<'a>(
    out: &'a mut [MaybeUninit<f32>],
    gate: &[f32],
    up: &[f32],
    silu: bool,
) -> &'a mut [f32] {
    assert!(out.len() == gate.len() && out.len() == up.len());
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: the CPU has AVX-512F; the slices have equal lengths; the kernel
        // writes every value of `out`.
        return unsafe {
            x86::sigmoid_mul(out.as_mut_ptr() as *mut f32, gate, up, silu);
            super::written(out)
        };
    }
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        o.write(
            if silu {
                g / (1.0 + (-g).exp())
            } else {
                const C: f32 = 0.797_884_6; // sqrt(2 / pi)
                0.5 * g * (1.0 + (C * (g + 0.044_715 * g * g * g)).tanh())
            } * u,
        );
    }
    // SAFETY: the loop wrote every value.
    unsafe { super::written(out) }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;

    /// `e^x` for sixteen values: `x = n ln2 + r` with `|r| <= ln2 / 2`, a degree-7
    /// polynomial for `e^r` (Cephes `expf`), then `scalef` by `2^n`, which also gives 0
    /// and infinity past the f32 range. NaN stays NaN.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn exp16(x: __m512) -> __m512 {
        let xc = _mm512_min_ps(
            _mm512_max_ps(x, _mm512_set1_ps(-104.0)),
            _mm512_set1_ps(89.0),
        );
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(xc, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        // ln 2 in two parts, so `n * hi` is exact.
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), xc);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_2e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let r2 = _mm512_mul_ps(r, r);
        let e = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0)));
        let e = _mm512_scalef_ps(e, n);
        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
        _mm512_mask_mov_ps(e, nan, x)
    }

    /// The `n` values from `p` (16 at most), zeros past them.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load(p: *const f32, n: usize) -> __m512 {
        _mm512_maskz_loadu_ps(mask(n), p)
    }

    #[inline]
    fn mask(n: usize) -> __mmask16 {
        if n >= 16 {
            0xffff
        } else {
            (1u16 << n) - 1
        }
    }

    /// Writes `gate.len()` values from `out`.
    ///
    /// # Safety
    /// AVX-512F present; `up` as long as `gate`; `out` has room for them.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn sigmoid_mul(out: *mut f32, gate: &[f32], up: &[f32], silu: bool) {
        let one = _mm512_set1_ps(1.0);
        for i in (0..gate.len()).step_by(16) {
            let n = (gate.len() - i).min(16);
            let g = load(gate.as_ptr().add(i), n);
            let u = load(up.as_ptr().add(i), n);
            let arg = if silu {
                g
            } else {
                // 2 sqrt(2/pi) (g + 0.044715 g^3)
                let g3 = _mm512_mul_ps(_mm512_mul_ps(g, g), g);
                let inner = _mm512_fmadd_ps(g3, _mm512_set1_ps(0.044_715), g);
                _mm512_mul_ps(inner, _mm512_set1_ps(2.0 * 0.797_884_6))
            };
            let e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), arg));
            let s = _mm512_div_ps(g, _mm512_add_ps(one, e));
            _mm512_mask_storeu_ps(out.add(i), mask(n), _mm512_mul_ps(s, u));
        }
    }

    /// # Safety
    /// AVX-512F present.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn softmax(row: &mut [f32], max: f32) {
        let m = _mm512_set1_ps(max);
        let mut sum = _mm512_setzero_ps();
        for i in (0..row.len()).step_by(16) {
            let n = (row.len() - i).min(16);
            let p = row.as_mut_ptr().add(i);
            let e = exp16(_mm512_sub_ps(load(p, n), m));
            sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(mask(n), e));
            _mm512_mask_storeu_ps(p, mask(n), e);
        }
        let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sum));
        for i in (0..row.len()).step_by(16) {
            let n = (row.len() - i).min(16);
            let p = row.as_mut_ptr().add(i);
            _mm512_mask_storeu_ps(p, mask(n), _mm512_mul_ps(load(p, n), inv));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values across the range: tiny, ordinary, near overflow and underflow.
    fn inputs() -> Vec<f32> {
        let mut v: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 0.05).collect();
        v.extend([
            -120.0, -103.0, -87.5, -20.0, -1e-8, 0.0, 1e-8, 20.0, 88.5, 100.0,
        ]);
        v
    }

    #[test]
    fn exp_is_within_two_ulp_of_f64() {
        #[cfg(target_arch = "x86_64")]
        if avx512() {
            let x = inputs();
            for chunk in x.chunks(16) {
                let mut got = [0f32; 16];
                // SAFETY: AVX-512F checked; 16 floats in `got`.
                unsafe {
                    let e = x86::exp16(_mm512_maskz_loadu_ps(
                        (1u32 << chunk.len()).wrapping_sub(1) as u16,
                        chunk.as_ptr(),
                    ));
                    _mm512_storeu_ps(got.as_mut_ptr(), e);
                }
                for (&v, &g) in chunk.iter().zip(&got) {
                    let want = (v as f64).exp();
                    let tol = 2.0 * f32::EPSILON as f64 * want + f32::MIN_POSITIVE as f64;
                    assert!(
                        (g as f64 - want).abs() <= tol
                            || (want > f32::MAX as f64 && g.is_infinite()),
                        "exp({v}) = {g}, want {want}"
                    );
                }
            }
            return;
        }
        println!("skipped: the vector exp needs AVX-512F, which this CPU lacks");
    }

    #[test]
    fn activations_and_softmax_match_the_scalar_formulas() {
        let g = inputs();
        let u: Vec<f32> = (0..g.len()).map(|i| 1.0 + (i % 7) as f32 * 0.25).collect();
        let mut buf = vec![MaybeUninit::uninit(); g.len()];
        let out = silu_mul(&mut buf, &g, &u);
        for ((&o, &g), &u) in out.iter().zip(&g).zip(&u) {
            let want = g as f64 / (1.0 + (-g as f64).exp()) * u as f64;
            assert!(
                (o as f64 - want).abs() <= 4e-7 * want.abs() + 1e-30,
                "silu({g})"
            );
        }
        let out = gelu_tanh_mul(&mut buf, &g, &u);
        for ((&o, &g), &u) in out.iter().zip(&g).zip(&u) {
            let g64 = g as f64;
            let inner = (2.0 / std::f64::consts::PI).sqrt() * (g64 + 0.044_715 * g64.powi(3));
            // The sigmoid form: `1 + tanh` cancels to nothing for large negative `g`,
            // even in f64.
            let want = g64 / (1.0 + (-2.0 * inner).exp()) * u as f64;
            // The argument is computed in f32, so its rounding error grows with it.
            let rel = 4e-7 + 4.0 * f32::EPSILON as f64 * (2.0 * inner).abs();
            assert!(
                (o as f64 - want).abs() <= rel * want.abs() + 1e-30,
                "gelu({g})"
            );
        }
        for len in [1, 5, 16, 17, 40] {
            let mut row: Vec<f32> = g[1900..1900 + len].to_vec();
            let max = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
            let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
            let want: Vec<f64> = row.iter().map(|&x| (x as f64 - max).exp() / sum).collect();
            softmax_in_place(&mut row);
            for (&p, &w) in row.iter().zip(&want) {
                assert!((p as f64 - w).abs() <= 4e-7 * w + 1e-30, "softmax of {len}");
            }
        }
    }
}
