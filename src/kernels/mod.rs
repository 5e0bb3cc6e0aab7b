//! Fused CPU kernels with their own backward, as burn backend extensions: model code calls
//! the op and autodiff keeps only what the backward needs.

#[cfg(not(feature = "cuda"))]
pub mod attention;
