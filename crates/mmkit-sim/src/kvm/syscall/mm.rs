//! The memory system calls, all mmkit's (`mm/mmap.c`'s `ksys_mmap_pgoff`, `mm/mprotect.c`,
//! `mm/mremap.c`, `mm/madvise.c`, `mm/msync.c`, `mm/mlock.c`, `mm/mincore.c`,
//! `kernel/sys.c`'s `getrusage`/`sysinfo`/`prlimit64`).

use super::{Proc, SysResult, EBADF, EINVAL};
use mmkit::mm::mm_types::RLIM_INFINITY;
use mmkit::CpuGuard;

fn errno(e: mmkit::Errno) -> i64 {
    -(e.code() as i64)
}

/// `mmap(addr, len, prot, flags, fd, offset)`: anonymous memory, or a host file through the
/// machine's page cache (its inode shared with every other mapping and exec of the file).
pub fn sys_mmap(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    use mmkit::mm::mmap::MAP_ANONYMOUS;
    let (addr, len, prot, flags, fd, off) =
        (a[0], a[1], a[2] as u32, a[3] as u32, a[4] as i32, a[5]);
    if off & 0xfff != 0 {
        return Err(EINVAL);
    }
    let file = if flags & MAP_ANONYMOUS == 0 {
        Some(p.mmap_file(cpu, fd as i64)?)
    } else {
        None
    };
    let k = p.k;
    k.do_mmap(cpu, p.mm(), file.as_ref(), addr, len, prot, flags, off)
        .map(|v| v as i64)
        .map_err(errno)
}

/// `munmap`.
pub fn sys_munmap(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let k = p.k;
    k.munmap(cpu, p.mm(), a[0], a[1]).map(|_| 0).map_err(errno)
}

/// `mprotect`.
pub fn sys_mprotect(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let k = p.k;
    k.mprotect(cpu, p.mm(), a[0], a[1], a[2] as u32)
        .map(|_| 0)
        .map_err(errno)
}

/// `brk`: the new break, or the old one when it could not move (never an error).
pub fn sys_brk(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let k = p.k;
    Ok(k.brk(cpu, p.mm(), a[0]) as i64)
}

/// `mremap`.
pub fn sys_mremap(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let k = p.k;
    k.mremap(cpu, p.mm(), a[0], a[1], a[2], a[3] as u32, a[4])
        .map(|v| v as i64)
        .map_err(errno)
}

/// `msync`.
pub fn sys_msync(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let k = p.k;
    k.msync(cpu, p.mm(), a[0], a[1], a[2] as u32)
        .map(|_| 0)
        .map_err(errno)
}

/// `madvise`.
pub fn sys_madvise(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let k = p.k;
    k.madvise(cpu, p.mm(), a[0], a[1], a[2] as u32)
        .map(|_| 0)
        .map_err(errno)
}

/// `mincore(addr, len, vec)`: a byte per page, in chunks of a page of bytes so that no
/// guest-given length sizes an allocation.
pub fn sys_mincore(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let (start, len, vec) = (a[0], a[1], a[2]);
    let pages = len.div_ceil(4096);
    let mut done = 0u64;
    let mut out = [0u8; 4096];
    loop {
        let n = (pages - done).min(out.len() as u64) as usize;
        let k = p.k;
        k.mincore(cpu, p.mm(), start + (done << 12), &mut out[..n])
            .map_err(errno)?;
        if n == 0 {
            // Still validates the start address (and len 0 is fine).
            return Ok(0);
        }
        p.write_user(cpu, vec + done, &out[..n])?;
        done += n as u64;
        if done == pages {
            return Ok(0);
        }
    }
}

/// `mlock`.
pub fn sys_mlock(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let k = p.k;
    k.mlock(cpu, p.mm(), a[0], a[1]).map(|_| 0).map_err(errno)
}

/// `munlock`.
pub fn sys_munlock(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let k = p.k;
    k.munlock(cpu, p.mm(), a[0], a[1]).map(|_| 0).map_err(errno)
}

