//! Decoder architectures. Each file maps one family's configuration and weight names
//! onto the shared pieces in [`blocks`]; [`Transformer`] runs them and reports every
//! layer to a [`Capture`].

pub mod blocks;
pub mod capture;
pub mod dtype;
pub mod fingerprint;
pub mod gemma3;
pub mod gguf;
pub mod gpt2;
pub mod gpt_neox;
pub mod hf;
pub mod kernels;
pub mod llama;
pub mod memory;
mod reads;
pub mod source;
pub mod tensor_ops;
pub mod tokenizer;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::model::capture::{Batch, Capture};
use crate::model::gguf::GgufFile;
use crate::model::hf::HfDir;
use blocks::{Block, BlockCall, Norm, Ops, RopeTables, Rotary};
use dtype::{DeviceSpec, Dtype};

/// The shape of a model, whatever its architecture.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelConfig {
    pub architecture: String,
    pub num_layers: usize,
    pub hidden_size: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    /// Longest sequence the model was trained on; longer inputs are refused.
    pub context_length: usize,
}

/// A decoder-only transformer with per-layer capture.
pub struct Transformer {
    pub config: ModelConfig,
    /// `[vocab, hidden]`.
    embed: Tensor,
    /// Gemma multiplies embeddings by sqrt(hidden).
    embed_scale: Option<f64>,
    /// GPT-2's learned absolute positions, `[positions, hidden]`.
    positions: Option<Tensor>,
    blocks: Vec<Block>,
    final_norm: Norm,
    /// `[vocab, hidden]`; the same tensor as `embed` when the model ties them.
    lm_head: Tensor,
    logit_softcap: Option<f64>,
    /// The type the big matrices are held in and activations rounded to.
    dtype: Dtype,
    /// Where the weights are, and so where the pass runs.
    device: Device,
    ops: Ops,
}

/// Everything an architecture file provides to build a [`Transformer`].
pub struct TransformerParts {
    pub config: ModelConfig,
    pub embed: Tensor,
    pub embed_scale: Option<f64>,
    pub positions: Option<Tensor>,
    pub blocks: Vec<Block>,
    pub final_norm: Norm,
    /// `None` ties the unembedding to the embedding.
    pub lm_head: Option<Tensor>,
    pub logit_softcap: Option<f64>,
}

/// Interventions applied during the forward pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Intervention {
    /// Blocks (1-based, as layers are numbered) whose MLP output at position 0 is
    /// dropped: the paper's ablation of the massive activation.
    pub ablate_first_mlp: Vec<usize>,
}

/// Fails unless every block in `blocks` exists in a model of `depth` blocks: the one
/// check, and wording, of `--ablate` and of [`Intervention::ablate_first_mlp`].
pub fn check_ablated_blocks(blocks: &[usize], depth: usize) -> Result<()> {
    if let Some(b) = blocks.iter().find(|&&b| b == 0 || b > depth) {
        bail!("cannot ablate block {b}: this model's blocks are numbered 1..={depth}");
    }
    Ok(())
}

impl Transformer {
    /// Assembles an architecture's parts; the block count must match the configuration.
    pub fn new(p: TransformerParts) -> Result<Self> {
        if p.blocks.len() != p.config.num_layers {
            bail!(
                "the configuration has {} layers but {} blocks were loaded",
                p.config.num_layers,
                p.blocks.len()
            );
        }
        let lm_head = p.lm_head.unwrap_or_else(|| p.embed.clone());
        // The loader serves every weight in the run's type; the table says which.
        let dtype = Dtype::from_candle(p.embed.dtype())?;
        let device = p.embed.device().clone();
        let positions = match p.positions {
            Some(pos) => Some(pos.to_dtype(DType::F32)?),
            None => None,
        };
        Ok(Self {
            dtype,
            ops: Ops::for_device(&device),
            device,
            config: p.config,
            embed: p.embed,
            embed_scale: p.embed_scale,
            positions,
            blocks: p.blocks,
            final_norm: p.final_norm,
            lm_head,
            logit_softcap: p.logit_softcap,
        })
    }

    /// The type the weights are held in and activations rounded to.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// The device the model runs on.
    pub fn device(&self) -> DeviceSpec {
        DeviceSpec::of(&self.device)
    }

    /// Which code computes the pass: the fused kernels on the CPU, tensor ops on a
    /// GPU.
    pub fn ops(&self) -> Ops {
        self.ops
    }

    /// Computes the pass with `ops`. Tensor ops on the CPU run the GPU's code path
    /// where there is no GPU, which is how the tests check it; fused kernels off the
    /// CPU are refused.
    pub fn set_ops(&mut self, ops: Ops) -> Result<()> {
        if ops == Ops::Fused && !self.device.is_cpu() {
            bail!("the fused kernels run on the CPU only");
        }
        self.ops = ops;
        Ok(())
    }

