//! The FFN of a U-DiT block (paper Sec. 3.3): a depthwise-conv FFN trained with parallel
//! branches that structural re-parametrization folds into one 1x1-5x5-1x1 chain, or the
//! plain ViT MLP.

use burn::module::Module;
use burn::prelude::*;

use super::{FfnType, UDiTConfig};
use crate::kernels::{Gelu, gelu};
use crate::model::FfnForm;
use crate::model::layers::{Conv2d, Init, conv2d_same};

/// The FFN of a block, in whichever form the weights are in.
#[derive(Module, Debug)]
pub enum FeedForward {
    /// `ffn_type` "rep", `rep` 1, training form: low-rank 1x1 pairs and three parallel
    /// depthwise branches plus identity (paper Sec. 3.3).
    Rep(RepFeedForward),
    /// One 1x1, one 5x5 depthwise, one 1x1: `rep` 0, and also the merged inference form of
    /// `rep` 1 (the identity and the 3x3/1x1 branches are folded into the 5x5 kernel).
    Single(SingleFeedForward),
    /// `ffn_type` "basic": fc1, tanh GELU, fc2.
    Basic(Mlp),
}

/// Training form: `project_in` 1x1 pair, exact GELU, the 5x5/3x3/1x1 `dwconv` branches
/// summed with the identity, `project_out` 1x1 pair.
#[derive(Module, Debug)]
pub struct RepFeedForward {
    pub project_in: Vec<Conv2d>,
    pub dwconv: Vec<Conv2d>,
    pub project_out: Vec<Conv2d>,
}

/// 1x1 conv, exact GELU, 5x5 depthwise conv, 1x1 conv.
#[derive(Module, Debug)]
pub struct SingleFeedForward {
    pub project_in: Conv2d,
    pub dwconv: Conv2d,
    pub project_out: Conv2d,
}

/// The ViT MLP on a feature map: 1x1 conv, tanh GELU, 1x1 conv.
#[derive(Module, Debug)]
pub struct Mlp {
    pub fc1: Conv2d,
    pub fc2: Conv2d,
}

impl FeedForward {
    pub(super) fn new(dim: usize, cfg: &UDiTConfig, form: FfnForm, device: &Device) -> Self {
        let hidden = cfg.ffn_hidden(dim);
        let conv = |i, o, k| Conv2d::new(i, o, k, true, Init::Xavier, device);
        match (cfg.ffn_type, cfg.rep && form == FfnForm::Train) {
            (FfnType::Basic, _) => Self::Basic(Mlp { fc1: conv(dim, hidden, 1), fc2: conv(hidden, dim, 1) }),
            (FfnType::Rep, true) => Self::Rep(RepFeedForward {
                project_in: vec![conv(dim, hidden / 2, 1), conv(hidden / 2, hidden, 1)],
                dwconv: [5, 3, 1].map(|k| Conv2d::depthwise(hidden, k, Init::Xavier, device)).into(),
                project_out: vec![conv(hidden, hidden / 2, 1), conv(hidden / 2, dim, 1)],
            }),
            (FfnType::Rep, false) => Self::Single(SingleFeedForward {
                project_in: conv(dim, hidden, 1),
                dwconv: Conv2d::depthwise(hidden, 5, Init::Xavier, device),
                project_out: conv(hidden, dim, 1),
            }),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            Self::Rep(f) => f.forward(x),
            Self::Single(f) => f.forward(x),
            Self::Basic(f) => f.forward(x),
        }
    }

    /// Structural re-parametrization: the training form folded into one 1x1, one 5x5
    /// depthwise and one 1x1 conv computing the same function (reference `add_buffer`).
    pub fn merged(self) -> Self {
        let Self::Rep(f) = self else { return self };
        let [(wi, bi), (wd, bd), (wo, bo)] = f.merged_weights();
        let hidden = wd.dims()[0];
        Self::Single(SingleFeedForward {
            project_in: Conv2d::from_weights(wi, Some(bi), 1),
            dwconv: Conv2d::from_weights(wd, Some(bd), hidden),
            project_out: Conv2d::from_weights(wo, Some(bo), 1),
        })
    }
}

impl RepFeedForward {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        // In training the branches are folded on the fly: the same function of the same
        // parameters (so the same gradients) at the cost of one 1x1-5x5-1x1 chain.
        if x.is_autodiff() {
            return single_forward(x, self.merged_weights());
        }
        let u = gelu(self.project_in[1].forward(self.project_in[0].forward(x)), Gelu::Erf);
        let mixed = self.dwconv.iter().fold(u.clone(), |acc, conv| acc + conv.forward(u.clone()));
        self.project_out[1].forward(self.project_out[0].forward(mixed))
    }

    /// (weight, bias) of the merged 1x1, 5x5 depthwise and 1x1 convs, as tensor expressions
    /// of the branch parameters: the 1x1 pairs composed, and K5 + pad(K3) + pad(K1 + 1).
    fn merged_weights(&self) -> [(Tensor<4>, Tensor<1>); 3] {
        let [k5, k3, k1] = [&self.dwconv[0], &self.dwconv[1], &self.dwconv[2]];
        let hidden = k5.weight.dims()[0];
        let device = k5.weight.device();
        let pad = |w: Tensor<4>, p: usize| {
            let [c, _, k, _] = w.dims();
            Tensor::zeros([c, 1, k + 2 * p, k + 2 * p], &device).slice_assign([0..c, 0..1, p..p + k, p..p + k], w)
        };
        // The identity skip is a 1x1 depthwise kernel of ones.
        let eye = Tensor::<4>::ones([hidden, 1, 1, 1], &device);
        let dw = k5.weight.val() + pad(k3.weight.val(), 1) + pad(k1.weight.val() + eye, 2);
        let dw_bias = k5.bias_or_zeros() + k3.bias_or_zeros() + k1.bias_or_zeros();
        [
            compose_1x1(&self.project_in[0], &self.project_in[1]),
            (dw, dw_bias),
            compose_1x1(&self.project_out[0], &self.project_out[1]),
        ]
    }
}

impl SingleFeedForward {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let wb = |c: &Conv2d| (c.weight.val(), c.bias_or_zeros());
        single_forward(x, [wb(&self.project_in), wb(&self.dwconv), wb(&self.project_out)])
    }
}

impl Mlp {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.fc2.forward(gelu(self.fc1.forward(x), Gelu::Tanh))
    }
}

/// 1x1 conv, exact GELU, 5x5 depthwise conv, 1x1 conv, from (weight, bias) pairs.
fn single_forward(x: Tensor<4>, [(wi, bi), (wd, bd), (wo, bo)]: [(Tensor<4>, Tensor<1>); 3]) -> Tensor<4> {
    let hidden = wd.dims()[0];
    let u = gelu(conv2d_same(x, wi, Some(bi), 1), Gelu::Erf);
    conv2d_same(conv2d_same(u, wd, Some(bd), hidden), wo, Some(bo), 1)
}

/// Two stacked 1x1 convs as one: W = W2 W1, b = W2 b1 + b2.
fn compose_1x1(first: &Conv2d, second: &Conv2d) -> (Tensor<4>, Tensor<1>) {
    let [o1, i1, _, _] = first.weight.dims();
    let [o2, _, _, _] = second.weight.dims();
    let w1 = first.weight.val().reshape([o1, i1]);
    let w2 = second.weight.val().reshape([o2, o1]);
    let b = w2.clone().matmul(first.bias_or_zeros().reshape([o1, 1])).reshape([o2]) + second.bias_or_zeros();
    (w2.matmul(w1).reshape([o2, i1, 1, 1]), b)
}
