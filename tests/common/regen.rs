//! The large fixtures, regenerated bit-identically at test time from small committed inputs.
//!
//! Their values are all seeded numpy draws (`tests/fixtures/README.md`), so instead of ~146 MB
//! of weights the repository holds the recipes: `NAME.json` (seed and shapes) for the U-DiT
//! weights, the safetensors header of the Inception weights, and for the PyTorch `.pt` zips a
//! gzipped "skeleton" (the original zip with every tensor record zeroed) plus a `.records` list
//! saying how each record is refilled. `tests/fixtures/make_skeletons.py` wrote those from the
//! original files after checking the recipes in numpy.
//!
//! Nothing here is trusted blindly: every refilled zip record must match the CRC-32 in the
//! zip's central directory, and every regenerated file must match the size and CRC-32 of the
//! original (`tests/fixtures/regenerated.crc32`) before it is written.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use flate2::Crc;
use flate2::read::GzDecoder;
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use serde_json::Value;

use super::mt19937::RandomState;

/// The fixtures that are regenerated rather than committed.
pub const REGENERATED: [&str; 5] = [
    "inception_fid_coarse.weights.safetensors",
    "udit_tiny.train-checkpoint.pt",
    "udit_tiny.weights.safetensors",
    "udit_tiny_plain.state-dict.pt",
    "udit_tiny_plain.weights.safetensors",
];

pub fn is_regenerated(name: &str) -> bool {
    REGENERATED.contains(&name)
}

/// `out_dir/name`, (re)generated from the inputs in `committed` unless it already holds the
/// expected bytes. Checked once per process; the file is written under a temporary name and
/// renamed, so concurrent test processes never see a partial file.
pub fn path(name: &str, committed: &Path, out_dir: &Path) -> PathBuf {
    static CHECKED: Mutex<Vec<String>> = Mutex::new(Vec::new());
    // A panic while generating poisons the lock; later callers then retry (and fail loudly again).
    let mut checked = CHECKED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let path = out_dir.join(name);
    if checked.iter().any(|n| n == name) {
        return path;
    }
    let expected = expected_size_and_crc(committed, name);
    let current = std::fs::read(&path).ok().map(|bytes| (bytes.len(), crc32(&bytes)));
    if current != Some(expected) {
        let bytes = generate(name, committed);
        let got = (bytes.len(), crc32(&bytes));
        assert_eq!(got, expected, "regenerated {name} is not the original (size, CRC-32)");
        std::fs::create_dir_all(out_dir).unwrap();
        let tmp = out_dir.join(format!(".{name}.{}.tmp", std::process::id()));
        std::fs::write(&tmp, &bytes).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }
    checked.push(name.to_string());
    path
}

pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = Crc::new();
    crc.update(bytes);
    crc.sum()
}

/// Size and CRC-32 of the original file, from `regenerated.crc32` (`NAME SIZE CRC32` lines).
fn expected_size_and_crc(committed: &Path, name: &str) -> (usize, u32) {
    let list = std::fs::read_to_string(committed.join("regenerated.crc32")).unwrap();
    let line = list.lines().find(|l| l.split_whitespace().next() == Some(name));
    let fields: Vec<&str> =
        line.unwrap_or_else(|| panic!("{name} not in regenerated.crc32")).split_whitespace().collect();
    (fields[1].parse().unwrap(), u32::from_str_radix(fields[2], 16).unwrap())
}

fn generate(name: &str, committed: &Path) -> Vec<u8> {
    if name == "inception_fid_coarse.weights.safetensors" {
        inception_weights(&committed.join("inception_fid_coarse.weights.header.json"))
    } else if let Some(model) = name.strip_suffix(".weights.safetensors") {
        let weights = seeded_weights(&committed.join(format!("{model}.json")));
        let bytes: BTreeMap<&str, Vec<u8>> = weights.iter().map(|(k, (_, v))| (k.as_str(), le_bytes(v))).collect();
        let views = weights.iter().map(|(k, (shape, _))| {
            (k.as_str(), TensorView::new(Dtype::F32, shape.clone(), &bytes[k.as_str()]).unwrap())
        });
        safetensors::serialize(views, None).unwrap()
    } else {
        pytorch_zip(name, committed)
    }
}

