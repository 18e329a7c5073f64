//! Files as memory management sees them (`include/linux/fs.h`: `struct inode`,
//! `struct address_space`, `struct file`; `fs/inode.c`'s `iget`/`evict`; `mm/shmem.c`-like
//! memory-backed files).
//!
//! An [`Inode`] is a file's identity (device, inode number, path for `/proc/PID/maps`), its
//! contents ([`FileData`]: a host file in the simulator, or a [`RamFile`]), and its page
//! cache (`i_pages`: page index → pfn, kept by `mm/filemap.rs`). A [`File`] is an open file
//! (`struct file`): an inode plus the mode it was opened with, which `mmap` checks.
//!
//! Inodes are registered with the kernel ([`Kernel::new_inode`]) so that a page-cache page
//! can name its file through `page->mapping` (a small handle here, a pointer in Linux), as
//! reclaim and rmap need.

use crate::errno::Errno;
use crate::sync::SpinLock;
use crate::Kernel;
use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// `S_IFMT` and the file types (`include/uapi/linux/stat.h`).
pub mod mode {
    #![allow(missing_docs)]
    pub const S_IFMT: u32 = 0o170000;
    pub const S_IFSOCK: u32 = 0o140000;
    pub const S_IFLNK: u32 = 0o120000;
    pub const S_IFREG: u32 = 0o100000;
    pub const S_IFBLK: u32 = 0o060000;
    pub const S_IFDIR: u32 = 0o040000;
    pub const S_IFCHR: u32 = 0o020000;
    pub const S_IFIFO: u32 = 0o010000;
    pub const S_ISUID: u32 = 0o4000;
    pub const S_ISGID: u32 = 0o2000;
    pub const S_IXUGO: u32 = 0o111;
    pub const S_IXGRP: u32 = 0o010;
}

/// What exec and `mmap` need to know about a file besides its bytes: the inode's mode and
/// owner, the mount's `noexec`/`nosuid`, and whether the file system places mappings with
/// `thp_get_unmapped_area` (its `file_operations.get_unmapped_area`: ext2/ext4, xfs, erofs,
/// fuse, … in Linux 6.x).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct FileAttr {
    /// `i_mode`: type and permission bits.
    pub mode: u32,
    /// `i_uid`.
    pub uid: u32,
    /// `i_gid`.
    pub gid: u32,
    /// The mount is `noexec` (`path_noexec`).
    pub noexec: bool,
    /// The mount is `nosuid` (`mnt_may_suid` fails).
    pub nosuid: bool,
    /// `f_op->get_unmapped_area == thp_get_unmapped_area`.
    pub thp_unmapped_area: bool,
}

impl Default for FileAttr {
    /// A regular root-owned `rwxr-xr-x` file on an ordinary mount of a file system without
    /// its own placement rule.
    fn default() -> Self {
        Self {
            mode: mode::S_IFREG | 0o755,
            uid: 0,
            gid: 0,
            noexec: false,
            nosuid: false,
            thp_unmapped_area: false,
        }
    }
}

pub use crate::platform::FileData;

/// A writable file whose backing store is host memory (what tmpfs gives a test): shared
/// mappings of it are written back here.
pub struct RamFile {
    bytes: SpinLock<Vec<u8>>,
    attr: FileAttr,
}

impl RamFile {
    /// A file holding `bytes`.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self::with_attr(bytes, FileAttr::default())
    }

    /// A file holding `bytes`, with the given mode, owner and mount flags.
    pub fn with_attr(bytes: Vec<u8>, attr: FileAttr) -> Self {
        Self {
            bytes: SpinLock::new(bytes),
            attr,
        }
    }

    /// A copy of the current contents (what a `read(2)` of the whole file returns after
    /// writeback).
    pub fn contents(&self) -> Vec<u8> {
        self.bytes.lock().clone()
    }
}

