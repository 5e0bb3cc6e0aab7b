//! Weights in and out, under the reference state-dict names.
//!
//! Reads `.safetensors` and PyTorch `.pt` files (a bare state dict, or a training checkpoint
//! with `ema`/`model` entries beside `opt` and a pickled `args`), checks that every key the
//! model needs is present with the right shape and nothing else is, and only then loads.
//! Writes safetensors with the same names, atomically.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::TensorData;

use crate::classes::ClassNames;
use crate::io::pickle::Arg;
pub use crate::model::StateDict;
use crate::model::{Denoiser, FfnForm, ModelConfig};
use crate::process::{PROCESS_METADATA_KEY, ProcessSpec};

/// Metadata key under which saved safetensors carry the model configuration (JSON).
pub const CONFIG_METADATA_KEY: &str = "udit_config";
/// Metadata key of the pixel codec a model was trained with (`unshuffle2`, `none`, a VAE).
pub const CODEC_METADATA_KEY: &str = "udit_codec";

/// The entries a training checkpoint holds beside each other, in order of preference.
const ENTRIES: [&str; 4] = ["ema", "model", "state_dict", "module"];

/// A weights file read into memory.
pub struct Weights {
    pub tensors: StateDict,
    /// Model configuration stored beside the weights, when the file has one.
    pub config: Option<ModelConfig>,
    /// Pixel codec stored beside the weights, when the file has one.
    pub codec: Option<String>,
    /// All string metadata of a safetensors file.
    pub metadata: std::collections::HashMap<String, String>,
}

/// Reads `.safetensors` or a PyTorch checkpoint. In a checkpoint with several state dicts,
/// `entry` picks one (`"ema"`, `"model"`, ...); by default `ema` is preferred, then `model`.
pub fn read_weights(path: &Path, entry: Option<&str>) -> Result<Weights> {
    let mut head = [0u8; 9];
    {
        use std::io::Read;
        let mut f = crate::io::open_file(path)?;
        let n = f.read(&mut head).with_context(|| format!("cannot read {}", path.display()))?;
        if n < head.len() {
            bail!("{} is too short to be a weights file ({n} bytes)", path.display());
        }
    }
    // safetensors: a little-endian header length, then the JSON header. Otherwise a zip
    // (PyTorch >= 1.6) or a raw pickle stream (older PyTorch).
    let is_safetensors = head[8] == b'{';
    let is_pytorch = !is_safetensors && (head[..4] == *b"PK\x03\x04" || head[0] == 0x80);
    let pt_name = path.extension().is_some_and(|e| ["pt", "pth", "bin", "ckpt"].contains(&&*e.to_string_lossy()));
    let result = match (is_safetensors, is_pytorch, pt_name) {
        (false, true, _) => read_pytorch(path, entry),
        (false, false, true) => Err(anyhow::anyhow!("not a PyTorch checkpoint (neither a zip archive nor a pickle)")),
        _ => read_safetensors(path, entry),
    };
    result.with_context(|| format!("cannot load weights from {}", path.display()))
}

fn read_safetensors(path: &Path, entry: Option<&str>) -> Result<Weights> {
    let bytes = std::fs::read(path)?;
    if bytes[8] == b'{' {
        check_safetensors_length(&bytes)?;
    }
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| anyhow::anyhow!("not a safetensors file ({e})"))?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    let config = metadata
        .get(CONFIG_METADATA_KEY)
        .map(|json| ModelConfig::from_json(json))
        .transpose()
        .context("the model configuration stored in the file is invalid")?;
    let st =
        safetensors::SafeTensors::deserialize(&bytes).map_err(|e| anyhow::anyhow!("not a safetensors file ({e})"))?;
    let names: Vec<String> = st.names().into_iter().map(String::from).collect();
    let prefix = entry_prefix(&names, entry)?;
    let mut tensors = StateDict::new();
    for (name, view) in st.tensors() {
        if let Some(key) = strip_entry(&name, prefix.as_deref()) {
            tensors.insert(key.to_string(), safetensors_to_f32(&name, &view)?);
        }
    }
    let codec = metadata.get(CODEC_METADATA_KEY).cloned();
    Ok(Weights { tensors, config, codec, metadata })
}

