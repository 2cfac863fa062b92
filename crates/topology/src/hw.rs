//! Hardware locality: NUMA nodes, the CPUs and NUMA nodes nearest each RDMA device, and binding
//! threads and buffers there.
//!
//! Backed by the system libhwloc through `hwlocality` when the `hwloc` feature is enabled (off by
//! default). Without it, [`probe`], [`report`] and the binding functions return
//! [`TopologyError::HardwareUnsupported`].
//!
//! A machine without RDMA (OpenFabrics) devices is not an error: [`HwInfo::rdma_devices`] is
//! empty and [`report`] says "no RDMA devices found".

use std::fmt;

use serde::Serialize;

use crate::TopologyError;

/// One NUMA node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NumaNode {
    /// OS index of the node (as in `numactl`).
    pub os_index: usize,
    /// OS indices of the CPUs (processing units) local to it.
    pub cpus: Vec<usize>,
    /// Local memory in bytes, if known.
    pub memory_bytes: Option<u64>,
}

/// One RDMA (OpenFabrics) device and its locality.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RdmaDevice {
    /// Device name, e.g. `mlx5_0` or `rxe0`.
    pub name: String,
    /// OS indices of the CPUs nearest the device (the cpuset of its first non-I/O ancestor).
    pub cpus: Vec<usize>,
    /// OS indices of the NUMA nodes nearest the device.
    pub numa_nodes: Vec<usize>,
}

/// What [`probe`] discovers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HwInfo {
    /// OS indices of all CPUs of the machine.
    pub cpus: Vec<usize>,
    /// NUMA nodes (one on most laptops and VMs).
    pub numa_nodes: Vec<NumaNode>,
    /// RDMA devices; empty where none exist.
    pub rdma_devices: Vec<RdmaDevice>,
}

/// Formats a sorted list of indices compactly: `0-3,8,10-11`.
pub fn format_ranges(ids: &[usize]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        let mut j = i;
        while j + 1 < ids.len() && ids[j + 1] == ids[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            ids[i].to_string()
        } else {
            format!("{}-{}", ids[i], ids[j])
        });
        i = j + 1;
    }
    if out.is_empty() {
        "(none)".into()
    } else {
        out.join(",")
    }
}

impl fmt::Display for HwInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "machine: {} CPUs ({})",
            self.cpus.len(),
            format_ranges(&self.cpus)
        )?;
        writeln!(f, "NUMA nodes: {}", self.numa_nodes.len())?;
        for node in &self.numa_nodes {
            write!(
                f,
                "  node {}: CPUs {}",
                node.os_index,
                format_ranges(&node.cpus)
            )?;
            match node.memory_bytes {
                Some(b) => writeln!(f, ", {:.1} GiB", b as f64 / (1u64 << 30) as f64)?,
                None => writeln!(f)?,
            }
        }
        if self.rdma_devices.is_empty() {
            writeln!(f, "RDMA devices: no RDMA devices found")?;
        } else {
            writeln!(f, "RDMA devices: {}", self.rdma_devices.len())?;
            for d in &self.rdma_devices {
                writeln!(
                    f,
                    "  {}: nearest NUMA node(s) {}, CPUs {}",
                    d.name,
                    format_ranges(&d.numa_nodes),
                    format_ranges(&d.cpus)
                )?;
            }
        }
        Ok(())
    }
}

/// Discovers the machine, NUMA nodes and RDMA devices and returns them as human-readable text
/// (for `swarm topo hw`). No RDMA device is reported as "no RDMA devices found", not an error.
pub fn report() -> Result<String, TopologyError> {
    Ok(probe()?.to_string())
}

#[cfg(feature = "hwloc")]
mod imp {
    use super::{HwInfo, NumaNode, RdmaDevice};
    use crate::TopologyError;
    use hwlocality::cpu::binding::CpuBindingFlags;
    use hwlocality::cpu::cpuset::CpuSet;
    use hwlocality::memory::binding::{MemoryBindingFlags, MemoryBindingPolicy};
    use hwlocality::memory::nodeset::NodeSet;
    use hwlocality::object::attributes::ObjectAttributes;
    use hwlocality::object::types::{OSDeviceType, ObjectType};
    use hwlocality::object::TopologyObject;
    use hwlocality::topology::builder::TypeFilter;
    use hwlocality::Topology;

    fn hw_err(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> TopologyError {
        TopologyError::Hardware {
            context: what.to_string(),
            source: Box::new(e),
        }
    }

    fn indices<'a>(it: impl Iterator<Item = hwlocality::bitmap::BitmapIndex> + 'a) -> Vec<usize> {
        it.map(usize::from).collect()
    }

