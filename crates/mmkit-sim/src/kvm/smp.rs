//! The vCPUs of a run as the machine's CPUs (`kernel/smp.c`, the per-CPU half of
//! `kernel/sched/core.c` and `kernel/sched/idle.c`, `arch/x86/mm/tlb.c`'s
//! `native_flush_tlb_multi` and `cpu_tlbstate`).
//!
//! - **One host thread per vCPU** runs that vCPU's exit loop ([`super::process`]), one vCPU
//!   per simulated CPU: vCPU `c` does its kernel work on the library's CPU `c`
//!   (`CpuGuard`: its pcp lists, slab array caches, vmstat differentials, TLB), taken for
//!   each stretch of kernel work and given back before the vCPU re-enters the guest, so
//!   kswapd, scheduled on that CPU between two stretches, may take it too.
//! - **The big kernel lock** ([`Smp::lock_kernel`], Linux 2.0–2.6's `lock_kernel`): the
//!   VMM's own state — the task table with the address spaces, the scheduler's run queue
//!   and wait queues, pipes, descriptors — is one value behind one lock, taken by a vCPU
//!   thread between leaving `KVM_RUN` and entering it again. User code runs on every vCPU
//!   at once; the kernel work of exits (faults, system calls, context switches) is
//!   serialized, as in Linux before fine-grained locking. The library below is itself
//!   SMP-safe (its own locks, per-CPU handles), which kswapd relies on, running beside
//!   the lock on its own thread.
//! - **Each vCPU picks its own next task** from the shared run queue (`pick_next_task`,
//!   round robin); a task has `on_cpu` set while a vCPU runs it. A vCPU with nothing to
//!   run idles on a condition variable (`do_idle`) until something wakes a task, a
//!   timeout is due, or the run ends; the last vCPU to go idle with nothing armed that
//!   could wake anyone finds the deadlock.
//! - **Kicks** ([`CpuState::kick`], the reschedule IPI `smp_send_reschedule` /
//!   `kick_process`): a task on another vCPU that was signalled, killed (`exit_group`, the
//!   OOM killer), or taken away (`de_thread` at exec) makes that vCPU leave `KVM_RUN` when
//!   the kernel lock is released, and it handles what it finds when it takes the lock; the
//!   10 ms tick kicks a vCPU while a task waits for a CPU or a timer is armed.
//! - **TLB shootdown** ([`Cpus`] as the platform's [`FlushTlbMulti`]): every flush of an
//!   address space (`flush_tlb_mm_range` → `native_flush_tlb_multi`), whoever does it — a
//!   vCPU thread under the lock or kswapd beside it — kicks each vCPU that has that
//!   address space loaded (`cpu_tlbstate.loaded_mm`) and is in guest mode, and waits until
//!   it has left guest mode (the IPI's acknowledgement) before the platform zaps the
//!   frames and the gather frees them. A vCPU re-enters only through the kernel lock,
//!   where it syncs the address space's `tlb_gen` (`flush_tlb_func`): the translations
//!   themselves are gone by then — the zap's MMU-notifier invalidation drops them from
//!   every vCPU of the VM (KVM's `kvm_flush_remote_tlbs`) — so, as on the single vCPU, the
//!   VMM loads no CR3 for it (a `KVM_SET_SREGS` with an unchanged CR3 would not flush in
//!   KVM anyway); a CR3 load is what switching to another address space does.
//!   Page-table frames stay deferred (`Platform::defer_table_free`) until a grace period
//!   that stops every vCPU ([`Smp::stop_others`], `stop_machine`).

