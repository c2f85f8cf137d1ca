//! `model export` on the tiny models: a trained adapter merged into a Hugging Face directory or a
//! GGUF file reproduces base + adapter, the GGUF imports back with the same tokenizer, and bad
//! requests fail without leaving files behind.

use std::path::{Path, PathBuf};

use candle_core::DType;
use ferrotune::export::{self, ExportFormat, ExportRequest, Quant};
use ferrotune::train::data;
use ferrotune::train::tiny::TinyArch;

use crate::helpers::fixtures::{adapted_logits, plain_logits, rel_err};
use crate::helpers::fixtures::{config, finish, setup};

/// The tiny model of `arch` in `dir` with an adapter trained for a few steps; its directory.
fn trained(dir: &Path, arch: TinyArch) -> PathBuf {
    setup(dir, arch);
    let cfg = config(dir, 1, 1e-2);
    finish(&cfg).adapter_dir
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
