//! Process calls (`kernel/fork.c`: `kernel_clone`, `copy_process`; `fs/exec.c`:
//! `do_execveat_common`; `kernel/exit.c`: `do_wait`; `kernel/sys.c`: process groups and
//! sessions; `kernel/signal.c`: `kill`): the machine's tasks, their address spaces made by
//! mmkit (`dup_mmap` for `fork`, `execve` for exec), scheduled on the machine's vCPUs by
//! [`crate::kvm::process`].
//!
//! Threads (`CLONE_THREAD`) share their process's address space, descriptors and signal
//! actions and run on the machine's vCPUs; `futex` puts them to sleep and wakes them.
//! `clone3` is the same `clone` with its arguments in a `struct clone_args` (glibc's
//! `pthread_create` and `posix_spawn` use it). A process made with `CLONE_VM` but not
//! `CLONE_THREAD` (`vfork`, `posix_spawn`, or a process sharing memory) runs in its
//! parent's address space (`TaskTable::clone_vm`), with its own descriptors and signal
//! actions; `CLONE_VFORK` makes the parent wait until the child execs or exits. Not yet:
//! signal actions shared between processes (`CLONE_SIGHAND` without `CLONE_THREAD`,
//! `ENOSYS`).

use super::{Proc, SysResult, EFAULT, EINVAL};
use crate::exec::{with_exec_params, ExecSpec};
use crate::kvm::sched::{FutexWait, Parked, RunState, Shared};
use mmkit::kernel::task::{Pid, TaskState};
use mmkit::CpuGuard;

/// A child `clone` made; the scheduler gives it the parent's registers once the call
/// returns (`copy_thread`).
#[derive(Copy, Clone, Debug)]
pub struct NewChild {
    /// Its pid.
    pub pid: Pid,
    /// `newsp` (0: the parent's stack pointer).
    pub stack: u64,
    /// `CLONE_SETTLS`: its FS base.
    pub tls: Option<u64>,
}

/// `MAX_ARG_STRLEN`: the longest argument or environment string.
const MAX_ARG_STRLEN: usize = 32 * 4096;
/// What `argv` and `envp` may take together, pointers included: a quarter of the default
/// 8 MiB stack limit (`bprm_stack_limits`).
const ARG_MAX: usize = (8 << 20) / 4;

fn errno(e: mmkit::Errno) -> i64 {
    -(e.code() as i64)
}

/// `clone(flags, newsp, parent_tid, child_tid, tls)`, and `fork`/`vfork` through it.
pub fn sys_clone(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let (flags, newsp, ptid, ctid, tls) = (a[0], a[1], a[2], a[3], a[4]);
    let f = |c: i32| flags & c as u64 != 0;
    const KNOWN: i32 = libc::CLONE_VM
        | libc::CLONE_VFORK
        | libc::CLONE_SETTLS
        | libc::CLONE_PARENT_SETTID
        | libc::CLONE_CHILD_SETTID
        | libc::CLONE_CHILD_CLEARTID
        | 0xff;
    // copy_process's checks of combinations that make no sense come first: EINVAL, whatever
    // this machine has yet.
    if (f(libc::CLONE_NEWNS) || f(libc::CLONE_NEWUSER)) && f(libc::CLONE_FS)
        || f(libc::CLONE_THREAD) && !f(libc::CLONE_SIGHAND)
        || f(libc::CLONE_SIGHAND) && !f(libc::CLONE_VM)
    {
        return Err(EINVAL);
    }
    if f(libc::CLONE_THREAD) {
        return clone_thread(p, cpu, a);
    }
    if f(libc::CLONE_SIGHAND) {
        // Signal actions shared between processes (not threads): not yet.
        return Err(super::ENOSYS);
    }
    if flags & !(KNOWN as u64) != 0 {
        return Err(EINVAL);
    }
    let k = p.k;
    let parent = p.pid;
    let fds = p.fds.fork_copy()?;
    let vfork = f(libc::CLONE_VFORK);
    let child = if f(libc::CLONE_VM) {
        p.tasks.clone_vm(parent)
    } else {
        p.tasks.fork(k, cpu, parent)
    }
    .map_err(errno)?;
    let tid = child.to_le_bytes();
    if f(libc::CLONE_PARENT_SETTID) && p.write_user(cpu, ptid, &tid).is_err() {
        undo_clone(p, cpu, child);
        return Err(EFAULT);
    }
    if f(libc::CLONE_CHILD_SETTID) {
        let ok = match p.tasks.mm_mut(child) {
            Ok(mm) => k.copy_to_user(cpu, mm, ctid, &tid).is_ok(),
            Err(_) => false,
        };
        if !ok {
            undo_clone(p, cpu, child);
            return Err(EFAULT);
        }
    }
    let grp = p.pgrp_of(parent).unwrap_or((parent, parent));
    p.sched.pgrp.insert(child, grp);
    p.sched.started.insert(child, super::procfs::boot_ticks());
    p.sched.shared.insert(
        child,
        Shared::new(fds, p.exe.clone(), p.argv.clone(), p.sigactions.clone()),
    );
    p.sched.parked.insert(
        child,
        Parked::new(
            child,
            child,
            p.sigmask,
            p.sigaltstack,
            vfork.then_some(parent),
            if f(libc::CLONE_CHILD_CLEARTID) {
                ctid
            } else {
                0
            },
            RunState::Runnable,
        ),
    );
    p.new_child = Some(NewChild {
        pid: child,
        stack: newsp,
        tls: f(libc::CLONE_SETTLS).then_some(tls),
    });
    if vfork {
        p.vfork_wait = Some(child);
    }
    Ok(child as i64)
}