    pub(super) fn topology() -> Result<Topology, TopologyError> {
        Topology::builder()
            .with_io_type_filter(TypeFilter::KeepImportant)
            .map_err(|e| hw_err("setting the I/O type filter", e))?
            .build()
            .map_err(|e| hw_err("loading the hardware topology", e))
    }

    fn is_rdma(obj: &TopologyObject) -> bool {
        matches!(
            obj.attributes(),
            Some(ObjectAttributes::OSDevice(a)) if a.device_type() == OSDeviceType::OpenFabrics
        )
    }

    pub(super) fn probe() -> Result<HwInfo, TopologyError> {
        let topo = topology()?;
        let cpus = indices(topo.cpuset().iter_set());
        let numa_nodes = topo
            .objects_with_type(ObjectType::NUMANode)
            .map(|obj| NumaNode {
                os_index: obj.os_index().unwrap_or(0),
                cpus: obj
                    .cpuset()
                    .map(|s| indices(s.iter_set()))
                    .unwrap_or_default(),
                memory_bytes: match obj.attributes() {
                    Some(ObjectAttributes::NUMANode(a)) => a.local_memory().map(|m| m.get()),
                    _ => None,
                },
            })
            .collect();
        let rdma_devices = topo
            .os_devices()
            .filter(|o| is_rdma(o))
            .map(|o| {
                let anchor = o.first_non_io_ancestor();
                RdmaDevice {
                    name: o
                        .name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "(unnamed)".into()),
                    cpus: anchor
                        .and_then(|a| a.cpuset())
                        .map(|s| indices(s.iter_set()))
                        .unwrap_or_default(),
                    numa_nodes: anchor
                        .and_then(|a| a.nodeset())
                        .map(|s| indices(s.iter_set()))
                        .unwrap_or_default(),
                }
            })
            .collect();
        Ok(HwInfo {
            cpus,
            numa_nodes,
            rdma_devices,
        })
    }

    pub(super) fn bind_current_thread(cpus: &[usize]) -> Result<(), TopologyError> {
        if cpus.is_empty() {
            return Err(crate::invalid("cpus", "cannot bind to an empty CPU set"));
        }
        let topo = topology()?;
        let set: CpuSet = cpus
            .iter()
            .map(|&c| {
                hwlocality::bitmap::BitmapIndex::try_from(c)
                    .map_err(|_| crate::invalid("cpus", format!("CPU index {c} is too large")))
            })
            .collect::<Result<_, _>>()?;
        topo.bind_cpu(&set, CpuBindingFlags::THREAD)
            .map_err(|e| hw_err(&format!("binding this thread to CPUs {cpus:?}"), e))
    }

    pub(super) fn bind_buffer<T>(buf: &[T], numa_nodes: &[usize]) -> Result<(), TopologyError> {
        if numa_nodes.is_empty() {
            return Err(crate::invalid(
                "numa_nodes",
                "cannot bind to an empty NUMA node set",
            ));
        }
        let topo = topology()?;
        let set: NodeSet = numa_nodes
            .iter()
            .map(|&c| {
                hwlocality::bitmap::BitmapIndex::try_from(c).map_err(|_| {
                    crate::invalid("numa_nodes", format!("NUMA index {c} is too large"))
                })
            })
            .collect::<Result<_, _>>()?;
        topo.bind_memory_area::<[T], _>(
            buf,
            &set,
            MemoryBindingPolicy::Bind,
            // hwlocality refuses MIGRATE for areas: pages already touched stay where they are.
            MemoryBindingFlags::empty(),
        )
        .map_err(|e| hw_err(&format!("binding a buffer to NUMA nodes {numa_nodes:?}"), e))
    }

    pub(super) fn buffer_binding<T>(buf: &[T]) -> Result<Option<Vec<usize>>, TopologyError> {
        if std::mem::size_of_val(buf) == 0 {
            return Err(crate::invalid("buf", "an empty buffer has no binding"));
        }
        let topo = topology()?;
        let (set, policy) = topo
            .area_memory_binding::<[T], NodeSet>(buf, MemoryBindingFlags::empty())
            .map_err(|e| hw_err("querying a buffer's NUMA binding", e))?;
        Ok((policy == Some(MemoryBindingPolicy::Bind)).then(|| indices(set.iter_set())))
    }
}

#[cfg(not(feature = "hwloc"))]
mod imp {
    use super::HwInfo;
    use crate::TopologyError;

