//! Generation through the logit lens: the final norm and the unembedding applied to
//! every layer's residual stream. Language modelling scores next-token perplexity
//! and top-1 accuracy over held-out text; multiple choice picks the option with the
//! highest log-probability.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use candle_core::Tensor;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{LoadedTask, Settings};
use crate::embeddings::session::Session;
use crate::model::capture::{Batch, Capture};
use crate::model::kernels::with_f32;
use crate::model::Transformer;
use crate::stats::sampling::subset;
use crate::stats::scores::{Chance, Metric, PerplexityOfItems, Scored};

/// `[generation]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, tag = "mode", rename_all = "kebab-case")]
pub enum GenerationSpec {
    /// Next-token prediction over documents.
    LanguageModel {
        /// Column holding the text.
        text: String,
        /// Tokens scored per document (longer documents are cut).
        #[serde(default = "default_window")]
        max_tokens: usize,
    },
    /// Pick one of fixed answer strings after a prompt.
    Choice {
        /// The prompt, with `{column}` placeholders filled from each row.
        prompt: String,
        /// The options, appended to the prompt as written (mind the leading space).
        choices: Vec<String>,
        /// Column holding the right answer.
        answer: String,
        /// Answer value (as text) -> one of `choices`; without it the column must
        /// hold the choice itself.
        answer_map: Option<BTreeMap<String, String>>,
    },
}

fn default_window() -> usize {
    256
}

/// Read the log-probabilities of `targets` at `position` of sequence `seq`.
struct LensQuery {
    position: usize,
    targets: Vec<u32>,
}

/// What the lens read at one query and layer.
#[derive(Clone, Default)]
struct LensReading {
    logprobs: Vec<f32>,
    /// Whether the first target is the most likely token.
    top1: bool,
}

/// Applies the logit lens at the query positions of every layer as the pass goes,
/// keeping only the log-probabilities asked for.
struct LensCapture<'m> {
    model: &'m Transformer,
    /// Per sequence, its queries (indices into `readings`' second axis).
    queries: Vec<Vec<(usize, LensQuery)>>,
    /// `[layer][query]`.
    readings: Vec<Vec<LensReading>>,
}

/// Rows unembedded at once: bounds the `[rows, vocab]` logits held in memory.
pub const LENS_CHUNK: usize = 128;

impl Capture for LensCapture<'_> {
    fn depth(&self) -> usize {
        self.readings.len() - 1
    }

    fn on_resid(&mut self, layer: usize, resid: &Tensor, batch: &Batch) -> Result<()> {
        let (b, t, d) = resid.dims3()?;
        let mut rows = Vec::new();
        let mut asked: Vec<(usize, &LensQuery)> = Vec::new();
        for (row, &seq) in batch.index.iter().enumerate() {
            for (q, query) in &self.queries[seq] {
                rows.push((row * t + query.position) as u32);
                asked.push((*q, query));
            }
        }
        let flat = resid.reshape((b * t, d))?;
        for (chunk_rows, chunk_asked) in rows.chunks(LENS_CHUNK).zip(asked.chunks(LENS_CHUNK)) {
            let idx = Tensor::from_slice(chunk_rows, chunk_rows.len(), resid.device())?;
            let logits = self.model.logits(&flat.index_select(&idx, 0)?)?;
            let vocab = logits.dim(1)?;
            let readings: Vec<LensReading> = with_f32(&logits, |data| {
                data.par_chunks(vocab)
                    .zip(chunk_asked.par_iter())
                    .map(|(row, (_, query))| read(row, &query.targets))
                    .collect()
            })?;
            for ((q, _), reading) in chunk_asked.iter().zip(readings) {
                self.readings[layer][*q] = reading;
            }
        }
        Ok(())
    }
}

