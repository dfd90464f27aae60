//! Causal softmax attention for the real (unpadded) query rows of a batch: one task
//! per sequence and key/value head, whose query heads share that head's keys.
//!
//! With AVX-512 the two products (scores, then context) are written here, for rows
//! in blocks held in registers, rather than taken from `matrixmultiply`: at
//! SmolLM2's sentences of about 25 tokens, `matrixmultiply` packed both operands of
//! each head's two small products on every call, and its products, packing and
//! edge handling were 7.4% of a bf16 `harness embed` (perf, Xeon family 6 model
//! 167). Blocks also stop at the last key their rows can see, where `matrixmultiply`
//! computed the whole square. Per attention call (9 query and 3 key/value heads of
//! 64, 2 threads, medians of 9), against `matrixmultiply` in the same tasks: 1.82 ->
//! 0.97 ms for 40 sequences of 25 tokens, 3.46 -> 2.30 for 8 of 128, 18.0 -> 8.6 for
//! 2 of 512, 143 -> 86 for one of 2,048. Without AVX-512 the products stay
//! `matrixmultiply`'s. Both sum each value in the same order, one fused multiply-add
//! per term.

use anyhow::Result;
use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::{avx512, exp, HeadLayout};

/// Calls `$m::$f::<R>($args)` with the block's row count `R` as a constant (up to 8 or
/// 4), so each count gets its own kernel with its sums in registers.
macro_rules! by_rows {
    ($rows:expr, $m:ident::$f:ident, ($($arg:expr),*), 8) => {
        match $rows {
            8 => $m::$f::<8>($($arg),*),
            7 => $m::$f::<7>($($arg),*),
            6 => $m::$f::<6>($($arg),*),
            5 => $m::$f::<5>($($arg),*),
            _ => by_rows!($rows, $m::$f, ($($arg),*), 4),
        }
    };
    ($rows:expr, $m:ident::$f:ident, ($($arg:expr),*), 4) => {
        match $rows {
            4 => $m::$f::<4>($($arg),*),
            3 => $m::$f::<3>($($arg),*),
            2 => $m::$f::<2>($($arg),*),
            _ => $m::$f::<1>($($arg),*),
        }
    };
}

/// Settings of one attention call.
pub struct AttentionSpec<'a> {
    pub layout: &'a HeadLayout,
    /// Real length of each sequence; padded rows get no output.
    pub lens: &'a [usize],
    pub scale: f32,
    pub window: Option<usize>,
    pub want_probs: bool,
}

/// Causal softmax attention over `q: [b, h, t, hd]`, `k, v: [b, kv, t, hd]`, for
/// real query rows only. Returns the context as rows `[b*t, h*hd]` (ready for the
/// output projection; padded rows are zero) and, when asked, the probabilities
/// `[b, h, t, t]` (zero outside the visible region). Each head's piece of a context
/// row is passed to `finish` (a rounding) as it is made, while in cache.
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    spec: &AttentionSpec,
    finish: impl Fn(&mut [f32]) + Sync,
) -> Result<(Tensor, Option<Tensor>)> {
    attend(q, k, v, spec, finish, avx512())
}