    fn disabled() -> TopologyError {
        TopologyError::HardwareUnsupported
    }
    pub(super) fn probe() -> Result<HwInfo, TopologyError> {
        Err(disabled())
    }
    pub(super) fn bind_current_thread(_cpus: &[usize]) -> Result<(), TopologyError> {
        Err(disabled())
    }
    pub(super) fn bind_buffer<T>(_buf: &[T], _numa: &[usize]) -> Result<(), TopologyError> {
        Err(disabled())
    }
    pub(super) fn buffer_binding<T>(_buf: &[T]) -> Result<Option<Vec<usize>>, TopologyError> {
        Err(disabled())
    }
}

/// Discovers CPUs, NUMA nodes and RDMA (OpenFabrics) devices with their nearest CPUs and NUMA
/// nodes.
pub fn probe() -> Result<HwInfo, TopologyError> {
    imp::probe()
}

/// Binds the calling thread to the given CPUs (OS indices), e.g. [`RdmaDevice::cpus`].
pub fn bind_current_thread(cpus: &[usize]) -> Result<(), TopologyError> {
    imp::bind_current_thread(cpus)
}

/// Binds the pages of `buf` to the given NUMA nodes (OS indices); e.g. a model buffer to
/// [`RdmaDevice::numa_nodes`] before registering it with the NIC.
///
/// Only whole pages inside the buffer are affected, as with `mbind(2)`, and the binding decides
/// where pages go when first touched: pages already touched are not migrated, so bind fresh
/// buffers.
pub fn bind_buffer<T>(buf: &[T], numa_nodes: &[usize]) -> Result<(), TopologyError> {
    imp::bind_buffer(buf, numa_nodes)
}

/// The NUMA nodes (OS indices) the pages of `buf` are bound to by a [`bind_buffer`]-style strict
/// policy, or `None` when they follow the default (or an interleave/preferred) policy.
pub fn buffer_binding<T>(buf: &[T]) -> Result<Option<Vec<usize>>, TopologyError> {
    imp::buffer_binding(buf)
}

/// The NUMA nodes nearest the named RDMA device, or `None` when hwloc does not know the device
/// or cannot place it (virtual devices such as soft-RoCE, single-node machines without I/O
/// locality).
pub fn numa_nodes_near(device: &str) -> Result<Option<Vec<usize>>, TopologyError> {
    let info = probe()?;
    Ok(info
        .rdma_devices
        .into_iter()
        .find(|d| d.name == device && !d.numa_nodes.is_empty())
        .map(|d| d.numa_nodes))
}

/// Binds the calling thread to the CPUs nearest the named RDMA device, or returns `Ok(false)`
/// (doing nothing) when no such device exists, so callers can pin opportunistically.
pub fn bind_current_thread_near(device: &str) -> Result<bool, TopologyError> {
    let info = probe()?;
    match info.rdma_devices.iter().find(|d| d.name == device) {
        Some(d) if !d.cpus.is_empty() => bind_current_thread(&d.cpus).map(|()| true),
        _ => Ok(false),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(format_ranges(&[0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(format_ranges(&[]), "(none)");
    }

    #[cfg(feature = "hwloc")]
    #[test]
    fn probe_and_report() {
        let info = probe().expect("hwloc probe");
        assert!(!info.cpus.is_empty());
        let text = report().unwrap();
        assert!(text.contains("NUMA nodes"));
        if info.rdma_devices.is_empty() {
            assert!(text.contains("no RDMA devices found"), "{text}");
        }
        // Binding to all CPUs of the machine always works where binding is supported.
        if let Err(e) = bind_current_thread(&info.cpus) {
            eprintln!("thread binding unsupported here: {e}");
        }
        let buf = vec![0u8; 1 << 16];
        if let Some(node) = info.numa_nodes.first() {
            let page = 4096;
            let whole_pages = &buf[buf.as_ptr().align_offset(page)..][..page * 8];
            match bind_buffer(whole_pages, &[node.os_index]) {
                Ok(()) => assert_eq!(
                    buffer_binding(whole_pages).unwrap(),
                    Some(vec![node.os_index]),
                    "bound pages report their node"
                ),
                Err(e) => panic!("binding a buffer to NUMA node {}: {e}", node.os_index),
            }
        }
        assert_eq!(numa_nodes_near("no-such-device").unwrap(), None);
        let err = bind_buffer(&buf, &[4000]).unwrap_err().to_string();
        assert!(err.contains("NUMA nodes [4000]"), "{err}");
        assert!(!bind_current_thread_near("no-such-device").unwrap());
    }
}
