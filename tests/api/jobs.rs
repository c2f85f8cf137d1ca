use serde_json::{Value, json};

use crate::helpers::{assert_error, spawn_app};

#[tokio::test]
async fn create_returns_a_job_shaped_like_openai_with_a_created_event() {
    let app = spawn_app().await;
    let file = app.training_file(10).await;
    let job = app
        .create_job(
            &file,
            json!({"suffix": "med", "seed": 42, "metadata": {"team": "a"},
            "integrations": [{"type": "wandb", "wandb": {"project": "p"}}],
            "method": {"type": "supervised", "supervised": {"hyperparameters":
                {"n_epochs": 3, "lora_rank": 16, "learning_rate": 0.0001}}}}),
        )
        .await;
    let id = job["id"].as_str().unwrap();
    assert!(id.starts_with("ftjob-"));
    assert_eq!(job["object"], "fine_tuning.job");
    assert_eq!(job["status"], "validating_files");
    assert_eq!(job["error"], Value::Null);
    assert_eq!(job["fine_tuned_model"], Value::Null);
    assert_eq!(job["model"], "ferrotune-tiny");
    assert_eq!(job["organization_id"], "org-local");
    assert_eq!(job["seed"], 42);
    assert_eq!(job["training_file"], file.as_str());
    assert_eq!(job["result_files"], json!([]));
    assert_eq!(job["metadata"], json!({"team": "a"}));
    assert_eq!(job["integrations"][0]["type"], "wandb");
    assert_eq!(job["hyperparameters"]["n_epochs"], 3);
    assert_eq!(job["hyperparameters"]["batch_size"], "auto");
    assert_eq!(job["hyperparameters"]["lora_rank"], 16);
    assert_eq!(job["method"]["type"], "supervised");
    assert_eq!(
        job["method"]["supervised"]["hyperparameters"]["n_epochs"],
        3
    );
    assert_eq!(
        app.event_messages(id).await,
        vec![format!("Created fine-tuning job: {id}")]
    );
    assert_eq!(app.job(id).await, job);
}

#[tokio::test]
async fn top_level_hyperparameters_and_generated_seeds_are_accepted() {
    let app = spawn_app().await;
    let file = app.training_file(10).await;
    let job = app
        .create_job(
            &file,
            json!({"hyperparameters": {"n_epochs": "auto", "batch_size": 4,
            "learning_rate_multiplier": 2.0}}),
        )
        .await;
    assert_eq!(job["hyperparameters"]["batch_size"], 4);
    assert_eq!(job["hyperparameters"]["learning_rate_multiplier"], 2.0);
    let seed = job["seed"].as_i64().unwrap();
    assert!((0..=2_147_483_647).contains(&seed));
}

