//! The engine against Python `transformers`: token ids, every layer's hidden states,
//! attention probabilities, the final norm and logits, for single and padded-batch
//! inputs, on the two shipped GGUF models and a tiny model of each safetensors
//! architecture, and the tiny models once more in bf16 (hidden states and final norm,
//! `<case>.bf16.safetensors`). Golden files come from `scripts/reference/make_goldens.py`.
//!
//! Every case runs on the fused CPU kernels and again on the tensor ops a GPU runs
//! (on the CPU here). `HARNESS_TEST_DEVICE` (cpu, cuda, cuda:N; default cpu) runs them
//! all on another device, and the repository is found through `CARGO_MANIFEST_DIR` at
//! run time when set, so `scripts/gpu_check.sh` runs this very test binary, built with
//! `--features cuda`, on a GPU machine that has no cargo.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Result;
use candle_core::{Device, Tensor};
use harness::io::progress::Progress;
use harness::model::blocks::Ops;
use harness::model::capture::{self, Batch, BatchPlan, Capture, CapturePoint};
use harness::model::dtype::{DeviceSpec, Dtype, Engine};
use harness::model::kernels::with_f32;
use harness::model::source::{self, LoadedModel};
use harness::model::tokenizer::BosPolicy;
use harness::model::Intervention;
use serde::Deserialize;

/// Largest relative error allowed per token row (per query row for attention).
const TOLERANCE: f32 = 1e-4;

/// Largest relative error allowed per token row in bf16 (hidden states, final norm).
/// bf16 keeps 8 significant bits (a rounding step of 2^-8 = 0.4% relative), and the
/// engine rounds at the reference's boundaries but computes the products in another
/// order and does not round inside attention (rotated Q/K, scores, probabilities) as
/// transformers' eager bf16 attention does, so single values land a bf16 step apart
/// and the difference grows through the blocks. Measured (worst row, any layer):
/// 2.4e-2 on the Llama family, 1.1e-2 on Gemma 3, GPT-NeoX and GPT-2. A wrong layer
/// (our layer l against the golden l + 1, the last block against the final norm) is
/// at least 3.7e-1 off on every case, so 5e-2 still tells them apart:
/// [`tiny_bf16_checks_tell_a_wrong_layer_apart`] asserts it.
const BF16_TOLERANCE: f32 = 5e-2;

#[derive(Deserialize)]
struct GoldenMeta {
    model: String,
    prompts: Vec<String>,
    num_layers: usize,
}

struct Golden {
    meta: GoldenMeta,
    tensors: HashMap<String, Tensor>,
}

fn root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

fn golden(case: &str) -> Golden {
    let dir = root().join("tests/golden");
    let meta: GoldenMeta =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{case}.json"))).unwrap())
            .unwrap();
    let tensors =
        candle_core::safetensors::load(dir.join(format!("{case}.safetensors")), &Device::Cpu)
            .unwrap();
    Golden { meta, tensors }
}

fn load_model(spec: &str) -> LoadedModel {
    load_model_as(spec, Dtype::F32)
}

fn load_model_as(spec: &str, dtype: Dtype) -> LoadedModel {
    let spec = if spec.starts_with("tests/") {
        root().join(spec).display().to_string()
    } else {
        spec.to_string()
    };
    let engine = Engine {
        dtype,
        device: device(),
    };
    source::load_on(&spec, engine).unwrap_or_else(|e| panic!("{e:#} (run scripts/fetch_assets.py)"))
}

/// The device the cases run on: `HARNESS_TEST_DEVICE` (e.g. `cuda`), else the CPU.
fn device() -> DeviceSpec {
    std::env::var("HARNESS_TEST_DEVICE").map_or(DeviceSpec::Cpu, |d| {
        d.parse()
            .unwrap_or_else(|e| panic!("HARNESS_TEST_DEVICE: {e}"))
    })
}

/// The model computing with candle's tensor ops, the GPU's code path, wherever it is.
fn with_tensor_ops(mut model: LoadedModel) -> LoadedModel {
    model.model.set_ops(Ops::Tensor).unwrap();
    model
}

impl Golden {
    fn f32(&self, name: &str) -> Vec<f32> {
        self.tensors[name].flatten_all().unwrap().to_vec1().unwrap()
    }

    fn dims(&self, name: &str) -> Vec<usize> {
        self.tensors[name].dims().to_vec()
    }

