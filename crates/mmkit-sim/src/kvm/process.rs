//! Running a program and every process and thread it starts to their end (`kernel/sched/`,
//! `kernel/exit.c`, the exit-to-user loop of `kernel/entry/common.c`): exec with mmkit
//! (`execve` builds the address space), vCPU 0 entered in ring 3 at the entry point, and on
//! every vCPU (one per simulated CPU, each on its own host thread: [`super::smp`]) the exit
//! loop — page faults to `do_user_addr_fault`, system calls to [`super::syscall`], other
//! exceptions to their signal — with the scheduler: each vCPU picks its next task from the
//! shared run queue (context switch = registers, CR3, XSAVE image, the entry-stack frame;
//! a task migrating between vCPUs keeps the new one's GDT, TSS and entry stack), tasks
//! sleep in calls that must wait and are tried again after the next event, an idle vCPU
//! waits, and a 10 ms tick preempts while a task waits for a vCPU. The run ends when the
//! last task has exited; its status is the first process's.

use super::sched::{
    after_syscall, kill_all, next_timer, switch, FutexWait, Parked, RunState, Sched, Shared, TICK,
};
use super::signal::{self, SigInfo};
use super::smp::{KernelLock, Smp};
use super::syscall::{self, FdTable};
use super::vcpu::{Exit, Vcpu};
use super::vm::{SyscallEntry, Vm};
use crate::exec::{spawn_host, ExecSpec};
use crate::machine::Machine;
use anyhow::{anyhow, Result};
use mmkit::arch::x86_64::cpu_entry_area::{
    X86_TRAP_AC, X86_TRAP_BP, X86_TRAP_DB, X86_TRAP_DE, X86_TRAP_GP, X86_TRAP_MF, X86_TRAP_PF,
    X86_TRAP_UD, X86_TRAP_XF,
};
use mmkit::arch::x86_64::fault::{Signal, SIGBUS, SIGKILL, SIGSEGV};
use mmkit::arch::x86_64::tlb::PageFault;
use mmkit::kernel::task::{Pid, TaskTable};
use mmkit::{CpuGuard, Kernel};
use std::sync::atomic::Ordering;
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
    /// No time slices: a task leaves its vCPU only when it calls in (a system call, a
    /// fault) — for tests that must show two tasks running at once, which without the
    /// tick's preemption can only happen on two vCPUs.
    pub no_preempt: bool,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("strace", &self.strace)
            .field("trace_faults", &self.trace_faults)
            .field("timeout", &self.timeout)
            .field("stdout", &self.stdout)
            .field("syscall_hook", &self.syscall_hook.is_some())
            .field("no_preempt", &self.no_preempt)
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
    /// What each vCPU did.
    pub cpus: Vec<CpuRun>,
    /// Every process of the run, in the order they ended, with its faults (the first
    /// process's from its exec on, as [`Outcome::min_flt`]).
    pub processes: Vec<ProcessFaults>,
}

/// The faults of one process of a run, from its `fork` to its exit (all its threads, all
/// its address spaces: `/proc/PID/stat`'s `minflt`/`majflt` at its end).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessFaults {
    /// Its pid.
    pub pid: Pid,
    /// Its parent's pid when it ended.
    pub ppid: Pid,
    /// The executable it ended in (`/proc/PID/exe`).
    pub exe: String,
    /// Minor faults.
    pub min_flt: u64,
    /// Major faults.
    pub maj_flt: u64,
    /// The faults its code raised, by kind (see [`Outcome::faults_by_kind`]; faults in
    /// system calls' copies are counted in `min_flt`/`maj_flt` only).
    pub by_kind: [u64; 5],
}

