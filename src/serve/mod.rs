//! `udit serve`: one model behind a web page and a JSON API, on a tokio runtime (axum).
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the page (`page.html`, embedded) |
//! | `POST /api/generate` | settings in, a queued job out (202; 400 bad settings; 429 queue full) |
//! | `GET /api/jobs/{id}` | state, progress, image URLs |
//! | `GET /api/jobs/{id}/events` | server-sent events: `status` after each step, `preview` |
//! | `GET /api/jobs/{id}/images/{k}.png` | a finished image, the bytes `udit sample` writes |
//! | `DELETE /api/jobs/{id}` | cancel: stops within one sampling step |
//! | `GET /api/model` | configuration, classes, samplers, defaults, limits |
//! | `GET /healthz` | liveness and queue length |
//!
//! Sampling runs on one worker thread (`jobs.rs`); handlers only read job progress. Job ids
//! are made here and looked up in a table, image numbers are parsed as integers: no part of
//! a request becomes part of a file path, so the server reads and writes only in `out/<id>/`.

mod api;
mod jobs;

use std::collections::HashMap;
use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use burn::prelude::Device;
use futures_util::Stream;
use serde_json::{Value, json};

pub use api::Limits;
use api::{ApiError, GenerateRequest, JobStatus};
use jobs::{Job, Queue, Worker};

use crate::classes::ClassNames;
use crate::io::images::png_name;
use crate::model::ModelConfig;
use crate::process::Process;
use crate::sample::SamplingModel;

const PAGE: &str = include_str!("page.html");

/// How `udit serve` runs (its flags).
pub struct Options {
    pub addr: SocketAddr,
    /// Every job writes into `out/<id>/`.
    pub out: PathBuf,
    /// Jobs that may wait behind the running one.
    pub queue: usize,
    pub limits: Limits,
    /// Decode a live preview every this many steps (0 = never).
    pub preview_every: usize,
    /// Cancel a job nobody has watched for this long.
    pub abandon_after: Duration,
}

/// What the handlers share.
struct App {
    jobs: Mutex<HashMap<String, Arc<Job>>>,
    queue: Arc<Queue>,
    config: ModelConfig,
    process: Process,
    names: ClassNames,
    limits: Limits,
    out: PathBuf,
    model_info: Value,
    /// Images per sampling run: the model's default batch, so a job's PNGs are `udit sample`'s.
    batch: usize,
}

type Shared = State<Arc<App>>;

/// Listens on `opts.addr`, prints the address, and serves until the process ends.
pub fn run(model: SamplingModel, device: Device, opts: Options) -> Result<()> {
    let listener = std::net::TcpListener::bind(opts.addr).with_context(|| format!("cannot listen on {}", opts.addr))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let queue = Arc::new(Queue::new(opts.queue));
    let process = model.process.process()?;
    let app = Arc::new(App {
        jobs: Mutex::new(HashMap::new()),
        queue: queue.clone(),
        model_info: api::model_info(
            &model.config,
            &process,
            &model.names,
            model.image_shape()?,
            opts.limits,
            opts.queue,
        ),
        config: model.config.clone(),
        process,
        names: model.names.clone(),
        limits: opts.limits,
        out: opts.out,
        batch: model.default_batch(),
    });
    Worker { model, device, preview_every: opts.preview_every, abandon_after: opts.abandon_after }.spawn(queue)?;
    eprintln!("serving on http://{addr} (Ctrl-C stops)");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        axum::serve(listener, router(app)).await.context("the server stopped")
    })
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/healthz", get(healthz))
        .route("/api/model", get(|State(app): Shared| async move { Json(app.model_info.clone()) }))
        .route("/api/generate", axum::routing::post(generate))
        .route("/api/jobs/{id}", get(status).delete(cancel))
        .route("/api/jobs/{id}/events", get(events))
        .route("/api/jobs/{id}/images/{file}", get(image))
        .fallback(|uri: Uri| async move { ApiError::not_found(format!("no such endpoint: {}", uri.path())) })
        .layer(DefaultBodyLimit::max(64 * 1024))
        .with_state(app)
}

async fn healthz(State(app): Shared) -> Json<Value> {
    let (queued, running) = app.queue.load();
    Json(json!({"status": "ok", "queued": queued, "running": running, "queue_limit": app.queue.capacity}))
}

/// A fresh, hard-to-guess job id: 16 hex digits.
fn new_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:016x}", std::collections::hash_map::RandomState::new().hash_one(n))
}

impl App {
    fn job(&self, id: &str) -> Result<Arc<Job>, ApiError> {
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.get(id).cloned().ok_or_else(|| ApiError::not_found(format!("no job {id:?}")))
    }

    fn status(&self, job: &Job) -> JobStatus {
        JobStatus::of(job, self.queue.position(&job.id), &self.names)
    }
}