/// A safetensors file shorter than its header or than the data its header lists is
/// truncated (an interrupted download or copy); says so with the byte counts. Bytes that do
/// not start a JSON header are no safetensors file at all: the parser names those.
fn check_safetensors_length(bytes: &[u8]) -> Result<()> {
    if bytes.get(8) != Some(&b'{') {
        return Ok(());
    }
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes checked"));
    let header_end = 8u64.saturating_add(header_len);
    if header_end > bytes.len() as u64 {
        bail!("truncated: the safetensors header needs {header_end} bytes, the file has {}", bytes.len());
    }
    // The largest end offset among the tensors is the data size the header promises.
    let header: serde_json::Value = match serde_json::from_slice(&bytes[8..header_end as usize]) {
        Ok(v) => v,
        Err(_) => return Ok(()), // not JSON: the safetensors parser names it
    };
    let data_len = header
        .as_object()
        .into_iter()
        .flat_map(|o| o.values())
        .filter_map(|t| t.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    let need = header_end + data_len;
    if need > bytes.len() as u64 {
        bail!("truncated: the tensors need {need} bytes, the file has {}", bytes.len());
    }
    Ok(())
}

/// Which entry of a checkpoint to read: `entry` when given (it must exist), else the first
/// of [`ENTRIES`] present, else none (a bare state dict).
fn entry_prefix(names: &[String], entry: Option<&str>) -> Result<Option<String>> {
    let tops: BTreeSet<&str> = names.iter().filter_map(|k| k.split_once('.').map(|(top, _)| top)).collect();
    Ok(match entry {
        Some(e) if tops.contains(e) => Some(e.to_string()),
        Some(e) => bail!(
            "the checkpoint has no entry {e:?} (entries: {})",
            tops.iter().copied().collect::<Vec<_>>().join(", ")
        ),
        None => ENTRIES.iter().find(|n| tops.contains(**n)).map(|n| n.to_string()),
    })
}

/// The state-dict key of `name` within entry `prefix` (None: `name` belongs to another entry).
fn strip_entry<'a>(name: &'a str, prefix: Option<&str>) -> Option<&'a str> {
    match prefix {
        Some(p) => name.strip_prefix(p).and_then(|k| k.strip_prefix('.')),
        None => Some(name),
    }
}

/// Converts any float (or integer) safetensors view to f32 data.
pub fn safetensors_to_f32(name: &str, view: &safetensors::tensor::TensorView) -> Result<TensorData> {
    use safetensors::Dtype;
    let b = view.data();
    let values: Vec<f32> = match view.dtype() {
        Dtype::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
        Dtype::F64 => b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
        Dtype::F16 => b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::BF16 => b.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::I64 => b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
        Dtype::I32 => b.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
        Dtype::U8 => b.iter().map(|&v| v as f32).collect(),
        other => bail!("tensor {name} has unsupported dtype {other:?}"),
    };
    Ok(TensorData::new(values, view.shape().to_vec()))
}

fn read_pytorch(path: &Path, entry: Option<&str>) -> Result<Weights> {
    use burn::store::pytorch_reader::{DType, PytorchReader};
    let reader = PytorchReader::new(path).map_err(|e| match zip_is_truncated(path) {
        Some(len) => anyhow::anyhow!("truncated: a zip archive without its directory at the end ({len} bytes)"),
        None => anyhow::anyhow!("not a readable PyTorch checkpoint ({e})"),
    })?;
    let prefix = entry_prefix(&reader.keys(), entry)?;
    let mut tensors = StateDict::new();
    for (name, t) in reader.tensors() {
        let Some(key) = strip_entry(name, prefix.as_deref()) else {
            continue; // `opt`, the other state dict, ...
        };
        let b = t.read().with_context(|| format!("cannot read tensor {name}"))?;
        let values: Vec<f32> = match t.dtype() {
            DType::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
            DType::F64 => b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
            DType::F16 => b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            DType::BF16 => b.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            _ => continue, // integer buffers (e.g. step counters) are not weights
        };
        tensors.insert(key.to_string(), TensorData::new(values, t.shape().to_vec()));
    }
    if tensors.is_empty() {
        bail!("no float tensors found in the checkpoint");
    }
    let args = training_args(path)?.unwrap_or_default();
    let mut metadata = std::collections::HashMap::new();
    if let Some(process) = process_of_args(&args) {
        metadata.insert(PROCESS_METADATA_KEY.to_string(), serde_json::to_string(&process)?);
    }
    Ok(Weights { tensors, config: config_of_args(&args), codec: None, metadata })
}

