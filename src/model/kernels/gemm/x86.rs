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

/// Rounds one f32 row to bf16 (nearest, ties to even, as [`to_bf16_row`]) into AMX
/// activation tiles: its pieces of 32 values go [`AMX_STEP`] apart from `dst`, the
/// last zero-padded, each piece one 64-byte store. As a pass over the whole input it
/// was bound by memory, 15-17% of a one-thread 4096 x 960 x 576 product (perf), so
/// each AMX task now converts its own strip, into tiles that stay in L1.
///
/// # Safety
/// AVX-512F and AVX512_BF16 present; `dst` has room for `src.len().div_ceil(32)`
/// steps.
#[target_feature(enable = "avx512f,avx512bf16")]
pub unsafe fn to_bf16_tile_row(src: &[f32], dst: *mut u16) {
    for (s, piece) in src.chunks(2 * AMX_PAIRS).enumerate() {
        let p = piece.as_ptr();
        let (lo, hi) = if piece.len() == 2 * AMX_PAIRS {
            (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)))
        } else {
            let (m0, m1) = masks32(piece.len());
            (
                _mm512_maskz_loadu_ps(m0, p),
                _mm512_maskz_loadu_ps(m1, p.wrapping_add(16)),
            )
        };
        let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
        _mm512_storeu_si512(dst.add(s * AMX_STEP) as *mut _, v);
    }
}

/// Rounds f32 values to bf16 and back in place (nearest, ties to even).
///
/// # Safety
/// AVX-512F and AVX512_BF16 present.
#[target_feature(enable = "avx512f,avx512bf16")]
pub unsafe fn round_bf16(v: &mut [f32]) {
    let full = v.len() / 16 * 16;
    for i in (0..full).step_by(16) {
        let p = v.as_mut_ptr().add(i);
        _mm512_storeu_ps(p, rounded16(_mm512_loadu_ps(p)));
    }
    for x in &mut v[full..] {
        *x = half::bf16::from_f32(*x).to_f32();
    }
}

/// Sixteen f32 values rounded to bf16 and held as f32 again.
#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn rounded16(v: __m512) -> __m512 {
    let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
}

/// Rows of an AMX tile, and the f32 columns of one: 16 x 16 sums per product.
pub const AMX_ROWS: usize = 16;
/// bf16 pairs of the inner dimension one AMX product consumes (32 inner steps).
pub const AMX_PAIRS: usize = 16;

/// Whether AMX tiles can be used here: the CPU has AMX-TILE and AMX-BF16, the AVX-512
/// BF16 conversions the AMX product uses around its tiles, and Linux granted this
/// process the tile state, which it leaves off until asked (`ARCH_REQ_XCOMP_PERM`); a
/// tile instruction without that grant is SIGILL. Asked once.
pub fn amx_ready() -> bool {
    static READY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *READY.get_or_init(|| {
        // CPUID leaf 7 exists on every x86-64 CPU recent enough to matter here.
        let leaf7 = __cpuid_count(7, 0);
        let (bf16, tile) = (leaf7.edx & (1 << 22) != 0, leaf7.edx & (1 << 24) != 0);
        let avx = is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16");
        bf16 && tile && avx && request_tile_state()
    })
}

#[cfg(target_os = "linux")]
fn request_tile_state() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with these arguments only changes this process's permission.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn request_tile_state() -> bool {
    false
}

/// The tile configuration every AMX block loads: palette 1, eight tiles of 16 rows of
/// 64 bytes (16 f32 sums, or 32 bf16 = 16 pairs).
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

const TILE_CONFIG: TileConfig = {
    let mut c = [0u8; 64];
    c[0] = 1;
    let mut t = 0;
    while t < 8 {
        c[16 + 2 * t] = 64;
        c[48 + t] = AMX_ROWS as u8;
        t += 1;
    }
    TileConfig(c)
};

/// Loads the tile configuration on this thread; pair with [`amx_release`].
///
/// # Safety
/// [`amx_ready`] returned true.
pub unsafe fn amx_configure() {
    std::arch::asm!("ldtilecfg [{}]", in(reg) TILE_CONFIG.0.as_ptr(), options(nostack));
}

/// Returns this thread's tiles to the init state, so the OS need not save them.
///
/// # Safety
/// [`amx_ready`] returned true.
pub unsafe fn amx_release() {
    std::arch::asm!("tilerelease", options(nostack, nomem));
}

/// bf16 values one AMX step reads from each operand: two 16 x 32 tiles (2 KiB),
/// stored contiguously so each tile load reads 16 consecutive cache lines.
pub const AMX_STEP: usize = 2 * AMX_ROWS * 2 * AMX_PAIRS;

