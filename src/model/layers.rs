#![allow(non_snake_case)]

//! Building blocks shared by U-DiT and DiT.
//!
//! Every parameter is stored in PyTorch's layout (a `Linear` weight is `[out, in]`, a conv
//! weight `[out, in/groups, k, k]`), so a state dict maps onto these modules by name with no
//! transposition. A Rust field named `a__0` stands for the state-dict segment `a.0` (an
//! index into a PyTorch `nn.Sequential`), see [`crate::checkpoint`].

use burn::module::{Module, Param};
use burn::prelude::*;
use burn::tensor::activation::silu;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;

use crate::precision::{self, Precision};

/// Fresh-weight initialisation, as the reference `initialize_weights` does it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Xavier-uniform weight, zero bias (the reference `_basic_init`).
    Xavier,
    /// Normal(0, std) weight, zero bias (timestep MLP, label tables).
    Normal(f64),
    /// All zeros (adaLN-Zero modulation and output layers).
    Zero,
}

fn init_tensor<const D: usize>(
    shape: [usize; D],
    fan_in: usize,
    fan_out: usize,
    init: Init,
    device: &Device,
) -> Tensor<D> {
    use crate::rng::InitDraw;
    let draw = match init {
        Init::Xavier => InitDraw::Uniform((6.0 / (fan_in + fan_out) as f64).sqrt()),
        Init::Normal(std) => InitDraw::Normal(std),
        Init::Zero => return Tensor::zeros(shape, device),
    };
    // Under `rng::seeded`: its stream. Otherwise (a model about to be loaded): burn's generator.
    match crate::rng::init_draws(shape.iter().product(), draw) {
        Some(values) => Tensor::from_data(TensorData::new(values, shape), device),
        None => Tensor::random(shape, draw.distribution(), device),
    }
}

/// `nn.Linear` with the PyTorch weight layout `[out, in]`.
#[derive(Module, Debug)]
pub struct Linear {
    pub weight: Param<Tensor<2>>,
    pub bias: Option<Param<Tensor<1>>>,
}

impl Linear {
    pub fn new(d_in: usize, d_out: usize, bias: bool, init: Init, device: &Device) -> Self {
        Self {
            weight: Param::from_tensor(init_tensor([d_out, d_in], d_in, d_out, init, device)),
            bias: bias.then(|| Param::from_tensor(Tensor::zeros([d_out], device))),
        }
    }

    /// Applies the layer to the channels of every pixel of a `(N, in, H, W)` map: a 1x1
    /// convolution (the ops of [`crate::kernels`]).
    pub fn forward_map(&self, x: Tensor<4>) -> Tensor<4> {
        let [o, i] = self.weight.dims();
        crate::kernels::conv1x1(x, self.weight.val().reshape([o, i, 1, 1]), self.bias.as_ref().map(|b| b.val()))
    }

    /// Applies the layer to the last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        if crate::kernels::cpu::applies(&x) {
            return crate::kernels::cpu::linear(x, self.weight.val(), self.bias.as_ref().map(|b| b.val()));
        }
        // Unsqueezed, then transposed: a view that the matmul reads with its strides (a
        // transposed weight unsqueezed would be copied to be reshaped).
        let weight = precision::input(self.weight.val().unsqueeze::<D>().transpose());
        let y = precision::output(precision::input(x).matmul(weight));
        match &self.bias {
            Some(b) => y + b.val().unsqueeze(),
            None => y,
        }
    }
}

/// `nn.Conv2d` with the PyTorch weight layout and padding (k - stride) / 2: "same" for odd
/// kernels at stride 1, none for non-overlapping patches (k = stride), so the output side is
/// the input side over the stride either way.
#[derive(Module, Debug)]
pub struct Conv2d {
    pub weight: Param<Tensor<4>>,
    pub bias: Option<Param<Tensor<1>>>,
    pub groups: usize,
    pub stride: usize,
}

impl Conv2d {
    /// A dense `k x k` convolution.
    pub fn new(c_in: usize, c_out: usize, k: usize, bias: bool, init: Init, device: &Device) -> Self {
        Self::grouped(c_in, c_out, k, 1, bias, init, device)
    }

    /// A depthwise `k x k` convolution (one filter per channel).
    pub fn depthwise(c: usize, k: usize, init: Init, device: &Device) -> Self {
        Self::grouped(c, c, k, c, true, init, device)
    }