/// The `argparse.Namespace` a training checkpoint (a zip archive) pickles as `args`, if any.
fn training_args(path: &Path) -> Result<Option<BTreeMap<String, Arg>>> {
    use std::io::Read;
    let Ok(mut zip) = zip::ZipArchive::new(crate::io::open_file(path)?) else { return Ok(None) };
    let Some(name) = zip.file_names().find(|n| n.ends_with("data.pkl")).map(str::to_owned) else { return Ok(None) };
    let mut pickle = Vec::new();
    zip.by_name(&name)?.read_to_end(&mut pickle).with_context(|| format!("cannot read {name}"))?;
    crate::io::pickle::namespace_args(&pickle).with_context(|| format!("in {name}"))
}

/// The model the args of SiT's and VisionLLaMA's `train.py` name (`--model`, `--image-size`
/// through the SD VAE's 8x, `--num-classes`), when it is one of our presets.
fn config_of_args(args: &BTreeMap<String, Arg>) -> Option<ModelConfig> {
    let Some(Arg::Str(name)) = args.get("model") else { return None };
    // VisionLLaMA names its models `SiTLLaMA-S/2`.
    let name = name.replace("SiTLLaMA-", "SiT-LLaMA-");
    let mut config = ModelConfig::preset(&name).ok()?;
    if let Some(&Arg::Int(side)) = args.get("image_size") {
        config = config.with_input_size(usize::try_from(side / 8).ok()?).ok()?;
    }
    if let Some(&Arg::Int(n)) = args.get("num_classes") {
        config = config.with_num_classes(usize::try_from(n).ok()?).ok()?;
    }
    Some(config)
}

/// The interpolant SiT's `train.py` trained with (`--path-type`, `--prediction`,
/// `--loss-weight`, `--train-eps`, `--sample-eps`), when its args name one.
fn process_of_args(args: &BTreeMap<String, Arg>) -> Option<ProcessSpec> {
    let text = |key: &str| match args.get(key) {
        Some(Arg::Str(s)) => Some(s.clone()),
        _ => None,
    };
    let number = |key: &str| match args.get(key) {
        Some(Arg::Float(v)) => Some(*v),
        Some(Arg::Int(v)) => Some(*v as f64),
        _ => None,
    };
    Some(ProcessSpec::Interpolant {
        path_type: text("path_type")?,
        prediction: text("prediction").unwrap_or_else(|| "velocity".into()),
        loss_weight: text("loss_weight"),
        train_eps: number("train_eps"),
        sample_eps: number("sample_eps"),
    })
}

/// A zip file (PyTorch's format) whose end-of-central-directory record is missing was cut
/// short: returns its length then.
fn zip_is_truncated(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    let tail = &bytes[bytes.len().saturating_sub(65_557)..];
    let has_end = tail.windows(4).any(|w| w == b"PK\x05\x06");
    (bytes.starts_with(b"PK\x03\x04") && !has_end).then_some(bytes.len() as u64)
}

/// The state-dict key of a burn module path: a field `a__0` is the segment `a.0`
/// (an index into a PyTorch `nn.Sequential`), and enum variants add no segment.
pub(crate) fn key_of(path: &[String]) -> String {
    path.iter().map(|s| s.trim_start_matches("__").replace("__", ".")).collect::<Vec<_>>().join(".")
}

/// Tracks the module path while burn walks a model.
#[derive(Default)]
pub(crate) struct PathStack(pub(crate) Vec<String>);

impl PathStack {
    pub(crate) fn enter(&mut self, name: &str, container: &str) {
        if !container.starts_with("Enum:") {
            self.0.push(name.to_string());
        }
    }
    pub(crate) fn exit(&mut self, container: &str) {
        if !container.starts_with("Enum:") {
            self.0.pop();
        }
    }
}

/// Collects key -> shape (and optionally data) of every float parameter.
struct Collect {
    path: PathStack,
    shapes: BTreeMap<String, Vec<usize>>,
    data: Option<StateDict>,
}

impl ModuleVisitor for Collect {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.path.enter(name, container);
    }
    fn exit_module(&mut self, _: &str, container: &str) {
        self.path.exit(container);
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let key = key_of(&self.path.0);
        let value = param.val();
        self.shapes.insert(key.clone(), value.dims().to_vec());
        if let Some(data) = &mut self.data {
            data.insert(key, value.into_data());
        }
    }
}

/// Replaces every float parameter with the state-dict tensor of its key.
struct Load<'a> {
    path: PathStack,
    tensors: &'a StateDict,
    device: Device,
}

impl ModuleMapper for Load<'_> {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.path.enter(name, container);
    }
    fn exit_module(&mut self, _: &str, container: &str) {
        self.path.exit(container);
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let data = self.tensors[&key_of(&self.path.0)].clone();
        let device = self.device.clone();
        param.map(|old| {
            let grad = old.is_require_grad();
            Tensor::from_data(data, &device).set_require_grad(grad)
        })
    }
}

