//! `model export` on the tiny models: a trained adapter merged into a Hugging Face directory or a
//! GGUF file reproduces base + adapter, the GGUF imports back with the same tokenizer, and bad
//! requests fail without leaving files behind.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use ferrotune::export::{self, ExportFormat, ExportRequest, Quant};
use ferrotune::train::data;
use ferrotune::train::lora::LoraSpec;
use ferrotune::train::model::{CausalLm, ForwardCtx};
use ferrotune::train::tiny::TinyArch;

use crate::tensors::rel_err;
use crate::train_loop::{config, finish, setup};

/// The tiny model of `arch` in `dir` with an adapter trained for a few steps; its directory.
fn trained(dir: &Path, arch: TinyArch) -> PathBuf {
    setup(dir, arch);
    let cfg = config(dir, 1, 1e-2);
    finish(&cfg).adapter_dir
}

/// Ten token ids every tiny vocabulary has.
fn ids() -> Vec<u32> {
    (0..10).map(|i| (i * 41 + 3) % 250).collect()
}

/// f32 logits of the model in `model_dir` on `ids`, with the PEFT `adapter` applied (rank 8,
/// alpha 32, all seven projections) as the trainer computes them.
pub fn model_logits(model_dir: &Path, adapter: Option<&Path>, ids: &[u32]) -> Tensor {
    let spec = LoraSpec {
        rank: 8,
        alpha: 32.0,
        dropout: 0.0,
        targets: ferrotune::domain::hyperparameters::LORA_MODULES
            .map(String::from)
            .to_vec(),
    };
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
    let input = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    model
        .forward(&input, &[(0, ids.len())], ForwardCtx::default())
        .unwrap()
}

fn adapted_logits(model_dir: &Path, adapter: &Path) -> Tensor {
    model_logits(model_dir, Some(adapter), &ids())
}

fn plain_logits(model_dir: &Path) -> Tensor {
    model_logits(model_dir, None, &ids())
}

fn request(dir: &Path, adapter: &Path, format: ExportFormat, quant: Quant) -> ExportRequest {
    ExportRequest {
        base_dir: dir.join("model"),
        adapter_dir: Some(adapter.to_path_buf()),
        format,
        quant,
        name: "ft:ferrotune-tiny:org-local:test:abcdefgh".into(),
    }
}

#[test]
fn a_merged_directory_gives_the_logits_of_base_plus_adapter() {
    for arch in [TinyArch::Llama, TinyArch::Qwen2] {
        let dir = tempfile::tempdir().unwrap();
        let adapter = trained(dir.path(), arch);
        let want = adapted_logits(&dir.path().join("model"), &adapter);
        let base = plain_logits(&dir.path().join("model"));
        assert!(
            rel_err(&base, &want) > 1e-3,
            "the adapter must change the model"
        );
        let out = dir.path().join("merged");
        export::export(
            &request(dir.path(), &adapter, ExportFormat::Hf, Quant::F32),
            &out,
        )
        .unwrap();
        for file in [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
        ] {
            assert!(out.join(file).exists(), "{arch:?}: {file}");
        }
        let err = rel_err(&plain_logits(&out), &want);
        assert!(err < 1e-5, "{arch:?}: relative error {err}");
        // bf16 (the default for directories) within bf16's precision.
        let out16 = dir.path().join("merged-bf16");
        export::export(
            &request(dir.path(), &adapter, ExportFormat::Hf, Quant::Bf16),
            &out16,
        )
        .unwrap();
        let err = rel_err(&plain_logits(&out16), &want);
        assert!(err < 3e-2, "{arch:?} bf16: relative error {err}");
    }
}

#[test]
fn a_gguf_export_imports_back_to_the_same_model_within_its_quantization() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = trained(dir.path(), TinyArch::Llama);
    let want = adapted_logits(&dir.path().join("model"), &adapter);
    let corpus = "Drink water 2x a day; café ☕ 東京\n\t  code: fn main() {}";
    let original = data::load_tokenizer(&dir.path().join("model")).unwrap();
    for (quant, tolerance) in [(Quant::F32, 1e-5), (Quant::F16, 5e-3), (Quant::Q8_0, 5e-2)] {
        let file = dir.path().join(format!("model-{quant:?}.gguf"));
        export::export(
            &request(dir.path(), &adapter, ExportFormat::Gguf, quant),
            &file,
        )
        .unwrap();
        let back = dir.path().join(format!("back-{quant:?}"));
        ferrotune::model_dir::gguf::import(&file, &back, DType::F32).unwrap();
        let err = rel_err(&plain_logits(&back), &want);
        assert!(err < tolerance, "{quant:?}: relative error {err}");
        let imported = data::load_tokenizer(&back).unwrap();
        for text in [corpus, "<|im_start|>user\nHi<|im_end|>\n"] {
            assert_eq!(
                imported.encode(text, false).unwrap().get_ids(),
                original.encode(text, false).unwrap().get_ids(),
                "{quant:?}: {text:?}"
            );
        }
        let template = std::fs::read_to_string(back.join("tokenizer_config.json")).unwrap();
        assert!(
            template.contains("<|im_start|>"),
            "the chat template travels"
        );
    }
}

