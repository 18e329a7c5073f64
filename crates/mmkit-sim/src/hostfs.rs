//! Host files as the simulated machine's files: read-only, read with `pread`, identified by
//! the host's device and inode numbers and canonical path (what `/proc/PID/maps` shows), one
//! `Inode` — one page cache — per host file, as a real kernel keeps one inode per file.
//!
//! Opening is the VFS side of exec (`do_open_execat`): the path is looked up with `stat`
//! (its errors are the lookup's: `ENOENT`, `ENOTDIR`, `ELOOP`, `EACCES` on a directory, …),
//! the inode's type, mode and mount flags are checked by the library's `may_open_exec`
//! before anything is opened — so a FIFO, a device or a directory is refused without
//! blocking — and only then is the file opened, non-blocking, and checked to be the same
//! regular file. Each file's attributes (mode, owner, `noexec`/`nosuid`, whether its file
//! system places mappings with `thp_get_unmapped_area`) come from the host.

use anyhow::{Context, Result};
use mmkit::errno::Errno;
use mmkit::fs::inode::{FMode, File, FileAttr, FileData, Inode};
use mmkit::fs::namei::Cred;
use mmkit::Kernel;
use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// `pread` until `buf` is full or the file ends; `EIO` on a host error.
fn pread_full(file: &std::fs::File, off: u64, buf: &mut [u8]) -> Result<usize, Errno> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Err(Errno::EIO),
        }
    }
    Ok(done)
}

/// The readahead window of the host block device holding a file, in pages
/// (`/sys/dev/block/MAJ:MIN/queue/read_ahead_kb`; Linux's 128 KiB default otherwise).
pub fn device_ra_pages(dev: u64) -> u64 {
    let (major, minor) = dev_major_minor(dev);
    std::fs::read_to_string(format!(
        "/sys/dev/block/{major}:{minor}/queue/read_ahead_kb"
    ))
    .ok()
    .and_then(|s| s.trim().parse::<u64>().ok())
    .map_or(mmkit::mm::filemap::VM_READAHEAD_PAGES, |kb| kb / 4)
}

/// A host file as the backing store of an mmkit inode: read with `pread`; written back with
/// `pwrite` once some descriptor with write access to it has been seen (a read-only one
/// first, as exec opens files, is replaced then). Its size is the host file's, as last seen
/// or changed through mmkit.
pub struct HostFile {
    file: std::sync::RwLock<std::fs::File>,
    writable: std::sync::atomic::AtomicBool,
    size: std::sync::atomic::AtomicU64,
    ra_pages: u64,
    attr: FileAttr,
}

impl HostFile {
    fn new(file: std::fs::File, writable: bool, md: &std::fs::Metadata, attr: FileAttr) -> Self {
        Self {
            file: std::sync::RwLock::new(file),
            writable: std::sync::atomic::AtomicBool::new(writable),
            size: std::sync::atomic::AtomicU64::new(md.len()),
            ra_pages: device_ra_pages(md.dev()),
            // The opened file's own mode and owner; the mount's flags as checked.
            attr: FileAttr {
                mode: md.mode(),
                uid: md.uid(),
                gid: md.gid(),
                ..attr
            },
        }
    }

    /// Use `file` (a descriptor with write access) for writeback from now on.
    pub fn upgrade(&self, file: std::fs::File) {
        *self.file.write().expect("hostfile lock") = file;
        self.writable
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Go back to a read-only descriptor (opened anew through `/proc/self/fd`), so the
    /// host sees no writer of the file (`ETXTBSY` for a native exec of it otherwise).
    /// Dirty pages must have been written back first. Nothing changes if the reopen fails.
    fn downgrade(&self) {
        let mut f = self.file.write().expect("hostfile lock");
        let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&*f));
        if let Ok(ro) = std::fs::File::open(path) {
            *f = ro;
            self.writable
                .store(false, std::sync::atomic::Ordering::Release);
        }
    }

    /// The size on the host now (another descriptor may have changed the file), or the
    /// one known when the host cannot say.
    pub fn host_size(&self) -> u64 {
        match self.file.read().expect("hostfile lock").metadata() {
            Ok(md) => md.len(),
            Err(_) => self.size(),
        }
    }

    /// The size is now `size`; the size it had before.
    fn swap_size(&self, size: u64) -> u64 {
        self.size.swap(size, std::sync::atomic::Ordering::AcqRel)
    }
}

/// `truncate_setsize`: the host file behind `inode` is now `size` bytes long (a write or a
/// truncate through this machine, or a change on the host seen when the file was opened or
/// read): record it, and when the file shrank drop what mmkit caches and maps past its end
/// (`truncate_pagecache`), so no old byte shows there.
pub fn truncate_setsize(
    k: &Kernel,
    cpu: &mmkit::CpuGuard<'_>,
    (inode, host): &HostEntry,
    size: u64,
) {
    if host.swap_size(size) > size {
        k.truncate_pagecache(cpu, inode, size);
    }
}

