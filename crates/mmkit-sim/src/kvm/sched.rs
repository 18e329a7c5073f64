//! The scheduler of a run's tasks (`kernel/sched/core.c`'s `schedule`/`pick_next_task`/
//! `context_switch`, `kernel/exit.c`'s `do_exit`, `kernel/futex/`'s wait queues): every
//! process and thread of a run runs on the machine's vCPUs, each vCPU picking its next
//! task from one shared run queue (round robin; a task on a vCPU has `on_cpu` set and is
//! not picked by another; see [`super::smp`] for the threads, the kernel lock, kicks and
//! TLB shootdowns). A context switch
//! saves and loads the registers, CR3, the XSAVE image and the entry-stack frame; a call
//! that must wait sleeps and is made again after the next event; a 10 ms tick preempts
//! while several tasks can run. What the threads of a process share (descriptors, signal
//! actions, the executable) stays with the running thread and is parked per process while
//! none of them runs.

use super::process::{syscall_exit, Proc, Status};
use super::signal::{self, SigInfo};
use super::syscall::FdTable;
use super::vcpu::Vcpu;
use super::vm::Vm;
use anyhow::{bail, Result};
use mmkit::arch::x86_64::fault::SIGKILL;
use mmkit::kernel::task::Pid;
use mmkit::mm::mm_types::MmStruct;
use mmkit::CpuGuard;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A thread asleep in `FUTEX_WAIT`: the futex's key (the process and address for a
/// private one, the physical address for a shared one), its bitset, and whether a wake
/// reached it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct FutexWait {
    /// The futex.
    pub key: (u64, u64),
    /// `FUTEX_WAIT_BITSET`'s bits.
    pub bitset: u32,
    /// Woken by `FUTEX_WAKE`.
    pub woken: bool,
}

/// What the threads of a process share while none of them runs (`files_struct`,
/// `sighand_struct`, the executable).
#[derive(Default)]
pub struct Shared {
    fds: FdTable,
    exe: String,
    argv: Vec<String>,
    sigactions: Vec<[u8; 32]>,
}

impl Shared {
    /// The process's `argv` (`/proc/PID/cmdline`).
    pub fn argv(&self) -> &[String] {
        &self.argv
    }

    /// `CLONE_CLEAR_SIGHAND`: caught signals go back to `SIG_DFL` (ignored ones stay
    /// ignored).
    pub fn clear_handlers(&mut self) {
        for s in self.sigactions.iter_mut() {
            if u64::from_le_bytes(s[..8].try_into().expect("8")) > 1 {
                *s = [0; 32];
            }
        }
    }

    /// The process's signal actions.
    pub fn sigactions(&self) -> &[[u8; 32]] {
        &self.sigactions
    }

    /// The process's executable (`/proc/PID/exe`).
    pub fn exe(&self) -> &str {
        &self.exe
    }

    /// A process's shared state.
    pub fn new(fds: FdTable, exe: String, argv: Vec<String>, sigactions: Vec<[u8; 32]>) -> Self {
        Shared {
            fds,
            exe,
            argv,
            sigactions,
        }
    }
}