    /// The number of blocks (layers above the embeddings).
    pub fn num_layers(&self) -> usize {
        self.blocks.len()
    }

    /// Runs one padded batch, handing each layer to `capture` (as tensors on the
    /// model's device). Stops after the
    /// deepest layer the capture asks for, and never computes logits itself.
    pub fn forward(
        &self,
        batch: &Batch,
        intervention: &Intervention,
        capture: &mut dyn Capture,
    ) -> Result<()> {
        let (b, t) = (batch.size(), batch.len);
        let hidden = self.config.hidden_size;
        let depth = capture.depth().min(self.num_layers());
        check_ablated_blocks(&intervention.ablate_first_mlp, self.num_layers())?;
        let device = &self.device;
        let ids = batch.ids.flatten_all()?.to_device(device)?;
        let dtype = self.dtype;
        let mut x = self.embed.embedding(&ids)?.to_dtype(DType::F32)?;
        if let Some(scale) = self.embed_scale {
            // The reference rounds the scale to the activation dtype first.
            x = dtype.round(&(x * dtype.round_scalar(scale)?)?)?;
        }
        if let Some(pos) = &self.positions {
            if t > pos.dim(0)? {
                bail!(
                    "sequence of {t} tokens exceeds {} learned positions",
                    pos.dim(0)?
                );
            }
            let p = pos.narrow(0, 0, t)?;
            x = dtype.round(
                &x.reshape((b, t, hidden))?
                    .broadcast_add(&p)?
                    .reshape((b * t, hidden))?,
            )?;
        }
        capture.on_resid(0, &x.reshape((b, t, hidden))?, batch)?;
        if depth == 0 {
            return Ok(());
        }

        // Rotary tables are shared by every layer with the same frequencies.
        let mut ropes: Vec<(&Rotary, RopeTables)> = Vec::new();
        let mlp_keep = if intervention.ablate_first_mlp.is_empty() {
            None
        } else {
            let keep: Vec<f32> = (0..b * t)
                .map(|i| if i % t == 0 { 0.0 } else { 1.0 })
                .collect();
            Some(Tensor::from_vec(keep, (b * t, 1), device)?)
        };

        for (i, block) in self.blocks.iter().take(depth).enumerate() {
            let layer = i + 1;
            let rope = match &block.attn.rotary {
                None => None,
                Some(rot) => {
                    let at = match ropes.iter().position(|(r, _)| r.same_frequencies(rot)) {
                        Some(at) => at,
                        None => {
                            ropes.push((rot, rot.tables(t, self.ops, device)?));
                            ropes.len() - 1
                        }
                    };
                    Some(&ropes[at].1)
                }
            };
            let ablate = intervention.ablate_first_mlp.contains(&layer);
            let out = block.forward(
                &x,
                &BlockCall {
                    lens: &batch.lens,
                    len: t,
                    rope,
                    want_probs: capture.wants_attention(layer),
                    mlp_keep: if ablate { mlp_keep.as_ref() } else { None },
                    dtype,
                    ops: self.ops,
                },
            )?;
            if let Some(probs) = &out.probs {
                capture.on_attention(layer, probs, batch)?;
            }
            x = out.resid;
            capture.on_resid(layer, &x.reshape((b, t, hidden))?, batch)?;
        }
        Ok(())
    }

    /// The final norm, as the model applies it before unembedding.
    pub fn final_norm(&self, h: &Tensor) -> Result<Tensor> {
        self.final_norm
            .forward_in(&h.to_device(&self.device)?, self.dtype)
    }

    /// Logits for residual-stream rows `[n, hidden]` of any layer: the final norm,
    /// then the unembedding (the logit lens when the rows come from a middle layer).
    pub fn logits(&self, h: &Tensor) -> Result<Tensor> {
        let normed = self.final_norm(h)?.contiguous()?;
        let logits = self.ops.matmul_t(&normed, &self.lm_head)?;
        let logits = self.dtype.round(&logits)?;
        Ok(match self.logit_softcap {
            Some(cap) => ((logits / cap)?.tanh()? * cap)?,
            None => logits,
        })
    }

    /// Log-probabilities `[n]` of `targets` given rows `[n, hidden]` of any layer.
    pub fn target_logprobs(&self, h: &Tensor, targets: &[u32]) -> Result<Tensor> {
        let logits = self.logits(h)?;
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let idx = Tensor::from_slice(targets, (targets.len(), 1), &self.device)?;
        Ok(logp.gather(&idx, 1)?.squeeze(1)?)
    }
}

/// One supported architecture: the names it goes by and the files that build it.
struct Architecture {
    /// `general.architecture` in GGUF, `model_type` in `config.json`.
    name: &'static str,
    /// Other `model_type`s transformers writes for it.
    hf_aliases: &'static [&'static str],
    gguf: Option<fn(&GgufFile) -> Result<Transformer>>,
    hf: fn(&HfDir) -> Result<Transformer>,
}