    fn ids(&self) -> Vec<Vec<u32>> {
        let ids: Vec<Vec<i64>> = self.tensors["input_ids"].to_vec2().unwrap();
        let mask: Vec<Vec<i64>> = self.tensors["attention_mask"].to_vec2().unwrap();
        ids.iter()
            .zip(&mask)
            .map(|(ids, m)| {
                ids.iter()
                    .zip(m)
                    .filter(|(_, &m)| m == 1)
                    .map(|(&i, _)| i as u32)
                    .collect()
            })
            .collect()
    }
}

/// Every token's vector at every layer and every attention pattern, per text: memory
/// grows with tokens x layers, which only small golden inputs afford.
struct FullCapture {
    depth: usize,
    /// `[text][layer]` -> `[len, hidden]` row-major.
    resid: Vec<Vec<Vec<f32>>>,
    /// `[text][block-1]` -> `[heads, len, len]` row-major.
    attn: Vec<Vec<Vec<f32>>>,
}

impl FullCapture {
    fn new(n: usize, depth: usize) -> Self {
        Self {
            depth,
            resid: vec![vec![Vec::new(); depth + 1]; n],
            attn: vec![vec![Vec::new(); depth]; n],
        }
    }
}

impl Capture for FullCapture {
    fn depth(&self) -> usize {
        self.depth
    }

    fn wants_attention(&self, _layer: usize) -> bool {
        true
    }

    fn on_resid(&mut self, layer: usize, resid: &Tensor, batch: &Batch) -> Result<()> {
        let d = resid.dim(2)?;
        let t = batch.len;
        with_f32(resid, |h| {
            for (row, (&len, &index)) in batch.lens.iter().zip(&batch.index).enumerate() {
                self.resid[index][layer] = h[row * t * d..(row * t + len) * d].to_vec();
            }
        })
    }

    fn on_attention(&mut self, layer: usize, probs: &Tensor, batch: &Batch) -> Result<()> {
        let heads = probs.dim(1)?;
        let t = batch.len;
        with_f32(probs, |p| {
            for (row, (&len, &index)) in batch.lens.iter().zip(&batch.index).enumerate() {
                let mut out = Vec::with_capacity(heads * len * len);
                for h in 0..heads {
                    for q in 0..len {
                        let start = ((row * heads + h) * t + q) * t;
                        out.extend_from_slice(&p[start..start + len]);
                    }
                }
                self.attn[index][layer - 1] = out;
            }
        })
    }
}

/// Worst relative L2 error over rows of `width` floats, comparing `ours` (rows of
/// one sequence) with the golden rows starting at `offset`. NaN when any row holds a
/// NaN or an infinity, on either side, so that `err <= TOLERANCE` fails.
fn worst_row_error(ours: &[f32], golden: &[f32], offset: usize, width: usize) -> f32 {
    ours.chunks(width)
        .enumerate()
        .map(|(r, row)| {
            let g = &golden[offset + r * width..offset + (r + 1) * width];
            let diff: f32 = row.iter().zip(g).map(|(a, b)| (a - b) * (a - b)).sum();
            let norm: f32 = g.iter().map(|b| b * b).sum();
            if row.iter().chain(g).all(|x| x.is_finite()) {
                (diff / norm.max(1e-12)).sqrt()
            } else {
                f32::NAN
            }
        })
        // `f32::max` would return the other operand for a NaN and hide it.
        .fold(0.0, |worst, e| {
            if e.is_nan() || worst.is_nan() {
                f32::NAN
            } else {
                worst.max(e)
            }
        })
}

