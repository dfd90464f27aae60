//! Matrix products `x W^T` against weights packed once, at load, into the layout the
//! chosen kernel reads.
//!
//! The kernel is chosen at run time from the CPU's features ([`Kernel::detect`]):
//! AMX tiles (`tdpbf16ps`) or else AVX512_BF16 `vdpbf16ps` for bf16 weights (activations rounded to bf16 per product,
//! as transformers holds them, sums in f32), AVX-512 or AVX2 + FMA in f32 (bf16
//! weights stay bf16 in memory and are widened in registers), and otherwise no
//! packing: [`super::matmul_t`] (`matrixmultiply`). `HARNESS_GEMM` forces one by
//! name, for comparing them. Weights are cut into panels of `NR` output columns,
//! each stored inner-dimension-major so a tile reads it front to back; the product
//! runs blocks of rows by blocks of panels in parallel on rayon's pool. Packed
//! weights, AMX activations and outputs start on cache lines ([`aligned`]).

pub mod aligned;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::fmt;
use std::mem::MaybeUninit;
use std::ops::Range;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

use super::{exp, with_slice, Act};
use aligned::{Aligned, Output};
use rayon::prelude::*;

/// A matrix-product kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// AMX-BF16 tile products on bf16 weights and activations.
    Amx,
    /// AVX512_BF16 dot products on bf16 weights and activations.
    Avx512Bf16,
    /// AVX-512F, f32 arithmetic.
    Avx512,
    /// AVX2 and FMA, f32 arithmetic.
    Avx2,
    /// No packing: `matrixmultiply`, with bf16/f16 weights widened per product.
    Portable,
}

impl Kernel {
    /// Every kernel, fastest first.
    pub const ALL: [Kernel; 5] = [
        Self::Amx,
        Self::Avx512Bf16,
        Self::Avx512,
        Self::Avx2,
        Self::Portable,
    ];

    /// The name `HARNESS_GEMM` takes and `harness inspect` prints.
    pub fn name(self) -> &'static str {
        match self {
            Self::Amx => "amx",
            Self::Avx512Bf16 => "avx512-bf16",
            Self::Avx512 => "avx512",
            Self::Avx2 => "avx2",
            Self::Portable => "portable",
        }
    }

    /// The CPU features the kernel needs, as named in `/proc/cpuinfo`.
    pub fn needs(self) -> &'static str {
        match self {
            Self::Amx => "amx_tile amx_bf16 (and Linux's grant of the tile state)",
            Self::Avx512Bf16 => "avx512f avx512_bf16",
            Self::Avx512 => "avx512f",
            Self::Avx2 => "avx2 fma",
            Self::Portable => "nothing",
        }
    }

    /// Whether this CPU runs the kernel.
    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Self::Amx => x86::amx_ready(),
                Self::Avx512Bf16 => {
                    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
                }
                Self::Avx512 => is_x86_feature_detected!("avx512f"),
                Self::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
                Self::Portable => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Self::Portable
        }
    }

    /// Whether the kernel reads weights of `dtype` (f16 goes through the portable one).
    pub fn reads(self, dtype: DType) -> bool {
        match self {
            Self::Amx | Self::Avx512Bf16 => dtype == DType::BF16,
            Self::Avx512 | Self::Avx2 => matches!(dtype, DType::F32 | DType::BF16),
            Self::Portable => true,
        }
    }

    /// The kernel for weights of `dtype` on this CPU: `HARNESS_GEMM` if set, else the
    /// first of [`Kernel::ALL`] that the CPU runs and that reads `dtype`.
    pub fn detect(dtype: DType) -> Result<Kernel> {
        match std::env::var("HARNESS_GEMM") {
            Ok(name) => {
                let Some(k) = Self::ALL.into_iter().find(|k| k.name() == name) else {
                    bail!(
                        "HARNESS_GEMM={name}: expected amx, avx512-bf16, avx512, avx2 or portable"
                    );
                };
                if !k.available() {
                    bail!("HARNESS_GEMM={name}: this CPU lacks {}", k.needs());
                }
                if !k.reads(dtype) {
                    bail!("HARNESS_GEMM={name}: the kernel does not read {dtype:?} weights");
                }
                Ok(k)
            }
            Err(_) => Ok(Self::ALL
                .into_iter()
                .find(|k| k.available() && k.reads(dtype))
                .unwrap_or(Self::Portable)),
        }
    }
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Packed weight elements: f32, or bf16 bits.
#[derive(Clone)]
enum Panels {
    F32(Aligned<f32>),
    Bf16(Aligned<u16>),
}

/// A weight `[n, k]` packed for one kernel, for products `x W^T`.
#[derive(Clone)]
pub struct PackedMatrix {
    n: usize,
    k: usize,
    kernel: Kernel,
    panels: Panels,
    /// The rows are two halves (gate, then up) whose panels alternate: panel `2p` is
    /// columns `p * NR` of the first half, panel `2p + 1` the same of the second
    /// ([`PackedMatrix::pack_halves`]).
    halves: bool,
}

impl fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "PackedMatrix[{}, {}; {}]", self.n, self.k, self.kernel)
    }
}