/// `sizeof(struct clone_args)` of its first version (up to `tls`) and of the version with
/// `cgroup`, the largest this kernel knows.
const CLONE_ARGS_SIZE_VER0: u64 = 64;
const CLONE_ARGS_SIZE_VER2: u64 = 88;
/// `CLONE_CLEAR_SIGHAND`, `CLONE_INTO_CGROUP`: `clone3`'s flags past 32 bits.
const CLONE_CLEAR_SIGHAND: u64 = 0x1_0000_0000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
/// `CLONE_PIDFD`.
const CLONE_PIDFD: u64 = 0x1000;

/// `clone3(uargs, size)`: `struct clone_args` read as `copy_clone_args_from_user` reads it
/// (smaller than the first version: `EINVAL`; larger than a page: `E2BIG`; larger than
/// this kernel's version: the rest must be zeros, else `E2BIG`), checked as
/// `clone3_args_valid` checks it, then the same `clone` as the legacy call with the stack
/// pointer at `stack + stack_size`. `CLONE_CLEAR_SIGHAND` resets the child's handlers. What
/// the machine has no place for is `EINVAL`: `set_tid` (no pid namespaces),
/// `CLONE_INTO_CGROUP` (no cgroups) and `CLONE_PIDFD` (no pidfds).
pub fn sys_clone3(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let (uargs, size) = (a[0], a[1]);
    if size > 4096 {
        return Err(-(libc::E2BIG as i64));
    }
    if size < CLONE_ARGS_SIZE_VER0 {
        return Err(EINVAL);
    }
    let known = size.min(CLONE_ARGS_SIZE_VER2);
    let mut raw = p.read_user(cpu, uargs, known as usize)?;
    if size > known {
        let tail = p.read_user(cpu, uargs + known, (size - known) as usize)?;
        if tail.iter().any(|&b| b != 0) {
            return Err(-(libc::E2BIG as i64));
        }
    }
    raw.resize(CLONE_ARGS_SIZE_VER2 as usize, 0);
    let w = |i: usize| u64::from_le_bytes(raw[i * 8..i * 8 + 8].try_into().expect("8"));
    let (flags, pidfd, child_tid, parent_tid, exit_signal) = (w(0), w(1), w(2), w(3), w(4));
    let (stack, stack_size, tls, set_tid, set_tid_size, cgroup) =
        (w(5), w(6), w(7), w(8), w(9), w(10));
    let _ = pidfd;
    // copy_clone_args_from_user's checks.
    if set_tid_size > 32 || (set_tid == 0) != (set_tid_size == 0) {
        return Err(EINVAL);
    }
    if exit_signal & !0xff != 0 || exit_signal > 64 {
        return Err(EINVAL);
    }
    if flags & CLONE_INTO_CGROUP != 0 && (cgroup > i32::MAX as u64 || size < CLONE_ARGS_SIZE_VER2) {
        return Err(EINVAL);
    }
    // clone3_args_valid.
    if flags & !(0xffff_ff00 | CLONE_CLEAR_SIGHAND | CLONE_INTO_CGROUP) != 0 {
        return Err(EINVAL);
    }
    let sighand = libc::CLONE_SIGHAND as u64;
    if flags & (sighand | CLONE_CLEAR_SIGHAND) == sighand | CLONE_CLEAR_SIGHAND {
        return Err(EINVAL);
    }
    if flags & (libc::CLONE_THREAD | libc::CLONE_PARENT) as u64 != 0 && exit_signal != 0 {
        return Err(EINVAL);
    }
    let sp = match (stack, stack_size) {
        (0, 0) => 0,
        (0, _) | (_, 0) => return Err(EINVAL),
        (s, n) => match s.checked_add(n) {
            Some(end) if end <= mmkit::mm::mm_types::TASK_SIZE => end,
            _ => return Err(EINVAL),
        },
    };
    if set_tid != 0 || flags & (CLONE_INTO_CGROUP | CLONE_PIDFD) != 0 {
        return Err(EINVAL);
    }
    let legacy = (flags & 0xffff_ff00) | exit_signal;
    let child = sys_clone(p, cpu, [legacy, sp, parent_tid, child_tid, tls, 0])?;
    if flags & CLONE_CLEAR_SIGHAND != 0 {
        if let Some(sh) = p.sched.shared.get_mut(&(child as Pid)) {
            sh.clear_handlers();
        }
    }
    Ok(child)
}

