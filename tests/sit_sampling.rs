//! Sampling SiT models end to end: the interpolant's samplers through the sampling pipeline
//! (guidance, per-sample noise streams, the codec) and through `udit sample`.

mod common;

use burn::prelude::*;
use common::*;
use udit::codec::Codec;
use udit::guidance::{Evaluations, Guidance, GuidanceInterval};

use udit::process::{Process, ProcessSpec};
use udit::sample::{Classes, Generator, Method, SamplerOptions, Settings};

fn setup() -> Setup {
    Setup::load("sit_tiny.json", "sit_tiny.state-dict.pt", Codec::None)
}

fn generator<'a>(s: &'a Setup, sampler: &str, steps: usize, cfg_scale: f64) -> Generator<'a> {
    let process = ProcessSpec::default_for(&s.config).process().unwrap();
    let method = Method::named(&process, Some(sampler), Some(steps), &SamplerOptions::default()).unwrap();
    Generator {
        model: &s.model,
        config: &s.config,
        codec: &s.codec,
        process,
        settings: Settings {
            method,
            guidance: Guidance::everywhere(cfg_scale),
            seed: 5,
            classes: Classes::Listed(vec![1, 4, 7]),
        },
        device: Device::flex(),
    }
}

fn latents(g: &Generator, first: usize, count: usize) -> Vec<f32> {
    g.generate_latents(first, count, &mut |_| Ok(())).unwrap().0.into_data().try_into_vec::<f32>().unwrap()
}

#[test]
fn sit_models_sample_with_the_interpolant_by_default() {
    let s = setup();
    assert!(matches!(ProcessSpec::default_for(&s.config).process().unwrap(), Process::Interpolant(_)));
    let process = ProcessSpec::default_for(&s.config).process().unwrap();
    let default = Method::named(&process, None, None, &SamplerOptions::default()).unwrap();
    assert_eq!((default.name(), default.steps()), ("sde", 250), "the SiT paper's SDE protocol");
    // Diffusion samplers are refused for an interpolant, and the other way round.
    let err = Method::named(&process, Some("ancestral"), None, &SamplerOptions::default()).unwrap_err();
    assert!(format!("{err:#}").contains("unknown sampler \"ancestral\" for an interpolant"), "{err:#}");
    let diffusion = ProcessSpec::Diffusion.process().unwrap();
    assert!(Method::named(&diffusion, Some("sde"), None, &SamplerOptions::default()).is_err());
}

#[test]
fn every_interpolant_sampler_is_the_same_in_any_batch_and_counts_its_calls() {
    let s = setup();
    for (sampler, steps) in [("sde", 6), ("sde-heun", 4), ("euler", 6), ("heun2", 4), ("rk4", 3), ("dopri5", 2)] {
        let g = generator(&s, sampler, steps, 1.5);
        g.validate().unwrap();
        let whole = latents(&g, 0, 4);
        let parts = [latents(&g, 0, 1), latents(&g, 1, 3)].concat();
        // Bit for bit; dopri5 steps the whole batch together (one error norm, as torchdiffeq):
        // within its tolerance.
        let diff = whole.iter().zip(&parts).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        let tolerance = if sampler == "dopri5" { 1e-2 } else { 0.0 };
        assert!(diff <= tolerance, "{sampler}: sample i depends on i and the seed only (max difference {diff})");
        assert!(whole.iter().all(|v| v.is_finite()), "{sampler}");
        let mut calls = 0;
        g.generate_latents(0, 2, &mut |_| {
            calls += 1;
            Ok(())
        })
        .unwrap();
        match g.evaluations().unwrap() {
            Some(e) => assert_eq!(e, Evaluations { calls, guided: calls }, "{sampler}: guided at every call"),
            None => assert_eq!(sampler, "dopri5", "only dopri5 decides its calls as it runs"),
        }
    }
}

#[test]
fn guidance_mixes_the_velocity_and_its_interval_is_in_sigma_over_alpha() {
    let s = setup();
    let mut g = generator(&s, "euler", 5, 2.0);
    let guided = latents(&g, 0, 2);
    g.settings.guidance = Guidance::everywhere(1.0);
    let unguided = latents(&g, 0, 2);
    assert_ne!(guided, unguided);
    // An interval over every noise level is plain guidance; an empty one is none.
    g.settings.guidance =
        Guidance { scale: 2.0, interval: GuidanceInterval::Between(0.0, f64::INFINITY), channels: None };
    assert_eq!(latents(&g, 0, 2), guided);
    g.settings.guidance.interval = GuidanceInterval::Between(1.0, 1.0);
    assert_eq!(latents(&g, 0, 2), unguided);
    // Euler over 5 points calls at t = 0, 0.25, 0.5, 0.75: sigma/alpha = inf, 3, 1, 1/3 on the
    // Linear path, so (0.5, 2] guides the call at t = 0.5 alone.
    g.settings.guidance.interval = GuidanceInterval::Between(0.5, 2.0);
    assert_eq!(g.evaluations().unwrap(), Some(Evaluations { calls: 4, guided: 1 }));
}

