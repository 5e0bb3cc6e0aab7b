//! One AdamW step and the EMA update of a parameter in one pass over its elements, where
//! burn's generic ops ([`super::generic::adamw`]) make about fifteen (each allocating its
//! output): PyTorch's `torch.optim.AdamW` arithmetic in f32, element by element.

use burn::prelude::*;
use burn::tensor::TensorData;
use rayon::prelude::*;

use super::AdamWUpdate;
use super::cpu::vectorized;

/// Elements per parallel task; smaller parameters run on the calling thread.
const CHUNK: usize = 1 << 15;

/// The updated weight, first and second moments and EMA of flat `w` with gradient `g`.
pub fn adamw(u: &AdamWUpdate, [w, g, m, v, ema]: [Tensor<1>; 5]) -> [Tensor<1>; 4] {
    let device = w.device();
    let n = w.dims()[0];
    let vec = |t: Tensor<1>| t.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 data");
    let (mut w, g, mut m, mut v, mut ema) = (vec(w), vec(g), vec(m), vec(v), vec(ema));
    let c = Constants::of(u);
    let run = |(((w, g), (m, v)), ema): (((&mut [f32], &[f32]), (&mut [f32], &mut [f32])), &mut [f32])| {
        vectorized(
            #[inline(always)]
            || c.apply(w, g, m, v, ema),
        )
    };
    if n <= CHUNK {
        run((((&mut w, &g), (&mut m, &mut v)), &mut ema));
    } else {
        w.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
            .zip(ema.par_chunks_mut(CHUNK))
            .for_each(run);
    }
    [w, m, v, ema].map(|x| Tensor::from_data(TensorData::new(x, [n]), &device))
}

/// The update's scalars in f32, as PyTorch's kernels take them.
#[derive(Clone, Copy)]
struct Constants {
    grad_scale: Option<f32>,
    decay: Option<f32>,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    bias2_sqrt: f32,
    eps: f32,
    step_size: f32,
    ema_decay: f32,
    one_minus_ema_decay: f32,
}

impl Constants {
    fn of(u: &AdamWUpdate) -> Self {
        Self {
            grad_scale: (u.grad_scale != 1.0).then_some(u.grad_scale as f32),
            decay: (u.weight_decay != 0.0).then_some((1.0 - u.lr * u.weight_decay) as f32),
            one_minus_beta1: (1.0 - u.beta1) as f32,
            beta2: u.beta2 as f32,
            one_minus_beta2: (1.0 - u.beta2) as f32,
            bias2_sqrt: u.bias_correction2.sqrt() as f32,
            eps: u.eps as f32,
            step_size: (u.lr / u.bias_correction1) as f32,
            ema_decay: u.ema_decay as f32,
            one_minus_ema_decay: (1.0 - u.ema_decay) as f32,
        }
    }

    /// exp_avg.lerp_(g, 1 - beta1); exp_avg_sq.mul_(beta2).addcmul_(g, g, 1 - beta2);
    /// w -= exp_avg / (sqrt(exp_avg_sq) / sqrt(bias2) + eps) * lr / bias1;
    /// ema = ema * decay + w * (1 - decay).
    #[inline(always)]
    fn apply(&self, w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], ema: &mut [f32]) {
        for i in 0..w.len() {
            let g = self.grad_scale.map_or(g[i], |s| g[i] * s);
            let mut wi = self.decay.map_or(w[i], |d| w[i] * d);
            m[i] += (g - m[i]) * self.one_minus_beta1;
            v[i] = v[i] * self.beta2 + g * g * self.one_minus_beta2;
            let denom = v[i].sqrt() / self.bias2_sqrt + self.eps;
            wi -= m[i] / denom * self.step_size;
            w[i] = wi;
            ema[i] = ema[i] * self.ema_decay + wi * self.one_minus_ema_decay;
        }
    }
}
