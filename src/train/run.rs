//! The training loop, read as the phases of DiT's `train.py`: set up the replicas, then per
//! step read the batch, step, log, checkpoint and sample; at the end export the EMA model.
//! Also the run directory's files, and the stop at a checkpoint on Ctrl-C.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::{StepStats, TrainConfig, TrainState, Trainer};
use crate::data::{Dataset, HostBatch};
use crate::model::Denoiser;
use crate::progress::Progress;

/// Set by the first Ctrl-C once [`stop_on_ctrl_c`] is installed.
static STOP: AtomicBool = AtomicBool::new(false);

/// Makes the first Ctrl-C (SIGINT) end training after the step in flight, with a checkpoint
/// ([`Interrupted`]); a second one ends the process at once, as usual.
pub fn stop_on_ctrl_c() {
    #[cfg(unix)]
    // SAFETY: the handler only stores an atomic and calls `signal`, both async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
    }
}

#[cfg(unix)]
extern "C" fn on_sigint(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
    // SAFETY: `signal` is async-signal-safe; the next Ctrl-C takes the default action.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
    }
}

/// Training stopped by Ctrl-C, its state saved.
#[derive(Debug)]
pub struct Interrupted {
    pub step: u64,
    pub checkpoint: PathBuf,
    /// What continues the run (the caller knows its command).
    pub resume: Option<String>,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "interrupted at step {}; its checkpoint is {}", self.step, self.checkpoint.display())?;
        match &self.resume {
            Some(resume) => write!(f, "; {resume}"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for Interrupted {}

impl Interrupted {
    /// `e`, if it is an interruption, saying that `resume` continues the run.
    pub fn resumed_by(e: anyhow::Error, resume: String) -> anyhow::Error {
        match e.downcast::<Self>() {
            Ok(i) => Self { resume: Some(resume), ..i }.into(),
            Err(e) => e,
        }
    }
}

/// Files of a run directory.
pub struct RunDir(pub PathBuf);

impl RunDir {
    pub fn checkpoints(&self) -> PathBuf {
        self.0.join("checkpoints")
    }
    pub fn checkpoint(&self, step: u64) -> PathBuf {
        self.checkpoints().join(format!("step_{step:07}.safetensors"))
    }
    pub fn log(&self) -> PathBuf {
        self.0.join("log.jsonl")
    }
    pub fn samples(&self, step: u64) -> PathBuf {
        self.0.join("samples").join(format!("step_{step:07}.png"))
    }
    pub fn export(&self) -> PathBuf {
        self.0.join("model.safetensors")
    }

    /// Saved checkpoints, oldest first.
    pub fn list(&self) -> Result<Vec<PathBuf>> {
        let dir = self.checkpoints();
        if !dir.exists() {
            return Ok(vec![]);
        }
        let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.file_name().unwrap_or_default().to_string_lossy();
                name.starts_with("step_") && name.ends_with(".safetensors")
            })
            .collect();
        v.sort();
        Ok(v)
    }

    /// Deletes all but the newest `keep` checkpoints (0 keeps all).
    pub fn prune(&self, keep: usize) -> Result<()> {
        let all = self.list()?;
        if keep > 0 && all.len() > keep {
            for p in &all[..all.len() - keep] {
                std::fs::remove_file(p).with_context(|| format!("cannot remove {}", p.display()))?;
            }
        }
        Ok(())
    }

    /// Drops log lines of steps after `step` (a resumed run rewrites them).
    pub fn truncate_log(&self, step: u64) -> Result<()> {
        let path = self.log();
        if !path.exists() {
            return Ok(());
        }
        let text = std::fs::read_to_string(&path)?;
        let kept: String = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["step"].as_u64())
                    .is_some_and(|s| s <= step)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        crate::io::write_atomic(&path, kept.as_bytes())
    }
}

/// One line of `log.jsonl`.
#[derive(Debug, Serialize, Deserialize)]
pub struct LogLine {
    pub step: u64,
    pub loss: f64,
    pub mse: f64,
    pub vb: f64,
    /// Mean global gradient norm before clipping (only when clipping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    pub lr: f64,
    pub steps_per_s: f64,
    pub samples_per_s: f64,
    /// Wall-clock seconds of training up to this step, over resumes.
    pub elapsed_s: f64,
}

/// Marks every parameter for gradient all-reduce across the devices of a
/// [`DistributedContext`] (burn's data-parallel training; NCCL under CUDA).
fn mark_distributed(model: Denoiser) -> Denoiser {
    struct Mark;
    impl burn::module::ModuleMapper for Mark {
        fn map_float<const D: usize>(
            &mut self,
            param: burn::module::Param<Tensor<D>>,
        ) -> burn::module::Param<Tensor<D>> {
            let id = param.id;
            param.map(|t| t.set_distributed(id))
        }
    }
    model.map(&mut Mark)
}

