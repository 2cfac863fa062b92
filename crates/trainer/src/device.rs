//! Where models compute: parsing `--device`, which device each in-process node gets, which GPU a
//! rank of a multi-process job gets from its local rank, and the error that says why CUDA is not
//! there.
//!
//! Placement is a pure function of the spec, the node (or local rank) and how many CUDA devices
//! libtorch sees, so it is tested without a GPU; only [`visible_cuda_devices`] asks libtorch.

use std::fmt;
use std::str::FromStr;

use tch::Device;

use crate::TrainError;

/// What `--device` asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The CPU (the default).
    Cpu,
    /// CUDA: `cuda` (no index: nodes round-robin over the visible GPUs; a rank takes the GPU of its
    /// local rank) or `cuda:K` (every node and every rank on visible GPU K).
    Cuda(Option<usize>),
}

impl FromStr for DeviceSpec {
    type Err = TrainError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(None)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|k| k.parse::<usize>().ok())
                .map(|k| DeviceSpec::Cuda(Some(k)))
                .ok_or_else(|| {
                    TrainError::Config(format!(
                        "device '{s}' is not cpu, cuda or cuda:K (K: a visible GPU's index, from 0)"
                    ))
                }),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(None) => f.write_str("cuda"),
            DeviceSpec::Cuda(Some(k)) => write!(f, "cuda:{k}"),
        }
    }
}

/// `cpu` or `cuda:K`, as `--device` spells it.
pub fn name(device: Device) -> String {
    match device {
        Device::Cuda(k) => format!("cuda:{k}"),
        Device::Cpu => "cpu".into(),
        other => format!("{other:?}"),
    }
}

/// Whether this binary links a libtorch with CUDA kernels (`libtorch_cuda.so` was in the libtorch
/// it was built against; see build.rs).
pub const LIBTORCH_HAS_CUDA: bool = {
    let flag = match option_env!("SWARM_LIBTORCH_CUDA") {
        Some(v) => v.as_bytes(),
        None => b"0",
    };
    flag.len() == 1 && flag[0] == b'1'
};

/// How many CUDA devices libtorch sees (0 with the CPU libtorch or without a driver). Respects
/// `CUDA_VISIBLE_DEVICES`: device K is the K-th listed GPU.
pub fn visible_cuda_devices() -> usize {
    if tch::Cuda::is_available() {
        tch::Cuda::device_count().max(0) as usize
    } else {
        0
    }
}

impl DeviceSpec {
    /// Checks that the devices this spec names exist, given `visible` CUDA devices.
    pub fn check(self, visible: usize) -> Result<(), TrainError> {
        match self {
            DeviceSpec::Cpu => Ok(()),
            DeviceSpec::Cuda(_) if visible == 0 => Err(no_cuda_error(self, LIBTORCH_HAS_CUDA)),
            DeviceSpec::Cuda(Some(k)) if k >= visible => Err(TrainError::Config(format!(
                "device cuda:{k}: only {visible} CUDA device(s) are visible (cuda:0..cuda:{}); \
                 CUDA_VISIBLE_DEVICES={}",
                visible - 1,
                std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_else(|_| "(unset)".into())
            ))),
            DeviceSpec::Cuda(_) => Ok(()),
        }
    }

    /// The device of each of `nodes` in-process nodes: all on the CPU, all on GPU K (`cuda:K`:
    /// they share it), or round-robin over the `visible` GPUs (`cuda`).
    pub fn node_devices(self, nodes: usize, visible: usize) -> Result<Vec<Device>, TrainError> {
        self.check(visible)?;
        Ok((0..nodes)
            .map(|node| match self {
                DeviceSpec::Cpu => Device::Cpu,
                DeviceSpec::Cuda(Some(k)) => Device::Cuda(k),
                DeviceSpec::Cuda(None) => Device::Cuda(node % visible),
            })
            .collect())
    }

    /// The device of the rank with local rank `local_rank` (its index among the job's processes
    /// on this host), given `visible` GPUs and how Slurm bound GPUs to tasks.
    ///
    /// `cuda` means `cuda:LOCAL_RANK` among the visible GPUs, except when the scheduler already
    /// gave each task its own GPUs ([`GpuBinding::PerTask`]: `CUDA_VISIBLE_DEVICES` lists only
    /// this task's, so its first is cuda:0). More ranks than GPUs share them round-robin.
    pub fn rank_device(
        self,
        local_rank: usize,
        visible: usize,
        binding: GpuBinding,
    ) -> Result<Device, TrainError> {
        self.check(visible)?;
        Ok(match self {
            DeviceSpec::Cpu => Device::Cpu,
            DeviceSpec::Cuda(Some(k)) => Device::Cuda(k),
            DeviceSpec::Cuda(None) => match binding {
                GpuBinding::PerTask => Device::Cuda(0),
                GpuBinding::Shared => Device::Cuda(local_rank % visible),
            },
        })
    }
}

