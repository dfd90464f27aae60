//! Building blocks shared by every architecture: norms, linear maps, rotary embeddings,
//! attention, MLPs and the residual block. Architecture files only decide which pieces
//! a model uses and where its weights are; the arithmetic lives here, once.

use std::sync::Arc;

use anyhow::{bail, Result};
use candle_core::{DType, Tensor, D};
use candle_nn::VarBuilder;

use super::dtype::Dtype;
use super::kernels::gemm::{Finish, PackedMatrix};
use super::kernels::with_slice;
use super::{kernels, tensor_ops};

/// Which code computes the forward pass: the fused CPU kernels, or candle's tensor
/// ops, which run on any device (cuBLAS on a GPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ops {
    Fused,
    Tensor,
}

impl Ops {
    /// The fused kernels on the CPU, tensor ops elsewhere.
    pub fn for_device(device: &candle_core::Device) -> Self {
        if device.is_cpu() {
            Ops::Fused
        } else {
            Ops::Tensor
        }
    }

    /// `x W^T` for rows `x: [m, k]` and a weight `w: [n, k]`, as f32.
    pub fn matmul_t(self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        match self {
            Ops::Fused => kernels::matmul_t(x, w),
            Ops::Tensor => tensor_ops::matmul_t(x, w),
        }
    }
}

/// The normalisation a model applies before (and, in Gemma, after) each sublayer.
#[derive(Debug, Clone)]
pub struct Norm {
    weight: Tensor,
    bias: Option<Tensor>,
    eps: f32,
    /// Llama's RMSNorm rounds the normalised vector to the activation type before
    /// multiplying by the weight (in that type); Gemma's and LayerNorm round once.
    weight_in_activation_type: bool,
}

impl Norm {
    /// RMSNorm. `weight_offset` is added to the stored weight once at load time: Gemma
    /// checkpoints store `w` and compute `x * (1 + w)`, GGUF files store `1 + w` already.
    pub fn rms(vb: VarBuilder, size: usize, eps: f64, weight_offset: f64) -> Result<Self> {
        // Small tensors are kept in f32, holding the values the run's type rounds to.
        let weight = vb.get(size, "weight")?.to_dtype(DType::F32)?;
        let weight = if weight_offset != 0.0 {
            (weight + weight_offset)?
        } else {
            weight
        };
        Ok(Self {
            weight,
            bias: None,
            eps: eps as f32,
            weight_in_activation_type: false,
        })
    }

    /// The same norm, rounding as Llama's RMSNorm does: normalise in f32, round to
    /// the activation type, then multiply by the weight in that type.
    pub fn weighted_in_activation_type(self) -> Self {
        Self {
            weight_in_activation_type: true,
            ..self
        }
    }

