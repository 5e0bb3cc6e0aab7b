//! Every file reader on malformed input (issue "No bad input yields a wrong result"): each
//! small valid file cut at every byte, and generated damage (flipped bytes, wrong JSON types
//! and values) from proptest. No reader panics or hangs; each damaged file is read as it was
//! or refused with one line. 7 properties x 512 generated cases and about 7,500 cuts, in a
//! few seconds (the README's "Robustness" paragraph).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use proptest::prelude::*;
use serde_json::{Value, json};

/// Generated cases per property (each a file read or a parse).
const CASES: u32 = 512;
/// Longer than any honest read of these small files takes.
const PATIENCE: Duration = Duration::from_secs(5);

/// `read` of `bytes` written to `name` in a scratch folder: it must come back within
/// [`PATIENCE`], and an error must be one line.
fn read_file<T>(name: &str, bytes: &[u8], read: impl Fn(&Path) -> anyhow::Result<T>) -> Result<T, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    judged(|| read(&path))
}

/// Runs `read`, checks its time and that an error is one non-empty line.
fn judged<T>(read: impl FnOnce() -> anyhow::Result<T>) -> Result<T, String> {
    let start = Instant::now();
    let result = read().map_err(|e| format!("{e:#}"));
    assert!(start.elapsed() < PATIENCE, "took {:?}", start.elapsed());
    if let Err(e) = &result {
        assert!(!e.trim().is_empty() && !e.trim().contains('\n'), "not one line: {e}");
    }
    result
}

/// `bytes` cut at every length below its own: each is refused.
fn every_cut_is_refused<T>(name: &str, bytes: &[u8], read: impl Fn(&Path) -> anyhow::Result<T>) -> usize {
    for len in 0..bytes.len() {
        assert!(
            read_file(name, &bytes[..len], &read).is_err(),
            "{name} cut to {len} of {} bytes was read",
            bytes.len()
        );
    }
    bytes.len()
}

/// A small safetensors file with metadata: two tensors.
fn safetensors_bytes() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let mut sd = udit::checkpoint::StateDict::new();
    sd.insert("a.weight".into(), burn::tensor::TensorData::new(vec![1f32, -2.0, 3.5, 0.25, 8.0, -1.0], [2, 3]));
    sd.insert("a.bias".into(), burn::tensor::TensorData::new(vec![0.5f32, 1.5], [2]));
    udit::checkpoint::write_safetensors(&path, &sd, vec![("udit_note".into(), "x".into())]).unwrap();
    std::fs::read(path).unwrap()
}

fn pt_bytes() -> Vec<u8> {
    std::fs::read(fixture("tiny.train-checkpoint.pt")).unwrap()
}

/// The checkpoint's `data.pkl` (where its `args` Namespace is).
fn data_pkl() -> Vec<u8> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(pt_bytes())).unwrap();
    let name = (0..zip.len()).map(|i| zip.by_index(i).unwrap().name().to_string()).find(|n| n.ends_with("data.pkl"));
    let mut file = zip.by_name(&name.unwrap()).unwrap();
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut out).unwrap();
    out
}

fn npz_bytes() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.npz");
    let images = udit::io::Images {
        pixels: (0..2 * 4 * 4 * 3).map(|i| i as u8).collect(),
        labels: vec![3, 9],
        side: 4,
        channels: 3,
    };
    udit::io::npz::write_npz(&path, &images).unwrap();
    std::fs::read(path).unwrap()
}

/// IDX files of two 28x28 images and their labels (Fashion-MNIST's test split layout).
fn idx_files() -> (Vec<u8>, Vec<u8>) {
    let mut images = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28];
    images.extend((0..2 * 28 * 28).map(|i| (i % 251) as u8));
    (images, vec![0, 0, 8, 1, 0, 0, 0, 2, 4, 7])
}

/// Fashion-MNIST's test split read from a folder holding `images` and `labels`.
fn read_idx(images: &[u8], labels: &[u8]) -> Result<usize, String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t10k-images-idx3-ubyte"), images).unwrap();
    std::fs::write(dir.path().join("t10k-labels-idx1-ubyte"), labels).unwrap();
    let split = udit::data::fashion_mnist::Split::Test;
    judged(|| udit::data::fashion_mnist::FashionMnist::load(dir.path(), split).map(|d| d.len()))
}

fn read_weights(path: &Path) -> anyhow::Result<usize> {
    udit::checkpoint::read_weights(path, None).map(|w| w.tensors.len())
}

fn read_npz(path: &Path) -> anyhow::Result<usize> {
    udit::io::npz::read_npz(path).map(|i| i.labels.len())
}

/// Bytes with `flips` (position fraction, new value) applied.
fn damaged(bytes: &[u8], flips: &[(f64, u8)]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for &(at, value) in flips {
        let i = ((at * out.len() as f64) as usize).min(out.len() - 1);
        out[i] = value;
    }
    out
}