    fn grouped(c_in: usize, c_out: usize, k: usize, groups: usize, bias: bool, init: Init, device: &Device) -> Self {
        let per_group = c_in / groups;
        let shape = [c_out, per_group, k, k];
        let weight = init_tensor(shape, per_group * k * k, c_out / groups * k * k, init, device);
        Self::from_weights(weight, bias.then(|| Tensor::zeros([c_out], device)), groups)
    }

    /// A conv holding computed weights (e.g. merged branches), detached from any graph.
    pub fn from_weights(weight: Tensor<4>, bias: Option<Tensor<1>>, groups: usize) -> Self {
        let bias = bias.map(|b| Param::from_tensor(b.detach()));
        Self { weight: Param::from_tensor(weight.detach()), bias, groups, stride: 1 }
    }

    /// The same conv applied every `stride` pixels; with a `stride`-sized kernel it embeds
    /// non-overlapping patches (DiT's `PatchEmbed`).
    pub fn with_stride(self, stride: usize) -> Self {
        Self { stride, ..self }
    }

    pub fn kernel_size(&self) -> usize {
        self.weight.dims()[3]
    }

    /// The bias, or zeros for a bias-free conv (for folding convs into one).
    pub fn bias_or_zeros(&self) -> Tensor<1> {
        let zeros = || Tensor::zeros([self.weight.dims()[0]], &self.weight.device());
        self.bias.as_ref().map(|b| b.val()).unwrap_or_else(zeros)
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let (weight, bias) = (self.weight.val(), self.bias.as_ref().map(|b| b.val()));
        if self.stride == 1 {
            return conv2d_same(x, weight, bias, self.groups);
        }
        let (s, pad) = (self.stride, self.kernel_size().saturating_sub(self.stride) / 2);
        conv2d_in_precision(x, weight, bias, ConvOptions::new([s, s], [pad, pad], [1, 1], self.groups))
    }
}

/// Stride-1 convolution with (k-1)/2 zero padding; depthwise and 1x1 ones run the ops of
/// [`crate::kernels`] (fused CPU kernels with their own backward unless the backend is CUDA).
pub fn conv2d_same(x: Tensor<4>, weight: Tensor<4>, bias: Option<Tensor<1>>, groups: usize) -> Tensor<4> {
    #[cfg(not(feature = "cuda"))]
    if groups > 1 && groups == x.dims()[1] && weight.dims()[0] == groups && precision::current() == Precision::F32 {
        let bias = bias.unwrap_or_else(|| Tensor::zeros([groups], &x.device()));
        return crate::kernels::depthwise::depthwise_conv2d(x, weight, bias);
    }
    if weight.dims()[2] == 1 && groups == 1 {
        return crate::kernels::conv1x1(x, weight, bias);
    }
    let pad = (weight.dims()[3] - 1) / 2;
    conv2d_in_precision(x, weight, bias, ConvOptions::new([1, 1], [pad, pad], [1, 1], groups))
}

/// burn's convolution in the current precision (f32 bias added after the product).
fn conv2d_in_precision(x: Tensor<4>, weight: Tensor<4>, bias: Option<Tensor<1>>, options: ConvOptions<2>) -> Tensor<4> {
    if precision::current() == Precision::F32 {
        return conv2d(x, weight, bias, options);
    }
    let y = precision::output(conv2d(precision::input(x), precision::input(weight), None, options));
    match bias {
        Some(b) => y + b.unsqueeze_dims(&[0, 2, 3]),
        None => y,
    }
}

/// The 256-frequency sinusoid of GLIDE/ADM, cosines first (reference `timestep_embedding`).
pub fn timestep_embedding(t: Tensor<1>, dim: usize) -> Tensor<2> {
    let half = dim / 2;
    let device = t.device();
    let freqs: Vec<f32> = (0..half).map(|i| (-(10000f32).ln() * i as f32 / half as f32).exp()).collect();
    let freqs = Tensor::<1>::from_floats(freqs.as_slice(), &device).unsqueeze::<2>();
    let args = t.unsqueeze_dim::<2>(1) * freqs;
    Tensor::cat(vec![args.clone().cos(), args.sin()], 1)
}

/// `TimestepEmbedder`: sinusoid, then `mlp.0` Linear, SiLU, `mlp.2` Linear.
#[allow(non_snake_case)]
#[derive(Module, Debug)]
pub struct TimestepEmbedder {
    pub mlp__0: Linear,
    pub mlp__2: Linear,
}

impl TimestepEmbedder {
    pub const FREQUENCY_SIZE: usize = 256;

