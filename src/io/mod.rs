//! Files of samples: PNGs and grids, and ADM `.npz` batches; PNG plots; the pickled `args`
//! of training checkpoints.

pub mod images;
pub mod npz;
pub mod pickle;
pub mod plot;

pub use images::Images;