/// The scheduler's state (one `struct rq` shared by the vCPUs, and the wait queues
/// as one counter): events that may wake a sleeping task are counted (a system call
/// completed, a task exited), and a task that went to sleep at event `n` is tried again
/// only once the count moved past `n`.
#[derive(Default)]
pub struct Sched {
    /// Threads not on the CPU, by thread id.
    pub parked: std::collections::BTreeMap<Pid, Parked>,
    /// What the threads of each process share, for processes none of whose threads runs.
    pub shared: std::collections::BTreeMap<Pid, Shared>,
    /// Pipes with an open end (their pages are freed once no reader is left).
    pub pipes: Vec<Arc<super::pipe::Pipe>>,
    /// `ITIMER_REAL` of each process that has one armed: when it fires and its interval.
    pub alarms: std::collections::BTreeMap<Pid, (Instant, Duration)>,
    /// Process group and session of every task, zombies included.
    pub pgrp: std::collections::BTreeMap<Pid, (Pid, Pid)>,
    /// When each process started, in clock ticks since boot (`/proc/PID/stat`'s
    /// `start_time`).
    pub started: std::collections::BTreeMap<Pid, u64>,
    /// The names (`comm`) of threads other than the leaders, which `PR_SET_NAME` sets per
    /// thread (a leader's is its process's, in the task table).
    pub thread_comm: std::collections::BTreeMap<Pid, String>,
    /// Stopped processes and the changes their parents' `wait` has to report.
    pub jobs: super::signal::JobControl,
    /// The terminal: its session and foreground process group.
    pub tty: super::tty::Tty,
    /// Time each process spent in the guest and in the VMM for it (`utime`, `stime`).
    pub runtime: std::collections::BTreeMap<Pid, (Duration, Duration)>,
    /// Wake-up events so far.
    pub events: u64,
    /// Context switches.
    pub switches: u64,
    /// The thread last given a CPU: the round robin goes on after it, whichever CPU picks.
    pub last_run: Pid,
    /// The run's first process (whose status is the run's).
    pub first: Pid,
    /// What every vCPU's tasks did, summed.
    pub totals: Totals,
    /// How the run's first process ended, and what it looked like before its memory went.
    pub(super) outcome: Option<(Status, super::process::ExitStats)>,
    /// What the first process looked like when the OOM killer took it (its task is
    /// released with its memory, before it is next scheduled).
    pub(super) oom_killed_first: Option<super::process::ExitStats>,
    /// Faults the guest raised, by kind, of every process (see
    /// [`super::process::Outcome::faults_by_kind`]).
    pub kinds: std::collections::BTreeMap<Pid, [u64; 5]>,
    /// Every process that ended, in the order they did, with its fault counts.
    pub ended: Vec<super::process::ProcessFaults>,
}

/// Counts summed over the vCPUs (each counts in its own [`Proc`] and adds them here under
/// the kernel lock).
#[derive(Copy, Clone, Debug, Default)]
pub struct Totals {
    /// System calls.
    pub syscalls: u64,
    /// Page faults the guest raised.
    pub user_faults: u64,
    /// Faults by kind (see [`super::process::Outcome::faults_by_kind`]).
    pub faults_by_kind: [u64; 5],
}

/// How a task off the CPU waits.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Ready to run.
    Runnable,
    /// Asleep in a system call since event `n`; tried again after a later event.
    Blocked(u64),
    /// Waiting for its `vfork` child to exec or exit.
    Vfork(Pid),
}

/// A task off the CPU: what `Proc` holds for the running one, and its CPU state.
pub struct Parked {
    /// Its process.
    pub pid: Pid,
    tid: Pid,
    futex: Option<FutexWait>,
    sigmask: u64,
    saved_sigmask: Option<u64>,
    sigaltstack: [u8; 24],
    exit: Option<Status>,
    progress: usize,
    vfork_parent: Option<Pid>,
    clear_child_tid: u64,
    /// Signals waiting for delivery.
    pub pending: super::signal::Pending,
    deadline: Option<Instant>,
    no_restart: bool,
    /// Its registers (`None` before it first ran: a child gets them when `clone`
    /// returns; and while a vCPU runs it: they are on that vCPU).
    ctx: Option<super::vcpu::CpuContext>,
    /// How it waits.
    pub run: RunState,
    /// The vCPU running it (`task->on_cpu`): its registers are there, and no other vCPU
    /// may pick it.
    pub on_cpu: Option<usize>,
    /// The vCPU it last ran on (`task_cpu`, `/proc/PID/stat`'s `processor`).
    pub last_cpu: usize,
}

impl Parked {
    /// Asleep with a timeout.
    pub fn has_deadline(&self) -> bool {
        self.deadline.is_some()
    }

    /// Killed (or exited) while off the CPU: it ends when next picked.
    pub fn killed(&self) -> bool {
        self.exit.is_some()
    }

    /// Something its vCPU must handle in the kernel: it was killed, or a signal it does not
    /// block is pending.
    pub fn needs_kernel(&self) -> bool {
        self.exit.is_some() || self.pending.set & !self.sigmask != 0
    }
}

