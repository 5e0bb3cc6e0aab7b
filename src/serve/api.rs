//! What the API reads and writes: the generate request (its defaults, its limits, the same
//! checks as `udit sample`), a job's status, the model's description, and errors as one line
//! of JSON, `{"error": "..."}`.

use anyhow::{Result, bail};
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::jobs::{Job, State};
use crate::classes::ClassNames;
use crate::guidance::{Guidance, GuidanceInterval};
use crate::model::ModelConfig;
use crate::process::Process;
use crate::sample::{Classes, Method, SamplerOptions, Settings, default_cfg_scale};

/// Images per request when a request says nothing.
pub const DEFAULT_IMAGES: usize = 4;

/// The server's sampler when a request names none: a fast one for a page people watch.
pub fn default_sampler(process: &Process) -> &'static str {
    Method::preview(process).name()
}

/// The samplers a request may name, as `udit sample --sampler` takes them.
fn samplers(process: &Process) -> &'static [&'static str] {
    match process {
        Process::Diffusion(_) => &["ancestral", "ddim", "dpm++", "unipc", "heun"],
        Process::Interpolant(_) => &["sde", "sde-heun", "euler", "heun2", "rk4", "dopri5"],
    }
}

/// The steps `sampler` takes when a request names none, within the server's limit.
fn default_steps(process: &Process, sampler: &str, limits: Limits) -> Result<usize> {
    Ok(Method::named(process, Some(sampler), None, &SamplerOptions::default())?.steps().min(limits.max_steps))
}

/// What one request may ask for.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_steps: usize,
    pub max_samples: usize,
}

/// `POST /api/generate`'s body; every field may be left out.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    /// An index, or what `udit sample --class` takes: names, a comma-separated list, `random`.
    class: Option<Value>,
    cfg_scale: Option<f64>,
    /// What `udit sample --guidance-interval` takes: `LO,HI` or `none`.
    guidance_interval: Option<String>,
    sampler: Option<String>,
    steps: Option<usize>,
    eta: Option<f64>,
    seed: Option<u64>,
    /// `num_images` is its old name.
    #[serde(alias = "num_images")]
    num_samples: Option<usize>,
}

/// A request with its defaults filled in: the settings a job shows and stores.
#[derive(Clone, Debug, Serialize)]
pub struct JobSettings {
    pub class: String,
    pub cfg_scale: f64,
    pub guidance_interval: String,
    pub sampler: String,
    pub steps: usize,
    pub eta: f64,
    pub seed: u64,
    pub num_samples: usize,
}

impl GenerateRequest {
    pub fn parse(body: &[u8]) -> Result<Self> {
        serde_json::from_slice(body).map_err(|e| anyhow::anyhow!("the body is not a generate request: {e}"))
    }

    /// The job's settings, checked against the model and the limits as `udit sample` checks
    /// its flags.
    pub fn resolve(
        self,
        config: &ModelConfig,
        process: &Process,
        names: &ClassNames,
        limits: Limits,
    ) -> Result<(JobSettings, Settings)> {
        let class = match self.class {
            None => "random".to_string(),
            Some(Value::String(s)) => s,
            Some(Value::Number(n)) if n.is_u64() => n.to_string(),
            Some(other) => bail!("class must be an index, a name, a comma-separated list or \"random\", got {other}"),
        };
        let sampler_name = self.sampler.unwrap_or_else(|| default_sampler(process).to_string());
        let steps = match self.steps {
            Some(steps) => steps,
            None => default_steps(process, &sampler_name, limits)?,
        };
        let options = SamplerOptions { eta: self.eta, ..Default::default() };
        let method = Method::named(process, Some(&sampler_name), Some(steps), &options)?;
        if !(1..=limits.max_steps).contains(&steps) {
            bail!("steps must be between 1 and {} on this server, got {steps}", limits.max_steps);
        }
        let num_samples = self.num_samples.unwrap_or(DEFAULT_IMAGES.min(limits.max_samples));
        if !(1..=limits.max_samples).contains(&num_samples) {
            bail!("num_samples must be between 1 and {} on this server, got {num_samples}", limits.max_samples);
        }
        let interval = GuidanceInterval::parse(self.guidance_interval.as_deref().unwrap_or("none"))?;
        let settings = Settings {
            method,
            guidance: Guidance { scale: self.cfg_scale.unwrap_or(default_cfg_scale(config)), interval, channels: None },
            seed: self.seed.unwrap_or(0),
            classes: Classes::parse(&class, names, config.num_classes())?,
        };
        settings.validate(config, process)?;
        let shown = JobSettings {
            class,
            cfg_scale: settings.guidance.scale,
            guidance_interval: settings.guidance.interval.to_string(),
            sampler: sampler_name,
            steps,
            eta: self.eta.unwrap_or(0.0),
            seed: settings.seed,
            num_samples,
        };
        Ok((shown, settings))
    }
}

