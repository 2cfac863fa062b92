//! Datasets as arrays of inputs and labels: NumPy `.npy` files or `.safetensors` files.
//!
//! Inputs `x` have shape `[N, D]` (vectors), `[N, H, W]` (one-channel images) or `[N, C, H, W]`
//! (PyTorch's channel-first images), and labels `y` shape `[N]` of integer classes 0-255.
//! - `uint8` inputs are pixels: scaled to [0, 1] and normalized per channel with the training
//!   split's statistics, like the IDX and CIFAR loaders;
//! - float inputs (`float32`, `float64`, `float16` excluded) are used as given;
//! - other integer inputs are token ids (`[N, T]` only): a sequence classifier's vocabulary is the
//!   largest id + 1.
//!
//! `.npy` directory: `train_x.npy`, `train_y.npy`, `test_x.npy`, `test_y.npy` (little-endian, C
//! order, as `numpy.save` writes them). `.safetensors` directory: `train.safetensors` and
//! `test.safetensors`, each with tensors `x` and `y` (as `safetensors.torch.save_file` writes them).

use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors};

use super::{from_pixels, read_file, Dataset, InputShape, Split};
use crate::TrainError;

/// The values of an array, by element kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// `uint8` (pixels, or labels).
    U8(Vec<u8>),
    /// Any other integer type, widened.
    Int(Vec<i64>),
    /// `float32` or `float64`, as f32.
    Float(Vec<f32>),
}

impl Values {
    fn len(&self) -> usize {
        match self {
            Values::U8(v) => v.len(),
            Values::Int(v) => v.len(),
            Values::Float(v) => v.len(),
        }
    }
}

/// An n-dimensional array read from a file, with where it came from (for error messages).
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Elements in C (row-major) order.
    pub values: Values,
    /// File (and tensor) it was read from.
    pub origin: String,
}

/// Element types both formats can hold, and how to read one element.
#[derive(Debug, Clone, Copy)]
enum Elem {
    U8,
    I8,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    F32,
    F64,
}

impl Elem {
    fn size(self) -> usize {
        match self {
            Elem::U8 | Elem::I8 => 1,
            Elem::I16 | Elem::U16 => 2,
            Elem::I32 | Elem::U32 | Elem::F32 => 4,
            Elem::I64 | Elem::U64 | Elem::F64 => 8,
        }
    }

    fn decode(self, bytes: &[u8]) -> Values {
        macro_rules! ints {
            ($t:ty) => {
                Values::Int(
                    bytes
                        .chunks_exact(std::mem::size_of::<$t>())
                        .map(|c| <$t>::from_le_bytes(c.try_into().unwrap_or_default()) as i64)
                        .collect(),
                )
            };
        }
        match self {
            Elem::U8 => Values::U8(bytes.to_vec()),
            Elem::I8 => Values::Int(bytes.iter().map(|&b| i64::from(b as i8)).collect()),
            Elem::I16 => ints!(i16),
            Elem::U16 => ints!(u16),
            Elem::I32 => ints!(i32),
            Elem::U32 => ints!(u32),
            Elem::I64 => ints!(i64),
            Elem::U64 => ints!(u64),
            Elem::F32 => Values::Float(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            Elem::F64 => Values::Float(
                bytes
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap_or_default()) as f32)
                    .collect(),
            ),
        }
    }
}

/// The value of `key` in a `.npy` header dict (`'key': value`), up to the next top-level comma.
fn header_field<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let start = header.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = header[start..].trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else {
        rest.find([',', '}']).unwrap_or(rest.len())
    };
    Some(rest[..end].trim())
}