/// The data-parallel replicas beyond the first device, each in its own thread: every step
/// they take their share of the global batch, and their statistics are averaged in.
struct Peers {
    peers: Vec<Peer>,
}

struct Peer {
    batches: std::sync::mpsc::Sender<Arc<HostBatch>>,
    stats: std::sync::mpsc::Receiver<Result<StepStats>>,
}

impl Peers {
    /// Starts replica r + 1 on `devices[r]` with `states[r]`, taking samples
    /// `(r + 1) * share .. (r + 2) * share` of every batch.
    fn spawn<'s>(
        scope: &'s std::thread::Scope<'s, '_>,
        states: Vec<TrainState>,
        devices: &[Device],
        data: &Arc<dyn Dataset>,
        share: usize,
    ) -> Self {
        let peers = states
            .into_iter()
            .zip(devices)
            .enumerate()
            .map(|(r, (state, device))| {
                let (batch_tx, batch_rx) = std::sync::mpsc::channel::<Arc<HostBatch>>();
                let (stats_tx, stats_rx) = std::sync::mpsc::channel();
                let (device, data) = (device.clone(), data.clone());
                scope.spawn(move || {
                    let mut t = match Trainer::with_data(state, data, &device) {
                        Ok(t) => t,
                        Err(e) => return stats_tx.send(Err(e)).unwrap_or(()),
                    };
                    t.state.model = mark_distributed(t.state.model);
                    while let Ok(batch) = batch_rx.recv() {
                        if stats_tx.send(t.step(&batch, (r + 1) * share, share)).is_err() {
                            return;
                        }
                    }
                });
                Peer { batches: batch_tx, stats: stats_rx }
            })
            .collect();
        Self { peers }
    }

    /// Runs `step` here while the replicas run theirs on `batch`; the mean statistics.
    fn step(&self, batch: Arc<HostBatch>, step: impl FnOnce(&HostBatch) -> Result<StepStats>) -> Result<StepStats> {
        let stopped = || anyhow::anyhow!("a training replica stopped");
        for p in &self.peers {
            p.batches.send(batch.clone()).map_err(|_| stopped())?;
        }
        let mut stats = step(&batch)?;
        for p in &self.peers {
            let s = p.stats.recv().map_err(|_| stopped())??;
            (stats.mse, stats.vb) = (stats.mse + s.mse, stats.vb + s.vb);
        }
        let ranks = (self.peers.len() + 1) as f64;
        (stats.mse, stats.vb) = (stats.mse / ranks, stats.vb / ranks);
        stats.loss = stats.mse + stats.vb;
        Ok(stats)
    }
}

/// `log.jsonl`: the statistics of each window of `log_every` steps, averaged.
struct Log {
    file: std::fs::File,
    window_start: Instant,
    window: u64,
    sums: StepStats,
}

impl Log {
    fn open(run: &RunDir, step: u64) -> Result<Self> {
        run.truncate_log(step)?;
        let file = std::fs::OpenOptions::new().create(true).append(true).open(run.log())?;
        Ok(Self { file, window_start: Instant::now(), window: 0, sums: StepStats::default() })
    }

    fn add(&mut self, stats: &StepStats) {
        let s = &mut self.sums;
        (s.loss, s.mse, s.vb) = (s.loss + stats.loss, s.mse + stats.mse, s.vb + stats.vb);
        s.grad_norm = stats.grad_norm.map(|g| g + s.grad_norm.unwrap_or(0.0));
        self.window += 1;
    }

    /// Writes the window's line for `step`, `elapsed_s` seconds into the run, and starts a
    /// new window.
    fn write(&mut self, step: u64, elapsed_s: f64, cfg: &TrainConfig) -> Result<()> {
        let secs = self.window_start.elapsed().as_secs_f64();
        let (n, s) = (self.window as f64, &self.sums);
        let line = LogLine {
            step,
            loss: s.loss / n,
            mse: s.mse / n,
            vb: s.vb / n,
            grad_norm: s.grad_norm.map(|g| g / n),
            lr: cfg.lr_at(step),
            steps_per_s: n / secs,
            samples_per_s: n * cfg.global_batch as f64 / secs,
            elapsed_s,
        };
        writeln!(self.file, "{}", serde_json::to_string(&line)?)?;
        self.file.flush()?;
        (self.window, self.window_start, self.sums) = (0, Instant::now(), StepStats::default());
        Ok(())
    }
}

/// The progress display of a run: its steps, or with a wall-clock budget its seconds.
pub fn progress(state: &TrainState) -> Progress {
    let p = match state.config.budget_s {
        Some(budget) => Progress::new("training", budget.ceil() as u64, "s"),
        None => Progress::new("training", state.config.steps, "steps"),
    };
    show(&p, state);
    p
}

