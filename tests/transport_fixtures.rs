//! The interpolant process against `transport.io.safetensors`, golden outputs of SiT's
//! `transport/` package (paths, conversions, losses, intervals) and of its ODE and SDE samplers
//! (with torchdiffeq 0.2.5) on an analytic network.

mod common;

use burn::prelude::*;
use burn::tensor::TensorData;
use common::{assert_close, float, io};
use udit::checkpoint::StateDict;
use udit::transport::integrators::{OdeMethod, SdeMethod};
use udit::transport::likelihood::{Likelihood, network_vjp};
use udit::transport::path::combine;
use udit::transport::sampling::{LastStep, TransportSampler};
use udit::transport::{DiffusionForm, Integration, LossWeight, PathType, Prediction, Transport};

const TOL: f32 = 1e-4;
const PATHS: [(&str, PathType); 3] = [("Linear", PathType::Linear), ("GVP", PathType::Gvp), ("VP", PathType::Vp)];
const PREDICTIONS: [(&str, Prediction); 3] =
    [("velocity", Prediction::Velocity), ("score", Prediction::Score), ("noise", Prediction::Noise)];

fn fixture() -> StateDict {
    io("transport.io.safetensors")
}

fn values(d: &TensorData) -> Vec<f64> {
    d.as_slice::<f32>().unwrap().iter().map(|&v| v as f64).collect()
}

fn per_time(t: &[f64], f: impl Fn(f64) -> f64) -> TensorData {
    TensorData::new(t.iter().map(|&t| f(t) as f32).collect::<Vec<_>>(), [t.len()])
}

#[test]
fn paths_match_the_reference() {
    let (f, dev) = (fixture(), Device::flex());
    let t = values(&f["t"]);
    let [x0, x1, xq, out]: [Tensor<4>; 4] = ["x0", "x1", "xq", "model_out"].map(|k| float(&f[k], &dev));
    for (name, path) in PATHS {
        let transport = Transport::new(path, Prediction::Velocity, LossWeight::None, None, None);
        let (xt, ut) = transport.plan(&t, x0.clone(), x1.clone());
        // The exact velocity points at the data (what previews show), on every path.
        let data = transport.data_prediction(ut.clone(), xt.clone(), &t);
        assert_close(&format!("{name} data from u_t"), &data.into_data(), &x1.clone().into_data(), 1e-5);
        assert_close(&format!("{name}.xt"), &xt.into_data(), &f[&format!("{name}.xt")], TOL);
        assert_close(&format!("{name}.ut"), &ut.into_data(), &f[&format!("{name}.ut")], TOL);
        assert_close(&format!("{name}.alpha"), &per_time(&t, |t| path.alpha(t).0), &f[&format!("{name}.alpha")], TOL);
        assert_close(&format!("{name}.sigma"), &per_time(&t, |t| path.sigma(t).0), &f[&format!("{name}.sigma")], TOL);
        let drift_mean = xq.clone() * udit::transport::path::per_sample(&t, |t| path.drift(t).0, &dev);
        assert_close(&format!("{name}.drift_mean"), &drift_mean.into_data(), &f[&format!("{name}.drift_mean")], TOL);
        let var = per_time(&t, |t| path.drift(t).1);
        assert_close(&format!("{name}.drift_var"), &var, &f[&format!("{name}.drift_var")], TOL);
        for (form_name, form) in [
            ("constant", DiffusionForm::Constant),
            ("SBDM", DiffusionForm::Sbdm),
            ("sigma", DiffusionForm::Sigma),
            ("linear", DiffusionForm::Linear),
            ("decreasing", DiffusionForm::Decreasing),
        ] {
            let key = format!("{name}.diffusion.{form_name}");
            assert_close(&key, &per_time(&t, |t| path.diffusion(form, 1.0, t)), &f[&key], TOL);
        }
        let conversions: [(&str, fn(&PathType, f64) -> (f64, f64)); 3] = [
            ("score_from_velocity", PathType::score_from_velocity),
            ("noise_from_velocity", PathType::noise_from_velocity),
            ("velocity_from_score", PathType::velocity_from_score),
        ];
        for (conversion, ab) in conversions {
            let ours = combine(out.clone(), xq.clone(), &t, |t| ab(&path, t));
            let key = format!("{name}.{conversion}");
            assert_close(&key, &ours.into_data(), &f[&key], TOL);
        }
    }
}

