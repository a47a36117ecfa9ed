//! Unit tests of the manifest module.

use std::path::Path;

use super::checks::check_file_name;
use super::*;

fn sample_bytes(labels: &[u8], shape: (u16, u16, u16), classes: u16) -> Vec<u8> {
    let (h, w, c) = shape;
    let mut b = SAMPLES_MAGIC.to_vec();
    b.extend(SAMPLES_VERSION.to_le_bytes());
    b.extend(classes.to_le_bytes());
    b.extend((labels.len() as u32).to_le_bytes());
    for v in [h, w, c, 0] {
        b.extend(v.to_le_bytes());
    }
    b.extend(labels);
    let n = labels.len() * usize::from(h) * usize::from(w) * usize::from(c);
    b.extend((0..n).map(|i| (i % 251) as u8));
    b
}

#[test]
fn parses_a_well_formed_sample_set() {
    let bytes = sample_bytes(&[3, 0, 9], (2, 3, 1), 10);
    let set = SampleSet::parse(&bytes, Path::new("s.bin")).expect("valid");
    assert_eq!(set.len(), 3);
    assert_eq!(set.labels(), &[3, 0, 9]);
    assert_eq!(set.image(1), Some(&[6u8, 7, 8, 9, 10, 11][..]));
    assert_eq!(set.image(3), None);
    assert_eq!(set.iter().count(), 3);
}

#[test]
fn rejects_malformed_sample_sets_without_panicking() {
    let good = sample_bytes(&[1, 2], (2, 2, 1), 10);
    let mut cases: Vec<Vec<u8>> = (0..good.len()).map(|n| good[..n].to_vec()).collect();
    let mut longer = good.clone();
    longer.push(0);
    cases.push(longer);
    let mut magic = good.clone();
    magic[0] ^= 1;
    cases.push(magic);
    cases.push(sample_bytes(&[1, 10], (2, 2, 1), 10)); // label out of range
    cases.push(sample_bytes(&[], (2, 2, 1), 10)); // empty
    cases.push(sample_bytes(&[0], (2, 2, 1), 0)); // no classes
    let mut huge = good.clone();
    huge[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    huge[16..22].copy_from_slice(&[0xff; 6]);
    cases.push(huge);
    for bytes in cases {
        let r = SampleSet::parse(&bytes, Path::new("bad.bin"));
        assert!(
            matches!(&r, Err(ModelError::InvalidSamples { path, .. }) if path == Path::new("bad.bin")),
            "accepted or wrong error: {r:?}"
        );
    }
}

#[test]
fn file_names_may_not_leave_the_models_directory() {
    assert!(check_file_name("mnist-cnn.onnx").is_ok());
    assert!(check_file_name("samples/mnist/a.png").is_ok());
    for bad in ["", "/etc/passwd", "../x.onnx", "samples/../../x", "./x"] {
        assert!(check_file_name(bad).is_err(), "{bad}");
    }
}

#[test]
fn normalizes_pixels_per_channel() {
    let spec = InputSpec {
        name: "input".into(),
        shape: vec![1, 1, 1, 2],
        layout: "NCHW".into(),
        dtype: "float32".into(),
        preprocess: String::new(),
        mean: vec![0.5],
        std: vec![0.25],
    };
    assert_eq!(spec.normalize(&[0, 255]), vec![-2.0, 2.0]);
}
