//! ResNet-20 for CIFAR-style 32x32 images (He et al., *Deep Residual Learning*, 2016, section
//! 4.2): a 3x3 convolution to 16 channels, then 3 stages of 3 basic blocks with 16, 32 and 64
//! channels (the first block of stages 2 and 3 halves the resolution), global average pooling and
//! a linear classifier; shortcuts are parameter-free (option A: subsample, pad channels with 0).
//!
//! Normalization is GroupNorm (8 groups) instead of BatchNorm: it has no running statistics, so
//! every learned value is a parameter in the flat buffer and averaging two models averages all of
//! their state (BatchNorm statistics of non-i.i.d. nodes also do not average well: Hsieh et al.,
//! *The Non-IID Data Quagmire of Decentralized Machine Learning*, ICML 2020). It works on any image
//! size of at least 4x4; 269,722 parameters for 3x32x32 inputs and 10 classes.

use tch::Tensor;

use super::{Init, RawParam};
use crate::data::InputShape;
use crate::TrainError;

/// GroupNorm groups of every normalization layer.
const GROUPS: i64 = 8;
const WIDTHS: [usize; 3] = [16, 32, 64];
const BLOCKS: usize = 3;

fn conv(name: String, out_c: usize, in_c: usize) -> RawParam {
    // Kaiming normal, fan-out, as torchvision's ResNets.
    let std = (2.0 / (out_c * 9) as f32).sqrt();
    (name, vec![out_c, in_c, 3, 3], Init::Normal(std))
}

fn norm(prefix: &str, c: usize) -> [RawParam; 2] {
    [
        (format!("{prefix}.weight"), vec![c], Init::Const(1.0)),
        (format!("{prefix}.bias"), vec![c], Init::Const(0.0)),
    ]
}

pub(super) fn layout(input: InputShape, classes: usize) -> Result<Vec<RawParam>, TrainError> {
    if input.height < 4 || input.width < 4 {
        return Err(TrainError::Config(format!(
            "resnet20 needs images of at least 4x4, the data has {input}"
        )));
    }
    let mut raw = vec![conv("conv1.weight".into(), WIDTHS[0], input.channels)];
    raw.extend(norm("gn1", WIDTHS[0]));
    let mut in_c = WIDTHS[0];
    for (s, &c) in WIDTHS.iter().enumerate() {
        for b in 0..BLOCKS {
            let name = format!("layer{}.{b}", s + 1);
            raw.push(conv(format!("{name}.conv1.weight"), c, in_c));
            raw.extend(norm(&format!("{name}.gn1"), c));
            raw.push(conv(format!("{name}.conv2.weight"), c, c));
            raw.extend(norm(&format!("{name}.gn2"), c));
            in_c = c;
        }
    }
    raw.push(("fc.weight".into(), vec![classes, in_c], Init::Uniform(in_c)));
    raw.push(("fc.bias".into(), vec![classes], Init::Uniform(in_c)));
    Ok(raw)
}

pub(super) fn forward<'a>(p: &dyn Fn(&str) -> &'a Tensor, x: &Tensor, input: InputShape) -> Tensor {
    let conv = |x: &Tensor, w: &str, stride: i64| {
        x.conv2d(p(w), None::<&Tensor>, [stride, stride], [1, 1], [1, 1], 1)
    };
    let gn = |x: &Tensor, prefix: &str| {
        x.group_norm(
            GROUPS,
            Some(p(&format!("{prefix}.weight"))),
            Some(p(&format!("{prefix}.bias"))),
            1e-5,
            false,
        )
    };
    let b = x.size()[0];
    let x = x.view([
        b,
        input.channels as i64,
        input.height as i64,
        input.width as i64,
    ]);
    let mut h = gn(&conv(&x, "conv1.weight", 1), "gn1").relu();
    let mut in_c = WIDTHS[0];
    for (s, &c) in WIDTHS.iter().enumerate() {
        for blk in 0..BLOCKS {
            let name = format!("layer{}.{blk}", s + 1);
            let stride = if s > 0 && blk == 0 { 2 } else { 1 };
            let out = gn(
                &conv(&h, &format!("{name}.conv1.weight"), stride),
                &format!("{name}.gn1"),
            )
            .relu();
            let out = gn(
                &conv(&out, &format!("{name}.conv2.weight"), 1),
                &format!("{name}.gn2"),
            );
            let shortcut = if stride == 1 && in_c == c {
                h
            } else {
                let pad = ((c - in_c) / 2) as i64;
                h.slice(2, 0, None, stride)
                    .slice(3, 0, None, stride)
                    .constant_pad_nd([0, 0, 0, 0, pad, pad])
            };
            h = (out + shortcut).relu();
            in_c = c;
        }
    }
    h.adaptive_avg_pool2d([1, 1])
        .flatten(1, -1)
        .linear(p("fc.weight"), Some(p("fc.bias")))
}
