//! Host files as the simulated machine's files: read-only, read with `pread`, identified by
//! the host's device and inode numbers and canonical path (what `/proc/PID/maps` shows), one
//! `Inode` — one page cache — per host file, as a real kernel keeps one inode per file.

use anyhow::{Context, Result};
use mmkit::errno::Errno;
use mmkit::fs::inode::{FMode, File, FileData, Inode};
use mmkit::Kernel;
use std::collections::HashMap;
use std::os::unix::fs::{FileExt, MetadataExt};
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

/// A host file as the backing store of an mmkit inode: read with `pread`; written back with
/// `pwrite` once some descriptor with write access to it has been seen (a read-only one
/// first, as exec opens files, is replaced then). Its size is the host file's, as last seen
/// or changed through mmkit.
pub struct HostFile {
    file: std::sync::RwLock<std::fs::File>,
    writable: std::sync::atomic::AtomicBool,
    size: std::sync::atomic::AtomicU64,
    ra_pages: u64,
    thp_area: bool,
}

impl HostFile {
    /// Use `file` (a descriptor with write access) for writeback from now on.
    pub fn upgrade(&self, file: std::fs::File) {
        *self.file.write().expect("hostfile lock") = file;
        self.writable
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Re-read the size from the host (another descriptor may have changed the file).
    pub fn refresh_size(&self) {
        if let Ok(md) = self.file.read().expect("hostfile lock").metadata() {
            self.size
                .store(md.len(), std::sync::atomic::Ordering::Release);
        }
    }

    /// The size is now `size` (a write or truncate through this machine).
    pub fn set_size(&self, size: u64) {
        self.size.store(size, std::sync::atomic::Ordering::Release);
    }
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
    fn thp_get_unmapped_area(&self) -> bool {
        self.thp_area
    }
}

/// Whether the host places mappings of files on `file`'s filesystem for huge pages (its
/// `get_unmapped_area` is `thp_get_unmapped_area`): map 4 MiB of the file twice without a
/// hint (beyond its end is allowed until touched) and see whether both land on 2 MiB
/// boundaries — by chance that is 1 in 2^18.
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
    /// Open `path` read-write.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
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
        if off + buf.len() as u64 > self.size {
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
/// it is installed, else the same header written here), and open it read-write.
pub fn make_swap_file(path: &Path, bytes: u64) -> Result<HostFileRw> {
    let f = std::fs::File::create(path)?;
    f.set_len(bytes)?;
    drop(f);
    let made = std::process::Command::new("mkswap")
        .arg(path)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !made {
        let hdr = mmkit::mm::swapfile::mkswap_header(bytes / 4096);
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)?
            .write_all_at(&hdr, 0)?;
    }
    HostFileRw::open(path)
}

/// A registered host file: the kernel's inode and its backing file.
pub type HostEntry = (Arc<Inode>, Arc<HostFile>);

/// The host files a machine has opened, by (device, inode): the inode and its backing file.
#[derive(Default)]
pub struct HostFs {
    inodes: Mutex<HashMap<(u64, u64), HostEntry>>,
    /// [`host_thp_aligns`] by host device.
    thp_area: Mutex<HashMap<u64, bool>>,
}

/// A shared `HostFile` as an inode's data.
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
    fn thp_get_unmapped_area(&self) -> bool {
        self.0.thp_area
    }
}

/// `MAJOR()`/`MINOR()` of a host `st_dev` (glibc's encoding).
pub fn dev_major_minor(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major as u32, minor as u32)
}

impl HostFs {
    /// The inode of the host file at `path` (following symlinks), registering it with the
    /// kernel on first use.
    pub fn inode(&self, k: &Kernel, path: &Path) -> Result<Arc<Inode>> {
        let real: PathBuf = std::fs::canonicalize(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let file = std::fs::File::open(&real)
            .with_context(|| format!("cannot open {}", real.display()))?;
        self.inode_of(k, file, &real.to_string_lossy(), false)
            .map(|(i, _)| i)
    }

    /// The inode of the host file open as `file` (`path` is what `/proc/PID/maps` shows),
    /// registering it on first use; a `file` with write access (`writable`) becomes the one
    /// writeback uses. `ENODEV`-like error for anything but a regular file.
    pub fn inode_of(
        &self,
        k: &Kernel,
        file: std::fs::File,
        path: &str,
        writable: bool,
    ) -> Result<(Arc<Inode>, Arc<HostFile>)> {
        let md = file.metadata()?;
        if !md.is_file() {
            anyhow::bail!("{path} is not a regular file");
        }
        let key = (md.dev(), md.ino());
        let mut map = self.inodes.lock().expect("hostfs lock");
        if let Some((i, h)) = map.get(&key) {
            if writable && !h.writable() {
                h.upgrade(file);
            }
            h.set_size(md.len());
            return Ok((i.clone(), h.clone()));
        }
        let thp_area = *self
            .thp_area
            .lock()
            .expect("hostfs lock")
            .entry(md.dev())
            .or_insert_with(|| host_thp_aligns(&file));
        let host = Arc::new(HostFile {
            file: std::sync::RwLock::new(file),
            writable: std::sync::atomic::AtomicBool::new(writable),
            size: std::sync::atomic::AtomicU64::new(md.len()),
            ra_pages: device_ra_pages(md.dev()),
            thp_area,
        });
        let inode = k.new_inode(
            Box::new(SharedHostFile(host.clone())),
            dev_major_minor(md.dev()),
            md.ino(),
            path,
        );
        map.insert(key, (inode.clone(), host.clone()));
        Ok((inode, host))
    }

    /// The backing file of a registered inode, by host (device, inode).
    pub fn host_file(&self, dev: u64, ino: u64) -> Option<(Arc<Inode>, Arc<HostFile>)> {
        self.inodes
            .lock()
            .expect("hostfs lock")
            .get(&(dev, ino))
            .cloned()
    }

    /// Open the host file at `path` read-only.
    pub fn open(&self, k: &Kernel, path: &Path) -> Result<Arc<File>> {
        let inode = self.inode(k, path)?;
        Ok(k.open(&inode, FMode::READ)?)
    }
}