impl FileData for HostFile {
    fn size(&self) -> u64 {
        self.size.load(std::sync::atomic::Ordering::Acquire)
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<usize, Errno> {
        pread_full(&self.file.read().expect("hostfile lock"), off, buf)
    }
    fn write_at(&self, off: u64, buf: &[u8]) -> Result<usize, Errno> {
        if !self.writable() {
            return Err(Errno::EROFS);
        }
        // Writeback writes whole pages but never past the end of the file.
        let end = off.saturating_add(buf.len() as u64).min(self.size());
        let n = end.saturating_sub(off) as usize;
        self.file
            .read()
            .expect("hostfile lock")
            .write_all_at(&buf[..n], off)
            .map_err(|_| Errno::EIO)?;
        Ok(buf.len())
    }
    fn writable(&self) -> bool {
        self.writable.load(std::sync::atomic::Ordering::Acquire)
    }
    fn ra_pages(&self) -> u64 {
        self.ra_pages
    }
    fn attr(&self) -> FileAttr {
        self.attr
    }
}

/// A shared `HostFile` as an inode's data (the inode and the [`HostFs`] table hold it).
struct SharedHostFile(Arc<HostFile>);

impl FileData for SharedHostFile {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<usize, Errno> {
        self.0.read_at(off, buf)
    }
    fn write_at(&self, off: u64, buf: &[u8]) -> Result<usize, Errno> {
        self.0.write_at(off, buf)
    }
    fn writable(&self) -> bool {
        self.0.writable()
    }
    fn ra_pages(&self) -> u64 {
        self.0.ra_pages
    }
    fn attr(&self) -> FileAttr {
        self.0.attr
    }
}

/// Whether the host places mappings of files on `file`'s file system for huge pages (its
/// `get_unmapped_area` is `thp_get_unmapped_area`): map 4 MiB of the file twice without a
/// hint (beyond its end is allowed until touched) and see whether both land on 2 MiB
/// boundaries — by chance that is 1 in 2^18. Probed rather than looked up by file-system
/// type because the answer is the host kernel's too: before Linux 5.18 only DAX files were
/// aligned, and which file systems use the rule has changed since.
fn host_thp_aligns(file: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    const LEN: usize = 4 << 20;
    let mut maps = [libc::MAP_FAILED; 2];
    for m in &mut maps {
        // SAFETY: a new private read-only mapping chosen by the kernel; never accessed, and
        // unmapped below.
        *m = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LEN,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
    }
    let aligned = maps
        .iter()
        .all(|&m| m != libc::MAP_FAILED && (m as usize).is_multiple_of(2 << 20));
    for m in maps {
        if m != libc::MAP_FAILED {
            // SAFETY: unmapping exactly the mapping made above.
            unsafe { libc::munmap(m, LEN) };
        }
    }
    aligned
}

/// A host file opened for reading and writing, for swap areas: pages go to it with
/// `pwrite` and come back with `pread`.
pub struct HostFileRw {
    file: std::fs::File,
    size: u64,
}

impl HostFileRw {
    /// Open `path` read-write, not through a symlink.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .with_context(|| format!("cannot open {} for writing", path.display()))?;
        let size = file.metadata()?.len();
        Ok(Self { file, size })
    }
}

impl FileData for HostFileRw {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<usize, Errno> {
        pread_full(&self.file, off, buf)
    }
    fn write_at(&self, off: u64, buf: &[u8]) -> Result<usize, Errno> {
        if off
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > self.size)
        {
            return Err(Errno::EFBIG);
        }
        self.file.write_all_at(buf, off).map_err(|_| Errno::EIO)?;
        Ok(buf.len())
    }
    fn writable(&self) -> bool {
        true
    }
}

/// Create a swap file of `bytes` at `path` the way `mkswap` does (util-linux's `mkswap` when
/// it is installed, else the same header written here), and open it read-write. The file
/// must not exist (`O_EXCL`, which also refuses a symlink planted there): make it in a
/// [`crate::tempfiles::PrivateDir`].
pub fn make_swap_file(path: &Path, bytes: u64) -> Result<HostFileRw> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create swap file {}", path.display()))?;
    f.set_len(bytes)
        .with_context(|| format!("cannot size swap file {}", path.display()))?;
    drop(f);
    let made = std::process::Command::new("mkswap")
        .arg(path)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !made {
        let hdr = mmkit::mm::swapfile::mkswap_header(bytes / 4096);
        HostFileRw::open(path)?.file.write_all_at(&hdr, 0)?;
    }
    HostFileRw::open(path)
}

