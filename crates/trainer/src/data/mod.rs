//! Datasets and their partitions across nodes. Formats (see [`load_dir`]): IDX files (the MNIST
//! family, gzipped or not), the CIFAR-10 and CIFAR-100 binary versions, and arrays of inputs and
//! labels as `.npy` files or `.safetensors` files.

mod arrays;
mod cifar;

pub use arrays::{load_npy_dir, load_safetensors_dir, read_npy, NpyArray, Values};
pub use cifar::{load_cifar100_dir, load_cifar10_dir};

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_distr::{Distribution, Gamma};

use crate::TrainError;

/// Where Debian's `dataset-fashion-mnist` package puts Fashion-MNIST.
pub const DEBIAN_FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

/// The shape of one example: `channels x height x width` values (`1 x 1 x D` for plain vectors),
/// or a sequence of `width` token ids below `vocab`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputShape {
    /// Channels (3 for colour images).
    pub channels: usize,
    /// Rows.
    pub height: usize,
    /// Columns (sequence length for tokens).
    pub width: usize,
    /// Token ids below this bound when the inputs are token sequences, else `None`.
    pub vocab: Option<usize>,
}

impl InputShape {
    /// A `channels x height x width` image shape.
    pub fn image(channels: usize, height: usize, width: usize) -> Self {
        InputShape {
            channels,
            height,
            width,
            vocab: None,
        }
    }

    /// Values per example.
    pub fn features(&self) -> usize {
        self.channels * self.height * self.width
    }
}

impl fmt::Display for InputShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.vocab {
            Some(v) => write!(f, "{} tokens (vocabulary {v})", self.width),
            None => write!(f, "{}x{}x{}", self.channels, self.height, self.width),
        }
    }
}

/// A labelled set of examples held in memory: `images` row-major `[len, features]`
/// (channel-major within an example, as PyTorch's NCHW), normalized.
#[derive(Debug, Clone)]
pub struct Split {
    /// Inputs: pixels normalized to zero mean and unit variance per channel (statistics of the
    /// training split); float arrays as given; token ids as exact integers.
    pub images: Vec<f32>,
    /// Class of each example.
    pub labels: Vec<u8>,
    /// Values per example.
    pub features: usize,
    /// Shape of one example.
    pub shape: InputShape,
}

impl Split {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no examples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Number of classes (largest label + 1).
    pub fn classes(&self) -> usize {
        self.labels
            .iter()
            .copied()
            .max()
            .map_or(0, |m| usize::from(m) + 1)
    }

    /// The pixels of example `i`.
    pub fn image(&self, i: usize) -> &[f32] {
        &self.images[i * self.features..(i + 1) * self.features]
    }

    /// A split holding the first `n` examples (for quick runs).
    pub fn truncated(&self, n: usize) -> Split {
        let n = n.min(self.len());
        Split {
            images: self.images[..n * self.features].to_vec(),
            labels: self.labels[..n].to_vec(),
            features: self.features,
            shape: self.shape,
        }
    }
}

/// Training and test splits.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Training examples.
    pub train: Split,
    /// Held-out test examples.
    pub test: Split,
    /// Where it was read from.
    pub source: PathBuf,
}

/// Reads an IDX dataset from `dir`: `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
/// `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each optionally `.gz`.
pub fn load_idx_dir(dir: &Path) -> Result<Dataset, TrainError> {
    if !dir.is_dir() {
        return Err(TrainError::Data(format!(
            "dataset directory {} does not exist. Install Fashion-MNIST with \
             `sudo apt-get install dataset-fashion-mnist` (or run tools/setup.sh), or pass \
             --data DIR with IDX files (train-images-idx3-ubyte[.gz], ...)",
            dir.display()
        )));
    }
    let (train_x, (rows, cols)) = read_images(&find(dir, "train-images-idx3-ubyte")?)?;
    let shape = (rows, cols);
    let train_y = read_labels(&find(dir, "train-labels-idx1-ubyte")?)?;
    let (test_x, test_shape) = read_images(&find(dir, "t10k-images-idx3-ubyte")?)?;
    let test_y = read_labels(&find(dir, "t10k-labels-idx1-ubyte")?)?;
    if shape != test_shape {
        return Err(TrainError::Data(format!(
            "train images are {}x{} but test images {}x{} in {}",
            shape.0,
            shape.1,
            test_shape.0,
            test_shape.1,
            dir.display()
        )));
    }
    let features = shape.0 * shape.1;
    for (what, images, labels) in [("train", &train_x, &train_y), ("t10k", &test_x, &test_y)] {
        if images.len() / features != labels.len() {
            return Err(TrainError::Data(format!(
                "{what} split in {} has {} images but {} labels",
                dir.display(),
                images.len() / features,
                labels.len()
            )));
        }
    }
    from_pixels(
        dir,
        InputShape::image(1, rows, cols),
        (train_x, train_y),
        (test_x, test_y),
    )
}