fn show(p: &Progress, state: &TrainState) {
    match state.config.budget_s {
        Some(_) => p.set_position(state.seconds as u64),
        None => p.set_position(state.optim.step),
    }
}

/// Trains until `state.config.steps` on `devices` (autodiff devices; several = data-parallel
/// replicas, each taking an equal share of every global batch, with gradients averaged by
/// burn's collective all-reduce), writing checkpoints, the log, sample grids and at the end
/// the exported EMA model into `run`, reporting steps and phases to `progress` (made by
/// [`progress`]). With a wall-clock budget the run ends at the first step that reaches it.
pub fn train(state: TrainState, run: &RunDir, devices: &[Device], progress: &Progress) -> Result<Trainer> {
    // Setup: data, replicas, loader; only a run that could start leaves files behind.
    let cfg = state.config.clone();
    let ranks = devices.len();
    if ranks == 0 || cfg.global_batch % (ranks * cfg.grad_accum) != 0 {
        bail!(
            "the global batch ({}) must split evenly over {ranks} devices x {} accumulation rounds",
            cfg.global_batch,
            cfg.grad_accum
        );
    }
    let share = cfg.global_batch / ranks;
    let data = cfg.data.open()?;
    let _context = (ranks > 1).then(|| {
        let config = burn::tensor::distributed::DistributedConfig {
            all_reduce_op: burn::tensor::distributed::ReduceOperation::Mean,
        };
        burn::tensor::distributed::DistributedContext::init(devices.to_vec(), config)
    });
    let replicas: Vec<TrainState> = devices[1..].iter().map(|d| state.replica(d)).collect();
    let mut trainer = Trainer::with_data(state, data.clone(), &devices[0])?;
    let (model_classes, data_classes) = (cfg.model.num_classes(), data.num_classes());
    if data_classes < model_classes {
        progress.println(&format!(
            "warning: the model has {model_classes} classes, the data {data_classes}: classes {data_classes}..{} \
             are never trained (a configuration with num_classes {data_classes} fits this data)",
            model_classes - 1
        ));
    }
    if ranks > 1 {
        trainer.state.model = mark_distributed(trainer.state.model);
    }
    let mut loader = trainer.loader()?;
    std::fs::create_dir_all(run.checkpoints()).with_context(|| format!("cannot create {}", run.0.display()))?;
    std::fs::create_dir_all(run.0.join("samples"))?;
    crate::io::write_atomic(&run.0.join("recipe.json"), serde_json::to_string_pretty(&cfg)?.as_bytes())?;
    let mut log = Log::open(run, trainer.state.optim.step)?;
    let (start, seconds_before) = (Instant::now(), trainer.state.seconds);
    std::thread::scope(|scope| -> Result<Trainer> {
        let peers = Peers::spawn(scope, replicas, &devices[1..], &data, share);
        while trainer.state.optim.step < trainer.state.config.steps {
            // One step of every replica on the step's batch.
            let stats = peers.step(Arc::new(loader.next_batch()?), |batch| trainer.step(batch, 0, share))?;
            let step = trainer.state.optim.step;
            if !stats.loss.is_finite() {
                bail!("the loss is {} at step {step}: training diverged", stats.loss);
            }
            trainer.state.seconds = seconds_before + start.elapsed().as_secs_f64();
            // A step past the budget becomes the run's last, so its checkpoint says finished.
            if cfg.budget_s.is_some_and(|b| trainer.state.seconds >= b) {
                trainer.state.config.steps = step;
            }
            progress.set_message(match cfg.budget_s {
                Some(_) => format!("step {step}, loss {:.4}", stats.loss),
                None => format!("loss {:.4}", stats.loss),
            });
            show(progress, &trainer.state);
            // Log, checkpoint and sample on their schedules (and after the last step).
            let last = step == trainer.state.config.steps;
            log.add(&stats);
            if step % cfg.log_every == 0 || last {
                log.write(step, trainer.state.seconds, &cfg)?;
            }
            let stop = STOP.load(Ordering::SeqCst) && !last;
            if step % cfg.ckpt_every == 0 || last || stop {
                progress.phase("checkpoint");
                trainer.state.save(&run.checkpoint(step))?;
                run.prune(cfg.keep_last)?;
            }
            if stop {
                progress.finish();
                return Err(Interrupted { step, checkpoint: run.checkpoint(step), resume: None }.into());
            }
            if (cfg.sample_every > 0 && step % cfg.sample_every == 0) || last {
                progress.phase("EMA sample grid");
                trainer.sample_grid(&run.samples(step), 8)?;
            }
            progress.phase("training");
        }
        drop(peers);
        progress.phase("exporting the EMA model");
        trainer.export(&run.export())?;
        progress.finish();
        Ok(trainer)
    })
}
