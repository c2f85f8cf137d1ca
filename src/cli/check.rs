//! Diagnostics for the device check (`bench/gpu/check.py`): the loss and LoRA gradients of one
//! micro-batch on a chosen device and dtype, and the serving engine's decode rate, hot-load time
//! and greedy answer for a base model and an adapter. No database needed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Tensor};
use clap::Args;

use crate::config::{DeviceChoice, DtypeChoice, PagedAttention, ServeQuant, serving_dtype};
use crate::domain::hyperparameters::LORA_MODULES;
use crate::model_dir::template::ChatTemplate;
use crate::serve::measure::{self, median};
use crate::serve::{ChatParams, ChatTurn, Engine, EngineOptions, MistralOptions};
use crate::train::data::{self, Batch, Limits};
use crate::train::lora::LoraSpec;
use crate::train::model::{CausalLm, ForwardCtx};
use crate::train::rng::{self, purpose};
use crate::train::step::loss_and_grads;

/// `ferrotune model grad-step`.
#[derive(Debug, Clone, Args)]
pub struct GradStepArgs {
    /// Hugging Face model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Training examples (any accepted format); the first `batch` are used.
    #[arg(long)]
    pub data: PathBuf,
    /// `cpu` or `cuda[:N]`.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// `f32`, `bf16` or `f16` (`auto`: bf16 on a GPU, f32 on the CPU).
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DtypeChoice,
    /// Examples in the micro-batch.
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    /// Recompute each layer in the backward pass.
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// Seed of the adapter values.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Cut-off length in tokens.
    #[arg(long, default_value_t = 1024)]
    pub cutoff: usize,
    /// Also time this many more forward-only and forward+backward passes (after this first
    /// one, which warms up) and print the medians.
    #[arg(long, default_value_t = 0)]
    pub repeat: usize,
    /// Where to write the gradients (safetensors, f32, PEFT tensor names).
    #[arg(long)]
    pub out: PathBuf,
}

/// Loss and LoRA gradients of one micro-batch, with seeded non-zero adapters (so both A and B get
/// gradients); prints `loss=…` and writes the gradients to `--out`.
pub fn grad_step(args: &GradStepArgs) -> anyhow::Result<()> {
    let device = args.device.open()?;
    let dtype = args.dtype.on(&device);
    let spec = LoraSpec {
        rank: 8,
        alpha: 32.0,
        dropout: 0.0,
        targets: LORA_MODULES.iter().map(|m| (*m).to_owned()).collect(),
    };
    let (model, lora) = CausalLm::load(&args.model, Some(&spec), args.seed, &device, dtype)?;
    for (i, a) in lora.adapters.iter().enumerate() {
        let mut g = rng::stream(args.seed, purpose::DIAGNOSTIC, i as u64);
        let values = rng::normal(&mut g, a.b.elem_count(), 0.02);
        a.b.set(&Tensor::from_vec(values, a.b.dims(), &device)?)?;
    }
    let batch = first_batch(&args.model, &args.data, args.batch, args.cutoff, &device)?;
    let mut grads = vec![None; lora.vars().len()];
    let started = Instant::now();
    let out = loss_and_grads(
        &model,
        &lora,
        &batch,
        ForwardCtx::default(),
        1.0,
        args.gradient_checkpointing,
        &mut grads,
    )?;
    let secs = started.elapsed().as_secs_f64();
    if args.repeat > 0 {
        time_passes(&model, &lora, &batch, args)?;
    }
    let mut named = HashMap::new();
    for ((name, _), g) in lora.named_tensors().into_iter().zip(grads) {
        let g = g.with_context(|| format!("{name} got no gradient"))?;
        named.insert(
            name,
            g.to_dtype(DType::F32)?
                .to_device(&candle_core::Device::Cpu)?,
        );
    }
    crate::train::tensor_file::write_safetensors(&args.out, &named)?;
    println!("loss={}", out.loss);
    println!("labelled_tokens={}", out.count);
    println!("seconds={secs:.3}");
    Ok(())
}