use super::process::Proc;
use super::sched::Sched;
use super::vcpu::Kick;
use crate::machine::FlushTlbMulti;
use mmkit::kernel::task::{Pid, TaskTable};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// One vCPU as the other CPUs see it (`cpu_tlbstate` and the bits of `struct rq` that
/// remote CPUs read).
#[derive(Default)]
pub struct CpuState {
    kick: Mutex<Option<Kick>>,
    /// In guest mode (set under the kernel lock just before `KVM_RUN`, cleared when it
    /// returns): the vCPU may be using translations.
    in_guest: AtomicBool,
    /// `cpu_tlbstate.loaded_mm`: the address space (`ctx_id`) whose CR3 it has loaded.
    loaded_mm: AtomicU64,
    /// `cpu_tlbstate.ctxs[].tlb_gen`: the generation of `loaded_mm` it synced at its last
    /// entry.
    loaded_gen: AtomicU64,
    /// `KVM_RUN` returns: a shootdown waits for this to move (or `in_guest` to clear).
    exits: AtomicU64,
    /// Shootdowns that kicked this vCPU out of guest mode.
    tlb_ipis: AtomicU64,
    /// Reschedule kicks (a signal, a kill, the tick).
    resched_ipis: AtomicU64,
    /// The thread it runs (0: idle), as of its last entry.
    curr: AtomicI32,
}

impl CpuState {
    /// Make the vCPU leave guest mode (if it is in there; a no-op otherwise).
    pub fn kick(&self) {
        if self.in_guest.load(Ordering::SeqCst) {
            if let Some(k) = *self.kick.lock().unwrap_or_else(|e| e.into_inner()) {
                k.kick();
            }
        }
    }

    /// Kick the vCPU's thread wherever it is: out of `KVM_RUN`, or out of a host call the
    /// VMM waits in (which then fails with `EINTR`).
    pub fn force_kick(&self) {
        if let Some(k) = *self.kick.lock().unwrap_or_else(|e| e.into_inner()) {
            k.kick();
        }
    }

    /// Whether the vCPU is in guest mode.
    pub fn in_guest(&self) -> bool {
        self.in_guest.load(Ordering::SeqCst)
    }

    /// Shootdowns that kicked it.
    pub fn tlb_ipis(&self) -> u64 {
        self.tlb_ipis.load(Ordering::Relaxed)
    }

    /// Wait until the vCPU has left guest mode since `exits` was read.
    fn wait_out(&self, exits: u64) {
        while self.in_guest.load(Ordering::SeqCst) && self.exits.load(Ordering::SeqCst) == exits {
            std::thread::yield_now();
        }
    }
}

/// The vCPUs, as the platform's [`FlushTlbMulti`].
#[derive(Default)]
pub struct Cpus(pub Vec<CpuState>);

impl FlushTlbMulti for Cpus {
    /// `native_flush_tlb_multi`: kick every vCPU in guest mode on this address space and
    /// wait for each to leave it.
    fn flush_tlb_multi(&self, flush: &mmkit::mm::mmu_gather::TlbFlush<'_>) {
        let mut waiting = [None; 64];
        for (i, c) in self.0.iter().enumerate().take(64) {
            if c.loaded_mm.load(Ordering::SeqCst) == flush.ctx_id
                && c.in_guest.load(Ordering::SeqCst)
            {
                let seen = c.exits.load(Ordering::SeqCst);
                c.tlb_ipis.fetch_add(1, Ordering::Relaxed);
                c.kick();
                waiting[i] = Some(seen);
            }
        }
        for (c, w) in self.0.iter().zip(waiting) {
            if let Some(seen) = w {
                c.wait_out(seen);
            }
        }
    }
}

/// `kthread_stop` for the VMM's own kernel threads (the tick, khugepaged): set once as the
/// run ends. A thread sleeps on it with its period and wakes when the period is over or at
/// once when it is set — never in between to look, so it interrupts no vCPU for nothing.
#[derive(Default)]
pub struct KthreadStop {
    stopped: Mutex<bool>,
    cv: Condvar,
}

impl KthreadStop {
    /// Stop every thread sleeping on it (and any that sleeps on it later).
    pub fn stop(&self) {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_all();
    }

    /// Sleep for `t`, or less if stopped; whether it is stopped (`kthread_should_stop`).
    pub fn sleep(&self, t: Duration) -> bool {
        let g = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
        let (g, _) = self
            .cv
            .wait_timeout_while(g, t, |stopped| !*stopped)
            .unwrap_or_else(|e| e.into_inner());
        *g
    }
}

