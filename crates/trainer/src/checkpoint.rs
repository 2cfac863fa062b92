//! Checkpoints: one safetensors file per node, written atomically, that PyTorch reads.
//!
//! A node's file holds each parameter as its own tensor, by its PyTorch name and shape (so
//! `safetensors.torch.load_file` gives a dict that `module.load_state_dict` accepts once the
//! `swarm.`-prefixed entries are dropped), the optimizer state (momentum buffer) as one flat
//! tensor `swarm.optimizer_state`, and string metadata: `format`, `format_version`, `node`,
//! `nodes`, `step`, `epoch`, `algo`, `model`, `config` (the run's TOML), `param_order` (the
//! parameter names in flat-buffer order, as a JSON list) and `checksum` (FNV-1a 64 of the
//! parameter and optimizer bytes, so a flipped byte is caught, not trained on).
//!
//! A checkpoint directory holds `node-K.safetensors` for every node K of the run; the in-process
//! trainer writes `OUT/checkpoints/epoch-EEEE/` and keeps the two newest.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use swarm_core::le_bytes;

use crate::TrainError;

/// The value of the `format` metadata entry.
pub const FORMAT: &str = "swarm-checkpoint";
/// The value of the `format_version` metadata entry.
pub const FORMAT_VERSION: &str = "1";
/// Name of the flat parameter tensor when no layout is known.
pub const FLAT_PARAMS: &str = "swarm.params";
/// Name of the flat optimizer-state tensor.
pub const OPTIMIZER_STATE: &str = "swarm.optimizer_state";

pub use crate::model::ParamLayout;

/// What every checkpoint of a run records about the run itself.
#[derive(Debug, Clone, PartialEq)]
pub struct RunIdentity {
    /// Nodes in the run.
    pub nodes: usize,
    /// The algorithm (`--algo`).
    pub algo: String,
    /// The model (`--model`).
    pub model: String,
    /// The run's configuration as TOML.
    pub config_toml: String,
}

impl RunIdentity {
    /// Node `node`'s checkpoint at the end of epoch `epoch`, after `step` local steps.
    pub fn checkpoint(
        &self,
        node: usize,
        (epoch, step): (usize, u64),
        params: Vec<f32>,
        optimizer_state: Vec<f32>,
        layout: Vec<ParamLayout>,
    ) -> NodeCheckpoint {
        NodeCheckpoint {
            node,
            nodes: self.nodes,
            step,
            epoch,
            params,
            optimizer_state,
            algo: self.algo.clone(),
            model: self.model.clone(),
            config_toml: self.config_toml.clone(),
            layout,
        }
    }
}

/// Everything one node needs to continue a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeCheckpoint {
    /// This node's index.
    pub node: usize,
    /// Nodes in the run.
    pub nodes: usize,
    /// Local steps done by this node.
    pub step: u64,
    /// Completed epochs.
    pub epoch: usize,
    /// The flat parameter buffer.
    pub params: Vec<f32>,
    /// The optimizer's state laid out like `params` (momentum buffer); empty if none.
    pub optimizer_state: Vec<f32>,
    /// Algorithm (`swarm`, `allreduce`).
    pub algo: String,
    /// Model spec as given (`mlp:256`, `resnet20`, `torchscript:PATH`, ...).
    pub model: String,
    /// The run's configuration as TOML.
    pub config_toml: String,
    /// Names and shapes of the parameters in flat order: each is stored as its own tensor. When
    /// empty, `params` is stored as one flat tensor named [`FLAT_PARAMS`].
    pub layout: Vec<ParamLayout>,
}

/// The file of node `node` in checkpoint directory `dir`.
pub fn node_file(dir: &Path, node: usize) -> PathBuf {
    dir.join(format!("node-{node}.safetensors"))
}

fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// Serializes `tensors` (name, shape, values) with `metadata` into safetensors bytes.
pub(crate) fn safetensors_bytes(
    tensors: &[(String, Vec<usize>, &[f32])],
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>, String> {
    let bytes: Vec<std::borrow::Cow<'_, [u8]>> =
        tensors.iter().map(|(_, _, v)| le_bytes(v)).collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            TensorView::new(Dtype::F32, shape.clone(), b)
                .map(|v| (name.clone(), v))
                .map_err(|e| format!("tensor {name}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bytes = safetensors::tensor::serialize(views, Some(metadata)).map_err(|e| e.to_string())?;
    canonical_header(bytes)
}

/// The same safetensors bytes with the JSON header's keys sorted: the serializer writes the
/// metadata in hash-map order, which differs from process to process, and the same run must give
/// the same file. Data offsets are relative to the end of the header, so only the header changes
/// (padded with spaces to a multiple of 8 bytes, as the format allows).
fn canonical_header(bytes: Vec<u8>) -> Result<Vec<u8>, String> {
    let bad = || "safetensors serializer wrote a malformed header".to_string();
    let len_bytes: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(bad)?;
    let header_len = usize::try_from(u64::from_le_bytes(len_bytes)).map_err(|_| bad())?;
    let header = bytes.get(8..8 + header_len).ok_or_else(bad)?;
    // serde_json's maps are ordered by key (no preserve_order feature).
    let value: serde_json::Value = serde_json::from_slice(header).map_err(|_| bad())?;
    let mut sorted = serde_json::to_vec(&value).map_err(|e| e.to_string())?;
    sorted.resize(sorted.len().div_ceil(8) * 8, b' ');
    let mut out = Vec::with_capacity(8 + sorted.len() + bytes.len() - 8 - header_len);
    out.extend_from_slice(&(sorted.len() as u64).to_le_bytes());
    out.extend_from_slice(&sorted);
    out.extend_from_slice(&bytes[8 + header_len..]);
    Ok(out)
}

/// Writes `bytes` to `path` through a temporary file in the same directory, flushed to disk
/// before it is renamed over `path`: a crash leaves the old file or the new one, never half.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "checkpoint".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        // The rename itself is durable once the directory is synced.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok::<(), std::io::Error>(())
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display())
    })
}

