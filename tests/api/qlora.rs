//! QLoRA through the API: a 4-bit job trains, and the served model (the adapter over the base as
//! the nf4 round trip left it) answers as the trainer predicts; bad quantization values are
//! 400s. The step-level numerics are in `tests/model/qlora.rs`.

use ferrotune::model_dir::quant::{Quantization, Storage};
use serde_json::{Value, json};

use crate::helpers::fixtures::{QA, find_adapter, trained_model, user};

#[tokio::test]
async fn a_4_bit_job_succeeds_and_is_served_as_the_trainer_predicts() {
    let app = crate::helpers::spawn_app().await;
    let (id, model_name) =
        crate::helpers::fine_tune_with(&app, "nf4", json!({"quantization_bit": 4})).await;
    let messages = app.event_messages(&id).await;
    assert!(
        messages.iter().any(|m| m.starts_with(
            "QLoRA: the frozen projections are stored as nf4 (double-quantized scales)"
        )),
        "{messages:?}"
    );
    // The trainer's greedy answers: its own NF4 base with the job's adapter.
    let adapter = find_adapter(app.data_dir.path()).expect("the job's adapter");
    let base_dir = app.engine.base_dir().to_path_buf();
    let storage = Storage::Quantize(Quantization::Nf4 { double: true });
    let model = trained_model(&base_dir, &adapter, storage);
    let tok = ferrotune::train::data::load_tokenizer(&base_dir).unwrap();
    let template = ferrotune::model_dir::template::ChatTemplate::from_model_dir(&base_dir).unwrap();
    for (question, _) in &QA[..3] {
        let turns = [user(question)];
        let ours = ferrotune::train::generate::greedy(&model, &tok, &template, &turns, 40).unwrap();
        let served = crate::helpers::ask(&app, &model_name, question).await;
        assert_eq!(
            served["choices"][0]["message"]["content"],
            ours.as_str(),
            "{question}"
        );
    }
    // It learned: the first answer is recited.
    let turns = [user(QA[0].0)];
    let ours = ferrotune::train::generate::greedy(&model, &tok, &template, &turns, 40).unwrap();
    assert_eq!(ours, QA[0].1);
}

#[tokio::test]
async fn bad_quantization_values_are_400s_naming_the_field() {
    let app = crate::helpers::spawn_app().await;
    let train = crate::helpers::upload_qa(&app, 10).await;
    for (hp, param) in [
        (json!({"quantization_bit": 3}), "quantization_bit"),
        (json!({"quantization_method": "fp4"}), "quantization_method"),
        (
            json!({"quantization_bit": 8, "quantization_method": "nf4"}),
            "quantization_method",
        ),
        (
            json!({"quantization_method": "q4_0", "double_quantization": true}),
            "double_quantization",
        ),
    ] {
        let res = app
            .post(
                "/v1/fine_tuning/jobs",
                &json!({"model": "ferrotune-tiny", "training_file": train, "hyperparameters": hp}),
            )
            .await;
        assert_eq!(res.status(), 400, "{hp}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(
            body["error"]["param"],
            format!("hyperparameters.{param}"),
            "{body}"
        );
    }
}
