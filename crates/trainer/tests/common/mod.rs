//! Fixtures shared by the integration tests, written in each format's exact byte layout.

#![allow(dead_code)] // each test binary uses a part

use std::path::{Path, PathBuf};

/// A CIFAR image whose class is visible: class `c` brightens a band of rows in one channel.
pub fn cifar_pixels(class: u8, k: usize) -> Vec<u8> {
    let mut px = vec![0u8; 3072];
    for (i, p) in px.iter_mut().enumerate() {
        let (ch, row) = (i / 1024, (i % 1024) / 32);
        let noise = ((i * 7919 + k * 104_729) % 61) as u8;
        let lit = ch == usize::from(class) % 3 && row / 3 == usize::from(class);
        *p = noise + if lit { 180 } else { 20 };
    }
    px
}

/// `n` records of CIFAR-10 (`label_bytes` = 1) or CIFAR-100 (2: coarse, fine) binary.
pub fn cifar_records(n: usize, label_bytes: usize, classes: u8, offset: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for k in 0..n {
        let class = ((k + offset) % usize::from(classes)) as u8;
        if label_bytes == 2 {
            out.push(class / 5); // coarse
        }
        out.push(class);
        out.extend(cifar_pixels(class % 10, k + offset));
    }
    out
}

pub fn cifar10_dir(dir: &Path, train: usize, test: usize) -> PathBuf {
    let d = dir.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("data_batch_1.bin"), cifar_records(train, 1, 10, 0)).unwrap();
    std::fs::write(d.join("test_batch.bin"), cifar_records(test, 1, 10, 3)).unwrap();
    d
}
