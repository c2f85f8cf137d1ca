//! The README's run command: `ferrotune serve` with no DATABASE_URL starts its own PostgreSQL,
//! stops it on SIGTERM, and reuses it on the next start.

use crate::helpers::binary::{Server, free_port, serve, terminate, wait_healthy};

fn start(data_dir: &std::path::Path, port: u16) -> Server {
    serve(data_dir, port, &[])
}

#[tokio::test]
async fn serve_runs_its_own_postgres_and_stops_it_on_sigterm() {
    // Under /tmp (world-traversable) so the cluster's unprivileged user can reach it when root.
    let dir = std::env::temp_dir().join(format!(
        "ferrotune-serve-{}",
        ferrotune::domain::ids::JobId::generate().body()
    ));
    let port = free_port();
    let server = start(&dir, port);
    wait_healthy(port).await;
    let pid_file = dir.join("postgres/data/postmaster.pid");
    assert!(pid_file.exists(), "embedded postgres is running");
    let file = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/v1/files"))
        .multipart(
            reqwest::multipart::Form::new()
                .text("purpose", "user_data")
                .part(
                    "file",
                    reqwest::multipart::Part::bytes(b"hello".to_vec()).file_name("a.txt"),
                ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(file.status(), 200);
    // Without --base-model the server serves the real default model.
    let models: serde_json::Value = reqwest::get(format!("http://127.0.0.1:{port}/v1/models"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "smollm2-135m-instruct");
    terminate(server);
    assert!(
        !pid_file.exists(),
        "SIGTERM must stop the embedded postgres"
    );

    // The second start reuses the cluster and its data.
    let port = free_port();
    let server = start(&dir, port);
    wait_healthy(port).await;
    let files: serde_json::Value = reqwest::get(format!("http://127.0.0.1:{port}/v1/files"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(files["data"].as_array().unwrap().len(), 1);
    terminate(server);
    let _ = std::fs::remove_dir_all(&dir);
}