#[test]
fn training_losses_match_the_reference_for_every_path_prediction_and_weight() {
    let (f, dev) = (fixture(), Device::flex());
    let t = values(&f["t"]);
    let [x0, x1, out]: [Tensor<4>; 3] = ["x0", "x1", "model_out"].map(|k| float(&f[k], &dev));
    for (path_name, path) in PATHS {
        for (pred_name, prediction) in PREDICTIONS {
            for (weight_name, weight) in
                [("none", LossWeight::None), ("velocity", LossWeight::Velocity), ("likelihood", LossWeight::Likelihood)]
            {
                let transport = Transport::new(path, prediction, weight, None, None);
                let loss = transport.training_loss(out.clone(), &t, x0.clone(), x1.clone());
                let key = format!("loss.{path_name}.{pred_name}.{weight_name}");
                assert_close(&key, &loss.into_data(), &f[&key], TOL);
            }
        }
    }
}

#[test]
fn intervals_match_check_interval() {
    let f = fixture();
    let sde = Integration::Sde { form: DiffusionForm::Sigma, last_step_size: 0.04 };
    for (path_name, path) in PATHS {
        for (pred_name, prediction) in PREDICTIONS {
            let transport = Transport::new(path, prediction, LossWeight::None, None, None);
            for (kind, sampling) in [("train", None), ("ode", Some(Integration::Ode)), ("sde", Some(sde))] {
                let key = format!("interval.{kind}.{path_name}.{pred_name}");
                let (t0, t1) = transport.interval(sampling, false);
                let expected = values(&f[&key]);
                assert!(
                    (t0 - expected[0]).abs() < 1e-7 && (t1 - expected[1]).abs() < 1e-7, // the f64 values read as f32
                    "{key}: ours ({t0}, {t1}), reference {expected:?}"
                );
            }
        }
    }
}

/// The reference's analytic network f(x, t, y) = 0.8 tanh(x) - 0.5 t x + 0.1 (y + 1), counting
/// its calls.
struct Analytic {
    y: Tensor<4>,
    calls: usize,
}

impl Analytic {
    fn new(f: &StateDict, dev: &Device) -> Self {
        let y: Vec<f32> = f["sampler.y"].as_slice::<f32>().unwrap().to_vec();
        let n = y.len();
        Self { y: Tensor::<1>::from_floats(y.as_slice(), dev).reshape([n, 1, 1, 1]), calls: 0 }
    }

    fn call(&mut self, x: Tensor<4>, t: Tensor<1>) -> Tensor<4> {
        self.calls += 1;
        let n = x.dims()[0];
        x.clone().tanh() * 0.8 - x * t.reshape([n, 1, 1, 1]) * 0.5 + (self.y.clone() + 1.0) * 0.1
    }
}

fn run(f: &StateDict, transport: &Transport, sampler: &TransportSampler, noise: Option<&str>) -> (TensorData, usize) {
    let dev = Device::flex();
    let mut network = Analytic::new(f, &dev);
    let init: Tensor<4> = float(&f["sampler.init"], &dev);
    let mut draws = noise.map(|key| float::<5>(&f[key], &dev)).into_iter().flat_map(|all| {
        let [k, n, c, h, w] = all.dims();
        (0..k).map(move |i| all.clone().narrow(0, i, 1).reshape([n, c, h, w]))
    });
    let mut next_noise = || draws.next().expect("the reference drew as many");
    let out = sampler.run(transport, &mut |x, t| network.call(x, t), init, &mut next_noise, &mut |_| Ok(())).unwrap();
    assert!(draws.next().is_none(), "fewer draws than the reference");
    (out.into_data(), network.calls)
}

fn nfe(f: &StateDict, key: &str) -> usize {
    f[key].as_slice::<f32>().unwrap()[0] as usize
}