/// A job as `GET /api/jobs/{id}` and its event stream show it.
#[derive(Debug, Serialize)]
pub struct JobStatus {
    id: String,
    state: State,
    /// Jobs ahead of it while it waits (0 = next).
    position: Option<usize>,
    /// Denoiser calls done, of `steps_total` (one sampling run per batch of images).
    step: usize,
    steps_total: usize,
    /// The last batch is going through the codec.
    decoding: bool,
    /// URLs of the images written so far.
    images: Vec<String>,
    labels: Vec<i64>,
    class_names: Vec<String>,
    settings: JobSettings,
    /// Why it failed or was cancelled.
    message: Option<String>,
    elapsed_s: Option<f64>,
}

impl JobStatus {
    pub fn of(job: &Job, position: Option<usize>, names: &ClassNames) -> Self {
        let p = job.progress();
        Self {
            id: job.id.clone(),
            state: p.state,
            position: position.filter(|_| p.state == State::Queued),
            step: p.step,
            steps_total: job.steps_total(),
            decoding: p.decoding,
            images: (0..p.images_done).map(|k| format!("/api/jobs/{}/images/{k}.png", job.id)).collect(),
            labels: job.labels.clone(),
            class_names: job.labels.iter().map(|&c| class_name(names, c as usize)).collect(),
            settings: job.request.clone(),
            message: p.message,
            elapsed_s: p.elapsed.map(|d| d.as_secs_f64()),
        }
    }
}

/// A class as people read it: its first name, else its index.
fn class_name(names: &ClassNames, class: usize) -> String {
    names.short(class).map_or_else(|| class.to_string(), str::to_string)
}

/// `GET /api/model`: what the page needs to build its form.
pub fn model_info(
    config: &ModelConfig,
    process: &Process,
    names: &ClassNames,
    image: (usize, usize),
    limits: Limits,
    queue: usize,
) -> Value {
    let (channels, side) = image;
    let classes: Vec<String> = (0..config.num_classes()).map(|c| class_name(names, c)).collect();
    let steps = |name| default_steps(process, name, limits).expect("a known sampler");
    let samplers: Vec<Value> =
        samplers(process).iter().map(|&name| json!({"name": name, "default_steps": steps(name)})).collect();
    json!({
        "description": crate::model::describe(config),
        "config": config,
        "num_classes": config.num_classes(),
        "classes": classes,
        "named_classes": !names.is_empty(),
        "guidable": config.has_null_class(),
        "image": {"side": side, "channels": channels},
        "samplers": samplers,
        "defaults": {
            "class": "random",
            "cfg_scale": default_cfg_scale(config),
            "guidance_interval": "none",
            "sampler": default_sampler(process),
            "steps": steps(default_sampler(process)),
            "eta": 0.0,
            "seed": 0,
            "num_samples": DEFAULT_IMAGES.min(limits.max_samples),
        },
        "limits": {"max_steps": limits.max_steps, "max_samples": limits.max_samples, "queue": queue},
    })
}

/// An error answer: a status and one line of JSON, `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl ApiError {
    pub fn bad_request(e: anyhow::Error) -> Self {
        Self(StatusCode::BAD_REQUEST, format!("{e:#}"))
    }

    pub fn not_found(what: String) -> Self {
        Self(StatusCode::NOT_FOUND, what)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let line = self.1.replace(['\n', '\r'], " ");
        (self.0, Json(json!({ "error": line }))).into_response()
    }
}
