//! `ferrotune train --config FILE`: the trainer without a server, configured with
//! LLaMA-Factory's keys (JSON or YAML), with a progress bar.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value, json};

use crate::config::{parse_device, parse_dtype};
use crate::domain::hyperparameters::Hyperparameters;
use crate::serve::measure::median;
use crate::train::run::{self, RunConfig, RunEnd, Update};

/// Keys we map onto the trainer.
const MAPPED: [&str; 30] = [
    "model_name_or_path",
    "dataset",
    "data_path",
    "dataset_dir",
    "template",
    "finetuning_type",
    "lora_rank",
    "lora_alpha",
    "lora_dropout",
    "lora_target",
    "learning_rate",
    "lr",
    "num_train_epochs",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "lr_scheduler_type",
    "warmup_ratio",
    "max_source_length",
    "max_target_length",
    "cutoff_len",
    "logging_steps",
    "save_steps",
    "plot_loss",
    "output_dir",
    "fp16",
    "bf16",
    "seed",
    "gradient_checkpointing",
    "use_gradient_checkpointing",
    "disable_gradient_checkpointing",
];
/// Keys we understand and that need nothing from us.
const ACCEPTED: [&str; 9] = [
    "val_size",
    "stage",
    "do_train",
    "weight_decay",
    "max_grad_norm",
    "overwrite_output_dir",
    "overwrite_cache",
    "device",
    "report_to",
];

/// Read a JSON or YAML file into a JSON object.
fn read_config(path: &Path) -> anyhow::Result<Map<String, Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value: Value = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text)?
    } else {
        serde_yaml::from_str(&text)?
    };
    match value {
        Value::Object(map) => Ok(map),
        _ => bail!("{} must hold a mapping of keys", path.display()),
    }
}