/// The process the exit loop serves.
pub struct Proc<'m> {
    /// The machine.
    pub m: &'m Machine,
    /// Its kernel.
    pub k: &'m Kernel,
    /// The vCPU (and simulated CPU) this state belongs to.
    pub cpu: usize,
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
    /// The mask a call with a temporary one (`rt_sigsuspend`, `pselect6`, `ppoll`) replaced
    /// (`saved_sigmask`): back when the call returns, or, when a handler interrupted it,
    /// saved in the handler's frame so `rt_sigreturn` puts it back.
    pub saved_sigmask: Option<u64>,
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
    /// The sleeping call is not made again after a handler even with `SA_RESTART`
    /// (`pause`, `poll`: `-ERESTARTNOHAND`).
    pub no_restart: bool,
    /// The running task shares another's address space: that address space's fault counts
    /// when it started running here (its faults since then are its own, moved to it when it
    /// stops running: [`Proc::charge_shared_faults`]).
    pub shared_faults: Option<mmkit::mm::uaccess::FaultCounts>,
    /// The error code of the last page fault (`sigcontext.err` of a fault's signal).
    pub fault_error: u32,
    /// The call loaded the user registers itself (`rt_sigreturn`): no result to set.
    pub regs_set: bool,
    /// The scheduler: tasks that are not on the CPU, pipes, process groups.
    pub sched: Sched,
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

/// What one vCPU did in a run.
#[derive(Clone, Debug, Default)]
pub struct CpuRun {
    /// Time inside `KVM_RUN`.
    pub guest: Duration,
    /// Time in the VMM handling its exits (the kernel lock held or waited for).
    pub vmm: Duration,
    /// `KVM_RUN` returns.
    pub exits: u64,
    /// Time inside `KVM_RUN` by (process, thread) it ran.
    pub tasks: std::collections::BTreeMap<(Pid, Pid), Duration>,
    /// TLB shootdowns that kicked it out of guest mode.
    pub tlb_ipis: u64,
    /// Reschedule kicks it got (a signal or kill for its task, the tick).
    pub resched_ipis: u64,
}

impl<'m> Proc<'m> {
    /// The state of vCPU `cpu` with no task on it yet (the idle task).
    fn new(m: &'m Machine, opts: &RunOptions, randomize: bool, cpu: usize) -> Self {
        Proc {
            m,
            k: &m.kernel,
            cpu,
            tasks: TaskTable::default(),
            pid: 0,
            tid: 0,
            thread_exit: false,
            futex: None,
            fds: FdTable::default(),
            opts: opts.clone(),
            exit: None,
            syscalls: 0,
            user_faults: 0,
            faults_by_kind: [0; 5],
            exe: String::new(),
            argv: Vec::new(),
            sigactions: Vec::new(),
            sigmask: 0,
            saved_sigmask: None,
            sigaltstack: [0; 24],
            progress: 0,
            pending: Default::default(),
            deadline: None,
            no_restart: false,
            shared_faults: None,
            fault_error: 0,
            regs_set: false,
            blocked: false,
            vfork_wait: None,
            vfork_parent: None,
            clear_child_tid: 0,
            new_child: None,
            exec_done: false,
            randomize,
            sched: Sched::default(),
        }
    }
}

