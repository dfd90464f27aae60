//! Similarity: pairs of texts with human scores; the cosine of their embeddings at
//! each layer, scored by Spearman correlation with the human scores.

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::{LoadedTask, Settings};
use crate::embeddings::pool::Pool;
use crate::embeddings::session::Session;
use crate::stats::metrics;
use crate::stats::sampling::subset;
use crate::stats::scores::{Chance, Metric, Scored, SpearmanOfItems};

/// `[similarity]`: the two text columns and the human score column.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SimilaritySpec {
    pub text_a: String,
    pub text_b: String,
    pub score: String,
}

/// Distinct texts and the pairs that index them.
pub struct Examples {
    pub texts: Vec<String>,
    pub pairs: Vec<(usize, usize)>,
    pub gold: Vec<f64>,
}

/// The seeded subset of pairs, their distinct texts and human scores.
pub fn examples(task: &LoadedTask, spec: &SimilaritySpec, settings: &Settings) -> Result<Examples> {
    let (limit, seed) = (settings.limit, settings.seed);
    let table = &task.table;
    for c in [&spec.text_a, &spec.text_b, &spec.score] {
        table.require(c)?;
    }
    let mut texts: Vec<String> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut id = |t: String| {
        let next = index.len();
        let at = *index.entry(t.clone()).or_insert(next);
        if at == next {
            texts.push(t);
        }
        at
    };
    let mut pairs = Vec::new();
    let mut gold = Vec::new();
    for row in subset(table.len(), limit, seed) {
        let a = id(table.text(row, &spec.text_a)?);
        let b = id(table.text(row, &spec.text_b)?);
        pairs.push((a, b));
        gold.push(table.number(row, &spec.score)?);
    }
    if pairs.len() < 3 {
        bail!("{}: a correlation needs at least three pairs", table.origin);
    }
    if gold.iter().all(|&g| g == gold[0]) {
        bail!(
            "{}: every pair has the same human score; nothing to correlate with",
            table.origin
        );
    }
    Ok(Examples { texts, pairs, gold })
}

/// Correlates the pairs' cosines with the human scores at every layer.
pub fn run(ex: &Examples, pool: Pool, center: bool, session: &mut Session) -> Result<Scored> {
    let pooled = session.embeddings(&ex.texts, pool)?;
    let pooled = if center {
        pooled.centered()
    } else {
        (*pooled).clone()
    };
    let mut predicted = Vec::with_capacity(pooled.layers);
    let mut extra = Vec::with_capacity(pooled.layers);
    for l in 0..pooled.layers {
        let v = pooled.layer(l);
        let cos: Vec<f64> = ex
            .pairs
            .iter()
            .map(|&(a, b)| cosine(v.row(a), v.row(b)))
            .collect();
        extra.push(BTreeMap::from([(
            "pearson".to_string(),
            metrics::pearson(&cos, &ex.gold),
        )]));
        predicted.push(cos);
    }
    let info = BTreeMap::from([
        ("pairs".to_string(), serde_json::json!(ex.pairs.len())),
        ("texts".to_string(), serde_json::json!(ex.texts.len())),
        ("similarity".to_string(), serde_json::json!("cosine")),
    ]);
    Ok(Scored {
        metric: Metric {
            name: "spearman",
            higher_is_better: true,
        },
        chance: Chance {
            score: Some(0.0),
            rule: "no correlation".into(),
        },
        items: "pairs",
        main: Box::new(SpearmanOfItems {
            predicted,
            gold: ex.gold.clone(),
        }),
        extra,
        info,
    })
}

fn cosine(a: ndarray::ArrayView1<f32>, b: ndarray::ArrayView1<f32>) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b.iter()) {
        let (x, y) = (x as f64, y as f64);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa * bb).sqrt().max(f64::MIN_POSITIVE)
}