    /// LayerNorm with a bias, as GPT-2 and GPT-NeoX use.
    pub fn layer(vb: VarBuilder, size: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get(size, "weight")?.to_dtype(DType::F32)?,
            bias: Some(vb.get(size, "bias")?.to_dtype(DType::F32)?),
            eps: eps as f32,
            weight_in_activation_type: false,
        })
    }

    /// The weight and epsilon of an RMSNorm, for kernels that apply it themselves.
    fn rms_weights(&self) -> Result<(Vec<f32>, f32)> {
        if self.bias.is_some() {
            bail!("expected an RMSNorm, found a LayerNorm");
        }
        Ok((self.weight.to_vec1()?, self.eps))
    }

    /// Normalises over the last dimension, rounding the result to `dtype` where
    /// the reference does.
    pub fn forward_in(&self, x: &Tensor, dtype: Dtype) -> Result<Tensor> {
        if dtype != Dtype::F32 && self.bias.is_none() && x.device().is_cpu() {
            return self.rms_rounded(x, dtype);
        }
        if self.weight_in_activation_type && dtype != Dtype::F32 {
            let unit = Tensor::ones_like(&self.weight)?;
            let normed = dtype.round(&candle_nn::ops::rms_norm(x, &unit, self.eps)?)?;
            return dtype.round(&normed.broadcast_mul(&self.weight)?);
        }
        dtype.round(&self.forward(x)?)
    }

    /// RMSNorm rounded to `dtype` on the CPU, one pass per row: the same arithmetic,
    /// bit for bit, as candle's `rms_norm` and the roundings around it in
    /// [`Norm::forward_in`], without their four intermediate tensors (a bf16 run spent
    /// a tenth of its time in them; perf, docs/benchmarks.md).
    fn rms_rounded(&self, x: &Tensor, dtype: Dtype) -> Result<Tensor> {
        let w = self.weight.to_vec1::<f32>()?;
        let (dim, eps, twice) = (w.len(), self.eps, self.weight_in_activation_type);
        let out = with_slice(x, |x: &[f32]| {
            // Sixteen rows a task, so their sums of squares go together.
            kernels::par_filled(x.len(), 16 * dim, |start, o| {
                let x = &x[start..][..o.len()];
                let mut sums = [0f32; 16];
                let sums = &mut sums[..o.len() / dim];
                kernels::sums_of_squares(x, dim, sums);
                for ((o, x), sum) in o.chunks_mut(dim).zip(x.chunks(dim)).zip(sums) {
                    let m = (*sum / dim as f32 + eps).sqrt();
                    // Llama: normalised (weight 1, which multiplies exactly), rounded,
                    // then weighted.
                    let o = kernels::divide_scale(o, x, m, (!twice).then_some(&w[..]));
                    if twice {
                        dtype.round_row(o);
                        o.iter_mut().zip(&w).for_each(|(o, w)| *o *= w);
                    }
                    dtype.round_row(o);
                }
            })
        })?;
        Ok(Tensor::from_vec(out, x.shape(), x.device())?)
    }

    /// Normalises over the last dimension, in f32.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match &self.bias {
            None => candle_nn::ops::rms_norm(x, &self.weight, self.eps)?,
            Some(bias) => candle_nn::ops::layer_norm(x, &self.weight, bias, self.eps)?,
        })
    }
}

/// A dense map `y = x W^T + b` with the weight stored as `[out, in]`.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
}

/// A CPU weight is packed once for the CPU's matrix kernel; a weight elsewhere, or
/// one the portable kernel reads as it is, stays a tensor.
#[derive(Debug, Clone)]
enum Weight {
    Dense(Tensor),
    Packed(Arc<PackedMatrix>, DType),
}

impl Weight {
    fn new(w: Tensor) -> Result<Self> {
        Self::packed(PackedMatrix::pack(&w)?, w)
    }

    fn packed(p: Option<PackedMatrix>, w: Tensor) -> Result<Self> {
        Ok(match p {
            Some(p) => Weight::Packed(Arc::new(p), w.dtype()),
            None => Weight::Dense(w),
        })
    }
}

impl Linear {
    /// Loads `weight` (and `bias` when `bias` is set) stored as `[out, in]`.
    pub fn load(vb: VarBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let part = Self::load_part(vb, in_dim, out_dim, bias)?;
        Self::new(part.weight()?, part.bias)
    }

    /// [`Linear::load`] without packing the weight, for a part that
    /// [`Linear::fuse`] joins and packs once: packing the parts too packed most of
    /// a model's weights twice and unpacked them once.
    pub fn load_part(vb: VarBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias {
            Some(vb.get(out_dim, "bias")?.to_dtype(DType::F32)?)
        } else {
            None
        };
        Ok(Self::part(weight, bias))
    }