/// Writes `ck` to `path` atomically (temporary file, fsync, rename).
pub fn save(path: &Path, ck: &NodeCheckpoint) -> Result<(), TrainError> {
    let err = |msg: String| TrainError::Checkpoint(format!("{}: {msg}", path.display()));
    let mut tensors: Vec<(String, Vec<usize>, &[f32])> = Vec::new();
    let mut order = Vec::new();
    if ck.layout.is_empty() {
        tensors.push((FLAT_PARAMS.into(), vec![ck.params.len()], &ck.params));
        order.push(FLAT_PARAMS.to_string());
    } else {
        let total: usize = ck.layout.iter().map(ParamLayout::numel).sum();
        if total != ck.params.len() {
            return Err(err(format!(
                "the layout covers {total} values but the checkpoint has {} parameters",
                ck.params.len()
            )));
        }
        let mut offset = 0;
        for p in &ck.layout {
            if p.name.starts_with("swarm.") {
                return Err(err(format!(
                    "parameter name {} uses the reserved prefix swarm.",
                    p.name
                )));
            }
            let n = p.numel();
            tensors.push((
                p.name.clone(),
                p.shape.clone(),
                &ck.params[offset..offset + n],
            ));
            order.push(p.name.clone());
            offset += n;
        }
    }
    if !ck.optimizer_state.is_empty() {
        if ck.optimizer_state.len() != ck.params.len() {
            return Err(err(format!(
                "optimizer state has {} values but the model {}",
                ck.optimizer_state.len(),
                ck.params.len()
            )));
        }
        tensors.push((
            OPTIMIZER_STATE.into(),
            vec![ck.optimizer_state.len()],
            &ck.optimizer_state,
        ));
    }
    let checksum = fnv1a64(&[&*le_bytes(&ck.params), &*le_bytes(&ck.optimizer_state)]);
    let order_json = serde_json::to_string(&order).map_err(|e| err(e.to_string()))?;
    let metadata: HashMap<String, String> = [
        ("format", FORMAT.to_string()),
        ("format_version", FORMAT_VERSION.to_string()),
        ("node", ck.node.to_string()),
        ("nodes", ck.nodes.to_string()),
        ("step", ck.step.to_string()),
        ("epoch", ck.epoch.to_string()),
        ("algo", ck.algo.clone()),
        ("model", ck.model.clone()),
        ("config", ck.config_toml.clone()),
        ("param_order", order_json),
        ("checksum", format!("{checksum:016x}")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let bytes = safetensors_bytes(&tensors, metadata).map_err(err)?;
    write_atomically(path, &bytes).map_err(TrainError::Checkpoint)
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    swarm_core::le_values(bytes).collect()
}

/// Reads a checkpoint written by [`save`]. A missing, truncated, corrupt or foreign file gives an
/// error that names the file and the problem.
pub fn load(path: &Path) -> Result<NodeCheckpoint, TrainError> {
    let err = |msg: String| TrainError::Checkpoint(format!("{}: {msg}", path.display()));
    let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| {
        err(format!(
            "not a readable safetensors file (truncated or corrupt?): {e}"
        ))
    })?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| err(format!("unreadable safetensors header: {e}")))?;
    let meta = header
        .metadata()
        .clone()
        .ok_or_else(|| err("no metadata: not a swarm checkpoint".into()))?;
    let get = |k: &str| {
        meta.get(k)
            .cloned()
            .ok_or_else(|| err(format!("metadata lacks '{k}': not a swarm checkpoint")))
    };
    if get("format")? != FORMAT {
        return Err(err(format!(
            "metadata format is '{}', expected '{FORMAT}'",
            get("format")?
        )));
    }
    if get("format_version")? != FORMAT_VERSION {
        return Err(err(format!(
            "checkpoint format version {} is not supported (this build reads {FORMAT_VERSION})",
            get("format_version")?
        )));
    }
    fn num<T: std::str::FromStr>(
        v: String,
        k: &str,
        err: &dyn Fn(String) -> TrainError,
    ) -> Result<T, TrainError> {
        v.parse()
            .map_err(|_| err(format!("metadata '{k}' = '{v}' is not a number")))
    }
    let node: usize = num(get("node")?, "node", &err)?;
    let nodes: usize = num(get("nodes")?, "nodes", &err)?;
    let step: u64 = num(get("step")?, "step", &err)?;
    let epoch: usize = num(get("epoch")?, "epoch", &err)?;
    if node >= nodes {
        return Err(err(format!("metadata says node {node} of {nodes} nodes")));
    }
    let order: Vec<String> = serde_json::from_str(&get("param_order")?).map_err(|e| {
        err(format!(
            "metadata 'param_order' is not a JSON list of names: {e}"
        ))
    })?;
    let tensor = |name: &str| {
        let t = st
            .tensor(name)
            .map_err(|_| err(format!("tensor {name} listed in param_order is missing")))?;
        if t.dtype() != Dtype::F32 {
            return Err(err(format!(
                "tensor {name} is {:?}, expected F32",
                t.dtype()
            )));
        }
        Ok(t)
    };
    let mut params = Vec::new();
    let mut layout = Vec::new();
    for name in &order {
        let t = tensor(name)?;
        params.extend(f32s(t.data()));
        if name != FLAT_PARAMS {
            layout.push(ParamLayout {
                name: name.clone(),
                shape: t.shape().to_vec(),
            });
        }
    }
    let optimizer_state = match st.names().contains(&OPTIMIZER_STATE) {
        true => f32s(tensor(OPTIMIZER_STATE)?.data()),
        false => Vec::new(),
    };
    if !optimizer_state.is_empty() && optimizer_state.len() != params.len() {
        return Err(err(format!(
            "optimizer state has {} values but the model {}",
            optimizer_state.len(),
            params.len()
        )));
    }
    if let Some(extra) = st
        .names()
        .into_iter()
        .find(|n| *n != OPTIMIZER_STATE && !order.iter().any(|o| o == n))
    {
        return Err(err(format!(
            "tensor {extra} is not in param_order (file edited or mixed up?)"
        )));
    }
    let checksum = fnv1a64(&[&*le_bytes(&params), &*le_bytes(&optimizer_state)]);
    if format!("{checksum:016x}") != get("checksum")? {
        return Err(err(format!(
            "checksum mismatch (stored {}, computed {checksum:016x}): the file is corrupt",
            get("checksum")?
        )));
    }
    Ok(NodeCheckpoint {
        node,
        nodes,
        step,
        epoch,
        params,
        optimizer_state,
        algo: get("algo")?,
        model: get("model")?,
        config_toml: get("config")?,
        layout,
    })
}