/// What the kernel lock guards: the VMM's shared state, moved into the [`Proc`] of the
/// vCPU that holds the lock (its fields are the same ones, so a system call is written
/// against one `Proc` whichever vCPU makes it).
#[derive(Default)]
pub struct Global {
    tasks: TaskTable,
    sched: Sched,
}

impl Global {
    fn swap(&mut self, p: &mut Proc<'_>) {
        std::mem::swap(&mut self.tasks, &mut p.tasks);
        std::mem::swap(&mut self.sched, &mut p.sched);
    }
}

/// The machine's vCPUs in a run and what they share.
pub struct Smp {
    kernel: Mutex<Global>,
    idle: Condvar,
    /// The vCPUs.
    pub cpus: std::sync::Arc<Cpus>,
    /// The run is over (or failed): every vCPU thread ends.
    pub done: AtomicBool,
    /// The `--timeout` passed.
    pub timed_out: AtomicBool,
    /// A task waits for a CPU or a timer is armed: the tick kicks vCPUs in guest mode.
    preempt: AtomicBool,
}

/// The kernel lock, held (see [`Smp::lock_kernel`]).
pub struct KernelLock<'a>(MutexGuard<'a, Global>);

impl Smp {
    /// `n` vCPUs sharing `tasks` and `sched`.
    pub fn new(n: usize, tasks: TaskTable, sched: Sched) -> Self {
        Smp {
            kernel: Mutex::new(Global { tasks, sched }),
            idle: Condvar::new(),
            cpus: std::sync::Arc::new(Cpus((0..n).map(|_| CpuState::default()).collect())),
            done: AtomicBool::new(false),
            timed_out: AtomicBool::new(false),
            preempt: AtomicBool::new(false),
        }
    }

    /// Run `f` on the shared state under the kernel lock from a thread that is no vCPU (a
    /// kernel thread such as khugepaged, which needs every address space's `mmap_lock`).
    pub fn with_kernel<R>(&self, f: impl FnOnce(&mut TaskTable, &mut Sched) -> R) -> R {
        let mut g = self.kernel.lock().unwrap_or_else(|e| e.into_inner());
        let Global { tasks, sched } = &mut *g;
        f(tasks, sched)
    }

    /// Number of vCPUs.
    pub fn nr_cpus(&self) -> usize {
        self.cpus.0.len()
    }

    /// vCPU `c`'s state.
    pub fn cpu(&self, c: usize) -> &CpuState {
        &self.cpus.0[c]
    }

    /// Register the calling thread as the one running vCPU `c` (or `None`: it stops).
    pub fn set_kick(&self, c: usize, k: Option<Kick>) {
        *self.cpus.0[c]
            .kick
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = k;
    }

