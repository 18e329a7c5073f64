//! File system calls, forwarded to the host (`fs/read_write.c`, `fs/open.c`, `fs/stat.c`,
//! `fs/namei.c`, `fs/fcntl.c`, `fs/readdir.c`, `fs/ioctl.c`): the guest's descriptors map to
//! host descriptors the VMM owns; user buffers go through mmkit's `copy_from_user`/
//! `copy_to_user` in bounded chunks; `/proc` paths open mmkit's own views.
//!
//! Coherence with the page cache: a `write` to a regular file is also copied into the
//! file's cached pages in mmkit (if any), so a mapping of the file sees it, as Linux's
//! writes go through the page cache; a shared writable mapping's pages reach the host file
//! by writeback (`msync`, reclaim, exit).

use super::fd::{Fd, FdKind};
use super::{Proc, SysResult, EBADF, EINVAL, MAX_RW_CHUNK};
use crate::kvm::pipe::PipeEnd;
use mmkit::CpuGuard;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

/// The host's `-errno` of the last failed call.
fn last_err() -> i64 {
    -(std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO) as i64)
}

/// A host call's result as a syscall result.
pub(super) fn host(r: i64) -> SysResult {
    if r < 0 {
        Err(last_err())
    } else {
        Ok(r)
    }
}

impl Proc<'_> {
    /// The pipe end behind guest descriptor `fd`, if it is one.
    pub(crate) fn pipe_end(&self, fd: i64) -> Option<Arc<PipeEnd>> {
        match &self.fds.get(fd)?.kind {
            FdKind::Pipe(e) => Some(e.clone()),
            _ => None,
        }
    }

    /// `path` made absolute when it is relative to a directory mmkit generated (`openat`
    /// of `stat` in an open `/proc/PID`); otherwise as given.
    pub(crate) fn generated_at(&self, dirfd: i64, path: String) -> String {
        if path.starts_with('/') || dirfd as i32 == libc::AT_FDCWD {
            return path;
        }
        match self.fds.get(dirfd) {
            Some(Fd {
                kind: FdKind::Dir { .. },
                path: Some(dir),
                ..
            }) if !path.is_empty() => format!("{dir}/{path}"),
            _ => path,
        }
    }

    /// The host directory and path a `*at` call goes to: `dirfd`'s host descriptor and
    /// `path`, or the absolute `resolved` path when `dirfd` is a generated directory.
    fn host_at(
        &self,
        dirfd: i64,
        path: std::ffi::CString,
        resolved: &str,
    ) -> Result<(RawFd, std::ffi::CString), i64> {
        if resolved.as_bytes() != path.as_bytes() {
            let c = std::ffi::CString::new(resolved).map_err(|_| EINVAL)?;
            return Ok((libc::AT_FDCWD, c));
        }
        Ok((self.host_fd(dirfd)?, path))
    }

    /// The host descriptor of guest descriptor `fd` (`EBADF`; `AT_FDCWD` passes through).
    fn host_fd(&self, fd: i64) -> Result<RawFd, i64> {
        if fd as i32 == libc::AT_FDCWD {
            return Ok(libc::AT_FDCWD);
        }
        self.fds.get(fd).and_then(|f| f.host()).ok_or(EBADF)
    }

    /// `write` just went to the host file behind `fd` at `off` (`data`): tell mmkit the
    /// file's new size and put the bytes in its page cache (`generic_perform_write`).
    fn write_through_cache(&mut self, cpu: &CpuGuard<'_>, hfd: RawFd, off: u64, data: &[u8]) {
        let Some((entry, size)) = self.host_entry(hfd) else {
            return;
        };
        crate::hostfs::truncate_setsize(self.k, cpu, &entry, size);
        self.k.generic_perform_write(cpu, &entry.0, off, data);
    }

    /// The inode mmkit caches the regular host file behind `hfd` in, and the file's size on
    /// the host; `None` for anything mmkit does not cache.
    fn host_entry(&self, hfd: RawFd) -> Option<(crate::hostfs::HostEntry, u64)> {
        // SAFETY: fstat of our own descriptor into our own struct.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(hfd, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return None;
        }
        let entry = self.m.hostfs.host_file(st.st_dev, st.st_ino)?;
        Some((entry, st.st_size as u64))
    }
}

/// `MAX_RW_COUNT`: the most one read or write moves (`INT_MAX & PAGE_MASK`).
const MAX_RW_COUNT: usize = 0x7fff_f000;

/// `read(fd, buf, count)`: a regular file through mmkit's page cache (in chunks of a bounce
/// buffer, up to `count`), anything else with one host `read`.
pub fn sys_read(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let (fd, buf, count) = (a[0] as i64, a[1], (a[2] as usize).min(MAX_RW_COUNT));
    let f = p.fds.get_mut(fd).ok_or(EBADF)?;
    match &mut f.kind {
        FdKind::Pipe(end) => {
            let end = end.clone();
            super::pipe::pipe_read(p, cpu, &end, buf, count)
        }
        FdKind::Dir { .. } => Err(-(libc::EISDIR as i64)),
        FdKind::Mem { data, pos } => {
            let end = (*pos + count).min(data.len());
            let out = data[(*pos).min(end)..end].to_vec();
            *pos = end;
            p.write_user(cpu, buf, &out)?;
            Ok(out.len() as i64)
        }
        FdKind::Host(h) => {
            let h = std::os::fd::AsRawFd::as_raw_fd(h);
            if let Some(entry) = f.cache.clone() {
                // SAFETY: lseek of our own descriptor.
                let pos = host(unsafe { libc::lseek(h, 0, libc::SEEK_CUR) })?;
                let n = cached_read(p, cpu, &entry, pos as u64, buf, count)?;
                // SAFETY: as above.
                host(unsafe { libc::lseek(h, pos + n, libc::SEEK_SET) })?;
                return Ok(n);
            }
            let n = count.min(MAX_RW_CHUNK);
            let mut tmp = vec![0u8; n];
            // SAFETY: reading into our own buffer of `n` bytes.
            let r = match host(unsafe { libc::read(h, tmp.as_mut_ptr().cast(), n) } as i64) {
                // A Ctrl-C kicked the VMM out of a terminal read: the task waits as in a
                // read that sleeps, so the SIGINT interrupts it as Linux's would (EINTR,
                // or the read again after a SA_RESTART handler).
                Err(e) if e == -(libc::EINTR as i64) && crate::kvm::tty::sigint_pending() => {
                    return p.block();
                }
                r => r?,
            };
            p.write_user(cpu, buf, &tmp[..r as usize])?;
            Ok(r)
        }
    }
}

