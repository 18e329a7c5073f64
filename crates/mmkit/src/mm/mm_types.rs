//! `struct mm_struct` and `struct vm_area_struct` (`include/linux/mm_types.h`,
//! `include/linux/mm.h`'s `VM_*` flags, `fs/proc/task_mmu.c`'s `show_map_vma`).
//!
//! A process address space owns its page tables and its VMAs. VMAs live in an ordered map
//! keyed by `vm_end`, so `find_vma(addr)` — the first VMA ending above `addr` — is one
//! O(log n) range query, as Linux's maple tree gives. Holding `&mut MmStruct` is holding the
//! `mmap_lock` for writing.
//!
//! Invariants (`check_invariants`): VMAs are page-aligned, non-empty, sorted and disjoint, lie
//! inside `[mmap_min_addr, TASK_SIZE)`; no two adjacent VMAs could have been merged
//! (`vma_merge`'s rules); `total_vm` is the pages they span (`map_count` and `total_vm` are
//! the VMA index's own counts, so no caller keeps them); every present PTE lies inside a VMA.

use crate::addr::PAGE_SHIFT;
use crate::arch::x86_64::pgtable::{PgProt, PgTable, PROTECTION_MAP};
use crate::fs::inode::File;
pub use crate::mm::vma_tree::VmaId;
use crate::mm::vma_tree::VmaTree;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicI64, Ordering::Relaxed};

pub use self::flag_defs::*;
#[allow(missing_docs)] // the flag names are Linux's own (include/linux/mm.h)
mod flag_defs {
    bitflags::bitflags! {
        /// `vm_flags_t`.
        #[derive(Copy, Clone, PartialEq, Eq, Debug, Hash)]
        pub struct VmFlags: u64 {
            const VM_READ = 0x0000_0001;
            const VM_WRITE = 0x0000_0002;
            const VM_EXEC = 0x0000_0004;
            const VM_SHARED = 0x0000_0008;
            const VM_MAYREAD = 0x0000_0010;
            const VM_MAYWRITE = 0x0000_0020;
            const VM_MAYEXEC = 0x0000_0040;
            const VM_MAYSHARE = 0x0000_0080;
            const VM_GROWSDOWN = 0x0000_0100;
            const VM_UFFD_MISSING = 0x0000_0200;
            const VM_PFNMAP = 0x0000_0400;
            const VM_UFFD_WP = 0x0000_1000;
            const VM_LOCKED = 0x0000_2000;
            const VM_IO = 0x0000_4000;
            const VM_SEQ_READ = 0x0000_8000;
            const VM_RAND_READ = 0x0001_0000;
            const VM_DONTCOPY = 0x0002_0000;
            const VM_DONTEXPAND = 0x0004_0000;
            const VM_LOCKONFAULT = 0x0008_0000;
            const VM_ACCOUNT = 0x0010_0000;
            const VM_NORESERVE = 0x0020_0000;
            const VM_HUGETLB = 0x0040_0000;
            const VM_SYNC = 0x0080_0000;
            const VM_ARCH_1 = 0x0100_0000;
            const VM_WIPEONFORK = 0x0200_0000;
            const VM_DONTDUMP = 0x0400_0000;
            const VM_SOFTDIRTY = 0x0800_0000;
            const VM_MIXEDMAP = 0x1000_0000;
            const VM_HUGEPAGE = 0x2000_0000;
            const VM_NOHUGEPAGE = 0x4000_0000;
            const VM_MERGEABLE = 0x8000_0000;
        }
    }
}

/// `TASK_SIZE` for 4-level paging: the top of user space.
pub const TASK_SIZE: u64 = (1 << 47) - crate::addr::PAGE_SIZE;
/// `vm.mmap_min_addr` default.
pub const MMAP_MIN_ADDR: u64 = 65536;
/// `stack_guard_gap`: 256 pages.
pub const STACK_GUARD_GAP: u64 = 256 << PAGE_SHIFT;
/// `vm.max_map_count` default.
pub const DEFAULT_MAX_MAP_COUNT: usize = 65530;
/// Default `RLIMIT_STACK` (8 MiB).
pub const DEFAULT_RLIMIT_STACK: u64 = 8 << 20;
/// `RLIM_INFINITY`.
pub const RLIM_INFINITY: u64 = u64::MAX;
/// `MLOCK_LIMIT`: the default `RLIMIT_MEMLOCK` (8 MiB since Linux 5.16).
pub const MLOCK_LIMIT: u64 = 8 << 20;

