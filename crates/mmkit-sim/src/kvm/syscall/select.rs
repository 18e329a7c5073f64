//! `poll`, `ppoll`, `select`, `pselect6` and `rt_sigsuspend` (`fs/select.c`: `do_sys_poll`,
//! `core_sys_select`, `poll_select_finish`; `kernel/signal.c`: `sigsuspend`,
//! `set_user_sigmask`).
//!
//! One readiness engine ([`poll_wait`]): pipes between the machine's tasks and generated
//! files are polled here (`pipe_poll`), host descriptors by the host. With only host
//! descriptors the host's `poll` waits; otherwise the task sleeps through the scheduler
//! until an event or its deadline, and host descriptors among them are looked at without
//! waiting each time it wakes. A caught signal ends the wait with `EINTR` (never
//! restarted: `-ERESTARTNOHAND`).
//!
//! A temporary signal mask (`ppoll`, `pselect6`, `rt_sigsuspend`) replaces the task's mask
//! for the wait; the old one comes back when the call returns, or, when a handler
//! interrupted it, through the handler's frame at `rt_sigreturn`
//! ([`Proc::saved_sigmask`]).

use super::fd::FdKind;
use super::fs::host;
use super::{Proc, SysResult, EBADF, EINVAL};
use mmkit::CpuGuard;
use std::time::{Duration, Instant};

/// `POLLIN_SET`, `POLLOUT_SET`, `POLLEX_SET` of `fs/select.c`: the poll events each of
/// `select`'s sets stands for.
const POLLIN_SET: i16 =
    libc::POLLRDNORM | libc::POLLRDBAND | libc::POLLIN | libc::POLLHUP | libc::POLLERR;
const POLLOUT_SET: i16 = libc::POLLWRBAND | libc::POLLWRNORM | libc::POLLOUT | libc::POLLERR;
const POLLEX_SET: i16 = libc::POLLPRI;

/// What a wait came to: the events of each descriptor, or the task sleeps.
enum Polled {
    /// `revents` per descriptor, and the time left of the timeout (`None`: no timeout).
    Ready(Vec<i16>, Option<Duration>),
    /// The task sleeps; the call is made again when it wakes.
    Wait,
}

/// The events of each `(fd, events)` now (a negative fd is skipped, a closed one is
/// `POLLNVAL`); host descriptors are polled by the host, waiting up to `host_wait` ms when
/// every descriptor is the host's. Also says whether any was ours.
fn poll_now(p: &Proc<'_>, fds: &[(i32, i16)], host_wait: i32) -> Result<(Vec<i16>, bool), i64> {
    let (inn, out) = (
        libc::POLLIN | libc::POLLRDNORM,
        libc::POLLOUT | libc::POLLWRNORM,
    );
    let mut ours = false;
    let mut revents = vec![0i16; fds.len()];
    let mut pfds: Vec<libc::pollfd> = Vec::new();
    let mut host_slot = Vec::new();
    for (i, &(fd, events)) in fds.iter().enumerate() {
        if fd < 0 {
            continue;
        }
        match p.fds.get(fd as i64).map(|f| &f.kind) {
            None => {
                ours = true;
                revents[i] = libc::POLLNVAL;
            }
            Some(FdKind::Pipe(end)) => {
                ours = true;
                let (readers, writers) = end.pipe.ends();
                revents[i] = if end.write {
                    let room = end.pipe.pages() < crate::kvm::pipe::PIPE_DEF_BUFFERS;
                    (if readers == 0 { libc::POLLERR } else { 0 })
                        | (if room { events & out } else { 0 })
                } else {
                    let data = end.pipe.available() > 0;
                    (if data { events & inn } else { 0 })
                        | (if writers == 0 { libc::POLLHUP } else { 0 })
                };
            }
            Some(FdKind::Mem { .. } | FdKind::Dir { .. }) => {
                ours = true;
                revents[i] = events & (inn | out);
            }
            Some(FdKind::Host(h)) => {
                host_slot.push(i);
                pfds.push(libc::pollfd {
                    fd: std::os::fd::AsRawFd::as_raw_fd(h),
                    events,
                    revents: 0,
                });
            }
        }
    }
    // Nothing but host descriptors: the host waits. Anything of ours (or nothing at all):
    // the scheduler does.
    let ours = ours || pfds.is_empty();
    let wait = if ours { 0 } else { host_wait };
    if !pfds.is_empty() {
        // SAFETY: our own array of pollfds.
        host(unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as u64, wait) } as i64)?;
        // (A Ctrl-C that kicked the host's wait: EINTR, see poll_wait.)
        for (k, pf) in host_slot.iter().zip(&pfds) {
            revents[*k] = pf.revents;
        }
    }
    Ok((revents, ours))
}

