//! Process address spaces: `mm/mmap.c` and `mm/vma.c` — `do_mmap`/`mmap_region`
//! for anonymous and file mappings with `vma_merge`, `do_munmap` with VMA splitting, zapping
//! and `free_pgtables`, `mprotect` (`mm/mprotect.c`), `brk`, `vm_insert_page`, `mm_populate`
//! (`MAP_POPULATE`, `MAP_LOCKED`), `exit_mmap`. Placement is [`crate::mm::unmapped_area`]'s.
//!
//! A shared anonymous mapping is backed by an unlinked memory file, as `shmem_zero_setup`
//! backs it with `/dev/zero (deleted)`, so that fork shares its pages through the page cache.

use crate::addr::{align_up, PAGE_SHIFT, PAGE_SIZE};
use crate::cpu::CpuGuard;
use crate::errno::Errno;
use crate::fs::inode::{FMode, File};
use crate::mm::mm_types::{
    MmStruct, VmArea, VmFlags, VmaId, DEFAULT_MAX_MAP_COUNT, DEFAULT_RLIMIT_STACK, MMAP_MIN_ADDR,
    TASK_SIZE,
};
use crate::mm::mmu_gather::MmuGather;
use crate::mm::page::{Page, PageFlags};
use crate::Kernel;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

/// `PROT_READ`.
pub const PROT_READ: u32 = 0x1;
/// `PROT_WRITE`.
pub const PROT_WRITE: u32 = 0x2;
/// `PROT_EXEC`.
pub const PROT_EXEC: u32 = 0x4;
/// `PROT_SEM`.
pub const PROT_SEM: u32 = 0x8;
/// `PROT_NONE`.
pub const PROT_NONE: u32 = 0x0;

/// `MAP_SHARED`.
pub const MAP_SHARED: u32 = 0x01;
/// `MAP_PRIVATE`.
pub const MAP_PRIVATE: u32 = 0x02;
/// `MAP_SHARED_VALIDATE`.
pub const MAP_SHARED_VALIDATE: u32 = 0x03;
/// `MAP_FIXED`.
pub const MAP_FIXED: u32 = 0x10;
/// `MAP_ANONYMOUS`.
pub const MAP_ANONYMOUS: u32 = 0x20;
/// `MAP_GROWSDOWN`.
pub const MAP_GROWSDOWN: u32 = 0x0100;
/// `MAP_DENYWRITE` (ignored, as in Linux).
pub const MAP_DENYWRITE: u32 = 0x0800;
/// `MAP_EXECUTABLE` (ignored, as in Linux).
pub const MAP_EXECUTABLE: u32 = 0x1000;
/// `MAP_LOCKED`.
pub const MAP_LOCKED: u32 = 0x2000;
/// `MAP_NORESERVE`.
pub const MAP_NORESERVE: u32 = 0x4000;
/// `MAP_POPULATE`: fault the mapping in now.
pub const MAP_POPULATE: u32 = 0x8000;
/// `MAP_NONBLOCK`: with `MAP_POPULATE`, do not populate (as Linux since 2.6.23).
pub const MAP_NONBLOCK: u32 = 0x10000;
/// `MAP_STACK` (a hint, ignored as in Linux).
pub const MAP_STACK: u32 = 0x20000;
/// `MAP_FIXED_NOREPLACE`.
pub const MAP_FIXED_NOREPLACE: u32 = 0x100000;

/// Flags this implementation understands; anything else with `MAP_SHARED_VALIDATE` is
/// `EOPNOTSUPP`, as in Linux.
const KNOWN_FLAGS: u32 = MAP_SHARED
    | MAP_PRIVATE
    | MAP_FIXED
    | MAP_ANONYMOUS
    | MAP_GROWSDOWN
    | MAP_DENYWRITE
    | MAP_EXECUTABLE
    | MAP_LOCKED
    | MAP_NORESERVE
    | MAP_POPULATE
    | MAP_NONBLOCK
    | MAP_STACK
    | MAP_FIXED_NOREPLACE;

/// `vma_merge`'s compatibility test, `a` right below `b`: adjacent, same flags and name, the
/// same open file (or both anonymous), contiguous page offsets; special mappings never merge.
pub fn can_merge(a: &VmArea, b: &VmArea) -> bool {
    let same_file = match (&a.vm_file, &b.vm_file) {
        (None, None) => true,
        (Some(x), Some(y)) => Arc::ptr_eq(x, y),
        _ => false,
    };
    // is_mergeable_anon_vma: at most one has pages yet, or they share the anon_vma.
    let anon_ok = a.anon_vma.is_none() || b.anon_vma.is_none() || a.anon_vma == b.anon_vma;
    a.vm_end == b.vm_start
        && a.vm_flags == b.vm_flags
        && a.name == b.name
        && same_file
        && anon_ok
        && !a.vm_flags.intersects(VM_SPECIAL)
        && a.vm_pgoff + a.pages() == b.vm_pgoff
}

