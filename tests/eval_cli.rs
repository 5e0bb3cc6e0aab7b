//! `udit eval` end to end (with the coarse fixture Inception), and its input errors.

mod common;

use common::*;
use udit::io::Images;
use udit::io::npz::write_npz;

fn images(n: usize, side: usize, channels: usize, seed: u64) -> Images {
    let mut state = seed;
    let pixels = (0..n * side * side * channels)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 56) as u8
        })
        .collect();
    Images { pixels, labels: (0..n as i64).collect(), side, channels }
}

#[test]
fn eval_scores_saved_statistics_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    write_npz(dir.path().join("a.npz").as_path(), &images(6, 32, 3, 1)).unwrap();
    write_npz(dir.path().join("gray.npz").as_path(), &images(6, 28, 1, 2)).unwrap();
    write_npz(dir.path().join("few.npz").as_path(), &images(3, 32, 3, 3)).unwrap();
    let inception = fixture("inception_fid_coarse.weights.safetensors").display().to_string();
    let base = ["--inception", inception.as_str(), "--json"];

    let run = |samples: &str, reference: &str, extra: &[&str]| {
        let mut args = vec!["eval", samples, reference];
        args.extend(base);
        args.extend(extra);
        udit(&args)
    };
    let (ok, out, err) = run(&p("a.npz"), &p("a.npz"), &["--save-stats", &p("stats.npz")]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["fid"].as_f64().unwrap().abs() < 1e-6 && v["sfid"].as_f64().unwrap().abs() < 1e-6, "{out}");
    assert_eq!((v["precision"].as_f64(), v["recall"].as_f64()), (Some(1.0), Some(1.0)));
    assert!((v["inception_score"].as_f64().unwrap() - 1.0).abs() < 1e-3);

    // Saved statistics (with features) are a reference too; grayscale samples are scored.
    let (ok, out, err) = run(&p("gray.npz"), &p("stats.npz"), &[]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["fid"].as_f64().unwrap().is_finite() && v["precision"].as_f64().is_some(), "{out}");

    // Errors: too few images for k = 3, not an npz, wrong dtype, missing weights.
    let (ok, _, err) = run(&p("few.npz"), &p("a.npz"), &[]);
    assert!(!ok && err.contains("needs more than 3 images"), "{err}");
    std::fs::write(dir.path().join("junk.npz"), b"not a zip").unwrap();
    let (ok, _, err) = run(&p("junk.npz"), &p("a.npz"), &[]);
    assert!(!ok && err.contains("cannot open") && err.lines().count() == 1, "{err}");
    let bad = npyz::npz::NpzWriter::create(dir.path().join("f32.npz"));
    {
        use npyz::WriterBuilder;
        let mut npz = bad.unwrap();
        let mut w = npz
            .array::<f32>("arr_0", Default::default())
            .unwrap()
            .default_dtype()
            .shape(&[4, 2, 2, 3])
            .begin_nd()
            .unwrap();
        w.extend(vec![0.5f32; 48]).unwrap();
        w.finish().unwrap();
    }
    let (ok, _, err) = run(&p("f32.npz"), &p("a.npz"), &[]);
    assert!(!ok && err.contains("arr_0 must be uint8"), "{err}");
    let (ok, _, err) = udit(&["eval", &p("a.npz"), &p("a.npz"), "--inception", &p("missing.pth")]);
    assert!(!ok && err.contains("FID Inception weights"), "{err}");
}
