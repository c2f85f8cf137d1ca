//! The training loop: epochs of seeded shuffles, micro-batches with gradient accumulation,
//! clipping, AdamW with a schedule, metrics every `logging_steps`, PEFT checkpoints every
//! `save_steps` and at each epoch end (each with the state to resume from), and a saved state when
//! asked to pause.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};

use super::checkpoint::{self, Best, ResumeState};
use super::data::{self, Batch, Prepared, Sample};
use super::eval::{self, AnswerLimits, EvalRecord, GenerationMetrics};
use super::generate::Prompter;
use super::gpu_memory;
use super::lora::{LoraSet, LoraSpec};
use super::loss::causal_lm_loss;
use super::lr_find;
pub use super::metrics::MetricsRow;
use super::metrics::Rewards;
use super::model::{CausalLm, Config, ForwardCtx, Weights};
use super::optim::{AdamW, clip_grad_norm, learning_rate};
use super::preference::PreferenceRun;
use super::preference::loss::PairStats;
use super::step::{Pass, loss_and_grads};
use super::{TensorContext, TrainError, io_err};
use crate::domain::hyperparameters::Hyperparameters;
use crate::model_dir::adapter::WEIGHTS_FILE;
use crate::model_dir::quant::{self, Storage};

pub use super::config::RunConfig;

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
    let mut run = Run::start(cfg, on)?;
    while !run.ended() {
        let done = run.step()?;
        let row = run.metrics_row(done, on)?;
        run.report(&row, on);
        if run.st.step % cfg.hyperparameters.save_steps as usize == 0
            || run.epoch_end()
            || run.ended()
        {
            run.checkpoint(&row, on)?;
        }
        let stop_now = if run.ended() { None } else { stop() };
        match stop_now {
            Some(Stop::Discard) => return Ok(RunEnd::Stopped { step: run.st.step }),
            Some(Stop::Pause) => {
                run.save_state(on)?;
                on(Update::Message(format!(
                    "Saved training state at step {}/{}",
                    run.st.step, run.plan.total
                )));
                return Ok(RunEnd::Stopped { step: run.st.step });
            }
            None => {}
        }
    }
    run.conclude(on)?;
    let outcome = finish(cfg, &run.spec, &run.lora, &run.st, run.evaluation.take())?;
    checkpoint::clear_state(&run.state_dir);
    Ok(RunEnd::Finished(outcome))
}

/// The shape of a run: batches, steps and warm-up.
struct Plan {
    /// Units per micro-batch.
    batch: usize,
    /// Micro-batches per optimizer step.
    accum: usize,
    /// Training units.
    units: usize,
    steps_per_epoch: usize,
    total: usize,
    warmup: usize,
    checkpointing: bool,
}

/// What one optimizer step measured.
struct StepDone {
    loss_sum: f32,
    micro_batches: usize,
    correct: usize,
    count: usize,
    lr: f64,
    pairs: PairStats,
    tokens_before: u64,
    started: Instant,
}

/// A run in progress: its data, model, adapter, optimizer and where it stands.
struct Run<'a> {
    cfg: &'a RunConfig,
    p: Prepared,
    spec: LoraSpec,
    model: CausalLm,
    lora: LoraSet,
    opt: AdamW,
    preference: Option<PreferenceRun>,
    plan: Plan,
    st: ResumeState,
    state_dir: PathBuf,
    base_answers: Vec<String>,
    evaluation: Option<(Vec<EvalRecord>, GenerationMetrics)>,
    started: Instant,
    first_step: usize,
}