/// Wait until one of `fds` has an event, for at most `timeout` (`None`: no limit), counting
/// from the call's first attempt.
fn poll_wait(
    p: &mut Proc<'_>,
    fds: &[(i32, i16)],
    timeout: Option<Duration>,
) -> Result<Polled, i64> {
    let start = Instant::now();
    let deadline = p.deadline.or_else(|| timeout.map(super::deadline_after));
    let host_wait = match deadline {
        None => -1,
        Some(d) => {
            let left = d.saturating_duration_since(start);
            // Rounded up to a millisecond, as poll's timeout is.
            left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
        }
    };
    let (revents, ours) = match poll_now(p, fds, host_wait) {
        // A Ctrl-C kicked the VMM out of the host's wait: the task sleeps, and the SIGINT
        // ends the wait as it ends ours.
        Err(e) if e == -(libc::EINTR as i64) && super::super::tty::sigint_pending() => {
            p.deadline = deadline;
            p.no_restart = true;
            let _ = p.block();
            return Ok(Polled::Wait);
        }
        r => r?,
    };
    let ready = revents.iter().any(|&r| r != 0);
    let now = Instant::now();
    let expired = deadline.is_some_and(|d| now >= d);
    if ours && !ready && !expired {
        p.deadline = deadline;
        p.no_restart = true;
        let _ = p.block();
        return Ok(Polled::Wait);
    }
    (p.deadline, p.no_restart) = (None, false);
    Ok(Polled::Ready(
        revents,
        deadline.map(|d| d.saturating_duration_since(now)),
    ))
}

/// A temporary signal mask for the call (`set_user_sigmask`): `sigmask` (a `sigset_t` of
/// `size` bytes; 0: none) replaces the task's mask until the call returns. Set once, on
/// the call's first attempt.
fn set_user_sigmask(
    p: &mut Proc<'_>,
    cpu: &CpuGuard<'_>,
    sigmask: u64,
    size: u64,
) -> Result<(), i64> {
    if sigmask == 0 || p.saved_sigmask.is_some() {
        return Ok(());
    }
    if size != 8 {
        return Err(EINVAL);
    }
    let m = p.read_u64(cpu, sigmask)? & !((1 << (libc::SIGKILL - 1)) | (1 << (libc::SIGSTOP - 1)));
    p.saved_sigmask = Some(p.sigmask);
    p.sigmask = m;
    Ok(())
}

/// The call returns (not interrupted): its temporary mask goes.
fn restore_sigmask(p: &mut Proc<'_>) {
    if let Some(m) = p.saved_sigmask.take() {
        p.sigmask = m;
    }
}

/// A timeout argument: a `timespec` (`timeval` with `usec`) checked as
/// `poll_select_set_timeout` checks it (`EINVAL` when negative or not normalized; a
/// `timeval`'s microseconds past a second count as seconds first, as `kern_select` does).
fn read_timeout(
    p: &mut Proc<'_>,
    cpu: &CpuGuard<'_>,
    addr: u64,
    usec: bool,
) -> Result<Option<Duration>, i64> {
    if addr == 0 {
        return Ok(None);
    }
    let b = p.read_user(cpu, addr, 16)?;
    let mut sec = i64::from_le_bytes(b[..8].try_into().expect("8"));
    let mut frac = i64::from_le_bytes(b[8..].try_into().expect("8"));
    if usec {
        // kern_select carries whole seconds of tv_usec over before checking.
        sec = sec.saturating_add(frac / 1_000_000);
        frac = (frac % 1_000_000) * 1000;
    }
    if sec < 0 || !(0..1_000_000_000).contains(&frac) {
        return Err(EINVAL);
    }
    Ok(Some(Duration::new(sec as u64, frac as u32)))
}

