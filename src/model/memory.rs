//! How much memory a run needs, estimated before its model loads, and the check that
//! refuses a run that will not fit, with the figures, instead of letting it be killed
//! half-way.
//!
//! The estimate has three parts:
//! - **weights**: every tensor of the checkpoint, from the safetensors headers or the
//!   GGUF tensor index (no weight is read), in the type the loader holds it in: 1-D
//!   tensors (norms, biases) in f32, everything else in `--dtype`. Tensors the model
//!   leaves unread (a vision tower) are counted too, so this is an upper bound there.
//! - **activations**: the busier of two moments. Loading in bf16/f16: one tensor
//!   widened to f32 beside its converted form (GGUF weights are dequantized one at a
//!   time; in f32 the widened tensor is the one kept). Running:
//!   the f32 buffers alive at the busier sublayer of one block of the fused CPU path
//!   (residual rows, norm output, fused QKV and its per-head copy, attention context
//!   and output; or the MLP's up projection, `2 x intermediate` wide since every
//!   model is counted as gated, its activation and the down projection), with the
//!   extra copy that rounding to bf16/f16 makes, and in bf16/f16 one weight widened
//!   to f32 for a product (the unembedding when logits are computed, else the
//!   second largest tensor, no smaller than any block matrix); one `[t, t]` score
//!   matrix per worker thread; the attention probabilities `[b, heads, t, t]` when
//!   the capture wants them (`analyze`) or the device has no fused attention (a
//!   GPU); and the logit rows `[rows, vocab]` (with two same-sized
//!   temporaries) of the logit lens or the loss, all for a batch filled to the
//!   token budget.
//! - **outputs**: what is kept across batches, the pooled vectors
//!   `[texts, layers + 1, hidden]` in f32.
//!
//! Not counted: the program itself, the tokenizer and its vocabulary, the rotary
//! tables, allocator slack and the page cache of memory-mapped safetensors (which the
//! kernel can reclaim). docs/benchmarks.md compares the estimate with measured peak
//! RSS. The figure it is compared with is the host's `MemAvailable`, lowered to what
//! a cgroup memory limit leaves, and to `HARNESS_MEMORY_LIMIT` when that is set.
//!
//! A text longer than the token budget runs alone, in a batch larger than the one
//! estimated here; [`check_long_batch`] checks such a batch against the memory
//! available when it is about to run.
//!
//! There is no switch to skip the check: `HARNESS_MEMORY_LIMIT` can only lower the
//! figure, and a run the estimate refuses is brought under it by a smaller token
//! budget, a narrower `--dtype` or fewer texts, each of which the error names. On a
//! GPU the estimate is compared with the driver's free memory ([`gpu_available`]).

use std::fmt;

use anyhow::{bail, Context, Result};

use super::capture::BatchPlan;
use super::dtype::{DeviceSpec, Dtype};
use super::gguf::GgufFile;
use super::hf::HfDir;
use super::source::{Format, ModelSource};
use super::ModelConfig;

/// The environment variable that caps the memory harness believes is available
/// (`100M`, `2G`, or bytes), to rehearse a smaller machine.
pub const LIMIT_VAR: &str = "HARNESS_MEMORY_LIMIT";

/// What a checkpoint's files say about its size, read from headers alone.
#[derive(Debug, Clone)]
pub struct Footprint {
    pub config: ModelConfig,
    /// Bytes of every tensor in the type it will be held in.
    pub weights: u64,
    /// Bytes of the largest tensor in f32, the loader's widest temporary.
    pub largest_f32: u64,
    /// Bytes of the second largest in f32: no smaller than any block matrix.
    pub second_f32: u64,
}

/// What a command will ask of the model, beyond its shape.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    pub plan: BatchPlan,
    /// The most tokens one text can have, when the command cuts texts shorter than
    /// the model's context (`analyze --max-tokens`).
    pub longest: Option<usize>,
    /// Texts whose pooled vectors (every layer, f32) are kept until the end.
    pub texts: usize,
    /// Whether attention probabilities `[b, heads, t, t]` are materialised.
    pub attention: bool,
    /// Rows unembedded at once (logit lens, loss); 0 when no logits are computed.
    pub logit_rows: usize,
}