async fn generate(State(app): Shared, body: Bytes) -> Result<(StatusCode, Json<JobStatus>), ApiError> {
    let request = GenerateRequest::parse(&body).map_err(ApiError::bad_request)?;
    let (shown, settings) =
        request.resolve(&app.config, &app.process, &app.names, app.limits).map_err(ApiError::bad_request)?;
    let labels = settings.labels(0, shown.num_samples, app.config.num_classes());
    // dopri5 chooses its calls as it runs: its time points stand in.
    let times = settings.method.call_times(&app.process).map_err(ApiError::bad_request)?;
    let calls = times.map_or(settings.method.steps(), |t| t.len());
    let mut jobs = app.jobs.lock().unwrap_or_else(|e| e.into_inner());
    let id = std::iter::repeat_with(new_id).find(|id| !jobs.contains_key(id)).expect("endless");
    let job = Arc::new(Job::new(id.clone(), shown, settings, app.batch, calls, labels, app.out.join(&id)));
    if app.queue.push(job.clone()).is_err() {
        let why = format!("the queue is full ({} jobs wait already); try again later", app.queue.capacity);
        return Err(ApiError(StatusCode::TOO_MANY_REQUESTS, why));
    }
    jobs.insert(id, job.clone());
    drop(jobs);
    Ok((StatusCode::ACCEPTED, Json(app.status(&job))))
}

async fn status(State(app): Shared, Path(id): Path<String>) -> Result<Json<JobStatus>, ApiError> {
    let job = app.job(&id)?;
    job.touch();
    Ok(Json(app.status(&job)))
}

/// Cancels a waiting or running job (a running one stops at its next step); a finished job
/// stays as it is. Answers with the job's status.
async fn cancel(State(app): Shared, Path(id): Path<String>) -> Result<Json<JobStatus>, ApiError> {
    let job = app.job(&id)?;
    job.request_cancel();
    if app.queue.withdraw(&id) {
        job.finish(jobs::State::Cancelled, Some("cancelled by request".into()));
    }
    Ok(Json(app.status(&job)))
}

async fn image(State(app): Shared, Path((id, file)): Path<(String, String)>) -> Result<Response, ApiError> {
    let job = app.job(&id)?;
    job.touch();
    let done = job.progress().images_done;
    let count = job.labels.len();
    let k = file.strip_suffix(".png").and_then(|k| k.parse::<usize>().ok()).filter(|&k| k < count);
    let Some(k) = k else {
        return Err(ApiError::not_found(format!("no image {file:?}: job {id} has 0.png to {}.png", count - 1)));
    };
    if k >= done {
        return Err(ApiError::not_found(format!("image {k} of job {id} is not ready yet")));
    }
    let bytes = std::fs::read(job.dir.join(png_name(k)))
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot read image {k} of job {id}: {e}")))?;
    let disposition = format!("inline; filename=\"udit-{id}-{k}.png\"");
    Ok(([(header::CONTENT_TYPE, "image/png".to_string()), (header::CONTENT_DISPOSITION, disposition)], bytes)
        .into_response())
}

/// Server-sent events: `status` (the job's status) after every change, `preview` (the x_0
/// prediction as PNG data URLs) when a new one is decoded; the stream ends after the status
/// of a finished job.
async fn events(State(app): Shared, Path(id): Path<String>) -> Result<impl IntoResponse, ApiError> {
    let job = app.job(&id)?;
    Ok(Sse::new(event_stream(app, job)).keep_alive(KeepAlive::new().interval(Duration::from_secs(5))))
}

fn event_stream(app: Arc<App>, job: Arc<Job>) -> impl Stream<Item = Result<Event, axum::Error>> {
    let (changes, watching) = job.watch();
    struct Feed {
        app: Arc<App>,
        job: Arc<Job>,
        changes: tokio::sync::watch::Receiver<()>,
        _watching: jobs::Watching,
        pending: VecDeque<Result<Event, axum::Error>>,
        last_preview: Option<(usize, usize)>,
        ended: bool,
    }
    let feed =
        Feed { app, job, changes, _watching: watching, pending: VecDeque::new(), last_preview: None, ended: false };
    futures_util::stream::unfold(feed, |mut f| async move {
        loop {
            if let Some(event) = f.pending.pop_front() {
                return Some((event, f));
            }
            if f.ended || f.changes.changed().await.is_err() {
                return None;
            }
            let progress = f.job.progress();
            if let Some(p) = progress.preview.filter(|p| Some((p.first, p.step)) != f.last_preview) {
                f.last_preview = Some((p.first, p.step));
                f.pending.push_back(Event::default().event("preview").json_data(&*p));
            }
            f.pending.push_back(Event::default().event("status").json_data(f.app.status(&f.job)));
            f.ended = progress.state.is_final();
        }
    })
}