/// Runs `seqs` (one batch when `batched`, else one at a time) and returns the
/// capture plus the largest error against the golden tensors, with its location.
fn compare(model: &LoadedModel, g: &Golden, batched: bool) -> (f32, String) {
    let seqs = g.ids();
    let layers = model.model.num_layers();
    let mut cap = FullCapture::new(seqs.len(), layers);
    let plan = if batched {
        BatchPlan {
            max_tokens: usize::MAX,
            max_size: seqs.len(),
        }
    } else {
        BatchPlan {
            max_tokens: 1,
            max_size: 1,
        }
    };
    capture::run(
        &model.model,
        &seqs,
        model.tokenizer.pad_id(),
        plan,
        &Intervention::default(),
        &mut cap,
        &Progress::hidden(),
    )
    .unwrap();

    let mut worst = (0f32, String::new());
    let mut note = |err: f32, what: String| {
        if err > worst.0 || err.is_nan() {
            worst = (err, what);
        }
    };
    let hd = g.dims("hidden.0");
    let (t, d) = (hd[1], hd[2]);
    for l in 0..=layers {
        let gold = g.f32(&format!("hidden.{l}"));
        for (b, resid) in cap.resid.iter().enumerate() {
            let err = worst_row_error(&resid[l], &gold, b * t * d, d);
            note(err, format!("{} sequence {b}", CapturePoint::Resid(l)));
        }
    }
    for l in 1..=layers {
        let name = format!("attn.{l}");
        let point = CapturePoint::AttnPattern(l);
        let heads = g.dims(&name)[1];
        let gold = g.f32(&name);
        for (b, attn) in cap.attn.iter().enumerate() {
            let len = seqs[b].len();
            for h in 0..heads {
                for q in 0..len {
                    let ours = &attn[l - 1][(h * len + q) * len..][..len];
                    let off = ((b * heads + h) * t + q) * t;
                    note(
                        worst_row_error(ours, &gold, off, len),
                        format!("{point} sequence {b} head {h} query {q}"),
                    );
                }
            }
        }
    }

    // The final norm, logits and next-token log-probabilities from the last layer.
    let final_gold = g.f32("final_norm");
    let logits_gold = g.f32("logits_last");
    let logits_width = g.dims("logits_last")[1];
    let next_gold = g.f32("next_logprob");
    for (b, resid) in cap.resid.iter().enumerate() {
        let len = seqs[b].len();
        let h = Tensor::from_slice(&resid[layers], (len, d), &Device::Cpu).unwrap();
        let normed: Vec<f32> = model
            .model
            .final_norm(&h)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        note(
            worst_row_error(&normed, &final_gold, b * t * d, d),
            format!("final_norm sequence {b}"),
        );
        let last = h.narrow(0, len - 1, 1).unwrap();
        let logits: Vec<f32> = model
            .model
            .logits(&last)
            .unwrap()
            .narrow(1, 0, logits_width)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        note(
            worst_row_error(&logits, &logits_gold, b * logits_width, logits_width),
            format!("logits_last sequence {b}"),
        );
        if len > 1 {
            let lp: Vec<f32> = model
                .model
                .target_logprobs(&h.narrow(0, 0, len - 1).unwrap(), &seqs[b][1..])
                .unwrap()
                .to_vec1()
                .unwrap();
            note(
                worst_row_error(&lp, &next_gold, b * (t - 1), len - 1),
                format!("next_logprob sequence {b}"),
            );
        }
    }
    worst
}

fn check_case(case: &str) {
    check_model(case, &golden(case).meta.model);
}

/// Checks `model` (a `--model` argument) against the golden activations of `case`.
fn check_model(case: &str, model: &str) {
    check_loaded(case, &load_model(model));
}

/// Checks a loaded model against the golden activations of `case`.
fn check_loaded(case: &str, model: &LoadedModel) {
    let g = golden(case);
    let ops = model.model.ops();
    assert_eq!(model.model.num_layers(), g.meta.num_layers);

    let ids: Vec<Vec<u32>> = g
        .meta
        .prompts
        .iter()
        .map(|p| model.tokenizer.encode(p, BosPolicy::Auto).unwrap())
        .collect();
    assert_eq!(ids, g.ids(), "{case}: token ids differ from transformers");

    for batched in [false, true] {
        let (err, at) = compare(model, &g, batched);
        let mode = if batched { "padded batch" } else { "single" };
        eprintln!("{case} ({mode}, {ops:?}): worst relative error {err:.2e} at {at}");
        assert!(
            err <= TOLERANCE,
            "{case} ({mode}, {ops:?}): relative error {err:.2e} at {at} exceeds {TOLERANCE:.0e}"
        );
    }
}

#[test]
fn smollm2_gguf_matches_transformers() {
    check_case("smollm2");
}

#[test]
fn gemma3_gguf_matches_transformers() {
    check_case("gemma3");
}

#[test]
fn tiny_llama_matches_transformers() {
    check_case("tiny-llama");
}

#[test]
fn tiny_mistral_matches_transformers() {
    check_case("tiny-mistral");
}

#[test]
fn tiny_qwen2_matches_transformers() {
    check_case("tiny-qwen2");
}

/// The same weights converted to GGUF by `scripts/reference/make_tiny_gguf.py`: Qwen2's
/// unpermuted Q/K and biases, Mistral's permuted Q/K and sliding window, and the byte-level
/// tokenizer rebuilt from GGUF metadata must give transformers' activations too.
#[test]
fn tiny_qwen2_gguf_matches_transformers() {
    check_model("tiny-qwen2", "tests/fixtures/tiny-qwen2.gguf");
}

#[test]
fn tiny_mistral_gguf_matches_transformers() {
    check_model("tiny-mistral", "tests/fixtures/tiny-mistral.gguf");
}

#[test]
fn tiny_gemma3_matches_transformers() {
    check_case("tiny-gemma3");
}

#[test]
fn tiny_gpt_neox_matches_transformers() {
    check_case("tiny-gpt_neox");
}