impl Workload {
    /// A plain pass with `plan`: no attention, no logits, nothing kept.
    pub fn pass(plan: BatchPlan) -> Self {
        Self {
            plan,
            longest: None,
            texts: 0,
            attention: false,
            logit_rows: 0,
        }
    }
}

/// A run's memory, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    pub weights: u64,
    pub activations: u64,
    pub outputs: u64,
    /// Padded tokens in the batch the activations are counted for.
    pub batch_tokens: usize,
}

impl Estimate {
    pub fn total(&self) -> u64 {
        self.weights + self.activations + self.outputs
    }
}

impl fmt::Display for Estimate {
    /// `1.2 GiB (weights 0.54 GiB + activations 0.6 GiB at 4096 tokens per batch)`.
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "{} (weights {} + activations {} at {} tokens per batch",
            gib(self.total()),
            gib(self.weights),
            gib(self.activations),
            self.batch_tokens
        )?;
        if self.outputs > 0 {
            write!(f, " + kept outputs {}", gib(self.outputs))?;
        }
        f.write_str(")")
    }
}

/// Memory a run may use, and where the figure comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Available {
    pub bytes: u64,
    /// Where, in words: "available", "left under the cgroup limit", ...
    pub what: String,
}

/// Bytes for a message: GiB with two decimals from 0.1 GiB, else MiB or KiB.
fn gib(bytes: u64) -> String {
    let g = bytes as f64 / (1u64 << 30) as f64;
    if g >= 10.0 {
        format!("{g:.0} GiB")
    } else if g >= 0.095 {
        format!("{g:.2} GiB")
    } else if bytes >= 1 << 20 {
        format!("{:.0} MiB", bytes as f64 / (1u64 << 20) as f64)
    } else {
        format!("{:.0} KiB", bytes as f64 / 1024.0)
    }
}

impl Footprint {
    /// Reads the shape and tensor sizes of `source` for weights held in `dtype`.
    pub fn read(source: &ModelSource, dtype: Dtype) -> Result<Self> {
        let (config, shapes): (_, Vec<Vec<usize>>) = match source.format {
            Format::Gguf => {
                let file = GgufFile::open(&source.path)?;
                let shapes = file
                    .content
                    .tensor_infos
                    .values()
                    .map(|info| info.shape.dims().to_vec())
                    .collect();
                (GgufFile::model_config(&file)?, shapes)
            }
            Format::Safetensors => {
                let dir = HfDir::open(&source.path)?;
                let shapes = dir.tensor_shapes()?.into_iter().map(|(_, s)| s).collect();
                (hf_config(&dir.config::<serde_json::Value>()?)?, shapes)
            }
        };
        Ok(Self::from_shapes(config, &shapes, dtype))
    }

    /// The footprint of tensors of these shapes, held as the loader holds them.
    pub fn from_shapes(config: ModelConfig, shapes: &[Vec<usize>], dtype: Dtype) -> Self {
        let matrix = dtype.candle().size_in_bytes() as u64;
        let mut weights = 0;
        let (mut largest, mut second) = (0, 0);
        for shape in shapes {
            let n: u64 = shape.iter().map(|&d| d as u64).product();
            weights += n * if shape.len() >= 2 { matrix } else { 4 };
            if n > largest {
                (largest, second) = (n, largest);
            } else {
                second = second.max(n);
            }
        }
        Self {
            config,
            weights,
            largest_f32: largest * 4,
            second_f32: second * 4,
        }
    }

    /// The memory of `work` on a model of this footprint.
    pub fn estimate(&self, dtype: Dtype, device: DeviceSpec, work: &Workload) -> Estimate {
        let running = activations(&self.config, dtype, device, work);
        // The CPU kernels widen a bf16/f16 weight to f32 for each product, one at a
        // time: the unembedding (the largest tensor) for logits, else a block matrix
        // (the second largest bounds them).
        let widened = match (dtype, work.logit_rows) {
            (Dtype::F32, _) => 0,
            (_, 0) => self.second_f32,
            _ => self.largest_f32,
        };
        // Loading widens each stored tensor to f32 before converting it to bf16/f16;
        // in f32 the widened tensor is the one kept.
        let loading = if dtype == Dtype::F32 {
            0
        } else {
            self.largest_f32
        };
        let c = &self.config;
        Estimate {
            weights: self.weights,
            activations: (running.bytes + widened).max(loading),
            outputs: (work.texts * (c.num_layers + 1) * c.hidden_size * 4) as u64,
            batch_tokens: running.tokens,
        }
    }
}

