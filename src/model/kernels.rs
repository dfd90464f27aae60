//! CPU kernels for the hot path of the forward pass.
//!
//! candle's generic ops cost several copies per attention layer (narrow, reshape,
//! transpose, contiguous) and its matrix product is slower than `matrixmultiply`'s
//! (figures in `docs/benchmarks.md`). These kernels fuse what can be fused,
//! compute attention only for real (unpadded) query rows and visible keys, and
//! write results straight into the layout the next step reads.

use std::mem::MaybeUninit;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Storage, Tensor};
use rayon::prelude::*;

mod attention;
pub mod exp;
pub mod gemm;

pub use attention::{attention, AttentionSpec};

/// Whether the CPU has AVX-512F, which the vector paths of these kernels need.
fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `x W^T` for rows `x: [m, k]` and a weight `w: [n, k]`. A bf16/f16 weight is
/// widened to f32 for this one product (the kernels compute in f32).
pub fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (m, k) = x.dims2()?;
    let (n, k2) = w.dims2()?;
    if k != k2 {
        bail!("matmul: input has {k} columns, weight has {k2}");
    }
    let w = &w.to_dtype(DType::F32)?;
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    with_f32(x, |a| {
        with_f32(w, |b| {
            // SAFETY: the slices hold m*k and n*k floats with the strides given;
            // `out` has room for m*n floats, which sgemm writes without reading
            // (beta = 0), so every element is initialised before `set_len`.
            unsafe {
                matrixmultiply::sgemm(
                    m,
                    k,
                    n,
                    1.0,
                    a.as_ptr(),
                    k as isize,
                    1,
                    b.as_ptr(),
                    1,
                    k as isize,
                    0.0,
                    out.as_mut_ptr(),
                    n as isize,
                    1,
                );
                out.set_len(m * n);
            }
        })
    })??;
    Ok(Tensor::from_vec(out, (m, n), &Device::Cpu)?)
}

/// A new vector of `len` floats made in parallel, `chunk` at a time: `fill(start,
/// values)` must write every value of the chunk that starts at `start`, then may read
/// them back through [`written`]. The buffer is not zeroed first: zeroing the
/// activation buffers (a `memset` each, evicting what the next pass reads) was 5% of
/// a bf16 embed of SmolLM2 (perf, docs/benchmarks.md).
pub fn par_filled(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, dst)| fill(i * chunk, dst));
    // SAFETY: `fill` wrote every value of every chunk, and the chunks cover `len`.
    unsafe { out.set_len(len) };
    out
}

/// `values` once every one has been written.
///
/// # Safety
/// Every value of `values` was written.
pub unsafe fn written(values: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    &mut *(values as *mut [MaybeUninit<f32>] as *mut [f32])
}

/// `sum x^2` of each row of `dim` values in `x`, into `out` (one per row), each added
/// in the row's order from 0, exactly as `iter().map(|v| v * v).sum()`: candle's
/// `rms_norm` sums that way, and so must a norm that matches it bit for bit. With
/// AVX-512, sixteen rows advance together, one gathered vector per column: a serial
/// sum waits on each addition, and was about 400 ns per row of 576 against 130 this
/// way (one core of the Xeon of docs/benchmarks.md).
pub fn sums_of_squares(x: &[f32], dim: usize, out: &mut [f32]) {
    assert_eq!(
        x.len(),
        dim * out.len(),
        "sums_of_squares: rows do not match"
    );
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if dim > 0 && dim * 16 <= i32::MAX as usize && avx512() {
        for (rows, sums) in x.chunks_exact(16 * dim).zip(out.chunks_exact_mut(16)) {
            // SAFETY: the CPU has AVX-512F; `rows` holds 16 rows of `dim`, whose
            // offsets fit in i32.
            sums.copy_from_slice(&unsafe { x86::sums_of_squares16(rows, dim) });
        }
        done = out.len() / 16 * 16;
    }
    for (row, sum) in x[done * dim..].chunks(dim.max(1)).zip(&mut out[done..]) {
        *sum = row.iter().map(|v| v * v).sum();
    }
}

