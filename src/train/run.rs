//! The training loop: epochs of seeded shuffles, micro-batches with gradient accumulation,
//! clipping, AdamW with a schedule, metrics every `logging_steps`, PEFT checkpoints every
//! `save_steps` and at each epoch end (each with the state to resume from), and a saved state when
//! asked to pause.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use super::auto::{self, Resolved};
use super::checkpoint::{self, ResumeState};
use super::data::{self, Batch, Limits, Sample};
use super::eval::{self, AnswerLimits, EvalRecord, GenerationMetrics};
use super::generate::Prompter;
use super::gpu_memory;
use super::lora::{LoraSet, LoraSpec};
use super::loss::causal_lm_loss;
pub use super::metrics::MetricsRow;
use super::metrics::Rewards;
use super::model::{CausalLm, Config, ForwardCtx, Weights};
use super::optim::{AdamW, clip_grad_norm, learning_rate};
use super::preference::PreferenceRun;
use super::preference::loss::PairStats;
use super::step::{Pass, loss_and_grads};
use super::{TensorContext, TrainError, io_err};
use crate::domain::dataset::EvalPrompt;
use crate::domain::dataset::Example;
use crate::domain::hyperparameters::Hyperparameters;
use crate::model_dir::quant::{self, Storage};
use crate::model_dir::read_tokenizer_config;
use crate::model_dir::template::ChatTemplate;
use tokenizers::Tokenizer;

/// What to train.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Hugging Face model directory.
    pub model_dir: PathBuf,
    /// Name written as `base_model_name_or_path` in adapters.
    pub base_model_name: String,
    /// Training data (any accepted format).
    pub train_file: PathBuf,
    /// Validation data; without it, `hyperparameters.evaluation.validation_split` may hold some out.
    pub valid_file: Option<PathBuf>,
    /// A built-in template name; `None` uses the model's own.
    pub template: Option<String>,
    /// Hyperparameters (may contain `auto`).
    pub hyperparameters: Hyperparameters,
    /// Seed for init, shuffles and dropout.
    pub seed: u64,
    /// Where checkpoints, state and results go.
    pub output_dir: PathBuf,
    /// Compute device.
    pub device: Device,
    /// Compute dtype of the frozen weights (LoRA weights stay f32).
    pub dtype: DType,
    /// A PEFT adapter directory to start from (continued training); its rank, alpha and target
    /// modules replace the hyperparameters'.
    pub init_adapter: Option<PathBuf>,
}

/// Something the loop reports.
#[derive(Debug, Clone)]
pub enum Update {
    /// `auto` values resolved.
    Resolved(Hyperparameters),
    /// A human-readable message.
    Message(String),
    /// Training continues from a saved state (after a pause, a shutdown or a lost worker).
    Resumed {
        /// Steps already done.
        step: usize,
        /// Total optimizer steps.
        total: usize,
    },
    /// Metrics at a logging step.
    Metrics {
        /// The row.
        row: MetricsRow,
        /// Total optimizer steps.
        total_steps: usize,
    },
    /// Seconds left, estimated.
    Estimate(f64),
    /// One optimizer step done (for progress displays).
    Step {
        /// Steps done.
        step: usize,
        /// Total steps.
        total: usize,
        /// Its training loss.
        loss: f32,
        /// Tokens processed so far.
        tokens: u64,
    },
    /// A checkpoint directory was written.
    Checkpoint {
        /// Step.
        step: usize,
        /// PEFT directory.
        dir: PathBuf,
        /// Metrics at that step.
        metrics: MetricsRow,
    },
    /// An old checkpoint was deleted.
    Pruned(usize),
    /// The state to resume from was written to this directory.
    StateSaved(PathBuf),
    /// An ensemble member finished; its directory holds its record (`outcome.json`), adapter
    /// and result files.
    MemberFinished(PathBuf),
}

