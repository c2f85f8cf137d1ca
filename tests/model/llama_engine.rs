//! The llama.cpp engine serves what the trainer trained: the tiny models served from an f32
//! GGUF with a trained adapter attached (written as llama.cpp's LoRA GGUF) give the trainer's
//! last-position logits, and adapters that cannot be served are refused with a reason.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Tensor;
use ferrotune::serve::{Engine, EngineOptions, LlamaOptions, ServeError};
use ferrotune::train::tiny::TinyArch;

use crate::helpers::fixtures::{
    config, finish, forward, model_logits, probe_ids, rel_err, setup, trained_model,
};

/// The tiny model of `arch` in `dir` with an adapter trained for a few steps; its directory.
fn trained(dir: &Path, arch: TinyArch) -> PathBuf {
    setup(dir, arch);
    finish(&config(dir, 1, 1e-2)).adapter_dir
}

/// Two different adapters of the tiny Llama in `dir` (another learning rate and seed).
fn two_adapters(dir: &Path) -> (PathBuf, PathBuf) {
    let first = trained(dir, TinyArch::Llama);
    let mut cfg = config(dir, 1, 5e-2);
    cfg.output_dir = dir.join("out-2");
    cfg.seed = 11;
    (first, finish(&cfg).adapter_dir)
}

/// The llama.cpp engine on the tiny model in `dir` (exported to an f32 GGUF once).
async fn engine(dir: &Path) -> Arc<Engine> {
    let model = dir.join("model");
    let gguf =
        ferrotune::export::served::base_gguf(&model, &dir.join("cache"), "ferrotune-tiny").unwrap();
    assert!(gguf.f32, "{gguf:?}");
    Engine::start(EngineOptions::Llama(LlamaOptions {
        base_gguf: gguf.path,
        kv_f32: true,
        base_dir: model,
        base_name: "ferrotune-tiny".into(),
        adapter_cache: dir.join("adapters-gguf"),
        kv_tokens: 4096,
        slots: 4,
        threads: 2,
        derive_base: Some(derive_base(dir)),
    }))
    .await
    .unwrap()
}

/// Derived bases of the tiny model in `dir`, written under `dir/models`.
fn derive_base(dir: &Path) -> ferrotune::serve::DeriveBase {
    let (model, models) = (dir.join("model"), dir.join("models"));
    ferrotune::serve::DeriveBase(Arc::new(move |how| {
        ferrotune::export::served::derived_base_gguf(&model, how, &models, "tiny")
            .map_err(|e| e.to_string())
    }))
}

fn last_row(logits: &Tensor) -> Tensor {
    let n = logits.dim(1).unwrap();
    logits.squeeze(0).unwrap().get(n - 1).unwrap()
}

#[tokio::test]
async fn served_logits_equal_the_trainers_with_and_without_the_adapter() {
    for arch in [TinyArch::Llama, TinyArch::Qwen2] {
        let dir = tempfile::tempdir().unwrap();
        let adapter = trained(dir.path(), arch);
        let model = dir.path().join("model");
        let engine = engine(dir.path()).await;
        engine.ensure_loaded("ft", &adapter).await.unwrap();
        let ids = probe_ids();
        for (name, adapter) in [("ferrotune-tiny", None), ("ft", Some(adapter.as_path()))] {
            let want = last_row(&model_logits(&model, adapter, &ids));
            let got = engine.logits(name, ids.clone()).await.unwrap();
            let got = Tensor::new(got.as_slice(), &candle_core::Device::Cpu).unwrap();
            let err = rel_err(&got, &want);
            println!("{arch:?} {name}: last-position relative error {err:.2e}");
            assert!(err <= 1e-4, "{arch:?} {name}: relative error {err}");
        }
        // The adapter changes the answer (so the comparison above could fail).
        let base = engine.logits("ferrotune-tiny", ids.clone()).await.unwrap();
        let tuned = engine.logits("ft", ids).await.unwrap();
        let moved = base.iter().zip(&tuned).any(|(a, b)| (a - b).abs() > 1e-3);
        assert!(moved, "{arch:?}: the adapter must change the logits");
    }
}