    /// `lock_kernel`: take the kernel lock and the shared state into `p`.
    pub fn lock_kernel(&self, p: &mut Proc<'_>) -> KernelLock<'_> {
        let mut g = self.kernel.lock().unwrap_or_else(|e| e.into_inner());
        g.swap(p);
        KernelLock(g)
    }

    /// `unlock_kernel`: first what other vCPUs must learn of (`resched_curr` on a vCPU
    /// whose task was signalled, killed or taken away; idle vCPUs woken when a task can
    /// run; the tick's flag), then the shared state goes back behind the lock.
    pub fn unlock_kernel(&self, p: &mut Proc<'_>, mut g: KernelLock<'_>) {
        self.resched_remote(p);
        let ready = p.pick_next().is_some();
        let timers =
            !p.sched.alarms.is_empty() || p.sched.parked.values().any(|t| t.has_deadline());
        self.preempt.store(ready || timers, Ordering::Release);
        g.0.swap(p);
        drop(g);
        if ready {
            self.idle.notify_all();
        }
    }

    /// Kick every other vCPU whose running task has something to handle in the kernel.
    fn resched_remote(&self, p: &Proc<'_>) {
        for (c, st) in self.cpus.0.iter().enumerate() {
            if c == p.cpu || !st.in_guest() {
                continue;
            }
            let tid = st.curr.load(Ordering::Relaxed);
            let needs = match p.sched.parked.get(&(tid as Pid)) {
                Some(t) => t.on_cpu != Some(c) || t.needs_kernel(),
                None => true, // taken away (de_thread)
            };
            if needs {
                st.resched_ipis.fetch_add(1, Ordering::Relaxed);
                st.kick();
            }
        }
    }

    /// The kernel work of vCPU `p.cpu` is done and it enters the guest with its task
    /// (`ctx_id`'s address space at TLB generation `gen`): from now on shootdowns of that
    /// address space and reschedule kicks reach it. Called under the kernel lock, which
    /// the caller releases before `KVM_RUN`.
    pub fn enter_guest(&self, c: usize, tid: Pid, ctx_id: u64, gen: u64) {
        let st = &self.cpus.0[c];
        st.curr.store(tid as i32, Ordering::Relaxed);
        st.loaded_mm.store(ctx_id, Ordering::SeqCst);
        st.in_guest.store(true, Ordering::SeqCst);
        // flush_tlb_func: a flush that raced with this entry saw `in_guest` and kicks us.
        st.loaded_gen.store(gen, Ordering::SeqCst);
    }

    /// `KVM_RUN` returned on vCPU `c`: out of guest mode (a shootdown waiting for it may go).
    pub fn left_guest(&self, c: usize) {
        let st = &self.cpus.0[c];
        st.in_guest.store(false, Ordering::SeqCst);
        st.exits.fetch_add(1, Ordering::SeqCst);
    }

    /// `do_idle`: wait (the kernel lock released) until a task may be ready, `timeout`
    /// passed, or the run ends.
    pub fn idle_wait<'a>(
        &'a self,
        p: &mut Proc<'_>,
        g: KernelLock<'a>,
        timeout: Option<Duration>,
    ) -> KernelLock<'a> {
        let mut g = g.0;
        g.swap(p);
        let cap = Duration::from_millis(100);
        let t = timeout.map_or(cap, |t| t.min(cap));
        let (mut g, _) = self
            .idle
            .wait_timeout(g, t)
            .unwrap_or_else(|e| e.into_inner());
        g.swap(p);
        KernelLock(g)
    }

    /// Wake every idle vCPU (the run ended).
    pub fn wake_all(&self) {
        self.idle.notify_all();
    }

    /// The tick: kick every vCPU in guest mode when `all` (the timeout), or with
    /// `preemption` when a task waits for a CPU or a timer is armed.
    pub fn tick(&self, all: bool, preemption: bool) {
        if all || (preemption && self.preempt.load(Ordering::Acquire)) {
            for st in &self.cpus.0 {
                st.kick();
            }
        }
    }

    /// Something every vCPU must see now (a Ctrl-C): kick each out of the guest or a host
    /// call, and wake the idle ones.
    pub fn interrupt_all(&self) {
        for st in &self.cpus.0 {
            st.force_kick();
        }
        self.wake_all();
    }

    /// `stop_machine` for the grace period of deferred table frees: with the kernel lock
    /// held (so no vCPU can enter), kick every other vCPU out of guest mode and wait for
    /// it.
    pub fn stop_others(&self, _g: &KernelLock<'_>, me: usize) {
        for (c, st) in self.cpus.0.iter().enumerate() {
            if c != me && st.in_guest() {
                let seen = st.exits.load(Ordering::SeqCst);
                st.kick();
                st.wait_out(seen);
            }
        }
    }

    /// Per vCPU: shootdowns and reschedule kicks it received.
    pub fn ipis(&self) -> Vec<(u64, u64)> {
        self.cpus
            .0
            .iter()
            .map(|c| {
                (
                    c.tlb_ipis.load(Ordering::Relaxed),
                    c.resched_ipis.load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    /// Take the shared state out for good (the run is over; no vCPU thread is left).
    pub fn into_inner(self) -> (TaskTable, Sched) {
        let g = self.kernel.into_inner().unwrap_or_else(|e| e.into_inner());
        (g.tasks, g.sched)
    }
}