/// A dataset from 8-bit pixels `[len, channels, height, width]`: scaled to [0, 1] and normalized
/// per channel with the training split's mean and standard deviation.
pub(crate) fn from_pixels(
    source: &Path,
    shape: InputShape,
    train: (Vec<u8>, Vec<u8>),
    test: (Vec<u8>, Vec<u8>),
) -> Result<Dataset, TrainError> {
    let features = shape.features();
    let plane = shape.height * shape.width;
    let stats: Vec<(f32, f32)> = (0..shape.channels)
        .map(|c| {
            pixel_stats(
                train
                    .0
                    .chunks_exact(features)
                    .flat_map(|ex| &ex[c * plane..(c + 1) * plane]),
            )
        })
        .collect();
    // The expression is evaluated once per channel and pixel value, then looked up: the same
    // floats, without per-pixel arithmetic (which dominated loading under qemu's emulation).
    let tables: Vec<[f32; 256]> = stats
        .iter()
        .map(|&(mean, std)| std::array::from_fn(|p| (p as f32 / 255.0 - mean) / std))
        .collect();
    let normalize = |raw: Vec<u8>| -> Vec<f32> {
        let mut out = Vec::with_capacity(raw.len());
        for example in raw.chunks(features) {
            for (c, pixels) in example.chunks(plane).enumerate() {
                out.extend(pixels.iter().map(|&p| tables[c][usize::from(p)]));
            }
        }
        out
    };
    Ok(Dataset {
        train: Split {
            images: normalize(train.0),
            labels: train.1,
            features,
            shape,
        },
        test: Split {
            images: normalize(test.0),
            labels: test.1,
            features,
            shape,
        },
        source: source.to_path_buf(),
    })
}

