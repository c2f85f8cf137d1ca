//! Our candle Llama/Qwen2 with LoRA against PyTorch + transformers + PEFT on the same weights,
//! adapter and batch: logits, loss and every LoRA gradient. Fixtures come from
//! `scripts/parity/make_fixtures.py` (see tests/fixtures/parity/README.md).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use ferrotune::model_dir::quant::{self, Quantization, Storage};
use ferrotune::train::data::IGNORE;
use ferrotune::train::lora::{LoraSet, LoraSpec};
use ferrotune::train::loss::causal_lm_loss;
use ferrotune::train::model::{CausalLm, ForwardCtx};

use crate::helpers::fixtures::rel_err;

fn fixture(arch: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/parity")
        .join(arch)
}

/// The fixture's padded batch packed as the trainer packs a micro-batch: each row's real tokens
/// back to back (see `Batch`), with the flat `[b·t]` indices of those tokens.
struct Packed {
    ids: Tensor,
    segments: Vec<(usize, usize)>,
    labels: Vec<Vec<i64>>,
    real: Tensor,
}

impl Packed {
    /// `t` `[b, t, …]` at the real tokens: `[tokens, …]`.
    fn at_real(&self, t: &Tensor) -> Tensor {
        t.flatten_to(1)
            .unwrap()
            .index_select(&self.real, 0)
            .unwrap()
    }
}

/// The fixture's expected tensors and its batch, packed.
fn fixture_batch(dir: &std::path::Path, dev: &Device) -> (HashMap<String, Tensor>, Packed) {
    let expected: HashMap<String, Tensor> =
        candle_core::safetensors::load(dir.join("expected.safetensors"), dev).unwrap();
    let ids = expected["input_ids"].to_vec2::<i64>().unwrap();
    let mask = expected["attention_mask"].to_vec2::<i64>().unwrap();
    let labels = expected["labels"].to_vec2::<i64>().unwrap();
    let t = ids[0].len();
    let (mut flat, mut packed_labels, mut segments, mut real) = (vec![], vec![], vec![], vec![]);
    for (r, row) in ids.iter().enumerate() {
        let len = mask[r].iter().filter(|m| **m == 1).count();
        segments.push((flat.len(), len));
        flat.extend(row[..len].iter().map(|v| *v as u32));
        packed_labels.push(IGNORE);
        packed_labels.extend_from_slice(&labels[r][1..len]);
        real.extend((0..len).map(|i| (r * t + i) as u32));
    }
    let n = flat.len();
    let packed = Packed {
        ids: Tensor::from_vec(flat, (1, n), dev).unwrap(),
        segments,
        labels: vec![packed_labels],
        real: Tensor::from_vec(real, n, dev).unwrap(),
    };
    (expected, packed)
}

/// The fixtures' adapter: rank 4, alpha 8, all seven projections.
fn fixture_spec() -> LoraSpec {
    LoraSpec {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        targets: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
        .map(String::from)
        .to_vec(),
    }
}

fn check(arch: &str) {
    let dir = fixture(arch);
    let dev = Device::Cpu;
    let spec = fixture_spec();
    let (model, lora) =
        CausalLm::load(&dir.join("model"), Some(&spec), 0, &dev, DType::F32).unwrap();
    lora.load_peft(&dir.join("adapter/adapter_model.safetensors"), &dev)
        .unwrap();
    let (expected, batch) = fixture_batch(&dir, &dev);

    let logits = model
        .forward(&batch.ids, &batch.segments, ForwardCtx::default())
        .unwrap();
    let err = rel_err(
        &logits.squeeze(0).unwrap(),
        &batch.at_real(&expected["logits"]),
    );
    eprintln!("{arch}: logits relative error {err:.2e}");
    assert!(err <= 1e-4, "{arch}: logits relative error {err}");

    let out = causal_lm_loss(&logits, &batch.labels).unwrap();
    let loss = out.loss.to_scalar::<f32>().unwrap();
    let want = expected["loss"].to_vec1::<f32>().unwrap()[0];
    assert!(
        ((loss - want) / want).abs() <= 1e-4,
        "{arch}: loss {loss} vs {want}"
    );

    let grads = out.loss.backward().unwrap();
    let (worst, checked) =
        check_lora_grads(arch, &lora, |_, var| grads.get(var).cloned(), &expected, "");
    eprintln!("{arch}: loss {loss} vs {want}; worst gradient relative error {worst:.2e}");
    assert_eq!(checked, 28);
}

