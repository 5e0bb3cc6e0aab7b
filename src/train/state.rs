//! What a checkpoint holds: model, EMA and AdamW moments under the reference key names
//! (`model.`, `ema.`, `opt.exp_avg.`, `opt.exp_avg_sq.`), plus the step and the recipe in the
//! safetensors metadata, with the seconds of training so far; and reading it back.

use std::path::Path;

use anyhow::{Context, Result};
use burn::prelude::*;
use burn::tensor::TensorData;

use super::TrainConfig;
use super::optim::{OptimState, ParamState};
use crate::checkpoint::{self, StateDict};
use crate::model::{Denoiser, FfnForm};
use crate::precision::LossScaler;

/// Model, optimizer and EMA at some step, with the configuration that produced them.
pub struct TrainState {
    pub config: TrainConfig,
    pub model: Denoiser,
    pub optim: OptimState,
    /// Wall-clock seconds of training so far, over resumes (the log's `elapsed_s`; what a
    /// budget counts).
    pub seconds: f64,
}

const MODEL: &str = "model.";
const EMA: &str = "ema.";
const EXP_AVG: &str = "opt.exp_avg.";
const EXP_AVG_SQ: &str = "opt.exp_avg_sq.";
const TRAIN_METADATA_KEY: &str = "udit_train";
const STEP_METADATA_KEY: &str = "udit_step";
const SECONDS_METADATA_KEY: &str = "udit_seconds";
const LOSS_SCALER_METADATA_KEY: &str = "udit_loss_scaler";

impl TrainState {
    /// A fresh model (seeded initialisation) and optimizer on the autodiff device `device`.
    pub fn new(config: TrainConfig, device: &Device) -> Result<Self> {
        config.validate()?;
        let model = crate::rng::seeded(config.seed, || Denoiser::new(&config.model, FfnForm::Train, device));
        let optim = OptimState::new(&model, config.precision);
        Ok(Self { config, model, optim, seconds: 0.0 })
    }

    /// A copy on another (autodiff) device, for data-parallel training.
    pub fn replica(&self, device: &Device) -> Self {
        let inner = device.clone().inner();
        let mut optim = self.optim.clone();
        for p in optim.params.values_mut() {
            for t in [&mut p.exp_avg, &mut p.exp_avg_sq, &mut p.ema] {
                *t = t.clone().to_device(&inner);
            }
        }
        Self { config: self.config.clone(), model: self.model.clone().fork(device), optim, seconds: self.seconds }
    }

    /// The EMA weights as a model of the training form.
    pub fn ema_model(&self, device: &Device) -> Result<Denoiser> {
        checkpoint::load_into(Denoiser::new(&self.config.model, FfnForm::Train, device), &self.ema_dict(), device)
    }

    /// The EMA weights under their state-dict keys and shapes.
    fn ema_dict(&self) -> StateDict {
        self.per_param(Self::ema_of)
    }

    fn ema_of(p: &ParamState) -> &Tensor<1> {
        &p.ema
    }

    /// One flat per-parameter state tensor for every key, in the parameter's shape.
    fn per_param(&self, which: impl Fn(&ParamState) -> &Tensor<1>) -> StateDict {
        let shapes = checkpoint::param_shapes(&self.model);
        let data = |t: &Tensor<1>| t.to_data().convert::<f32>().try_into_vec::<f32>().expect("f32");
        self.optim.params.iter().map(|(k, p)| (k.clone(), TensorData::new(data(which(p)), shapes[k].clone()))).collect()
    }

    /// Writes model, EMA, optimizer moments, step and configuration in one safetensors file,
    /// atomically. `udit sample --ckpt` reads its EMA directly.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors = StateDict::new();
        for (k, v) in checkpoint::state_dict(&self.model) {
            tensors.insert(format!("{MODEL}{k}"), v);
        }
        for (prefix, which) in [
            (EMA, Self::ema_of as fn(&ParamState) -> &Tensor<1>),
            (EXP_AVG, |p| &p.exp_avg),
            (EXP_AVG_SQ, |p| &p.exp_avg_sq),
        ] {
            for (k, v) in self.per_param(which) {
                tensors.insert(format!("{prefix}{k}"), v);
            }
        }
        let c = &self.config;
        let mut meta = checkpoint::model_metadata(&c.model, &c.process(), Some(&c.codec), &Default::default())?;
        meta.push((TRAIN_METADATA_KEY.into(), serde_json::to_string(&self.config)?));
        meta.push((STEP_METADATA_KEY.into(), self.optim.step.to_string()));
        meta.push((SECONDS_METADATA_KEY.into(), self.seconds.to_string()));
        if let Some(scaler) = &self.optim.loss_scaler {
            meta.push((LOSS_SCALER_METADATA_KEY.into(), serde_json::to_string(scaler)?));
        }
        checkpoint::write_safetensors(path, &tensors, meta)
    }

    /// Reads a checkpoint written by [`TrainState::save`] onto the autodiff device `device`.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let w = checkpoint::read_weights(path, Some("model"))?;
        let bad = || format!("{} is not a `udit train` checkpoint", path.display());
        let config: TrainConfig = serde_json::from_str(w.metadata.get(TRAIN_METADATA_KEY).with_context(bad)?)
            .with_context(|| format!("{}: invalid training configuration", path.display()))?;
        let step: u64 = w.metadata.get(STEP_METADATA_KEY).and_then(|s| s.parse().ok()).with_context(bad)?;
        // Checkpoints from before the time was recorded count from zero.
        let seconds = w.metadata.get(SECONDS_METADATA_KEY).and_then(|s| s.parse().ok()).unwrap_or(0.0);
        let model = checkpoint::load_into(Denoiser::new(&config.model, FfnForm::Train, device), &w.tensors, device)?;
        let all = checkpoint::read_weights(path, Some("opt"))?;
        let ema = checkpoint::read_weights(path, Some("ema"))?.tensors;
        let inner = device.clone().inner();
        let tensor = |d: &TensorData| {
            Tensor::<1>::from_data(
                TensorData::new(d.as_slice::<f32>().expect("f32").to_vec(), [d.num_elements()]),
                &inner,
            )
        };
        let mut params = std::collections::BTreeMap::new();
        for key in checkpoint::state_dict(&model).keys() {
            let get = |name: String| all.tensors.get(&name).with_context(|| format!("{}: no {name}", path.display()));
            let ema = ema.get(key).with_context(|| format!("{}: no ema.{key}", path.display()))?;
            params.insert(
                key.clone(),
                ParamState {
                    exp_avg: tensor(get(format!("exp_avg.{key}"))?),
                    exp_avg_sq: tensor(get(format!("exp_avg_sq.{key}"))?),
                    ema: tensor(ema),
                },
            );
        }
        let loss_scaler = match w.metadata.get(LOSS_SCALER_METADATA_KEY) {
            Some(s) => {
                Some(serde_json::from_str(s).with_context(|| format!("{}: invalid loss scaler", path.display()))?)
            }
            None => LossScaler::of(config.precision), // checkpoints of runs in f32 or bf16
        };
        Ok(Self { config, model, optim: OptimState { step, params, loss_scaler }, seconds })
    }
}
