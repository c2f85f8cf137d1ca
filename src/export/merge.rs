//! Folding a PEFT LoRA adapter into its base weights: `W' = W + s · B · A` for every adapted
//! module, with `s = lora_alpha / r` (or `lora_alpha / √r` for rsLoRA), computed in f32.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use super::ExportError;

/// The base model's weights (f32, by Hugging Face name) with `adapter` merged in when given.
pub fn merged_weights(
    base: &Path,
    adapter: Option<&Path>,
) -> Result<HashMap<String, Tensor>, ExportError> {
    // An adapter trained on a quantized base (QLoRA) merges into the weights it saw.
    let stored = match adapter {
        Some(dir) => crate::train::quant::record::read(dir).map_err(ExportError::Input)?,
        None => None,
    };
    let mut weights = HashMap::new();
    for file in
        crate::model_dir::weight_files(base).map_err(|e| ExportError::Input(e.to_string()))?
    {
        let tensors = candle_core::safetensors::load(&file, &Device::Cpu)
            .map_err(|e| ExportError::Input(format!("{}: {e}", file.display())))?;
        for (name, t) in tensors {
            let t = match stored {
                Some(how) => crate::train::quant::round_trip(&name, &t, how),
                None => t.to_dtype(DType::F32),
            }
            .map_err(tensor_err(&name))?;
            weights.insert(name, t);
        }
    }
    if let Some(dir) = adapter {
        merge(&mut weights, dir)?;
    }
    Ok(weights)
}

fn tensor_err(name: &str) -> impl Fn(candle_core::Error) -> ExportError + '_ {
    move |e| ExportError::Input(format!("tensor {name}: {e}"))
}

/// The scale of an adapter's update, from its `adapter_config.json`.
fn scale(dir: &Path) -> Result<f64, ExportError> {
    let path = dir.join("adapter_config.json");
    let bad = |why: String| ExportError::Input(format!("{}: {why}", path.display()));
    let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
    let config: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if config
        .get("peft_type")
        .and_then(Value::as_str)
        .is_some_and(|t| t != "LORA")
    {
        return Err(bad(
            "only LoRA adapters (peft_type LORA) can be merged".into()
        ));
    }
    if config.get("use_dora").and_then(Value::as_bool) == Some(true) {
        return Err(bad("DoRA adapters cannot be merged".into()));
    }
    let r = config
        .get("r")
        .and_then(Value::as_f64)
        .filter(|r| *r >= 1.0)
        .ok_or_else(|| bad("needs a rank r >= 1".into()))?;
    let alpha = config
        .get("lora_alpha")
        .and_then(Value::as_f64)
        .unwrap_or(r);
    let rslora = config.get("use_rslora").and_then(Value::as_bool) == Some(true);
    Ok(if rslora { alpha / r.sqrt() } else { alpha / r })
}

fn merge(weights: &mut HashMap<String, Tensor>, dir: &Path) -> Result<(), ExportError> {
    let s = scale(dir)?;
    let file = dir.join("adapter_model.safetensors");
    let tensors = candle_core::safetensors::load(&file, &Device::Cpu)
        .map_err(|e| ExportError::Input(format!("{}: {e}", file.display())))?;
    let mut merged = 0;
    for (name, a) in &tensors {
        let Some(module) = name.strip_suffix(".lora_A.weight") else {
            continue;
        };
        let b_name = format!("{module}.lora_B.weight");
        let b = tensors
            .get(&b_name)
            .ok_or_else(|| ExportError::Input(format!("the adapter has {name} but no {b_name}")))?;
        let base_name = format!(
            "{}.weight",
            module.strip_prefix("base_model.model.").unwrap_or(module)
        );
        let w = weights.get(&base_name).ok_or_else(|| {
            ExportError::Input(format!(
                "the adapter adapts {base_name}, which the base model does not have"
            ))
        })?;
        let delta = b
            .to_dtype(DType::F32)
            .and_then(|b| b.matmul(&a.to_dtype(DType::F32)?))
            .and_then(|d| d * s)
            .map_err(tensor_err(name))?;
        if delta.dims() != w.dims() {
            return Err(ExportError::Input(format!(
                "the adapter's update of {base_name} has shape {:?}, the weight {:?}: it was \
                 trained for another base model",
                delta.dims(),
                w.dims()
            )));
        }
        let sum = (w + delta).map_err(tensor_err(name))?;
        weights.insert(base_name, sum);
        merged += 1;
    }
    if merged == 0 {
        return Err(ExportError::Input(format!(
            "{} holds no LoRA weights",
            file.display()
        )));
    }
    Ok(())
}
