//! ADM-format `.npz` sample batches (`arr_0` uint8 NHWC, `arr_1` int64 labels), and the
//! resumable, shardable `--npz` run that writes them batch by batch.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::images::Images;

/// A `--num-samples N --npz FILE` run in batches of `batch`: every finished batch is kept
/// in `FILE.parts/` (so an interrupted run resumes where it stopped, and shards of one run
/// can share the folder); when all batches exist they are merged into FILE.
pub struct NpzRun {
    pub npz: PathBuf,
    pub num_samples: usize,
    pub batch: usize,
}

/// `i/n` (shard i of n, i < n) as (i, n).
pub fn parse_shard(text: &str) -> Result<(usize, usize)> {
    text.split_once('/')
        .and_then(|(i, n)| Some((i.parse::<usize>().ok()?, n.parse::<usize>().ok()?)))
        .filter(|(i, n)| i < n)
        .with_context(|| format!("a shard is i/n with i < n, got {text:?}"))
}

impl NpzRun {
    pub fn parts_dir(&self) -> PathBuf {
        self.beside(".parts")
    }

    /// `NAME.npz.json`: the settings that made the samples.
    pub fn settings_path(&self) -> PathBuf {
        self.beside(".json")
    }

    /// `NAME.npz` + `suffix`, in the same folder.
    fn beside(&self, suffix: &str) -> PathBuf {
        let mut name = self.npz.file_name().unwrap_or_default().to_os_string();
        name.push(suffix);
        self.npz.with_file_name(name)
    }

    /// The batch size of the run whose parts are in `npz`'s parts folder (their names carry
    /// it), for `udit merge-npz` without `--batch`.
    pub fn batch_of_parts(npz: &Path) -> Result<usize> {
        let dir = NpzRun { npz: npz.to_path_buf(), num_samples: 0, batch: 1 }.parts_dir();
        let entries =
            std::fs::read_dir(&dir).with_context(|| format!("nothing to merge: cannot read {}", dir.display()))?;
        let mut sizes: Vec<usize> = entries
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                name.strip_prefix("batch-")?.strip_suffix(".npz")?.rsplit_once("-size-")?.1.parse().ok()
            })
            .collect();
        sizes.sort_unstable();
        sizes.dedup();
        match sizes[..] {
            [batch] => Ok(batch),
            [] => bail!("nothing to merge: {} holds no batches", dir.display()),
            _ => bail!("{} holds batches of runs with several --batch sizes {sizes:?}: give --batch", dir.display()),
        }
    }

    pub fn num_batches(&self) -> usize {
        self.num_samples.div_ceil(self.batch)
    }

    fn part(&self, b: usize) -> PathBuf {
        self.parts_dir().join(format!("batch-{b:06}-of-{:06}-size-{}.npz", self.num_batches(), self.batch))
    }

    /// Batches of shard `shard` of `shards` that are not done yet: no part, or a part that
    /// is not a whole file (a part is written under another name and renamed, so only
    /// outside damage cuts one short; it is redone).
    pub fn pending(&self, shard: usize, shards: usize) -> Vec<usize> {
        (0..self.num_batches()).filter(|b| b % shards == shard && !is_whole_zip(&self.part(*b))).collect()
    }

    /// (batches, batch size) of the runs whose parts lie in the parts folder, from their names.
    fn runs_in_parts_dir(&self) -> Vec<(usize, usize)> {
        let mut runs: Vec<(usize, usize)> = std::fs::read_dir(self.parts_dir())
            .into_iter()
            .flatten()
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                let (of, size) = name.strip_suffix(".npz")?.split_once("-of-")?.1.split_once("-size-")?;
                Some((of.parse().ok()?, size.parse().ok()?))
            })
            .collect();
        runs.sort_unstable();
        runs.dedup();
        runs
    }

    /// Sample range of batch `b`.
    pub fn range(&self, b: usize) -> std::ops::Range<usize> {
        b * self.batch..((b + 1) * self.batch).min(self.num_samples)
    }

    pub fn save_part(&self, b: usize, images: &Images) -> Result<()> {
        std::fs::create_dir_all(self.parts_dir())
            .with_context(|| format!("cannot create {}", self.parts_dir().display()))?;
        write_npz(&self.part(b), images)
    }

    /// Batches not written yet (or cut short).
    pub fn missing(&self) -> Vec<usize> {
        self.pending(0, 1)
    }

    /// Merges the parts into the `.npz` once every batch is there; returns whether it did.
    pub fn merge(&self) -> Result<bool> {
        if !self.missing().is_empty() {
            return Ok(false);
        }
        let mut all: Option<Images> = None;
        for b in 0..self.num_batches() {
            let path = self.part(b);
            let redo = || format!("delete {} and rerun the command to redo that batch", path.display());
            let part = read_npz(&path).with_context(redo)?;
            if part.labels.len() != self.range(b).len() {
                bail!(
                    "{} holds {} samples, not the {} of its batch: {}",
                    path.display(),
                    part.labels.len(),
                    self.range(b).len(),
                    redo()
                );
            }
            match &mut all {
                None => all = Some(part),
                Some(a) => {
                    if (a.side, a.channels) != (part.side, part.channels) {
                        bail!("{} holds images of another size", self.part(b).display());
                    }
                    a.append(part);
                }
            }
        }
        let all = all.context("no samples")?;
        write_npz(&self.npz, &all)?;
        std::fs::remove_dir_all(self.parts_dir()).ok();
        Ok(true)
    }
}

