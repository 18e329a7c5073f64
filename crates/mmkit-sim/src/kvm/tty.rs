//! The run's terminal as its tasks see it (`drivers/tty/tty_jobctrl.c`: `tiocgpgrp`,
//! `tiocspgrp`, `tiocgsid`, `tty_check_change`; `drivers/tty/n_tty.c`'s `isig`): the
//! terminal mmkit runs on is the controlling terminal of the first task's session, with a
//! foreground process group of the run's own (the first task's, until a shell hands it to
//! a job with `tcsetpgrp`). The host terminal's own process groups are the host's and are
//! left alone.
//!
//! Ctrl-C: when `mmkit exec` itself gets `SIGINT` (the host terminal sent it to mmkit's
//! group) while a program runs, [`forward_sigint`] turns it into a pending interrupt that
//! the exit loop delivers as `SIGINT` to the guest's foreground process group, as the line
//! discipline's `isig` does; the program's handler runs, or it dies as it would natively.

use super::process::Proc;
use super::signal::SigInfo;
use super::syscall::{SysResult, EFAULT, EINVAL};
use mmkit::kernel::task::Pid;
use mmkit::CpuGuard;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The terminal's session and foreground process group (`tty->session`, `tty->pgrp`).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Tty {
    /// The session whose controlling terminal it is (0: none yet).
    pub sid: Pid,
    /// The foreground process group.
    pub fg: Pid,
}

/// Runs whose tasks take the host's `SIGINT` (`mmkit exec` opts in; a library caller's
/// runs do not, and its own `SIGINT` stays its own).
static FORWARDING: AtomicUsize = AtomicUsize::new(0);
/// A `SIGINT` the host gave mmkit, not yet delivered to a guest.
static PENDING: AtomicBool = AtomicBool::new(false);
/// Whether `mmkit exec` forwards `SIGINT` to the programs it runs.
static ENABLED: AtomicBool = AtomicBool::new(false);
/// A `SIGINT` was forwarded to a run.
static FORWARDED: AtomicBool = AtomicBool::new(false);
/// The program died of a forwarded `SIGINT`: mmkit ends by it too.
static DIE_BY_SIGINT: AtomicBool = AtomicBool::new(false);

/// `mmkit exec`: the host's `SIGINT` goes to the running program's foreground process
/// group rather than ending mmkit.
pub fn enable_sigint_forwarding() {
    ENABLED.store(true, Ordering::Release);
}

/// Called by mmkit's signal thread on `SIGINT`: `true` when a run takes it (it is
/// delivered to the guest), `false` when mmkit should end as the signal says.
pub fn forward_sigint() -> bool {
    if ENABLED.load(Ordering::Acquire) && FORWARDING.load(Ordering::Acquire) > 0 {
        PENDING.store(true, Ordering::Release);
        FORWARDED.store(true, Ordering::Release);
        return true;
    }
    false
}

/// The program `mmkit exec` ran died of `SIGINT`: if that was a forwarded Ctrl-C, mmkit
/// ends by `SIGINT` too ([`dies_by_sigint`]), as a shell whose child a Ctrl-C killed
/// does, so whoever waits for mmkit sees what a native run would show.
pub fn guest_died_of_sigint() {
    if FORWARDED.load(Ordering::Acquire) {
        DIE_BY_SIGINT.store(true, Ordering::Release);
    }
}

/// Whether mmkit should end by `SIGINT` rather than exit (see [`guest_died_of_sigint`]).
pub fn dies_by_sigint() -> bool {
    DIE_BY_SIGINT.load(Ordering::Acquire)
}

/// Whether a forwarded `SIGINT` waits for delivery (the watchdog kicks the vCPU for it).
pub fn sigint_pending() -> bool {
    PENDING.load(Ordering::Acquire)
}

/// A run in progress takes forwarded `SIGINT`s while this lives.
pub struct RunGuard(());

impl RunGuard {
    /// Start taking them.
    pub fn new() -> Self {
        FORWARDING.fetch_add(1, Ordering::AcqRel);
        RunGuard(())
    }
}

