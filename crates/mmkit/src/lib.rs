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
pub mod sync;

pub use addr::{Pfn, PhysAddr, VirtAddr, PAGE_SHIFT, PAGE_SIZE};
pub use cpu::CpuGuard;
pub use errno::Errno;
pub use gfp::Gfp;
pub use mm::init::{BootError, BootInfo};
pub use mm::page::Page;
pub use platform::Platform;

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use arch::x86_64::e820::E820Table;
use cmdline::BootConfig;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
use cpu::CpuState;
use mm::memblock::Memblock;
use mm::mmzone::{NumaDistance, PglistData};
use mm::page::MemMap;
use sync::{PerCpu, SpinLock};

/// Lines the kernel log ring keeps.
pub const LOG_LINES: usize = 16384;

/// The kernel log ring.
#[derive(Default)]
pub(crate) struct LogBuf {
    lines: alloc::collections::VecDeque<String>,
    /// Lines ever logged.
    seq: u64,
}

/// One machine's memory-management state.
pub struct Kernel {
    platform: Box<dyn Platform>,
    direct_map: *mut u8,
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
    log: SpinLock<LogBuf>,
    pub(crate) bad_pages: AtomicU64,
    pub(crate) slab: mm::slab::SlabState,
    pub(crate) slab_reports: AtomicU64,
    pub(crate) tlbs: arch::x86_64::tlb::Tlbs,
    pub(crate) next_ctx_id: AtomicU64,
    pub(crate) vmap: SpinLock<mm::vmalloc::VmapState>,
    pub(crate) init_mm: Option<arch::x86_64::pgtable::PgTable>,
    /// `ZERO_PAGE(0)`: a page of the kernel's bss, mapped read-only for anonymous reads.
    pub(crate) zero_pfn: Pfn,
    pub(crate) inodes: SpinLock<fs::inode::InodeTable>,
    pub(crate) anon_vmas: sync::RwLock<mm::rmap::AnonVmas>,
    pub(crate) swap: SpinLock<mm::swapfile::SwapState>,
    pub(crate) swappiness: AtomicU64,
}

// SAFETY: `direct_map` points at the platform's RAM mapping, which the kernel owns through
// `platform` for its whole life; all shared state behind it is reached through atomics and
// locks (struct pages) or through allocations the caller owns (page contents).
unsafe impl Send for Kernel {}
// SAFETY: as above.
unsafe impl Sync for Kernel {}

impl Kernel {
    /// `printk`: append a line to the kernel log with a `[    s.micros]` timestamp. The log
    /// is a ring of `LOG_LINES` lines, like Linux's `log_buf`: the oldest lines go first.
    pub fn printk(&self, line: &str) {
        let ns = self.platform.now_ns();
        let s = alloc::format!(
            "[{:5}.{:06}] {}",
            ns / 1_000_000_000,
            (ns / 1000) % 1_000_000,
            line
        );
        let mut log = self.log.lock();
        if log.lines.len() == LOG_LINES {
            log.lines.pop_front();
        }
        log.lines.push_back(s);
        log.seq += 1;
    }

    /// The kernel log still in the ring (`dmesg`). When older lines were pushed out, the
    /// first line says how many, as Linux's console does (`** N printk messages dropped **`,
    /// with the timestamp of the oldest line kept).
    pub fn dmesg(&self) -> Vec<String> {
        let log = self.log.lock();
        let dropped = log.seq - log.lines.len() as u64;
        let mut out = Vec::with_capacity(log.lines.len() + 1);
        if dropped > 0 {
            let stamp = log
                .lines
                .front()
                .and_then(|l| l.split_once("] "))
                .map_or("", |(t, _)| t);
            out.push(alloc::format!(
                "{stamp}] ** {dropped} printk messages dropped **"
            ));
        }
        out.extend(log.lines.iter().cloned());
        out
    }

    /// Lines with sequence number `from` and later that are still in the ring, and the next
    /// sequence number (for following the log: pass it back as `from`).
    pub fn dmesg_since(&self, from: u64) -> (Vec<String>, u64) {
        let log = self.log.lock();
        let first = log.seq - log.lines.len() as u64;
        let skip = from.saturating_sub(first) as usize;
        (log.lines.iter().skip(skip).cloned().collect(), log.seq)
    }

    /// Number of bad-page reports so far.
    pub fn bad_page_reports(&self) -> u64 {
        self.bad_pages.load(Relaxed)
    }

    /// The platform this kernel runs on.
    pub fn platform(&self) -> &dyn Platform {
        &*self.platform
    }

    /// `mem_map` access.
    pub fn mem_map(&self) -> &MemMap {
        &self.mem_map
    }
}
