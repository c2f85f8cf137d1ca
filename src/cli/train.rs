//! `ferrotune train --config FILE`: the trainer without a server, configured with
//! LLaMA-Factory's keys (JSON or YAML), with a progress bar.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use super::llama_factory::LlamaFactoryConfig;
use crate::config::parse_device;
use crate::domain::hyperparameters::Hyperparameters;
use crate::domain::preference::PreferenceSettings;
use crate::serve::measure::median;
use crate::train::run::{self, Evaluation, RunConfig, RunEnd, Update};

/// Turn a LLaMA-Factory config into a run configuration.
pub fn run_config(path: &Path) -> anyhow::Result<RunConfig> {
    let cfg = LlamaFactoryConfig::read(path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let rel = |p: &str| {
        let p = PathBuf::from(p);
        if p.is_absolute() { p } else { base.join(p) }
    };
    if let Some(kind) = cfg.finetuning_type.as_deref().filter(|t| *t != "lora") {
        bail!("finetuning_type '{kind}' is not supported; only lora");
    }
    let preference = match cfg.stage.as_deref().unwrap_or("sft") {
        "sft" => None,
        "dpo" => Some(PreferenceSettings::default()),
        other => bail!("stage '{other}' is not supported; use sft or dpo"),
    };
    let model = cfg.model_name_or_path.as_deref();
    let model_dir = rel(model.context("model_name_or_path is required")?);
    let dataset = cfg
        .dataset
        .as_deref()
        .context("dataset (a file path) is required")?;
    let data_file = |name: &str| match cfg.dataset_dir.as_deref() {
        Some(dir) => rel(dir).join(name),
        None => rel(name),
    };
    let train_file = data_file(dataset);
    let valid_file = cfg.eval_dataset.as_deref().map(data_file);
    if valid_file.is_some() && cfg.val_size.is_some_and(|v| v > 0.0) {
        bail!("give eval_dataset or val_size, not both");
    }
    let start = Hyperparameters {
        preference,
        ..Hyperparameters::default()
    };
    let hyperparameters = start
        .apply(&Value::Object(cfg.hyperparameters()), "config")
        .map_err(|e| anyhow::anyhow!("{}: {}", e.param.clone().unwrap_or_default(), e.message))?;
    let device = parse_device(cfg.device.as_deref().unwrap_or("auto"))?;
    // On a GPU: f16 when asked for, f32 only when bf16 is explicitly off, else bf16.
    let dtype = match (&device, cfg.bf16, cfg.fp16) {
        (candle_core::Device::Cpu, bf16, fp16) => {
            if bf16 == Some(true) || fp16 == Some(true) {
                tracing::warn!("bf16/fp16 requested on CPU: training in f32");
            }
            candle_core::DType::F32
        }
        (_, _, Some(true)) => candle_core::DType::F16,
        (_, Some(false), _) => candle_core::DType::F32,
        _ => candle_core::DType::BF16,
    };
    Ok(RunConfig {
        base_model_name: model_dir.display().to_string(),
        model_dir,
        train_file,
        valid_file,
        template: cfg.template.clone().filter(|t| t != "default"),
        hyperparameters,
        seed: cfg.seed.unwrap_or(42),
        output_dir: rel(cfg.output_dir.as_deref().unwrap_or("output")),
        device,
        dtype,
        init_adapter: cfg.adapter_name_or_path.as_deref().map(rel),
    })
}

/// Run the trainer with a progress bar; Ctrl-C saves state so the same command resumes.
pub fn run(path: &Path) -> anyhow::Result<()> {
    let cfg = run_config(path)?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = std::time::Instant::now();
    // (time, tokens so far) at the end of every step: throughput is measured from the end of the
    // first step (warm-up excluded), overall and as the median of the steps.
    let marks: std::cell::RefCell<Vec<(std::time::Instant, u64)>> = Default::default();
    let stop = Arc::new(AtomicBool::new(false));
    stop_on_signals(&stop);
    // Without a terminal the bar is hidden: print the lines to stderr instead.
    let say = |line: String| {
        if bar.is_hidden() {
            eprintln!("{line}");
        } else {
            bar.println(line);
        }
    };
    let end = run::train(&cfg, &|| stop.load(Ordering::Relaxed), &mut |u| match u {
        Update::Step {
            step,
            total,
            loss,
            tokens,
        } => {
            bar.set_length(total as u64);
            bar.set_position(step as u64);
            let rate = tokens as f64 / started.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!("loss {loss:.4}  {rate:.0} tok/s"));
            marks.borrow_mut().push((std::time::Instant::now(), tokens));
        }
        Update::Message(m) => say(m),
        Update::Resumed { step, total } => say(format!("Resuming from step {step}/{total}")),
        Update::Metrics { row, total_steps } => say(format!(
            "step {}/{total_steps}: train_loss={:.4} accuracy={:.3}{}",
            row.step,
            row.train_loss,
            row.train_mean_token_accuracy,
            row.valid_loss
                .map(|v| format!(" valid_loss={v:.4}"))
                .unwrap_or_default()
        )),
        Update::Checkpoint { dir, .. } => say(format!("checkpoint: {}", dir.display())),
        _ => {}
    })?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    match end {
        RunEnd::Finished(out) => {
            let steps = out.metrics.len();
            println!(
                "trained {steps} steps, {} tokens in {secs:.2} s; final loss {:.4}",
                out.trained_tokens,
                out.metrics.last().map(|m| m.train_loss).unwrap_or(f32::NAN)
            );
            let marks = marks.borrow();
            let rate = |a: &(std::time::Instant, u64), b: &(std::time::Instant, u64)| {
                (b.1 - a.1) as f64 / (b.0 - a.0).as_secs_f64().max(1e-9)
            };
            if let (Some(first), Some(last)) = (marks.first(), marks.last())
                && marks.len() > 1
            {
                println!("steady_tokens_per_s={:.1}", rate(first, last));
                let per_step = marks.windows(2).map(|w| rate(&w[0], &w[1])).collect();
                println!("median_step_tokens_per_s={:.1}", median(per_step));
            }
            if let Some(peak) = out
                .metrics
                .iter()
                .filter_map(|m| m.peak_gpu_memory_bytes)
                .max()
            {
                println!("peak_gpu_memory_mib={:.1}", peak as f64 / 1048576.0);
            }
            if let Some(kib) = peak_rss_kib() {
                println!("peak_rss_mib={:.1}", kib as f64 / 1024.0);
            }
            if let Some(e) = &out.evaluation {
                print_evaluation(e);
            }
            println!("adapter: {}", out.adapter_dir.display());
            println!("metrics: {}", out.metrics_csv.display());
            println!("loss curve: {}", out.loss_svg.display());
        }
        RunEnd::Stopped { step } => {
            println!("stopped at step {step}; run the same command to resume")
        }
    }
    Ok(())
}