/// Take back a child whose creation failed half way.
fn undo_clone(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, child: Pid) {
    let k = p.k;
    let _ = p.tasks.exit(k, cpu, child, 0);
    let _ = p.tasks.wait(p.pid, Some(child));
}

/// A NULL-terminated array of user strings (`argv`, `envp`), bounded as `copy_strings`
/// bounds it: each string at most `MAX_ARG_STRLEN`, all of them with their pointers within
/// `budget` (`E2BIG`).
fn read_strv(
    p: &mut Proc<'_>,
    cpu: &CpuGuard<'_>,
    mut addr: u64,
    budget: &mut usize,
) -> Result<Vec<String>, i64> {
    let mut out = Vec::new();
    if addr == 0 {
        return Ok(out);
    }
    loop {
        let ptr = p.read_u64(cpu, addr)?;
        if ptr == 0 {
            return Ok(out);
        }
        let s = p.read_cstr(cpu, ptr, MAX_ARG_STRLEN).map_err(|e| {
            if e == EFAULT {
                e
            } else {
                -(libc::E2BIG as i64)
            }
        })?;
        let cost = s.len() + 1 + 8;
        *budget = budget.checked_sub(cost).ok_or(-(libc::E2BIG as i64))?;
        out.push(String::from_utf8_lossy(&s).into_owned());
        addr += 8;
    }
}

/// `execveat(dirfd, path, argv, envp, flags)` (and `execve`): mmkit's exec of the host
/// file (`#!` scripts and ELF interpreters included) into a new address space; on success
/// the old one goes, descriptors marked close-on-exec close, caught signals return to
/// their default action, and a `vfork` parent wakes.
pub fn sys_execve(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let (dirfd, flags) = (a[0] as i64, a[4] as i32);
    if flags & !(libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW) != 0 {
        return Err(EINVAL);
    }
    let name = p.read_cstr(cpu, a[1], super::PATH_MAX)?;
    let name = String::from_utf8(name).map_err(|_| -(libc::ENOENT as i64))?;
    let path = if dirfd as i32 == libc::AT_FDCWD || name.starts_with('/') {
        name
    } else {
        // Relative to a directory descriptor: the host resolves it through /proc.
        let h = p
            .fds
            .get(dirfd)
            .and_then(|f| f.host())
            .ok_or(super::EBADF)?;
        format!("/proc/self/fd/{h}/{name}")
    };
    if path.is_empty() {
        return Err(-(libc::ENOENT as i64));
    }
    let mut budget = ARG_MAX;
    let argv = read_strv(p, cpu, a[2], &mut budget)?;
    let envp = read_strv(p, cpu, a[3], &mut budget)?;
    let spec = ExecSpec {
        path: &path,
        argv: argv.clone(),
        envp,
        no_aslr: !p.randomize,
    };
    let k = p.k;
    let me = p.pid;
    // exec_mmap lets go of the old address space: a vfork child's (or any CLONE_VM
    // child's) stays with the parent that shares it.
    // Its faults in the shared address space so far are its own (the exec ends the sharing).
    p.charge_shared_faults();
    let (m, tasks) = (p.m, &mut p.tasks);
    let cred = crate::hostfs::host_cred();
    let r = with_exec_params(m, cpu, &spec, &cred, |file, params, interp| {
        tasks.exec(k, cpu, me, file, params, interp)
    })
    .and_then(|r| r);
    if let Err(e) = r {
        return Err(errno(e));
    }
    // mm_release: a vfork parent wakes.
    p.vfork_done();
    p.exe = path;
    p.argv = argv;
    p.fds.close_on_exec();
    // flush_signal_handlers: caught signals go back to SIG_DFL; ignored ones stay ignored.
    for s in p.sigactions.iter_mut() {
        let h = u64::from_le_bytes(s[..8].try_into().expect("8"));
        if h > 1 {
            *s = [0; 32];
        }
    }
    p.sigaltstack = [0; 24];
    p.clear_child_tid = 0;
    p.end_other_threads();
    p.exec_done = true;
    Ok(0)
}

