//! Fixtures shared by the test binaries: the generated tiny model with ten health Q&A pairs, a
//! training configuration on it, tensor comparisons, and the model an adapter directory makes.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use ferrotune::domain::hyperparameters::{AutoOr, Hyperparameters, LORA_MODULES, LoraSettings};
use ferrotune::model_dir::quant::Storage;
use ferrotune::model_dir::template::ChatTemplate;
use ferrotune::train::data::{self, Batch, Limits};
use ferrotune::train::lora::LoraSpec;
use ferrotune::train::model::{CausalLm, ForwardCtx};
use ferrotune::train::run::{self, RunConfig, RunEnd, RunOutcome, Update};
use ferrotune::train::tiny::{TinyArch, init_tiny};
use serde_json::{Value, json};

/// Ten short health Q&A pairs in the seed's alpaca format.
pub const QA: [(&str, &str); 10] = [
    (
        "What should I do for a mild headache?",
        "Rest and drink water.",
    ),
    (
        "How much water should adults drink?",
        "About two litres a day.",
    ),
    ("Can I exercise with a cold?", "Light exercise is fine."),
    ("How long should adults sleep?", "Seven to nine hours."),
    ("What helps a sore throat?", "Warm drinks and honey."),
    (
        "When is a fever serious?",
        "Above 39.5 C or over three days.",
    ),
    (
        "When should I wash my hands?",
        "Before meals and after the toilet.",
    ),
    (
        "Is ibuprofen fine on an empty stomach?",
        "Take it with food.",
    ),
    (
        "What is a normal resting pulse?",
        "60 to 100 beats a minute.",
    ),
    ("How can I lower stress?", "Walk daily and breathe slowly."),
];

/// Write the tiny model and the dataset into `dir`.
pub fn setup(dir: &Path, arch: TinyArch) {
    init_tiny(&dir.join("model"), arch, 0).unwrap();
    let records: Vec<_> = QA
        .iter()
        .map(|(q, a)| json!({"instruction": q, "input": "", "output": a}))
        .collect();
    std::fs::write(
        dir.join("train.json"),
        serde_json::to_string_pretty(&records).unwrap(),
    )
    .unwrap();
}

/// A run on the tiny model in `dir` (see [`setup`]).
pub fn config(dir: &Path, epochs: u32, lr: f64) -> RunConfig {
    RunConfig {
        model_dir: dir.join("model"),
        base_model_name: "ferrotune-tiny".into(),
        train_file: dir.join("train.json"),
        valid_file: None,
        template: None,
        hyperparameters: Hyperparameters {
            n_epochs: AutoOr::Value(epochs),
            batch_size: AutoOr::Value(2),
            learning_rate: Some(lr),
            lora: LoraSettings {
                dropout: 0.05,
                ..Hyperparameters::default().lora
            },
            logging_steps: 5,
            save_steps: 1000,
            // The trainer's mechanics, not `auto`, are what these runs test.
            warmup_ratio: AutoOr::Value(0.0),
            ..Default::default()
        },
        seed: 7,
        output_dir: dir.join("out"),
        device: Device::Cpu,
        dtype: DType::F32,
        init_adapter: None,
    }
}

/// Run `cfg` to the end.
pub fn finish(cfg: &RunConfig) -> RunOutcome {
    match run::train(cfg, &|| false, &mut |_| {}).unwrap() {
        RunEnd::Finished(out) => out,
        RunEnd::Stopped { .. } => panic!("stopped without being asked"),
    }
}

/// What a finished run said along the way: its messages and the hyperparameters it resolved.
pub struct Noted {
    /// The run's outcome.
    pub out: RunOutcome,
    /// Every `Update::Message`, in order.
    pub messages: Vec<String>,
    /// The `Update::Resolved` hyperparameters.
    pub resolved: Hyperparameters,
}

/// Train `cfg` to the end, keeping its messages and resolved hyperparameters.
pub fn finish_noting(cfg: &RunConfig) -> Noted {
    let (mut messages, mut resolved) = (Vec::new(), None);
    let end = run::train(cfg, &|| false, &mut |u| match u {
        Update::Message(m) => messages.push(m),
        Update::Resolved(hp) => resolved = Some(hp),
        _ => {}
    })
    .unwrap();
    let RunEnd::Finished(out) = end else {
        panic!("stopped without being asked")
    };
    Noted {
        out,
        messages,
        resolved: resolved.expect("the run resolved its hyperparameters"),
    }
}

