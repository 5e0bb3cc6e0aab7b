//! Parameter and MAC counts against the papers' tables, and against built models.

use burn::prelude::*;
use udit::checkpoint::param_shapes;
use udit::cost::Cost;
use udit::model::{Denoiser, FfnForm, ModelConfig};

fn cost(name: &str) -> Cost {
    Cost::of(&ModelConfig::preset(name).unwrap())
}

#[test]
fn udit_presets_match_paper_table_8() {
    // (merged params in M, GMACs) as published, at 32x32x4 latents.
    for (name, params, gmacs) in
        [("U-DiT-S", "52.05", "6.04"), ("U-DiT-B", "204.43", "22.22"), ("U-DiT-L", "810.19", "85.00")]
    {
        let c = cost(name);
        assert_eq!(format!("{:.2}", c.params_merged as f64 / 1e6), params, "{name} params");
        assert_eq!(format!("{:.2}", c.macs as f64 / 1e9), gmacs, "{name} GMACs");
        assert!(c.params > c.params_merged, "{name}: the training form has the extra FFN branches");
    }
}

#[test]
fn dit_xl_2_matches_paper() {
    let c = cost("DiT-XL/2");
    assert_eq!(format!("{:.2}", c.macs as f64 / 1e9), "118.64");
    assert_eq!(format!("{:.2}", c.params_merged as f64 / 1e6), "675.13");
}

#[test]
fn sit_presets_cost_what_the_papers_count() {
    // The papers' "GFLOPs" (multiply-accumulates of DiT's count): SiT S/B/L/XL 6.06 / 23.01 /
    // 80.71 / 118.64 (VisionLLaMA Table 8; DiT's paper for XL).
    for (name, published) in [("SiT-S/2", "6.06"), ("SiT-B/2", "23.01"), ("SiT-L/2", "80.71"), ("SiT-XL/2", "118.64")] {
        assert_eq!(format!("{:.2}", cost(name).macs as f64 / 1e9), published, "{name}");
        assert_eq!(cost(name).macs, cost(&name.replace("SiT", "DiT")).macs, "{name}: DiT's network");
    }
}

#[test]
fn analytic_params_equal_built_model_params_for_every_switch() {
    let configs = [
        r#"{"arch":"u-dit","input_size":24,"hidden_size":16,"num_heads":2,"depth":[1,1,1,1,1],"mlp_ratio":2,"downsampler":"dwconv3","down_shortcut":1,"attn_type":"v2","posemb_type":"rope2d","num_classes":7}"#,
        r#"{"arch":"u-dit","input_size":16,"hidden_size":16,"num_heads":2,"depth":[1,0,1,0,1],"mlp_ratio":3,"downsampler":"dwconv5","rep":0,"learn_sigma":false,"class_dropout_prob":0}"#,
        r#"{"arch":"u-dit","input_size":8,"hidden_size":8,"num_heads":1,"depth":[1,1,1,1,1],"downsampler":"dwconv7","ffn_type":"basic","down_factor":1,"in_channels":3}"#,
        r#"{"arch":"dit","input_size":8,"patch_size":4,"hidden_size":32,"depth":2,"num_heads":2,"num_classes":5}"#,
    ];
    for json in configs {
        let cfg = ModelConfig::from_json(json).unwrap();
        let count = |form| -> u64 {
            let m = Denoiser::new(&cfg, form, &Device::flex());
            param_shapes(&m)
                .iter()
                .filter(|(k, _)| *k != "pos_embed")
                .map(|(_, s)| s.iter().product::<usize>() as u64)
                .sum()
        };
        let c = Cost::of(&cfg);
        assert_eq!(c.params, count(FfnForm::Train), "{json}");
        let fixed = if matches!(cfg, ModelConfig::DiT(_)) { 4 * 32 } else { 0 };
        assert_eq!(c.params_merged, count(FfnForm::Merged) + fixed, "{json}");
    }
}

#[test]
fn token_downsampling_quarters_attention_cost() {
    let full = r#"{"arch":"u-dit","hidden_size":32,"num_heads":2,"depth":[1,0,0,0,0],"downsampler":"dwconv3","down_factor":1,"ffn_type":"basic"}"#;
    let down = full.replace(r#""down_factor":1"#, r#""down_factor":2"#);
    let (a, b) = (Cost::of(&ModelConfig::from_json(full).unwrap()), Cost::of(&ModelConfig::from_json(&down).unwrap()));
    // Stage 1 at 32x32 (n = 1024 tokens, width 32): q k^T and attn v cost 2 n^2 C with full
    // attention and a quarter of it with 4 groups; the logit scaling 2 n^2 heads likewise.
    let n = 1024u64;
    let saved = 2 * (2 * n * n * 32 * 3 / 4) + 2 * (n * n * 2 * 3 / 4);
    assert_eq!(a.macs - b.macs, saved);
}

#[test]
fn default_sampling_batch_follows_the_cost() {
    let batch = |c: Cost| udit::sample::default_batch(c.macs as f64 * 1e-9);
    // 256 GMACs a batch, in powers of two, 1 to 128.
    assert_eq!(batch(cost("U-DiT-B")), 8); // 256 / 22.22 = 11.5
    assert_eq!(batch(cost("U-DiT-S")), 32); // 42.4
    assert_eq!(batch(cost("U-DiT-L")), 2); // 3.01
    assert_eq!(batch(cost("DiT-XL/2")), 2); // 2.16
    let bundled = std::fs::read_to_string("configs/fashion-mnist-udit.json").unwrap();
    assert_eq!(batch(Cost::of(&ModelConfig::from_json(&bundled).unwrap())), 128); // 0.085 GMACs
    assert_eq!(udit::sample::default_batch(300.0), 1);
}
