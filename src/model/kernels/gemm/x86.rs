//! x86-64 microkernels for [`super::PackedMatrix`]: each computes one tile of
//! `MR` output rows by one packed panel of columns over the whole inner dimension,
//! keeping the tile's sums in registers.
//!
//! Written here rather than taken from a crate because none reads bf16 weights
//! natively (`vdpbf16ps`) or reads weights packed once at load; the f32 kernels share
//! the packing and the driver with it. `docs/benchmarks.md` compares them with
//! `matrixmultiply`, `gemm` and `faer`.

use std::arch::x86_64::*;

/// Output columns per panel of the AVX-512 kernels (two 16-lane vectors).
pub const NR512: usize = 32;
/// Rows per tile of the AVX-512 kernels: 24 accumulators of the 32 registers.
pub const MR512: usize = 12;
/// Output columns per panel of the AVX2 kernel (two 8-lane vectors).
pub const NR256: usize = 16;
/// Rows per tile of the AVX2 kernel: 12 accumulators of the 16 registers.
pub const MR256: usize = 6;

/// A packed weight element, widened to f32 lanes as it is loaded.
pub trait Elem: Copy + Default + Send + Sync + 'static {
    /// Sixteen elements as f32 lanes. Caller: AVX-512F enabled, 16 readable elements.
    unsafe fn load16(p: *const Self) -> __m512;
    /// Eight elements as f32 lanes. Caller: AVX2 enabled, 8 readable elements.
    unsafe fn load8(p: *const Self) -> __m256;
}

impl Elem for f32 {
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> __m512 {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> __m256 {
        _mm256_loadu_ps(p)
    }
}

/// bf16 bits: widening is a zero-extension and a 16-bit shift, exact.
impl Elem for u16 {
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> __m512 {
        let h = _mm256_loadu_si256(p as *const __m256i);
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
    }
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> __m256 {
        let h = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
    }
}

/// Where a tile reads and writes: `MR` rows of `a` (`lda` apart), one panel `b`,
/// `k` inner steps, output rows `ldc` apart of which the first `cols` columns are kept.
#[derive(Clone, Copy)]
pub struct Tile<A, B> {
    pub a: *const A,
    pub lda: usize,
    pub b: *const B,
    pub k: usize,
    pub c: *mut f32,
    pub ldc: usize,
    pub cols: usize,
}

/// Lane masks keeping the first `cols` of 32 columns, per 16-lane half.
#[inline(always)]
fn masks32(cols: usize) -> (__mmask16, __mmask16) {
    let lo = cols.min(16);
    let hi = cols.saturating_sub(16).min(16);
    (
        ((1u32 << lo) - 1) as __mmask16,
        ((1u32 << hi) - 1) as __mmask16,
    )
}

/// AVX-512 f32 tile: panel layout `[k][32]`.
///
/// # Safety
/// AVX-512F present; `t` addresses `MR` rows of `k` floats, a panel of `k * 32`
/// elements and `MR` output rows of `t.cols <= 32` floats.
#[target_feature(enable = "avx512f")]
pub unsafe fn tile_avx512<E: Elem, const MR: usize>(t: Tile<f32, E>) {
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for p in 0..t.k {
        let b0 = E::load16(t.b.add(p * NR512));
        let b1 = E::load16(t.b.add(p * NR512 + 16));
        for (r, acc) in acc.iter_mut().enumerate() {
            let a = _mm512_set1_ps(*t.a.add(r * t.lda + p));
            acc[0] = _mm512_fmadd_ps(a, b0, acc[0]);
            acc[1] = _mm512_fmadd_ps(a, b1, acc[1]);
        }
    }
    store512(&acc, t.c, t.ldc, t.cols);
}

/// AVX512_BF16 tile: `a` holds bf16 rows whose length is even (zero-padded), the
/// panel is `[k/2][32][2]` (pairs of inner steps per column), and each `vdpbf16ps`
/// adds two products per lane to f32 sums. `t.k` counts pairs.
///
/// # Safety
/// AVX-512F and AVX512_BF16 present; `t` addresses `MR` rows of `2 * k` bf16, a
/// panel of `k * 64` bf16 and `MR` output rows of `t.cols <= 32` floats.
#[target_feature(enable = "avx512f,avx512bf16")]
pub unsafe fn tile_avx512bf16<const MR: usize>(t: Tile<u16, u16>) {
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for p in 0..t.k {
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(t.b.add(p * 64) as *const _));
        let b1: __m512bh =
            std::mem::transmute(_mm512_loadu_si512(t.b.add(p * 64 + 32) as *const _));
        for (r, acc) in acc.iter_mut().enumerate() {
            let pair = (t.a.add(r * t.lda + 2 * p) as *const i32).read_unaligned();
            let a: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
            acc[0] = _mm512_dpbf16_ps(acc[0], a, b0);
            acc[1] = _mm512_dpbf16_ps(acc[1], a, b1);
        }
    }
    store512(&acc, t.c, t.ldc, t.cols);
}

