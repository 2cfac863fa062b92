//! Dataset formats on small fixtures written here in each format's exact byte layout (CIFAR-10 and
//! CIFAR-100 binary, NumPy `.npy`, safetensors), the files under `tests/fixtures/` written by
//! NumPy and the Python safetensors package, and the errors for corrupt or mismatched files.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::Path;

use trainer::data::{load_dir, read_npy, InputShape};

mod common;
use common::{cifar10_dir, cifar_records};

#[test]
fn cifar10_binary_loads_channel_planes_and_labels() {
    let dir = tempfile::tempdir().unwrap();
    cifar10_dir(dir.path(), 30, 12);
    // The archive's single subdirectory is looked into.
    let data = load_dir(dir.path()).unwrap();
    assert_eq!((data.train.len(), data.test.len()), (30, 12));
    assert_eq!(data.train.shape, InputShape::image(3, 32, 32));
    assert_eq!(data.train.features, 3072);
    assert_eq!(data.train.labels[..4], [0, 1, 2, 3]);
    assert_eq!(data.test.labels[0], 3);
    // Per-channel normalization: every channel of the training split has mean 0, variance 1.
    for ch in 0..3 {
        let vals: Vec<f64> = (0..30)
            .flat_map(|i| data.train.image(i)[ch * 1024..(ch + 1) * 1024].to_vec())
            .map(f64::from)
            .collect();
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64;
        assert!(
            mean.abs() < 1e-4 && (var - 1.0).abs() < 1e-3,
            "{ch}: {mean} {var}"
        );
    }
    // Example 1 (class 1) has its bright rows 3-5 in the green plane, in row-major order.
    let img = data.train.image(1);
    assert!(img[1024 + 3 * 32] > 1.0 && img[3 * 32] < 0.5 && img[2048 + 3 * 32] < 0.5);
}

#[test]
fn cifar100_binary_uses_the_fine_labels() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("train.bin"), cifar_records(120, 2, 100, 0)).unwrap();
    std::fs::write(dir.path().join("test.bin"), cifar_records(10, 2, 100, 95)).unwrap();
    let data = load_dir(dir.path()).unwrap();
    assert_eq!((data.train.len(), data.test.len()), (120, 10));
    assert_eq!(data.train.labels[99], 99);
    assert_eq!(data.train.classes(), 100);
    assert_eq!(data.test.labels[..6], [95, 96, 97, 98, 99, 0]);
}

#[test]
fn corrupt_or_mismatched_cifar_files_are_refused_with_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let d = cifar10_dir(dir.path(), 4, 2);
    let err = |d: &Path| load_dir(d).unwrap_err().to_string();

    let mut truncated = cifar_records(4, 1, 10, 0);
    truncated.truncate(3 * 3073 + 100);
    std::fs::write(d.join("data_batch_1.bin"), &truncated).unwrap();
    let e = err(&d);
    assert!(
        e.contains("data_batch_1.bin")
            && e.contains("3073-byte records")
            && e.contains("truncated"),
        "{e}"
    );

    std::fs::write(d.join("data_batch_1.bin"), cifar_records(3, 2, 100, 0)).unwrap();
    let e = err(&d);
    assert!(
        e.contains("data_batch_1.bin") && e.contains("is it CIFAR-100?"),
        "{e}"
    );

    let mut bad_label = cifar_records(4, 1, 10, 0);
    bad_label[2 * 3073] = 10;
    std::fs::write(d.join("data_batch_1.bin"), &bad_label).unwrap();
    let e = err(&d);
    assert!(
        e.contains("data_batch_1.bin") && e.contains("record 2 has label 10") && e.contains("0-9"),
        "{e}"
    );

    std::fs::write(d.join("data_batch_1.bin"), cifar_records(4, 1, 10, 0)).unwrap();
    std::fs::remove_file(d.join("test_batch.bin")).unwrap();
    let e = err(&d);
    assert!(e.contains("has no test_batch.bin"), "{e}");

    let c100 = dir.path().join("c100");
    std::fs::create_dir_all(&c100).unwrap();
    let mut coarse = cifar_records(2, 2, 100, 0);
    coarse[3074] = 20;
    std::fs::write(c100.join("train.bin"), &coarse).unwrap();
    std::fs::write(c100.join("test.bin"), cifar_records(2, 2, 100, 0)).unwrap();
    let e = err(&c100);
    assert!(
        e.contains("train.bin") && e.contains("record 1 has label 20"),
        "{e}"
    );

    let empty = dir.path().join("empty");
    std::fs::create_dir_all(empty.join("a")).unwrap();
    std::fs::create_dir_all(empty.join("b")).unwrap();
    let e = err(&empty);
    assert!(
        e.contains("holds no dataset") && e.contains("CIFAR-10 binary"),
        "{e}"
    );
}