/// Files of a finished run.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// Tokens processed over all epochs.
    pub trained_tokens: u64,
    /// The final adapter (PEFT).
    pub adapter_dir: PathBuf,
    /// `step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy`.
    pub metrics_csv: PathBuf,
    /// Loss curve.
    pub loss_svg: PathBuf,
    /// The final adapter as `.tar.gz`.
    pub adapter_archive: PathBuf,
    /// Every step's metrics.
    pub metrics: Vec<MetricsRow>,
    /// The generation evaluation, when there were validation prompts to answer.
    pub evaluation: Option<Box<Evaluation>>,
}

/// The end-of-run generation evaluation and its result files.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// One record per validation prompt.
    pub records: Vec<EvalRecord>,
    /// Their mean scores.
    pub metrics: GenerationMetrics,
    /// `eval.jsonl`.
    pub jsonl: PathBuf,
    /// `eval_summary.csv`.
    pub summary_csv: PathBuf,
}

/// How a run ended.
#[derive(Debug)]
pub enum RunEnd {
    /// All epochs done.
    Finished(RunOutcome),
    /// Stopped on request after saving its state; running again resumes.
    Stopped {
        /// Steps done.
        step: usize,
    },
}

struct Prepared {
    /// Training samples: one per example, or for preference tuning each pair's chosen and
    /// rejected conversation side by side ([`Prepared::unit`] samples per example).
    train: Vec<Sample>,
    valid: Vec<Sample>,
    /// Samples per example: 1, or 2 for preference pairs.
    unit: usize,
    /// The prompts of `valid` for the generation evaluation (empty when it is off).
    eval_prompts: Vec<EvalPrompt>,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    resolved: Resolved,
}

/// Why a run should stop at the next step boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Save the state so that running again resumes here (pause, shutdown).
    Pause,
    /// Stop without saving anything: the run will never resume (cancel).
    Discard,
}

/// Train per `cfg`; `stop` is polled after every optimizer step and pauses when true.
pub fn train(
    cfg: &RunConfig,
    stop: &dyn Fn() -> bool,
    on: &mut dyn FnMut(Update),
) -> Result<RunEnd, TrainError> {
    train_until(cfg, &|| stop().then_some(Stop::Pause), on)
}