/// A name attached from one directory and asked for with another (a job published by another
/// worker after a fenced-off one attached its own result) serves the adapter asked for.
#[tokio::test]
async fn a_name_asked_for_with_another_adapter_directory_serves_that_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = two_adapters(dir.path());
    assert_ne!(first, second);
    let model = dir.path().join("model");
    let engine = engine(dir.path()).await;
    let ids = probe_ids();
    for adapter in [&first, &second, &first] {
        engine.ensure_loaded("ft", adapter).await.unwrap();
        let want = last_row(&model_logits(&model, Some(adapter), &ids));
        let got = engine.logits("ft", ids.clone()).await.unwrap();
        let got = Tensor::new(got.as_slice(), &candle_core::Device::Cpu).unwrap();
        let err = rel_err(&got, &want);
        assert!(err <= 1e-4, "{}: relative error {err}", adapter.display());
    }
    assert_eq!(engine.resident(), ["ft"]);
    assert_eq!(engine.loads(), 3);
}

/// Rows of different adapters and of the base decoded in one batch each get their own model:
/// the trainer's logits for every row, as when each is decoded alone. With prompts of unequal
/// lengths the batch's token rows and output rows differ (the last layer's feed-forward runs on
/// output rows only), so both of the engine's row lists are checked.
#[tokio::test]
async fn one_batch_serves_each_row_with_its_own_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = two_adapters(dir.path());
    let model = dir.path().join("model");
    let engine = engine(dir.path()).await;
    engine.ensure_loaded("a", &first).await.unwrap();
    engine.ensure_loaded("b", &second).await.unwrap();
    let ids = probe_ids();
    let short = ids[..ids.len() - 2].to_vec();
    let rows = [
        ("a", Some(first.as_path()), ids.clone()),
        ("ferrotune-tiny", None, short.clone()),
        ("b", Some(second.as_path()), ids.clone()),
        ("a", Some(first.as_path()), short),
    ];
    let got = engine
        .logits_together(
            rows.iter()
                .map(|(name, _, tokens)| (name.to_string(), tokens.clone()))
                .collect(),
        )
        .await
        .unwrap();
    assert_eq!(got.len(), rows.len());
    for ((name, adapter, tokens), got) in rows.iter().zip(&got) {
        let want = last_row(&model_logits(&model, *adapter, tokens));
        let got = Tensor::new(got.as_slice(), &candle_core::Device::Cpu).unwrap();
        let err = rel_err(&got, &want);
        println!(
            "{name} ({} tokens) in a mixed batch: relative error {err:.2e}",
            tokens.len()
        );
        assert!(err <= 1e-4, "{name}: relative error {err}");
    }
    // The rows really differ by model (so a row given another's adapter would fail above).
    let moved = |x: &[f32], y: &[f32]| x.iter().zip(y).any(|(a, b)| (a - b).abs() > 1e-3);
    assert!(moved(&got[0], &got[2]) && moved(&got[1], &got[3]));
    // Bad rows are refused, not decoded.
    assert!(engine.logits_together(Vec::new()).await.is_err());
    let five = vec![("a".to_string(), ids.clone()); 5];
    assert!(engine.logits_together(five).await.is_err());
    let unknown = vec![("nope".to_string(), ids.clone())];
    assert!(engine.logits_together(unknown).await.is_err());
}

