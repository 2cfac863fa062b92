//! The lowest layer: a small safe wrapper over `sideway`'s verbs, and the only module with `unsafe`.
//!
//! What it guarantees to the layers above:
//! - A [`Region`] owns page-aligned, zeroed memory registered with the NIC; dropping it
//!   deregisters the memory region *before* the memory is freed, so no remote key outlives it.
//! - A [`Qp`] keeps every region it ever posted a work request on alive (an `Arc`) until the QP
//!   itself is destroyed, so the NIC never touches freed memory, whatever the caller drops first.
//! - Every posted range is bounds-checked against the local region and the remote buffer the peer
//!   advertised; atomics are checked for 8-byte alignment. A range error is a value, not a panic.
//! - Completions are drained completely from a *basic* CQ (the extended CQ returns fake completions
//!   on rxe with rdma-core < 55), and statuses are decoded without sideway's panicking `From`.
#![allow(unsafe_code)]

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::net::Ipv4Addr;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use sideway::ibverbs::address::{AddressHandleAttribute, Gid};
use sideway::ibverbs::completion::{BasicCompletionQueue, GenericCompletionQueue};
use sideway::ibverbs::device::{DeviceInfo, DeviceList};
use sideway::ibverbs::device_context::{DeviceContext, Mtu};
use sideway::ibverbs::memory_region::MemoryRegion;
use sideway::ibverbs::protection_domain::ProtectionDomain;
use sideway::ibverbs::queue_pair::{
    BasicQueuePair, PostSendGuard, QueuePair, QueuePairAttribute, QueuePairAttributeMask,
    QueuePairState, SetScatterGatherEntry, WorkRequestFlags,
};
use sideway::ibverbs::AccessFlags;

use crate::RdmaError;

/// Page size used to align registered memory.
pub const PAGE: usize = 4096;

/// Renders an error with its whole `source()` chain (sideway's errors hide their cause).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn verbs(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> RdmaError {
    RdmaError::Call {
        call: what.to_string(),
        source: Box::new(e),
    }
}

/// Which device, port and GID to use.
#[derive(Debug, Clone, Default)]
pub struct DeviceSelector {
    /// Device name (e.g. `mlx5_0`, `rxe0`); `None` takes the first device.
    pub name: Option<String>,
    /// Pick the RoCE GID holding this IPv4 address (`::ffff:a.b.c.d`).
    pub ipv4: Option<Ipv4Addr>,
    /// Use this GID index (takes precedence over `ipv4`). Without either, the first RoCEv2
    /// IPv4-mapped GID is used, else GID 0 (InfiniBand).
    pub gid_index: Option<u8>,
    /// Port number, 1 unless given.
    pub port: Option<u8>,
}

/// An opened device with its protection domain and chosen port/GID.
pub struct Device {
    pd: Arc<ProtectionDomain>,
    ctx: Arc<DeviceContext>,
    name: String,
    port: u8,
    gid_index: u8,
    gid: [u8; 16],
    lid: u16,
    mtu: Mtu,
    max_rd_atomic: u8,
    numa: Option<NumaBinding>,
}

/// Where [`Device::region`] places new regions' pages.
#[derive(Debug, Clone)]
struct NumaBinding {
    nodes: Vec<usize>,
    /// A failed binding is an error (nodes the user asked for), else a warning (locality found
    /// by hwloc, best effort).
    strict: bool,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("name", &self.name)
            .field("port", &self.port)
            .field("gid_index", &self.gid_index)
            .field("gid", &std::net::Ipv6Addr::from(self.gid))
            .field("lid", &self.lid)
            .field("max_rd_atomic", &self.max_rd_atomic)
            .finish()
    }
}

fn mapped(ip: Ipv4Addr) -> [u8; 16] {
    ip.to_ipv6_mapped().octets()
}