/// Reads a `.npy` file (format versions 1-3, little-endian, C order).
pub fn read_npy(path: &Path) -> Result<NpyArray, TrainError> {
    let bytes = read_file(path)?;
    let bad = |why: String| {
        TrainError::Data(format!(
            "{} is not a readable .npy file: {why}",
            path.display()
        ))
    };
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad(
            "it does not start with the .npy magic \\x93NUMPY".into()
        ));
    }
    let (header_len, start) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(bad(format!("format version {v} is not 1, 2 or 3"))),
    };
    let header = bytes
        .get(start..start + header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad("the header is cut short or not text".into()))?;
    let descr = header_field(header, "descr")
        .map(|d| d.trim_matches(['\'', '"']))
        .ok_or_else(|| bad(format!("no 'descr' in header {header:?}")))?;
    let elem = match descr {
        "|u1" | "u1" => Elem::U8,
        "|i1" | "i1" => Elem::I8,
        "<i2" => Elem::I16,
        "<u2" => Elem::U16,
        "<i4" => Elem::I32,
        "<u4" => Elem::U32,
        "<i8" => Elem::I64,
        "<u8" => Elem::U64,
        "<f4" => Elem::F32,
        "<f8" => Elem::F64,
        other => {
            return Err(bad(format!(
                "element type '{other}' is not supported (use uint8, an integer type, float32 \
                 or float64, little-endian)"
            )))
        }
    };
    match header_field(header, "fortran_order") {
        Some("False") => {}
        Some("True") => {
            return Err(bad(
                "the array is in Fortran order: save it with numpy.ascontiguousarray first".into(),
            ))
        }
        _ => return Err(bad(format!("no 'fortran_order' in header {header:?}"))),
    }
    let shape_text = header_field(header, "shape")
        .ok_or_else(|| bad(format!("no 'shape' in header {header:?}")))?;
    let shape = shape_text
        .trim_matches(['(', ')'])
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::parse::<usize>)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| bad(format!("shape {shape_text} is not a tuple of sizes")))?;
    let body = &bytes[start + header_len..];
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad("the shape overflows".into()))?;
    let expected = count
        .checked_mul(elem.size())
        .ok_or_else(|| bad("the shape overflows".into()))?;
    if body.len() != expected {
        return Err(bad(format!(
            "shape {shape:?} of '{descr}' needs {expected} data bytes but the file holds {} \
             (truncated?)",
            body.len()
        )));
    }
    Ok(NpyArray {
        shape,
        values: elem.decode(body),
        origin: path.display().to_string(),
    })
}

/// Tensor `name` of a `.safetensors` file.
fn st_tensor(path: &Path, st: &SafeTensors<'_>, name: &str) -> Result<NpyArray, TrainError> {
    let t = st.tensor(name).map_err(|_| {
        let mut names = st.names();
        names.sort();
        TrainError::Data(format!(
            "{} has no tensor '{name}' (it has {names:?}); a dataset file needs tensors x \
             (inputs) and y (labels)",
            path.display()
        ))
    })?;
    let elem = match t.dtype() {
        Dtype::U8 => Elem::U8,
        Dtype::I8 => Elem::I8,
        Dtype::I16 => Elem::I16,
        Dtype::U16 => Elem::U16,
        Dtype::I32 => Elem::I32,
        Dtype::U32 => Elem::U32,
        Dtype::I64 => Elem::I64,
        Dtype::U64 => Elem::U64,
        Dtype::F32 => Elem::F32,
        Dtype::F64 => Elem::F64,
        other => {
            return Err(TrainError::Data(format!(
                "{}: tensor '{name}' is {other:?}; use uint8, an integer type, float32 or float64",
                path.display()
            )))
        }
    };
    Ok(NpyArray {
        shape: t.shape().to_vec(),
        values: elem.decode(t.data()),
        origin: format!("{} (tensor {name})", path.display()),
    })
}

/// The labels of `y` as classes 0-255.
fn labels(y: NpyArray) -> Result<Vec<u8>, TrainError> {
    let bad = |why: String| TrainError::Data(format!("{}: labels {why}", y.origin));
    if !(y.shape.len() == 1 || (y.shape.len() == 2 && y.shape[1] == 1)) {
        return Err(bad(format!(
            "must have shape [N] (one class per example), not {:?}",
            y.shape
        )));
    }
    match y.values {
        Values::U8(v) => Ok(v),
        Values::Int(v) => v
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                u8::try_from(c).map_err(|_| {
                    bad(format!(
                        "must be classes 0-255, but example {i} has label {c}"
                    ))
                })
            })
            .collect(),
        Values::Float(_) => Err(bad(
            "are floating point; save them as integer classes (e.g. int64)".into(),
        )),
    }
}

/// The shape of one example of `x`.
fn example_shape(x: &NpyArray) -> Result<InputShape, TrainError> {
    let s = &x.shape;
    let shape = match s.len() {
        2 => InputShape::image(1, 1, s[1]),
        3 => InputShape::image(1, s[1], s[2]),
        4 => InputShape::image(s[1], s[2], s[3]),
        _ => {
            return Err(TrainError::Data(format!(
                "{}: inputs have shape {s:?}; expected [N, D], [N, H, W] or [N, C, H, W]",
                x.origin
            )))
        }
    };
    if shape.features() == 0 {
        return Err(TrainError::Data(format!(
            "{}: inputs of shape {s:?} are empty",
            x.origin
        )));
    }
    Ok(shape)
}