/// A `.npy` file, version 1.0, exactly as `numpy.save` lays it out: magic, version, header length,
/// the header dict padded with spaces to a multiple of 64 bytes and ended by a newline, the data.
fn npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let tuple = if shape.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn i64_bytes(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn npy_arrays_load_as_floats_pixels_or_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let x: Vec<f32> = (0..6 * 4).map(|i| i as f32 * 0.5 - 3.0).collect();
    std::fs::write(d.join("train_x.npy"), npy("<f4", &[6, 4], &f32_bytes(&x))).unwrap();
    std::fs::write(
        d.join("train_y.npy"),
        npy("<i8", &[6], &i64_bytes(&[0, 1, 2, 0, 1, 2])),
    )
    .unwrap();
    std::fs::write(
        d.join("test_x.npy"),
        npy("<f4", &[2, 4], &f32_bytes(&x[..8])),
    )
    .unwrap();
    std::fs::write(d.join("test_y.npy"), npy("|u1", &[2], &[2, 1])).unwrap();
    let data = load_dir(d).unwrap();
    assert_eq!(data.train.shape, InputShape::image(1, 1, 4));
    assert_eq!(data.train.images, x, "float inputs are used as given");
    assert_eq!(data.train.labels, [0, 1, 2, 0, 1, 2]);
    assert_eq!(data.test.labels, [2, 1]);

    // uint8 [N, C, H, W] inputs are pixels, normalized per channel.
    let px: Vec<u8> = (0..4 * 2 * 3 * 3).map(|i| (i * 7 % 256) as u8).collect();
    std::fs::write(d.join("train_x.npy"), npy("|u1", &[4, 2, 3, 3], &px)).unwrap();
    std::fs::write(d.join("train_y.npy"), npy("|u1", &[4], &[0, 1, 0, 1])).unwrap();
    std::fs::write(d.join("test_x.npy"), npy("|u1", &[1, 2, 3, 3], &px[..18])).unwrap();
    std::fs::write(d.join("test_y.npy"), npy("|u1", &[1], &[1])).unwrap();
    let data = load_dir(d).unwrap();
    assert_eq!(data.train.shape, InputShape::image(2, 3, 3));
    let mean: f32 = data.train.images.iter().sum::<f32>() / data.train.images.len() as f32;
    assert!(mean.abs() < 1e-5, "{mean}");

    // Integer [N, T] inputs are token ids; the vocabulary is the largest id + 1.
    let tokens: Vec<i64> = (0..5 * 3).map(|i| i % 7).collect();
    std::fs::write(
        d.join("train_x.npy"),
        npy("<i8", &[5, 3], &i64_bytes(&tokens)),
    )
    .unwrap();
    std::fs::write(d.join("train_y.npy"), npy("|u1", &[5], &[0, 1, 0, 1, 0])).unwrap();
    std::fs::write(
        d.join("test_x.npy"),
        npy("<i8", &[1, 3], &i64_bytes(&[6, 5, 4])),
    )
    .unwrap();
    std::fs::write(d.join("test_y.npy"), npy("|u1", &[1], &[1])).unwrap();
    let data = load_dir(d).unwrap();
    assert_eq!(data.train.shape.vocab, Some(7));
    assert_eq!(data.test.images, [6.0, 5.0, 4.0]);
}

