//! InceptionV3 as FID uses it: the TensorFlow 2015-12-05 graph ported by pytorch-fid
//! (`pt_inception-2015-12-05-6726825d.pth`, `FIDInceptionA/C/E_1/E_2` blocks, 1008-way `fc`).
//! Outputs the 2048-d pool features (FID, precision, recall), ADM's spatial features (the
//! first 7 channels of `Mixed_6c.branch1x1`, TF's `mixed_6/conv`, for sFID) and the logits
//! (Inception Score).

#![allow(non_snake_case)]

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::module::{Module, Param};
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::relu;
use burn::tensor::module::{avg_pool2d, conv2d, max_pool2d};
use burn::tensor::ops::{AvgPoolOptions, ConvOptions, MaxPoolOptions};

use crate::model::layers::{Init, Linear};

/// pytorch-fid's FID Inception weights: `given`, else `$UDIT_INCEPTION`, else its release's
/// file name in the current directory.
pub fn weights_path(given: Option<&Path>) -> std::path::PathBuf {
    given
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("UDIT_INCEPTION").map(Into::into))
        .unwrap_or_else(|| "pt_inception-2015-12-05-6726825d.pth".into())
}

/// Conv without bias, BatchNorm (eps 1e-3, running statistics), ReLU.
#[derive(Module, Debug)]
pub struct BasicConv2d {
    pub conv: ConvWeight,
    pub bn: BatchNorm,
    pub stride: usize,
    pub padding: [usize; 2],
}

#[derive(Module, Debug)]
pub struct ConvWeight {
    pub weight: Param<Tensor<4>>,
}

#[derive(Module, Debug)]
pub struct BatchNorm {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
    pub running_mean: Param<Tensor<1>>,
    pub running_var: Param<Tensor<1>>,
}