/// `struct vm_area_struct`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmArea {
    /// First address.
    pub vm_start: u64,
    /// One past the last address.
    pub vm_end: u64,
    /// `VM_*` flags.
    pub vm_flags: VmFlags,
    /// `vm_page_prot`.
    pub vm_page_prot: PgProt,
    /// Offset in pages (for anonymous VMAs, the address in pages, as Linux sets it).
    pub vm_pgoff: u64,
    /// `vm_file`: the mapped file, `None` for anonymous memory.
    pub vm_file: Option<Arc<File>>,
    /// Name shown in `/proc/PID/maps` for special mappings (`[vdso]`, `[vvar]`).
    pub name: Option<&'static str>,
    /// `anon_vma`: the reverse-map object of this VMA's anonymous pages (set on the first
    /// one, `anon_vma_prepare`).
    pub anon_vma: Option<u32>,
    /// For a special mapping (`_install_special_mapping`, `VM_PFNMAP`): the first pfn of the
    /// kernel pages it shows; faults map `vm_special + page offset` without refcounting.
    pub vm_special: Option<crate::addr::Pfn>,
}

impl VmArea {
    /// Pages the VMA spans.
    pub fn pages(&self) -> u64 {
        (self.vm_end - self.vm_start) >> PAGE_SHIFT
    }

    /// `vm_start_gap`: where the VMA's reach starts, counting the guard gap below a stack.
    pub fn start_gap(&self) -> u64 {
        if self.vm_flags.contains(VmFlags::VM_GROWSDOWN) {
            self.vm_start.saturating_sub(STACK_GUARD_GAP)
        } else {
            self.vm_start
        }
    }

    /// `vm_get_page_prot(vm_flags)`, write-protected for shared writable mappings of files
    /// with writeback when `writenotify` (`vma_wants_writenotify`: the first write to each
    /// page faults so the page cache learns it is dirty).
    pub fn prot_for(flags: VmFlags, writenotify: bool) -> PgProt {
        let mut idx = flags.bits() & 0xf;
        if writenotify && flags.contains(VmFlags::VM_SHARED | VmFlags::VM_WRITE) {
            idx &= !VmFlags::VM_SHARED.bits();
        }
        PROTECTION_MAP[idx as usize]
    }

    /// Whether a mapping of `file` is write-notified (the file does writeback).
    pub fn writenotify(file: Option<&Arc<File>>) -> bool {
        file.is_some_and(|f| f.inode.can_writeback())
    }

    /// The protection this VMA's flags and file call for.
    pub fn wanted_prot(&self) -> PgProt {
        Self::prot_for(self.vm_flags, Self::writenotify(self.vm_file.as_ref()))
    }

    /// Whether this is anonymous memory (`vma_is_anonymous`).
    pub fn is_anonymous(&self) -> bool {
        self.vm_file.is_none()
    }

    /// `is_cow_mapping`: private and possibly writable — written pages become private copies.
    pub fn is_cow_mapping(&self) -> bool {
        self.vm_flags & (VmFlags::VM_SHARED | VmFlags::VM_MAYWRITE) == VmFlags::VM_MAYWRITE
    }

    /// `linear_page_index`: the page offset `addr` maps (in the file, or for anonymous
    /// memory the virtual page number).
    pub fn linear_page_index(&self, addr: u64) -> u64 {
        self.vm_pgoff + ((addr - self.vm_start) >> PAGE_SHIFT)
    }

    /// `vma_address`: where the page at linear index `index` lies in this VMA, if it does.
    pub fn pgoff_address(&self, index: u64) -> Option<u64> {
        let off = index.checked_sub(self.vm_pgoff)?;
        let a = self
            .vm_start
            .checked_add(off.checked_mul(crate::PAGE_SIZE)?)?;
        (a < self.vm_end).then_some(a)
    }
}

/// `MM_FILEPAGES`: resident file pages (`mm->rss_stat`).
pub const MM_FILEPAGES: usize = 0;
/// `MM_ANONPAGES`: resident anonymous pages.
pub const MM_ANONPAGES: usize = 1;
/// `MM_SWAPENTS`: swap entries.
pub const MM_SWAPENTS: usize = 2;
/// `MM_SHMEMPAGES`: resident shmem pages.
pub const MM_SHMEMPAGES: usize = 3;
/// `NR_MM_COUNTERS`.
pub const NR_MM_COUNTERS: usize = 4;

