//! Running a program and every process and thread it starts to their end (`kernel/sched/`
//! for one CPU, `kernel/exit.c`): exec with mmkit (`execve` builds the address space), a
//! vCPU entered in ring 3 at the entry point, and the exit loop — page faults to
//! `do_user_addr_fault`, system calls to [`super::syscall`], other exceptions to their
//! signal — with the scheduler: tasks take turns on vCPU 0 (context switch = registers,
//! CR3, XSAVE image, the entry-stack frame), sleep in calls that must wait and are tried
//! again after the next event, and are preempted by a 10 ms tick while several can run.
//! The run ends when the last task has exited; its status is the first process's.

use super::signal::{self, SigInfo};
use super::syscall::{self, FdTable};
use super::vcpu::{Exit, Vcpu};
use super::vm::{SyscallEntry, Vm};
use crate::exec::{spawn_host, ExecSpec};
use crate::machine::Machine;
use anyhow::bail;
use anyhow::{anyhow, Result};
use mmkit::arch::x86_64::cpu_entry_area::{
    X86_TRAP_AC, X86_TRAP_BP, X86_TRAP_DB, X86_TRAP_DE, X86_TRAP_GP, X86_TRAP_MF, X86_TRAP_PF,
    X86_TRAP_UD, X86_TRAP_XF,
};
use mmkit::arch::x86_64::fault::{Signal, SIGBUS, SIGKILL, SIGSEGV};
use mmkit::arch::x86_64::tlb::PageFault;
use mmkit::kernel::task::{Pid, TaskTable};
use mmkit::mm::mm_types::MmStruct;
use mmkit::{CpuGuard, Kernel};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `SIGILL`.
pub const SIGILL: i32 = 4;
/// `SIGTRAP`.
pub const SIGTRAP: i32 = 5;
/// `SIGFPE`.
pub const SIGFPE: i32 = 8;

/// Called at every system call before it is handled, with its number and arguments: an
/// observer of the running program (as a ptrace or seccomp observer), which may look at and
/// act on the machine between the program's steps.
pub type SyscallHook = Arc<dyn Fn(&mut Proc<'_>, &CpuGuard<'_>, u64, [u64; 6]) + Send + Sync>;

/// How to run.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Print every system call as strace does.
    pub strace: bool,
    /// Print every page fault: address, ip, error code, kind, minor/major.
    pub trace_faults: bool,
    /// Kill the program after this long.
    pub timeout: Option<Duration>,
    /// Where the program's standard output goes instead of ours (for `--compare`).
    pub stdout: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
    /// An observer called at each system call.
    pub syscall_hook: Option<SyscallHook>,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("strace", &self.strace)
            .field("trace_faults", &self.trace_faults)
            .field("timeout", &self.timeout)
            .field("stdout", &self.stdout)
            .field("syscall_hook", &self.syscall_hook.is_some())
            .finish()
    }
}

/// How a program ended.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// `exit_group(code)`.
    Exited(i32),
    /// Killed by a signal (its default action).
    Signaled(i32),
}

impl Status {
    /// The status `wait4` reports (`WIFEXITED`: code << 8; `WIFSIGNALED`: the signal).
    pub fn wait_status(self) -> i32 {
        match self {
            Status::Exited(c) => (c & 0xff) << 8,
            Status::Signaled(s) => s & 0x7f,
        }
    }

