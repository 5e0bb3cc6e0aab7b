//! What a newcomer meets in the first hour: class names, progress in logs, merge-npz after
//! the last shard, refused training starts that leave nothing behind, and error lines that
//! say what is wrong.

mod common;

use common::*;
use udit::classes::ClassNames;
use udit::io::npz::{NpzRun, merge_npz};

#[test]
fn classes_parse_by_index_and_by_name() {
    let fashion = ClassNames::new(
        ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
            .map(String::from)
            .to_vec(),
    );
    assert_eq!(fashion.parse("sneaker", 10).unwrap(), 7);
    assert_eq!(fashion.parse(" Ankle boot", 10).unwrap(), 9);
    assert_eq!(fashion.parse("ankle_boot", 10).unwrap(), 9);
    assert_eq!(fashion.parse("t-shirt/top", 10).unwrap(), 0);
    assert_eq!(fashion.parse("3", 10).unwrap(), 3);
    assert!(format!("{:#}", fashion.parse("10", 10).unwrap_err()).contains("class 10 does not exist"));
    assert!(format!("{:#}", fashion.parse("hat", 10).unwrap_err()).contains("no class is called \"hat\""));
    assert!(format!("{:#}", ClassNames::default().parse("hat", 10).unwrap_err()).contains("no class names"));

    let imagenet = ClassNames::imagenet();
    assert_eq!(imagenet.names().len(), 1000);
    assert_eq!(imagenet.parse("golden retriever", 1000).unwrap(), 207);
    assert_eq!(imagenet.parse("macaw", 1000).unwrap(), 88);
    assert_eq!(imagenet.parse("Tinca tinca", 1000).unwrap(), 0);
    assert_eq!(imagenet.short(979), Some("valley"));
    // "crane" is a bird (134) and a machine (517).
    assert!(format!("{:#}", imagenet.parse("crane", 1000).unwrap_err()).contains("several classes"));
    let wnids = ["n01440764".to_string(), "n02099601".to_string()];
    assert_eq!(ClassNames::of_imagenet_wnids(&wnids).unwrap().short(1), Some("golden retriever"));
    assert!(ClassNames::of_imagenet_wnids(&["cats".to_string()]).is_none());

    // Names stored with weights win; their count must fit; 1000 classes fall back to ImageNet.
    let meta: std::collections::HashMap<_, _> = fashion.metadata().into_iter().collect();
    assert_eq!(ClassNames::for_model(&meta, 10).unwrap(), fashion);
    assert!(ClassNames::for_model(&meta, 12).is_err());
    assert_eq!(ClassNames::for_model(&Default::default(), 1000).unwrap(), imagenet);
    assert!(ClassNames::for_model(&Default::default(), 10).unwrap().is_empty());
}

