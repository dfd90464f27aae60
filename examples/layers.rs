//! The library in a few lines: load a model, pool every layer of some texts, and find
//! the layer where a task peaks.
//!
//! ```sh
//! cargo run --release --example layers                  # smollm2 on mr
//! cargo run --release --example layers -- gemma3 tweets
//! ```

use harness::{embed_texts, evaluate, load_model, load_task, EvalOptions, Pool};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let model = load_model(&args.next().unwrap_or_else(|| "smollm2".into()))?;
    let task = load_task(&args.next().unwrap_or_else(|| "mr".into()))?;

    let texts: Vec<String> = [
        "A gripping, beautifully acted film.",
        "Dull and far too long.",
    ]
    .map(String::from)
    .into();
    let vectors = embed_texts(&model, &texts, Pool::MeanSkipFirst, Default::default())?;
    let last = vectors.layer(vectors.layers - 1);
    let cosine = last.row(0).dot(&last.row(1))
        / (last.row(0).dot(&last.row(0)).sqrt() * last.row(1).dot(&last.row(1)).sqrt());
    println!(
        "{} layers of {} values per text; the two texts' cosine at the last layer: {cosine:.3}",
        vectors.layers, vectors.hidden
    );

    let opts = EvalOptions {
        limit: Some(300),
        use_cache: false,
        quiet: true,
        ..Default::default()
    };
    let result = &evaluate(&model, &[task], &opts)?[0];
    println!(
        "{}: {} peaks at layer {} of {} ({:.3}, 95% CI {:.3}-{:.3}); the last layer scores {:.3}",
        result.task.name,
        result.task.metric,
        result.peak.layer,
        result.layers.len() - 1,
        result.peak.score,
        result.peak.ci_low,
        result.peak.ci_high,
        result.last.score
    );
    Ok(())
}
