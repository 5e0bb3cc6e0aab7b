//! Moving data in and out of burn's CPU tensors, for the kernels of the sibling modules.

use std::borrow::Cow;

use burn::backend::TensorMetadata;
use burn::backend::flex::FlexTensor;
use burn::tensor::TensorData;

/// The values of `t` as `f32`, row-major, to own (moved out when `t` holds them alone).
/// Shared contiguous values are copied once, straight into an f32 vector: burn's
/// `into_data` would copy them into a byte vector, which then has to be copied again to be
/// aligned for f32 (two copies of every shared input of a fused op).
pub(crate) fn values(t: FlexTensor) -> Vec<f32> {
    if !t.is_unique()
        && let Some(s) = t.as_slice::<f32>()
    {
        return s.to_vec();
    }
    t.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 data")
}

/// The values of `t` as `f32`, row-major, to read: borrowed where they lie contiguous. The
/// inputs an op keeps for its backward are shared with autodiff, so [`values`] would copy
/// them (a twelfth of a U-DiT-S training step went to those copies).
pub(crate) fn slice(t: &FlexTensor) -> Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(values(t.clone())),
    }
}

pub(crate) fn dims4(t: &FlexTensor) -> [usize; 4] {
    t.shape().dims()
}

pub(crate) fn shape(t: &FlexTensor) -> Vec<usize> {
    t.shape().to_vec()
}

/// A tensor of `values` with `shape`.
pub(crate) fn tensor(values: Vec<f32>, shape: impl Into<Vec<usize>>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape.into()))
}
