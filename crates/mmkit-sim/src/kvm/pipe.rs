//! Pipes between the machine's processes (`fs/pipe.c`: `pipe_read`, `pipe_write`,
//! `pipe_release`, `free_pipe_info`): a ring of up to [`PIPE_DEF_BUFFERS`] page buffers, each
//! a page from mmkit's page allocator (`alloc_page(GFP_HIGHUSER | __GFP_ACCOUNT)` in Linux),
//! filled by writers and drained by readers through the kernel's own page copies; a drained
//! page goes straight back to the allocator.
//!
//! Blocking is the scheduler's: an empty pipe with writers, or a full one with readers,
//! answers [`PipeIo::Block`] and the task sleeps until an event may have changed that
//! (see `process.rs`). A write of at most [`PIPE_BUF`] bytes is atomic; a larger one may be
//! split between readers, as in Linux. With no reader left a write is `EPIPE` and raises
//! `SIGPIPE`; with no writer left an empty pipe reads as end of file.

use mmkit::{CpuGuard, Kernel, Pfn};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// `PIPE_DEF_BUFFERS`: page buffers in a pipe (64 KiB).
pub const PIPE_DEF_BUFFERS: usize = 16;
/// `PIPE_BUF`: writes up to this size are atomic.
pub const PIPE_BUF: usize = 4096;

const PAGE: usize = 4096;

/// One `struct pipe_buffer`: a page and the bytes of it not yet read.
struct PipeBuffer {
    pfn: Pfn,
    offset: usize,
    len: usize,
}

#[derive(Default)]
struct PipeInner {
    bufs: VecDeque<PipeBuffer>,
    readers: usize,
    writers: usize,
}

/// A pipe (`struct pipe_inode_info`).
#[derive(Default)]
pub struct Pipe {
    inner: Mutex<PipeInner>,
}

/// One end of a pipe as an open file (`struct file`): descriptors made by `dup` or `fork`
/// share it, and the pipe counts it among its readers or writers until the last goes.
pub struct PipeEnd {
    /// The pipe.
    pub pipe: Arc<Pipe>,
    /// The write end.
    pub write: bool,
    /// `O_NONBLOCK` (the open file's flag, shared by its descriptors).
    pub nonblock: AtomicBool,
}

impl Drop for PipeEnd {
    fn drop(&mut self) {
        let mut i = self.pipe.lock();
        if self.write {
            i.writers -= 1;
        } else {
            i.readers -= 1;
        }
    }
}

/// What a read or write did.
#[derive(Debug, PartialEq, Eq)]
pub enum PipeIo {
    /// Bytes moved (0 on a read: end of file).
    Done(usize),
    /// Nothing can move now: the task must wait (or `EAGAIN` with `O_NONBLOCK`).
    Block,
    /// No reader is left: `EPIPE` and `SIGPIPE`.
    Broken,
}

impl Pipe {
    fn lock(&self) -> std::sync::MutexGuard<'_, PipeInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `create_pipe_files`: a new pipe and its read and write ends.
    pub fn new_pair() -> (Arc<Pipe>, Arc<PipeEnd>, Arc<PipeEnd>) {
        let pipe = Arc::new(Pipe::default());
        {
            let mut i = pipe.lock();
            i.readers = 1;
            i.writers = 1;
        }
        let end = |write| {
            Arc::new(PipeEnd {
                pipe: pipe.clone(),
                write,
                nonblock: AtomicBool::new(false),
            })
        };
        let (r, w) = (end(false), end(true));
        (pipe, r, w)
    }

    /// Bytes waiting to be read (`FIONREAD`).
    pub fn available(&self) -> usize {
        self.lock().bufs.iter().map(|b| b.len).sum()
    }

    /// Open read ends and write ends.
    pub fn ends(&self) -> (usize, usize) {
        let i = self.lock();
        (i.readers, i.writers)
    }

    /// Pages the pipe holds.
    pub fn pages(&self) -> usize {
        self.lock().bufs.len()
    }