impl Parked {
    /// A task off the CPU with no registers yet.
    pub(crate) fn new(
        pid: Pid,
        tid: Pid,
        sigmask: u64,
        sigaltstack: [u8; 24],
        vfork_parent: Option<Pid>,
        clear_child_tid: u64,
        run: RunState,
    ) -> Parked {
        Parked {
            pid,
            tid,
            futex: None,
            sigmask,
            saved_sigmask: None,
            sigaltstack,
            exit: None,
            progress: 0,
            vfork_parent,
            clear_child_tid,
            pending: Default::default(),
            deadline: None,
            no_restart: false,
            ctx: None,
            run,
            on_cpu: None,
            last_cpu: 0,
        }
    }
}

impl Proc<'_> {
    /// The running task must wait: its call is made again once something happened.
    pub fn block(&mut self) -> Result<i64, i64> {
        self.blocked = true;
        Err(super::syscall::ERESTARTSYS)
    }

    /// Something other tasks may wait for happened, inside a call that may itself still go
    /// to sleep (a pipe write that moved some bytes and waits for room): a completed call
    /// counts as an event anyway.
    pub fn wake_all(&mut self) {
        self.sched.events += 1;
    }

    /// `send_sig` to the running thread by the kernel (`SIGPIPE`).
    pub fn raise(&mut self, sig: i32) {
        let tid = self.tid;
        let _ = self.signal_thread(
            tid,
            SigInfo {
                signo: sig,
                code: 0x80, // SI_KERNEL
                addr: 0,
                pid: 0,
            },
        );
    }

    /// `send_signal` to process `pid` (running or not): one of its threads takes it (the
    /// running one, or the first one, or any). `ESRCH` if there is none.
    pub fn signal_task(&mut self, pid: Pid, info: SigInfo) -> Result<(), i64> {
        let running = !self.sched.parked.contains_key(&self.tid);
        let tid = if pid == self.pid && self.exit.is_none() && running {
            self.tid
        } else if self.sched.parked.get(&pid).is_some_and(|t| t.pid == pid) {
            pid
        } else {
            self.sched
                .parked
                .values()
                .find(|t| t.pid == pid)
                .map(|t| t.tid)
                .ok_or(-(libc::ESRCH as i64))?
        };
        self.signal_thread(tid, info)
    }

    /// `send_signal` to thread `tid`: `ESRCH` if there is none.
    pub fn signal_thread(&mut self, tid: Pid, info: SigInfo) -> Result<(), i64> {
        if tid == self.tid && self.exit.is_none() && !self.sched.parked.contains_key(&tid) {
            if info.signo != 0 {
                signal::send(
                    &self.sigactions,
                    self.sigmask,
                    &mut self.pending,
                    &mut self.exit,
                    info,
                );
            }
            return Ok(());
        }
        let t = self
            .sched
            .parked
            .get_mut(&tid)
            .ok_or(-(libc::ESRCH as i64))?;
        if info.signo != 0 {
            // The process's actions: parked with it, or with its running thread.
            let acts = match self.sched.shared.get(&t.pid) {
                Some(s) => &s.sigactions,
                None if t.pid == self.pid => &self.sigactions,
                None => return Err(-(libc::ESRCH as i64)),
            };
            signal::send(acts, t.sigmask, &mut t.pending, &mut t.exit, info);
        }
        self.sched.events += 1;
        Ok(())
    }

    /// The process thread `tid` belongs to.
    pub fn thread_group(&self, tid: Pid) -> Option<Pid> {
        if tid == self.tid {
            return Some(self.pid);
        }
        self.sched.parked.get(&tid).map(|t| t.pid)
    }

    /// End every thread of process `pid` that is off the CPU (`SIGKILL`): each ends when
    /// it is next picked.
    pub fn kill_parked(&mut self, pid: Pid) {
        for t in self.sched.parked.values_mut().filter(|t| t.pid == pid) {
            t.exit.get_or_insert(Status::Signaled(SIGKILL));
        }
        self.sched.events += 1;
    }

    /// `it_real_fn`: every process whose `ITIMER_REAL` is due gets `SIGALRM` (and an
    /// interval timer is armed again).
    pub fn fire_alarms(&mut self) {
        let now = Instant::now();
        let due: Vec<(Pid, Duration)> = self
            .sched
            .alarms
            .iter()
            .filter(|(_, a)| a.0 <= now)
            .map(|(&p, a)| (p, a.1))
            .collect();
        for (pid, interval) in due {
            if interval.is_zero() {
                self.sched.alarms.remove(&pid);
            } else {
                let next = super::syscall::deadline_after(interval);
                self.sched.alarms.insert(pid, (next, interval));
            }
            let info = SigInfo {
                signo: libc::SIGALRM,
                code: 0x80, // SI_KERNEL
                addr: 0,
                pid: 0,
            };
            let _ = self.signal_task(pid, info);
        }
    }

    /// Whether the running thread is the last live one of its process.
    pub fn last_thread(&self) -> bool {
        !self.sched.parked.values().any(|t| t.pid == self.pid)
    }

    /// `FUTEX_WAKE`: wake up to `n` threads asleep on `key` whose bitset meets `bitset`.
    pub fn futex_wake(&mut self, key: (u64, u64), n: usize, bitset: u32) -> usize {
        let mut woken = 0;
        for t in self.sched.parked.values_mut() {
            if woken == n {
                break;
            }
            if let Some(f) = &mut t.futex {
                if f.key == key && !f.woken && f.bitset & bitset != 0 {
                    f.woken = true;
                    woken += 1;
                }
            }
        }
        self.sched.events += 1;
        woken
    }

    /// The name of thread `tid` of process `pid` (`task->comm`).
    pub fn comm_of(&self, pid: Pid, tid: Pid) -> String {
        match self.sched.thread_comm.get(&tid) {
            Some(c) if tid != pid => c.clone(),
            _ => self
                .tasks
                .get(pid)
                .map(|t| t.comm.clone())
                .unwrap_or_default(),
        }
    }

    /// Process group and session of `pid`.
    pub fn pgrp_of(&self, pid: Pid) -> Option<(Pid, Pid)> {
        self.sched.pgrp.get(&pid).copied()
    }

    /// Every live task (running or not).
    pub fn live_pids(&self) -> Vec<Pid> {
        let mut v: Vec<Pid> = self.sched.parked.values().map(|t| t.pid).collect();
        if self.exit.is_none() || !v.contains(&self.pid) {
            v.push(self.pid);
        }
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Put the running task off the CPU (its registers saved unless it has exited).
    pub(super) fn park(&mut self, vm: &Vm, vcpu: &mut Vcpu, run: RunState) -> Result<()> {
        let ctx = if self.exit.is_none() {
            Some(vcpu.save(vm)?)
        } else {
            None
        };
        self.park_as(ctx, run, None);
        Ok(())
    }

    /// The running task enters the guest on this vCPU and the kernel lock goes: its state
    /// becomes visible to the other vCPUs (its registers stay on the vCPU).
    pub(super) fn park_running(&mut self) {
        self.park_as(None, RunState::Runnable, Some(self.cpu));
    }

    /// This vCPU's task again, back from the guest: `false` if it was taken away meanwhile
    /// (`de_thread` on another vCPU), and this vCPU is idle.
    pub(super) fn unpark_running(&mut self) -> bool {
        let tid = self.tid;
        let mine = self
            .sched
            .parked
            .get(&tid)
            .is_some_and(|t| t.on_cpu == Some(self.cpu));
        if !mine {
            self.go_idle();
            return false;
        }
        self.load_parked(tid);
        true
    }

    /// Add this vCPU's counts to the run's totals.
    pub(super) fn flush_totals(&mut self) {
        let t = &mut self.sched.totals;
        t.syscalls += std::mem::take(&mut self.syscalls);
        t.user_faults += std::mem::take(&mut self.user_faults);
        for (a, b) in t
            .faults_by_kind
            .iter_mut()
            .zip(self.faults_by_kind.iter_mut())
        {
            *a += std::mem::take(b);
        }
    }

    /// No task on this vCPU (the idle task, pid 0).
    pub(super) fn go_idle(&mut self) {
        self.pid = 0;
        self.tid = 0;
    }

    /// Whether this vCPU runs no task.
    pub fn is_idle(&self) -> bool {
        self.tid == 0
    }

    /// `task_cpu`: the vCPU task `pid` runs on or last ran on.
    /// (For a process, its leader's: `/proc/PID/stat` shows the thread group leader.)
    pub fn task_cpu(&self, pid: Pid) -> usize {
        if pid == self.tid {
            return self.cpu;
        }
        match self.sched.parked.get(&pid) {
            Some(t) => t.on_cpu.unwrap_or(t.last_cpu),
            None if pid == self.pid => self.cpu,
            None => self
                .sched
                .parked
                .values()
                .find(|t| t.pid == pid)
                .map_or(0, |t| t.on_cpu.unwrap_or(t.last_cpu)),
        }
    }

    fn park_as(
        &mut self,
        ctx: Option<super::vcpu::CpuContext>,
        run: RunState,
        on_cpu: Option<usize>,
    ) {
        self.charge_shared_faults();
        self.stash_shared();
        let t = Parked {
            pid: self.pid,
            tid: self.tid,
            futex: self.futex.take(),
            sigmask: self.sigmask,
            saved_sigmask: self.saved_sigmask.take(),
            sigaltstack: self.sigaltstack,
            exit: self.exit.take(),
            progress: std::mem::take(&mut self.progress),
            vfork_parent: self.vfork_parent.take(),
            clear_child_tid: self.clear_child_tid,
            pending: std::mem::take(&mut self.pending),
            deadline: self.deadline.take(),
            no_restart: std::mem::take(&mut self.no_restart),
            ctx,
            run,
            on_cpu,
            last_cpu: self.cpu,
        };
        self.sched.parked.insert(self.tid, t);
        self.blocked = false;
        self.vfork_wait = None;
    }

    /// Leave the running process's shared state (descriptors, signal actions, executable)
    /// for the next of its threads to run.
    pub(super) fn stash_shared(&mut self) {
        let sh = Shared {
            fds: std::mem::take(&mut self.fds),
            exe: std::mem::take(&mut self.exe),
            argv: std::mem::take(&mut self.argv),
            sigactions: std::mem::take(&mut self.sigactions),
        };
        self.sched.shared.insert(self.pid, sh);
    }

    /// Make parked thread `tid` the running one (its registers are loaded by the caller).
    pub(super) fn unpark(&mut self, tid: Pid) -> Option<Parked> {
        let t = self.load_parked(tid)?;
        self.sched.switches += 1;
        self.sched.last_run = tid;
        Some(t)
    }

    fn load_parked(&mut self, tid: Pid) -> Option<Parked> {
        let mut t = self.sched.parked.remove(&tid)?;
        if let Some(sh) = self.sched.shared.remove(&t.pid) {
            self.fds = sh.fds;
            self.exe = sh.exe;
            self.argv = sh.argv;
            self.sigactions = sh.sigactions;
        }
        self.pid = t.pid;
        self.tid = t.tid;
        self.futex = t.futex;
        self.thread_exit = false;
        self.sigmask = t.sigmask;
        self.saved_sigmask = t.saved_sigmask.take();
        self.sigaltstack = t.sigaltstack;
        self.exit = t.exit.take();
        self.progress = t.progress;
        self.vfork_parent = t.vfork_parent.take();
        self.clear_child_tid = t.clear_child_tid;
        self.pending = std::mem::take(&mut t.pending);
        self.deadline = t.deadline.take();
        self.no_restart = t.no_restart;
        self.blocked = false;
        self.shared_faults = self.tasks.shared_fault_base(self.pid);
        Some(t)
    }

    /// The running task's faults in an address space it shares with another process are
    /// its own: they move from the address space's counts to the task
    /// (`TaskTable::charge_shared_faults`). Called whenever it stops running on this vCPU
    /// or stops sharing (exec, exit); the kernel lock held since it started makes every
    /// fault counted meanwhile its.
    pub fn charge_shared_faults(&mut self) {
        if let Some(base) = self.shared_faults.take() {
            self.tasks.charge_shared_faults(self.pid, base);
        }
    }

    /// The next task to run after the one last given a CPU, round robin by pid: one not
    /// on a vCPU that is ready to run, or asleep since an earlier event, or killed while
    /// off the CPU — none of a stopped process but to end it.
    pub fn pick_next(&self) -> Option<Pid> {
        let ready = |t: &Parked| {
            // A stopped process's threads run again only to die (SIGKILL) or once continued;
            // a vfork parent (its address space lent to the child) only to die.
            t.on_cpu.is_none()
                && (t.exit.is_some()
                    || !self.is_stopped(t.pid)
                        && match t.run {
                            RunState::Runnable => true,
                            RunState::Blocked(since) => {
                                t.pending.set & !t.sigmask != 0
                                    || since != self.sched.events
                                    || t.deadline.is_some_and(|d| Instant::now() >= d)
                            }
                            RunState::Vfork(_) => false,
                        })
        };
        let last = self.sched.last_run;
        let after = self
            .sched
            .parked
            .range(last + 1..)
            .chain(self.sched.parked.range(..=last));
        after.filter(|(_, t)| ready(t)).map(|(&p, _)| p).next()
    }

    /// Free the pages of pipes nobody can read any more and forget pipes with no end open.
    pub(super) fn sweep_pipes(&mut self, cpu: &CpuGuard<'_>) {
        let k = self.k;
        self.sched.pipes.retain(|pp| {
            pp.release_if_unread(k, cpu);
            let (r, w) = pp.ends();
            r + w > 0
        });
    }

    /// A `vfork` child execs or exits: its parent, which waits for that, wakes
    /// (`mm_release` → `complete_vfork_done`). The address space they shared stays the
    /// parent's (`TaskTable::exec`/`exit` let the child go of it).
    pub fn vfork_done(&mut self) {
        let Some(parent) = self.vfork_parent.take() else {
            return;
        };
        if let Some(t) = self.sched.parked.get_mut(&parent) {
            if t.run == RunState::Vfork(self.pid) {
                t.run = RunState::Runnable;
            }
        }
        self.sched.events += 1;
    }

    /// `do_exit` of the running task: its descriptors closed, a `vfork` parent released,
    /// then a zombie for its parent to reap.
    pub(super) fn exit_current(&mut self, cpu: &CpuGuard<'_>) {
        self.charge_shared_faults();
        let status = self.exit.unwrap_or(Status::Signaled(SIGKILL));
        if !std::mem::take(&mut self.thread_exit) {
            // exit_group, or a fatal signal: every thread of the process ends with it.
            let me = self.pid;
            for t in self.sched.parked.values_mut().filter(|t| t.pid == me) {
                t.exit.get_or_insert(status);
            }
        }
        if !self.last_thread() {
            // One thread of several ends; the process and its address space stay.
            self.clear_child_tid(cpu);
            if self.tid != self.pid {
                self.tasks.free_tid(self.tid);
                self.sched.thread_comm.remove(&self.tid);
            }
            self.stash_shared();
            self.sched.events += 1;
            return;
        }
        self.sched.shared.remove(&self.pid);
        // A zombie tells its exit, not a stop.
        self.sched.jobs.stopped.remove(&self.pid);
        self.sched.jobs.reports.remove(&self.pid);
        self.vfork_done();
        // SIGCHLD to the parent (do_notify_parent), dropped unless it catches it.
        if let Some(ppid) = self.tasks.get(self.pid).map(|t| t.ppid) {
            let code = match status {
                Status::Exited(_) => 1,   // CLD_EXITED
                Status::Signaled(_) => 2, // CLD_KILLED
            };
            let _ = self.signal_task(
                ppid,
                SigInfo {
                    signo: libc::SIGCHLD,
                    code,
                    addr: 0,
                    pid: self.pid,
                },
            );
        }
        self.fds.close_all();
        self.sweep_pipes(cpu);
        if let Some(t) = self.tasks.get(self.pid) {
            let f = t.fault_counts();
            self.sched.ended.push(super::process::ProcessFaults {
                pid: self.pid,
                ppid: t.ppid,
                exe: self.exe.clone(),
                min_flt: f.min_flt,
                maj_flt: f.maj_flt,
                by_kind: self.sched.kinds.remove(&self.pid).unwrap_or_default(),
            });
        }
        let _ = self.tasks.exit(self.k, cpu, self.pid, status.wait_status());
        if self.tasks.get(self.pid).is_none() {
            self.sched.pgrp.remove(&self.pid);
            self.sched.started.remove(&self.pid);
            self.sched.runtime.remove(&self.pid);
        }
        self.sched.events += 1;
    }

    /// `mm_release`: a thread's `clear_child_tid` (glibc's `pd->tid`) becomes 0 and a
    /// thread joining it wakes (a shared futex wake of one waiter, as Linux does).
    fn clear_child_tid(&mut self, cpu: &CpuGuard<'_>) {
        let addr = std::mem::take(&mut self.clear_child_tid);
        if addr == 0 || self.write_user(cpu, addr, &0u32.to_le_bytes()).is_err() {
            return;
        }
        let key = self.futex_key(addr, false);
        self.futex_wake(key, 1, u32::MAX);
    }

    /// The key of the futex at `uaddr` (`get_futex_key`). A private futex, and a shared one
    /// in memory no other address space can map (anonymous private memory: Linux keys a
    /// shared futex on an anonymous page by address space and address too), is the address
    /// space (`mm`, the same for every process that shares it) and the address; a shared
    /// futex in a shared mapping (a file, or shared anonymous memory, whose memory file it
    /// is) is the file and the offset in it, the same word whichever mapping sees it. No key
    /// depends on a frame or a page table, so a split, a collapse, a migration or a swap of
    /// the page between the wait and the wake changes nothing.
    pub fn futex_key(&mut self, uaddr: u64, private: bool) -> (u64, u64) {
        let mm = self.tasks.mm_of(self.pid);
        if !private {
            let shared = mm
                .and_then(|mm| mm.vma_lookup(uaddr))
                .filter(|v| v.vm_flags.contains(mmkit::mm::mm_types::VmFlags::VM_SHARED))
                .and_then(|v| {
                    let f = v.vm_file.as_ref()?;
                    let pgoff = v.vm_pgoff + ((uaddr - v.vm_start) >> mmkit::PAGE_SHIFT);
                    Some((
                        Arc::as_ptr(&f.inode) as u64 & !(3 << 62),
                        (pgoff << mmkit::PAGE_SHIFT) | (uaddr & 0xfff),
                    ))
                });
            if let Some(key) = shared {
                return key;
            }
        }
        let mm = mm.map_or(0, |mm| mm.pt.ctx_id());
        // FUT_OFF_MMSHARED: a shared wait on private memory and a private one differ.
        let tag = if private { 1 << 63 } else { 1 << 62 };
        (tag | mm, uaddr)
    }

    /// `de_thread` at exec: the process's other threads go.
    pub fn end_other_threads(&mut self) {
        let me = self.pid;
        let others: Vec<Pid> = self
            .sched
            .parked
            .values()
            .filter(|t| t.pid == me)
            .map(|t| t.tid)
            .collect();
        for tid in others {
            self.sched.parked.remove(&tid);
            if tid != me {
                self.tasks.free_tid(tid);
            }
        }
        if self.tid != me {
            // The exec'ing thread takes over the process id, as de_thread's exchange_tids.
            self.tasks.free_tid(self.tid);
            self.tid = me;
        }
    }

    /// The process's address space.
    pub fn mm(&mut self) -> &mut MmStruct {
        self.tasks
            .mm_mut(self.pid)
            .expect("the running process has an address space")
    }
}

