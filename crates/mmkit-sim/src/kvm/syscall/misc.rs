//! The rest a single-threaded program needs (`kernel/sys.c`, `kernel/time/`, `kernel/signal.c`,
//! `arch/x86/kernel/process_64.c`'s `arch_prctl`, `kernel/futex/`): exit, identity and time
//! (the host's), the FS/GS base, and the signal calls as far as one thread with no
//! handler running needs them (handlers are the next issue's).

use super::super::process::Status;
use super::super::vcpu::Vcpu;
use super::{Proc, SysResult, EFAULT, EINVAL};
use mmkit::CpuGuard;

fn host(r: i64) -> SysResult {
    if r < 0 {
        Err(-(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO) as i64))
    } else {
        Ok(r)
    }
}

fn bytes_of<T>(v: &T) -> &[u8] {
    // SAFETY: a plain-data value viewed as its bytes for copying out.
    unsafe { std::slice::from_raw_parts(v as *const T as *const u8, std::mem::size_of::<T>()) }
}

/// `exit`/`exit_group`: the process ends with `status & 0xff`.
pub fn sys_exit_group(p: &mut Proc<'_>, _cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    p.exit = Some(Status::Exited((a[0] & 0xff) as i32));
    Ok(0)
}

/// `uname`: the host's, as the program would see natively.
pub fn sys_uname(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    // SAFETY: into our own struct.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    host(unsafe { libc::uname(&mut u) } as i64)?;
    p.write_user(cpu, a[0], bytes_of(&u))?;
    Ok(0)
}

/// `umask`: the VMM's umask is the process's.
pub fn sys_umask(_p: &mut Proc<'_>, _cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    // SAFETY: umask cannot fail.
    Ok(unsafe { libc::umask((a[0] & 0o777) as libc::mode_t) } as i64)
}

/// `gettimeofday`.
pub fn sys_gettimeofday(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let mut tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    // SAFETY: into our own struct.
    host(unsafe { libc::gettimeofday(&mut tv, std::ptr::null_mut()) } as i64)?;
    if a[0] != 0 {
        p.write_user(cpu, a[0], bytes_of(&tv))?;
    }
    if a[1] != 0 {
        p.write_user(cpu, a[1], &[0u8; 8])?;
    }
    Ok(0)
}

/// `time`.
pub fn sys_time(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    // SAFETY: time with a null pointer cannot fail.
    let t = unsafe { libc::time(std::ptr::null_mut()) };
    if a[0] != 0 {
        p.write_user(cpu, a[0], &t.to_le_bytes())?;
    }
    Ok(t)
}

/// `clock_gettime`.
pub fn sys_clock_gettime(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: into our own struct; an invalid clock id is the host's EINVAL.
    host(unsafe { libc::clock_gettime(a[0] as libc::clockid_t, &mut ts) } as i64)?;
    p.write_user(cpu, a[1], bytes_of(&ts))?;
    Ok(0)
}

/// `clock_getres`.
pub fn sys_clock_getres(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: into our own struct.
    host(unsafe { libc::clock_getres(a[0] as libc::clockid_t, &mut ts) } as i64)?;
    if a[1] != 0 {
        p.write_user(cpu, a[1], bytes_of(&ts))?;
    }
    Ok(0)
}

fn read_timespec(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, addr: u64) -> Result<libc::timespec, i64> {
    let b = p.read_user(cpu, addr, 16)?;
    let ts = libc::timespec {
        tv_sec: i64::from_le_bytes(b[..8].try_into().expect("8")),
        tv_nsec: i64::from_le_bytes(b[8..].try_into().expect("8")),
    };
    if ts.tv_sec < 0 || !(0..1_000_000_000).contains(&ts.tv_nsec) {
        return Err(EINVAL);
    }
    Ok(ts)
}

/// Sleep until `deadline` through the scheduler (`hrtimer_nanosleep`): the task sleeps
/// and the others run; made again when woken, it returns once the time has come. A caught
/// signal ends the sleep with `EINTR` (never restarted: `-ERESTART_RESTARTBLOCK` with a
/// handler), the time left written to `rem` by [`nanosleep_interrupted`].
fn sleep_until(p: &mut Proc<'_>, deadline: Option<std::time::Instant>) -> SysResult {
    let now = std::time::Instant::now();
    match p.deadline.or(deadline) {
        Some(d) if now < d => {
            p.deadline = Some(d);
            p.no_restart = true;
            p.block()
        }
        _ => {
            (p.deadline, p.no_restart) = (None, false);
            Ok(0)
        }
    }
}