/// A registered host file: the kernel's inode and its backing file.
pub type HostEntry = (Arc<Inode>, Arc<HostFile>);

/// The host files a machine has opened, by (device, inode): the inode and its backing file.
#[derive(Default)]
pub struct HostFs {
    inodes: Mutex<HashMap<(u64, u64), HostEntry>>,
    nosuid: std::sync::atomic::AtomicBool,
    /// [`host_thp_aligns`] by host device.
    thp_area: Mutex<HashMap<u64, bool>>,
}

/// `MAJOR()`/`MINOR()` of a host `st_dev` (glibc's encoding).
pub fn dev_major_minor(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major as u32, minor as u32)
}

/// The errno of a host I/O error (`EIO` when it has none this library names).
pub fn io_errno(e: &std::io::Error) -> Errno {
    e.raw_os_error()
        .and_then(Errno::from_code)
        .unwrap_or(Errno::EIO)
}

/// The attributes of the host file at `path` with metadata `md`: mode and owner from `stat`,
/// `noexec`/`nosuid` from `statvfs` (the placement rule is [`HostFs`]'s probe).
fn host_attr(path: &Path, md: &std::fs::Metadata) -> FileAttr {
    let mut attr = FileAttr {
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
        ..FileAttr::default()
    };
    if let Ok(c) = CString::new(path.as_os_str().as_bytes()) {
        // SAFETY: `c` is a NUL-terminated path; `sv` is a plain struct the call fills in,
        // read only when the call succeeds.
        unsafe {
            let mut sv: libc::statvfs = std::mem::zeroed();
            if libc::statvfs(c.as_ptr(), &mut sv) == 0 {
                attr.noexec = sv.f_flag & libc::ST_NOEXEC != 0;
                attr.nosuid = sv.f_flag & libc::ST_NOSUID != 0;
            }
        }
    }
    attr
}

/// Open `inode` read-only under the name `path` resolves to (symlinks followed, the last
/// component kept: a hard link shows its own name, as `d_path` does).
fn open_by_name(k: &Kernel, inode: &Arc<Inode>, path: &Path) -> Result<Arc<File>, Errno> {
    let name = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    k.open_path(inode, FMode::READ, &name.to_string_lossy())
}

/// The calling process's credentials, as the host kernel checks them (effective ids,
/// supplementary groups, `CAP_DAC_OVERRIDE` from `/proc/self/status`'s `CapEff`).
pub fn host_cred() -> Cred {
    // SAFETY: plain id queries without arguments.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let mut groups = vec![0 as libc::gid_t; 256];
    // SAFETY: `groups` has room for 256 entries and we pass that size.
    let n = unsafe { libc::getgroups(groups.len() as i32, groups.as_mut_ptr()) };
    groups.truncate(n.max(0) as usize);
    let cap_dac_override = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .map_or(euid == 0, |caps| caps & (1 << 1) != 0);
    Cred {
        fsuid: euid,
        fsgid: egid,
        groups,
        cap_dac_override,
    }
}

