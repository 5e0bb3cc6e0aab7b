//! `udit extract-features`, `udit train` (fresh, resumed, refused) and `udit plot-loss` end
//! to end through the binary, on a generated image folder and the tiny fixture VAE.

mod common;

use common::*;
use udit::data::Dataset;
use udit::train::{LogLine, RunDir};

const TINY: &str = r#"{"arch":"u-dit","input_size":8,"in_channels":4,"hidden_size":8,"num_heads":1,"depth":[1,1,1,1,1],"mlp_ratio":2,"downsampler":"dwconv3","num_classes":2}"#;

/// A scratch directory with `images/` (two classes of 40x36 images: 32x32 crops, 8x8
/// latents through the tiny VAE) and `tiny.json`.
struct Scratch {
    dir: tempfile::TempDir,
    vae: String,
}

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (class, shade) in [("a_dark", 40u8), ("b_light", 210)] {
            std::fs::create_dir_all(dir.path().join("images").join(class)).unwrap();
            for k in 0..3u32 {
                let img =
                    image::RgbImage::from_fn(40, 36, |x, y| image::Rgb([shade, (x * 6) as u8, (y * 7 + k) as u8]));
                img.save(dir.path().join("images").join(class).join(format!("{k}.png"))).unwrap();
            }
        }
        std::fs::write(dir.path().join("tiny.json"), TINY).unwrap();
        Self { dir, vae: fixture("vae_tiny").display().to_string() }
    }

    fn p(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// Runs `udit` with whitespace-separated `args`.
    fn udit(&self, args: &str) -> (bool, String) {
        let args: Vec<&str> = args.split_whitespace().collect();
        let (ok, _, err) = udit(&args);
        (ok, err)
    }
}

#[test]
fn extract_train_resume_and_plot() {
    let s = Scratch::new();
    let (images, latents, vae) = (s.p("images"), s.p("latents"), &s.vae);
    let (ok, err) = s
        .udit(&format!("extract-features --data-dir {images} --image-size 32 --codec {vae} --out {latents} --batch 4"));
    assert!(ok, "{err}");
    let data = udit::data::latents::Latents::open(std::path::Path::new(&latents)).unwrap();
    assert_eq!((data.len(), data.num_classes(), data.shape()), (6, 2, [4, 8, 8]));

    let out = s.p("run");
    let fresh = format!(
        "train --out {out} --config {} --dataset latents --data-dir {latents} --codec {vae} --steps 2 \
         --global-batch 4 --log-every 1 --ckpt-every 1 --keep-last 1",
        s.p("tiny.json")
    );
    let (ok, err) = s.udit(&fresh);
    assert!(ok, "{err}");
    let run = RunDir(out.clone().into());
    assert_eq!(run.list().unwrap(), [run.checkpoint(2)]);
    assert!(run.samples(2).exists() && run.export().exists() && run.0.join("recipe.json").exists());

    // The same directory again without --resume is refused; --resume cannot change the recipe.
    let (ok, err) = s.udit(&fresh);
    assert!(!ok && err.contains("--resume"), "{err}");
    let (ok, err) = s.udit(&format!("train --out {out} --resume --lr 0.5"));
    assert!(!ok && err.lines().count() == 1 && err.contains("stored recipe"), "{err}");
    let (ok, err) = s.udit(&format!("train --out {out} --resume --steps 3"));
    assert!(ok, "{err}");
    assert_eq!(run.list().unwrap(), [run.checkpoint(3)]);
    let log = std::fs::read_to_string(run.log()).unwrap();
    assert_eq!(log.lines().count(), 3, "one line per step, none repeated:\n{log}");

    // The export samples through `udit sample` with the codec stored in it.
    let export = run.export().display().to_string();
    let samples = s.p("samples");
    let (ok, err) = s
        .udit(&format!("sample --ckpt {export} --sampler dpm++ --steps 3 --num-samples 2 --class 0,1 --out {samples}"));
    assert!(ok, "{err}");
    assert!(s.dir.path().join("samples/grid.png").exists());

    // The loss curve; a log that is not one is refused and nothing is written.
    let (ok, err) = s.udit(&format!("plot-loss {} --out {}", run.log().display(), s.p("loss.png")));
    assert!(ok, "{err}");
    let png = image::open(s.dir.path().join("loss.png")).unwrap();
    assert_eq!((png.width(), png.height()), (900, 540));
    std::fs::write(s.dir.path().join("bad.jsonl"), "{\"step\": 1}\n").unwrap();
    let (ok, err) = s.udit(&format!("plot-loss {} --out {}", s.p("bad.jsonl"), s.p("bad.png")));
    assert!(!ok && err.contains("bad.jsonl:1"), "{err}");
    assert!(!s.dir.path().join("bad.png").exists());
}

