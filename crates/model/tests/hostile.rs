//! Untrusted ONNX bytes: random, truncated, mutated and hand-crafted hostile inputs give typed
//! errors (or a valid model), never a panic, and what imports also runs.

use std::path::PathBuf;
use std::sync::OnceLock;

use cipherinfer_model::Manifest;
use cipherinfer_model::onnx::{self, ImportOptions, Limits, OnnxError};
use cipherinfer_model::plain::{self, Tensor};
use proptest::prelude::*;

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    std::fs::read(path).expect("fixture")
}

fn mnist_cnn() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        Manifest::shipped()
            .and_then(|m| m.read_model("mnist-cnn"))
            .expect("mnist-cnn")
            .bytes
    })
}

fn ops() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| fixture("ops.onnx"))
}

/// Imports, and when that succeeds runs the model on zeros if it is small enough to be quick.
fn import_and_run(bytes: &[u8]) -> Result<(), OnnxError> {
    let model = onnx::import(bytes)?;
    let work: usize = model.shapes().iter().map(|s| s.len()).sum();
    if work < 1 << 20 {
        let x = Tensor::zeros(model.input_shape());
        let out = plain::run(&model, &x).map_err(OnnxError::from)?;
        assert_eq!(out.shape(), model.output_shape());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = import_and_run(&bytes);
    }

    #[test]
    fn a_real_prefix_followed_by_random_bytes_never_panics(
        cut in 0usize..2730,
        tail in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut bytes = ops()[..cut.min(ops().len())].to_vec();
        bytes.extend(tail);
        let _ = import_and_run(&bytes);
    }

    #[test]
    fn truncations_of_a_real_model_are_errors(len in 0usize..299_709) {
        let full = mnist_cnn();
        let cut = &full[..len.min(full.len() - 1)];
        prop_assert!(onnx::import(cut).is_err());
    }

    #[test]
    fn mutations_of_real_models_never_panic(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..6),
        small in any::<bool>(),
    ) {
        let mut bytes = if small { ops().to_vec() } else { mnist_cnn().to_vec() };
        for (at, bit) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
        }
        let _ = import_and_run(&bytes);
    }

    #[test]
    fn overwritten_bytes_of_the_fixture_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = ops().to_vec();
        for (at, v) in edits {
            let i = at.index(bytes.len());
            bytes[i] = v;
        }
        let _ = import_and_run(&bytes);
    }
}

#[test]
fn every_truncation_and_every_bit_flip_of_the_small_fixtures_is_handled() {
    for name in ["ops.onnx", "unsupported.onnx"] {
        let bytes = fixture(name);
        for len in 0..bytes.len() {
            assert!(
                onnx::import(&bytes[..len]).is_err(),
                "{name}: prefix of {len} bytes imports"
            );
        }
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                let _ = import_and_run(&b);
            }
        }
    }
}

#[test]
fn every_bit_flip_of_the_torch_fixtures_is_handled() {
    // TorchScript's constant chains (pads, view) and the dynamo forms go through the import-time
    // constant folding: corrupted, they must give errors, never a panic.
    for name in ["cnn_b_opset13.onnx", "cnn_b_dynamo_style.onnx"] {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        let bytes = std::fs::read(path).expect("fixture");
        for len in 0..bytes.len() {
            assert!(
                onnx::import(&bytes[..len]).is_err(),
                "{name}: prefix of {len} bytes imports"
            );
        }
        // Two of the eight bits of each byte (all eight take ~10 s for these files).
        for i in 0..bytes.len() {
            for bit in [i % 8, (i + 3) % 8] {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                let _ = import_and_run(&b);
            }
        }
    }
}

// --------------------------------------------------------------------------- crafted messages

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_varint(field: u64, v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    varint(field << 3, &mut out);
    varint(v, &mut out);
    out
}