/// A QLoRA adapter over the dense (f32) tiny base trained on the base after an nf4 round trip:
/// it is served over that derived base (its own GGUF, loaded once), so the served logits are the
/// trainer's nf4 ones, not the dense base's.
#[tokio::test]
async fn a_qlora_adapter_is_served_over_the_base_it_trained_on() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), TinyArch::Llama);
    let mut cfg = config(dir.path(), 1, 1e-2);
    cfg.hyperparameters.quantization.bit = Some(4);
    let adapter = finish(&cfg).adapter_dir;
    let how = ferrotune::model_dir::quant::record::read(&adapter)
        .unwrap()
        .expect("a QLoRA adapter records the base it trained on");
    let model = dir.path().join("model");
    let engine = engine(dir.path()).await;
    engine.ensure_loaded("q", &adapter).await.unwrap();
    engine.ensure_loaded("q2", &adapter).await.unwrap();
    let ids = probe_ids();
    let storage = ferrotune::model_dir::quant::Storage::Quantize(how);
    let want = last_row(&forward(&trained_model(&model, &adapter, storage), &ids));
    let dense = last_row(&model_logits(&model, Some(&adapter), &ids));
    for name in ["q", "q2"] {
        let got = engine.logits(name, ids.clone()).await.unwrap();
        let got = Tensor::new(got.as_slice(), &candle_core::Device::Cpu).unwrap();
        let err = rel_err(&got, &want);
        println!("{name} over the nf4 base: last-position relative error {err:.2e}");
        assert!(err <= 1e-4, "{name}: relative error {err}");
        // Over the dense base the answer would be elsewhere (so the check above can fail).
        let off = rel_err(&got, &dense);
        assert!(
            off > 10.0 * err.max(1e-6),
            "{name}: dense base within {off}"
        );
    }
    // One derived base for both adapters, written once.
    let derived: Vec<_> = walk(&dir.path().join("models"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    assert_eq!(derived.len(), 1, "{derived:?}");
    assert_eq!(engine.resident(), ["q", "q2"]);
    engine.remove("q").await;
    assert_eq!(engine.resident(), ["q2"]);
    assert!(engine.logits("q", ids.clone()).await.is_err());
    assert!(engine.logits("q2", ids).await.is_ok());
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn adapters_that_cannot_be_served_are_refused_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = trained(dir.path(), TinyArch::Llama);
    let engine = engine(dir.path()).await;
    let cache = dir.path().join("adapters-gguf");
    let copy = |name: &str| {
        let to = dir.path().join(name);
        std::fs::create_dir_all(&to).unwrap();
        for f in ["adapter_config.json", "adapter_model.safetensors"] {
            std::fs::copy(adapter.join(f), to.join(f)).unwrap();
        }
        to
    };
    let refused = |e: ServeError| match e {
        ServeError::Load { reason, .. } => reason,
        other => panic!("expected a load error, got {other:?}"),
    };
    // Truncated weights.
    let truncated = copy("truncated");
    let weights = truncated.join("adapter_model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let loaded = engine.ensure_loaded("t", &truncated).await;
    let reason = refused(loaded.expect_err("a truncated adapter must not load"));
    assert!(reason.contains("cannot be read"), "{reason}");
    // Trained for another base (one twice as wide: every update has twice the rows).
    let foreign = copy("foreign");
    let w = foreign.join("adapter_model.safetensors");
    let wider: std::collections::HashMap<String, Tensor> =
        candle_core::safetensors::load(&w, &candle_core::Device::Cpu)
            .unwrap()
            .into_iter()
            .map(|(k, t)| {
                let t = if k.contains("lora_B") {
                    Tensor::cat(&[&t, &t], 0).unwrap()
                } else {
                    t
                };
                (k, t)
            })
            .collect();
    candle_core::safetensors::save(&wider, &w).unwrap();
    let reason = refused(engine.ensure_loaded("f", &foreign).await.unwrap_err());
    assert!(reason.contains("another base"), "{reason}");
    // A module the engine cannot adapt.
    let odd = copy("odd");
    let w = odd.join("adapter_model.safetensors");
    let mut tensors = candle_core::safetensors::load(&w, &candle_core::Device::Cpu).unwrap();
    let (a, b) = (
        tensors.values().next().unwrap().clone(),
        tensors.values().next().unwrap().clone(),
    );
    tensors.insert("base_model.model.lm_head.lora_A.weight".into(), a);
    tensors.insert("base_model.model.lm_head.lora_B.weight".into(), b);
    candle_core::safetensors::save(&tensors, &w).unwrap();
    let reason = refused(engine.ensure_loaded("o", &odd).await.unwrap_err());
    assert!(reason.contains("cannot adapt lm_head"), "{reason}");
    // Nothing half-written; the engine still serves the base and the good adapter.
    let left: Vec<_> = std::fs::read_dir(&cache)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    assert!(engine.resident().is_empty());
    engine.ensure_loaded("ft", &adapter).await.unwrap();
    assert_eq!(engine.resident(), vec!["ft".to_owned()]);
    engine.logits("ft", probe_ids()).await.unwrap();
}

#[tokio::test]
async fn a_base_of_an_unsupported_architecture_is_a_clear_load_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("odd.gguf");
    // A valid GGUF header whose architecture llama.cpp does not know.
    let arch = candle_core::quantized::gguf_file::Value::String("nonesuch".into());
    let mut f = std::fs::File::create(&file).unwrap();
    candle_core::quantized::gguf_file::write(&mut f, &[("general.architecture", &arch)], &[])
        .unwrap();
    drop(f);
    setup(dir.path(), TinyArch::Llama);
    let started = Engine::start(EngineOptions::Llama(LlamaOptions {
        base_gguf: file,
        base_dir: dir.path().join("model"),
        base_name: "odd".into(),
        adapter_cache: dir.path().join("a"),
        kv_tokens: 1024,
        slots: 1,
        threads: 1,
        kv_f32: false,
        derive_base: None,
    }))
    .await;
    match started {
        Err(ServeError::Load { model, reason }) => {
            assert_eq!(model, "odd");
            assert!(reason.contains("odd.gguf"), "{reason}");
        }
        Err(other) => panic!("expected a load error, got {other:?}"),
        Ok(_) => panic!("an unknown architecture must not load"),
    }
}