/// Turn a LLaMA-Factory config into a run configuration.
pub fn run_config(path: &Path) -> anyhow::Result<RunConfig> {
    let cfg = read_config(path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    for key in cfg.keys() {
        if !MAPPED.contains(&key.as_str()) && !ACCEPTED.contains(&key.as_str()) {
            tracing::warn!("config key '{key}' is not supported and is ignored");
        }
    }
    let s = |k: &str| cfg.get(k).and_then(Value::as_str).map(str::to_owned);
    let rel = |p: String| {
        let p = PathBuf::from(p);
        if p.is_absolute() { p } else { base.join(p) }
    };
    if let Some(kind) = s("finetuning_type").filter(|t| t != "lora") {
        bail!("finetuning_type '{kind}' is not supported; only lora");
    }
    if let Some(stage) = s("stage").filter(|t| t != "sft") {
        bail!("stage '{stage}' is not supported; only sft");
    }
    let model_dir = rel(s("model_name_or_path").context("model_name_or_path is required")?);
    let dataset = s("data_path")
        .or_else(|| s("dataset"))
        .context("dataset (a file path) is required")?;
    let train_file = match s("dataset_dir") {
        Some(dir) => rel(dir).join(dataset),
        None => rel(dataset),
    };
    let mut hp = Map::new();
    let mut copy = |from: &str, to: &str| {
        if let Some(v) = cfg.get(from) {
            hp.insert(to.to_owned(), v.clone());
        }
    };
    for (from, to) in [
        ("lora_rank", "lora_rank"),
        ("lora_alpha", "lora_alpha"),
        ("lora_dropout", "lora_dropout"),
        ("lora_target", "lora_target"),
        ("lr", "learning_rate"),
        ("learning_rate", "learning_rate"),
        ("per_device_train_batch_size", "batch_size"),
        ("gradient_accumulation_steps", "gradient_accumulation_steps"),
        ("lr_scheduler_type", "lr_scheduler_type"),
        ("warmup_ratio", "warmup_ratio"),
        ("max_source_length", "max_source_length"),
        ("max_target_length", "max_target_length"),
        ("cutoff_len", "max_length"),
        ("logging_steps", "logging_steps"),
        ("save_steps", "save_steps"),
        ("weight_decay", "weight_decay"),
        ("max_grad_norm", "max_grad_norm"),
    ] {
        copy(from, to);
    }
    if let Some(v) = cfg.get("learning_rate").and_then(Value::as_str) {
        // YAML often writes 1.0e-4 unquoted but some configs quote it.
        hp.insert(
            "learning_rate".into(),
            json!(v.parse::<f64>().context("learning_rate")?),
        );
    }
    let flag = |k: &str| cfg.get(k).and_then(Value::as_bool);
    if let Some(on) = flag("gradient_checkpointing")
        .or(flag("use_gradient_checkpointing"))
        .or(flag("disable_gradient_checkpointing").map(|off| !off))
    {
        hp.insert("gradient_checkpointing".into(), json!(on));
    }
    if let Some(e) = cfg.get("num_train_epochs").and_then(Value::as_f64) {
        hp.insert("n_epochs".into(), json!(e.ceil().max(1.0) as u64));
    }
    let hyperparameters = Hyperparameters::default()
        .apply(&Value::Object(hp), "config")
        .map_err(|e| anyhow::anyhow!("{}: {}", e.param.clone().unwrap_or_default(), e.message))?;
    let device = parse_device(&s("device").unwrap_or_else(|| "auto".into()))?;
    // On a GPU: f16 when asked for, f32 only when bf16 is explicitly off, else bf16.
    let dtype = match (&device, flag("bf16"), flag("fp16")) {
        (candle_core::Device::Cpu, bf16, fp16) => {
            if bf16 == Some(true) || fp16 == Some(true) {
                tracing::warn!("bf16/fp16 requested on CPU: training in f32");
            }
            candle_core::DType::F32
        }
        (_, _, Some(true)) => parse_dtype("f16")?,
        (_, Some(false), _) => candle_core::DType::F32,
        _ => parse_dtype("bf16")?,
    };
    Ok(RunConfig {
        base_model_name: model_dir.display().to_string(),
        model_dir,
        train_file,
        valid_file: None,
        valid_split: cfg.get("val_size").and_then(Value::as_f64),
        template: s("template").filter(|t| t != "default"),
        hyperparameters,
        seed: cfg.get("seed").and_then(Value::as_u64).unwrap_or(42),
        output_dir: rel(s("output_dir").unwrap_or_else(|| "output".into())),
        device,
        dtype,
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
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let _ = ctrlc_flag(flag);
    // Without a terminal the bar is hidden: print the lines to stderr instead.
    let say = |line: String| {
        if bar.is_hidden() {
            eprintln!("{line}");
        } else {
            bar.println(line);
        }
    };
    let end = run::train(
        &cfg,
        &|| stop.load(std::sync::atomic::Ordering::Relaxed),
        &mut |u| match u {
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
            Update::Metrics { row, total_steps } => say(format!(
                "step {}/{total_steps}: train_loss={:.4} accuracy={:.3}{}",
                row.step,
                row.train_loss,
                row.train_accuracy,
                row.valid_loss
                    .map(|v| format!(" valid_loss={v:.4}"))
                    .unwrap_or_default()
            )),
            Update::Checkpoint { dir, .. } => say(format!("checkpoint: {}", dir.display())),
            _ => {}
        },
    )?;
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

/// Peak resident memory of this process (Linux `VmHWM`), in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Set `flag` on Ctrl-C (SIGINT) from a small background runtime.
fn ctrlc_flag(flag: std::sync::Arc<std::sync::atomic::AtomicBool>) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        rt.block_on(async {
            if tokio::signal::ctrl_c().await.is_ok() {
                flag.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        })
    });
    Ok(())
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
            (hp.lora_rank, hp.lora_alpha, hp.lora_dropout),
            (8, 32.0, 0.05)
        );
        assert_eq!(hp.lora_target, vec!["q_proj", "v_proj"]);
        assert_eq!(hp.learning_rate, Some(1e-4));
        assert_eq!(
            (hp.n_epochs, hp.batch_size),
            (AutoOr::Value(10), AutoOr::Value(2))
        );
        assert_eq!((hp.gradient_accumulation_steps, hp.max_length), (4, 512));
        assert_eq!(hp.lr_scheduler_type, LrScheduler::Cosine);
        assert_eq!((cfg.seed, cfg.valid_split), (3, Some(0.1)));
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
