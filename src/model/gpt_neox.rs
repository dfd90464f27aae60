//! GPT-NeoX (Pythia, the paper's main model family): LayerNorm, a fused per-head
//! QKV projection, rotary on a fraction of each head, and a parallel residual.

use anyhow::Result;
use serde::Deserialize;

use super::blocks::{
    Activation, Attention, AttentionParts, Block, Linear, Mlp, Norm, Residual, Rotary,
};
use super::{require_sizes, rope_from_hf, ModelConfig, Transformer, TransformerParts};
use crate::model::hf::HfDir;

#[derive(Debug, Deserialize)]
struct HfConfig {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default = "default_act")]
    hidden_act: String,
    rotary_pct: Option<f64>,
    partial_rotary_factor: Option<f64>,
    rotary_emb_base: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    rope_parameters: Option<serde_json::Value>,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default = "default_true")]
    use_parallel_residual: bool,
    #[serde(default = "default_true")]
    attention_bias: bool,
    vocab_size: usize,
    #[serde(default = "default_context")]
    max_position_embeddings: usize,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_eps() -> f64 {
    1e-5
}
fn default_true() -> bool {
    true
}
fn default_context() -> usize {
    2048
}

/// Builds GPT-NeoX (Pythia) from a Hugging Face directory.
pub fn from_hf(dir: &HfDir) -> Result<Transformer> {
    let c: HfConfig = dir.config()?;
    require_sizes(&[
        ("hidden_size", Some(c.hidden_size)),
        ("intermediate_size", Some(c.intermediate_size)),
        ("num_hidden_layers", Some(c.num_hidden_layers)),
        ("num_attention_heads", Some(c.num_attention_heads)),
        ("vocab_size", Some(c.vocab_size)),
        ("max_position_embeddings", Some(c.max_position_embeddings)),
    ])?;
    let vb = dir.var_builder()?;
    let (hidden, heads) = (c.hidden_size, c.num_attention_heads);
    let hd = hidden / heads;
    let (theta, scaling) = rope_from_hf(
        c.rope_parameters.as_ref(),
        c.rope_theta.or(c.rotary_emb_base),
        c.rope_scaling.as_ref(),
        10_000.0,
    )?;
    let fraction = c
        .rope_parameters
        .as_ref()
        .and_then(|p| p.get("partial_rotary_factor"))
        .and_then(|f| f.as_f64())
        .or(c.partial_rotary_factor)
        .or(c.rotary_pct)
        .unwrap_or(0.25);
    let rotary_dim = (hd as f64 * fraction) as usize;
    let act = Activation::from_hf(&c.hidden_act)?;
    let mut blocks = Vec::with_capacity(c.num_hidden_layers);
    for i in 0..c.num_hidden_layers {
        let vb = vb.pp(format!("gpt_neox.layers.{i}"));
        let vba = vb.pp("attention");
        let qkv = by_projection(
            Linear::load(
                vba.pp("query_key_value"),
                hidden,
                3 * hidden,
                c.attention_bias,
            )?,
            heads,
        )?;
        let attn = Attention::new(AttentionParts {
            q: qkv.rows(0, hidden)?,
            k: qkv.rows(hidden, hidden)?,
            v: qkv.rows(2 * hidden, hidden)?,
            out: Linear::load(vba.pp("dense"), hidden, hidden, c.attention_bias)?,
            num_heads: heads,
            num_kv_heads: heads,
            head_dim: hd,
            q_norm: None,
            k_norm: None,
            rotary: Some(Rotary::new(rotary_dim, theta, &scaling, false)),
            scale: 1.0 / (hd as f64).sqrt(),
            window: None,
        })?;
        let vbm = vb.pp("mlp");
        blocks.push(Block {
            attn_norm: Norm::layer(vb.pp("input_layernorm"), hidden, c.layer_norm_eps)?,
            attn,
            post_attn_norm: None,
            mlp_norm: Norm::layer(vb.pp("post_attention_layernorm"), hidden, c.layer_norm_eps)?,
            mlp: Mlp::plain(
                Linear::load(vbm.pp("dense_h_to_4h"), hidden, c.intermediate_size, true)?,
                Linear::load(vbm.pp("dense_4h_to_h"), c.intermediate_size, hidden, true)?,
                act,
            )?,
            post_mlp_norm: None,
            residual: if c.use_parallel_residual {
                Residual::Parallel
            } else {
                Residual::Sequential
            },
        });
    }
    let lm_head = if vb.contains_tensor("embed_out.weight") {
        Some(vb.get((c.vocab_size, hidden), "embed_out.weight")?)
    } else {
        None
    };
    Transformer::new(TransformerParts {
        config: ModelConfig {
            architecture: "gpt_neox".into(),
            num_layers: c.num_hidden_layers,
            hidden_size: hidden,
            num_heads: heads,
            num_kv_heads: heads,
            head_dim: hd,
            intermediate_size: c.intermediate_size,
            vocab_size: c.vocab_size,
            context_length: c.max_position_embeddings,
        },
        embed: vb.get((c.vocab_size, hidden), "gpt_neox.embed_in.weight")?,
        embed_scale: None,
        positions: None,
        blocks,
        final_norm: Norm::layer(vb.pp("gpt_neox.final_layer_norm"), hidden, c.layer_norm_eps)?,
        lm_head,
        logit_softcap: None,
    })
}

/// The fused projection interleaves heads (rows are `[head][q|k|v][channel]`);
/// reorders them to `[q|k|v][head][channel]` so each projection is a block of rows.
fn by_projection(qkv: Linear, heads: usize) -> Result<Linear> {
    let (rows, cols) = qkv.weight()?.dims2()?;
    let hd = rows / (3 * heads);
    let weight = qkv
        .weight()?
        .reshape((heads, 3, hd, cols))?
        .transpose(0, 1)?
        .reshape((rows, cols))?;
    let bias = match qkv.bias() {
        Some(b) => Some(b.reshape((heads, 3, hd))?.transpose(0, 1)?.reshape(rows)?),
        None => None,
    };
    Linear::new(weight, bias)
}
