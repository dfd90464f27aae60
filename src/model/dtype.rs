//! The number type a model's weights are held in and its activations rounded to
//! (`--dtype`), and the device it runs on (`--device`).

use std::fmt;
use std::mem::MaybeUninit;
use std::str::FromStr;

use anyhow::{anyhow, bail, Result};
use candle_core::{DType, Device, DeviceLocation, Tensor};
use serde::{Deserialize, Serialize};

use super::kernels::gemm::round_bf16;
use super::kernels::{par_filled, with_slice, written};

/// Values per parallel task when rounding a buffer: 16 KiB, so a chunk copied is
/// still in L1 when it is rounded.
const ROUND_CHUNK: usize = 1 << 12;

/// The precision of a run. The CPU kernels always compute in f32; in bf16 and f16
/// the big matrices are stored in that type and activations are rounded to it
/// wherever the reference implementation holds them in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    #[default]
    F32,
    Bf16,
    F16,
}

impl Dtype {
    /// The candle type weights are held in.
    pub fn candle(self) -> DType {
        match self {
            Dtype::F32 => DType::F32,
            Dtype::Bf16 => DType::BF16,
            Dtype::F16 => DType::F16,
        }
    }

    /// The run's type from the type the loader served weights in.
    pub fn from_candle(d: DType) -> Result<Self> {
        Ok(match d {
            DType::F32 => Dtype::F32,
            DType::BF16 => Dtype::Bf16,
            DType::F16 => Dtype::F16,
            other => bail!("weights held as {other:?}: expected f32, bf16 or f16"),
        })
    }

    /// `t` (f32) rounded to this type and held as f32 again: the value a reference
    /// run in this type would hold at this point. A no-op in f32.
    pub fn round(self, t: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Dtype::F32 => t.clone(),
            // On the CPU, one parallel pass into one new buffer: candle's two
            // conversions allocate twice and run on one thread, which was a quarter of
            // a bf16 run's time (perf, SmolLM2 embed, docs/benchmarks.md).
            d if t.device().is_cpu() && t.dtype() == DType::F32 => {
                let v = with_slice(t, |x: &[f32]| d.rounded(x))?;
                Tensor::from_vec(v, t.shape(), &Device::Cpu)?
            }
            d => t.to_dtype(d.candle())?.to_dtype(DType::F32)?,
        })
    }

    /// `values` rounded to this type, into a new buffer, in parallel chunks that are
    /// copied and rounded while in cache.
    pub fn rounded(self, values: &[f32]) -> Vec<f32> {
        self.rounded_with(values.len(), |start, dst| {
            for (d, s) in dst.iter_mut().zip(&values[start..]) {
                d.write(*s);
            }
        })
    }

    /// `a + b` (f32 tensors of one shape) rounded to this type, as the reference
    /// holds a residual sum. On the CPU one parallel pass into one new buffer, where
    /// candle's sum and then a rounding pass took two buffers and three passes.
    pub fn add(self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
        if !(cpu_f32(a) && cpu_f32(b) && a.shape() == b.shape()) {
            return self.round(&(a + b)?);
        }
        let sum = with_slice(a, |a: &[f32]| {
            with_slice(b, |b: &[f32]| {
                self.rounded_with(a.len(), |start, dst| {
                    for ((d, x), y) in dst.iter_mut().zip(&a[start..]).zip(&b[start..]) {
                        d.write(x + y);
                    }
                })
            })
        })??;
        Ok(Tensor::from_vec(sum, a.shape(), &Device::Cpu)?)
    }

    /// A new buffer of `len` values: `fill(start, chunk)` writes every value of each
    /// chunk of [`ROUND_CHUNK`], which is then rounded while still in cache.
    fn rounded_with(
        self,
        len: usize,
        fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync,
    ) -> Vec<f32> {
        par_filled(len, ROUND_CHUNK, |start, dst| {
            fill(start, dst);
            // SAFETY: `fill` wrote every value of `dst`.
            self.round_row(unsafe { written(dst) });
        })
    }

    /// Rounds f32 values to this type in place, on this thread: nearest, ties to
    /// even, exactly as candle's (`half`'s) conversions.
    pub fn round_row(self, values: &mut [f32]) {
        match self {
            Dtype::F32 => {}
            Dtype::Bf16 => round_bf16(values),
            Dtype::F16 => values
                .iter_mut()
                .for_each(|x| *x = half::f16::from_f32(*x).to_f32()),
        }
    }

    /// A scalar rounded to this type, as the reference rounds constants it multiplies by.
    pub fn round_scalar(self, x: f64) -> Result<f64> {
        let t = Tensor::new(&[x as f32], &Device::Cpu)?;
        Ok(self.round(&t)?.to_vec1::<f32>()?[0] as f64)
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
            Dtype::F16 => "f16",
        })
    }
}

impl FromStr for Dtype {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "f32" => Dtype::F32,
            "bf16" => Dtype::Bf16,
            "f16" => Dtype::F16,
            other => bail!("unknown dtype '{other}': expected f32, bf16 or f16"),
        })
    }
}