/// [`attention`], with the AVX-512 products when `vector` (which needs AVX-512F).
fn attend(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    spec: &AttentionSpec,
    finish: impl Fn(&mut [f32]) + Sync,
    vector: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let l = spec.layout;
    let (b, t, hd, h) = (l.batch, l.len, l.head_dim, l.heads);
    let group = h / l.kv_heads;
    let width = h * hd;
    // Not zeroed first: every task writes all rows of its heads' columns, padded
    // rows as zeros.
    let mut ctx: Vec<f32> = Vec::with_capacity(b * t * width);
    let mut probs = if spec.want_probs {
        vec![0f32; b * h * t * t]
    } else {
        Vec::new()
    };
    let ctx_ptr = SyncPtr(ctx.spare_capacity_mut().as_mut_ptr() as *mut f32);
    let probs_ptr = SyncPtr(probs.as_mut_ptr());
    (0..b * l.kv_heads).into_par_iter().for_each(|task| {
        let (seq, kvh) = (task / l.kv_heads, task % l.kv_heads);
        let len = spec.lens[seq];
        let ks = &k[(seq * l.kv_heads + kvh) * t * hd..][..len * hd];
        let vs = &v[(seq * l.kv_heads + kvh) * t * hd..][..len * hd];
        let keys = Keys::new(ks, len, hd, vector);
        let mut scores = vec![0f32; len * len];
        for head in kvh * group..(kvh + 1) * group {
            let qs = &q[(seq * h + head) * t * hd..][..len * hd];
            keys.scores(qs, spec.scale, &mut scores);
            for (qi, row) in scores.chunks_mut(len).enumerate() {
                let first = spec.window.map_or(0, |w| (qi + 1).saturating_sub(w));
                exp::softmax_in_place(&mut row[first..=qi]);
                row[..first].fill(0.0);
                row[qi + 1..].fill(0.0);
            }
            // SAFETY: task (seq, kvh) alone writes rows `seq*t..(seq+1)*t`, columns
            // `head*hd..(head+1)*hd` of the context for its heads, and their blocks of
            // the probabilities.
            unsafe {
                let c = ctx_ptr.get().add(seq * t * width + head * hd);
                context(&scores, vs, len, hd, c, width, vector);
                for r in 0..len {
                    finish(std::slice::from_raw_parts_mut(c.add(r * width), hd));
                }
                for r in len..t {
                    std::ptr::write_bytes(c.add(r * width), 0, hd);
                }
                if spec.want_probs {
                    let p = probs_ptr.get().add((seq * h + head) * t * t);
                    for (qi, row) in scores.chunks(len).enumerate() {
                        std::ptr::copy_nonoverlapping(row.as_ptr(), p.add(qi * t), len);
                    }
                }
            }
        }
    });
    // SAFETY: the tasks covered every (sequence, head), each writing all `t` rows of
    // its `hd` columns.
    unsafe { ctx.set_len(b * t * width) };
    let ctx = Tensor::from_vec(ctx, (b * t, h * hd), &Device::Cpu)?;
    let probs = if spec.want_probs {
        Some(Tensor::from_vec(probs, (b, h, t, t), &Device::Cpu)?)
    } else {
        None
    };
    Ok((ctx, probs))
}

/// One sequence's keys for one key/value head: `len` rows of `hd`, and for the
/// vector kernel the same transposed, `[hd][len rounded up to 16]`, so that a score
/// row is sixteen keys per vector.
struct Keys<'a> {
    rows: &'a [f32],
    len: usize,
    hd: usize,
    transposed: Option<Vec<f32>>,
}

impl<'a> Keys<'a> {
    fn new(rows: &'a [f32], len: usize, hd: usize, vector: bool) -> Self {
        let transposed = vector.then(|| {
            let lp = len.div_ceil(16) * 16;
            let mut kt = vec![0f32; hd * lp];
            for (j, row) in rows.chunks(hd).enumerate() {
                for (d, &x) in row.iter().enumerate() {
                    kt[d * lp + j] = x;
                }
            }
            kt
        });
        Self {
            rows,
            len,
            hd,
            transposed,
        }
    }

    /// `scale * q K^T` for `len` query rows into `scores` (`len x len`): at least
    /// every key up to each row's own position; the rest is left for the caller to
    /// mask.
    fn scores(&self, q: &[f32], scale: f32, scores: &mut [f32]) {
        let (len, hd) = (self.len, self.hd);
        #[cfg(target_arch = "x86_64")]
        if let Some(kt) = &self.transposed {
            let lp = kt.len() / hd.max(1);
            let mut r0 = 0;
            while r0 < len {
                let rows = (len - r0).min(x86::SCORE_ROWS);
                // SAFETY: AVX-512F present (`transposed` is made only then); `q` has
                // `len` rows of `hd`, `kt` `hd` rows of `lp >= len`, `scores` `len`
                // rows of `len`.
                unsafe {
                    by_rows!(
                        rows,
                        x86::score_rows,
                        (
                            q.as_ptr(),
                            hd,
                            kt.as_ptr(),
                            lp,
                            len,
                            r0,
                            scale,
                            scores.as_mut_ptr()
                        ),
                        8
                    )
                };
                r0 += rows;
            }
            return;
        }
        // SAFETY: the pointers cover the slices' lengths with the strides given.
        unsafe {
            matrixmultiply::sgemm(
                len,
                hd,
                len,
                scale,
                q.as_ptr(),
                hd as isize,
                1,
                self.rows.as_ptr(),
                1,
                hd as isize,
                0.0,
                scores.as_mut_ptr(),
                len as isize,
                1,
            );
        }
    }
}