impl BasicConv2d {
    fn new(c_in: usize, c_out: usize, k: [usize; 2], stride: usize, padding: [usize; 2], device: &Device) -> Self {
        let p = |v: f32| Param::from_tensor(Tensor::full([c_out], v, device));
        let fan = c_in * k[0] * k[1];
        let w = Tensor::random(
            [c_out, c_in, k[0], k[1]],
            burn::tensor::Distribution::Normal(0.0, (1.0 / fan as f64).sqrt()),
            device,
        );
        Self {
            conv: ConvWeight { weight: Param::from_tensor(w) },
            bn: BatchNorm { weight: p(1.0), bias: p(0.0), running_mean: p(0.0), running_var: p(1.0) },
            stride,
            padding,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        // BatchNorm folded into the conv: w * g / sqrt(var + eps), b = beta - mean * that.
        let bn = &self.bn;
        let scale = bn.weight.val() / (bn.running_var.val() + 1e-3).sqrt();
        let bias = bn.bias.val() - bn.running_mean.val() * scale.clone();
        let c = scale.dims()[0];
        let w = self.conv.weight.val() * scale.reshape([c, 1, 1, 1]);
        let options = ConvOptions::new([self.stride; 2], self.padding, [1, 1], 1);
        relu(conv2d(x, w, Some(bias), options))
    }
}

fn max_pool(x: Tensor<4>, stride: usize, padding: usize) -> Tensor<4> {
    let options = MaxPoolOptions {
        kernel_size: [3, 3],
        stride: [stride; 2],
        padding: [(padding, padding); 2],
        dilation: [1, 1],
        ceil_mode: false,
    };
    max_pool2d(x, options)
}

/// 3x3 average pool, stride 1, padding 1, padded cells not counted (the FID blocks).
fn avg_pool(x: Tensor<4>) -> Tensor<4> {
    let options = AvgPoolOptions {
        kernel_size: [3, 3],
        stride: [1, 1],
        padding: [(1, 1); 2],
        count_include_pad: false,
        ceil_mode: false,
    };
    avg_pool2d(x, options)
}

/// `FIDInceptionA` (Mixed_5b/c/d).
#[derive(Module, Debug)]
pub struct InceptionA {
    pub branch1x1: BasicConv2d,
    pub branch5x5_1: BasicConv2d,
    pub branch5x5_2: BasicConv2d,
    pub branch3x3dbl_1: BasicConv2d,
    pub branch3x3dbl_2: BasicConv2d,
    pub branch3x3dbl_3: BasicConv2d,
    pub branch_pool: BasicConv2d,
}

impl InceptionA {
    fn new(c: usize, pool: usize, d: &Device) -> Self {
        Self {
            branch1x1: BasicConv2d::new(c, 64, [1, 1], 1, [0, 0], d),
            branch5x5_1: BasicConv2d::new(c, 48, [1, 1], 1, [0, 0], d),
            branch5x5_2: BasicConv2d::new(48, 64, [5, 5], 1, [2, 2], d),
            branch3x3dbl_1: BasicConv2d::new(c, 64, [1, 1], 1, [0, 0], d),
            branch3x3dbl_2: BasicConv2d::new(64, 96, [3, 3], 1, [1, 1], d),
            branch3x3dbl_3: BasicConv2d::new(96, 96, [3, 3], 1, [1, 1], d),
            branch_pool: BasicConv2d::new(c, pool, [1, 1], 1, [0, 0], d),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b1 = self.branch1x1.forward(x.clone());
        let b5 = self.branch5x5_2.forward(self.branch5x5_1.forward(x.clone()));
        let b3 = self.branch3x3dbl_3.forward(self.branch3x3dbl_2.forward(self.branch3x3dbl_1.forward(x.clone())));
        let bp = self.branch_pool.forward(avg_pool(x));
        Tensor::cat(vec![b1, b5, b3, bp], 1)
    }
}

/// `InceptionB` (Mixed_6a): grid reduction 35 -> 17.
#[derive(Module, Debug)]
pub struct InceptionB {
    pub branch3x3: BasicConv2d,
    pub branch3x3dbl_1: BasicConv2d,
    pub branch3x3dbl_2: BasicConv2d,
    pub branch3x3dbl_3: BasicConv2d,
}

impl InceptionB {
    fn new(c: usize, d: &Device) -> Self {
        Self {
            branch3x3: BasicConv2d::new(c, 384, [3, 3], 2, [0, 0], d),
            branch3x3dbl_1: BasicConv2d::new(c, 64, [1, 1], 1, [0, 0], d),
            branch3x3dbl_2: BasicConv2d::new(64, 96, [3, 3], 1, [1, 1], d),
            branch3x3dbl_3: BasicConv2d::new(96, 96, [3, 3], 2, [0, 0], d),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b3 = self.branch3x3.forward(x.clone());
        let bd = self.branch3x3dbl_3.forward(self.branch3x3dbl_2.forward(self.branch3x3dbl_1.forward(x.clone())));
        Tensor::cat(vec![b3, bd, max_pool(x, 2, 0)], 1)
    }
}

/// `FIDInceptionC` (Mixed_6b..e): factorised 7x7 convolutions.
#[derive(Module, Debug)]
pub struct InceptionC {
    pub branch1x1: BasicConv2d,
    pub branch7x7_1: BasicConv2d,
    pub branch7x7_2: BasicConv2d,
    pub branch7x7_3: BasicConv2d,
    pub branch7x7dbl_1: BasicConv2d,
    pub branch7x7dbl_2: BasicConv2d,
    pub branch7x7dbl_3: BasicConv2d,
    pub branch7x7dbl_4: BasicConv2d,
    pub branch7x7dbl_5: BasicConv2d,
    pub branch_pool: BasicConv2d,
}

impl InceptionC {
    fn new(c: usize, c7: usize, d: &Device) -> Self {
        let (row, col) = (([1, 7], [0, 3]), ([7, 1], [3, 0]));
        Self {
            branch1x1: BasicConv2d::new(c, 192, [1, 1], 1, [0, 0], d),
            branch7x7_1: BasicConv2d::new(c, c7, [1, 1], 1, [0, 0], d),
            branch7x7_2: BasicConv2d::new(c7, c7, row.0, 1, row.1, d),
            branch7x7_3: BasicConv2d::new(c7, 192, col.0, 1, col.1, d),
            branch7x7dbl_1: BasicConv2d::new(c, c7, [1, 1], 1, [0, 0], d),
            branch7x7dbl_2: BasicConv2d::new(c7, c7, col.0, 1, col.1, d),
            branch7x7dbl_3: BasicConv2d::new(c7, c7, row.0, 1, row.1, d),
            branch7x7dbl_4: BasicConv2d::new(c7, c7, col.0, 1, col.1, d),
            branch7x7dbl_5: BasicConv2d::new(c7, 192, row.0, 1, row.1, d),
            branch_pool: BasicConv2d::new(c, 192, [1, 1], 1, [0, 0], d),
        }
    }