impl Device {
    /// Opens the selected device. Fails with [`RdmaError::NoDevice`] where there is no RDMA stack
    /// or no matching device.
    pub fn open(sel: &DeviceSelector) -> Result<Self, RdmaError> {
        let list = DeviceList::new().map_err(|e| {
            RdmaError::NoDevice(format!(
                "no RDMA devices on this host ({}); soft-RoCE runs in tools/rxe-vm/run.sh",
                chain(&e)
            ))
        })?;
        let mut names = Vec::new();
        let mut found = None;
        for dev in list.iter() {
            let name = dev.name();
            if found.is_none() && sel.name.as_ref().is_none_or(|want| *want == name) {
                found = Some((
                    dev.open().map_err(|e| verbs("opening the device", e))?,
                    name.clone(),
                ));
            }
            names.push(name);
        }
        let (ctx, name) = found.ok_or_else(|| {
            RdmaError::NoDevice(match &sel.name {
                Some(want) => format!("no RDMA device named {want:?} (devices: {names:?})"),
                None => {
                    "no RDMA devices on this host; soft-RoCE runs in tools/rxe-vm/run.sh".into()
                }
            })
        })?;
        let port = sel.port.unwrap_or(1);
        let port_attr = ctx
            .query_port(port)
            .map_err(|e| verbs(&format!("querying port {port} of {name}"), e))?;
        let dev_attr = ctx
            .query_device()
            .map_err(|e| verbs(&format!("querying {name}"), e))?;
        let gid_index = match (sel.gid_index, sel.ipv4) {
            (Some(i), _) => i,
            (None, want) => {
                let table = ctx
                    .query_gid_table()
                    .map_err(|e| verbs(&format!("reading the GID table of {name}"), e))?;
                let mut pick = None;
                for entry in &table {
                    if entry.port_num() != u32::from(port) {
                        continue;
                    }
                    let raw = entry.gid().raw;
                    let is_v4 = raw[..12] == mapped(Ipv4Addr::UNSPECIFIED)[..12];
                    let hit = match want {
                        Some(ip) => raw == mapped(ip),
                        None => is_v4,
                    };
                    if hit {
                        pick = Some(entry.gid_index());
                        break;
                    }
                }
                match (pick, want) {
                    (Some(i), _) => u8::try_from(i).map_err(|_| {
                        RdmaError::NoDevice(format!("GID index {i} of {name} is out of range"))
                    })?,
                    (None, Some(ip)) => {
                        return Err(RdmaError::NoDevice(format!(
                            "{name} port {port} has no GID for {ip} (is rxe bound to the netdev holding it?)"
                        )))
                    }
                    (None, None) => 0,
                }
            }
        };
        let gid = ctx
            .query_gid(port, u32::from(gid_index))
            .map_err(|e| verbs(&format!("reading GID {gid_index} of {name}"), e))?
            .raw;
        let pd = ctx
            .alloc_pd()
            .map_err(|e| verbs(&format!("allocating a protection domain on {name}"), e))?;
        let max_rd_atomic = dev_attr.max_qp_rd_atom().clamp(1, 16) as u8;
        Ok(Device {
            pd,
            ctx,
            name,
            port,
            gid_index,
            gid,
            lid: port_attr.lid(),
            mtu: port_attr.active_mtu(),
            max_rd_atomic,
            numa: None,
        })
    }

