//! Files of samples: PNGs and grids, and ADM `.npz` batches.

pub mod images;
pub mod npz;

pub use images::Images;