fn le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The seeded weights of a `NAME.json` (key -> shape, values): `RandomState(seed)` standard
/// normals, drawn tensor after tensor in sorted key order and rounded to f32, then scaled in f32:
/// `logit_scale` keys `f32(ln 10) + 0.1 z`; `embedding_table` keys `0.5 z`; rank <= 1 `0.02 z`;
/// the rest `f32(0.5 / sqrt(fan_in)) z` (the scale is a f64 rounded to f32, as numpy does with
/// a Python float times a float32 array).
pub fn seeded_weights(config: &Path) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(config).unwrap()).unwrap();
    let seed = meta["seed"].as_u64().unwrap();
    // A BTreeMap: numpy drew in Python's `sorted` order, which is byte order for these keys.
    let shapes: BTreeMap<String, Vec<usize>> = serde_json::from_value(meta["shapes"].clone()).unwrap();
    let mut rng = RandomState::new(seed.try_into().unwrap());
    let ln_10 = std::f64::consts::LN_10 as f32;
    let mut out = BTreeMap::new();
    for (key, shape) in shapes {
        let n: usize = shape.iter().product();
        let z = (0..n).map(|_| rng.standard_normal() as f32);
        let values: Vec<f32> = if key.contains("logit_scale") {
            z.map(|z| ln_10 + 0.1 * z).collect()
        } else {
            let scale = if key.contains("embedding_table") {
                0.5
            } else if shape.len() <= 1 {
                0.02
            } else {
                let fan_in: usize = shape[1..].iter().product();
                (0.5 / (fan_in as f64).sqrt()) as f32
            };
            z.map(|z| scale * z).collect()
        };
        out.insert(key, (shape, values));
    }
    out
}

/// The coarse FID Inception weights, as the safetensors file: keys, dtypes and shapes from the
/// committed header; `RandomState(31)`, and for each F32 key in sorted order
/// `q = randint(-8, 9, shape) / 8` in f32, then `running_var` `1 + 0.5 |q|`; `running_mean`,
/// `bn.bias`, `fc.bias` `0.1 q`; `bn.weight` `1 + 0.25 q`; other weights `f32(1.7 / sqrt(fan_in)) q`.
/// I64 tensors (`num_batches_tracked`) are 0 and draw nothing.
fn inception_weights(header: &Path) -> Vec<u8> {
    let header: BTreeMap<String, Value> = serde_json::from_slice(&std::fs::read(header).unwrap()).unwrap();
    let mut rng = RandomState::new(31);
    let mut tensors = Vec::new();
    for (key, info) in header.iter().filter(|(k, _)| *k != "__metadata__") {
        let shape: Vec<usize> = serde_json::from_value(info["shape"].clone()).unwrap();
        let n: usize = shape.iter().product();
        let (dtype, bytes) = match info["dtype"].as_str().unwrap() {
            "I64" => (Dtype::I64, vec![0u8; 8 * n]),
            "F32" => {
                let fan_in: usize = shape.iter().skip(1).product();
                let scale = (1.7 / (fan_in as f64).sqrt()) as f32;
                let value = |q: f32| -> f32 {
                    if key.ends_with("running_var") {
                        1.0 + 0.5 * q.abs()
                    } else if key.ends_with("running_mean") || key.ends_with("bn.bias") || key == "fc.bias" {
                        0.1 * q
                    } else if key.ends_with("bn.weight") {
                        1.0 + 0.25 * q
                    } else {
                        scale * q
                    }
                };
                let values: Vec<f32> = (0..n).map(|_| value(rng.randint(-8, 9) as f32 / 8.0)).collect();
                (Dtype::F32, le_bytes(&values))
            }
            other => panic!("{key}: unexpected dtype {other}"),
        };
        tensors.push((key.as_str(), dtype, shape, bytes));
    }
    let views =
        tensors.iter().map(|(k, dtype, shape, bytes)| (*k, TensorView::new(*dtype, shape.clone(), bytes).unwrap()));
    safetensors::serialize(views, None).unwrap()
}

/// A stored entry of a zip archive.
struct ZipEntry {
    name: String,
    /// Where its bytes start in the archive.
    offset: usize,
    size: usize,
    crc: u32,
}

