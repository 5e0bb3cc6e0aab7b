use burn::prelude::*;
use burn::tensor::Distribution;
use std::time::Instant;
use udit::model::layers::*;

fn time<F: FnMut() -> Tensor<4>>(name: &str, mut f: F) {
    let _ = f().into_data();
    let s = Instant::now();
    for _ in 0..5 { let _ = f().into_data(); }
    println!("{name:30} {:8.2} ms", s.elapsed().as_secs_f64() * 1e3 / 5.0);
}

fn main() {
    let d = Device::flex();
    let x = Tensor::<4>::random([8, 96, 32, 32], Distribution::Normal(0., 1.), &d);
    let c1 = Conv2d::new(96, 192, 1, true, Init::Xavier, &d);
    let dw = Conv2d::depthwise(192, 5, Init::Xavier, &d);
    let dw96 = Conv2d::depthwise(96, 5, Init::Xavier, &d);
    let y = c1.forward(x.clone());
    let sc = Tensor::<2>::random([8, 96], Distribution::Normal(0., 1.), &d);
    time("conv1x1 96->192", || c1.forward(x.clone()));
    time("dwconv5 192", || dw.forward(y.clone()));
    time("dwconv5 96", || dw96.forward(x.clone()));
    time("gelu 192", || burn::tensor::activation::gelu(y.clone()));
    time("gelu_approx 192", || burn::tensor::activation::gelu_approximate(y.clone()));
    time("layer_norm_2d 96", || layer_norm_2d(x.clone()));
    time("modulate 96", || modulate_2d(x.clone(), sc.clone(), sc.clone()));
    time("add 96", || x.clone() + x.clone());
    time("permute nhwc 96", || x.clone().permute([0, 2, 3, 1]).reshape([8, 32, 32, 96]) * 1.0);
    use burn::tensor::module::attention;
    use burn::tensor::ops::AttentionModuleOptions;
    let q = Tensor::<4>::random([32, 4, 256, 24], Distribution::Normal(0., 1.), &d);
    let opt = || AttentionModuleOptions { scale: Some(1.0), softcap: None, is_causal: false };
    time("sdpa 32x4x256x24", || attention(q.clone(), q.clone(), q.clone(), None, None, opt()));
    time("manual attn", || {
        let s = q.clone().matmul(q.clone().swap_dims(2, 3));
        burn::tensor::activation::softmax(s, 3).matmul(q.clone())
    });
    let t = Tensor::<3>::random([32, 256, 96], Distribution::Normal(0., 1.), &d);
    let lin = Linear::new(96, 288, true, Init::Xavier, &d);
    time("qkv linear", || lin.forward(t.clone()).reshape([32, 256, 3, 96]).unsqueeze_dim::<5>(0).reshape([32,256,3,96]));
    let w = lin.weight.val().transpose();
    let wc = w.clone() * 1.0;
    time("qkv 2d matmul (T view)", || t.clone().reshape([8192, 96]).matmul(w.clone()).reshape([32, 256, 288]).unsqueeze_dim::<4>(0));
    time("qkv 2d matmul (contig)", || t.clone().reshape([8192, 96]).matmul(wc.clone()).reshape([32, 256, 288]).unsqueeze_dim::<4>(0));
    time("rope tables", || udit::model::udit::rope2d_tables(24, 256, &d).0);
    time("l2norm", || udit::model::udit::l2_normalize(q.clone()));
    let xx = x.clone();
    time("split rearrange", || xx.clone().reshape([8, 96, 16, 2, 16, 2]).permute([0, 3, 5, 2, 4, 1]).reshape([32, 256, 96]).unsqueeze_dim::<4>(0) * 1.0);
    let c5 = Conv2d::new(96, 480, 1, true, Init::Xavier, &d);
    time("qkv conv 96->480", || c5.forward(x.clone()));
    let qkvm = c5.forward(x.clone());
    time("7d permute", || qkvm.clone().reshape([8, 20, 24, 16, 2, 16, 2]).permute([0, 4, 6, 1, 3, 5, 2]).reshape([32, 20, 256, 24]));
    let qkv = qkvm.clone().reshape([8, 20, 24, 16, 2, 16, 2]).permute([0, 4, 6, 1, 3, 5, 2]).reshape([32, 20, 256, 24]);
    let (cs, sn) = udit::model::udit::rope2d_tables(24, 256, &d);
    time("rope mul", || qkv.clone().narrow(1, 0, 4) * cs.clone() + qkv.clone().narrow(1, 12, 4) * sn.clone());
    time("l2norm narrow", || udit::model::udit::l2_normalize(qkv.clone().narrow(1, 0, 4)));
    time("sdpa narrow", || attention(qkv.clone().narrow(1, 0, 4), qkv.clone().narrow(1, 4, 4), qkv.clone().narrow(1, 8, 4), None, None, opt()));
    time("out permute", || q.clone().reshape([8, 2, 2, 4, 16, 16, 24]).permute([0, 3, 6, 4, 1, 5, 2]).reshape([8, 96, 32, 32]));
    time("6d split + conv + T", || {
        let g = x.clone().reshape([8, 96, 16, 2, 16, 2]).permute([0, 3, 5, 1, 2, 4]).reshape([32, 96, 16, 16]);
        c5.forward(g).reshape([32, 20, 24, 256]).swap_dims(2, 3) * 1.0
    });
    time("6d split only", || x.clone().reshape([8, 96, 16, 2, 16, 2]).permute([0, 3, 5, 1, 2, 4]).reshape([32, 96, 16, 16]));
    let cfg = match udit::model::ModelConfig::preset("U-DiT-S").unwrap() { udit::model::ModelConfig::UDiT(c) => c, _ => unreachable!() };
    let m = udit::model::UDiT::new(&cfg, udit::model::FfnForm::Merged, &d);
    let b = &m.encoder_level_1[0];
    time("attn1 stage1", || b.attn1.forward(x.clone()));
    time("mlp1 stage1", || b.mlp1.forward(x.clone()));
    let c = Tensor::<2>::random([8, 96], Distribution::Normal(0., 1.), &d);
    time("block stage1", || b.forward(x.clone(), c.clone()));
    let x3 = Tensor::<4>::random([8, 384, 8, 8], Distribution::Normal(0., 1.), &d);
    let c3 = Tensor::<2>::random([8, 384], Distribution::Normal(0., 1.), &d);
    time("block stage3", || m.latent[0].forward(x3.clone(), c3.clone()));
    time("attn stage3", || m.latent[0].attn1.forward(x3.clone()));
    time("mlp stage3", || m.latent[0].mlp1.forward(x3.clone()));
}
