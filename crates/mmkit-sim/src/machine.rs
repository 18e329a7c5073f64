//! The simulated computer: [`SimPlatform`] implements `mmkit::Platform` over one shared
//! mapping of a `memfd` (so a 64 GiB machine costs only the pages it touches, and the same
//! bytes can be guest-physical memory of a `/dev/kvm` virtual machine) and host threads;
//! [`Machine`] boots a `Kernel` on it from a [`MachineSpec`].
//!
//! When programs run on a real (virtual) CPU ([`crate::kvm`]), its MMU caches translations
//! the software TLB model cannot reach — here a shadow-paging hypervisor's. The platform's
//! `flush_tlb` hook then drops them: for every frame that lost a translation it zaps the
//! host mapping of that frame (`MADV_DONTNEED`, which keeps the data: the memfd holds it),
//! and the hypervisor, notified of that, drops every shadow entry pointing at the frame.

use anyhow::{bail, Context, Result};
use mmkit::arch::x86_64::e820::E820Table;
use mmkit::{Kernel, Platform};
use std::cell::Cell;
use std::path::Path;
use std::time::Instant;

/// The map the seed `003_2a45e03f054dad38.txt` prints: the default machine.
pub const DEFAULT_E820: &str = include_str!("default_e820.txt");

thread_local! {
    static CURRENT_CPU: Cell<usize> = const { Cell::new(0) };
}

/// Bind the calling host thread to simulated CPU `cpu` (what `Platform::current_cpu` reports).
pub fn bind_cpu(cpu: usize) {
    CURRENT_CPU.with(|c| c.set(cpu));
}

/// The machine's RAM: one shared, lazily committed mapping of a memfd.
pub struct Ram {
    base: *mut u8,
    len: usize,
    fd: std::os::fd::OwnedFd,
    /// A hardware MMU (a virtual machine) uses the tables: page-table frees are deferred.
    mmu: std::sync::atomic::AtomicBool,
    /// Zap frames' host mappings on `flush_tlb` (set while a hardware MMU uses the tables).
    zap: std::sync::atomic::AtomicBool,
    zapped: std::sync::atomic::AtomicU64,
    /// The CPUs that run programs outside the TLB model (a virtual machine's vCPUs), told
    /// of every flush before the frames are zapped.
    cpus: std::sync::RwLock<Option<std::sync::Arc<dyn FlushTlbMulti>>>,
}

