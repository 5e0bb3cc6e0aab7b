//! The denoisers against the golden outputs of the PyTorch reference.

mod common;

use burn::prelude::*;
use common::*;
use udit::checkpoint::{Weights, load_denoiser, read_weights};
use udit::model::{Denoiser, ModelConfig, Trace};

const TOL: f32 = 1e-4;

fn config(name: &str) -> ModelConfig {
    ModelConfig::from_file(&fixture(&format!("{name}.json"))).unwrap()
}

fn model(name: &str, weights: &Weights) -> Denoiser {
    load_denoiser(&config(name), weights, &Device::flex()).unwrap()
}

/// Training-form output, merged (eval) output with every recorded activation, and the
/// guided output, all from one set of weights.
fn check_udit(name: &str, weights: Weights) {
    let dev = Device::flex();
    let io = io(&format!("{name}.io.safetensors"));
    let (x, t, y) = (float::<4>(&io["x"], &dev), float::<1>(&io["t"], &dev), ints(&io["y"], &dev));
    let m = model(name, &weights);
    let out_train = m.forward(x.clone(), t.clone(), y.clone());
    assert_close("out_train", &out_train.into_data(), &io["out_train"], TOL);

    let merged = m.merged();
    let mut trace = Trace::on();
    let out_eval = merged.forward_traced(x, t, y, &mut trace);
    assert_close("out_eval", &out_eval.into_data(), &io["out_eval"], TOL);
    let acts = trace.acts.unwrap();
    let mut checked = 0;
    for (key, reference) in io.iter().filter(|(k, _)| k.starts_with("act.")) {
        // `x_embedder.proj`, `down1_2.body`, ... are the same tensors as their parent module
        // or its pre-shuffle conv; the module outputs are the ones recorded.
        let name = key.trim_start_matches("act.");
        let ours = acts.get(name).or_else(|| {
            let parent = name.rsplit_once('.').map(|(p, _)| p)?;
            let same_as_parent = [
                "x_embedder.proj",
                "y_embedder_1.embedding_table",
                "y_embedder_2.embedding_table",
                "y_embedder_3.embedding_table",
                "final_layer.out_proj",
            ];
            if same_as_parent.contains(&name) { acts.get(parent) } else { None }
        });
        match ours {
            Some(ours) => {
                assert_close(key, ours, reference, TOL);
                checked += 1;
            }
            None if name.ends_with(".body") => {
                // `down1_2.body` is the whole Sequential (conv + shuffle): equal to `down1_2`.
                assert_close(key, &acts[name.trim_end_matches(".body")], reference, TOL);
                checked += 1;
            }
            None => panic!("no activation recorded for {key}"),
        }
    }
    assert!(checked >= 20, "only {checked} activations compared");

    let (cx, ct, cy) = (float::<4>(&io["cfg_x"], &dev), float::<1>(&io["cfg_t"], &dev), ints(&io["cfg_y"], &dev));
    let scale = io["cfg_scale"].as_slice::<f32>().unwrap()[0] as f64;
    let guided = config(name).guided_channels();
    assert_eq!(guided, 3, "4-channel fixtures use the reference 3-channel guidance");
    let out_cfg = merged.forward_with_cfg(cx, ct, cy, scale, guided);
    assert_close("out_cfg", &out_cfg.into_data(), &io["out_cfg"], TOL);
}

#[test]
fn udit_tiny_matches_reference_from_safetensors() {
    check_udit("udit_tiny", read_weights(&fixture("udit_tiny.weights.safetensors"), None).unwrap());
}

#[test]
fn udit_tiny_matches_reference_from_training_checkpoint_ema() {
    // `ema` is preferred over `model` by default; `opt` and the pickled `args` are ignored.
    check_udit("udit_tiny", read_weights(&fixture("udit_tiny.train-checkpoint.pt"), None).unwrap());
}

#[test]
fn training_checkpoint_model_entry_is_selectable_and_differs() {
    let ema = read_weights(&fixture("udit_tiny.train-checkpoint.pt"), Some("ema")).unwrap();
    let raw = read_weights(&fixture("udit_tiny.train-checkpoint.pt"), Some("model")).unwrap();
    assert_eq!(ema.tensors.len(), raw.tensors.len());
    let key = "x_embedder.proj.weight";
    assert_ne!(ema.tensors[key].as_slice::<f32>().unwrap(), raw.tensors[key].as_slice::<f32>().unwrap());
    let err = read_weights(&fixture("udit_tiny.train-checkpoint.pt"), Some("nope")).err().unwrap();
    assert!(format!("{err:#}").contains("no entry \"nope\""), "{err:#}");
}