/// Run `spec` on `vm` to its end, on every vCPU of the machine (one per simulated CPU,
/// each on a host thread of its own; see [`super::smp`]).
pub fn run_program(
    m: &Machine,
    vm: &Vm,
    spec: &ExecSpec<'_>,
    opts: &RunOptions,
) -> Result<Outcome> {
    let k = &m.kernel;
    let log_from = k.dmesg_since(u64::MAX).1;
    let randomize = !spec.no_aslr;
    let (tasks, pid, start, exec_faults) = m.on_cpu(0, |cpu| -> Result<_> {
        let mut tasks = TaskTable::default();
        let pid = spawn_host(m, &mut tasks, cpu, spec)?;
        let t = tasks.get(pid).expect("just spawned");
        let mm = t.mm.as_ref().expect("exec'd");
        let start = (t.entry, t.sp, mm.pt.pgd_pfn());
        let faults = t.fault_counts();
        Ok((tasks, pid, start, faults))
    })?;
    let mut sched = Sched {
        first: pid,
        ..Default::default()
    };
    sched.pgrp.insert(pid, (pid, pid));
    sched.tty = super::tty::Tty { sid: pid, fg: pid };
    sched.started.insert(pid, syscall::procfs::boot_ticks());
    sched.shared.insert(
        pid,
        Shared::new(
            FdTable::with_stdio(opts.stdout.as_deref()),
            spec.path.to_string(),
            spec.argv.clone(),
            vec![[0; 32]; 65],
        ),
    );
    // The first task starts on vCPU 0, as if back from the guest there.
    let mut first = Parked::new(pid, pid, 0, [0; 24], None, 0, RunState::Runnable);
    first.on_cpu = Some(0);
    sched.parked.insert(pid, first);
    let nr = k.nr_cpus();
    let smp = Smp::new(nr, tasks, sched);
    m.ram.set_flush_cpus(Some(smp.cpus.clone()));
    let sig = kick_signal();
    // Ctrl-C on mmkit's terminal goes to the guest's foreground group while this runs.
    let _forwarding = super::tty::RunGuard::new();
    // The watchdog: marks the timeout, and ends time slices every 10 ms (the scheduler
    // tick) while a task waits for a vCPU or a timer is armed, by kicking vCPUs out of
    // KVM_RUN — only while they are in there, so no host call of the VMM is interrupted.
    let ticker_done = super::smp::KthreadStop::default();
    let deadline = opts.timeout.map(|t| Instant::now() + t);
    let runs: Vec<Result<CpuRun>> = std::thread::scope(|s| {
        let smp = &smp;
        let ticker_done = &ticker_done;
        s.spawn(move || {
            while !ticker_done.sleep(TICK) {
                let expired = deadline.is_some_and(|d| Instant::now() >= d);
                if expired {
                    smp.timed_out.store(true, Ordering::Release);
                    smp.wake_all();
                }
                smp.tick(expired, !opts.no_preempt);
                if super::tty::sigint_pending() {
                    // A Ctrl-C: a vCPU takes it to the foreground group (out of a host call
                    // it waits in, a terminal read, too).
                    smp.interrupt_all();
                }
            }
        });
        // khugepaged, a kernel thread beside the vCPUs (it takes the kernel lock to scan).
        s.spawn(move || super::khugepaged::khugepaged(m, smp, ticker_done));
        let threads: Vec<_> = (0..nr)
            .map(|c| {
                let start = (c == 0).then_some((pid, start));
                s.spawn(move || vcpu_loop(m, vm, smp, opts, randomize, c, sig, start))
            })
            .collect();
        let runs = threads
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("a vCPU thread panicked")))
            })
            .collect();
        ticker_done.stop();
        runs
    });
    m.ram.set_flush_cpus(None);
    let ipis = smp.ipis();
    let (tasks, sched) = smp.into_inner();
    let mut p = Proc::new(m, opts, randomize, 0);
    p.tasks = tasks;
    p.sched = sched;
    let mut cpus = Vec::new();
    let mut err = None;
    for (c, r) in runs.into_iter().enumerate() {
        match r {
            Ok(mut run) => {
                (run.tlb_ipis, run.resched_ipis) = ipis[c];
                cpus.push(run);
            }
            Err(e) => {
                err.get_or_insert(e);
                cpus.push(CpuRun::default());
            }
        }
    }
    m.on_cpu(0, |cpu| {
        // Tasks left (the VMM failed): end every one so every page comes back.
        while let Some(next) = p.sched.parked.keys().next().copied() {
            p.unpark(next);
            p.exit.get_or_insert(Status::Signaled(SIGKILL));
            p.exit_current(cpu);
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
        // The address spaces are gone: their tables leave the hypervisor's shadow and the
        // allocator gets them back.
        let synced = vm.sync_tables(k, cpu);
        if let Some(e) = err {
            return Err(e);
        }
        synced?;
        let (status, stats) = p.sched.outcome.take().unwrap_or((
            Status::Signaled(SIGKILL),
            (0, 0, 0, (0, 0, 0), String::new()),
        ));
        let (min_flt, maj_flt, vm_hwm_kb, rss_kb, maps) = stats;
        // The program's own faults: exec wrote the stack through the kernel's own access
        // (Linux's get_user_pages, which no task is charged for).
        let (min_flt, maj_flt) = (
            min_flt.saturating_sub(exec_faults.min_flt),
            maj_flt.saturating_sub(exec_faults.maj_flt),
        );
        let totals = p.sched.totals;
        let mut processes = std::mem::take(&mut p.sched.ended);
        if let Some(first) = processes.iter_mut().find(|e| e.pid == pid) {
            first.min_flt = first.min_flt.saturating_sub(exec_faults.min_flt);
            first.maj_flt = first.maj_flt.saturating_sub(exec_faults.maj_flt);
        }
        Ok(Outcome {
            status,
            pid,
            min_flt,
            maj_flt,
            faults_by_kind: totals.faults_by_kind,
            syscalls: totals.syscalls,
            exits: cpus.iter().map(|c| c.exits).sum(),
            user_faults: totals.user_faults,
            guest: cpus.iter().map(|c| c.guest).sum(),
            vmm: cpus.iter().map(|c| c.vmm).sum(),
            vm_hwm_kb,
            rss_kb,
            maps_at_exit: maps,
            log: k.dmesg_since(log_from).0,
            switches: p.sched.switches,
            cpus,
            processes,
        })
    })
}