/// Train per `cfg`, stopping as `stop` (polled after every optimizer step) says.
pub fn train_until(
    cfg: &RunConfig,
    stop: &dyn Fn() -> Option<Stop>,
    on: &mut dyn FnMut(Update),
) -> Result<RunEnd, TrainError> {
    let hp = &cfg.hyperparameters;
    let p = prepare(cfg, on)?;
    let spec = match &cfg.init_adapter {
        Some(dir) => {
            let spec = LoraSpec::read_peft(dir, hp.lora.dropout)?;
            on(Update::Message(format!(
                "Continuing from an adapter of rank {} (alpha {}) on {}",
                spec.rank,
                spec.alpha,
                spec.targets.join(", ")
            )));
            spec
        }
        None => LoraSpec {
            rank: hp.lora.rank as usize,
            alpha: hp.lora.alpha,
            dropout: hp.lora.dropout,
            targets: hp.lora.target.clone(),
        },
    };
    let storage = Storage::for_run(&cfg.model_dir, hp);
    let weights = Weights::load_stored(&cfg.model_dir, &cfg.device, cfg.dtype, storage)?;
    let summary = weights.quantized_summary().unwrap_or_default();
    let (model, lora) = CausalLm::build(
        Config::load(&cfg.model_dir)?,
        &weights,
        Some(&spec),
        cfg.seed,
        &cfg.device,
        cfg.dtype,
    )?;
    drop(weights);
    if let Some(dir) = &cfg.init_adapter {
        lora.load_peft(&dir.join("adapter_model.safetensors"), &cfg.device)?;
    }
    if let Some(text) = quant::describe(storage, &summary, cfg.dtype) {
        on(Update::Message(text));
    }
    let mut opt = AdamW::new(lora.vars(), hp.weight_decay)?;
    let bs = p.resolved.batch_size as usize;
    let accum = hp.gradient_accumulation_steps as usize;
    let units = p.train.len() / p.unit;
    let steps_per_epoch = units.div_ceil(bs * accum);
    let total = steps_per_epoch * p.resolved.n_epochs as usize;
    let warmup = (hp.warmup_ratio * total as f64).ceil() as usize;
    let checkpointing = hp.gradient_checkpointing.unwrap_or(!cfg.device.is_cpu());
    let preference = match hp.preference {
        Some(settings) => {
            on(Update::Message(format!(
                "Scoring {} preference pairs with the reference (the base, adapter off)",
                (p.train.len() + p.valid.len()) / 2
            )));
            let sets = (p.train.as_slice(), p.valid.as_slice());
            Some(PreferenceRun::new(
                settings,
                &model,
                &lora,
                sets,
                bs,
                &cfg.device,
            )?)
        }
        None => None,
    };
    let state_dir = cfg.output_dir.join("state");
    let mut st =
        checkpoint::load_state(&state_dir, &lora, &mut opt, &cfg.device)?.unwrap_or(ResumeState {
            step: 0,
            trained_tokens: 0,
            metrics: Vec::new(),
            checkpoints: Vec::new(),
        });
    if st.step > 0 {
        on(Update::Resumed {
            step: st.step,
            total,
        });
    } else {
        on(Update::Message(format!(
            "Training {} LoRA parameters on {} examples: {} epochs × {} steps (batch {} × {} accumulation){}",
            lora.parameter_count(),
            units,
            p.resolved.n_epochs,
            steps_per_epoch,
            bs,
            accum,
            if checkpointing {
                ", gradient checkpointing"
            } else {
                ""
            }
        )));
    }
    let base_answers = if p.eval_prompts.is_empty() {
        Vec::new()
    } else {
        base_answers(cfg, &p, &model, st.step, on)?
    };
    let mut evaluation = None;
    let started = Instant::now();
    let first_step = st.step;
    while st.step < total {
        let step = st.step;
        let epoch = step / steps_per_epoch;
        let order = data::epoch_order(units, cfg.seed, epoch);
        let k = step % steps_per_epoch;
        let chunk = &order[k * bs * accum..((k + 1) * bs * accum).min(order.len())];
        let micro: Vec<&[usize]> = chunk.chunks(bs).collect();
        let mut grads: Vec<Option<Tensor>> = vec![None; lora.vars().len()];
        let (mut loss_sum, mut correct, mut count) = (0f32, 0usize, 0usize);
        let (step_started, tokens_before) = (Instant::now(), st.trained_tokens);
        let mut step_pairs = PairStats::default();
        gpu_memory::reset_peak(&cfg.device);
        for (j, indices) in micro.iter().enumerate() {
            let samples: Vec<&Sample> = indices
                .iter()
                .flat_map(|i| &p.train[i * p.unit..(i + 1) * p.unit])
                .collect();
            let batch = Batch::new(&samples, &cfg.device)?;
            let rows = batch.input_ids.elem_count();
            let masks = model.dropout_masks(cfg.seed, (step * accum + j) as u64, rows)?;
            let ctx = ForwardCtx {
                dropout: masks.as_ref(),
            };
            let out = match &preference {
                Some(pref) => {
                    let pass = Pass {
                        model: &model,
                        lora: &lora,
                        batch: &batch,
                        ctx,
                        scale: 1.0 / micro.len() as f64,
                    };
                    let out = pref.micro(&pass, indices, checkpointing, &mut grads)?;
                    step_pairs.merge(&out.stats);
                    out.micro
                }
                None => loss_and_grads(
                    &model,
                    &lora,
                    &batch,
                    ctx,
                    1.0 / micro.len() as f64,
                    checkpointing,
                    &mut grads,
                )?,
            };
            if !out.loss.is_finite() {
                return Err(TrainError::NonFiniteLoss {
                    step: step + 1,
                    loss: out.loss,
                });
            }
            loss_sum += out.loss;
            (correct, count) = (correct + out.correct, count + out.count);
            st.trained_tokens += batch.tokens() as u64;
        }
        clip_grad_norm(&mut grads, hp.max_grad_norm)?;
        let lr = learning_rate(
            p.resolved.learning_rate,
            hp.lr_scheduler_type,
            warmup,
            step,
            total,
        );
        opt.step(&grads, lr)?;
        st.step += 1;
        let mut row = MetricsRow {
            step: st.step,
            train_loss: loss_sum / micro.len() as f32,
            train_mean_token_accuracy: correct as f32 / count.max(1) as f32,
            valid_loss: None,
            valid_mean_token_accuracy: None,
            full_valid_loss: None,
            full_valid_mean_token_accuracy: None,
            learning_rate: Some(lr),
            tokens_per_second: Some(
                (st.trained_tokens - tokens_before) as f32
                    / step_started.elapsed().as_secs_f32().max(1e-6),
            ),
            rewards: None,
            peak_gpu_memory_bytes: gpu_memory::peak_bytes(&cfg.device),
            generation: None,
        };
        let epoch_end = st.step % steps_per_epoch == 0;
        let log = st.step % hp.logging_steps as usize == 0 || st.step == total;
        let evaluate_now = (log || epoch_end) && !p.valid.is_empty();
        if let Some(pref) = &preference {
            let valid = match evaluate_now {
                true => Some(pref.validate(&model, &p.valid, bs, &cfg.device)?),
                false => None,
            };
            row.valid_loss = valid.map(|v| v.loss as f32);
            if st.step == total {
                row.full_valid_loss = row.valid_loss;
            }
            row.rewards = Some(Rewards::of(&step_pairs, valid.as_ref()));
        } else if evaluate_now {
            let (l, a) = evaluate(&model, &p.valid, bs, &cfg.device)?;
            (row.valid_loss, row.valid_mean_token_accuracy) = (Some(l), Some(a));
            if st.step == total {
                // Every evaluation covers the whole set; the last one is OpenAI's "full" figure.
                (row.full_valid_loss, row.full_valid_mean_token_accuracy) = (Some(l), Some(a));
            }
        }
        if st.step == total && !p.eval_prompts.is_empty() {
            on(Update::Message(format!(
                "Answering {} validation prompts with the fine-tuned model",
                p.eval_prompts.len()
            )));
            let tuned = answer_all(cfg, &p, &model)?;
            let scored = eval::score(&p.eval_prompts, &base_answers, &tuned);
            row.generation = Some(scored.1);
            evaluation = Some(scored);
        }
        st.metrics.push(row.clone());
        on(Update::Step {
            step: st.step,
            total,
            loss: row.train_loss,
            tokens: st.trained_tokens,
        });
        if log {
            on(Update::Metrics {
                row: row.clone(),
                total_steps: total,
            });
            let per_step = started.elapsed().as_secs_f64() / (st.step - first_step) as f64;
            on(Update::Estimate(per_step * (total - st.step) as f64));
        }
        if st.step % hp.save_steps as usize == 0 || epoch_end {
            save_checkpoint(cfg, &spec, &lora, &mut st, &row, steps_per_epoch, on)?;
            // With every checkpoint, the state to resume from: a worker killed later resumes
            // here (optimizer moments included) instead of from step 0.
            checkpoint::save_state(&state_dir, &lora, &opt, &st)?;
            on(Update::StateSaved(state_dir.clone()));
        }
        let stop_now = if st.step < total { stop() } else { None };
        if stop_now == Some(Stop::Discard) {
            return Ok(RunEnd::Stopped { step: st.step });
        }
        if stop_now == Some(Stop::Pause) {
            checkpoint::save_state(&state_dir, &lora, &opt, &st)?;
            on(Update::StateSaved(state_dir.clone()));
            on(Update::Message(format!(
                "Saved training state at step {}/{total}",
                st.step
            )));
            return Ok(RunEnd::Stopped { step: st.step });
        }
    }
    let outcome = finish(cfg, &spec, &lora, &st, evaluation)?;
    checkpoint::clear_state(&state_dir);
    Ok(RunEnd::Finished(outcome))
}

