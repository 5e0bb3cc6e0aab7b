//! `udit sweep` end to end on a tiny model (4x16x16 through `unshuffle2`: the offline
//! meter's 32x32 grayscale images), and its refusals of bad input before any work.

mod common;

use std::path::Path;

use burn::prelude::*;
use common::*;
use udit::checkpoint::{model_metadata, state_dict, write_safetensors};
use udit::classes::ClassNames;
use udit::io::npz::read_npz;
use udit::model::{Denoiser, FfnForm, ModelConfig};
use udit::sweep::Row;

/// A freshly initialised 10-class model of 4x16x16 latents that decode to 1x32x32 pixels.
fn tiny_model(dir: &Path) -> String {
    let cfg = ModelConfig::from_json(
        r#"{"arch":"u-dit","input_size":16,"in_channels":4,"hidden_size":16,"num_heads":2,
            "depth":[1,1,1,1,1],"downsampler":"dwconv3","num_classes":10,"class_dropout_prob":0.1}"#,
    )
    .unwrap();
    let model = Denoiser::new(&cfg, FfnForm::Merged, &Device::flex());
    let path = dir.join("tiny.safetensors");
    let process = udit::process::ProcessSpec::Diffusion;
    let meta = model_metadata(&cfg, &process, Some("unshuffle2"), &ClassNames::default()).unwrap();
    write_safetensors(&path, &state_dict(&model), meta).unwrap();
    path.display().to_string()
}

fn sweep(ckpt: &str, out: &Path, samples: &str, steps: &str) -> (bool, String) {
    let out = out.display().to_string();
    let args = [
        "sweep",
        "--ckpt",
        ckpt,
        "--samplers",
        "ddim,unipc:logsnr",
        "--steps",
        steps,
        "--cfg-scale",
        "2",
        "--guidance-interval",
        "none",
        "--num-samples",
        samples,
        "--batch",
        "4",
        "--out",
        &out,
    ];
    let (ok, _, err) = udit(&args);
    (ok, err)
}

fn rows(out: &Path) -> Vec<Row> {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("sweep.json")).unwrap()).unwrap();
    serde_json::from_value(json["rows"].clone()).unwrap()
}

#[test]
fn a_tiny_sweep_writes_its_table_and_plot_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = tiny_model(dir.path());
    let out = dir.path().join("sweep");
    let (ok, err) = sweep(&ckpt, &out, "6", "6");
    assert!(ok, "{err}");
    assert!(err.contains("[1/2] ddim time-uniform, guidance 2, 6 steps: 6 calls, NFE 12 per image"), "{err}");
    assert!(err.contains("[2/2] unipc logsnr, guidance 2, 6 steps"), "{err}");

    let first = rows(&out);
    assert_eq!(first.len(), 2);
    for (row, (sampler, schedule)) in first.iter().zip([("ddim", "time-uniform"), ("unipc", "logsnr")]) {
        assert_eq!((row.sampler.as_str(), row.schedule.as_str(), row.steps), (sampler, schedule, 6));
        // Guidance at every step: every call runs the doubled batch.
        assert_eq!((row.calls, row.guided_calls, row.nfe), (6, 6, 12));
        assert_eq!(row.interval.as_deref(), Some("none"));
        assert!(row.fid.is_finite() && row.fid > 0.0, "{row:?}");
        assert!(row.class_accuracy.is_some_and(|a| (0.0..=1.0).contains(&a)) && row.seconds_per_image.is_some());
        let samples = read_npz(&out.join(&row.dir).join("samples.npz")).unwrap();
        assert_eq!((samples.labels, samples.side, samples.channels), (vec![0, 1, 2, 3, 4, 5], 32, 1));
    }
    let table = std::fs::read_to_string(out.join("sweep.md")).unwrap();
    assert!(table.contains("| sampler | schedule | steps | NFE | guidance | interval | FID | accuracy | time (s) |"));
    assert!(table.contains("| ddim | time-uniform | 6 | 12 | 2 | every step |"), "{table}");
    let plot = image::open(out.join("fid-vs-nfe.png")).unwrap();
    assert_eq!((plot.width(), plot.height()), (1000, 620));

    // A rerun redoes nothing; a combination whose score is missing is scored from its samples.
    let result = out.join(&first[1].dir).join("result.json");
    let kept = std::fs::metadata(out.join(&first[0].dir).join("result.json")).unwrap().modified().unwrap();
    std::fs::remove_file(&result).unwrap();
    let (ok, err) = sweep(&ckpt, &out, "6", "6");
    assert!(ok, "{err}");
    assert!(err.contains("[1/2] ddim time-uniform, guidance 2, 6 steps: done before, FID"), "{err}");
    assert!(err.contains("[2/2] unipc logsnr, guidance 2, 6 steps: scoring") && !err.contains("sampling:"), "{err}");
    assert_eq!(std::fs::metadata(out.join(&first[0].dir).join("result.json")).unwrap().modified().unwrap(), kept);
    let second = rows(&out);
    assert_eq!(second[0], first[0]);
    assert_eq!((second[1].fid, second[1].seconds_per_image), (first[1].fid, None), "same samples, no new timing");

    // Other step counts add to the folder's table, which lists every finished combination.
    let (ok, err) = sweep(&ckpt, &out, "6", "4");
    assert!(ok, "{err}");
    let all = rows(&out);
    let order: Vec<(&str, usize)> = all.iter().map(|r| (r.sampler.as_str(), r.steps)).collect();
    assert_eq!(order, [("ddim", 4), ("ddim", 6), ("unipc", 4), ("unipc", 6)]);
    assert_eq!(all[1], first[0]);

    // Other settings in the same folder are refused.
    let (ok, err) = sweep(&ckpt, &out, "8", "6");
    assert!(!ok && err.trim().lines().count() == 1 && err.contains("holds a sweep with other settings"), "{err}");
}