impl NodeCheckpoint {
    /// Checks that this checkpoint (read from `path`) fits node `node` of a run of `nodes` nodes
    /// with algorithm `algo` and a model of this `layout`; the error says what differs.
    pub fn ensure_fits(
        &self,
        path: &Path,
        node: usize,
        nodes: usize,
        algo: &str,
        layout: &[ParamLayout],
    ) -> Result<(), TrainError> {
        let err = |msg: String| TrainError::Checkpoint(format!("{}: {msg}", path.display()));
        if self.node != node || self.nodes != nodes {
            return Err(err(format!(
                "holds node {} of {}, but this run needs node {node} of {nodes}",
                self.node, self.nodes
            )));
        }
        if self.algo != algo {
            return Err(err(format!(
                "was written by a {} run, this run is {algo}",
                self.algo
            )));
        }
        let dim: usize = layout.iter().map(ParamLayout::numel).sum();
        if self.params.len() != dim {
            return Err(err(format!(
                "holds {} parameters (model {}), this run's model has {dim}",
                self.params.len(),
                self.model
            )));
        }
        if !self.layout.is_empty() && self.layout != layout {
            let first = self
                .layout
                .iter()
                .zip(layout)
                .find(|(a, b)| a != b)
                .map(|(a, b)| format!(": {} {:?} vs {} {:?}", a.name, a.shape, b.name, b.shape))
                .unwrap_or_default();
            return Err(err(format!(
                "parameter names or shapes differ from this run's model {}{first}",
                self.model
            )));
        }
        Ok(())
    }
}

/// The checkpoint directory that `--resume DIR` means: DIR itself when it holds
/// `node-0.safetensors`; otherwise the newest `epoch-*` directory in DIR or in `DIR/checkpoints`.
pub fn resolve_resume_dir(dir: &Path) -> Result<PathBuf, TrainError> {
    if node_file(dir, 0).is_file() {
        return Ok(dir.to_path_buf());
    }
    for base in [dir.to_path_buf(), dir.join("checkpoints")] {
        if let Some(newest) = newest_epoch_dir(&base) {
            return Ok(newest);
        }
    }
    Err(TrainError::Checkpoint(format!(
        "--resume {}: no checkpoint there (expected node-0.safetensors, or epoch-* directories, \
         or a run directory with checkpoints/)",
        dir.display()
    )))
}

fn newest_epoch_dir(base: &Path) -> Option<PathBuf> {
    let mut best: Option<(usize, PathBuf)> = None;
    for entry in std::fs::read_dir(base).ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(Ok(e)) = name.strip_prefix("epoch-").map(str::parse::<usize>) else {
            continue;
        };
        let path = entry.path();
        if node_file(&path, 0).is_file() && best.as_ref().is_none_or(|(b, _)| e > *b) {
            best = Some((e, path));
        }
    }
    best.map(|(_, p)| p)
}