impl Default for RunGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        FORWARDING.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Proc<'_> {
    /// The live processes of process group `pgrp`.
    pub fn pgrp_members(&self, pgrp: Pid) -> Vec<Pid> {
        self.live_pids()
            .into_iter()
            .filter(|&t| self.pgrp_of(t).is_some_and(|g| g.0 == pgrp))
            .collect()
    }

    /// `kill_pgrp(pgrp, sig, 1)` from the kernel (`SI_KERNEL`), job control included.
    pub fn kill_pgrp_kernel(&mut self, pgrp: Pid, sig: i32) {
        for t in self.pgrp_members(pgrp) {
            self.prepare_signal(t, sig);
            let info = SigInfo {
                signo: sig,
                code: 0x80, // SI_KERNEL
                addr: 0,
                pid: 0,
            };
            let _ = self.signal_task(t, info);
        }
    }

    /// Deliver a `SIGINT` the host forwarded (see [`forward_sigint`]) to the foreground
    /// process group of the terminal (`isig`). `true` if there was one.
    pub fn host_interrupts(&mut self) -> bool {
        if !PENDING.swap(false, Ordering::AcqRel) {
            return false;
        }
        let fg = self.sched.tty.fg;
        self.kill_pgrp_kernel(fg, libc::SIGINT);
        true
    }

    /// Whether a Ctrl-C on mmkit's terminal could still reach a task: forwarding is on and
    /// the foreground group has a task to take it.
    pub fn sigint_may_come(&self) -> bool {
        ENABLED.load(Ordering::Acquire)
            && FORWARDING.load(Ordering::Acquire) > 0
            && !self.pgrp_members(self.sched.tty.fg).is_empty()
    }

    /// Every task waits with no deadline: under `mmkit exec`, a Ctrl-C may still come (a
    /// program in `pause()` waits for it), so wait for one when the foreground group has a
    /// task to take it. `true` once it was delivered; `false` at once when nothing can
    /// come.
    pub fn wait_for_host_sigint(&mut self) -> bool {
        let forwarding = ENABLED.load(Ordering::Acquire) && FORWARDING.load(Ordering::Acquire) > 0;
        if !forwarding || self.pgrp_members(self.sched.tty.fg).is_empty() {
            return false;
        }
        loop {
            std::thread::sleep(super::sched::TICK);
            if self.host_interrupts() {
                return true;
            }
        }
    }

    /// Whether the running process has the terminal as its controlling terminal (its
    /// session's).
    fn owns_tty(&self) -> bool {
        self.pgrp_of(self.pid)
            .is_some_and(|g| g.1 == self.sched.tty.sid)
    }
}

/// `tty_nr` of `/proc/PID/stat` for the run's terminal: the device of mmkit's own
/// terminal (its first standard stream that is one) as `new_encode_dev` encodes it; 0
/// when mmkit runs on none.
pub fn tty_nr() -> u64 {
    for fd in 0..3 {
        if !isatty(fd) {
            continue;
        }
        // SAFETY: fstat of a standard descriptor into our own struct.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(fd, &mut st) } == 0 {
            let (major, minor) = (
                libc::major(st.st_rdev) as u64,
                libc::minor(st.st_rdev) as u64,
            );
            return (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12);
        }
    }
    0
}

/// Whether host descriptor `h` is a terminal.
fn isatty(h: i32) -> bool {
    // SAFETY: isatty only looks at the descriptor.
    unsafe { libc::isatty(h) == 1 }
}

/// The job-control `ioctl`s on the terminal (`TIOCGPGRP`, `TIOCSPGRP`, `TIOCGSID`) when
/// host descriptor `h` is one; `None` for other requests or descriptors.
pub fn ioctl(
    p: &mut Proc<'_>,
    cpu: &CpuGuard<'_>,
    h: i32,
    req: u64,
    arg: u64,
) -> Option<SysResult> {
    if ![libc::TIOCGPGRP, libc::TIOCSPGRP, libc::TIOCGSID].contains(&req) || !isatty(h) {
        return None;
    }
    let enotty = -(libc::ENOTTY as i64);
    if !p.owns_tty() {
        // Not the caller's controlling terminal.
        return Some(Err(enotty));
    }
    Some(match req {
        r if r == libc::TIOCGPGRP => {
            let fg = p.sched.tty.fg as i32;
            p.write_user(cpu, arg, &fg.to_le_bytes()).map(|_| 0)
        }
        r if r == libc::TIOCGSID => {
            let sid = p.sched.tty.sid as i32;
            p.write_user(cpu, arg, &sid.to_le_bytes()).map(|_| 0)
        }
        _ => tiocspgrp(p, cpu, h, arg),
    })
}

/// `tty_check_change` before a call that changes terminal `h` (host descriptor): a caller
/// of the terminal's session in a background group gets `SIGTTOU` (its group does) unless
/// it ignores or blocks it, and the call is made again after. `None`: go on.
pub fn check_change(p: &mut Proc<'_>, h: i32) -> Option<SysResult> {
    if !isatty(h) || !p.owns_tty() {
        return None;
    }
    let my_pgrp = p.pgrp_of(p.pid).map_or(p.pid, |g| g.0);
    if my_pgrp == p.sched.tty.fg {
        return None;
    }
    let act = super::signal::SigAction::of(&p.sigactions[libc::SIGTTOU as usize]);
    let blocked = p.sigmask & super::signal::bit(libc::SIGTTOU) != 0;
    if act.handler == 1 || blocked {
        return None;
    }
    p.kill_pgrp_kernel(my_pgrp, libc::SIGTTOU);
    Some(p.block())
}

/// `tcsetpgrp`: a process group of the caller's session becomes the foreground one, after
/// [`check_change`].
fn tiocspgrp(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, h: i32, arg: u64) -> SysResult {
    if let Some(r) = check_change(p, h) {
        return r;
    }
    let my_sid = p.pgrp_of(p.pid).map_or(p.pid, |g| g.1);
    let b = p.read_user(cpu, arg, 4).map_err(|_| EFAULT)?;
    let pgrp = i32::from_le_bytes(b.try_into().expect("4"));
    if pgrp < 0 {
        return Err(EINVAL);
    }
    let members = p.pgrp_members(pgrp as Pid);
    let Some(&first) = members.first() else {
        return Err(-(libc::ESRCH as i64));
    };
    if p.pgrp_of(first).map(|g| g.1) != Some(my_sid) {
        return Err(-(libc::EPERM as i64));
    }
    p.sched.tty.fg = pgrp as Pid;
    Ok(0)
}