/// Read `count` bytes of a regular file at `off` through mmkit's page cache into user
/// memory at `buf`, a bounce buffer at a time (`filemap_read` → `copy_to_user`). A fault
/// after some bytes were copied ends the read there, as Linux's does.
fn cached_read(
    p: &mut Proc<'_>,
    cpu: &CpuGuard<'_>,
    entry: &crate::hostfs::HostEntry,
    off: u64,
    buf: u64,
    count: usize,
) -> SysResult {
    let inode = &entry.0;
    crate::hostfs::truncate_setsize(p.k, cpu, entry, entry.1.host_size());
    let mut tmp = vec![0u8; count.min(MAX_RW_CHUNK)];
    let mut done = 0usize;
    while done < count {
        let want = (count - done).min(tmp.len());
        let r =
            p.k.filemap_read(cpu, inode, off + done as u64, &mut tmp[..want])
                .map_err(errno)?;
        if let Err(e) = p.write_user(cpu, buf + done as u64, &tmp[..r]) {
            return if done == 0 { Err(e) } else { Ok(done as i64) };
        }
        done += r;
        if r < want {
            break;
        }
    }
    Ok(done as i64)
}

fn errno(e: mmkit::Errno) -> i64 {
    -(e.code() as i64)
}

/// `write(fd, buf, count)`: the bytes copied from user memory a bounce buffer at a time and
/// written to the host (all of them for a regular file; one host `write` otherwise, whose
/// short count is the answer), then into mmkit's page cache of the file. Each piece ends at
/// a `MAX_RW_CHUNK` (PMD-size) boundary of the file, so the write path sees each 2 MiB of
/// the file the write covers whole and makes its folios as large as Linux's, which sees the
/// whole write.
pub fn sys_write(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let (fd, buf, count) = (a[0] as i64, a[1], (a[2] as usize).min(MAX_RW_COUNT));
    if let Some(end) = p.pipe_end(fd) {
        let data = p.read_user(cpu, buf, count.min(MAX_RW_CHUNK))?;
        return super::pipe::pipe_write(p, cpu, &end, &data);
    }
    let h = p.host_fd(fd)?;
    let regular = p.fds.get(fd).is_some_and(|f| f.cache.is_some());
    let mut done = 0usize;
    loop {
        // SAFETY: lseek of our own descriptor (to know where the bytes land in the file).
        let off = unsafe { libc::lseek(h, 0, libc::SEEK_CUR) };
        let to_boundary = MAX_RW_CHUNK - (off.max(0) as usize % MAX_RW_CHUNK);
        let want = (count - done).min(to_boundary);
        let data = match p.read_user(cpu, buf + done as u64, want) {
            Ok(d) => d,
            Err(e) if done == 0 => return Err(e),
            Err(_) => break,
        };
        // SAFETY: writing our own buffer.
        let r = match host(unsafe { libc::write(h, data.as_ptr().cast(), data.len()) } as i64) {
            Ok(r) => r as usize,
            Err(e) if done == 0 => return Err(e),
            Err(_) => break,
        };
        if off >= 0 && r > 0 {
            // An O_APPEND write lands at the end: ask where it ended.
            // SAFETY: as above.
            let end = unsafe { libc::lseek(h, 0, libc::SEEK_CUR) };
            let start = if end >= r as i64 { end - r as i64 } else { off };
            p.write_through_cache(cpu, h, start as u64, &data[..r]);
        }
        done += r;
        if !regular || r < want || done == count {
            break;
        }
    }
    Ok(done as i64)
}

/// `pread64`.
pub fn sys_pread64(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let (fd, buf, count, off) = (
        a[0] as i64,
        a[1],
        (a[2] as usize).min(MAX_RW_COUNT),
        a[3] as i64,
    );
    if off < 0 {
        return Err(EINVAL);
    }
    let f = p.fds.get(fd).ok_or(EBADF)?;
    match &f.kind {
        FdKind::Pipe(_) => Err(-(libc::ESPIPE as i64)),
        FdKind::Dir { .. } => Err(-(libc::EISDIR as i64)),
        FdKind::Mem { data, .. } => {
            let s = (off as usize).min(data.len());
            let out = data[s..(s + count).min(data.len())].to_vec();
            p.write_user(cpu, buf, &out)?;
            Ok(out.len() as i64)
        }
        FdKind::Host(h) => {
            let h = std::os::fd::AsRawFd::as_raw_fd(h);
            if let Some(entry) = f.cache.clone() {
                return cached_read(p, cpu, &entry, off as u64, buf, count);
            }
            let n = count.min(MAX_RW_CHUNK);
            let mut tmp = vec![0u8; n];
            // SAFETY: into our own buffer.
            let r = host(unsafe { libc::pread(h, tmp.as_mut_ptr().cast(), n, off) } as i64)?;
            p.write_user(cpu, buf, &tmp[..r as usize])?;
            Ok(r)
        }
    }
}

/// `pwrite64`: as `write` (pieces ending at 2 MiB boundaries of the file, all of them for a
/// regular file), at `off`.
pub fn sys_pwrite64(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let (fd, buf, count, off) = (
        a[0] as i64,
        a[1],
        (a[2] as usize).min(MAX_RW_COUNT),
        a[3] as i64,
    );
    if off < 0 {
        return Err(EINVAL);
    }
    let h = p.host_fd(fd)?;
    let regular = p.fds.get(fd).is_some_and(|f| f.cache.is_some());
    let mut done = 0usize;
    loop {
        let at = (off as u64).saturating_add(done as u64);
        let want = (count - done).min(MAX_RW_CHUNK - (at % MAX_RW_CHUNK as u64) as usize);
        let data = match p.read_user(cpu, buf + done as u64, want) {
            Ok(d) => d,
            Err(e) if done == 0 => return Err(e),
            Err(_) => break,
        };
        // SAFETY: from our own buffer.
        let r = match host(
            unsafe { libc::pwrite(h, data.as_ptr().cast(), data.len(), at as i64) } as i64,
        ) {
            Ok(r) => r as usize,
            Err(e) if done == 0 => return Err(e),
            Err(_) => break,
        };
        p.write_through_cache(cpu, h, at, &data[..r]);
        done += r;
        if !regular || r < want || done == count {
            break;
        }
    }
    Ok(done as i64)
}

