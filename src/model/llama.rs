//! The Llama family: Llama, Mistral (sliding window) and Qwen2 (q/k/v biases).
//! Pre-norm RMSNorm blocks, rotary attention with grouped K/V heads, SiLU-gated MLP.

use anyhow::{bail, Result};
use candle_nn::VarBuilder;
use serde::Deserialize;

use super::blocks::{
    Activation, Attention, AttentionParts, Block, Mlp, Norm, Residual, RopeScaling, Rotary,
};
use super::{require_sizes, rope_from_hf, ModelConfig, Transformer, TransformerParts};
use crate::model::gguf::{GgufFile, GgufNames};
use crate::model::hf::HfDir;

/// GGUF tensor names of the family, against the Hugging Face names.
pub static GGUF_NAMES: GgufNames = GgufNames {
    top: &[
        ("token_embd", "model.embed_tokens"),
        ("output_norm", "model.norm"),
        ("output", "lm_head"),
    ],
    layer: &[
        ("attn_norm", "input_layernorm"),
        ("attn_q", "self_attn.q_proj"),
        ("attn_k", "self_attn.k_proj"),
        ("attn_v", "self_attn.v_proj"),
        ("attn_output", "self_attn.o_proj"),
        ("ffn_norm", "post_attention_layernorm"),
        ("ffn_gate", "mlp.gate_proj"),
        ("ffn_up", "mlp.up_proj"),
        ("ffn_down", "mlp.down_proj"),
    ],
};