#[test]
fn tiny_gpt2_matches_transformers() {
    check_case("tiny-gpt2");
}

/// The comparison must notice a wrong weight: scale one tensor of a copy of the
/// tiny Llama by 1% and the golden check has to fail.
#[test]
fn a_perturbed_weight_breaks_the_match() {
    let src = root().join("tests/fixtures/tiny-llama");
    let dir = std::env::temp_dir().join(format!("harness-perturbed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let mut weights =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let name = "model.layers.1.mlp.down_proj.weight";
    let w = weights.remove(name).unwrap();
    weights.insert(name.to_string(), (w * 1.01).unwrap());
    candle_core::safetensors::save(&weights, dir.join("model.safetensors")).unwrap();

    let g = golden("tiny-llama");
    let model = load_model(&dir.display().to_string());
    let (err, at) = compare(&model, &g, true);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        err > TOLERANCE,
        "a 1% change to {name} went unnoticed (worst error {err:.2e} at {at})"
    );
}

/// A NaN or an infinity anywhere in our output, or in a golden row, must fail the
/// comparison: `f32::max` would silently drop a NaN row and let an all-NaN output pass.
#[test]
fn non_finite_values_fail_the_comparison() {
    let gold = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let fails = |ours: &[f32], gold: &[f32]| {
        let err = worst_row_error(ours, gold, 0, 2);
        err.is_nan() || err > TOLERANCE
    };
    assert!(!fails(&gold, &gold), "identical rows must pass");
    assert!(fails(&[f32::NAN; 6], &gold), "an all-NaN output passed");
    assert!(
        fails(&[1.0, 2.0, f32::NAN, 4.0, 5.0, 6.0], &gold),
        "one NaN passed"
    );
    assert!(
        fails(&[1.0, 2.0, 3.0, 4.0, 5.0, f32::INFINITY], &gold),
        "an infinity passed"
    );
    let mut bad_gold = gold;
    bad_gold[1] = f32::INFINITY;
    assert!(fails(&gold, &bad_gold), "an infinite golden value passed");
}

/// The bf16 run of a tiny model against transformers' bf16 run: worst row error per
/// layer (0..=L, then the final norm as L + 1) comparing our layer `l` with the golden
/// layer `l + shift` (`shift` 1 is the wrong-layer control; `None` where it has none).
fn bf16_errors(model: &LoadedModel, g: &Golden, shift: usize) -> Vec<Option<f32>> {
    let seqs = g.ids();
    let layers = model.model.num_layers();
    let mut cap = FullCapture::new(seqs.len(), layers);
    let plan = BatchPlan {
        max_tokens: usize::MAX,
        max_size: seqs.len(),
    };
    let none = Intervention::default();
    let pad = model.tokenizer.pad_id();
    capture::run(
        &model.model,
        &seqs,
        pad,
        plan,
        &none,
        &mut cap,
        &Progress::hidden(),
    )
    .unwrap();
    let hd = g.dims("hidden.0");
    let (t, d) = (hd[1], hd[2]);
    let name = |l: usize| match l {
        l if l <= layers => format!("hidden.{l}"),
        _ => "final_norm".to_string(),
    };
    (0..=layers + 1)
        .map(|l| {
            if l + shift > layers + 1 {
                return None;
            }
            let gold = g.f32(&name(l + shift));
            let worst = cap.resid.iter().enumerate().map(|(b, resid)| {
                let ours = if l <= layers {
                    resid[l].clone()
                } else {
                    let h = Tensor::from_slice(&resid[layers], (seqs[b].len(), d), &Device::Cpu);
                    let normed = model.model.final_norm(&h.unwrap()).unwrap();
                    normed.flatten_all().unwrap().to_vec1().unwrap()
                };
                worst_row_error(&ours, &gold, b * t * d, d)
            });
            Some(worst.fold(0f32, |a, e| if e.is_nan() { f32::NAN } else { a.max(e) }))
        })
        .collect()
}

/// Checks a tiny model loaded in bf16 against transformers' bf16 golden of `case`.
fn check_bf16(case: &str, model: &str) {
    check_bf16_loaded(case, &load_model_as(model, Dtype::Bf16));
}

/// Checks a model loaded in bf16 against transformers' bf16 golden of `case`.
fn check_bf16_loaded(case: &str, model: &LoadedModel) {
    let g = golden_bf16(case);
    let ops = model.model.ops();
    let errors = bf16_errors(model, &g, 0);
    eprintln!(
        "{case} bf16 ({ops:?}): per-layer worst row error {}",
        show(&errors)
    );
    for (l, err) in errors.iter().enumerate() {
        let err = err.unwrap();
        assert!(
            err <= BF16_TOLERANCE,
            "{case} bf16 ({ops:?}): layer {l} relative error {err:.2e} exceeds {BF16_TOLERANCE:.0e}"
        );
    }
}

/// Every case by its golden name and the model it loads.
const CASES: [(&str, &str); 10] = [
    ("smollm2", "smollm2"),
    ("gemma3", "gemma3"),
    ("tiny-llama", "tests/fixtures/tiny-llama"),
    ("tiny-mistral", "tests/fixtures/tiny-mistral"),
    ("tiny-qwen2", "tests/fixtures/tiny-qwen2"),
    ("tiny-qwen2", "tests/fixtures/tiny-qwen2.gguf"),
    ("tiny-mistral", "tests/fixtures/tiny-mistral.gguf"),
    ("tiny-gemma3", "tests/fixtures/tiny-gemma3"),
    ("tiny-gpt_neox", "tests/fixtures/tiny-gpt_neox"),
    ("tiny-gpt2", "tests/fixtures/tiny-gpt2"),
];

/// The GPU's code path, candle's tensor ops, run on the CPU against every f32
/// golden: the same tolerance as the fused kernels.
#[test]
fn every_case_matches_transformers_with_tensor_ops() {
    for (case, model) in CASES {
        check_loaded(case, &with_tensor_ops(load_model(model)));
    }
}

/// The tensor ops in bf16 against every bf16 golden (the tiny models).
#[test]
fn every_bf16_case_matches_transformers_with_tensor_ops() {
    for (case, model) in CASES.iter().filter(|(_, m)| m.starts_with("tests/")) {
        check_bf16_loaded(case, &with_tensor_ops(load_model_as(model, Dtype::Bf16)));
    }
}

fn show(errors: &[Option<f32>]) -> String {
    let shown: Vec<String> = errors
        .iter()
        .map(|e| e.map_or("-".into(), |e| format!("{e:.2e}")))
        .collect();
    shown.join(" ")
}

fn golden_bf16(case: &str) -> Golden {
    let path = root().join(format!("tests/golden/{case}.bf16.safetensors"));
    let tensors = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    let meta = golden(case).meta;
    Golden { meta, tensors }
}

#[test]
fn tiny_llama_bf16_matches_transformers() {
    check_bf16("tiny-llama", "tests/fixtures/tiny-llama");
}

#[test]
fn tiny_mistral_bf16_matches_transformers() {
    check_bf16("tiny-mistral", "tests/fixtures/tiny-mistral");
}

#[test]
fn tiny_qwen2_bf16_matches_transformers() {
    check_bf16("tiny-qwen2", "tests/fixtures/tiny-qwen2");
}

#[test]
fn tiny_qwen2_gguf_bf16_matches_transformers() {
    check_bf16("tiny-qwen2", "tests/fixtures/tiny-qwen2.gguf");
}

#[test]
fn tiny_mistral_gguf_bf16_matches_transformers() {
    check_bf16("tiny-mistral", "tests/fixtures/tiny-mistral.gguf");
}

#[test]
fn tiny_gemma3_bf16_matches_transformers() {
    check_bf16("tiny-gemma3", "tests/fixtures/tiny-gemma3");
}

#[test]
fn tiny_gpt_neox_bf16_matches_transformers() {
    check_bf16("tiny-gpt_neox", "tests/fixtures/tiny-gpt_neox");
}

#[test]
fn tiny_gpt2_bf16_matches_transformers() {
    check_bf16("tiny-gpt2", "tests/fixtures/tiny-gpt2");
}

/// The bf16 tolerance must still catch an off-by-one layer: every layer compared
/// with the golden of the next one (the last block against the final norm, which is
/// what a missing final norm would look like) is further off than the tolerance.
#[test]
fn tiny_bf16_checks_tell_a_wrong_layer_apart() {
    for case in [
        "tiny-llama",
        "tiny-mistral",
        "tiny-qwen2",
        "tiny-gemma3",
        "tiny-gpt_neox",
        "tiny-gpt2",
    ] {
        let model = load_model_as(&format!("tests/fixtures/{case}"), Dtype::Bf16);
        let errors = bf16_errors(&model, &golden_bf16(case), 1);
        eprintln!(
            "{case} bf16, layer l against golden l + 1: {}",
            show(&errors)
        );
        for (l, err) in errors.iter().enumerate() {
            if let Some(err) = err {
                assert!(
                    *err > BF16_TOLERANCE,
                    "{case}: layer {l} passes as layer {} ({err:.2e})",
                    l + 1
                );
            }
        }
    }
}
