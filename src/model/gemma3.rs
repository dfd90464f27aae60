//! Gemma 3 (text): sandwich RMSNorms around both sublayers, Q/K norms, scaled
//! embeddings, GELU-gated MLP, and a pattern of sliding-window layers with their own
//! rotary base between full-attention layers.

use anyhow::{bail, Result};
use candle_nn::VarBuilder;
use serde::Deserialize;

use super::blocks::{
    Activation, Attention, AttentionParts, Block, Mlp, Norm, Residual, RopeScaling, Rotary,
};
use super::{require_sizes, rope_from_hf, ModelConfig, Transformer, TransformerParts};
use crate::model::gguf::{GgufFile, GgufNames};
use crate::model::hf::HfDir;

pub static GGUF_NAMES: GgufNames = GgufNames {
    top: &[
        ("token_embd", "model.embed_tokens"),
        ("output_norm", "model.norm"),
    ],
    layer: &[
        ("attn_norm", "input_layernorm"),
        ("attn_q", "self_attn.q_proj"),
        ("attn_k", "self_attn.k_proj"),
        ("attn_v", "self_attn.v_proj"),
        ("attn_output", "self_attn.o_proj"),
        ("attn_q_norm", "self_attn.q_norm"),
        ("attn_k_norm", "self_attn.k_norm"),
        ("post_attention_norm", "post_attention_layernorm"),
        ("ffn_norm", "pre_feedforward_layernorm"),
        ("post_ffw_norm", "post_feedforward_layernorm"),
        ("ffn_gate", "mlp.gate_proj"),
        ("ffn_up", "mlp.up_proj"),
        ("ffn_down", "mlp.down_proj"),
    ],
};

/// Every `sliding_window_pattern`-th layer attends to the full context.
const DEFAULT_PATTERN: usize = 6;

#[derive(Debug, Deserialize)]
struct HfConfig {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: usize,
    #[serde(default = "default_head_dim")]
    head_dim: usize,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_local_base_freq: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    rope_parameters: Option<serde_json::Value>,
    #[serde(default = "default_scalar")]
    query_pre_attn_scalar: f64,
    sliding_window: Option<usize>,
    layer_types: Option<Vec<String>>,
    sliding_window_pattern: Option<usize>,
    final_logit_softcapping: Option<f64>,
    attn_logit_softcapping: Option<f64>,
    #[serde(default = "default_act")]
    hidden_activation: String,
    vocab_size: usize,
    #[serde(default = "default_context")]
    max_position_embeddings: usize,
}

fn default_head_dim() -> usize {
    256
}
fn default_eps() -> f64 {
    1e-6
}
fn default_scalar() -> f64 {
    256.0
}
fn default_act() -> String {
    "gelu_pytorch_tanh".into()
}
fn default_context() -> usize {
    131_072
}

struct LayerKind {
    window: Option<usize>,
    theta: f64,
    scaling: RopeScaling,
}

struct Settings {
    config: ModelConfig,
    eps: f64,
    /// 1 for Hugging Face weights (`x * (1 + w)`); 0 for GGUF, which stores `1 + w`.
    norm_offset: f64,
    query_scale: f64,
    act: Activation,
    layers: Vec<LayerKind>,
    logit_softcap: Option<f64>,
    /// Multimodal checkpoints keep the text model under `language_model.`.
    prefix: &'static str,
}

/// Builds Gemma 3 from a Hugging Face directory (text-only or multimodal).
pub fn from_hf(dir: &HfDir) -> Result<Transformer> {
    let raw: serde_json::Value = dir.config()?;
    // Multimodal Gemma 3 checkpoints nest the text model's config.
    let c: HfConfig = match raw.get("text_config") {
        Some(text) => serde_json::from_value(text.clone())
            .map_err(|e| anyhow::anyhow!("{}: text_config: {e}", dir.config_path().display()))?,
        None => dir.config()?,
    };
    require_sizes(&[
        ("hidden_size", Some(c.hidden_size)),
        ("intermediate_size", Some(c.intermediate_size)),
        ("num_hidden_layers", Some(c.num_hidden_layers)),
        ("num_attention_heads", Some(c.num_attention_heads)),
        ("num_key_value_heads", Some(c.num_key_value_heads)),
        ("head_dim", Some(c.head_dim)),
        ("vocab_size", Some(c.vocab_size)),
        ("max_position_embeddings", Some(c.max_position_embeddings)),
        ("sliding_window", c.sliding_window),
        ("sliding_window_pattern", c.sliding_window_pattern),
    ])?;
    if c.attn_logit_softcapping.is_some() {
        bail!("attention logit soft-capping is not supported");
    }
    let (global, local) = match c.rope_parameters.as_ref() {
        Some(p) if p.get("full_attention").is_some() => (
            rope_from_hf(p.get("full_attention"), None, None, 1_000_000.0)?,
            rope_from_hf(p.get("sliding_attention"), None, None, 10_000.0)?,
        ),
        p => (
            rope_from_hf(p, c.rope_theta, c.rope_scaling.as_ref(), 1_000_000.0)?,
            (
                c.rope_local_base_freq.unwrap_or(10_000.0),
                RopeScaling::None,
            ),
        ),
    };
    let n = c.num_hidden_layers;
    let sliding: Vec<bool> = match &c.layer_types {
        Some(types) if types.len() == n => types.iter().map(|t| t == "sliding_attention").collect(),
        Some(types) => bail!(
            "layer_types lists {} layers, num_hidden_layers is {n}",
            types.len()
        ),
        None => {
            let pattern = c.sliding_window_pattern.unwrap_or(DEFAULT_PATTERN);
            (0..n).map(|i| (i + 1) % pattern != 0).collect()
        }
    };
    let layers = sliding
        .into_iter()
        .map(|s| {
            let (theta, scaling) = if s { local.clone() } else { global.clone() };
            LayerKind {
                window: if s { c.sliding_window } else { None },
                theta,
                scaling,
            }
        })
        .collect();
    let vb = dir.var_builder()?;
    let prefix = if vb.contains_tensor("language_model.model.embed_tokens.weight") {
        "language_model."
    } else {
        ""
    };
    let s = Settings {
        config: ModelConfig {
            architecture: "gemma3".into(),
            num_layers: n,
            hidden_size: c.hidden_size,
            num_heads: c.num_attention_heads,
            num_kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            intermediate_size: c.intermediate_size,
            vocab_size: c.vocab_size,
            context_length: c.max_position_embeddings,
        },
        eps: c.rms_norm_eps,
        norm_offset: 1.0,
        query_scale: 1.0 / c.query_pre_attn_scalar.sqrt(),
        act: Activation::from_hf(&c.hidden_activation)?,
        layers,
        logit_softcap: c.final_logit_softcapping,
        prefix,
    };
    build(vb, s)
}