    /// The shell's `$?`: the code, or 128 + the signal.
    pub fn code(self) -> i32 {
        match self {
            Status::Exited(c) => c & 0xff,
            Status::Signaled(s) => 128 + s,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// How it ended.
    pub status: Status,
    /// The pid it ran as.
    pub pid: Pid,
    /// Minor and major faults.
    pub min_flt: u64,
    /// Major faults (read from a file or swap).
    pub maj_flt: u64,
    /// Faults by what they installed: anonymous, zero page, file, copy-on-write, swap-in.
    pub faults_by_kind: [u64; 5],
    /// System calls made.
    pub syscalls: u64,
    /// VM exits (`KVM_RUN` returns).
    pub exits: u64,
    /// Page faults the guest raised (each one exit; faults taken while the VMM copies to or
    /// from user memory inside a system call are counted in `min_flt`/`maj_flt` but cost
    /// none, as in Linux they cost no trap).
    pub user_faults: u64,
    /// Time in the guest (inside `KVM_RUN`).
    pub guest: Duration,
    /// Time in the VMM (handling exits).
    pub vmm: Duration,
    /// `VmHWM` in KiB.
    pub vm_hwm_kb: u64,
    /// RSS parts at exit in KiB: anonymous, file, shmem.
    pub rss_kb: (u64, u64, u64),
    /// `/proc/PID/maps` at `exit_group`, before the address space went.
    pub maps_at_exit: String,
    /// Kernel log lines printed during the run (segfault reports, the OOM report).
    pub log: Vec<String>,
    /// Context switches between the run's tasks.
    pub switches: u64,
}

/// The process the exit loop serves.
pub struct Proc<'m> {
    /// The machine.
    pub m: &'m Machine,
    /// Its kernel.
    pub k: &'m Kernel,
    /// The task table (one process in this scope).
    pub tasks: TaskTable,
    /// The running process (its thread group id).
    pub pid: Pid,
    /// The running thread (`gettid`; the process id for its first thread).
    pub tid: Pid,
    /// `exit` (not `exit_group`) of one thread of several: the others go on.
    pub thread_exit: bool,
    /// The futex this thread sleeps on.
    pub futex: Option<FutexWait>,
    /// Its file descriptors.
    pub fds: FdTable,
    /// How to run.
    pub opts: RunOptions,
    /// Set by `exit_group` or a fatal signal.
    pub exit: Option<Status>,
    /// System calls so far.
    pub syscalls: u64,
    /// Page faults the guest raised.
    pub user_faults: u64,
    /// Faults by kind (see [`Outcome::faults_by_kind`]).
    pub faults_by_kind: [u64; 5],
    /// The executable's path (`/proc/self/exe`).
    pub exe: String,
    /// `argv` (`/proc/self/cmdline`).
    pub argv: Vec<String>,
    /// `rt_sigaction`s set, by signal (`struct kernel_sigaction`'s bytes).
    pub sigactions: Vec<[u8; 32]>,
    /// The blocked-signal mask.
    pub sigmask: u64,
    /// The `sigaltstack` (`stack_t`'s bytes; zero: none).
    pub sigaltstack: [u8; 24],
    /// Bytes an interrupted call already moved (a pipe write that waits for room).
    pub progress: usize,
    /// Set by a call that must wait: the task sleeps and the call is made again when it
    /// is woken (`-ERESTARTSYS` with a wait queue, in Linux).
    pub blocked: bool,
    /// `vfork`: the child this task waits for (it runs in this task's address space).
    pub vfork_wait: Option<Pid>,
    /// `CLONE_VFORK` child: the parent whose address space this task runs in until it
    /// execs or exits.
    pub vfork_parent: Option<Pid>,
    /// `set_tid_address`/`CLONE_CHILD_CLEARTID`: cleared at exit.
    pub clear_child_tid: u64,
    /// A child `clone` just made, to be given this task's registers once the call returns.
    pub new_child: Option<super::syscall::proc::NewChild>,
    /// `execve` replaced the image: the task starts at its entry point.
    pub exec_done: bool,
    /// Whether exec randomizes (`--no-aslr` turns it off for every exec of the run).
    pub randomize: bool,
    /// Signals waiting for delivery.
    pub pending: super::signal::Pending,
    /// When a sleeping call with a timeout gives up (`poll`).
    pub deadline: Option<Instant>,
    /// The error code of the last page fault (`sigcontext.err` of a fault's signal).
    pub fault_error: u32,
    /// The call loaded the user registers itself (`rt_sigreturn`): no result to set.
    pub regs_set: bool,
    /// The scheduler: tasks that are not on the CPU, pipes, process groups.
    pub sched: Sched,
}

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

/// The scheduler's state (`struct rq` of the one CPU programs run on, and the wait queues
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
    /// Process group and session of every task, zombies included.
    pub pgrp: std::collections::BTreeMap<Pid, (Pid, Pid)>,
    /// Wake-up events so far.
    pub events: u64,
    /// Context switches.
    pub switches: u64,
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
    sigaltstack: [u8; 24],
    exit: Option<Status>,
    progress: usize,
    vfork_parent: Option<Pid>,
    clear_child_tid: u64,
    pending: super::signal::Pending,
    deadline: Option<Instant>,
    /// Its registers (`None` before it first ran: a child gets them when `clone`
    /// returns).
    ctx: Option<super::vcpu::CpuContext>,
    /// How it waits.
    pub run: RunState,
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
            sigaltstack,
            exit: None,
            progress: 0,
            vfork_parent,
            clear_child_tid,
            pending: Default::default(),
            deadline: None,
            ctx: None,
            run,
        }
    }
}