#[test]
fn udit_sample_draws_sit_pngs_and_refuses_what_does_not_apply() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("samples");
    let config = fixture("sit_tiny.json");
    let ckpt = fixture("sit_tiny.state-dict.pt");
    let vae = fixture("vae_tiny");
    let base = [
        "sample",
        "--config",
        config.to_str().unwrap(),
        "--ckpt",
        ckpt.to_str().unwrap(),
        "--codec",
        vae.to_str().unwrap(),
        "--num-samples",
        "3",
        "--out",
        out.to_str().unwrap(),
    ];
    let run = |extra: &[&str]| udit(&[&base[..], extra].concat());
    let (ok, _, err) = run(&["--steps", "8", "--class", "2"]);
    assert!(ok, "{err}");
    for name in ["000000.png", "000001.png", "000002.png", "grid.png"] {
        assert!(out.join(name).exists(), "{name}");
    }
    let (ok, _, err) = run(&["--sampler", "dopri5", "--rtol", "1e-2", "--class", "2"]);
    assert!(ok, "{err}");
    for (extra, says) in [
        (&["--sampler", "ancestral"][..], "unknown sampler \"ancestral\" for an interpolant"),
        (&["--eta", "0.5"][..], "--schedule and --eta apply to Gaussian-diffusion samplers"),
        (&["--sampler", "euler", "--last-step", "Tweedie"][..], "apply to the SDE samplers"),
        (&["--atol", "1e-5"][..], "--atol and --rtol apply to dopri5"),
        (&["--steps", "1"][..], "at least 2 time points"),
        (&["--last-step", "sideways"][..], "unknown last step"),
        (&["--path-type", "Curved"][..], "unknown path"),
    ] {
        let (ok, _, err) = run(extra);
        assert!(!ok && err.contains(says), "{extra:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{extra:?}: one line: {err}");
    }
    // Weights that record their process refuse another.
    let recorded = dir.path().join("sit.safetensors");
    let cfg = udit::model::ModelConfig::from_file(&config).unwrap();
    let spec = ProcessSpec::default_for(&cfg);
    let meta = udit::checkpoint::model_metadata(&cfg, &spec, Some("none"), &Default::default()).unwrap();
    let weights = udit::checkpoint::read_weights(&ckpt, None).unwrap();
    udit::checkpoint::write_safetensors(&recorded, &weights.tensors, meta).unwrap();
    let (ok, _, err) =
        udit(&["sample", "--ckpt", recorded.to_str().unwrap(), "--path-type", "GVP", "--out", out.to_str().unwrap()]);
    assert!(!ok && err.contains("the weights were trained as interpolant (Linear path"), "{err}");
    // A diffusion model refuses the interpolant's knobs.
    let diffusion = ["sample", "--ckpt", "assets/fashion-mnist-udit-diffusion.safetensors"];
    let (ok, _, err) = udit(
        &[&diffusion[..], &["--diffusion-form", "sigma", "--num-samples", "1", "--out", out.to_str().unwrap()]]
            .concat(),
    );
    assert!(!ok && err.contains("apply to models of an interpolant"), "{err}");
}

#[test]
fn udit_forward_takes_float_times_for_sit() {
    let (ok, out, err) = udit(&[
        "forward",
        "--config",
        fixture("sit_tiny.json").to_str().unwrap(),
        "--ckpt",
        fixture("sit_tiny.state-dict.pt").to_str().unwrap(),
        "--inputs",
        fixture("sit_tiny.io.safetensors").to_str().unwrap(),
        "--expect",
        "out_eval",
    ]);
    assert!(ok, "{err}");
    assert!(format!("{out}{err}").contains("out vs out_eval"), "{out}{err}");
}

/// Writes `n` 4x16x16 latents with labels 0..10.
fn sit_latents(dir: &std::path::Path, n: usize) {
    let mut w = udit::data::latents::LatentWriter::create(dir, n, [4, 16, 16]).unwrap();
    let values: Vec<f32> = (0..n * 1024).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.8).collect();
    let labels: Vec<i64> = (0..n as i64).map(|i| (3 * i) % 10).collect();
    w.push(&values, &labels).unwrap();
    w.finish().unwrap();
}

#[test]
fn udit_likelihood_scores_data_in_bits_per_dim_whatever_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    sit_latents(dir.path(), 3);
    let config = fixture("sit_tiny.json");
    let ckpt = fixture("sit_tiny.state-dict.pt");
    let data = dir.path().to_str().unwrap();
    let run = |extra: &[&str]| {
        let base = [
            "likelihood",
            "--config",
            config.to_str().unwrap(),
            "--ckpt",
            ckpt.to_str().unwrap(),
            "--dataset",
            "latents",
            "--data-dir",
            data,
            "--json",
        ];
        udit(&[&base[..], extra].concat())
    };
    let bpd = |extra: &[&str]| {
        let (ok, out, err) = run(extra);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["samples"], 3);
        v["bits_per_dim"].as_f64().unwrap()
    };
    let heun = ["--num-samples", "3", "--sampler", "heun2", "--steps", "4"];
    let (one, three) = (bpd(&[&heun[..], &["--batch", "1"]].concat()), bpd(&[&heun[..], &["--batch", "3"]].concat()));
    assert!(one.is_finite() && one > 0.0, "{one}");
    assert!((one - three).abs() < 1e-4 * one.abs(), "the probes follow the sample, not the batch: {one} vs {three}");
    assert_ne!(bpd(&[&heun[..], &["--seed", "1"]].concat()), three, "other probes, another estimate");
    for (extra, says) in [
        (&["--sampler", "sde"][..], "unknown ODE method"),
        (&["--steps", "1"][..], "--steps must be at least 2"),
        (&["--num-samples", "4"][..], "fewer than the 4 asked for"),
    ] {
        let (ok, _, err) = run(extra);
        assert!(!ok && err.contains(says), "{extra:?}: {err}");
    }
    // A diffusion model has no likelihood ODE.
    let (ok, _, err) = udit(&[
        "likelihood",
        "--ckpt",
        "assets/fashion-mnist-udit-diffusion.safetensors",
        "--dataset",
        "latents",
        "--data-dir",
        data,
    ]);
    assert!(!ok && err.contains("needs an interpolant"), "{err}");
}