/// The activations of one batch and the padded tokens it holds.
struct Activations {
    bytes: u64,
    tokens: usize,
}

/// Peak activation bytes of a batch filled to `work`'s budget; see the module doc.
fn activations(c: &ModelConfig, dtype: Dtype, device: DeviceSpec, work: &Workload) -> Activations {
    let longest = work
        .longest
        .unwrap_or(c.context_length)
        .min(c.context_length)
        .max(1);
    let plan = work.plan;
    // The padded length and the tokens of the fullest batch the plan makes; a text
    // longer than the budget runs alone (checked when it comes, check_long_batch).
    let t = longest.min(plan.max_tokens).max(1);
    let n = plan.max_tokens.min(plan.max_size.saturating_mul(t)).max(t);
    batch_bytes(c, dtype, device, work, n, t)
}

fn batch_bytes(
    c: &ModelConfig,
    dtype: Dtype,
    device: DeviceSpec,
    work: &Workload,
    n: usize,
    t: usize,
) -> Activations {
    let (n64, t64) = (n as u64, t as u64);
    let h = c.hidden_size as u64;
    let q = (c.num_heads * c.head_dim) as u64;
    let qkv = ((c.num_heads + 2 * c.num_kv_heads) * c.head_dim) as u64;
    let inter = c.intermediate_size as u64;
    // Rounding to bf16/f16 writes a second f32 buffer where f32 shares the first.
    let r = u64::from(dtype != Dtype::F32);
    // x, its norm; the QKV product, its per-head copy; the context; the output.
    let attn = 2 * h + qkv * (2 + r) + q * (1 + r) + h * (1 + r);
    // x, attention output, MLP input and its norm; up (gate and up), activation, down.
    let mlp = 4 * h + 2 * inter * (1 + r) + inter * (1 + r) + h * (1 + r);
    let rows = n64 * 4 * attn.max(mlp);
    let threads = rayon::current_num_threads() as u64;
    let scores = threads * t64 * t64 * 4;
    // Without the fused kernels (a GPU), attention always builds the whole matrix.
    let probs = if work.attention || device != DeviceSpec::Cpu {
        c.num_heads as u64 * n64 * t64 * 4
    } else {
        0
    };
    let logits = 3 * work.logit_rows as u64 * c.vocab_size as u64 * 4;
    Activations {
        bytes: rows + scores + probs + logits,
        tokens: n,
    }
}

/// Fails, in one line with the figures, unless `estimate` fits in `available`.
/// `name` and `dtype` name the run in the message.
pub fn check_fits(
    name: &str,
    dtype: Dtype,
    estimate: &Estimate,
    available: &Available,
) -> Result<()> {
    if estimate.total() <= available.bytes {
        return Ok(());
    }
    let hint = match dtype {
        Dtype::F32 => "try --dtype bf16 or a smaller --max-batch-tokens",
        _ => "try a smaller --max-batch-tokens",
    };
    let hint = if estimate.outputs > estimate.activations {
        format!("{hint}, or fewer texts per run")
    } else {
        hint.to_string()
    };
    bail!(
        "{name} in {dtype} needs about {estimate} but {} is {}; {hint} ({LIMIT_VAR} caps the figure)",
        gib(available.bytes),
        available.what
    )
}

/// Free memory on a GPU as the memory check sees it: `free_bytes` (from the driver)
/// on device `ordinal`, which [`check_fits`] compares with the estimate.
pub fn gpu_available(ordinal: usize, free_bytes: u64) -> Available {
    Available {
        bytes: free_bytes,
        what: format!("free on cuda:{ordinal}"),
    }
}

/// The host memory a run may use now: `MemAvailable`, lowered to what a cgroup
/// limit leaves and to [`LIMIT_VAR`].
pub fn host_available() -> Result<Available> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    let limit = match std::env::var(LIMIT_VAR) {
        Ok(v) => Some(parse_size(&v).with_context(|| format!("{LIMIT_VAR}={v}"))?),
        Err(_) => None,
    };
    available_from(&meminfo, cgroup_room(), limit)
}