/// `wait4(pid, status, options, rusage)`: reap an exited child — a given one (`pid > 0`),
/// any (`-1`), or one of a process group (`0`: the caller's, `< -1`: `-pid`'s); sleeps
/// until one exits unless `WNOHANG`.
pub fn sys_wait4(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let (want, status, options, rusage) = (a[0] as i32, a[1], a[2] as i32, a[3]);
    const WALL: i32 = 0x4000_0000;
    const WCLONE: i32 = 0x8000_0000u32 as i32;
    const WNOTHREAD: i32 = 0x2000_0000;
    if options & !(libc::WNOHANG | libc::WUNTRACED | libc::WCONTINUED | WALL | WCLONE | WNOTHREAD)
        != 0
    {
        return Err(EINVAL);
    }
    if want == i32::MIN {
        return Err(-(libc::ESRCH as i64));
    }
    let me = p.pid;
    let my_pgid = p.pgrp_of(me).map_or(me, |g| g.0);
    let which = match want {
        -1 => Which::All,
        0 => Which::Pgid(my_pgid),
        w if w < -1 => Which::Pgid(w.unsigned_abs()),
        w => Which::Pid(w as Pid),
    };
    let events = WaitFor {
        exited: true,
        stopped: options & libc::WUNTRACED != 0,
        continued: options & libc::WCONTINUED != 0,
    };
    let Some((z, ev)) = waitable_child(p, which, events)? else {
        if options & libc::WNOHANG != 0 {
            return Ok(0);
        }
        return p.block();
    };
    if let Some(word) = match ev {
        Event::Exited => None,
        Event::Stopped(sig) => Some((sig << 8) | 0x7f),
        Event::Continued => Some(0xffff),
    } {
        // A stop or continue is told once (wait_task_stopped/continued); the child stays.
        p.sched.jobs.reports.remove(&z);
        if status != 0 {
            p.write_user(cpu, status, &word.to_le_bytes())?;
        }
        if rusage != 0 {
            p.write_user(cpu, rusage, &[0u8; 144])?;
        }
        return Ok(z as i64);
    }
    let f = p.tasks.get(z).map(|t| {
        let own = t.fault_counts();
        (
            own.min_flt + t.child_faults.min_flt,
            own.maj_flt + t.child_faults.maj_flt,
        )
    });
    let code = p.tasks.get(z).map_or(0, |t| t.exit_code);
    if status != 0 {
        p.write_user(cpu, status, &code.to_le_bytes())?;
    }
    if rusage != 0 {
        // struct rusage: two timevals, then longs from ru_maxrss; ru_minflt and ru_majflt
        // are the 5th and 6th.
        let mut r = [0u8; 144];
        let (min, maj) = f.unwrap_or_default();
        r[64..72].copy_from_slice(&min.to_le_bytes());
        r[72..80].copy_from_slice(&maj.to_le_bytes());
        p.write_user(cpu, rusage, &r)?;
    }
    let (pid, _) = p.tasks.wait(me, Some(z)).map_err(errno)?;
    p.sched.pgrp.remove(&pid);
    p.sched.started.remove(&pid);
    p.sched.runtime.remove(&pid);
    p.sched.jobs.reports.remove(&pid);
    Ok(pid as i64)
}

/// The children `wait4`/`waitid` look at.
#[derive(Copy, Clone)]
enum Which {
    /// Any child.
    All,
    /// The child of this pid.
    Pid(Pid),
    /// The children in this process group.
    Pgid(Pid),
}

/// What a `wait` looks for (`WEXITED`, `WUNTRACED`/`WSTOPPED`, `WCONTINUED`).
#[derive(Copy, Clone)]
struct WaitFor {
    exited: bool,
    stopped: bool,
    continued: bool,
}

/// What a child has to report.
#[derive(Copy, Clone, PartialEq, Eq)]
enum Event {
    /// It exited (a zombie).
    Exited,
    /// It stopped, with this signal, and its parent was not told yet.
    Stopped(i32),
    /// It was continued, and its parent was not told yet.
    Continued,
}

/// The first child of the caller that `which` names with something `want`ed to report
/// (`wait_consider_task`: an exit, then a stop, then a continue), if any; `ECHILD` when
/// `which` names no child at all.
fn waitable_child(p: &Proc<'_>, which: Which, want: WaitFor) -> Result<Option<(Pid, Event)>, i64> {
    let me = p.pid;
    let mut any = false;
    for t in p.tasks.iter().filter(|t| t.ppid == me) {
        let pgid = p.sched.pgrp.get(&t.pid).map_or(t.pid, |g| g.0);
        let named = match which {
            Which::All => true,
            Which::Pid(x) => t.pid == x,
            Which::Pgid(g) => pgid == g,
        };
        if named {
            any = true;
            if t.state == TaskState::Zombie {
                if want.exited {
                    return Ok(Some((t.pid, Event::Exited)));
                }
                continue;
            }
            match p.sched.jobs.reports.get(&t.pid) {
                Some(&(crate::kvm::signal::CLD_STOPPED, sig))
                    if want.stopped && p.is_stopped(t.pid) =>
                {
                    return Ok(Some((t.pid, Event::Stopped(sig))));
                }
                Some(&(crate::kvm::signal::CLD_CONTINUED, _)) if want.continued => {
                    return Ok(Some((t.pid, Event::Continued)));
                }
                _ => {}
            }
        }
    }
    if any {
        Ok(None)
    } else {
        Err(-(libc::ECHILD as i64))
    }
}

