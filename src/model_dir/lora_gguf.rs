//! A PEFT LoRA adapter as llama.cpp's LoRA GGUF, what its engine attaches to the base per
//! request: `general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha`, and
//! `blk.N.<tensor>.weight.lora_a` / `.lora_b` named after the base's GGUF tensors. llama.cpp
//! stores the q/k projections' rows permuted for its RoPE layout, so `lora_b` of q and k is
//! permuted the same way. llama.cpp scales by `alpha / rank`: an rsLoRA adapter's alpha is
//! written as `scale · rank` so the update is the same.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use super::adapter::{AdapterConfig, WEIGHTS_FILE};
use super::gguf::{gguf_name, permute};
use super::{Config, ModelDirError, io_err};

/// Why an adapter cannot be written for llama.cpp (its text is the reason, for a 400).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LoraGgufError(String);

fn bad(reason: impl Into<String>) -> LoraGgufError {
    LoraGgufError(reason.into())
}

/// Write the adapter in `adapter_dir` (trained on the base in `base_dir`) as a LoRA GGUF at
/// `out`, written beside it and renamed into place. Returns the number of adapted weights.
pub fn write(adapter_dir: &Path, base_dir: &Path, out: &Path) -> Result<usize, LoraGgufError> {
    let config = Config::load(base_dir).map_err(|e| bad(e.to_string()))?;
    let arch = config.arch().map_err(|e| bad(e.to_string()))?.gguf_name();
    let adapter = AdapterConfig::read(adapter_dir)
        .map_err(|e| bad(format!("{}: {e}", adapter_dir.display())))?;
    let file = adapter_dir.join(WEIGHTS_FILE);
    let tensors = candle_core::safetensors::load(&file, &Device::Cpu)
        .map_err(|e| bad(format!("{} cannot be read: {e}", file.display())))?;
    let pairs = lora_pairs(&tensors, &config, arch)?;
    if pairs.is_empty() {
        return Err(bad(format!("{} holds no LoRA weights", file.display())));
    }
    let alpha = adapter.scale() * adapter.rank as f64;
    let meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        ("general.type".into(), Value::String("adapter".into())),
        ("adapter.type".into(), Value::String("lora".into())),
        ("adapter.lora.alpha".into(), Value::F32(alpha as f32)),
    ];
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = pairs.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let partial = out.with_extension("gguf.partial");
    let written = (|| -> Result<(), ModelDirError> {
        let mut f = std::fs::File::create(&partial).map_err(io_err(&partial))?;
        candle_core::quantized::gguf_file::write(&mut f, &meta_refs, &tensor_refs).map_err(
            |source| ModelDirError::Tensor {
                context: "writing the LoRA GGUF",
                source,
            },
        )?;
        f.sync_all().map_err(io_err(&partial))?;
        std::fs::rename(&partial, out).map_err(io_err(out))
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&partial);
        return Err(bad(format!("writing {}: {e}", out.display())));
    }
    Ok(pairs.len() / 2)
}

/// Every `lora_A`/`lora_B` pair of `tensors` under llama.cpp's names, in f32, checked against
/// the base's shapes, `B` of q and k permuted as the base's rows are.
fn lora_pairs(
    tensors: &HashMap<String, Tensor>,
    config: &Config,
    arch: &str,
) -> Result<Vec<(String, QTensor)>, LoraGgufError> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let Some(module) = name.strip_suffix(".lora_A.weight") else {
            continue;
        };
        let b_name = format!("{module}.lora_B.weight");
        let (a, b) = (&tensors[name], tensors.get(&b_name));
        let b = b.ok_or_else(|| bad(format!("the adapter has {name} but no {b_name}")))?;
        let hf = format!(
            "{}.weight",
            module.strip_prefix("base_model.model.").unwrap_or(module)
        );
        let gguf = gguf_name(&hf)
            .filter(|g| g.starts_with("blk."))
            .ok_or_else(|| bad(format!("this engine cannot adapt {hf}")))?;
        let f32 = |t: &Tensor, n: &str| {
            t.to_dtype(DType::F32)
                .map_err(|e| bad(format!("tensor {n}: {e}")))
        };
        let (a, mut b) = (f32(a, name)?, f32(b, &b_name)?);
        let (Ok((rank, cols)), Ok((rows, rank_b))) = (a.dims2(), b.dims2()) else {
            return Err(bad(format!("{name} and {b_name} must be matrices")));
        };
        let expected = expected_shape(config, &hf);
        if rank != rank_b || expected.is_some_and(|e| e != (rows, cols)) {
            return Err(bad(format!(
                "the adapter's update of {hf} has shape [{rows}, {cols}], which does not fit the \
                 base model: it was trained for another base"
            )));
        }
        let heads = match gguf.as_str() {
            g if arch == "llama" && g.ends_with("attn_q.weight") => {
                Some(config.num_attention_heads)
            }
            g if arch == "llama" && g.ends_with("attn_k.weight") => Some(config.kv_heads()),
            _ => None,
        };
        if let Some(h) = heads {
            b = permute(&b, h).map_err(|e| bad(format!("permuting {b_name}: {e}")))?;
        }
        let q = |t: &Tensor, n: &str| {
            QTensor::quantize(t, GgmlDType::F32).map_err(|e| bad(format!("tensor {n}: {e}")))
        };
        out.push((format!("{gguf}.lora_a"), q(&a, name)?));
        out.push((format!("{gguf}.lora_b"), q(&b, &b_name)?));
    }
    Ok(out)
}

/// The `[out, in]` shape of the base's projection `hf` (`None` for a weight it has no rule for).
fn expected_shape(c: &Config, hf: &str) -> Option<(usize, usize)> {
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let (q, kv) = (
        c.num_attention_heads * c.head_dim(),
        c.kv_heads() * c.head_dim(),
    );
    let module = hf.strip_suffix(".weight")?.rsplit('.').next()?;
    Some(match module {
        "q_proj" => (q, h),
        "k_proj" | "v_proj" => (kv, h),
        "o_proj" => (h, q),
        "gate_proj" | "up_proj" => (i, h),
        "down_proj" => (h, i),
        _ => return None,
    })
}
