//! End-to-end sampling with the tiny fixture model through the tiny VAE.

mod common;

use burn::prelude::*;
use common::*;
use udit::checkpoint::{load_denoiser, read_weights};
use udit::codec::Codec;
use udit::diffusion::GaussianDiffusion;
use udit::diffusion::samplers::Sampler;
use udit::io::Images;
use udit::io::npz::{NpzRun, read_npz};
use udit::model::{Denoiser, ModelConfig};
use udit::rng::NoiseStreams;
use udit::sample::{Classes, Generator, Settings};

struct Setup {
    model: Denoiser,
    config: ModelConfig,
    codec: Codec,
}

fn setup() -> Setup {
    let dev = Device::flex();
    let config = ModelConfig::from_file(&fixture("udit_tiny.json")).unwrap();
    let weights = read_weights(&fixture("udit_tiny.train-checkpoint.pt"), None).unwrap();
    let model = load_denoiser(&config, &weights, &dev).unwrap().merged();
    let codec = Codec::open(fixture("vae_tiny").to_str().unwrap(), &dev).unwrap();
    Setup { model, config, codec }
}

fn generator(s: &Setup, sampler: Sampler, steps: usize, cfg_scale: f64, classes: Classes) -> Generator<'_> {
    Generator {
        model: &s.model,
        config: &s.config,
        codec: &s.codec,
        diffusion: GaussianDiffusion::linear(1000),
        settings: Settings { sampler, steps, cfg_scale, seed: 7, classes },
        device: Device::flex(),
    }
}

/// Largest per-byte difference of two sample batches.
fn max_diff(a: &Images, b: &Images) -> u8 {
    a.pixels.iter().zip(&b.pixels).map(|(x, y)| x.abs_diff(*y)).max().unwrap()
}

#[test]
fn samples_have_the_right_shape_labels_and_spread() {
    let s = setup();
    let g = generator(&s, Sampler::DpmSolverPp2M, 10, 1.5, Classes::Listed(vec![3, 9]));
    g.validate().unwrap();
    let images = g.generate(0, 3, &mut |_| Ok(())).unwrap();
    // 16x16 latents through a 3-level VAE (4x upsampling): 64x64 RGB.
    assert_eq!((images.side, images.channels), (64, 3));
    assert_eq!(images.pixels.len(), 3 * 64 * 64 * 3);
    assert_eq!(images.labels, vec![3, 9, 3]);
    let (lo, hi) = (images.pixels.iter().min().unwrap(), images.pixels.iter().max().unwrap());
    assert!(hi - lo > 50, "images are not flat: {lo}..{hi}");
}

#[test]
fn noise_of_a_sample_does_not_depend_on_its_batch() {
    let dev = Device::flex();
    let all = NoiseStreams::new(3, 0, 5, [2, 4, 4]).next(&dev).into_data();
    let tail = NoiseStreams::new(3, 2, 3, [2, 4, 4]).next(&dev).into_data();
    assert_eq!(&all.as_slice::<f32>().unwrap()[2 * 32..], tail.as_slice::<f32>().unwrap());
    let other_seed = NoiseStreams::new(4, 0, 5, [2, 4, 4]).next(&dev).into_data();
    assert_ne!(all.as_slice::<f32>().unwrap(), other_seed.as_slice::<f32>().unwrap());
}

#[test]
fn samples_do_not_depend_on_batch_size_or_split() {
    let s = setup();
    for (sampler, steps) in [(Sampler::Ancestral, 25), (Sampler::DpmSolverPp2M, 10), (Sampler::Ddim { eta: 0.5 }, 10)] {
        let g = generator(&s, sampler, steps, 1.5, Classes::Random);
        let whole = g.generate(0, 4, &mut |_| Ok(())).unwrap();
        let mut split = g.generate(0, 1, &mut |_| Ok(())).unwrap();
        split.append(g.generate(1, 3, &mut |_| Ok(())).unwrap());
        assert_eq!(whole.labels, split.labels);
        // The same noise and labels; only float summation order may differ between batch
        // shapes, which can move a pixel by a level.
        assert!(max_diff(&whole, &split) <= 2, "{sampler:?}: max byte difference {}", max_diff(&whole, &split));
        let other_seed = Generator { settings: Settings { seed: 8, ..g.settings.clone() }, ..g };
        assert!(max_diff(&whole, &other_seed.generate(0, 4, &mut |_| Ok(())).unwrap()) > 50, "the seed matters");
    }
}