/// `waitid(idtype, id, infop, options, rusage)`: `P_ALL`, `P_PID`, `P_PGID` (an id of 0:
/// the caller's group); `WEXITED` reaps (`WNOWAIT` leaves the zombie), `WNOHANG` returns 0
/// with a zeroed `siginfo` when no child has exited; the child's state goes to `infop` as
/// `SIGCHLD` with `CLD_EXITED`/`CLD_KILLED`/`CLD_DUMPED`. `P_PIDFD`: no descriptor here
/// is a pidfd (`EBADF` for a closed one, `EINVAL` otherwise).
pub fn sys_waitid(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    const P_ALL: u64 = 0;
    const P_PID: u64 = 1;
    const P_PGID: u64 = 2;
    const P_PIDFD: u64 = 3;
    const WNOWAIT: i32 = 0x0100_0000;
    const WALL: i32 = 0x4000_0000;
    const WCLONE: i32 = 0x8000_0000u32 as i32;
    const WNOTHREAD: i32 = 0x2000_0000;
    let (idtype, id, infop, options, rusage) = (a[0], a[1] as i32, a[2], a[3] as i32, a[4]);
    let known = libc::WNOHANG
        | WNOWAIT
        | libc::WEXITED
        | libc::WSTOPPED
        | libc::WCONTINUED
        | WALL
        | WCLONE
        | WNOTHREAD;
    if options & !known != 0 || options & (libc::WEXITED | libc::WSTOPPED | libc::WCONTINUED) == 0 {
        return Err(EINVAL);
    }
    let me = p.pid;
    let which = match idtype {
        P_ALL => Which::All,
        P_PID if id > 0 => Which::Pid(id as Pid),
        P_PGID if id == 0 => Which::Pgid(p.pgrp_of(me).map_or(me, |g| g.0)),
        P_PGID if id > 0 => Which::Pgid(id as Pid),
        P_PIDFD => {
            return Err(if p.fds.get(id as i64).is_some() {
                EINVAL
            } else {
                super::EBADF
            })
        }
        _ => return Err(EINVAL),
    };
    let want = WaitFor {
        exited: options & libc::WEXITED != 0,
        stopped: options & libc::WSTOPPED != 0,
        continued: options & libc::WCONTINUED != 0,
    };
    let Some((z, ev)) = waitable_child(p, which, want)? else {
        if options & libc::WNOHANG != 0 {
            if infop != 0 {
                p.write_user(cpu, infop, &[0u8; 128])?;
            }
            return Ok(0);
        }
        return p.block();
    };
    let code = p.tasks.get(z).map_or(0, |t| t.exit_code);
    let (cld, status) = if let Event::Stopped(sig) = ev {
        (crate::kvm::signal::CLD_STOPPED, sig)
    } else if ev == Event::Continued {
        (crate::kvm::signal::CLD_CONTINUED, libc::SIGCONT)
    } else if code & 0x7f == 0 {
        (1i32, (code >> 8) & 0xff) // CLD_EXITED
    } else if code & 0x80 != 0 {
        (3, code & 0x7f) // CLD_DUMPED
    } else {
        (2, code & 0x7f) // CLD_KILLED
    };
    if infop != 0 {
        let mut si = [0u8; 128];
        si[..4].copy_from_slice(&libc::SIGCHLD.to_le_bytes());
        si[8..12].copy_from_slice(&cld.to_le_bytes());
        si[16..20].copy_from_slice(&z.to_le_bytes());
        // SAFETY: getuid cannot fail.
        si[20..24].copy_from_slice(&unsafe { libc::getuid() }.to_le_bytes());
        si[24..28].copy_from_slice(&status.to_le_bytes());
        p.write_user(cpu, infop, &si)?;
    }
    if rusage != 0 {
        let mut r = [0u8; 144];
        if let Some(t) = p.tasks.get(z) {
            let own = t.fault_counts();
            let min = own.min_flt + t.child_faults.min_flt;
            let maj = own.maj_flt + t.child_faults.maj_flt;
            r[64..72].copy_from_slice(&min.to_le_bytes());
            r[72..80].copy_from_slice(&maj.to_le_bytes());
        }
        p.write_user(cpu, rusage, &r)?;
    }
    if ev != Event::Exited {
        if options & WNOWAIT == 0 {
            p.sched.jobs.reports.remove(&z);
        }
        return Ok(0);
    }
    if options & WNOWAIT == 0 {
        let (pid, _) = p.tasks.wait(me, Some(z)).map_err(errno)?;
        p.sched.pgrp.remove(&pid);
        p.sched.started.remove(&pid);
        p.sched.runtime.remove(&pid);
        p.sched.jobs.reports.remove(&pid);
    }
    Ok(0)
}

/// `getppid`: the parent's pid (1 for the first task, whose parent is outside the
/// machine, as init would be).
pub fn sys_getppid(p: &mut Proc<'_>, _cpu: &CpuGuard<'_>, _a: [u64; 6]) -> SysResult {
    let ppid = p.tasks.get(p.pid).map_or(0, |t| t.ppid);
    Ok(if ppid == 0 { 1 } else { ppid as i64 })
}

/// `getpgid(pid)` (and `getpgrp`: pid 0).
pub fn sys_getpgid(p: &mut Proc<'_>, _cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let pid = if a[0] == 0 { p.pid } else { a[0] as Pid };
    p.pgrp_of(pid)
        .map(|g| g.0 as i64)
        .ok_or(-(libc::ESRCH as i64))
}

/// `getsid(pid)`.
pub fn sys_getsid(p: &mut Proc<'_>, _cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let pid = if a[0] == 0 { p.pid } else { a[0] as Pid };
    p.pgrp_of(pid)
        .map(|g| g.1 as i64)
        .ok_or(-(libc::ESRCH as i64))
}