/// One 32 x 32 block of `x W^T` on AMX, left in tiles 0-3 (the four 16 x 16 sums) for
/// [`amx_store32`]; 4-5 hold the two 16-row halves of a step of `a`, 6-7 the step's two
/// 16-column halves of the panel, and each step (32 inner values) is four
/// `tdpbf16ps`. Both operands are laid out step by step, [`AMX_STEP`] values each: `a`
/// as `[step][32 rows][32]` (zeros past `k`), the panel as `[step][2 halves][16
/// pairs][16][2]`. Every tile row should start a cache line (`a` and `b` on 64
/// bytes): rows across two lines made the product about 3x slower. No software
/// prefetch: with aligned operands, prefetching both two steps ahead cost 12% (983 ->
/// 868 GFLOP/s, one-core prototype). The panel's tiles are loaded with the
/// non-temporal hint (`tileloaddt1`): each is read once per strip, and kept out of L1
/// they leave it to the strip's tiles, read once per panel. At 1,024 x 576 inputs
/// (medians of 15 interleaved runs, GFLOP/s, 1 thread / 2 threads): 720 -> 854 / 578
/// -> 646 at n = 960, 850 -> 968 / 857 -> 971 at 576, 792 -> 932 / 910 -> 1,039 at
/// 3072; level at k = 1536 (733 -> 746 / 893 -> 871), whose strip does not fit L1.
/// A whole bf16 embed of SmolLM2 was level with it (paired CPU time 1.015x, 14 pairs,
/// 0.75-1.31x): there the product's input comes from memory rather than from cache.
///
/// # Safety
/// [`amx_configure`] ran on this thread; `a` and `b` hold `steps * AMX_STEP` bf16.
pub unsafe fn amx_block32(a: *const u16, b: *const u16, steps: usize) {
    use std::arch::asm;
    const HALF: usize = AMX_STEP / 2;
    asm!(
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        "tilezero tmm3",
        options(nostack, nomem)
    );
    for s in 0..steps {
        let (a0, b0) = (a.add(s * AMX_STEP), b.add(s * AMX_STEP));
        asm!(
            "tileloadd tmm4, [{a0} + {st}*1]",
            "tileloaddt1 tmm6, [{b0} + {st}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloaddt1 tmm7, [{b1} + {st}*1]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a1} + {st}*1]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            a0 = in(reg) a0,
            a1 = in(reg) a0.add(HALF),
            b0 = in(reg) b0,
            b1 = in(reg) b0.add(HALF),
            st = in(reg) 2 * AMX_PAIRS * 2,
            options(nostack, readonly),
        );
    }
}

/// A 32 x 32 block of f32 sums, on a cache line.
#[repr(C, align(64))]
pub struct AmxBlock(pub [f32; 2 * AMX_ROWS * NR512]);

/// Stores tiles 0-3 (made by [`amx_block32`]) into `block`.
///
/// # Safety
/// [`amx_configure`] ran on this thread.
pub unsafe fn amx_store32(block: &mut AmxBlock) {
    let c = block.0.as_mut_ptr();
    std::arch::asm!(
        "tilestored [{c00} + {s}*1], tmm0",
        "tilestored [{c01} + {s}*1], tmm1",
        "tilestored [{c10} + {s}*1], tmm2",
        "tilestored [{c11} + {s}*1], tmm3",
        c00 = in(reg) c,
        c01 = in(reg) c.add(AMX_ROWS),
        c10 = in(reg) c.add(AMX_ROWS * NR512),
        c11 = in(reg) c.add(AMX_ROWS * NR512 + AMX_ROWS),
        s = in(reg) NR512 * 4,
        options(nostack),
    );
}

/// Copies `rows x cols` of `block` to `c` (rows `ldc` apart), adding `bias` (`cols`
/// values) and rounding to bf16 when asked, 16 values per instruction.
///
/// # Safety
/// AVX-512F and AVX512_BF16 present; `c` has `rows <= 32` rows `ldc` apart of
/// `cols <= 32` floats.
#[target_feature(enable = "avx512f,avx512bf16")]
pub unsafe fn amx_finish32(
    block: &AmxBlock,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    bias: Option<&[f32]>,
    round: bool,
) {
    let (m0, m1) = masks32(cols);
    let (b0, b1) = match bias {
        Some(b) => (
            _mm512_maskz_loadu_ps(m0, b.as_ptr()),
            _mm512_maskz_loadu_ps(m1, b.as_ptr().wrapping_add(16)),
        ),
        None => (_mm512_setzero_ps(), _mm512_setzero_ps()),
    };
    let finish = |v: __m512| if round { rounded16(v) } else { v };
    for r in 0..rows {
        let src = block.0.as_ptr().add(r * NR512);
        let dst = c.add(r * ldc);
        // Only a real bias is added: adding zeros would turn -0 into +0.
        let (mut v0, mut v1) = (_mm512_load_ps(src), _mm512_load_ps(src.add(16)));
        if bias.is_some() {
            v0 = _mm512_add_ps(v0, b0);
            v1 = _mm512_add_ps(v1, b1);
        }
        _mm512_mask_storeu_ps(dst, m0, finish(v0));
        _mm512_mask_storeu_ps(dst.wrapping_add(16), m1, finish(v1));
    }
}
