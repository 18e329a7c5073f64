//! What a host provides to the library: the direct map of physical memory, the CPUs, a clock.
//!
//! A bare-metal kernel would implement this over its own page tables and drivers; the
//! simulator (`mmkit-sim`) implements it over one lazily committed host mapping and threads.
//! The swap device and the files the page cache reads are handed to the kernel separately
//! (`swapon`, the inode table) as [`FileData`]; [`Platform`] is what every machine needs.

use crate::errno::Errno;

/// The host of a [`crate::Kernel`].
pub trait Platform: Send + Sync {
    /// Host address of physical address 0. The bytes of physical address `pa` live at
    /// `direct_map_base() + pa` for every `pa < ram_end()`.
    fn direct_map_base(&self) -> *mut u8;
    /// One past the highest physical address the direct map covers.
    fn ram_end(&self) -> u64;
    /// Number of CPUs the machine has.
    fn nr_cpus(&self) -> usize;
    /// The CPU the calling thread runs on (`smp_processor_id()`), in `0..nr_cpus()`.
    fn current_cpu(&self) -> usize;
    /// Nanoseconds since the machine started, for log timestamps and statistics.
    fn now_ns(&self) -> u64;
    /// A random number (`get_random_u64`), for address-space layout randomization.
    fn get_random_u64(&self) -> u64;
    /// Translations were taken away: every CPU's TLB has been told (the `tlb_gen` flush) and
    /// the frames in `flush` are about to be freed or reused. A platform whose MMU caches
    /// translations beyond the TLB model (a shadow-paging hypervisor, or real hardware's
    /// `invlpg`/CR3 reload) drops them here; the software MMU needs nothing, which is the
    /// default.
    fn flush_tlb(&self, flush: &crate::mm::mmu_gather::TlbFlush<'_>) {
        let _ = flush;
    }
    /// Whether a page table taken out of the tables must outlive the TLB flush
    /// (`CONFIG_MMU_GATHER_RCU_TABLE_FREE`'s reason): a walker the flush does not reach may
    /// still cache it — a shadow-paging hypervisor keeps a shadow of every guest table it has
    /// seen, linked from its parent's shadow, and never learns of writes the host makes to
    /// the guest tables, so a table frame reused as another table would alias the old
    /// shadow. When true, the kernel parks freed tables until the platform calls
    /// [`Kernel::tlb_remove_table_sync`](crate::Kernel::tlb_remove_table_sync) (its grace
    /// period). The software MMU caches no table, which is the default.
    fn defer_table_free(&self) -> bool {
        false
    }
    /// `wake_up_interruptible(&pgdat->kswapd_wait)`: node `nid`'s kswapd was just given
    /// work ([`Kernel::wakeup_kswapd`](crate::Kernel::wakeup_kswapd) set its
    /// `kswapd_wait`). A platform that runs kswapd as a thread of its own wakes it here, so
    /// that the thread sleeps until it has work as Linux's does, never polling. The default
    /// (callers that step `balance_pgdat` themselves) does nothing.
    fn wake_kswapd(&self, nid: usize) {
        let _ = nid;
    }
    /// The CPU's features as the kernel sees them after `identify_cpu` (CPUID words, what it
    /// enabled in CR4/XCR0). A bare-metal kernel reads them from the CPU; the simulator gives
    /// the host's or a named model's. The default is a baseline x86-64 CPU with AVX.
    fn cpu_features(&self) -> crate::arch::x86_64::cpufeature::CpuFeatures {
        crate::arch::x86_64::cpufeature::CpuFeatures::default()
    }
}

/// `VM_READAHEAD_PAGES` (`include/linux/mm.h`): the default `ra_pages` of a backing device
/// (128 KiB).
pub const VM_READAHEAD_PAGES: u64 = 32;

/// A file's contents: the backing store the page cache reads from and writes back to.
pub trait FileData: Send + Sync {
    /// Current size in bytes (`i_size`).
    fn size(&self) -> u64;
    /// Read up to `buf.len()` bytes at `off`; fewer at end of file. `EIO` on a device error.
    fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<usize, Errno>;
    /// Write `buf` at `off` (writeback). `EROFS` for read-only backing stores.
    fn write_at(&self, off: u64, buf: &[u8]) -> Result<usize, Errno>;
    /// Whether `write_at` can succeed (a file may be opened for writing only then).
    fn writable(&self) -> bool;
    /// Readahead window of the backing device in pages (`bdi->ra_pages`).
    fn ra_pages(&self) -> u64 {
        VM_READAHEAD_PAGES
    }
    /// The inode's attributes: mode, owner, mount flags, and whether its file system places
    /// mappings for huge pages (see [`FileAttr`](crate::fs::inode::FileAttr) and
    /// [`crate::mm::unmapped_area`]).
    fn attr(&self) -> crate::fs::inode::FileAttr {
        crate::fs::inode::FileAttr::default()
    }
}

/// The direct map as the kernel holds it (`__va`/`__pa` on x86-64): the host address of
/// physical address 0 in the platform's mapping of RAM. Only addresses are computed from
/// it here; the code that reads or writes the bytes says why that access is sound.
#[derive(Copy, Clone, Debug)]
pub(crate) struct DirectMap(*mut u8);

// SAFETY: a `DirectMap` is an address, never dereferenced through this type. It points at
// the mapping of the machine's RAM that the `Platform` (itself `Send + Sync`, owned by the
// same `Kernel`) keeps alive as long as the kernel lives, from any thread. The bytes behind
// it are simulated RAM, shared between CPUs as on hardware: `struct page`s are atomics,
// page contents belong to whoever allocated them, and the helpers that copy bytes in or
// out state their own conditions. Moving or sharing the address between threads adds no
// access the owning thread could not already make.
unsafe impl Send for DirectMap {}
// SAFETY: as above; the type has no interior mutability.
unsafe impl Sync for DirectMap {}

impl DirectMap {
    /// The direct map whose physical address 0 is at host address `base`.
    pub(crate) fn new(base: *mut u8) -> Self {
        Self(base)
    }

    /// The host address of physical address `pa` (not checked against the end of RAM).
    #[inline]
    pub(crate) fn ptr(self, pa: u64) -> *mut u8 {
        self.0.wrapping_add(pa as usize)
    }

    /// The physical address of host address `host` (wrapping for an address below the map).
    #[inline]
    pub(crate) fn pa(self, host: usize) -> u64 {
        host.wrapping_sub(self.0 as usize) as u64
    }
}

impl crate::Kernel {
    /// The platform this kernel runs on.
    pub fn platform(&self) -> &dyn Platform {
        &*self.platform
    }
}