/// Calls `$f::<E, MR>` (or `$f::<MR>`) with the tile's row count as a constant, so
/// each row count gets its own fully unrolled kernel.
#[cfg(target_arch = "x86_64")]
macro_rules! dispatch {
    ($rows:expr, $f:ident $(::<$e:ty>)?, $t:expr, 12) => {
        match $rows {
            12 => $f::<$($e,)? 12>($t),
            11 => $f::<$($e,)? 11>($t),
            10 => $f::<$($e,)? 10>($t),
            9 => $f::<$($e,)? 9>($t),
            8 => $f::<$($e,)? 8>($t),
            7 => $f::<$($e,)? 7>($t),
            _ => dispatch!($rows, $f $(::<$e>)?, $t, 6),
        }
    };
    ($rows:expr, $f:ident $(::<$e:ty>)?, $t:expr, 6) => {
        match $rows {
            6 => $f::<$($e,)? 6>($t),
            5 => $f::<$($e,)? 5>($t),
            4 => $f::<$($e,)? 4>($t),
            3 => $f::<$($e,)? 3>($t),
            2 => $f::<$($e,)? 2>($t),
            _ => $f::<$($e,)? 1>($t),
        }
    };
}

/// A raw pointer that rayon tasks share to write disjoint tiles of one output.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every task writes a disjoint set of output elements (one block of rows by
// one block of columns) and the buffer outlives the parallel loop.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// What a product does to its output block by block, while each block is still in
/// cache: add a bias (one value per output column), then round to bf16. A separate
/// pass over the whole output rounded it after it had left the cache: 6% of a bf16
/// embed of SmolLM2 (perf).
#[derive(Clone, Copy, Default)]
pub struct Finish<'a> {
    pub bias: Option<&'a [f32]>,
    pub round_bf16: bool,
}

impl Finish<'_> {
    /// Applies to `rows` rows `ldc` apart of `cols` values from `c`, output columns
    /// `col..col + cols`.
    ///
    /// # Safety
    /// `c` has those rows, and no one else touches them meanwhile.
    unsafe fn apply(self, c: *mut f32, ldc: usize, rows: usize, col: usize, cols: usize) {
        if self.bias.is_none() && !self.round_bf16 {
            return;
        }
        for r in 0..rows {
            let row = std::slice::from_raw_parts_mut(c.add(r * ldc), cols);
            if let Some(b) = self.bias {
                row.iter_mut().zip(&b[col..]).for_each(|(y, b)| *y += b);
            }
            if self.round_bf16 {
                round_bf16(row);
            }
        }
    }
}

/// Where a product writes, and what it does there once each block is made.
#[derive(Clone, Copy)]
struct Out<'a> {
    ptr: OutPtr,
    finish: Finish<'a>,
}

impl Out<'_> {
    /// The block of `rows x cols` at row `r`, column `col` of an output `ldc` wide
    /// is made: finish it.
    ///
    /// # Safety
    /// The block lies inside the output and belongs to the calling task.
    unsafe fn made(self, r: usize, rows: usize, col: usize, cols: usize, ldc: usize) {
        self.finish
            .apply(self.ptr.at(r * ldc + col), ldc, rows, col, cols);
    }
}

impl OutPtr {
    /// The element `i` places on. A method, so closures capture the whole `Sync`
    /// wrapper rather than its raw-pointer field.
    ///
    /// # Safety
    /// `i` lies inside the output.
    unsafe fn at(self, i: usize) -> *mut f32 {
        self.0.add(i)
    }
}

impl PackedMatrix {
    /// Packs a CPU weight `[n, k]` for [`Kernel::detect`]'s kernel; `None` where that
    /// is the portable one (or the weight is not on the CPU), which reads the tensor.
    pub fn pack(w: &Tensor) -> Result<Option<Self>> {
        if !matches!(w.device(), Device::Cpu) {
            return Ok(None);
        }
        Self::pack_for(w, Kernel::detect(w.dtype())?)
    }

    /// Packs `w` for `kernel`, which must be available and read `w`'s type; `None` for
    /// the portable kernel.
    pub fn pack_for(w: &Tensor, kernel: Kernel) -> Result<Option<Self>> {
        if !kernel.available() || !kernel.reads(w.dtype()) {
            bail!("kernel {kernel} cannot run {:?} weights here", w.dtype());
        }
        let (n, k) = w.dims2()?;
        let nr = kernel.nr();
        let panels = match (kernel, w.dtype()) {
            (Kernel::Portable, _) => return Ok(None),
            (Kernel::Amx | Kernel::Avx512Bf16, _) => {
                Panels::Bf16(with_slice(w, |w: &[half::bf16]| {
                    pack_pairs(bits(w), n, k, kernel)
                })?)
            }
            (_, DType::BF16) => Panels::Bf16(with_slice(w, |w: &[half::bf16]| {
                pack_panels(bits(w), n, k, nr)
            })?),
            _ => Panels::F32(with_slice(w, |w: &[f32]| pack_panels(w, n, k, nr))?),
        };
        Ok(Some(Self {
            n,
            k,
            kernel,
            panels,
            halves: false,
        }))
    }