#[test]
fn every_reader_refuses_a_file_cut_short_at_any_byte() {
    let mut cuts = 0;
    cuts += every_cut_is_refused("w.safetensors", &safetensors_bytes(), read_weights);
    cuts += every_cut_is_refused("ckpt.pt", &pt_bytes(), read_weights);
    cuts += every_cut_is_refused("s.npz", &npz_bytes(), read_npz);
    let pkl = data_pkl();
    for len in 0..pkl.len() {
        let args = judged(|| udit::io::pickle::namespace_args(&pkl[..len]));
        // A stream cut before its Namespace has none; one cut after it may still hold it.
        assert!(!matches!(args, Ok(Some(ref a)) if a.is_empty()), "cut to {len}: an empty Namespace");
    }
    cuts += pkl.len();
    let (images, labels) = idx_files();
    assert_eq!(read_idx(&images, &labels), Ok(2));
    for len in 0..images.len() {
        assert!(read_idx(&images[..len], &labels).is_err(), "images cut to {len}");
    }
    for len in 0..labels.len() {
        assert!(read_idx(&images, &labels[..len]).is_err(), "labels cut to {len}");
    }
    cuts += images.len() + labels.len();
    let config = std::fs::read_to_string(fixture("sit_tiny.json")).unwrap();
    for len in 0..config.len() {
        if config.is_char_boundary(len) {
            assert!(judged(|| udit::model::ModelConfig::from_json(&config[..len])).is_err(), "config cut to {len}");
        }
    }
    cuts += config.len();
    assert!(cuts > 7000, "{cuts} cuts");
}

/// A model configuration with one field replaced by `value`.
fn config_with(key: &str, value: Value) -> String {
    let mut c = json!({"arch": "dit", "input_size": 16, "patch_size": 2, "in_channels": 4, "hidden_size": 64,
                       "depth": 2, "num_heads": 4, "num_classes": 10});
    c[key] = value;
    c.to_string()
}

/// Any JSON value: numbers of every size and sign, strings, lists, objects, null.
fn any_json() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        (0u64..5).prop_map(Value::from),
        "[a-z/-]{0,12}".prop_map(Value::from),
        prop::collection::vec(0i64..4, 0..6).prop_map(|v| json!(v)),
        Just(json!({"x": 1})),
    ]
}

proptest! {
    // A fixed seed (the same cases on every machine; PROPTEST_CASES scales the count up for
    // a longer hunt) and no failure files (tests write nothing outside their scratch folders).
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(CASES),
        failure_persistence: None,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x7564_6974),
        ..ProptestConfig::default()
    })]

    #[test]
    fn safetensors_with_flipped_bytes(flips in prop::collection::vec((0.0..1.0f64, any::<u8>()), 1..6)) {
        let _ = read_file("w.safetensors", &damaged(&safetensors_bytes(), &flips), read_weights);
    }

    #[test]
    fn pytorch_checkpoints_with_flipped_bytes(flips in prop::collection::vec((0.0..1.0f64, any::<u8>()), 1..6)) {
        let _ = read_file("ckpt.pt", &damaged(&pt_bytes(), &flips), read_weights);
    }

    #[test]
    fn pickles_with_flipped_bytes(flips in prop::collection::vec((0.0..1.0f64, any::<u8>()), 1..6)) {
        let _ = judged(|| udit::io::pickle::namespace_args(&damaged(&data_pkl(), &flips)));
    }

    #[test]
    fn npz_with_flipped_bytes(flips in prop::collection::vec((0.0..1.0f64, any::<u8>()), 1..6)) {
        let _ = read_file("s.npz", &damaged(&npz_bytes(), &flips), read_npz);
    }

    #[test]
    fn idx_with_flipped_bytes(flips in prop::collection::vec((0.0..1.0f64, any::<u8>()), 1..4)) {
        let (images, labels) = idx_files();
        let _ = read_idx(&damaged(&images, &flips), &labels);
        let _ = read_idx(&images, &damaged(&labels, &flips));
    }

    /// A configuration with a field of any type and value parses and validates, or is
    /// refused in one line; a valid one also gets its cost without overflow.
    #[test]
    fn model_configurations_with_any_field_value(
        key in prop::sample::select(vec!["arch", "input_size", "patch_size", "in_channels", "hidden_size", "depth",
                                         "num_heads", "num_classes", "mlp_ratio", "class_dropout_prob", "learn_sigma",
                                         "cfg_channels", "extra"]),
        value in any_json(),
    ) {
        if let Ok(config) = judged(|| udit::model::ModelConfig::from_json(&config_with(key, value))) {
            let cost = udit::cost::Cost::of(&config);
            prop_assert!(cost.params > 0);
        }
    }

    /// A plan or a recipe with a field of any type and value is resolved, or refused in one
    /// line.
    #[test]
    fn plans_and_recipes_with_any_field_value(
        key in prop::sample::select(vec!["steps", "global_batch", "lr", "warmup_steps", "cooldown_steps", "lr_schedule",
                                         "seeds", "ema_decay", "grad_clip", "codec", "dataset", "budget_minutes"]),
        meter_key in prop::sample::select(vec!["num_samples", "steps", "sampler", "cfg_scales", "batch", "classes",
                                               "interpolant"]),
        value in any_json(),
    ) {
        let mut plan = json!({
            "entries": [{"name": "a", "model": serde_json::from_str::<Value>(&config_with("extra", Value::Null)).unwrap()}],
            "recipe": {"dataset": "fashion-mnist", "codec": "unshuffle2", "steps": 10},
            "meter": {"num_samples": 10}
        });
        plan["entries"][0]["model"].as_object_mut().unwrap().remove("extra");
        let mut recipe_plan = plan.clone();
        recipe_plan["recipe"][key] = value.clone();
        let mut meter_plan = plan;
        meter_plan["meter"][meter_key] = value;
        for p in [recipe_plan, meter_plan] {
            let _ = judged(|| {
                let plan: udit::ablate::Plan = serde_json::from_value(p)?;
                plan.resolve().map(|(e, r)| e.len() + r.len())
            });
        }
    }
}