/// Reads the dataset in `dir`, whichever supported format its files are in:
/// - IDX: `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
///   `t10k-labels-idx1-ubyte`, each optionally `.gz` (MNIST, Fashion-MNIST, KMNIST, ...);
/// - CIFAR-10 binary: `data_batch_1.bin` .. `data_batch_5.bin`, `test_batch.bin`;
/// - CIFAR-100 binary: `train.bin`, `test.bin` (fine labels);
/// - `.npy`: `train_x.npy`, `train_y.npy`, `test_x.npy`, `test_y.npy`;
/// - `.safetensors`: `train.safetensors`, `test.safetensors`, each with tensors `x` and `y`.
///
/// A directory that holds a single subdirectory (as the CIFAR archives unpack) is looked into.
pub fn load_dir(dir: &Path) -> Result<Dataset, TrainError> {
    if !dir.is_dir() {
        return load_idx_dir(dir);
    }
    let has = |name: &str| dir.join(name).is_file();
    if has("data_batch_1.bin") || has("test_batch.bin") {
        load_cifar10_dir(dir)
    } else if has("train.bin") || has("test.bin") {
        load_cifar100_dir(dir)
    } else if has("train_x.npy") || has("train_y.npy") {
        load_npy_dir(dir)
    } else if has("train.safetensors") || has("test.safetensors") {
        load_safetensors_dir(dir)
    } else if has("train-images-idx3-ubyte") || has("train-images-idx3-ubyte.gz") {
        load_idx_dir(dir)
    } else {
        let subdirs: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|it| {
                it.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default();
        match subdirs.as_slice() {
            [only] => load_dir(only),
            _ => Err(TrainError::Data(format!(
                "{} holds no dataset this trainer reads: expected IDX files \
                 (train-images-idx3-ubyte[.gz], ...), CIFAR-10 binary (data_batch_1.bin .. \
                 data_batch_5.bin, test_batch.bin), CIFAR-100 binary (train.bin, test.bin), \
                 .npy arrays (train_x.npy, train_y.npy, test_x.npy, test_y.npy) or \
                 train.safetensors and test.safetensors with tensors x and y",
                dir.display()
            ))),
        }
    }
}

fn find(dir: &Path, stem: &str) -> Result<PathBuf, TrainError> {
    for name in [format!("{stem}.gz"), stem.to_string()] {
        let p = dir.join(&name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(TrainError::Data(format!(
        "{} has no {stem} or {stem}.gz (an IDX dataset directory needs train-images-idx3-ubyte, \
         train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte)",
        dir.display()
    )))
}

pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, TrainError> {
    let raw = std::fs::read(path)
        .map_err(|e| TrainError::Data(format!("cannot read {}: {e}", path.display())))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| {
                TrainError::Data(format!("{} is not a valid gzip file: {e}", path.display()))
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn idx_header(path: &Path, bytes: &[u8], dims: usize) -> Result<Vec<usize>, TrainError> {
    let bad = |why: String| {
        TrainError::Data(format!("{} is not a valid IDX file: {why}", path.display()))
    };
    if bytes.len() < 4 + 4 * dims {
        return Err(bad(format!("only {} bytes", bytes.len())));
    }
    if bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 {
        return Err(bad("magic is not 0x0000_08xx (unsigned byte data)".into()));
    }
    if usize::from(bytes[3]) != dims {
        return Err(bad(format!("has {} dimensions, expected {dims}", bytes[3])));
    }
    let sizes: Vec<usize> = (0..dims)
        .map(|k| {
            let o = 4 + 4 * k;
            u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
        })
        .collect();
    let body = sizes
        .iter()
        .try_fold(1usize, |acc, &s| acc.checked_mul(s))
        .ok_or_else(|| bad("sizes overflow".into()))?;
    let available = bytes.len() - (4 + 4 * dims);
    if body != available {
        return Err(bad(format!(
            "header announces {body} data bytes but the file holds {available}"
        )));
    }
    Ok(sizes)
}

fn read_images(path: &Path) -> Result<(Vec<u8>, (usize, usize)), TrainError> {
    let bytes = read_file(path)?;
    let sizes = idx_header(path, &bytes, 3)?;
    Ok((bytes[16..].to_vec(), (sizes[1], sizes[2])))
}

fn read_labels(path: &Path) -> Result<Vec<u8>, TrainError> {
    let bytes = read_file(path)?;
    idx_header(path, &bytes, 1)?;
    Ok(bytes[8..].to_vec())
}

fn pixel_stats<'a>(raw: impl Iterator<Item = &'a u8>) -> (f32, f32) {
    let mut counts = [0u64; 256];
    for &p in raw {
        counts[usize::from(p)] += 1;
    }
    let n = counts.iter().sum::<u64>().max(1) as f64;
    let value = |p: usize| p as f64 / 255.0;
    let mean = (0..256).map(|p| counts[p] as f64 * value(p)).sum::<f64>() / n;
    let var = (0..256)
        .map(|p| counts[p] as f64 * (value(p) - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean as f32, var.sqrt().max(1e-6) as f32)
}

/// How training examples are divided among nodes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Partition {
    /// Shuffled, equal shares.
    Iid,
    /// Sorted by label and cut into 2n shards, two random shards per node (McMahan et al.): each
    /// node sees about two classes.
    Shards,
    /// For each class, the share of each node is drawn from Dirichlet(alpha): small alpha gives
    /// strongly skewed label mixes.
    Dirichlet(f64),
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Partition::Iid => f.write_str("iid"),
            Partition::Shards => f.write_str("shards"),
            Partition::Dirichlet(a) => write!(f, "dirichlet:{a}"),
        }
    }
}

impl FromStr for Partition {
    type Err = TrainError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "iid" => Ok(Partition::Iid),
            "shards" => Ok(Partition::Shards),
            _ => match s.strip_prefix("dirichlet:").map(str::parse::<f64>) {
                Some(Ok(alpha)) if alpha > 0.0 && alpha.is_finite() => Ok(Partition::Dirichlet(alpha)),
                _ => Err(TrainError::Config(format!(
                    "partition '{s}' is not one of iid, shards, dirichlet:ALPHA (ALPHA > 0, e.g. dirichlet:0.1)"
                ))),
            },
        }
    }
}