    /// Packs `w`, two halves of `n / 2` rows (a gated MLP's gate, then up), for
    /// [`PackedMatrix::gated_matmul_t`] as well as for plain products: on AMX, and
    /// where each half is whole panels, the panels of the two halves alternate, so
    /// that one task makes a block of gate and the matching block of up one after the
    /// other and combines them while both are in cache. Packed as
    /// [`PackedMatrix::pack`] otherwise.
    pub fn pack_halves(w: &Tensor) -> Result<Option<Self>> {
        if !matches!(w.device(), Device::Cpu) {
            return Ok(None);
        }
        let kernel = Kernel::detect(w.dtype())?;
        let n = w.dim(0)?;
        if kernel != Kernel::Amx || n % (2 * kernel.nr()) != 0 {
            return Self::pack_for(w, kernel);
        }
        let order = Tensor::from_vec(halves_order(n, kernel.nr()), n, &Device::Cpu)?;
        let Some(mut p) = Self::pack_for(&w.index_select(&order, 0)?, kernel)? else {
            bail!("kernel {kernel} did not pack");
        };
        p.halves = true;
        Ok(Some(p))
    }

    /// Whether [`PackedMatrix::gated_matmul_t`] runs on this packing.
    pub fn gated(&self) -> bool {
        self.halves
    }

    /// `act(x G^T) * (x U^T)` for f32 rows `x: [m, k]` and a weight packed by
    /// [`PackedMatrix::pack_halves`] as `[G; U]`; returns `[m, n / 2]`. Gate and up
    /// are rounded to bf16 (as the plain product finishes them) before the
    /// activation, and each block of values is passed to `finish` (a rounding) as it
    /// is made. Neither `[m, n]` intermediate is written to memory.
    pub fn gated_matmul_t(
        &self,
        x: &Tensor,
        act: Act,
        finish: impl Fn(&mut [f32]) + Sync,
    ) -> Result<Tensor> {
        let (m, k) = x.dims2()?;
        if k != self.k {
            bail!("matmul: input has {k} columns, weight has {}", self.k);
        }
        let (Panels::Bf16(b), true) = (&self.panels, self.halves) else {
            bail!("gated product: the weight was not packed in alternating halves");
        };
        let width = self.n / 2;
        let out = with_slice(x, |a: &[f32]| {
            let mut out = Output::with_capacity(m * width);
            #[cfg(target_arch = "x86_64")]
            // SAFETY: halves are packed only for AMX, which `pack_for` checked the
            // CPU runs; the gated product writes all m x n/2 values.
            unsafe {
                let ptr = OutPtr(out.as_mut_ptr());
                amx(a, b, m, self.n, k, AmxOut::Gated(ptr, act, &finish));
                out.assume_written(m * width);
            }
            out
        })?;
        out.into_tensor((m, width))
    }

    /// The kernel the weight was packed for.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// `(n, k)`: output and input sizes.
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// The weight `[n, k]` in its type, unpacked.
    pub fn to_tensor(&self) -> Result<Tensor> {
        let (n, k) = (self.n, self.k);
        let packed = match &self.panels {
            Panels::F32(p) => Tensor::from_vec(unpack(p, n, k, self.kernel), (n, k), &Device::Cpu)?,
            Panels::Bf16(p) => {
                let w: Vec<half::bf16> = unpack(p, n, k, self.kernel)
                    .into_iter()
                    .map(half::bf16::from_bits)
                    .collect();
                Tensor::from_vec(w, (n, k), &Device::Cpu)?
            }
        };
        if !self.halves {
            return Ok(packed);
        }
        let mut back = vec![0u32; n];
        for (i, &row) in halves_order(n, self.kernel.nr()).iter().enumerate() {
            back[row as usize] = i as u32;
        }
        Ok(packed.index_select(&Tensor::from_vec(back, n, &Device::Cpu)?, 0)?)
    }

    /// `x W^T` for f32 rows `x: [m, k]`; returns `[m, n]` in f32.
    pub fn matmul_t(&self, x: &Tensor) -> Result<Tensor> {
        self.matmul_t_then(x, Finish::default())
    }

    /// [`PackedMatrix::matmul_t`], with `finish` applied to each block of the output
    /// while the block is in cache.
    pub fn matmul_t_then(&self, x: &Tensor, finish: Finish) -> Result<Tensor> {
        let (m, k) = x.dims2()?;
        if k != self.k {
            bail!("matmul: input has {k} columns, weight has {}", self.k);
        }
        if finish.bias.is_some_and(|b| b.len() != self.n) {
            bail!("matmul: bias does not match the weight's {} rows", self.n);
        }
        let out = with_slice(x, |a: &[f32]| self.product(a, m, finish))?;
        out.into_tensor((m, self.n))
    }