/// `VM_SPECIAL`: mappings `vma_merge` leaves alone.
pub const VM_SPECIAL: VmFlags = VmFlags::VM_IO
    .union(VmFlags::VM_DONTEXPAND)
    .union(VmFlags::VM_PFNMAP)
    .union(VmFlags::VM_MIXEDMAP);

/// `calc_vm_prot_bits` + `calc_vm_flag_bits` + the `VM_MAY*` bits of `do_mmap`.
pub(crate) fn vm_flags_for(prot: u32, flags: u32) -> VmFlags {
    let mut f = VmFlags::VM_MAYREAD | VmFlags::VM_MAYWRITE | VmFlags::VM_MAYEXEC;
    if prot & PROT_READ != 0 {
        f |= VmFlags::VM_READ;
    }
    if prot & PROT_WRITE != 0 {
        f |= VmFlags::VM_WRITE;
    }
    if prot & PROT_EXEC != 0 {
        f |= VmFlags::VM_EXEC;
    }
    if flags & MAP_TYPE_MASK == MAP_SHARED || flags & MAP_TYPE_MASK == MAP_SHARED_VALIDATE {
        f |= VmFlags::VM_SHARED | VmFlags::VM_MAYSHARE;
    }
    if flags & MAP_GROWSDOWN != 0 {
        f |= VmFlags::VM_GROWSDOWN;
    }
    if flags & MAP_LOCKED != 0 {
        f |= VmFlags::VM_LOCKED;
    }
    if flags & MAP_NORESERVE != 0 {
        f |= VmFlags::VM_NORESERVE;
    }
    if accountable(f) {
        f |= VmFlags::VM_ACCOUNT;
    }
    f
}

/// `accountable_mapping`: private writable memory is charged to the commit limit
/// (`VM_ACCOUNT`, shown as `ac` in smaps).
pub(crate) fn accountable(f: VmFlags) -> bool {
    f & (VmFlags::VM_NORESERVE | VmFlags::VM_SHARED | VmFlags::VM_WRITE) == VmFlags::VM_WRITE
}

pub(crate) const MAP_TYPE_MASK: u32 = 0x0f;

impl Kernel {
    /// `mm_alloc`: an empty address space with fresh page tables and the no-ASLR layout.
    pub fn mm_alloc(&self, cpu: &CpuGuard<'_>) -> Result<MmStruct, Errno> {
        let pt = self.pgd_alloc(cpu, true)?;
        Ok(MmStruct {
            pt: Arc::new(pt),
            vmas: Default::default(),
            locked_vm: 0,
            hiwater_vm: 0,
            hiwater_rss: 0,
            mmap_base: MmStruct::mmap_base_for(DEFAULT_RLIMIT_STACK),
            task_size: TASK_SIZE,
            compat: false,
            read_implies_exec: false,
            start_brk: 0,
            brk: 0,
            start_stack: 0,
            max_map_count: DEFAULT_MAX_MAP_COUNT,
            rlimit_stack: DEFAULT_RLIMIT_STACK,
            rlimit_as: crate::mm::mm_types::RLIM_INFINITY,
            rlimit_data: crate::mm::mm_types::RLIM_INFINITY,
            rlimit_memlock: crate::mm::mm_types::MLOCK_LIMIT,
            cap_ipc_lock: true,
            def_flags: VmFlags::empty(),
            rss_stat: Arc::new(Default::default()),
            huge_zero: Default::default(),
            khugepaged: false,
            start_code: 0,
            end_code: 0,
            start_data: 0,
            end_data: 0,
            arg_start: 0,
            arg_end: 0,
            env_start: 0,
            env_end: 0,
            exe_file: None,
            faults: Default::default(),
            vmacache: core::cell::Cell::new(None),
        })
    }

    /// `mmap` without a file (`fd` = -1): `MAP_ANONYMOUS` memory. See [`Kernel::do_mmap`].
    #[allow(clippy::too_many_arguments)] // mmap(2)'s own argument list, plus the CPU and the mm
    pub fn mmap(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        addr: u64,
        len: u64,
        prot: u32,
        flags: u32,
        offset: u64,
    ) -> Result<u64, Errno> {
        self.do_mmap(cpu, mm, None, addr, len, prot, flags, offset)
    }

