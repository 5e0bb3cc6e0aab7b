//! Jobs and the one worker that runs them. The worker thread owns the model (its tensors stay
//! on that thread) and takes jobs in order from a bounded queue; a job's progress is shared
//! with the HTTP handlers, which are told of every change through a `watch` channel.
//!
//! Stopping: the sampler tells the worker after every denoiser call (`Generator::generate`'s
//! `on_step`), and an error returned there ends its loop. So a job stops within one step of
//! a DELETE, and within one step of being abandoned: no event stream open and no request
//! about it for `abandon_after` (its client went away).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use base64::Engine;
use burn::prelude::*;
use serde::Serialize;
use tokio::sync::watch;

use super::api::JobSettings;
use crate::io::images::{png_bytes, write_pngs};
use crate::sample::{Generator, SamplingModel, Settings};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl State {
    pub fn is_final(self) -> bool {
        matches!(self, Self::Done | Self::Failed | Self::Cancelled)
    }
}

/// The latest x_0 prediction of the batch being sampled: images `first..` as PNG data URLs.
#[derive(Debug, Serialize)]
pub struct Preview {
    pub first: usize,
    /// The denoiser call of its batch that predicted it.
    pub step: usize,
    pub images: Vec<String>,
}

/// What changes while a job runs.
#[derive(Clone, Debug)]
pub struct Progress {
    pub state: State,
    /// Denoiser calls done, over all batches.
    pub step: usize,
    /// The finished batch is going through the codec.
    pub decoding: bool,
    /// Images written (0.png .. images_done-1.png can be fetched).
    pub images_done: usize,
    /// Why the job failed or was cancelled.
    pub message: Option<String>,
    pub preview: Option<Arc<Preview>>,
    pub elapsed: Option<Duration>,
}

/// One generate request: its settings, its output folder and its progress.
pub struct Job {
    pub id: String,
    /// The request with its defaults filled in, as the API shows it.
    pub request: JobSettings,
    pub settings: Settings,
    /// Images per sampling run (the model's default batch, as `udit sample`).
    batch: usize,
    /// Denoiser calls per batch (Heun's 2N - 1 for N steps, else N).
    calls: usize,
    /// The class of each image.
    pub labels: Vec<i64>,
    /// `out/<id>`, where its PNGs go.
    pub dir: PathBuf,
    progress: Mutex<Progress>,
    started: Mutex<Option<Instant>>,
    cancel: AtomicBool,
    watchers: AtomicUsize,
    last_seen: Mutex<Instant>,
    changed: watch::Sender<()>,
}

/// Why a job stopped before its end (the step callback's error).
#[derive(Debug)]
struct Stopped(String);

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Stopped {}