/// Writes every node's checkpoint of epoch `epoch` into `out/checkpoints/epoch-EEEE/` (files
/// written atomically, the directory renamed into place when complete) and keeps the two newest
/// epoch directories.
pub fn write_epoch(
    out: &Path,
    epoch: usize,
    nodes: &[NodeCheckpoint],
) -> Result<PathBuf, TrainError> {
    let base = out.join("checkpoints");
    let dir = base.join(format!("epoch-{epoch:04}"));
    let tmp = base.join(format!(".epoch-{epoch:04}.tmp-{}", std::process::id()));
    let io = |what: &Path, e: std::io::Error| {
        TrainError::Checkpoint(format!("cannot write {}: {e}", what.display()))
    };
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    for ck in nodes {
        save(&node_file(&tmp, ck.node), ck)?;
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| io(&dir, e))?;
    }
    std::fs::rename(&tmp, &dir).map_err(|e| io(&dir, e))?;
    if let Ok(entries) = std::fs::read_dir(&base) {
        let mut epochs: Vec<usize> = entries
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_string_lossy()
                    .strip_prefix("epoch-")
                    .and_then(|s| s.parse().ok())
            })
            .collect();
        epochs.sort_unstable();
        for old in epochs.iter().rev().skip(2) {
            let _ = std::fs::remove_dir_all(base.join(format!("epoch-{old:04}")));
        }
    }
    Ok(dir)
}

/// Loads the checkpoint of every node of a run from `dir` (see [`resolve_resume_dir`]); all must
/// be of the same epoch.
pub fn load_run(dir: &Path, nodes: usize) -> Result<Vec<NodeCheckpoint>, TrainError> {
    let mut out: Vec<NodeCheckpoint> = Vec::with_capacity(nodes);
    for k in 0..nodes {
        let path = node_file(dir, k);
        if !path.is_file() {
            return Err(TrainError::Checkpoint(format!(
                "{} is missing: a checkpoint of this {nodes}-node run needs node-0 .. node-{} \
                 (was it written by a run with another number of nodes?)",
                path.display(),
                nodes - 1
            )));
        }
        let ck = load(&path)?;
        if let Some(first) = out.first() {
            if (ck.epoch, ck.step) != (first.epoch, first.step) {
                return Err(TrainError::Checkpoint(format!(
                    "{} is at epoch {} step {} but node-0 at epoch {} step {}: the files belong to \
                     different points of the run",
                    path.display(),
                    ck.epoch,
                    ck.step,
                    first.epoch,
                    first.step
                )));
            }
        }
        out.push(ck);
    }
    Ok(out)
}

/// The checkpoints of every node of a run to resume from `dir` (see [`resolve_resume_dir`]),
/// checked against this run: `nodes`, `algo`, the model `layout`, and `steps_per_epoch` (a changed
/// batch size or training subset would silently shift the schedule); `epochs` must lie ahead.
pub fn load_for_run(
    dir: &Path,
    nodes: usize,
    algo: &str,
    layout: &[ParamLayout],
    steps_per_epoch: usize,
    epochs: usize,
) -> Result<Vec<NodeCheckpoint>, TrainError> {
    let dir = resolve_resume_dir(dir)?;
    let run = load_run(&dir, nodes)?;
    for (k, ck) in run.iter().enumerate() {
        let path = node_file(&dir, k);
        ck.ensure_fits(&path, k, nodes, algo, layout)?;
        if ck.step != (ck.epoch * steps_per_epoch) as u64 {
            return Err(TrainError::Checkpoint(format!(
                "{}: {} steps in {} epochs, but this run takes {steps_per_epoch} steps per epoch: \
                 use the checkpointed run's batch size and training subset",
                path.display(),
                ck.step,
                ck.epoch
            )));
        }
        if ck.epoch >= epochs {
            return Err(TrainError::Checkpoint(format!(
                "{}: the run already completed {} epochs; pass --epochs larger than that to go on",
                path.display(),
                ck.epoch
            )));
        }
    }
    Ok(run)
}