    /// `do_mmap`: Linux's argument checks and errnos, `get_unmapped_area`, `MAP_FIXED`
    /// replacing what was there, `MAP_FIXED_NOREPLACE` refusing to (`EEXIST`), the file's
    /// open mode against the protection (`EACCES`), `mmap_region` with `vma_merge`, then
    /// `MAP_POPULATE`/`MAP_LOCKED` population. Without `MAP_ANONYMOUS` a file is required
    /// (`EBADF`). Returns the address.
    #[allow(clippy::too_many_arguments)] // mmap(2)'s own argument list, plus the CPU and the mm
    pub fn do_mmap(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        file: Option<&Arc<File>>,
        addr: u64,
        len: u64,
        prot: u32,
        flags: u32,
        offset: u64,
    ) -> Result<u64, Errno> {
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        let len = align_up(len, PAGE_SIZE);
        if len == 0 || len > mm.task_size {
            return Err(Errno::ENOMEM);
        }
        if offset & (PAGE_SIZE - 1) != 0 {
            return Err(Errno::EINVAL);
        }
        if offset.checked_add(len).is_none() {
            return Err(Errno::EOVERFLOW);
        }
        if prot & !(PROT_READ | PROT_WRITE | PROT_EXEC | PROT_SEM) != 0 {
            return Err(Errno::EINVAL);
        }
        let shared = match flags & MAP_TYPE_MASK {
            MAP_SHARED => true,
            MAP_PRIVATE => false,
            MAP_SHARED_VALIDATE if flags & !KNOWN_FLAGS == 0 => true,
            MAP_SHARED_VALIDATE => return Err(Errno::EOPNOTSUPP),
            _ => return Err(Errno::EINVAL),
        };
        let file = if flags & MAP_ANONYMOUS != 0 {
            None
        } else {
            Some(file.ok_or(Errno::EBADF)?)
        };
        // READ_IMPLIES_EXEC: readable is executable, except from a noexec mount.
        let mut prot = prot;
        if prot & PROT_READ != 0
            && mm.read_implies_exec
            && !file.is_some_and(|f| f.inode.data().attr().noexec)
        {
            prot |= PROT_EXEC;
        }
        // mm->def_flags: mlockall(MCL_FUTURE) locks every new mapping.
        let mut vm_flags = vm_flags_for(prot, flags) | mm.def_flags;
        if let Some(f) = file {
            if !f.f_mode.contains(FMode::READ) {
                return Err(Errno::EACCES);
            }
            if shared {
                if prot & PROT_WRITE != 0 && !f.f_mode.contains(FMode::WRITE) {
                    return Err(Errno::EACCES);
                }
                if !f.f_mode.contains(FMode::WRITE) {
                    vm_flags -= VmFlags::VM_MAYWRITE | VmFlags::VM_SHARED;
                }
            }
        }
        if flags & (MAP_FIXED | MAP_FIXED_NOREPLACE) != 0 && addr & (PAGE_SIZE - 1) != 0 {
            return Err(Errno::EINVAL);
        }
        if mm.map_count() >= mm.max_map_count {
            return Err(Errno::ENOMEM);
        }
        let addr =
            self.get_unmapped_area_vmflags(mm, file, addr, len, offset >> PAGE_SHIFT, flags)?;
        if addr < MMAP_MIN_ADDR {
            return Err(Errno::EPERM);
        }
        if flags & MAP_FIXED_NOREPLACE != 0
            && mm.find_vma(addr).is_some_and(|v| v.vm_start < addr + len)
        {
            return Err(Errno::EEXIST);
        }
        // mmap_region: the limits count what the mapping adds beyond what it replaces.
        let replaced: u64 = mm
            .vmas
            .iter_from(addr + 1)
            .take_while(|v| v.vm_start < addr + len)
            .map(|v| (v.vm_end.min(addr + len) - v.vm_start.max(addr)) >> PAGE_SHIFT)
            .sum();
        if !mm.may_expand_vm(vm_flags, (len >> PAGE_SHIFT) - replaced) {
            return Err(Errno::ENOMEM);
        }
        if vm_flags.contains(VmFlags::VM_LOCKED) && !self.mlock_allowed(mm, len >> PAGE_SHIFT) {
            return Err(Errno::EAGAIN);
        }
        if flags & MAP_FIXED != 0 {
            self.do_munmap(cpu, mm, addr, len)?;
        }
        // Shared anonymous memory is a deleted memory file (shmem_zero_setup).
        let file = match file {
            Some(f) => Some(f.clone()),
            None if shared => Some(self.shmem_zero_setup(len)?),
            None => None,
        };
        let pgoff = match &file {
            Some(_) => offset >> PAGE_SHIFT,
            None => addr >> PAGE_SHIFT,
        };
        self.mmap_region(mm, addr, len, vm_flags, pgoff, file, None);
        if flags & MAP_POPULATE != 0 && flags & MAP_NONBLOCK == 0
            || vm_flags.contains(VmFlags::VM_LOCKED)
        {
            self.mm_populate(cpu, mm, addr, len);
        }
        Ok(addr)
    }