/// A dataset from training and test inputs and labels.
fn from_arrays(
    source: &Path,
    (train_x, train_y): (NpyArray, NpyArray),
    (test_x, test_y): (NpyArray, NpyArray),
) -> Result<Dataset, TrainError> {
    let mut shape = example_shape(&train_x)?;
    let test_shape = example_shape(&test_x)?;
    if shape != test_shape {
        return Err(TrainError::Data(format!(
            "{} holds examples of {shape} but {} of {test_shape}",
            train_x.origin, test_x.origin
        )));
    }
    for (x, y) in [(&train_x, &train_y), (&test_x, &test_y)] {
        let n = x.values.len() / shape.features();
        if y.shape.first() != Some(&n) {
            return Err(TrainError::Data(format!(
                "{} holds {n} examples but {} {:?} labels",
                x.origin,
                y.origin,
                y.shape.first().copied().unwrap_or(0)
            )));
        }
    }
    let split = |x: Vec<f32>, y: Vec<u8>, shape: InputShape| Split {
        features: shape.features(),
        images: x,
        labels: y,
        shape,
    };
    let (origin, dims) = (train_x.origin.clone(), train_x.shape.len());
    let test_origin = test_x.origin.clone();
    let (train_y, test_y) = (labels(train_y)?, labels(test_y)?);
    match (train_x.values, test_x.values) {
        (Values::U8(a), Values::U8(b)) => from_pixels(source, shape, (a, train_y), (b, test_y)),
        (Values::Float(a), Values::Float(b)) => {
            if let Some(i) = a.iter().chain(&b).position(|v| !v.is_finite()) {
                return Err(TrainError::Data(format!(
                    "{origin} or {test_origin}: value {i} is not finite"
                )));
            }
            Ok(Dataset {
                train: split(a, train_y, shape),
                test: split(b, test_y, shape),
                source: source.to_path_buf(),
            })
        }
        (Values::Int(a), Values::Int(b)) => {
            if dims != 2 {
                return Err(TrainError::Data(format!(
                    "{origin}: integer inputs are token ids and must have shape [N, T]"
                )));
            }
            const MAX_TOKEN: i64 = 1 << 24;
            if let Some(&t) = a.iter().chain(&b).find(|&&t| !(0..MAX_TOKEN).contains(&t)) {
                return Err(TrainError::Data(format!(
                    "{origin} or {test_origin}: token id {t} is outside 0..{MAX_TOKEN}"
                )));
            }
            let vocab = a.iter().chain(&b).max().map_or(1, |&m| m as usize + 1);
            shape.vocab = Some(vocab);
            let floats = |v: Vec<i64>| v.into_iter().map(|t| t as f32).collect();
            Ok(Dataset {
                train: split(floats(a), train_y, shape),
                test: split(floats(b), test_y, shape),
                source: source.to_path_buf(),
            })
        }
        _ => Err(TrainError::Data(format!(
            "{origin} and {test_origin} hold different kinds of inputs (pixels uint8, floats, or \
             integer tokens): save both the same way"
        ))),
    }
}

/// Reads `train_x.npy`, `train_y.npy`, `test_x.npy`, `test_y.npy` from `dir`.
pub fn load_npy_dir(dir: &Path) -> Result<Dataset, TrainError> {
    let get = |name: &str| {
        let p = dir.join(name);
        if !p.is_file() {
            return Err(TrainError::Data(format!(
                "{} has no {name}: an .npy dataset needs train_x.npy, train_y.npy, test_x.npy \
                 and test_y.npy",
                dir.display()
            )));
        }
        read_npy(&p)
    };
    from_arrays(
        dir,
        (get("train_x.npy")?, get("train_y.npy")?),
        (get("test_x.npy")?, get("test_y.npy")?),
    )
}

/// Reads `train.safetensors` and `test.safetensors` (tensors `x` and `y`) from `dir`.
pub fn load_safetensors_dir(dir: &Path) -> Result<Dataset, TrainError> {
    let get = |name: &str| -> Result<(NpyArray, NpyArray), TrainError> {
        let p = dir.join(name);
        if !p.is_file() {
            return Err(TrainError::Data(format!(
                "{} has no {name}: a safetensors dataset needs train.safetensors and \
                 test.safetensors, each with tensors x and y",
                dir.display()
            )));
        }
        let bytes = read_file(&p)?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| {
            TrainError::Data(format!(
                "{} is not a readable safetensors file (truncated or corrupt?): {e}",
                p.display()
            ))
        })?;
        Ok((st_tensor(&p, &st, "x")?, st_tensor(&p, &st, "y")?))
    };
    from_arrays(dir, get("train.safetensors")?, get("test.safetensors")?)
}
