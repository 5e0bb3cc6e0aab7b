//! Mixed precision, as PyTorch's autocast does it: the weights, optimizer moments, EMA and
//! loss stay f32; the matmul-like ops (linears, convolutions, the attention products) read
//! their inputs cast to bf16 or f16 and hand back f32, so norms, softmax, GELU and the
//! residual stream run in f32. Autodiff's cast backward returns f32 gradients to the f32
//! master weights. f16's narrow range can flush small gradients to zero: training in f16
//! scales the loss ([`LossScaler`]), as `torch.cuda.amp.GradScaler`.

use std::cell::Cell;

use anyhow::{Result, bail};
use burn::prelude::*;
use burn::tensor::FloatDType;

/// The compute precision of the matmul-like ops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32 (the reference's numbers; the fused CPU kernels).
    #[default]
    F32,
    /// bfloat16 products: f32's range, 8 bits of mantissa. No loss scaling needed.
    Bf16,
    /// float16 products: 11 bits of mantissa, range up to 65504; training scales the loss.
    F16,
}

impl std::str::FromStr for Precision {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            "f16" => Ok(Self::F16),
            _ => bail!("unknown precision {s:?}: f32, bf16 or f16"),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
        })
    }
}

impl Precision {
    fn dtype(self) -> FloatDType {
        match self {
            Self::F32 => FloatDType::F32,
            Self::Bf16 => FloatDType::BF16,
            Self::F16 => FloatDType::F16,
        }
    }
}

thread_local! {
    /// The precision of this thread's ops (autocast is per thread, as in PyTorch).
    static PRECISION: Cell<Precision> = const { Cell::new(Precision::F32) };
}

/// The precision the matmul-like ops of this thread run in.
pub fn current() -> Precision {
    PRECISION.with(Cell::get)
}

/// While alive, the matmul-like ops of this thread run in `precision`; dropped, the previous
/// precision is back.
#[must_use = "the precision holds only while the guard lives"]
pub struct Autocast(Precision);

pub fn autocast(precision: Precision) -> Autocast {
    Autocast(PRECISION.with(|p| p.replace(precision)))
}

impl Drop for Autocast {
    fn drop(&mut self) {
        PRECISION.with(|p| p.set(self.0));
    }
}

/// `x` as an input of a matmul-like op: cast to the current precision (no-op in f32).
pub fn input<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    match current() {
        Precision::F32 => x,
        p => x.cast(p.dtype()),
    }
}

/// The output of a matmul-like op back in f32 (no-op in f32).
pub fn output<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    match current() {
        Precision::F32 => x,
        _ => x.cast(FloatDType::F32),
    }
}

/// Dynamic loss scaling for f16 training (`GradScaler`'s defaults): the loss is multiplied by
/// `scale` before backward; a step whose gradients are not finite is skipped and halves the
/// scale; 2,000 finite steps in a row double it.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossScaler {
    pub scale: f64,
    /// Finite steps since the last change of `scale`.
    pub good_steps: u64,
}

impl LossScaler {
    pub const INITIAL: f64 = 65536.0;
    pub const GROWTH_INTERVAL: u64 = 2000;

    /// The scaler a run in `precision` needs: f16's, none otherwise.
    pub fn of(precision: Precision) -> Option<Self> {
        (precision == Precision::F16).then_some(Self { scale: Self::INITIAL, good_steps: 0 })
    }

    /// Records a step whose (scaled) gradients were `finite` or not; returns whether the step
    /// is taken.
    pub fn update(&mut self, finite: bool) -> bool {
        if !finite {
            self.scale /= 2.0;
            self.good_steps = 0;
            return false;
        }
        self.good_steps += 1;
        if self.good_steps == Self::GROWTH_INTERVAL {
            self.scale *= 2.0;
            self.good_steps = 0;
        }
        true
    }
}
