//! Image preprocessing: the shipped sample PNGs give exactly the sample-set values; JPEG, RGB
//! and larger images are accepted and resized; broken and hostile files are refused.
#![allow(clippy::unwrap_used, clippy::panic, reason = "tests fail loudly")]

mod common;

use cipherinfer_local::image::{MAX_IMAGE_FILE_BYTES, decode, preprocess_bytes, preprocess_file};
use cipherinfer_model::Manifest;
use cipherinfer_model::manifest::InputSpec;
use cipherinfer_protocol::ErrorCode;
use common::Scratch;
use image::{GrayImage, ImageFormat, Luma, Rgb, RgbImage};

fn model_input(model: &str) -> InputSpec {
    Manifest::shipped()
        .unwrap()
        .model(model)
        .unwrap()
        .input
        .clone()
}

fn encode(img: &image::DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn code(r: cipherinfer_protocol::Result<Vec<f64>>) -> ErrorCode {
    match r {
        Ok(_) => panic!("accepted"),
        Err(e) => e.error_code,
    }
}

#[test]
fn shipped_samples_match_the_sample_sets_exactly() {
    let manifest = Manifest::shipped().unwrap();
    let mut checked = 0;
    for (dataset, model) in [("mnist", "mnist-cnn"), ("fashion-mnist", "fashion-cnn")] {
        let entry = manifest.dataset(dataset).unwrap();
        let samples = manifest.load_samples(dataset).unwrap();
        let spec = model_input(model);
        assert!(!entry.images.is_empty());
        for img in &entry.images {
            let got = preprocess_file(&manifest.path_of(&img.file), (1, 28, 28), &spec).unwrap();
            let index = img.test_index - entry.samples.first_test_index;
            let want: Vec<f64> = spec
                .normalize(samples.image(index).unwrap())
                .into_iter()
                .map(f64::from)
                .collect();
            assert_eq!(got, want, "{}", img.file);
            assert_eq!(samples.label(index), Some(img.label));
            checked += 1;
        }
    }
    assert_eq!(checked, 20);
}

#[test]
fn jpeg_rgb_and_larger_images_are_converted_and_resized() {
    let manifest = Manifest::shipped().unwrap();
    let spec = model_input("mnist-cnn");
    let path = manifest.path_of(&manifest.dataset("mnist").unwrap().images[0].file);
    let original = decode(&std::fs::read(&path).unwrap()).unwrap();
    let want = preprocess_file(&path, (1, 28, 28), &spec).unwrap();
    // Upscaled 3x, as RGB, as JPEG and as PNG: back to 28x28 luma, close to the original.
    let big = image::DynamicImage::ImageRgb8(image::imageops::resize(
        &original.to_rgb8(),
        84,
        84,
        image::imageops::FilterType::Nearest,
    ));
    for format in [ImageFormat::Jpeg, ImageFormat::Png] {
        let got = preprocess_bytes(&encode(&big, format), (1, 28, 28), &spec).unwrap();
        assert_eq!(got.len(), 784);
        let mean_diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .sum::<f64>()
            / 784.0;
        // In normalized units (1/std ≈ 3.2 per unit of pixel/255).
        assert!(mean_diff < 0.25, "{format:?}: mean difference {mean_diff}");
    }
    // A same-size image is not resampled: a 28x28 grayscale PNG is read exactly.
    let exact = preprocess_bytes(&encode(&original, ImageFormat::Png), (1, 28, 28), &spec).unwrap();
    assert_eq!(exact, want);
}

#[test]
fn rgb_models_get_channel_major_per_channel_normalization() {
    let spec = InputSpec {
        name: "input".into(),
        shape: vec![1, 3, 4, 5],
        layout: "NCHW".into(),
        dtype: "float32".into(),
        preprocess: String::new(),
        mean: vec![0.5, 0.25, 0.0],
        std: vec![0.5, 0.25, 1.0],
    };
    let img = RgbImage::from_pixel(10, 8, Rgb([255, 0, 51]));
    let got = preprocess_bytes(
        &encode(&image::DynamicImage::ImageRgb8(img), ImageFormat::Png),
        (3, 4, 5),
        &spec,
    )
    .unwrap();
    assert_eq!(got.len(), 60);
    let planes: Vec<&[f64]> = got.chunks(20).collect();
    let close = |v: f64, want: f64| (v - want).abs() < 1e-6;
    assert!(planes[0].iter().all(|&v| close(v, 1.0)), "{:?}", planes[0]);
    assert!(planes[1].iter().all(|&v| close(v, -1.0)), "{:?}", planes[1]);
    assert!(planes[2].iter().all(|&v| close(v, 0.2)), "{:?}", planes[2]);
    // A grayscale image for an RGB model is replicated to three channels.
    let gray = GrayImage::from_pixel(5, 4, Luma([255]));
    let got = preprocess_bytes(
        &encode(&image::DynamicImage::ImageLuma8(gray), ImageFormat::Png),
        (3, 4, 5),
        &spec,
    )
    .unwrap();
    assert!(got[..20].iter().all(|&v| close(v, 1.0)));
    assert!(got[20..40].iter().all(|&v| close(v, 3.0)));
    // Channel counts without an image form are refused.
    assert_eq!(
        code(preprocess_bytes(
            &encode(
                &image::DynamicImage::ImageLuma8(GrayImage::new(2, 2)),
                ImageFormat::Png
            ),
            (2, 2, 2),
            &spec
        )),
        ErrorCode::UnsupportedPacking
    );
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

/// A PNG whose header claims `width` x `height` (bit depth, color type) with a tiny IDAT.
fn png_header_only(width: u32, height: u32, depth: u8, color: u8) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[depth, color, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    // zlib stream of a few zero bytes.
    chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x9c, 0x63, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01],
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

#[test]
fn broken_and_hostile_files_are_refused() {
    let spec = model_input("mnist-cnn");
    let shape = (1, 28, 28);
    let manifest = Manifest::shipped().unwrap();
    let png = std::fs::read(manifest.path_of(&manifest.dataset("mnist").unwrap().images[0].file))
        .unwrap();
    // Truncated PNG, text, empty, an unsupported format.
    for bytes in [
        &png[..png.len() / 2],
        &png[..20],
        b"hello, I am not an image\n".as_slice(),
        b"",
        b"GIF89a\x01\x00\x01\x00\x00\x00\x00;",
        b"BM\x00\x00\x00\x00",
    ] {
        assert_eq!(
            code(preprocess_bytes(bytes, shape, &spec)),
            ErrorCode::ImageUnreadable
        );
    }
    // Dimension bombs: refused from the header, before anything is inflated.
    for (w, h, depth, color) in [
        (100_000, 100_000, 8, 0),
        (8193, 1, 8, 0),
        (1, 8193, 8, 0),
        (u32::MAX / 2, 2, 8, 2),
        (8192, 8192, 16, 6), // 512 MiB of RGBA16: above the allocation limit
    ] {
        let started = std::time::Instant::now();
        let e = preprocess_bytes(&png_header_only(w, h, depth, color), shape, &spec).unwrap_err();
        assert_eq!(e.error_code, ErrorCode::ImageUnreadable, "{w}x{h}: {e:?}");
        assert!(
            e.message.contains("limit"),
            "{w}x{h} refused for another reason: {}",
            e.message
        );
        assert!(started.elapsed().as_secs_f64() < 2.0, "{w}x{h} took long");
    }
    // Files: missing, and larger than the read limit (sparse, nothing is read).
    let scratch = Scratch::new("img");
    assert_eq!(
        code(preprocess_file(&scratch.join("nope.png"), shape, &spec)),
        ErrorCode::FileNotFound
    );
    let big = scratch.join("big.png");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(MAX_IMAGE_FILE_BYTES + 1).unwrap();
    assert_eq!(
        code(preprocess_file(&big, shape, &spec)),
        ErrorCode::ImageUnreadable
    );
}

#[test]
fn a_wider_or_taller_image_is_centre_cropped_not_stretched() {
    use cipherinfer_model::image::{centre_crop, preprocess_bytes_fitted};
    let manifest = Manifest::shipped().unwrap();
    let spec = model_input("mnist-cnn");
    let path = manifest.path_of(&manifest.dataset("mnist").unwrap().images[0].file);
    let original = decode(&std::fs::read(&path).unwrap()).unwrap().to_luma8();
    let want = preprocess_file(&path, (1, 28, 28), &spec).unwrap();
    // The digit in the middle of a wide black canvas (and of a tall one): the centre square is
    // kept, so the model sees the digit as it was, not squashed.
    for (w, h, x, y) in [(56u32, 28u32, 14u32, 0u32), (28, 70, 0, 21)] {
        let mut canvas = GrayImage::from_pixel(w, h, Luma([0]));
        image::imageops::replace(&mut canvas, &original, i64::from(x), i64::from(y));
        let bytes = encode(&image::DynamicImage::ImageLuma8(canvas), ImageFormat::Png);
        let (got, fitted) = preprocess_bytes_fitted(&bytes, (1, 28, 28), &spec).unwrap();
        assert_eq!(fitted.cropped, Some((x, y, 28, 28)), "{w}x{h}");
        assert!(!fitted.resized, "{w}x{h}: the crop is already 28x28");
        assert_eq!(got, want, "{w}x{h}");
    }
    // Ratios within a pixel are not cropped; extreme ratios keep at least one pixel.
    assert_eq!(centre_crop((640, 480), (32, 24)), None);
    assert_eq!(centre_crop((33, 32), (32, 32)), None);
    assert_eq!(centre_crop((640, 480), (32, 32)), Some((80, 0, 480, 480)));
    assert_eq!(centre_crop((1, 8192), (32, 32)), Some((0, 4095, 1, 1)));
    assert_eq!(centre_crop((8192, 3), (64, 64)), Some((4094, 0, 3, 3)));
}