#[test]
fn udit_tiny_plain_matches_reference_from_safetensors() {
    check_udit("udit_tiny_plain", read_weights(&fixture("udit_tiny_plain.weights.safetensors"), None).unwrap());
}

#[test]
fn udit_tiny_plain_matches_reference_from_bare_state_dict_pt() {
    check_udit("udit_tiny_plain", read_weights(&fixture("udit_tiny_plain.state-dict.pt"), None).unwrap());
}

#[test]
fn dit_tiny_matches_reference() {
    let dev = Device::flex();
    let io = io("dit_tiny.io.safetensors");
    let m = model("dit_tiny", &read_weights(&fixture("dit_tiny.weights.safetensors"), None).unwrap());
    let out = m.forward(float(&io["x"], &dev), float(&io["t"], &dev), ints(&io["y"], &dev));
    assert_close("dit out_eval", &out.into_data(), &io["out_eval"], TOL);
}

/// SiT: DiT's network computing 8 channels and returning the first 4, called with t in [0, 1];
/// the output, the recorded activations and the guided output. SiT-LLaMA (`sitllama_tiny`)
/// the same way.
fn check_sit(weights: Weights) {
    check_sit_family("sit_tiny", weights);
}

fn check_sit_family(name: &str, weights: Weights) {
    let dev = Device::flex();
    let io = io(&format!("{name}.io.safetensors"));
    let cfg = config(name);
    assert!(matches!(cfg, ModelConfig::SiT(_) | ModelConfig::SiTLLaMA(_)), "{name}.json says arch sit or sit-llama");
    let m = model(name, &weights);
    let mut trace = Trace::on();
    let out = m.forward_traced(float(&io["x"], &dev), float(&io["t"], &dev), ints(&io["y"], &dev), &mut trace);
    assert_eq!(out.dims(), [4, 4, 16, 16], "learn_sigma: the first 4 of 8 channels");
    assert_close("sit out_eval", &out.into_data(), &io["out_eval"], TOL);
    let acts = trace.acts.unwrap();
    for key in ["t_embedder", "blocks.0"] {
        assert_close(key, &acts[key], &io[&format!("act.{key}")], TOL);
    }
    let (cx, ct, cy) = (float::<4>(&io["cfg_x"], &dev), float::<1>(&io["cfg_t"], &dev), ints(&io["cfg_y"], &dev));
    let scale = io["cfg_scale"].as_slice::<f32>().unwrap()[0] as f64;
    let out_cfg = m.forward_with_cfg(cx, ct, cy, scale, cfg.guided_channels());
    assert_close("sit out_cfg", &out_cfg.into_data(), &io["out_cfg"], TOL);
}

#[test]
fn sit_tiny_matches_reference_from_safetensors() {
    check_sit(read_weights(&fixture("sit_tiny.weights.safetensors"), None).unwrap());
}

#[test]
fn sit_tiny_matches_reference_from_the_published_state_dict_layout() {
    // A bare state dict with an 8-channel final layer, as `SiT-XL-2-256x256.pt`.
    let weights = read_weights(&fixture("sit_tiny.state-dict.pt"), None).unwrap();
    assert_eq!(weights.tensors["final_layer.linear.weight"].shape().to_vec(), [2 * 2 * 8, 64]);
    check_sit(weights);
}

#[test]
fn sitllama_tiny_matches_reference_from_safetensors() {
    check_sit_family("sitllama_tiny", read_weights(&fixture("sitllama_tiny.weights.safetensors"), None).unwrap());
}

#[test]
fn sitllama_tiny_matches_reference_from_the_published_training_checkpoint_layout() {
    // model / ema / opt / args, as `mtgv/SiTLLaMA-*-2/0400000.pt`: the ema entry samples.
    let ckpt = fixture("sitllama_tiny.train-checkpoint.pt");
    check_sit_family("sitllama_tiny", read_weights(&ckpt, None).unwrap());
    let raw = read_weights(&ckpt, Some("model")).unwrap();
    let ema = read_weights(&ckpt, Some("ema")).unwrap();
    assert_ne!(raw.tensors["blocks.0.mlp.c_fc1.weight"], ema.tensors["blocks.0.mlp.c_fc1.weight"]);
}