    /// Places the pages of every region registered from now on on these NUMA nodes (OS indices)
    /// before the NIC pins them. With `strict`, a failed binding fails [`Device::region`];
    /// otherwise it is logged and the region keeps the default policy.
    pub fn place_regions_on(&mut self, numa_nodes: Vec<usize>, strict: bool) {
        self.numa = Some(NumaBinding {
            nodes: numa_nodes,
            strict,
        });
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The GID used for this endpoint's traffic.
    pub fn gid(&self) -> [u8; 16] {
        self.gid
    }

    /// The GID index used.
    pub fn gid_index(&self) -> u8 {
        self.gid_index
    }

    /// The port's LID (0 on RoCE).
    pub fn lid(&self) -> u16 {
        self.lid
    }

    /// Outstanding RDMA READs/atomics per QP used (device maximum, at most 16).
    pub fn max_rd_atomic(&self) -> u8 {
        self.max_rd_atomic
    }

    /// Registers `len` bytes (rounded up to whole pages) of fresh zeroed, page-aligned memory.
    pub fn region(&self, len: usize, access: Access) -> Result<Arc<Region>, RdmaError> {
        let size = len.max(1).div_ceil(PAGE) * PAGE;
        let layout = Layout::from_size_align(size, PAGE)
            .map_err(|e| RdmaError::Verbs(format!("cannot lay out {len} bytes: {e}")))?;
        // SAFETY: `layout` has a non-zero size (at least one page).
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw)
            .ok_or_else(|| RdmaError::Verbs(format!("out of memory allocating {size} bytes")))?;
        let mut numa_nodes = None;
        if let Some(binding) = &self.numa {
            // SAFETY: `ptr` points to `size` zeroed bytes we own; atomics tolerate any later
            // change of the memory under this shared view, which ends with this block.
            let pages =
                unsafe { std::slice::from_raw_parts(ptr.as_ptr() as *const AtomicU8, size) };
            match numa::bind(pages, &binding.nodes) {
                Ok(()) => numa_nodes = Some(binding.nodes.clone()),
                Err(e) if binding.strict => {
                    // SAFETY: allocated above with this layout, never registered or shared.
                    unsafe { dealloc(ptr.as_ptr(), layout) };
                    return Err(RdmaError::Config(format!(
                        "placing {size} bytes for {} on NUMA nodes {:?}: {e}",
                        self.name, binding.nodes
                    )));
                }
                Err(e) => tracing::warn!(
                    "{}: window left on the default NUMA policy ({e}); set SWARM_RDMA_NUMA=off to silence",
                    self.name
                ),
            }
        }
        let flags = match access {
            Access::Local => AccessFlags::LocalWrite,
            Access::RemoteRead => AccessFlags::LocalWrite | AccessFlags::RemoteRead,
            Access::RemoteWrite => AccessFlags::LocalWrite | AccessFlags::RemoteWrite,
            Access::RemoteAll => {
                AccessFlags::LocalWrite
                    | AccessFlags::RemoteRead
                    | AccessFlags::RemoteWrite
                    | AccessFlags::RemoteAtomic
            }
        };
        // SAFETY: `ptr` points to `size` bytes we own; the returned Region keeps them allocated
        // until after the MR is deregistered (Region::drop).
        let mr = unsafe { self.pd.reg_mr(ptr.as_ptr() as usize, size, flags) };
        match mr {
            Ok(mr) => Ok(Arc::new(Region {
                mr: Some(mr),
                ptr,
                layout,
                len: size,
                numa_nodes,
            })),
            Err(e) => {
                // SAFETY: allocated above with this layout, never registered or shared.
                unsafe { dealloc(ptr.as_ptr(), layout) };
                Err(verbs(
                    &format!("registering {size} bytes on {} (memlock limit?)", self.name),
                    e,
                ))
            }
        }
    }

    /// A completion queue with room for `entries` completions.
    pub fn cq(&self, entries: u32) -> Result<Cq, RdmaError> {
        let cq = self
            .ctx
            .create_cq_builder()
            .setup_cqe(entries)
            .build()
            .map_err(|e| verbs("creating a completion queue", e))?;
        Ok(Cq { cq })
    }

