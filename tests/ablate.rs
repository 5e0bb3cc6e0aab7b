//! `udit ablate` end to end on two tiny models, one trained as Gaussian diffusion and one as
//! an interpolant, each scored with its own process's sampler (Fashion-MNIST through
//! `unshuffle2`, the offline meter): the results, their agreement with `udit sample` and
//! `udit eval` on the same model, the table of what is finished, reuse of finished runs,
//! exact resume of a lost one, runs side by side (`--jobs`, `--shard`), a wall-clock budget,
//! the plans refused before any training, and the plans shipped in configs/ablation/.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::{Value, json};
use udit::ablate::{Ablation, Plan, Spread};
use udit::cost::Cost;
use udit::model::ModelConfig;

/// Full attention (DiT-UNet-like) and downsampled cosine attention with RoPE, 4x16x16.
fn tiny(down: bool) -> Value {
    let mut m = json!({"arch": "u-dit", "input_size": 16, "in_channels": 4, "num_classes": 10, "hidden_size": 8,
        "num_heads": 1, "depth": [1, 1, 1, 1, 1], "mlp_ratio": 2, "down_factor": 1, "downsampler": "dwconv1",
        "attn_type": null, "posemb_type": null, "ffn_type": "basic", "rep": 0, "cfg_channels": 4});
    if down {
        for (k, v) in [("down_factor", json!(2)), ("downsampler", json!("dwconv3")), ("attn_type", json!("v2"))] {
            m[k] = v;
        }
        m["posemb_type"] = json!("rope2d");
    }
    m
}

/// Full attention with Gaussian diffusion (sampled with DDIM over 4 steps), the tiny U-DiT
/// as an interpolant (Heun over 3 time points: 4 calls as well).
fn plan() -> Value {
    json!({
        "note": "two tiny models",
        "entries": [
            {"name": "full attention", "model": tiny(false)},
            {"name": "U-DiT (tiny)", "system": "U-DiT", "model": tiny(true), "process": {"process": "interpolant"}}
        ],
        "recipe": {"dataset": "fashion-mnist", "codec": "unshuffle2", "steps": 3, "global_batch": 8, "lr": 1e-3,
                   "log_every": 1, "ckpt_every": 1, "keep_last": 2, "seeds": [0, 1]},
        "meter": {"num_samples": 20, "steps": 4, "interpolant": {"sampler": "heun2", "steps": 3}, "batch": 10}
    })
}

struct Scratch(tempfile::TempDir);