/// Whether the scheduler restricted each task to its own GPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuBinding {
    /// Every rank on a host sees the host's (or the allocation's) GPUs.
    Shared,
    /// Slurm bound GPUs per task (`--gpus-per-task`, which implies `--gpu-bind=per_task:N`, or
    /// an explicit `--gpu-bind` other than `none`): each rank sees only its own.
    PerTask,
}

impl GpuBinding {
    /// Reads Slurm's binding from the variables srun exports to each task.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> GpuBinding {
        let bind = var("SLURM_GPU_BIND").filter(|v| !v.trim().is_empty());
        let per_task = var("SLURM_GPUS_PER_TASK").is_some_and(|v| !v.trim().is_empty());
        match bind {
            Some(b) if b.split(',').any(|part| part.trim() == "none") => GpuBinding::Shared,
            Some(_) => GpuBinding::PerTask,
            None if per_task => GpuBinding::PerTask,
            None => GpuBinding::Shared,
        }
    }
}

/// The device of this process as a rank with local rank `local_rank`, from `--device` and the
/// environment.
pub fn this_rank_device(spec: &str, local_rank: usize) -> Result<Device, TrainError> {
    let spec: DeviceSpec = spec.parse()?;
    if spec == DeviceSpec::Cpu {
        return Ok(Device::Cpu);
    }
    spec.rank_device(
        local_rank,
        visible_cuda_devices(),
        GpuBinding::from_env(|name| std::env::var(name).ok()),
    )
}

/// The devices of `nodes` in-process nodes, from `--device`.
pub fn this_run_devices(spec: &str, nodes: usize) -> Result<Vec<Device>, TrainError> {
    let spec: DeviceSpec = spec.parse()?;
    if spec == DeviceSpec::Cpu {
        return Ok(vec![Device::Cpu; nodes]);
    }
    spec.node_devices(nodes, visible_cuda_devices())
}

/// Checks `--device` when the configuration is read: the spec parses and, for CUDA, names a
/// device libtorch sees.
pub fn check_spec(spec: &str) -> Result<(), TrainError> {
    let spec: DeviceSpec = spec.parse()?;
    if spec == DeviceSpec::Cpu {
        return Ok(());
    }
    spec.check(visible_cuda_devices())
}

