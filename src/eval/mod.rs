//! Evaluation: the paper's metrics (FID, sFID, IS, precision, recall) as the ADM evaluator
//! computes them.

pub mod inception;
pub mod metrics;