impl<'a> Run<'a> {
    /// Prepare the data, build the model with its adapter (fresh, or the one continued from),
    /// and load the saved state when there is one.
    fn start(cfg: &'a RunConfig, on: &mut dyn FnMut(Update)) -> Result<Self, TrainError> {
        let hp = &cfg.hyperparameters;
        let mut p = data::prepare(cfg)?;
        if let Some((skipped, total)) = p.skipped {
            on(Update::Message(format!(
                "{skipped} of {total} examples had no response tokens left after truncation and \
                 were skipped"
            )));
        }
        if let Some(k) = p.auto_split {
            on(Update::Message(format!(
                "Holding out {k} of {} training examples for validation (validation_split not \
                 set; 0 turns this off)",
                p.train.len() + k
            )));
        }
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
            lora.load_peft(&dir.join(WEIGHTS_FILE), &cfg.device)?;
        }
        if let Some(text) = quant::describe(storage, &summary, cfg.dtype) {
            on(Update::Message(text));
        }
        let mut opt = AdamW::new(lora.vars(), hp.weight_decay)?;
        let (batch, accum) = (
            p.resolved.batch_size as usize,
            hp.gradient_accumulation_steps as usize,
        );
        let units = p.train.len();
        let steps_per_epoch = units.div_ceil(batch * accum);
        let total = steps_per_epoch * p.resolved.n_epochs as usize;
        let plan = Plan {
            batch,
            accum,
            units,
            steps_per_epoch,
            total,
            warmup: (p.resolved.warmup_ratio * total as f64).ceil() as usize,
            checkpointing: hp.gradient_checkpointing.unwrap_or(!cfg.device.is_cpu()),
        };
        let preference = match hp.preference {
            Some(settings) => {
                on(Update::Message(format!(
                    "Scoring {} preference pairs with the reference (the base, adapter off)",
                    p.train.len() + p.valid.len()
                )));
                let sets = (p.train.samples(), p.valid.samples());
                Some(PreferenceRun::new(
                    settings,
                    &model,
                    &lora,
                    sets,
                    batch,
                    &cfg.device,
                )?)
            }
            None => None,
        };
        let state_dir = cfg.output_dir.join("state");
        let st = checkpoint::load_state(&state_dir, &lora, &mut opt, &cfg.device)?.unwrap_or(
            ResumeState {
                step: 0,
                trained_tokens: 0,
                metrics: Vec::new(),
                checkpoints: Vec::new(),
                best: None,
                evaluations_since_best: 0,
                stopped_early: false,
            },
        );
        if hp.find_learning_rate && st.step == 0 {
            p.resolved.learning_rate = find_learning_rate(&model, &lora, &p, &plan, cfg, on)?;
        }
        let mut shown = p.resolved.apply(hp);
        if let Some(k) = p.auto_split {
            shown.evaluation.validation_split = Some(k as f64);
        }
        on(Update::Resolved(shown));
        if st.step > 0 {
            on(Update::Resumed {
                step: st.step,
                total,
            });
        } else {
            on(Update::Message(format!(
                "Training {} LoRA parameters on {} examples: {} epochs × {} steps (batch {} × {} \
                 accumulation){}",
                lora.parameter_count(),
                units,
                p.resolved.n_epochs,
                steps_per_epoch,
                batch,
                accum,
                if plan.checkpointing {
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
        let first_step = st.step;
        Ok(Self {
            cfg,
            p,
            spec,
            model,
            lora,
            opt,
            preference,
            plan,
            st,
            state_dir,
            base_answers,
            evaluation: None,
            started: Instant::now(),
            first_step,
        })
    }

    /// Whether the last step ended an epoch.
    fn epoch_end(&self) -> bool {
        self.st.step.is_multiple_of(self.plan.steps_per_epoch)
    }

    /// Whether training is over: every step done, or stopped early.
    fn ended(&self) -> bool {
        self.st.step >= self.plan.total || self.st.stopped_early
    }

    /// Whether the fine-tuned model is the best checkpoint rather than the last step.
    fn keeps_best(&self) -> bool {
        let e = &self.cfg.hyperparameters.evaluation;
        e.load_best_model_at_end.unwrap_or(true) && !self.p.valid.is_empty()
    }

    /// Track the lowest validation loss (saving its adapter to `best/`) and stop early when it
    /// has not improved for `early_stopping_patience` evaluations.
    fn track_best(
        &mut self,
        valid_loss: f32,
        on: &mut dyn FnMut(Update),
    ) -> Result<(), TrainError> {
        let step = self.st.step;
        if self.st.best.is_none_or(|b| valid_loss < b.valid_loss) {
            if self.keeps_best() {
                save_adapter(
                    self.cfg,
                    &self.lora,
                    &best_dir(&self.cfg.output_dir),
                    &self.spec,
                )?;
            }
            self.st.best = Some(Best { step, valid_loss });
            self.st.evaluations_since_best = 0;
            return Ok(());
        }
        self.st.evaluations_since_best += 1;
        let patience = self.cfg.hyperparameters.evaluation.early_stopping_patience;
        if let (Some(p), Some(best)) = (patience, self.st.best)
            && self.st.evaluations_since_best >= p
            && step < self.plan.total
        {
            self.st.stopped_early = true;
            on(Update::Message(format!(
                "Stopping early at step {step}/{}: the validation loss has not gone below {:.4} \
                 (step {}) for {p} evaluations",
                self.plan.total, best.valid_loss, best.step
            )));
        }
        Ok(())
    }

    /// The end of training: the best checkpoint's adapter restored when it is not the last
    /// step's (said in an event), then the generation evaluation with the model that is kept.
    fn conclude(&mut self, on: &mut dyn FnMut(Update)) -> Result<(), TrainError> {
        let last = self.st.step;
        if let Some(best) = self.st.best
            && self.keeps_best()
            && best.step != last
        {
            let file = best_dir(&self.cfg.output_dir).join(WEIGHTS_FILE);
            self.lora.load_peft(&file, &self.cfg.device)?;
            let last_loss = self.st.metrics.iter().rev().find_map(|r| r.valid_loss);
            on(Update::Message(format!(
                "The fine-tuned model is the checkpoint of step {} (validation loss {:.4}), not \
                 step {last}{}: the lowest validation loss (load_best_model_at_end)",
                best.step,
                best.valid_loss,
                last_loss.map_or(String::new(), |l| format!(" (validation loss {l:.4})"))
            )));
        }
        if self.p.eval_prompts.is_empty() || self.evaluation.is_some() {
            return Ok(());
        }
        on(Update::Message(format!(
            "Answering {} validation prompts with the fine-tuned model",
            self.p.eval_prompts.len()
        )));
        let tuned = answer_all(self.cfg, &self.p, &self.model)?;
        let scored = eval::score(&self.p.eval_prompts, &self.base_answers, &tuned);
        if let Some(row) = self.st.metrics.last_mut() {
            row.generation = Some(scored.1);
            on(Update::Metrics {
                row: row.clone(),
                total_steps: self.plan.total,
            });
        }
        self.evaluation = Some(scored);
        Ok(())
    }

    /// One optimizer step: the forward and backward passes of its micro-batches (seeded shuffle,
    /// dropout masks by step), clipping, the scheduled learning rate, AdamW.
    #[tracing::instrument(level = "debug", skip_all, fields(step = self.st.step + 1))]
    fn step(&mut self) -> Result<StepDone, TrainError> {
        let (cfg, plan) = (self.cfg, &self.plan);
        let hp = &cfg.hyperparameters;
        let step = self.st.step;
        let epoch = step / plan.steps_per_epoch;
        let order = data::epoch_order(plan.units, cfg.seed, epoch);
        let per_step = plan.batch * plan.accum;
        let k = step % plan.steps_per_epoch;
        let chunk = &order[k * per_step..((k + 1) * per_step).min(order.len())];
        let micro: Vec<&[usize]> = chunk.chunks(plan.batch).collect();
        let mut grads: Vec<Option<Tensor>> = vec![None; self.lora.vars().len()];
        let mut done = StepDone {
            loss_sum: 0.0,
            micro_batches: micro.len(),
            correct: 0,
            count: 0,
            lr: 0.0,
            pairs: PairStats::default(),
            tokens_before: self.st.trained_tokens,
            started: Instant::now(),
        };
        gpu_memory::reset_peak(&cfg.device);
        for (j, indices) in micro.iter().enumerate() {
            let samples: Vec<&Sample> = indices.iter().flat_map(|i| self.p.train.get(*i)).collect();
            let batch = Batch::new(&samples, &cfg.device)?;
            let rows = batch.input_ids.elem_count();
            let micro_batch = (step * plan.accum + j) as u64;
            let masks = self.model.dropout_masks(cfg.seed, micro_batch, rows)?;
            let noise = match hp.neftune_noise_alpha {
                Some(alpha) => {
                    Some(
                        self.model
                            .neftune_noise(alpha, cfg.seed, micro_batch, &batch.segments)?,
                    )
                }
                None => None,
            };
            let ctx = ForwardCtx {
                dropout: masks.as_ref(),
                embedding_noise: noise.as_ref(),
            };
            let scale = 1.0 / micro.len() as f64;
            let out = match &self.preference {
                Some(pref) => {
                    let pass = Pass {
                        model: &self.model,
                        lora: &self.lora,
                        batch: &batch,
                        ctx,
                        scale,
                    };
                    let out = pref.micro(&pass, indices, plan.checkpointing, &mut grads)?;
                    done.pairs.merge(&out.stats);
                    out.micro
                }
                None => loss_and_grads(
                    &self.model,
                    &self.lora,
                    &batch,
                    ctx,
                    scale,
                    plan.checkpointing,
                    &mut grads,
                )?,
            };
            if !out.loss.is_finite() {
                return Err(TrainError::NonFiniteLoss {
                    step: step + 1,
                    loss: out.loss,
                });
            }
            done.loss_sum += out.loss;
            (done.correct, done.count) = (done.correct + out.correct, done.count + out.count);
            self.st.trained_tokens += batch.tokens() as u64;
        }
        clip_grad_norm(&mut grads, hp.max_grad_norm)?;
        done.lr = learning_rate(
            self.p.resolved.learning_rate,
            hp.lr_scheduler_type,
            plan.warmup,
            step,
            plan.total,
        );
        self.opt.step(&grads, done.lr)?;
        self.st.step += 1;
        Ok(done)
    }

    /// The step's metrics: training figures, validation at logging steps and epoch ends, and at
    /// the last step the generation evaluation. The row is kept in the run's metrics.
    fn metrics_row(
        &mut self,
        done: StepDone,
        on: &mut dyn FnMut(Update),
    ) -> Result<MetricsRow, TrainError> {
        let (cfg, total) = (self.cfg, self.plan.total);
        let device = &cfg.device;
        let step_loss = done.loss_sum / done.micro_batches as f32;
        let mut row = MetricsRow {
            step: self.st.step,
            train_loss: self.window_mean(step_loss),
            step_loss: Some(step_loss),
            train_mean_token_accuracy: done.correct as f32 / done.count.max(1) as f32,
            valid_loss: None,
            valid_mean_token_accuracy: None,
            full_valid_loss: None,
            full_valid_mean_token_accuracy: None,
            learning_rate: Some(done.lr),
            tokens_per_second: Some(
                (self.st.trained_tokens - done.tokens_before) as f32
                    / done.started.elapsed().as_secs_f32().max(1e-6),
            ),
            rewards: None,
            peak_gpu_memory_bytes: gpu_memory::peak_bytes(device),
            generation: None,
        };
        let last = self.st.step == total;
        let valid = self.p.valid.samples();
        let evaluate_now = (self.logging_step() || self.epoch_end()) && !valid.is_empty();
        if let Some(pref) = &self.preference {
            let scored = match evaluate_now {
                true => Some(pref.validate(&self.model, valid, self.plan.batch, device)?),
                false => None,
            };
            row.valid_loss = scored.map(|v| v.loss as f32);
            if last {
                row.full_valid_loss = row.valid_loss;
            }
            row.rewards = Some(Rewards::of(&done.pairs, scored.as_ref()));
        } else if evaluate_now {
            let (l, a) = evaluate(&self.model, valid, self.plan.batch, device)?;
            (row.valid_loss, row.valid_mean_token_accuracy) = (Some(l), Some(a));
            if last {
                // Every evaluation covers the whole set; the last one is OpenAI's "full" figure.
                (row.full_valid_loss, row.full_valid_mean_token_accuracy) = (Some(l), Some(a));
            }
        }
        if let Some(loss) = row.valid_loss {
            self.track_best(loss, on)?;
            if self.st.stopped_early {
                (row.full_valid_loss, row.full_valid_mean_token_accuracy) =
                    (row.valid_loss, row.valid_mean_token_accuracy);
            }
        }
        self.st.metrics.push(row.clone());
        Ok(row)
    }

    /// The mean step loss over the steps since the last logging step, `step_loss` (this step's)
    /// included.
    fn window_mean(&self, step_loss: f32) -> f32 {
        let every = self.cfg.hyperparameters.logging_steps as usize;
        let window_start = (self.st.step - 1) / every * every;
        let earlier: Vec<f32> = self
            .st
            .metrics
            .iter()
            .rev()
            .take_while(|r| r.step > window_start)
            .map(|r| r.step_loss.unwrap_or(r.train_loss))
            .collect();
        (earlier.iter().sum::<f32>() + step_loss) / (earlier.len() + 1) as f32
    }

    /// Whether the last step is one that logs its metrics.
    fn logging_step(&self) -> bool {
        let every = self.cfg.hyperparameters.logging_steps as usize;
        self.st.step.is_multiple_of(every) || self.ended()
    }

    /// Tell `on` about the step: always its progress; at logging steps its metrics and the time
    /// left.
    fn report(&self, row: &MetricsRow, on: &mut dyn FnMut(Update)) {
        let (step, total) = (self.st.step, self.plan.total);
        on(Update::Step {
            step,
            total,
            loss: row.train_loss,
            tokens: self.st.trained_tokens,
        });
        // The last row's metrics event comes after the generation evaluation (`conclude`).
        let deferred = self.ended() && !self.p.eval_prompts.is_empty();
        if self.logging_step() && !deferred {
            on(Update::Metrics {
                row: row.clone(),
                total_steps: total,
            });
            let per_step = self.started.elapsed().as_secs_f64() / (step - self.first_step) as f64;
            on(Update::Estimate(per_step * (total - step) as f64));
        }
    }

    /// Write a checkpoint (pruning old ones) and, with it, the state to resume from: a worker
    /// killed later resumes here (optimizer moments included) instead of from step 0.
    fn checkpoint(
        &mut self,
        row: &MetricsRow,
        on: &mut dyn FnMut(Update),
    ) -> Result<(), TrainError> {
        save_checkpoint(
            self.cfg,
            &self.spec,
            &self.lora,
            &mut self.st,
            row,
            self.plan.steps_per_epoch,
            on,
        )?;
        self.save_state(on)
    }

    /// Save the state to resume from.
    fn save_state(&self, on: &mut dyn FnMut(Update)) -> Result<(), TrainError> {
        checkpoint::save_state(&self.state_dir, &self.lora, &self.opt, &self.st)?;
        on(Update::StateSaved(self.state_dir.clone()));
        Ok(())
    }
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

/// The learning-rate range test's rate, said in an event (the rate `auto` gives when the loss
/// never fell).
fn find_learning_rate(
    model: &CausalLm,
    lora: &LoraSet,
    p: &Prepared,
    plan: &Plan,
    cfg: &RunConfig,
    on: &mut dyn FnMut(Update),
) -> Result<f64, TrainError> {
    let hp = &cfg.hyperparameters;
    on(Update::Message(format!(
        "Learning-rate range test: up to {} steps from {:e} to {:e}",
        lr_find::STEPS,
        lr_find::LOWEST,
        lr_find::HIGHEST
    )));
    let probe = lr_find::Probe {
        model,
        lora,
        train: &p.train,
        batch: plan.batch * plan.accum,
        seed: cfg.seed,
        weight_decay: hp.weight_decay,
        max_grad_norm: hp.max_grad_norm,
        checkpointing: plan.checkpointing,
    };
    Ok(match probe.run()? {
        Some(found) => {
            on(Update::Message(format!(
                "Learning-rate range test: the smoothed loss was lowest ({:.4}) at {:.2e} after {} \
                 steps; training at a tenth of it, {:.2e}",
                found.lowest_loss, found.at_lowest_loss, found.steps, found.learning_rate
            )));
            found.learning_rate
        }
        None => {
            on(Update::Message(format!(
                "Learning-rate range test: the loss never fell; training at the auto rate {:.2e}",
                p.resolved.learning_rate
            )));
            p.resolved.learning_rate
        }
    })
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

/// Where the adapter with the lowest validation loss so far lives.
fn best_dir(output: &Path) -> PathBuf {
    output.join("best")
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
    super::report::write_loss_svg(
        &loss_svg,
        &st.metrics,
        cfg.hyperparameters.logging_steps as usize,
    )?;
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