fn no_cuda_error(spec: DeviceSpec, libtorch_has_cuda: bool) -> TrainError {
    let how = if libtorch_has_cuda {
        "this swarm links a CUDA libtorch, so the driver or CUDA_VISIBLE_DEVICES hides the GPUs: \
         check `nvidia-smi` and CUDA_VISIBLE_DEVICES"
            .to_string()
    } else {
        "this swarm was built against the CPU-only libtorch; on a machine with an NVIDIA GPU run \
         `SWARM_CUDA=1 bash tools/setup.sh` (fetches the CUDA libtorch), then \
         `cargo clean -p torch-sys` and rebuild"
            .to_string()
    };
    TrainError::Config(format!(
        "device {spec}: no CUDA device is visible (libtorch sees 0); {how}; or use --device cpu"
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spec(s: &str) -> DeviceSpec {
        s.parse().unwrap()
    }

    #[test]
    fn specs_parse_and_print_back() {
        for s in ["cpu", "cuda", "cuda:0", "cuda:7"] {
            assert_eq!(spec(s).to_string(), s);
        }
        assert_eq!(spec("cuda:3"), DeviceSpec::Cuda(Some(3)));
        for bad in ["gpu", "cuda:", "cuda:-1", "cuda:x", "CUDA:0", "cpu:0", ""] {
            let e = bad.parse::<DeviceSpec>().unwrap_err().to_string();
            assert!(e.contains("is not cpu, cuda or cuda:K"), "{bad}: {e}");
        }
    }

    #[test]
    fn in_process_nodes_share_one_gpu_or_round_robin_over_all() {
        let cuda = |ks: &[usize]| ks.iter().map(|&k| Device::Cuda(k)).collect::<Vec<_>>();
        assert_eq!(
            spec("cuda:1").node_devices(4, 2).unwrap(),
            cuda(&[1, 1, 1, 1])
        );
        assert_eq!(
            spec("cuda").node_devices(8, 3).unwrap(),
            cuda(&[0, 1, 2, 0, 1, 2, 0, 1])
        );
        assert_eq!(spec("cuda").node_devices(2, 4).unwrap(), cuda(&[0, 1]));
        assert_eq!(
            spec("cpu").node_devices(3, 0).unwrap(),
            vec![Device::Cpu; 3]
        );
    }

    #[test]
    fn a_gpu_that_is_not_visible_is_refused() {
        let e = spec("cuda:2").node_devices(4, 2).unwrap_err().to_string();
        assert!(e.contains("only 2 CUDA device(s) are visible"), "{e}");
        assert!(e.contains("cuda:0..cuda:1"), "{e}");
        for s in ["cuda", "cuda:0"] {
            let e = spec(s).node_devices(1, 0).unwrap_err().to_string();
            assert!(e.contains("no CUDA device is visible"), "{e}");
        }
    }

    #[test]
    fn the_no_cuda_error_says_how_to_get_the_cuda_libtorch_on_a_cpu_build() {
        let cpu_build = no_cuda_error(DeviceSpec::Cuda(Some(0)), false).to_string();
        assert!(cpu_build.contains("device cuda:0: no CUDA device is visible"));
        assert!(cpu_build.contains("SWARM_CUDA=1 bash tools/setup.sh"));
        let cuda_build = no_cuda_error(DeviceSpec::Cuda(None), true).to_string();
        assert!(cuda_build.contains("nvidia-smi"));
        assert!(!cuda_build.contains("SWARM_CUDA=1"));
    }

    #[test]
    fn ranks_take_the_gpu_of_their_local_rank_unless_slurm_bound_one_per_task() {
        let cuda = spec("cuda");
        // Four ranks on a host with four GPUs, all visible to every rank.
        let mapped: Vec<Device> = (0..4)
            .map(|r| cuda.rank_device(r, 4, GpuBinding::Shared).unwrap())
            .collect();
        assert_eq!(mapped, (0..4).map(Device::Cuda).collect::<Vec<_>>());
        // Six ranks, two GPUs: they share round-robin.
        assert_eq!(
            cuda.rank_device(5, 2, GpuBinding::Shared).unwrap(),
            Device::Cuda(1)
        );
        // Slurm bound one GPU per task: each rank's CUDA_VISIBLE_DEVICES lists only its own.
        assert_eq!(
            cuda.rank_device(3, 1, GpuBinding::PerTask).unwrap(),
            Device::Cuda(0)
        );
        assert_eq!(
            cuda.rank_device(3, 2, GpuBinding::PerTask).unwrap(),
            Device::Cuda(0)
        );
        // An explicit index is the same for every rank.
        assert_eq!(
            spec("cuda:1")
                .rank_device(0, 2, GpuBinding::Shared)
                .unwrap(),
            Device::Cuda(1)
        );
        assert!(cuda.rank_device(0, 0, GpuBinding::Shared).is_err());
    }

    #[test]
    fn slurm_binding_is_read_from_srun_s_variables() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(GpuBinding::from_env(env(&[])), GpuBinding::Shared);
        assert_eq!(
            GpuBinding::from_env(env(&[("SLURM_GPUS_PER_TASK", "1")])),
            GpuBinding::PerTask
        );
        assert_eq!(
            GpuBinding::from_env(env(&[("SLURM_GPU_BIND", "single:1")])),
            GpuBinding::PerTask
        );
        // `--gpu-bind=none` turns off the binding --gpus-per-task implies.
        assert_eq!(
            GpuBinding::from_env(env(&[
                ("SLURM_GPUS_PER_TASK", "1"),
                ("SLURM_GPU_BIND", "verbose,none")
            ])),
            GpuBinding::Shared
        );
    }

    #[test]
    fn without_a_gpu_here_cuda_is_refused_at_configuration_time() {
        // This machine class has no GPU; on one with a GPU the assertion is skipped.
        if visible_cuda_devices() == 0 {
            let e = check_spec("cuda:0").unwrap_err().to_string();
            assert!(e.contains("no CUDA device is visible"), "{e}");
            assert!(this_run_devices("cuda", 2).is_err());
            assert!(this_rank_device("cuda", 0).is_err());
        }
        assert_eq!(this_run_devices("cpu", 2).unwrap(), vec![Device::Cpu; 2]);
        assert_eq!(this_rank_device("cpu", 3).unwrap(), Device::Cpu);
    }
}