fn prepare(cfg: &RunConfig, on: &mut dyn FnMut(Update)) -> Result<Prepared, TrainError> {
    let hp = &cfg.hyperparameters;
    let tokenizer = data::load_tokenizer(&cfg.model_dir)?;
    let template = match &cfg.template {
        Some(name) => {
            let tc = read_tokenizer_config(&cfg.model_dir)?;
            let tok = |k: &str| tc.get(k).and_then(|v| v.as_str()).unwrap_or("").to_owned();
            ChatTemplate::builtin(name, &tok("bos_token"), &tok("eos_token"))?
        }
        None => ChatTemplate::from_model_dir(&cfg.model_dir)?,
    };
    let limits = Limits {
        max_length: hp.max_length as usize,
        max_source_length: hp.max_source_length.map(|v| v as usize),
        max_target_length: hp.max_target_length.map(|v| v as usize),
    };
    // No turn is tokenized beyond what truncation could keep.
    let longest = [
        hp.max_length,
        hp.max_source_length.unwrap_or(0),
        hp.max_target_length.unwrap_or(0),
    ];
    let max_turn_bytes = *longest.iter().max().unwrap_or(&hp.max_length) as usize
        * data::longest_token_bytes(&tokenizer);
    // Samples, the examples they came from (the ones that kept a response), and the file's count.
    let unit = if hp.preference.is_some() { 2 } else { 1 };
    let encode = |e: &Example| -> Result<Option<Sample>, TrainError> {
        let bounded = data::bound_turns(e, max_turn_bytes);
        data::encode(&bounded, &template, &tokenizer, limits)
    };
    // An example's samples (a preference pair's chosen and rejected conversations) and the
    // example its prompt and reference come from (the chosen one); a pair is kept only when
    // both its answers keep tokens.
    let encode_unit = |e: Example| -> Result<Option<(Vec<Sample>, Example)>, TrainError> {
        let parts = match (unit, e.preference_pair()) {
            (1, None) => vec![e],
            (1, Some(_)) => {
                return Err(TrainError::Invalid(
                    "the data holds preference pairs (chosen/rejected); train on them with DPO \
                     (method type dpo, or stage: dpo)"
                        .into(),
                ));
            }
            (_, Some((chosen, rejected))) => vec![chosen, rejected],
            (_, None) => {
                return Err(TrainError::Invalid(
                    "a preference job got an example without a rejected answer".into(),
                ));
            }
        };
        let mut out = Vec::with_capacity(parts.len());
        for part in &parts {
            match encode(part)? {
                Some(sample) => out.push(sample),
                None => return Ok(None),
            }
        }
        Ok(parts.into_iter().next().map(|first| (out, first)))
    };
    let encode_all = |path: &Path| -> Result<(Vec<Sample>, Vec<Example>, usize), TrainError> {
        let examples = data::read_examples(path)?;
        let total = examples.len();
        let mut out = Vec::with_capacity(total * unit);
        let mut kept = Vec::with_capacity(total);
        for e in examples {
            if let Some((samples, example)) = encode_unit(e)? {
                out.extend(samples);
                kept.push(example);
            }
        }
        Ok((out, kept, total))
    };
    let (mut train, mut train_examples, total) = encode_all(&cfg.train_file)?;
    if train.is_empty() {
        return Err(TrainError::Invalid(format!(
            "none of the {total} training examples has a response left to learn after truncation to {} tokens",
            hp.max_length
        )));
    }
    if train.len() / unit < total {
        on(Update::Message(format!(
            "{} of {total} examples had no response tokens left after truncation and were skipped",
            total - train.len() / unit
        )));
    }
    let (valid, valid_examples) = match (&cfg.valid_file, hp.evaluation.validation_split) {
        (Some(f), _) => {
            let (samples, examples, _) = encode_all(f)?;
            (samples, examples)
        }
        (None, Some(split)) if split > 0.0 => {
            let held = hold_out(train.len() / unit, split, cfg.seed)?;
            let samples = held
                .iter()
                .flat_map(|u| (0..unit).map(move |k| u * unit + k));
            (
                take(&mut train, &samples.collect()),
                take(&mut train_examples, &held),
            )
        }
        (None, _) => (Vec::new(), Vec::new()),
    };
    let eval_prompts = if hp.evaluation.predict_with_generate {
        valid_examples.iter().filter_map(EvalPrompt::of).collect()
    } else {
        Vec::new()
    };
    let resolved = auto::resolve(hp, train.len() / unit);
    on(Update::Resolved(resolved.apply(hp)));
    Ok(Prepared {
        train,
        valid,
        unit,
        eval_prompts,
        tokenizer,
        template,
        resolved,
    })
}

