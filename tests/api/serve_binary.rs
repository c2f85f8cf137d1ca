//! The README's run command: `ferrotune serve` with no DATABASE_URL starts its own PostgreSQL,
//! stops it on SIGTERM, and reuses it on the next start.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(data_dir: &std::path::Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ferrotune"))
        .args(["serve", "--port", &port.to_string(), "--data-dir"])
        .arg(data_dir)
        .env_remove("DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn wait_healthy(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let res = reqwest::get(format!("http://127.0.0.1:{port}/health")).await;
        if res.is_ok_and(|r| r.status() == 200) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("server never became healthy");
}

fn terminate(mut child: Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    panic!("server did not exit on SIGTERM");
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
                .text("purpose", "batch")
                .part(
                    "file",
                    reqwest::multipart::Part::bytes(b"hello".to_vec()).file_name("a.txt"),
                ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(file.status(), 200);
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