impl Scratch {
    fn p(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    /// Writes `plan` to `name` and runs `udit ablate` on it into `out`: (ok, stdout, stderr).
    fn ablate(&self, name: &str, plan: &Value, out: &str) -> (bool, String, String) {
        std::fs::write(self.p(name), plan.to_string()).unwrap();
        let (plan, out) = (self.p(name).display().to_string(), self.p(out).display().to_string());
        udit(&["ablate", "--plan", &plan, "--out", &out])
    }
}

fn json_of(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

type TensorBits = (String, Vec<u32>);

/// A weights file's metadata and every tensor's bits (the file's bytes are not comparable:
/// its header lists the metadata in hash order).
fn weights(path: &Path) -> (std::collections::HashMap<String, String>, Vec<TensorBits>) {
    let w = udit::checkpoint::read_weights(path, None).unwrap();
    let bits = |t: &burn::tensor::TensorData| t.as_slice::<f32>().unwrap().iter().map(|v| v.to_bits()).collect();
    (w.metadata, w.tensors.iter().map(|(k, t)| (k.clone(), bits(t))).collect())
}

fn modified(path: &Path) -> std::time::SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

#[test]
fn two_entries_train_score_tabulate_and_resume() {
    let s = Scratch(tempfile::tempdir().unwrap());
    let (ok, table, err) = s.ablate("plan.json", &plan(), "out");
    assert!(ok, "{err}");
    assert!(err.contains("[4/4] U-DiT (tiny), seed 1: training 3 steps") && err.contains("left in the plan"), "{err}");
    let out = s.p("out");
    let results = json_of(&out.join("results.json"));
    let entries = results["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    for (e, down) in entries.iter().zip([false, true]) {
        // Costs as `udit info` counts them; every run trained its steps and was scored.
        let cost = Cost::of(&ModelConfig::from_json(&tiny(down).to_string()).unwrap());
        assert_eq!(e["params"].as_u64(), Some(cost.params_merged));
        assert_eq!(e["gmacs"].as_f64(), Some(cost.macs as f64 / 1e9));
        let runs = e["runs"].as_array().unwrap();
        assert_eq!(runs.iter().map(|r| r["seed"].as_u64().unwrap()).collect::<Vec<_>>(), [0, 1]);
        for r in runs {
            assert_eq!(r["steps"], 3);
            assert!(r["train_seconds"].as_f64().unwrap() > 0.0);
        }
        // The summary is the mean and sample standard deviation of the runs' scores.
        for (k, scale) in [1.0, 1.5].into_iter().enumerate() {
            let summary = &e["summary"][k];
            assert_eq!(summary["cfg_scale"].as_f64(), Some(scale));
            let fids: Vec<f64> = runs.iter().map(|r| r["scores"][k]["fid"].as_f64().unwrap()).collect();
            let mean = (fids[0] + fids[1]) / 2.0;
            let sd = (fids[0] - fids[1]).abs() / 2f64.sqrt();
            assert!((summary["fid"]["mean"].as_f64().unwrap() - mean).abs() < 1e-9);
            assert!((summary["fid"]["sd"].as_f64().unwrap() - sd).abs() < 1e-9);
            assert!(fids.iter().all(|f| f.is_finite() && *f > 0.0));
            let acc = summary["class_accuracy"]["mean"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&acc));
        }
    }
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert_eq!(md.trim(), table.trim(), "stdout shows results.md");
    assert!(
        md.contains("| entry | process | sampler | params | GMACs | training time | steps | FID, guidance 1 |"),
        "{md}"
    );
    let rows: Vec<&str> =
        md.lines().filter(|l| l.starts_with("| full attention |") || l.starts_with("| U-DiT (tiny) |")).collect();
    assert!(rows.len() == 2 && rows.iter().all(|r| r.contains(" ± ") && r.contains("| 3 |")), "{md}");
    assert!(rows[0].contains("| diffusion | ddim 4 steps, 4 calls |"), "{md}");
    assert!(rows[1].contains("| interpolant | heun2 3 steps, 4 calls |"), "{md}");
    assert!(!md.contains("Not finished"), "{md}");
    assert_eq!(entries[1]["system"], "U-DiT");
    assert_eq!(entries[0]["system"], "full attention");
    let png = image::open(out.join("fid-vs-gmacs.png")).unwrap();
    assert_eq!((png.width(), png.height()), (900, 600));

    // A run is an ordinary `udit train` run of its entry's process, and its scores are `udit
    // sample --npz` with the interpolant's sampler then `udit eval --features` of its model.
    let run = udit::train::RunDir(out.join("u-dit-tiny/seed-1"));
    let recipe = json_of(&run.0.join("recipe.json"));
    assert_eq!((recipe["seed"].as_u64(), recipe["steps"].as_u64()), (Some(1), Some(3)));
    assert_eq!(recipe["process"]["process"], "interpolant");
    let (ok, info, err) = udit(&["info", "--ckpt", run.export().to_str().unwrap()]);
    assert!(ok && info.contains("interpolant"), "{info}{err}");
    assert_eq!(run.list().unwrap(), [run.checkpoint(2), run.checkpoint(3)]);
    let again = s.p("again.npz").display().to_string();
    let export = run.export().display().to_string();
    let (ok, _, err) = udit(&[
        "sample",
        "--ckpt",
        &export,
        "--sampler",
        "heun2",
        "--steps",
        "3",
        "--cfg-scale",
        "1.5",
        "--seed",
        "0",
        "--class",
        "0,1,2,3,4,5,6,7,8,9",
        "--num-samples",
        "20",
        "--batch",
        "10",
        "--npz",
        &again,
    ]);
    assert!(ok, "{err}");
    let ours = run.0.join("meter/cfg-1.5.npz");
    let (a, b) = (udit::io::npz::read_npz(&ours).unwrap(), udit::io::npz::read_npz(Path::new(&again)).unwrap());
    assert!(a.pixels == b.pixels && a.labels == b.labels);
    let (ok, eval, err) = udit(&["eval", &again, "--features", "assets/meter-classifier.safetensors", "--json"]);
    assert!(ok, "{err}");
    let eval: Value = serde_json::from_str(&eval).unwrap();
    let score = &entries[1]["runs"][1]["scores"][1];
    assert!((score["fid"].as_f64().unwrap() - eval["fid"].as_f64().unwrap()).abs() < 1e-9);
    assert_eq!(score["class_accuracy"], eval["class_accuracy"]);

    // The same command again reuses everything: no model, sample or score is made again.
    let dirs: Vec<PathBuf> = ["full-attention", "u-dit-tiny"]
        .iter()
        .flat_map(|e| ["seed-0", "seed-1"].map(|seed| out.join(e).join(seed)))
        .collect();
    let stamps = || -> Vec<_> {
        dirs.iter().map(|d| [modified(&d.join("model.safetensors")), modified(&d.join("meter.json"))]).collect()
    };
    let before = stamps();
    let (ok, _, err) = s.ablate("plan.json", &plan(), "out");
    assert!(ok, "{err}");
    assert_eq!(stamps(), before);
    assert_eq!(err.matches("trained and scored before").count(), 4, "{err}");
    assert_eq!(json_of(&out.join("results.json"))["entries"], results["entries"]);

    // Lose one run's model and its last checkpoint: the table of what is finished names it
    // as missing and keeps its entry's other seed; then only that run trains again, from
    // step 2, to the same weights (exact resume), and is sampled and scored again, to the
    // same scores.
    let model = weights(&run.export());
    std::fs::remove_file(run.export()).unwrap();
    std::fs::remove_file(run.checkpoint(3)).unwrap();
    std::fs::write(s.p("plan.json"), plan().to_string()).unwrap();
    let plan_path = s.p("plan.json");
    let args = ["ablate", "--plan", plan_path.to_str().unwrap(), "--out", out.to_str().unwrap(), "--table"];
    let (ok, partial, err) = udit(&args);
    assert!(ok && !err.contains("training"), "{err}");
    assert!(partial.contains("Not finished yet (1): U-DiT (tiny), seed 1."), "{partial}");
    let row = partial.lines().find(|l| l.starts_with("| U-DiT (tiny) |")).unwrap();
    let fid = entries[1]["runs"][0]["scores"][0]["fid"].as_f64().unwrap();
    assert!(row.contains(&format!("| {fid:.2} |")) && !row.contains(" ± "), "one seed left: {row}");
    let partial_json = json_of(&out.join("results.json"));
    assert_eq!(partial_json["missing"], json!(["U-DiT (tiny), seed 1"]));
    assert_eq!(partial_json["entries"][1]["runs"].as_array().unwrap().len(), 1);
    let (ok, _, err) = s.ablate("plan.json", &plan(), "out");
    assert!(ok, "{err}");
    assert!(err.contains("[4/4] U-DiT (tiny), seed 1: resuming training to 3 steps"), "{err}");
    assert_eq!(err.matches("trained and scored before").count(), 3, "{err}");
    assert!(weights(&run.export()) == model, "the resumed run ends with the same model");
    let log = std::fs::read_to_string(run.log()).unwrap();
    assert_eq!(log.lines().count(), 3, "one log line per step:\n{log}");
    let after = stamps();
    for (d, (b, a)) in dirs.iter().zip(before.iter().zip(&after)) {
        assert_eq!(a == b, *d != run.0, "{}: only the lost run is made again", d.display());
    }
    let rescored = &json_of(&out.join("results.json"))["entries"][1]["runs"][1]["scores"];
    for k in 0..2 {
        for key in ["cfg_scale", "fid", "class_accuracy"] {
            assert_eq!(rescored[k][key], entries[1]["runs"][1]["scores"][k][key], "{key}");
        }
    }

    // Another plan into the same folder is refused, before any training.
    let mut other = plan();
    other["recipe"]["steps"] = json!(4);
    let (ok, _, err) = s.ablate("other.json", &other, "out");
    assert!(!ok && err.lines().count() == 1 && err.contains("holds the results of another plan"), "{err}");
    // ... but a changed note is the same plan.
    let mut noted = plan();
    noted["note"] = json!(["other words"]);
    let (ok, _, err) = s.ablate("noted.json", &noted, "out");
    assert!(ok, "{err}");
}

#[test]
fn jobs_run_the_plan_side_by_side_as_one_process_does() {
    let s = Scratch(tempfile::tempdir().unwrap());
    std::fs::write(s.p("plan.json"), plan().to_string()).unwrap();
    let plan_path = s.p("plan.json").display().to_string();
    let run = |out: &str, extra: &[&str], threads: &str| {
        let out = s.p(out).display().to_string();
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_udit"))
            .args(["ablate", "--plan", &plan_path, "--out", &out])
            .args(extra)
            .env("RAYON_NUM_THREADS", threads)
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    // One process on one thread, and two side by side on one thread each: the same runs.
    let (ok, _, err) = run("one", &[], "1");
    assert!(ok, "{err}");
    let (ok, table, err) = run("two", &["--jobs", "2"], "2");
    assert!(ok, "{err}");
    assert!(err.contains("2 jobs side by side, 1 thread(s) each"), "{err}");
    for label in ["[1/4] full attention, seed 0", "[3/4] full attention, seed 1", "[4/4] U-DiT (tiny), seed 1"] {
        assert!(err.contains(&format!("{label}: training 3 steps")), "{label} trained in a job:\n{err}");
    }
    assert_eq!(err.matches("trained and scored before").count(), 4, "then tabulated:\n{err}");
    for entry in ["full-attention", "u-dit-tiny"] {
        for seed in ["seed-0", "seed-1"] {
            let model = |out: &str| weights(&s.p(out).join(entry).join(seed).join("model.safetensors"));
            assert!(model("one") == model("two"), "{entry}/{seed}: the same model");
        }
    }
    let scores = |out: &str| -> Vec<[Value; 3]> {
        let results = json_of(&s.p(out).join("results.json"));
        results["entries"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|e| e["runs"].as_array().unwrap().clone())
            .flat_map(|r| r["scores"].as_array().unwrap().clone())
            .map(|s| [s["cfg_scale"].clone(), s["fid"].clone(), s["class_accuracy"].clone()])
            .collect()
    };
    assert_eq!(scores("one"), scores("two"), "the same scores (not the same sampling times)");
    assert_eq!(table.trim(), std::fs::read_to_string(s.p("two/results.md")).unwrap().trim());

    // A shard alone does its runs (i mod 2 = 1 of runs that go seed by seed: the second
    // entry's) and writes no results.
    let (ok, _, err) = run("shard", &["--shard", "1/2"], "1");
    assert!(ok && err.contains("shard 1/2 done"), "{err}");
    assert!(!s.p("shard/results.json").exists());
    assert!(s.p("shard/u-dit-tiny/seed-1/model.safetensors").exists() && !s.p("shard/full-attention").exists());
    // A claiming process (what --jobs starts) skips the runs another holds: with the lock of
    // full attention's seed 0 held here, it trains only seed 1's, and says so.
    std::fs::create_dir_all(s.p("shard/.claims")).unwrap();
    let lock = std::fs::File::create(s.p("shard/.claims/full-attention-seed-0.lock")).unwrap();
    lock.lock().unwrap();
    let (ok, _, err) = run("shard", &["--claim"], "1");
    assert!(ok && err.contains("no run left to claim"), "{err}");
    assert!(err.contains("[3/4] full attention, seed 1: training 3 steps") && !err.contains("seed 0"), "{err}");
    assert!(!s.p("shard/full-attention/seed-0").exists());
    drop(lock);
    let (ok, _, err) = run("shard", &["--claim"], "1");
    assert!(ok && err.contains("[1/4] full attention, seed 0: training 3 steps"), "{err}");
    assert!(!err.contains("seed 1"), "finished runs are left to the last pass: {err}");
    for (args, says) in [
        (&["--jobs", "0"][..], "--jobs must be at least 1"),
        (&["--jobs", "2", "--shard", "0/2"][..], "not both"),
        (&["--shard", "2/2"][..], "a shard is i/n"),
    ] {
        let (ok, _, err) = run("refused", args, "1");
        assert!(!ok && err.lines().count() == 1 && err.contains(says), "{args:?}: {err}");
    }
}

#[test]
fn bad_plans_are_one_line_errors_before_any_training() {
    let s = Scratch(tempfile::tempdir().unwrap());
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut p = plan();
        f(&mut p);
        p
    };
    let cases: Vec<(Value, &str)> = vec![
        (edit(&|p| p["recipe"]["learning_rate"] = json!(1e-3)), "unknown field `learning_rate`"),
        (edit(&|p| p["meter"]["sample"] = json!(10)), "unknown field `sample`"),
        (edit(&|p| p["entries"][0]["model"]["hidden"] = json!(8)), "unknown field `hidden`"),
        (edit(&|p| p["entries"][0]["seed"] = json!(1)), "unknown field `seed`"),
        // Models the codec cannot feed from 1x32x32 images.
        (
            edit(&|p| {
                p["entries"][1]["model"]["in_channels"] = json!(2);
                p["entries"][1]["model"]["cfg_channels"] = json!(2);
            }),
            "unshuffle2 needs model channels divisible by 4",
        ),
        (edit(&|p| p["entries"][1]["model"]["input_size"] = json!(8)), "the data's samples are [1, 32, 32]"),
        (edit(&|p| p["recipe"]["codec"] = json!("none")), "the data's samples are [1, 32, 32]"),
        (edit(&|p| p["recipe"]["steps"] = json!(0)), "`steps` must be at least 1"),
        (edit(&|p| p["recipe"]["budget_minutes"] = json!(0)), "`budget_minutes` must be positive"),
        (
            edit(&|p| {
                p["recipe"].as_object_mut().unwrap().remove("steps");
            }),
            "needs `steps` or `budget_minutes`",
        ),
        (edit(&|p| p["recipe"]["seeds"] = json!([])), "no seeds"),
        (edit(&|p| p["entries"] = json!([])), "the plan has no entries"),
        (edit(&|p| p["entries"][1]["name"] = json!("Full attention!")), "have the same name"),
        (
            edit(&|p| p["entries"][1]["model"] = json!("no-such-config.json")),
            "neither a preset nor a configuration file",
        ),
        (edit(&|p| p["meter"]["cfg_scales"] = json!([0.5])), "at least 1"),
        (edit(&|p| p["meter"]["sampler"] = json!("euler")), "unknown sampler"),
        // A SiT entry samples with its interpolant, where the meter's ddim does not exist
        // unless the meter names an interpolant sampler.
        (
            edit(&|p| {
                let sit = json!({"arch": "sit", "input_size": 16, "hidden_size": 16, "depth": 1, "num_heads": 2,
                                 "num_classes": 10});
                p["entries"][1]["model"] = sit;
                p["entries"][1].as_object_mut().unwrap().remove("process");
                p["meter"].as_object_mut().unwrap().remove("interpolant");
            }),
            "unknown sampler \"ddim\" for an interpolant",
        ),
        (edit(&|p| p["meter"]["interpolant"]["sampler"] = json!("ddim")), "unknown sampler \"ddim\""),
        (edit(&|p| p["meter"]["interpolant"]["steps"] = json!(0)), "at least 1"),
        (edit(&|p| p["entries"][1]["process"] = json!({"process": "flow"})), "unknown variant `flow`"),
        (edit(&|p| p["entries"][1]["process"]["path_type"] = json!("Cosine")), "entry \"U-DiT (tiny)\""),
        (edit(&|p| p["meter"]["reference"] = json!("no-such-batch.npz")), "does not exist"),
        (edit(&|p| p["entries"][0]["model"]["class_dropout_prob"] = json!(0)), "needs a null class"),
    ];
    for (i, (plan, needle)) in cases.iter().enumerate() {
        let out = format!("out{i}");
        let (ok, _, err) = s.ablate("bad.json", plan, &out);
        assert!(!ok && err.lines().count() == 1 && err.contains(needle), "case {i} ({needle}): {err}");
        assert!(!s.p(&out).exists(), "case {i}: nothing is written");
    }
    // A folder that holds something else.
    std::fs::create_dir_all(s.p("busy")).unwrap();
    std::fs::write(s.p("busy/notes.txt"), "mine").unwrap();
    let (ok, _, err) = s.ablate("plan.json", &plan(), "busy");
    assert!(!ok && err.lines().count() == 1 && err.contains("holds no plan.json"), "{err}");
}

#[test]
fn a_wall_clock_budget_ends_each_run_at_a_finished_checkpoint() {
    let s = Scratch(tempfile::tempdir().unwrap());
    let mut p = plan();
    p["entries"].as_array_mut().unwrap().truncate(1);
    p["recipe"]["seeds"] = json!([0]);
    p["recipe"]["steps"] = json!(10_000);
    p["recipe"]["budget_minutes"] = json!(0.004);
    p["meter"]["cfg_scales"] = json!([1]);
    let (ok, _, err) = s.ablate("plan.json", &p, "out");
    assert!(ok, "{err}");
    let run = udit::train::RunDir(s.p("out/full-attention/seed-0"));
    let results = json_of(&s.p("out/results.json"));
    let r = &results["entries"][0]["runs"][0];
    let steps = r["steps"].as_u64().unwrap();
    assert!((1..10_000).contains(&steps) && r["train_seconds"].as_f64().unwrap() >= 0.24, "{r}");
    // The last checkpoint says the run is finished at that step, so a resume trains no more.
    let last =
        udit::train::TrainState::load(&run.checkpoint(steps), &burn::prelude::Device::flex().autodiff()).unwrap();
    assert_eq!((last.optim.step, last.config.steps), (steps, steps));
    assert!(last.seconds >= 0.24);
}

#[test]
fn the_shipped_plans_are_valid() {
    let device = burn::prelude::Device::flex();
    let dir = tempfile::tempdir().unwrap();
    for name in ["ladder", "figure1", "ladder-imagenet", "figure1-imagenet"] {
        let path = PathBuf::from(format!("configs/ablation/{name}.json"));
        let plan = Plan::load(&path).unwrap();
        let (entries, runs) = plan.resolve().unwrap();
        assert!(entries.len() >= 6 && runs.len() >= entries.len(), "{name}");
        let (ok, out, err) = udit(&["ablate", "--plan", path.to_str().unwrap(), "--check"]);
        // The ImageNet latents are not here: --check says so in one line.
        if name.ends_with("imagenet") {
            let says = "the data folder imagenet256-latents does not exist";
            assert!(!ok && err.trim().lines().count() == 1 && err.contains(says), "{name}: {err}");
        } else {
            assert!(ok && out.lines().count() == entries.len() + 2, "{name}: {err}");
            // The Fashion-MNIST plans pass every check that needs the data.
            let out = dir.path().join(name);
            Ablation::prepare(&plan, &out, Path::new(udit::io::plot::DEFAULT_FONT), &device).unwrap();
            assert!(!out.exists());
        }
    }
    // --check names a missing data folder or meter file, as the run itself would.
    let s = Scratch(tempfile::tempdir().unwrap());
    let bad: [(&str, Value, &str); 3] = [
        ("data_dir", json!("no-such-folder"), "the data folder no-such-folder does not exist"),
        ("features", json!("no-such-meter.safetensors"), "the meter's classifier no-such-meter.safetensors"),
        ("reference", json!("no-such-batch.npz"), "the meter's reference batch no-such-batch.npz does not exist"),
    ];
    for (field, value, says) in bad {
        let mut p = plan();
        let part = if field == "data_dir" { "recipe" } else { "meter" };
        p[part][field] = value;
        std::fs::write(s.p("plan.json"), p.to_string()).unwrap();
        let (ok, _, err) = udit(&["ablate", "--plan", s.p("plan.json").to_str().unwrap(), "--check"]);
        assert!(!ok && err.trim().lines().count() == 1 && err.contains(says), "{field}: {err}");
    }
    assert_eq!(Spread::of(&[1.0, 2.0, 3.0]).sd, Some(1.0));
    assert_eq!(Spread::of(&[2.5]).sd, None);
}

#[test]
fn the_adm_evaluator_scores_as_udit_eval_does() {
    let s = Scratch(tempfile::tempdir().unwrap());
    // A reference batch of five Fashion-MNIST test images; the coarse fixture Inception.
    let test = udit::data::fashion_mnist::FashionMnist::load(
        Path::new(udit::data::fashion_mnist::DEFAULT_DIR),
        udit::data::fashion_mnist::Split::Test,
    )
    .unwrap();
    let idx: Vec<usize> = (0..5).collect();
    let reference = udit::io::Images {
        pixels: test.padded(&idx),
        labels: idx.iter().map(|&i| test.labels[i] as i64).collect(),
        side: 32,
        channels: 1,
    };
    udit::io::npz::write_npz(&s.p("reference.npz"), &reference).unwrap();
    let inception = fixture("inception_fid_coarse.weights.safetensors");
    let mut p = plan();
    p["entries"].as_array_mut().unwrap().truncate(1);
    p["recipe"]["seeds"] = json!([0]);
    p["recipe"]["steps"] = json!(2);
    // (`samples`: the old name of num_samples, still taken)
    p["meter"] = json!({"samples": 5, "steps": 2, "cfg_scales": [1.5], "classes": "random", "batch": 5,
                        "reference": s.p("reference.npz"), "inception": inception});
    let (ok, table, err) = s.ablate("plan.json", &p, "out");
    assert!(ok, "{err}");
    assert!(table.contains("| FID, guidance 1.5 |\n") && !table.contains("class accuracy"), "{table}");
    let score = &json_of(&s.p("out/results.json"))["entries"][0]["runs"][0]["scores"][0];
    assert!(score["class_accuracy"].is_null(), "{score}");
    let samples = s.p("out/full-attention/seed-0/meter/cfg-1.5.npz");
    let (ok, eval, err) = udit(&[
        "eval",
        samples.to_str().unwrap(),
        s.p("reference.npz").to_str().unwrap(),
        "--inception",
        inception.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{err}");
    let eval: Value = serde_json::from_str(&eval).unwrap();
    assert!((score["fid"].as_f64().unwrap() - eval["fid"].as_f64().unwrap()).abs() < 1e-9, "{score} {eval}");
}