/// `nanosleep(req, rem)`.
pub fn sys_nanosleep(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    if p.deadline.is_some() {
        return sleep_until(p, None);
    }
    let ts = read_timespec(p, cpu, a[0])?;
    let d = std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
    sleep_until(p, Some(super::deadline_after(d)))
}

/// The clocks `clock_nanosleep` sleeps on (`CLOCK_REALTIME`, `CLOCK_MONOTONIC`,
/// `CLOCK_BOOTTIME`, `CLOCK_TAI`; the CPU-time clocks are the host's).
const SLEEP_CLOCKS: [i32; 4] = [
    libc::CLOCK_REALTIME,
    libc::CLOCK_MONOTONIC,
    libc::CLOCK_BOOTTIME,
    libc::CLOCK_TAI,
];

/// `clock_nanosleep(clock, flags, req, rem)`: relative, or with `TIMER_ABSTIME` until the
/// clock reads `req`.
pub fn sys_clock_nanosleep(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    if p.deadline.is_some() {
        return sleep_until(p, None);
    }
    let (clock, flags) = (a[0] as i32, a[1] as i32);
    let ts = read_timespec(p, cpu, a[2])?;
    if !SLEEP_CLOCKS.contains(&clock) {
        let mut rem = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: our own structs; the host sleeps this thread (or says EINVAL).
        let r = unsafe { libc::clock_nanosleep(clock, flags, &ts, &mut rem) };
        return if r != 0 { Err(-(r as i64)) } else { Ok(0) };
    }
    let ns = |t: &libc::timespec| t.tv_sec as i128 * 1_000_000_000 + t.tv_nsec as i128;
    let wait = if flags & libc::TIMER_ABSTIME != 0 {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: into our own struct; the clock is one of SLEEP_CLOCKS.
        unsafe { libc::clock_gettime(clock, &mut now) };
        (ns(&ts) - ns(&now)).clamp(0, u64::MAX as i128) as u64
    } else {
        ns(&ts) as u64
    };
    sleep_until(
        p,
        Some(super::deadline_after(std::time::Duration::from_nanos(wait))),
    )
}

/// A relative `nanosleep`/`clock_nanosleep` a signal interrupted: the time it had left goes
/// to its `rem` (when given), as Linux's `nanosleep_copyout` does. `user` holds the call's
/// registers.
pub fn nanosleep_interrupted(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, user: &kvm_bindings::kvm_regs) {
    let rem = match user.rax {
        35 => user.rsi,
        230 if user.rsi as i32 & libc::TIMER_ABSTIME == 0 => user.r10,
        _ => return,
    };
    let Some(d) = p.deadline else { return };
    if rem == 0 {
        return;
    }
    let left = d.saturating_duration_since(std::time::Instant::now());
    let mut b = (left.as_secs() as i64).to_le_bytes().to_vec();
    b.extend_from_slice(&(left.subsec_nanos() as i64).to_le_bytes());
    let _ = p.write_user(cpu, rem, &b);
}

/// `getrandom`: the host's entropy, up to a page per call (short counts are allowed).
pub fn sys_getrandom(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let n = (a[1] as usize).min(4096);
    let mut b = vec![0u8; n];
    // SAFETY: into our own buffer.
    let r = host(unsafe { libc::getrandom(b.as_mut_ptr().cast(), n, a[2] as u32) } as i64)?;
    p.write_user(cpu, a[0], &b[..r as usize])?;
    Ok(r)
}

/// `rt_sigaction`: remembered (a handler runs once signals are delivered, in the next
/// issue); the old action reads back as set.
pub fn sys_rt_sigaction(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let (sig, act, oact, size) = (a[0] as usize, a[1], a[2], a[3]);
    if !(1..=64).contains(&sig) || sig == 9 || sig == 19 && act != 0 || size != 8 {
        return Err(EINVAL);
    }
    if oact != 0 {
        let old = p.sigactions.get(sig).copied().unwrap_or([0; 32]);
        p.write_user(cpu, oact, &old)?;
    }
    if act != 0 {
        let new: [u8; 32] = p.read_user(cpu, act, 32)?.try_into().map_err(|_| EFAULT)?;
        p.sigactions[sig] = new;
    }
    Ok(0)
}