/// `setpgid(pid, pgid)`: the caller or one of its children, into a group of its session.
pub fn sys_setpgid(p: &mut Proc<'_>, _cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let me = p.pid;
    let pid = if a[0] == 0 { me } else { a[0] as Pid };
    let pgid = if a[1] == 0 { pid } else { a[1] as Pid };
    if (a[1] as i64) < 0 {
        return Err(EINVAL);
    }
    let is_child = p.tasks.get(pid).is_some_and(|t| t.ppid == me);
    if pid != me && !is_child {
        return Err(-(libc::ESRCH as i64));
    }
    let (_, sid) = p.pgrp_of(pid).ok_or(-(libc::ESRCH as i64))?;
    let (_, my_sid) = p.pgrp_of(me).unwrap_or((me, me));
    if sid == pid || sid != my_sid {
        // A session leader, or a child in another session.
        return Err(-(libc::EPERM as i64));
    }
    if pgid != pid && !p.sched.pgrp.iter().any(|(_, g)| g.0 == pgid && g.1 == sid) {
        return Err(-(libc::EPERM as i64));
    }
    p.sched.pgrp.insert(pid, (pgid, sid));
    Ok(0)
}

/// `setsid`: a new session and group led by the caller (`EPERM` for a group leader).
pub fn sys_setsid(p: &mut Proc<'_>, _cpu: &CpuGuard<'_>, _a: [u64; 6]) -> SysResult {
    let me = p.pid;
    if p.sched.pgrp.values().any(|g| g.0 == me) {
        // A process group with the caller's id exists (it leads one).
        return Err(-(libc::EPERM as i64));
    }
    p.sched.pgrp.insert(me, (me, me));
    Ok(me as i64)
}

/// `set_tid_address`: cleared at exit; returns the caller's tid.
pub fn sys_set_tid_address(p: &mut Proc<'_>, _cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    p.clear_child_tid = a[0];
    Ok(p.pid as i64)
}

/// `kill`/`tkill`/`tgkill`: to one task, a process group (`0`: the caller's, `< -1`), or
/// every task but the caller (`-1`). A signal whose action is the default one ends the
/// task (or does nothing, for the ignored ones); caught signals are not delivered yet.
pub fn sys_kill(p: &mut Proc<'_>, _cpu: &CpuGuard<'_>, nr: u64, a: [u64; 6]) -> SysResult {
    let (target, sig) = match nr {
        234 => (a[1] as i32, a[2] as i32),
        _ => (a[0] as i32, a[1] as i32),
    };
    if !(0..=64).contains(&sig) {
        return Err(EINVAL);
    }
    let me = p.pid;
    let live = p.live_pids();
    let targets: Vec<Pid> = match (nr, target) {
        (62, 0) => {
            let g = p.pgrp_of(me).map_or(me, |g| g.0);
            live.into_iter()
                .filter(|t| p.pgrp_of(*t).is_some_and(|x| x.0 == g))
                .collect()
        }
        (62, -1) => live.into_iter().filter(|&t| t != me).collect(),
        (62, t) if t < -1 => live
            .into_iter()
            .filter(|x| p.pgrp_of(*x).is_some_and(|g| g.0 == t.unsigned_abs()))
            .collect(),
        (62, t) if t > 0 => vec![t as Pid],
        (_, t) if t > 0 => {
            // tkill/tgkill: to one thread.
            if nr == 234 && p.thread_group(t as Pid) != Some(a[0] as Pid) {
                return Err(-(libc::ESRCH as i64));
            }
            let info = crate::kvm::signal::SigInfo {
                signo: sig,
                code: -6, // SI_TKILL
                addr: 0,
                pid: me,
            };
            let pid = p.thread_group(t as Pid).ok_or(-(libc::ESRCH as i64))?;
            if sig != 0 {
                p.prepare_signal(pid, sig);
            }
            p.signal_thread(t as Pid, info)?;
            return Ok(0);
        }
        _ => return Err(EINVAL),
    };
    if targets.is_empty() {
        return Err(-(libc::ESRCH as i64));
    }
    let mut sent = 0;
    for t in targets {
        // A zombie still takes (and ignores) a signal.
        let zombie = p.tasks.get(t).is_some_and(|x| x.state == TaskState::Zombie);
        let info = crate::kvm::signal::SigInfo {
            signo: sig,
            code: crate::kvm::signal::SI_USER,
            addr: 0,
            pid: me,
        };
        if !zombie && sig != 0 {
            p.prepare_signal(t, sig);
        }
        if zombie || p.signal_task(t, info).is_ok() {
            sent += 1;
        }
    }
    if sent == 0 {
        return Err(-(libc::ESRCH as i64));
    }
    Ok(0)
}