/// `UIO_MAXIOV`.
const UIO_MAXIOV: u64 = 1024;

/// The iovecs of `readv`/`writev`.
fn iovecs(
    p: &mut Proc<'_>,
    cpu: &CpuGuard<'_>,
    iov: u64,
    cnt: u64,
) -> Result<Vec<(u64, u64)>, i64> {
    if cnt > UIO_MAXIOV {
        return Err(EINVAL);
    }
    let raw = p.read_user(cpu, iov, (cnt * 16) as usize)?;
    Ok(raw
        .chunks(16)
        .map(|c| {
            (
                u64::from_le_bytes(c[..8].try_into().expect("8")),
                u64::from_le_bytes(c[8..].try_into().expect("8")),
            )
        })
        .collect())
}

/// `readv`: one `read` per vector until a short one.
pub fn sys_readv(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let mut total = 0i64;
    for (base, len) in iovecs(p, cpu, a[1], a[2])? {
        if len == 0 {
            continue;
        }
        let r = match sys_read(p, cpu, [a[0], base, len, 0, 0, 0]) {
            Ok(r) => r,
            Err(e) if total == 0 => return Err(e),
            Err(_) => break,
        };
        total += r;
        if (r as u64) < len {
            break;
        }
    }
    Ok(total)
}

/// `writev`: the vectors gathered into one host `write` (atomic for a pipe, as Linux's).
pub fn sys_writev(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let pipe = p.pipe_end(a[0] as i64);
    let h = match pipe {
        Some(_) => -1,
        None => p.host_fd(a[0] as i64)?,
    };
    let mut data = Vec::new();
    for (base, len) in iovecs(p, cpu, a[1], a[2])? {
        let room = MAX_RW_CHUNK.saturating_sub(data.len());
        if room == 0 {
            break;
        }
        let chunk = p.read_user(cpu, base, (len as usize).min(room))?;
        data.extend_from_slice(&chunk);
    }
    if let Some(end) = pipe {
        return super::pipe::pipe_write(p, cpu, &end, &data);
    }
    // SAFETY: lseek of our own descriptor.
    let off = unsafe { libc::lseek(h, 0, libc::SEEK_CUR) };
    // SAFETY: from our own buffer.
    let r = host(unsafe { libc::write(h, data.as_ptr().cast(), data.len()) } as i64)?;
    if off >= 0 && r > 0 {
        // SAFETY: as above.
        let end = unsafe { libc::lseek(h, 0, libc::SEEK_CUR) };
        p.write_through_cache(cpu, h, (end - r).max(0) as u64, &data[..r as usize]);
    }
    Ok(r)
}

/// `openat(dirfd, path, flags, mode)`: a `/proc` path opens mmkit's view; anything else the
/// host file.
pub fn sys_openat(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let (dirfd, flags, mode) = (a[0] as i64, a[2] as i32, a[3] as u32);
    let path = p.read_path(cpu, a[1])?;
    let cloexec = flags & libc::O_CLOEXEC != 0;
    let text = p.generated_at(dirfd, String::from_utf8_lossy(path.as_bytes()).into_owned());
    if let Some(ents) = super::procfs::dir(p, &text)? {
        if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_CREAT != 0 {
            return Err(-(libc::EISDIR as i64));
        }
        let f = Fd {
            kind: FdKind::Dir { ents, pos: 0 },
            cloexec,
            path: Some(text.trim_end_matches('/').to_string()),
            cache: None,
        };
        return p.fds.install(f, 0);
    }
    if let Some(data) = super::procfs::open(p, cpu, &text)? {
        if flags & libc::O_DIRECTORY != 0 {
            return Err(-(libc::ENOTDIR as i64));
        }
        let f = Fd {
            kind: FdKind::Mem { data, pos: 0 },
            cloexec,
            path: Some(text),
            cache: None,
        };
        return p.fds.install(f, 0);
    }
    let (d, path) = p.host_at(dirfd, path, &text)?;
    // SAFETY: a NUL-terminated path; the new descriptor is owned below.
    let r = host(unsafe { libc::openat(d, path.as_ptr(), flags | libc::O_CLOEXEC, mode) } as i64)?;
    // SAFETY: `r` is a fresh descriptor nobody else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(r as RawFd) };
    let shown = if text.starts_with('/') || dirfd as i32 != libc::AT_FDCWD {
        text
    } else {
        std::env::current_dir()
            .map(|c| c.join(&text).to_string_lossy().into_owned())
            .unwrap_or(text)
    };
    let cache = page_cache_of(p, cpu, r as RawFd, &shown, flags);
    p.fds.install(
        Fd {
            kind: FdKind::Host(owned),
            cloexec,
            path: Some(shown),
            cache,
        },
        0,
    )
}

/// The mmkit inode of a regular file just opened as host descriptor `fd` (its page cache
/// serves the reads); `None` for anything else.
fn page_cache_of(
    p: &Proc<'_>,
    cpu: &CpuGuard<'_>,
    fd: RawFd,
    path: &str,
    flags: i32,
) -> Option<crate::hostfs::HostEntry> {
    // SAFETY: fstat of our own descriptor.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return None;
    }
    // The host's /proc and /sys files are generated when read (their size says 0): read
    // from the host each time, never cached.
    // SAFETY: fstatfs of our own descriptor into our own struct.
    let mut sf: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(fd, &mut sf) } != 0
        || matches!(sf.f_type, libc::PROC_SUPER_MAGIC | libc::SYSFS_MAGIC)
    {
        return None;
    }
    // A descriptor of its own for the inode: the guest may close this one.
    // SAFETY: dup of our own descriptor, owned by the File below.
    let d = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if d < 0 {
        return None;
    }
    // SAFETY: fresh descriptor.
    let file = unsafe { std::fs::File::from_raw_fd(d) };
    let shown = std::fs::canonicalize(path)
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_else(|_| path.to_string());
    let writable = flags & libc::O_ACCMODE == libc::O_RDWR;
    p.m.hostfs.inode_of(p.k, cpu, file, &shown, writable).ok()
}

