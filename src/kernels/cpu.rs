//! The CPU kernels' building blocks on plain `f32` slices: the grouped attention's forward
//! (one pass per (sample, head) that reads q, k and v straight from the `to_qkv` map, does
//! RoPE2D, cosine normalisation, softmax and the weighted sum with GEMM, and writes back in
//! NCHW), GELU with a vectorisable erf, the adaLN pre-norm and gated residual passes, strided
//! GEMM and the vectorised reductions, all compiled for the widest vector extension the CPU
//! has. The ops with their backward that use them are in the sibling modules; `linear` is
//! the inference-only token-wise linear layer.

use std::mem::MaybeUninit;

use burn::prelude::*;
use burn::tensor::TensorData;
use rayon::prelude::*;

/// Whether `x` can take the fused CPU path.
pub fn applies<const D: usize>(x: &Tensor<D>) -> bool {
    !cfg!(feature = "cuda") && !x.is_autodiff() && crate::precision::current() == crate::precision::Precision::F32
}

/// The attention of paper Sec. 3.2 on a `[B, 3D, H, W]` map of q, k, v channels.
pub struct GroupedAttention {
    pub heads: usize,
    /// Token-downsampling factor r: r*r groups of pixels (r*h+dh, r*w+dw).
    pub r: usize,
    /// RoPE2D on q and k.
    pub rope: bool,
    /// Per-head temperature of cosine attention; `None` means dot product times `scale`.
    pub temperature: Option<Vec<f32>>,
    pub scale: f32,
}

impl GroupedAttention {
    /// The attention of a row-major `[B, 3D, H, W]` map, `[B, D, H, W]` out: heads back on
    /// channels, groups back on pixels.
    pub(crate) fn forward_slice(&self, input: &[f32], [b, d3, h, w]: [usize; 4]) -> Vec<f32> {
        let d = d3 / 3;
        let hd = d / self.heads;
        let mut out = vec![0f32; b * d * h * w];
        let n = (h / self.r) * (w / self.r);
        let rope = if self.rope { super::generic::rope_table(hd, n) } else { vec![] };
        out.par_chunks_mut(hd * h * w).enumerate().for_each(|(task, slice)| {
            let (bi, head) = (task / self.heads, task % self.heads);
            let sample = &input[bi * d3 * h * w..(bi + 1) * d3 * h * w];
            vectorized(
                #[inline(always)]
                || self.run(sample, slice, head, d, hd, h, w, &rope),
            );
        });
        out
    }

    /// One (sample, head): every group of tokens attends within itself. Buffers are
    /// channel-major (`[hd][n]`), so gathers, RoPE and scaling run along contiguous tokens;
    /// gemm takes whichever strides its operands have.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn run(&self, sample: &[f32], out: &mut [f32], head: usize, d: usize, hd: usize, h: usize, w: usize, rope: &[f32]) {
        let r = self.r;
        let (hr, wr) = (h / r, w / r);
        let n = hr * wr;
        let plane = h * w;
        let [mut q, mut k, mut v, mut o] = [(); 4].map(|_| vec![0f32; hd * n]);
        let mut scores = vec![0f32; n * n];
        let mut pixels = vec![0usize; n];
        let mut gain = vec![0f32; n];
        let mut inv_sums = vec![0f32; n];
        for dh in 0..r {
            for dw in 0..r {
                gather_group(sample, [d, hd, h, w], head, [r, dh, dw], &mut pixels, [&mut q, &mut k, &mut v]);
                if self.rope {
                    for m in 0..hd / 2 {
                        let (cos, sin) = (&rope[m * n..(m + 1) * n], &rope[(hd / 2 + m) * n..(hd / 2 + m + 1) * n]);
                        rotate_pair(&mut q, m, n, cos, sin);
                        rotate_pair(&mut k, m, n, cos, sin);
                    }
                }
                match &self.temperature {
                    Some(temp) => {
                        inverse_norms(&q, n, &mut gain);
                        gain.iter_mut().for_each(|g| *g *= temp[head]);
                        scale_tokens(&mut q, &gain);
                        inverse_norms(&k, n, &mut gain);
                        scale_tokens(&mut k, &gain);
                    }
                    None => q.iter_mut().for_each(|x| *x *= self.scale),
                }
                // scores = q k^T; softmax over keys; o = p v, normalised per query.
                gemm_strided(n, n, hd, &q, (1, n), &k, (n, 1), &mut scores, (n, 1), false, gemm::Parallelism::None);
                for (row, inv) in scores.chunks_exact_mut(n).zip(inv_sums.iter_mut()) {
                    let max = max(row);
                    row.iter_mut().for_each(|s| *s = exp(*s - max));
                    *inv = 1.0 / sum(row);
                }
                gemm_strided(n, hd, n, &scores, (n, 1), &v, (1, n), &mut o, (1, n), false, gemm::Parallelism::None);
                scale_tokens(&mut o, &inv_sums);
                for c in 0..hd {
                    let dst = &mut out[c * plane..(c + 1) * plane];
                    for (&x, &p) in o[c * n..(c + 1) * n].iter().zip(&pixels) {
                        dst[p] = x;
                    }
                }
            }
        }
    }
}