impl Proc<'_> {
    /// The running task must wait: its call is made again once something happened.
    pub fn block(&mut self) -> Result<i64, i64> {
        self.blocked = true;
        Err(super::syscall::ERESTARTSYS)
    }

    /// Something other tasks may wait for happened.
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
        let tid = if pid == self.pid && self.exit.is_none() {
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
        if tid == self.tid && self.exit.is_none() {
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
            let acts = if t.pid == self.pid {
                &self.sigactions
            } else {
                match self.sched.shared.get(&t.pid) {
                    Some(s) => &s.sigactions,
                    None => return Err(-(libc::ESRCH as i64)),
                }
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
    fn park(&mut self, vm: &Vm, vcpu: &mut Vcpu, run: RunState) -> Result<()> {
        let ctx = if self.exit.is_none() {
            Some(vcpu.save(vm)?)
        } else {
            None
        };
        self.stash_shared();
        let t = Parked {
            pid: self.pid,
            tid: self.tid,
            futex: self.futex.take(),
            sigmask: self.sigmask,
            sigaltstack: self.sigaltstack,
            exit: self.exit.take(),
            progress: std::mem::take(&mut self.progress),
            vfork_parent: self.vfork_parent.take(),
            clear_child_tid: self.clear_child_tid,
            pending: std::mem::take(&mut self.pending),
            deadline: self.deadline.take(),
            ctx,
            run,
        };
        self.sched.parked.insert(self.tid, t);
        self.blocked = false;
        self.vfork_wait = None;
        Ok(())
    }

    /// Leave the running process's shared state (descriptors, signal actions, executable)
    /// for the next of its threads to run.
    fn stash_shared(&mut self) {
        let sh = Shared {
            fds: std::mem::take(&mut self.fds),
            exe: std::mem::take(&mut self.exe),
            argv: std::mem::take(&mut self.argv),
            sigactions: std::mem::take(&mut self.sigactions),
        };
        self.sched.shared.insert(self.pid, sh);
    }

    /// Make parked thread `tid` the running one (its registers are loaded by the caller).
    fn unpark(&mut self, tid: Pid) -> Option<Parked> {
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
        self.sigaltstack = t.sigaltstack;
        self.exit = t.exit.take();
        self.progress = t.progress;
        self.vfork_parent = t.vfork_parent.take();
        self.clear_child_tid = t.clear_child_tid;
        self.pending = std::mem::take(&mut t.pending);
        self.deadline = t.deadline.take();
        self.blocked = false;
        self.sched.switches += 1;
        Some(t)
    }

    /// The next task to run after the current one, round robin by pid: one ready to run,
    /// or asleep since an earlier event, or killed while off the CPU.
    fn pick_next(&self) -> Option<Pid> {
        let ready = |t: &Parked| {
            t.exit.is_some()
                || t.pending.set & !t.sigmask != 0
                || match t.run {
                    RunState::Runnable => true,
                    RunState::Blocked(since) => {
                        since != self.sched.events
                            || t.deadline.is_some_and(|d| Instant::now() >= d)
                    }
                    RunState::Vfork(_) => false,
                }
        };
        let after = self
            .sched
            .parked
            .range(self.tid + 1..)
            .chain(self.sched.parked.range(..=self.tid));
        after.filter(|(_, t)| ready(t)).map(|(&p, _)| p).next()
    }

    /// Free the pages of pipes nobody can read any more and forget pipes with no end open.
    fn sweep_pipes(&mut self, cpu: &CpuGuard<'_>) {
        let k = self.k;
        self.sched.pipes.retain(|pp| {
            pp.release_if_unread(k, cpu);
            let (r, w) = pp.ends();
            r + w > 0
        });
    }

    /// Hand a `vfork` child's borrowed address space back to its parent and wake the
    /// parent (`mm_release` → `complete_vfork_done`). A parent that has gone meanwhile
    /// leaves the address space to nobody: it is torn down.
    pub fn vfork_done(&mut self, cpu: &CpuGuard<'_>) {
        let Some(parent) = self.vfork_parent.take() else {
            return;
        };
        let k = self.k;
        let mm = self.tasks.get_mut(self.pid).and_then(|t| t.mm.take());
        let alive = self
            .tasks
            .get(parent)
            .is_some_and(|t| t.state == mmkit::kernel::task::TaskState::Running);
        match (mm, alive) {
            (Some(mm), true) => {
                if let Some(t) = self.tasks.get_mut(parent) {
                    t.mm = Some(mm);
                }
            }
            (Some(mm), false) => k.exit_mmap(cpu, mm),
            (None, _) => {}
        }
        if let Some(t) = self.sched.parked.get_mut(&parent) {
            if t.run == RunState::Vfork(self.pid) {
                t.run = RunState::Runnable;
            }
        }
        self.sched.events += 1;
    }

    /// `do_exit` of the running task: its descriptors closed, a `vfork` parent released,
    /// then a zombie for its parent to reap.
    fn exit_current(&mut self, cpu: &CpuGuard<'_>) {
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
            }
            self.stash_shared();
            self.sched.events += 1;
            return;
        }
        self.sched.shared.remove(&self.pid);
        self.vfork_done(cpu);
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
        let _ = self.tasks.exit(self.k, cpu, self.pid, status.wait_status());
        if self.tasks.get(self.pid).is_none() {
            self.sched.pgrp.remove(&self.pid);
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

    /// The key of the futex at `uaddr`: the process and address for a private one; the
    /// physical address for a shared one (the same word seen by every mapping of it).
    pub fn futex_key(&mut self, uaddr: u64, private: bool) -> (u64, u64) {
        if !private {
            let k = self.k;
            if let Some(pte) = k.pte_lookup(&self.mm().pt, uaddr & !0xfff) {
                if pte.is_present() {
                    return (pte.pfn().0, uaddr & 0xfff);
                }
            }
        }
        ((1 << 63) | self.pid as u64, uaddr)
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

/// Install the no-op handler of the signal that kicks a vCPU out of `KVM_RUN` (once).
fn kick_signal() -> i32 {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let sig = vmm_sys_util::signal::SIGRTMIN() + 1;
    ONCE.call_once(|| {
        extern "C" fn noop(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
        let _ = vmm_sys_util::signal::register_signal_handler(sig, noop);
    });
    sig
}

/// Page tables a run may park (see [`Vm::sync_tables`]) before the shadow is rebuilt
/// mid-run: 2 MiB of frames, against ~5 ms for a rebuild on a nested hypervisor.
const DEFERRED_TABLES_MAX: u64 = 512;

/// Run `spec` on `vm` to its end.
pub fn run_program(
    m: &Machine,
    vm: &Vm,
    spec: &ExecSpec<'_>,
    opts: &RunOptions,
) -> Result<Outcome> {
    let k = &m.kernel;
    let log_from = k.dmesg_since(u64::MAX).1;
    m.on_cpu(0, |cpu| {
        let mut tasks = TaskTable::default();
        let pid = spawn_host(m, &mut tasks, cpu, spec)?;
        let (entry, sp, pgd, exec_faults) = {
            let t = tasks.get(pid).expect("just spawned");
            let mm = t.mm.as_ref().expect("exec'd");
            (t.entry, t.sp, mm.pt.pgd_pfn(), t.fault_counts())
        };
        let mut vcpu = vm.take_vcpu(0)?;
        vcpu.enter_user(vm, pgd, entry, sp)?;
        let exits_before = vcpu.exits;
        let mut p = Proc {
            m,
            k,
            tasks,
            pid,
            tid: pid,
            thread_exit: false,
            futex: None,
            fds: FdTable::with_stdio(opts.stdout.as_deref()),
            opts: opts.clone(),
            exit: None,
            syscalls: 0,
            user_faults: 0,
            faults_by_kind: [0; 5],
            exe: spec.path.to_string(),
            argv: spec.argv.clone(),
            sigactions: vec![[0; 32]; 65],
            sigmask: 0,
            sigaltstack: [0; 24],
            progress: 0,
            pending: Default::default(),
            deadline: None,
            fault_error: 0,
            regs_set: false,
            blocked: false,
            vfork_wait: None,
            vfork_parent: None,
            clear_child_tid: 0,
            new_child: None,
            exec_done: false,
            randomize: !spec.no_aslr,
            sched: Sched::default(),
        };
        p.sched.pgrp.insert(pid, (pid, pid));
        // The watchdog: marks the timeout, and while several tasks share the CPU ends a
        // time slice every 10 ms (the scheduler tick), by kicking the vCPU thread out of
        // KVM_RUN — only while it is in there, so no host call of the VMM is interrupted.
        let timed_out = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(AtomicBool::new(false));
        let in_guest = Arc::new(AtomicBool::new(false));
        let watchdog = {
            let sig = kick_signal();
            // SAFETY: pthread_self of the calling thread, valid while it lives (the watchdog
            // is joined before this thread returns).
            let me = unsafe { libc::pthread_self() };
            let (timed_out, done, shared, in_guest) = (
                timed_out.clone(),
                done.clone(),
                shared.clone(),
                in_guest.clone(),
            );
            let deadline = opts.timeout.map(|t| Instant::now() + t);
            std::thread::spawn(move || {
                while !done.load(Ordering::Acquire) {
                    std::thread::sleep(TICK);
                    let expired = deadline.is_some_and(|d| Instant::now() >= d);
                    if expired {
                        timed_out.store(true, Ordering::Release);
                    }
                    if expired
                        || (shared.load(Ordering::Acquire) && in_guest.load(Ordering::Acquire))
                    {
                        // SAFETY: signalling a thread that is alive until `done` is set.
                        unsafe { libc::pthread_kill(me, sig) };
                    }
                }
            })
        };
        let (mut guest, mut vmm) = (Duration::ZERO, Duration::ZERO);
        let mut stats = None;
        let mut status = None;
        let r = (|| -> Result<()> {
            loop {
                if p.exit.is_some() {
                    if p.pid == pid && p.last_thread() {
                        // The first process: what it looked like before its memory went.
                        stats = Some(exit_stats(&mut p));
                        status = p.exit;
                    }
                    p.exit_current(cpu);
                    if !switch(&mut p, cpu, vm, &mut vcpu, None)? {
                        break;
                    }
                    continue;
                }
                if p.blocked || p.vfork_wait.is_some() {
                    let run = match p.vfork_wait {
                        Some(c) => RunState::Vfork(c),
                        None => RunState::Blocked(p.sched.events),
                    };
                    if !switch(&mut p, cpu, vm, &mut vcpu, Some(run))? {
                        // Every task waits for another: nothing can ever wake them.
                        p.k.printk(&format!(
                            "mmkit: tasks {:?} wait for each other forever: killed",
                            p.live_pids()
                        ));
                        kill_all(&mut p);
                    }
                    continue;
                }
                if timed_out.load(Ordering::Acquire) {
                    p.k.printk(&format!(
                        "{}[{}]: killed after the --timeout of {:?}",
                        comm(&p),
                        p.pid,
                        opts.timeout.unwrap_or_default()
                    ));
                    kill_all(&mut p);
                    continue;
                }
                if let Some(sig) = signal::next_signal(&p) {
                    let info = signal::take_info(&mut p.pending, sig);
                    let user = signal::user_regs(vm, &mut vcpu)?;
                    signal::deliver(&mut p, cpu, vm, &mut vcpu, info, user)?;
                    continue;
                }
                shared.store(!p.sched.parked.is_empty(), Ordering::Release);
                let t0 = Instant::now();
                in_guest.store(true, Ordering::Release);
                let exit = vcpu.run(vm);
                in_guest.store(false, Ordering::Release);
                let exit = exit?;
                let t1 = Instant::now();
                guest += t1 - t0;
                handle_exit(&mut p, cpu, vm, &mut vcpu, exit)?;
                after_syscall(&mut p, vm, &mut vcpu)?;
                if k.nr_deferred_tables() >= DEFERRED_TABLES_MAX {
                    vm.sync_tables(k, cpu)?;
                }
                if exit == Exit::Interrupted
                    && p.exit.is_none()
                    && !p.blocked
                    && p.pick_next().is_some()
                {
                    // The time slice is over.
                    switch(&mut p, cpu, vm, &mut vcpu, Some(RunState::Runnable))?;
                }
                vmm += t1.elapsed();
            }
            Ok(())
        })();
        done.store(true, Ordering::Release);
        let _ = watchdog.join();
        if r.is_err() {
            // The VMM failed: end every task so every page comes back.
            kill_all(&mut p);
            while p.exit.is_some() {
                p.exit_current(cpu);
                let Some(next) = p.sched.parked.keys().next().copied() else {
                    break;
                };
                p.unpark(next);
                p.exit.get_or_insert(Status::Signaled(SIGKILL));
            }
        }
        p.sweep_pipes(cpu);
        // Every descriptor is closed: the host files written are written back and no
        // longer held open for writing.
        m.hostfs.release_writers(k, cpu);
        // Zombies nobody reaped (their parent exited first) go now, as init reaps them.
        for z in p.tasks.pids() {
            let ppid = p.tasks.get(z).map_or(0, |t| t.ppid);
            let _ = p.tasks.wait(ppid, Some(z));
        }
        let status = status.unwrap_or(Status::Signaled(SIGKILL));
        let (min_flt, maj_flt, vm_hwm_kb, rss_kb, maps) =
            stats.unwrap_or((0, 0, 0, (0, 0, 0), String::new()));
        // The program's own faults: exec wrote the stack through the kernel's own access
        // (Linux's get_user_pages, which no task is charged for).
        let (min_flt, maj_flt) = (
            min_flt.saturating_sub(exec_faults.min_flt),
            maj_flt.saturating_sub(exec_faults.maj_flt),
        );
        let exits = vcpu.exits - exits_before;
        vm.put_vcpu(vcpu);
        // The address spaces are gone: their tables leave the hypervisor's shadow and the
        // allocator gets them back.
        let synced = vm.sync_tables(k, cpu);
        r?;
        synced?;
        Ok(Outcome {
            status,
            pid,
            min_flt,
            maj_flt,
            faults_by_kind: p.faults_by_kind,
            syscalls: p.syscalls,
            exits,
            user_faults: p.user_faults,
            guest,
            vmm,
            vm_hwm_kb,
            rss_kb,
            maps_at_exit: maps,
            log: k.dmesg_since(log_from).0,
            switches: p.sched.switches,
        })
    })
}

/// The scheduler tick while several tasks share the CPU.
const TICK: Duration = Duration::from_millis(10);

/// Mark every task killed (`SIGKILL`): the loop then ends them one by one.
fn kill_all(p: &mut Proc<'_>) {
    p.exit.get_or_insert(Status::Signaled(SIGKILL));
    for t in p.sched.parked.values_mut() {
        t.exit.get_or_insert(Status::Signaled(SIGKILL));
    }
}

/// `schedule()`: put the running task off the CPU (`run`; `None` when it has exited) and
/// load the next one. A task woken in a system call makes it again now. `false` when no
/// task can run: none is left (the run is over) or every one waits.
fn switch(
    p: &mut Proc<'_>,
    cpu: &CpuGuard<'_>,
    vm: &Vm,
    vcpu: &mut Vcpu,
    run: Option<RunState>,
) -> Result<bool> {
    match run {
        Some(run) => p.park(vm, vcpu, run)?,
        None => {
            // The exited task is gone from the CPU; its pid may still be a zombie.
        }
    }
    loop {
        let Some(next) = p.pick_next() else {
            // Nothing can run before a sleeping call's timeout: wait for it.
            let soonest = p.sched.parked.values().filter_map(|t| t.deadline).min();
            if let Some(d) = soonest {
                std::thread::sleep(d.saturating_duration_since(Instant::now()));
                continue;
            }
            if run.is_some() {
                // Nobody can run: put the current one back so the caller sees it.
                let me = p.pid;
                let t = p.unpark(me);
                if let Some(t) = t {
                    if let Some(ctx) = &t.ctx {
                        vcpu.restore(vm, ctx)?;
                    }
                }
            }
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
            // A signal ends the wait: EINTR, or the call again after the handler.
            let user = signal::syscall_user_regs(vm, vcpu)?;
            let user = signal::interrupted_call(p, sig, user);
            (p.futex, p.progress, p.deadline) = (None, 0, None);
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
                let timed = p.sched.parked.values().any(|t| t.deadline.is_some());
                if p.pick_next().is_none() && !timed {
                    let me = next;
                    let t = p.unpark(me).expect("just parked");
                    if let Some(ctx) = &t.ctx {
                        vcpu.restore(vm, ctx)?;
                    }
                    p.blocked = true;
                    return Ok(false);
                }
                continue;
            }
        }
        return Ok(true);
    }
}

/// What follows a system call that completed: a new child gets the parent's registers
/// (with its own return value, stack and TLS), an `execve` starts the new image, and
/// every sleeping task may try again.
fn after_syscall(p: &mut Proc<'_>, vm: &Vm, vcpu: &mut Vcpu) -> Result<()> {
    if p.blocked {
        return Ok(());
    }
    if let Some(c) = p.new_child.take() {
        let mut ctx = vcpu.save(vm)?;
        ctx.regs.rax = 0;
        let pgd = p
            .tasks
            .get(c.pid)
            .and_then(|t| t.mm.as_ref())
            .map(|mm| mm.pt.pgd_pfn());
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
        let pgd = t.mm.as_ref().expect("exec'd").pt.pgd_pfn();
        vcpu.start_thread(pgd, entry, sp)?;
    }
    p.sched.events += 1;
    Ok(())
}

type ExitStats = (u64, u64, u64, (u64, u64, u64), String);

fn exit_stats(p: &mut Proc<'_>) -> ExitStats {
    let t = p.tasks.get(p.pid).expect("the running process");
    let f = t.fault_counts();
    let Some(mm) = t.mm.as_ref() else {
        return (f.min_flt, f.maj_flt, 0, (0, 0, 0), String::new());
    };
    let (anon, file, shmem, _) = mmkit::kernel::task::rss_parts(mm);
    let hwm = mm.hiwater_rss.max(mm.rss()) * 4;
    (
        f.min_flt,
        f.maj_flt,
        hwm,
        (anon * 4, file * 4, shmem * 4),
        mm.proc_maps(),
    )
}

fn comm(p: &Proc<'_>) -> String {
    p.tasks
        .get(p.pid)
        .map(|t| t.comm.clone())
        .unwrap_or_default()
}

/// Handle one exit.
fn handle_exit(
    p: &mut Proc<'_>,
    cpu: &CpuGuard<'_>,
    vm: &Vm,
    vcpu: &mut Vcpu,
    exit: Exit,
) -> Result<()> {
    match exit {
        Exit::Interrupted => Ok(()),
        Exit::Syscall => syscall_exit(p, cpu, vm, vcpu, None),
        Exit::Exception { vector, frame }
            if vector == X86_TRAP_PF && vm.syscall_entry == SyscallEntry::FaultAtLstar =>
        {
            let cr2 = vcpu.cr2()?;
            if cr2 == vm.entry.lstar && frame[1] == vm.entry.lstar {
                return syscall_exit(p, cpu, vm, vcpu, Some(frame));
            }
            page_fault(p, cpu, vcpu, cr2, frame)
        }
        Exit::Exception { vector, frame } if vector == X86_TRAP_PF => {
            let cr2 = vcpu.cr2()?;
            page_fault(p, cpu, vcpu, cr2, frame)
        }
        Exit::Exception { vector, frame } => {
            let sig = match vector {
                X86_TRAP_DE | X86_TRAP_MF | X86_TRAP_XF => SIGFPE,
                X86_TRAP_UD => SIGILL,
                X86_TRAP_DB | X86_TRAP_BP => SIGTRAP,
                X86_TRAP_AC => SIGBUS,
                X86_TRAP_GP => SIGSEGV,
                _ => SIGSEGV,
            };
            let name = match vector {
                X86_TRAP_DE => "divide error",
                X86_TRAP_UD => "invalid opcode",
                X86_TRAP_GP => "general protection fault",
                X86_TRAP_BP => "int3",
                _ => "trap",
            };
            if catches(p, sig) {
                // force_sig: the handler runs (it may fix what trapped, or longjmp away).
                let info = SigInfo {
                    signo: sig,
                    code: 0x80, // SI_KERNEL
                    addr: frame[1],
                    pid: 0,
                };
                let _ = p.signal_task(p.pid, info);
                return Ok(());
            }
            // do_trap's report (show_unhandled_signals).
            p.k.printk(&format!(
                "traps: {}[{}] {name} ip:{:x} sp:{:x} error:{:x}",
                comm(p),
                p.pid,
                frame[1],
                frame[4],
                frame[0]
            ));
            p.exit = Some(Status::Signaled(sig));
            Ok(())
        }
    }
}

/// A system call: handled, then the return to user mode. `frame` is the exception frame
/// when `SYSCALL` arrived as a fault at `LSTAR` (the return goes through it, to the
/// instruction after the `SYSCALL` (RCX) with the flags it saved (R11)). A call that must
/// wait returns nowhere yet: it is made again when the task is woken.
fn syscall_exit(
    p: &mut Proc<'_>,
    cpu: &CpuGuard<'_>,
    vm: &Vm,
    vcpu: &mut Vcpu,
    frame: Option<[u64; 6]>,
) -> Result<()> {
    syscall::handle(p, cpu, vm, vcpu)?;
    if std::mem::take(&mut p.regs_set) || p.blocked || p.exec_done || p.exit.is_some() {
        return Ok(());
    }
    if let Some(mut f) = frame {
        let regs = vcpu.regs()?;
        f[1] = regs.rcx;
        f[3] = regs.r11;
        vcpu.set_frame(vm, &f)?;
    }
    Ok(())
}

fn page_fault(
    p: &mut Proc<'_>,
    cpu: &CpuGuard<'_>,
    vcpu: &mut Vcpu,
    cr2: u64,
    frame: [u64; 6],
) -> Result<()> {
    let error_code = frame[0] as u32;
    let k = p.k;
    p.user_faults += 1;
    let kind_probe = k.pte_lookup(&p.mm().pt, cr2 & !0xfff);
    let r = k.do_user_addr_fault(
        cpu,
        p.mm(),
        PageFault {
            address: cr2,
            error_code,
        },
    );
    let _ = vcpu;
    match r {
        Ok(kind) => {
            p.mm().faults.add(kind);
            let after = k.pte_lookup(&p.mm().pt, cr2 & !0xfff);
            let class = classify(k, kind_probe, after, error_code);
            p.faults_by_kind[class] += 1;
            if p.opts.trace_faults {
                const NAMES: [&str; 5] = ["anon", "zero", "file", "cow", "swap"];
                eprintln!(
                    "[fault] addr {cr2:#x} ip {:#x} error {error_code:#x} {} {}",
                    frame[1],
                    NAMES[class],
                    if kind == mmkit::mm::memory::FaultKind::Major {
                        "major"
                    } else {
                        "minor"
                    }
                );
            }
            Ok(())
        }
        Err(sig) => {
            fatal_fault(p, cpu, sig, frame);
            Ok(())
        }
    }
}

/// What a fault installed: 0 anonymous, 1 zero page, 2 file, 3 copy-on-write, 4 swap-in.
fn classify(
    k: &Kernel,
    before: Option<mmkit::arch::x86_64::pgtable::Pte>,
    after: Option<mmkit::arch::x86_64::pgtable::Pte>,
    error_code: u32,
) -> usize {
    let before = before.unwrap_or_default();
    if !before.is_none() && !before.is_present() {
        return 4;
    }
    if before.is_present() && error_code & mmkit::arch::x86_64::tlb::X86_PF_WRITE != 0 {
        return 3;
    }
    match after {
        Some(a) if a.is_present() && a.pfn() == k.zero_pfn() => 1,
        Some(a) if a.is_present() => match k.pfn_to_page(a.pfn()) {
            Some(pg) if mmkit::mm::page::page_anon(pg) => 0,
            Some(_) => 2,
            None => 2,
        },
        _ => 0,
    }
}

/// The default action of the signal a fault raised, with `show_signal_msg`'s line for a
/// segfault (`prog[pid]: segfault at ADDR ip IP sp SP error E in FILE[START+SIZE]`).
fn fatal_fault(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, sig: Signal, frame: [u64; 6]) {
    let ip = frame[1];
    if sig.signo != SIGKILL && catches(p, sig.signo) {
        // force_sig_fault with a handler: it runs with si_addr and si_code.
        p.fault_error = frame[0] as u32;
        let info = SigInfo {
            signo: sig.signo,
            code: sig.code,
            addr: sig.addr,
            pid: 0,
        };
        let _ = p.signal_task(p.pid, info);
        return;
    }
    if sig.signo == SIGSEGV {
        let vma = p
            .mm()
            .vma_lookup(ip)
            .map(|v| {
                let name = v
                    .vm_file
                    .as_ref()
                    .map(|f| {
                        f.inode
                            .path
                            .rsplit('/')
                            .next()
                            .unwrap_or_default()
                            .to_string()
                    })
                    .unwrap_or_else(|| "anon".into());
                format!(" in {name}[{:x},{:x}]", v.vm_start, v.vm_end - v.vm_start)
            })
            .unwrap_or_default();
        p.k.printk(&format!(
            "{}[{}]: segfault at {:x} ip {:016x} sp {:016x} error {:x}{vma}",
            comm(p),
            p.pid,
            sig.addr,
            ip,
            frame[4],
            frame[0]
        ));
    }
    if sig.signo == SIGKILL {
        // VM_FAULT_OOM: pagefault_out_of_memory → the OOM killer picks a victim (here the
        // only process, which it kills).
        let gfp = mmkit::gfp::GFP_HIGHUSER_MOVABLE;
        let _ = p.tasks.out_of_memory(p.k, cpu, p.pid, gfp, 0);
    }
    p.exit = Some(Status::Signaled(sig.signo));
}

/// Whether the running task catches `sig` and does not block it: a signal the kernel
/// forces (a fault, a trap) otherwise takes its default action (`force_sig_info_to_task`
/// unblocks it and resets the handler when it is blocked or ignored).
fn catches(p: &Proc<'_>, sig: i32) -> bool {
    signal::SigAction::of(&p.sigactions[sig as usize]).caught() && p.sigmask & signal::bit(sig) == 0
}

/// Run a whole program and say what became of it; the error when `/dev/kvm` cannot be used
/// names it.
pub fn check_kvm() -> Result<()> {
    super::vm::kvm_usable().map_err(|e| anyhow!("{e} (mmkit exec --maps still works)"))
}