    /// A map whose weight stays a tensor until [`Linear::fuse`] packs the whole.
    fn part(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight: Weight::Dense(weight),
            bias,
        }
    }

    /// Loads a GPT-2 style `Conv1D`, whose weight is stored transposed as `[in, out]`.
    pub fn load_conv1d(vb: VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        let weight = vb.get((in_dim, out_dim), "weight")?.t()?.contiguous()?;
        let bias = Some(vb.get(out_dim, "bias")?.to_dtype(DType::F32)?);
        Self::new(weight, bias)
    }

    /// A map from its weight `[out, in]` and optional bias `[out]`.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        Ok(Self {
            weight: Weight::new(weight)?,
            bias,
        })
    }

    /// Stacks several maps that read the same input into one, so that one matrix
    /// product replaces several smaller, slower ones.
    pub fn fuse(parts: &[Linear]) -> Result<Self> {
        let fused = Self::stack(parts)?;
        Self::new(fused.weight()?, fused.bias)
    }

    /// [`Linear::fuse`] of a gated MLP's gate and up, packed so that, where the
    /// kernel allows, [`Linear::gated_forward`] makes `act(gate) * up` in one pass.
    fn fuse_gate_up(gate: Linear, up: Linear) -> Result<Self> {
        let fused = Self::stack(&[gate, up])?;
        let w = fused.weight()?;
        Ok(Self {
            weight: Weight::packed(PackedMatrix::pack_halves(&w)?, w)?,
            bias: fused.bias,
        })
    }

    /// The parts stacked, unpacked.
    fn stack(parts: &[Linear]) -> Result<Self> {
        let weights = parts
            .iter()
            .map(|p| p.weight())
            .collect::<Result<Vec<_>>>()?;
        let weight = Tensor::cat(&weights, 0)?;
        let bias = if parts.iter().all(|p| p.bias.is_some()) {
            let biases: Vec<&Tensor> = parts.iter().filter_map(|p| p.bias.as_ref()).collect();
            Some(Tensor::cat(&biases, 0)?)
        } else if parts.iter().any(|p| p.bias.is_some()) {
            let biases = parts
                .iter()
                .zip(&weights)
                .map(|(p, w)| match &p.bias {
                    Some(b) => Ok(b.clone()),
                    None => Ok(Tensor::zeros(w.dim(0)?, DType::F32, w.device())?),
                })
                .collect::<Result<Vec<_>>>()?;
            Some(Tensor::cat(&biases, 0)?)
        } else {
            None
        };
        Ok(Self::part(weight, bias))
    }

    /// `act(gate) * up` for a map made by [`Linear::fuse_gate_up`], each block
    /// passed to `finish` as it is made; `None` where its packing cannot (another
    /// kernel, a bias), for the caller to take the product and then the activation.
    fn gated_forward(
        &self,
        x: &Tensor,
        act: kernels::Act,
        finish: impl Fn(&mut [f32]) + Sync,
    ) -> Result<Option<Tensor>> {
        match (&self.weight, &self.bias) {
            (Weight::Packed(p, _), None) if p.gated() => {
                Ok(Some(p.gated_matmul_t(x, act, finish)?))
            }
            _ => Ok(None),
        }
    }

    /// The weight, `[out, in]` (unpacked into a new tensor where it was packed).
    pub fn weight(&self) -> Result<Tensor> {
        match &self.weight {
            Weight::Dense(w) => Ok(w.clone()),
            Weight::Packed(p, dtype) => Ok(p.to_tensor()?.to_dtype(*dtype)?),
        }
    }

    /// The output size.
    pub fn out_dim(&self) -> Result<usize> {
        match &self.weight {
            Weight::Dense(w) => Ok(w.dim(0)?),
            Weight::Packed(p, _) => Ok(p.dims().0),
        }
    }

    /// The bias, `[out]`, if the map has one.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Output rows `start..start + len` as a map of their own, unpacked (a part for
    /// [`Linear::fuse`]), for splitting fused checkpoint projections.
    pub fn rows(&self, start: usize, len: usize) -> Result<Linear> {
        let bias = match &self.bias {
            Some(b) => Some(b.narrow(0, start, len)?),
            None => None,
        };
        let weight = self.weight()?.narrow(0, start, len)?.contiguous()?;
        Ok(Self::part(weight, bias))
    }

    /// Applies the map to `[n, in]` rows. The output is rounded to the weight's
    /// type, as a product in that type (accumulated in f32) would be.
    pub fn forward(&self, x: &Tensor, ops: Ops) -> Result<Tensor> {
        let (y, dtype) = match (&self.weight, ops) {
            // The packed product adds the bias and rounds block by block, in cache;
            // packed weights are f32 or bf16 (`Kernel::reads`).
            (Weight::Packed(p, dtype), Ops::Fused) => {
                let bias = self.bias.as_ref().map(|b| b.to_vec1::<f32>()).transpose()?;
                let finish = Finish {
                    bias: bias.as_deref(),
                    round_bf16: *dtype == DType::BF16,
                };
                return p.matmul_t_then(x, finish);
            }
            (Weight::Dense(w), ops) => (ops.matmul_t(x, w)?, w.dtype()),
            // Only the tests run the tensor ops on the CPU, where weights are packed:
            // they read the weight unpacked again.
            (Weight::Packed(_, dtype), Ops::Tensor) => (ops.matmul_t(x, &self.weight()?)?, *dtype),
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        Dtype::from_candle(dtype)?.round(&y)
    }
}