/// Log-softmax at the targets, and whether the first target is the argmax.
fn read(logits: &[f32], targets: &[u32]) -> LensReading {
    let (mut best, mut max) = (0usize, f32::NEG_INFINITY);
    for (i, &x) in logits.iter().enumerate() {
        if x > max {
            max = x;
            best = i;
        }
    }
    let lse = max + logits.iter().map(|&x| (x - max).exp()).sum::<f32>().ln();
    LensReading {
        logprobs: targets.iter().map(|&t| logits[t as usize] - lse).collect(),
        top1: targets.first().is_some_and(|&t| t as usize == best),
    }
}

/// Runs the lens over `seqs`, returning readings `[layer][query]`.
fn lens(
    session: &mut Session,
    seqs: &[Vec<u32>],
    queries: Vec<Vec<(usize, LensQuery)>>,
    total: usize,
) -> Result<Vec<Vec<LensReading>>> {
    let layers = session.model.model.num_layers() + 1;
    let mut cap = LensCapture {
        model: &session.model.model,
        queries,
        readings: vec![vec![LensReading::default(); total]; layers],
    };
    session.run_capture(seqs, &mut cap, "lens")?;
    Ok(cap.readings)
}

/// A generation task's texts and what scoring them needs.
pub struct Examples<'t> {
    /// The documents, or the rendered prompts.
    pub texts: Vec<String>,
    mode: Mode<'t>,
}

enum Mode<'t> {
    /// Tokens scored per document.
    LanguageModel { window: usize },
    /// The table rows of the prompts (for messages), the options and each row's
    /// right option.
    Choice {
        rows: Vec<usize>,
        choices: &'t [String],
        answers: Vec<usize>,
    },
}

/// Reads the seeded subset: documents, or prompts with their right answers.
pub fn examples<'t>(
    task: &LoadedTask,
    spec: &'t GenerationSpec,
    settings: &Settings,
) -> Result<Examples<'t>> {
    match spec {
        GenerationSpec::LanguageModel { text, max_tokens } => {
            if *max_tokens < 2 {
                bail!("max_tokens must be at least 2");
            }
            Ok(Examples {
                texts: documents(task, text, settings)?,
                mode: Mode::LanguageModel {
                    window: *max_tokens,
                },
            })
        }
        GenerationSpec::Choice {
            prompt,
            choices,
            answer,
            answer_map,
        } => {
            let table = &task.table;
            table.require(answer)?;
            if choices.len() < 2 {
                bail!("a choice task needs at least two choices");
            }
            let rows = subset(table.len(), settings.limit, settings.seed);
            let mut texts = Vec::with_capacity(rows.len());
            let mut answers = Vec::with_capacity(rows.len());
            for &row in &rows {
                let value = table.text(row, answer)?;
                let wanted = match answer_map {
                    Some(map) => map.get(&value).cloned().ok_or_else(|| {
                        anyhow::anyhow!(
                            "{} row {}: answer '{value}' is not in answer_map",
                            table.origin,
                            row + 1
                        )
                    })?,
                    None => value,
                };
                let Some(right) = choices.iter().position(|c| *c == wanted) else {
                    bail!(
                        "{} row {}: answer '{wanted}' is not one of the choices",
                        table.origin,
                        row + 1
                    );
                };
                answers.push(right);
                texts.push(render(prompt, task, row)?);
            }
            Ok(Examples {
                texts,
                mode: Mode::Choice {
                    rows,
                    choices,
                    answers,
                },
            })
        }
    }
}

/// Scores the examples through the logit lens at every layer.
pub fn run(task: &LoadedTask, ex: &Examples, session: &mut Session) -> Result<Scored> {
    match &ex.mode {
        Mode::LanguageModel { window } => language_model(task, session, &ex.texts, *window),
        Mode::Choice {
            rows,
            choices,
            answers,
        } => choice(task, session, &ex.texts, rows, choices, answers),
    }
}

