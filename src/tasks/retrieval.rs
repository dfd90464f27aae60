//! Retrieval: queries and a corpus embedded per layer, ranked by cosine similarity.
//! Each query's relevant document is the one on its own row (BoolQ: the passage a
//! question was written about); the corpus is the distinct documents.

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::{LoadedTask, Settings};
use crate::embeddings::pool::Pool;
use crate::embeddings::session::Session;
use crate::stats::metrics;
use crate::stats::sampling::subset;
use crate::stats::scores::{Chance, MeanOfItems, Metric, Scored};

/// `[retrieval]`: the query and document columns.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetrievalSpec {
    pub query: String,
    pub document: String,
}

/// Queries, the corpus, and each query's relevant document.
pub struct Examples {
    /// The queries, then the corpus: embedded as one set so centring uses one mean.
    pub texts: Vec<String>,
    /// How many of `texts` are queries.
    pub queries: usize,
    /// Per query, its document's index in the corpus.
    pub relevant: Vec<usize>,
}

/// The seeded subset of queries; the corpus is the distinct documents of those rows.
pub fn examples(task: &LoadedTask, spec: &RetrievalSpec, settings: &Settings) -> Result<Examples> {
    let (limit, seed) = (settings.limit, settings.seed);
    let table = &task.table;
    table.require(&spec.query)?;
    table.require(&spec.document)?;
    let mut queries = Vec::new();
    let mut corpus: Vec<String> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut relevant = Vec::new();
    for row in subset(table.len(), limit, seed) {
        let doc = table.text(row, &spec.document)?;
        let next = corpus.len();
        let at = *index.entry(doc.clone()).or_insert(next);
        if at == next {
            corpus.push(doc);
        }
        queries.push(table.text(row, &spec.query)?);
        relevant.push(at);
    }
    if corpus.len() < 2 {
        bail!(
            "{}: retrieval needs at least two distinct documents",
            table.origin
        );
    }
    let q = queries.len();
    queries.extend(corpus);
    Ok(Examples {
        texts: queries,
        queries: q,
        relevant,
    })
}

/// Ranks the corpus for every query at every layer.
pub fn run(ex: &Examples, pool: Pool, center: bool, session: &mut Session) -> Result<Scored> {
    let pooled = session.embeddings(&ex.texts, pool)?;
    let pooled = if center {
        pooled.centered()
    } else {
        (*pooled).clone()
    };
    let (q, corpus) = (ex.queries, ex.texts.len() - ex.queries);
    let query_rows: Vec<usize> = (0..q).collect();
    let doc_rows: Vec<usize> = (q..q + corpus).collect();
    let queries = pooled.select(&query_rows);
    let docs = pooled.select(&doc_rows);
    let mut ndcg = Vec::with_capacity(pooled.layers);
    let mut extra = Vec::with_capacity(pooled.layers);
    for l in 0..pooled.layers {
        let ranked = metrics::top_k_cosine(queries.layer(l), docs.layer(l), 10);
        let per_query = |f: &dyn Fn(&[usize], &[usize]) -> f64| -> Vec<f64> {
            ranked
                .iter()
                .zip(&ex.relevant)
                .map(|(r, &rel)| f(r, &[rel]))
                .collect()
        };
        let mean = |v: Vec<f64>| v.iter().sum::<f64>() / v.len() as f64;
        ndcg.push(per_query(&|r, rel| metrics::ndcg_at_k(r, rel, 10)));
        extra.push(BTreeMap::from([
            (
                "mrr_at_10".to_string(),
                mean(per_query(&|r, rel| metrics::mrr_at_k(r, rel, 10))),
            ),
            (
                "recall_at_1".to_string(),
                mean(per_query(&|r, rel| metrics::recall_at_k(r, rel, 1))),
            ),
            (
                "recall_at_10".to_string(),
                mean(per_query(&|r, rel| metrics::recall_at_k(r, rel, 10))),
            ),
        ]));
    }
    let info = BTreeMap::from([
        ("queries".to_string(), serde_json::json!(q)),
        ("corpus_size".to_string(), serde_json::json!(corpus)),
        ("similarity".to_string(), serde_json::json!("cosine")),
    ]);
    Ok(Scored {
        metric: Metric {
            name: "ndcg_at_10",
            higher_is_better: true,
        },
        chance: Chance {
            // Every query has one relevant document in the same corpus, so the
            // per-query expectation is also the mean over queries.
            score: Some(metrics::random_ndcg_at_k(1, corpus, 10)),
            rule: format!(
                "expected nDCG@10 of a uniformly random ranking of the {} documents, one relevant per query",
                corpus
            ),
        },
        items: "queries",
        main: Box::new(MeanOfItems { values: ndcg }),
        extra,
        info,
    })
}