    /// `shmem_zero_setup`: the unlinked memory file behind a shared anonymous mapping.
    fn shmem_zero_setup(&self, len: u64) -> Result<Arc<File>, Errno> {
        // Sparse: a huge shared anonymous mapping costs nothing until it is touched.
        let data = crate::fs::inode::SparseFile::new(len);
        let inode = self.new_shmem_inode(alloc::boxed::Box::new(data), "/dev/zero (deleted)");
        inode.unlinked.store(true, Ordering::Relaxed);
        self.open(&inode, FMode::READ | FMode::WRITE)
    }

    /// `mmap_region`: a VMA for a free `[addr, addr + len)`, merged with the neighbours when
    /// `vma_merge` allows, else inserted.
    #[allow(clippy::too_many_arguments)] // a VMA's fields
    pub(crate) fn mmap_region(
        &self,
        mm: &mut MmStruct,
        addr: u64,
        len: u64,
        vm_flags: VmFlags,
        pgoff: u64,
        file: Option<Arc<File>>,
        name: Option<&'static str>,
    ) {
        let new = VmArea {
            vm_start: addr,
            vm_end: addr + len,
            vm_flags,
            vm_page_prot: VmArea::prot_for(vm_flags, VmArea::writenotify(file.as_ref())),
            vm_pgoff: pgoff,
            vm_file: file,
            name,
            anon_vma: None,
            vm_special: None,
        };
        let id = self.vma_merge_new_range(mm, new);
        self.khugepaged_enter_vma(mm, id);
        if vm_flags.contains(VmFlags::VM_LOCKED) {
            mm.locked_vm += len >> PAGE_SHIFT;
        }
    }

    /// `_install_special_mapping`: a VMA at the free `[addr, addr + len)` showing the kernel
    /// pages from `pfn` on, named `name` in `/proc/PID/maps`.
    pub(crate) fn install_special_mapping(
        &self,
        mm: &mut MmStruct,
        addr: u64,
        len: u64,
        vm_flags: VmFlags,
        name: &'static str,
        pfn: crate::addr::Pfn,
    ) {
        self.vma_merge_new_range(
            mm,
            VmArea {
                vm_start: addr,
                vm_end: addr + len,
                vm_flags,
                vm_page_prot: VmArea::prot_for(vm_flags, false),
                vm_pgoff: 0,
                vm_file: None,
                name: Some(name),
                anon_vma: None,
                vm_special: Some(pfn),
            },
        );
    }

    /// `populate_vma_page_range` over `[start, start + len)` (`MAP_POPULATE`, `mlock`): fault
    /// every page in as `get_user_pages` would — a write fault for private writable
    /// mappings (breaking COW up front), a read fault otherwise. Stops at the first page
    /// that cannot be faulted, as `mm_populate` ignores errors.
    pub fn mm_populate(&self, cpu: &CpuGuard<'_>, mm: &mut MmStruct, start: u64, len: u64) {
        use crate::arch::x86_64::tlb::Access;
        let end = start + len;
        let mut a = start;
        while a < end {
            let Some(id) = mm.find_vma_id(a).filter(|&id| mm.vma(id).vm_start <= a) else {
                return;
            };
            let v = mm.vma(id);
            if !v
                .vm_flags
                .intersects(VmFlags::VM_READ | VmFlags::VM_WRITE | VmFlags::VM_EXEC)
            {
                a = v.vm_end;
                continue;
            }
            let write = v.vm_flags & (VmFlags::VM_WRITE | VmFlags::VM_SHARED) == VmFlags::VM_WRITE;
            let access = if write {
                Access::KERNEL_WRITE
            } else {
                Access::KERNEL_READ
            };
            let stop = v.vm_end.min(end);
            while a < stop {
                let done = self
                    .translation_lookup(&mm.pt, a)
                    .is_some_and(|p| p.is_present() && (!write || p.writable()));
                if !done {
                    match self.handle_mm_fault(cpu, mm, id, a, access) {
                        Ok(k) => mm.faults.add(k),
                        Err(_) => return,
                    }
                }
                a += PAGE_SIZE;
            }
        }
    }

    /// `munmap`: `EINVAL` for an unaligned address, a zero length or a range leaving user
    /// space; unmapping a hole is not an error.
    pub fn munmap(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        addr: u64,
        len: u64,
    ) -> Result<(), Errno> {
        if addr & (PAGE_SIZE - 1) != 0 || len == 0 || addr > TASK_SIZE || len > TASK_SIZE - addr {
            return Err(Errno::EINVAL);
        }
        self.do_munmap(cpu, mm, addr, align_up(len, PAGE_SIZE))
    }