    /// A reliable-connection QP in the INIT state, completing into `cq`.
    pub fn qp(&self, cq: &Cq, max_send_wr: u32) -> Result<Qp, RdmaError> {
        let generic = GenericCompletionQueue::from(Arc::clone(&cq.cq));
        let mut qp = self
            .pd
            .create_qp_builder()
            .setup_max_send_wr(max_send_wr)
            .setup_max_recv_wr(1)
            .setup_max_send_sge(1)
            .setup_max_recv_sge(1)
            .setup_send_cq(generic.clone())
            .setup_recv_cq(generic)
            .build()
            .map_err(|e| verbs("creating a queue pair", e))?;
        let mut attr = QueuePairAttribute::new();
        attr.setup_state(QueuePairState::Init)
            .setup_pkey_index(0)
            .setup_port(self.port)
            .setup_access_flags(
                AccessFlags::LocalWrite
                    | AccessFlags::RemoteRead
                    | AccessFlags::RemoteWrite
                    | AccessFlags::RemoteAtomic,
            );
        qp.modify(&attr)
            .map_err(|e| verbs("moving a queue pair to INIT", e))?;
        // A pseudo-random 24-bit starting PSN per QP.
        let psn = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
            ^ qp.qp_number().rotate_left(7))
            & 0x00ff_ffff;
        Ok(Qp {
            qp,
            psn,
            port: self.port,
            gid_index: self.gid_index,
            mtu: self.mtu,
            max_rd_atomic: self.max_rd_atomic,
            keep: Vec::new(),
        })
    }
}

/// Who may access a [`Region`] besides the local CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Only the local NIC writes it (targets of our READs, sources of our WRITEs).
    Local,
    /// Peers may read it (the published window).
    RemoteRead,
    /// Peers may write it (inbox slots).
    RemoteWrite,
    /// Peers may read, write and use atomics on it.
    RemoteAll,
}

/// Page-aligned memory registered with the NIC. Its bytes may change under the CPU at any time
/// (remote writes, DMA of our own READs), so it hands out copies, never references.
pub struct Region {
    mr: Option<Arc<MemoryRegion>>,
    ptr: NonNull<u8>,
    layout: Layout,
    len: usize,
    numa_nodes: Option<Vec<usize>>,
}

// SAFETY: the region is plain memory owned by this value; all CPU access goes through raw copies
// and atomics below, which are sound from any thread.
unsafe impl Send for Region {}
// SAFETY: as above; no method hands out references into the memory.
unsafe impl Sync for Region {}

impl Drop for Region {
    fn drop(&mut self) {
        // Deregister first: afterwards no remote key or local key refers to the memory.
        drop(self.mr.take());
        // SAFETY: allocated in Device::region with exactly this layout; the MR is gone, and every
        // QP that posted on this region holds an Arc to it, so none can still use it.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("addr", &self.addr())
            .field("len", &self.len)
            .finish()
    }
}

impl Region {
    fn mr(&self) -> Option<&MemoryRegion> {
        self.mr.as_deref()
    }

    /// Length in bytes (whole pages).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty (never: regions hold at least one page).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The NUMA nodes this region's pages were bound to, if any (see
    /// [`Device::place_regions_on`]).
    pub fn numa_nodes(&self) -> Option<&[usize]> {
        self.numa_nodes.as_deref()
    }

    /// The NUMA nodes the operating system reports this region's pages bound to, or `None`
    /// under the default policy.
    pub fn numa_binding(&self) -> Result<Option<Vec<usize>>, RdmaError> {
        // SAFETY: the region owns `len` bytes at `ptr` until it drops; the NIC may change them at
        // any time, which atomics tolerate, and the view only lives for this call.
        let pages =
            unsafe { std::slice::from_raw_parts(self.ptr.as_ptr() as *const AtomicU8, self.len) };
        numa::binding(pages)
            .map_err(|e| RdmaError::Config(format!("querying a region's NUMA binding: {e}")))
    }

    /// The address peers use in RDMA operations.
    pub fn addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// The remote key.
    pub fn rkey(&self) -> u32 {
        self.mr().map(|m| m.rkey()).unwrap_or(0)
    }

