//! The pickled `args` of training checkpoints: the Namespace's scalars from streams Python's
//! `pickle` wrote (protocols 2 and 4, with memo references), and what a checkpoint's args make
//! of the model and the process.

mod common;

use std::collections::BTreeMap;

use common::*;
use udit::checkpoint::read_weights;
use udit::io::pickle::{Arg, namespace_args};
use udit::model::ModelConfig;
use udit::process::ProcessSpec;

/// `pickle.dumps({'names': [s, 'x'], 'args': argparse.Namespace(model=s, path_type='GVP',
/// sizes=[1, 2, (3, 4)], cfg=4.0, big=2**40, neg=-3, flag=True, eps=None)}, protocol=P)`
/// with `s = 'SiT-XL/2'` (so `model` is a memo reference), from Python 3.11.
const PROTOCOL_2: &str = "80027d71002858050000006e616d657371015d71022858080000005369542d584c2f32710358010000007871046558040000006172677371056361726770617273650a4e616d6573706163650a7106298171077d71082858050000006d6f64656c710968035809000000706174685f74797065710a5803000000475650710b580500000073697a6573710c5d710d284b014b024b034b0486710e655803000000636667710f474010000000000000580300000062696771108a0600000000000158030000006e656771114afdffffff5804000000666c6167711288580300000065707371134e7562752e";
const PROTOCOL_4: &str = "800495b1000000000000007d94288c056e616d6573945d94288c085369542d584c2f32948c017894658c0461726773948c086172677061727365948c094e616d6573706163659493942981947d94288c056d6f64656c9468038c09706174685f74797065948c03475650948c0573697a6573945d94284b014b024b034b048694658c03636667944740100000000000008c03626967948a060000000000018c036e6567944afdffffff8c04666c616794888c03657073944e7562752e";

fn bytes(hex: &str) -> Vec<u8> {
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
}

#[test]
fn namespace_scalars_are_read_through_the_memo_in_both_protocols() {
    let expected: BTreeMap<String, Arg> = [
        ("model", Arg::Str("SiT-XL/2".into())),
        ("path_type", Arg::Str("GVP".into())),
        ("cfg", Arg::Float(4.0)),
        ("big", Arg::Int(1 << 40)),
        ("neg", Arg::Int(-3)),
        ("flag", Arg::Bool(true)),
        ("eps", Arg::None),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (name, hex) in [("protocol 2", PROTOCOL_2), ("protocol 4", PROTOCOL_4)] {
        let args = namespace_args(&bytes(hex)).unwrap().expect("a Namespace");
        assert_eq!(args, expected, "{name} (the list `sizes` is left out)");
    }
}

#[test]
fn streams_without_a_namespace_or_cut_short_are_told_apart() {
    // pickle.dumps({'a': 1}, protocol=2)
    assert_eq!(namespace_args(&bytes("80027d710058010000006171014b01732e")).unwrap(), None);
    let cut = bytes(PROTOCOL_2);
    let err = namespace_args(&cut[..cut.len() / 2]).unwrap_err();
    assert!(err.to_string().contains("ends inside"), "{err}");
    let err = namespace_args(&[0x80, 0x02, 0xff]).unwrap_err();
    assert!(err.to_string().contains("unknown pickle opcode 0xff"), "{err}");
}

#[test]
fn a_training_checkpoints_args_name_its_model_and_process() {
    // VisionLLaMA's layout: args model 'SiTLLaMA-S/2', image_size 128, 10 classes, Linear
    // velocity (its weights are the tiny fixture's: the args are what train.py was told).
    let w = read_weights(&fixture("sitllama_tiny.train-checkpoint.pt"), None).unwrap();
    let mut expected = ModelConfig::preset("SiT-LLaMA-S/2").unwrap().with_input_size(16).unwrap();
    if let ModelConfig::SiTLLaMA(c) = &mut expected {
        c.num_classes = 10;
    }
    assert_eq!(w.config, Some(expected));
    let process = ProcessSpec::of_weights(&w.metadata, w.config.as_ref().unwrap()).unwrap();
    let linear = ProcessSpec::Interpolant {
        path_type: "Linear".into(),
        prediction: "velocity".into(),
        loss_weight: None,
        train_eps: None,
        sample_eps: None,
    };
    assert_eq!(process, linear);
}
