//! Bad checkpoints give clear errors; the `udit` command line end to end on the fixtures.

mod common;

use std::path::Path;

use burn::prelude::*;
use common::*;
use udit::checkpoint::{load_denoiser, read_weights, write_safetensors};
use udit::model::{Denoiser, FfnForm, ModelConfig};

fn tiny_config() -> ModelConfig {
    ModelConfig::from_file(&fixture("udit_tiny.json")).unwrap()
}

fn load_err(weights_path: &Path) -> String {
    let result = read_weights(weights_path, None).and_then(|w| load_denoiser(&tiny_config(), &w, &Device::flex()));
    format!("{:#}", result.err().expect("loading should fail"))
}

#[test]
fn mis_shaped_missing_and_unexpected_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = read_weights(&fixture("udit_tiny.weights.safetensors"), None).unwrap().tensors;
    w.insert("output.bias".into(), burn::tensor::TensorData::new(vec![0f32; 3], [3]));
    w.remove("latent.0.attn1.to_qkv.weight");
    w.insert("extra.weight".into(), burn::tensor::TensorData::new(vec![0f32; 2], [2]));
    let p = dir.path().join("bad.safetensors");
    write_safetensors(&p, &w, vec![]).unwrap();
    let e = load_err(&p);
    assert!(e.contains("output.bias (checkpoint [3], model [64])"), "{e}");
    assert!(e.contains("missing keys: latent.0.attn1.to_qkv.weight"), "{e}");
    assert!(e.contains("unexpected keys: extra.weight"), "{e}");
}

#[test]
fn weights_of_another_model_are_refused() {
    let e = load_err(&fixture("udit_tiny_plain.weights.safetensors"));
    assert!(e.contains("do not fit this model"), "{e}");
}

#[test]
fn truncated_and_foreign_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for src in ["udit_tiny.weights.safetensors", "udit_tiny_plain.state-dict.pt"] {
        let bytes = std::fs::read(fixture(src)).unwrap();
        let p = dir.path().join(format!("cut-{src}"));
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        let e = load_err(&p);
        assert!(e.contains("cannot load weights"), "{src}: {e}");
    }
    let p = dir.path().join("notes.txt");
    std::fs::write(&p, "these are not weights at all").unwrap();
    assert!(load_err(&p).contains("not a safetensors file"), "{}", load_err(&p));
    assert!(load_err(&dir.path().join("absent.pt")).contains("cannot open"));
}

#[test]
fn merged_form_computes_the_training_form_function_for_every_switch() {
    let dev = Device::flex();
    let configs = [
        r#"{"arch":"u-dit","input_size":24,"hidden_size":16,"num_heads":2,"depth":[1,1,1,1,1],"mlp_ratio":2,"downsampler":"dwconv3","down_shortcut":1,"attn_type":"v2","posemb_type":"rope2d","num_classes":7}"#,
        r#"{"arch":"u-dit","input_size":16,"hidden_size":16,"num_heads":2,"depth":[1,1,1,1,1],"mlp_ratio":3,"downsampler":"dwconv5","rep":0,"learn_sigma":false}"#,
        r#"{"arch":"u-dit","input_size":8,"hidden_size":8,"num_heads":1,"depth":[1,1,1,1,1],"downsampler":"dwconv7","ffn_type":"basic","down_factor":1,"in_channels":3}"#,
    ];
    for json in configs {
        let cfg = ModelConfig::from_json(json).unwrap();
        let s = cfg.input_size();
        // Non-zero adaLN and output weights, so every branch contributes.
        let model = Denoiser::new(&cfg, FfnForm::Train, &dev);
        let mut seed = 12345u64;
        let noisy: udit::checkpoint::StateDict = udit::checkpoint::state_dict(&model)
            .into_iter()
            .map(|(k, d)| {
                let values: Vec<f32> = d
                    .as_slice::<f32>()
                    .unwrap()
                    .iter()
                    .map(|v| {
                        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        v + ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
                    })
                    .collect();
                (k, burn::tensor::TensorData::new(values, d.shape().to_vec()))
            })
            .collect();
        let model = udit::checkpoint::load_into(model, &noisy, &dev).unwrap();
        let x = Tensor::<4>::random([2, cfg.in_channels(), s, s], burn::tensor::Distribution::Normal(0.0, 1.0), &dev);
        let t = Tensor::<1>::from_floats([3.0, 700.0], &dev);
        let y = Tensor::<1, Int>::from_ints([1, 0], &dev);
        let a = model.forward(x.clone(), t.clone(), y.clone());
        assert_eq!(a.dims(), [2, cfg.out_channels(), s, s]);
        let b = model.merged().forward(x, t, y);
        assert_close(json, &b.into_data(), &a.into_data(), 1e-4);
    }
}