/// Every architecture harness runs, in the order error messages list them.
const ARCHITECTURES: &[Architecture] = &[
    Architecture {
        name: "llama",
        hf_aliases: &[],
        gguf: Some(llama::from_gguf),
        hf: llama::from_hf,
    },
    Architecture {
        name: "mistral",
        hf_aliases: &[],
        gguf: Some(llama::from_gguf),
        hf: llama::from_hf,
    },
    Architecture {
        name: "qwen2",
        hf_aliases: &[],
        gguf: Some(llama::from_gguf),
        hf: llama::from_hf,
    },
    Architecture {
        name: "gemma3",
        hf_aliases: &["gemma3_text"],
        gguf: Some(gemma3::from_gguf),
        hf: gemma3::from_hf,
    },
    Architecture {
        name: "gpt_neox",
        hf_aliases: &[],
        gguf: None,
        hf: gpt_neox::from_hf,
    },
    Architecture {
        name: "gpt2",
        hf_aliases: &[],
        gguf: None,
        hf: gpt2::from_hf,
    },
];

/// Builds the architecture a GGUF file names in `general.architecture`.
pub fn from_gguf(file: &GgufFile) -> Result<Transformer> {
    let name = file.architecture();
    match ARCHITECTURES
        .iter()
        .find_map(|a| a.gguf.filter(|_| a.name == name))
    {
        Some(build) => build(file),
        None => bail!(
            "unsupported GGUF architecture '{name}' in {} (supported: {})",
            file.path.display(),
            supported(|a| a.gguf.is_some())
        ),
    }
}

/// Builds the architecture a Hugging Face `config.json` names in `model_type`.
pub fn from_hf(dir: &HfDir) -> Result<Transformer> {
    let model_type = dir.model_type()?;
    let Some(arch) = ARCHITECTURES
        .iter()
        .find(|a| a.name == model_type || a.hf_aliases.contains(&model_type.as_str()))
    else {
        bail!(
            "unsupported model_type '{model_type}' in {} (supported: {})",
            dir.config_path().display(),
            supported(|_| true)
        );
    };
    (arch.hf)(dir).with_context(|| format!("loading {}", dir.path.display()))
}

/// The names of the architectures `filter` keeps, for an error message.
fn supported(filter: impl Fn(&Architecture) -> bool) -> String {
    let names: Vec<&str> = ARCHITECTURES
        .iter()
        .filter(|a| filter(a))
        .map(|a| a.name)
        .collect();
    names.join(", ")
}

/// Refuses a configured size of zero before any shape is computed from it: a zero
/// head count divides by zero, a zero pattern takes a remainder by zero, and other
/// zeros build empty tensors that fail far from their cause. `sizes` pairs each
/// value with its key in `config.json`; `None` is a key the file leaves out.
pub(crate) fn require_sizes(sizes: &[(&str, Option<usize>)]) -> Result<()> {
    match sizes.iter().find(|(_, v)| *v == Some(0)) {
        Some((key, _)) => bail!("config.json: {key} is 0; it must be at least 1"),
        None => Ok(()),
    }
}

/// Rotary settings from a Hugging Face config: `rope_parameters` (transformers 5) or
/// the older `rope_theta` + `rope_scaling` pair.
pub(crate) fn rope_from_hf(
    params: Option<&serde_json::Value>,
    theta: Option<f64>,
    scaling: Option<&serde_json::Value>,
    default_theta: f64,
) -> Result<(f64, blocks::RopeScaling)> {
    let theta = params
        .and_then(|p| p.get("rope_theta"))
        .and_then(|t| t.as_f64())
        .or(theta)
        .unwrap_or(default_theta);
    let spec = match (params, scaling) {
        (Some(p), _) if p.get("rope_type").is_some() => Some(p),
        (_, Some(s)) if !s.is_null() => Some(s),
        _ => None,
    };
    let Some(spec) = spec else {
        return Ok((theta, blocks::RopeScaling::None));
    };
    let kind = spec
        .get("rope_type")
        .or_else(|| spec.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("default");
    let num = |key: &str| -> Result<f64> {
        spec.get(key)
            .and_then(|v| v.as_f64())
            .with_context(|| format!("rope scaling '{kind}' needs a numeric '{key}'"))
    };
    let scaling = match kind {
        "default" => blocks::RopeScaling::None,
        "linear" => blocks::RopeScaling::Linear {
            factor: num("factor")?,
        },
        "llama3" => blocks::RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position: num("original_max_position_embeddings")?,
        },
        other => bail!("unsupported rope scaling type '{other}'"),
    };
    Ok((theta, scaling))
}