    fn lkey(&self) -> u32 {
        self.mr().map(|m| m.lkey()).unwrap_or(0)
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), RdmaError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(RdmaError::Range(format!(
                "bytes {offset}..{offset}+{len} outside a {}-byte region",
                self.len
            ))),
        }
    }

    /// Copies `src` into the region at `offset`.
    pub fn write(&self, offset: usize, src: &[u8]) -> Result<(), RdmaError> {
        self.check(offset, src.len())?;
        // SAFETY: the range is inside the allocation (checked); `src` is a distinct Rust slice.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.as_ptr().add(offset), src.len())
        };
        Ok(())
    }

    /// Copies bytes `offset..offset + dst.len()` out of the region.
    pub fn read(&self, offset: usize, dst: &mut [u8]) -> Result<(), RdmaError> {
        self.check(offset, dst.len())?;
        // SAFETY: the range is inside the allocation (checked); `dst` is a distinct Rust slice.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(offset),
                dst.as_mut_ptr(),
                dst.len(),
            )
        };
        Ok(())
    }

    fn word(&self, offset: usize) -> Result<&AtomicU64, RdmaError> {
        self.check(offset, 8)?;
        if offset % 8 != 0 {
            return Err(RdmaError::Range(format!(
                "word offset {offset} not 8-aligned"
            )));
        }
        // SAFETY: in bounds, 8-aligned (page-aligned base), and the memory lives as long as
        // `self`; all CPU accesses to header words are atomic.
        Ok(unsafe { AtomicU64::from_ptr(self.ptr.as_ptr().add(offset).cast::<u64>()) })
    }

    /// Atomically loads the (native-endian) u64 at `offset` with `order`.
    pub fn load(&self, offset: usize, order: Ordering) -> Result<u64, RdmaError> {
        Ok(self.word(offset)?.load(order))
    }

    /// Atomically stores the u64 at `offset` with `order`.
    pub fn store(&self, offset: usize, value: u64, order: Ordering) -> Result<(), RdmaError> {
        self.word(offset)?.store(value, order);
        Ok(())
    }
}

/// A buffer in a peer's memory: address, length and remote key, as the peer advertised them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RemoteBuf {
    /// Start address in the peer's address space.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// Remote key.
    pub rkey: u32,
}

/// The kind of a work request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// RDMA READ of `len` remote bytes into the local range.
    Read,
    /// RDMA WRITE of the local range into remote memory.
    Write,
    /// 8-byte compare-and-swap; the old remote value lands in the local range.
    CompareSwap {
        /// Expected value.
        compare: u64,
        /// New value.
        swap: u64,
    },
    /// 8-byte fetch-and-add; the old remote value lands in the local range.
    FetchAdd {
        /// Addend.
        add: u64,
    },
}

/// One work request to post.
#[derive(Debug, Clone)]
pub struct Wr<'a> {
    /// Returned in the completion.
    pub id: u64,
    /// What to do.
    pub op: Op,
    /// The local region...
    pub local: &'a Arc<Region>,
    /// ...and the offset into it.
    pub local_offset: usize,
    /// Bytes to move (8 for atomics).
    pub len: usize,
    /// The remote buffer...
    pub remote: RemoteBuf,
    /// ...and the offset into it.
    pub remote_offset: u64,
    /// Do not start before every earlier READ/atomic on this QP has completed.
    pub fence: bool,
}

/// The remote end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QpAddress {
    /// Queue pair number.
    pub qpn: u32,
    /// Starting packet sequence number of its send queue.
    pub psn: u32,
    /// LID (InfiniBand; 0 on RoCE).
    pub lid: u16,
    /// GID.
    pub gid: [u8; 16],
}

/// A reliable-connection queue pair.
pub struct Qp {
    qp: BasicQueuePair,
    psn: u32,
    port: u8,
    gid_index: u8,
    mtu: Mtu,
    max_rd_atomic: u8,
    /// Every region this QP ever posted on, alive until the QP is destroyed (declared after `qp`,
    /// so dropped after it).
    keep: Vec<Arc<Region>>,
}

impl std::fmt::Debug for Qp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qp")
            .field("qpn", &self.qp.qp_number())
            .field("psn", &self.psn)
            .finish()
    }
}

impl Qp {
    /// This QP's address, for the peer's [`Qp::connect`].
    pub fn address(&self, dev: &Device) -> QpAddress {
        QpAddress {
            qpn: self.qp.qp_number(),
            psn: self.psn,
            lid: dev.lid,
            gid: dev.gid,
        }
    }