/// `x / m * w` element-wise into `out` (`x / m` without `w`), each value divided then
/// multiplied as the scalar expression is; sixteen at a time with AVX-512, where the
/// compiler's baseline loop divides four at a time. Returns `out`, written.
pub fn divide_scale<'a>(
    out: &'a mut [MaybeUninit<f32>],
    x: &[f32],
    m: f32,
    w: Option<&[f32]>,
) -> &'a mut [f32] {
    assert!(out.len() == x.len() && w.is_none_or(|w| w.len() == x.len()));
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: the CPU has AVX-512F; the lengths match; every value is written.
        return unsafe {
            x86::divide_scale(out.as_mut_ptr() as *mut f32, x, m, w);
            written(out)
        };
    }
    match w {
        Some(w) => out
            .iter_mut()
            .zip(x)
            .zip(w)
            .for_each(|((o, x), w)| _ = o.write(x / m * w)),
        None => out.iter_mut().zip(x).for_each(|(o, x)| _ = o.write(x / m)),
    }
    // SAFETY: the loop wrote every value.
    unsafe { written(out) }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// [`super::divide_scale`]: writes `x.len()` values from `out`.
    ///
    /// # Safety
    /// AVX-512F present; `out` has room for `x.len()` values; `w`, if any, as long.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn divide_scale(out: *mut f32, x: &[f32], m: f32, w: Option<&[f32]>) {
        let m = _mm512_set1_ps(m);
        for i in (0..x.len()).step_by(16) {
            let mask = (((1u32 << (x.len() - i).min(16)) - 1) & 0xffff) as __mmask16;
            let mut v = _mm512_div_ps(_mm512_maskz_loadu_ps(mask, x.as_ptr().add(i)), m);
            if let Some(w) = w {
                v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(mask, w.as_ptr().add(i)));
            }
            _mm512_mask_storeu_ps(out.add(i), mask, v);
        }
    }

    /// [`super::sums_of_squares`] of 16 rows of `dim`: lane `r` is row `r`'s sum.
    ///
    /// # Safety
    /// AVX-512F present; `x` holds 16 rows of `dim`, and `15 * dim` fits in i32.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn sums_of_squares16(x: &[f32], dim: usize) -> [f32; 16] {
        let rows = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let offsets = _mm512_mullo_epi32(rows, _mm512_set1_epi32(dim as i32));
        let mut sum = _mm512_setzero_ps();
        for j in 0..dim {
            let v = _mm512_i32gather_ps::<4>(offsets, x.as_ptr().add(j));
            // Separate multiply and add, as the scalar sum: no fused rounding.
            sum = _mm512_add_ps(sum, _mm512_mul_ps(v, v));
        }
        std::mem::transmute::<__m512, [f32; 16]>(sum)
    }
}

/// The gated MLPs' non-linearities, computed in f32 (see [`exp`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Silu,
    GeluTanh,
}

/// `act(gate) * up` for rows `[n, 2 * inter]` holding gate then up; returns `[n, inter]`,
/// each row passed to `finish` (a rounding) as it is made, while in cache.
pub fn gated_act(
    h: &Tensor,
    inter: usize,
    act: Act,
    finish: impl Fn(&mut [f32]) + Sync,
) -> Result<Tensor> {
    let (n, width) = h.dims2()?;
    if width != 2 * inter {
        bail!(
            "gated activation: expected {} columns, got {width}",
            2 * inter
        );
    }
    let out = with_f32(h, |h| {
        par_filled(n * inter, inter, |start, o| {
            let (gate, up) = h[start / inter * width..][..width].split_at(inter);
            let o = match act {
                Act::Silu => exp::silu_mul(o, gate, up),
                Act::GeluTanh => exp::gelu_tanh_mul(o, gate, up),
            };
            finish(o);
        })
    })?;
    Ok(Tensor::from_vec(out, (n, inter), &Device::Cpu)?)
}

/// Rotary tables and how to apply them, for [`split_heads`].
pub struct RopeSpec<'a> {
    /// `[len, dim/2]` each.
    pub cos: &'a [f32],
    pub sin: &'a [f32],
    pub dim: usize,
    pub interleaved: bool,
}

/// An RMSNorm applied to each head vector (Gemma's Q/K norms).
pub struct HeadNorm<'a> {
    pub weight: &'a [f32],
    pub eps: f32,
}