/// Median wall time of forward-only and forward+backward passes (each ends by reading the loss,
/// which waits for the device).
fn time_passes(
    model: &CausalLm,
    lora: &crate::train::lora::LoraSet,
    batch: &Batch,
    args: &GradStepArgs,
) -> anyhow::Result<()> {
    let (mut fwd, mut both) = (Vec::new(), Vec::new());
    for _ in 0..args.repeat {
        let t = Instant::now();
        let logits = model.forward(&batch.input_ids, &batch.segments, ForwardCtx::default())?;
        crate::train::loss::causal_lm_loss(&logits.detach(), &batch.labels)?
            .loss
            .to_scalar::<f32>()?;
        fwd.push(t.elapsed().as_secs_f64() * 1000.0);
        let mut grads = vec![None; lora.vars().len()];
        let t = Instant::now();
        loss_and_grads(
            model,
            lora,
            batch,
            ForwardCtx::default(),
            1.0,
            args.gradient_checkpointing,
            &mut grads,
        )?;
        // Reading a value waits for everything queued before it on the device's stream.
        if let Some(g) = grads.iter().flatten().next() {
            g.sum_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        }
        both.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let tokens = batch.tokens();
    let (f, b) = (median(fwd), median(both));
    println!("forward_ms={f:.1}");
    println!("forward_backward_ms={b:.1}");
    println!("backward_share={:.2}", (b - f) / b);
    println!("tokens_per_s={:.0}", tokens as f64 / (b / 1000.0));
    Ok(())
}

fn first_batch(
    model_dir: &Path,
    data_file: &Path,
    n: usize,
    cutoff: usize,
    device: &candle_core::Device,
) -> anyhow::Result<Batch> {
    let tokenizer = data::load_tokenizer(model_dir)?;
    let template = ChatTemplate::from_model_dir(model_dir)?;
    let limits = Limits {
        max_length: cutoff,
        max_source_length: None,
        max_target_length: None,
    };
    let mut samples = Vec::new();
    for e in data::read_examples(data_file)?.iter().take(n) {
        samples.extend(data::encode(e, &template, &tokenizer, limits)?);
    }
    anyhow::ensure!(
        !samples.is_empty(),
        "no trainable examples in {}",
        data_file.display()
    );
    Ok(Batch::new(&samples.iter().collect::<Vec<_>>(), device)?)
}

/// `ferrotune engine-check`.
#[derive(Debug, Clone, Args)]
pub struct EngineCheckArgs {
    /// Base model directory.
    #[arg(long)]
    pub base: PathBuf,
    /// PEFT adapter directory trained on the base.
    #[arg(long)]
    pub adapter: PathBuf,
    /// `auto`, `cpu` or `cuda[:N]`.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// `auto`, `f32`, `bf16` or `f16`.
    #[arg(long, value_enum, default_value = "auto")]
    pub dtype: DtypeChoice,
    /// Tokens per decode measurement (special tokens are banned so every run decodes this many).
    #[arg(long, default_value_t = 200)]
    pub tokens: usize,
    /// A question to answer greedily with the adapter.
    #[arg(long)]
    pub prompt: Option<String>,
    /// The answer the adapter was trained to give (prints `recital=ok` when it does).
    #[arg(long)]
    pub expect: Option<String>,
    /// Paged attention: `auto` (on a GPU), `on` or `off`.
    #[arg(long, value_enum, default_value = "auto")]
    pub paged_attention: PagedAttention,
    /// KV-cache tokens per model with paged attention.
    #[arg(long, default_value_t = 32768)]
    pub kv_cache_tokens: usize,
    /// Quantize both models after loading (`none`, `q8_0`, `q4k`).
    #[arg(long, value_enum, default_value = "none")]
    pub serve_quant: ServeQuant,
    /// Also measure the base model's total decode rate with this many concurrent generations
    /// (comma-separated, e.g. `8,32`).
    #[arg(long, value_delimiter = ',')]
    pub streams: Vec<usize>,
}

/// Decode rate of the base and the fine-tuned model, hot-load time of the adapter, and the
/// greedy answer to `--prompt`, as `key=value` lines.
pub async fn engine_check(args: &EngineCheckArgs) -> anyhow::Result<()> {
    let device = args.device.open()?;
    let dtype = args.dtype.on(&device);
    let paged_kv_tokens = args
        .paged_attention
        .resolve(&device, args.kv_cache_tokens)?;
    println!("device={device:?} dtype={dtype:?}");
    println!(
        "paged_attention={}",
        paged_kv_tokens.map_or("off".into(), |t| format!("{t}_tokens"))
    );
    if let Some(mib) = paged_kv_tokens
        .and_then(|t| crate::serve::paged::kv_cache_mib(&args.base, serving_dtype(dtype), t))
    {
        println!("kv_cache_mib={mib:.0}");
    }
    let started = Instant::now();
    let engine = Engine::start(EngineOptions::Mistral(MistralOptions {
        base_dir: args.base.clone(),
        base_name: "base".into(),
        max_resident: 2,
        max_num_seqs: 16,
        dtype: serving_dtype(dtype),
        force_cpu: device.is_cpu(),
        prefix_cache: !device.is_cpu(),
        isq: args.serve_quant.isq(),
        paged_kv_tokens,
    }))
    .await?;
    println!("base_load_s={:.2}", started.elapsed().as_secs_f64());
    let banned = data::special_token_ids(&args.base)?;
    let params = |content: &str, tokens: usize, temperature: f64, ban: bool| ChatParams {
        messages: vec![ChatTurn::new("user", content)],
        temperature: Some(temperature),
        n: 1,
        max_tokens: Some(tokens),
        logit_bias: ban.then(|| banned.iter().map(|id| (*id, -100.0)).collect()),
        ..Default::default()
    };
    let decode = |model: &'static str| {
        let engine = engine.clone();
        let p = params("Tell me about sleep.", args.tokens, 1.0, true);
        async move {
            let _warm = measure::decode_rate(&engine, model, p.clone()).await;
            let mut rates = Vec::new();
            for _ in 0..3 {
                rates.push(measure::decode_rate(&engine, model, p.clone()).await);
            }
            median(rates)
        }
    };
    let base_rate = decode("base").await;
    for &n in &args.streams {
        let p = params("Tell me about sleep.", args.tokens, 1.0, true);
        let rate = measure::total_decode_rate(&engine, "base", p, n).await;
        println!("base_decode_tokens_per_s_streams_{n}={rate:.1}");
    }
    let loaded = Instant::now();
    engine.ensure_loaded("fine-tuned", &args.adapter).await?;
    let (_, chunks) = measure::stream(&engine, "fine-tuned", params("Hi", 1, 1.0, false)).await;
    anyhow::ensure!(chunks > 0, "the fine-tuned model produced nothing");
    println!("hot_load_ms={:.0}", loaded.elapsed().as_secs_f64() * 1000.0);
    let tuned_rate = decode("fine-tuned").await;
    println!("base_decode_tokens_per_s={base_rate:.1}");
    println!("fine_tuned_decode_tokens_per_s={tuned_rate:.1}");
    if let Some(prompt) = &args.prompt {
        let answer = measure::complete(&engine, "fine-tuned", params(prompt, 40, 0.0, false))
            .await
            .unwrap_or_default();
        println!("answer={answer:?}");
        if let Some(expect) = &args.expect {
            let ok = answer.trim() == expect.trim();
            println!("recital={}", if ok { "ok" } else { "mismatch" });
        }
    }
    Ok(())
}