/// The MLP non-linearity, named as in Hugging Face configs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// `gelu_pytorch_tanh`, `gelu_new`: the tanh approximation.
    GeluTanh,
    /// `gelu`: the exact erf form.
    GeluErf,
    Relu,
}

impl Activation {
    /// The activation a Hugging Face config names (`hidden_act`).
    pub fn from_hf(name: &str) -> Result<Self> {
        Ok(match name {
            "silu" | "swish" => Self::Silu,
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Self::GeluTanh,
            "gelu" => Self::GeluErf,
            "relu" => Self::Relu,
            other => bail!("unsupported activation function '{other}'"),
        })
    }

    /// The fused kernel computing this activation, where there is one.
    fn fused(self) -> Option<kernels::Act> {
        match self {
            Self::Silu => Some(kernels::Act::Silu),
            Self::GeluTanh => Some(kernels::Act::GeluTanh),
            Self::GeluErf | Self::Relu => None,
        }
    }

    fn apply(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Silu => candle_nn::ops::silu(x)?,
            Self::GeluTanh => x.gelu()?,
            Self::GeluErf => x.gelu_erf()?,
            Self::Relu => x.relu()?,
        })
    }
}

/// Feed-forward sublayer: gated (`down(act(gate x) * up x)`) or plain (`down(act(up x))`).
#[derive(Debug, Clone)]
pub struct Mlp {
    /// For gated MLPs, gate and up stacked so one product computes both.
    up: Linear,
    down: Linear,
    act: Activation,
    gated: bool,
    intermediate: usize,
}

impl Mlp {
    /// `down(act(gate x) * up x)`.
    pub fn gated(gate: Linear, up: Linear, down: Linear, act: Activation) -> Result<Self> {
        let intermediate = up.out_dim()?;
        Ok(Self {
            up: Linear::fuse_gate_up(gate, up)?,
            down,
            act,
            gated: true,
            intermediate,
        })
    }

    /// `down(act(up x))`.
    pub fn plain(up: Linear, down: Linear, act: Activation) -> Result<Self> {
        let intermediate = up.out_dim()?;
        Ok(Self {
            up,
            down,
            act,
            gated: false,
            intermediate,
        })
    }

    /// Llama-style `gate_proj`/`up_proj`/`down_proj` without biases.
    pub fn load_gated(
        vb: VarBuilder,
        hidden: usize,
        inter: usize,
        act: Activation,
    ) -> Result<Self> {
        Self::gated(
            Linear::load_part(vb.pp("gate_proj"), hidden, inter, false)?,
            Linear::load_part(vb.pp("up_proj"), hidden, inter, false)?,
            Linear::load(vb.pp("down_proj"), inter, hidden, false)?,
            act,
        )
    }