/// The indices of a seeded random `split` (fraction or count) of `n` training examples.
fn hold_out(
    n: usize,
    split: f64,
    seed: u64,
) -> Result<std::collections::HashSet<usize>, TrainError> {
    let k = if split < 1.0 {
        (split * n as f64).round() as usize
    } else {
        split as usize
    };
    if k == 0 || k >= n {
        return Err(TrainError::Invalid(format!(
            "val_size {split} leaves no training or no validation examples out of {n}"
        )));
    }
    let order = data::epoch_order(n, seed ^ 0x5eed, 0);
    Ok(order[..k].iter().copied().collect())
}

/// Move the items at `held` out of `items`, keeping both in order.
fn take<T>(items: &mut Vec<T>, held: &std::collections::HashSet<usize>) -> Vec<T> {
    let (out, kept): (Vec<_>, Vec<_>) = std::mem::take(items)
        .into_iter()
        .enumerate()
        .partition(|(i, _)| held.contains(i));
    *items = kept.into_iter().map(|(_, x)| x).collect();
    out.into_iter().map(|(_, x)| x).collect()
}

/// The adapter in PEFT format, with a record of how its frozen base was stored.
fn save_adapter(
    cfg: &RunConfig,
    lora: &LoraSet,
    dir: &Path,
    spec: &LoraSpec,
) -> Result<(), TrainError> {
    lora.save_peft(dir, spec, &cfg.base_model_name)?;
    let storage = Storage::for_run(&cfg.model_dir, &cfg.hyperparameters);
    quant::record::write(dir, storage).map_err(io_err(dir))
}

