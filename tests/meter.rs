//! The Fashion-MNIST pipeline and the offline classifier meter, end to end on a few hundred
//! images (Debian's dataset-fashion-mnist; `.ci/run` installs it).

use burn::prelude::*;
use udit::data::fashion_mnist::{DEFAULT_DIR, FashionMnist, SIDE, Split};
use udit::eval::classifier::{Classifier, accuracy, meter, train};
use udit::io::Images;

fn data(split: Split) -> FashionMnist {
    FashionMnist::load(std::path::Path::new(DEFAULT_DIR), split).expect("Debian's dataset-fashion-mnist is installed")
}

#[test]
fn fashion_mnist_loads_and_pads() {
    let (train, test) = (data(Split::Train), data(Split::Test));
    assert_eq!((train.len(), test.len()), (60000, 10000));
    let mut counts = [0usize; 10];
    test.labels.iter().for_each(|&l| counts[l as usize] += 1);
    assert_eq!(counts, [1000; 10], "the test split is balanced");
    let padded = test.padded(&[0, 1]);
    assert_eq!(padded.len(), 2 * SIDE * SIDE);
    // The 2-pixel border is background; the garment is inside.
    assert!(padded[..2 * SIDE].iter().all(|&p| p == 0));
    assert_eq!(&padded[2 * SIDE + 2..2 * SIDE + 30], &test.images[..28]);
    let (x, y) = test.batch(&[0, 1], &Device::flex());
    assert_eq!(x.dims(), [2, 1, 32, 32]);
    assert_eq!(
        y.into_data().convert::<i64>().as_slice::<i64>().unwrap(),
        &[test.labels[0] as i64, test.labels[1] as i64]
    );
    let e = FashionMnist::load(std::path::Path::new("/nonexistent"), Split::Test).err().unwrap();
    assert!(format!("{e:#}").contains("dataset-fashion-mnist"));
}

#[test]
fn classifier_meter_end_to_end_on_a_few_hundred_images() {
    let dev = Device::flex();
    let (train_set, test) = (data(Split::Train), data(Split::Test));
    let mut epochs_seen = 0;
    let (model, acc) =
        train(&train_set, &test, 2, Some(600), 1, &dev, &mut |_, _| epochs_seen += 1, &mut || {}).unwrap();
    assert_eq!(epochs_seen, 2);
    assert!(acc > 0.4, "600 images and 2 epochs should reach well above chance (10%), got {acc}");
    assert_eq!(accuracy(&model, &test, &dev), acc);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.safetensors");
    model.save(&path).unwrap();
    let model = Classifier::load(&path, &dev).unwrap();

    // Real test images with their true labels as "samples": class accuracy is the
    // classifier's accuracy on them, FID against the test split is small.
    let idx: Vec<usize> = (0..300).collect();
    let real = Images {
        pixels: test.padded(&idx),
        labels: idx.iter().map(|&i| test.labels[i] as i64).collect(),
        side: 32,
        channels: 1,
    };
    let s = meter(&model, &real, &test, &dev).unwrap();
    let expected = {
        let sub = FashionMnist { images: test.images[..300 * 784].to_vec(), labels: test.labels[..300].to_vec() };
        accuracy(&model, &sub, &dev)
    };
    assert!((s.class_accuracy - expected).abs() < 1e-12);
    // Noise images: far from the data, and not their "requested" class more than by chance.
    let noise = Images {
        pixels: (0..300 * 1024).map(|i| ((i * 7919) % 251) as u8).collect(),
        labels: real.labels.clone(),
        side: 32,
        channels: 1,
    };
    let n = meter(&model, &noise, &test, &dev).unwrap();
    assert!(n.fid > 10.0 * s.fid.max(1e-3), "noise FID {} vs real FID {}", n.fid, s.fid);
    assert!(n.class_accuracy < 0.3);
    let wrong = Images { pixels: vec![0; 4 * 64 * 64 * 3], labels: vec![0; 4], side: 64, channels: 3 };
    assert!(meter(&model, &wrong, &test, &dev).is_err());
}