/// The scheduler tick while several tasks share the CPU.
pub(super) const TICK: Duration = Duration::from_millis(10);

/// Mark every task killed (`SIGKILL`): the vCPUs then end them one by one.
pub(super) fn kill_all(p: &mut Proc<'_>) {
    if !p.is_idle() {
        p.exit.get_or_insert(Status::Signaled(SIGKILL));
    }
    for t in p.sched.parked.values_mut() {
        t.exit.get_or_insert(Status::Signaled(SIGKILL));
    }
}

/// `schedule()`: put the running task off this vCPU (`run`; `None` when it has exited or
/// there is none) and load the next one the run queue has. A task woken in a system call
/// makes it again now. `false` when no task can run here: the vCPU is idle.
pub(super) fn switch(
    p: &mut Proc<'_>,
    cpu: &CpuGuard<'_>,
    vm: &Vm,
    vcpu: &mut Vcpu,
    run: Option<RunState>,
) -> Result<bool> {
    if let Some(run) = run {
        p.park(vm, vcpu, run)?;
    }
    p.go_idle();
    loop {
        let Some(next) = p.pick_next() else {
            return Ok(false);
        };
        let t = p.unpark(next).expect("picked from the parked tasks");
        if p.exit.is_some() {
            return Ok(true); // killed while off the CPU: the loop ends it
        }
        let Some(ctx) = t.ctx else {
            bail!("task {next} has no registers");
        };
        vcpu.restore(vm, &ctx)?;
        if let (RunState::Blocked(_), Some(sig)) = (t.run, signal::next_signal(p)) {
            // A signal ends the wait: EINTR, or the call again after the handler; without a
            // handler (a stop) the call is made again where it was (its deadline, the bytes
            // it moved).
            let user = signal::syscall_user_regs(vm, vcpu)?;
            let caught = signal::SigAction::of(&p.sigactions[sig as usize]).caught();
            if caught {
                super::syscall::misc::nanosleep_interrupted(p, cpu, &user);
            }
            let user = signal::interrupted_call(p, sig, user);
            p.futex = None;
            if caught {
                (p.progress, p.deadline, p.no_restart) = (0, None, false);
            }
            vcpu.resume_user(&user)?;
            return Ok(true);
        }
        if let RunState::Blocked(_) = t.run {
            // Make the call again; if it must still wait, back to sleep.
            syscall_exit(p, cpu, vm, vcpu, ctx.frame)?;
            after_syscall(p, vm, vcpu)?;
            if p.blocked {
                let since = p.sched.events;
                p.park(vm, vcpu, RunState::Blocked(since))?;
                p.go_idle();
                continue;
            }
        }
        return Ok(true);
    }
}

