//! Datasets.

pub mod fashion_mnist;
