//! Export: a base model with a fine-tuned adapter (or a checkpoint) merged in, written as a
//! standalone Hugging Face directory or one GGUF file — what users take to transformers or to
//! llama.cpp-family tools.
//!
//! - [`merge`]: `W + s · B · A` for every adapted module.
//! - [`cache`]: exports as shared artifacts, built once per model, format and quantization.
//! - [`archive`]: a directory as a `.tar.gz` (the `hf` download, a job's adapter archive).
//! - [`gguf_out`]: the GGUF writer (metadata, tokenizer, quantized tensors).
//!
//! Outputs are written beside their destination and renamed into place: a failed export leaves
//! nothing behind.

pub mod archive;
pub mod cache;
pub mod gguf_out;
pub mod merge;
pub mod served;

use std::path::{Path, PathBuf};

use candle_core::DType;
use candle_core::quantized::{GgmlDType, QTensor};
use safetensors::tensor::Dtype;

use crate::model_dir::tensor_files::{stored_dtype, write_streamed};

/// The files an export writes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ExportFormat {
    /// A Hugging Face model directory (`config.json`, `model.safetensors`, tokenizer files).
    Hf,
    /// One `.gguf` file.
    Gguf,
}

/// How the weights are stored.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, utoipa::ToSchema,
)]
pub enum Quant {
    /// 32-bit floats.
    #[value(name = "f32")]
    #[serde(rename = "f32")]
    F32,
    /// 16-bit floats.
    #[value(name = "f16")]
    #[serde(rename = "f16")]
    F16,
    /// bfloat16 (Hugging Face directories only).
    #[value(name = "bf16")]
    #[serde(rename = "bf16")]
    Bf16,
    /// 8-bit blocks of 32 (GGUF only).
    #[value(name = "q8_0")]
    #[serde(rename = "q8_0")]
    Q8_0,
    /// 4-bit k-quants in super-blocks of 256 (GGUF only; rows that do not split into 256 use
    /// Q5_0, as llama.cpp does).
    #[value(name = "q4_k")]
    #[serde(rename = "q4_k")]
    Q4K,
}

impl Quant {
    /// The default of each format: bf16 directories, f16 GGUF files.
    pub fn default_for(format: ExportFormat) -> Self {
        match format {
            ExportFormat::Hf => Self::Bf16,
            ExportFormat::Gguf => Self::F16,
        }
    }
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The model or adapter cannot be read, or they do not fit together.
    #[error("{0}")]
    Input(String),
    /// Something this exporter does not write (yet).
    #[error("{0}")]
    Unsupported(String),
    /// Writing the output failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The output.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    /// The base model's Hugging Face directory.
    pub base_dir: PathBuf,
    /// A PEFT adapter to merge in.
    pub adapter_dir: Option<PathBuf>,
    /// Directory or GGUF file.
    pub format: ExportFormat,
    /// Weight storage.
    pub quant: Quant,
    /// The model's name (GGUF `general.name`).
    pub name: String,
}

/// Write `req`'s model to `out` (which must not exist); returns the bytes written.
pub fn export(req: &ExportRequest, out: &Path) -> Result<u64, ExportError> {
    if out.exists() {
        return Err(ExportError::Input(format!(
            "{} already exists; choose a new path",
            out.display()
        )));
    }
    match (req.format, req.quant) {
        (ExportFormat::Hf, Quant::Q8_0 | Quant::Q4K) => {
            return Err(ExportError::Unsupported(
                "quantized weights (q8_0, q4_k) are written to GGUF only; use --format gguf or \
                 f32/f16/bf16"
                    .into(),
            ));
        }
        (ExportFormat::Gguf, Quant::Bf16) => {
            return Err(ExportError::Unsupported(
                "GGUF export writes f32, f16, q8_0 or q4_k".into(),
            ));
        }
        _ => {}
    }
    let model = merge::MergedModel::open(&req.base_dir, req.adapter_dir.as_deref())?;
    match req.format {
        ExportFormat::Hf => write_hf(&req.base_dir, &model, req.quant, out)?,
        ExportFormat::Gguf => gguf_out::write(&req.base_dir, &model, req.quant, out, &req.name)?,
    }
    Ok(size_of(out))
}

