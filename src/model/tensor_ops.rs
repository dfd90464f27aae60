//! The forward pass's hot path in candle's tensor ops, for devices the fused CPU
//! kernels of [`super::kernels`] cannot run on: on a GPU every step here is a cuBLAS
//! product or one of candle's CUDA kernels, and nothing leaves the device. On the CPU
//! the same code runs too, which is how the tests check this path without a GPU.
//!
//! The numerics follow the fused kernels: products take operands in the weights' type
//! and accumulate in f32 (cuBLAS does, for bf16 and f16), everything between products
//! is f32, rounded where [`super::blocks`] rounds. Attention runs in f32 on every row;
//! padded query rows are zeroed afterwards, as the fused kernel leaves them.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};

use super::blocks::Norm;
use super::kernels::{AttentionSpec, HeadLayout};

/// `x W^T` for rows `x: [m, k]` (f32) and a weight `w: [n, k]` in its stored type:
/// the operands meet in the weight's type, the result comes back as f32.
pub fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let y = x.to_dtype(w.dtype())?.matmul(&w.t()?)?;
    Ok(y.to_dtype(DType::F32)?)
}

/// Rotary tables on the device, and how to apply them.
pub struct Rope<'a> {
    /// `[len, dim/2]` each.
    pub cos: &'a Tensor,
    pub sin: &'a Tensor,
    pub dim: usize,
    pub interleaved: bool,
}

/// The query/key norms of a layer that has them (Gemma 3).
pub struct HeadNorms<'a> {
    pub q: Option<&'a Norm>,
    pub k: Option<&'a Norm>,
}

/// Causal softmax attention from fused QKV rows `[b*t, (h + 2kv) * hd]`: the
/// counterpart of [`super::kernels::split_heads`] followed by
/// [`super::kernels::attention`], with the same outputs (context rows `[b*t, h*hd]`,
/// zero on padded rows; probabilities `[b, h, t, t]` when asked, zero outside the
/// visible region).
pub fn attention(
    qkv: &Tensor,
    norms: &HeadNorms,
    rope: Option<&Rope>,
    spec: &AttentionSpec,
) -> Result<(Tensor, Option<Tensor>)> {
    let l = spec.layout;
    let (b, t, hd) = (l.batch, l.len, l.head_dim);
    let group = l.heads / l.kv_heads;
    let heads = qkv.reshape((b, t, l.heads + 2 * l.kv_heads, hd))?;
    let part = |first: usize, n: usize, norm: Option<&Norm>, rotate: bool| -> Result<Tensor> {
        let x = heads.narrow(2, first, n)?.transpose(1, 2)?.contiguous()?;
        let x = match norm {
            Some(norm) => norm.forward(&x)?,
            None => x,
        };
        match (rotate, rope) {
            (true, Some(r)) => rotate_heads(&x, r),
            _ => Ok(x),
        }
    };
    let q = part(0, l.heads, norms.q, true)?;
    let k = repeat_kv(&part(l.heads, l.kv_heads, norms.k, true)?, group)?;
    let v = repeat_kv(&part(l.heads + l.kv_heads, l.kv_heads, None, false)?, group)?;
    let scores = (q.matmul(&k.t()?)? * spec.scale as f64)?;
    let device = qkv.device();
    let probs = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&mask(t, spec, device)?)?)?;
    let probs = probs.broadcast_mul(&real_rows(l, spec.lens, device)?)?;
    let ctx = probs
        .matmul(&v)?
        .transpose(1, 2)?
        .reshape((b * t, l.heads * hd))?;
    Ok((ctx, spec.want_probs.then_some(probs)))
}

/// Rotates the first `rope.dim` channels of every head `[b, h, t, hd]`.
fn rotate_heads(x: &Tensor, rope: &Rope) -> Result<Tensor> {
    let apply = if rope.interleaved {
        candle_nn::rotary_emb::rope_i
    } else {
        candle_nn::rotary_emb::rope
    };
    let hd = x.dim(3)?;
    if rope.dim == hd {
        return Ok(apply(x, rope.cos, rope.sin)?);
    }
    // GPT-NeoX rotates only part of each head (`rotary_pct`).
    let rotated = apply(&x.narrow(3, 0, rope.dim)?.contiguous()?, rope.cos, rope.sin)?;
    Ok(Tensor::cat(
        &[rotated, x.narrow(3, rope.dim, hd - rope.dim)?],
        3,
    )?)
}

/// `[b, kv, t, hd]` -> `[b, kv * group, t, hd]`, each K/V head serving `group`
/// consecutive query heads.
fn repeat_kv(x: &Tensor, group: usize) -> Result<Tensor> {
    if group == 1 {
        return Ok(x.clone());
    }
    let (b, kv, t, hd) = x.dims4()?;
    Ok(x.unsqueeze(2)?
        .expand((b, kv, group, t, hd))?
        .reshape((b, kv * group, t, hd))?)
}

/// Additive mask `[1, 1, t, t]`: 0 where query `i` sees key `j` (`j <= i`, within the
/// window), minus infinity elsewhere. Every row sees its own key, so no row is empty.
fn mask(t: usize, spec: &AttentionSpec, device: &Device) -> Result<Tensor> {
    let data: Vec<f32> = (0..t * t)
        .map(|at| {
            let (i, j) = (at / t, at % t);
            let visible = j <= i && spec.window.is_none_or(|w| i - j < w);
            if visible {
                0.0
            } else {
                f32::NEG_INFINITY
            }
        })
        .collect();
    Ok(Tensor::from_vec(data, (1, 1, t, t), device)?)
}

/// `[b, 1, t, 1]`: 1 on each sequence's real query rows, 0 on its padding.
fn real_rows(l: &HeadLayout, lens: &[usize], device: &Device) -> Result<Tensor> {
    let data: Vec<f32> = lens
        .iter()
        .flat_map(|&len| (0..l.len).map(move |i| if i < len { 1.0 } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(data, (l.batch, 1, l.len, 1), device)?)
}