    /// Connects to `remote` (INIT -> RTR -> RTS). `timeout` is the verbs exponent (4.096 us *
    /// 2^timeout per try), `retries` the transport retry count (at most 7).
    pub fn connect(
        &mut self,
        remote: &QpAddress,
        timeout: u8,
        retries: u8,
    ) -> Result<(), RdmaError> {
        let mut ah = AddressHandleAttribute::new();
        ah.setup_dest_lid(remote.lid)
            .setup_port(self.port)
            .setup_service_level(0)
            .setup_grh_src_gid_index(self.gid_index)
            .setup_grh_dest_gid(&Gid { raw: remote.gid })
            .setup_grh_hop_limit(64);
        let mut rtr = QueuePairAttribute::new();
        rtr.setup_state(QueuePairState::ReadyToReceive)
            .setup_path_mtu(self.mtu)
            .setup_dest_qp_num(remote.qpn)
            .setup_rq_psn(remote.psn)
            .setup_max_dest_read_atomic(self.max_rd_atomic)
            .setup_min_rnr_timer(12)
            .setup_address_vector(&ah);
        self.qp
            .modify(&rtr)
            .map_err(|e| verbs("moving a queue pair to RTR", e))?;
        let mut rts = QueuePairAttribute::new();
        rts.setup_state(QueuePairState::ReadyToSend)
            .setup_sq_psn(self.psn)
            .setup_timeout(timeout.min(31))
            .setup_retry_cnt(retries.min(7))
            .setup_rnr_retry(7)
            .setup_max_read_atomic(self.max_rd_atomic);
        self.qp
            .modify(&rts)
            .map_err(|e| verbs("moving a queue pair to RTS", e))?;
        Ok(())
    }

    /// The QP's state as the device reports it now (the cached state may be stale).
    pub fn state(&self) -> Result<QueuePairState, RdmaError> {
        let (attr, _) = self
            .qp
            .query(QueuePairAttributeMask::State)
            .map_err(|e| verbs("querying a queue pair", e))?;
        Ok(attr.state())
    }

    /// Moves the QP to the error state: outstanding work requests complete as flushed.
    pub fn fail(&mut self) -> Result<(), RdmaError> {
        let mut attr = QueuePairAttribute::new();
        attr.setup_state(QueuePairState::Error);
        self.qp
            .modify(&attr)
            .map_err(|e| verbs("moving a queue pair to ERROR", e))
    }

    fn keep(&mut self, region: &Arc<Region>) {
        if !self.keep.iter().any(|r| Arc::ptr_eq(r, region)) {
            self.keep.push(Arc::clone(region));
        }
    }

