//! The FID Inception against pytorch-fid (coarse random weights in the real key layout).

mod common;

use burn::prelude::*;
use common::*;
use udit::eval::inception::{InceptionV3, preprocess};

#[test]
fn inception_features_match_pytorch_fid() {
    let dev = Device::flex();
    let io = io("inception_fid_coarse.io.safetensors");
    // The u8 images, read back from their f32 copy.
    let images: Vec<u8> = io["images_nhwc_u8"].as_slice::<f32>().unwrap().iter().map(|&v| v as u8).collect();
    let x = preprocess(&images, 2, 64, 48, &dev).unwrap();
    assert_close("input_299", &x.to_data(), &io["input_299"], 1e-5);
    let net = InceptionV3::load(&fixture("inception_fid_coarse.weights.safetensors"), &dev).unwrap();
    let f = net.forward(x);
    assert_close("pool3", &f.pool3.into_data(), &io["pool3"], 1e-4);
    assert_close("spatial", &f.spatial.into_data(), &io["spatial"], 1e-4);
    assert_close("logits", &f.logits.into_data(), &io["logits"], 1e-4);
}

#[test]
fn a_missing_or_wrong_inception_file_is_a_clear_error() {
    let dev = Device::flex();
    let e =
        format!("{:#}", InceptionV3::load(std::path::Path::new("/nonexistent/pt_inception.pth"), &dev).err().unwrap());
    assert!(e.contains("FID Inception weights") && e.contains("cannot open"), "{e}");
    let e = format!("{:#}", InceptionV3::load(&fixture("udit_tiny.weights.safetensors"), &dev).err().unwrap());
    assert!(e.contains("is not the FID Inception"), "{e}");
}