#[tokio::test]
async fn create_rejects_bad_fields_with_their_param() {
    let app = spawn_app().await;
    let file = app.training_file(10).await;
    let batch = app
        .upload("b.jsonl", b"{}".to_vec(), "user_data")
        .await
        .json::<Value>()
        .await
        .unwrap();
    let batch = batch["id"].as_str().unwrap();
    let cases = [
        (json!({"model": "gpt-9", "training_file": file}), "model"),
        (
            json!({"model": "ferrotune-tiny", "training_file": "file-missing"}),
            "training_file",
        ),
        (
            json!({"model": "ferrotune-tiny", "training_file": "not-an-id"}),
            "training_file",
        ),
        (
            json!({"model": "ferrotune-tiny", "training_file": batch}),
            "training_file",
        ),
        (
            json!({"model": "ferrotune-tiny", "training_file": file, "validation_file": "file-nope"}),
            "validation_file",
        ),
        (
            json!({"model": "ferrotune-tiny", "training_file": file, "validation_file": file,
                   "hyperparameters": {"validation_split": 0.2}}),
            "hyperparameters.validation_split",
        ),
        (
            json!({"model": "ferrotune-tiny", "training_file": file,
                   "hyperparameters": {"validation_split": 1000}}),
            "hyperparameters.validation_split",
        ),
        (
            json!({"model": "ferrotune-tiny", "training_file": file, "suffix": "x".repeat(65)}),
            "suffix",
        ),
        (
            json!({"model": "ferrotune-tiny", "training_file": file, "seed": 2_147_483_648u64}),
            "seed",
        ),
        (
            json!({"model": "ferrotune-tiny", "training_file": file, "hyperparameters": {"n_epochs": 0}}),
            "hyperparameters.n_epochs",
        ),
        (
            json!({"model": "ferrotune-tiny", "training_file": file, "hyperparameters": {"batch_size": 257}}),
            "hyperparameters.batch_size",
        ),
        (
            json!({"model": "ferrotune-tiny", "training_file": file, "method": {"type": "supervised",
            "supervised": {"hyperparameters": {"lora_dropout": 1.5}}}}),
            "method.supervised.hyperparameters.lora_dropout",
        ),
        (
            json!({"model": "ferrotune-tiny", "training_file": file, "method": {"type": "supervised",
            "supervised": {"hyperparameters": {"lr_scheduler_type": "step"}}}}),
            "method.supervised.hyperparameters.lr_scheduler_type",
        ),
        (
            json!({"model": "ferrotune-tiny", "training_file": file, "method": {"type": "dpo",
            "dpo": {"hyperparameters": {"beta": -1}}}}),
            "method.dpo.hyperparameters.beta",
        ),
        (
            json!({"model": "ferrotune-tiny", "training_file": file, "method": {"type": "reinforcement"}}),
            "method.type",
        ),
        (
            json!({"model": "ferrotune-tiny", "training_file": file, "method": {"type": "dpo",
            "dpo": {"hyperparameters": {"learning_rate": "find"}}}}),
            "method.dpo.hyperparameters.learning_rate",
        ),
        (
            json!({"model": "ferrotune-tiny", "training_file": file, "method": {"type": "supervised",
            "supervised": {"hyperparameters": {"early_stopping_patience": 0}}}}),
            "method.supervised.hyperparameters.early_stopping_patience",
        ),
        (
            json!({"model": "ferrotune-tiny", "training_file": file, "method": {"type": "supervised",
            "supervised": {"hyperparameters": {"neftune_noise_alpha": -5}}}}),
            "method.supervised.hyperparameters.neftune_noise_alpha",
        ),
        (
            json!({"model": "ferrotune-tiny", "training_file": file,
                   "hyperparameters": {"load_best_model_at_end": "sometimes"}}),
            "hyperparameters.load_best_model_at_end",
        ),
        (
            json!({"model": "ferrotune-tiny", "training_file": file, "metadata": {"k": 1}}),
            "metadata.k",
        ),
        (json!({"training_file": file}), "model"),
        (json!({"model": "ferrotune-tiny"}), "training_file"),
    ];
    for (body, param) in cases {
        let res = app.post("/v1/fine_tuning/jobs", &body).await;
        let err = assert_error(res, 400, Some(param)).await;
        if param == "method.type" {
            assert!(
                err["message"]
                    .as_str()
                    .unwrap()
                    .contains("not supported yet"),
                "{err}"
            );
        }
    }
    let list: Value = app.get("/v1/fine_tuning/jobs").await.json().await.unwrap();
    assert_eq!(
        list["data"],
        json!([]),
        "a rejected create must not leave a job"
    );
}

#[tokio::test]
async fn list_pages_newest_first_and_filters_by_metadata() {
    let app = spawn_app().await;
    let file = app.training_file(10).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let job = app.create_job(&file, json!({"metadata": {"n": i.to_string(), "kind": if i % 2 == 0 {"even"} else {"odd"}}})).await;
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    let first: Value = app
        .get("/v1/fine_tuning/jobs?limit=2")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(first["object"], "list");
    assert_eq!(first["has_more"], true);
    assert_eq!(first["data"][0]["id"], ids[4].as_str());
    assert_eq!(first["data"][1]["id"], ids[3].as_str());
    let last: Value = app
        .get(&format!("/v1/fine_tuning/jobs?limit=2&after={}", ids[1]))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(last["data"].as_array().unwrap().len(), 1);
    assert_eq!(last["has_more"], false);
    let even: Value = app
        .get("/v1/fine_tuning/jobs?metadata[kind]=even")
        .await
        .json()
        .await
        .unwrap();
    let even_ids: Vec<&str> = even["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        even_ids,
        vec![ids[4].as_str(), ids[2].as_str(), ids[0].as_str()]
    );
    let one: Value = app
        .get("/v1/fine_tuning/jobs?metadata[kind]=odd&metadata[n]=3")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one["data"].as_array().unwrap().len(), 1);
    assert_error(
        app.get("/v1/fine_tuning/jobs?limit=101").await,
        400,
        Some("limit"),
    )
    .await;
    assert_error(
        app.get("/v1/fine_tuning/jobs?limit=x").await,
        400,
        Some("limit"),
    )
    .await;
}

#[tokio::test]
async fn unknown_jobs_are_404_on_every_route() {
    let app = spawn_app().await;
    for path in ["", "/events", "/checkpoints"] {
        assert_error(
            app.get(&format!("/v1/fine_tuning/jobs/ftjob-nope{path}"))
                .await,
            404,
            Some("id"),
        )
        .await;
    }
    for action in ["cancel", "pause", "resume"] {
        assert_error(
            app.post_empty(&format!("/v1/fine_tuning/jobs/ftjob-nope/{action}"))
                .await,
            404,
            Some("id"),
        )
        .await;
    }
}

#[tokio::test]
async fn checkpoints_list_is_an_empty_page_before_training() {
    let app = spawn_app().await;
    let file = app.training_file(10).await;
    let job = app.create_job(&file, json!({})).await;
    let list: Value = app
        .get(&format!(
            "/v1/fine_tuning/jobs/{}/checkpoints",
            job["id"].as_str().unwrap()
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        list,
        json!({"object": "list", "data": [], "has_more": false, "first_id": null, "last_id": null})
    );
}