/// `udit merge-npz`: merges a complete run, or says that the `.npz` is already complete (the
/// last shard merged it), or names the batches still missing. Returns what it did.
pub fn merge_npz(run: &NpzRun) -> Result<String> {
    if run.npz.is_file() && !run.parts_dir().exists() {
        return Ok(format!("{} is already complete (the last shard merged it)", run.npz.display()));
    }
    if !run.parts_dir().is_dir() {
        bail!("nothing to merge: {} does not exist", run.parts_dir().display());
    }
    let runs = run.runs_in_parts_dir();
    if !runs.is_empty() && !runs.contains(&(run.num_batches(), run.batch)) {
        let (batches, batch) = runs[0];
        bail!(
            "the parts in {} belong to a run of {batches} batches of {batch} (up to {} samples), not to --num-samples {} \
             in batches of {}",
            run.parts_dir().display(),
            batches * batch,
            run.num_samples,
            run.batch
        );
    }
    let missing = run.missing();
    if !missing.is_empty() {
        bail!(
            "{} of {} batches are missing in {}: {} (run the shards that own them)",
            missing.len(),
            run.num_batches(),
            run.parts_dir().display(),
            ranges(&missing)
        );
    }
    run.merge()?;
    Ok(format!("wrote {} samples to {}", run.num_samples, run.npz.display()))
}

/// "0-3, 7, 9-10" for sorted indices.
fn ranges(sorted: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1] == sorted[j] + 1 {
            j += 1;
        }
        parts.push(if i == j { sorted[i].to_string() } else { format!("{}-{}", sorted[i], sorted[j]) });
        i = j + 1;
    }
    parts.join(", ")
}

/// Whether `path` is a file that ends with a zip's end-of-central-directory record (an `.npz`
/// cut short has none).
fn is_whole_zip(path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else { return false };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let tail = len.min(65_557);
    let mut bytes = vec![0u8; tail as usize];
    let read = f.seek(SeekFrom::Start(len - tail)).and_then(|_| f.read_exact(&mut bytes));
    read.is_ok() && bytes.windows(4).any(|w| w == b"PK\x05\x06")
}

/// ADM layout: `arr_0` uint8 `[N, H, W, C]`, `arr_1` int64 labels. Written atomically.
pub fn write_npz(path: &Path, images: &Images) -> Result<()> {
    use npyz::WriterBuilder;
    let n = images.labels.len() as u64;
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut npz = npyz::npz::NpzWriter::new(&mut buf);
        let (s, c) = (images.side as u64, images.channels as u64);
        let mut w = npz.array::<u8>("arr_0", Default::default())?.default_dtype().shape(&[n, s, s, c]).begin_nd()?;
        w.extend(images.pixels.iter().copied())?;
        w.finish()?;
        let mut w = npz.array::<i64>("arr_1", Default::default())?.default_dtype().shape(&[n]).begin_nd()?;
        w.extend(images.labels.iter().copied())?;
        w.finish()?;
    }
    crate::io::write_atomic(path, buf.get_ref())
}

/// Reads an ADM-layout `.npz` (`arr_0` uint8 NHWC with square images, `arr_1` labels if present).
pub fn read_npz(path: &Path) -> Result<Images> {
    let file = std::io::BufReader::new(crate::io::open_file(path)?);
    let mut npz =
        npyz::npz::NpzArchive::new(file).with_context(|| format!("cannot open {} as .npz", path.display()))?;
    // npyz's header errors quote the header over several lines: one line here.
    let damaged = |e: std::io::Error| {
        let what = e.to_string().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ");
        anyhow::anyhow!("{} is damaged: {what}", path.display())
    };
    let arr = npz.by_name("arr_0").map_err(damaged)?.with_context(|| format!("{} has no arr_0", path.display()))?;
    let shape = arr.shape().to_vec();
    if shape.len() != 4 || shape[1] != shape[2] {
        bail!("{}: arr_0 must be [N, H, W, C] with square images, got {shape:?}", path.display());
    }
    let pixels: Vec<u8> = arr.into_vec().with_context(|| format!("{}: arr_0 must be uint8", path.display()))?;
    let labels = match npz.by_name("arr_1").map_err(damaged)? {
        Some(l) => l.into_vec::<i64>().with_context(|| format!("{}: arr_1 must be int64", path.display()))?,
        None => vec![-1; shape[0] as usize],
    };
    if labels.len() != shape[0] as usize {
        bail!("{}: {} images (arr_0) but {} labels (arr_1)", path.display(), shape[0], labels.len());
    }
    Ok(Images { pixels, labels, side: shape[1] as usize, channels: shape[3] as usize })
}
