//! Pipes and `poll` (`fs/pipe.c`: `do_pipe2`, `pipe_read`, `pipe_write`; `fs/select.c`:
//! `do_sys_poll`): descriptors of the pipes between the machine's tasks
//! ([`crate::kvm::pipe`]), waits through the scheduler, and `poll` over pipes, generated
//! files and host descriptors together.

use super::fd::{Fd, FdKind};
use super::fs::host;
use super::{Proc, SysResult, EBADF, EFAULT, EINVAL, MAX_RW_CHUNK};
use crate::kvm::pipe::{PipeEnd, PipeIo};
use mmkit::CpuGuard;
use std::sync::Arc;

/// `pipe2(fds, flags)`: a host pipe (the next issue gives pipes mmkit's pages).
pub fn sys_pipe2(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let flags = a[1] as i32;
    if flags & !(libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_DIRECT) != 0 {
        return Err(EINVAL);
    }
    let (pipe, r, w) = super::super::pipe::Pipe::new_pair();
    let nonblock = flags & libc::O_NONBLOCK != 0;
    let cloexec = flags & libc::O_CLOEXEC != 0;
    let mut out = [0i32; 2];
    for (i, end) in [r, w].into_iter().enumerate() {
        end.nonblock
            .store(nonblock, std::sync::atomic::Ordering::Relaxed);
        let f = Fd {
            kind: FdKind::Pipe(end),
            cloexec,
            path: None,
            cache: None,
        };
        match p.fds.install(f, 0) {
            Ok(n) => out[i] = n as i32,
            Err(e) => {
                if i == 1 {
                    let _ = p.fds.close(out[0] as i64);
                }
                return Err(e);
            }
        }
    }
    p.sched.pipes.push(pipe);
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&out[0].to_le_bytes());
    b[4..].copy_from_slice(&out[1].to_le_bytes());
    if p.write_user(cpu, a[0], &b).is_err() {
        let _ = p.fds.close(out[0] as i64);
        let _ = p.fds.close(out[1] as i64);
        return Err(EFAULT);
    }
    Ok(0)
}

/// `pipe_read` into user memory at `buf`: waits (or `EAGAIN`) while the pipe is empty and
/// has writers.
pub(super) fn pipe_read(
    p: &mut Proc<'_>,
    cpu: &CpuGuard<'_>,
    end: &Arc<PipeEnd>,
    buf: u64,
    count: usize,
) -> SysResult {
    if end.write {
        return Err(EBADF);
    }
    let k = p.k;
    let r = end.pipe.read(k, cpu, count.min(MAX_RW_CHUNK), |bytes| {
        p.write_user(cpu, buf, bytes).map(|_| ())
    })?;
    match r {
        PipeIo::Done(n) => {
            if n > 0 {
                p.wake_all();
            }
            Ok(n as i64)
        }
        PipeIo::Block if end.nonblocking() => Err(-(libc::EAGAIN as i64)),
        PipeIo::Block => p.block(),
        PipeIo::Broken => unreachable!("a read never breaks"),
    }
}

/// `pipe_write` of `data` (the user's bytes): waits while the pipe is full; the bytes
/// already taken by earlier attempts of this call are `p.progress`.
pub(super) fn pipe_write(
    p: &mut Proc<'_>,
    cpu: &CpuGuard<'_>,
    end: &Arc<PipeEnd>,
    data: &[u8],
) -> SysResult {
    if !end.write {
        return Err(EBADF);
    }
    let done = p.progress.min(data.len());
    let k = p.k;
    match end.pipe.write(k, cpu, &data[done..])? {
        PipeIo::Done(n) => {
            p.wake_all();
            let total = done + n;
            if total == data.len() || end.nonblocking() {
                p.progress = 0;
                Ok(total as i64)
            } else {
                p.progress = total;
                p.block()
            }
        }
        PipeIo::Block if end.nonblocking() => {
            p.progress = 0;
            if done > 0 {
                Ok(done as i64)
            } else {
                Err(-(libc::EAGAIN as i64))
            }
        }
        PipeIo::Block => p.block(),
        PipeIo::Broken => {
            p.progress = 0;
            p.raise(libc::SIGPIPE);
            if done > 0 {
                Ok(done as i64)
            } else {
                Err(-(libc::EPIPE as i64))
            }
        }
    }
}

/// `poll(fds, nfds, timeout)`: pipes between the machine's tasks and generated files are
/// polled here (`pipe_poll`), host descriptors by the host. With only host descriptors the
/// host's `poll` waits; otherwise the task sleeps until an event or the timeout, while
/// host descriptors among them are looked at without waiting each time it wakes.
pub fn sys_poll(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let (ufds, nfds, timeout) = (a[0], a[1] as usize, a[2] as i32);
    if nfds > super::fd::NR_OPEN_DEFAULT {
        return Err(EINVAL);
    }
    let raw = p.read_user(cpu, ufds, nfds * 8)?;
    let (inn, out, err, hup, nval) = (
        libc::POLLIN | libc::POLLRDNORM,
        libc::POLLOUT | libc::POLLWRNORM,
        libc::POLLERR,
        libc::POLLHUP,
        libc::POLLNVAL,
    );
    let mut ours = false;
    let mut revents = vec![0i16; nfds];
    let mut pfds: Vec<libc::pollfd> = Vec::with_capacity(nfds);
    let mut host_slot = Vec::new();
    for (i, c) in raw.chunks(8).enumerate() {
        let fd = i32::from_le_bytes(c[..4].try_into().expect("4"));
        let events = i16::from_le_bytes(c[4..6].try_into().expect("2"));
        if fd < 0 {
            continue;
        }
        match p.fds.get(fd as i64).map(|f| &f.kind) {
            None => {
                ours = true;
                revents[i] = nval;
            }
            Some(FdKind::Pipe(end)) => {
                ours = true;
                let (readers, writers) = end.pipe.ends();
                revents[i] = if end.write {
                    let room = end.pipe.pages() < super::super::pipe::PIPE_DEF_BUFFERS;
                    (if readers == 0 { err } else { 0 }) | (if room { events & out } else { 0 })
                } else {
                    let data = end.pipe.available() > 0;
                    (if data { events & inn } else { 0 }) | (if writers == 0 { hup } else { 0 })
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
    let wait = if ours { 0 } else { timeout };
    if !pfds.is_empty() || !ours {
        // SAFETY: our own array of pollfds.
        host(unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as u64, wait) } as i64)?;
        for (k, pf) in host_slot.iter().zip(&pfds) {
            revents[*k] = pf.revents;
        }
    }
    let ready = revents.iter().filter(|&&r| r != 0).count();
    let expired = p.deadline.is_some_and(|d| std::time::Instant::now() >= d);
    if ours && ready == 0 && timeout != 0 && !expired {
        if timeout > 0 && p.deadline.is_none() {
            p.deadline =
                Some(std::time::Instant::now() + std::time::Duration::from_millis(timeout as u64));
        }
        p.no_restart = true;
        return p.block();
    }
    (p.deadline, p.no_restart) = (None, false);
    let mut outb = raw.clone();
    for (i, r) in revents.iter().enumerate() {
        outb[i * 8 + 6..i * 8 + 8].copy_from_slice(&r.to_le_bytes());
    }
    p.write_user(cpu, ufds, &outb)?;
    Ok(ready as i64)
}