fn size_of(path: &Path) -> u64 {
    if path.is_dir() {
        std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| size_of(&e.path()))
            .sum()
    } else {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }
}

/// The files of a model directory that an exported directory carries over unchanged.
const CARRIED: [&str; 4] = [
    crate::model_dir::TOKENIZER,
    crate::model_dir::TOKENIZER_CONFIG,
    crate::model_dir::GENERATION_CONFIG,
    "chat_template.jinja",
];

/// The directory: `config.json` with its `torch_dtype`, the carried files, and
/// `model.safetensors` written one merged tensor at a time.
fn write_hf(
    base: &Path,
    model: &merge::MergedModel,
    quant: Quant,
    out: &Path,
) -> Result<(), ExportError> {
    let (dtype, kind) = match quant {
        Quant::F16 => (DType::F16, GgmlDType::F16),
        Quant::Bf16 => (DType::BF16, GgmlDType::BF16),
        _ => (DType::F32, GgmlDType::F32),
    };
    let config_path = base.join(crate::model_dir::CONFIG);
    let mut config: serde_json::Value = std::fs::read_to_string(&config_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .ok_or_else(|| ExportError::Input(format!("{} is unreadable", config_path.display())))?;
    config["torch_dtype"] = serde_json::json!(match dtype {
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        _ => "float32",
    });
    let stored = stored_dtype(dtype).unwrap_or(Dtype::F32);
    let layout: Vec<(String, Dtype, Vec<usize>)> = model
        .shapes()
        .map(|(name, dims)| (name.to_owned(), stored, dims.to_vec()))
        .collect();
    let mut failure = None;
    let mut bytes = |name: &str| -> std::io::Result<Vec<u8>> {
        let fail = |e: candle_core::Error| ExportError::Input(format!("tensor {name}: {e}"));
        let q = model
            .tensor(name)
            .and_then(|t| QTensor::quantize(&t, kind).map_err(fail))
            .and_then(|q| Ok(q.data().map_err(fail)?.into_owned()));
        q.map_err(|e| {
            let text = e.to_string();
            failure = Some(e);
            std::io::Error::other(text)
        })
    };
    let staging = staging_path(out);
    let _ = std::fs::remove_dir_all(&staging);
    let written = (|| -> std::io::Result<()> {
        std::fs::create_dir_all(&staging)?;
        std::fs::write(
            staging.join(crate::model_dir::CONFIG),
            serde_json::to_string_pretty(&config)?,
        )?;
        for file in CARRIED {
            let from = base.join(file);
            if from.exists() {
                std::fs::copy(&from, staging.join(file))?;
            }
        }
        let file = std::fs::File::create(staging.join(crate::model_dir::SINGLE_WEIGHTS))?;
        let mut w = std::io::BufWriter::new(file);
        write_streamed(&mut w, &layout, &mut bytes)?;
        std::io::Write::flush(&mut w)?;
        std::fs::rename(&staging, out)
    })();
    written.map_err(|source| {
        let _ = std::fs::remove_dir_all(&staging);
        failure.take().unwrap_or(ExportError::Write {
            path: out.display().to_string(),
            source,
        })
    })
}

fn staging_path(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export".to_owned());
    out.with_file_name(format!(".{name}.partial"))
}

/// Write the file `out` through `fill` into a staging file, then rename it into place.
pub(crate) fn write_atomically(
    out: &Path,
    fill: impl FnOnce(std::fs::File) -> std::io::Result<()>,
) -> Result<(), ExportError> {
    let staging = staging_path(out);
    let written = std::fs::File::create(&staging)
        .and_then(fill)
        .and_then(|()| std::fs::rename(&staging, out));
    written.map_err(|source| {
        let _ = std::fs::remove_file(&staging);
        ExportError::Write {
            path: out.display().to_string(),
            source,
        }
    })
}