    /// The block output and its `branch1x1` activation (ADM's spatial features).
    fn forward(&self, x: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let b1 = self.branch1x1.forward(x.clone());
        let b7 = self.branch7x7_3.forward(self.branch7x7_2.forward(self.branch7x7_1.forward(x.clone())));
        let mut bd = self.branch7x7dbl_1.forward(x.clone());
        for conv in [&self.branch7x7dbl_2, &self.branch7x7dbl_3, &self.branch7x7dbl_4, &self.branch7x7dbl_5] {
            bd = conv.forward(bd);
        }
        let bp = self.branch_pool.forward(avg_pool(x));
        (Tensor::cat(vec![b1.clone(), b7, bd, bp], 1), b1)
    }
}

/// `InceptionD` (Mixed_7a): grid reduction 17 -> 8.
#[derive(Module, Debug)]
pub struct InceptionD {
    pub branch3x3_1: BasicConv2d,
    pub branch3x3_2: BasicConv2d,
    pub branch7x7x3_1: BasicConv2d,
    pub branch7x7x3_2: BasicConv2d,
    pub branch7x7x3_3: BasicConv2d,
    pub branch7x7x3_4: BasicConv2d,
}

impl InceptionD {
    fn new(c: usize, d: &Device) -> Self {
        Self {
            branch3x3_1: BasicConv2d::new(c, 192, [1, 1], 1, [0, 0], d),
            branch3x3_2: BasicConv2d::new(192, 320, [3, 3], 2, [0, 0], d),
            branch7x7x3_1: BasicConv2d::new(c, 192, [1, 1], 1, [0, 0], d),
            branch7x7x3_2: BasicConv2d::new(192, 192, [1, 7], 1, [0, 3], d),
            branch7x7x3_3: BasicConv2d::new(192, 192, [7, 1], 1, [3, 0], d),
            branch7x7x3_4: BasicConv2d::new(192, 192, [3, 3], 2, [0, 0], d),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b3 = self.branch3x3_2.forward(self.branch3x3_1.forward(x.clone()));
        let mut b7 = self.branch7x7x3_1.forward(x.clone());
        for conv in [&self.branch7x7x3_2, &self.branch7x7x3_3, &self.branch7x7x3_4] {
            b7 = conv.forward(b7);
        }
        Tensor::cat(vec![b3, b7, max_pool(x, 2, 0)], 1)
    }
}

/// `FIDInceptionE_1` (average pool) and `FIDInceptionE_2` (max pool), Mixed_7b/c.
#[derive(Module, Debug)]
pub struct InceptionE {
    pub branch1x1: BasicConv2d,
    pub branch3x3_1: BasicConv2d,
    pub branch3x3_2a: BasicConv2d,
    pub branch3x3_2b: BasicConv2d,
    pub branch3x3dbl_1: BasicConv2d,
    pub branch3x3dbl_2: BasicConv2d,
    pub branch3x3dbl_3a: BasicConv2d,
    pub branch3x3dbl_3b: BasicConv2d,
    pub branch_pool: BasicConv2d,
    pub max_pool: bool,
}

impl InceptionE {
    fn new(c: usize, max_pool: bool, d: &Device) -> Self {
        Self {
            branch1x1: BasicConv2d::new(c, 320, [1, 1], 1, [0, 0], d),
            branch3x3_1: BasicConv2d::new(c, 384, [1, 1], 1, [0, 0], d),
            branch3x3_2a: BasicConv2d::new(384, 384, [1, 3], 1, [0, 1], d),
            branch3x3_2b: BasicConv2d::new(384, 384, [3, 1], 1, [1, 0], d),
            branch3x3dbl_1: BasicConv2d::new(c, 448, [1, 1], 1, [0, 0], d),
            branch3x3dbl_2: BasicConv2d::new(448, 384, [3, 3], 1, [1, 1], d),
            branch3x3dbl_3a: BasicConv2d::new(384, 384, [1, 3], 1, [0, 1], d),
            branch3x3dbl_3b: BasicConv2d::new(384, 384, [3, 1], 1, [1, 0], d),
            branch_pool: BasicConv2d::new(c, 192, [1, 1], 1, [0, 0], d),
            max_pool,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let b1 = self.branch1x1.forward(x.clone());
        let u = self.branch3x3_1.forward(x.clone());
        let b3 = Tensor::cat(vec![self.branch3x3_2a.forward(u.clone()), self.branch3x3_2b.forward(u)], 1);
        let v = self.branch3x3dbl_2.forward(self.branch3x3dbl_1.forward(x.clone()));
        let bd = Tensor::cat(vec![self.branch3x3dbl_3a.forward(v.clone()), self.branch3x3dbl_3b.forward(v)], 1);
        let pooled = if self.max_pool { max_pool(x, 1, 1) } else { avg_pool(x) };
        Tensor::cat(vec![b1, b3, bd, self.branch_pool.forward(pooled)], 1)
    }
}

/// The FID InceptionV3.
#[derive(Module, Debug)]
pub struct InceptionV3 {
    pub Conv2d_1a_3x3: BasicConv2d,
    pub Conv2d_2a_3x3: BasicConv2d,
    pub Conv2d_2b_3x3: BasicConv2d,
    pub Conv2d_3b_1x1: BasicConv2d,
    pub Conv2d_4a_3x3: BasicConv2d,
    pub Mixed_5b: InceptionA,
    pub Mixed_5c: InceptionA,
    pub Mixed_5d: InceptionA,
    pub Mixed_6a: InceptionB,
    pub Mixed_6b: InceptionC,
    pub Mixed_6c: InceptionC,
    pub Mixed_6d: InceptionC,
    pub Mixed_6e: InceptionC,
    pub Mixed_7a: InceptionD,
    pub Mixed_7b: InceptionE,
    pub Mixed_7c: InceptionE,
    pub fc: Linear,
}

/// What one batch of images gives.
pub struct Features {
    /// `[N, 2048]`.
    pub pool3: Tensor<2>,
    /// `[N, 2023]`: 17 x 17 x 7, in H, W, C order.
    pub spatial: Tensor<2>,
    /// `[N, 1008]`.
    pub logits: Tensor<2>,
}

/// Side of the network input.
pub const INPUT_SIZE: usize = 299;

impl InceptionV3 {
    pub fn new(d: &Device) -> Self {
        Self {
            Conv2d_1a_3x3: BasicConv2d::new(3, 32, [3, 3], 2, [0, 0], d),
            Conv2d_2a_3x3: BasicConv2d::new(32, 32, [3, 3], 1, [0, 0], d),
            Conv2d_2b_3x3: BasicConv2d::new(32, 64, [3, 3], 1, [1, 1], d),
            Conv2d_3b_1x1: BasicConv2d::new(64, 80, [1, 1], 1, [0, 0], d),
            Conv2d_4a_3x3: BasicConv2d::new(80, 192, [3, 3], 1, [0, 0], d),
            Mixed_5b: InceptionA::new(192, 32, d),
            Mixed_5c: InceptionA::new(256, 64, d),
            Mixed_5d: InceptionA::new(288, 64, d),
            Mixed_6a: InceptionB::new(288, d),
            Mixed_6b: InceptionC::new(768, 128, d),
            Mixed_6c: InceptionC::new(768, 160, d),
            Mixed_6d: InceptionC::new(768, 160, d),
            Mixed_6e: InceptionC::new(768, 192, d),
            Mixed_7a: InceptionD::new(768, d),
            Mixed_7b: InceptionE::new(1280, false, d),
            Mixed_7c: InceptionE::new(2048, true, d),
            fc: Linear::new(2048, 1008, true, Init::Xavier, d),
        }
    }