/// Group (dh, dw) of the r*r token groups: the pixel of each of its tokens,
/// (r*th + dh, r*tw + dw), into `pixels`, and one head's q, k and v of those pixels from a
/// `[3D, H, W]` sample, channel-major (`[hd][n]`).
#[inline(always)]
pub(crate) fn gather_group(
    sample: &[f32],
    [d, hd, h, w]: [usize; 4],
    head: usize,
    [r, dh, dw]: [usize; 3],
    pixels: &mut [usize],
    qkv: [&mut [f32]; 3],
) {
    let (n, wr, plane) = (pixels.len(), w / r, h * w);
    for (t, p) in pixels.iter_mut().enumerate() {
        *p = ((t / wr) * r + dh) * w + (t % wr) * r + dw;
    }
    for (slot, buf) in qkv.into_iter().enumerate() {
        for c in 0..hd {
            let src = &sample[(slot * d + head * hd + c) * plane..][..plane];
            for (x, &p) in buf[c * n..(c + 1) * n].iter_mut().zip(pixels.iter()) {
                *x = src[p];
            }
        }
    }
}

/// Rotates channel pair (2m, 2m+1) of channel-major `x` as complex numbers.
#[inline(always)]
pub(crate) fn rotate_pair(x: &mut [f32], m: usize, n: usize, cos: &[f32], sin: &[f32]) {
    let (lo, hi) = x.split_at_mut((2 * m + 1) * n);
    let (a, b) = (&mut lo[2 * m * n..], &mut hi[..n]);
    for t in 0..n {
        let (x0, x1) = (a[t], b[t]);
        a[t] = x0 * cos[t] - x1 * sin[t];
        b[t] = x0 * sin[t] + x1 * cos[t];
    }
}

/// 1 / max(||x_t||, 1e-12) for every token of channel-major `x`.
#[inline(always)]
pub(crate) fn inverse_norms(x: &[f32], n: usize, out: &mut [f32]) {
    out.iter_mut().for_each(|o| *o = 0.0);
    for row in x.chunks_exact(n) {
        for (o, &v) in out.iter_mut().zip(row) {
            *o = v.mul_add(v, *o);
        }
    }
    out.iter_mut().for_each(|o| *o = 1.0 / o.sqrt().max(1e-12));
}

/// Multiplies token t of channel-major `x` by `gain[t]`.
#[inline(always)]
pub(crate) fn scale_tokens(x: &mut [f32], gain: &[f32]) {
    for row in x.chunks_exact_mut(gain.len()) {
        for (v, &g) in row.iter_mut().zip(gain) {
            *v *= g;
        }
    }
}

/// dst[m x n] = lhs[m x k] rhs[k x n] (plus dst when `accumulate`), every operand given
/// with its (row, column) strides.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_strided(
    m: usize,
    n: usize,
    k: usize,
    lhs: &[f32],
    lhs_s: (usize, usize),
    rhs: &[f32],
    rhs_s: (usize, usize),
    dst: &mut [f32],
    dst_s: (usize, usize),
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    check_operands([m, n, k], (lhs.len(), lhs_s), (rhs.len(), rhs_s), (dst.len(), dst_s));
    // SAFETY: the check keeps every index gemm touches inside the three slices.
    unsafe { gemm_raw([m, n, k], (lhs, lhs_s), (rhs, rhs_s), (dst.as_mut_ptr(), dst_s), accumulate, parallelism) }
}