/// Layout of a fused QKV projection.
pub struct HeadLayout {
    pub batch: usize,
    pub len: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// Splits fused QKV rows `[b*t, (h + 2kv) * hd]` into `q: [b, h, t, hd]`,
/// `k, v: [b, kv, t, hd]`, applying the per-head norms and rotary on the way, in one
/// pass instead of a narrow/reshape/transpose/copy chain per tensor.
pub fn split_heads(
    qkv: &Tensor,
    l: &HeadLayout,
    q_norm: Option<HeadNorm>,
    k_norm: Option<HeadNorm>,
    rope: Option<RopeSpec>,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let (b, t, hd) = (l.batch, l.len, l.head_dim);
    let width = (l.heads + 2 * l.kv_heads) * hd;
    if qkv.dims2()? != (b * t, width) {
        bail!("split_heads: unexpected input shape {:?}", qkv.dims());
    }
    with_f32(qkv, |src| {
        // Each output chunk is one (sequence, head) pair: `t` rows of `hd` channels.
        let split = |heads: usize, first: usize, norm: Option<&HeadNorm>, rotate: bool| {
            par_filled(b * heads * t * hd, t * hd, |start, chunk| {
                let bh = start / (t * hd);
                let (seq, head) = (bh / heads, bh % heads);
                for (pos, dst) in chunk.chunks_mut(hd).enumerate() {
                    let row = &src[(seq * t + pos) * width..][..width];
                    dst.write_copy_of_slice(&row[(first + head) * hd..][..hd]);
                    // SAFETY: just written.
                    let dst = unsafe { written(dst) };
                    if let Some(n) = norm {
                        rms_normalize(dst, n);
                    }
                    if let (true, Some(r)) = (rotate, &rope) {
                        apply_rope(dst, r, pos);
                    }
                }
            })
        };
        (
            split(l.heads, 0, q_norm.as_ref(), true),
            split(l.kv_heads, l.heads, k_norm.as_ref(), true),
            split(l.kv_heads, l.heads + l.kv_heads, None, false),
        )
    })
}

fn rms_normalize(x: &mut [f32], n: &HeadNorm) {
    let mean_sq = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let scale = 1.0 / (mean_sq + n.eps).sqrt();
    for (v, w) in x.iter_mut().zip(n.weight) {
        *v = *v * scale * w;
    }
}

fn apply_rope(x: &mut [f32], r: &RopeSpec, pos: usize) {
    let half = r.dim / 2;
    let cos = &r.cos[pos * half..][..half];
    let sin = &r.sin[pos * half..][..half];
    for i in 0..half {
        let (a, b) = if r.interleaved {
            (2 * i, 2 * i + 1)
        } else {
            (i, i + half)
        };
        let (x0, x1) = (x[a], x[b]);
        x[a] = x0 * cos[i] - x1 * sin[i];
        x[b] = x1 * cos[i] + x0 * sin[i];
    }
}

/// Calls `f` with the contiguous f32 data of a tensor: without copying it when it is
/// on the CPU, copied to the host when it is on a GPU.
pub fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    with_slice(&t.to_device(&Device::Cpu)?, f)
}

/// Calls `f` with the contiguous data of a CPU tensor of element type `T`, without
/// copying it.
pub fn with_slice<T: candle_core::WithDType, R>(
    t: &Tensor,
    f: impl FnOnce(&[T]) -> R,
) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        bail!("expected a CPU tensor");
    };
    let data = cpu.as_slice::<T>()?;
    let Some((from, to)) = layout.contiguous_offsets() else {
        bail!("expected a contiguous tensor");
    };
    Ok(f(&data[from..to]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gathered sums equal the serial ones bit for bit, for row counts on and off
    /// the groups of sixteen.
    #[test]
    fn sums_of_squares_are_the_serial_sums() {
        for (rows, dim) in [(0, 5), (1, 1), (15, 7), (16, 576), (37, 33)] {
            let x: Vec<f32> = (0..rows * dim)
                .map(|i| ((i as f32) * 0.37).sin() * 1e3)
                .collect();
            let mut got = vec![0f32; rows];
            sums_of_squares(&x, dim, &mut got);
            for (r, g) in got.iter().enumerate() {
                let want: f32 = x[r * dim..][..dim].iter().map(|v| v * v).sum();
                assert_eq!(g.to_bits(), want.to_bits(), "{rows} x {dim}: row {r}");
            }
        }
    }

    /// The vector division equals the scalar expression bit for bit, with and without
    /// a weight, on lengths off the sixteen lanes.
    #[test]
    fn divide_scale_is_the_scalar_expression() {
        for len in [0, 1, 15, 16, 17, 576, 1000] {
            let x: Vec<f32> = (0..len).map(|i| ((i as f32) * 0.71).sin() * 3e3).collect();
            let w: Vec<f32> = (0..len).map(|i| 0.5 + (i as f32 * 0.13).cos()).collect();
            let m = 7.3f32;
            for weight in [None, Some(&w[..])] {
                let mut buf = vec![MaybeUninit::uninit(); len];
                let got = divide_scale(&mut buf, &x, m, weight);
                for (i, g) in got.iter().enumerate() {
                    let want = x[i] / m * weight.map_or(1.0, |w| w[i]);
                    assert_eq!(g.to_bits(), want.to_bits(), "len {len}, value {i}");
                }
            }
        }
    }
}