#[test]
fn ode_samplers_match_torchdiffeq_with_the_same_calls() {
    let f = fixture();
    let dopri5 = OdeMethod::Dopri5 { atol: 1e-6, rtol: 1e-3 };
    let cases = [
        ("linear_velocity_euler50", PathType::Linear, Prediction::Velocity, OdeMethod::Euler, 50, false),
        ("linear_velocity_heun2_25", PathType::Linear, Prediction::Velocity, OdeMethod::Heun2, 25, false),
        ("linear_velocity_rk4_10", PathType::Linear, Prediction::Velocity, OdeMethod::Rk4, 10, false),
        ("linear_velocity_dopri5", PathType::Linear, Prediction::Velocity, dopri5, 50, false),
        ("linear_velocity_dopri5_reverse", PathType::Linear, Prediction::Velocity, dopri5, 50, true),
        ("gvp_velocity_euler50", PathType::Gvp, Prediction::Velocity, OdeMethod::Euler, 50, false),
        ("vp_velocity_euler50", PathType::Vp, Prediction::Velocity, OdeMethod::Euler, 50, false),
        ("linear_noise_euler50", PathType::Linear, Prediction::Noise, OdeMethod::Euler, 50, false),
        ("linear_score_heun2_25", PathType::Linear, Prediction::Score, OdeMethod::Heun2, 25, false),
    ];
    for (name, path, prediction, method, num_steps, reverse) in cases {
        let transport = Transport::new(path, prediction, LossWeight::None, None, None);
        let sampler = TransportSampler::Ode { method, num_steps, reverse };
        let (out, calls) = run(&f, &transport, &sampler, None);
        assert_close(name, &out, &f[&format!("ode.{name}.out")], TOL);
        assert_eq!(calls, nfe(&f, &format!("ode.{name}.nfe")), "{name}: network calls");
        if let Some(planned) = sampler.call_times(&transport) {
            assert_eq!(calls, planned.len(), "{name}: calls announced before the run");
        }
    }
}

#[test]
fn sde_samplers_match_the_reference_with_one_call_per_drift() {
    let f = fixture();
    let cases = [
        (
            "linear_velocity_euler_sigma_mean",
            PathType::Linear,
            Prediction::Velocity,
            SdeMethod::Euler,
            DiffusionForm::Sigma,
            LastStep::Mean,
        ),
        (
            "linear_velocity_heun_sigma_euler",
            PathType::Linear,
            Prediction::Velocity,
            SdeMethod::Heun,
            DiffusionForm::Sigma,
            LastStep::Euler,
        ),
        (
            "linear_velocity_euler_linear_none",
            PathType::Linear,
            Prediction::Velocity,
            SdeMethod::Euler,
            DiffusionForm::Linear,
            LastStep::None,
        ),
        (
            "linear_noise_euler_sbdm_tweedie",
            PathType::Linear,
            Prediction::Noise,
            SdeMethod::Euler,
            DiffusionForm::Sbdm,
            LastStep::Tweedie,
        ),
        (
            "gvp_noise_euler_sbdm_mean",
            PathType::Gvp,
            Prediction::Noise,
            SdeMethod::Euler,
            DiffusionForm::Sbdm,
            LastStep::Mean,
        ),
        (
            "vp_velocity_euler_sigma_mean",
            PathType::Vp,
            Prediction::Velocity,
            SdeMethod::Euler,
            DiffusionForm::Sigma,
            LastStep::Mean,
        ),
    ];
    for (name, path, prediction, method, form, last_step) in cases {
        let transport = Transport::new(path, prediction, LossWeight::None, None, None);
        let sampler = TransportSampler::Sde { method, form, norm: 1.0, last_step, last_step_size: 0.04, num_steps: 20 };
        let (out, calls) = run(&f, &transport, &sampler, Some(&format!("sde.{name}.noise")));
        assert_close(name, &out, &f[&format!("sde.{name}.out")], TOL);
        assert_eq!(Some(calls), sampler.call_times(&transport).map(|t| t.len()), "{name}: calls announced");
        // The reference calls the network twice per drift (velocity, then score): every step's
        // drift and the Mean last step cost it two calls, the Euler and Tweedie last steps one.
        let drifts = calls - usize::from(last_step != LastStep::None);
        let reference = 2 * drifts
            + match last_step {
                LastStep::Mean => 2,
                LastStep::Euler | LastStep::Tweedie => 1,
                LastStep::None => 0,
            };
        assert_eq!(reference, nfe(&f, &format!("sde.{name}.nfe")), "{name}: the reference's calls");
    }
}

