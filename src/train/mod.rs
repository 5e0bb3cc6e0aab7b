//! `udit train`: the reference recipe (DiT / U-DiT `train.py`) on one device or many.
//!
//! Each step draws, for every sample of the global batch, a timestep uniform in 0..T, the
//! noise, and whether its label is dropped to the null class (classifier-free guidance), all
//! from counter-based streams of the seed; with the deterministic loader this makes step `s`
//! a pure function of the seed, the weights and `s`, so `--resume` continues the very run
//! (bit for bit on CPU) and gradient accumulation sees the same samples as one big batch.

pub mod optim;
pub mod plot;

mod config;
mod run;
mod state;
mod trainer;

pub use config::{DataSpec, LrSchedule, RecipeOverrides, RunOverrides, TrainConfig};
pub use run::{Interrupted, LogLine, RunDir, progress, stop_on_ctrl_c, train};
pub use state::TrainState;
pub use trainer::{Draws, StepStats, Trainer, check_fit, draws, sharded_gradients, training_shards};