    /// `pipe_read`: up to `max` bytes, handed to `sink` before they are consumed (a failed
    /// copy to the reader's memory, `Err(errno)` from `sink`, leaves them in the pipe).
    pub fn read(
        &self,
        k: &Kernel,
        cpu: &CpuGuard<'_>,
        max: usize,
        sink: impl FnOnce(&[u8]) -> Result<(), i64>,
    ) -> Result<PipeIo, i64> {
        let mut i = self.lock();
        if i.bufs.is_empty() {
            return Ok(if i.writers == 0 || max == 0 {
                PipeIo::Done(0)
            } else {
                PipeIo::Block
            });
        }
        let mut out = Vec::with_capacity(max.min(PIPE_DEF_BUFFERS * PAGE));
        for b in &i.bufs {
            if out.len() == max {
                break;
            }
            let n = b.len.min(max - out.len());
            let start = out.len();
            out.resize(start + n, 0);
            let page = k.pfn_to_page(b.pfn).ok_or(super::syscall::EFAULT)?;
            k.read_page(page, b.offset, &mut out[start..])
                .map_err(|_| super::syscall::EFAULT)?;
        }
        sink(&out)?;
        let mut left = out.len();
        while left > 0 {
            let b = i.bufs.front_mut().expect("bytes read from a buffer");
            let n = b.len.min(left);
            b.offset += n;
            b.len -= n;
            left -= n;
            if b.len == 0 {
                let b = i.bufs.pop_front().expect("front");
                if let Some(page) = k.pfn_to_page(b.pfn) {
                    k.__free_pages(cpu, page, 0);
                }
            }
        }
        Ok(PipeIo::Done(out.len()))
    }

    /// `pipe_write` of `data`: appends to the last page while it has room, then takes new
    /// pages while the ring has slots. A write of at most [`PIPE_BUF`] bytes goes in whole
    /// or not at all. Returns the bytes taken (possibly fewer than `data.len()`: the caller
    /// waits and writes the rest).
    pub fn write(&self, k: &Kernel, cpu: &CpuGuard<'_>, data: &[u8]) -> Result<PipeIo, i64> {
        let mut i = self.lock();
        if i.readers == 0 {
            return Ok(PipeIo::Broken);
        }
        let tail_room = i.bufs.back().map_or(0, |b| PAGE - b.offset - b.len);
        let room = tail_room + (PIPE_DEF_BUFFERS - i.bufs.len()) * PAGE;
        if room == 0 || (data.len() <= PIPE_BUF && room < data.len()) {
            return Ok(if data.is_empty() {
                PipeIo::Done(0)
            } else {
                PipeIo::Block
            });
        }
        let mut done = 0;
        if tail_room > 0 {
            let b = i.bufs.back_mut().expect("tail");
            let n = tail_room.min(data.len());
            let page = k.pfn_to_page(b.pfn).ok_or(super::syscall::EFAULT)?;
            k.write_page(page, b.offset + b.len, &data[..n])
                .map_err(|_| super::syscall::EFAULT)?;
            b.len += n;
            done = n;
        }
        while done < data.len() && i.bufs.len() < PIPE_DEF_BUFFERS {
            let Some(page) = k.alloc_pages(cpu, mmkit::gfp::Gfp::GFP_KERNEL_ACCOUNT, 0) else {
                break;
            };
            let n = PAGE.min(data.len() - done);
            if k.write_page(page, 0, &data[done..done + n]).is_err() {
                k.__free_pages(cpu, page, 0);
                break;
            }
            i.bufs.push_back(PipeBuffer {
                pfn: k.page_to_pfn(page),
                offset: 0,
                len: n,
            });
            done += n;
        }
        if done == 0 {
            // No page could be had: Linux's pipe_write returns -ENOMEM.
            return Err(-(libc::ENOMEM as i64));
        }
        Ok(PipeIo::Done(done))
    }

    /// `free_pipe_info` once no reader is left: nobody can read what is buffered, so its
    /// pages go back to the allocator.
    pub fn release_if_unread(&self, k: &Kernel, cpu: &CpuGuard<'_>) {
        let mut i = self.lock();
        if i.readers != 0 {
            return;
        }
        while let Some(b) = i.bufs.pop_front() {
            if let Some(page) = k.pfn_to_page(b.pfn) {
                k.__free_pages(cpu, page, 0);
            }
        }
    }
}

impl PipeEnd {
    /// `O_NONBLOCK` set on this open file.
    pub fn nonblocking(&self) -> bool {
        self.nonblock.load(Ordering::Relaxed)
    }
}
