//! Paged attention for the engine: the KV cache as a pool of fixed-size blocks per resident model
//! (mistral.rs's PagedAttention, CUDA only), sized in tokens, and what that pool costs.

use std::path::Path;
use std::sync::Arc;

use mistralrs::core::{Pipeline, SchedulerConfig};
use mistralrs::{MemoryGpuConfig, PagedAttentionConfig, PagedAttentionMetaBuilder};

use super::ServeError;

/// The engine's paged-attention configuration for a pool of `tokens` KV-cache tokens.
pub fn config(tokens: usize) -> Result<PagedAttentionConfig, ServeError> {
    PagedAttentionMetaBuilder::default()
        .with_gpu_memory(MemoryGpuConfig::ContextSize(tokens))
        .build()
        .map_err(|e| ServeError::Engine(format!("paged attention: {e:#}")))
}

/// Bytes of KV cache one token takes in the model at `model_dir` (keys and values of every
/// layer) at `dtype_bytes` per element.
pub fn kv_bytes_per_token(model_dir: &Path, dtype_bytes: usize) -> Option<usize> {
    let c = crate::model_dir::Config::load(model_dir).ok()?;
    let heads = c.num_attention_heads.max(1);
    let kv_heads = c.num_key_value_heads.unwrap_or(heads);
    let head_dim = c.head_dim.unwrap_or(c.hidden_size / heads);
    Some(c.num_hidden_layers * 2 * kv_heads * head_dim * dtype_bytes)
}

/// MiB of GPU memory a pool of `tokens` KV-cache tokens takes for the model at `model_dir`.
pub fn kv_cache_mib(model_dir: &Path, dtype: mistralrs::ModelDType, tokens: usize) -> Option<f64> {
    kv_bytes_per_token(model_dir, dtype_bytes(dtype)).map(|b| (b * tokens) as f64 / 1048576.0)
}

/// Bytes per element of a serving dtype (the KV cache is kept in the model's dtype).
pub fn dtype_bytes(dtype: mistralrs::ModelDType) -> usize {
    match dtype {
        mistralrs::ModelDType::F32 => 4,
        _ => 2,
    }
}

/// The scheduler for a loaded pipeline: the paged one when the pipeline was loaded with a paged
/// KV cache, else the default one batching up to `max_num_seqs`.
pub async fn scheduler(
    pipeline: &Arc<tokio::sync::Mutex<dyn Pipeline + Send + Sync>>,
    max_num_seqs: usize,
) -> SchedulerConfig {
    let seqs =
        std::num::NonZeroUsize::new(max_num_seqs.max(1)).unwrap_or(std::num::NonZeroUsize::MIN);
    match pipeline.lock().await.get_metadata().cache_config.clone() {
        Some(config) => SchedulerConfig::PagedAttentionMeta {
            max_num_seqs: seqs.get(),
            config,
        },
        None => SchedulerConfig::DefaultScheduler {
            method: mistralrs::core::DefaultSchedulerMethod::Fixed(seqs),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_bytes_count_both_halves_of_every_layer_with_grouped_query_heads() {
        let dir = tempfile::tempdir().unwrap();
        // SmolLM2-135M's shapes: 30 layers, 9 query heads over 576, 3 KV heads.
        let config = serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "hidden_size": 576, "intermediate_size": 1536,
            "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
            "vocab_size": 49152, "hidden_act": "silu", "rms_norm_eps": 1e-5, "max_position_embeddings": 8192,
        });
        std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        assert_eq!(kv_bytes_per_token(dir.path(), 2), Some(30 * 2 * 3 * 64 * 2));
        assert_eq!(kv_bytes_per_token(&dir.path().join("missing"), 2), None);
    }

    #[test]
    fn a_pool_of_tokens_makes_a_paged_config() {
        assert!(config(4096).is_ok());
    }
}