/// What a vCPU does after its kernel work.
enum Next {
    /// Enter the guest with the task loaded.
    Run,
    /// No task to run: wait until one may be ready or a timer is due.
    Idle(Option<Duration>),
    /// The run is over.
    Done,
}

/// The exit loop of vCPU `c` on the calling thread (`start`: the first task, which starts
/// here): take the kernel lock, handle the last exit and schedule, release the lock,
/// `KVM_RUN`.
#[allow(clippy::too_many_arguments)]
fn vcpu_loop(
    m: &Machine,
    vm: &Vm,
    smp: &Smp,
    opts: &RunOptions,
    randomize: bool,
    c: usize,
    sig: i32,
    start: Option<(Pid, (u64, u64, mmkit::Pfn))>,
) -> Result<CpuRun> {
    crate::machine::bind_cpu(c);
    let k = &m.kernel;
    let mut vcpu = vm.take_vcpu(c)?;
    smp.set_kick(c, Some(vcpu.kick_handle(sig)));
    let mut p = Proc::new(m, opts, randomize, c);
    let mut run = CpuRun::default();
    let exits_before = vcpu.exits;
    let r = (|| -> Result<()> {
        if let Some((pid, (entry, sp, pgd))) = start {
            vcpu.enter_user(vm, pgd, entry, sp)?;
            (p.pid, p.tid) = (pid, pid);
        }
        let mut exit = None;
        // The last stretch's task and its times in the guest and in the VMM, for its
        // /proc/PID/stat (utime, stime), charged once the kernel lock is held again.
        let mut charge: Option<(Pid, Duration, Duration)> = None;
        loop {
            let t0 = Instant::now();
            let g = smp.lock_kernel(&mut p);
            if let Some((who, guest, vmm)) = charge.take() {
                let rt = p.sched.runtime.entry(who).or_default();
                (rt.0, rt.1) = (rt.0 + guest, rt.1 + vmm);
            }
            let cpu = k.get_cpu();
            if !p.is_idle() {
                p.unpark_running();
            }
            let next = if smp.done.load(Ordering::Acquire) {
                Ok(Next::Done)
            } else {
                kernel_work(&mut p, &cpu, vm, &mut vcpu, smp, &g, exit.take())
            };
            let next = match next {
                Ok(n) => n,
                Err(e) => {
                    // The VMM failed: every vCPU stops; the task goes back for the
                    // teardown to end.
                    p.flush_totals();
                    if !p.is_idle() {
                        p.park_running();
                    }
                    smp.done.store(true, Ordering::Release);
                    drop(cpu);
                    smp.unlock_kernel(&mut p, g);
                    smp.wake_all();
                    smp.tick(true, true);
                    return Err(e);
                }
            };
            match next {
                Next::Done => {
                    if !p.is_idle() {
                        p.park_running();
                    }
                    p.flush_totals();
                    drop(cpu);
                    smp.unlock_kernel(&mut p, g);
                    smp.wake_all();
                    return Ok(());
                }
                Next::Idle(timeout) => {
                    p.flush_totals();
                    drop(cpu);
                    let g = smp.idle_wait(&mut p, g, timeout);
                    smp.unlock_kernel(&mut p, g);
                    run.vmm += t0.elapsed();
                }
                Next::Run => {
                    let (pid, tid) = (p.pid, p.tid);
                    let (ctx_id, gen) = {
                        let pt = &p.mm().pt;
                        (pt.ctx_id(), pt.tlb_gen())
                    };
                    smp.enter_guest(c, tid, ctx_id, gen);
                    p.flush_totals();
                    p.park_running();
                    drop(cpu);
                    smp.unlock_kernel(&mut p, g);
                    let t1 = Instant::now();
                    run.vmm += t1 - t0;
                    let e = vcpu.run(vm);
                    smp.left_guest(c);
                    let dt = t1.elapsed();
                    charge = Some((pid, dt, t1 - t0));
                    run.guest += dt;
                    *run.tasks.entry((pid, tid)).or_default() += dt;
                    exit = Some(e?);
                }
            }
        }
    })();
    smp.set_kick(c, None);
    run.exits = vcpu.exits - exits_before;
    vm.put_vcpu(vcpu);
    r.map(|()| run)
}