/// The texts a generation task feeds the model: its documents, or its rendered prompts.
pub fn texts(task: &LoadedTask, spec: &GenerationSpec, settings: &Settings) -> Result<Vec<String>> {
    match spec {
        GenerationSpec::LanguageModel { text, .. } => documents(task, text, settings),
        GenerationSpec::Choice { prompt, .. } => {
            subset(task.table.len(), settings.limit, settings.seed)
                .into_iter()
                .map(|row| render(prompt, task, row))
                .collect()
        }
    }
}

fn documents(task: &LoadedTask, column: &str, settings: &Settings) -> Result<Vec<String>> {
    task.table.require(column)?;
    subset(task.table.len(), settings.limit, settings.seed)
        .into_iter()
        .map(|r| task.table.text(r, column))
        .collect()
}

fn language_model(
    task: &LoadedTask,
    session: &mut Session,
    texts: &[String],
    window: usize,
) -> Result<Scored> {
    let table = &task.table;
    let seqs: Vec<Vec<u32>> = session
        .model
        .tokenizer
        .encode_batch(texts, session.opts.encoding.bos)?
        .into_iter()
        .map(|mut s| {
            s.truncate(window.min(session.model.model.config.context_length));
            s
        })
        .filter(|s| s.len() >= 2)
        .collect();
    if seqs.is_empty() {
        bail!("{}: no document has two or more tokens", table.origin);
    }
    let mut total = 0;
    let queries: Vec<Vec<(usize, LensQuery)>> = seqs
        .iter()
        .map(|s| {
            (0..s.len() - 1)
                .map(|p| {
                    total += 1;
                    (
                        total - 1,
                        LensQuery {
                            position: p,
                            targets: vec![s[p + 1]],
                        },
                    )
                })
                .collect()
        })
        .collect();
    let tokens: Vec<f64> = seqs.iter().map(|s| (s.len() - 1) as f64).collect();
    let spans: Vec<(usize, usize)> = queries.iter().map(|q| (q[0].0, q[0].0 + q.len())).collect();
    let readings = lens(session, &seqs, queries, total)?;
    let mut nll = Vec::with_capacity(readings.len());
    let mut extra = Vec::with_capacity(readings.len());
    for layer in &readings {
        let doc_nll: Vec<f64> = spans
            .iter()
            .map(|&(a, b)| layer[a..b].iter().map(|r| -(r.logprobs[0] as f64)).sum())
            .collect();
        let top1 = layer.iter().filter(|r| r.top1).count() as f64 / total as f64;
        let mean_nll = doc_nll.iter().sum::<f64>() / total as f64;
        extra.push(BTreeMap::from([
            ("top1_accuracy".to_string(), top1),
            ("cross_entropy".to_string(), mean_nll),
        ]));
        nll.push(doc_nll);
    }
    let info = BTreeMap::from([
        ("documents".to_string(), serde_json::json!(seqs.len())),
        ("tokens_scored".to_string(), serde_json::json!(total)),
        ("max_tokens".to_string(), serde_json::json!(window)),
        (
            "lens".to_string(),
            serde_json::json!("final norm + unembedding applied to each layer"),
        ),
    ]);
    Ok(Scored {
        metric: Metric {
            name: "perplexity",
            higher_is_better: false,
        },
        chance: Chance {
            score: None,
            rule: "none: perplexity has no chance level (a uniform guess over the vocabulary, perplexity = vocabulary size, is beaten by any unigram table, so clearing it says nothing)".into(),
        },
        items: "documents",
        main: Box::new(PerplexityOfItems { nll, tokens }),
        extra,
        info,
    })
}