    /// Posts `wrs` as one batch, every request signaled. Nothing is posted if any is invalid.
    pub fn post(&mut self, wrs: &[Wr<'_>]) -> Result<(), RdmaError> {
        self.post_with(wrs, false)
    }

    /// As [`post`](Self::post), but only the last request asks for a completion (completion
    /// moderation, as perftest's `--cq-mod`): on a reliable connection requests complete in
    /// order, so the last one's completion stands for all of them, and an error completes the
    /// failing request whether signaled or not. Fewer completions cost the NIC and the poller less.
    pub fn post_moderated(&mut self, wrs: &[Wr<'_>]) -> Result<(), RdmaError> {
        self.post_with(wrs, true)
    }

    fn post_with(&mut self, wrs: &[Wr<'_>], signal_last_only: bool) -> Result<(), RdmaError> {
        for wr in wrs {
            wr.local.check(wr.local_offset, wr.len)?;
            let in_remote = wr
                .remote_offset
                .checked_add(wr.len as u64)
                .is_some_and(|end| end <= wr.remote.len);
            if !in_remote {
                return Err(RdmaError::Range(format!(
                    "remote bytes {}..+{} outside the peer's {}-byte buffer",
                    wr.remote_offset, wr.len, wr.remote.len
                )));
            }
            if wr.len > u32::MAX as usize {
                return Err(RdmaError::Range(format!(
                    "{} bytes in one work request",
                    wr.len
                )));
            }
            if matches!(wr.op, Op::CompareSwap { .. } | Op::FetchAdd { .. })
                && (wr.len != 8
                    || (wr.remote.addr + wr.remote_offset) % 8 != 0
                    || wr.local_offset % 8 != 0)
            {
                return Err(RdmaError::Range(
                    "atomics need 8 bytes at 8-aligned local and remote addresses".into(),
                ));
            }
        }
        for wr in wrs {
            self.keep(wr.local);
        }
        let mut guard = self.qp.start_post_send();
        for (k, wr) in wrs.iter().enumerate() {
            let signaled = !signal_last_only || k + 1 == wrs.len();
            let flags = match (signaled, wr.fence) {
                (true, true) => WorkRequestFlags::Signaled | WorkRequestFlags::Fence,
                (true, false) => WorkRequestFlags::Signaled,
                (false, true) => WorkRequestFlags::Fence,
                (false, false) => WorkRequestFlags::none(),
            };
            let raddr = wr.remote.addr + wr.remote_offset;
            let handle = guard.construct_wr(wr.id, flags);
            let handle = match wr.op {
                Op::Read => handle.setup_read(wr.remote.rkey, raddr),
                Op::Write => handle.setup_write(wr.remote.rkey, raddr),
                Op::CompareSwap { compare, swap } => {
                    handle.setup_atomic_compare_swap(wr.remote.rkey, raddr, compare, swap)
                }
                Op::FetchAdd { add } => handle.setup_atomic_fetch_add(wr.remote.rkey, raddr, add),
            };
            // SAFETY: the local range lies inside `wr.local` (checked above), whose memory stays
            // registered and allocated while this QP exists (it is in `self.keep`).
            unsafe {
                handle.setup_sge(
                    wr.local.lkey(),
                    wr.local.addr() + wr.local_offset as u64,
                    wr.len as u32,
                )
            };
        }
        guard.post().map_err(|e| verbs("posting work requests", e))
    }
}

/// A completion queue (basic, see the module docs).
pub struct Cq {
    cq: Arc<BasicCompletionQueue>,
}

/// One work completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wc {
    /// The work request's id.
    pub id: u64,
    /// Raw `ibv_wc_status` (0 = success).
    pub status: u32,
    /// Vendor error code.
    pub vendor_err: u32,
}

impl Wc {
    /// Whether the request succeeded.
    pub fn ok(&self) -> bool {
        self.status == 0
    }
}

/// A readable name for an `ibv_wc_status`.
pub fn status_name(status: u32) -> &'static str {
    use sideway::ibverbs::completion::WorkCompletionStatus as S;
    const NAMES: [(S, &str); 22] = [
        (S::Success, "success"),
        (S::LocalLengthError, "local length error"),
        (S::LocalQueuePairOperationError, "local QP operation error"),
        (
            S::LocalEndToEndContextOperationError,
            "local EE context operation error",
        ),
        (S::LocalProtectionError, "local protection error"),
        (
            S::WorkRequestFlushedError,
            "flushed (queue pair in error state)",
        ),
        (S::MemoryWindowBindError, "memory window bind error"),
        (S::BadResponseError, "bad response"),
        (S::LocalAccessError, "local access error"),
        (
            S::RemoteInvalidRequestError,
            "remote invalid request (bad length or address?)",
        ),
        (
            S::RemoteAccessError,
            "remote access error (wrong rkey or address?)",
        ),
        (S::RemoteOperationError, "remote operation error"),
        (
            S::RetryCounterExceededError,
            "transport retries exceeded (peer gone?)",
        ),
        (
            S::ResponderNotReadyRetryCounterExceededError,
            "RNR retries exceeded",
        ),
        (
            S::LocalReliableDatagramDomainViolationError,
            "RD domain violation",
        ),
        (
            S::RemoteInvalidReliableDatagramRequest,
            "remote invalid RD request",
        ),
        (S::RemoteAbortedError, "remote aborted"),
        (
            S::InvalidEndToEndContextNumberError,
            "invalid EE context number",
        ),
        (
            S::InvalidEndToEndContextStateError,
            "invalid EE context state",
        ),
        (S::FatalError, "fatal error"),
        (S::ResponseTimeoutError, "response timeout"),
        (S::GeneralError, "general error"),
    ];
    NAMES
        .iter()
        .find(|(s, _)| *s as u32 == status)
        .map(|(_, n)| *n)
        .unwrap_or("unknown completion status")
}

impl Cq {
    /// Appends every completion available now to `out`; returns how many.
    pub fn poll(&self, out: &mut Vec<Wc>) -> Result<usize, RdmaError> {
        use sideway::ibverbs::completion::PollCompletionQueueError;
        let poller = match self.cq.start_poll() {
            Ok(p) => p,
            Err(PollCompletionQueueError::CompletionQueueEmpty) => return Ok(0),
            Err(e) => return Err(verbs("polling the completion queue", e)),
        };
        let before = out.len();
        // Drain the poller to its end: dropping it early would discard completions it holds.
        for wc in poller {
            out.push(Wc {
                id: wc.wr_id(),
                status: wc.status(),
                vendor_err: wc.vendor_err(),
            });
        }
        Ok(out.len() - before)
    }
}

/// NUMA placement through swarmsgd-topology's hwloc binding (feature `numa`); without the feature
/// every call reports that it is not built in, so an explicit placement fails and the default
/// (near the device) quietly keeps the operating system's policy.
pub(crate) mod numa {
    use std::sync::atomic::AtomicU8;

