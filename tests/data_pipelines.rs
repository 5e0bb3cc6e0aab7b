//! The training data pipelines on small generated inputs: the ADM center crop, an
//! ImageNet-layout folder, both latent layouts, Fashion-MNIST as a dataset, batch order.

use std::path::Path;

use udit::data::fashion_mnist::{DEFAULT_DIR, FashionMnist, Split};
use udit::data::image_folder::{ImageFolder, center_crop_arr};
use udit::data::latents::{LatentWriter, Latents};
use udit::data::{Dataset, Space, batch_indices, read_batch};

#[test]
fn center_crop_halves_with_a_box_filter_then_crops_the_middle() {
    // 8x4 RGB, value = x + 10 y in every channel. Short side 4 >= 2 * 2: one box halving to
    // 4x2 (2x2 means), then bicubic at scale 1 (identity), then the middle 2 columns.
    let (w, h) = (8, 4);
    let img: Vec<f32> = (0..w * h * 3).map(|i| ((i / 3) % w + 10 * (i / 3 / w)) as f32).collect();
    let out = center_crop_arr(img, w, h, 2);
    let at = |x: usize, y: usize| out[(y * 2 + x) * 3];
    // Halved pixel (X, Y) averages x in {2X, 2X+1}, y in {2Y, 2Y+1}: 2X + 0.5 + 10 (2Y + 0.5),
    // rounded to 8 bits; the crop keeps X in {1, 2}.
    assert_eq!([at(0, 0), at(1, 0), at(0, 1), at(1, 1)], [8.0, 10.0, 28.0, 30.0]);
    assert_eq!(out.len(), 2 * 2 * 3);
    // A flat image stays flat through the bicubic resize (weights are normalised).
    let flat = center_crop_arr(vec![77.0; 45 * 30 * 3], 45, 30, 16);
    assert!(flat.iter().all(|&v| v == 77.0));
    assert_eq!(flat.len(), 16 * 16 * 3);
}

fn write_png(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)));
    img.save(path).unwrap();
}

#[test]
fn image_folder_reads_the_imagenet_layout() {
    let tmp = tempfile::tempdir().unwrap();
    for (class, color) in [("n01", [255u8, 0, 0]), ("n02", [0, 0, 255])] {
        std::fs::create_dir(tmp.path().join(class)).unwrap();
        // A left half of `color` and a black right half, in an odd size.
        write_png(&tmp.path().join(class).join("a.png"), 50, 34, |x, _| if x < 25 { color } else { [0; 3] });
    }
    std::fs::write(tmp.path().join("n01").join("notes.txt"), "not an image").unwrap();
    let data = ImageFolder::open(tmp.path(), 16).unwrap();
    assert_eq!((data.len(), data.num_classes(), data.shape(), data.space()), (2, 2, [3, 16, 16], Space::Pixels));
    assert_eq!(data.classes, ["n01", "n02"]);
    let mut x = vec![0f32; 3 * 256];
    assert_eq!(data.read(1, false, &mut x).unwrap(), 1);
    // Blue channel: +1 on the left edge, -1 on the right; red is -1 everywhere.
    let (red, blue) = (&x[..256], &x[512..]);
    assert!(red.iter().all(|&v| v == -1.0));
    assert_eq!((blue[0], blue[15]), (1.0, -1.0));
    let mut flipped = vec![0f32; 3 * 256];
    data.read(1, true, &mut flipped).unwrap();
    for row in 0..48 {
        let (a, b) = (&x[row * 16..row * 16 + 16], &flipped[row * 16..row * 16 + 16]);
        assert!(a.iter().rev().zip(b).all(|(p, q)| p == q), "flip mirrors every row");
    }
    assert!(ImageFolder::open(&tmp.path().join("n01"), 16).is_err(), "a folder without class folders");
}

#[test]
fn packed_latents_round_trip_and_are_numpy_readable() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = LatentWriter::create(tmp.path(), 3, [2, 2, 2]).unwrap();
    let values: Vec<f32> = (0..24).map(|i| i as f32 * 0.25 - 3.0).collect(); // exact in f16
    w.push(&values[..16], &[4, 1]).unwrap();
    assert!(Latents::open(tmp.path()).is_err(), "nothing is readable before finish");
    w.push(&values[16..], &[2]).unwrap();
    w.finish().unwrap();
    let data = Latents::open(tmp.path()).unwrap();
    assert_eq!((data.len(), data.num_classes(), data.shape(), data.space()), (3, 5, [2, 2, 2], Space::Model));
    let mut x = vec![0f32; 8];
    assert_eq!(data.read(2, false, &mut x).unwrap(), 2);
    assert_eq!(x, values[16..]);
    data.read(0, true, &mut x).unwrap();
    assert_eq!(x, [-2.75, -3.0, -2.25, -2.5, -1.75, -2.0, -1.25, -1.5]);
    // Standard .npy: npyz (numpy's format) reads the same numbers.
    let bytes = std::fs::read(tmp.path().join("latents.npy")).unwrap();
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    assert_eq!(npy.shape(), &[3, 2, 2, 2]);
    let all: Vec<f32> = npy.into_vec::<half::f16>().unwrap().into_iter().map(f32::from).collect();
    assert_eq!(all, values);
    // A truncated file is an error, not garbage.
    let path = tmp.path().join("latents.npy");
    std::fs::write(&path, &bytes[..bytes.len() - 2]).unwrap();
    assert!(Latents::open(tmp.path()).is_err());
}

