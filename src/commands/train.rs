//! `udit train` and `udit extract-features`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use clap::Args;

use crate::progress::Progress;
use crate::train::{Interrupted, RecipeOverrides, RunDir, RunOverrides, TrainConfig, TrainState};

#[derive(Args)]
pub struct TrainArgs {
    /// Run directory: checkpoints/, samples/, log.jsonl, recipe.json, model.safetensors.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the run in --out from its newest checkpoint (its recipe; --steps may extend it).
    #[arg(long)]
    pub resume: bool,
    /// A recipe JSON (as written to OUT/recipe.json); flags below override its fields.
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    #[command(flatten)]
    pub recipe_fields: RecipeOverrides,
    #[command(flatten)]
    pub run_fields: RunOverrides,
    /// GPUs to train on, data-parallel (needs --features cuda); the global batch is split
    /// evenly over them.
    #[arg(long, default_value_t = 1)]
    pub devices: usize,
}

/// `udit train`: a new run from a recipe (a file, or the reference recipe of a model and
/// dataset) with the given fields over it, or `--resume` of the run in `--out`.
pub fn train(a: TrainArgs) -> Result<()> {
    let devices: Vec<Device> = crate::devices(a.devices)?.into_iter().map(|d| d.autodiff()).collect();
    let run = RunDir(a.out.clone());
    let (mut state, resumed) = if a.resume {
        if a.recipe.is_some() || a.recipe_fields.any() {
            bail!("--resume continues the stored recipe; only --steps and the logging flags may change");
        }
        let last = run
            .list()?
            .pop()
            .with_context(|| format!("no checkpoints in {} to resume", run.checkpoints().display()))?;
        (TrainState::load(&last, &devices[0])?, Some(last))
    } else {
        if !run.list()?.is_empty() {
            bail!("{} already holds checkpoints: pass --resume, or choose another --out", a.out.display());
        }
        let base = a.recipe.as_deref().map(TrainConfig::from_file).transpose()?;
        (TrainState::new(a.recipe_fields.recipe(base)?, &devices[0])?, None)
    };
    a.run_fields.apply(&mut state.config);
    state.config.validate()?;
    if let Some(last) = resumed {
        eprintln!("resuming at step {} of {} from {}", state.optim.step, state.config.steps, last.display());
    }
    eprintln!("{}", crate::model::describe(&state.config.model));
    let progress = crate::train::progress(&state);
    crate::train::stop_on_ctrl_c();
    let resume = format!("`udit train --out {} --resume` continues", a.out.display());
    let trainer =
        crate::train::train(state, &run, &devices, &progress).map_err(|e| Interrupted::resumed_by(e, resume))?;
    eprintln!(
        "trained to step {}; EMA model in {}, log in {}",
        trainer.state.optim.step,
        run.export().display(),
        run.log().display()
    );
    Ok(())
}

#[derive(Args)]
pub struct ExtractArgs {
    /// ImageNet-layout folder (`CLASS/IMAGE` files).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Side of the ADM center crop, in pixels.
    #[arg(long, default_value_t = 256)]
    pub image_size: usize,
    /// The codec that encodes: a VAE (directory or hf://OWNER/REPO).
    #[arg(long, alias = "vae", default_value = crate::codec::SD_VAE)]
    pub codec: String,
    /// Output directory for latents.npy and labels.npy.
    #[arg(long)]
    pub out: PathBuf,
    /// Images per VAE encoding batch.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Seed of the VAE posterior samples.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn extract_features(a: ExtractArgs) -> Result<()> {
    let device = crate::default_device();
    let progress = Progress::new("encoding", 0, "images");
    let n = crate::data::latents::extract_features(
        &a.data_dir,
        a.image_size,
        &a.codec,
        &a.out,
        a.batch,
        a.seed,
        &device,
        &mut |done, total| {
            progress.set_length(total as u64);
            progress.set_position(done as u64);
        },
    )?;
    progress.finish();
    eprintln!("wrote {n} latents to {}", a.out.display());
    Ok(())
}
