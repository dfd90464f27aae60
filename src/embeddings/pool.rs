//! Pooling: how every layer's token vectors become one vector per text, and the
//! capture that keeps those vectors.

use std::fmt;
use std::str::FromStr;

use anyhow::Result;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::model::capture::{Batch, Capture};
use crate::model::kernels::with_f32;

/// How token vectors become one vector per text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pool {
    /// Mean over all real tokens.
    Mean,
    /// Mean over real tokens after the first. The first token carries the massive
    /// activation in middle layers and would otherwise dominate every mean; a
    /// one-token text keeps its only token.
    MeanSkipFirst,
    First,
    Last,
}

impl Pool {
    pub const ALL: [Pool; 4] = [Pool::Mean, Pool::MeanSkipFirst, Pool::First, Pool::Last];

    pub fn name(self) -> &'static str {
        match self {
            Pool::Mean => "mean",
            Pool::MeanSkipFirst => "mean-skip-first",
            Pool::First => "first",
            Pool::Last => "last",
        }
    }

    /// The token rows `[from, to)` this pooling averages for a text of `len` tokens.
    fn span(self, len: usize) -> (usize, usize) {
        match self {
            Pool::Mean => (0, len),
            Pool::MeanSkipFirst if len > 1 => (1, len),
            Pool::MeanSkipFirst | Pool::First => (0, 1),
            Pool::Last => (len - 1, len),
        }
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Pool {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Pool::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown pooling '{s}' (expected mean, mean-skip-first, first or last)"
                )
            })
    }
}

/// Pooled vectors for every text at every layer, built batch by batch so no layer's
/// token matrix outlives its batch, and written straight into the buffers the caller
/// keeps: the vectors are the largest thing a run holds, so they exist once.
pub struct PooledCapture {
    layers: usize,
    hidden: usize,
    outputs: Vec<(Pool, Pooled)>,
    /// For each input text, the `(output, row)` slots its vectors fill.
    targets: Vec<Vec<(usize, usize)>>,
}

impl PooledCapture {
    /// Pools layers `0..=depth` of `n` texts, once per pooling in `pools`.
    pub fn new(pools: &[Pool], n: usize, depth: usize, hidden: usize) -> Self {
        let requests = pools.iter().map(|&p| (p, (0..n).collect())).collect();
        Self::gather(requests, n, depth, hidden)
    }

    /// Pools layers `0..=depth` of `inputs` texts into one `[rows, layers, hidden]` set
    /// per request `(pool, rows)`: its row `r` is input `rows[r]` pooled by `pool`. A
    /// text several requests share runs once, and no request's vectors are copied out
    /// of a larger set afterwards.
    ///
    /// # Panics
    /// If a row names an input at or beyond `inputs`.
    pub fn gather(
        requests: Vec<(Pool, Vec<usize>)>,
        inputs: usize,
        depth: usize,
        hidden: usize,
    ) -> Self {
        let layers = depth + 1;
        let mut targets = vec![Vec::new(); inputs];
        for (o, (_, rows)) in requests.iter().enumerate() {
            for (r, &i) in rows.iter().enumerate() {
                assert!(i < inputs, "row {r} names input {i} of {inputs}");
                targets[i].push((o, r));
            }
        }
        let outputs = requests
            .into_iter()
            .map(|(pool, rows)| {
                let n = rows.len();
                let data = vec![0f32; n * layers * hidden];
                (
                    pool,
                    Pooled {
                        data,
                        n,
                        layers,
                        hidden,
                    },
                )
            })
            .collect();
        Self {
            layers,
            hidden,
            outputs,
            targets,
        }
    }

    /// The pooled vectors, one [`Pooled`] per request (or pooling), in the order asked
    /// for.
    pub fn into_pooled(self) -> Vec<(Pool, Pooled)> {
        self.outputs
    }
}

/// One vector per text per layer, row-major `[n, layers, hidden]`.
#[derive(Debug, Clone)]
pub struct Pooled {
    pub data: Vec<f32>,
    pub n: usize,
    pub layers: usize,
    pub hidden: usize,
}

impl Pooled {
    /// Layer `l` as an `[n, hidden]` view (strided; no copy).
    pub fn layer(&self, l: usize) -> ndarray::ArrayView2<'_, f32> {
        use ndarray::ShapeBuilder;
        let stride = self.layers * self.hidden;
        ndarray::ArrayView2::from_shape(
            (self.n, self.hidden).strides((stride, 1)),
            &self.data[l * self.hidden..],
        )
        .expect("layer view within bounds")
    }

    /// The rows `rows` (in that order), every layer.
    pub fn select(&self, rows: &[usize]) -> Pooled {
        let width = self.layers * self.hidden;
        let mut data = Vec::with_capacity(rows.len() * width);
        for &r in rows {
            data.extend_from_slice(&self.data[r * width..(r + 1) * width]);
        }
        Pooled {
            data,
            n: rows.len(),
            layers: self.layers,
            hidden: self.hidden,
        }
    }

    /// Subtracts each layer's mean over the texts: cosine similarity then compares
    /// how texts differ rather than the direction they all share, which in some
    /// models' middle layers is nearly everything.
    pub fn centered(&self) -> Pooled {
        let width = self.layers * self.hidden;
        let mut mean = vec![0f64; width];
        for row in self.data.chunks(width) {
            mean.iter_mut().zip(row).for_each(|(m, &x)| *m += x as f64);
        }
        let n = self.n.max(1) as f64;
        let mean: Vec<f32> = mean.iter().map(|m| (m / n) as f32).collect();
        let mut data = self.data.clone();
        for row in data.chunks_mut(width) {
            row.iter_mut().zip(&mean).for_each(|(x, m)| *x -= m);
        }
        Pooled { data, ..*self }
    }
}

impl Capture for PooledCapture {
    fn depth(&self) -> usize {
        self.layers - 1
    }

    fn on_resid(&mut self, layer: usize, resid: &Tensor, batch: &Batch) -> Result<()> {
        let (d, t, layers) = (self.hidden, batch.len, self.layers);
        let mut acc = vec![0f64; d];
        with_f32(resid, |h| {
            for (row, (&len, &index)) in batch.lens.iter().zip(&batch.index).enumerate() {
                for &(o, r) in &self.targets[index] {
                    let (pool, out) = &mut self.outputs[o];
                    let (from, to) = pool.span(len);
                    acc.fill(0.0);
                    for tok in from..to {
                        let src = &h[(row * t + tok) * d..][..d];
                        acc.iter_mut().zip(src).for_each(|(a, &x)| *a += x as f64);
                    }
                    let n = (to - from) as f64;
                    let dst = &mut out.data[(r * layers + layer) * d..][..d];
                    dst.iter_mut()
                        .zip(&acc)
                        .for_each(|(o, &a)| *o = (a / n) as f32);
                }
            }
        })
    }
}
