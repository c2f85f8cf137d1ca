//! Running the real `ferrotune` binary: start it on a free port, wait until healthy, stop it
//! with SIGTERM and time the exit. A [`Server`] that a failing test drops is killed, so no
//! process outlives its test.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port nothing listens on.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `ferrotune serve`, killed when dropped.
pub struct Server(Option<Child>);

impl Server {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    /// SIGKILL, as a crash would, and wait for it.
    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill_hard();
    }
}

/// `ferrotune serve` on `port` with `data_dir` and extra arguments (no DATABASE_URL from the
/// environment: pass `--database-url` to use one).
pub fn serve(data_dir: &Path, port: u16, extra: &[&str]) -> Server {
    let child = Command::new(env!("CARGO_BIN_EXE_ferrotune"))
        .args(["serve", "--port", &port.to_string(), "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .env_remove("DATABASE_URL")
        // The default base model is pulled once into the cache CI keeps under target/.
        .env(
            "FERROTUNE_HOME",
            concat!(env!("CARGO_MANIFEST_DIR"), "/target/ferrotune-home"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Server(Some(child))
}

/// Wait until `/health` answers 200 (at most 60 s).
pub async fn wait_healthy(port: u16) {
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

/// Send SIGTERM and wait for the exit (at most 30 s, then it is killed); how long it took.
pub fn terminate(mut server: Server) -> Duration {
    let child = server.0.as_mut().expect("a running server");
    let sent = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    while sent.elapsed() < Duration::from_secs(30) {
        if child.try_wait().unwrap().is_some() {
            server.0 = None; // reaped
            return sent.elapsed();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("server did not exit within 30 s of SIGTERM"); // dropping `server` kills it
}