/// The type and device a loader serves weights in.
#[derive(Debug, Clone)]
pub struct Placement {
    pub dtype: Dtype,
    pub device: Device,
}

impl Default for Placement {
    fn default() -> Self {
        Self {
            dtype: Dtype::F32,
            device: Device::Cpu,
        }
    }
}

impl Placement {
    /// A builder serving `backend`'s tensors in this type on this device.
    pub fn var_builder<'a>(
        &self,
        backend: Box<dyn candle_nn::var_builder::SimpleBackend + 'a>,
    ) -> candle_nn::VarBuilder<'a> {
        candle_nn::VarBuilder::from_backend(backend, self.dtype.candle(), self.device.clone())
    }
}

/// How a command runs its model: the type its weights are held in and the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Engine {
    pub dtype: Dtype,
    pub device: DeviceSpec,
}

/// Where a model runs. A CUDA device needs a build with the `cuda` feature; without
/// it the name still parses, so that the error can say what is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    /// A CUDA GPU by ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl DeviceSpec {
    /// Fails, in one line, unless this build can run a model on the device.
    pub fn check_supported(self) -> Result<()> {
        match self {
            DeviceSpec::Cuda(_) if !cfg!(feature = "cuda") => {
                bail!("--device cuda needs a build with the `cuda` feature (scripts/build_cuda.sh)")
            }
            _ => Ok(()),
        }
    }

    /// The candle device, opened: a missing GPU or driver is a one-line error here,
    /// before any weight is read.
    pub fn open(self) -> Result<Device> {
        self.check_supported()?;
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(n) => Device::new_cuda(n).map_err(|e| {
                let first = e.to_string();
                let first = first.lines().next().unwrap_or_default().to_string();
                anyhow!("--device {self}: cannot open the GPU ({first})")
            }),
        }
    }

    /// The device a tensor lives on, as `--device` names it.
    pub fn of(device: &Device) -> Self {
        match device.location() {
            DeviceLocation::Cuda { gpu_id } => DeviceSpec::Cuda(gpu_id),
            _ => DeviceSpec::Cpu,
        }
    }

    /// The type a run holds its weights in when `--dtype` is not given: f32 on the
    /// CPU, where it is exact and the kernels compute in f32 anyway; bf16 on a GPU,
    /// where the models are run in it and its tensor cores are several times faster.
    pub fn default_dtype(self) -> Dtype {
        match self {
            DeviceSpec::Cpu => Dtype::F32,
            DeviceSpec::Cuda(_) => Dtype::Bf16,
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let ordinal = |n: &str| {
            n.parse::<usize>()
                .map_err(|_| anyhow::anyhow!("bad CUDA device number in '{s}'"))
        };
        Ok(match s {
            "cpu" => DeviceSpec::Cpu,
            "cuda" => DeviceSpec::Cuda(0),
            _ => match s.strip_prefix("cuda:") {
                Some(n) => DeviceSpec::Cuda(ordinal(n)?),
                None => bail!("unknown device '{s}': expected cpu, cuda or cuda:N"),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_rounding_is_exact_in_f32() {
        for d in [Dtype::F32, Dtype::Bf16, Dtype::F16] {
            assert_eq!(d.to_string().parse::<Dtype>().unwrap(), d);
        }
        assert!("f64".parse::<Dtype>().is_err());
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!(
            "cuda:1".parse::<DeviceSpec>().unwrap().to_string(),
            "cuda:1"
        );
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert!(DeviceSpec::Cpu.check_supported().is_ok());
        let x = 1.0 + 1.0 / 1024.0;
        assert_eq!(Dtype::F32.round_scalar(x).unwrap(), x);
        assert_eq!(Dtype::Bf16.round_scalar(x).unwrap(), 1.0);
        assert_eq!(Dtype::F16.round_scalar(x).unwrap(), x);
    }

    /// The one-pass sum equals candle's sum rounded through candle's conversions,
    /// over several chunks and a short last one.
    #[test]
    fn add_is_the_rounded_sum() {
        let (rows, cols) = (3, 5001);
        let a: Vec<f32> = (0..rows * cols)
            .map(|i| (i as f32 * 0.37).sin() * 300.0)
            .collect();
        let b: Vec<f32> = (0..rows * cols)
            .map(|i| (i as f32 * 0.11).cos() / 7.0)
            .collect();
        let a = Tensor::from_vec(a, (rows, cols), &Device::Cpu).unwrap();
        let b = Tensor::from_vec(b, (rows, cols), &Device::Cpu).unwrap();
        for d in [Dtype::F32, Dtype::Bf16, Dtype::F16] {
            let want = (&a + &b)
                .unwrap()
                .to_dtype(d.candle())
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let got = d.add(&a, &b).unwrap();
            assert_eq!(got.dims(), &[rows, cols]);
            assert_eq!(got.to_vec2::<f32>().unwrap(), want, "{d}");
        }
    }
}