/// `close`.
pub fn sys_close(p: &mut Proc<'_>, _cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    p.fds.close(a[0] as i64).map(|_| 0)
}

/// `lseek`.
pub fn sys_lseek(p: &mut Proc<'_>, _cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let (fd, off, whence) = (a[0] as i64, a[1] as i64, a[2] as i32);
    let f = p.fds.get_mut(fd).ok_or(EBADF)?;
    match &mut f.kind {
        FdKind::Pipe(_) => Err(-(libc::ESPIPE as i64)),
        FdKind::Dir { pos, .. } => {
            // A directory's position is the index of its next entry; its size is 0, as a
            // procfs directory's (generic_file_llseek).
            let base = match whence {
                libc::SEEK_SET | libc::SEEK_END => 0,
                libc::SEEK_CUR => *pos as i64,
                _ => return Err(EINVAL),
            };
            let n = base.checked_add(off).filter(|&n| n >= 0).ok_or(EINVAL)?;
            *pos = n as usize;
            Ok(n)
        }
        FdKind::Mem { data, pos } => {
            let base = match whence {
                libc::SEEK_SET => 0,
                libc::SEEK_CUR => *pos as i64,
                libc::SEEK_END => data.len() as i64,
                _ => return Err(EINVAL),
            };
            let n = base.checked_add(off).filter(|&n| n >= 0).ok_or(EINVAL)?;
            *pos = n as usize;
            Ok(n)
        }
        FdKind::Host(h) => {
            let h = std::os::fd::AsRawFd::as_raw_fd(h);
            // SAFETY: lseek of our own descriptor.
            host(unsafe { libc::lseek(h, off, whence) })
        }
    }
}

/// A `struct stat` for a generated file at `path`: a regular file that says it is empty, as
/// `/proc` files do, on `/proc`'s device with an inode number of its own (so a program
/// comparing files by device and inode, as `grep` does with its output, tells them apart).
fn mem_stat(path: Option<&str>) -> libc::stat {
    // SAFETY: zeroed stat is valid plain data.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    st.st_mode = libc::S_IFREG | 0o444;
    st.st_nlink = 1;
    st.st_size = 0;
    st.st_blksize = 4096;
    st.st_dev = super::procfs::proc_dev();
    // FNV-1a of the path: stable, distinct, never 0.
    let h = path
        .unwrap_or("")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
    st.st_ino = h | 1;
    // SAFETY: getuid/getgid cannot fail.
    (st.st_uid, st.st_gid) = unsafe { (libc::getuid(), libc::getgid()) };
    st
}

fn copy_stat(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, addr: u64, st: &libc::stat) -> SysResult {
    // SAFETY: plain data.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            st as *const _ as *const u8,
            std::mem::size_of::<libc::stat>(),
        )
    };
    p.write_user(cpu, addr, bytes)?;
    Ok(0)
}

/// `fstat`.
pub fn sys_fstat(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let f = p.fds.get(a[0] as i64).ok_or(EBADF)?;
    let st = match &f.kind {
        FdKind::Pipe(_) => {
            // pipefs: a FIFO of mode 0600 owned by the caller, one page of block size.
            // SAFETY: zeroed stat is valid plain data.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            st.st_mode = libc::S_IFIFO | 0o600;
            st.st_nlink = 1;
            st.st_blksize = 4096;
            // SAFETY: getuid/getgid cannot fail.
            (st.st_uid, st.st_gid) = unsafe { (libc::getuid(), libc::getgid()) };
            st
        }
        FdKind::Mem { .. } => mem_stat(f.path.as_deref()),
        FdKind::Dir { ents, .. } => super::procfs::dir_stat(ents),
        FdKind::Host(h) => {
            let h = std::os::fd::AsRawFd::as_raw_fd(h);
            // SAFETY: fstat into our own struct.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            host(unsafe { libc::fstat(h, &mut st) } as i64)?;
            st
        }
    };
    copy_stat(p, cpu, a[1], &st)
}

/// `newfstatat(dirfd, path, buf, flags)` (and `stat`, `lstat`).
pub fn sys_newfstatat(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let (dirfd, flags) = (a[0] as i64, a[3] as i32);
    let path = p.read_path(cpu, a[1])?;
    if path.as_bytes().is_empty() && flags & libc::AT_EMPTY_PATH != 0 {
        return sys_fstat(p, cpu, [a[0], a[2], 0, 0, 0, 0]);
    }
    let text = p.generated_at(dirfd, String::from_utf8_lossy(path.as_bytes()).into_owned());
    if let Some(ents) = super::procfs::dir(p, &text)? {
        return copy_stat(p, cpu, a[2], &super::procfs::dir_stat(&ents));
    }
    if super::procfs::open(p, cpu, &text)?.is_some() {
        return copy_stat(p, cpu, a[2], &mem_stat(Some(&text)));
    }
    let (d, path) = p.host_at(dirfd, path, &text)?;
    // SAFETY: fstatat into our own struct with a NUL-terminated path.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    host(unsafe { libc::fstatat(d, path.as_ptr(), &mut st, flags) } as i64)?;
    copy_stat(p, cpu, a[2], &st)
}