/// `rt_sigprocmask`: the mask is kept (nothing is delivered yet).
pub fn sys_rt_sigprocmask(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let (how, set, oset, size) = (a[0] as i32, a[1], a[2], a[3]);
    if size != 8 {
        return Err(EINVAL);
    }
    if oset != 0 {
        let m = p.sigmask;
        p.write_user(cpu, oset, &m.to_le_bytes())?;
    }
    if set != 0 {
        let s = p.read_u64(cpu, set)? & !((1 << 8) | (1 << 18)); // SIGKILL, SIGSTOP
        p.sigmask = match how {
            libc::SIG_BLOCK => p.sigmask | s,
            libc::SIG_UNBLOCK => p.sigmask & !s,
            libc::SIG_SETMASK => s,
            _ => return Err(EINVAL),
        };
    }
    Ok(0)
}

/// `sigaltstack`: kept; reported back.
pub fn sys_sigaltstack(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    const SS_DISABLE: u32 = 2;
    if a[1] != 0 {
        let old = if p.sigaltstack == [0; 24] {
            let mut d = [0u8; 24];
            d[8..12].copy_from_slice(&SS_DISABLE.to_le_bytes());
            d
        } else {
            p.sigaltstack
        };
        p.write_user(cpu, a[1], &old)?;
    }
    if a[0] != 0 {
        p.sigaltstack = p.read_user(cpu, a[0], 24)?.try_into().map_err(|_| EFAULT)?;
    }
    Ok(0)
}

/// `arch_prctl`: `ARCH_SET_FS`/`ARCH_GET_FS`/`ARCH_SET_GS`/`ARCH_GET_GS`, the segment bases in
/// the vCPU's registers.
pub fn sys_arch_prctl(
    p: &mut Proc<'_>,
    cpu: &CpuGuard<'_>,
    vcpu: &mut Vcpu,
    a: [u64; 6],
) -> SysResult {
    const ARCH_SET_GS: u64 = 0x1001;
    const ARCH_SET_FS: u64 = 0x1002;
    const ARCH_GET_FS: u64 = 0x1003;
    const ARCH_GET_GS: u64 = 0x1004;
    let (code, addr) = (a[0], a[1]);
    let mut s = vcpu.sregs().map_err(|_| EINVAL)?;
    match code {
        ARCH_SET_FS | ARCH_SET_GS => {
            if addr >= mmkit::mm::mm_types::TASK_SIZE {
                return Err(-(libc::EPERM as i64));
            }
            if code == ARCH_SET_FS {
                s.fs.base = addr;
            } else {
                s.gs.base = addr;
            }
            vcpu.set_sregs(&s).map_err(|_| EINVAL)?;
            Ok(0)
        }
        ARCH_GET_FS | ARCH_GET_GS => {
            let v = if code == ARCH_GET_FS {
                s.fs.base
            } else {
                s.gs.base
            };
            p.write_user(cpu, addr, &v.to_le_bytes())?;
            Ok(0)
        }
        _ => Err(EINVAL),
    }
}

/// `prctl`: `PR_SET_NAME`/`PR_GET_NAME` (the task's `comm`); the rest `EINVAL`.
pub fn sys_prctl(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    const PR_SET_NAME: u64 = 15;
    const PR_GET_NAME: u64 = 16;
    match a[0] {
        PR_SET_NAME => {
            let name = p.read_cstr(cpu, a[1], 16).or_else(|e| {
                if e == -(libc::ENAMETOOLONG as i64) {
                    p.read_user(cpu, a[1], 15)
                } else {
                    Err(e)
                }
            })?;
            let n = String::from_utf8_lossy(&name[..name.len().min(15)]).into_owned();
            // The calling thread's name; a leader's is its process's.
            if p.tid != p.pid {
                p.sched.thread_comm.insert(p.tid, n);
            } else if let Some(t) = p.tasks.get_mut(p.pid) {
                t.comm = n;
            }
            Ok(0)
        }
        PR_GET_NAME => {
            let mut b = [0u8; 16];
            let comm = p.comm_of(p.pid, p.tid);
            let c = comm.as_bytes();
            b[..c.len().min(15)].copy_from_slice(&c[..c.len().min(15)]);
            p.write_user(cpu, a[1], &b)?;
            Ok(0)
        }
        _ => Err(EINVAL),
    }
}

/// `sched_getaffinity`: the machine's CPUs.
pub fn sys_sched_getaffinity(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let len = a[1] as usize;
    let n = p.k.nr_cpus();
    let bytes = n.div_ceil(64) * 8;
    if len < bytes || !len.is_multiple_of(8) {
        return Err(EINVAL);
    }
    let mut mask = vec![0u8; bytes];
    for c in 0..n {
        mask[c / 8] |= 1 << (c % 8);
    }
    p.write_user(cpu, a[2], &mask)?;
    Ok(bytes as i64)
}