/// Greedy answers of `model` to every evaluation prompt.
fn answer_all(cfg: &RunConfig, p: &Prepared, model: &CausalLm) -> Result<Vec<String>, TrainError> {
    let prompter = Prompter::new(&p.tokenizer, &p.template).with_generation_config(&cfg.model_dir);
    let limits = AnswerLimits {
        max_prompt: cfg.hyperparameters.max_length as usize,
        max_new: cfg.hyperparameters.evaluation.eval_max_new_tokens as usize,
    };
    eval::answers(model, &prompter, &p.eval_prompts, limits, &mut |_| {})
}

/// The base model's answers: saved by an earlier attempt, else generated — with the run's own
/// model before the first step (its adapters are still zero), or after a resume with the base
/// weights loaded once more without adapters.
fn base_answers(
    cfg: &RunConfig,
    p: &Prepared,
    model: &CausalLm,
    step: usize,
    on: &mut dyn FnMut(Update),
) -> Result<Vec<String>, TrainError> {
    let path = cfg.output_dir.join("eval").join("base_answers.json");
    if let Some(saved) = eval::load_base_answers(&path, p.eval_prompts.len()) {
        return Ok(saved);
    }
    on(Update::Message(format!(
        "Answering {} validation prompts with the base model",
        p.eval_prompts.len()
    )));
    let answers = if step == 0 {
        answer_all(cfg, p, model)?
    } else {
        let storage = Storage::for_run(&cfg.model_dir, &cfg.hyperparameters);
        let (base, _) = CausalLm::load_stored(
            &cfg.model_dir,
            None,
            cfg.seed,
            &cfg.device,
            cfg.dtype,
            storage,
        )?;
        answer_all(cfg, p, &base)?
    };
    eval::save_base_answers(&path, &answers)?;
    Ok(answers)
}