    /// `[n, hidden]` rows in, `[n, hidden]` rows out; the activation's output is
    /// rounded to `dtype`.
    pub fn forward(&self, x: &Tensor, dtype: Dtype, ops: Ops) -> Result<Tensor> {
        let fused = self.act.fused().filter(|_| ops == Ops::Fused);
        if let (true, Some(act)) = (self.gated, fused) {
            // The gated product skips writing gate and up and reading them back: the
            // separate pass was 5% of a bf16 embed of SmolLM2 (perf).
            if let Some(h) = self.up.gated_forward(x, act, |row| dtype.round_row(row))? {
                return self.down.forward(&h, ops);
            }
        }
        let h = self.up.forward(x, ops)?;
        let h = match (self.gated, fused) {
            // Rounded row by row as each is made, saving a pass.
            (true, Some(act)) => {
                kernels::gated_act(&h, self.intermediate, act, |row| dtype.round_row(row))?
            }
            (true, None) => {
                let gate = h.narrow(D::Minus1, 0, self.intermediate)?;
                let up = h.narrow(D::Minus1, self.intermediate, self.intermediate)?;
                dtype.round(&(self.act.apply(&gate)? * up)?)?
            }
            (false, _) => dtype.round(&self.act.apply(&h)?)?,
        };
        self.down.forward(&h, ops)
    }
}

/// Rotary position embedding over the first `dim` channels of each head.
#[derive(Debug, Clone)]
pub struct Rotary {
    pub dim: usize,
    /// Inverse frequencies, one per channel pair, after any scaling.
    inv_freq: Vec<f32>,
    /// GGUF llama checkpoints permute Q/K so that rotation pairs adjacent channels
    /// (`rope_i`); Hugging Face checkpoints pair channel i with i + dim/2 (`rope`).
    pub interleaved: bool,
}

/// How a checkpoint stretches its rotary frequencies for long contexts.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    Linear {
        factor: f64,
    },
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position: f64,
    },
}

impl Rotary {
    /// Rotary over the first `dim` channels of each head, with base `theta`, pairing
    /// channels as `interleaved` says.
    pub fn new(dim: usize, theta: f64, scaling: &RopeScaling, interleaved: bool) -> Self {
        // Computed in f32 like the reference, so angles round the same way.
        let inv_freq = (0..dim / 2)
            .map(|i| {
                let base = 1.0f32 / (theta as f32).powf((2 * i) as f32 / dim as f32);
                scale_frequency(base, scaling)
            })
            .collect();
        Self {
            dim,
            inv_freq,
            interleaved,
        }
    }

    /// Whether two rotaries produce the same cos/sin tables.
    pub fn same_frequencies(&self, other: &Rotary) -> bool {
        self.dim == other.dim && self.inv_freq == other.inv_freq
    }

    /// cos and sin tables for positions `0..len`, copied to `device` as well for the
    /// tensor ops when `ops` says they run.
    pub fn tables(&self, len: usize, ops: Ops, device: &candle_core::Device) -> Result<RopeTables> {
        let half = self.dim / 2;
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for pos in 0..len {
            for &f in &self.inv_freq {
                let angle = pos as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let tensors = match ops {
            Ops::Fused => None,
            Ops::Tensor => Some((
                Tensor::from_slice(&cos, (len, half), device)?,
                Tensor::from_slice(&sin, (len, half), device)?,
            )),
        };
        Ok(RopeTables { cos, sin, tensors })
    }
}

/// cos and sin of every position's rotation angles, `[len, dim/2]` row-major.
pub struct RopeTables {
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// The same on the model's device, for the tensor ops.
    tensors: Option<(Tensor, Tensor)>,
}

fn scale_frequency(f: f32, scaling: &RopeScaling) -> f32 {
    match *scaling {
        RopeScaling::None => f,
        RopeScaling::Linear { factor } => f / factor as f32,
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position,
        } => {
            let wavelen = 2.0 * std::f64::consts::PI / f as f64;
            let low_wavelen = original_max_position / low_freq_factor;
            let high_wavelen = original_max_position / high_freq_factor;
            if wavelen > low_wavelen {
                (f as f64 / factor) as f32
            } else if wavelen < high_wavelen {
                f
            } else {
                let smooth = (original_max_position / wavelen - low_freq_factor)
                    / (high_freq_factor - low_freq_factor);
                ((1.0 - smooth) * f as f64 / factor + smooth * f as f64) as f32
            }
        }
    }
}

/// Multi-head attention with grouped K/V heads, optional Q/K norms and rotary.
#[derive(Debug, Clone)]
pub struct Attention {
    /// Q, K and V stacked so one product computes all three.
    qkv: Linear,
    out: Linear,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    q_norm: Option<Norm>,
    k_norm: Option<Norm>,
    pub rotary: Option<Rotary>,
    scale: f64,
    /// Keys further back than this are invisible (sliding-window layers).
    pub window: Option<usize>,
}

/// The parts of an attention layer, before fusing.
pub struct AttentionParts {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub out: Linear,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub q_norm: Option<Norm>,
    pub k_norm: Option<Norm>,
    pub rotary: Option<Rotary>,
    pub scale: f64,
    pub window: Option<usize>,
}

impl Attention {
    /// Checks the head counts fit together and builds the sublayer.
    pub fn new(p: AttentionParts) -> Result<Self> {
        if p.num_kv_heads == 0 || !p.num_heads.is_multiple_of(p.num_kv_heads) {
            bail!(
                "{} attention heads cannot be grouped over {} key/value heads",
                p.num_heads,
                p.num_kv_heads
            );
        }
        Ok(Self {
            qkv: Linear::fuse(&[p.q, p.k, p.v])?,
            out: p.out,
            num_heads: p.num_heads,
            num_kv_heads: p.num_kv_heads,
            head_dim: p.head_dim,
            q_norm: p.q_norm,
            k_norm: p.k_norm,
            rotary: p.rotary,
            scale: p.scale,
            window: p.window,
        })
    }