#[test]
fn cli_forward_reproduces_the_fixture_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fixture("udit_tiny.json");
    let io_path = fixture("udit_tiny.io.safetensors");
    let io = io("udit_tiny.io.safetensors");
    let out = dir.path().join("out.safetensors");
    let weights = fixture("udit_tiny.train-checkpoint.pt");
    let base = ["forward", "--config", cfg.to_str().unwrap(), "--ckpt", weights.to_str().unwrap()];
    for (extra, reference) in [(vec![], "out_eval"), (vec!["--train-form"], "out_train")] {
        let mut args = base.to_vec();
        args.extend(["--inputs", io_path.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        args.extend(extra);
        let (ok, _, err) = udit(&args);
        assert!(ok, "{err}");
        assert_close(reference, &read_weights(&out, None).unwrap().tensors["out"], &io[reference], 1e-4);
    }
    // Guided forward: the inputs file needs x, t, y; write the cfg_* tensors under those names.
    let cfg_inputs = dir.path().join("cfg_in.safetensors");
    let renamed = [("x", "cfg_x"), ("t", "cfg_t"), ("y", "cfg_y")].map(|(a, b)| (a.to_string(), io[b].clone()));
    write_safetensors(&cfg_inputs, &renamed.into_iter().collect(), vec![]).unwrap();
    let mut args = base.to_vec();
    args.extend(["--inputs", cfg_inputs.to_str().unwrap(), "--out", out.to_str().unwrap(), "--cfg-scale", "1.5"]);
    let (ok, _, err) = udit(&args);
    assert!(ok, "{err}");
    assert_close("out_cfg", &read_weights(&out, None).unwrap().tensors["out"], &io["out_cfg"], 1e-4);
}

#[test]
fn cli_convert_merge_then_forward_without_a_config() {
    let dir = tempfile::tempdir().unwrap();
    let merged = dir.path().join("merged.safetensors");
    let cfg = fixture("udit_tiny.json");
    let pt = fixture("udit_tiny.train-checkpoint.pt");
    let (ok, _, err) = udit(&[
        "convert",
        "--ckpt",
        pt.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
        "--merge",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let w = read_weights(&merged, None).unwrap();
    assert!(w.tensors.contains_key("encoder_level_1.0.mlp1.dwconv.weight"), "merged FFN keys");
    assert_eq!(w.config, Some(tiny_config()), "the configuration travels with the weights");
    let out = dir.path().join("out.safetensors");
    let io_path = fixture("udit_tiny.io.safetensors");
    let (ok, _, err) = udit(&[
        "forward",
        "--ckpt",
        merged.to_str().unwrap(),
        "--inputs",
        io_path.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert_close(
        "out_eval",
        &read_weights(&out, None).unwrap().tensors["out"],
        &io("udit_tiny.io.safetensors")["out_eval"],
        1e-4,
    );

    let (ok, _, err) = udit(&["convert", "--ckpt", pt.to_str().unwrap(), "--out", merged.to_str().unwrap(), "--merge"]);
    assert!(!ok && err.contains("--merge needs the model"), "{err}");
}

#[test]
fn cli_errors_are_one_line_without_panics() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pt");
    std::fs::write(&junk, b"\x80\x02 definitely not a checkpoint").unwrap();
    let io_path = fixture("udit_tiny.io.safetensors");
    let out = dir.path().join("out.safetensors");
    let cases: Vec<Vec<String>> = vec![
        vec!["info".into(), "--model".into(), "U-DiT-XXL".into()],
        vec!["info".into(), "--model".into(), "U-DiT-S".into(), "--latent-size".into(), "30".into()],
        vec![
            "forward".into(),
            "--model".into(),
            "U-DiT-S".into(),
            "--ckpt".into(),
            junk.display().to_string(),
            "--inputs".into(),
            io_path.display().to_string(),
            "--out".into(),
            out.display().to_string(),
        ],
        vec![
            "forward".into(),
            "--config".into(),
            fixture("udit_tiny.json").display().to_string(),
            "--ckpt".into(),
            fixture("udit_tiny_plain.weights.safetensors").display().to_string(),
            "--inputs".into(),
            io_path.display().to_string(),
            "--out".into(),
            out.display().to_string(),
        ],
        vec!["bench".into(), "--model".into(), "U-DiT-S".into(), "--batch".into(), "0".into()],
    ];
    for args in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, _, err) = udit(&args);
        assert!(!ok, "{args:?} should fail");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error: ") && !err.contains("panicked"), "{args:?}: {err}");
    }
    assert!(!out.exists(), "no output is written when the forward fails");
}

#[test]
fn cli_info_json_has_the_documented_keys() {
    let (ok, out, err) = udit(&["info", "--model", "U-DiT-B", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["params_merged"], 204425064);
    assert!(v["params"].as_u64().unwrap() > 204425064);
    assert_eq!(format!("{:.2}", v["macs"].as_f64().unwrap() / 1e9), "22.22");
}

#[test]
fn samples_carry_the_settings_that_make_them_again() {
    // `udit sample` writes settings.json beside PNGs (NAME.npz.json beside an .npz): the
    // weights and their digest, model, process, sampler, guidance, seed and the command line,
    // which run again gives the same images.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pngs");
    let args = ["sample", "--num-samples", "3", "--sampler", "heun2", "--steps", "4", "--seed", "5", "--out"];
    let (ok, _, err) = udit(&[&args[..], &[out.to_str().unwrap()]].concat());
    assert!(ok, "{err}");
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("settings.json")).unwrap()).unwrap();
    let weights = std::fs::read(record["weights"].as_str().unwrap()).unwrap();
    let digest: String = {
        use sha2::Digest;
        sha2::Sha256::digest(&weights).iter().map(|b| format!("{b:02x}")).collect()
    };
    assert_eq!(record["weights_sha256"], digest.as_str());
    for (key, value) in [("sampler", "heun2"), ("classes", "Random"), ("codec", "unshuffle2")] {
        assert_eq!(record[key], value, "{record}");
    }
    assert_eq!((record["steps"].as_u64(), record["seed"].as_u64()), (Some(4), Some(5)));
    assert_eq!((record["cfg_scale"].as_f64(), record["num_samples"].as_u64()), (Some(1.5), Some(3)));
    assert_eq!(record["process"]["process"], "interpolant");
    assert_eq!(record["model"]["arch"], "u-dit");
    // The recorded command, pointed at another folder, makes the same PNGs.
    let mut command: Vec<String> =
        record["command"].as_array().unwrap().iter().skip(1).map(|v| v.as_str().unwrap().to_string()).collect();
    let again = dir.path().join("again");
    *command.last_mut().unwrap() = again.display().to_string();
    let (ok, _, err) = udit(&command.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{err}");
    for i in 0..3 {
        let png = |d: &Path| std::fs::read(d.join(format!("{i:06}.png"))).unwrap();
        assert!(png(&out) == png(&again), "sample {i}");
    }
    let npz = dir.path().join("s.npz");
    let (ok, _, err) = udit(&[&args[..9], &["--npz", npz.to_str().unwrap()]].concat());
    assert!(ok && err.contains("settings: "), "{err}");
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("s.npz.json")).unwrap()).unwrap();
    assert_eq!(record["num_samples"], 3);
}

