//! The simulated computer: [`SimPlatform`] implements `mmkit::Platform` over an anonymous
//! `MAP_NORESERVE` host mapping (so a 64 GiB machine costs only the pages it touches) and
//! host threads; [`Machine`] boots a `Kernel` on it from a [`MachineSpec`].

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

/// RAM and CPUs of a simulated machine.
pub struct SimPlatform {
    base: *mut u8,
    len: usize,
    cpus: usize,
    start: Instant,
    cpu: mmkit::arch::x86_64::cpufeature::CpuFeatures,
}

// SAFETY: `base` is a private anonymous mapping owned by this value; the kernel coordinates
// all access to its bytes.
unsafe impl Send for SimPlatform {}
// SAFETY: as above.
unsafe impl Sync for SimPlatform {}

impl SimPlatform {
    /// Map `ram_end` bytes of lazily committed, zero-filled memory; the CPUs are the host's
    /// (see [`crate::cpu::host_features`]).
    pub fn new(ram_end: u64, cpus: usize) -> Result<Self> {
        Self::with_cpu(ram_end, cpus, crate::cpu::host_features())
    }

    /// [`SimPlatform::new`] with CPUs of the given features.
    pub fn with_cpu(
        ram_end: u64,
        cpus: usize,
        cpu: mmkit::arch::x86_64::cpufeature::CpuFeatures,
    ) -> Result<Self> {
        let len =
            usize::try_from(ram_end).context("RAM size does not fit the host address space")?;
        // SAFETY: a fresh anonymous private mapping at an address of the kernel's choosing;
        // no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len.max(1),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
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
            len: len.max(1),
            cpus,
            start: Instant::now(),
            cpu,
        })
    }
}

impl Drop for SimPlatform {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping `new` created; the kernel that used it is
        // being dropped (it owns this platform), so nothing refers to it any more.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}

impl Platform for SimPlatform {
    fn direct_map_base(&self) -> *mut u8 {
        self.base
    }
    fn ram_end(&self) -> u64 {
        self.len as u64
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
        let kernel = Kernel::boot(Box::new(platform), &spec.e820, &spec.cmdline)?;
        let next_reap = (0..spec.cpus)
            .map(|_| std::sync::atomic::AtomicU64::new(REAP_INTERVAL_NS))
            .collect();
        Ok(Self {
            kernel,
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

    /// Run `f` on simulated CPU `cpu` in the calling thread.
    pub fn on_cpu<R>(&self, cpu: usize, f: impl FnOnce(&mmkit::CpuGuard<'_>) -> R) -> R {
        bind_cpu(cpu);
        let g = self.kernel.get_cpu();
        f(&g)
    }
}
