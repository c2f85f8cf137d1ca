//! `--device` and `--dtype`, parsed once by clap into these types.

use std::str::FromStr;

use candle_core::{DType, Device};
use clap::ValueEnum;

/// Where training and serving run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The first GPU in a CUDA build when one is present, else the CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// GPU number N.
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;

    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        match raw {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("unknown device '{other}': use auto, cpu or cuda[:N]")),
        }
    }
}

impl DeviceChoice {
    /// The candle device (fails when the GPU cannot be opened).
    pub fn open(self) -> anyhow::Result<Device> {
        Ok(match self {
            Self::Auto if candle_core::utils::cuda_is_available() => {
                Device::new_cuda(0).unwrap_or(Device::Cpu)
            }
            Self::Auto | Self::Cpu => Device::Cpu,
            Self::Cuda(n) => Device::new_cuda(n)?,
        })
    }
}

/// The compute dtype of the frozen weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DtypeChoice {
    /// bf16 on a GPU, f32 on the CPU.
    Auto,
    /// 32-bit floats.
    #[value(alias = "float32")]
    F32,
    /// bfloat16.
    #[value(alias = "bfloat16")]
    Bf16,
    /// IEEE half precision.
    #[value(alias = "float16")]
    F16,
}

impl FromStr for DtypeChoice {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        <Self as ValueEnum>::from_str(raw, true)
            .map_err(|_| format!("unknown dtype '{raw}': use auto, f32, bf16 or f16"))
    }
}

impl DtypeChoice {
    /// The dtype on `device`.
    pub fn on(self, device: &Device) -> DType {
        match self {
            Self::Auto if device.is_cpu() => DType::F32,
            Self::Auto | Self::Bf16 => DType::BF16,
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
        }
    }
}

/// Parse a device named in a config file (`auto`, `cpu`, `cuda[:N]`) and open it.
pub fn parse_device(raw: &str) -> anyhow::Result<Device> {
    raw.parse::<DeviceChoice>()
        .map_err(anyhow::Error::msg)?
        .open()
}

/// The serving engine's dtype for a training dtype (always explicit: mistral.rs's `auto` would
/// probe the GPU).
pub fn serving_dtype(dtype: DType) -> mistralrs::ModelDType {
    match dtype {
        DType::BF16 => mistralrs::ModelDType::BF16,
        DType::F16 => mistralrs::ModelDType::F16,
        _ => mistralrs::ModelDType::F32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_and_dtypes_parse_with_their_aliases() {
        assert_eq!("cuda:1".parse(), Ok(DeviceChoice::Cuda(1)));
        assert_eq!("cuda".parse(), Ok(DeviceChoice::Cuda(0)));
        assert!("gpu".parse::<DeviceChoice>().is_err());
        assert_eq!("bfloat16".parse(), Ok(DtypeChoice::Bf16));
        assert_eq!(DtypeChoice::Auto.on(&Device::Cpu), DType::F32);
        assert!("f64".parse::<DtypeChoice>().is_err());
    }
}

/// In-situ quantization of served models (mistral.rs ISQ): each resident model — the base and
/// every fine-tune, which mistral.rs holds as a full merged copy — is quantized after loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ServeQuant {
    /// Serve the weights as loaded.
    None,
    /// 8-bit blocks of 32 (llama.cpp's q8_0).
    #[value(name = "q8_0")]
    Q8_0,
    /// 4-bit k-quants (llama.cpp's q4_k).
    #[value(name = "q4k", alias = "q4_k")]
    Q4K,
}

impl ServeQuant {
    /// The engine's quantization type, if any.
    pub fn isq(self) -> Option<mistralrs::IsqType> {
        match self {
            Self::None => None,
            Self::Q8_0 => Some(mistralrs::IsqType::Q8_0),
            Self::Q4K => Some(mistralrs::IsqType::Q4K),
        }
    }
}

/// The serving engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EngineChoice {
    /// llama.cpp on the CPU, mistral.rs on a GPU.
    Auto,
    /// llama.cpp: the base as GGUF, fine-tunes as adapters attached per request.
    Llamacpp,
    /// mistral.rs: fine-tunes merged into copies of the base at load.
    Mistralrs,
}

impl EngineChoice {
    /// Whether llama.cpp serves on `device`.
    pub fn is_llama(self, device: &Device) -> bool {
        match self {
            Self::Auto => device.is_cpu(),
            Self::Llamacpp => true,
            Self::Mistralrs => false,
        }
    }
}

/// Paged attention when serving (mistral.rs's block-table KV cache, which runs on CUDA and Metal
/// only): `auto` turns it on where it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PagedAttention {
    /// On when serving on a GPU, off on the CPU.
    Auto,
    /// On; refuse to start where it cannot run.
    On,
    /// Off: each sequence keeps a contiguous KV cache.
    Off,
}

impl PagedAttention {
    /// The KV-cache tokens to reserve per resident model when paged attention runs on `device`
    /// (`None`: off). `on` where it cannot run, or a cache of 0 tokens, is an error.
    pub fn resolve(self, device: &Device, kv_cache_tokens: usize) -> anyhow::Result<Option<usize>> {
        let runs = device.is_cuda() && mistralrs::paged_attn_supported();
        let wanted = match self {
            Self::Off => false,
            Self::Auto => runs,
            Self::On if runs => true,
            Self::On => anyhow::bail!(
                "--paged-attention on needs a CUDA device and a CUDA build (mistral.rs runs paged \
                 attention on CUDA and Metal only); serving here runs on {device:?}"
            ),
        };
        if wanted && kv_cache_tokens == 0 {
            anyhow::bail!("--kv-cache-tokens must be at least 1 with paged attention");
        }
        Ok(wanted.then_some(kv_cache_tokens))
    }
}

#[cfg(test)]
mod paged_tests {
    use super::*;

    #[test]
    fn paged_attention_is_off_on_the_cpu_unless_forced_which_is_an_error() {
        let cpu = Device::Cpu;
        assert_eq!(PagedAttention::Auto.resolve(&cpu, 1024).unwrap(), None);
        assert_eq!(PagedAttention::Off.resolve(&cpu, 1024).unwrap(), None);
        let err = PagedAttention::On
            .resolve(&cpu, 1024)
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs a CUDA device"), "{err}");
    }
}
