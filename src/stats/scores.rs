//! Per-layer scores as statistics of items (examples, queries, pairs, documents),
//! so that every task gets confidence intervals and a peak-versus-final comparison
//! the same way: by resampling its items.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A task's main score at each layer as a function of which items are counted.
pub trait ItemStatistic: Sync {
    /// Number of items (what the bootstrap resamples).
    fn items(&self) -> usize;
    /// Number of layers scored.
    fn layers(&self) -> usize;
    /// The score at `layer` over `items` (indices, with repeats when resampled).
    fn value(&self, layer: usize, items: &[usize]) -> f64;
}

/// The mean of a per-item value: accuracy from 0/1 correctness, nDCG over queries.
pub struct MeanOfItems {
    /// `[layer][item]`.
    pub values: Vec<Vec<f64>>,
}

impl ItemStatistic for MeanOfItems {
    fn items(&self) -> usize {
        self.values.first().map_or(0, Vec::len)
    }
    fn layers(&self) -> usize {
        self.values.len()
    }
    fn value(&self, layer: usize, items: &[usize]) -> f64 {
        let v = &self.values[layer];
        items.iter().map(|&i| v[i]).sum::<f64>() / items.len().max(1) as f64
    }
}

/// Spearman correlation between per-pair predictions and human scores.
pub struct SpearmanOfItems {
    /// `[layer][pair]`.
    pub predicted: Vec<Vec<f64>>,
    pub gold: Vec<f64>,
}

impl ItemStatistic for SpearmanOfItems {
    fn items(&self) -> usize {
        self.gold.len()
    }
    fn layers(&self) -> usize {
        self.predicted.len()
    }
    fn value(&self, layer: usize, items: &[usize]) -> f64 {
        let p: Vec<f64> = items.iter().map(|&i| self.predicted[layer][i]).collect();
        let g: Vec<f64> = items.iter().map(|&i| self.gold[i]).collect();
        crate::stats::metrics::spearman(&p, &g)
    }
}

/// Perplexity over documents: exp(total negative log-likelihood / total tokens).
pub struct PerplexityOfItems {
    /// `[layer][document]` summed negative log-likelihood in nats.
    pub nll: Vec<Vec<f64>>,
    /// Tokens predicted per document.
    pub tokens: Vec<f64>,
}

impl ItemStatistic for PerplexityOfItems {
    fn items(&self) -> usize {
        self.tokens.len()
    }
    fn layers(&self) -> usize {
        self.nll.len()
    }
    fn value(&self, layer: usize, items: &[usize]) -> f64 {
        let nll: f64 = items.iter().map(|&i| self.nll[layer][i]).sum();
        let tokens: f64 = items.iter().map(|&i| self.tokens[i]).sum();
        (nll / tokens.max(1.0)).exp()
    }
}

/// The name of a task's main score and which way is better.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub higher_is_better: bool,
}

/// The main score a model that knows nothing about the task would get, and how it
/// was worked out; stored in a result as `info.chance`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chance {
    /// `None` for metrics with no meaningful chance level (perplexity).
    pub score: Option<f64>,
    /// How the level was computed, or why there is none.
    pub rule: String,
}

impl Chance {
    /// Accuracy of always answering the most frequent label, the best a predictor
    /// that ignores its input can do.
    pub fn majority(counts: &[usize]) -> Self {
        let total: usize = counts.iter().sum();
        let most = counts.iter().copied().max().unwrap_or(0);
        Chance {
            score: Some(most as f64 / total.max(1) as f64),
            rule: format!("share of the most frequent label, {most} of {total}"),
        }
    }

    /// Whether a score whose 95% percentile bootstrap interval is `[low, high]` is
    /// significantly better than chance: the whole interval lies on the better side,
    /// a one-sided test at 2.5%. `None` where there is no chance level; a NaN
    /// interval is not above chance.
    pub fn beaten_by(&self, low: f64, high: f64, higher_is_better: bool) -> Option<bool> {
        let chance = self.score?;
        Some(if higher_is_better {
            low > chance
        } else {
            high < chance
        })
    }
}

/// What a task produced: its main statistic, other metrics per layer, and facts
/// about the run worth recording (class counts, corpus size, pooling...).
pub struct Scored {
    pub metric: Metric,
    /// What the main score of an uninformed model would be.
    pub chance: Chance,
    /// What the items are ("examples", "queries", "pairs", "documents").
    pub items: &'static str,
    pub main: Box<dyn ItemStatistic>,
    /// `[layer]` -> other metrics on all items.
    pub extra: Vec<BTreeMap<String, f64>>,
    pub info: BTreeMap<String, serde_json::Value>,
}

impl Scored {
    /// Accuracy as the mean of per-example correctness (`[layer][example]`, 0 or 1),
    /// against the majority label of `label_counts` as chance.
    pub fn accuracy(
        correct: Vec<Vec<f64>>,
        label_counts: &[usize],
        extra: Vec<BTreeMap<String, f64>>,
        info: BTreeMap<String, serde_json::Value>,
    ) -> Self {
        Scored {
            metric: Metric {
                name: "accuracy",
                higher_is_better: true,
            },
            chance: Chance::majority(label_counts),
            items: "examples",
            main: Box::new(MeanOfItems { values: correct }),
            extra,
            info,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_follow_the_items_given() {
        let m = MeanOfItems {
            values: vec![vec![1.0, 0.0, 1.0, 1.0]],
        };
        assert_eq!(m.value(0, &[0, 1, 2, 3]), 0.75);
        assert_eq!(m.value(0, &[1, 1]), 0.0);
        let p = PerplexityOfItems {
            nll: vec![vec![2.0, 4.0]],
            tokens: vec![1.0, 3.0],
        };
        assert!((p.value(0, &[0, 1]) - (6.0f64 / 4.0).exp()).abs() < 1e-12);
        let s = SpearmanOfItems {
            predicted: vec![vec![0.1, 0.5, 0.3]],
            gold: vec![1.0, 3.0, 2.0],
        };
        assert!((s.value(0, &[0, 1, 2]) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn chance_is_the_majority_share() {
        // BoolQ's 500 held-out questions: 301 "yes".
        let c = Chance::majority(&[199, 301]);
        assert_eq!(c.score, Some(0.602));
        assert!(c.rule.contains("301 of 500"), "{}", c.rule);
        assert_eq!(Chance::majority(&[5, 5, 10]).score, Some(0.5));
    }

    #[test]
    fn above_chance_needs_the_whole_interval_on_the_better_side() {
        let c = Chance::majority(&[40, 60]);
        assert_eq!(c.beaten_by(0.61, 0.70, true), Some(true));
        // A score above chance whose interval reaches down to it is not significant.
        assert_eq!(c.beaten_by(0.57, 0.66, true), Some(false));
        assert_eq!(c.beaten_by(0.6, 0.7, true), Some(false));
        assert_eq!(c.beaten_by(f64::NAN, f64::NAN, true), Some(false));
        // Lower is better: the upper end must be below chance.
        assert_eq!(c.beaten_by(0.4, 0.59, false), Some(true));
        assert_eq!(c.beaten_by(0.4, 0.61, false), Some(false));
        let none = Chance {
            score: None,
            rule: "none".into(),
        };
        assert_eq!(none.beaten_by(0.0, 1.0, true), None);
    }
}