/// The soonest a sleeping call times out or an alarm fires.
pub(super) fn next_timer(p: &Proc<'_>) -> Option<Instant> {
    p.sched
        .parked
        .values()
        .filter_map(|t| t.deadline)
        .chain(p.sched.alarms.values().map(|a| a.0))
        .min()
}

/// What follows a system call that completed: a new child gets the parent's registers
/// (with its own return value, stack and TLS), an `execve` starts the new image, and
/// every sleeping task may try again.
pub(super) fn after_syscall(p: &mut Proc<'_>, vm: &Vm, vcpu: &mut Vcpu) -> Result<()> {
    if p.blocked {
        return Ok(());
    }
    if let Some(c) = p.new_child.take() {
        let mut ctx = vcpu.save(vm)?;
        ctx.regs.rax = 0;
        let pgd = p.tasks.mm_of(c.pid).map(|mm| mm.pt.pgd_pfn());
        if let Some(pgd) = pgd {
            ctx.sregs.cr3 = pgd.0 << mmkit::PAGE_SHIFT;
        }
        if c.stack != 0 {
            match &mut ctx.frame {
                Some(f) => f[4] = c.stack,
                None => ctx.regs.rsp = c.stack,
            }
        }
        if let Some(tls) = c.tls {
            ctx.sregs.fs.base = tls;
        }
        if let Some(t) = p.sched.parked.get_mut(&c.pid) {
            t.ctx = Some(ctx);
        }
    }
    if p.exec_done {
        p.exec_done = false;
        let t = p.tasks.get(p.pid).expect("the running task");
        let (entry, sp) = (t.entry, t.sp);
        let pgd = p.tasks.mm_of(p.pid).expect("exec'd").pt.pgd_pfn();
        vcpu.start_thread(pgd, entry, sp)?;
    }
    p.sched.events += 1;
    Ok(())
}