/// The kernel work of one stretch on a vCPU (the kernel lock held): the last exit of its
/// task handled, then the loop that Linux's `exit_to_user_mode_loop` and `schedule` are
/// — an exited task ends, a waiting one sleeps and another is picked, a pending signal is
/// delivered — until the task may enter the guest, or the vCPU idles, or the run is over.
fn kernel_work(
    p: &mut Proc<'_>,
    cpu: &CpuGuard<'_>,
    vm: &Vm,
    vcpu: &mut Vcpu,
    smp: &Smp,
    g: &KernelLock<'_>,
    exit: Option<Exit>,
) -> Result<Next> {
    let k = p.k;
    if !p.is_idle() && p.tasks.mm_mut(p.pid).is_err() {
        // Its process's address space went while it was in the guest (its process was
        // torn down from another vCPU): the exit it brings cannot be handled; it dies.
        p.exit.get_or_insert(Status::Signaled(SIGKILL));
    } else if let (Some(exit), false) = (exit, p.is_idle()) {
        handle_exit(p, cpu, vm, vcpu, exit)?;
        after_syscall(p, vm, vcpu)?;
        if k.nr_deferred_tables() >= DEFERRED_TABLES_MAX {
            smp.stop_others(g, p.cpu);
            vm.sync_tables(k, cpu)?;
        }
        if exit == Exit::Interrupted
            && !p.opts.no_preempt
            && p.exit.is_none()
            && !p.blocked
            && p.pick_next().is_some()
            && vcpu.preemptible()?
        {
            // The time slice is over.
            switch(p, cpu, vm, vcpu, Some(RunState::Runnable))?;
        }
    }
    loop {
        // A Ctrl-C on mmkit's terminal: SIGINT to the foreground process group.
        p.host_interrupts();
        if p.is_idle() {
            p.fire_alarms();
            if switch(p, cpu, vm, vcpu, None)? {
                continue;
            }
            let running = p.sched.parked.values().any(|t| t.on_cpu.is_some());
            if !running && p.sched.parked.is_empty() {
                // The last task has exited: the run is over.
                smp.done.store(true, Ordering::Release);
                return Ok(Next::Done);
            }
            let alive = p.sched.parked.values().any(|t| !t.killed());
            if smp.timed_out.load(Ordering::Acquire) && alive {
                let first = p.sched.first;
                p.k.printk(&format!(
                    "{}[{first}]: killed after the --timeout of {:?}",
                    comm_of(p, first),
                    p.opts.timeout.unwrap_or_default()
                ));
                kill_all(p);
                continue;
            }
            let timer = next_timer(p);
            // Under `mmkit exec` a Ctrl-C may still come for the foreground group (a program
            // in pause() waits for it): wait for it a tick at a time.
            let sigint = p.sigint_may_come();
            if !running && timer.is_none() && !sigint {
                // Every task waits for another (or is stopped): nothing can ever wake them.
                p.k.printk(&format!(
                    "mmkit: tasks {:?} are stopped or wait for each other forever: killed",
                    p.live_pids()
                ));
                kill_all(p);
                continue;
            }
            let wait = timer.map(|t| t.saturating_duration_since(Instant::now()));
            return Ok(Next::Idle(if sigint {
                Some(wait.map_or(TICK, |w| w.min(TICK)))
            } else {
                wait
            }));
        }
        if p.exit.is_some() {
            if p.pid == p.sched.first && p.last_thread() {
                // The first process: what it looked like before its memory went.
                let stats = exit_stats(p, p.pid)
                    .or_else(|| p.sched.oom_killed_first.take())
                    .unwrap_or_default();
                p.sched.outcome = p.exit.map(|s| (s, stats));
            }
            p.exit_current(cpu);
            switch(p, cpu, vm, vcpu, None)?;
            continue;
        }
        if p.is_stopped(p.pid) {
            // Stopped (SIGSTOP, SIGTSTP…): off the CPU until SIGCONT or SIGKILL.
            switch(p, cpu, vm, vcpu, Some(RunState::Runnable))?;
            continue;
        }
        if p.blocked || p.vfork_wait.is_some() {
            let run = match p.vfork_wait {
                Some(c) => RunState::Vfork(c),
                None => RunState::Blocked(p.sched.events),
            };
            switch(p, cpu, vm, vcpu, Some(run))?;
            continue;
        }
        if smp.timed_out.load(Ordering::Acquire) {
            p.k.printk(&format!(
                "{}[{}]: killed after the --timeout of {:?}",
                comm(p),
                p.pid,
                p.opts.timeout.unwrap_or_default()
            ));
            kill_all(p);
            continue;
        }
        if let Some(sig) = signal::next_signal(p) {
            let info = signal::take_info(&mut p.pending, sig);
            let user = signal::user_regs(vm, vcpu)?;
            signal::deliver(p, cpu, vm, vcpu, info, user)?;
            continue;
        }
        p.fire_alarms();
        if p.tasks.mm_mut(p.pid).is_err() {
            // Its address space is gone (the OOM killer took it): it cannot run.
            p.exit.get_or_insert(Status::Signaled(SIGKILL));
            continue;
        }
        return Ok(Next::Run);
    }
}