impl Partition {
    /// Example indices for each of `nodes` nodes. Every example goes to exactly one node.
    pub fn split(
        &self,
        labels: &[u8],
        nodes: usize,
        seed: u64,
    ) -> Result<Vec<Vec<usize>>, TrainError> {
        if nodes == 0 || nodes > labels.len() {
            return Err(TrainError::Config(format!(
                "cannot split {} examples among {nodes} nodes",
                labels.len()
            )));
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let mut parts = vec![Vec::new(); nodes];
        match *self {
            Partition::Iid => {
                let mut idx: Vec<usize> = (0..labels.len()).collect();
                idx.shuffle(&mut rng);
                for (k, i) in idx.into_iter().enumerate() {
                    parts[k % nodes].push(i);
                }
            }
            Partition::Shards => {
                let mut idx: Vec<usize> = (0..labels.len()).collect();
                idx.shuffle(&mut rng);
                idx.sort_by_key(|&i| labels[i]);
                let shards = 2 * nodes;
                let mut order: Vec<usize> = (0..shards).collect();
                order.shuffle(&mut rng);
                for (k, shard) in order.into_iter().enumerate() {
                    let (lo, hi) = (shard * idx.len() / shards, (shard + 1) * idx.len() / shards);
                    parts[k % nodes].extend_from_slice(&idx[lo..hi]);
                }
            }
            Partition::Dirichlet(alpha) => {
                let gamma = Gamma::new(alpha, 1.0)
                    .map_err(|e| TrainError::Config(format!("dirichlet:{alpha}: {e}")))?;
                let classes = labels
                    .iter()
                    .copied()
                    .max()
                    .map_or(0, |m| usize::from(m) + 1);
                for class in 0..classes {
                    let mut idx: Vec<usize> = (0..labels.len())
                        .filter(|&i| usize::from(labels[i]) == class)
                        .collect();
                    idx.shuffle(&mut rng);
                    let weights: Vec<f64> = (0..nodes)
                        .map(|_| gamma.sample(&mut rng).max(1e-300))
                        .collect();
                    let total: f64 = weights.iter().sum();
                    let mut start = 0usize;
                    let mut acc = 0.0;
                    for (node, w) in weights.iter().enumerate() {
                        acc += w / total;
                        let end = if node + 1 == nodes {
                            idx.len()
                        } else {
                            ((acc * idx.len() as f64).round() as usize).min(idx.len())
                        };
                        parts[node].extend_from_slice(&idx[start..end.max(start)]);
                        start = end.max(start);
                    }
                }
                // A node left without data cannot take a step: give it one example from the largest.
                for node in 0..nodes {
                    if parts[node].is_empty() {
                        let largest = (0..nodes).max_by_key(|&k| parts[k].len()).unwrap_or(0);
                        if let Some(i) = parts[largest].pop() {
                            parts[node].push(i);
                        }
                    }
                }
            }
        }
        for p in &mut parts {
            p.shuffle(&mut rng);
        }
        Ok(parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<u8> {
        (0..1000).map(|i| (i % 10) as u8).collect()
    }

    #[test]
    fn every_partition_assigns_each_example_exactly_once() {
        for p in [
            Partition::Iid,
            Partition::Shards,
            Partition::Dirichlet(0.1),
            Partition::Dirichlet(100.0),
        ] {
            let parts = p.split(&labels(), 8, 3).unwrap();
            let mut all: Vec<usize> = parts.concat();
            all.sort_unstable();
            assert_eq!(all, (0..1000).collect::<Vec<_>>(), "{p}");
            assert!(parts.iter().all(|q| !q.is_empty()), "{p}");
        }
    }

    #[test]
    fn shards_and_small_alpha_skew_the_label_mix() {
        let labels = labels();
        let classes_per_node = |parts: &[Vec<usize>]| {
            parts
                .iter()
                .map(|q| {
                    q.iter()
                        .map(|&i| labels[i])
                        .collect::<std::collections::BTreeSet<_>>()
                        .len()
                })
                .sum::<usize>() as f64
                / parts.len() as f64
        };
        assert_eq!(
            classes_per_node(&Partition::Iid.split(&labels, 8, 1).unwrap()),
            10.0
        );
        assert!(classes_per_node(&Partition::Shards.split(&labels, 8, 1).unwrap()) <= 3.0);
        assert!(classes_per_node(&Partition::Dirichlet(0.05).split(&labels, 8, 1).unwrap()) < 6.0);
    }

    #[test]
    fn rejects_malformed_idx_files_with_the_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train-labels-idx1-ubyte");
        std::fs::write(&path, [0, 0, 8, 1, 0, 0, 0, 5, 1, 2]).unwrap();
        let err = read_labels(&path).unwrap_err().to_string();
        assert!(
            err.contains("train-labels-idx1-ubyte") && err.contains("announces 5"),
            "{err}"
        );
        let missing = load_idx_dir(&dir.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("dataset-fashion-mnist"), "{missing}");
    }
}