#[test]
fn corrupt_or_mismatched_npy_files_are_refused_with_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ok = |d: &Path| {
        std::fs::write(
            d.join("train_x.npy"),
            npy("<f4", &[3, 2], &f32_bytes(&[0.0; 6])),
        )
        .unwrap();
        std::fs::write(d.join("train_y.npy"), npy("|u1", &[3], &[0, 1, 0])).unwrap();
        std::fs::write(
            d.join("test_x.npy"),
            npy("<f4", &[1, 2], &f32_bytes(&[0.0; 2])),
        )
        .unwrap();
        std::fs::write(d.join("test_y.npy"), npy("|u1", &[1], &[1])).unwrap();
    };
    let err = |name: &str, bytes: Vec<u8>| {
        ok(d);
        std::fs::write(d.join(name), bytes).unwrap();
        load_dir(d).unwrap_err().to_string()
    };
    let mut short = npy("<f4", &[3, 2], &f32_bytes(&[0.0; 6]));
    short.truncate(short.len() - 5);
    let e = err("train_x.npy", short);
    assert!(e.contains("train_x.npy") && e.contains("truncated"), "{e}");
    let e = err("train_x.npy", b"PK\x03\x04 not npy".to_vec());
    assert!(e.contains("train_x.npy") && e.contains("magic"), "{e}");
    let e = err("train_x.npy", npy(">f4", &[3, 2], &f32_bytes(&[0.0; 6])));
    assert!(e.contains("'>f4' is not supported"), "{e}");
    let e = err("train_y.npy", npy("|u1", &[2], &[0, 1]));
    assert!(
        e.contains("holds 3 examples") && e.contains("train_y.npy"),
        "{e}"
    );
    let e = err("test_x.npy", npy("<f4", &[1, 3], &f32_bytes(&[0.0; 3])));
    assert!(
        e.contains("test_x.npy") && e.contains("1x1x2") && e.contains("1x1x3"),
        "{e}"
    );
    let e = err("train_y.npy", npy("<i8", &[3], &i64_bytes(&[0, 300, 1])));
    assert!(e.contains("example 1 has label 300"), "{e}");
    let e = err("train_y.npy", npy("<f4", &[3], &f32_bytes(&[0.0; 3])));
    assert!(e.contains("floating point"), "{e}");
    let mut fortran = npy("<f4", &[3, 2], &f32_bytes(&[0.0; 6]));
    let at = fortran.windows(5).position(|w| w == b"False").unwrap();
    fortran.splice(at..at + 5, *b"True ");
    let e = err("train_x.npy", fortran);
    assert!(e.contains("Fortran order"), "{e}");
    ok(d);
    std::fs::remove_file(d.join("test_y.npy")).unwrap();
    let e = load_dir(d).unwrap_err().to_string();
    assert!(e.contains("has no test_y.npy"), "{e}");
}

fn safetensors_file(path: &Path, tensors: &[(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.to_string(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn safetensors_datasets_load_and_name_a_missing_tensor() {
    use safetensors::Dtype;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let x: Vec<f32> = (0..4 * 6).map(|i| (i as f32).sin()).collect();
    safetensors_file(
        &d.join("train.safetensors"),
        &[
            ("x", Dtype::F32, vec![4, 2, 3], f32_bytes(&x)),
            ("y", Dtype::I64, vec![4], i64_bytes(&[3, 2, 1, 0])),
        ],
    );
    safetensors_file(
        &d.join("test.safetensors"),
        &[
            ("x", Dtype::F32, vec![1, 2, 3], f32_bytes(&x[..6])),
            ("y", Dtype::I64, vec![1], i64_bytes(&[3])),
        ],
    );
    let data = load_dir(d).unwrap();
    assert_eq!(data.train.shape, InputShape::image(1, 2, 3));
    assert_eq!(data.train.images, x);
    assert_eq!(data.train.labels, [3, 2, 1, 0]);

    safetensors_file(
        &d.join("test.safetensors"),
        &[("inputs", Dtype::F32, vec![1, 2, 3], f32_bytes(&x[..6]))],
    );
    let e = load_dir(d).unwrap_err().to_string();
    assert!(
        e.contains("test.safetensors") && e.contains("no tensor 'x'") && e.contains("inputs"),
        "{e}"
    );
    let mut bytes = std::fs::read(d.join("train.safetensors")).unwrap();
    bytes.truncate(bytes.len() - 7);
    std::fs::write(d.join("train.safetensors"), bytes).unwrap();
    let e = load_dir(d).unwrap_err().to_string();
    assert!(
        e.contains("train.safetensors") && e.contains("truncated or corrupt"),
        "{e}"
    );
}

#[test]
fn readers_read_what_numpy_and_python_safetensors_wrote() {
    // Written by tests/fixtures/make_array_fixtures.py (numpy.save, safetensors.numpy.save_file).
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let a = read_npy(&fixtures.join("npy/train_x.npy")).unwrap();
    assert_eq!(a.shape, vec![8, 3, 4, 4]);
    let trainer::data::Values::U8(px) = &a.values else {
        panic!("uint8 pixels read as {:?}", a.values)
    };
    assert_eq!(
        (px[..4].to_vec(), px[8 * 48 - 1]),
        (vec![95, 130, 194, 217], 159)
    );
    let data = load_dir(&fixtures.join("npy")).unwrap();
    assert_eq!((data.train.len(), data.test.len()), (8, 4));
    assert_eq!(data.train.shape, InputShape::image(3, 4, 4));
    assert_eq!(data.train.labels, [0, 1, 2, 0, 1, 2, 0, 1]);
    assert_eq!(data.test.labels, [2, 1, 0, 2]);

    let data = load_dir(&fixtures.join("safetensors")).unwrap();
    assert_eq!(data.train.shape, InputShape::image(1, 1, 5));
    assert_eq!(
        data.train.images[..3],
        [1.003_961_6, -0.617_907_05, 1.822_011_4]
    );
    assert_eq!(data.train.labels, [0, 1, 0, 1, 0, 1]);
    assert_eq!(data.test.labels, [1, 0], "int32 labels");
}