/// `clone` of a thread (glibc's `pthread_create`: `CLONE_VM | CLONE_FS | CLONE_FILES |
/// CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM | CLONE_SETTLS | CLONE_PARENT_SETTID |
/// CLONE_CHILD_CLEARTID`): a new thread of the running process on the stack and TLS it
/// was given, sharing everything but its registers, signal mask and pending signals.
fn clone_thread(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let (flags, newsp, ptid, ctid, tls) = (a[0], a[1], a[2], a[3], a[4]);
    let f = |c: i32| flags & c as u64 != 0;
    // copy_process's rules: a thread shares signal actions, which need shared memory.
    if !f(libc::CLONE_SIGHAND) || !f(libc::CLONE_VM) {
        return Err(EINVAL);
    }
    const KNOWN: i32 = libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD
        | libc::CLONE_SYSVSEM
        | libc::CLONE_SETTLS
        | libc::CLONE_PARENT_SETTID
        | libc::CLONE_CHILD_SETTID
        | libc::CLONE_CHILD_CLEARTID
        | libc::CLONE_DETACHED;
    if flags & !(KNOWN as u64) != 0 || !f(libc::CLONE_FILES) || !f(libc::CLONE_FS) {
        // Threads with their own descriptor table or root: not yet.
        return Err(EINVAL);
    }
    let tid = p.tasks.alloc_tid().map_err(errno)?;
    let bytes = tid.to_le_bytes();
    if (f(libc::CLONE_PARENT_SETTID) && p.write_user(cpu, ptid, &bytes).is_err())
        || (f(libc::CLONE_CHILD_SETTID) && p.write_user(cpu, ctid, &bytes).is_err())
    {
        p.tasks.free_tid(tid);
        return Err(EFAULT);
    }
    let t = Parked::new(
        p.pid,
        tid,
        p.sigmask,
        [0; 24], // a new thread has no alternate stack
        None,
        if f(libc::CLONE_CHILD_CLEARTID) {
            ctid
        } else {
            0
        },
        RunState::Runnable,
    );
    p.sched.parked.insert(tid, t);
    // A new thread is named as the thread that made it.
    let comm = p.comm_of(p.pid, p.tid);
    p.sched.thread_comm.insert(tid, comm);
    p.new_child = Some(NewChild {
        pid: tid,
        stack: newsp,
        tls: f(libc::CLONE_SETTLS).then_some(tls),
    });
    Ok(tid as i64)
}

/// `exit`: the calling thread ends; the process with it when it is the last one.
pub fn sys_exit(p: &mut Proc<'_>, _cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    p.thread_exit = !p.last_thread();
    p.exit = Some(crate::kvm::process::Status::Exited((a[0] & 0xff) as i32));
    Ok(0)
}

/// A `struct timespec` from user memory, checked as `timespec64_valid`.
fn read_timespec(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, addr: u64) -> Result<(i64, i64), i64> {
    let b = p.read_user(cpu, addr, 16)?;
    let sec = i64::from_le_bytes(b[..8].try_into().expect("8"));
    let nsec = i64::from_le_bytes(b[8..].try_into().expect("8"));
    if sec < 0 || !(0..1_000_000_000).contains(&nsec) {
        return Err(EINVAL);
    }
    Ok((sec, nsec))
}

/// `futex(uaddr, op, val, timeout, uaddr2, val3)`: `FUTEX_WAIT`/`FUTEX_WAIT_BITSET` sleep
/// while the word still holds `val` (checked once, when the call starts), until a
/// `FUTEX_WAKE`/`FUTEX_WAKE_BITSET` on the same futex, a signal, or the timeout (relative
/// for `FUTEX_WAIT`, absolute on `CLOCK_MONOTONIC` or, with `FUTEX_CLOCK_REALTIME`,
/// `CLOCK_REALTIME` for the bitset form). Private futexes are keyed by process and
/// address, shared ones by physical address. Other operations are `ENOSYS`.
pub fn sys_futex(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    const FUTEX_WAIT: u64 = 0;
    const FUTEX_WAKE: u64 = 1;
    const FUTEX_WAIT_BITSET: u64 = 9;
    const FUTEX_WAKE_BITSET: u64 = 10;
    const FUTEX_PRIVATE_FLAG: u64 = 128;
    const FUTEX_CLOCK_REALTIME: u64 = 256;
    let (uaddr, op, val) = (a[0], a[1], a[2] as u32);
    let cmd = op & 0x7f;
    let private = op & FUTEX_PRIVATE_FLAG != 0;
    if uaddr & 3 != 0 {
        return Err(EINVAL);
    }
    match cmd {
        FUTEX_WAKE | FUTEX_WAKE_BITSET => {
            let bitset = if cmd == FUTEX_WAKE {
                u32::MAX
            } else {
                a[5] as u32
            };
            if bitset == 0 {
                return Err(EINVAL);
            }
            let key = p.futex_key(uaddr, private);
            Ok(p.futex_wake(key, (val as usize).min(i32::MAX as usize), bitset) as i64)
        }
        FUTEX_WAIT | FUTEX_WAIT_BITSET => {
            if let Some(w) = p.futex {
                // Made again after sleeping: woken, or timed out, or back to sleep.
                if w.woken {
                    (p.futex, p.deadline) = (None, None);
                    return Ok(0);
                }
                if p.deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                    (p.futex, p.deadline) = (None, None);
                    return Err(-(libc::ETIMEDOUT as i64));
                }
                return p.block();
            }
            let bitset = if cmd == FUTEX_WAIT {
                u32::MAX
            } else {
                a[5] as u32
            };
            if bitset == 0 {
                return Err(EINVAL);
            }
            let deadline = if a[3] != 0 {
                let (sec, nsec) = read_timespec(p, cpu, a[3])?;
                let wait = if cmd == FUTEX_WAIT {
                    std::time::Duration::new(sec as u64, nsec as u32)
                } else {
                    let clock = if op & FUTEX_CLOCK_REALTIME != 0 {
                        libc::CLOCK_REALTIME
                    } else {
                        libc::CLOCK_MONOTONIC
                    };
                    let mut now = libc::timespec {
                        tv_sec: 0,
                        tv_nsec: 0,
                    };
                    // SAFETY: into our own struct.
                    unsafe { libc::clock_gettime(clock, &mut now) };
                    let left = (sec as i128 * 1_000_000_000 + nsec as i128)
                        - (now.tv_sec as i128 * 1_000_000_000 + now.tv_nsec as i128);
                    std::time::Duration::from_nanos(left.clamp(0, u64::MAX as i128) as u64)
                };
                Some(super::deadline_after(wait))
            } else {
                None
            };
            let b = p.read_user(cpu, uaddr, 4)?;
            if u32::from_le_bytes(b.try_into().expect("4")) != val {
                return Err(-(libc::EAGAIN as i64));
            }
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return Err(-(libc::ETIMEDOUT as i64));
            }
            let key = p.futex_key(uaddr, private);
            p.futex = Some(FutexWait {
                key,
                bitset,
                woken: false,
            });
            p.deadline = deadline;
            p.block()
        }
        _ => Err(super::ENOSYS),
    }
}

