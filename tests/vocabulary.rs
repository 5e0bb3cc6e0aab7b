//! One vocabulary across subcommands (README, "One vocabulary"): the old spellings of
//! renamed flags and fields are still taken, as hidden aliases, and mean what the new ones
//! mean.

mod common;

use common::*;

/// `udit forward` and `udit convert` took `--weights` and `--output`: the same files come out.
#[test]
fn old_weights_and_output_flags_are_aliases() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, weights, io) =
        (fixture("dit_tiny.json"), fixture("dit_tiny.weights.safetensors"), fixture("dit_tiny.io.safetensors"));
    let forward = |ckpt: &str, out: &str, path: &std::path::Path| {
        let (ok, _, err) = udit(&[
            "forward",
            "--config",
            cfg.to_str().unwrap(),
            ckpt,
            weights.to_str().unwrap(),
            "--inputs",
            io.to_str().unwrap(),
            out,
            path.to_str().unwrap(),
        ]);
        assert!(ok, "{ckpt} {out}: {err}");
        std::fs::read(path).unwrap()
    };
    let (new, old) = (dir.path().join("new.safetensors"), dir.path().join("old.safetensors"));
    assert!(forward("--ckpt", "--out", &new) == forward("--weights", "--output", &old));
    for (ckpt, out) in [("--ckpt", "--out"), ("--weights", "--output")] {
        let path = dir.path().join(format!("convert{ckpt}.safetensors"));
        let (ok, _, err) = udit(&["convert", ckpt, weights.to_str().unwrap(), out, path.to_str().unwrap()]);
        assert!(ok && path.exists(), "{err}");
    }
}

/// `--vae` (sample, extract-features), `--data` (eval, sweep, train-classifier) and
/// `--max-images` (serve) reach the same settings as `--codec`, `--data-dir` and
/// `--max-samples`: each old spelling gets past the parser to the same error as the new.
#[test]
fn old_codec_data_and_limit_flags_are_aliases() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let missing = missing.to_str().unwrap();
    let npz = dir.path().join("s.npz");
    udit::io::npz::write_npz(
        &npz,
        &udit::io::Images { pixels: vec![0; 2 * 32 * 32], labels: vec![0, 1], side: 32, channels: 1 },
    )
    .unwrap();
    let npz = npz.to_str().unwrap();
    let cases: [(&[&str], &str, &str); 6] = [
        (&["sample", "--num-samples", "1", "--out", missing, "--codec"], "--vae", missing),
        (&["extract-features", "--data-dir", missing, "--out", missing, "--codec"], "--vae", missing),
        (&["eval", npz, "--features", "--data-dir"], "--data", missing),
        (&["sweep", "--num-samples", "2", "--out", missing, "--data-dir"], "--data", missing),
        (&["train-classifier", "--out", missing, "--data-dir"], "--data", missing),
        (&["serve", "--max-samples"], "--max-images", "0"),
    ];
    for (args, old, value) in cases {
        let new = args.last().unwrap();
        let (ok_new, _, err_new) = udit(&[args, &[value]].concat());
        let mut old_args = args.to_vec();
        *old_args.last_mut().unwrap() = old;
        let (ok_old, _, err_old) = udit(&[&old_args[..], &[value]].concat());
        assert!(!ok_new && !ok_old, "{new} / {old}");
        assert!(!err_new.contains("unexpected argument"), "{new}: {err_new}");
        assert_eq!(err_new, err_old, "{new} and {old} say the same");
    }
}
