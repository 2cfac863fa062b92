//! A small pre-norm Transformer encoder classifier (Vaswani et al. 2017; pre-norm as GPT-2).
//!
//! Inputs are a sequence: token ids through an embedding table when the data are token sequences,
//! or, for images `C x H x W`, the H rows as H tokens of `C * W` values through a linear
//! projection. Learned position embeddings are added; each block is
//! `h += Attn(LN(h))`, `h += MLP(LN(h))` with bidirectional multi-head attention and a GELU MLP of
//! 4x the width; the mean over positions goes through a final LayerNorm to the classifier.

use tch::{Kind, Tensor};

use super::{Init, RawParam};
use crate::data::InputShape;

/// Sequence length and per-token input width (0 for token ids).
fn sequence(input: InputShape) -> (usize, usize) {
    match input.vocab {
        Some(_) => (input.width, 0),
        None => (input.height, input.channels * input.width),
    }
}

pub(super) fn layout(input: InputShape, classes: usize, d: usize, layers: usize) -> Vec<RawParam> {
    let lin = |name: String, out: usize, inp: usize| -> [RawParam; 2] {
        [
            (format!("{name}.weight"), vec![out, inp], Init::Uniform(inp)),
            (format!("{name}.bias"), vec![out], Init::Uniform(inp)),
        ]
    };
    let ln = |name: String| -> [RawParam; 2] {
        [
            (format!("{name}.weight"), vec![d], Init::Const(1.0)),
            (format!("{name}.bias"), vec![d], Init::Const(0.0)),
        ]
    };
    let (t, token_width) = sequence(input);
    let mut raw: Vec<RawParam> = Vec::new();
    match input.vocab {
        Some(vocab) => raw.push(("tok_emb.weight".into(), vec![vocab, d], Init::Normal(0.02))),
        None => raw.extend(lin("in_proj".into(), d, token_width)),
    }
    raw.push(("pos_emb".into(), vec![t, d], Init::Normal(0.02)));
    for l in 0..layers {
        raw.extend(ln(format!("blocks.{l}.ln1")));
        raw.extend(lin(format!("blocks.{l}.attn.qkv"), 3 * d, d));
        raw.extend(lin(format!("blocks.{l}.attn.proj"), d, d));
        raw.extend(ln(format!("blocks.{l}.ln2")));
        raw.extend(lin(format!("blocks.{l}.mlp.fc1"), 4 * d, d));
        raw.extend(lin(format!("blocks.{l}.mlp.fc2"), d, 4 * d));
    }
    raw.extend(ln("ln_f".into()));
    raw.extend(lin("head".into(), classes, d));
    raw
}

pub(super) fn forward<'a>(
    p: &dyn Fn(&str) -> &'a Tensor,
    x: &Tensor,
    input: InputShape,
    d: usize,
    layers: usize,
    heads: usize,
) -> Tensor {
    let b = x.size()[0];
    let (t, token_width) = sequence(input);
    let (d, t, heads) = (d as i64, t as i64, heads as i64);
    let dh = d / heads;
    let mut h = match input.vocab {
        Some(_) => Tensor::embedding(
            p("tok_emb.weight"),
            &x.to_kind(Kind::Int64).view([b, t]),
            -1,
            false,
            false,
        ),
        None => x
            .view([
                b,
                input.channels as i64,
                input.height as i64,
                input.width as i64,
            ])
            .permute([0, 2, 1, 3])
            .reshape([b, t, token_width as i64])
            .linear(p("in_proj.weight"), Some(p("in_proj.bias"))),
    } + p("pos_emb");
    let ln = |x: &Tensor, name: &str| {
        x.layer_norm(
            [d],
            Some(p(&format!("{name}.weight"))),
            Some(p(&format!("{name}.bias"))),
            1e-5,
            false,
        )
    };
    let lin = |x: &Tensor, name: &str| {
        x.linear(
            p(&format!("{name}.weight")),
            Some(p(&format!("{name}.bias"))),
        )
    };
    let scale = 1.0 / (dh as f64).sqrt();
    for l in 0..layers {
        let qkv = lin(
            &ln(&h, &format!("blocks.{l}.ln1")),
            &format!("blocks.{l}.attn.qkv"),
        )
        .view([b, t, 3, heads, dh])
        .permute([2, 0, 3, 1, 4]);
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
        let att = (q.matmul(&k.transpose(-2, -1)) * scale)
            .softmax(-1, Kind::Float)
            .matmul(&v)
            .transpose(1, 2)
            .reshape([b, t, d]);
        h = &h + lin(&att, &format!("blocks.{l}.attn.proj"));
        let m = lin(
            &ln(&h, &format!("blocks.{l}.ln2")),
            &format!("blocks.{l}.mlp.fc1"),
        )
        .gelu("none");
        h = &h + lin(&m, &format!("blocks.{l}.mlp.fc2"));
    }
    lin(
        &ln(&h.mean_dim([1i64].as_slice(), false, Kind::Float), "ln_f"),
        "head",
    )
}
