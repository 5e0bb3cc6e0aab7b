//! Files of samples: PNGs and grids, and ADM `.npz` batches; PNG plots; the pickled `args`
//! of training checkpoints; PyTorch `.pt` state dicts; file digests.

pub mod images;
pub mod npz;
pub mod pickle;
pub mod plot;
pub mod pt;

pub use images::Images;

/// The SHA-256 of a file's bytes, in hex (read in 1 MiB pieces).
pub fn sha256_file(path: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context;
    use sha2::Digest;
    use std::io::Read;
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (mut hasher, mut buf) = (sha2::Sha256::new(), vec![0u8; 1 << 20]);
    loop {
        let n = file.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