/// Rank 8, alpha 32, no dropout, all seven projections.
pub fn spec() -> LoraSpec {
    LoraSpec {
        rank: 8,
        alpha: 32.0,
        dropout: 0.0,
        targets: LORA_MODULES.map(String::from).to_vec(),
    }
}

/// The first two training examples as a batch.
pub fn first_batch(dir: &Path, model: &CausalLm) -> Batch {
    let samples = samples(dir, 2);
    Batch::new(&samples.iter().collect::<Vec<_>>(), model.device()).unwrap()
}

/// The first `n` training examples, encoded.
pub fn samples(dir: &Path, n: usize) -> Vec<data::Sample> {
    let tok = data::load_tokenizer(&dir.join("model")).unwrap();
    let template = ChatTemplate::from_model_dir(&dir.join("model")).unwrap();
    let examples = data::read_examples(&dir.join("train.json")).unwrap();
    let limits = Limits {
        max_length: 512,
        max_source_length: None,
        max_target_length: None,
    };
    examples[..n]
        .iter()
        .map(|e| data::encode(e, &template, &tok, limits).unwrap().unwrap())
        .collect()
}

/// The largest absolute value of `t`.
pub fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Largest absolute difference relative to the largest magnitude of `want`.
pub fn rel_err(got: &Tensor, want: &Tensor) -> f32 {
    max_abs(&(got - want).unwrap()) / max_abs(want).max(1e-12)
}

/// f32 logits of the model in `model_dir` on `ids`, with the PEFT `adapter` applied (rank 8,
/// alpha 32, all seven projections) as the trainer computes them.
pub fn model_logits(model_dir: &Path, adapter: Option<&Path>, ids: &[u32]) -> Tensor {
    let spec = spec();
    let (model, lora) = CausalLm::load(
        model_dir,
        adapter.map(|_| &spec),
        0,
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    if let Some(a) = adapter {
        lora.load_peft(&a.join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    }
    forward(&model, ids)
}

/// `model`'s f32 logits on `ids`, `[1, len, vocab]`.
pub fn forward(model: &CausalLm, ids: &[u32]) -> Tensor {
    let input = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    model
        .forward(&input, &[(0, ids.len())], ForwardCtx::default())
        .unwrap()
}

/// The adapter directory a job wrote under `dir`.
pub fn find_adapter(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.ends_with("adapter") && path.join("adapter_model.safetensors").exists() {
            return Some(path);
        }
        if path.is_dir()
            && let Some(found) = find_adapter(&path)
        {
            return Some(found);
        }
    }
    None
}

/// `base_dir` stored as `storage` with the trained adapter in `adapter` loaded: the model the
/// trainer's forward predicts with.
pub fn trained_model(
    base_dir: &std::path::Path,
    adapter: &std::path::Path,
    storage: Storage,
) -> CausalLm {
    let (model, lora) = CausalLm::load_stored(
        base_dir,
        Some(&spec_of(adapter)),
        0,
        &Device::Cpu,
        DType::F32,
        storage,
    )
    .unwrap();
    lora.load_peft(&adapter.join("adapter_model.safetensors"), &Device::Cpu)
        .unwrap();
    model
}

/// A user turn saying `text`.
pub fn user(text: &str) -> ferrotune::domain::dataset::Turn {
    ferrotune::domain::dataset::Turn::new(ferrotune::domain::dataset::Role::User, text)
}

/// The LoRA spec an adapter directory was written with.
pub fn spec_of(adapter: &std::path::Path) -> ferrotune::train::lora::LoraSpec {
    let cfg: Value = serde_json::from_str(
        &std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    ferrotune::train::lora::LoraSpec {
        rank: cfg["r"].as_u64().unwrap() as usize,
        alpha: cfg["lora_alpha"].as_f64().unwrap(),
        dropout: 0.0,
        targets: cfg["target_modules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_owned())
            .collect(),
    }
}

/// The token ids the export tests compare logits on.
pub fn probe_ids() -> Vec<u32> {
    (0..10).map(|i| (i * 41 + 3) % 250).collect()
}

/// [`model_logits`] on [`probe_ids`] with `adapter`.
pub fn adapted_logits(model_dir: &Path, adapter: &Path) -> Tensor {
    model_logits(model_dir, Some(adapter), &probe_ids())
}

/// [`model_logits`] on [`probe_ids`] without an adapter.
pub fn plain_logits(model_dir: &Path) -> Tensor {
    model_logits(model_dir, None, &probe_ids())
}