impl FileData for RamFile {
    fn size(&self) -> u64 {
        self.bytes.lock().len() as u64
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<usize, Errno> {
        let b = self.bytes.lock();
        let Ok(off) = usize::try_from(off) else {
            return Ok(0);
        };
        if off >= b.len() {
            return Ok(0);
        }
        let n = buf.len().min(b.len() - off);
        buf[..n].copy_from_slice(&b[off..off + n]);
        Ok(n)
    }
    fn write_at(&self, off: u64, buf: &[u8]) -> Result<usize, Errno> {
        let mut b = self.bytes.lock();
        let off = usize::try_from(off).map_err(|_| Errno::EFBIG)?;
        let end = off.checked_add(buf.len()).ok_or(Errno::EFBIG)?;
        if end > b.len() {
            b.resize(end, 0);
        }
        b[off..end].copy_from_slice(buf);
        Ok(buf.len())
    }
    fn writable(&self) -> bool {
        true
    }
    fn attr(&self) -> FileAttr {
        self.attr
    }
}

/// A memory file of a fixed size whose bytes cost memory only once written (what tmpfs
/// gives a shared anonymous mapping, `shmem_zero_setup`: a mapping of any size is a file of
/// that size, zeroes until touched). Writes beyond the size are `EFBIG`.
pub struct SparseFile {
    size: u64,
    pages: SpinLock<alloc::collections::BTreeMap<u64, Box<[u8; 4096]>>>,
}

impl SparseFile {
    /// A file of `size` zero bytes.
    pub fn new(size: u64) -> Self {
        Self {
            size,
            pages: SpinLock::new(alloc::collections::BTreeMap::new()),
        }
    }
}

impl FileData for SparseFile {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<usize, Errno> {
        if off >= self.size {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(self.size - off) as usize;
        let pages = self.pages.lock();
        let mut done = 0;
        while done < n {
            let pos = off + done as u64;
            let (idx, in_page) = (pos >> 12, (pos & 4095) as usize);
            let chunk = (4096 - in_page).min(n - done);
            match pages.get(&idx) {
                Some(p) => buf[done..done + chunk].copy_from_slice(&p[in_page..in_page + chunk]),
                None => buf[done..done + chunk].fill(0),
            }
            done += chunk;
        }
        Ok(n)
    }
    fn write_at(&self, off: u64, buf: &[u8]) -> Result<usize, Errno> {
        if off
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > self.size)
        {
            return Err(Errno::EFBIG);
        }
        let mut pages = self.pages.lock();
        let mut done = 0;
        while done < buf.len() {
            let pos = off + done as u64;
            let (idx, in_page) = (pos >> 12, (pos & 4095) as usize);
            let chunk = (4096 - in_page).min(buf.len() - done);
            let p = pages.entry(idx).or_insert_with(|| Box::new([0u8; 4096]));
            p[in_page..in_page + chunk].copy_from_slice(&buf[done..done + chunk]);
            done += chunk;
        }
        Ok(buf.len())
    }
    fn writable(&self) -> bool {
        true
    }
}

/// `struct inode` with its `struct address_space`.
pub struct Inode {
    /// `i_ino`.
    pub ino: u64,
    /// `s_dev` as (major, minor).
    pub dev: (u32, u32),
    /// The path `/proc/PID/maps` prints.
    pub path: String,
    pub(crate) data: Box<dyn FileData>,
    /// `i_pages`: page index → pfn of the cached page. Held while a page is looked up,
    /// inserted or removed; the page's own refcount keeps it alive after.
    pub(crate) i_pages: SpinLock<crate::mm::xarray::XArray>,
    /// This mapping's handle in `page->mapping`.
    pub(crate) id: u32,
    /// `nrpages`.
    pub(crate) nrpages: AtomicU64,
    /// `i_mmap`: the VMAs mapping this file, for the reverse map.
    pub(crate) i_mmap: crate::sync::RwLock<crate::mm::vma::RmapList>,
    /// A memory file (shmem/tmpfs): no writeback, so shared writable mappings need no
    /// write-notify faults for dirty tracking (`mapping_can_writeback` is false).
    pub shmem: bool,
    /// No directory entry names the inode any more (`i_nlink` = 0): it is evicted, page
    /// cache and all, when the last open file of it goes (`iput_final`).
    pub unlinked: AtomicBool,
    /// `AS_LARGE_FOLIO_SUPPORT`: the filesystem opted into large page-cache folios
    /// (`mapping_set_large_folios`); readahead then allocates them (`page_cache_ra_order`).
    large_folios: AtomicBool,
}

impl Inode {
    /// `i_size_read`.
    pub fn size(&self) -> u64 {
        self.data.size()
    }