/// Every LoRA gradient (`grad(i, tensor)` for the i-th of [`LoraSet::named_tensors`]) against
/// `expected["{prefix}grad.{name}"]` to 1e-4 relative: the worst error and how many were checked.
fn check_lora_grads(
    label: &str,
    lora: &LoraSet,
    grad: impl Fn(usize, &Tensor) -> Option<Tensor>,
    expected: &HashMap<String, Tensor>,
    prefix: &str,
) -> (f32, usize) {
    let mut worst = 0f32;
    let named = lora.named_tensors();
    for (i, (name, var)) in named.iter().enumerate() {
        let g = grad(i, var).unwrap_or_else(|| panic!("{label}: no gradient for {name}"));
        let err = rel_err(&g, &expected[&format!("{prefix}grad.{name}")]);
        assert!(
            err <= 1e-4,
            "{label}: gradient of {name} relative error {err}"
        );
        worst = worst.max(err);
    }
    (worst, named.len())
}

/// Write an adapter with our PEFT writer, and our logits with it applied, for
/// `scripts/parity/make_fixtures.py verify-adapter` (run by scripts/parity/check_our_adapter.sh).
#[test]
#[ignore = "produces files for the PyTorch check; run by scripts/parity/check_our_adapter.sh"]
fn export_our_adapter_for_peft() {
    let out_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/parity-export");
    for arch in ["llama", "qwen2"] {
        let dir = fixture(arch);
        let dev = Device::Cpu;
        let spec = LoraSpec {
            rank: 4,
            alpha: 8.0,
            dropout: 0.0,
            targets: ["q_proj", "v_proj", "down_proj"].map(String::from).to_vec(),
        };
        let (model, lora) =
            CausalLm::load(&dir.join("model"), Some(&spec), 3, &dev, DType::F32).unwrap();
        for a in &lora.adapters {
            a.b.set(&Tensor::randn(0f32, 0.2, a.b.dims(), &dev).unwrap())
                .unwrap();
        }
        let out = out_root.join(arch);
        lora.save_peft(&out.join("adapter"), &spec, "fixture")
            .unwrap();
        // Both rows whole (padding ids as tokens), so PyTorch checks every position.
        let expected: HashMap<String, Tensor> =
            candle_core::safetensors::load(dir.join("expected.safetensors"), &dev).unwrap();
        let ids = expected["input_ids"].to_dtype(DType::U32).unwrap();
        let (b, t) = ids.dims2().unwrap();
        let segments: Vec<_> = (0..b).map(|r| (r * t, t)).collect();
        let logits = model
            .forward(
                &ids.reshape((1, b * t)).unwrap(),
                &segments,
                ForwardCtx::default(),
            )
            .unwrap()
            .reshape((b, t, ()))
            .unwrap();
        let tensors = HashMap::from([
            ("input_ids".to_owned(), expected["input_ids"].clone()),
            (
                "attention_mask".to_owned(),
                Tensor::ones((b, t), DType::I64, &dev).unwrap(),
            ),
            ("logits".to_owned(), logits),
        ]);
        ferrotune::train::tensor_file::write_safetensors(&out.join("ours.safetensors"), &tensors)
            .unwrap();
    }
}

#[test]
fn llama_with_lora_matches_pytorch_peft() {
    check("llama");
}

#[test]
fn qwen2_with_lora_matches_pytorch_peft() {
    check("qwen2");
}

/// QLoRA against PEFT: the fixture adapter over the base stored in NF4 (double-quantized scales)
/// gives the logits PEFT gives over that base dequantized — the weights serving merges into —
/// and our round trip is the one `scripts/parity/qlora_reference.py` computes independently.
#[test]
fn a_qlora_adapter_matches_pytorch_peft_over_the_dequantized_base() {
    let dir = fixture("llama");
    let dev = Device::Cpu;
    let how = Quantization::Nf4 { double: true };
    let (model, lora) = CausalLm::load_stored(
        &dir.join("model"),
        Some(&fixture_spec()),
        0,
        &dev,
        DType::F32,
        Storage::Quantize(how),
    )
    .unwrap();
    lora.load_peft(&dir.join("adapter/adapter_model.safetensors"), &dev)
        .unwrap();
    let reference: HashMap<String, Tensor> =
        candle_core::safetensors::load(dir.join("qlora_nf4.safetensors"), &dev).unwrap();
    let (expected, batch) = fixture_batch(&dir, &dev);
    let logits = model
        .forward(&batch.ids, &batch.segments, ForwardCtx::default())
        .unwrap()
        .squeeze(0)
        .unwrap();
    let err = rel_err(&logits, &batch.at_real(&reference["logits"]));
    eprintln!("QLoRA nf4: logits relative error {err:.2e} against PEFT");
    assert!(err <= 1e-4, "logits relative error {err}");
    // Quantization mattered: the dense base's logits are elsewhere.
    assert!(rel_err(&expected["logits"], &reference["logits"]) > 1e-3);
    let base: HashMap<String, Tensor> =
        candle_core::safetensors::load(dir.join("model/model.safetensors"), &dev).unwrap();
    let mut checked = 0;
    for (key, want) in &reference {
        let Some(name) = key.strip_prefix("dequantized.") else {
            continue;
        };
        let ours = quant::round_trip(name, &base[name], how).unwrap();
        let err = rel_err(&ours, want);
        assert!(err <= 1e-6, "{name}: round trip differs by {err}");
        checked += 1;
    }
    assert_eq!(checked, 7);
}