#[test]
fn npz_runs_resume_and_shard() {
    let s = setup();
    let g = generator(&s, Sampler::DpmSolverPp2M, 5, 1.5, Classes::Random);
    let dir = tempfile::tempdir().unwrap();
    let run = NpzRun { npz: dir.path().join("s.npz"), num_samples: 5, batch: 2 };
    assert_eq!(run.pending(0, 2), vec![0, 2]);
    assert!(!udit::sample::run_npz(&g, &run, 0, 2).unwrap(), "shard 0 alone cannot finish the run");
    assert!(!run.npz.exists());
    assert_eq!(run.pending(0, 1), vec![1], "shard 0's batches are kept");
    assert!(udit::sample::run_npz(&g, &run, 1, 2).unwrap());
    let sharded = read_npz(&run.npz).unwrap();
    assert_eq!((sharded.labels.len(), sharded.side, sharded.channels), (5, 64, 3));
    assert!(!run.parts_dir().exists());

    // An interrupted run: one finished batch on disk, then a restart does only the rest.
    let run2 = NpzRun { npz: dir.path().join("t.npz"), num_samples: 5, batch: 2 };
    run2.save_part(1, &g.generate(2, 2, &mut |_| Ok(())).unwrap()).unwrap();
    assert_eq!(run2.pending(0, 1), vec![0, 2]);
    assert!(udit::sample::run_npz(&g, &run2, 0, 1).unwrap());
    let resumed = read_npz(&run2.npz).unwrap();
    assert_eq!(resumed.labels, sharded.labels);
    assert!(max_diff(&resumed, &sharded) <= 2);
}

#[test]
fn bad_settings_are_refused_before_work() {
    let s = setup();
    let err = |g: Generator| format!("{:#}", g.validate().err().expect("should be refused"));
    assert!(
        err(generator(&s, Sampler::Ancestral, 10, 1.5, Classes::Listed(vec![10]))).contains("class 10 does not exist")
    );
    assert!(
        err(generator(&s, Sampler::Ancestral, 10, 0.5, Classes::Random)).contains("--cfg-scale must be at least 1")
    );
    assert!(err(generator(&s, Sampler::Ancestral, 0, 1.5, Classes::Random)).contains("--steps"));
    let pixels = Setup { codec: Codec::Unshuffle2, ..setup() };
    assert!(generator(&pixels, Sampler::Ancestral, 10, 1.5, Classes::Random).validate().is_ok());
    let config = ModelConfig::from_json(r#"{"arch":"u-dit","input_size":16,"in_channels":3,"hidden_size":16,"num_heads":2,"depth":[1,1,1,1,1],"downsampler":"dwconv3"}"#).unwrap();
    let three = Setup {
        model: Denoiser::new(&config, udit::model::FfnForm::Merged, &Device::flex()),
        config,
        codec: setup().codec,
    };
    assert!(
        err(generator(&three, Sampler::Ancestral, 10, 1.5, Classes::Random))
            .contains("4 latent channels but the model takes 3")
    );
}

#[test]
fn codecs_encode_what_they_decode() {
    let dev = Device::flex();
    let x = Tensor::<4>::random([2, 1, 8, 8], burn::tensor::Distribution::Uniform(-1.0, 1.0), &dev);
    for codec in [Codec::None, Codec::Unshuffle2] {
        let z = codec.encode(x.clone(), |_| unreachable!("pixel codecs draw no noise"));
        assert_eq!(codec.decode(z).into_data(), x.to_data());
    }
    assert_eq!(Codec::Unshuffle2.encode(x.clone(), |m| m.clone()).dims(), [2, 4, 4, 4]);
    // The VAE: with zero noise the latent is the posterior mean, scaled by 0.18215.
    let vae = setup().codec;
    let io = io("vae_tiny.io.safetensors");
    let z = vae.encode(float(&io["image"], &dev), |m| m.zeros_like());
    let expected = float::<4>(&io["posterior_mean"], &dev) * 0.18215;
    assert_close("scaled posterior mean", &z.into_data(), &expected.into_data(), 1e-4);
}