/// What is left of process `pid`'s `ITIMER_REAL` (zero when disarmed).
fn alarm_left(p: &Proc<'_>, pid: Pid) -> (std::time::Duration, std::time::Duration) {
    p.sched.alarms.get(&pid).map_or(Default::default(), |a| {
        (
            a.0.saturating_duration_since(std::time::Instant::now()),
            a.1,
        )
    })
}

/// Arm (or with a zero value, disarm) process `pid`'s `ITIMER_REAL`.
fn arm_alarm(
    p: &mut Proc<'_>,
    pid: Pid,
    value: std::time::Duration,
    interval: std::time::Duration,
) {
    if value.is_zero() {
        p.sched.alarms.remove(&pid);
    } else {
        p.sched
            .alarms
            .insert(pid, (super::deadline_after(value), interval));
    }
}

/// `alarm(seconds)`: `SIGALRM` after that many seconds (0 cancels); returns the seconds
/// the previous alarm had left, rounded as Linux rounds them (up from half a second).
pub fn sys_alarm(p: &mut Proc<'_>, _cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let pid = p.pid;
    let (left, _) = alarm_left(p, pid);
    let secs = a[0] as u32;
    arm_alarm(
        p,
        pid,
        std::time::Duration::from_secs(secs as u64),
        Default::default(),
    );
    let mut old = left.as_secs();
    if left.subsec_micros() >= 500_000 || (old == 0 && !left.is_zero()) {
        old += 1;
    }
    Ok(old as i64)
}

/// `setitimer(which, new, old)` for `ITIMER_REAL` (the other timers count CPU time, which
/// the machine does not keep per task: `EINVAL`).
pub fn sys_setitimer(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    if a[0] as i32 != libc::ITIMER_REAL {
        return Err(EINVAL);
    }
    let pid = p.pid;
    if a[2] != 0 {
        let (left, interval) = alarm_left(p, pid);
        let tv = |d: std::time::Duration| {
            let mut b = (d.as_secs() as i64).to_le_bytes().to_vec();
            b.extend_from_slice(&(d.subsec_micros() as i64).to_le_bytes());
            b
        };
        let mut old = tv(interval);
        old.extend(tv(left));
        p.write_user(cpu, a[2], &old)?;
    }
    if a[1] != 0 {
        let b = p.read_user(cpu, a[1], 32)?;
        let w = |i: usize| i64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8"));
        let (isec, iusec, vsec, vusec) = (w(0), w(1), w(2), w(3));
        if isec < 0
            || vsec < 0
            || !(0..1_000_000).contains(&iusec)
            || !(0..1_000_000).contains(&vusec)
        {
            return Err(EINVAL);
        }
        let d = |s: i64, u: i64| std::time::Duration::new(s as u64, (u * 1000) as u32);
        arm_alarm(p, pid, d(vsec, vusec), d(isec, iusec));
    }
    Ok(0)
}

/// `pause`: sleep until a signal is delivered (then `EINTR`, never restarted).
pub fn sys_pause(p: &mut Proc<'_>, _cpu: &CpuGuard<'_>, _a: [u64; 6]) -> SysResult {
    p.no_restart = true;
    p.block()
}