/// `mm->rss_stat`: shared with the reverse map, which adjusts it when it unmaps pages.
pub type RssStat = [AtomicI64; NR_MM_COUNTERS];

/// `struct mm_struct`.
pub struct MmStruct {
    /// Page tables (`pgd`), shared with the reverse map.
    pub pt: Arc<PgTable>,
    /// VMAs ordered by `vm_end` (they also keep `map_count` and `total_vm`).
    pub(crate) vmas: VmaTree,
    /// `locked_vm` in pages.
    pub locked_vm: u64,
    /// `hiwater_vm`: the most pages `total_vm` reached before an unmap.
    pub hiwater_vm: u64,
    /// `hiwater_rss`: the most resident pages before an unmap.
    pub hiwater_rss: u64,
    /// `mmap_base`: where top-down allocation starts.
    pub mmap_base: u64,
    /// `task_size`: `TASK_SIZE` for 64-bit tasks, `IA32_PAGE_OFFSET` for 32-bit ones.
    pub task_size: u64,
    /// A 32-bit (ia32 compat) address space: `TIF_ADDR32`, every system call a compat one
    /// (`in_32bit_syscall`: mappings go below `mmap_compat_base` and are never THP-aligned),
    /// no `[vsyscall]` gate (`MM_CONTEXT_HAS_VSYSCALL` unset).
    pub compat: bool,
    /// The owner's personality has `READ_IMPLIES_EXEC`: readable mappings are executable
    /// (`do_mmap`, `VM_DATA_DEFAULT_FLAGS`); set by exec for 32-bit programs without
    /// `PT_GNU_STACK` (`elf_read_implies_exec`).
    pub read_implies_exec: bool,
    /// `start_brk` / `brk`.
    pub start_brk: u64,
    /// Current break.
    pub brk: u64,
    /// `start_stack`.
    pub start_stack: u64,
    /// `vm.max_map_count` for this mm.
    pub max_map_count: usize,
    /// `RLIMIT_STACK` (soft limit) of the owner: bounds stack growth and places `mmap_base`.
    pub rlimit_stack: u64,
    /// `RLIMIT_AS` (soft limit): bounds `total_vm` (`may_expand_vm`).
    pub rlimit_as: u64,
    /// `RLIMIT_DATA` (soft limit): bounds `data_vm` and the heap (`may_expand_vm`,
    /// `check_data_rlimit`).
    pub rlimit_data: u64,
    /// `RLIMIT_MEMLOCK` (soft limit): bounds `locked_vm` unless `cap_ipc_lock`.
    pub rlimit_memlock: u64,
    /// The owner has `CAP_IPC_LOCK` (root): `RLIMIT_MEMLOCK` does not apply.
    pub cap_ipc_lock: bool,
    /// `mm->def_flags`: `VM_LOCKED` (and `VM_LOCKONFAULT`) after `mlockall(MCL_FUTURE)`.
    pub def_flags: VmFlags,
    /// `rss_stat[NR_MM_COUNTERS]`: resident pages by kind, updated by faults and zaps.
    pub rss_stat: Arc<RssStat>,
    /// `MMF_HUGE_ZERO_PAGE`: this address space holds a reference on the huge zero folio
    /// (taken at its first huge zero PMD, given back at exit).
    pub(crate) huge_zero: core::sync::atomic::AtomicBool,
    /// `MMF_VM_HUGEPAGE`: khugepaged has this address space on its list
    /// (`__khugepaged_enter`; set once one of its VMAs may hold THPs, kept until exit).
    pub(crate) khugepaged: bool,
    /// `start_code`, `end_code`, `start_data`, `end_data` (set by exec).
    pub start_code: u64,
    /// End of the text segment.
    pub end_code: u64,
    /// Start of the data segment.
    pub start_data: u64,
    /// End of the data segment.
    pub end_data: u64,
    /// `arg_start`..`arg_end`: the argument strings on the stack.
    pub arg_start: u64,
    /// End of the argument strings.
    pub arg_end: u64,
    /// `env_start`..`env_end`: the environment strings.
    pub env_start: u64,
    /// End of the environment strings.
    pub env_end: u64,
    /// `exe_file`: the executable (`/proc/PID/exe`).
    pub exe_file: Option<Arc<File>>,
    /// Faults taken by the task owning this mm (`min_flt`/`maj_flt` live in `task_struct` in
    /// Linux; a simulated process has one thread, so its mm carries them).
    pub faults: crate::mm::uaccess::FaultCounts,
    /// `mmap_cache`: the last VMA `find_vma` found (Linux's per-thread vmacache): its bounds
    /// and id.
    pub(crate) vmacache: core::cell::Cell<Option<(u64, u64, VmaId)>>,
}