/// [`host_available`] from the text of `/proc/meminfo`, the room a cgroup leaves
/// (if any) and the user's cap (if any): the smallest, named.
pub fn available_from(meminfo: &str, cgroup: Option<u64>, limit: Option<u64>) -> Result<Available> {
    let kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .context("/proc/meminfo has no MemAvailable")?;
    let mut best = Available {
        bytes: kib * 1024,
        what: "available (MemAvailable)".into(),
    };
    for (bytes, what) in [
        (cgroup, "left under the cgroup memory limit"),
        (limit, "allowed by HARNESS_MEMORY_LIMIT"),
    ] {
        if let Some(bytes) = bytes.filter(|&b| b < best.bytes) {
            best = Available {
                bytes,
                what: what.into(),
            };
        }
    }
    Ok(best)
}

/// What this process's cgroup still allows: its limit less what it uses, not
/// counting inactive page cache (reclaimed before the limit bites). cgroup v2, else v1.
fn cgroup_room() -> Option<u64> {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let (limit, usage, stat, inactive) = match read("/sys/fs/cgroup/memory.max") {
        Some(limit) => (
            limit,
            read("/sys/fs/cgroup/memory.current")?,
            read("/sys/fs/cgroup/memory.stat")?,
            "inactive_file",
        ),
        None => (
            read("/sys/fs/cgroup/memory/memory.limit_in_bytes")?,
            read("/sys/fs/cgroup/memory/memory.usage_in_bytes")?,
            read("/sys/fs/cgroup/memory/memory.stat")?,
            "total_inactive_file",
        ),
    };
    cgroup_room_from(&limit, &usage, &stat, inactive)
}

/// The room a cgroup leaves from its files' text; `None` without a limit ("max",
/// or v1's near-`u64::MAX` stand-in for none).
fn cgroup_room_from(limit: &str, usage: &str, stat: &str, inactive_key: &str) -> Option<u64> {
    let limit: u64 = limit.trim().parse().ok()?;
    if limit >= 1 << 60 {
        return None;
    }
    let usage: u64 = usage.trim().parse().ok()?;
    let inactive = stat
        .lines()
        .find_map(|l| l.strip_prefix(inactive_key)?.strip_prefix(' '))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(0);
    Some(limit.saturating_sub(usage.saturating_sub(inactive)))
}

/// `123`, `100K`, `100M`, `2G` (binary multiples, an optional `B` or `iB`) as bytes.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, shift) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 10),
        Some((i, 'M' | 'm')) => (&t[..i], 20),
        Some((i, 'G' | 'g')) => (&t[..i], 30),
        Some((i, 'T' | 't')) => (&t[..i], 40),
        _ => (t, 0),
    };
    match digits.trim().parse::<u64>() {
        Ok(n) => n
            .checked_mul(1 << shift)
            .context("size too large for 64 bits"),
        Err(_) => bail!("expected a size such as 512M or 2G, got '{s}'"),
    }
}

/// A batch larger than the plan's budget: input `input` (1-based), alone, of `tokens`.
pub struct LongBatch<'a> {
    pub config: &'a ModelConfig,
    pub dtype: Dtype,
    pub device: DeviceSpec,
    pub plan: &'a BatchPlan,
    pub input: usize,
    pub tokens: usize,
    /// Whether the capture wants attention probabilities.
    pub attention: bool,
}

/// Before a batch larger than the plan's budget runs (one text longer than the
/// budget runs alone): fails, in one line, when its activations will not fit in
/// `available`, the memory available now (the weights are loaded by then).
pub fn check_long_batch(long: &LongBatch, available: &Available) -> Result<()> {
    let (plan, tokens) = (long.plan, long.tokens);
    let work = Workload {
        attention: long.attention,
        ..Workload::pass(*plan)
    };
    let need = batch_bytes(long.config, long.dtype, long.device, &work, tokens, tokens).bytes;
    if need <= available.bytes {
        return Ok(());
    }
    bail!(
        "input {} has {tokens} tokens, more than --max-batch-tokens {}, so it runs alone; that needs about {} of activations but {} is {} (cut it with --truncate or a shorter text)",
        long.input,
        plan.max_tokens,
        gib(need),
        gib(available.bytes),
        available.what
    )
}