    pub fn new(hidden: usize, device: &Device) -> Self {
        Self {
            mlp__0: Linear::new(Self::FREQUENCY_SIZE, hidden, true, Init::Normal(0.02), device),
            mlp__2: Linear::new(hidden, hidden, true, Init::Normal(0.02), device),
        }
    }

    pub fn forward(&self, t: Tensor<1>) -> Tensor<2> {
        let emb = timestep_embedding(t, Self::FREQUENCY_SIZE);
        self.mlp__2.forward(silu(self.mlp__0.forward(emb)))
    }
}

/// `LabelEmbedder`: a table of `num_classes` rows, plus the null class used by
/// classifier-free guidance when the model was trained with label dropout.
#[derive(Module, Debug)]
pub struct LabelEmbedder {
    pub embedding_table: Embedding,
}

/// `nn.Embedding` (`weight` is `[rows, dim]`).
#[derive(Module, Debug)]
pub struct Embedding {
    pub weight: Param<Tensor<2>>,
}

impl LabelEmbedder {
    pub fn new(rows: usize, hidden: usize, device: &Device) -> Self {
        let weight = init_tensor([rows, hidden], rows, hidden, Init::Normal(0.02), device);
        Self { embedding_table: Embedding { weight: Param::from_tensor(weight) } }
    }

    pub fn forward(&self, y: Tensor<1, Int>) -> Tensor<2> {
        self.embedding_table.weight.val().select(0, y)
    }
}

/// `nn.Sequential(SiLU, Linear)` producing `n` modulation vectors from the conditioning.
#[allow(non_snake_case)]
#[derive(Module, Debug)]
pub struct AdaLnModulation {
    pub __1: Linear,
}

impl AdaLnModulation {
    pub fn new(hidden: usize, n: usize, device: &Device) -> Self {
        Self { __1: Linear::new(hidden, n * hidden, true, Init::Zero, device) }
    }

    /// The `K` chunks (shift, scale, gate, ...) of `Linear(SiLU(c))`, each `[N, hidden]`;
    /// `K` is the `n` the layer was built with.
    pub fn forward<const K: usize>(&self, c: Tensor<2>) -> [Tensor<2>; K] {
        let chunks = self.__1.forward(silu(c)).chunk(K, 1);
        chunks.try_into().unwrap_or_else(|v: Vec<_>| panic!("{K} modulation chunks expected, got {}", v.len()))
    }
}

/// `nn.PixelUnshuffle(r)`: channel c at pixel (r*h+i, r*w+j) goes to channel
/// c*r*r + r*i + j at (h, w).
pub fn pixel_unshuffle(x: Tensor<4>, r: usize) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    x.reshape([n, c, h / r, r, w / r, r]).permute([0, 1, 3, 5, 2, 4]).reshape([n, c * r * r, h / r, w / r])
}

/// `nn.PixelShuffle(r)`, the inverse of [`pixel_unshuffle`].
pub fn pixel_shuffle(x: Tensor<4>, r: usize) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    let c_out = c / (r * r);
    x.reshape([n, c_out, r, r, h, w]).permute([0, 1, 4, 2, 5, 3]).reshape([n, c_out, h * r, w * r])
}

/// Records intermediate activations under the reference module names, so that tests can
/// compare each stage with the PyTorch hooks in the fixtures. Off, it costs nothing but the
/// names.
#[derive(Default)]
pub struct Trace {
    pub acts: Option<std::collections::BTreeMap<String, burn::tensor::TensorData>>,
}

impl Trace {
    pub fn off() -> Self {
        Self { acts: None }
    }

    pub fn on() -> Self {
        Self { acts: Some(Default::default()) }
    }

    /// Records `x` under `name` (when on) and hands it back, so that a forward pass taps a
    /// stage in the line that computes it.
    pub fn tap<const D: usize>(&mut self, name: impl Into<String>, x: Tensor<D>) -> Tensor<D> {
        self.tap_as(name, x, |x| x)
    }

    /// [`Trace::tap`] that records `view(x)`, the layout the reference's hook saw.
    pub fn tap_as<const D: usize, const E: usize>(
        &mut self,
        name: impl Into<String>,
        x: Tensor<D>,
        view: impl FnOnce(Tensor<D>) -> Tensor<E>,
    ) -> Tensor<D> {
        if let Some(acts) = &mut self.acts {
            acts.insert(name.into(), view(x.clone()).to_data());
        }
        x
    }
}
