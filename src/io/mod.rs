//! Files of samples: PNGs and grids, and ADM `.npz` batches; PNG plots.

pub mod images;
pub mod npz;
pub mod plot;

pub use images::Images;