#[test]
fn the_sampling_margins_follow_create_transport() {
    // Velocity on Linear and GVP is stable everywhere: no margins, whatever is asked.
    let v = Transport::new(PathType::Linear, Prediction::Velocity, LossWeight::None, Some(0.1), Some(0.2));
    assert_eq!((v.train_eps, v.sample_eps), (0.0, 0.0));
    // VP defaults 1e-5 / 1e-3; a sample_eps given without train_eps is ignored, as there.
    let vp = Transport::new(PathType::Vp, Prediction::Velocity, LossWeight::None, None, Some(0.5));
    assert_eq!((vp.train_eps, vp.sample_eps), (1e-5, 1e-3));
    let vp = Transport::new(PathType::Vp, Prediction::Velocity, LossWeight::None, Some(0.01), Some(0.02));
    assert_eq!((vp.train_eps, vp.sample_eps), (0.01, 0.02));
    let noise = Transport::new(PathType::Gvp, Prediction::Noise, LossWeight::None, None, None);
    assert_eq!((noise.train_eps, noise.sample_eps), (1e-3, 1e-3));
    // Reversed intervals mirror both ends.
    let (t0, t1) = noise.interval(Some(Integration::Ode), true);
    assert!((t0 - 0.999).abs() < 1e-12 && (t1 - 0.001).abs() < 1e-12, "({t0}, {t1})");
}

#[test]
fn bad_sampler_settings_are_refused_before_any_call() {
    let f = fixture();
    let transport = Transport::sit();
    let bad = [
        TransportSampler::Ode { method: OdeMethod::Euler, num_steps: 1, reverse: false },
        TransportSampler::Ode { method: OdeMethod::Dopri5 { atol: 0.0, rtol: 1e-3 }, num_steps: 2, reverse: false },
        TransportSampler::Sde {
            method: SdeMethod::Euler,
            form: DiffusionForm::Sigma,
            norm: 1.0,
            last_step: LastStep::Mean,
            last_step_size: 1.5,
            num_steps: 20,
        },
    ];
    for sampler in bad {
        let dev = Device::flex();
        let mut network = Analytic::new(&f, &dev);
        let init: Tensor<4> = float(&f["sampler.init"], &dev);
        let err = sampler
            .run(&transport, &mut |x, t| network.call(x, t), init, &mut || unreachable!(), &mut |_| Ok(()))
            .unwrap_err();
        assert_eq!(network.calls, 0, "{sampler:?}: {err}");
    }
}

/// Hutchinson's likelihood on the analytic network, fed the reference's own probes: log p and
/// the noise end for Euler over 20 points and dopri5, one probe per evaluation as there.
#[test]
fn the_likelihood_ode_matches_the_reference_with_its_probes() {
    let _autodiff = common::autodiff_alone();
    let f = fixture();
    let inner = Device::flex();
    let autodiff = inner.clone().autodiff();
    let transport = Transport::sit();
    let x: Tensor<4> = float(&f["sampler.init"], &inner);
    for (name, method) in [("euler", OdeMethod::Euler), ("dopri5", OdeMethod::Dopri5 { atol: 1e-6, rtol: 1e-3 })] {
        let mut network = Analytic::new(&f, &autodiff);
        let probes = float::<5>(&f[&format!("likelihood.{name}.probes")], &inner);
        let [k, n, c, h, w] = probes.dims();
        let mut drawn = (0..k).map(|i| probes.clone().narrow(0, i, 1).reshape([n, c, h, w]) * 2.0 - 1.0);
        let mut next_probe = || drawn.next().expect("the reference drew as many probes");
        let likelihood = Likelihood { method, num_steps: 20 };
        let mut vjp = |x, t, eps| Ok(network_vjp(&transport, &mut |x, t| network.call(x, t), &autodiff, x, t, eps));
        let out = likelihood.run(&transport, &mut vjp, x.clone(), &mut next_probe).unwrap();
        assert!(drawn.next().is_none(), "{name}: fewer evaluations than the reference");
        assert_eq!(network.calls, k, "{name}: one forward pass per evaluation");
        let logp = TensorData::new(out.logp.iter().map(|&v| v as f32).collect::<Vec<_>>(), [n]);
        assert_close(&format!("{name} logp"), &logp, &f[&format!("likelihood.{name}.logp")], TOL);
        assert_close(&format!("{name} z"), &out.z.into_data(), &f[&format!("likelihood.{name}.z")], TOL);
    }
}
