//! The CIFAR-10 and CIFAR-100 binary versions (`cifar-10-binary.tar.gz`,
//! `cifar-100-binary.tar.gz` from <https://www.cs.toronto.edu/~kriz/cifar.html>).
//!
//! CIFAR-10: `data_batch_1.bin` .. `data_batch_5.bin` and `test_batch.bin`, each a sequence of
//! 3073-byte records: the label (0-9), then 1024 red, 1024 green and 1024 blue pixels, row-major.
//! CIFAR-100: `train.bin` and `test.bin`, 3074-byte records: the coarse label (0-19), the fine
//! label (0-99), then the pixels. The fine labels are the classes here.

use std::path::{Path, PathBuf};

use super::{from_pixels, read_file, Dataset, InputShape};
use crate::TrainError;

const PIXELS: usize = 3 * 32 * 32;

/// One CIFAR flavour: how many label bytes lead a record, which one is the class, and the number
/// of values each label byte may take.
struct Flavour {
    name: &'static str,
    label_bytes: usize,
    class_byte: usize,
    limits: &'static [u8],
}

const CIFAR10: Flavour = Flavour {
    name: "CIFAR-10",
    label_bytes: 1,
    class_byte: 0,
    limits: &[10],
};

const CIFAR100: Flavour = Flavour {
    name: "CIFAR-100",
    label_bytes: 2,
    class_byte: 1,
    limits: &[20, 100],
};

/// Reads the records of `files` (concatenated) into pixels and labels.
fn read_records(files: &[PathBuf], f: &Flavour) -> Result<(Vec<u8>, Vec<u8>), TrainError> {
    let record = f.label_bytes + PIXELS;
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for path in files {
        let bytes = read_file(path)?;
        let bad = |why: String| {
            TrainError::Data(format!(
                "{} is not a valid {} binary file: {why}",
                path.display(),
                f.name
            ))
        };
        if bytes.is_empty() || bytes.len() % record != 0 {
            let other = if f.label_bytes == 1 { 3074 } else { 3073 };
            let hint = if !bytes.is_empty() && bytes.len() % other == 0 {
                format!(
                    " (it divides into {other}-byte records: is it {}?)",
                    if other == 3074 {
                        "CIFAR-100"
                    } else {
                        "CIFAR-10"
                    }
                )
            } else {
                " (truncated or not CIFAR?)".to_string()
            };
            return Err(bad(format!(
                "{} bytes is not a whole number of {record}-byte records{hint}",
                bytes.len()
            )));
        }
        for (k, rec) in bytes.chunks_exact(record).enumerate() {
            for (b, &limit) in rec[..f.label_bytes].iter().zip(f.limits) {
                if *b >= limit {
                    return Err(bad(format!(
                        "record {k} has label {b}, {} labels are 0-{}",
                        f.name,
                        limit - 1
                    )));
                }
            }
            labels.push(rec[f.class_byte]);
            pixels.extend_from_slice(&rec[f.label_bytes..]);
        }
    }
    Ok((pixels, labels))
}

fn need(dir: &Path, name: &str, flavour: &str) -> Result<PathBuf, TrainError> {
    let p = dir.join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(TrainError::Data(format!(
            "{} has no {name}: a {flavour} binary directory needs {}",
            dir.display(),
            if flavour == "CIFAR-10" {
                "data_batch_1.bin .. data_batch_5.bin and test_batch.bin"
            } else {
                "train.bin and test.bin"
            }
        )))
    }
}

/// Reads CIFAR-10 (binary version) from `dir`. Training batches present among
/// `data_batch_1.bin` .. `data_batch_5.bin` are used (at least the first); `test_batch.bin` is
/// the test split.
pub fn load_cifar10_dir(dir: &Path) -> Result<Dataset, TrainError> {
    let mut train_files = vec![need(dir, "data_batch_1.bin", "CIFAR-10")?];
    train_files.extend(
        (2..=5)
            .map(|k| dir.join(format!("data_batch_{k}.bin")))
            .filter(|p| p.is_file()),
    );
    let test = need(dir, "test_batch.bin", "CIFAR-10")?;
    let train = read_records(&train_files, &CIFAR10)?;
    let test = read_records(&[test], &CIFAR10)?;
    from_pixels(dir, InputShape::image(3, 32, 32), train, test)
}

/// Reads CIFAR-100 (binary version) from `dir`: `train.bin` and `test.bin`, fine labels.
pub fn load_cifar100_dir(dir: &Path) -> Result<Dataset, TrainError> {
    let train = read_records(&[need(dir, "train.bin", "CIFAR-100")?], &CIFAR100)?;
    let test = read_records(&[need(dir, "test.bin", "CIFAR-100")?], &CIFAR100)?;
    from_pixels(dir, InputShape::image(3, 32, 32), train, test)
}
