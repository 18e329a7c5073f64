//! What a host provides to the library: the direct map of physical memory, the CPUs, a clock.
//!
//! A bare-metal kernel would implement this over its own page tables and drivers; the
//! simulator (`mmkit-sim`) implements it over one lazily committed host mapping and threads.
//! The swap device and the files the page cache reads are handed to the kernel separately
//! (`swapon`, the inode table); this trait is what every machine needs.

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
    /// The CPU's features as the kernel sees them after `identify_cpu` (CPUID words, what it
    /// enabled in CR4/XCR0). A bare-metal kernel reads them from the CPU; the simulator gives
    /// the host's or a named model's. The default is a baseline x86-64 CPU with AVX.
    fn cpu_features(&self) -> crate::arch::x86_64::cpufeature::CpuFeatures {
        crate::arch::x86_64::cpufeature::CpuFeatures::default()
    }
}