    /// Loads pytorch-fid's weights file (or a safetensors copy with the same keys).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let mut weights = crate::checkpoint::read_weights(path, None)
            .with_context(|| "the FID Inception weights (pt_inception-2015-12-05-6726825d.pth) are needed")?;
        weights.tensors.retain(|k, _| !k.ends_with("num_batches_tracked"));
        crate::checkpoint::load_into(Self::new(device), &weights.tensors, device)
            .with_context(|| format!("{} is not the FID Inception", path.display()))
    }

    /// Network input in [-1, 1] `[N, 3, 299, 299]` -> features.
    pub fn forward(&self, x: Tensor<4>) -> Features {
        let mut x = self.Conv2d_1a_3x3.forward(x);
        x = self.Conv2d_2a_3x3.forward(x);
        x = max_pool(self.Conv2d_2b_3x3.forward(x), 2, 0);
        x = self.Conv2d_3b_1x1.forward(x);
        x = max_pool(self.Conv2d_4a_3x3.forward(x), 2, 0);
        for block in [&self.Mixed_5b, &self.Mixed_5c, &self.Mixed_5d] {
            x = block.forward(x);
        }
        x = self.Mixed_6a.forward(x);
        let (x6b, _) = self.Mixed_6b.forward(x);
        let (x6c, branch) = self.Mixed_6c.forward(x6b);
        let (x6d, _) = self.Mixed_6d.forward(x6c);
        let (x6e, _) = self.Mixed_6e.forward(x6d);
        let x = self.Mixed_7c.forward(self.Mixed_7b.forward(self.Mixed_7a.forward(x6e)));
        let [n, c, _, _] = x.dims();
        let pool3 = x.mean_dim(3).mean_dim(2).reshape([n, c]);
        let [_, _, h, w] = branch.dims();
        let spatial = branch.narrow(1, 0, 7).permute([0, 2, 3, 1]).reshape([n, h * w * 7]);
        let logits = self.fc.forward(pool3.clone());
        Features { pool3, spatial, logits }
    }
}

/// uint8 NHWC images (any size, RGB) -> network input: /255, bilinear resize to 299x299
/// (align_corners false, as `F.interpolate`), then 2x - 1.
pub fn preprocess(images: &[u8], n: usize, h: usize, w: usize, device: &Device) -> Result<Tensor<4>> {
    if images.len() != n * h * w * 3 {
        bail!("expected {n} RGB images of {h}x{w}");
    }
    let s = INPUT_SIZE;
    let taps = |input: usize| -> Vec<(usize, usize, f32)> {
        let scale = input as f32 / s as f32;
        (0..s)
            .map(|o| {
                let src = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
                let i0 = src as usize;
                let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
                (i0, i1, src - i0 as f32)
            })
            .collect()
    };
    let (ty, tx) = (taps(h), taps(w));
    let mut out = vec![0f32; n * 3 * s * s];
    for b in 0..n {
        for c in 0..3 {
            let px = |y: usize, x: usize| images[((b * h + y) * w + x) * 3 + c] as f32 / 255.0;
            for (oy, &(y0, y1, ly)) in ty.iter().enumerate() {
                for (ox, &(x0, x1, lx)) in tx.iter().enumerate() {
                    let top = (1.0 - lx) * px(y0, x0) + lx * px(y0, x1);
                    let bottom = (1.0 - lx) * px(y1, x0) + lx * px(y1, x1);
                    out[((b * 3 + c) * s + oy) * s + ox] = 2.0 * ((1.0 - ly) * top + ly * bottom) - 1.0;
                }
            }
        }
    }
    Ok(Tensor::from_data(TensorData::new(out, [n, 3, s, s]), device))
}