/// Writes the checkpoints of all nodes of an in-process run of `run` into `out` at the end of
/// epoch `epoch`, after `step` local steps per node (see [`write_epoch`]).
pub fn write_run_epoch(
    out: &Path,
    run: &RunIdentity,
    (epoch, step): (usize, u64),
    params: &[&[f32]],
    optimizer_states: Vec<Vec<f32>>,
    layout: &[ParamLayout],
) -> Result<PathBuf, TrainError> {
    let nodes: Vec<NodeCheckpoint> = params
        .iter()
        .zip(optimizer_states)
        .enumerate()
        .map(|(node, (p, optimizer_state))| {
            run.checkpoint(
                node,
                (epoch, step),
                p.to_vec(),
                optimizer_state,
                layout.to_vec(),
            )
        })
        .collect();
    write_epoch(out, epoch, &nodes)
}

/// The checkpoint file of `rank` in run directory `out`.
pub fn rank_checkpoint(out: &Path, rank: usize) -> PathBuf {
    out.join(format!("rank-{rank}"))
        .join("checkpoint.safetensors")
}

/// Some rank's checkpoint in run directory `dir` (every rank's holds the run's configuration).
pub fn any_rank_checkpoint(dir: &Path) -> Option<PathBuf> {
    let mut ranks: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let rank = e
                .file_name()
                .to_str()?
                .strip_prefix("rank-")?
                .parse()
                .ok()?;
            let path = e.path().join("checkpoint.safetensors");
            path.is_file().then_some((rank, path))
        })
        .collect();
    ranks.sort();
    ranks.into_iter().next().map(|(_, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NodeCheckpoint {
        NodeCheckpoint {
            node: 1,
            nodes: 3,
            step: 4242,
            epoch: 7,
            params: (0..26)
                .map(|i| (i as f32 * 0.37).sin() * 1e-3 + f32::EPSILON)
                .collect(),
            optimizer_state: (0..26).map(|i| -(i as f32) / 3.0).collect(),
            algo: "swarm".into(),
            model: "mlp:4".into(),
            config_toml: "nodes = 3\nlr = 0.1\n".into(),
            layout: vec![
                ParamLayout {
                    name: "fc1.bias".into(),
                    shape: vec![4],
                },
                ParamLayout {
                    name: "fc1.weight".into(),
                    shape: vec![4, 5],
                },
                ParamLayout {
                    name: "fc2.bias".into(),
                    shape: vec![2],
                },
            ],
        }
    }

    #[test]
    fn round_trip_is_bit_exact_and_tensors_are_stored_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node-1.safetensors");
        let ck = sample();
        save(&path, &ck).unwrap();
        let back = load(&path).unwrap();
        assert_eq!(back, ck);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back.params), bits(&ck.params));
        let bytes = std::fs::read(&path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let w = st.tensor("fc1.weight").unwrap();
        assert_eq!(w.shape(), &[4, 5]);
        assert_eq!(f32s(w.data()), ck.params[4..24].to_vec());
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1);

        let flat = NodeCheckpoint {
            layout: vec![],
            optimizer_state: vec![],
            ..sample()
        };
        save(&path, &flat).unwrap();
        assert_eq!(load(&path).unwrap(), flat);
    }

    /// Every hash map iterates in its own order; the file must not.
    #[test]
    fn the_same_tensors_and_metadata_give_the_same_bytes() {
        let metadata = || -> HashMap<String, String> {
            (0..16)
                .map(|k| (format!("key{k}"), format!("value {k}")))
                .collect()
        };
        let values = [1.0f32, -2.5, 3.25];
        let tensors = [("w".to_string(), vec![3], &values[..])];
        let first = safetensors_bytes(&tensors, metadata()).unwrap();
        for _ in 0..8 {
            assert_eq!(safetensors_bytes(&tensors, metadata()).unwrap(), first);
        }
        let header_len = u64::from_le_bytes(first[..8].try_into().unwrap()) as usize;
        assert_eq!(header_len % 8, 0);
        let (_, meta) = SafeTensors::read_metadata(&first).unwrap();
        assert_eq!(meta.metadata().clone().unwrap(), metadata());
        let read = SafeTensors::deserialize(&first).unwrap();
        assert_eq!(read.tensor("w").unwrap().data(), &le_bytes(&values)[..]);
    }

    #[test]
    fn corrupt_truncated_and_foreign_files_are_refused_with_the_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node-1.safetensors");
        save(&path, &sample()).unwrap();
        let good = std::fs::read(&path).unwrap();
        let msg = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap();
            load(&path).unwrap_err().to_string()
        };
        let e = msg(&good[..good.len() - 10]);
        assert!(
            e.contains("node-1.safetensors") && e.contains("truncated"),
            "{e}"
        );
        let mut flipped = good.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 0x40;
        let e = msg(&flipped);
        assert!(
            e.contains("node-1.safetensors") && e.contains("checksum mismatch"),
            "{e}"
        );
        let e = msg(b"hello");
        assert!(
            e.contains("node-1.safetensors") && e.contains("safetensors"),
            "{e}"
        );
        let foreign =
            safetensors_bytes(&[("w".into(), vec![2], &[1.0, 2.0][..])], HashMap::new()).unwrap();
        let e = msg(&foreign);
        assert!(e.contains("not a swarm checkpoint"), "{e}");
        let e = load(&dir.path().join("nope.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("nope.safetensors") && e.contains("cannot read"),
            "{e}"
        );

        save(&path, &sample()).unwrap();
        let ck = load(&path).unwrap();
        let layout = sample().layout;
        ck.ensure_fits(&path, 1, 3, "swarm", &layout).unwrap();
        let e = ck
            .ensure_fits(&path, 1, 4, "swarm", &layout)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("node 1 of 3") && e.contains("node 1 of 4"),
            "{e}"
        );
        let e = ck
            .ensure_fits(&path, 1, 3, "allreduce", &layout)
            .unwrap_err()
            .to_string();
        assert!(e.contains("swarm run"), "{e}");
        let mut other = layout.clone();
        other[1].shape = vec![5, 4];
        let e = ck
            .ensure_fits(&path, 1, 3, "swarm", &other)
            .unwrap_err()
            .to_string();
        assert!(e.contains("fc1.weight [4, 5] vs fc1.weight [5, 4]"), "{e}");
    }

    #[test]
    fn epoch_directories_resolve_to_the_newest_and_keep_two() {
        let dir = tempfile::tempdir().unwrap();
        for epoch in 1..=3 {
            let nodes: Vec<_> = (0..2)
                .map(|k| NodeCheckpoint {
                    node: k,
                    nodes: 2,
                    epoch,
                    step: 10 * epoch as u64,
                    ..sample()
                })
                .collect();
            write_epoch(dir.path(), epoch, &nodes).unwrap();
        }
        let newest = resolve_resume_dir(dir.path()).unwrap();
        assert!(
            newest.ends_with("checkpoints/epoch-0003"),
            "{}",
            newest.display()
        );
        assert!(!dir.path().join("checkpoints/epoch-0001").exists());
        assert!(dir.path().join("checkpoints/epoch-0002").exists());
        let run = load_run(&newest, 2).unwrap();
        assert_eq!(run.iter().map(|c| c.step).collect::<Vec<_>>(), vec![30, 30]);
        let e = load_run(&newest, 3).unwrap_err().to_string();
        assert!(e.contains("node-2.safetensors is missing"), "{e}");
        let e = resolve_resume_dir(&dir.path().join("empty"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no checkpoint there"), "{e}");
    }
}
