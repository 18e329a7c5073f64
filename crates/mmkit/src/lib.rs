//! mmkit: the Linux memory-management subsystem as a `no_std` + `alloc` Rust library.
//!
//! Everything hangs off one [`Kernel`] value (no globals), built by [`Kernel::boot`] from an
//! e820 map, a command line and a [`Platform`] that provides the bytes of physical memory
//! and the CPUs. Work is done through a [`CpuGuard`], the handle on one CPU that reaches the
//! per-CPU caches. Module layout mirrors Linux's `mm/`, `arch/x86/` and `fs/proc/`.
#![no_std]
#![warn(missing_docs)]

extern crate alloc;

pub mod addr;
pub mod arch;
pub mod cmdline;
pub mod cpu;
pub mod errno;
pub mod fs;
pub mod gfp;
pub mod kernel;
pub mod mm;
pub mod platform;
pub mod printk;
pub mod sync;

pub use addr::{Pfn, PhysAddr, VirtAddr, PAGE_SHIFT, PAGE_SIZE};
pub use cpu::CpuGuard;
pub use errno::Errno;
pub use gfp::Gfp;
pub use mm::init::{BootError, BootInfo};
pub use mm::page::Page;
pub use platform::Platform;
pub use printk::LOG_LINES;

use alloc::boxed::Box;
use alloc::vec::Vec;
use arch::x86_64::e820::E820Table;
use cmdline::BootConfig;
use core::sync::atomic::AtomicU64;
use cpu::CpuState;
use mm::memblock::Memblock;
use mm::mmzone::{NumaDistance, PglistData};
use mm::page::MemMap;
use sync::{PerCpu, SpinLock};

/// One machine's memory-management state.
pub struct Kernel {
    platform: Box<dyn Platform>,
    direct_map: platform::DirectMap,
    pub(crate) mem_map: MemMap,
    /// The NUMA nodes (`NODE_DATA(nid)`).
    pub nodes: Vec<PglistData>,
    pub(crate) cpus: PerCpu<CpuState>,
    /// `node_distance()`.
    pub numa_distance: NumaDistance,
    /// The e820 table after boot's edits (what `/proc/iomem` shows).
    pub e820: E820Table,
    pub(crate) memblock: SpinLock<Memblock>,
    /// The parsed command line.
    pub config: BootConfig,
    /// Facts fixed at boot.
    pub boot: BootInfo,
    pub(crate) tunables: SpinLock<mm::mmzone::WmarkTunables>,
    pub(crate) min_free_kbytes: AtomicU64,
    pub(crate) log: SpinLock<printk::LogBuf>,
    pub(crate) bad_pages: AtomicU64,
    pub(crate) slab: mm::slab::SlabState,
    pub(crate) slab_reports: AtomicU64,
    pub(crate) tlbs: arch::x86_64::tlb::Tlbs,
    pub(crate) next_ctx_id: AtomicU64,
    /// Page tables freed while the platform defers table frees, waiting for its grace period.
    pub(crate) deferred_tables: SpinLock<mm::mmu_gather::DeferredTables>,
    pub(crate) vmap: SpinLock<mm::vmalloc::VmapState>,
    pub(crate) init_mm: Option<arch::x86_64::pgtable::PgTable>,
    /// `ZERO_PAGE(0)`: a page of the kernel's bss, mapped read-only for anonymous reads.
    pub(crate) zero_pfn: Pfn,
    pub(crate) inodes: SpinLock<fs::inode::InodeTable>,
    pub(crate) anon_vmas: sync::RwLock<mm::rmap::AnonVmas>,
    pub(crate) swap: SpinLock<mm::swapfile::SwapState>,
    pub(crate) swappiness: AtomicU64,
    /// The transparent huge page policies.
    pub(crate) thp: mm::huge_memory::ThpState,
    /// The per-size mTHP statistics.
    pub(crate) mthp_stats: mm::vmstat::MthpStats,
}

// `Kernel` is `Send + Sync` from its parts, with no claim of its own: the unsafe claims are
// made, each with its argument, by the types that need one (`DirectMap`, `MemMap`,
// `KmemCache`, `Tlbs`, the locks).
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Kernel>();
};