    /// Pages in the page cache (`mapping->nrpages`).
    pub fn nrpages(&self) -> u64 {
        self.nrpages.load(Relaxed)
    }

    /// The cached page at `index`, if any (`filemap_get_folio` without a reference: for
    /// tests and `/proc`).
    pub fn cached_pfn(&self, index: u64) -> Option<crate::addr::Pfn> {
        self.i_pages.lock().get(index)
    }

    /// `mapping_set_large_folios`: let readahead cache this file in large folios (as a
    /// filesystem that supports them does when it sets up the inode). A memory file keeps
    /// order-0 pages (shmem's large folios follow its own `huge=` policy, not done here).
    pub fn mapping_set_large_folios(&self) {
        if !self.shmem {
            self.large_folios.store(true, Relaxed);
        }
    }

    /// `mapping_large_folio_support`.
    pub fn mapping_large_folio_support(&self) -> bool {
        self.large_folios.load(Relaxed)
    }

    /// `mapping_can_writeback`: dirty pages go back to a store (not a memory file).
    pub fn can_writeback(&self) -> bool {
        !self.shmem
    }

    /// The backing store (to read what writeback put there).
    pub fn data(&self) -> &dyn FileData {
        &*self.data
    }
}

bitflags::bitflags! {
    /// `fmode_t`: how a file was opened.
    #[derive(Copy, Clone, PartialEq, Eq, Debug)]
    pub struct FMode: u32 {
        /// `FMODE_READ`.
        const READ = 0x1;
        /// `FMODE_WRITE`.
        const WRITE = 0x2;
    }
}

/// `struct file`: an open file. Two `File`s of one inode are distinct (VMAs of different
/// opens never merge, as in Linux).
pub struct File {
    /// The file's inode.
    pub inode: Arc<Inode>,
    /// `f_path`: the name it was opened by, when that differs from the inode's (a hard
    /// link): `/proc/PID/maps` shows the name of the open file, not of the inode.
    pub f_path: Option<String>,
    /// `f_mode`.
    pub f_mode: FMode,
    /// `f_ra`: the file's readahead state.
    pub f_ra: SpinLock<crate::mm::readahead::FileRaState>,
}

impl PartialEq for File {
    fn eq(&self, other: &Self) -> bool {
        core::ptr::eq(self, other)
    }
}
impl Eq for File {}

impl File {
    /// `d_path(&file->f_path)`: the name the file was opened by.
    pub fn path(&self) -> &str {
        self.f_path.as_deref().unwrap_or(&self.inode.path)
    }
}

impl core::fmt::Debug for File {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "File({}, {:?})", self.path(), self.f_mode)
    }
}

/// The kernel's table of inodes, indexed by `page->mapping` handle − 1.
#[derive(Default)]
pub(crate) struct InodeTable {
    pub(crate) slots: Vec<Option<Arc<Inode>>>,
    /// `get_next_ino` for memory files.
    next_ino: u64,
}

impl Kernel {
    /// `iget`: register a file so the page cache can hold its pages. `dev` and `ino` are
    /// what `/proc/PID/maps` prints, `path` the name after them.
    pub fn new_inode(
        &self,
        data: Box<dyn FileData>,
        dev: (u32, u32),
        ino: u64,
        path: &str,
    ) -> Arc<Inode> {
        self.new_inode_of_kind(data, dev, ino, path, false)
    }

    /// `iget` for a file of a memory file system (shmem): see [`Inode::shmem`].
    pub fn new_shmem_inode(&self, data: Box<dyn FileData>, path: &str) -> Arc<Inode> {
        let ino = self.next_shmem_ino();
        self.new_inode_of_kind(data, (0, 1), ino, path, true)
    }