#[test]
fn convert_writes_pytorch_state_dicts_the_reference_loads() {
    // `udit convert --out X.pt` writes torch.save's layout: read back, every tensor has the
    // same bits and shape; every storage is stored uncompressed at a 64-byte boundary; the
    // pickle names only globals on torch.load(weights_only=True)'s allow list. (Checked by
    // hand with PyTorch 2.15 on 2026-12-05: torch.load(weights_only=True) of both files, then
    // load_state_dict(strict=True) into the reference SiT/DiT and U_DiT modules: all keys
    // matched, values equal.)
    let dir = tempfile::tempdir().unwrap();
    for name in ["dit_tiny", "udit_tiny"] {
        let source = fixture(&format!("{name}.weights.safetensors"));
        let pt = dir.path().join(format!("{name}.pt"));
        let (ok, _, err) = udit(&["convert", "--ckpt", source.to_str().unwrap(), "--out", pt.to_str().unwrap()]);
        assert!(ok, "{err}");
        let (a, b) = (read_weights(&source, None).unwrap().tensors, read_weights(&pt, None).unwrap().tensors);
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "{name}");
        for (k, t) in &a {
            assert_eq!(t.shape(), b[k].shape(), "{name} {k}");
            assert_eq!(t.as_slice::<f32>().unwrap(), b[k].as_slice::<f32>().unwrap(), "{name} {k}");
        }
        let mut zip = zip::ZipArchive::new(std::fs::File::open(&pt).unwrap()).unwrap();
        let mut pickle = Vec::new();
        for i in 0..zip.len() {
            let mut file = zip.by_index(i).unwrap();
            assert_eq!(file.compression(), zip::CompressionMethod::Stored);
            if file.name().starts_with("archive/data/") {
                assert_eq!(file.data_start() % 64, 0, "{}", file.name());
            }
            if file.name() == "archive/data.pkl" {
                std::io::Read::read_to_end(&mut file, &mut pickle).unwrap();
            }
        }
        // The globals it names (GLOBAL is `c` then "module\nname\n"): the three allowed ones.
        let text = String::from_utf8_lossy(&pickle);
        let named = ["ccollections\nOrderedDict\n", "ctorch._utils\n_rebuild_tensor_v2\n", "ctorch\nFloatStorage\n"];
        assert!(named.iter().all(|g| text.contains(g)), "{name}");
        assert!(!text.contains("builtins") && !text.contains("numpy") && !text.contains("_codecs"), "{name}");
    }
}
