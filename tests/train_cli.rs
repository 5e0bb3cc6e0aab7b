//! `udit extract-features`, `udit train` (fresh, resumed, refused) and `udit plot-loss` end
//! to end through the binary, on a generated image folder and the tiny fixture VAE.

mod common;

use std::path::Path;

use common::*;

const TINY: &str = r#"{"arch":"u-dit","input_size":8,"in_channels":4,"hidden_size":8,"num_heads":1,"depth":[1,1,1,1,1],"mlp_ratio":2,"downsampler":"dwconv3","num_classes":2}"#;

/// Two classes of 32x32 images (4x fewer latents: 8x8 through the tiny VAE).
fn image_folder(root: &Path) {
    for (class, shade) in [("a_dark", 40u8), ("b_light", 210)] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for k in 0..3u8 {
            let img = image::RgbImage::from_fn(40, 36, |x, y| image::Rgb([shade, (x * 6) as u8, (y * 7 + k as u32) as u8]));
            img.save(root.join(class).join(format!("{k}.png"))).unwrap();
        }
    }
}

#[test]
fn extract_train_resume_and_plot() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |name: &str| tmp.path().join(name).display().to_string();
    image_folder(&tmp.path().join("images"));
    std::fs::write(tmp.path().join("tiny.json"), TINY).unwrap();
    let vae = fixture("vae_tiny").display().to_string();

    let (ok, _, err) = udit(&[
        "extract-features", "--data-dir", &p("images"), "--image-size", "32", "--vae", &vae, "--out", &p("latents"), "--batch", "4",
    ]);
    assert!(ok, "{err}");
    let latents = udit::data::latents::Latents::open(&tmp.path().join("latents")).unwrap();
    use udit::data::Dataset;
    assert_eq!((latents.len(), latents.num_classes(), latents.shape()), (6, 2, [4, 8, 8]));

    let train = |extra: &[&str]| {
        let mut args: Vec<String> = vec!["train".into(), "--out".into(), p("run")];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        udit(&args)
    };
    let fresh = [
        "--config", &p("tiny.json"), "--dataset", "latents", "--data-dir", &p("latents"), "--codec", &vae, "--steps", "2",
        "--global-batch", "4", "--log-every", "1", "--ckpt-every", "1", "--keep-last", "1",
    ];
    let (ok, _, err) = train(&fresh);
    assert!(ok, "{err}");
    let run = udit::train::RunDir(tmp.path().join("run"));
    assert_eq!(run.list().unwrap(), [run.checkpoint(2)]);
    assert!(run.samples(2).exists() && run.export().exists() && tmp.path().join("run/recipe.json").exists());

    // The same directory again without --resume is refused; --resume cannot change the recipe.
    let (ok, _, err) = train(&fresh);
    assert!(!ok && err.contains("--resume"), "{err}");
    let (ok, _, err) = train(&["--resume", "--lr", "0.5"]);
    assert!(!ok && err.lines().count() == 1 && err.contains("stored recipe"), "{err}");
    let (ok, _, err) = train(&["--resume", "--steps", "3"]);
    assert!(ok, "{err}");
    assert_eq!(run.list().unwrap(), [run.checkpoint(3)]);
    let log = std::fs::read_to_string(run.log()).unwrap();
    assert_eq!(log.lines().count(), 3, "one line per step, none repeated:\n{log}");

    // The export samples through `udit sample` with the codec stored in it.
    let (ok, _, err) = udit(&[
        "sample", "--ckpt", &run.export().display().to_string(), "--sampler", "dpm++", "--steps", "3", "--num-samples", "2",
        "--class", "0,1", "--out", &p("samples"),
    ]);
    assert!(ok, "{err}");
    assert!(tmp.path().join("samples/grid.png").exists());

    // The loss curve.
    let (ok, _, err) = udit(&["plot-loss", &run.log().display().to_string(), "--out", &p("loss.png")]);
    assert!(ok, "{err}");
    let png = image::open(tmp.path().join("loss.png")).unwrap();
    assert_eq!((png.width(), png.height()), (900, 540));
    std::fs::write(tmp.path().join("bad.jsonl"), "{\"step\": 1}\n").unwrap();
    let (ok, _, err) = udit(&["plot-loss", &p("bad.jsonl"), "--out", &p("bad.png")]);
    assert!(!ok && err.contains("bad.jsonl:1"), "{err}");
    assert!(!tmp.path().join("bad.png").exists());
}

#[test]
fn trains_straight_from_an_image_folder_through_the_vae() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |name: &str| tmp.path().join(name).display().to_string();
    image_folder(&tmp.path().join("images"));
    std::fs::write(tmp.path().join("tiny.json"), TINY).unwrap();
    let vae = fixture("vae_tiny").display().to_string();
    let (ok, _, err) = udit(&[
        "train", "--out", &p("run"), "--config", &p("tiny.json"), "--dataset", "image-folder", "--data-dir", &p("images"),
        "--image-size", "32", "--codec", &vae, "--steps", "1", "--global-batch", "2", "--grad-accum", "2",
    ]);
    assert!(ok, "{err}");
    let line: udit::train::LogLine =
        serde_json::from_str(std::fs::read_to_string(tmp.path().join("run/log.jsonl")).unwrap().trim()).unwrap();
    assert!(line.loss.is_finite() && line.loss > 0.0);
    // Images whose crop does not fit the model's latents are refused before any step.
    let (ok, _, err) = udit(&[
        "train", "--out", &p("run2"), "--config", &p("tiny.json"), "--dataset", "image-folder", "--data-dir", &p("images"),
        "--image-size", "16", "--codec", &vae, "--steps", "1",
    ]);
    assert!(!ok && err.contains("the data's samples are [3, 16, 16]"), "{err}");
}

#[test]
fn impossible_training_options_are_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run").display().to_string();
    for (args, needle) in [
        (vec!["--model", "U-DiT-S", "--dataset", "nope"], "unknown dataset"),
        (vec!["--model", "U-DiT-S", "--dataset", "latents"], "--data-dir"),
        (vec!["--model", "U-DiT-S", "--dataset", "fashion-mnist", "--devices", "2"], "--features cuda"),
        (vec!["--model", "U-DiT-S", "--dataset", "fashion-mnist", "--global-batch", "6", "--grad-accum", "4"], "multiple"),
        (vec!["--resume"], "no checkpoints"),
    ] {
        let mut all = vec!["train", "--out", out.as_str()];
        all.extend(args);
        let (ok, _, err) = udit(&all);
        assert!(!ok && err.lines().count() == 1 && err.contains(needle), "{all:?}: {err}");
    }
}