/// `statx(dirfd, path, flags, mask, buf)`.
pub fn sys_statx(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let (dirfd, flags, mask) = (a[0] as i64, a[2] as i32, a[3] as u32);
    let path = p.read_path(cpu, a[1])?;
    let mut buf = [0u8; 256];
    let text = p.generated_at(dirfd, String::from_utf8_lossy(path.as_bytes()).into_owned());
    let generated = if path.as_bytes().is_empty() && flags & libc::AT_EMPTY_PATH != 0 {
        match p.fds.get(dirfd) {
            Some(Fd {
                kind: FdKind::Dir { ents, .. },
                ..
            }) => Some(super::procfs::dir_stat(ents)),
            Some(
                f @ Fd {
                    kind: FdKind::Mem { .. },
                    ..
                },
            ) => Some(mem_stat(f.path.as_deref())),
            _ => None,
        }
    } else if let Some(ents) = super::procfs::dir(p, &text)? {
        Some(super::procfs::dir_stat(&ents))
    } else {
        super::procfs::open(p, cpu, &text)?.map(|_| mem_stat(Some(&text)))
    };
    if let Some(st) = generated {
        p.write_user(cpu, a[4], &statx_of(&st))?;
        return Ok(0);
    }
    let d = if path.as_bytes().is_empty() && flags & libc::AT_EMPTY_PATH != 0 {
        match p.fds.get(dirfd) {
            Some(f) if f.host().is_none() => return Err(-(libc::ENOSYS as i64)),
            _ => p.host_fd(dirfd)?,
        }
    } else {
        p.host_fd(dirfd)?
    };
    // SAFETY: statx into our own 256-byte buffer (sizeof(struct statx)).
    let r = unsafe {
        libc::syscall(
            libc::SYS_statx,
            d,
            path.as_ptr(),
            flags,
            mask,
            buf.as_mut_ptr(),
        )
    };
    host(r)?;
    p.write_user(cpu, a[4], &buf)?;
    Ok(0)
}

/// A `struct statx` (256 bytes) with the basic fields of `st` (`STATX_BASIC_STATS`).
fn statx_of(st: &libc::stat) -> [u8; 256] {
    let mut b = [0u8; 256];
    let mut put = |off: usize, v: &[u8]| b[off..off + v.len()].copy_from_slice(v);
    put(0, &0x7ffu32.to_le_bytes()); // stx_mask
    put(4, &(st.st_blksize as u32).to_le_bytes());
    put(16, &(st.st_nlink as u32).to_le_bytes());
    put(20, &st.st_uid.to_le_bytes());
    put(24, &st.st_gid.to_le_bytes());
    put(28, &(st.st_mode as u16).to_le_bytes());
    put(32, &st.st_ino.to_le_bytes());
    put(40, &(st.st_size as u64).to_le_bytes());
    put(48, &(st.st_blocks as u64).to_le_bytes());
    b
}

/// `faccessat2(dirfd, path, mode, flags)` (and `access`, `faccessat`).
pub fn sys_faccessat(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let path = p.read_path(cpu, a[1])?;
    let text = p.generated_at(
        a[0] as i64,
        String::from_utf8_lossy(path.as_bytes()).into_owned(),
    );
    if super::procfs::dir(p, &text)?.is_some() || super::procfs::open(p, cpu, &text)?.is_some() {
        return Ok(0);
    }
    let d = p.host_fd(a[0] as i64)?;
    // SAFETY: a NUL-terminated path.
    host(unsafe { libc::faccessat(d, path.as_ptr(), a[2] as i32, a[3] as i32) } as i64)
}

/// `dup`.
pub fn sys_dup(p: &mut Proc<'_>, _cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let f = p.fds.dup_of(a[0] as i64)?;
    p.fds.install(f, 0)
}

/// `dup3(old, new, flags)` (and `dup2`, where `old == new` is not an error).
pub fn sys_dup3(p: &mut Proc<'_>, _cpu: &CpuGuard<'_>, a: [u64; 6], dup2: bool) -> SysResult {
    let (old, new, flags) = (a[0] as i64, a[1] as i64, a[2] as i32);
    if flags & !libc::O_CLOEXEC != 0 || new < 0 {
        return Err(EINVAL);
    }
    if old == new {
        return if dup2 && p.fds.get(old).is_some() {
            Ok(new)
        } else if dup2 {
            Err(EBADF)
        } else {
            Err(EINVAL)
        };
    }
    let mut f = p.fds.dup_of(old)?;
    f.cloexec = flags & libc::O_CLOEXEC != 0;
    p.fds.install_at(new as usize, f)?;
    Ok(new)
}

/// `fcntl`.
pub fn sys_fcntl(p: &mut Proc<'_>, _cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let (fd, cmd, arg) = (a[0] as i64, a[1] as i32, a[2]);
    match cmd {
        libc::F_GETFD => Ok(i64::from(p.fds.get(fd).ok_or(EBADF)?.cloexec)),
        libc::F_SETFD => {
            p.fds.get_mut(fd).ok_or(EBADF)?.cloexec = arg & libc::FD_CLOEXEC as u64 != 0;
            Ok(0)
        }
        libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => {
            let mut f = p.fds.dup_of(fd)?;
            f.cloexec = cmd == libc::F_DUPFD_CLOEXEC;
            p.fds.install(f, arg as usize)
        }
        _ => {
            let f = p.fds.get(fd).ok_or(EBADF)?;
            if let FdKind::Pipe(end) = &f.kind {
                return match cmd {
                    libc::F_GETFL => {
                        let mode = if end.write {
                            libc::O_WRONLY
                        } else {
                            libc::O_RDONLY
                        };
                        let nb = if end.nonblocking() {
                            libc::O_NONBLOCK
                        } else {
                            0
                        };
                        Ok((mode | nb) as i64)
                    }
                    libc::F_SETFL => {
                        end.nonblock.store(
                            arg & libc::O_NONBLOCK as u64 != 0,
                            std::sync::atomic::Ordering::Relaxed,
                        );
                        Ok(0)
                    }
                    libc::F_GETPIPE_SZ => Ok((super::super::pipe::PIPE_DEF_BUFFERS * 4096) as i64),
                    _ => Err(EINVAL),
                };
            }
            match f.host() {
                // F_GETFL, F_SETFL, locks on numbers: the host's.
                Some(h) if matches!(cmd, libc::F_GETFL | libc::F_SETFL) => {
                    // SAFETY: fcntl with an integer argument on our own descriptor.
                    host(unsafe { libc::fcntl(h, cmd, arg as libc::c_long) } as i64)
                }
                Some(_) => Err(EINVAL),
                None if cmd == libc::F_GETFL => Ok(libc::O_RDONLY as i64),
                None => Err(EINVAL),
            }
        }
    }
}