#[test]
fn bad_sweeps_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("s");
    let o = out.display().to_string();
    let tiny = tiny_model(dir.path());
    for (args, expected) in [
        (vec!["--samplers", "ddim,euler"], "unknown sampler \"euler\""),
        (vec!["--samplers", ""], "the list of --samplers is empty"),
        (vec!["--samplers", "ddim,"], "unknown sampler \"\""),
        (vec!["--steps", "10,0"], "at least 1"),
        (vec!["--steps", "ten"], "\"ten\" is not a step count"),
        (vec!["--cfg-scale", "1,0.5"], "--cfg-scale must be at least 1"),
        (vec!["--samplers", "ancestral:karras"], "applies to ddim"),
        (vec!["--samplers", "unipc:cosine"], "unknown schedule"),
        (vec!["--guidance-interval", "3,1"], "0 <= LO <= HI"),
        (vec!["--steps", "1000", "--samplers", "dpm++"], "more than the 999"),
        // Pixel space: 16x16 images of 4 channels.
        (vec!["--ckpt", &tiny, "--codec", "none"], "the offline meter scores 10-class 32x32 grayscale"),
        // The bundled model is an interpolant.
        (vec!["--ckpt", udit::BUNDLED_MODEL, "--samplers", "ddim"], "unknown sampler \"ddim\" for an interpolant"),
    ] {
        let mut all = vec!["sweep", "--out", &o, "--num-samples", "4"];
        // The diffusion samplers' refusals on the Fashion-MNIST diffusion model.
        if !args.contains(&"--ckpt") {
            all.extend(["--ckpt", "assets/fashion-mnist-udit-diffusion.safetensors"]);
        }
        all.extend(args.iter());
        let (ok, _, err) = udit(&all);
        assert!(!ok && err.trim().lines().count() == 1 && err.contains(expected), "{args:?}: {err}");
        assert!(!out.exists(), "{args:?}: nothing may be written");
    }
}

#[test]
fn a_sit_model_sweeps_the_interpolant_samplers_with_their_calls() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ModelConfig::from_json(
        r#"{"arch":"sit","input_size":16,"patch_size":2,"hidden_size":16,"depth":1,"num_heads":2,"num_classes":10}"#,
    )
    .unwrap();
    let model = Denoiser::new(&cfg, FfnForm::Merged, &Device::flex());
    let ckpt = dir.path().join("sit.safetensors");
    let process = udit::process::ProcessSpec::default_for(&cfg);
    let meta = model_metadata(&cfg, &process, Some("unshuffle2"), &ClassNames::default()).unwrap();
    write_safetensors(&ckpt, &state_dict(&model), meta).unwrap();
    let out = dir.path().join("sweep");
    let run = |samplers: &str| {
        let (c, o) = (ckpt.to_str().unwrap(), out.to_str().unwrap());
        udit(&[
            "sweep",
            "--ckpt",
            c,
            "--samplers",
            samplers,
            "--steps",
            "3",
            "--num-samples",
            "4",
            "--batch",
            "4",
            "--out",
            o,
        ])
    };
    for (samplers, says) in
        [("ddim", "unknown sampler \"ddim\" for an interpolant"), ("dopri5", "calls are known before")]
    {
        let (ok, _, err) = run(samplers);
        assert!(!ok && err.contains(says), "{samplers}: {err}");
        assert!(!out.exists(), "{samplers}: nothing written");
    }
    let (ok, _, err) = run("sde,heun2");
    assert!(ok, "{err}");
    let found: Vec<(String, String, usize, usize)> =
        rows(&out).into_iter().map(|r| (r.sampler, r.schedule, r.calls, r.nfe)).collect();
    // Guidance 1.5 at every call: SDE 2 steps + the last step; Heun 2 calls on each of 2 steps.
    assert_eq!(found, [("sde".into(), "linspace".into(), 3, 6), ("heun2".into(), "linspace".into(), 4, 8)]);
}