/// [`gemm_strided`] into fresh memory: `dst` is the whole row-major m x n result, and the
/// GEMM writes every element of it without reading any (nothing needs zeroing first).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_write(
    m: usize,
    n: usize,
    k: usize,
    lhs: &[f32],
    lhs_s: (usize, usize),
    rhs: &[f32],
    rhs_s: (usize, usize),
    dst: &mut [MaybeUninit<f32>],
    parallelism: gemm::Parallelism,
) {
    assert_eq!(dst.len(), m * n, "the output is the whole m x n result");
    check_operands([m, n, k], (lhs.len(), lhs_s), (rhs.len(), rhs_s), (dst.len(), (n, 1)));
    // SAFETY: as in gemm_strided; without `read_dst` gemm only writes dst (all m x n of it).
    unsafe { gemm_raw([m, n, k], (lhs, lhs_s), (rhs, rhs_s), (dst.as_mut_ptr().cast(), (n, 1)), false, parallelism) }
}

/// Panics unless every index an m x n x k GEMM touches lies inside its operands, each given
/// as (length, (row stride, column stride)).
fn check_operands(
    [m, n, k]: [usize; 3],
    lhs: (usize, (usize, usize)),
    rhs: (usize, (usize, usize)),
    dst: (usize, (usize, usize)),
) {
    let last = |rows: usize, cols: usize, s: (usize, usize)| (rows - 1) * s.0 + (cols - 1) * s.1;
    assert!(lhs.0 > last(m, k, lhs.1) && rhs.0 > last(k, n, rhs.1) && dst.0 > last(m, n, dst.1));
}

/// # Safety
/// The operands must hold every index the GEMM touches (see [`check_operands`]).
unsafe fn gemm_raw(
    [m, n, k]: [usize; 3],
    (lhs, lhs_s): (&[f32], (usize, usize)),
    (rhs, rhs_s): (&[f32], (usize, usize)),
    (dst, dst_s): (*mut f32, (usize, usize)),
    read_dst: bool,
    parallelism: gemm::Parallelism,
) {
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_s.1 as isize,
            dst_s.0 as isize,
            read_dst,
            lhs.as_ptr(),
            lhs_s.1 as isize,
            lhs_s.0 as isize,
            rhs.as_ptr(),
            rhs_s.1 as isize,
            rhs_s.0 as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// The transpose of a row-major `[rows, cols]` matrix, `[cols, rows]`: each task writes 32
/// rows of the output (an L2-sized block) from 32 adjacent values of every input row.
pub(crate) fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 32;
    assert_eq!(x.len(), rows * cols);
    let fill = |[out]: [&mut [MaybeUninit<f32>]; 1]| {
        out.par_chunks_mut(TILE * rows.max(1)).enumerate().for_each(|(tile, block)| {
            let c0 = tile * TILE;
            for (r, row) in x.chunks_exact(cols).enumerate() {
                for (j, &v) in row[c0..c0 + block.len() / rows].iter().enumerate() {
                    block[j * rows + r].write(v);
                }
            }
        })
    };
    // SAFETY: block `tile` is output rows c0.. of `rows` values each, all written.
    let [out] = unsafe { written([x.len()], fill) };
    out
}

/// `K` vectors of the given lengths that `fill` writes straight into fresh memory: no zeroing
/// pass before the pass that writes them.
///
/// # Safety
/// `fill` must write every element of each of the `K` outputs.
pub(crate) unsafe fn written<const K: usize>(
    lens: [usize; K],
    fill: impl FnOnce([&mut [MaybeUninit<f32>]; K]),
) -> [Vec<f32>; K] {
    let mut outs = lens.map(Vec::with_capacity);
    let mut lens_in_order = lens.iter();
    fill(outs.each_mut().map(|out| {
        let len = *lens_in_order.next().expect("one length per output");
        &mut out.spare_capacity_mut()[..len]
    }));
    for (out, &len) in outs.iter_mut().zip(&lens) {
        // SAFETY: `fill` wrote all `len` elements (the caller's promise).
        unsafe { out.set_len(len) };
    }
    outs
}

