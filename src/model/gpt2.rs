//! GPT-2: learned absolute positions, LayerNorm, fused `Conv1D` projections stored
//! transposed, and a tanh-GELU MLP.

use anyhow::Result;
use serde::Deserialize;

use super::blocks::{Activation, Attention, AttentionParts, Block, Linear, Mlp, Norm, Residual};
use super::{require_sizes, ModelConfig, Transformer, TransformerParts};
use crate::model::hf::HfDir;

#[derive(Debug, Deserialize)]
struct HfConfig {
    n_embd: usize,
    n_layer: usize,
    n_head: usize,
    n_inner: Option<usize>,
    n_positions: usize,
    vocab_size: usize,
    #[serde(default = "default_eps")]
    layer_norm_epsilon: f64,
    #[serde(default = "default_act")]
    activation_function: String,
    #[serde(default = "default_true")]
    scale_attn_weights: bool,
}

fn default_eps() -> f64 {
    1e-5
}
fn default_act() -> String {
    "gelu_new".into()
}
fn default_true() -> bool {
    true
}

/// Builds GPT-2 from a Hugging Face directory.
pub fn from_hf(dir: &HfDir) -> Result<Transformer> {
    let c: HfConfig = dir.config()?;
    require_sizes(&[
        ("n_embd", Some(c.n_embd)),
        ("n_layer", Some(c.n_layer)),
        ("n_head", Some(c.n_head)),
        ("n_inner", c.n_inner),
        ("n_positions", Some(c.n_positions)),
        ("vocab_size", Some(c.vocab_size)),
    ])?;
    let vb = dir.var_builder()?;
    // `GPT2LMHeadModel` saves under `transformer.`, the bare `GPT2Model` without it.
    let vb = if vb.contains_tensor("transformer.wte.weight") {
        vb.pp("transformer")
    } else {
        vb
    };
    let (d, heads) = (c.n_embd, c.n_head);
    let hd = d / heads;
    let inner = c.n_inner.unwrap_or(4 * d);
    let act = Activation::from_hf(&c.activation_function)?;
    let mut blocks = Vec::with_capacity(c.n_layer);
    for i in 0..c.n_layer {
        let vb = vb.pp(format!("h.{i}"));
        let qkv = Linear::load_conv1d(vb.pp("attn.c_attn"), d, 3 * d)?;
        let attn = Attention::new(AttentionParts {
            q: qkv.rows(0, d)?,
            k: qkv.rows(d, d)?,
            v: qkv.rows(2 * d, d)?,
            out: Linear::load_conv1d(vb.pp("attn.c_proj"), d, d)?,
            num_heads: heads,
            num_kv_heads: heads,
            head_dim: hd,
            q_norm: None,
            k_norm: None,
            rotary: None,
            scale: if c.scale_attn_weights {
                1.0 / (hd as f64).sqrt()
            } else {
                1.0
            },
            window: None,
        })?;
        blocks.push(Block {
            attn_norm: Norm::layer(vb.pp("ln_1"), d, c.layer_norm_epsilon)?,
            attn,
            post_attn_norm: None,
            mlp_norm: Norm::layer(vb.pp("ln_2"), d, c.layer_norm_epsilon)?,
            mlp: Mlp::plain(
                Linear::load_conv1d(vb.pp("mlp.c_fc"), d, inner)?,
                Linear::load_conv1d(vb.pp("mlp.c_proj"), inner, d)?,
                act,
            )?,
            post_mlp_norm: None,
            residual: Residual::Sequential,
        });
    }
    Transformer::new(TransformerParts {
        config: ModelConfig {
            architecture: "gpt2".into(),
            num_layers: c.n_layer,
            hidden_size: d,
            num_heads: heads,
            num_kv_heads: heads,
            head_dim: hd,
            intermediate_size: inner,
            vocab_size: c.vocab_size,
            context_length: c.n_positions,
        },
        embed: vb.get((c.vocab_size, d), "wte.weight")?,
        embed_scale: None,
        positions: Some(vb.get((c.n_positions, d), "wpe.weight")?),
        blocks,
        final_norm: Norm::layer(vb.pp("ln_f"), d, c.layer_norm_epsilon)?,
        lm_head: None,
        logit_softcap: None,
    })
}