/// `ioctl`: the terminal queries programs make (`TCGETS`, `TIOCGWINSZ`, `FIONREAD`),
/// forwarded with their argument structure copied; job control on the terminal
/// (`TIOCGPGRP`, `TIOCSPGRP`, `TIOCGSID`) is the run's own ([`crate::kvm::tty`]); others
/// are `ENOTTY`.
pub fn sys_ioctl(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let (fd, req, arg) = (a[0] as i64, a[1], a[2]);
    if let Some(end) = p.pipe_end(fd) {
        if req != libc::FIONREAD {
            return Err(-(libc::ENOTTY as i64));
        }
        let n = end.pipe.available() as i32;
        p.write_user(cpu, arg, &n.to_le_bytes())?;
        return Ok(0);
    }
    let h = match p.fds.get(fd).ok_or(EBADF)?.host() {
        Some(h) => h,
        None => return Err(-(libc::ENOTTY as i64)),
    };
    if let Some(r) = crate::kvm::tty::ioctl(p, cpu, h, req, arg) {
        return r;
    }
    // Settings of the terminal: from the program to the host's terminal (a background
    // caller is stopped with SIGTTOU first, as tty_check_change does).
    let set = match req {
        r if [libc::TCSETS, libc::TCSETSW, libc::TCSETSF].contains(&r) => Some(KERNEL_TERMIOS),
        r if r == libc::TIOCSWINSZ => Some(std::mem::size_of::<libc::winsize>()),
        _ => None,
    };
    if let Some(size) = set {
        if req != libc::TIOCSWINSZ {
            if let Some(r) = crate::kvm::tty::check_change(p, h) {
                return r;
            }
        }
        let b = p.read_user(cpu, arg, size)?;
        // SAFETY: the host reads `size` bytes of our own buffer.
        return host(unsafe { libc::ioctl(h, req as _, b.as_ptr()) } as i64);
    }
    if req == libc::TCFLSH {
        if let Some(r) = crate::kvm::tty::check_change(p, h) {
            return r;
        }
        // SAFETY: an integer argument.
        return host(unsafe { libc::ioctl(h, req as _, arg as libc::c_int) } as i64);
    }
    let size = match req {
        // The kernel's struct termios (c_cc[19]: 36 bytes), not glibc's larger one: the
        // program's buffer is the kernel's size.
        r if r == libc::TCGETS => KERNEL_TERMIOS,
        r if r == libc::TIOCGWINSZ => std::mem::size_of::<libc::winsize>(),
        r if r == libc::TIOCGPGRP || r == libc::FIONREAD => 4,
        _ => return Err(-(libc::ENOTTY as i64)),
    };
    let mut buf = vec![0u8; size];
    // SAFETY: a read-only query filling `size` bytes of our own buffer.
    host(unsafe { libc::ioctl(h, req as _, buf.as_mut_ptr()) } as i64)?;
    p.write_user(cpu, arg, &buf)?;
    Ok(0)
}

/// `sizeof(struct termios)` of the kernel's `TCGETS` (four flag words, `c_line`, 19
/// control characters).
const KERNEL_TERMIOS: usize = 4 * 4 + 1 + 19;

/// `fsync`/`fdatasync`.
pub fn sys_fsync(p: &mut Proc<'_>, _cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    match p.fds.get(a[0] as i64).ok_or(EBADF)?.host() {
        // SAFETY: fsync of our own descriptor.
        Some(h) => host(unsafe { libc::fsync(h) } as i64),
        None => Err(EINVAL),
    }
}

/// `ftruncate`. A file that shrinks gets its new size in mmkit and loses its cache past it
/// before the host file shrinks (`truncate_setsize` before the file system frees the
/// blocks, as Linux orders it): a writeback in between sees the new end and writes nothing
/// past it.
pub fn sys_ftruncate(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let h = p.host_fd(a[0] as i64)?;
    let len = a[1] as i64;
    let entry = p.host_entry(h);
    if let Some((e, size)) = &entry {
        if len >= 0 && (len as u64) < *size {
            crate::hostfs::truncate_setsize(p.k, cpu, e, len as u64);
        }
    }
    // SAFETY: ftruncate of our own descriptor.
    if let Err(err) = host(unsafe { libc::ftruncate(h, len) } as i64) {
        if let Some((e, _)) = &entry {
            crate::hostfs::truncate_setsize(p.k, cpu, e, e.1.host_size());
        }
        return Err(err);
    }
    p.write_through_cache(cpu, h, a[1], &[]);
    Ok(0)
}

/// `getcwd`.
pub fn sys_getcwd(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let cwd = std::env::current_dir().map_err(|_| -(libc::ENOENT as i64))?;
    let mut b = cwd.to_string_lossy().into_owned().into_bytes();
    b.push(0);
    if b.len() as u64 > a[1] {
        return Err(-(libc::ERANGE as i64));
    }
    p.write_user(cpu, a[0], &b)?;
    Ok(b.len() as i64)
}

/// `chdir`: the VMM's own working directory is the process's.
pub fn sys_chdir(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let path = p.read_path(cpu, a[0])?;
    // SAFETY: a NUL-terminated path.
    host(unsafe { libc::chdir(path.as_ptr()) } as i64)
}

/// `renameat2(olddir, old, newdir, new, flags)`.
pub fn sys_renameat(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let old = p.read_path(cpu, a[1])?;
    let new = p.read_path(cpu, a[3])?;
    let (od, nd) = (p.host_fd(a[0] as i64)?, p.host_fd(a[2] as i64)?);
    // SAFETY: NUL-terminated paths.
    host(unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            od,
            old.as_ptr(),
            nd,
            new.as_ptr(),
            a[4],
        )
    })
}

/// `mkdirat`.
pub fn sys_mkdirat(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let path = p.read_path(cpu, a[1])?;
    let d = p.host_fd(a[0] as i64)?;
    // SAFETY: a NUL-terminated path.
    host(unsafe { libc::mkdirat(d, path.as_ptr(), a[2] as u32) } as i64)
}

/// `fchmodat` (and `chmod`).
pub fn sys_fchmodat(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let path = p.read_path(cpu, a[1])?;
    let d = p.host_fd(a[0] as i64)?;
    // SAFETY: a NUL-terminated path.
    host(unsafe { libc::fchmodat(d, path.as_ptr(), (a[2] & 0o7777) as u32, 0) } as i64)
}