#[test]
fn trains_straight_from_an_image_folder_through_the_vae() {
    let s = Scratch::new();
    let common = format!(
        "--config {} --dataset image-folder --data-dir {} --codec {} --steps 1",
        s.p("tiny.json"),
        s.p("images"),
        s.vae
    );
    let (ok, err) =
        s.udit(&format!("train --out {} {common} --image-size 32 --global-batch 2 --grad-accum 2", s.p("run")));
    assert!(ok, "{err}");
    let line: LogLine =
        serde_json::from_str(std::fs::read_to_string(s.dir.path().join("run/log.jsonl")).unwrap().trim()).unwrap();
    assert!(line.loss.is_finite() && line.loss > 0.0);
    // Images whose crop does not fit the model's latents are refused before any step.
    let (ok, err) = s.udit(&format!("train --out {} {common} --image-size 16", s.p("run2")));
    assert!(!ok && err.contains("the data's samples are [3, 16, 16]"), "{err}");
}

#[test]
fn impossible_training_options_are_one_line_errors() {
    let s = Scratch::new();
    let out = s.p("run");
    for (args, needle) in [
        ("--model U-DiT-S --dataset nope", "unknown dataset"),
        ("--model U-DiT-S --dataset latents", "--data-dir"),
        ("--model U-DiT-S --dataset fashion-mnist --devices 2", "--features cuda"),
        ("--model U-DiT-S --dataset fashion-mnist --global-batch 6 --grad-accum 4", "multiple"),
        ("--model U-DiT-S --dataset fashion-mnist --steps 5 --cooldown-steps 6", "cool-down"),
        ("--model U-DiT-S --dataset fashion-mnist --lr-schedule cosine --cooldown-steps 6", "no cool-down steps"),
        ("--resume", "no checkpoints"),
    ] {
        let (ok, err) = s.udit(&format!("train --out {out} {args}"));
        assert!(!ok && err.lines().count() == 1 && err.contains(needle), "{args}: {err}");
    }
}

#[cfg(unix)]
#[test]
fn ctrl_c_ends_training_at_a_checkpoint_that_resume_continues() {
    // A tiny U-DiT on Fashion-MNIST through unshuffle2, far more steps than the test waits
    // for: SIGINT after the first log line ends it at the step in flight, checkpointed, with
    // the shell's status 130 and one line saying how to continue; --resume then says where it
    // starts and trains on from there.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tiny.json");
    std::fs::write(
        &config,
        TINY.replace(r#""input_size":8"#, r#""input_size":16"#).replace(r#""num_classes":2"#, r#""num_classes":10"#),
    )
    .unwrap();
    let out = dir.path().join("run");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_udit"))
        .args(["train", "--config", config.to_str().unwrap(), "--dataset", "fashion-mnist", "--codec", "unshuffle2"])
        .args(["--global-batch", "4", "--steps", "100000", "--log-every", "1", "--ckpt-every", "100000", "--out"])
        .arg(&out)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let run = RunDir(out.clone());
    let start = std::time::Instant::now();
    while std::fs::read_to_string(run.log()).map_or(true, |l| l.lines().count() < 2) {
        assert!(start.elapsed().as_secs() < 120, "no training steps logged");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // SAFETY: a plain kill(2) of our own child.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGINT);
    }
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{err}");
    let last = err.trim().lines().last().unwrap();
    assert!(last.starts_with("interrupted at step ") && last.ends_with("--resume` continues"), "{err}");
    let step: u64 = last["interrupted at step ".len()..].split(';').next().unwrap().parse().unwrap();
    assert!(step >= 2 && step < 100_000, "{last}");
    assert_eq!(run.list().unwrap(), [run.checkpoint(step)]);
    assert!(!run.export().exists(), "an interrupted run exports nothing");
    let (ok, _, err) = udit(&["train", "--out", out.to_str().unwrap(), "--resume", "--steps", &(step + 2).to_string()]);
    assert!(ok, "{err}");
    assert!(err.contains(&format!("resuming at step {step} of {} from ", step + 2)), "{err}");
    assert!(run.export().exists() && run.list().unwrap().contains(&run.checkpoint(step + 2)));
}