    /// `do_vmi_munmap`: split the VMAs straddling the edges, remove those inside, zap the
    /// PTEs, flush the TLB, and free page tables nothing else uses (`free_pgtables` between
    /// the surviving neighbours).
    fn do_munmap(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        start: u64,
        len: u64,
    ) -> Result<(), Errno> {
        let end = start + len;
        let Some(first) = mm
            .find_vma_id(start)
            .filter(|&id| mm.vma(id).vm_start < end)
        else {
            return Ok(());
        };
        mm.update_hiwater();
        // A split in the middle of one VMA makes one more VMA.
        let v = mm.vma(first);
        if v.vm_start < start && v.vm_end > end && mm.map_count() >= mm.max_map_count {
            return Err(Errno::ENOMEM);
        }
        // __split_vma at the edges: the VMAs inside [start, end) are then whole VMAs.
        if v.vm_start < start {
            self.split_vma(mm, first, start);
        }
        if let Some(last) = mm
            .find_vma_id(end - 1)
            .filter(|&id| mm.vma(id).vm_start < end && mm.vma(id).vm_end > end)
        {
            self.split_vma(mm, last, end);
        }
        // unmap_region: one gather for the PTEs and the tables, flushed before anything it
        // holds is freed. The PTEs are zapped while the VMAs are still on the reverse map,
        // as in Linux (free_pgtables unlinks them before their tables go): an rmap walker
        // meanwhile finds each mapping either still there or gone, never a mapped page
        // whose VMA it cannot see.
        let floor = mm.find_vma_prev(start).map_or(0, |v| v.vm_end);
        let ceiling = mm
            .find_vma(end)
            .map_or(TASK_SIZE + PAGE_SIZE, |v| v.vm_start);
        let pt = mm.pt.clone();
        let mut tlb = MmuGather::new(self, cpu, &pt);
        self.unmap_page_range(&mut tlb, mm.tables(), start, end);
        let mut files = Vec::new();
        let mut gone = Vec::new();
        while let Some(id) = mm
            .find_vma_id(start)
            .filter(|&id| mm.vma(id).vm_start < end)
        {
            let v = self.vma_unlink(mm, id);
            if v.vm_flags.contains(VmFlags::VM_LOCKED) {
                mm.locked_vm -= v.pages();
            }
            gone.extend(v.anon_vma);
            if let Some(f) = v.vm_file {
                files.push(f);
            }
        }
        self.free_pgtables(&mut tlb, start, end, floor, ceiling);
        tlb.finish();
        for f in files {
            self.fput(cpu, f);
        }
        for id in gone {
            self.unlink_anon_vmas(id);
        }
        Ok(())
    }

    /// `vma_modify_flags`: give `[lo, hi)` of the VMA `id` (which covers it) the flags
    /// `new_flags` — splitting off the parts outside (`__split_vma`, refused with `ENOMEM` at
    /// the map_count limit), changing the part inside in place, then merging it with the
    /// neighbours (`vma_merge_existing_range`). Returns the part's new `vm_page_prot`.
    pub(crate) fn vma_modify_flags(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &mut MmStruct,
        id: VmaId,
        lo: u64,
        hi: u64,
        new_flags: VmFlags,
    ) -> Result<crate::arch::x86_64::pgtable::PgProt, Errno> {
        let (start, end) = (mm.vma(id).vm_start, mm.vma(id).vm_end);
        let extra = (start < lo) as usize + (hi < end) as usize;
        if extra > 0 && mm.map_count() + extra > mm.max_map_count {
            return Err(Errno::ENOMEM);
        }
        // vma_adjust_trans_huge: no huge entry may straddle the new VMA edges.
        if start < lo {
            self.split_huge_pmd_edges(cpu, mm, lo, lo);
        }
        if hi < end {
            self.split_huge_pmd_edges(cpu, mm, hi, hi);
        }
        let mut id = id;
        if start < lo {
            id = self.split_vma(mm, id, lo);
        }
        if hi < end {
            self.split_vma(mm, id, hi);
        }
        self.vma_set_flags(mm, id, new_flags);
        let prot = mm.vma(id).vm_page_prot;
        self.vma_merge_existing_range(mm, id);
        Ok(prot)
    }

    /// `vm_insert_page`: map a kernel page into a user VMA at `addr` with the VMA's
    /// protection, taking a reference and a mapping on it. `EFAULT` outside a VMA, `EINVAL`
    /// for slab, reserved or compound pages, `EBUSY` if something is mapped there.
    pub fn vm_insert_page(
        &self,
        cpu: &CpuGuard<'_>,
        mm: &MmStruct,
        addr: u64,
        page: &Page,
    ) -> Result<(), Errno> {
        let vma = mm.vma_lookup(addr).ok_or(Errno::EFAULT)?;
        if page.test(PageFlags::SLAB)
            || page.test(PageFlags::RESERVED)
            || page.test(PageFlags::BUDDY)
            || page.test(PageFlags::HEAD)
            || page.refcount() <= 0
        {
            return Err(Errno::EINVAL);
        }
        let va = addr & !(PAGE_SIZE - 1);
        let pte = crate::arch::x86_64::pgtable::Pte::new(self.page_to_pfn(page), vma.vm_page_prot);
        let mut c = self.pte_cursor(&mm.pt, va, va + PAGE_SIZE);
        c.seek_alloc(cpu, va)?;
        c.install(crate::arch::x86_64::pgtable::Pte(0), pte)
            .map_err(|_| Errno::EBUSY)?;
        page.get();
        self.page_add_rmap(cpu, page);
        mm.add_counter(crate::mm::mm_types::MM_FILEPAGES, 1);
        Ok(())
    }