#[test]
fn bad_exports_fail_clearly_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = trained(dir.path(), TinyArch::Llama);
    let out = dir.path().join("exported");
    let cases = [
        (ExportFormat::Hf, Quant::Q8_0, "GGUF only"),
        (ExportFormat::Gguf, Quant::Bf16, "GGUF export writes"),
    ];
    for (format, quant, message) in cases {
        let err = export::export(&request(dir.path(), &adapter, format, quant), &out).unwrap_err();
        assert!(err.to_string().contains(message), "{err}");
    }
    // An adapter trained for another base: the shapes do not fit.
    let other = tempfile::tempdir().unwrap();
    let qwen_adapter = trained(other.path(), TinyArch::Qwen2);
    let mut req = request(dir.path(), &qwen_adapter, ExportFormat::Hf, Quant::F32);
    ferrotune::train::tiny::init_sized(
        &dir.path().join("small"),
        TinyArch::Llama,
        ferrotune::train::tiny::TinySize::Small,
        0,
    )
    .unwrap();
    req.base_dir = dir.path().join("small");
    let err = export::export(&req, &out).unwrap_err();
    assert!(err.to_string().contains("another base model"), "{err}");
    // Not an adapter directory.
    let mut req = request(dir.path(), dir.path(), ExportFormat::Gguf, Quant::F16);
    req.adapter_dir = Some(dir.path().join("model"));
    assert!(export::export(&req, &out).is_err());
    // An existing output is never overwritten.
    std::fs::create_dir(&out).unwrap();
    let err = export::export(
        &request(dir.path(), &adapter, ExportFormat::Hf, Quant::F32),
        &out,
    )
    .unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    std::fs::remove_dir(&out).unwrap();
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("exported"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[tokio::test]
async fn a_fine_tuned_model_downloads_as_gguf_or_a_directory_archive() {
    let app = crate::helpers::spawn_app().await;
    let train = crate::training_jobs::upload_qa(&app, 10).await;
    let job = app
        .create_job(
            &train,
            serde_json::json!({"method": {"type": "supervised", "supervised": {"hyperparameters":
                {"n_epochs": 1, "batch_size": 2, "learning_rate": 0.01}}}}),
        )
        .await;
    assert!(app.worker().run_once().await.unwrap());
    let job = app.job(job["id"].as_str().unwrap()).await;
    let model = job["fine_tuned_model"].as_str().unwrap().to_owned();
    let adapter = app
        .store
        .get_model(
            &ferrotune::domain::organization::OrganizationId::local(),
            &model,
        )
        .await
        .unwrap()
        .unwrap()
        .path;
    let base_dir = app.engine.base_dir().to_path_buf();
    let want = adapted_logits(&base_dir, Path::new(&adapter));

    let res = app
        .get(&format!("/v1/models/{model}/export?format=gguf&quant=f32"))
        .await;
    assert_eq!(res.status(), 200);
    let disposition = res.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(disposition.ends_with(".gguf\""), "{disposition}");
    assert!(!disposition.contains(':'), "{disposition}");
    let bytes = res.bytes().await.unwrap();
    assert_eq!(&bytes[..4], b"GGUF");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.gguf");
    std::fs::write(&file, &bytes).unwrap();
    ferrotune::model_dir::gguf::import(&file, &dir.path().join("m"), DType::F32).unwrap();
    let err = rel_err(&plain_logits(&dir.path().join("m")), &want);
    assert!(err < 1e-5, "relative error {err}");

    // The same through the command line, looked up by name in the server's database.
    let out = dir.path().join("cli.gguf");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_ferrotune"))
        .args(["model", "export", &model])
        .arg(&out)
        .args(["--format", "gguf", "--quant", "q8_0", "--base-model"])
        .arg(&base_dir)
        .args(["--base-model-name", "ferrotune-tiny", "--database-url"])
        .arg(app.database_url())
        .arg("--data-dir")
        .arg(dir.path().join("cli-data"))
        .status()
        .unwrap();
    assert!(status.success());
    ferrotune::model_dir::gguf::import(&out, &dir.path().join("cli"), DType::F32).unwrap();
    let err = rel_err(&plain_logits(&dir.path().join("cli")), &want);
    assert!(err < 5e-2, "q8_0 relative error {err}");
    // A model trained on another base is refused by name.
    let wrong = std::process::Command::new(env!("CARGO_BIN_EXE_ferrotune"))
        .args(["model", "export", &model])
        .arg(dir.path().join("wrong.gguf"))
        .arg("--base-model")
        .arg(&base_dir)
        .args(["--base-model-name", "other", "--database-url"])
        .arg(app.database_url())
        .arg("--data-dir")
        .arg(dir.path().join("cli-data"))
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        stderr.contains("was fine-tuned from 'ferrotune-tiny'"),
        "{stderr}"
    );
    assert!(!dir.path().join("wrong.gguf").exists());

    // The base model as a Hugging Face directory, packed.
    let res = app.get("/v1/models/ferrotune-tiny/export?format=hf").await;
    assert_eq!(res.status(), 200);
    let bytes = res.bytes().await.unwrap();
    assert_eq!(&bytes[..2], &[0x1f, 0x8b], "a gzip stream");

    // Bad requests: each a 400 or 404 with the OpenAI envelope, and no temporary files left.
    for (query, status, param) in [
        (format!("{model}/export?format=zip"), 400, "format"),
        (format!("{model}/export?quant=q3"), 400, "quant"),
        (format!("{model}/export?format=hf&quant=q8_0"), 400, "quant"),
        (format!("{model}/export?format=&quant="), 400, "format"),
        ("ft:nope/export".to_owned(), 404, "model"),
    ] {
        let res = app.get(&format!("/v1/models/{query}")).await;
        assert_eq!(res.status(), status, "{query}");
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["error"]["param"], param, "{query}: {body}");
    }
    // The export path allows GET only (not the DELETE of `/v1/models/{model}`).
    let res = app
        .client
        .post(format!("{}/v1/models/{model}/export", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(res.headers()["allow"], "GET");
    let tmp = app.data_dir.path().join("files/.tmp");
    assert!(tmp.is_dir());
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in {}: {left:?}", tmp.display());
}