pub(super) type ExitStats = (u64, u64, u64, (u64, u64, u64), String);

fn comm_of(p: &Proc<'_>, pid: Pid) -> String {
    p.tasks.get(pid).map(|t| t.comm.clone()).unwrap_or_default()
}

/// What process `pid` looks like now (`None` when it is gone: the OOM killer released it
/// with its memory).
fn exit_stats(p: &Proc<'_>, pid: Pid) -> Option<ExitStats> {
    let t = p.tasks.get(pid)?;
    let f = t.fault_counts();
    let Some(mm) = p.tasks.mm_of(pid) else {
        return Some((f.min_flt, f.maj_flt, 0, (0, 0, 0), String::new()));
    };
    let (anon, file, shmem, _) = mmkit::kernel::task::rss_parts(mm);
    let hwm = mm.hiwater_rss.max(mm.rss()) * 4;
    Some((
        f.min_flt,
        f.maj_flt,
        hwm,
        (anon * 4, file * 4, shmem * 4),
        mm.proc_maps(),
    ))
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
pub(super) fn syscall_exit(
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
    let kind_probe = k.translation_lookup(&p.mm().pt, cr2 & !0xfff);
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
            let after = k.translation_lookup(&p.mm().pt, cr2 & !0xfff);
            let class = classify(k, kind_probe, after, error_code);
            p.faults_by_kind[class] += 1;
            p.sched.kinds.entry(p.pid).or_default()[class] += 1;
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
        // VM_FAULT_OOM: pagefault_out_of_memory → the OOM killer picks a victim and kills
        // it (its memory is freed at once). Another process's threads end when they are
        // next scheduled, and the faulting access is made again; the faulting process
        // itself, or no victim at all, ends here.
        let gfp = mmkit::gfp::GFP_HIGHUSER_MOVABLE;
        // The run's first process may be the victim: what `--stat` reports of it is what
        // it was when it was killed (its faults, its peak), not an empty task.
        let first = exit_stats(p, p.sched.first);
        let victim = p.tasks.out_of_memory(p.k, cpu, p.pid, gfp, 0);
        if victim == Some(p.sched.first) {
            p.sched.oom_killed_first = first;
        }
        if let Some(v) = victim.filter(|&v| v != p.pid) {
            p.kill_parked(v);
            return;
        }
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