/// `scores V` (`len x len` by `len x hd`) into `len` rows `ldc` apart from `c`.
///
/// # Safety
/// `c` has room for those rows, and no one else touches them meanwhile; `vector`
/// only where AVX-512F is present.
unsafe fn context(
    scores: &[f32],
    v: &[f32],
    len: usize,
    hd: usize,
    c: *mut f32,
    ldc: usize,
    vector: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if vector {
        let mut r0 = 0;
        while r0 < len {
            let rows = (len - r0).min(x86::CONTEXT_ROWS);
            by_rows!(
                rows,
                x86::context_rows,
                (scores.as_ptr(), len, v.as_ptr(), hd, r0, c, ldc),
                4
            );
            r0 += rows;
        }
        return;
    }
    matrixmultiply::sgemm(
        len,
        len,
        hd,
        1.0,
        scores.as_ptr(),
        len as isize,
        1,
        v.as_ptr(),
        hd as isize,
        1,
        0.0,
        c,
        ldc as isize,
        1,
    );
}

/// A raw pointer that tasks writing disjoint regions may share.
#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
// SAFETY: only used for writes to disjoint regions, as documented at each use.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// A method, so closures capture the whole `Sync` wrapper rather than its field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Query rows per block of scores: eight independent sums keep both FMA ports
    /// busy through each sum's chain of `hd` steps.
    pub const SCORE_ROWS: usize = 8;
    /// Query rows per block of context: four rows of four vectors are 16 sums.
    pub const CONTEXT_ROWS: usize = 4;

    /// The first `n` (at most 16) lanes.
    fn mask(n: usize) -> __mmask16 {
        ((1u32 << n.min(16)) - 1) as __mmask16
    }

    /// Scores of query rows `r0..r0 + R` against keys `0..min(r0 + R, len)`, sixteen
    /// keys per vector: `out[i * len + j] = scale * sum_d q[i * hd + d] * kt[d * lp + j]`,
    /// summed in `d` order.
    ///
    /// # Safety
    /// AVX-512F present; `q` has rows up to `r0 + R` of `hd`, `kt` `hd` rows of `lp`
    /// (a multiple of 16, at least `len`), `out` rows up to `r0 + R` of `len`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn score_rows<const R: usize>(
        q: *const f32,
        hd: usize,
        kt: *const f32,
        lp: usize,
        len: usize,
        r0: usize,
        scale: f32,
        out: *mut f32,
    ) {
        let cols = (r0 + R).min(len);
        let scale = _mm512_set1_ps(scale);
        for c in (0..cols).step_by(16) {
            let mut acc = [_mm512_setzero_ps(); R];
            for d in 0..hd {
                let kv = _mm512_loadu_ps(kt.add(d * lp + c));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(*q.add((r0 + r) * hd + d));
                    *acc = _mm512_fmadd_ps(x, kv, *acc);
                }
            }
            let m = mask(cols - c);
            for (r, acc) in acc.iter().enumerate() {
                _mm512_mask_storeu_ps(out.add((r0 + r) * len + c), m, _mm512_mul_ps(*acc, scale));
            }
        }
    }

    /// Context of query rows `r0..r0 + R`: `c[i * ldc + d] = sum_j p[i * len + j] *
    /// v[j * hd + d]` over keys `j < min(r0 + R, len)` (later keys have probability
    /// zero), summed in `j` order, 64 columns (four vectors) at a time.
    ///
    /// # Safety
    /// AVX-512F present; `p` has rows up to `r0 + R` of `len`, `v` `len` rows of `hd`,
    /// `c` rows up to `r0 + R`, `ldc` apart, of `hd`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn context_rows<const R: usize>(
        p: *const f32,
        len: usize,
        v: *const f32,
        hd: usize,
        r0: usize,
        c: *mut f32,
        ldc: usize,
    ) {
        let keys = (r0 + R).min(len);
        for s in (0..hd).step_by(64) {
            let w = hd - s;
            let m = [
                mask(w),
                mask(w.saturating_sub(16)),
                mask(w.saturating_sub(32)),
                mask(w.saturating_sub(48)),
            ];
            let mut acc = [[_mm512_setzero_ps(); 4]; R];
            for j in 0..keys {
                let row = v.add(j * hd + s);
                let mut vv = [_mm512_setzero_ps(); 4];
                for (x, vv) in vv.iter_mut().enumerate() {
                    *vv = _mm512_maskz_loadu_ps(m[x], row.wrapping_add(16 * x));
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    let pj = _mm512_set1_ps(*p.add((r0 + r) * len + j));
                    for (a, v) in acc.iter_mut().zip(vv) {
                        *a = _mm512_fmadd_ps(pj, v, *a);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                let dst = c.add((r0 + r) * ldc + s);
                for (x, a) in acc.iter().enumerate() {
                    _mm512_mask_storeu_ps(dst.wrapping_add(16 * x), m[x], *a);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    /// Causal attention of one query, in f64: probabilities over all `len` keys.
    fn reference_row(q: &[f32], ks: &[f32], scale: f32, qi: usize, first: usize) -> Vec<f64> {
        let hd = q.len();
        let len = ks.len() / hd;
        let mut p = vec![0f64; len];
        for j in first..=qi {
            let dot: f64 = (0..hd).map(|d| q[d] as f64 * ks[j * hd + d] as f64).sum();
            p[j] = dot * scale as f64;
        }
        let max = p[first..=qi].iter().cloned().fold(f64::MIN, f64::max);
        let sum: f64 = p[first..=qi].iter().map(|x| (x - max).exp()).sum();
        for x in &mut p[first..=qi] {
            *x = (*x - max).exp() / sum;
        }
        p
    }

    /// Both products (the vector ones where the CPU has AVX-512) with grouped heads,
    /// two sequences (one padded), head sizes below, at and above one slab of 64
    /// columns, and a sliding window, against the formula in f64; padded rows zero.
    #[test]
    fn attention_matches_the_formula() {
        check_attention(false);
        if avx512() {
            check_attention(true);
        } else {
            println!("skipped: the AVX-512 attention products need avx512f, which this CPU lacks");
        }
    }

    fn check_attention(vector: bool) {
        for head_dim in [20, 64, 130] {
            let l = HeadLayout {
                batch: 2,
                len: 70,
                heads: 6,
                kv_heads: 2,
                head_dim,
            };
            check_layout(&l, vector);
        }
    }

    fn check_layout(l: &HeadLayout, vector: bool) {
        let (t, hd) = (l.len, l.head_dim);
        let lens = [t, 5];
        let values = |n: usize, seed: f32| -> Vec<f32> {
            (0..n).map(|i| ((i as f32 + seed) * 0.731).sin()).collect()
        };
        let q = values(l.batch * l.heads * t * hd, 1.0);
        let k = values(l.batch * l.kv_heads * t * hd, 2.0);
        let v = values(l.batch * l.kv_heads * t * hd, 3.0);
        for window in [None, Some(9)] {
            let spec = AttentionSpec {
                layout: l,
                lens: &lens,
                scale: 0.3,
                window,
                want_probs: true,
            };
            let (ctx, probs) = attend(&q, &k, &v, &spec, |_| {}, vector).unwrap();
            let ctx = ctx.to_vec2::<f32>().unwrap();
            // Finishing each piece as it is made equals finishing the whole afterwards.
            let round = |x: &mut [f32]| {
                x.iter_mut()
                    .for_each(|x| *x = half::bf16::from_f32(*x).to_f32())
            };
            let (rounded, _) = attend(&q, &k, &v, &spec, round, vector).unwrap();
            for (got, mut want) in rounded
                .to_vec2::<f32>()
                .unwrap()
                .into_iter()
                .zip(ctx.clone())
            {
                round(&mut want);
                assert_eq!(
                    got, want,
                    "vector {vector}, head size {hd}: finished context"
                );
            }
            let all: Vec<f32> = probs.unwrap().flatten_all().unwrap().to_vec1().unwrap();
            // f32 sums of `hd` products: errors grow with the head size.
            let at = format!("vector {vector}, head size {hd}, window {window:?}");
            for (seq, &len) in lens.iter().enumerate() {
                for row in &ctx[seq * t + len..(seq + 1) * t] {
                    assert!(row.iter().all(|&x| x == 0.0), "{at}: padded row not zero");
                }
                for head in 0..l.heads {
                    let kvh = head / (l.heads / l.kv_heads);
                    let qs = &q[(seq * l.heads + head) * t * hd..][..len * hd];
                    let ks = &k[(seq * l.kv_heads + kvh) * t * hd..][..len * hd];
                    let vs = &v[(seq * l.kv_heads + kvh) * t * hd..][..len * hd];
                    for qi in 0..len {
                        let first = window.map_or(0, |w| (qi + 1).saturating_sub(w));
                        let p = reference_row(&qs[qi * hd..][..hd], ks, 0.3, qi, first);
                        let got_p = &all[((seq * l.heads + head) * t + qi) * t..][..len];
                        for (g, w) in got_p.iter().zip(&p) {
                            assert!(
                                (*g as f64 - w).abs() < 1e-7 * hd as f64,
                                "{at}: probs {seq} {head} {qi}: {g} against {w}"
                            );
                        }
                        for d in 0..hd {
                            let want: f64 = (0..len).map(|j| p[j] * vs[j * hd + d] as f64).sum();
                            let got = ctx[seq * t + qi][head * hd + d] as f64;
                            assert!(
                                (got - want).abs() < 5e-7 * hd as f64,
                                "{at}: ctx {seq} {head} {qi} {d}"
                            );
                        }
                    }
                }
            }
        }
    }
}