#[target_feature(enable = "avx512f")]
unsafe fn store512<const MR: usize>(acc: &[[__m512; 2]; MR], c: *mut f32, ldc: usize, cols: usize) {
    if cols == NR512 {
        for (r, acc) in acc.iter().enumerate() {
            _mm512_storeu_ps(c.add(r * ldc), acc[0]);
            _mm512_storeu_ps(c.add(r * ldc + 16), acc[1]);
        }
    } else {
        let (m0, m1) = masks32(cols);
        for (r, acc) in acc.iter().enumerate() {
            _mm512_mask_storeu_ps(c.add(r * ldc), m0, acc[0]);
            _mm512_mask_storeu_ps(c.add(r * ldc + 16), m1, acc[1]);
        }
    }
}

/// AVX2 + FMA tile: panel layout `[k][16]`.
///
/// # Safety
/// AVX2 and FMA present; `t` addresses `MR` rows of `k` floats, a panel of `k * 16`
/// elements and `MR` output rows of `t.cols <= 16` floats.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn tile_avx2<E: Elem, const MR: usize>(t: Tile<f32, E>) {
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    for p in 0..t.k {
        let b0 = E::load8(t.b.add(p * NR256));
        let b1 = E::load8(t.b.add(p * NR256 + 8));
        for (r, acc) in acc.iter_mut().enumerate() {
            let a = _mm256_broadcast_ss(&*t.a.add(r * t.lda + p));
            acc[0] = _mm256_fmadd_ps(a, b0, acc[0]);
            acc[1] = _mm256_fmadd_ps(a, b1, acc[1]);
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        let c = t.c.add(r * t.ldc);
        if t.cols == NR256 {
            _mm256_storeu_ps(c, acc[0]);
            _mm256_storeu_ps(c.add(8), acc[1]);
        } else {
            let mut row = [0f32; NR256];
            _mm256_storeu_ps(row.as_mut_ptr(), acc[0]);
            _mm256_storeu_ps(row.as_mut_ptr().add(8), acc[1]);
            std::ptr::copy_nonoverlapping(row.as_ptr(), c, t.cols);
        }
    }
}

/// Rounds `src` to bf16 (nearest, ties to even) into `dst`, whose extra element,
/// if any, is the zero pad of an odd row.
///
/// # Safety
/// AVX-512F and AVX512_BF16 present.
#[target_feature(enable = "avx512f,avx512bf16")]
pub unsafe fn to_bf16_row(src: &[f32], dst: &mut [u16]) {
    let full = src.len() / 16 * 16;
    for i in (0..full).step_by(16) {
        let v: __m256i =
            std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(src.as_ptr().add(i))));
        _mm256_storeu_si256(dst.as_mut_ptr().add(i) as *mut __m256i, v);
    }
    for (d, &s) in dst[full..].iter_mut().zip(&src[full..]) {
        *d = half::bf16::from_f32(s).to_bits();
    }
    for d in &mut dst[src.len()..] {
        *d = 0;
    }
}