/// `fchmod`.
pub fn sys_fchmod(p: &mut Proc<'_>, _cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let h = p.fds.get(a[0] as i64).and_then(|f| f.host()).ok_or(EBADF)?;
    // SAFETY: fchmod of our own descriptor.
    host(unsafe { libc::fchmod(h, (a[1] & 0o7777) as u32) } as i64)
}

/// `unlinkat` (and `unlink`, `rmdir`).
pub fn sys_unlinkat(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let path = p.read_path(cpu, a[1])?;
    let d = p.host_fd(a[0] as i64)?;
    // SAFETY: a NUL-terminated path.
    host(unsafe { libc::unlinkat(d, path.as_ptr(), a[2] as i32) } as i64)
}

/// `readlinkat` (and `readlink`): `/proc/self/exe` is the program mmkit exec'd.
pub fn sys_readlinkat(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let path = p.read_path(cpu, a[1])?;
    let (buf, size) = (a[2], a[3] as usize);
    let text = p.generated_at(
        a[0] as i64,
        String::from_utf8_lossy(path.as_bytes()).into_owned(),
    );
    if let Some(target) = super::procfs::readlink(p, &text) {
        let target = target?;
        let b = target.as_bytes();
        let n = b.len().min(size);
        p.write_user(cpu, buf, &b[..n])?;
        return Ok(n as i64);
    }
    let d = p.host_fd(a[0] as i64)?;
    let mut tmp = vec![0u8; size.min(super::PATH_MAX)];
    // SAFETY: into our own buffer.
    let r = host(
        unsafe { libc::readlinkat(d, path.as_ptr(), tmp.as_mut_ptr().cast(), tmp.len()) } as i64,
    )?;
    p.write_user(cpu, buf, &tmp[..r as usize])?;
    Ok(r)
}

/// `getdents64(fd, dirp, count)`.
pub fn sys_getdents64(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let count = (a[2] as usize).min(MAX_RW_CHUNK);
    if let Some(FdKind::Dir { ents, pos }) = p.fds.get_mut(a[0] as i64).map(|f| &mut f.kind) {
        // linux_dirent64: d_ino, d_off, d_reclen, d_type, the name and its NUL, padded to
        // 8 bytes; as many whole records as fit (none fitting at all is EINVAL).
        let mut out = Vec::new();
        let mut next = *pos;
        for e in ents.iter().skip(*pos) {
            let reclen = (19 + e.name.len() + 1).next_multiple_of(8);
            if out.len() + reclen > count {
                break;
            }
            next += 1;
            let start = out.len();
            out.extend_from_slice(&e.ino.to_le_bytes());
            out.extend_from_slice(&(next as i64).to_le_bytes());
            out.extend_from_slice(&(reclen as u16).to_le_bytes());
            out.push(e.kind);
            out.extend_from_slice(e.name.as_bytes());
            out.resize(start + reclen, 0);
        }
        if out.is_empty() && next < ents.len() {
            return Err(EINVAL);
        }
        let done = next;
        p.write_user(cpu, a[1], &out)?;
        // (A bad buffer is EFAULT and leaves the position.)
        if let Some(FdKind::Dir { pos, .. }) = p.fds.get_mut(a[0] as i64).map(|f| &mut f.kind) {
            *pos = done;
        }
        return Ok(out.len() as i64);
    }
    let h = match p.fds.get(a[0] as i64).map(|f| &f.kind) {
        // Not a directory: a generated file or a pipe.
        Some(FdKind::Mem { .. } | FdKind::Pipe(_)) => return Err(-(libc::ENOTDIR as i64)),
        _ => p.host_fd(a[0] as i64)?,
    };
    let mut tmp = vec![0u8; count];
    // SAFETY: into our own buffer of its length.
    let r = host(unsafe { libc::syscall(libc::SYS_getdents64, h, tmp.as_mut_ptr(), tmp.len()) })?;
    p.write_user(cpu, a[1], &tmp[..r as usize])?;
    Ok(r)
}

/// `statfs`.
pub fn sys_statfs(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let path = p.read_path(cpu, a[0])?;
    // SAFETY: into our own struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    host(unsafe { libc::statfs(path.as_ptr(), &mut st) } as i64)?;
    // SAFETY: plain data.
    let b = unsafe {
        std::slice::from_raw_parts(
            &st as *const _ as *const u8,
            std::mem::size_of::<libc::statfs>(),
        )
    };
    p.write_user(cpu, a[1], b)?;
    Ok(0)
}

/// `fstatfs`.
pub fn sys_fstatfs(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let h = p.host_fd(a[0] as i64)?;
    // SAFETY: into our own struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    host(unsafe { libc::fstatfs(h, &mut st) } as i64)?;
    // SAFETY: plain data.
    let b = unsafe {
        std::slice::from_raw_parts(
            &st as *const _ as *const u8,
            std::mem::size_of::<libc::statfs>(),
        )
    };
    p.write_user(cpu, a[1], b)?;
    Ok(0)
}

/// `fadvise64`: advice only; checked and accepted.
pub fn sys_fadvise64(p: &mut Proc<'_>, _cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    p.host_fd(a[0] as i64)?;
    if a[3] > 5 {
        return Err(EINVAL);
    }
    Ok(0)
}

/// `getxattr`/`lgetxattr`/`fgetxattr`/`listxattr`/`llistxattr`/`flistxattr`, forwarded.
pub fn sys_xattr(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, nr: u64, a: [u64; 6]) -> SysResult {
    const XATTR_NAME_MAX: usize = 255;
    const XATTR_SIZE_MAX: usize = 65536;
    let list = matches!(nr, 194..=196);
    let by_fd = matches!(nr, 193 | 196);
    let (buf, size) = if list { (a[1], a[2]) } else { (a[2], a[3]) };
    let size = (size as usize).min(XATTR_SIZE_MAX);
    let mut out = vec![0u8; size];
    let name = if list {
        None
    } else {
        let n = p.read_cstr(cpu, a[1], XATTR_NAME_MAX + 1)?;
        Some(std::ffi::CString::new(n).map_err(|_| EINVAL)?)
    };
    let target = if by_fd {
        (None, Some(p.host_fd(a[0] as i64)?))
    } else {
        (Some(p.read_path(cpu, a[0])?), None)
    };
    let dst = if size == 0 {
        std::ptr::null_mut()
    } else {
        out.as_mut_ptr().cast()
    };
    // SAFETY: NUL-terminated names and paths; `dst` is our buffer of `size` bytes (or null
    // with size 0, the size query).
    let r = unsafe {
        match (nr, &target, &name) {
            (191, (Some(path), _), Some(n)) => libc::getxattr(path.as_ptr(), n.as_ptr(), dst, size),
            (192, (Some(path), _), Some(n)) => {
                libc::lgetxattr(path.as_ptr(), n.as_ptr(), dst, size)
            }
            (193, (_, Some(fd)), Some(n)) => libc::fgetxattr(*fd, n.as_ptr(), dst, size),
            (194, (Some(path), _), _) => libc::listxattr(path.as_ptr(), dst.cast(), size),
            (195, (Some(path), _), _) => libc::llistxattr(path.as_ptr(), dst.cast(), size),
            (196, (_, Some(fd)), _) => libc::flistxattr(*fd, dst.cast(), size),
            _ => return Err(EINVAL),
        }
    };
    let r = host(r as i64)?;
    if size > 0 {
        p.write_user(cpu, buf, &out[..r as usize])?;
    }
    Ok(r)
}