/// Fills `{column}` placeholders from a row.
fn render(template: &str, task: &LoadedTask, row: usize) -> Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            bail!("prompt template has an unclosed '{{'");
        };
        out.push_str(&rest[..open]);
        let column = &rest[open + 1..open + close];
        task.table.require(column)?;
        out.push_str(&task.table.text(row, column)?);
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// One layer's multiple-choice verdicts: per example, 1 when the right choice has the
/// highest summed log-probability (ties go to the earlier choice), else 0; and the
/// mean margin of the right choice over the best other one. `parts[example][choice]`
/// lists the readings whose log-probabilities add up to that choice's.
fn score_choices(
    layer: &[LensReading],
    parts: &[Vec<Vec<usize>>],
    answers: &[usize],
) -> (Vec<f64>, f64) {
    let mut right = Vec::with_capacity(parts.len());
    let mut margin = 0.0;
    for (example, &gold) in parts.iter().zip(answers) {
        let scores: Vec<f64> = example
            .iter()
            .enumerate()
            .map(|(c, ids)| {
                ids.iter()
                    .map(|&q| {
                        let r = &layer[q];
                        // A shared query holds every option's log-probability.
                        (if r.logprobs.len() > 1 {
                            r.logprobs[c]
                        } else {
                            r.logprobs[0]
                        }) as f64
                    })
                    .sum()
            })
            .collect();
        let best = (0..scores.len()).fold(0, |b, i| if scores[i] > scores[b] { i } else { b });
        let other = scores
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != gold)
            .map(|(_, &s)| s)
            .fold(f64::NEG_INFINITY, f64::max);
        margin += scores[gold] - other;
        right.push(f64::from(u8::from(best == gold)));
    }
    (right, margin / parts.len() as f64)
}