#[test]
fn the_bundled_model_lists_and_takes_its_class_names() {
    let (ok, out, err) = udit(&["info"]);
    assert!(ok, "{err}");
    assert!(out.contains("    7  Sneaker") && out.contains("    9  Ankle boot"), "{out}");
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("s");
    let (ok, _, err) = udit(&[
        "sample",
        "--class",
        "sneaker",
        "--num-samples",
        "1",
        "--sampler",
        "euler",
        "--steps",
        "2",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    // Not a terminal: plain progress lines with the phase, and the closing line of its own.
    assert!(err.contains("sampling: ") && err.contains("decoding: "), "{err}");
    assert!(err.lines().any(|l| l.starts_with("wrote 1 PNG, grid.png and settings.json to ")), "{err}");
    assert!(out_dir.join("000000.png").exists() && out_dir.join("grid.png").exists());
    let (ok, _, err) = udit(&["sample", "--class", "hat", "--out", out_dir.to_str().unwrap()]);
    assert!(!ok && err.trim().lines().count() == 1 && err.contains("no class is called \"hat\""), "{err}");
}

#[test]
fn merge_npz_after_the_last_shard_and_with_missing_batches() {
    let dir = tempfile::tempdir().unwrap();
    let run = NpzRun { npz: dir.path().join("s.npz"), num_samples: 10, batch: 2 };
    assert!(format!("{:#}", merge_npz(&run).unwrap_err()).contains("nothing to merge"));
    assert!(format!("{:#}", NpzRun::batch_of_parts(&run.npz).unwrap_err()).contains("nothing to merge"));
    let images = |n: usize| udit::io::Images { pixels: vec![7; n * 4], labels: vec![1; n], side: 2, channels: 1 };
    for b in [0, 2, 3] {
        run.save_part(b, &images(2)).unwrap();
    }
    let e = format!("{:#}", merge_npz(&run).unwrap_err());
    assert!(e.contains("2 of 5 batches are missing") && e.contains(": 1, 4 "), "{e}");
    // Without --batch, the parts' names give it.
    assert_eq!(NpzRun::batch_of_parts(&run.npz).unwrap(), 2);
    let other = NpzRun { npz: run.npz.clone(), num_samples: 10, batch: 3 };
    other.save_part(0, &images(3)).unwrap();
    let e = format!("{:#}", NpzRun::batch_of_parts(&run.npz).unwrap_err());
    assert!(e.contains("several --batch sizes [2, 3]"), "{e}");
    std::fs::remove_file(other.parts_dir().join("batch-000000-of-000004-size-3.npz")).unwrap();
    for b in [1, 4] {
        run.save_part(b, &images(2)).unwrap();
    }
    assert!(merge_npz(&run).unwrap().starts_with("wrote 10 samples"));
    assert!(!run.parts_dir().exists());
    // Run again, as the README says, after the last shard merged: not an error.
    assert!(merge_npz(&run).unwrap().contains("already complete"));
}

#[test]
fn refused_training_starts_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let out_s = out.to_str().unwrap();
    let tiny = r#"{"arch":"u-dit","input_size":8,"in_channels":1,"hidden_size":8,"num_heads":1,"depth":[1,1,1,1,1],"mlp_ratio":2,"downsampler":"dwconv3","num_classes":2}"#;
    let cfg = dir.path().join("tiny.json");
    std::fs::write(&cfg, tiny).unwrap();
    let cfg = cfg.to_str().unwrap();
    let (ok, _, err) = udit(&["train", "--out", out_s, "--config", cfg, "--dataset", "latents", "--steps", "0"]);
    assert!(!ok && err.contains("needs a directory"), "{err}");
    let missing = dir.path().join("nothing-here");
    let base = ["train", "--out", out_s, "--config", cfg, "--dataset", "latents", "--data-dir"];
    let (ok, _, err) = udit(&[&base[..], &[missing.to_str().unwrap(), "--steps", "0"]].concat());
    assert!(!ok && err.contains("at least 1 training step"), "{err}");
    let (ok, _, err) = udit(&[&base[..], &[missing.to_str().unwrap(), "--steps", "5"]].concat());
    assert!(!ok && err.lines().filter(|l| l.starts_with("error")).count() == 1, "{err}");
    assert!(!out.exists(), "a failed start wrote {:?}", std::fs::read_dir(&out).map(|d| d.count()));
}

#[test]
fn error_lines_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let text_pt = dir.path().join("x.pt");
    std::fs::write(&text_pt, "a text file that someone named .pt").unwrap();
    let load = |p: &std::path::Path| format!("{:#}", udit::checkpoint::read_weights(p, None).err().unwrap());
    assert!(load(&text_pt).contains("not a PyTorch checkpoint"), "{}", load(&text_pt));
    let full = std::fs::read(fixture("dit_tiny.weights.safetensors")).unwrap();
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &full[..full.len() - 100]).unwrap();
    let e = load(&cut);
    assert!(e.contains(&format!(
        "truncated: the tensors need {} bytes, the file has {}",
        full.len(),
        full.len() - 100
    )));
    let header_len = u64::from_le_bytes(full[..8].try_into().unwrap()) as usize;
    std::fs::write(&cut, &full[..header_len / 2]).unwrap();
    assert!(load(&cut).contains(&format!("truncated: the safetensors header needs {} bytes", header_len + 8)));
    let e = load(dir.path());
    assert!(e.contains("is a directory, not a file"), "{e}");
    let (ok, _, err) =
        udit(&["eval", dir.path().to_str().unwrap(), "--features", "assets/meter-classifier.safetensors"]);
    assert!(!ok && err.contains("is a directory, not a file"), "{err}");
    let (ok, _, err) = udit(&["convert", "--ckpt", text_pt.to_str().unwrap(), "--out", "x", "--merge"]);
    assert!(!ok && err.matches("say which model").count() <= 1, "{err}");
}

#[test]
fn every_option_of_every_subcommand_has_help() {
    let (ok, top, _) = udit(&["--help"]);
    assert!(ok);
    let subcommands: Vec<&str> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(
        subcommands.len() >= 12 && ["sweep", "serve", "ablate"].iter().all(|c| subcommands.contains(c)),
        "{subcommands:?}"
    );
    for sub in subcommands {
        let (ok, help, _) = udit(&[sub, "--help"]);
        assert!(ok, "{sub}");
        for line in help.lines().filter(|l| l.trim_start().starts_with("--") && !l.contains("--help")) {
            let described = line.trim_start().split_once("  ").is_some_and(|(_, d)| !d.trim().is_empty());
            assert!(described, "udit {sub}: option without a description: {line}");
        }
    }
}