    /// Llama-style `q_proj`, `k_proj`, `v_proj`, `o_proj` parts; `bias` applies to
    /// q/k/v only, as in Qwen2. q/k/v stay unpacked: [`Attention::new`] fuses them.
    pub fn load_parts(
        vb: &VarBuilder,
        hidden: usize,
        num_heads: usize,
        num_kv_heads: usize,
        head_dim: usize,
        bias: bool,
    ) -> Result<(Linear, Linear, Linear, Linear)> {
        Ok((
            Linear::load_part(vb.pp("q_proj"), hidden, num_heads * head_dim, bias)?,
            Linear::load_part(vb.pp("k_proj"), hidden, num_kv_heads * head_dim, bias)?,
            Linear::load_part(vb.pp("v_proj"), hidden, num_kv_heads * head_dim, bias)?,
            Linear::load(vb.pp("o_proj"), num_heads * head_dim, hidden, false)?,
        ))
    }

    /// `x`: `[b*t, hidden]` rows of sequences with real lengths `lens`. Returns the
    /// output rows and, when `want_probs`, the attention probabilities
    /// `[b, heads, t, t]`. The context is rounded to `call.dtype` before the output
    /// projection.
    pub fn forward(&self, x: &Tensor, call: &BlockCall) -> Result<(Tensor, Option<Tensor>)> {
        let (lens, len, rope, want_probs) = (call.lens, call.len, call.rope, call.want_probs);
        let layout = kernels::HeadLayout {
            batch: lens.len(),
            len,
            heads: self.num_heads,
            kv_heads: self.num_kv_heads,
            head_dim: self.head_dim,
        };
        let qkv = self.qkv.forward(x, call.ops)?;
        let spec = kernels::AttentionSpec {
            layout: &layout,
            lens,
            scale: self.scale as f32,
            window: self.window,
            want_probs,
        };
        let (ctx, probs) = match call.ops {
            Ops::Fused => {
                let rope = match (&self.rotary, rope) {
                    (Some(rot), Some(tables)) => Some(kernels::RopeSpec {
                        cos: &tables.cos,
                        sin: &tables.sin,
                        dim: rot.dim,
                        interleaved: rot.interleaved,
                    }),
                    _ => None,
                };
                let q_norm = self.q_norm.as_ref().map(Norm::rms_weights).transpose()?;
                let k_norm = self.k_norm.as_ref().map(Norm::rms_weights).transpose()?;
                let (q, k, v) = kernels::split_heads(
                    &qkv,
                    &layout,
                    head_norm(&q_norm),
                    head_norm(&k_norm),
                    rope,
                )?;
                kernels::attention(&q, &k, &v, &spec, |row| call.dtype.round_row(row))?
            }
            Ops::Tensor => {
                let rope = match (&self.rotary, rope.and_then(|r| r.tensors.as_ref())) {
                    (Some(rot), Some((cos, sin))) => Some(tensor_ops::Rope {
                        cos,
                        sin,
                        dim: rot.dim,
                        interleaved: rot.interleaved,
                    }),
                    _ => None,
                };
                let norms = tensor_ops::HeadNorms {
                    q: self.q_norm.as_ref(),
                    k: self.k_norm.as_ref(),
                };
                let (ctx, probs) = tensor_ops::attention(&qkv, &norms, rope.as_ref(), &spec)?;
                (call.dtype.round(&ctx)?, probs)
            }
        };
        Ok((self.out.forward(&ctx, call.ops)?, probs))
    }
}

/// How a block combines its sublayers with the residual stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residual {
    /// `x += attn(norm(x)); x += mlp(norm(x))` (Llama, GPT-2, Gemma with post-norms).
    Sequential,
    /// `x += attn(norm1(x)) + mlp(norm2(x))` (GPT-NeoX, Pythia).
    Parallel,
}