    /// `a W^T` for `m` rows of `k` floats, row-major, then `finish`.
    pub fn product(&self, a: &[f32], m: usize, finish: Finish) -> Output {
        assert_eq!(a.len(), m * self.k, "product: rows do not match the weight");
        assert!(
            finish.bias.is_none_or(|b| b.len() == self.n),
            "product: bias"
        );
        let len = m * self.n;
        // Not zeroed first: the tiles cover the output, and zeroing it cost a few
        // percent of a run (perf).
        let mut out = Output::with_capacity(len);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `pack_for` checked that the CPU runs the kernel; `a` holds m*k floats,
        // `out` room for m*n, every one of which the tiles write before
        // `assume_written`; the panels were packed for this kernel's layout.
        unsafe {
            self.product_x86(
                a,
                m,
                Out {
                    ptr: OutPtr(out.as_mut_ptr()),
                    finish,
                },
            );
            out.assume_written(len);
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("weights are packed only on x86-64");
        out
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn product_x86(&self, a: &[f32], m: usize, out: Out) {
        use x86::*;
        let (n, k) = (self.n, self.k);
        match (&self.panels, self.kernel) {
            (Panels::Bf16(b), Kernel::Amx) => amx(a, b, m, n, k, AmxOut::Plain(out, self.halves)),
            (Panels::Bf16(b), Kernel::Avx512Bf16) => {
                let kp = k.div_ceil(2);
                let a16 = bf16_rows(a, m, k, kp);
                tiles(m, n, MR512, NR512, out, |r, rows, j, c, cols| {
                    let t = Tile {
                        a: a16.as_ptr().add(r * 2 * kp),
                        lda: 2 * kp,
                        b: b.as_ptr().add(j * kp * 2 * NR512),
                        k: kp,
                        c,
                        ldc: n,
                        cols,
                    };
                    dispatch!(rows, tile_avx512bf16, t, 12);
                });
            }
            (Panels::Bf16(b), Kernel::Avx512) => avx512(a, b, m, n, k, out),
            (Panels::F32(b), Kernel::Avx512) => avx512(a, b, m, n, k, out),
            (Panels::Bf16(b), Kernel::Avx2) => avx2(a, b, m, n, k, out),
            (Panels::F32(b), Kernel::Avx2) => avx2(a, b, m, n, k, out),
            _ => unreachable!("panels packed for {}", self.kernel),
        }
    }
}

impl Kernel {
    /// Output columns per packed panel.
    fn nr(self) -> usize {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Self::Amx | Self::Avx512Bf16 | Self::Avx512 => x86::NR512,
                Self::Avx2 => x86::NR256,
                Self::Portable => 1,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            1
        }
    }

    /// For the kernels that read bf16 pairs, the pairs each panel row holds for an
    /// inner size `k`: AMX consumes them 16 at a time, so its panels are zero-padded.
    fn pairs(self, k: usize) -> Option<usize> {
        match self {
            Self::Avx512Bf16 => Some(k.div_ceil(2)),
            #[cfg(target_arch = "x86_64")]
            Self::Amx => Some(k.div_ceil(2 * x86::AMX_PAIRS) * x86::AMX_PAIRS),
            _ => None,
        }
    }

    /// Where a pair kernel's panel keeps column `c`'s inner value `p`. `vdpbf16ps`
    /// reads `[pair][column][2]`; AMX reads the same cut into steps of 32 inner values
    /// and 16-column halves, `[step][half][pair][16][2]`, so that each tile it loads
    /// is 1 KiB of consecutive memory.
    fn pair_offset(self, c: usize, p: usize) -> usize {
        #[cfg(target_arch = "x86_64")]
        if self == Self::Amx {
            let (half, col) = (c / x86::AMX_ROWS, c % x86::AMX_ROWS);
            let (step, pair) = (p / (2 * x86::AMX_PAIRS), p % (2 * x86::AMX_PAIRS) / 2);
            return step * x86::AMX_STEP
                + half * x86::AMX_STEP / 2
                + (pair * x86::AMX_ROWS + col) * 2
                + p % 2;
        }
        (p / 2 * self.nr() + c) * 2 + p % 2
    }
}

/// Rounds f32 values to bf16 in place (nearest, ties to even, as `half` does), on
/// this thread; with AVX512_BF16, sixteen at a time.
pub fn round_bf16(values: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if Kernel::Avx512Bf16.available() {
        // SAFETY: the CPU has AVX-512F and AVX512_BF16.
        return unsafe { x86::round_bf16(values) };
    }
    for x in values {
        *x = half::bf16::from_f32(*x).to_f32();
    }
}

/// `m` f32 rows of `k` as bf16 rows of `2 * kp` (zero-padded).
#[cfg(target_arch = "x86_64")]
unsafe fn bf16_rows(a: &[f32], m: usize, k: usize, kp: usize) -> Vec<u16> {
    let mut a16 = vec![0u16; m * 2 * kp];
    a16.par_chunks_mut(2 * kp)
        .zip(a.par_chunks(k))
        .for_each(|(d, s)| x86::to_bf16_row(s, d));
    a16
}

/// Bytes of packed weights one AMX task reads: its panels stay in L2 while its strip
/// of 32 rows passes over them. oneDNN's AMX matmul (its JIT dump, 1 thread) takes 24
/// panels at k = 576 and 9 at k = 1536, about this much.
const AMX_PANEL_BYTES: usize = 864 << 10;

/// AMX product: tasks of one strip of 32 rows by a chunk of panels
/// ([`AMX_PANEL_BYTES`]), chunk by chunk, so each thread keeps its chunk in L2 while the
/// strips pass. Against the earlier blocks of 128 rows by 4 panels, in a one-core
/// prototype (medians of 15 interleaved runs, GFLOP/s): 548 -> 983 at 4096 x 960 x
/// 576, 694 -> 937 at 4096 x 3072 x 576, 712 -> 785 at 4096 x 576 x 1536.
///
/// Each task converts its strip to bf16 tiles itself, into a buffer of its thread that
/// stays in L1 while the chunk's panels pass over it. Against converting the whole
/// input first (one pass, tiles read back from memory by the tasks), at the model's
/// 1,024-row batches (medians of 15 interleaved runs, 1 thread, GFLOP/s): 650 -> 777
/// at n x k = 576 x 576, 681 -> 698 at 576 x 1536, 774 -> 815 at 960 x 576, 839 -> 830
/// at 3072 x 576, where the strip is converted four times, once per chunk.
/// What an AMX product makes of its blocks.
#[derive(Clone, Copy)]
enum AmxOut<'a> {
    /// The product, finished block by block; the weight's panels alternate between
    /// two halves when the flag is set ([`PackedMatrix::pack_halves`]).
    Plain(Out<'a>, bool),
    /// `act(gate) * up` of a weight packed in alternating halves: `n / 2` columns,
    /// each block passed to the function as it is made.
    Gated(OutPtr, Act, &'a (dyn Fn(&mut [f32]) + Sync)),
}

#[cfg(target_arch = "x86_64")]
unsafe fn amx(a: &[f32], b: &[u16], m: usize, n: usize, k: usize, out: AmxOut) {
    use x86::*;
    let steps = Kernel::Amx.pairs(k).expect("AMX reads pairs") / AMX_PAIRS;
    let strip = 2 * AMX_ROWS;
    // A gated product takes its panels two by two (gate and up of the same columns).
    let per_unit = if matches!(out, AmxOut::Gated(..)) {
        2
    } else {
        1
    };
    let units = n.div_ceil(NR512) / per_unit;
    let unit_bytes = per_unit * steps * AMX_STEP * size_of::<u16>();
    let chunks = units.div_ceil((AMX_PANEL_BYTES / unit_bytes).max(1));
    let per_chunk = units.div_ceil(chunks);
    let strips = m.div_ceil(strip);
    (0..chunks * strips).into_par_iter().for_each(|task| {
        let (chunk, s) = (task / strips, task % strips);
        let (r, live) = (s * strip, strip.min(m - s * strip));
        let mine = chunk * per_chunk..((chunk + 1) * per_chunk).min(units);
        // [step][32 rows][32]; `to_bf16_tile_row` writes the zeros past `k`. Rows past
        // `live` keep whatever an earlier strip left: they only make output rows that
        // are never stored.
        with_amx_tiles(steps * AMX_STEP, |tiles| {
            for (i, row) in a[r * k..(r + live) * k].chunks(k).enumerate() {
                to_bf16_tile_row(row, tiles.as_mut_ptr().add(i * 2 * AMX_PAIRS));
            }
            amx_configure();
            let panel = |j: usize| b.as_ptr().add(j * steps * AMX_STEP);
            let zero = || AmxBlock([0.0; 2 * AMX_ROWS * NR512]);
            let run = |finish| amx_units(tiles.as_ptr(), panel, steps, per_unit, mine, finish);
            match out {
                AmxOut::Plain(out, halves) => {
                    let column = |j: usize| match halves {
                        true => j / 2 * NR512 + j % 2 * (n / 2),
                        false => j * NR512,
                    };
                    run(&mut |blocks: &mut [AmxBlock; 2], j: usize| {
                        let (col, cols) = (column(j), NR512.min(n - column(j)));
                        let bias = out.finish.bias.map(|b| &b[col..][..cols]);
                        let c = out.ptr.at(r * n + col);
                        amx_finish32(&blocks[0], c, n, live, cols, bias, out.finish.round_bf16);
                    });
                }
                AmxOut::Gated(ptr, act, finish) => {
                    let width = n / 2;
                    // One call of the activation per block: one per row of 32 values
                    // made the whole embed 1.10x slower than the separate pass.
                    let mut made = zero();
                    run(&mut |pair: &mut [AmxBlock; 2], p: usize| {
                        let len = live * NR512;
                        for block in pair.iter_mut() {
                            x86::round_bf16(&mut block.0[..len]);
                        }
                        let dst =
                            &mut *(&mut made.0[..len] as *mut [f32] as *mut [MaybeUninit<f32>]);
                        let (g, u) = (&pair[0].0[..len], &pair[1].0[..len]);
                        let values = match act {
                            Act::Silu => exp::silu_mul(dst, g, u),
                            Act::GeluTanh => exp::gelu_tanh_mul(dst, g, u),
                        };
                        finish(values);
                        for (i, row) in values.chunks(NR512).enumerate() {
                            let c = ptr.at((r + i) * width + p * NR512);
                            std::ptr::copy_nonoverlapping(row.as_ptr(), c, NR512);
                        }
                    });
                }
            }
            amx_release();
        });
    });
}

/// Runs a task's units of `per_unit` panels (1, or 2 for a gate panel and its up
/// panel) over the strip's `tiles`: each block's sums go to a buffer, and the
/// previous unit is finished (`finish(buffers, unit)`) while the next unit's first
/// block computes. Rounding each block straight after storing it waited on those
/// stores: it took 17-23% off a one-thread 1024 x 960 x 576 product, and this way
/// about 1% (in-process, medians of 15 interleaved runs).
///
/// # Safety
/// [`x86::amx_configure`] ran on this thread; `tiles` and every `panel(j)` hold
/// `steps` AMX steps.
#[cfg(target_arch = "x86_64")]
unsafe fn amx_units(
    tiles: *const u16,
    panel: impl Fn(usize) -> *const u16,
    steps: usize,
    per_unit: usize,
    units: Range<usize>,
    finish: &mut dyn FnMut(&mut [x86::AmxBlock; 2], usize),
) {
    use x86::*;
    let zero = || AmxBlock([0.0; 2 * AMX_ROWS * NR512]);
    let mut buffers = [[zero(), zero()], [zero(), zero()]];
    let mut last = None;
    for (i, unit) in units.enumerate() {
        for h in 0..per_unit {
            amx_block32(tiles, panel(per_unit * unit + h), steps);
            if let (0, Some((pi, pu))) = (h, last) {
                finish(&mut buffers[pi % 2], pu);
            }
            amx_store32(&mut buffers[i % 2][h]);
        }
        last = Some((i, unit));
    }
    if let Some((pi, pu)) = last {
        finish(&mut buffers[pi % 2], pu);
    }
}

/// The rows of `[first half; second half]` (`n` rows, halves of whole panels of
/// `nr`) in the order [`PackedMatrix::pack_halves`] packs them: a panel of the first
/// half, the same panel of the second, and so on.
fn halves_order(n: usize, nr: usize) -> Vec<u32> {
    let half = n / 2;
    (0..n)
        .map(|i| {
            let (p, side, c) = (i / (2 * nr), i / nr % 2, i % nr);
            (side * half + p * nr + c) as u32
        })
        .collect()
}

/// Calls `f` with this thread's buffer for AMX activation tiles, grown to `len` and
/// kept between tasks: a fresh zeroed buffer per product was a `memset` of the whole
/// activation, 1.6% of a bf16 embed of SmolLM2 (perf). Should a task ever run inside
/// another on one thread, the inner one gets a buffer of its own.
#[cfg(target_arch = "x86_64")]
fn with_amx_tiles(len: usize, f: impl FnOnce(&mut [u16])) {
    use std::cell::RefCell;
    thread_local! {
        static TILES: RefCell<Aligned<u16>> = RefCell::new(Aligned::zeroed(0));
    }
    TILES.with(|cell| match cell.try_borrow_mut() {
        Ok(mut tiles) => {
            if tiles.len() < len {
                *tiles = Aligned::zeroed(len);
            }
            f(&mut tiles[..len])
        }
        Err(_) => f(&mut Aligned::zeroed(len)),
    })
}

/// Runs `block(rows, panels)` over an output of `m` rows by `panels` panels cut into
/// blocks of `mb` rows by `nb` panels, the blocks in parallel.
fn for_blocks(
    m: usize,
    panels: usize,
    mb: usize,
    nb: usize,
    block: impl Fn(Range<usize>, Range<usize>) + Sync,
) {
    let (row_blocks, col_blocks) = (m.div_ceil(mb), panels.div_ceil(nb));
    (0..row_blocks * col_blocks)
        .into_par_iter()
        .for_each(|blk| {
            let (rb, cb) = (blk / col_blocks, blk % col_blocks);
            block(
                rb * mb..((rb + 1) * mb).min(m),
                cb * nb..((cb + 1) * nb).min(panels),
            );
        });
}

#[cfg(target_arch = "x86_64")]
unsafe fn avx512<E: x86::Elem>(a: &[f32], b: &[E], m: usize, n: usize, k: usize, out: Out) {
    use x86::*;
    tiles(m, n, MR512, NR512, out, |r, rows, j, c, cols| {
        let t = Tile {
            a: a.as_ptr().add(r * k),
            lda: k,
            b: b.as_ptr().add(j * k * NR512),
            k,
            c,
            ldc: n,
            cols,
        };
        dispatch!(rows, tile_avx512::<E>, t, 12);
    });
}

#[cfg(target_arch = "x86_64")]
unsafe fn avx2<E: x86::Elem>(a: &[f32], b: &[E], m: usize, n: usize, k: usize, out: Out) {
    use x86::*;
    tiles(m, n, MR256, NR256, out, |r, rows, j, c, cols| {
        let t = Tile {
            a: a.as_ptr().add(r * k),
            lda: k,
            b: b.as_ptr().add(j * k * NR256),
            k,
            c,
            ldc: n,
            cols,
        };
        dispatch!(rows, tile_avx2::<E>, t, 6);
    });
}

/// Tiles per block side: a block of 8 row tiles by 4 panels keeps its rows and a
/// panel in L2 while giving two threads enough blocks to share.
const TILES_PER_BLOCK: usize = 8;
const PANELS_PER_BLOCK: usize = 4;

/// Runs `tile(first row, rows, panel, output pointer, columns)` over every tile of an
/// `m x n` output, blocks of tiles in parallel; within a block, panel by panel so the
/// panel stays in cache while the block's row tiles pass over it. Each tile is
/// finished as soon as it is made.
fn tiles(
    m: usize,
    n: usize,
    mr: usize,
    nr: usize,
    c: Out,
    tile: impl Fn(usize, usize, usize, *mut f32, usize) + Sync,
) {
    for_blocks(
        m,
        n.div_ceil(nr),
        mr * TILES_PER_BLOCK,
        PANELS_PER_BLOCK,
        |rows, panels| {
            for j in panels {
                let cols = nr.min(n - j * nr);
                for r in rows.clone().step_by(mr) {
                    let live = mr.min(rows.end - r);
                    // SAFETY: (r, j) lies inside the m x n output; tasks own disjoint
                    // blocks.
                    unsafe {
                        tile(r, live, j, c.ptr.at(r * n + j * nr), cols);
                        c.made(r, live, j * nr, cols, n);
                    }
                }
            }
        },
    );
}

/// `[n, k]` row-major to panels of `nr` columns, each `[k][nr]`, zero-padded.
fn pack_panels<E: bytemuck::Pod + Send + Sync>(
    w: &[E],
    n: usize,
    k: usize,
    nr: usize,
) -> Aligned<E> {
    let mut out = Aligned::zeroed(n.div_ceil(nr) * nr * k);
    out.par_chunks_mut(nr * k)
        .enumerate()
        .for_each(|(j, panel)| {
            for c in 0..nr.min(n - j * nr) {
                let row = &w[(j * nr + c) * k..][..k];
                for (p, &x) in row.iter().enumerate() {
                    panel[p * nr + c] = x;
                }
            }
        });
    out
}

/// `[n, k]` bf16 to `kernel`'s panels of `nr` columns, `2 * kp` values per column
/// (`kp >= k/2` pairs, [`Kernel::pairs`]), each value where [`Kernel::pair_offset`]
/// puts it; zero-padded.
fn pack_pairs(w: &[u16], n: usize, k: usize, kernel: Kernel) -> Aligned<u16> {
    let (nr, kp) = (kernel.nr(), kernel.pairs(k).expect("a pair kernel"));
    let mut out = Aligned::zeroed(n.div_ceil(nr) * nr * 2 * kp);
    out.par_chunks_mut(nr * 2 * kp)
        .enumerate()
        .for_each(|(j, panel)| {
            for c in 0..nr.min(n - j * nr) {
                let row = &w[(j * nr + c) * k..][..k];
                for (p, &x) in row.iter().enumerate() {
                    panel[kernel.pair_offset(c, p)] = x;
                }
            }
        });
    out
}

/// The inverse of [`pack_panels`] or [`pack_pairs`], whichever packed for `kernel`.
fn unpack<E: Copy + Default>(panels: &[E], n: usize, k: usize, kernel: Kernel) -> Vec<E> {
    let (nr, pairs) = (kernel.nr(), kernel.pairs(k));
    let mut w = vec![E::default(); n * k];
    for (i, row) in w.chunks_mut(k).enumerate() {
        let (j, c) = (i / nr, i % nr);
        for (p, x) in row.iter_mut().enumerate() {
            *x = if let Some(kp) = pairs {
                panels[j * nr * 2 * kp + kernel.pair_offset(c, p)]
            } else {
                panels[j * nr * k + p * nr + c]
            };
        }
    }
    w
}

fn bits(w: &[half::bf16]) -> &[u16] {
    // SAFETY: bf16 is a transparent wrapper of u16.
    unsafe { std::slice::from_raw_parts(w.as_ptr() as *const u16, w.len()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1) with a few large ones, as activations have.
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let x = (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
                if i % 97 == 3 {
                    x * 300.0
                } else {
                    x
                }
            })
            .collect()
    }

    /// The plain triple loop, in f64.
    fn reference(a: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> (Vec<f64>, Vec<f64>) {
        let mut out = vec![0f64; m * n];
        let mut mag = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    let t = a[i * k + p] as f64 * w[j * k + p] as f64;
                    out[i * n + j] += t;
                    mag[i * n + j] += t.abs();
                }
            }
        }
        (out, mag)
    }

    fn round_bf16_values(x: &[f32]) -> Vec<f32> {
        x.iter()
            .map(|&v| half::bf16::from_f32(v).to_f32())
            .collect()
    }

    /// Shapes with 1 row, odd sizes, sizes off the tile and panel sizes (12/6 rows,
    /// 32/16 columns), blocks of several tiles, and (the last) AMX's panels cut into
    /// three chunks, the last short, under a partial strip.
    const SHAPES: [(usize, usize, usize); 10] = [
        (1, 1, 1),
        (1, 33, 7),
        (2, 16, 2),
        (5, 31, 17),
        (12, 32, 64),
        (13, 65, 3),
        (97, 100, 33),
        (25, 130, 576),
        (200, 160, 9),
        (33, 581, 1536),
    ];

    fn check(kernel: Kernel, dtype: DType) {
        for (m, n, k) in SHAPES {
            let a = values(m * k, (m * 31 + k) as u64);
            let w = values(n * k, (n * 17 + k) as u64 + 5);
            let wt = Tensor::from_vec(w.clone(), (n, k), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let x = Tensor::from_vec(a.clone(), (m, k), &Device::Cpu).unwrap();
            let got = match PackedMatrix::pack_for(&wt, kernel).unwrap() {
                Some(p) => {
                    assert_eq!(
                        p.to_tensor()
                            .unwrap()
                            .to_dtype(DType::F32)
                            .unwrap()
                            .to_vec2::<f32>()
                            .unwrap(),
                        wt.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap(),
                        "unpacked weight"
                    );
                    let plain = p.matmul_t(&x).unwrap();
                    check_finish(&p, &x, &plain);
                    plain
                }
                None => super::super::matmul_t(&x, &wt).unwrap(),
            };
            let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let w = wt
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            // The bf16 kernel rounds activations to bf16; so does the reference for it.
            let a = if kernel.pairs(k).is_some() {
                round_bf16_values(&a)
            } else {
                a
            };
            let (want, mag) = reference(&a, &w, m, n, k);
            for (i, ((&g, &r), &s)) in got.iter().zip(&want).zip(&mag).enumerate() {
                // f32 sums of k terms: error within a few k * eps of the sum of magnitudes.
                let tol = 4.0 * k as f64 * f32::EPSILON as f64 * s + 1e-30;
                assert!(
                    (g as f64 - r).abs() <= tol,
                    "{kernel} {dtype:?} {m}x{n}x{k}: element {i} is {g}, reference {r}"
                );
            }
        }
    }

    /// The product finished block by block is the plain product with the bias added
    /// and rounded afterwards, bit for bit.
    fn check_finish(p: &PackedMatrix, x: &Tensor, plain: &Tensor) {
        let (m, n) = plain.dims2().unwrap();
        let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.37 - 3.0).collect();
        for round_bf16 in [false, true] {
            let finish = Finish {
                bias: Some(&bias),
                round_bf16,
            };
            let got = p
                .matmul_t_then(x, finish)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            for (i, (g, y)) in got.iter().zip(plain.to_vec2::<f32>().unwrap()).enumerate() {
                let mut want: Vec<f32> = y.iter().zip(&bias).map(|(y, b)| y + b).collect();
                if round_bf16 {
                    want = round_bf16_values(&want);
                }
                assert_eq!(
                    g,
                    &want,
                    "{} {m}x{n}: row {i}, rounded {round_bf16}",
                    p.kernel()
                );
            }
        }
    }

    fn check_or_skip(kernel: Kernel, dtype: DType) {
        if kernel.available() {
            check(kernel, dtype);
        } else {
            println!(
                "skipped: kernel {kernel} needs {}, which this CPU lacks",
                kernel.needs()
            );
        }
    }

    #[test]
    fn amx_matches_reference() {
        check_or_skip(Kernel::Amx, DType::BF16);
    }

    #[test]
    fn avx512_bf16_matches_reference() {
        check_or_skip(Kernel::Avx512Bf16, DType::BF16);
    }

    #[test]
    fn avx512_matches_reference() {
        check_or_skip(Kernel::Avx512, DType::F32);
        check_or_skip(Kernel::Avx512, DType::BF16);
    }

    #[test]
    fn avx2_matches_reference() {
        check_or_skip(Kernel::Avx2, DType::F32);
        check_or_skip(Kernel::Avx2, DType::BF16);
    }

    #[test]
    fn portable_matches_reference() {
        check(Kernel::Portable, DType::F32);
        check(Kernel::Portable, DType::BF16);
        check(Kernel::Portable, DType::F16);
    }

    /// Halves packed alternately leave the unpacked weight and the plain product as
    /// they were, and the gated product is the product followed by the activation,
    /// bit for bit: a row, rows off the strip, k off the step, two chunks of panel
    /// pairs, and halves that are not whole panels (packed plainly).
    #[test]
    fn gated_product_is_the_product_then_the_activation() {
        if Kernel::detect(DType::BF16).unwrap() != Kernel::Amx {
            println!("skipped: the gated product runs on AMX, which this CPU lacks");
            return;
        }
        for (m, n, k) in [
            (1, 64, 7),
            (33, 128, 576),
            (70, 192, 100),
            (40, 1024, 576),
            (5, 96, 40),
        ] {
            let at = format!("{m}x{n}x{k}");
            let x = Tensor::from_vec(values(m * k, 3), (m, k), &Device::Cpu).unwrap();
            let w = Tensor::from_vec(values(n * k, 4), (n, k), &Device::Cpu)
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap();
            let halves = PackedMatrix::pack_halves(&w).unwrap().unwrap();
            assert_eq!(halves.gated(), n % 64 == 0, "{at}");
            let plain = PackedMatrix::pack_for(&w, Kernel::Amx).unwrap().unwrap();
            let floats = |t: Tensor| t.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap();
            assert_eq!(
                floats(halves.to_tensor().unwrap()),
                floats(w.clone()),
                "{at}"
            );
            let finish = Finish {
                bias: None,
                round_bf16: true,
            };
            let want = plain.matmul_t_then(&x, finish).unwrap();
            let got = halves.matmul_t_then(&x, finish).unwrap();
            assert_eq!(floats(got), floats(want.clone()), "{at}: plain product");
            if !halves.gated() {
                continue;
            }
            for act in [Act::Silu, Act::GeluTanh] {
                let got = halves.gated_matmul_t(&x, act, round_bf16).unwrap();
                let want = super::super::gated_act(&want, n / 2, act, round_bf16).unwrap();
                assert_eq!(floats(got), floats(want), "{at}: {act:?}");
            }
        }
    }

    #[test]
    fn detect_reads_the_weight_type() {
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let k = Kernel::detect(dtype).unwrap();
            assert!(k.available() && k.reads(dtype), "{k} for {dtype:?}");
        }
    }
}