    fn new_inode_of_kind(
        &self,
        data: Box<dyn FileData>,
        dev: (u32, u32),
        ino: u64,
        path: &str,
        shmem: bool,
    ) -> Arc<Inode> {
        let mut t = self.inodes.lock();
        let slot = t.slots.iter().position(Option::is_none).unwrap_or_else(|| {
            t.slots.push(None);
            t.slots.len() - 1
        });
        let inode = Arc::new(Inode {
            ino,
            dev,
            path: String::from(path),
            data,
            i_pages: SpinLock::new(Default::default()),
            id: slot as u32 + 1,
            nrpages: AtomicU64::new(0),
            i_mmap: crate::sync::RwLock::new(Vec::new()),
            shmem,
            unlinked: AtomicBool::new(false),
            large_folios: AtomicBool::new(false),
        });
        t.slots[slot] = Some(inode.clone());
        inode
    }

    /// `get_next_ino`: an inode number for a memory file.
    pub(crate) fn next_shmem_ino(&self) -> u64 {
        let mut t = self.inodes.lock();
        t.next_ino += 1;
        t.next_ino + 1023
    }

    /// `fput`: drop a reference to an open file. When it was the last reference to an
    /// unlinked inode (besides the kernel's table), the inode goes with its page cache, dirty
    /// pages included — nobody can read them any more.
    pub fn fput(&self, cpu: &crate::CpuGuard<'_>, file: Arc<File>) {
        let Some(file) = Arc::into_inner(file) else {
            return;
        };
        let inode = file.inode;
        if !inode.unlinked.load(Relaxed) || Arc::strong_count(&inode) > 2 {
            return;
        }
        self.truncate_inode_pages(cpu, &inode);
        if inode.nrpages() == 0 {
            let mut t = self.inodes.lock();
            if let Some(s) = t.slots.get_mut(inode.id as usize - 1) {
                *s = None;
            }
        }
    }

    /// `dentry_open` of `inode` through the name `path` (a hard link of it): the open file
    /// is shown under that name.
    pub fn open_path(
        &self,
        inode: &Arc<Inode>,
        mode: FMode,
        path: &str,
    ) -> Result<Arc<File>, Errno> {
        let f = self.open(inode, mode)?;
        if path == inode.path {
            return Ok(f);
        }
        let mut f = Arc::into_inner(f).expect("a file just opened has one reference");
        f.f_path = Some(String::from(path));
        Ok(Arc::new(f))
    }

    /// `dentry_open`: open `inode` with `mode`. `EACCES` for writing a read-only store.
    pub fn open(&self, inode: &Arc<Inode>, mode: FMode) -> Result<Arc<File>, Errno> {
        if mode.contains(FMode::WRITE) && !inode.data.writable() {
            return Err(Errno::EACCES);
        }
        Ok(Arc::new(File {
            f_path: None,
            inode: inode.clone(),
            f_mode: mode,
            f_ra: SpinLock::new(crate::mm::readahead::FileRaState {
                ra_pages: inode.data.ra_pages(),
                ..Default::default()
            }),
        }))
    }

    /// The inode of a page-cache page (`page->mapping->host`).
    pub(crate) fn inode_of_page(&self, page: &crate::Page) -> Option<Arc<Inode>> {
        let id = page.mapping();
        if id == 0 || id & crate::mm::rmap::PAGE_MAPPING_ANON != 0 {
            return None;
        }
        let t = self.inodes.lock();
        t.slots.get((id as usize).checked_sub(1)?)?.clone()
    }

    /// Every registered inode.
    pub fn inodes(&self) -> Vec<Arc<Inode>> {
        self.inodes.lock().slots.iter().flatten().cloned().collect()
    }

    /// `evict`: drop an inode nobody maps any more, with its page cache (dirty pages are
    /// written back first). `EBUSY` while a page is still mapped or otherwise referenced.
    pub fn evict_inode(&self, cpu: &crate::CpuGuard<'_>, inode: &Arc<Inode>) -> Result<(), Errno> {
        self.write_inode_now(cpu, inode)?;
        self.lru_add_drain_all(cpu);
        self.invalidate_mapping_pages(cpu, inode);
        if inode.nrpages() != 0 {
            return Err(Errno::EBUSY);
        }
        let mut t = self.inodes.lock();
        if let Some(s) = t.slots.get_mut(inode.id as usize - 1) {
            *s = None;
        }
        Ok(())
    }
}