    /// `dup_mmap` (fork): a copy of `old` — every VMA but `VM_DONTCOPY` ones, `VM_LOCKED`
    /// dropped (mlock is not inherited), the PTEs of private mappings copied with
    /// copy-on-write (`copy_page_range`) unless `VM_WIPEONFORK` asks for fresh memory. On
    /// failure the half-built copy is freed and `ENOMEM` returned.
    pub fn dup_mmap(&self, cpu: &CpuGuard<'_>, old: &MmStruct) -> Result<MmStruct, Errno> {
        let mut mm = self.mm_alloc(cpu)?;
        mm.mmap_base = old.mmap_base;
        mm.task_size = old.task_size;
        mm.compat = old.compat;
        mm.read_implies_exec = old.read_implies_exec;
        mm.start_brk = old.start_brk;
        mm.brk = old.brk;
        mm.start_stack = old.start_stack;
        mm.max_map_count = old.max_map_count;
        mm.rlimit_stack = old.rlimit_stack;
        mm.rlimit_as = old.rlimit_as;
        mm.rlimit_data = old.rlimit_data;
        mm.rlimit_memlock = old.rlimit_memlock;
        mm.cap_ipc_lock = old.cap_ipc_lock;
        mm.start_code = old.start_code;
        mm.end_code = old.end_code;
        mm.start_data = old.start_data;
        mm.end_data = old.end_data;
        mm.arg_start = old.arg_start;
        mm.arg_end = old.arg_end;
        mm.env_start = old.env_start;
        mm.env_end = old.env_end;
        mm.exe_file = old.exe_file.clone();
        // khugepaged_fork: the child is on khugepaged's list when the parent is.
        mm.khugepaged = old.khugepaged;
        for v in old.vmas() {
            if v.vm_flags.contains(VmFlags::VM_DONTCOPY) {
                continue;
            }
            let mut nv = v.clone();
            nv.vm_flags -= VmFlags::VM_LOCKED | VmFlags::VM_LOCKONFAULT;
            nv.anon_vma = if v.vm_flags.contains(VmFlags::VM_WIPEONFORK) {
                None
            } else {
                self.anon_vma_fork(v)
            };
            self.vma_merge_new_range(&mut mm, nv);
            if v.vm_flags.contains(VmFlags::VM_WIPEONFORK) {
                continue;
            }
            if self.copy_page_range(cpu, &mm, old, v).is_err() {
                self.exit_mmap(cpu, mm);
                return Err(Errno::ENOMEM);
            }
        }
        Ok(mm)
    }