/// `socket`: a host socket (name lookups talk to local daemons).
pub fn sys_socket(p: &mut Proc<'_>, _cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let ty = a[1] as i32;
    // SAFETY: socket with integer arguments; the descriptor is owned below.
    let r =
        host(unsafe { libc::socket(a[0] as i32, ty | libc::SOCK_CLOEXEC, a[2] as i32) } as i64)?;
    // SAFETY: fresh descriptor.
    let owned = unsafe { OwnedFd::from_raw_fd(r as RawFd) };
    p.fds.install(
        Fd {
            kind: FdKind::Host(owned),
            cloexec: ty & libc::SOCK_CLOEXEC != 0,
            path: None,
            cache: None,
        },
        0,
    )
}

/// `connect`: the address copied in (at most `sizeof(struct sockaddr_storage)`).
pub fn sys_connect(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let h = p.host_fd(a[0] as i64)?;
    let len = a[2] as usize;
    if len > std::mem::size_of::<libc::sockaddr_storage>() {
        return Err(EINVAL);
    }
    let addr = p.read_user(cpu, a[1], len)?;
    // SAFETY: `addr` holds `len` bytes of the guest's sockaddr.
    host(unsafe { libc::connect(h, addr.as_ptr().cast(), len as u32) } as i64)
}

impl Proc<'_> {
    /// The host wrote `[off, off + n)` of the file behind `hfd` by itself (`copy_file_range`,
    /// `sendfile`): re-read the pages of that range mmkit has cached, so the cache and the
    /// file stay one.
    fn refresh_cached_range(&mut self, cpu: &CpuGuard<'_>, hfd: RawFd, off: u64, n: u64) {
        let Some((entry, size)) = self.host_entry(hfd) else {
            return;
        };
        crate::hostfs::truncate_setsize(self.k, cpu, &entry, size);
        let inode = &entry.0;
        let mut page = [0u8; 4096];
        let end = off.saturating_add(n);
        let mut idx = off >> 12;
        while idx << 12 < end {
            if inode.cached_pfn(idx).is_some() {
                let lo = (idx << 12).max(off);
                let hi = ((idx + 1) << 12).min(end);
                let len = (hi - lo) as usize;
                // SAFETY: into our own buffer.
                let r = unsafe { libc::pread(hfd, page.as_mut_ptr().cast(), len, lo as i64) };
                if r > 0 {
                    self.k
                        .update_cached_range(cpu, inode, lo, &page[..r as usize]);
                }
            }
            idx += 1;
        }
    }

    fn read_off(&mut self, cpu: &CpuGuard<'_>, ptr: u64) -> Result<Option<i64>, i64> {
        if ptr == 0 {
            return Ok(None);
        }
        Ok(Some(self.read_u64(cpu, ptr)? as i64))
    }
}

/// `copy_file_range(fd_in, off_in, fd_out, off_out, len, flags)`: the host copies.
pub fn sys_copy_file_range(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let (hin, hout) = (p.host_fd(a[0] as i64)?, p.host_fd(a[2] as i64)?);
    let mut oin = p.read_off(cpu, a[1])?;
    let mut oout = p.read_off(cpu, a[3])?;
    // SAFETY: lseek of our own descriptor.
    let out_pos = oout.unwrap_or_else(|| unsafe { libc::lseek(hout, 0, libc::SEEK_CUR) });
    let pin = oin.as_mut().map_or(std::ptr::null_mut(), |o| o as *mut i64);
    let pout = oout
        .as_mut()
        .map_or(std::ptr::null_mut(), |o| o as *mut i64);
    // SAFETY: our own offsets (or null) and descriptors.
    let r = host(
        unsafe { libc::copy_file_range(hin, pin, hout, pout, a[4] as usize, a[5] as u32) } as i64,
    )?;
    if let Some(o) = oin {
        p.write_user(cpu, a[1], &o.to_le_bytes())?;
    }
    if let Some(o) = oout {
        p.write_user(cpu, a[3], &o.to_le_bytes())?;
    }
    if r > 0 && out_pos >= 0 {
        p.refresh_cached_range(cpu, hout, out_pos as u64, r as u64);
    }
    Ok(r)
}

/// `sendfile(out_fd, in_fd, offset, count)`: the host copies.
pub fn sys_sendfile(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let (hout, hin) = (p.host_fd(a[0] as i64)?, p.host_fd(a[1] as i64)?);
    let mut off = p.read_off(cpu, a[2])?;
    // SAFETY: lseek of our own descriptor.
    let out_pos = unsafe { libc::lseek(hout, 0, libc::SEEK_CUR) };
    let po = off.as_mut().map_or(std::ptr::null_mut(), |o| o as *mut i64);
    // SAFETY: our own offset (or null) and descriptors.
    let r = host(unsafe { libc::sendfile(hout, hin, po, a[3] as usize) } as i64)?;
    if let Some(o) = off {
        p.write_user(cpu, a[2], &o.to_le_bytes())?;
    }
    if r > 0 && out_pos >= 0 {
        p.refresh_cached_range(cpu, hout, out_pos as u64, r as u64);
    }
    Ok(r)
}