fn write_npy<T: npyz::Serialize + npyz::AutoSerialize + Copy>(path: &Path, shape: &[u64], values: &[T]) {
    let mut out = Vec::new();
    use npyz::WriterBuilder;
    let mut w = npyz::WriteOptions::<T>::new().default_dtype().shape(shape).writer(&mut out).begin_nd().unwrap();
    w.extend(values.iter().copied()).unwrap();
    w.finish().unwrap();
    std::fs::write(path, out).unwrap();
}

#[test]
fn reference_latent_folders_are_read_in_numeric_order() {
    let tmp = tempfile::tempdir().unwrap();
    let (f, l) = (tmp.path().join("imagenet256_features"), tmp.path().join("imagenet256_labels"));
    std::fs::create_dir(&f).unwrap();
    std::fs::create_dir(&l).unwrap();
    for k in 0..12u64 {
        let v: Vec<f32> = (0..8).map(|i| (k * 10 + i) as f32).collect();
        write_npy(&f.join(format!("{k}.npy")), &[1, 2, 2, 2], &v);
        write_npy(&l.join(format!("{k}.npy")), &[1], &[k as i64 % 4]);
    }
    let data = Latents::open(tmp.path()).unwrap();
    assert_eq!((data.len(), data.num_classes(), data.shape()), (12, 4, [2, 2, 2]));
    let mut x = vec![0f32; 8];
    // Index 10 is file 10.npy (not the lexicographic tenth, 9.npy... or 2.npy).
    assert_eq!(data.read(10, false, &mut x).unwrap(), 2);
    assert_eq!(x[0], 100.0);
}

#[test]
fn fashion_mnist_is_a_pixel_dataset() {
    let data = FashionMnist::load(Path::new(DEFAULT_DIR), Split::Test).unwrap();
    assert_eq!((data.num_classes(), data.shape(), data.space()), (10, [1, 32, 32], Space::Pixels));
    let mut x = vec![0f32; 1024];
    assert_eq!(data.read(0, false, &mut x).unwrap(), data.labels[0] as usize);
    assert!(x.iter().all(|&v| (-1.0..=1.0).contains(&v)));
    assert_eq!(x[0], -1.0, "the padding is background");
    let expected = data.images[5 * 28 + 7] as f32 / 127.5 - 1.0; // row 5, column 7 of the 28x28
    assert_eq!(x[(5 + 2) * 32 + 7 + 2], expected);
}

#[test]
fn batches_walk_seeded_epoch_permutations() {
    let (n, b) = (10, 4);
    let steps: Vec<usize> = (0..5).flat_map(|s| batch_indices(n, 3, s, b)).collect();
    for epoch in steps.chunks(n) {
        let mut e = epoch.to_vec();
        e.sort();
        assert_eq!(e, (0..n).collect::<Vec<_>>(), "each epoch visits every sample once");
    }
    assert_ne!(steps[..n], steps[n..2 * n], "epochs are shuffled differently");
    assert_eq!(batch_indices(n, 3, 2, b), steps[8..12], "a step's batch does not depend on history");
    assert_ne!(batch_indices(n, 4, 0, b), steps[..4], "the seed changes the order");
    // read_batch gives the same batch twice and flips about half the samples.
    let data = FashionMnist::load(Path::new(DEFAULT_DIR), Split::Test).unwrap();
    let (a, c) = (read_batch(&data, 1, 7, 64, true).unwrap(), read_batch(&data, 1, 7, 64, true).unwrap());
    assert_eq!(a.x, c.x);
    assert_eq!(a.shape, [64, 1, 32, 32]);
    let plain = read_batch(&data, 1, 7, 64, false).unwrap();
    let flipped = (0..64).filter(|i| a.x[i * 1024..(i + 1) * 1024] != plain.x[i * 1024..(i + 1) * 1024]).count();
    assert!((16..=48).contains(&flipped), "{flipped} of 64 flipped");
}
