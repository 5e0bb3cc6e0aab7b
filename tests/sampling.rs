//! End-to-end sampling with the tiny fixture model through the tiny VAE.

mod common;

use burn::prelude::*;
use burn::tensor::TensorData;
use common::*;
use udit::codec::Codec;
use udit::diffusion::GaussianDiffusion;
use udit::diffusion::samplers::Sampler;
use udit::guidance::{Evaluations, Guidance, GuidanceInterval, GuidedDenoiser, parse_cfg_channels};
use udit::io::Images;
use udit::io::npz::{NpzRun, read_npz};
use udit::model::{Denoiser, ModelConfig};
use udit::process::Process;
use udit::rng::NoiseStreams;
use udit::sample::{Classes, Generator, Method, Settings};

fn setup() -> Setup {
    let codec = Codec::open(fixture("vae_tiny").to_str().unwrap(), &Device::flex()).unwrap();
    Setup::load("udit_tiny.json", "udit_tiny.train-checkpoint.pt", codec)
}

fn generator(s: &Setup, sampler: Sampler, steps: usize, cfg_scale: f64, classes: Classes) -> Generator<'_> {
    Generator {
        model: &s.model,
        config: &s.config,
        codec: &s.codec,
        process: Process::Diffusion(GaussianDiffusion::linear(1000)),
        settings: Settings {
            method: Method::diffusion(sampler, steps),
            guidance: Guidance::everywhere(cfg_scale),
            seed: 7,
            classes,
        },
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
    for (sampler, steps) in [(Sampler::Ancestral, 25), (Sampler::DpmSolverPp2M, 10), (Sampler::Ddim { eta: 0.0 }, 10)] {
        let g = generator(&s, sampler, steps, 1.5, Classes::Random);
        let whole = g.generate(0, 8, &mut |_| Ok(())).unwrap();
        // Batches of 3 (the last of 2), and one sample alone.
        let mut split = g.generate(0, 3, &mut |_| Ok(())).unwrap();
        split.append(g.generate(3, 3, &mut |_| Ok(())).unwrap());
        split.append(g.generate(6, 1, &mut |_| Ok(())).unwrap());
        split.append(g.generate(7, 1, &mut |_| Ok(())).unwrap());
        assert_eq!(whole.labels, split.labels);
        assert_eq!(max_diff(&whole, &split), 0, "{sampler:?}: the same seed gives other bytes at another batch size");
        let other_seed = Generator { settings: Settings { seed: 8, ..g.settings.clone() }, ..g };
        assert!(max_diff(&whole, &other_seed.generate(0, 8, &mut |_| Ok(())).unwrap()) > 50, "the seed matters");
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

/// The latents of samples 0..3 of `g` and every x_0 prediction on the way.
fn latents(g: &Generator) -> Vec<Vec<f32>> {
    let mut steps = Vec::new();
    let (z, _) = g
        .generate_latents(0, 3, &mut |x0| {
            steps.push(x0.clone().into_data().try_into_vec::<f32>().unwrap());
            Ok(())
        })
        .unwrap();
    steps.push(z.into_data().try_into_vec::<f32>().unwrap());
    steps
}

#[test]
fn guidance_interval_bounds_are_plain_guidance_and_no_guidance_bit_for_bit() {
    let s = setup();
    let dev = Device::flex();
    let classes = Classes::Listed(vec![3, 9]);
    for (sampler, steps) in [(Sampler::DpmSolverPp2M, 6), (Sampler::Ancestral, 6), (Sampler::Heun, 4)] {
        let mut g = generator(&s, sampler, steps, 2.0, classes.clone());
        // Plain guidance as the reference computes it: forward_with_cfg on [x; x], [y; null].
        let plan = g.settings.method.plan(&g.process).unwrap();
        let y = Tensor::<1, Int>::from_data(TensorData::new(vec![3i64, 9, 3], [3]), &dev);
        let y2 = Tensor::cat(vec![y.clone(), Tensor::full([3], 10, &dev)], 0);
        let mut reference = Vec::new();
        let mut noise = NoiseStreams::new(7, 0, 3, [4, 16, 16]);
        let x_t = noise.next(&dev);
        let mut model = |x: Tensor<4>, t: Tensor<1>| {
            let (x2, t2) = (Tensor::cat(vec![x.clone(), x], 0), Tensor::cat(vec![t.clone(), t], 0));
            s.model.forward_with_cfg(x2, t2, y2.clone(), 2.0, 3).narrow(0, 0, 3)
        };
        let z = plan
            .run(&mut model, x_t, &mut noise, &dev, &mut |x0| {
                reference.push(x0.clone().into_data().try_into_vec::<f32>().unwrap());
                Ok(())
            })
            .unwrap();
        reference.push(z.into_data().try_into_vec::<f32>().unwrap());

        g.settings.guidance.interval = GuidanceInterval::Between(0.0, f64::INFINITY);
        assert!(latents(&g) == reference, "{sampler:?}: an interval over every noise level is plain guidance");
        g.settings.guidance.interval = GuidanceInterval::Everywhere;
        assert!(latents(&g) == reference, "{sampler:?}: `none` is plain guidance");
        let calls = plan.calls();
        assert_eq!(g.evaluations().unwrap(), Some(Evaluations { calls, guided: calls }));

        // An empty interval is no guidance at all (scale 1), also bit for bit.
        g.settings.guidance.interval = GuidanceInterval::Between(1.0, 1.0);
        let settings = Settings { guidance: Guidance::everywhere(1.0), ..g.settings.clone() };
        let unguided = Generator { settings, process: g.process.clone(), device: g.device.clone(), ..g };
        assert!(latents(&g) == latents(&unguided), "{sampler:?}: an empty interval is no guidance");
        assert_eq!(g.evaluations().unwrap(), Some(Evaluations { calls, guided: 0 }));
        assert_eq!(g.evaluations().unwrap().unwrap().nfe(), calls);
    }
}

#[test]
fn guidance_runs_the_doubled_batch_inside_the_interval_only() {
    let dev = Device::flex();
    let base = GaussianDiffusion::reference();
    let process = Process::Diffusion(base.clone());
    let n = 2;
    let guidance = Guidance { scale: 3.0, interval: GuidanceInterval::parse("0.34,1.02").unwrap(), channels: Some(3) };
    for (sampler, steps) in [(Sampler::UniPc, 12), (Sampler::Heun, 12), (Sampler::Ancestral, 30)] {
        let plan = sampler.plan(&base, steps, None).unwrap();
        // A network whose output is the label times (channel + 1), on 4 eps and 4 variance channels.
        let mut seen: Vec<(usize, f32)> = Vec::new();
        let mut network = |x: Tensor<4>, t: Tensor<1>, y: Tensor<1, Int>| {
            let b = x.dims()[0];
            seen.push((b, t.into_data().try_into_vec::<f32>().unwrap()[0]));
            let per_channel =
                Tensor::<1>::from_floats([1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0, 0.0], &dev).reshape([1, 8, 1, 1]);
            y.float().reshape([b, 1, 1, 1]) * per_channel * Tensor::<4>::ones([b, 8, 2, 2], &dev)
        };
        let mut denoiser = GuidedDenoiser {
            network: &mut network,
            labels: Tensor::from_data(TensorData::new(vec![2i64, 5], [n]), &dev),
            null_class: 10,
            guidance: &guidance,
            channels: 3,
            process: &process,
        };
        let mut outputs = Vec::new();
        let mut model = |x, t| {
            let out = denoiser.call(x, t);
            outputs.push(
                out.clone().narrow(1, 0, 4).narrow(2, 0, 1).narrow(3, 0, 1).into_data().try_into_vec::<f32>().unwrap(),
            );
            out
        };
        let mut noise = NoiseStreams::new(0, 0, n, [4, 2, 2]);
        let x = noise.next(&dev);
        plan.run(&mut model, x, &mut noise, &dev, &mut |_| Ok(())).unwrap();

        let times = plan.call_times();
        assert_eq!(seen.len(), times.len());
        let mut guided = 0;
        for ((batch, t), (out, planned)) in seen.iter().zip(outputs.iter().zip(&times)) {
            assert_eq!(*t, *planned as f32);
            let sigma = base.sigma_at(*t as f64);
            let inside = 0.34 < sigma && sigma <= 1.02;
            guided += usize::from(inside);
            assert_eq!(*batch, if inside { 2 * n } else { n }, "{sampler:?} at sigma {sigma}");
            // Guided: null + 3 (label - null) on the first 3 channels, the label on the 4th.
            let mix =
                |label: f32, c: f32| if inside && c < 4.0 { (10.0 + 3.0 * (label - 10.0)) * c } else { label * c };
            let expected: Vec<f32> = [2.0, 5.0].iter().flat_map(|&l| [1.0, 2.0, 3.0, 4.0].map(|c| mix(l, c))).collect();
            assert_eq!(out, &expected, "{sampler:?} at sigma {sigma}");
        }
        assert!(guided > 0 && guided < times.len(), "{sampler:?}: the interval holds some calls, not all");
        assert_eq!(guidance.evaluations(&times, &process), Evaluations { calls: times.len(), guided });
    }
}

#[test]
fn cfg_channels_choose_what_guidance_mixes() {
    let s = setup();
    let mut g = generator(&s, Sampler::DpmSolverPp2M, 4, 2.0, Classes::Listed(vec![1]));
    let three = latents(&g);
    g.settings.guidance.channels = Some(3);
    assert!(latents(&g) == three, "3 is the configuration's for 4-channel latents");
    g.settings.guidance.channels = Some(parse_cfg_channels("all", 4).unwrap());
    assert!(latents(&g) != three, "all 4 channels guide differently");
    g.settings.guidance.channels = Some(5);
    assert!(format!("{:#}", g.validate().unwrap_err()).contains("guidance can mix 1 to 4 channels"));
    assert!(parse_cfg_channels("three", 4).is_err());
}

#[test]
fn guidance_intervals_parse_and_refuse() {
    assert_eq!(GuidanceInterval::parse("none").unwrap(), GuidanceInterval::Everywhere);
    assert_eq!(GuidanceInterval::parse("off").unwrap(), GuidanceInterval::Everywhere);
    assert_eq!(GuidanceInterval::parse(" 0.28, 5.42").unwrap(), GuidanceInterval::Between(0.28, 5.42));
    assert_eq!(GuidanceInterval::parse("0,inf").unwrap(), GuidanceInterval::Between(0.0, f64::INFINITY));
    assert_eq!(GuidanceInterval::parse(udit::guidance::PAPER_INTERVAL).unwrap(), GuidanceInterval::Between(0.34, 1.02));
    let i = GuidanceInterval::Between(0.34, 1.02);
    assert!(!i.contains(0.34) && i.contains(0.35) && i.contains(1.02) && !i.contains(1.03), "(lo, hi]");
    for bad in ["1.5", "2,1", "-1,2", "a,b", "nan,1"] {
        assert!(GuidanceInterval::parse(bad).is_err(), "{bad}");
    }
    let (ok, _, err) = udit(&["sample", "--guidance-interval", "2,1", "--num-samples", "1"]);
    assert!(!ok && err.trim().lines().count() == 1 && err.contains("0 <= LO <= HI"), "{err}");
    let (ok, _, err) = udit(&[
        "sample",
        "--ckpt",
        "assets/fashion-mnist-udit-diffusion.safetensors",
        "--sampler",
        "ancestral",
        "--schedule",
        "karras",
        "--num-samples",
        "1",
    ]);
    assert!(!ok && err.trim().lines().count() == 1 && err.contains("applies to ddim"), "{err}");
    let (ok, _, err) = udit(&[
        "sample",
        "--ckpt",
        "assets/fashion-mnist-udit-diffusion.safetensors",
        "--sampler",
        "unipc",
        "--schedule",
        "cosine",
        "--num-samples",
        "1",
    ]);
    assert!(!ok && err.trim().lines().count() == 1 && err.contains("unknown schedule"), "{err}");
}

/// `--precision` reaches the sampler: the precision set on the calling thread holds on the
/// worker threads that `generate` runs on (the products in bf16 move a few pixels, not more).
#[test]
fn sampling_runs_in_the_callers_precision() {
    let s = setup();
    let g = generator(&s, Sampler::Ddim { eta: 0.0 }, 10, 1.5, Classes::Listed(vec![1, 2]));
    let f32_images = g.generate(0, 2, &mut |_| Ok(())).unwrap();
    let bf16_images = {
        let _autocast = udit::precision::autocast(udit::precision::Precision::Bf16);
        g.generate(0, 2, &mut |_| Ok(())).unwrap()
    };
    let (differ, max) = (f32_images.pixels != bf16_images.pixels, max_diff(&f32_images, &bf16_images));
    eprintln!("bf16 vs f32 samples: largest pixel difference {max}");
    assert!(differ && max <= 16, "bf16 samples: differ {differ}, largest difference {max}");
}