/// Locks a mutex; a panic elsewhere while it was held leaves plain data, still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Job {
    pub fn new(
        id: String,
        request: JobSettings,
        settings: Settings,
        batch: usize,
        calls: usize,
        labels: Vec<i64>,
        dir: PathBuf,
    ) -> Self {
        let progress = Progress {
            state: State::Queued,
            step: 0,
            decoding: false,
            images_done: 0,
            message: None,
            preview: None,
            elapsed: None,
        };
        Self {
            id,
            request,
            settings,
            batch,
            calls,
            labels,
            dir,
            progress: Mutex::new(progress),
            started: Mutex::new(None),
            cancel: AtomicBool::new(false),
            watchers: AtomicUsize::new(0),
            last_seen: Mutex::new(Instant::now()),
            changed: watch::Sender::new(()),
        }
    }

    /// Denoiser calls of the whole job: one sampling run per batch.
    pub fn steps_total(&self) -> usize {
        self.labels.len().div_ceil(self.batch) * self.calls
    }

    pub fn progress(&self) -> Progress {
        let mut p = lock(&self.progress).clone();
        if !p.state.is_final() {
            p.elapsed = lock(&self.started).map(|t| t.elapsed());
        }
        p
    }

    /// Changes the progress and tells every watcher.
    fn update(&self, change: impl FnOnce(&mut Progress)) {
        change(&mut lock(&self.progress));
        self.changed.send_replace(());
    }

    /// Tells the watchers without a change of its own (its queue position moved).
    pub fn notify(&self) {
        self.changed.send_replace(());
    }

    /// Ends the job in a final state.
    pub fn finish(&self, state: State, message: Option<String>) {
        let elapsed = lock(&self.started).map(|t| t.elapsed());
        self.update(|p| {
            p.state = state;
            p.message = message;
            p.decoding = false;
            p.preview = None;
            p.elapsed = elapsed;
        });
    }

    /// A client asked about the job: it is still wanted.
    pub fn touch(&self) {
        *lock(&self.last_seen) = Instant::now();
    }

    /// Asks the worker to stop the job at its next step.
    pub fn request_cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// A receiver told of every change (the first `changed()` returns at once) and a guard
    /// that counts the caller as watching until it is dropped.
    pub fn watch(self: &Arc<Self>) -> (watch::Receiver<()>, Watching) {
        let mut rx = self.changed.subscribe();
        rx.mark_changed();
        self.watchers.fetch_add(1, Ordering::SeqCst);
        (rx, Watching(self.clone()))
    }

    /// Why the job must stop now, if it must.
    fn stop_reason(&self, abandon_after: Duration) -> Option<String> {
        if self.cancel.load(Ordering::SeqCst) {
            return Some("cancelled by request".into());
        }
        let unwatched = self.watchers.load(Ordering::SeqCst) == 0;
        (unwatched && lock(&self.last_seen).elapsed() > abandon_after).then(|| {
            format!(
                "abandoned: nobody watched it for {} s (no event stream, no status request)",
                abandon_after.as_secs()
            )
        })
    }
}

/// An open event stream of a job; dropping it (the client went away) starts the abandon clock.
pub struct Watching(Arc<Job>);