    /// `brk`: move the program break. Shrinking unmaps; growing maps anonymous pages after the
    /// old break (expanding the heap VMA, never merging into the `.bss` below `start_brk`
    /// or into the next mapping, as `do_brk_flags`) unless that would come within a page of the next
    /// mapping's guard gap. Never below `start_brk`. Returns the break now in effect — the
    /// old one when the request fails, as the system call does.
    pub fn brk(&self, cpu: &CpuGuard<'_>, mm: &mut MmStruct, brk: u64) -> u64 {
        if brk < mm.start_brk || brk > TASK_SIZE {
            return mm.brk;
        }
        let newbrk = align_up(brk, PAGE_SIZE);
        let oldbrk = align_up(mm.brk, PAGE_SIZE);
        if newbrk == oldbrk {
            mm.brk = brk;
            return brk;
        }
        if brk <= mm.brk {
            // Shrinking: unmap the pages past the new break.
            if self.do_munmap(cpu, mm, newbrk, oldbrk - newbrk).is_ok() {
                mm.brk = brk;
            }
            return mm.brk;
        }
        if let Some(next) = mm.find_vma(oldbrk) {
            if newbrk + PAGE_SIZE > next.start_gap() {
                return mm.brk;
            }
        }
        if mm.map_count() >= mm.max_map_count {
            return mm.brk;
        }
        // check_data_rlimit: the heap plus the data segment within RLIMIT_DATA.
        let data = (brk - mm.start_brk).saturating_add(mm.end_data - mm.start_data);
        if mm.rlimit_data != crate::mm::mm_types::RLIM_INFINITY && data > mm.rlimit_data {
            return mm.brk;
        }
        let heap = VmFlags::VM_READ | VmFlags::VM_WRITE;
        if !mm.may_expand_vm(heap, (newbrk - oldbrk) >> PAGE_SHIFT) {
            return mm.brk;
        }
        let flags = VmFlags::VM_READ
            | VmFlags::VM_WRITE
            | VmFlags::VM_MAYREAD
            | VmFlags::VM_MAYWRITE
            | VmFlags::VM_MAYEXEC
            | VmFlags::VM_ACCOUNT
            | mm.def_flags;
        // do_brk_flags: expand the heap VMA — the one ending at the old break that starts at
        // or above start_brk (`vma_prev_limit`), never the .bss below it — or add a new one.
        let new = VmArea {
            vm_start: oldbrk,
            vm_end: newbrk,
            vm_flags: flags,
            vm_page_prot: VmArea::prot_for(flags, false),
            vm_pgoff: oldbrk >> PAGE_SHIFT,
            vm_file: None,
            name: None,
            anon_vma: None,
            vm_special: None,
        };
        let heap = mm
            .vmas
            .get(oldbrk)
            .filter(|v| v.vm_start >= mm.start_brk && can_merge(v, &new));
        let id = if heap.is_some() {
            self.vma_merge_new_range(mm, new)
        } else {
            self.vma_link(mm, new)
        };
        self.khugepaged_enter_vma(mm, id);
        mm.brk = brk;
        if flags.contains(VmFlags::VM_LOCKED) {
            // mlockall(MCL_FUTURE): the new heap is locked and populated.
            mm.locked_vm += (newbrk - oldbrk) >> PAGE_SHIFT;
            if !flags.contains(VmFlags::VM_LOCKONFAULT) {
                self.mm_populate(cpu, mm, oldbrk, newbrk - oldbrk);
            }
        }
        brk
    }

    /// `exit_mmap`: unmap everything, then free the page tables.
    pub fn exit_mmap(&self, cpu: &CpuGuard<'_>, mut mm: MmStruct) {
        let _ = self.do_munmap(
            cpu,
            &mut mm,
            MMAP_MIN_ADDR.min(PAGE_SIZE),
            TASK_SIZE - PAGE_SIZE,
        );
        {
            let mut tlb = MmuGather::new_fullmm(self, cpu, &mm.pt);
            self.free_pgd_range(&mut tlb, 0, TASK_SIZE + PAGE_SIZE);
            tlb.finish();
        }
        self.mm_put_huge_zero_folio(cpu, &mm);
        // Every VMA is unlinked, and reverse-map walks hold the lock of the list they walk
        // for as long as they look, so no walk holds the tables now; the VMA store's
        // references to them (`vm_mm`) go with it.
        drop(core::mem::take(&mut mm.vmas));
        let mut pt_arc = mm.pt;
        let pt = loop {
            match Arc::try_unwrap(pt_arc) {
                Ok(pt) => break pt,
                Err(a) => {
                    pt_arc = a;
                    crate::sync::relax();
                }
            }
        };
        if let Err((_, pt)) = self.pgd_free(cpu, pt) {
            // Something outside user space was mapped: leave the tables rather than free
            // pages that are still referenced.
            self.printk(&alloc::format!(
                "BUG: exit_mmap: page tables of context {} not empty",
                pt.ctx_id()
            ));
        }
    }