fn field_bytes(field: u64, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint((field << 3) | 2, &mut out);
    varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

fn opset17() -> Vec<u8> {
    field_bytes(8, &field_varint(2, 17))
}

fn model_with_graph(graph: &[u8]) -> Vec<u8> {
    let mut m = field_varint(1, 8);
    m.extend(field_bytes(7, graph));
    m.extend(opset17());
    m
}

fn tensor(dims: &[i64], data_type: u64, raw: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    for &d in dims {
        t.extend(field_varint(1, d as u64));
    }
    t.extend(field_varint(2, data_type));
    t.extend(field_bytes(8, b"w"));
    t.extend(field_bytes(9, raw));
    t
}

fn malformed(r: Result<impl std::fmt::Debug, OnnxError>) -> String {
    match r {
        Err(OnnxError::Malformed { at, reason }) => format!("{at}: {reason}"),
        other => format!("NOT MALFORMED: {other:?}"),
    }
}

#[test]
fn hand_crafted_hostile_messages_give_typed_errors() {
    // A length prefix far beyond the bytes present.
    let mut huge = vec![0x3a];
    varint(u64::from(u32::MAX), &mut huge);
    let m = malformed(onnx::decode(&huge));
    assert!(m.contains("runs past the end"), "{m}");
    // An overlong varint.
    let mut long = vec![0x08];
    long.extend([0xff; 11]);
    let m = malformed(onnx::decode(&long));
    assert!(m.contains("varint"), "{m}");
    let m = malformed(onnx::decode(&[
        0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
    ]));
    assert!(m.contains("64 bits"), "{m}");
    // Deprecated group wire types and field number 0.
    assert!(malformed(onnx::decode(&[0x0b])).contains("wire type"));
    assert!(malformed(onnx::decode(&[0x00, 0x00])).contains("field number"));
    // No graph, two graphs.
    assert!(malformed(onnx::decode(&opset17())).contains("no graph"));
    let mut two = model_with_graph(&[]);
    two.extend(field_bytes(7, &[]));
    assert!(malformed(onnx::decode(&two)).contains("more than one graph"));
    // A tensor announcing 2^60 values, a negative dimension, data of the wrong length.
    let big = model_with_graph(&field_bytes(5, &tensor(&[1 << 30, 1 << 30], 1, &[0; 8])));
    assert!(matches!(
        onnx::decode(&big),
        Err(OnnxError::TooLarge {
            what: "tensor element count",
            ..
        })
    ));
    let neg = model_with_graph(&field_bytes(5, &tensor(&[-4], 1, &[0; 16])));
    assert!(malformed(onnx::decode(&neg)).contains("negative dimension"));
    let short = model_with_graph(&field_bytes(5, &tensor(&[5], 1, &[0; 16])));
    assert!(malformed(onnx::decode(&short)).contains("holds 4 values, expected 5"));
    // External data.
    let mut ext = tensor(&[1], 1, &[0; 4]);
    ext.extend(field_varint(14, 1));
    let ext = model_with_graph(&field_bytes(5, &ext));
    assert!(malformed(onnx::decode(&ext)).contains("outside the file"));
    // Invalid UTF-8 in a name.
    let bad_name = model_with_graph(&field_bytes(2, &[0xff, 0xfe]));
    assert!(malformed(onnx::decode(&bad_name)).contains("UTF-8"));
    // A node without op_type.
    let no_op = model_with_graph(&field_bytes(1, &field_bytes(3, b"n")));
    assert!(malformed(onnx::decode(&no_op)).contains("op_type"));
    // An empty graph: no input.
    assert!(matches!(
        onnx::import(&model_with_graph(&[])),
        Err(OnnxError::Invalid { .. })
    ));
    // NaN weights decode but the IR refuses them.
    let mut nan = fixture("ops.onnx");
    // TensorProto.name (field 8) = "conv_a.w"
    let pos = 2 + nan
        .windows(10)
        .position(|w| w == b"\x42\x08conv_a.w")
        .expect("name");
    // The raw_data field (tag, length varint, floats) of conv_a.w follows its name field:
    // poison the first float.
    let len_start = pos + 8 + 1;
    let len_bytes = 1 + nan[len_start..]
        .iter()
        .position(|&b| b & 0x80 == 0)
        .expect("varint end");
    let raw = len_start + len_bytes;
    nan[raw..raw + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    let err = onnx::import(&nan).expect_err("NaN weight");
    assert!(
        matches!(&err, OnnxError::Ir(e) if e.to_string().contains("weights[0] is not finite")),
        "{err:?}"
    );
}

#[test]
fn limits_are_enforced_before_work_is_done() {
    let bytes = ops();
    let tight = |f: fn(&mut Limits)| {
        let mut limits = Limits::default();
        f(&mut limits);
        onnx::import_with(
            bytes,
            &ImportOptions {
                limits,
                ..Default::default()
            },
        )
    };
    assert!(matches!(
        tight(|l| l.max_bytes = 1000),
        Err(OnnxError::TooLarge {
            what: "file size in bytes",
            ..
        })
    ));
    assert!(matches!(
        tight(|l| l.max_nodes = 3),
        Err(OnnxError::TooLarge {
            what: "node count",
            ..
        })
    ));
    assert!(matches!(
        tight(|l| l.max_initializers = 3),
        Err(OnnxError::TooLarge {
            what: "initializer count",
            ..
        })
    ));
    assert!(matches!(
        tight(|l| l.max_tensor_elements = 64),
        Err(OnnxError::TooLarge {
            what: "tensor element count",
            ..
        })
    ));
    assert!(matches!(
        tight(|l| l.max_total_elements = 100),
        Err(OnnxError::TooLarge {
            what: "total tensor element count",
            ..
        })
    ));
    assert!(matches!(
        tight(|l| l.max_attribute_values = 3),
        Err(OnnxError::TooLarge {
            what: "repeated field values",
            ..
        })
    ));
    assert!(matches!(
        tight(|l| l.max_string = 4),
        Err(OnnxError::TooLarge { .. })
    ));
    assert!(tight(|_| {}).is_ok());
}

#[test]
fn every_tensor_data_encoding_decodes_to_the_same_values() {
    use cipherinfer_model::onnx::TensorData;
    let values = [1.5f32, -2.25, 0.0, 3.0e-3];
    let header = |data_type: u64| {
        let mut t = field_varint(1, 2);
        t.extend(field_varint(1, 2));
        t.extend(field_varint(2, data_type));
        t
    };
    // raw_data
    let mut raw = Vec::new();
    values.iter().for_each(|v| raw.extend(v.to_le_bytes()));
    let mut a = header(1);
    a.extend(field_bytes(9, &raw));
    // packed float_data
    let mut b = header(1);
    b.extend(field_bytes(4, &raw));
    // one fixed32 float_data field per value
    let mut c = header(1);
    for v in values {
        c.push((4 << 3) | 5);
        c.extend(v.to_le_bytes());
    }
    // packed double_data
    let mut d = header(11);
    let mut doubles = Vec::new();
    values
        .iter()
        .for_each(|&v| doubles.extend(f64::from(v).to_le_bytes()));
    d.extend(field_bytes(10, &doubles));
    let want = TensorData::Float(values.iter().map(|&v| f64::from(v)).collect());
    for t in [a, b, c, d] {
        let m = onnx::decode(&model_with_graph(&field_bytes(5, &t))).expect("decodes");
        assert_eq!(m.graph.initializers[0].data, want);
        assert_eq!(m.graph.initializers[0].dims, [2, 2]);
    }
    // int64 shapes: packed int64_data, one varint per value, raw_data; negative values.
    let ints = [1i64, -1, 7, 0];
    let mut packed = Vec::new();
    ints.iter().for_each(|&v| varint(v as u64, &mut packed));
    let mut e = header(7);
    e.extend(field_bytes(7, &packed));
    let mut f = header(7);
    ints.iter()
        .for_each(|&v| f.extend(field_varint(7, v as u64)));
    let mut g = header(7);
    let mut raw = Vec::new();
    ints.iter().for_each(|v| raw.extend(v.to_le_bytes()));
    g.extend(field_bytes(9, &raw));
    for t in [e, f, g] {
        let m = onnx::decode(&model_with_graph(&field_bytes(5, &t))).expect("decodes");
        assert_eq!(m.graph.initializers[0].data, TensorData::Int(ints.to_vec()));
    }
}