/// The generation evaluation: a few answers, then base and fine-tuned scores side by side.
fn print_evaluation(e: &Evaluation) {
    let short = |t: &str| {
        let one_line = t.split_whitespace().collect::<Vec<_>>().join(" ");
        match one_line.char_indices().nth(100) {
            Some((i, _)) => format!("{}…", &one_line[..i]),
            None => one_line,
        }
    };
    for r in e.records.iter().take(3) {
        println!("Q: {}", short(&r.prompt));
        println!("  reference:  {}", short(&r.reference));
        println!("  base:       {}", short(&r.base_answer));
        println!("  fine-tuned: {}", short(&r.fine_tuned_answer));
    }
    let (b, f) = (e.metrics.base, e.metrics.fine_tuned);
    println!("generation on {} validation prompts:", e.metrics.samples);
    println!("  {:<8} {:>8} {:>11}", "metric", "base", "fine-tuned");
    for (name, x, y) in [
        ("rouge1", b.rouge1, f.rouge1),
        ("rouge2", b.rouge2, f.rouge2),
        ("rougeL", b.rouge_l, f.rouge_l),
        ("bleu4", b.bleu4, f.bleu4),
    ] {
        println!("  {name:<8} {x:>8.4} {y:>11.4}");
    }
    println!("eval: {}", e.jsonl.display());
}

/// Peak resident memory of this process (Linux `VmHWM`), in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Set `flag` on Ctrl-C (SIGINT) or SIGTERM; the training loop polls it and stops cleanly.
fn stop_on_signals(flag: &Arc<AtomicBool>) {
    use signal_hook::consts::{SIGINT, SIGTERM};
    for signal in [SIGINT, SIGTERM] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(flag)) {
            tracing::warn!("cannot watch signal {signal}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::hyperparameters::{AutoOr, LrScheduler};

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("train.yaml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn llama_factory_keys_map_onto_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "model_name_or_path: m\ndataset: d.json\ntemplate: qwen\nfinetuning_type: lora\n\
             lora_rank: 8\nlora_alpha: 32\nlora_dropout: 0.05\nlora_target: q_proj,v_proj\n\
             learning_rate: 1.0e-4\nnum_train_epochs: 10.0\nper_device_train_batch_size: 2\n\
             gradient_accumulation_steps: 4\nlr_scheduler_type: cosine\ncutoff_len: 512\n\
             logging_steps: 10\nsave_steps: 100\nplot_loss: true\noutput_dir: out\nfp16: true\n\
             seed: 3\nval_size: 0.1\nmystery: 1\nuse_gradient_checkpointing: true\n",
        );
        let cfg = run_config(&path).unwrap();
        let hp = &cfg.hyperparameters;
        assert_eq!(cfg.model_dir, dir.path().join("m"));
        assert_eq!(cfg.train_file, dir.path().join("d.json"));
        assert_eq!(cfg.template.as_deref(), Some("qwen"));
        assert_eq!(
            (hp.lora.rank, hp.lora.alpha, hp.lora.dropout),
            (8, 32.0, 0.05)
        );
        assert_eq!(hp.lora.target, vec!["q_proj", "v_proj"]);
        assert_eq!(hp.learning_rate, Some(1e-4));
        assert_eq!(
            (hp.n_epochs, hp.batch_size),
            (AutoOr::Value(10), AutoOr::Value(2))
        );
        assert_eq!((hp.gradient_accumulation_steps, hp.max_length), (4, 512));
        assert_eq!(hp.lr_scheduler_type, LrScheduler::Cosine);
        assert_eq!(
            (cfg.seed, cfg.hyperparameters.evaluation.validation_split),
            (3, Some(0.1))
        );
        assert_eq!(hp.gradient_checkpointing, Some(true));
        assert_eq!(
            cfg.dtype,
            candle_core::DType::F32,
            "fp16 on CPU falls back to f32"
        );
    }

    #[test]
    fn unsupported_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let full = write(
            dir.path(),
            "model_name_or_path: m\ndataset: d\nfinetuning_type: full\n",
        );
        assert!(
            run_config(&full)
                .unwrap_err()
                .to_string()
                .contains("only lora")
        );
        let bad = write(
            dir.path(),
            "model_name_or_path: m\ndataset: d\nlora_rank: 0\n",
        );
        assert!(
            run_config(&bad)
                .unwrap_err()
                .to_string()
                .contains("lora_rank")
        );
        let missing = write(dir.path(), "dataset: d\n");
        assert!(run_config(&missing).is_err());
    }
}
