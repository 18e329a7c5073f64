//! Pipes (`fs/pipe.c`: `do_pipe2`, `pipe_read`, `pipe_write`): descriptors of the pipes
//! between the machine's tasks ([`crate::kvm::pipe`]), waits through the scheduler
//! (`poll` and `select` on them are [`super::select`]'s).

use super::fd::{Fd, FdKind};
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
