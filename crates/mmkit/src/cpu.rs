//! CPUs and the per-CPU handle (the analogue of `get_cpu()`/`put_cpu()` and
//! `preempt_disable()` in `include/linux/preempt.h` and `include/linux/smp.h`).
//!
//! A thread does kernel work only while it holds a [`CpuGuard`]: an exclusive, non-`Send`
//! handle on one CPU. Per-CPU data (pcp lists, event counters, later slab array caches and
//! TLBs) is reached through it.

use crate::errno::Errno;
use crate::mm::vmstat_names::CpuVmStats;
use crate::Kernel;
use core::marker::PhantomData;
use core::sync::atomic::{AtomicBool, Ordering};

/// What the kernel keeps per CPU.
pub struct CpuState {
    /// Someone holds this CPU.
    pub(crate) held: AtomicBool,
    /// The node this CPU belongs to (`cpu_to_node`).
    pub node: usize,
    /// Event and NUMA counters.
    pub vmstat: CpuVmStats,
    /// `cpu_fbatches.lru_add`: pages waiting to go onto the LRU lists (each holds a ref).
    pub(crate) lru_add: crate::sync::SpinLock<crate::mm::pagevec::FolioBatch>,
    /// The CPU is in reclaim (`PF_MEMALLOC`): its allocations do not reclaim again. Only the
    /// CPU's holder reads or writes it; an atomic (with relaxed ordering, a plain load and
    /// store on x86) keeps `CpuState` `Sync` without an unsafe claim.
    pub(crate) in_reclaim: AtomicBool,
}

impl CpuState {
    /// Whether this CPU is in direct reclaim or compaction (`current->flags & PF_MEMALLOC`).
    #[inline]
    pub(crate) fn in_reclaim(&self) -> bool {
        self.in_reclaim.load(Ordering::Relaxed)
    }

    /// Enter (`memalloc_noreclaim_save`) or leave (`memalloc_noreclaim_restore`) reclaim.
    #[inline]
    pub(crate) fn set_in_reclaim(&self, on: bool) {
        self.in_reclaim.store(on, Ordering::Relaxed);
    }
}

/// An exclusive handle on one CPU. Dropping it is `put_cpu()`.
pub struct CpuGuard<'k> {
    pub(crate) kernel: &'k Kernel,
    pub(crate) cpu: usize,
    _not_send: PhantomData<*const ()>,
}

impl CpuGuard<'_> {
    /// `smp_processor_id()`.
    #[inline]
    pub fn id(&self) -> usize {
        self.cpu
    }
    /// `numa_node_id()`.
    #[inline]
    pub fn node(&self) -> usize {
        self.kernel.cpus.get(self.cpu).node
    }
    #[inline]
    pub(crate) fn state(&self) -> &CpuState {
        self.kernel.cpus.get(self.cpu)
    }
}

impl Drop for CpuGuard<'_> {
    fn drop(&mut self) {
        self.kernel
            .cpus
            .get(self.cpu)
            .held
            .store(false, Ordering::Release);
    }
}

impl Kernel {
    /// `get_cpu()`: the CPU the platform says this thread runs on, waiting while another
    /// thread holds it.
    pub fn get_cpu(&self) -> CpuGuard<'_> {
        let cpu = self.platform.current_cpu().min(self.nr_cpus() - 1);
        loop {
            if let Ok(g) = self.try_get_cpu_id(cpu) {
                return g;
            }
            crate::sync::relax();
        }
    }

    /// Take CPU `cpu`, waiting while another thread holds it. `EINVAL` for a CPU the machine
    /// does not have.
    pub fn get_cpu_id(&self, cpu: usize) -> Result<CpuGuard<'_>, Errno> {
        loop {
            match self.try_get_cpu_id(cpu) {
                Err(Errno::EBUSY) => crate::sync::relax(),
                r => return r,
            }
        }
    }

    /// Take CPU `cpu` if nobody holds it: `EBUSY` if someone does, `EINVAL` if no such CPU.
    pub fn try_get_cpu_id(&self, cpu: usize) -> Result<CpuGuard<'_>, Errno> {
        if cpu >= self.nr_cpus() {
            return Err(Errno::EINVAL);
        }
        let st = self.cpus.get(cpu);
        st.held
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .map_err(|_| Errno::EBUSY)?;
        Ok(CpuGuard {
            kernel: self,
            cpu,
            _not_send: PhantomData,
        })
    }

    /// Number of CPUs (`num_online_cpus()`).
    #[inline]
    pub fn nr_cpus(&self) -> usize {
        self.cpus.len()
    }
}