/// DPO, IPO, SimPO and the SFT term against `scripts/parity/dpo_reference.py` (PyTorch + PEFT,
/// the reference as PEFT's `disable_adapter()`): reference and policy log-probabilities, the
/// loss and every LoRA gradient, on two pairs packed in one batch.
#[test]
fn preference_losses_and_gradients_match_the_pytorch_reference() {
    use ferrotune::domain::preference::{PrefLoss, PreferenceSettings};
    use ferrotune::train::data::{Batch, Sample};
    use ferrotune::train::preference::{pair_loss_and_grads, reference_scores};
    use ferrotune::train::step::Pass;

    let dir = fixture("llama");
    let dev = Device::Cpu;
    let spec = fixture_spec();
    let (model, lora) =
        CausalLm::load(&dir.join("model"), Some(&spec), 0, &dev, DType::F32).unwrap();
    lora.load_peft(&dir.join("adapter/adapter_model.safetensors"), &dev)
        .unwrap();
    let expected: HashMap<String, Tensor> =
        candle_core::safetensors::load(dir.join("dpo.safetensors"), &dev).unwrap();
    let samples: Vec<Sample> = (0..4)
        .map(|i| Sample {
            input_ids: expected[&format!("seq{i}.input_ids")]
                .to_vec1::<i64>()
                .unwrap()
                .iter()
                .map(|v| *v as u32)
                .collect(),
            labels: expected[&format!("seq{i}.labels")]
                .to_vec1::<i64>()
                .unwrap(),
        })
        .collect();

    let refs = reference_scores(&model, &lora, &samples, 4, &dev).unwrap();
    let want_refs = expected["ref_logps"].to_vec1::<f32>().unwrap();
    for (got, want) in refs.iter().zip(&want_refs) {
        assert!(
            (*got as f32 - want).abs() <= 1e-4 * want.abs().max(1.0),
            "{refs:?} vs {want_refs:?}"
        );
    }
    let cases = [
        ("sigmoid", PrefLoss::Sigmoid, 0.0),
        ("ipo", PrefLoss::Ipo, 0.0),
        ("simpo", PrefLoss::Simpo, 0.0),
        ("sigmoid_ftx", PrefLoss::Sigmoid, 0.2),
    ];
    let batch = Batch::new(&samples.iter().collect::<Vec<_>>(), &dev).unwrap();
    for (name, pref_loss, pref_ftx) in cases {
        let settings = PreferenceSettings {
            beta: 0.3,
            pref_loss,
            pref_ftx,
            simpo_gamma: 0.5,
        };
        let mut grads: Vec<Option<Tensor>> = vec![None; lora.vars().len()];
        let pass = Pass {
            model: &model,
            lora: &lora,
            batch: &batch,
            ctx: ForwardCtx::default(),
            scale: 1.0,
        };
        // Checkpointed and not: the same loss and gradients.
        for checkpointing in [false, true] {
            grads.iter_mut().for_each(|g| *g = None);
            let out =
                pair_loss_and_grads(&pass, &refs, &settings, checkpointing, &mut grads).unwrap();
            let want = expected[&format!("{name}.loss")].to_vec1::<f32>().unwrap()[0];
            let loss = out.micro.loss;
            assert!(
                ((loss - want) / want).abs() <= 1e-4,
                "{name}: loss {loss} vs {want}"
            );
            let prefix = format!("{name}.");
            let (worst, checked) =
                check_lora_grads(name, &lora, |i, _| grads[i].clone(), &expected, &prefix);
            assert_eq!(checked, 28);
            eprintln!(
                "{name} (checkpointing {checkpointing}): loss {loss} vs {want}; worst gradient relative error {worst:.2e}"
            );
        }
    }
}