#[test]
fn sit_presets_are_dit_networks_with_sit_names() {
    for size in ["S", "B", "L", "XL"] {
        for patch in [2, 4, 8] {
            let sit = ModelConfig::preset(&format!("SiT-{size}/{patch}")).unwrap();
            let ModelConfig::SiT(c) = &sit else { panic!("SiT-{size}/{patch} is a SiT") };
            assert_eq!(ModelConfig::preset(&format!("DiT-{size}/{patch}")).unwrap(), ModelConfig::DiT(c.clone()));
        }
    }
    assert!(ModelConfig::preset("SiT-M/2").is_err());
    // SiT-LLaMA: patch 2 only, SiT's sizes, SwiGLU widths find_multiple(int(8D/3), 256).
    for (size, hidden) in [("S", 1024), ("B", 2048), ("L", 2816), ("XL", 3072)] {
        let ModelConfig::SiTLLaMA(c) = ModelConfig::preset(&format!("SiT-LLaMA-{size}/2")).unwrap() else {
            panic!("SiT-LLaMA-{size}/2 is a SiT-LLaMA")
        };
        assert_eq!(ModelConfig::DiT(c.clone()), ModelConfig::preset(&format!("DiT-{size}/2")).unwrap());
        assert_eq!(udit::model::dit::swiglu_hidden(c.hidden_size), hidden, "{size}");
    }
    assert!(ModelConfig::preset("SiT-LLaMA-B/4").is_err());
}

#[test]
fn dit_fresh_pos_embed_is_the_reference_sincos_table() {
    let io = io("dit_tiny.io.safetensors");
    let ModelConfig::DiT(cfg) = config("dit_tiny") else { panic!("dit_tiny is a DiT") };
    let ours = udit::model::dit::sincos_pos_embed_2d(cfg.hidden_size, cfg.grid());
    let ours = burn::tensor::TensorData::new(ours, [1, cfg.grid() * cfg.grid(), cfg.hidden_size]);
    assert_close("pos_embed", &ours, &io["weights.pos_embed"], 1e-6);
}

#[test]
fn fixture_parameter_counts_match_the_reference() {
    for name in ["udit_tiny", "udit_tiny_plain", "dit_tiny", "sit_tiny", "sitllama_tiny"] {
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixture(&format!("{name}.json"))).unwrap()).unwrap();
        let expected = meta["params"].as_u64().unwrap();
        let cost = udit::cost::Cost::of(&config(name));
        let fresh = Denoiser::new(&config(name), udit::model::FfnForm::Train, &Device::flex());
        let built: usize = udit::checkpoint::param_shapes(&fresh)
            .iter()
            .filter(|(k, _)| *k != "pos_embed")
            .map(|(_, s)| s)
            .map(|s| s.iter().product::<usize>())
            .sum();
        assert_eq!(cost.params, expected, "{name}: analytic training-form count");
        assert_eq!(built as u64, expected, "{name}: parameters of the built model");
    }
}

#[test]
fn burn_ops_path_matches_reference_too() {
    let _autodiff = common::autodiff_alone();
    // On an autodiff device the fused CPU kernels step aside and the generic burn ops run
    // (the training and GPU path); it must give the same numbers.
    let dev = Device::flex().autodiff();
    let io = io("udit_tiny.io.safetensors");
    let weights = read_weights(&fixture("udit_tiny.weights.safetensors"), None).unwrap();
    let m = load_denoiser(&config("udit_tiny"), &weights, &dev).unwrap();
    let (x, t, y) = (float::<4>(&io["x"], &dev), float::<1>(&io["t"], &dev), ints(&io["y"], &dev));
    assert!(!udit::kernels::cpu::applies(&x));
    let out_train = m.forward(x.clone(), t.clone(), y.clone());
    assert_close("out_train (burn ops)", &out_train.into_data(), &io["out_train"], TOL);
    let out_eval = m.merged().forward(x, t, y);
    assert_close("out_eval (burn ops)", &out_eval.into_data(), &io["out_eval"], TOL);

    let plain = read_weights(&fixture("udit_tiny_plain.weights.safetensors"), None).unwrap();
    let m = load_denoiser(&config("udit_tiny_plain"), &plain, &dev).unwrap();
    let io = common::io("udit_tiny_plain.io.safetensors");
    let out = m.forward(float(&io["x"], &dev), float(&io["t"], &dev), ints(&io["y"], &dev));
    assert_close("plain out_eval (burn ops)", &out.into_data(), &io["out_eval"], TOL);
}