/// `native_flush_tlb_multi` for CPUs a platform runs outside the library's TLB model (the
/// vCPUs of a virtual machine): called by every flush after the address space's `tlb_gen`
/// was bumped and before any frame of it is freed, it returns once every such CPU that may
/// hold a translation of the address space has dropped it.
pub trait FlushTlbMulti: Send + Sync {
    /// Flush `flush.ctx_id`'s translations from every CPU that runs it.
    fn flush_tlb_multi(&self, flush: &mmkit::mm::mmu_gather::TlbFlush<'_>);
}

// SAFETY: `base` is a shared mapping owned by this value (unmapped on drop); the kernel
// coordinates all access to its bytes, and the rest is an fd and atomics.
unsafe impl Send for Ram {}
// SAFETY: as above.
unsafe impl Sync for Ram {}

impl Ram {
    /// `len` bytes of zero-filled memory in a memfd, mapped shared.
    pub fn new(len: u64) -> Result<Self> {
        use std::os::fd::{AsRawFd, FromRawFd};
        let len = usize::try_from(len)
            .context("RAM size does not fit the host address space")?
            .max(mmkit::PAGE_SIZE as usize);
        // SAFETY: memfd_create with a NUL-terminated name; the fd is owned below.
        let raw = unsafe { libc::memfd_create(c"mmkit-ram".as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            bail!(
                "memfd_create for simulated RAM: {}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: `raw` is a fresh fd nobody else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        // SAFETY: ftruncate of our own memfd.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
            bail!(
                "cannot size {} MiB of simulated RAM: {}",
                len >> 20,
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: a fresh shared mapping of our memfd at an address of the kernel's choosing;
        // no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_NORESERVE,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            bail!(
                "cannot map {} MiB of simulated RAM: {}",
                len >> 20,
                std::io::Error::last_os_error()
            );
        }
        Ok(Self {
            base: p as *mut u8,
            len,
            fd,
            mmu: Default::default(),
            zap: Default::default(),
            zapped: Default::default(),
            cpus: Default::default(),
        })
    }

    /// Host address of physical address 0.
    pub fn base(&self) -> *mut u8 {
        self.base
    }

    /// Bytes of RAM.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never empty (at least a page); here for completeness.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The memfd behind it.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }

    /// Copy `buf.len()` bytes at physical address `pa` out of RAM. `EFAULT`-style error when
    /// the range leaves RAM.
    pub fn read(&self, pa: u64, buf: &mut [u8]) -> Result<()> {
        let off = self.check(pa, buf.len())?;
        // SAFETY: the range lies inside our mapping (checked); RAM is plain bytes that the
        // kernel or a guest may be writing concurrently, which a byte copy tolerates.
        unsafe { std::ptr::copy_nonoverlapping(self.base.add(off), buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Copy `buf` into RAM at physical address `pa`.
    pub fn write(&self, pa: u64, buf: &[u8]) -> Result<()> {
        let off = self.check(pa, buf.len())?;
        // SAFETY: as in `read`; the caller owns the bytes it writes (an exception frame on an
        // entry stack, which only the stopped vCPU uses).
        unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), self.base.add(off), buf.len()) };
        Ok(())
    }

    fn check(&self, pa: u64, len: usize) -> Result<usize> {
        usize::try_from(pa)
            .ok()
            .filter(|&o| o.checked_add(len).is_some_and(|e| e <= self.len))
            .with_context(|| format!("physical range {pa:#x}+{len} outside RAM"))
    }

    /// A hardware MMU (a virtual machine) starts using this RAM's page tables: from now on
    /// every TLB flush zaps the frames' host mappings and freed page tables are deferred.
    /// Returns whether one was attached already.
    pub fn attach_mmu(&self) -> bool {
        let was = self.mmu.swap(true, std::sync::atomic::Ordering::SeqCst);
        self.set_zap_on_flush(true);
        was
    }

    /// The virtual machine is gone.
    pub fn detach_mmu(&self) {
        self.set_zap_on_flush(false);
        self.mmu.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Zap frames on flushes or not (on from [`Ram::attach_mmu`]; off only as a test's
    /// negative control, to show what a hypervisor's stale translations do).
    pub fn set_zap_on_flush(&self, on: bool) {
        self.zap.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Frames zapped so far.
    pub fn frames_zapped(&self) -> u64 {
        self.zapped.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Drop the host mapping of `[pfn, pfn + n)` (the data stays in the memfd): a hypervisor
    /// mirroring guest page tables drops its entries for those frames.
    pub fn zap_frames(&self, pfn: u64, n: u64) {
        let off = (pfn << mmkit::PAGE_SHIFT) as usize;
        let len = (n << mmkit::PAGE_SHIFT) as usize;
        if off.checked_add(len).is_none_or(|e| e > self.len) {
            return;
        }
        // SAFETY: the range lies inside our own mapping; MADV_DONTNEED on a shared mapping
        // only drops page-table entries of this process (the memfd keeps the bytes).
        unsafe {
            libc::madvise(
                self.base.add(off) as *mut libc::c_void,
                len,
                libc::MADV_DONTNEED,
            )
        };
        self.zapped
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Register the CPUs that run programs (a virtual machine's vCPUs while it runs one;
    /// `None` when they stop): every later flush reaches them.
    pub fn set_flush_cpus(&self, cpus: Option<std::sync::Arc<dyn FlushTlbMulti>>) {
        *self.cpus.write().unwrap_or_else(|e| e.into_inner()) = cpus;
    }

    fn flush(&self, flush: &mmkit::mm::mmu_gather::TlbFlush<'_>) {
        if let Some(cpus) = &*self.cpus.read().unwrap_or_else(|e| e.into_inner()) {
            cpus.flush_tlb_multi(flush);
        }
        if !self.zap.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let mut frames: Vec<u64> = flush
            .frames
            .iter()
            .chain(flush.tables.iter())
            .map(|p| p.0)
            .chain(
                flush
                    .huge_frames
                    .iter()
                    .flat_map(|h| h.0..h.0 + mmkit::arch::x86_64::pgtable::HPAGE_PMD_NR),
            )
            .collect();
        frames.sort_unstable();
        frames.dedup();
        let mut i = 0;
        while i < frames.len() {
            let mut j = i + 1;
            while j < frames.len() && frames[j] == frames[j - 1] + 1 {
                j += 1;
            }
            self.zap_frames(frames[i], (j - i) as u64);
            i = j;
        }
    }
}

impl Drop for Ram {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping `new` created; the kernel that used it is
        // being dropped (it owns this platform), so nothing refers to it any more.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}

/// The wait queue kswapd sleeps on (`pgdat->kswapd_wait`; one for every node, as the
/// simulator runs one kswapd thread for all of them): the thread sleeps until
/// `Platform::wake_kswapd` — called by the allocator's `wakeup_kswapd` — or its owner
/// stopping it wakes it. Nothing polls: a thread woken every few hundred microseconds
/// interrupts whatever runs on that host CPU, and a vCPU in guest mode pays a world switch
/// for each.
#[derive(Default)]
pub struct KswapdWait {
    /// Wake-ups so far (the condition variable's mutex guards nothing else).
    wakeups: std::sync::Mutex<u64>,
    cv: std::sync::Condvar,
}

impl KswapdWait {
    /// `wake_up_interruptible`: wake the sleeper (a no-op when none sleeps).
    pub fn wake(&self) {
        *self.wakeups.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.cv.notify_all();
    }

    /// Sleep until `ready()` (checked first, then after every wake-up). Whoever makes it
    /// true calls [`KswapdWait::wake`] afterwards; as it checks `ready` under the queue's
    /// mutex, which that wake takes, no wake-up is lost.
    pub fn sleep_until(&self, ready: impl Fn() -> bool) {
        let mut g = self.wakeups.lock().unwrap_or_else(|e| e.into_inner());
        while !ready() {
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// RAM and CPUs of a simulated machine.
pub struct SimPlatform {
    ram: std::sync::Arc<Ram>,
    kswapd: std::sync::Arc<KswapdWait>,
    cpus: usize,
    start: Instant,
    cpu: mmkit::arch::x86_64::cpufeature::CpuFeatures,
}

impl SimPlatform {
    /// `ram_end` bytes of lazily committed, zero-filled memory and `cpus` CPUs like the
    /// host's (see [`crate::cpu::host_features`]).
    pub fn new(ram_end: u64, cpus: usize) -> Result<Self> {
        Self::with_cpu(ram_end, cpus, crate::cpu::host_features())
    }

    /// [`SimPlatform::new`] with CPUs of the given features.
    pub fn with_cpu(
        ram_end: u64,
        cpus: usize,
        cpu: mmkit::arch::x86_64::cpufeature::CpuFeatures,
    ) -> Result<Self> {
        Ok(Self {
            ram: std::sync::Arc::new(Ram::new(ram_end)?),
            kswapd: Default::default(),
            cpus,
            start: Instant::now(),
            cpu,
        })
    }

    /// The RAM (shared with a virtual machine that uses it as guest-physical memory).
    pub fn ram(&self) -> &std::sync::Arc<Ram> {
        &self.ram
    }

    /// The wait queue its kswapd thread sleeps on.
    pub fn kswapd_wait(&self) -> &std::sync::Arc<KswapdWait> {
        &self.kswapd
    }
}

impl Platform for SimPlatform {
    fn direct_map_base(&self) -> *mut u8 {
        self.ram.base
    }
    fn ram_end(&self) -> u64 {
        self.ram.len as u64
    }
    fn nr_cpus(&self) -> usize {
        self.cpus
    }
    fn current_cpu(&self) -> usize {
        CURRENT_CPU.with(|c| c.get())
    }
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
    fn get_random_u64(&self) -> u64 {
        rand::random()
    }
    fn flush_tlb(&self, flush: &mmkit::mm::mmu_gather::TlbFlush<'_>) {
        self.ram.flush(flush);
    }
    fn defer_table_free(&self) -> bool {
        self.ram.mmu.load(std::sync::atomic::Ordering::Relaxed)
    }
    fn wake_kswapd(&self, _nid: usize) {
        self.kswapd.wake();
    }
    fn cpu_features(&self) -> mmkit::arch::x86_64::cpufeature::CpuFeatures {
        self.cpu
    }
}

/// What machine to build.
#[derive(Clone, Debug)]
pub struct MachineSpec {
    /// The firmware memory map.
    pub e820: E820Table,
    /// Number of CPUs.
    pub cpus: usize,
    /// The kernel command line.
    pub cmdline: String,
}

impl Default for MachineSpec {
    fn default() -> Self {
        Self {
            e820: E820Table::parse(DEFAULT_E820).expect("the built-in default e820 map parses"),
            cpus: 2,
            cmdline: String::new(),
        }
    }
}

impl MachineSpec {
    /// The map from `--e820 FILE`.
    /// The file is read with a bound ([`crate::cli::MAX_E820_FILE`]).
    pub fn from_e820_file(path: &Path) -> Result<E820Table> {
        let text = crate::cli::read_e820_file(path)?;
        E820Table::parse(&text).with_context(|| format!("in {}", path.display()))
    }
}

/// Boot writes every `struct page` of the machine (40 bytes per 4 KiB page, in the
/// simulated RAM, which is host memory once touched): refuse a machine whose `mem_map` would
/// not fit in half of what the host has available, rather than let the host run out of
/// memory.
fn check_host_memory(map: &E820Table) -> Result<()> {
    let pages: u64 = map.usable_pfn_ranges().iter().map(|(s, e)| e - s).sum();
    let need = pages.saturating_mul(std::mem::size_of::<mmkit::Page>() as u64);
    let avail = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb << 10);
    if let Some(avail) = avail {
        if need > avail / 2 {
            bail!(
                "a machine with {} GiB of RAM needs {} MiB of struct pages in host memory; this host has {} MiB available",
                (pages << 12) >> 30,
                need >> 20,
                avail >> 20
            );
        }
    }
    Ok(())
}

/// `REAPTIMEOUT_AC`: how often each CPU runs `cache_reap` (2 s, as Linux's delayed work).
pub const REAP_INTERVAL_NS: u64 = 2_000_000_000;

/// A booted machine.
pub struct Machine {
    /// The kernel.
    pub kernel: Kernel,
    /// Its RAM.
    pub ram: std::sync::Arc<Ram>,
    /// The wait queue of its kswapd thread (see [`KswapdWait`]).
    pub kswapd_wait: std::sync::Arc<KswapdWait>,
    /// The host files the machine has opened.
    pub hostfs: crate::hostfs::HostFs,
    next_reap: Vec<std::sync::atomic::AtomicU64>,
}

impl Machine {
    /// Boot `spec` on CPUs like the host's.
    pub fn boot(spec: &MachineSpec) -> Result<Self> {
        Self::boot_with_cpu(spec, crate::cpu::host_features())
    }

    /// Boot `spec` on CPUs with the given features (`--cpu`).
    pub fn boot_with_cpu(
        spec: &MachineSpec,
        cpu: mmkit::arch::x86_64::cpufeature::CpuFeatures,
    ) -> Result<Self> {
        if spec.cpus == 0 || spec.cpus > 256 {
            bail!("--cpus must be 1..=256, not {}", spec.cpus);
        }
        let mut sanitized = spec.e820.clone();
        sanitized.sanitize();
        let end = sanitized.end_pfn(mmkit::arch::x86_64::e820::MAX_ARCH_PFN).0 << mmkit::PAGE_SHIFT;
        check_host_memory(&sanitized)?;
        let platform = SimPlatform::with_cpu(end.max(mmkit::PAGE_SIZE), spec.cpus, cpu)?;
        let ram = platform.ram().clone();
        let kswapd_wait = platform.kswapd_wait().clone();
        let kernel = Kernel::boot(Box::new(platform), &spec.e820, &spec.cmdline)?;
        let next_reap = (0..spec.cpus)
            .map(|_| std::sync::atomic::AtomicU64::new(REAP_INTERVAL_NS))
            .collect();
        Ok(Self {
            kernel,
            ram,
            kswapd_wait,
            hostfs: Default::default(),
            next_reap,
        })
    }

    /// The timer tick of the CPU `cpu` holds: runs its periodic work when due (`cache_reap`,
    /// `decay_pcp_high` and the `vmstat_update` fold, every `REAP_INTERVAL_NS`). Workloads
    /// call it between operations.
    pub fn tick(&self, cpu: &mmkit::CpuGuard<'_>) {
        use std::sync::atomic::Ordering::Relaxed;
        let now = self.kernel.platform().now_ns();
        let next = &self.next_reap[cpu.id()];
        if now >= next.load(Relaxed) {
            next.store(now + REAP_INTERVAL_NS, Relaxed);
            self.kernel.cache_reap(cpu);
            self.kernel.decay_pcp_high(cpu);
            self.kernel.refresh_cpu_vm_stats(cpu);
        }
    }

    /// Run `f` on every CPU at once, one host thread bound to each, and collect the results
    /// in CPU order.
    pub fn on_all_cpus<R: Send>(
        &self,
        f: impl Fn(&Kernel, &mmkit::CpuGuard<'_>) -> anyhow::Result<R> + Sync,
    ) -> anyhow::Result<Vec<R>> {
        let f = &f;
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..self.kernel.nr_cpus())
                .map(|c| {
                    s.spawn(move || {
                        bind_cpu(c);
                        let cpu = self.kernel.get_cpu();
                        f(&self.kernel, &cpu)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .map_err(|_| anyhow::anyhow!("a CPU thread panicked"))?
                })
                .collect()
        })
    }

    /// Give back what needs no reclaim — drain the LRU add batches, drop the page cache
    /// (`drop_caches`), drain the per-CPU page lists — and return the free pages then: what
    /// the machine must come back to after every program.
    pub fn settle(&self) -> u64 {
        let k = &self.kernel;
        self.on_cpu(0, |cpu| {
            k.lru_add_drain_all(cpu);
            k.drop_pagecache(cpu);
            k.drain_all_pages(cpu);
        });
        k.nodes
            .iter()
            .flat_map(|n| n.zones.iter())
            .map(|z| z.free_pages() as u64)
            .sum()
    }

    /// Run `f` on simulated CPU `cpu` in the calling thread.
    pub fn on_cpu<R>(&self, cpu: usize, f: impl FnOnce(&mmkit::CpuGuard<'_>) -> R) -> R {
        bind_cpu(cpu);
        let g = self.kernel.get_cpu();
        f(&g)
    }
}