/// Key -> shape of every parameter of `module`.
pub fn param_shapes<M: Module>(module: &M) -> BTreeMap<String, Vec<usize>> {
    let mut c = Collect { path: PathStack::default(), shapes: BTreeMap::new(), data: None };
    module.visit(&mut c);
    c.shapes
}

/// Every parameter of `module` under its reference key.
pub fn state_dict<M: Module>(module: &M) -> StateDict {
    let mut c = Collect { path: PathStack::default(), shapes: BTreeMap::new(), data: Some(StateDict::new()) };
    module.visit(&mut c);
    c.data.unwrap_or_default()
}

/// Loads `tensors` into `module` when they match it exactly; otherwise names the keys that
/// are missing, unexpected or mis-shaped and leaves the module untouched.
pub fn load_into<M: Module>(module: M, tensors: &StateDict, device: &Device) -> Result<M> {
    let expected = param_shapes(&module);
    let missing: Vec<&String> = expected.keys().filter(|k| !tensors.contains_key(*k)).collect();
    let unexpected: Vec<&String> = tensors.keys().filter(|k| !expected.contains_key(*k)).collect();
    let misshaped: Vec<String> = expected
        .iter()
        .filter_map(|(k, shape)| {
            let got = tensors.get(k)?.shape().to_vec();
            (got != *shape).then(|| format!("{k} (checkpoint {got:?}, model {shape:?})"))
        })
        .collect();
    let mut problems = Vec::new();
    let list = |v: Vec<String>| {
        let n = v.len();
        let mut s = v.into_iter().take(5).collect::<Vec<_>>().join(", ");
        if n > 5 {
            s.push_str(&format!(" and {} more", n - 5));
        }
        s
    };
    if !missing.is_empty() {
        problems.push(format!("{} missing keys: {}", missing.len(), list(missing.into_iter().cloned().collect())));
    }
    if !unexpected.is_empty() {
        problems.push(format!(
            "{} unexpected keys: {}",
            unexpected.len(),
            list(unexpected.into_iter().cloned().collect())
        ));
    }
    if !misshaped.is_empty() {
        problems.push(format!("{} mis-shaped tensors: {}", misshaped.len(), list(misshaped)));
    }
    if !problems.is_empty() {
        bail!("the weights do not fit this model: {}", problems.join("; "));
    }
    Ok(module.map(&mut Load { path: PathStack::default(), tensors, device: device.clone() }))
}

/// The FFN form a U-DiT state dict is in: branch keys (`project_in.0`) mean the training form.
pub fn ffn_form_of(tensors: &StateDict) -> FfnForm {
    if tensors.keys().any(|k| k.contains(".project_in.0.")) { FfnForm::Train } else { FfnForm::Merged }
}

/// Builds the model `cfg` describes and loads `weights` into it.
pub fn load_denoiser(cfg: &ModelConfig, weights: &Weights, device: &Device) -> Result<Denoiser> {
    let model = Denoiser::new(cfg, ffn_form_of(&weights.tensors), device);
    load_into(model, &weights.tensors, device)
}

/// Safetensors metadata that lets `udit sample` use a weights file without further flags.
pub fn model_metadata(
    config: &ModelConfig,
    process: &ProcessSpec,
    codec: Option<&str>,
    names: &ClassNames,
) -> Result<Vec<(String, String)>> {
    let mut meta = vec![
        (CONFIG_METADATA_KEY.to_string(), serde_json::to_string(config)?),
        (PROCESS_METADATA_KEY.to_string(), process.to_json()),
    ];
    meta.extend(codec.map(|c| (CODEC_METADATA_KEY.to_string(), c.to_string())));
    meta.extend(names.metadata());
    Ok(meta)
}

/// Writes `tensors` with string `metadata` as safetensors, atomically: the file appears
/// complete under its name or not at all.
pub fn write_safetensors(path: &Path, tensors: &StateDict, metadata: Vec<(String, String)>) -> Result<()> {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(k, d)| {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, d.shape().to_vec(), d.as_bytes())
                .map_err(|e| anyhow::anyhow!("tensor {k}: {e}"))?;
            Ok((k.clone(), view))
        })
        .collect::<Result<_>>()?;
    let metadata = (!metadata.is_empty()).then(|| metadata.into_iter().collect());
    let bytes = safetensors::serialize(views, metadata).map_err(|e| anyhow::anyhow!("cannot serialize: {e}"))?;
    crate::io::write_atomic(path, &bytes)
}
