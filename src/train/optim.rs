//! AdamW exactly as PyTorch's `torch.optim.AdamW` (the reference recipe's optimizer), the
//! EMA of the weights, and global-norm gradient clipping, over parameters named by their
//! state-dict keys so that the whole training state saves and loads as plain tensors.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;

use crate::checkpoint::{PathStack, key_of};
use crate::kernels::AdamWUpdate;
use crate::precision::{LossScaler, Precision};

/// AdamW hyper-parameters (reference recipe: lr 1e-4, betas (0.9, 0.999), no weight decay;
/// eps is PyTorch's default).
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamW {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// What one parameter carries between steps, flattened, on the non-autodiff device.
#[derive(Clone)]
pub struct ParamState {
    /// AdamW first moment (PyTorch `exp_avg`).
    pub exp_avg: Tensor<1>,
    /// AdamW second moment (PyTorch `exp_avg_sq`).
    pub exp_avg_sq: Tensor<1>,
    /// Exponential moving average of the weight.
    pub ema: Tensor<1>,
}

/// The optimizer and EMA state of a whole model, by state-dict key.
#[derive(Clone)]
pub struct OptimState {
    /// Optimizer steps taken.
    pub step: u64,
    pub params: BTreeMap<String, ParamState>,
    /// f16 training's loss scale: the gradients handed to [`OptimState::step`] are the loss
    /// gradients times its scale.
    pub loss_scaler: Option<LossScaler>,
}

impl OptimState {
    /// Zero moments, and an EMA initialised to the model's weights (reference `train.py`);
    /// a loss scaler when training in `precision` needs one.
    pub fn new<M: Module>(model: &M, precision: Precision) -> Self {
        struct Init(PathStack, BTreeMap<String, ParamState>);
        impl ModuleVisitor for Init {
            fn enter_module(&mut self, name: &str, container: &str) {
                self.0.enter(name, container);
            }
            fn exit_module(&mut self, _: &str, container: &str) {
                self.0.exit(container);
            }
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let w = flat(param.val().inner());
                let zeros = w.zeros_like();
                self.1.insert(key_of(&self.0.0), ParamState { exp_avg: zeros.clone(), exp_avg_sq: zeros, ema: w });
            }
        }
        let mut init = Init(PathStack::default(), BTreeMap::new());
        model.visit(&mut init);
        Self { step: 0, params: init.1, loss_scaler: LossScaler::of(precision) }
    }

    /// One AdamW step at learning rate `lr` on `grads` (scaled down first so that their
    /// global L2 norm is at most `clip`, when given), then the EMA update with `ema_decay`.
    /// Returns the updated model and the gradients' global norm before clipping (computed
    /// when clipping or loss scaling). With a loss scaler the gradients are unscaled first,
    /// and a step whose gradients are not finite changes no weight, moment or EMA (the step
    /// count still advances: it is the run's position).
    pub fn step<M: Module>(
        &mut self,
        model: M,
        mut grads: GradientsParams,
        hyper: &AdamW,
        lr: f64,
        clip: Option<f64>,
        ema_decay: f64,
    ) -> (M, Option<f64>) {
        let unscale = self.loss_scaler.map_or(1.0, |s| 1.0 / s.scale);
        let norm = (clip.is_some() || self.loss_scaler.is_some()).then(|| grad_norm(&model, &grads) * unscale);
        self.step += 1;
        if let Some(scaler) = &mut self.loss_scaler
            && !scaler.update(norm.is_some_and(f64::is_finite))
        {
            return (model, norm);
        }
        let scale = unscale
            * match (clip, norm) {
                (Some(max), Some(n)) if n > max => max / (n + 1e-6),
                _ => 1.0,
            };
        let mut mapper = Step {
            path: PathStack::default(),
            state: &mut self.params,
            grads: &mut grads,
            hyper: *hyper,
            lr,
            scale,
            ema_decay,
            t: self.step as i32,
        };
        (model.map(&mut mapper), norm)
    }
}

fn flat<const D: usize>(t: Tensor<D>) -> Tensor<1> {
    let n = t.shape().num_elements();
    t.reshape([n])
}

/// sqrt of the sum of squares of every gradient (PyTorch `clip_grad_norm_`, L2).
fn grad_norm<M: Module>(model: &M, grads: &GradientsParams) -> f64 {
    struct Norm<'a>(&'a GradientsParams, Vec<Tensor<1>>);
    impl ModuleVisitor for Norm<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.0.get::<D>(param.id) {
                self.1.push(flat(g).square().sum());
            }
        }
    }
    let mut n = Norm(grads, Vec::new());
    model.visit(&mut n);
    if n.1.is_empty() {
        return 0.0;
    }
    (Tensor::cat(n.1, 0).sum().into_scalar::<f32>() as f64).sqrt()
}

struct Step<'a> {
    path: PathStack,
    state: &'a mut BTreeMap<String, ParamState>,
    grads: &'a mut GradientsParams,
    hyper: AdamW,
    lr: f64,
    scale: f64,
    ema_decay: f64,
    t: i32,
}

impl ModuleMapper for Step<'_> {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.path.enter(name, container);
    }
    fn exit_module(&mut self, _: &str, container: &str) {
        self.path.exit(container);
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let key = key_of(&self.path.0);
        let Some(grad) = self.grads.remove::<D>(param.id) else { return param };
        // Taken out and put back, so that the update owns (and reuses) the state's buffers.
        let st = self.state.remove(&key).unwrap_or_else(|| panic!("no optimizer state for parameter {key}"));
        let AdamW { beta1, beta2, eps, weight_decay } = self.hyper;
        let update = AdamWUpdate {
            lr: self.lr,
            beta1,
            beta2,
            eps,
            weight_decay,
            bias_correction1: 1.0 - beta1.powi(self.t),
            bias_correction2: 1.0 - beta2.powi(self.t),
            grad_scale: self.scale,
            ema_decay: self.ema_decay,
        };
        let id = param.id;
        param.map(|p| {
            let shape = p.shape();
            let (require_grad, distributed) = (p.is_require_grad(), p.is_distributed());
            let ParamState { exp_avg, exp_avg_sq, ema } = st;
            let [w, exp_avg, exp_avg_sq, ema] =
                crate::kernels::adamw(&update, [flat(p.inner()), flat(grad), exp_avg, exp_avg_sq, ema]);
            self.state.insert(key, ParamState { exp_avg, exp_avg_sq, ema });
            // Lifting back to autodiff drops the parameter's flags: restore them.
            let mut updated = Tensor::from_inner(w.reshape(shape));
            if require_grad {
                updated = updated.require_grad();
            }
            if distributed {
                updated = updated.set_distributed(id);
            }
            updated
        })
    }
}
