//! A `udit serve` process on an ephemeral port, and the HTTP calls the tests make to it.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::fixture;

/// A running `udit serve`; killed when dropped.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Everything the server printed on stderr so far.
    pub log: Arc<Mutex<String>>,
    pub out: tempfile::TempDir,
}

/// The model flags of the tiny fixture U-DiT (16x16x4 latents) with the tiny VAE (64x64 RGB).
pub fn tiny_model() -> Vec<String> {
    let f = |name: &str| fixture(name).to_str().unwrap().to_string();
    vec![
        "--config".into(),
        f("udit_tiny.json"),
        "--ckpt".into(),
        f("udit_tiny.train-checkpoint.pt"),
        "--vae".into(),
        f("vae_tiny"),
    ]
}

impl Server {
    /// Starts `udit serve --addr 127.0.0.1:0 --out TMP ARGS...` and waits for its address.
    pub fn start(args: &[String]) -> Server {
        Self::start_on("127.0.0.1:0", args)
    }

    pub fn start_on(addr: &str, args: &[String]) -> Server {
        let out = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_udit"))
            .args(["serve", "--addr", addr, "--out", out.path().to_str().unwrap()])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("serving on ") {
                    tx.send(addr.split_whitespace().next().unwrap().to_string()).ok();
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let Ok(base) = rx.recv_timeout(Duration::from_secs(120)) else {
            child.kill().ok();
            panic!("udit serve did not start: {}", log.lock().unwrap());
        };
        Server { child, base, log, out }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get(&self, path: &str) -> (u16, Vec<u8>) {
        call(agent().get(&self.url(path)), None)
    }

    pub fn get_json(&self, path: &str) -> (u16, Value) {
        let (status, body) = self.get(path);
        (status, json(&body))
    }

    pub fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let (status, body) = call(agent().post(&self.url(path)), Some(body));
        (status, json(&body))
    }

    pub fn delete(&self, path: &str) -> (u16, Value) {
        let (status, body) = call(agent().delete(&self.url(path)), None);
        (status, json(&body))
    }

    /// Polls the job until `done` says so (or panics after `secs`); returns its last status.
    pub fn wait_for(&self, id: &str, secs: u64, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let (status, job) = self.get_json(&format!("/api/jobs/{id}"));
            assert_eq!(status, 200, "{job}");
            if done(&job) {
                return job;
            }
            assert!(std::time::Instant::now() < deadline, "job {id} still {job} after {secs} s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls `/healthz` until no job waits or runs.
    pub fn wait_idle(&self, secs: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let (_, h) = self.get_json("/healthz");
            if h["queued"] == 0 && h["running"] == false {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "still busy after {secs} s: {h}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// A client with a read timeout, so that a hung server fails the test instead of blocking it.
pub fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout_read(Duration::from_secs(120)).build()
}

/// Status and body of a request, whatever the status.
pub fn call(request: ureq::Request, body: Option<&str>) -> (u16, Vec<u8>) {
    let result = match body {
        Some(body) => request.set("Content-Type", "application/json").send_string(body),
        None => request.call(),
    };
    let response = match result {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("request failed: {e}"),
    };
    let status = response.status();
    let mut bytes = Vec::new();
    response.into_reader().read_to_end(&mut bytes).unwrap();
    (status, bytes)
}

pub fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

/// Server-sent events of one response, as (event, data) pairs, read as they come.
pub struct Events(BufReader<Box<dyn Read + Send + Sync>>);

impl Events {
    pub fn open(url: &str) -> Events {
        let response = agent().get(url).call().unwrap();
        assert_eq!(response.content_type(), "text/event-stream");
        Events(BufReader::new(response.into_reader()))
    }
}

impl Iterator for Events {
    type Item = (String, Value);

    fn next(&mut self) -> Option<(String, Value)> {
        let (mut event, mut data) = (String::new(), String::new());
        loop {
            let mut line = String::new();
            if self.0.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() && !data.is_empty() {
                return Some((event, json(data.as_bytes())));
            }
            if let Some(e) = line.strip_prefix("event:") {
                event = e.trim().to_string();
            } else if let Some(d) = line.strip_prefix("data:") {
                data.push_str(d.trim_start());
            }
        }
    }
}