/// Mean loss and token accuracy over `samples`, without dropout or gradients.
pub fn evaluate(
    model: &CausalLm,
    samples: &[Sample],
    bs: usize,
    device: &Device,
) -> Result<(f32, f32), TrainError> {
    let (mut loss, mut correct, mut count) = (0f64, 0usize, 0usize);
    for chunk in samples.chunks(bs.max(1)) {
        let refs: Vec<&Sample> = chunk.iter().collect();
        let batch = Batch::new(&refs, device)?;
        let logits = model.logits(&batch.input_ids, &batch.segments, ForwardCtx::default())?;
        let out = causal_lm_loss(&logits.detach(), &batch.labels)?;
        loss += f64::from(out.loss.to_scalar::<f32>().ctx("reading the loss")?) * out.count as f64;
        (correct, count) = (correct + out.correct, count + out.count);
    }
    Ok((
        (loss / count.max(1) as f64) as f32,
        correct as f32 / count.max(1) as f32,
    ))
}

fn save_checkpoint(
    cfg: &RunConfig,
    spec: &LoraSpec,
    lora: &LoraSet,
    st: &mut ResumeState,
    row: &MetricsRow,
    steps_per_epoch: usize,
    on: &mut dyn FnMut(Update),
) -> Result<(), TrainError> {
    let dir = checkpoint_dir(&cfg.output_dir, st.step);
    save_adapter(cfg, lora, &dir, spec)?;
    st.checkpoints.push(st.step);
    on(Update::Checkpoint {
        step: st.step,
        dir,
        metrics: row.clone(),
    });
    // Keep the checkpoints of the last three epochs.
    let completed = st.step / steps_per_epoch;
    let keep_after = completed.saturating_sub(3) * steps_per_epoch;
    let (old, kept): (Vec<usize>, Vec<usize>) =
        st.checkpoints.iter().partition(|s| **s <= keep_after);
    for s in old {
        let _ = std::fs::remove_dir_all(checkpoint_dir(&cfg.output_dir, s));
        on(Update::Pruned(s));
    }
    st.checkpoints = kept;
    Ok(())
}

/// Where the checkpoint of `step` lives.
pub fn checkpoint_dir(output: &Path, step: usize) -> PathBuf {
    output.join("checkpoints").join(format!("step-{step}"))
}

fn finish(
    cfg: &RunConfig,
    spec: &LoraSpec,
    lora: &LoraSet,
    st: &ResumeState,
    evaluation: Option<(Vec<EvalRecord>, GenerationMetrics)>,
) -> Result<RunOutcome, TrainError> {
    let adapter_dir = cfg.output_dir.join("adapter");
    save_adapter(cfg, lora, &adapter_dir, spec)?;
    let results = cfg.output_dir.join("results");
    std::fs::create_dir_all(&results).map_err(io_err(&results))?;
    let metrics_csv = results.join("metrics.csv");
    super::metrics::write_csv(&metrics_csv, &st.metrics)?;
    let loss_svg = results.join("loss.svg");
    super::report::write_loss_svg(&loss_svg, &st.metrics)?;
    let adapter_archive = results.join("adapter.tar.gz");
    crate::export::archive::write_archive(&adapter_archive, &adapter_dir, "adapter")
        .map_err(io_err(&adapter_archive))?;
    let evaluation = match evaluation {
        Some((records, metrics)) => {
            let jsonl = results.join("eval.jsonl");
            eval::write_jsonl(&jsonl, &records)?;
            let summary_csv = results.join("eval_summary.csv");
            eval::write_summary_csv(&summary_csv, &metrics)?;
            Some(Box::new(Evaluation {
                records,
                metrics,
                jsonl,
                summary_csv,
            }))
        }
        None => None,
    };
    Ok(RunOutcome {
        trained_tokens: st.trained_tokens,
        adapter_dir,
        metrics_csv,
        loss_svg,
        adapter_archive,
        metrics: st.metrics.clone(),
        evaluation,
    })
}
