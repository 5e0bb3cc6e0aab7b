//! `udit serve` end to end: a server process on an ephemeral port with the tiny fixture model,
//! driven over HTTP as the page and scripts drive it.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use base64::Engine;
use common::server::{Events, Server, tiny_model};
use common::udit;
use serde_json::Value;
use udit::io::images::png_name;

/// Starts a job that holds the worker for minutes (1000 guided steps, two batches) and waits
/// until it runs: jobs posted after it wait in the queue.
fn start_blocker(s: &Server) -> String {
    // (num_images: the old name of num_samples, still taken)
    let (status, job) = s.post("/api/generate", r#"{"sampler": "ancestral", "steps": 1000, "num_images": 16}"#);
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    s.wait_for(&id, 60, |j| j["state"] == "running");
    id
}

fn id_of(job: &Value) -> String {
    job["id"].as_str().unwrap_or_else(|| panic!("no id in {job}")).to_string()
}

/// A PNG's side and channel count.
fn png_shape(bytes: &[u8]) -> (u32, u32, u8) {
    let image = image::load_from_memory_with_format(bytes, image::ImageFormat::Png).unwrap();
    (image.width(), image.height(), image.color().channel_count())
}

#[test]
fn generate_poll_events_and_the_bytes_of_udit_sample() {
    let s = Server::start(&[tiny_model(), vec!["--preview-every".into(), "2".into()]].concat());
    let (status, health) = s.get_json("/healthz");
    assert_eq!((status, &health["status"]), (200, &Value::from("ok")), "{health}");
    let (status, model) = s.get_json("/api/model");
    assert_eq!(status, 200);
    assert_eq!(model["num_classes"], 10);
    assert_eq!(model["classes"].as_array().unwrap().len(), 10);
    assert_eq!((&model["image"]["side"], &model["image"]["channels"]), (&Value::from(64), &Value::from(3)));
    assert_eq!(model["defaults"]["sampler"], "dpm++");
    assert_eq!(model["limits"]["max_samples"], 16);
    let (status, page) = s.get("/");
    let page = String::from_utf8(page).unwrap();
    assert!(status == 200 && page.contains("<title>udit serve</title>") && page.contains("/api/generate"));

    // The blocker makes the job wait, so its event stream is open from its first step.
    let blocker = start_blocker(&s);
    let body = r#"{"class": 3, "cfg_scale": 1.5, "sampler": "dpm++", "steps": 6, "seed": 5, "num_samples": 9}"#;
    let (status, job) = s.post("/api/generate", body);
    assert_eq!(status, 202, "{job}");
    let id = id_of(&job);
    assert!(id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
    assert_eq!((&job["state"], &job["position"]), (&Value::from("queued"), &Value::from(0)));
    assert_eq!(job["steps_total"], 12, "9 images are a batch of 8 and one of 1, 6 steps each");
    assert_eq!(job["labels"], serde_json::json!([3, 3, 3, 3, 3, 3, 3, 3, 3]));
    assert_eq!(job["settings"]["seed"], 5);
    let mut events = Events::open(&s.url(&format!("/api/jobs/{id}/events")));
    let (kind, first) = events.next().unwrap();
    assert_eq!((kind.as_str(), &first["state"]), ("status", &Value::from("queued")));

    let (status, stopped) = s.delete(&format!("/api/jobs/{blocker}"));
    assert_eq!(status, 200, "{stopped}");
    let at = stopped["step"].as_u64().unwrap();
    let (mut steps, mut previews, mut last) = (vec![], vec![], Value::Null);
    for (kind, data) in events {
        match kind.as_str() {
            "status" => {
                steps.push(data["step"].as_u64().unwrap());
                last = data;
            }
            "preview" => previews.push(data),
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert_eq!(last["state"], "done", "the stream ends with the finished status: {last}");
    assert!(steps.windows(2).all(|w| w[0] <= w[1]) && steps.last() == Some(&12), "{steps:?}");
    // Every 2 steps before a batch's last: steps 2 and 4 of each batch (a slow reader may
    // see only the newest of two).
    assert!(!previews.is_empty());
    let order: Vec<(u64, u64)> =
        previews.iter().map(|p| (p["first"].as_u64().unwrap(), p["step"].as_u64().unwrap())).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    for (p, (first, step)) in previews.iter().zip(&order) {
        assert!([0, 8].contains(first) && [2, 4].contains(step), "{order:?}");
        let images = p["images"].as_array().unwrap();
        assert_eq!(images.len(), if *first == 0 { 8 } else { 1 });
        for url in images {
            let b64 = url.as_str().unwrap().strip_prefix("data:image/png;base64,").unwrap();
            let png = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
            assert_eq!(png_shape(&png), (64, 64, 3));
        }
    }

    let (status, done) = s.get_json(&format!("/api/jobs/{id}"));
    assert_eq!((status, &done["state"]), (200, &Value::from("done")));
    assert_eq!(done["images"].as_array().unwrap().len(), 9);
    assert!(done["elapsed_s"].as_f64().unwrap() > 0.0 && done["message"].is_null(), "{done}");

    // Byte for byte what `udit sample` writes for the same settings.
    let dir = tempfile::tempdir().unwrap();
    let flags = "sample --class 3 --cfg-scale 1.5 --sampler dpm++ --steps 6 --seed 5 --num-samples 9 --out";
    let mut args: Vec<String> = flags.split(' ').map(String::from).collect();
    args.push(dir.path().to_str().unwrap().to_string());
    args.extend(tiny_model());
    let (ok, _, err) = udit(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{err}");
    for k in 0..9 {
        let (status, bytes) = s.get(&format!("/api/jobs/{id}/images/{k}.png"));
        assert_eq!(status, 200);
        assert_eq!(png_shape(&bytes), (64, 64, 3));
        assert!(bytes == std::fs::read(dir.path().join(png_name(k))).unwrap(), "image {k} differs from udit sample's");
        assert!(bytes == std::fs::read(s.out.path().join(&id).join(png_name(k))).unwrap());
    }
    let saved: Value = common::server::json(&std::fs::read(s.out.path().join(&id).join("settings.json")).unwrap());
    assert_eq!(saved, done["settings"]);

    let b = s.wait_for(&blocker, 30, |j| j["state"] != "running");
    assert_eq!((&b["state"], &b["message"]), (&Value::from("cancelled"), &Value::from("cancelled by request")));
    assert!(b["step"].as_u64().unwrap() <= at + 1, "stopped at step {} after a DELETE at {at}", b["step"]);
}

#[test]
fn cancel_stops_waiting_and_running_jobs() {
    let s = Server::start(&tiny_model());
    let blocker = start_blocker(&s);
    let (status, waiting) = s.post("/api/generate", r#"{"steps": 2, "num_samples": 1}"#);
    assert_eq!((status, &waiting["position"]), (202, &Value::from(0)), "{waiting}");
    let (status, c) = s.delete(&format!("/api/jobs/{}", id_of(&waiting)));
    assert_eq!((status, &c["state"], &c["step"]), (200, &Value::from("cancelled"), &Value::from(0)), "{c}");
    assert_eq!(s.get_json("/healthz").1["queued"], 0, "a cancelled job leaves the queue");

    s.wait_for(&blocker, 60, |j| j["step"].as_u64().unwrap() >= 3);
    let (_, c) = s.delete(&format!("/api/jobs/{blocker}"));
    let at = c["step"].as_u64().unwrap();
    let b = s.wait_for(&blocker, 30, |j| j["state"] != "running");
    assert_eq!(b["state"], "cancelled");
    assert!(b["step"].as_u64().unwrap() <= at + 1, "stopped at step {} after a DELETE at {at}", b["step"]);
    assert!(b["images"].as_array().unwrap().is_empty());

    // A finished job stays finished, with its images.
    let (_, small) = s.post("/api/generate", r#"{"steps": 2, "num_samples": 1}"#);
    let id = id_of(&small);
    s.wait_for(&id, 60, |j| j["state"] == "done");
    let (status, after) = s.delete(&format!("/api/jobs/{id}"));
    assert_eq!((status, &after["state"]), (200, &Value::from("done")));
    assert_eq!(s.get(&format!("/api/jobs/{id}/images/0.png")).0, 200);
    let (status, e) = s.delete("/api/jobs/0123456789abcdef");
    assert!(status == 404 && e["error"].as_str().unwrap().contains("no job"), "{e}");
}

/// Asserts an answer is `status` with one line of JSON, `{"error": "...wanted..."}`.
fn assert_error(answer: (u16, Vec<u8>), status: u16, wanted: &str, what: &str) {
    let text = String::from_utf8(answer.1).unwrap();
    assert_eq!(answer.0, status, "{what}: {text}");
    assert!(!text.trim_end().contains('\n'), "{what}: not one line: {text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    let object = body.as_object().unwrap();
    assert!(object.len() == 1 && body["error"].as_str().unwrap().contains(wanted), "{what}: {text}");
}

#[test]
fn bad_input_gets_one_line_json_errors() {
    let s = Server::start(&tiny_model());
    let cases = [
        (r#"{"class": 10}"#, "class 10 does not exist: the model has classes 0..9"),
        (r#"{"class": "hat"}"#, "this model has no class names"),
        (r#"{"class": -1}"#, "class must be an index"),
        (r#"{"class": [1, 2]}"#, "class must be an index"),
        (r#"{"steps": 0}"#, "steps must be between 1 and 1000"),
        (r#"{"steps": 1001}"#, "steps must be between 1 and 1000"),
        (r#"{"sampler": "ddim", "steps": 999}"#, "cannot make 999 equally strided steps out of 1000"),
        (r#"{"sampler": "ddim", "eta": 1.5}"#, "eta must be between 0 and 1"),
        (r#"{"sampler": "euler"}"#, "unknown sampler \"euler\""),
        (r#"{"cfg_scale": 0.5}"#, "cfg-scale must be at least 1"),
        (r#"{"num_samples": 0}"#, "num_samples must be between 1 and 16"),
        (r#"{"num_samples": 17}"#, "num_samples must be between 1 and 16"),
        (r#"{"seed": -3}"#, "not a generate request"),
        (r#"{"steps": "many"}"#, "not a generate request"),
        (r#"{"prompt": "a cat"}"#, "unknown field `prompt`"),
        ("[]", "not a generate request"),
        ("not json", "not a generate request"),
        ("", "not a generate request"),
    ];
    let agent = common::server::agent();
    for (body, wanted) in cases {
        let answer = common::server::call(agent.post(&s.url("/api/generate")), Some(body));
        assert_error(answer, 400, wanted, body);
    }
    assert_eq!(s.get_json("/healthz").1["queued"], 0, "nothing refused was queued");

    // Paths: ids are looked up, image numbers parsed; nothing else reaches the file system.
    let (_, job) = s.post("/api/generate", r#"{"steps": 1, "num_samples": 2}"#);
    let id = id_of(&job);
    s.wait_for(&id, 60, |j| j["state"] == "done");
    std::fs::write(s.out.path().join("secret.png"), b"not for clients").unwrap();
    assert_error(s.get(&format!("/api/jobs/{id}/images/2.png")), 404, "has 0.png to 1.png", "out of range");
    for bad in ["..%2Fsecret.png", "..%2F..%2Fsecret.png", "%2E%2E%2Fsecret.png", "-1.png", "0", "0.jpg", "00.png.png"]
    {
        assert_error(s.get(&format!("/api/jobs/{id}/images/{bad}")), 404, "no image", bad);
    }
    assert_error(s.get("/api/jobs/..%2Fsecret/images/0.png"), 404, "no job", "id");
    assert_error(s.get("/api/jobs/nothing"), 404, "no job", "unknown id");
    assert_error(s.get("/api/jobs/nothing/events"), 404, "no job", "unknown id's events");
    assert_error(s.get("/secret.png"), 404, "no such endpoint", "unknown path");
    assert_eq!(s.get(&format!("/api/jobs/{id}/images/1.png")).0, 200);
}

#[test]
fn twenty_concurrent_clients_respect_the_queue_limit_and_lose_nothing() {
    const CLIENTS: usize = 20;
    const QUEUE: usize = 3;
    let s = Arc::new(Server::start(&[tiny_model(), vec!["--queue".into(), QUEUE.to_string()]].concat()));
    let blocker = start_blocker(&s);
    // Clients i and i + 10 ask for the same class and seed, so for the same image.
    let body = |i: usize| format!(r#"{{"class": {}, "seed": {}, "steps": 3, "num_samples": 1}}"#, i % 10, i % 5);

    // While the worker is busy: exactly QUEUE of 20 simultaneous requests get in.
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let first: Vec<(u16, Value)> = (0..CLIENTS)
        .map(|i| {
            let (s, barrier, body) = (s.clone(), barrier.clone(), body(i));
            std::thread::spawn(move || {
                barrier.wait();
                s.post("/api/generate", &body)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    assert_eq!(s.get_json(&format!("/api/jobs/{blocker}")).1["state"], "running", "the worker was busy throughout");
    assert_eq!(first.iter().filter(|(status, _)| *status == 202).count(), QUEUE);
    for (status, answer) in first.iter().filter(|(status, _)| *status != 202) {
        assert_eq!(*status, 429, "{answer}");
        assert!(answer["error"].as_str().unwrap().contains("the queue is full"), "{answer}");
    }
    assert_eq!(s.get_json("/healthz").1["queued"], QUEUE);

    // Then everyone gets served: refused clients retry until they get in, a watcher checks the
    // queue never holds more than QUEUE, and every client gets its image.
    let finished = Arc::new(AtomicBool::new(false));
    let most = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let (s, finished, most) = (s.clone(), finished.clone(), most.clone());
        std::thread::spawn(move || {
            while !finished.load(Ordering::SeqCst) {
                let queued = s.get_json("/healthz").1["queued"].as_u64().unwrap() as usize;
                most.fetch_max(queued, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    s.delete(&format!("/api/jobs/{blocker}"));
    let clients: Vec<_> = first
        .into_iter()
        .enumerate()
        .map(|(i, (status, answer))| {
            let (s, body) = (s.clone(), body(i));
            std::thread::spawn(move || {
                let mut answer = (status, answer);
                while answer.0 == 429 {
                    std::thread::sleep(Duration::from_millis(50));
                    answer = s.post("/api/generate", &body);
                }
                assert_eq!(answer.0, 202, "{}", answer.1);
                let id = id_of(&answer.1);
                let job = s.wait_for(&id, 300, |j| j["state"] != "queued" && j["state"] != "running");
                assert_eq!(job["state"], "done", "{job}");
                assert_eq!(job["labels"][0], i % 10);
                let (status, png) = s.get(&format!("/api/jobs/{id}/images/0.png"));
                assert_eq!(status, 200);
                assert_eq!(png_shape(&png), (64, 64, 3));
                (id, png)
            })
        })
        .collect();
    let results: Vec<(String, Vec<u8>)> = clients.into_iter().map(|t| t.join().unwrap()).collect();
    finished.store(true, Ordering::SeqCst);
    watcher.join().unwrap();
    assert!(most.load(Ordering::SeqCst) <= QUEUE, "{} jobs waited at once", most.load(Ordering::SeqCst));
    let ids: std::collections::HashSet<&String> = results.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), CLIENTS, "every client got its own job");
    for i in 0..10 {
        assert!(results[i].1 == results[i + 10].1, "clients {i} and {} asked for the same image", i + 10);
    }
    assert!(results[0].1 != results[5].1, "same seed, other class, other image");
}

#[test]
fn jobs_nobody_watches_stop() {
    let s = Server::start(&[tiny_model(), vec!["--abandon-after".into(), "1".into()]].concat());
    // Posted, then never asked about again.
    let (_, job) = s.post("/api/generate", r#"{"sampler": "ancestral", "steps": 1000}"#);
    s.wait_idle(60);
    let job = s.get_json(&format!("/api/jobs/{}", id_of(&job))).1;
    assert_eq!(job["state"], "cancelled", "{job}");
    assert!(job["message"].as_str().unwrap().starts_with("abandoned"), "{job}");
    assert!(job["step"].as_u64().unwrap() < 1000);

    // Watched through its event stream, then the client goes away.
    let (_, job) = s.post("/api/generate", r#"{"sampler": "ancestral", "steps": 1000}"#);
    let id = id_of(&job);
    let mut events = Events::open(&s.url(&format!("/api/jobs/{id}/events")));
    assert!(events.any(|(_, st)| st["step"].as_u64().unwrap_or(0) >= 2));
    // An open stream keeps it alive past the abandon time (`/healthz` asks about no job).
    std::thread::sleep(Duration::from_millis(2500));
    let health = s.get_json("/healthz").1;
    assert_eq!((&health["running"], &health["queued"]), (&Value::from(true), &Value::from(0)), "{health}");
    drop(events);
    s.wait_idle(60);
    let job = s.get_json(&format!("/api/jobs/{id}")).1;
    assert_eq!(job["state"], "cancelled", "{job}");
    assert!(job["message"].as_str().unwrap().starts_with("abandoned"), "{job}");
}

#[test]
fn a_failed_job_says_why_and_the_next_one_runs() {
    let s = Server::start(&tiny_model());
    // A file where the output folder was: the job cannot make its folder.
    std::fs::remove_dir(s.out.path()).unwrap();
    std::fs::write(s.out.path(), b"in the way").unwrap();
    let (_, job) = s.post("/api/generate", r#"{"steps": 1, "num_samples": 1}"#);
    let job = s.wait_for(&id_of(&job), 60, |j| j["state"] != "queued" && j["state"] != "running");
    assert_eq!(job["state"], "failed", "{job}");
    assert!(job["message"].as_str().unwrap().starts_with("cannot create "), "{job}");
    std::fs::remove_file(s.out.path()).unwrap();
    std::fs::create_dir(s.out.path()).unwrap();
    let (_, job) = s.post("/api/generate", r#"{"steps": 1, "num_samples": 1}"#);
    s.wait_for(&id_of(&job), 60, |j| j["state"] == "done");
}

#[test]
fn serving_beyond_loopback_needs_a_flag_and_warns() {
    let (ok, _, err) = udit(&["serve", "--addr", "0.0.0.0:0"]);
    assert!(!ok && err.trim().lines().count() == 1 && err.contains("needs --allow-remote"), "{err}");
    let s = Server::start_on("0.0.0.0:0", &[tiny_model(), vec!["--allow-remote".into()]].concat());
    assert!(s.log.lock().unwrap().lines().any(|l| l.starts_with("warning: listening on 0.0.0.0:0")));
    let port = s.base.rsplit(':').next().unwrap();
    let (status, health) =
        common::server::call(common::server::agent().get(&format!("http://127.0.0.1:{port}/healthz")), None);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&health));
}

#[test]
fn a_sit_model_serves_with_the_interpolant_samplers() {
    let f = |name: &str| common::fixture(name).to_str().unwrap().to_string();
    let args = ["--config", &f("sit_tiny.json"), "--ckpt", &f("sit_tiny.state-dict.pt"), "--codec", &f("vae_tiny")];
    let s = Server::start(&args.map(String::from));
    let (_, model) = s.get_json("/api/model");
    let samplers: Vec<&str> =
        model["samplers"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(samplers, ["sde", "sde-heun", "euler", "heun2", "rk4", "dopri5"]);
    assert_eq!(model["defaults"]["sampler"], "heun2");
    let (status, job) = s.post("/api/generate", r#"{"class": 4, "sampler": "sde", "steps": 5, "num_samples": 2}"#);
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["steps_total"], 5, "4 SDE steps and the last step");
    let done = s.wait_for(&id_of(&job), 120, |j| j["state"] != "queued" && j["state"] != "running");
    assert_eq!(done["state"], "done", "{done}");
    let (status, png) = s.get(&format!("/api/jobs/{}/images/000001.png", id_of(&job)));
    assert_eq!((status, png_shape(&png)), (200, (64, 64, 3)), "an RGB image of the tiny VAE");
    // A Gaussian sampler is refused for an interpolant, in one line of JSON.
    let (status, err) = s.post("/api/generate", r#"{"sampler": "ddim"}"#);
    assert_eq!(status, 400);
    assert!(err["error"].as_str().unwrap().contains("for an interpolant"), "{err}");
}