/// The model's shape from `config.json` (the text model's, in a multimodal one),
/// under the names of every supported architecture (GPT-2 has its own).
fn hf_config(raw: &serde_json::Value) -> Result<ModelConfig> {
    let c = raw.get("text_config").unwrap_or(raw);
    let size = |keys: &[&str]| -> Option<usize> {
        keys.iter()
            .find_map(|k| c.get(*k)?.as_u64())
            .and_then(|v| usize::try_from(v).ok())
            .filter(|&v| v > 0)
    };
    let need =
        |keys: &[&str]| size(keys).with_context(|| format!("config.json has no {}", keys[0]));
    let hidden = need(&["hidden_size", "n_embd"])?;
    let heads = need(&["num_attention_heads", "n_head"])?;
    Ok(ModelConfig {
        architecture: c
            .get("model_type")
            .and_then(|t| t.as_str())
            .unwrap_or("")
            .to_string(),
        num_layers: need(&["num_hidden_layers", "n_layer"])?,
        hidden_size: hidden,
        num_heads: heads,
        num_kv_heads: size(&["num_key_value_heads"]).unwrap_or(heads),
        head_dim: size(&["head_dim"]).unwrap_or(hidden / heads),
        intermediate_size: size(&["intermediate_size", "n_inner"]).unwrap_or(4 * hidden),
        vocab_size: need(&["vocab_size"])?,
        context_length: need(&["max_position_embeddings", "n_positions"])?,
    })
}

/// The pre-load check of a command: reads `source`'s headers, estimates `work` and
/// fails when it will not fit. A checkpoint whose headers cannot be read is left to
/// the loader, which says what is wrong with it in its own words.
pub fn check_source(
    source: &ModelSource,
    dtype: Dtype,
    device: DeviceSpec,
    work: &Workload,
) -> Result<()> {
    let Ok(footprint) = Footprint::read(source, dtype) else {
        return Ok(());
    };
    let estimate = footprint.estimate(dtype, device, work);
    check_fits(&source.name, dtype, &estimate, &available_on(device)?)
}

/// The memory a run on `device` may use now: the host's, or the GPU's free memory.
pub fn available_on(device: DeviceSpec) -> Result<Available> {
    match device {
        DeviceSpec::Cuda(n) => Ok(gpu_available(n, gpu_free_bytes(device)?)),
        DeviceSpec::Cpu => host_available(),
    }
}

/// The free memory of a CUDA device, as its driver reports it.
#[cfg(feature = "cuda")]
fn gpu_free_bytes(spec: DeviceSpec) -> Result<u64> {
    let device = spec.open()?;
    let (free, _total) = device
        .as_cuda_device()?
        .cuda_stream()
        .context()
        .mem_get_info()
        .map_err(|e| anyhow::anyhow!("--device {spec}: cannot read the GPU's free memory: {e}"))?;
    Ok(free as u64)
}

/// Without the `cuda` feature there is no GPU to ask; opening it says why.
#[cfg(not(feature = "cuda"))]
fn gpu_free_bytes(device: DeviceSpec) -> Result<u64> {
    device.open()?;
    bail!("--device {device}: this build has no GPU engine")
}