/// `poll_select_finish`: the time left goes back to the caller's timeout.
fn write_timeout(
    p: &mut Proc<'_>,
    cpu: &CpuGuard<'_>,
    addr: u64,
    left: Option<Duration>,
    usec: bool,
) -> Result<(), i64> {
    let (Some(left), true) = (left, addr != 0) else {
        return Ok(());
    };
    let frac = if usec {
        left.subsec_micros() as i64
    } else {
        left.subsec_nanos() as i64
    };
    let mut b = (left.as_secs() as i64).to_le_bytes().to_vec();
    b.extend_from_slice(&frac.to_le_bytes());
    // Linux ignores a timeout it cannot write back (the call succeeded).
    let _ = p.write_user(cpu, addr, &b);
    Ok(())
}

/// `poll(fds, nfds, timeout_ms)` and `ppoll(fds, nfds, tmo, sigmask, sigsetsize)`.
fn do_poll(
    p: &mut Proc<'_>,
    cpu: &CpuGuard<'_>,
    ufds: u64,
    nfds: u64,
    timeout: Option<Duration>,
) -> Result<Option<(i64, Option<Duration>)>, i64> {
    // RLIMIT_NOFILE bounds nfds before anything is read.
    if nfds > super::fd::NR_OPEN_DEFAULT as u64 {
        return Err(EINVAL);
    }
    let nfds = nfds as usize;
    let raw = p.read_user(cpu, ufds, nfds * 8)?;
    let fds: Vec<(i32, i16)> = raw
        .chunks(8)
        .map(|c| {
            (
                i32::from_le_bytes(c[..4].try_into().expect("4")),
                i16::from_le_bytes(c[4..6].try_into().expect("2")),
            )
        })
        .collect();
    let Polled::Ready(revents, left) = poll_wait(p, &fds, timeout)? else {
        return Ok(None);
    };
    let mut outb = raw;
    for (i, r) in revents.iter().enumerate() {
        outb[i * 8 + 6..i * 8 + 8].copy_from_slice(&r.to_le_bytes());
    }
    p.write_user(cpu, ufds, &outb)?;
    Ok(Some((
        revents.iter().filter(|&&r| r != 0).count() as i64,
        left,
    )))
}

/// `poll(fds, nfds, timeout)`: a negative timeout waits for ever.
pub fn sys_poll(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let ms = a[2] as i32;
    let timeout = (ms >= 0).then(|| Duration::from_millis(ms as u64));
    match do_poll(p, cpu, a[0], a[1], timeout)? {
        Some((n, _)) => Ok(n),
        None => Err(super::ERESTARTSYS),
    }
}

/// `ppoll(fds, nfds, tmo_p, sigmask, sigsetsize)`.
pub fn sys_ppoll(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let timeout = if p.deadline.is_some() {
        None // the deadline is set: made again after sleeping
    } else {
        read_timeout(p, cpu, a[2], false)?
    };
    set_user_sigmask(p, cpu, a[3], a[4])?;
    match do_poll(p, cpu, a[0], a[1], timeout) {
        Ok(Some((n, left))) => {
            restore_sigmask(p);
            write_timeout(p, cpu, a[2], left, false)?;
            Ok(n)
        }
        Ok(None) => Err(super::ERESTARTSYS),
        Err(e) => {
            restore_sigmask(p);
            Err(e)
        }
    }
}

