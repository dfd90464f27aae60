//! Scores do not depend on precision: `mr`, `boolq-retrieval`, `lee-sts` and `austen`
//! on both shipped models in bf16 on the CPU, every layer's score inside the f32 run's
//! 95% interval and the peak within one layer of f32's (issue 11).
//!
//! Subsets are small so that the file costs a few minutes in release on two cores
//! (see [`LIMITS`]); the intervals are correspondingly wide, but a broken bf16 path
//! (a norm skipped) still falls outside them.

use harness::commands::eval::{evaluate, EvalOptions};
use harness::model::dtype::Dtype;
use harness::model::source::{self, LoadedModel};
use harness::results::eval::EvalResult;
use harness::tasks;

/// Items per task. `austen` runs the logit lens over Gemma 3's 262k-word vocabulary
/// at every layer, which costs far more per token than embedding: a few paragraphs.
const LIMITS: [(&str, usize); 4] = [
    ("mr", 120),
    ("boolq-retrieval", 25),
    ("lee-sts", 40),
    ("austen", 4),
];

fn load(model: &str, dtype: Dtype) -> LoadedModel {
    source::load_as(model, dtype).unwrap_or_else(|e| panic!("{e:#} (run scripts/fetch_assets.py)"))
}

/// Every task of [`LIMITS`] on `model`, fresh, without the cache.
fn run(model: &LoadedModel) -> Vec<EvalResult> {
    let run_one = |(task, limit): &(&str, usize)| {
        let opts = EvalOptions {
            limit: Some(*limit),
            use_cache: false,
            quiet: true,
            ..EvalOptions::default()
        };
        let mut out = evaluate(model, &[tasks::load(task).unwrap()], &opts).unwrap();
        out.remove(0)
    };
    LIMITS.iter().map(run_one).collect()
}

/// Every layer of the bf16 run inside the f32 run's interval, and the peaks at most
/// one layer apart or tied in f32; the results record the type they were computed in.
fn check(model: &str) {
    let (exact, low) = (load(model, Dtype::F32), load(model, Dtype::Bf16));
    assert_eq!(low.model.dtype(), Dtype::Bf16);
    let (exact, low) = (run(&exact), run(&low));
    let mut failures = Vec::new();
    for (e, b) in exact.iter().zip(&low) {
        let task = &e.task.name;
        assert_eq!(
            (e.settings.dtype.as_str(), b.settings.dtype.as_str()),
            ("f32", "bf16")
        );
        assert_eq!(b.settings.device, "cpu");
        let worst = e
            .layers
            .iter()
            .zip(&b.layers)
            .map(|(e, b)| (b.score - e.score).abs() / e.score.abs().max(1e-12))
            .fold(0f64, f64::max);
        eprintln!(
            "{model} {task}: peak f32 {} bf16 {}, largest per-layer relative difference {worst:.1e}, \
             forward f32 {:.0}s bf16 {:.0}s",
            e.peak.layer,
            b.peak.layer,
            e.timings.shared_forward_s + e.timings.forward_s,
            b.timings.shared_forward_s + b.timings.forward_s,
        );
        for (e, b) in e.layers.iter().zip(&b.layers) {
            if !(e.ci_low..=e.ci_high).contains(&b.score) {
                failures.push(format!(
                    "{task} layer {}: bf16 {:.4} outside f32 {:.4} [{:.4}, {:.4}]",
                    e.layer, b.score, e.score, e.ci_low, e.ci_high
                ));
            }
        }
        // A flat curve has no one peak: on 200 `mr` sentences SmolLM2's layers 17 and
        // 23 score 0.790 and 0.785 in f32, and bf16 picked 23. Where the peaks are more
        // than a layer apart, the f32 curve must tie at bf16's peak (its f32 score inside
        // the f32 peak's interval): the documented exception of issue 11.
        let tied = (e.peak.ci_low..=e.peak.ci_high).contains(&e.layers[b.peak.layer].score);
        if e.peak.layer.abs_diff(b.peak.layer) > 1 && !tied {
            failures.push(format!(
                "{task}: peak at layer {} in bf16, {} in f32",
                b.peak.layer, e.peak.layer
            ));
        }
    }
    assert!(failures.is_empty(), "{model}: {}", failures.join("; "));
}

#[test]
fn smollm2_scores_do_not_depend_on_precision() {
    check("smollm2");
}

#[test]
fn gemma3_scores_do_not_depend_on_precision() {
    check("gemma3");
}
