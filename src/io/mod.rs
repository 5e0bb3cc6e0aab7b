//! Files of samples: PNGs and grids, and ADM `.npz` batches; PNG plots; the pickled `args`
//! of training checkpoints; PyTorch `.pt` state dicts; file digests.

pub mod images;
pub mod npz;
pub mod pickle;
pub mod plot;
pub mod pt;

use std::path::Path;

use anyhow::{Context, Result, bail};

pub use images::Images;

/// The SHA-256 of a file's bytes, in hex (read in 1 MiB pieces).
pub fn sha256_file(path: &Path) -> Result<String> {
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

/// Opens a file for reading; a directory or a missing file is one clear error.
pub fn open_file(path: &Path) -> Result<std::fs::File> {
    if path.is_dir() {
        bail!("{} is a directory, not a file", path.display());
    }
    std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))
}

/// Writes to a temporary file beside `path`, syncs, then renames over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().context("output path has no file name")?.to_string_lossy();
    // Named by the process too: shards of one job (`--shard`, `ablate --jobs`) may write the
    // same file at once, and each must rename a whole file of its own.
    let tmp = dir.join(format!(".{name}.{}.partial", std::process::id()));
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