/// `config.json` of a Llama, Mistral or Qwen2 checkpoint.
#[derive(Debug, Deserialize)]
struct HfConfig {
    model_type: String,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    rope_parameters: Option<serde_json::Value>,
    vocab_size: usize,
    #[serde(default = "default_context")]
    max_position_embeddings: usize,
    #[serde(default = "default_act")]
    hidden_act: String,
    attention_bias: Option<bool>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
    max_window_layers: Option<usize>,
    layer_types: Option<Vec<String>>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_context() -> usize {
    2048
}
fn default_act() -> String {
    "silu".into()
}

/// Everything that differs between members of the family, from either format.
struct Settings {
    config: ModelConfig,
    eps: f64,
    theta: f64,
    scaling: RopeScaling,
    act: Activation,
    qkv_bias: bool,
    windows: Vec<Option<usize>>,
    interleaved_rope: bool,
}

/// Builds a Llama-family model (llama, mistral, qwen2) from a Hugging Face directory.
pub fn from_hf(dir: &HfDir) -> Result<Transformer> {
    let c: HfConfig = dir.config()?;
    require_sizes(&[
        ("hidden_size", Some(c.hidden_size)),
        ("intermediate_size", Some(c.intermediate_size)),
        ("num_hidden_layers", Some(c.num_hidden_layers)),
        ("num_attention_heads", Some(c.num_attention_heads)),
        ("num_key_value_heads", c.num_key_value_heads),
        ("head_dim", c.head_dim),
        ("vocab_size", Some(c.vocab_size)),
        ("max_position_embeddings", Some(c.max_position_embeddings)),
        ("sliding_window", c.sliding_window),
    ])?;
    let (theta, scaling) = rope_from_hf(
        c.rope_parameters.as_ref(),
        c.rope_theta,
        c.rope_scaling.as_ref(),
        10_000.0,
    )?;
    let layers = c.num_hidden_layers;
    let windows = match (&c.layer_types, c.model_type.as_str()) {
        (Some(types), _) => {
            if types.len() != layers {
                bail!(
                    "layer_types lists {} layers, num_hidden_layers is {layers}",
                    types.len()
                );
            }
            types
                .iter()
                .map(|t| {
                    (t == "sliding_attention")
                        .then_some(c.sliding_window)
                        .flatten()
                })
                .collect()
        }
        (None, "mistral") => vec![c.sliding_window; layers],
        (None, "qwen2") if c.use_sliding_window == Some(true) => {
            let from = c.max_window_layers.unwrap_or(layers);
            (0..layers)
                .map(|l| (l >= from).then_some(c.sliding_window).flatten())
                .collect()
        }
        _ => vec![None; layers],
    };
    let s = Settings {
        config: ModelConfig {
            architecture: c.model_type.clone(),
            num_layers: layers,
            hidden_size: c.hidden_size,
            num_heads: c.num_attention_heads,
            num_kv_heads: c.num_key_value_heads.unwrap_or(c.num_attention_heads),
            head_dim: c.head_dim.unwrap_or(c.hidden_size / c.num_attention_heads),
            intermediate_size: c.intermediate_size,
            vocab_size: c.vocab_size,
            context_length: c.max_position_embeddings,
        },
        eps: c.rms_norm_eps,
        theta,
        scaling,
        act: Activation::from_hf(&c.hidden_act)?,
        // Qwen2 always has q/k/v biases; Llama only when `attention_bias` says so.
        qkv_bias: c.attention_bias.unwrap_or(c.model_type == "qwen2"),
        windows,
        interleaved_rope: false,
    };
    build(dir.var_builder()?, s)
}

/// Builds a Llama-family model (llama, mistral, qwen2) from a GGUF file.
pub fn from_gguf(file: &GgufFile) -> Result<Transformer> {
    let arch = file.architecture().to_string();
    if file.has_tensor("rope_freqs.weight") || file.has_arch_key("rope.scaling.type") {
        bail!(
            "{}: GGUF rope scaling (rope_freqs / rope.scaling.*) is not supported yet",
            file.path.display()
        );
    }
    let config = file.model_config()?;
    let layers = config.num_layers;
    let window = if file.has_arch_key("attention.sliding_window") {
        Some(file.arch_size("attention.sliding_window")?)
    } else {
        None
    };
    let s = Settings {
        config,
        eps: file.arch_f64("attention.layer_norm_rms_epsilon")?,
        theta: file.arch_f64_or("rope.freq_base", 10_000.0)?,
        scaling: RopeScaling::None,
        act: Activation::Silu,
        qkv_bias: file.has_tensor("blk.0.attn_q.bias"),
        windows: vec![window; layers],
        // llama.cpp's converter permutes Llama/Mistral Q and K for adjacent-pair
        // rotation; Qwen2 keeps the Hugging Face layout.
        interleaved_rope: arch != "qwen2",
    };
    build(file.var_builder(&GGUF_NAMES), s)
}

fn build(vb: VarBuilder, s: Settings) -> Result<Transformer> {
    let c = &s.config;
    let (hidden, hd) = (c.hidden_size, c.head_dim);
    let embed = vb.get((c.vocab_size, hidden), "model.embed_tokens.weight")?;
    let mut blocks = Vec::with_capacity(c.num_layers);
    for (i, window) in s.windows.iter().enumerate() {
        let vb = vb.pp(format!("model.layers.{i}"));
        let vba = vb.pp("self_attn");
        let (q, k, v, out) =
            Attention::load_parts(&vba, hidden, c.num_heads, c.num_kv_heads, hd, s.qkv_bias)?;
        let attn = Attention::new(AttentionParts {
            q,
            k,
            v,
            out,
            num_heads: c.num_heads,
            num_kv_heads: c.num_kv_heads,
            head_dim: hd,
            q_norm: None,
            k_norm: None,
            rotary: Some(Rotary::new(hd, s.theta, &s.scaling, s.interleaved_rope)),
            scale: 1.0 / (hd as f64).sqrt(),
            window: *window,
        })?;
        blocks.push(Block {
            attn_norm: Norm::rms(vb.pp("input_layernorm"), hidden, s.eps, 0.0)?
                .weighted_in_activation_type(),
            attn,
            post_attn_norm: None,
            mlp_norm: Norm::rms(vb.pp("post_attention_layernorm"), hidden, s.eps, 0.0)?
                .weighted_in_activation_type(),
            mlp: Mlp::load_gated(vb.pp("mlp"), hidden, c.intermediate_size, s.act)?,
            post_mlp_norm: None,
            residual: Residual::Sequential,
        });
    }
    let lm_head = if vb.contains_tensor("lm_head.weight") {
        Some(vb.get((c.vocab_size, hidden), "lm_head.weight")?)
    } else {
        None
    };
    Transformer::new(TransformerParts {
        final_norm: Norm::rms(vb.pp("model.norm"), hidden, s.eps, 0.0)?
            .weighted_in_activation_type(),
        config: s.config,
        embed,
        embed_scale: None,
        positions: None,
        blocks,
        lm_head,
        logit_softcap: None,
    })
}