impl Drop for Watching {
    fn drop(&mut self) {
        self.0.touch();
        self.0.watchers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The waiting jobs, at most `capacity`, and the one running.
pub struct Queue {
    inner: Mutex<Waiting>,
    ready: Condvar,
    pub capacity: usize,
}

#[derive(Default)]
struct Waiting {
    jobs: VecDeque<Arc<Job>>,
    running: bool,
}

/// The queue holds `capacity` waiting jobs already.
pub struct Full;

impl Queue {
    pub fn new(capacity: usize) -> Self {
        Self { inner: Mutex::new(Waiting::default()), ready: Condvar::new(), capacity }
    }

    /// Appends a job; returns its place (0 = next).
    pub fn push(&self, job: Arc<Job>) -> Result<usize, Full> {
        let mut w = lock(&self.inner);
        if w.jobs.len() >= self.capacity {
            return Err(Full);
        }
        w.jobs.push_back(job);
        self.ready.notify_one();
        Ok(w.jobs.len() - 1)
    }

    /// The place of a waiting job (0 = next).
    pub fn position(&self, id: &str) -> Option<usize> {
        lock(&self.inner).jobs.iter().position(|j| j.id == id)
    }

    /// Takes a waiting job out of the queue; false when it is not waiting (any more).
    pub fn withdraw(&self, id: &str) -> bool {
        let mut w = lock(&self.inner);
        let Some(at) = w.jobs.iter().position(|j| j.id == id) else { return false };
        w.jobs.remove(at);
        w.jobs.iter().skip(at).for_each(|j| j.notify());
        true
    }

    /// Jobs waiting, and whether one is running.
    pub fn load(&self) -> (usize, bool) {
        let w = lock(&self.inner);
        (w.jobs.len(), w.running)
    }

    /// Waits for the next job and marks it running; the others move up a place.
    fn next(&self) -> Arc<Job> {
        let mut w = lock(&self.inner);
        w.running = false;
        loop {
            if let Some(job) = w.jobs.pop_front() {
                w.running = true;
                w.jobs.iter().for_each(|j| j.notify());
                return job;
            }
            w = self.ready.wait(w).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// The sampling side of the server: owns the model, runs one job at a time.
pub struct Worker {
    pub model: SamplingModel,
    pub device: Device,
    /// Decode a preview every this many denoiser calls while someone watches (0 = never).
    pub preview_every: usize,
    pub abandon_after: Duration,
}

impl Worker {
    /// Runs the jobs of `queue`, in order, for as long as the process lives.
    pub fn spawn(self, queue: Arc<Queue>) -> Result<()> {
        std::thread::Builder::new()
            .name("udit-serve-sampler".into())
            .spawn(move || {
                loop {
                    let job = queue.next();
                    self.run(&job);
                }
            })
            .context("cannot start the sampling thread")?;
        Ok(())
    }

    fn run(&self, job: &Job) {
        if let Some(reason) = job.stop_reason(self.abandon_after) {
            return job.finish(State::Cancelled, Some(reason));
        }
        *lock(&job.started) = Some(Instant::now());
        job.update(|p| p.state = State::Running);
        // A panic fails this job only: the worker lives on for the jobs behind it.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.sample(job)));
        let (state, message) = match outcome {
            Ok(Ok(())) => (State::Done, None),
            Ok(Err(e)) => match e.downcast_ref::<Stopped>() {
                Some(Stopped(reason)) => (State::Cancelled, Some(reason.clone())),
                None => (State::Failed, Some(format!("{e:#}"))),
            },
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned());
                (State::Failed, Some(format!("sampling panicked: {}", what.unwrap_or_default())))
            }
        };
        job.finish(state, message);
        let p = job.progress();
        let why = p.message.map(|m| format!(": {m}")).unwrap_or_default();
        let secs = p.elapsed.unwrap_or_default().as_secs_f64();
        let state = format!("{state:?}").to_lowercase();
        eprintln!("job {}: {state} after {} of {} steps, {secs:.1} s{why}", job.id, p.step, job.steps_total());
    }

    /// Samples the job's images batch by batch into its folder, as `udit sample` does.
    fn sample(&self, job: &Job) -> Result<()> {
        std::fs::create_dir_all(&job.dir).with_context(|| format!("cannot create {}", job.dir.display()))?;
        let settings = serde_json::to_vec_pretty(&job.request)?;
        crate::io::write_atomic(&job.dir.join("settings.json"), &settings)?;
        let g = self.model.generator(job.settings.clone(), self.device.clone())?;
        let (count, steps) = (job.labels.len(), job.calls);
        for first in (0..count).step_by(job.batch) {
            let n = job.batch.min(count - first);
            let mut step = 0;
            let images = g.generate(first, n, &mut |x0| {
                step += 1;
                let preview = self.wants_preview(job, step, steps).then(|| preview(&g, x0, first, step)).transpose()?;
                job.update(|p| {
                    p.step += 1;
                    p.decoding = step == steps;
                    if let Some(preview) = preview {
                        p.preview = Some(Arc::new(preview));
                    }
                });
                match job.stop_reason(self.abandon_after) {
                    Some(reason) => Err(Stopped(reason).into()),
                    None => Ok(()),
                }
            })?;
            write_pngs(&job.dir, first, &images)?;
            job.update(|p| {
                p.images_done += n;
                p.decoding = false;
            });
        }
        Ok(())
    }

    /// Previews cost a codec decode: only every `preview_every` steps, before the last step,
    /// and only while an event stream is open.
    fn wants_preview(&self, job: &Job, step: usize, steps: usize) -> bool {
        self.preview_every > 0
            && step.is_multiple_of(self.preview_every)
            && step < steps
            && job.watchers.load(Ordering::SeqCst) > 0
    }
}

/// The x_0 prediction of a batch decoded into PNG data URLs.
fn preview(g: &Generator, x0: &Tensor<4>, first: usize, step: usize) -> Result<Preview> {
    let n = x0.dims()[0];
    let images = g.decode(x0.clone(), vec![0; n]);
    let urls = images
        .each()
        .map(|px| {
            let png = png_bytes(px, images.side, images.side, images.channels)?;
            Ok(format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(png)))
        })
        .collect::<Result<_>>()?;
    Ok(Preview { first, step, images: urls })
}