/// `mlockall`.
pub fn sys_mlockall(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let k = p.k;
    k.mlockall(cpu, p.mm(), a[0] as u32)
        .map(|_| 0)
        .map_err(errno)
}

/// `munlockall`.
pub fn sys_munlockall(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, _a: [u64; 6]) -> SysResult {
    let k = p.k;
    k.munlockall(cpu, p.mm()).map(|_| 0).map_err(errno)
}

/// `getrusage(who, ru)`: faults and `ru_maxrss` from mmkit, times from the host thread.
pub fn sys_getrusage(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    const RUSAGE_SELF: i64 = 0;
    const RUSAGE_CHILDREN: i64 = -1;
    const RUSAGE_THREAD: i64 = 1;
    let who = a[0] as i64;
    if ![RUSAGE_SELF, RUSAGE_CHILDREN, RUSAGE_THREAD].contains(&who) {
        return Err(EINVAL);
    }
    // SAFETY: a zeroed rusage is valid; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_THREAD of the calling (vCPU) thread into our own struct.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let t = p.tasks.get(p.pid).ok_or(EINVAL)?;
    let (flt, maxrss) = if who == RUSAGE_CHILDREN {
        (t.child_faults, 0)
    } else {
        let mm = p.tasks.mm_of(p.pid).ok_or(EINVAL)?;
        (t.fault_counts(), mm.hiwater_rss.max(mm.rss()) * 4)
    };
    ru.ru_minflt = flt.min_flt as i64;
    ru.ru_majflt = flt.maj_flt as i64;
    ru.ru_maxrss = maxrss as i64;
    ru.ru_nvcsw = 0;
    ru.ru_nivcsw = 0;
    // SAFETY: rusage is plain data; we copy its bytes.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            &ru as *const _ as *const u8,
            std::mem::size_of::<libc::rusage>(),
        )
    };
    p.write_user(cpu, a[1], bytes)?;
    Ok(0)
}

/// `sysinfo`: RAM, free, shared, buffer and swap figures from mmkit, uptime and loads from
/// the host.
pub fn sys_sysinfo(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    // SAFETY: a zeroed sysinfo is valid; the host fills uptime and loads.
    let mut si: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: into our own struct.
    unsafe { libc::sysinfo(&mut si) };
    let k = p.k;
    let (swap_total, swap_free, _) = k.swap_totals();
    si.totalram = k.totalram_pages() << 12;
    si.freeram = k.global_free_pages() << 12;
    si.sharedram = 0;
    si.bufferram = 0;
    si.totalswap = swap_total << 12;
    si.freeswap = swap_free << 12;
    si.totalhigh = 0;
    si.freehigh = 0;
    si.mem_unit = 1;
    si.procs = p.tasks.iter().count() as u16;
    // SAFETY: plain data.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            &si as *const _ as *const u8,
            std::mem::size_of::<libc::sysinfo>(),
        )
    };
    p.write_user(cpu, a[0], bytes)?;
    Ok(0)
}

/// The limits mmkit enforces, by resource number.
fn limit_slot<'a>(p: &'a mut Proc<'_>, resource: u32) -> Option<&'a mut u64> {
    let mm = p.mm();
    match resource {
        libc::RLIMIT_STACK => Some(&mut mm.rlimit_stack),
        libc::RLIMIT_AS => Some(&mut mm.rlimit_as),
        libc::RLIMIT_DATA => Some(&mut mm.rlimit_data),
        libc::RLIMIT_MEMLOCK => Some(&mut mm.rlimit_memlock),
        _ => None,
    }
}