/// One transformer block.
#[derive(Debug, Clone)]
pub struct Block {
    pub attn_norm: Norm,
    pub attn: Attention,
    /// Gemma's norm on the attention output, before it joins the residual stream.
    pub post_attn_norm: Option<Norm>,
    pub mlp_norm: Norm,
    pub mlp: Mlp,
    pub post_mlp_norm: Option<Norm>,
    pub residual: Residual,
}

/// What one block produced, for capture.
pub struct BlockOutput {
    pub resid: Tensor,
    pub probs: Option<Tensor>,
}

/// Per-call switches of a block's forward pass.
pub struct BlockCall<'a> {
    /// Real length of each sequence in the batch.
    pub lens: &'a [usize],
    /// Padded length.
    pub len: usize,
    pub rope: Option<&'a RopeTables>,
    pub want_probs: bool,
    /// `[b*t, 1]` multiplier that zeroes the MLP output at position 0 (the ablation).
    pub mlp_keep: Option<&'a Tensor>,
    /// The type activations are rounded to where the reference holds them in it.
    pub dtype: Dtype,
    pub ops: Ops,
}

impl Block {
    /// `x`: the residual stream as `[b*t, hidden]` rows.
    /// Norm outputs and the residual stream after each add are rounded to
    /// `call.dtype`, as the reference holds them in it.
    pub fn forward(&self, x: &Tensor, call: &BlockCall) -> Result<BlockOutput> {
        let add = |a: &Tensor, b: &Tensor| call.dtype.add(a, b);
        let norm = |n: &Norm, t: &Tensor| n.forward_in(t, call.dtype);
        let (attn_out, probs) = self.attn.forward(&norm(&self.attn_norm, x)?, call)?;
        let attn_out = match &self.post_attn_norm {
            Some(n) => norm(n, &attn_out)?,
            None => attn_out,
        };
        let mlp_in = match self.residual {
            Residual::Sequential => add(x, &attn_out)?,
            Residual::Parallel => x.clone(),
        };
        let mlp_out = self
            .mlp
            .forward(&norm(&self.mlp_norm, &mlp_in)?, call.dtype, call.ops)?;
        let mlp_out = match &self.post_mlp_norm {
            Some(n) => norm(n, &mlp_out)?,
            None => mlp_out,
        };
        let mlp_out = match call.mlp_keep {
            Some(keep) => mlp_out.broadcast_mul(keep)?,
            None => mlp_out,
        };
        let resid = match self.residual {
            Residual::Sequential => add(&mlp_in, &mlp_out)?,
            Residual::Parallel => add(&add(x, &attn_out)?, &mlp_out)?,
        };
        Ok(BlockOutput { resid, probs })
    }
}

fn head_norm(n: &Option<(Vec<f32>, f32)>) -> Option<kernels::HeadNorm<'_>> {
    n.as_ref()
        .map(|(weight, eps)| kernels::HeadNorm { weight, eps: *eps })
}