/// Builds Gemma 3 from a GGUF file.
pub fn from_gguf(file: &GgufFile) -> Result<Transformer> {
    let config = ModelConfig {
        architecture: "gemma3".into(),
        ..file.model_config()?
    };
    let (n, head_dim) = (config.num_layers, config.head_dim);
    let window = file.arch_size("attention.sliding_window")?;
    let global_theta = file.arch_f64_or("rope.freq_base", 1_000_000.0)?;
    // GGUF stores neither the layer pattern nor the local rotary base; these are the
    // values every Gemma 3 checkpoint uses (and llama.cpp assumes).
    let layers = (0..n)
        .map(|i| {
            let sliding = (i + 1) % DEFAULT_PATTERN != 0;
            LayerKind {
                window: sliding.then_some(window),
                theta: if sliding { 10_000.0 } else { global_theta },
                scaling: RopeScaling::None,
            }
        })
        .collect();
    let s = Settings {
        config,
        eps: file.arch_f64("attention.layer_norm_rms_epsilon")?,
        norm_offset: 0.0,
        query_scale: 1.0 / (head_dim as f64).sqrt(),
        act: Activation::GeluTanh,
        layers,
        logit_softcap: None,
        prefix: "",
    };
    build(file.var_builder(&GGUF_NAMES), s)
}

fn build(vb: VarBuilder, s: Settings) -> Result<Transformer> {
    let c = &s.config;
    let (hidden, hd) = (c.hidden_size, c.head_dim);
    let p = s.prefix;
    let norm = |vb: VarBuilder, size: usize| Norm::rms(vb, size, s.eps, s.norm_offset);
    let embed = vb.get(
        (c.vocab_size, hidden),
        &format!("{p}model.embed_tokens.weight"),
    )?;
    let mut blocks = Vec::with_capacity(c.num_layers);
    for (i, kind) in s.layers.iter().enumerate() {
        let vb = vb.pp(format!("{p}model.layers.{i}"));
        let vba = vb.pp("self_attn");
        let (q, k, v, out) =
            Attention::load_parts(&vba, hidden, c.num_heads, c.num_kv_heads, hd, false)?;
        let attn = Attention::new(AttentionParts {
            q,
            k,
            v,
            out,
            num_heads: c.num_heads,
            num_kv_heads: c.num_kv_heads,
            head_dim: hd,
            q_norm: Some(norm(vba.pp("q_norm"), hd)?),
            k_norm: Some(norm(vba.pp("k_norm"), hd)?),
            rotary: Some(Rotary::new(hd, kind.theta, &kind.scaling, false)),
            scale: s.query_scale,
            window: kind.window,
        })?;
        blocks.push(Block {
            attn_norm: norm(vb.pp("input_layernorm"), hidden)?,
            attn,
            post_attn_norm: Some(norm(vb.pp("post_attention_layernorm"), hidden)?),
            mlp_norm: norm(vb.pp("pre_feedforward_layernorm"), hidden)?,
            mlp: Mlp::load_gated(vb.pp("mlp"), hidden, c.intermediate_size, s.act)?,
            post_mlp_norm: Some(norm(vb.pp("post_feedforward_layernorm"), hidden)?),
            residual: Residual::Sequential,
        });
    }
    Transformer::new(TransformerParts {
        final_norm: norm(vb.pp(format!("{p}model.norm")), hidden)?,
        embed_scale: Some((hidden as f64).sqrt()),
        config: s.config,
        embed,
        positions: None,
        blocks,
        lm_head: None,
        logit_softcap: s.logit_softcap,
    })
}
