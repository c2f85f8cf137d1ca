//! Building mistral.rs pipelines from local directories: the base model, and the base with a
//! PEFT adapter merged in. mistral.rs 0.8.1 keeps applied LoRAs in a thread-local list that it
//! never clears, so every adapter load clears it before and after, on the loading thread.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mistralrs::Device;
use mistralrs::core::{
    AdapterPaths, DeviceMapSetting, Loader, LocalModelPaths, LoraAdapterPaths, ModelDType,
    ModelPaths, NormalLoaderBuilder, NormalSpecificConfig, Pipeline,
};

use mistralrs_quant::LoraConfig;

use crate::model_dir::adapter::{AdapterConfig, AdapterConfigError, WEIGHTS_FILE};
use crate::model_dir::{self, ModelDirError};
use crate::serve::ServeError;

/// A loaded pipeline, ready for `add_model`.
pub type LoadedPipeline = Arc<tokio::sync::Mutex<dyn Pipeline + Send + Sync>>;

/// How a model is loaded.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Weights dtype.
    pub dtype: ModelDType,
    /// Stay on the CPU.
    pub force_cpu: bool,
    /// Quantize after loading (the adapter is merged first).
    pub isq: Option<mistralrs::IsqType>,
    /// Paged attention with this many KV-cache tokens (`None`: off).
    pub paged_kv_tokens: Option<usize>,
}

/// Load `base_dir` with the PEFT adapter in `adapter_dir` merged. Blocking: call on a blocking
/// thread of the engine runtime.
pub fn load_with_adapter(
    base_dir: &Path,
    adapter_dir: &Path,
    name: &str,
    how: LoadOptions,
) -> Result<LoadedPipeline, ServeError> {
    mistralrs_quant::clear_applied_loras();
    let result = load_inner(base_dir, adapter_dir, how);
    mistralrs_quant::clear_applied_loras();
    result.map_err(|reason| ServeError::Load {
        model: name.to_owned(),
        reason: reason.to_string(),
    })
}

/// The weight files to merge the adapter into: the base's own, or — for an adapter trained on a
/// quantized base (QLoRA) — the base as that quantization left it, so the served model is the
/// one that was trained.
fn base_weights(base_dir: &Path, adapter_dir: &Path) -> Result<Vec<PathBuf>, ModelDirError> {
    match crate::model_dir::quant::record::read(adapter_dir)? {
        Some(how) => {
            let models = crate::model_cache::models_dir();
            crate::model_dir::quant::derived::dequantized_base(base_dir, how, &models)
                .map(|file| vec![file])
        }
        None => model_dir::weight_files(base_dir),
    }
}

/// Why a model with an adapter could not be loaded.
#[derive(Debug, thiserror::Error)]
enum LoadError {
    /// The base model's files.
    #[error(transparent)]
    ModelDir(#[from] ModelDirError),
    /// The adapter's config.
    #[error(transparent)]
    Adapter(#[from] AdapterConfigError),
    /// mistral.rs refused (its message, with its causes).
    #[error("{0}")]
    Engine(String),
}

fn engine(e: impl std::fmt::Display) -> LoadError {
    LoadError::Engine(format!("{e:#}"))
}

fn load_inner(
    base_dir: &Path,
    adapter_dir: &Path,
    how: LoadOptions,
) -> Result<LoadedPipeline, LoadError> {
    let adapter = AdapterConfig::read(adapter_dir)?;
    let lora_config = LoraConfig {
        rank: adapter.rank,
        alpha: adapter.alpha(),
        target_modules: adapter.targets.into_iter().collect(),
    };
    let loader: Box<dyn Loader> = NormalLoaderBuilder::new(
        NormalSpecificConfig::default(),
        None,
        None,
        Some(base_dir.display().to_string()),
        false,
        None,
    )
    .with_lora(vec![])
    .build(None)
    .map_err(engine)?;
    let opt = |name: &str| Some(base_dir.join(name)).filter(|p| p.exists());
    let paths: Box<dyn ModelPaths> = Box::new(LocalModelPaths::new(
        base_dir.join(model_dir::TOKENIZER),
        base_dir.join(model_dir::CONFIG),
        base_dir.join(model_dir::TOKENIZER_CONFIG),
        base_weights(base_dir, adapter_dir)?,
        AdapterPaths::Lora(vec![LoraAdapterPaths {
            lora_config,
            adapter_path: adapter_dir.join(WEIGHTS_FILE),
        }]),
        opt(model_dir::GENERATION_CONFIG),
        None,
        None,
        opt("chat_template.json"),
    ));
    let device = if how.force_cpu {
        Device::Cpu
    } else {
        Device::cuda_if_available(0).map_err(engine)?
    };
    let paged = how
        .paged_kv_tokens
        .map(crate::serve::paged::config)
        .transpose()
        .map_err(engine)?;
    loader
        .load_model_from_path(
            &paths,
            &how.dtype,
            &device,
            true,
            DeviceMapSetting::dummy(),
            how.isq,
            paged,
        )
        .map_err(engine)
}
