//! Process calls (`kernel/fork.c`: `kernel_clone`, `copy_process`; `fs/exec.c`:
//! `do_execveat_common`; `kernel/exit.c`: `do_wait`; `kernel/sys.c`: process groups and
//! sessions; `kernel/signal.c`: `kill`): the machine's tasks, their address spaces made by
//! mmkit (`dup_mmap` for `fork`, `execve` for exec), scheduled on one vCPU by
//! [`crate::kvm::process`].
//!
//! Not yet: threads (`CLONE_VM` without `CLONE_VFORK`, `CLONE_THREAD`) are `ENOSYS`, as is
//! `clone3`, after which glibc falls back to `clone`; signal handlers are recorded but not
//! delivered (a signal a task catches is dropped).

use super::{Proc, SysResult, EFAULT, EINVAL};
use crate::exec::{with_exec_params, ExecSpec};
use crate::kvm::process::{Parked, RunState};
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
    if f(libc::CLONE_THREAD)
        || f(libc::CLONE_SIGHAND)
        || (f(libc::CLONE_VM) && !f(libc::CLONE_VFORK))
    {
        // Threads share one address space between running tasks: not yet.
        return Err(super::ENOSYS);
    }
    if flags & !(KNOWN as u64) != 0 {
        return Err(EINVAL);
    }
    let k = p.k;
    let parent = p.pid;
    let fds = p.fds.fork_copy()?;
    let vfork = f(libc::CLONE_VM);
    let child = if vfork {
        p.tasks.vfork(parent)
    } else {
        p.tasks.fork(k, cpu, parent)
    }
    .map_err(errno)?;
    let tid = child.to_le_bytes();
    if f(libc::CLONE_PARENT_SETTID) && p.write_user(cpu, ptid, &tid).is_err() {
        undo_clone(p, cpu, child, vfork);
        return Err(EFAULT);
    }
    if f(libc::CLONE_CHILD_SETTID) {
        let ok = match p.tasks.mm_mut(child) {
            Ok(mm) => k.copy_to_user(cpu, mm, ctid, &tid).is_ok(),
            Err(_) => false,
        };
        if !ok {
            undo_clone(p, cpu, child, vfork);
            return Err(EFAULT);
        }
    }
    let grp = p.pgrp_of(parent).unwrap_or((parent, parent));
    p.sched.pgrp.insert(child, grp);
    p.sched.parked.insert(
        child,
        Parked::child_of(
            p,
            child,
            fds,
            vfork.then_some(parent),
            if f(libc::CLONE_CHILD_CLEARTID) {
                ctid
            } else {
                0
            },
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

/// Take back a child whose creation failed half way.
fn undo_clone(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, child: Pid, vfork: bool) {
    let k = p.k;
    if vfork {
        let mm = p.tasks.get_mut(child).and_then(|t| t.mm.take());
        if let Some(t) = p.tasks.get_mut(p.pid) {
            t.mm = mm;
        }
    }
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
    // A vfork child execs out of its parent's address space: take it off the child first
    // (the exec must not tear it down), and give it back to the child if the exec fails.
    let lent = match p.vfork_parent {
        Some(_) => p.tasks.get_mut(me).and_then(|t| t.mm.take()),
        None => None,
    };
    let (m, tasks) = (p.m, &mut p.tasks);
    let cred = crate::hostfs::host_cred();
    let r = with_exec_params(m, &spec, &cred, |file, params, interp| {
        tasks.exec(k, cpu, me, file, params, interp)
    })
    .and_then(|r| r);
    if let Err(e) = r {
        if let (Some(mm), Some(t)) = (lent, p.tasks.get_mut(me)) {
            t.mm = Some(mm);
        }
        return Err(errno(e));
    }
    if let Some(mm) = lent {
        // mm_release: the parent gets its address space back and wakes.
        let new = p.tasks.get_mut(me).and_then(|t| t.mm.replace(mm));
        p.vfork_done(cpu);
        if let Some(t) = p.tasks.get_mut(me) {
            t.mm = new;
        }
    }
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
    let matches = |pid: Pid, pgid: Pid| match want {
        -1 => true,
        0 => pgid == my_pgid,
        w if w < -1 => pgid == (-w) as Pid,
        w => pid == w as Pid,
    };
    let mut any = false;
    let mut zombie = None;
    for t in p.tasks.iter().filter(|t| t.ppid == me) {
        let pgid = p.sched.pgrp.get(&t.pid).map_or(t.pid, |g| g.0);
        if matches(t.pid, pgid) {
            any = true;
            if t.state == TaskState::Zombie {
                zombie = Some(t.pid);
                break;
            }
        }
    }
    if !any {
        return Err(-(libc::ECHILD as i64));
    }
    let Some(z) = zombie else {
        if options & libc::WNOHANG != 0 {
            return Ok(0);
        }
        return p.block();
    };
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
    Ok(pid as i64)
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
            .filter(|x| p.pgrp_of(*x).is_some_and(|g| g.0 == (-t) as Pid))
            .collect(),
        (_, t) if t > 0 => vec![t as Pid],
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
        if zombie || p.signal_task(t, info).is_ok() {
            sent += 1;
        }
    }
    if sent == 0 {
        return Err(-(libc::ESRCH as i64));
    }
    Ok(0)
}

impl Parked {
    /// The parked state of a new child of the running task: its descriptors, its signal
    /// actions and mask, ready to run once it has registers.
    pub(crate) fn child_of(
        p: &Proc<'_>,
        pid: Pid,
        fds: super::FdTable,
        vfork_parent: Option<Pid>,
        clear_child_tid: u64,
    ) -> Parked {
        Parked::new(
            pid,
            fds,
            p.exe.clone(),
            p.argv.clone(),
            p.sigactions.clone(),
            p.sigmask,
            p.sigaltstack,
            vfork_parent,
            clear_child_tid,
            RunState::Runnable,
        )
    }
}