/// `core_sys_select`: the three `fd_set`s of `nfds` bits at `inp`, `outp`, `exp` (0: none)
/// as poll requests; the ready bits written back; their count returned.
fn do_select(
    p: &mut Proc<'_>,
    cpu: &CpuGuard<'_>,
    a: [u64; 6],
    timeout: Option<Duration>,
) -> Result<Option<(i64, Option<Duration>)>, i64> {
    let n = a[0] as i32;
    if n < 0 {
        return Err(EINVAL);
    }
    // Bits past the descriptor table are not looked at (`max_fds`).
    let n = (n as usize).min(super::fd::NR_OPEN_DEFAULT);
    let bytes = n.div_ceil(64) * 8;
    let mut sets = [None, None, None];
    for (i, s) in sets.iter_mut().enumerate() {
        if a[1 + i] != 0 && bytes > 0 {
            *s = Some(p.read_user(cpu, a[1 + i], bytes)?);
        }
    }
    let bit =
        |s: &Option<Vec<u8>>, fd: usize| s.as_ref().is_some_and(|b| b[fd / 8] >> (fd % 8) & 1 != 0);
    let mut fds = Vec::new();
    let mut member = Vec::new();
    for fd in 0..n {
        let sets_in = [bit(&sets[0], fd), bit(&sets[1], fd), bit(&sets[2], fd)];
        let events = [POLLIN_SET, POLLOUT_SET, POLLEX_SET]
            .iter()
            .zip(sets_in)
            .filter(|(_, b)| *b)
            .fold(0, |e, (m, _)| e | m);
        if events != 0 {
            if p.fds.get(fd as i64).is_none() {
                return Err(EBADF);
            }
            fds.push((fd as i32, events));
            member.push(sets_in);
        }
    }
    let Polled::Ready(revents, left) = poll_wait(p, &fds, timeout)? else {
        return Ok(None);
    };
    let mut outs = [vec![0u8; bytes], vec![0u8; bytes], vec![0u8; bytes]];
    let mut count = 0;
    for ((&(fd, _), &r), sets_in) in fds.iter().zip(&revents).zip(&member) {
        let fd = fd as usize;
        let masks = [POLLIN_SET, POLLOUT_SET, POLLEX_SET];
        for i in 0..3 {
            if sets_in[i] && r & masks[i] != 0 {
                outs[i][fd / 8] |= 1 << (fd % 8);
                count += 1;
            }
        }
    }
    for (i, out) in outs.iter().enumerate() {
        if a[1 + i] != 0 && bytes > 0 {
            p.write_user(cpu, a[1 + i], out)?;
        }
    }
    Ok(Some((count, left)))
}

/// `select(nfds, readfds, writefds, exceptfds, timeout)`: the time left is written back to
/// `timeout` (a `timeval`), as Linux does.
pub fn sys_select(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let timeout = if p.deadline.is_some() {
        None
    } else {
        read_timeout(p, cpu, a[4], true)?
    };
    match do_select(p, cpu, a, timeout)? {
        Some((n, left)) => {
            write_timeout(p, cpu, a[4], left, true)?;
            Ok(n)
        }
        None => Err(super::ERESTARTSYS),
    }
}

/// `pselect6(nfds, readfds, writefds, exceptfds, timeout, sig)`: a `timespec` timeout, and
/// `sig` pointing to `{ const sigset_t *ss; size_t ss_len; }` (0: no mask).
pub fn sys_pselect6(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let timeout = if p.deadline.is_some() {
        None
    } else {
        read_timeout(p, cpu, a[4], false)?
    };
    if a[5] != 0 && p.saved_sigmask.is_none() {
        let b = p.read_user(cpu, a[5], 16)?;
        let ss = u64::from_le_bytes(b[..8].try_into().expect("8"));
        let len = u64::from_le_bytes(b[8..].try_into().expect("8"));
        set_user_sigmask(p, cpu, ss, len)?;
    }
    match do_select(p, cpu, a, timeout) {
        Ok(Some((n, left))) => {
            restore_sigmask(p);
            write_timeout(p, cpu, a[4], left, false)?;
            Ok(n)
        }
        Ok(None) => Err(super::ERESTARTSYS),
        Err(e) => {
            restore_sigmask(p);
            Err(e)
        }
    }
}

/// `rt_sigsuspend(mask, sigsetsize)`: wait with `mask` blocked until a signal is delivered
/// (a handler runs: `EINTR`, and the old mask comes back at its `rt_sigreturn`; a fatal
/// signal ends the task).
pub fn sys_rt_sigsuspend(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    if p.saved_sigmask.is_none() {
        if a[1] != 8 {
            return Err(EINVAL);
        }
        let m = p.read_u64(cpu, a[0])? & !((1 << (libc::SIGKILL - 1)) | (1 << (libc::SIGSTOP - 1)));
        p.saved_sigmask = Some(p.sigmask);
        p.sigmask = m;
    }
    p.no_restart = true;
    p.block()
}
