//! The KL autoencoder against the diffusers reference (`vae_tiny`).

mod common;

use burn::prelude::*;
use common::*;
use udit::vae::Vae;

#[test]
fn vae_tiny_encode_and_decode_match_diffusers() {
    let _autodiff = common::autodiff_alone();
    for dev in [Device::flex(), Device::flex().autodiff()] {
        let vae = Vae::load(&fixture("vae_tiny"), &dev).unwrap();
        assert_eq!(vae.config.scaling_factor, 0.18215);
        let io = io("vae_tiny.io.safetensors");
        let posterior = vae.model.encode(float(&io["image"], &dev));
        assert_close("posterior_mean", &posterior.mean.into_data(), &io["posterior_mean"], 1e-4);
        assert_close("posterior_logvar", &posterior.logvar.into_data(), &io["posterior_logvar"], 1e-4);
        let decoded = vae.model.decode(float(&io["latent"], &dev));
        assert_close("decoded", &decoded.into_data(), &io["decoded"], 1e-4);
    }
}

#[test]
fn vae_directory_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let err = |d: &std::path::Path| format!("{:#}", Vae::load(d, &Device::flex()).err().unwrap());
    assert!(err(dir.path()).contains("no config.json"));
    std::fs::copy(fixture("vae_tiny/config.json"), dir.path().join("config.json")).unwrap();
    assert!(err(dir.path()).contains("no diffusion_pytorch_model.safetensors"));
    std::fs::copy(fixture("udit_tiny.weights.safetensors"), dir.path().join("diffusion_pytorch_model.safetensors"))
        .unwrap();
    assert!(err(dir.path()).contains("do not fit"));
}