/// Makes the allocator keep freed memory for the next batch instead of returning it
/// to the OS: every layer allocates activations of a few MiB, and glibc otherwise
/// maps and unmaps them, so each batch paid page faults on fresh pages (7% of a bf16
/// embed run under perf). The peak is unchanged: freed buffers are reused.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called before threads start.
    unsafe {
        // 32 MiB is glibc's ceiling for the mmap threshold on 64-bit.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-135M's shape.
    fn smollm2() -> ModelConfig {
        ModelConfig {
            architecture: "llama".into(),
            num_layers: 30,
            hidden_size: 576,
            num_heads: 9,
            num_kv_heads: 3,
            head_dim: 64,
            intermediate_size: 1536,
            vocab_size: 49152,
            context_length: 8192,
        }
    }

    /// Its tensors: the embedding table, per block 7 matrices and 2 norms, a final norm.
    fn smollm2_shapes() -> Vec<Vec<usize>> {
        let mut shapes = vec![vec![49152, 576], vec![576]];
        for _ in 0..30 {
            shapes.extend([
                vec![576, 576],
                vec![192, 576],
                vec![192, 576],
                vec![576, 576],
                vec![1536, 576],
                vec![1536, 576],
                vec![576, 1536],
                vec![576],
                vec![576],
            ]);
        }
        shapes
    }

    #[test]
    fn weights_are_counted_in_the_type_they_are_held_in() {
        let shapes = smollm2_shapes();
        let f32 = Footprint::from_shapes(smollm2(), &shapes, Dtype::F32);
        let bf16 = Footprint::from_shapes(smollm2(), &shapes, Dtype::Bf16);
        // 134,515,008 parameters, 35,136 of them in 1-D norms kept in f32.
        assert_eq!(f32.weights, 134_515_008 * 4);
        assert_eq!(bf16.weights, (134_515_008 - 35_136) * 2 + 35_136 * 4);
        assert_eq!(f32.largest_f32, 49152 * 576 * 4);
        assert_eq!(bf16.largest_f32, f32.largest_f32);
        assert_eq!(bf16.second_f32, 1536 * 576 * 4);
    }

    #[test]
    fn activations_grow_with_the_budget_and_what_is_captured() {
        let fp = Footprint::from_shapes(smollm2(), &smollm2_shapes(), Dtype::F32);
        let at = |tokens: usize, work: fn(BatchPlan) -> Workload| {
            let plan = BatchPlan::new(None, Some(tokens));
            fp.estimate(Dtype::F32, DeviceSpec::Cpu, &work(plan))
        };
        let small = at(512, Workload::pass);
        let big = at(4096, Workload::pass);
        assert_eq!((small.batch_tokens, big.batch_tokens), (512, 4096));
        assert!(big.activations > 4 * small.activations, "{big:?} {small:?}");
        // In bf16 at 512 tokens, loading (the embedding table widened to f32 beside
        // its bf16 copy) is the busier moment.
        let plan = BatchPlan::new(None, Some(512));
        let e = fp.estimate(Dtype::Bf16, DeviceSpec::Cpu, &Workload::pass(plan));
        assert_eq!(e.activations, fp.largest_f32);
        assert_eq!(big.weights, small.weights);
        let analyze = |plan| Workload {
            longest: Some(128),
            attention: true,
            logit_rows: 256,
            texts: 64,
            ..Workload::pass(plan)
        };
        let a = at(4096, analyze);
        assert!(a.activations > big.activations, "{a:?} {big:?}");
        assert_eq!(a.outputs, 64 * 31 * 576 * 4);
        // A batch of 64 texts of at most 16 tokens holds 1024, not 4096.
        let short = Workload {
            longest: Some(16),
            ..Workload::pass(BatchPlan::new(None, Some(4096)))
        };
        let e = fp.estimate(Dtype::F32, DeviceSpec::Cpu, &short);
        assert_eq!(e.batch_tokens, 1024);
        // bf16 rounding copies cost activations; the weights halve.
        let bf16 = Footprint::from_shapes(smollm2(), &smollm2_shapes(), Dtype::Bf16).estimate(
            Dtype::Bf16,
            DeviceSpec::Cpu,
            &Workload::pass(BatchPlan::new(None, Some(4096))),
        );
        assert!(bf16.activations > big.activations);
        assert!(bf16.weights < big.weights / 2 + (1 << 20));
    }

    #[test]
    fn a_run_that_does_not_fit_is_one_line_with_the_figures() {
        let fp = Footprint::from_shapes(smollm2(), &smollm2_shapes(), Dtype::F32);
        let e = fp.estimate(
            Dtype::F32,
            DeviceSpec::Cpu,
            &Workload::pass(BatchPlan::default()),
        );
        let room = |bytes| Available {
            bytes,
            what: "available (MemAvailable)".into(),
        };
        assert!(check_fits("smollm2", Dtype::F32, &e, &room(e.total())).is_ok());
        let err = check_fits("smollm2", Dtype::F32, &e, &room(e.total() - 1))
            .unwrap_err()
            .to_string();
        assert!(!err.contains('\n'), "{err}");
        for needle in [
            "smollm2 in f32 needs about",
            "weights 0.50 GiB",
            "at 1024 tokens per batch",
            "is available (MemAvailable)",
            "try --dtype bf16",
        ] {
            assert!(err.contains(needle), "{needle}: {err}");
        }
        let gpu = check_fits("smollm2", Dtype::Bf16, &e, &gpu_available(1, 1 << 20))
            .unwrap_err()
            .to_string();
        assert!(gpu.contains("1 MiB is free on cuda:1"), "{gpu}");
        assert!(!gpu.contains("--dtype"), "{gpu}");
    }

    #[test]
    fn the_smallest_of_meminfo_cgroup_and_the_cap_is_available() {
        let meminfo = "MemTotal:  24684084 kB\nMemFree: 738124 kB\nMemAvailable:   2000000 kB\n";
        let a = available_from(meminfo, None, None).unwrap();
        assert_eq!(a.bytes, 2_048_000_000);
        assert!(a.what.contains("MemAvailable"));
        let c = available_from(meminfo, Some(1 << 30), None).unwrap();
        assert_eq!(c.bytes, 1 << 30);
        assert!(c.what.contains("cgroup"));
        let l = available_from(meminfo, Some(1 << 30), Some(100 << 20)).unwrap();
        assert_eq!((l.bytes, l.what.contains(LIMIT_VAR)), (100 << 20, true));
        assert!(available_from("MemTotal: 1 kB\n", None, None).is_err());

        let stat = "cache 5\ninactive_file 300\nactive_file 7\n";
        assert_eq!(
            cgroup_room_from("1000\n", "900\n", stat, "inactive_file"),
            Some(400)
        );
        assert_eq!(
            cgroup_room_from("max\n", "900", stat, "inactive_file"),
            None
        );
        assert_eq!(
            cgroup_room_from("9223372036854771712", "9", stat, "inactive_file"),
            None
        );
        let v1 = "inactive_file 1\ntotal_inactive_file 500\n";
        assert_eq!(
            cgroup_room_from("1000", "1200", v1, "total_inactive_file"),
            Some(300)
        );
    }

    #[test]
    fn a_text_longer_than_the_budget_is_checked_alone() {
        let (config, plan) = (smollm2(), BatchPlan::new(None, Some(512)));
        let long = |tokens| LongBatch {
            config: &config,
            dtype: Dtype::F32,
            device: DeviceSpec::Cpu,
            plan: &plan,
            input: 7,
            tokens,
            attention: false,
        };
        // 8192 tokens: 0.23 GiB of rows and a 0.25 GiB score matrix per thread.
        let room = Available {
            bytes: 512 << 20,
            what: "available (MemAvailable)".into(),
        };
        assert!(check_long_batch(&long(2048), &room).is_ok());
        let err = check_long_batch(&long(8192), &room)
            .unwrap_err()
            .to_string();
        assert!(!err.contains('\n'), "{err}");
        assert!(
            err.starts_with(
                "input 7 has 8192 tokens, more than --max-batch-tokens 512, so it runs alone"
            ),
            "{err}"
        );
        assert!(err.contains("but 0.50 GiB is available"), "{err}");
    }

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        for (s, n) in [
            ("123", 123),
            ("100K", 100 << 10),
            ("100M", 100 << 20),
            ("2G", 2 << 30),
            ("2GiB", 2 << 30),
            ("512MB", 512 << 20),
        ] {
            assert_eq!(parse_size(s).unwrap(), n, "{s}");
        }
        for bad in ["", "M", "1.5G", "-1", "10X"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_json_gives_the_shape_for_every_naming() {
        let llama = serde_json::json!({
            "model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30,
            "num_attention_heads": 9, "num_key_value_heads": 3, "intermediate_size": 1536,
            "vocab_size": 49152, "max_position_embeddings": 8192
        });
        assert_eq!(hf_config(&llama).unwrap().head_dim, 64);
        let gpt2 = serde_json::json!({
            "model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12,
            "n_inner": null, "vocab_size": 50257, "n_positions": 1024
        });
        let c = hf_config(&gpt2).unwrap();
        assert_eq!(
            (c.intermediate_size, c.num_kv_heads, c.context_length),
            (3072, 12, 1024)
        );
        let nested = serde_json::json!({"model_type": "gemma3", "text_config": llama});
        assert_eq!(hf_config(&nested).unwrap().num_layers, 30);
        let zero = serde_json::json!({"hidden_size": 0});
        assert!(hf_config(&zero).is_err());
    }
}