/// Sum with independent accumulators, so that it vectorises (likewise [`max`]). Inner
/// loops elsewhere use `mul_add`, which the AVX2/AVX-512 builds turn into FMA instructions.
#[inline(always)]
pub(crate) fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for l in 0..8 {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Dot product with independent accumulators, as [`sum`].
#[cfg(not(feature = "cuda"))]
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (a16, b16) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = a16.remainder().iter().zip(b16.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in a16.zip(b16) {
        for l in 0..16 {
            acc[l] = x[l].mul_add(y[l], acc[l]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
pub(crate) fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let chunks = x.chunks_exact(16);
    let tail = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for c in chunks {
        for l in 0..16 {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    acc.iter().fold(tail, |m, &v| m.max(v))
}

/// e^x for x <= 88, branch-free (Cephes `expf`: relative error ~1e-7), so loops over it
/// vectorise. n = round(x log2 e) by adding and subtracting 1.5 * 2^23, which rounds in the
/// float adder: `floor` would be a call into libm, one element at a time. The sum's low
/// mantissa bits hold n itself, so 2^n is built from them (`n as i32` is a saturating
/// conversion: a compare and blends per vector that cost more than the polynomial).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 0.166_666_65) * r
        + 0.5;
    let e = p * r * r + r + 1.0;
    // shifted's bits are 0x4B40_0000 + n, |n| <= 127; shifting out all but the low 9 bits
    // leaves (n + 127) << 23, the exponent field of 2^n.
    e * f32::from_bits(shifted.to_bits().wrapping_add(127) << 23)
}

/// The two GELUs of the models: exact (erf) in the U-DiT FFN, tanh-approximated in the
/// ViT MLP of DiT and of U-DiT's `basic` FFN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gelu {
    Erf,
    Tanh,
}

/// GELU of `x` into a new vector, vectorised (the generic ops evaluate erf and tanh one
/// element at a time). Out of place, as the other fused ops: autodiff keeps the input.
pub(crate) fn gelu_of(x: &[f32], kind: Gelu) -> Vec<f32> {
    let fill = |[out]: [&mut [MaybeUninit<f32>]; 1]| {
        out.par_chunks_mut(1 << 14).zip(x.par_chunks(1 << 14)).for_each(|(out, x)| {
            vectorized(
                #[inline(always)]
                || match kind {
                    Gelu::Erf => {
                        for (o, &v) in out.iter_mut().zip(x) {
                            o.write(gelu_erf(v));
                        }
                    }
                    Gelu::Tanh => {
                        for (o, &v) in out.iter_mut().zip(x) {
                            o.write(gelu_tanh(v));
                        }
                    }
                },
            )
        })
    };
    // SAFETY: the chunks cover all x.len() elements, each written once.
    let [out] = unsafe { written([x.len()], fill) };
    out
}

/// 0.5 x (1 + erf(x / sqrt 2)), erf by Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7).
#[inline(always)]
fn gelu_erf(x: f32) -> f32 {
    x * normal_cdf(x)
}

/// Phi(x) = 0.5 (1 + erf(x / sqrt 2)).
#[inline(always)]
pub(crate) fn normal_cdf(x: f32) -> f32 {
    let z = (x * std::f32::consts::FRAC_1_SQRT_2).abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = ((((1.061_405_4 * t - 1.453_152_1) * t + 1.421_413_7) * t - 0.284_496_74) * t + 0.254_829_6) * t;
    let erf_abs = 1.0 - poly * exp(-z * z);
    0.5 * (1.0 + if x < 0.0 { -erf_abs } else { erf_abs })
}

/// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), with tanh u = 1 - 2 / (e^{2u} + 1).
#[inline(always)]
fn gelu_tanh(x: f32) -> f32 {
    let u = 0.797_884_6 * (x + 0.044_715 * x * x * x);
    let tanh = 1.0 - 2.0 / (exp(2.0 * u) + 1.0);
    0.5 * x * (1.0 + tanh)
}

/// Rows of every GEMM call of [`linear`].
const LINEAR_ROWS: usize = 16;

/// `x W^T + b` over the last dimension, `W` in PyTorch layout `[out, in]`, as GEMMs of
/// exactly [`LINEAR_ROWS`] rows (the last padded with zeros), each on every thread. The GEMM
/// picks its blocking and code path by shape, so a row's result would otherwise depend on
/// how many rows share its call: with a fixed shape a sample's conditioning, and so the
/// sample, is the same whatever its batch.
pub fn linear<const D: usize>(x: Tensor<D>, weight: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<D> {
    let mut dims = x.dims();
    let device = x.device();
    let [n_out, n_in] = weight.dims();
    let rows = x.shape().num_elements() / n_in;
    let x = x.into_data().convert::<f32>();
    let w = weight.into_data().convert::<f32>();
    let bias = match bias {
        Some(b) => b.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 data"),
        None => vec![0f32; n_out],
    };
    let (x, w) = (x.as_slice::<f32>().expect("f32 data"), w.as_slice::<f32>().expect("f32 data"));
    let threads = gemm::Parallelism::Rayon(rayon::current_num_threads());
    let mut out = vec![0f32; rows * n_out];
    let mut lhs = vec![0f32; LINEAR_ROWS * n_in];
    let mut dst = vec![0f32; LINEAR_ROWS * n_out];
    for (xs, outs) in x.chunks(LINEAR_ROWS * n_in).zip(out.chunks_mut(LINEAR_ROWS * n_out)) {
        lhs[..xs.len()].copy_from_slice(xs);
        lhs[xs.len()..].fill(0.0);
        dst.chunks_exact_mut(n_out).for_each(|row| row.copy_from_slice(&bias));
        gemm_strided(LINEAR_ROWS, n_out, n_in, &lhs, (n_in, 1), w, (1, n_in), &mut dst, (n_out, 1), true, threads);
        outs.copy_from_slice(&dst[..outs.len()]);
    }
    dims[D - 1] = n_out;
    Tensor::from_data(TensorData::new(out, dims), &device)
}

/// `LayerNorm2d(x) * (1 + scale) + shift` of `[B, C, H, W]` `x`, into a new vector: per pixel,
/// normalise over channels (eps 1e-6, no affine), then modulate with `[B, C]` shift and
/// scale, in two passes over `x`.
pub(crate) fn norm_modulate_of(x: &[f32], [b, c, h, w]: [usize; 4], shift: &[f32], scale: &[f32]) -> Vec<f32> {
    assert_eq!(x.len(), b * c * h * w);
    let plane = h * w;
    let tasks = pixel_blocks(b, plane);
    let block = PIXEL_BLOCK.min(plane);
    let fill = |[out]: [&mut [MaybeUninit<f32>]; 1]| {
        let ptr = SyncPtr(out.as_mut_ptr().cast());
        tasks.par_iter().for_each(|&(bi, p0)| {
            let len = block.min(plane - p0);
            let sample = &x[bi * c * plane..(bi + 1) * c * plane];
            // SAFETY: tasks cover disjoint (sample, pixel range) sets of `out`.
            let out = unsafe { std::slice::from_raw_parts_mut(ptr.get().add(bi * c * plane).cast(), c * plane) };
            vectorized(
                #[inline(always)]
                || {
                    let (shift, scale) = (&shift[bi * c..(bi + 1) * c], &scale[bi * c..(bi + 1) * c]);
                    norm_modulate_block(sample, out, plane, p0, len, shift, scale)
                },
            );
        })
    };
    // SAFETY: the tasks cover every (sample, pixel), each writing all channels of its pixels.
    let [out] = unsafe { written([x.len()], fill) };
    out
}

/// Pixels per task of the per-pixel channel loops: whole plane rows are read per channel.
pub(crate) const PIXEL_BLOCK: usize = 256;

/// (sample, first pixel) of every task of [`PIXEL_BLOCK`] pixels.
pub(crate) fn pixel_blocks(b: usize, plane: usize) -> Vec<(usize, usize)> {
    let block = PIXEL_BLOCK.min(plane);
    (0..b).flat_map(|bi| (0..plane).step_by(block).map(move |p0| (bi, p0))).collect()
}

/// Pixels `p0..p0 + len` of one sample (`x` and `out` its `[C][plane]` values).
#[inline(always)]
fn norm_modulate_block(
    x: &[f32],
    out: &mut [MaybeUninit<f32>],
    plane: usize,
    p0: usize,
    len: usize,
    shift: &[f32],
    scale: &[f32],
) {
    let c = shift.len();
    let mut mean = vec![0f32; len];
    let mut sq = vec![0f32; len];
    for ch in 0..c {
        let row = &x[ch * plane + p0..ch * plane + p0 + len];
        for ((m, s), &v) in mean.iter_mut().zip(sq.iter_mut()).zip(row) {
            *m += v;
            *s = v.mul_add(v, *s);
        }
    }
    let inv_c = 1.0 / c as f32;
    for (m, s) in mean.iter_mut().zip(sq.iter_mut()) {
        *m *= inv_c;
        // Biased variance, as LayerNorm; `s` becomes 1 / sqrt(var + eps).
        *s = 1.0 / ((*s * inv_c - *m * *m).max(0.0) + 1e-6).sqrt();
    }
    for ch in 0..c {
        let (g, bias) = (1.0 + scale[ch], shift[ch]);
        let row = &x[ch * plane + p0..ch * plane + p0 + len];
        let out = &mut out[ch * plane + p0..ch * plane + p0 + len];
        for (((o, &v), &m), &r) in out.iter_mut().zip(row).zip(&mean).zip(&sq) {
            o.write(((v - m) * r).mul_add(g, bias));
        }
    }
}

/// `x + gate * y`, into a new vector, with a `[B, C]` gate broadcast over the `plane` pixels
/// of each channel (the adaLN-Zero residual).
pub(crate) fn add_gated_of(x: &[f32], gate: &[f32], y: &[f32], plane: usize) -> Vec<f32> {
    assert!(y.len() == x.len() && gate.len() * plane == x.len(), "one gate per plane of x");
    let fill = |[out]: [&mut [MaybeUninit<f32>]; 1]| {
        out.par_chunks_mut(plane).zip(x.par_chunks(plane).zip(y.par_chunks(plane))).zip(gate.par_iter()).for_each(
            |((out, (xs, ys)), &g)| {
                vectorized(
                    #[inline(always)]
                    || {
                        for ((o, &x), &y) in out.iter_mut().zip(xs).zip(ys) {
                            o.write(g.mul_add(y, x));
                        }
                    },
                )
            },
        )
    };
    // SAFETY: the planes cover the output, every element written.
    let [out] = unsafe { written([x.len()], fill) };
    out
}

/// A raw pointer that rayon tasks may share; each task touches its own disjoint range.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr(pub(crate) *mut f32);
// SAFETY: used only for disjoint writes, see the call sites.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}
impl SyncPtr {
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// Runs `f` compiled for the widest vector extension this CPU has (AVX-512, else
/// AVX2+FMA, else the baseline). `f` and what it calls are `#[inline(always)]`, so they
/// are compiled inside the feature-enabled wrapper.
#[inline(always)]
pub(crate) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: each wrapper runs only on a CPU that has the features it is built for.
        if std::arch::is_x86_feature_detected!("avx512f") {
            return unsafe { with_avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return unsafe { with_avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(test)]
mod tests {
    /// `exp` against f64's over its whole range, every 1/64, and at the exact powers of two
    /// (n = -125..=126, where the exponent field is built from the rounding's bits).
    #[test]
    fn exp_is_within_2e7_of_the_true_value() {
        let worst = (-87 * 64..=88 * 64)
            .map(|i| i as f32 / 64.0)
            .chain((-125..=126).map(|n| n as f32 * std::f32::consts::LN_2))
            .map(|x| {
                let truth = (x as f64).exp();
                (super::exp(x) as f64 - truth).abs() / truth
            })
            .fold(0.0, f64::max);
        assert!(worst < 2e-7, "largest relative error {worst:.2e}");
        assert_eq!(super::exp(0.0), 1.0);
        assert!(super::exp(-1e30) < 2e-38 && super::exp(1e30).is_finite(), "clamped, not wrapped");
    }

    /// Shapes around the 32-wide tiles: fewer columns than a tile, a partial last tile.
    #[test]
    fn transpose_moves_every_value_to_its_mirror() {
        for (rows, cols) in [(1, 1), (3, 7), (37, 45), (64, 33), (5, 96)] {
            let x: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let t = super::transpose(&x, rows, cols);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(t[c * rows + r], x[r * cols + c], "({r}, {c}) of {rows} x {cols}");
                }
            }
        }
    }
}