impl HostFs {
    /// See the host file system as mounted `nosuid` (or not): the set-user-ID bits of files
    /// opened from now on are ignored by exec, as on such a mount.
    pub fn set_nosuid(&self, on: bool) {
        self.nosuid.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    fn attr_of(&self, path: &Path, md: &std::fs::Metadata) -> FileAttr {
        let mut a = host_attr(path, md);
        a.nosuid |= self.nosuid.load(std::sync::atomic::Ordering::Relaxed);
        a
    }

    /// The inode of the regular host file at `path` (following symlinks), registering it
    /// with the kernel on first use. Anything but a regular file is refused before it is
    /// opened (opening a FIFO would block).
    pub fn inode(&self, k: &Kernel, cpu: &mmkit::CpuGuard<'_>, path: &Path) -> Result<Arc<Inode>> {
        let md =
            std::fs::metadata(path).with_context(|| format!("cannot open {}", path.display()))?;
        if !md.is_file() {
            anyhow::bail!("{} is not a regular file", path.display());
        }
        let attr = self.attr_of(path, &md);
        self.inode_with(k, cpu, path, attr)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))
    }

    /// Open a checked regular file without blocking, make sure it is the file that was
    /// checked, and find or make its inode.
    fn inode_with(
        &self,
        k: &Kernel,
        cpu: &mmkit::CpuGuard<'_>,
        path: &Path,
        attr: FileAttr,
    ) -> Result<Arc<Inode>, Errno> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| io_errno(&e))?;
        let md = file.metadata().map_err(|e| io_errno(&e))?;
        if !md.is_file() {
            // Replaced between the check and the open.
            return Err(Errno::EACCES);
        }
        self.register(k, cpu, file, &md, path, attr, false)
            .map(|(i, _)| i)
    }

    /// Find or make the inode of the open host file `file` (metadata `md`, reached as
    /// `path`): one inode per (device, inode number). A descriptor with write access
    /// (`writable`) becomes the one writeback uses.
    #[allow(clippy::too_many_arguments)]
    fn register(
        &self,
        k: &Kernel,
        cpu: &mmkit::CpuGuard<'_>,
        file: std::fs::File,
        md: &std::fs::Metadata,
        path: &Path,
        attr: FileAttr,
        writable: bool,
    ) -> Result<HostEntry, Errno> {
        let key = (md.dev(), md.ino());
        let mut map = self.inodes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = map.get(&key) {
            let entry = entry.clone();
            drop(map);
            if writable && !entry.1.writable() {
                entry.1.upgrade(file);
            }
            // Opened again (with O_TRUNC, or changed on the host meanwhile): its size now.
            truncate_setsize(k, cpu, &entry, md.len());
            return Ok(entry);
        }
        let thp = *self
            .thp_area
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(md.dev())
            .or_insert_with(|| host_thp_aligns(&file));
        let attr = FileAttr {
            thp_unmapped_area: thp,
            ..attr
        };
        let real: PathBuf = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let host = Arc::new(HostFile::new(file, writable, md, attr));
        let inode = k.new_inode(
            Box::new(SharedHostFile(host.clone())),
            dev_major_minor(md.dev()),
            md.ino(),
            &real.to_string_lossy(),
        );
        // The host's filesystems cache regular files in large folios (xfs, btrfs, ext4 since
        // Linux 6.16, tmpfs by its huge= policy); ours do too (mapping_set_large_folios).
        inode.mapping_set_large_folios();
        map.insert(key, (inode.clone(), host.clone()));
        Ok((inode, host))
    }

    /// The inode of the host file open as `file` (`path` is what `/proc/PID/maps` shows),
    /// registering it on first use; a `file` with write access (`writable`) becomes the one
    /// writeback uses. An error for anything but a regular file.
    pub fn inode_of(
        &self,
        k: &Kernel,
        cpu: &mmkit::CpuGuard<'_>,
        file: std::fs::File,
        path: &str,
        writable: bool,
    ) -> Result<HostEntry> {
        let md = file.metadata()?;
        if !md.is_file() {
            anyhow::bail!("{path} is not a regular file");
        }
        let attr = self.attr_of(Path::new(path), &md);
        self.register(k, cpu, file, &md, Path::new(path), attr, writable)
            .map_err(|e| anyhow::anyhow!("cannot open {path}: {e}"))
    }

    /// After a program: write back every dirty page of the host files it wrote
    /// (`write_inode_now`) and hold them read-only again, as a process that closed its
    /// descriptors leaves the file without a writer. A file that cannot be written back
    /// keeps its writable descriptor (and its dirty pages) for a later try.
    pub fn release_writers(&self, k: &Kernel, cpu: &mmkit::CpuGuard<'_>) {
        let entries: Vec<HostEntry> = self
            .inodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|(_, h)| h.writable())
            .cloned()
            .collect();
        for (inode, host) in entries {
            if k.write_inode_now(cpu, &inode).is_ok() {
                host.downgrade();
            }
        }
    }

    /// The backing file of a registered inode, by host (device, inode).
    pub fn host_file(&self, dev: u64, ino: u64) -> Option<HostEntry> {
        self.inodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(dev, ino))
            .cloned()
    }

    /// Open the host file at `path` read-only (not for exec: no execute check).
    pub fn open(&self, k: &Kernel, cpu: &mmkit::CpuGuard<'_>, path: &Path) -> Result<Arc<File>> {
        let inode = self.inode(k, cpu, path)?;
        Ok(open_by_name(k, &inode, path)?)
    }

    /// `open_exec` on the host file system: look `path` up, refuse what `may_open` with
    /// `MAY_EXEC` refuses for `cred` (`EACCES` for directories, FIFOs, devices, sockets, a
    /// `noexec` mount or no execute permission) before opening anything, then open it.
    /// An empty path is the current directory, as the kernel's own lookup of "" is.
    pub fn open_exec(
        &self,
        k: &Kernel,
        cpu: &mmkit::CpuGuard<'_>,
        path: &[u8],
        cred: &Cred,
    ) -> Result<Arc<File>, Errno> {
        if path.contains(&0) {
            return Err(Errno::ENOENT);
        }
        let p = if path.is_empty() {
            Path::new(".")
        } else {
            Path::new(OsStr::from_bytes(path))
        };
        let md = std::fs::metadata(p).map_err(|e| io_errno(&e))?;
        let attr = self.attr_of(p, &md);
        mmkit::fs::namei::may_open_exec(&attr, cred)?;
        let inode = self.inode_with(k, cpu, p, attr)?;
        open_by_name(k, &inode, p)
    }
}