    #[cfg(feature = "numa")]
    pub(crate) use swarmsgd_topology::TopologyError as Error;

    /// Why NUMA placement is unavailable in a build without the `numa` feature.
    #[cfg(not(feature = "numa"))]
    #[derive(Debug)]
    pub(crate) struct Error;

    #[cfg(not(feature = "numa"))]
    impl std::fmt::Display for Error {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("NUMA placement is not built in (feature `numa` of swarmsgd-rdma)")
        }
    }

    /// Binds `pages` to the NUMA nodes `nodes` (OS indices).
    pub(crate) fn bind(pages: &[AtomicU8], nodes: &[usize]) -> Result<(), Error> {
        #[cfg(feature = "numa")]
        return swarmsgd_topology::hw::bind_buffer(pages, nodes);
        #[cfg(not(feature = "numa"))]
        {
            let _ = (pages, nodes);
            Err(Error)
        }
    }

    /// The NUMA nodes the operating system reports `pages` bound to (`None`: default policy).
    pub(crate) fn binding(pages: &[AtomicU8]) -> Result<Option<Vec<usize>>, Error> {
        #[cfg(feature = "numa")]
        return swarmsgd_topology::hw::buffer_binding(pages);
        #[cfg(not(feature = "numa"))]
        {
            let _ = pages;
            Err(Error)
        }
    }

    /// The NUMA nodes nearest the RDMA device `name` (`None`: hwloc does not place it).
    pub(crate) fn near(name: &str) -> Result<Option<Vec<usize>>, Error> {
        #[cfg(feature = "numa")]
        return swarmsgd_topology::hw::numa_nodes_near(name);
        #[cfg(not(feature = "numa"))]
        {
            let _ = name;
            Err(Error)
        }
    }
}

#[cfg(all(test, not(feature = "numa")))]
mod without_numa {
    use super::numa;
    use std::sync::atomic::AtomicU8;

    #[test]
    fn placement_says_it_is_not_built_in() {
        let pages: Vec<AtomicU8> = (0..64).map(|_| AtomicU8::new(0)).collect();
        for err in [
            numa::bind(&pages, &[0]).unwrap_err(),
            numa::binding(&pages).unwrap_err(),
            numa::near("mlx5_0").unwrap_err(),
        ] {
            assert!(err.to_string().contains("feature `numa`"), "{err}");
        }
    }
}
