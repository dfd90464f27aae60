//! Pooling: how every layer's token vectors become one vector per text, and the
//! capture that keeps those vectors. On a GPU the pooling happens there, so that per
//! batch only the pooled `[texts, layers, pools, hidden]` floats cross to the host.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
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
    /// The distinct poolings of `outputs`, and each output's place among them.
    pools: Vec<Pool>,
    pool_of: Vec<usize>,
    /// The current batch's layers pooled on its device, `[b, pools, hidden]` each,
    /// copied to the host together after its last layer.
    pending: Vec<Tensor>,
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
        let outputs: Vec<(Pool, Pooled)> = requests
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
        let mut pools: Vec<Pool> = Vec::new();
        let pool_of = outputs
            .iter()
            .map(|(pool, _)| match pools.iter().position(|p| p == pool) {
                Some(at) => at,
                None => {
                    pools.push(*pool);
                    pools.len() - 1
                }
            })
            .collect();
        Self {
            layers,
            hidden,
            outputs,
            targets,
            pools,
            pool_of,
            pending: Vec::new(),
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
        if resid.device().is_cpu() {
            self.pool_on_host(layer, resid, batch)
        } else {
            self.pool_on_device(layer, resid, batch)
        }
    }
}

impl PooledCapture {
    /// Pools one layer from the token vectors in host memory, summing in f64.
    fn pool_on_host(&mut self, layer: usize, resid: &Tensor, batch: &Batch) -> Result<()> {
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

    /// Pools one layer where `resid` lives, as one batched product of per-row pooling
    /// weights `[b, pools, t]` with the token vectors `[b, t, hidden]`; after the last
    /// layer the batch's pooled vectors come to the host in one copy, so the device
    /// is not made to wait once per layer.
    fn pool_on_device(&mut self, layer: usize, resid: &Tensor, batch: &Batch) -> Result<()> {
        if layer != self.pending.len() {
            bail!(
                "layer {layer} arrived after {} pooled layers",
                self.pending.len()
            );
        }
        let (b, t) = (batch.size(), batch.len);
        let mut weights = vec![0f32; b * self.pools.len() * t];
        for (row, &len) in batch.lens.iter().enumerate() {
            for (p, pool) in self.pools.iter().enumerate() {
                let (from, to) = pool.span(len);
                let w = &mut weights[(row * self.pools.len() + p) * t..][..t];
                w[from..to].fill(1.0 / (to - from) as f32);
            }
        }
        let weights = Tensor::from_vec(weights, (b, self.pools.len(), t), resid.device())?;
        self.pending.push(weights.matmul(&resid.contiguous()?)?);
        if layer + 1 < self.layers {
            return Ok(());
        }
        // [b, layers, pools, hidden] on the host.
        let pooled = Tensor::stack(&std::mem::take(&mut self.pending), 1)?;
        let pooled = pooled
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let (d, layers, pools) = (self.hidden, self.layers, self.pools.len());
        for (row, &index) in batch.index.iter().enumerate() {
            for &(o, r) in &self.targets[index] {
                let p = self.pool_of[o];
                let out = &mut self.outputs[o].1;
                for l in 0..layers {
                    let src = &pooled[((row * layers + l) * pools + p) * d..][..d];
                    out.data[(r * layers + l) * d..][..d].copy_from_slice(src);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pooling a GPU's tensors take (one batched product, copied once after the
    /// last layer) gives the host's vectors; run here on CPU tensors.
    #[test]
    fn pooling_on_the_device_matches_the_host() {
        let (layers, hidden) = (3, 4);
        let seqs = vec![(2, vec![5, 6, 7]), (0, vec![8]), (1, vec![9, 10])];
        let batch = Batch::new(seqs, 0).unwrap();
        let requests = vec![
            (Pool::Mean, vec![0, 1, 2]),
            (Pool::Last, vec![2, 0]),
            (Pool::MeanSkipFirst, vec![1, 2]),
            (Pool::Mean, vec![2]),
        ];
        let mut host = PooledCapture::gather(requests.clone(), 3, layers - 1, hidden);
        let mut device = PooledCapture::gather(requests, 3, layers - 1, hidden);
        for layer in 0..layers {
            let values: Vec<f32> = (0..3 * 3 * hidden)
                .map(|i| {
                    ((i * 7 + layer * 13) % 23) as f32 - 11.0 + 1e4 * (i % hidden == 1) as u8 as f32
                })
                .collect();
            let resid = Tensor::from_vec(values, (3, 3, hidden), &Device::Cpu).unwrap();
            host.on_resid(layer, &resid, &batch).unwrap();
            device.pool_on_device(layer, &resid, &batch).unwrap();
        }
        for ((p, h), (q, d)) in host.into_pooled().iter().zip(device.into_pooled().iter()) {
            assert_eq!(p, q);
            for (a, b) in h.data.iter().zip(&d.data) {
                assert!((a - b).abs() <= 1e-6 * a.abs().max(1.0), "{p}: {a} vs {b}");
            }
            assert!(h.data.iter().any(|&x| x != 0.0));
        }
    }
}