    /// The address space's invariants plus: every present PTE lies inside a VMA, and every
    /// page it maps agrees with the reverse map — an anonymous page names an `anon_vma` of the
    /// VMA's chain and its linear index, a page-cache page its file and offset — and the VMA
    /// is recorded where `rmap_walk` will look for it (each `anon_vma` of its chain, its file).
    pub fn check_mm_invariants(&self, mm: &MmStruct) -> Result<(), String> {
        mm.check_invariants()?;
        let chains: alloc::collections::BTreeMap<u64, Vec<u32>> = {
            let avs = self.anon_vmas.read();
            mm.vmas()
                .filter_map(|v| Some((v.vm_start, avs.chain(v.anon_vma?))))
                .collect()
        };
        let mut bad = None;
        // Under each PTE table's lock: reclaim on another CPU unmaps (and may free) pages
        // only under it, so a present entry's page stays what it maps while it is checked.
        let mut c = self.pte_cursor(&mm.pt, 0, TASK_SIZE);
        while let Some((va, pte)) = c.next_entry() {
            if bad.is_some() {
                break;
            }
            let Some(v) = mm.vma_lookup(va) else {
                bad = Some(alloc::format!("PTE at {va:#x} outside every VMA"));
                break;
            };
            if !pte.is_present() {
                continue;
            }
            let Some(page) = self.vm_normal_page(pte) else {
                continue;
            };
            let index = v.linear_page_index(va);
            // A page of a large folio: the folio's mapping, its own index in it.
            let folio = page.compound_head();
            if folio.folio_test_large() && (page.mapcount() < 1 || folio.refcount() < 1) {
                bad = Some(alloc::format!(
                    "page {:?} of a large folio mapped at {va:#x} with mapcount {} (folio refcount {})",
                    pte.pfn(),
                    page.mapcount(),
                    folio.refcount()
                ));
                break;
            }
            if crate::mm::rmap::page_anon(folio) {
                let av = folio.mapping() & !crate::mm::rmap::PAGE_MAPPING_ANON;
                let chained = chains.get(&v.vm_start).is_some_and(|c| c.contains(&av));
                if !chained || page.pgoff() != index {
                    bad = Some(alloc::format!(
                        "anonymous page at {va:#x}: mapping {:#x} index {:#x}, VMA anon_vma {:?} index {index:#x}",
                        folio.mapping(),
                        page.pgoff(),
                        v.anon_vma
                    ));
                }
            } else if folio.mapping() != 0 {
                // A page-cache page (of a large folio: the folio's inode, its own index).
                let ok = v
                    .vm_file
                    .as_ref()
                    .is_some_and(|f| f.inode.id == folio.mapping() && page.pgoff() == index);
                if !ok {
                    bad = Some(alloc::format!("file page at {va:#x} does not belong there"));
                }
            }
        }
        drop(c);
        if let Some(b) = bad {
            return Err(b);
        }
        self.check_huge_pmds(mm, &chains)?;
        // Every VMA is on each list the reverse map looks in for its pages — the VMA itself,
        // with its current range — and the entries of those lists from this address space
        // are exactly its VMAs that belong there, each once (no stale or doubled entry).
        use crate::mm::vma_tree::VmaRef;
        let check_list = |list: &[VmaRef], what: &str, belongs: &dyn Fn(&VmArea) -> bool| {
            let mut ours = 0;
            for r in list.iter().filter(|r| Arc::ptr_eq(r.pt(), &mm.pt)) {
                let v = r.vma();
                let linked = mm.vmas.id_of(v.vm_end).is_some_and(|id| mm.vmas.is(id, r));
                if !linked || !belongs(v) {
                    return Err(alloc::format!(
                        "{what}: stale entry {:#x}-{:#x}, not a VMA of this address space that maps there",
                        v.vm_start,
                        v.vm_end
                    ));
                }
                ours += 1;
            }
            let want = mm.vmas().filter(|v| belongs(v)).count();
            if ours != want {
                return Err(alloc::format!(
                    "{what}: {ours} entries of this address space for {want} VMAs"
                ));
            }
            Ok(())
        };
        // Each list once (many VMAs share one).
        let mut seen_anon = alloc::collections::BTreeSet::new();
        let mut seen_files = alloc::collections::BTreeSet::new();
        for id in mm.vmas.ids() {
            let v = mm.vma(id);
            if v.anon_vma.is_some() {
                let avs = self.anon_vmas.read();
                let chain = chains.get(&v.vm_start).map_or(&[][..], |c| c);
                if chain.is_empty() {
                    return Err(alloc::format!(
                        "VMA {:#x}-{:#x}: anon_vma {:?} does not exist",
                        v.vm_start,
                        v.vm_end,
                        v.anon_vma
                    ));
                }
                for av in chain {
                    let Some(a) = avs.map.get(av) else {
                        return Err(alloc::format!("anon_vma {av} of a chain does not exist"));
                    };
                    if !a.avcs.iter().any(|r| mm.vmas.is(id, r)) {
                        return Err(alloc::format!(
                            "VMA {:#x}-{:#x} missing from anon_vma {av} of its chain",
                            v.vm_start,
                            v.vm_end
                        ));
                    }
                    if seen_anon.insert(*av) {
                        let belongs =
                            |w: &VmArea| chains.get(&w.vm_start).is_some_and(|c| c.contains(av));
                        check_list(&a.avcs, &alloc::format!("anon_vma {av}"), &belongs)?;
                    }
                }
            }
            if let Some(f) = &v.vm_file {
                let list = f.inode.i_mmap.read();
                if !list.iter().any(|r| mm.vmas.is(id, r)) {
                    return Err(alloc::format!(
                        "VMA {:#x}-{:#x} missing from its file's i_mmap",
                        v.vm_start,
                        v.vm_end
                    ));
                }
                if seen_files.insert(Arc::as_ptr(&f.inode) as usize) {
                    let belongs = |w: &VmArea| {
                        w.vm_file
                            .as_ref()
                            .is_some_and(|g| Arc::ptr_eq(&g.inode, &f.inode))
                    };
                    check_list(&list, "i_mmap", &belongs)?;
                }
            }
        }
        Ok(())
    }
}