/// `prlimit64(pid, resource, new, old)`: the memory limits are mmkit's (and enforced by
/// it); the others are the host's. The soft limit is enforced, as Linux does; the hard limit
/// is kept equal to what the host reports for the others.
pub fn sys_prlimit64(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    let (pid, resource, new, old) = (a[0] as i64, a[1] as u32, a[2], a[3]);
    if pid != 0 && pid != p.pid as i64 {
        return Err(-(libc::ESRCH as i64));
    }
    if resource >= 16 {
        return Err(EINVAL);
    }
    let mut host = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: reading our own limit into our own struct.
    unsafe { libc::prlimit64(0, resource as _, std::ptr::null(), &mut host) };
    let current = limit_slot(p, resource).map(|v| *v);
    if old != 0 {
        let cur = current.unwrap_or(host.rlim_cur);
        let max = if current.is_some() {
            RLIM_INFINITY
        } else {
            host.rlim_max
        };
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&cur.to_le_bytes());
        b[8..].copy_from_slice(&max.to_le_bytes());
        p.write_user(cpu, old, &b)?;
    }
    if new != 0 {
        let b = p.read_user(cpu, new, 16)?;
        let cur = u64::from_le_bytes(b[..8].try_into().expect("8"));
        let max = u64::from_le_bytes(b[8..].try_into().expect("8"));
        if cur > max {
            return Err(EINVAL);
        }
        match limit_slot(p, resource) {
            Some(slot) => *slot = cur,
            None => {
                // Other resources are the host's; changing them is not ours to do.
                if cur != host.rlim_cur || max != host.rlim_max {
                    return Err(-(libc::EPERM as i64));
                }
            }
        }
    }
    Ok(0)
}

/// `getrlimit`.
pub fn sys_getrlimit(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    sys_prlimit64(p, cpu, [0, a[0], 0, a[1], 0, 0])
}

/// `setrlimit`.
pub fn sys_setrlimit(p: &mut Proc<'_>, cpu: &CpuGuard<'_>, a: [u64; 6]) -> SysResult {
    sys_prlimit64(p, cpu, [0, a[0], a[1], 0, 0, 0])
}

impl Proc<'_> {
    /// The mmkit file behind descriptor `fd` for `mmap`: the host file's inode (one page cache
    /// per file), opened with the descriptor's access mode. `EBADF`, `EACCES` for a
    /// write-only descriptor, `ENODEV` for what has no page cache (pipes, terminals).
    pub fn mmap_file(
        &mut self,
        cpu: &CpuGuard<'_>,
        fd: i64,
    ) -> Result<std::sync::Arc<mmkit::fs::inode::File>, i64> {
        use mmkit::fs::inode::FMode;
        use std::os::fd::FromRawFd;
        let f = self.fds.get(fd).ok_or(EBADF)?;
        let host = f.host().ok_or(-(libc::ENODEV as i64))?;
        let path = f.path.clone();
        // SAFETY: F_GETFL on a descriptor we own.
        let fl = unsafe { libc::fcntl(host, libc::F_GETFL) };
        if fl < 0 {
            return Err(EBADF);
        }
        let acc = fl & libc::O_ACCMODE;
        if acc == libc::O_WRONLY {
            return Err(-(libc::EACCES as i64));
        }
        // SAFETY: dup of our own descriptor; the new one is owned by the File below.
        let d = unsafe { libc::fcntl(host, libc::F_DUPFD_CLOEXEC, 3) };
        if d < 0 {
            return Err(-(libc::EMFILE as i64));
        }
        // SAFETY: `d` is fresh and ours.
        let file = unsafe { std::fs::File::from_raw_fd(d) };
        let writable = acc == libc::O_RDWR;
        let shown = path.unwrap_or_else(|| format!("/proc/self/fd/{fd}"));
        let shown = std::fs::canonicalize(&shown)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or(shown);
        let (inode, _) = self
            .m
            .hostfs
            .inode_of(self.k, cpu, file, &shown, writable)
            .map_err(|_| -(libc::ENODEV as i64))?;
        let mode = if writable {
            FMode::READ | FMode::WRITE
        } else {
            FMode::READ
        };
        self.k.open(&inode, mode).map_err(errno)
    }
}