/// What the zap and split paths change of an address space, reached from its `MmStruct`
/// ([`MmStruct::tables`]) or from one of its VMAs on a reverse-map list
/// ([`crate::mm::vma_tree::VmaRef::tables`], as `unmap_mapping_range` reaches it): its page
/// tables and its RSS counters — Linux's `vma->vm_mm` as those paths use it.
#[derive(Clone, Copy)]
pub(crate) struct MmTables<'a> {
    /// `mm->pgd`.
    pub pt: &'a Arc<PgTable>,
    /// `mm->rss_stat`.
    pub rss: &'a RssStat,
}

impl MmTables<'_> {
    /// `add_mm_counter`.
    pub(crate) fn add_counter(&self, member: usize, delta: i64) {
        self.rss[member].fetch_add(delta, Relaxed);
    }
}

impl MmStruct {
    /// The tables and RSS counters the zap and split paths change.
    pub(crate) fn tables(&self) -> MmTables<'_> {
        MmTables {
            pt: &self.pt,
            rss: &self.rss_stat,
        }
    }

    /// `get_mm_counter(mm, member)`.
    pub fn counter(&self, member: usize) -> u64 {
        self.rss_stat[member].load(Relaxed).max(0) as u64
    }

    /// `add_mm_counter`.
    pub(crate) fn add_counter(&self, member: usize, delta: i64) {
        self.rss_stat[member].fetch_add(delta, Relaxed);
    }

    /// `update_hiwater_rss` + `update_hiwater_vm`, before an unmap shrinks them.
    pub(crate) fn update_hiwater(&mut self) {
        self.hiwater_rss = self.hiwater_rss.max(self.rss());
        self.hiwater_vm = self.hiwater_vm.max(self.total_vm());
    }

    /// `mm->map_count`: the number of VMAs.
    #[inline]
    pub fn map_count(&self) -> usize {
        self.vmas.len()
    }

    /// `mm->total_vm`: pages mapped by all VMAs.
    #[inline]
    pub fn total_vm(&self) -> u64 {
        self.vmas.total_pages()
    }

    /// `may_expand_vm`: whether `npages` more of a mapping with `flags` stay within
    /// `RLIMIT_AS` and, for private writable non-stack memory (`is_data_mapping`),
    /// `RLIMIT_DATA`.
    pub fn may_expand_vm(&self, flags: VmFlags, npages: u64) -> bool {
        let pages = |limit: u64| limit >> PAGE_SHIFT;
        if self.total_vm().saturating_add(npages) > pages(self.rlimit_as) {
            return false;
        }
        let data = flags & (VmFlags::VM_WRITE | VmFlags::VM_SHARED | VmFlags::VM_GROWSDOWN)
            == VmFlags::VM_WRITE;
        if data {
            let (_, _, data_vm) = self.vm_classes();
            if data_vm.saturating_add(npages) > pages(self.rlimit_data) {
                return false;
            }
        }
        true
    }

    /// `vm_stat_account`'s classes, from the VMAs: (`exec_vm`, `stack_vm`, `data_vm`) pages.
    pub fn vm_classes(&self) -> (u64, u64, u64) {
        let (mut exec, mut stack, mut data) = (0, 0, 0);
        for v in self.vmas() {
            let f = v.vm_flags;
            if f & (VmFlags::VM_EXEC | VmFlags::VM_WRITE | VmFlags::VM_GROWSDOWN)
                == VmFlags::VM_EXEC
            {
                exec += v.pages();
            } else if f.contains(VmFlags::VM_GROWSDOWN) {
                stack += v.pages();
            } else if f & (VmFlags::VM_WRITE | VmFlags::VM_SHARED) == VmFlags::VM_WRITE {
                data += v.pages();
            }
        }
        (exec, stack, data)
    }

    /// `get_mm_rss`: file + anon + shmem pages resident.
    pub fn rss(&self) -> u64 {
        self.counter(MM_FILEPAGES) + self.counter(MM_ANONPAGES) + self.counter(MM_SHMEMPAGES)
    }

    /// `find_vma(mm, addr)`: the first VMA with `vm_end > addr`.
    #[inline]
    pub fn find_vma(&self, addr: u64) -> Option<&VmArea> {
        self.find_vma_id(addr).map(|id| self.vmas.by_id(id))
    }

    /// `find_vma`, returning the VMA's id (stable while it stays linked).
    #[inline]
    pub fn find_vma_id(&self, addr: u64) -> Option<VmaId> {
        // The cache holds the bounds and the id, so a hit reads neither index nor VMA.
        if let Some((start, end, id)) = self.vmacache.get() {
            if start <= addr && addr < end {
                return Some(id);
            }
        }
        let (start, end, id) = self.vmas.first_from_id(addr.saturating_add(1))?;
        self.vmacache.set(Some((start, end, id)));
        Some(id)
    }

    /// The VMA `id` names.
    #[inline]
    pub fn vma(&self, id: VmaId) -> &VmArea {
        self.vmas.by_id(id)
    }

    /// `find_vma_prev`-style: the last VMA with `vm_end <= addr`.
    pub fn find_vma_prev(&self, addr: u64) -> Option<&VmArea> {
        self.vmas.last_upto(addr)
    }

    /// `vma_lookup`: the VMA containing `addr`.
    pub fn vma_lookup(&self, addr: u64) -> Option<&VmArea> {
        self.find_vma(addr).filter(|v| v.vm_start <= addr)
    }

    /// VMAs in address order.
    pub fn vmas(&self) -> impl Iterator<Item = &VmArea> {
        self.vmas.iter()
    }

    /// `mmap_base()` for a given `RLIMIT_STACK` without randomization (`norandmaps`): the
    /// gap below `TASK_SIZE` is the stack limit plus the guard gap, clamped to [128 MiB,
    /// 5/6 of the address space].
    pub fn mmap_base_for(rlimit_stack: u64) -> u64 {
        Self::mmap_base(0, TASK_SIZE, rlimit_stack, 0)
    }

    /// `mmap_base(rnd, task_size, rlim_stack)` (`arch/x86/mm/mmap.c`): the top of the
    /// mmap area, below the stack's reach — `RLIMIT_STACK` plus `stack_rnd_pad` (the most
    /// the stack may be randomized down, `stack_maxrandom_size`) plus the guard gap, at least
    /// 128 MiB and at most 5/6 of `task_size` — and `rnd` lower still.
    pub fn mmap_base(rnd: u64, task_size: u64, rlimit_stack: u64, stack_rnd_pad: u64) -> u64 {
        const MIN_GAP: u64 = 128 << 20;
        let max_gap = task_size / 6 * 5;
        let pad = stack_rnd_pad + STACK_GUARD_GAP;
        // "Values close to RLIM_INFINITY can overflow": then the pad is left out.
        let gap = rlimit_stack
            .checked_add(pad)
            .unwrap_or(rlimit_stack)
            .clamp(MIN_GAP, max_gap);
        crate::addr::align_up(task_size - gap - rnd, crate::addr::PAGE_SIZE)
    }

    /// The invariants in the module doc (page tables checked by the caller holding a kernel).
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut prev: Option<&VmArea> = None;
        let mut pages = 0;
        self.vmas.check().map_err(String::from)?;
        for v in self.vmas.iter() {
            if v.vm_start >= v.vm_end || v.vm_start & 0xfff != 0 || v.vm_end & 0xfff != 0 {
                return Err(format!("malformed VMA {:#x}-{:#x}", v.vm_start, v.vm_end));
            }
            if v.vm_start < MMAP_MIN_ADDR || v.vm_end > TASK_SIZE {
                return Err(format!(
                    "VMA {:#x}-{:#x} outside user space",
                    v.vm_start, v.vm_end
                ));
            }
            if let Some(p) = prev {
                if p.vm_end > v.vm_start {
                    return Err(format!(
                        "VMAs {:#x}-{:#x} and {:#x}-{:#x} overlap",
                        p.vm_start, p.vm_end, v.vm_start, v.vm_end
                    ));
                }
                if crate::mm::mmap::can_merge(p, v) {
                    return Err(format!(
                        "VMAs {:#x}-{:#x} and {:#x}-{:#x} should have merged",
                        p.vm_start, p.vm_end, v.vm_start, v.vm_end
                    ));
                }
            }
            if v.vm_page_prot != v.wanted_prot() {
                return Err(format!(
                    "VMA {:#x}: page_prot does not match its flags",
                    v.vm_start
                ));
            }
            pages += v.pages();
            prev = Some(v);
        }
        if self.total_vm() != pages {
            return Err(format!(
                "total_vm {} but VMAs span {pages} pages",
                self.total_vm()
            ));
        }
        Ok(())
    }
}
