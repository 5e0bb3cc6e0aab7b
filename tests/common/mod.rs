//! Helpers shared by the integration tests: fixture lookup and tolerance checks.
#![allow(dead_code)]

mod mt19937;
mod regen;
pub mod server;

use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::TensorData;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use udit::checkpoint::{StateDict, read_weights};

/// `tests/fixtures`: the golden outputs of the PyTorch reference (see its README.md).
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The path of fixture `name`: the committed file, or for the large weight files and
/// checkpoints (`regen::REGENERATED`) a byte-identical copy regenerated once into
/// `$CARGO_TARGET_TMPDIR/fixtures`.
pub fn fixture(name: &str) -> PathBuf {
    if regen::is_regenerated(name) {
        return regen::path(name, &fixtures(), &Path::new(env!("CARGO_TARGET_TMPDIR")).join("fixtures"));
    }
    let path = fixtures().join(name);
    assert!(path.exists(), "no fixture {}", path.display());
    path
}

/// A fixture model ready to sample: the network, its configuration and codec.
pub struct Setup {
    pub model: udit::model::Denoiser,
    pub config: udit::model::ModelConfig,
    pub codec: udit::codec::Codec,
}

impl Setup {
    /// Fixture `config` (`NAME.json`) with fixture weights `weights`, FFN merged, and `codec`.
    pub fn load(config: &str, weights: &str, codec: udit::codec::Codec) -> Self {
        let config = udit::model::ModelConfig::from_file(&fixture(config)).unwrap();
        let weights = read_weights(&fixture(weights), None).unwrap();
        let model = udit::checkpoint::load_denoiser(&config, &weights, &Device::flex()).unwrap().merged();
        Self { model, config, codec }
    }
}

/// Every tensor of a fixture safetensors file, as f32.
pub fn io(name: &str) -> StateDict {
    read_weights(&fixture(name), None).unwrap().tensors
}

pub fn float<const D: usize>(data: &TensorData, device: &Device) -> Tensor<D> {
    Tensor::from_data(data.clone(), device)
}

pub fn ints(data: &TensorData, device: &Device) -> Tensor<1, Int> {
    let v: Vec<i64> = data.as_slice::<f32>().unwrap().iter().map(|&x| x as i64).collect();
    Tensor::from_data(TensorData::new(v, [data.num_elements()]), device)
}

/// max |ours - ref| relative to max |ref|.
pub fn rel_err(ours: &TensorData, reference: &TensorData) -> f32 {
    udit::commands::relative_max_error(ours, reference).unwrap()
}

/// Asserts the reference tolerance of the fixtures: max |ours - ref| <= tol * max |ref|.
pub fn assert_close(name: &str, ours: &TensorData, reference: &TensorData, tol: f32) {
    let e = rel_err(ours, reference);
    assert!(e <= tol, "{name}: relative max error {e:.3e} > {tol:.0e}");
}

/// Runs the `udit` binary: (success, stdout, stderr).
pub fn udit(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_udit")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// Writes `n` deterministic 4x8x8 latents with labels 0..3 in the project's packed format.
pub fn latents(dir: &Path, n: usize) {
    let mut w = udit::data::latents::LatentWriter::create(dir, n, [4, 8, 8]).unwrap();
    let values: Vec<f32> = (0..n * 256).map(|i| (i * 7919 % 1000) as f32 / 500.0 - 1.0).collect();
    let labels: Vec<i64> = (0..n as i64).map(|i| i % 3).collect();
    w.push(&values, &labels).unwrap();
    w.finish().unwrap();
}

/// Runs the tests of one binary that use autodiff one at a time. burn 0.22 keeps every
/// autodiff graph of the process in one registry, and a `backward` on one thread can free
/// steps of a graph that another thread is still building, so that a gradient goes missing
/// without an error (tracel-ai/burn#5573). Training runs side by side would also share
/// rayon's threads, which bit-for-bit comparisons of two runs do not want.
pub fn autodiff_alone() -> std::sync::MutexGuard<'static, ()> {
    static AUTODIFF: std::sync::Mutex<()> = std::sync::Mutex::new(());
    AUTODIFF.lock().unwrap_or_else(|e| e.into_inner())
}

/// Standard-normal test inputs from a seeded ChaCha8 stream: the same values on every run,
/// so that a comparison of two implementations cannot pass or fail by the draw.
pub struct Normals(ChaCha8Rng);

impl Normals {
    pub fn new(seed: u64) -> Self {
        Self(ChaCha8Rng::seed_from_u64(seed))
    }

    pub fn normal<const D: usize>(&mut self, shape: [usize; D], device: &Device) -> Tensor<D> {
        let mut v = Vec::new();
        udit::rng::push_normals(&mut self.0, shape.iter().product(), &mut v);
        Tensor::from_data(TensorData::new(v, shape), device)
    }
}