/// The entries of an uncompressed zip, from its central directory. PyTorch's writer puts
/// the sizes and CRCs in data descriptors after the data (local headers hold zeros), so they
/// are read from the central directory; archives under 4 GiB need no zip64 fields.
fn zip_entries(zip: &[u8]) -> Vec<ZipEntry> {
    let u16_at = |p: usize| u16::from_le_bytes([zip[p], zip[p + 1]]) as usize;
    let u32_at = |p: usize| u32::from_le_bytes(zip[p..p + 4].try_into().unwrap());
    let eocd = (0..=zip.len() - 22).rev().find(|&p| zip[p..p + 4] == *b"PK\x05\x06").expect("not a zip");
    let count = u16_at(eocd + 10);
    let mut p = u32_at(eocd + 16) as usize;
    assert!(count != 0xffff && p != 0xffff_ffff, "zip64 central directory");
    (0..count)
        .map(|_| {
            assert_eq!(&zip[p..p + 4], b"PK\x01\x02", "central directory entry");
            assert_eq!(u16_at(p + 10), 0, "compressed zip entry");
            let (crc, size) = (u32_at(p + 16), u32_at(p + 24));
            assert!(size != 0xffff_ffff, "zip64 entry");
            let (name_len, extra_len, comment_len) = (u16_at(p + 28), u16_at(p + 30), u16_at(p + 32));
            let local = u32_at(p + 42) as usize;
            let name = String::from_utf8(zip[p + 46..p + 46 + name_len].to_vec()).unwrap();
            assert_eq!(&zip[local..local + 4], b"PK\x03\x04", "local header of {name}");
            let offset = local + 30 + u16_at(local + 26) + u16_at(local + 28);
            p += 46 + name_len + extra_len + comment_len;
            ZipEntry { name, offset, size: size as usize, crc }
        })
        .collect()
}

/// A PyTorch zip checkpoint: the skeleton `NAME.skeleton.gz` with its `data/N` records refilled
/// as `NAME.records` says (`weights MODEL` names the seeded weights `MODEL.json`; then one line
/// per record: `data/N weight KEY`, `data/N weight KEY add X` or `data/N fill X`, in f32).
fn pytorch_zip(name: &str, committed: &Path) -> Vec<u8> {
    let mut zip = Vec::new();
    let skeleton = std::fs::File::open(committed.join(format!("{name}.skeleton.gz"))).unwrap();
    GzDecoder::new(skeleton).read_to_end(&mut zip).unwrap();
    let entries = zip_entries(&zip);
    let records: HashMap<&str, &ZipEntry> = entries
        .iter()
        .filter_map(|e| Some((e.name.split_once('/')?.1, e)))
        .filter(|(r, _)| r.starts_with("data/"))
        .collect();

    let list = std::fs::read_to_string(committed.join(format!("{name}.records"))).unwrap();
    let mut lines = list.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty());
    let model = lines.next().and_then(|l| l.strip_prefix("weights ")).expect("`weights MODEL` line");
    let weights = seeded_weights(&committed.join(format!("{model}.json")));
    let weight = |key: &str| &weights.get(key).unwrap_or_else(|| panic!("{name}: no weight {key}")).1;
    let f32_arg = |x: &str| -> f32 { x.parse().unwrap_or_else(|_| panic!("{name}: bad number {x}")) };

    let mut filled = HashSet::new();
    for line in lines {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let entry = records.get(fields[0]).unwrap_or_else(|| panic!("{name}: no record {}", fields[0]));
        let values: Vec<f32> = match &fields[1..] {
            ["weight", key] => weight(*key).clone(),
            ["weight", key, "add", x] => weight(*key).iter().map(|v| v + f32_arg(*x)).collect(),
            ["fill", x] => vec![f32_arg(*x); entry.size / 4],
            _ => panic!("{name}: bad records line `{line}`"),
        };
        assert_eq!(values.len() * 4, entry.size, "{name}: size of {}", fields[0]);
        zip[entry.offset..entry.offset + entry.size].copy_from_slice(&le_bytes(&values));
        filled.insert(fields[0]);
    }
    assert_eq!(filled.len(), records.len(), "{name}: records left unfilled");
    // Every entry (the refilled records, data.pkl and the rest) against the CRC-32 of the zip.
    for e in &entries {
        let crc = crc32(&zip[e.offset..e.offset + e.size]);
        assert_eq!(crc, e.crc, "{name}: {} does not match its CRC-32 after regeneration", e.name);
    }
    zip
}