fn choice(
    task: &LoadedTask,
    session: &mut Session,
    prompts: &[String],
    rows: &[usize],
    choices: &[String],
    answers: &[usize],
) -> Result<Scored> {
    let table = &task.table;
    let tok = &session.model.tokenizer;
    let bos = session.opts.encoding.bos;
    let mut seqs: Vec<Vec<u32>> = Vec::new();
    let mut queries: Vec<Vec<(usize, LensQuery)>> = Vec::new();
    // Per example, per choice: the query indices whose log-probabilities add up.
    let mut parts: Vec<Vec<Vec<usize>>> = Vec::new();
    let mut total = 0;
    for (text, &row) in prompts.iter().zip(rows) {
        let head = tok.encode(text, bos)?;
        let mut conts = Vec::new();
        for c in choices {
            let full = tok.encode(&format!("{text}{c}"), bos)?;
            if full.len() <= head.len() || full[..head.len()] != head[..] {
                bail!(
                    "choice {c:?} does not tokenize as a continuation of the prompt; start the choices with a space and end the prompt without one"
                );
            }
            conts.push(full[head.len()..].to_vec());
        }
        let context = session.model.model.config.context_length;
        if head.len() + conts.iter().map(Vec::len).max().unwrap_or(0) > context {
            bail!(
                "{} row {}: the prompt is longer than the model's context of {context}",
                table.origin,
                row + 1
            );
        }
        let mut example = Vec::new();
        if conts.iter().all(|c| c.len() == 1) {
            // One pass reads every option at the prompt's last position.
            let targets: Vec<u32> = conts.iter().map(|c| c[0]).collect();
            queries.push(vec![(
                total,
                LensQuery {
                    position: head.len() - 1,
                    targets,
                },
            )]);
            seqs.push(head);
            example = (0..choices.len()).map(|_| vec![total]).collect();
            total += 1;
            parts.push(example);
            continue;
        }
        for cont in conts {
            let mut seq = head.clone();
            seq.extend_from_slice(&cont);
            let mut qs = Vec::new();
            let mut ids = Vec::new();
            for (i, &t) in cont.iter().enumerate() {
                qs.push((
                    total,
                    LensQuery {
                        position: head.len() + i - 1,
                        targets: vec![t],
                    },
                ));
                ids.push(total);
                total += 1;
            }
            queries.push(qs);
            seqs.push(seq);
            example.push(ids);
        }
        parts.push(example);
    }
    let readings = lens(session, &seqs, queries, total)?;
    let mut correct = Vec::with_capacity(readings.len());
    let mut extra = Vec::with_capacity(readings.len());
    for layer in &readings {
        let (right, margin) = score_choices(layer, &parts, answers);
        extra.push(BTreeMap::from([("mean_margin".to_string(), margin)]));
        correct.push(right);
    }
    let mut counts = vec![0usize; choices.len()];
    answers.iter().for_each(|&a| counts[a] += 1);
    let info = BTreeMap::from([
        ("choices".to_string(), serde_json::json!(choices)),
        ("answer_counts".to_string(), serde_json::json!(counts)),
        ("lens".to_string(), serde_json::json!("final norm + unembedding applied to each layer; the option with the highest summed log-probability wins")),
    ]);
    Ok(Scored::accuracy(correct, &counts, extra, info))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::scores::ItemStatistic;

    /// The lens reading is the log-softmax at the targets: for logits [2, 0, -1, 1]
    /// the normaliser is ln(e^2 + 1 + e^-1 + e^1), and token 0 is the argmax.
    #[test]
    fn reading_is_the_log_softmax_of_the_logits() {
        let logits = [2.0f32, 0.0, -1.0, 1.0];
        let lse = (2f64.exp() + 1.0 + (-1f64).exp() + 1f64.exp()).ln();
        let r = read(&logits, &[3, 0]);
        assert!((r.logprobs[0] as f64 - (1.0 - lse)).abs() < 1e-6);
        assert!((r.logprobs[1] as f64 - (2.0 - lse)).abs() < 1e-6);
        assert!(!r.top1, "the first target, 3, is not the most likely token");
        assert!(read(&logits, &[0]).top1);
    }

    /// Choice accuracy from hand-built log-probabilities. Example 0 reads both options
    /// at one position (-0.5 vs -1.2: right, margin 0.7); example 1's first option has
    /// two tokens (-1 + -1 = -2 vs -1.5: wrong, margin -0.5); example 2 is a tie (-1 vs
    /// -1), which goes to the first option while the answer is the second (wrong,
    /// margin 0). Accuracy 1/3, mean margin 0.2/3.
    #[test]
    fn choice_accuracy_from_hand_built_log_probabilities() {
        let reading = |logprobs: &[f32]| LensReading {
            logprobs: logprobs.to_vec(),
            top1: false,
        };
        let layer = [
            reading(&[-0.5, -1.2]),
            reading(&[-1.0]),
            reading(&[-1.0]),
            reading(&[-1.5]),
            reading(&[-1.0]),
            reading(&[-1.0]),
        ];
        let parts = vec![
            vec![vec![0], vec![0]],
            vec![vec![1, 2], vec![3]],
            vec![vec![4], vec![5]],
        ];
        let (right, margin) = score_choices(&layer, &parts, &[0, 0, 1]);
        assert_eq!(right, [1.0, 0.0, 0.0]);
        assert!((margin - 0.2 / 3.0).abs() < 1e-6, "{margin}");
        // Answers [0, 0, 1]: two of one option, one of the other.
        let accuracy = Scored::accuracy(vec![right], &[2, 1], Vec::new(), BTreeMap::new());
        assert!((accuracy.main.value(0, &[0, 1, 2]) - 1.0 / 3.0).abs() < 1e-12);
    }

    /// Perplexity from hand-built logits: a uniform row over 4 tokens gives the target
    /// probability 1/4, the row [0, ln 3, 0, 0] gives token 1 probability 3/6, so the
    /// document's perplexity is exp((ln 4 + ln 2) / 2) = sqrt(8).
    #[test]
    fn perplexity_from_hand_built_logits() {
        let rows: [([f32; 4], u32); 2] = [([0.0; 4], 2), ([0.0, 3f32.ln(), 0.0, 0.0], 1)];
        let nll: f64 = rows
            .iter()
            .map(|(logits, t)| -(read(logits, &[*t]).logprobs[0] as f64))
            .sum();
        let p = PerplexityOfItems {
            nll: vec![vec![nll]],
            tokens: vec![2.0],
        };
        assert!((p.value(0, &[0]) - 8f64.sqrt()).abs() < 1e-6);
    }
}
