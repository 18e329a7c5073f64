//! `/proc/PID/maps` and `/proc/PID/smaps` (`fs/proc/task_mmu.c`: `show_map_vma`,
//! `get_vma_name`, `show_smap`, `smaps_pte_entry`/`smaps_account`, `show_smap_vma_flags`),
//! byte for byte in Linux 6.18's format, including the `[vsyscall]` gate area x86-64 prints
//! last for 64-bit tasks and the `ProtectionKey:` line of CPUs with protection keys; and `/proc/PID/pagemap` (`pagemap_read`, `pte_to_pagemap_entry`).

use crate::addr::PAGE_SHIFT;
use crate::mm::mm_types::{MmStruct, VmArea, VmFlags};
use crate::mm::page::PageFlags;
use crate::mm::rmap::page_anon;
use crate::mm::swapfile::SwpEntry;
use crate::Kernel;
use alloc::string::String;
use core::fmt::Write;

/// The `[vsyscall]` page (`VSYSCALL_ADDR`), shown execute-only (`vsyscall=xonly`).
pub const VSYSCALL_ADDR: u64 = 0xffff_ffff_ff60_0000;

/// `get_vma_name`: the file, a special mapping's name, or `[heap]`/`[stack]` for the VMAs
/// holding the initial heap and stack.
pub fn vma_name<'a>(mm: &MmStruct, v: &'a VmArea) -> Option<&'a str> {
    if let Some(f) = &v.vm_file {
        return Some(f.path());
    }
    if let Some(n) = v.name {
        return Some(n);
    }
    // vma_is_initial_heap / vma_is_initial_stack.
    if v.vm_start < mm.brk && v.vm_end > mm.start_brk {
        return Some("[heap]");
    }
    if v.vm_start <= mm.start_stack && v.vm_end >= mm.start_stack {
        return Some("[stack]");
    }
    None
}

/// `show_vma_header_prefix` + the name, padded to column 73 (`seq_pad`).
fn header(
    s: &mut String,
    (start, end): (u64, u64),
    flags: VmFlags,
    pgoff: u64,
    (dev, ino): ((u32, u32), u64),
    name: Option<&str>,
) {
    let flag = |b: VmFlags, c: char| if flags.contains(b) { c } else { '-' };
    let line_start = s.len();
    let _ = write!(
        s,
        "{:08x}-{:08x} {}{}{}{} {:08x} {:02x}:{:02x} {} ",
        start,
        end,
        flag(VmFlags::VM_READ, 'r'),
        flag(VmFlags::VM_WRITE, 'w'),
        flag(VmFlags::VM_EXEC, 'x'),
        if flags.contains(VmFlags::VM_MAYSHARE) {
            's'
        } else {
            'p'
        },
        pgoff,
        dev.0,
        dev.1,
        ino
    );
    if let Some(n) = name {
        let used = s.len() - line_start;
        let pad = 73usize.saturating_sub(used);
        let _ = write!(s, "{:pad$}{}", "", n, pad = pad);
    }
    s.push('\n');
}

fn vma_header(s: &mut String, mm: &MmStruct, v: &VmArea) {
    let (dev, ino, pgoff) = match &v.vm_file {
        Some(f) => (f.inode.dev, f.inode.ino, v.vm_pgoff << PAGE_SHIFT),
        None => ((0, 0), 0, 0),
    };
    header(
        s,
        (v.vm_start, v.vm_end),
        v.vm_flags,
        pgoff,
        (dev, ino),
        vma_name(mm, v),
    );
}

fn gate_header(s: &mut String) {
    header(
        s,
        (VSYSCALL_ADDR, VSYSCALL_ADDR + crate::PAGE_SIZE),
        VmFlags::VM_EXEC,
        0,
        ((0, 0), 0),
        Some("[vsyscall]"),
    );
}

/// `/proc/PID/maps`.
pub fn proc_pid_maps(mm: &MmStruct) -> String {
    let mut s = String::new();
    for v in mm.vmas() {
        vma_header(&mut s, mm, v);
    }
    if !mm.compat {
        gate_header(&mut s);
    }
    s
}

/// The two-letter `VmFlags` mnemonics, by bit (`show_smap_vma_flags`).
const MNEMONICS: [(u64, &str); 31] = [
    (0, "rd"),
    (1, "wr"),
    (2, "ex"),
    (3, "sh"),
    (4, "mr"),
    (5, "mw"),
    (6, "me"),
    (7, "ms"),
    (8, "gd"),
    (9, "um"),
    (10, "pf"),
    (12, "uw"),
    (13, "lo"),
    (14, "io"),
    (15, "sr"),
    (16, "rr"),
    (17, "dc"),
    (18, "de"),
    (19, "lf"),
    (20, "ac"),
    (21, "nr"),
    (22, "ht"),
    (23, "sf"),
    (24, "ar"),
    (25, "wf"),
    (26, "dd"),
    (27, "sd"),
    (28, "mm"),
    (29, "hg"),
    (30, "nh"),
    (31, "mg"),
];

/// `struct mem_size_stats`, Pss values shifted by `PSS_SHIFT`.
#[derive(Default)]
struct MemSizeStats {
    resident: u64,
    shared_clean: u64,
    shared_dirty: u64,
    private_clean: u64,
    private_dirty: u64,
    referenced: u64,
    anonymous: u64,
    anonymous_thp: u64,
    file_thp: u64,
    lazyfree: u64,
    swap: u64,
    pss: u64,
    pss_dirty: u64,
    pss_locked: u64,
    pss_anon: u64,
    pss_file: u64,
    pss_shmem: u64,
    swap_pss: u64,
}

const PSS_SHIFT: u32 = 12;

/// What a page is, for the `Pss_Anon`/`Pss_File`/`Pss_Shmem` split.
#[derive(Copy, Clone)]
enum PageKind {
    Anon,
    Shmem,
    File,
}

impl PageKind {
    fn of(page: &crate::mm::page::Page) -> Self {
        if page_anon(page) {
            PageKind::Anon
        } else if page.test(PageFlags::SWAPBACKED) {
            PageKind::Shmem
        } else {
            PageKind::File
        }
    }
}

impl MemSizeStats {
    /// `smaps_page_accumulate` for a page of `kind`.
    fn accumulate(
        &mut self,
        kind: PageKind,
        size: u64,
        pss: u64,
        (dirty, locked, private): (bool, bool, bool),
    ) {
        self.pss += pss;
        match kind {
            PageKind::Anon => self.pss_anon += pss,
            PageKind::Shmem => self.pss_shmem += pss,
            PageKind::File => self.pss_file += pss,
        }
        if locked {
            self.pss_locked += pss;
        }
        if dirty {
            self.pss_dirty += pss;
            if private {
                self.private_dirty += size;
            } else {
                self.shared_dirty += size;
            }
        } else if private {
            self.private_clean += size;
        } else {
            self.shared_clean += size;
        }
    }
}

/// `smaps_pmd_entry`: each huge entry of `v` counts its 2 MiB as resident THP memory —
/// anonymous (`AnonHugePages`) or a page-cache folio's (`FilePmdMapped`) — shared among
/// the PMDs (and PTEs) mapping the folio.
fn smaps_pmd_entries(k: &Kernel, mm: &MmStruct, v: &VmArea, locked: bool, mss: &mut MemSizeStats) {
    let huge = crate::arch::x86_64::pgtable::HPAGE_PMD_SIZE;
    let mut from = v.vm_start;
    while let Some((haddr, pmd)) = k.next_huge_pmd(&mm.pt, from, v.vm_end) {
        from = haddr + huge;
        // Under the PMD lock, so the folio's counts hold still while they are read.
        let Some(g) = k.pmd_lock(&mm.pt, haddr) else {
            continue;
        };
        // The huge zero folio is no page of the mapping's (vm_normal_page_pmd gives none).
        if g.get() != pmd || !pmd.is_present() || k.is_huge_zero_pmd(pmd) {
            continue;
        }
        let Some(folio) = k.pfn_to_page(pmd.pfn()).filter(|p| p.folio_test_large()) else {
            continue;
        };
        mss.resident += huge;
        let kind = PageKind::of(folio);
        if matches!(kind, PageKind::Anon) {
            mss.anonymous += huge;
            mss.anonymous_thp += huge;
        } else {
            mss.file_thp += huge;
        }
        if pmd.young() || folio.test(PageFlags::REFERENCED) {
            mss.referenced += huge;
        }
        let dirty = pmd.dirty() || folio.test(PageFlags::DIRTY);
        if folio.refcount() == 1 {
            mss.accumulate(kind, huge, huge << PSS_SHIFT, (dirty, locked, true));
            continue;
        }
        // Page by page, by each page's precise mapcount: the PMDs mapping the folio plus
        // the PTEs mapping that page (another process may map part of it by PTEs).
        let size = crate::PAGE_SIZE;
        for i in 0..(huge / size) {
            let mapcount = (folio.entire_mapcount() + folio.folio_page(i).mapcount()).max(1) as u64;
            let mut pss = size << PSS_SHIFT;
            if mapcount >= 2 {
                pss /= mapcount;
            }
            mss.accumulate(kind, size, pss, (dirty, locked, mapcount < 2));
        }
    }
}

fn kb_line(s: &mut String, label: &str, bytes: u64) {
    let _ = writeln!(s, "{label:<16}{:>8} kB", bytes >> 10);
}

/// `smap_gather_stats` of one VMA: walk its PTEs (`smaps_pte_range`, under each table's
/// lock, so the counts of a mapped page hold still while they are read) and its huge
/// entries.
fn smap_gather_stats(k: &Kernel, mm: &MmStruct, v: &VmArea, mss: &mut MemSizeStats) {
    let locked = v.vm_flags.contains(VmFlags::VM_LOCKED);
    let mut c = k.pte_cursor(&mm.pt, v.vm_start, v.vm_end);
    let size = crate::PAGE_SIZE;
    while let Some((_, pte)) = c.next_entry() {
        if !pte.is_present() {
            // A swap entry: its share of the slot by the slot's count (`swp_swapcount`).
            if let Some(e) = SwpEntry::from_pte(pte) {
                mss.swap += size;
                let count = u64::from(k.swap_count(e)).max(1);
                mss.swap_pss += (size << PSS_SHIFT) / count;
            }
            continue;
        }
        let Some(page) = k.vm_normal_page(pte) else {
            continue;
        };
        // smaps_account: the folio's type and flags; the page's own (precise) mapcount —
        // its PTEs plus the PMDs mapping its whole folio — for Pss and sharing.
        let folio = page.compound_head();
        let kind = PageKind::of(folio);
        mss.resident += size;
        let dirty = pte.dirty() || folio.test(PageFlags::DIRTY);
        if matches!(kind, PageKind::Anon) {
            mss.anonymous += size;
            // MADV_FREE'd and clean: reclaim may drop it without writing it.
            if !folio.test(PageFlags::SWAPBACKED) && !dirty {
                mss.lazyfree += size;
            }
        }
        if pte.young() || folio.test(PageFlags::REFERENCED) {
            mss.referenced += size;
        }
        if folio.refcount() == 1 {
            mss.accumulate(kind, size, size << PSS_SHIFT, (dirty, locked, true));
            continue;
        }
        let mapcount = (page.mapcount() + folio.entire_mapcount()).max(1) as u64;
        let mut pss = size << PSS_SHIFT;
        if mapcount >= 2 {
            pss /= mapcount;
        }
        mss.accumulate(kind, size, pss, (dirty, locked, mapcount < 2));
    }
    drop(c);
    smaps_pmd_entries(k, mm, v, locked, mss);
}

/// `/proc/PID/smaps`: each VMA's header, its memory figures from walking its PTEs, and its
/// flags; then the gate area.
pub fn proc_pid_smaps(k: &Kernel, mm: &MmStruct) -> String {
    let pkeys = k.platform().cpu_features().pkeys_enabled();
    let mut s = String::new();
    for v in mm.vmas() {
        vma_header(&mut s, mm, v);
        let mut mss = MemSizeStats::default();
        smap_gather_stats(k, mm, v, &mut mss);
        let eligible = k.thp_vma_eligible(v);
        write_smap(
            &mut s,
            v.vm_end - v.vm_start,
            &mss,
            v.vm_flags,
            pkeys,
            eligible,
        );
    }
    if !mm.compat {
        gate_header(&mut s);
        write_smap(
            &mut s,
            crate::PAGE_SIZE,
            &MemSizeStats::default(),
            VmFlags::VM_EXEC,
            pkeys,
            false,
        );
    }
    s
}

/// `/proc/PID/smaps_rollup` (`show_smaps_rollup`): the figures of every VMA summed, under a
/// header spanning the first VMA's start to the last one's end; the `Pss_Anon`,
/// `Pss_File` and `Pss_Shmem` split only the rollup shows. Empty for an address space with
/// no VMA.
pub fn proc_pid_smaps_rollup(k: &Kernel, mm: &MmStruct) -> String {
    let mut s = String::new();
    let (Some(first), Some(last)) = (mm.vmas().next(), mm.vmas().last()) else {
        return s;
    };
    let mut mss = MemSizeStats::default();
    for v in mm.vmas() {
        smap_gather_stats(k, mm, v, &mut mss);
    }
    header(
        &mut s,
        (first.vm_start, last.vm_end),
        VmFlags::empty(),
        0,
        ((0, 0), 0),
        Some("[rollup]"),
    );
    write_smap_fields(&mut s, &mss, true);
    s
}

/// `__show_smap` + `THPeligible` + `arch_show_smap` (`ProtectionKey:`, the VMA's key — always
/// 0 here, as no `pkey_mprotect` exists — when the CPU has protection keys enabled) +
/// `show_smap_vma_flags`.
fn write_smap(
    s: &mut String,
    size: u64,
    mss: &MemSizeStats,
    flags: VmFlags,
    pkeys: bool,
    thp_eligible: bool,
) {
    kb_line(s, "Size:", size);
    kb_line(s, "KernelPageSize:", crate::PAGE_SIZE);
    kb_line(s, "MMUPageSize:", crate::PAGE_SIZE);
    write_smap_fields(s, mss, false);
    let _ = writeln!(s, "THPeligible:    {:>8}", u8::from(thp_eligible));
    if pkeys {
        let _ = writeln!(s, "ProtectionKey:  {:>8}", 0);
    }
    s.push_str("VmFlags: ");
    for (bit, m) in MNEMONICS {
        if flags.bits() & (1 << bit) != 0 {
            s.push_str(m);
            s.push(' ');
        }
    }
    s.push('\n');
}

/// `__show_smap`'s figures (with the rollup's `Pss_Anon`/`Pss_File`/`Pss_Shmem`).
fn write_smap_fields(s: &mut String, mss: &MemSizeStats, rollup: bool) {
    kb_line(s, "Rss:", mss.resident);
    kb_line(s, "Pss:", mss.pss >> PSS_SHIFT);
    kb_line(s, "Pss_Dirty:", mss.pss_dirty >> PSS_SHIFT);
    if rollup {
        kb_line(s, "Pss_Anon:", mss.pss_anon >> PSS_SHIFT);
        kb_line(s, "Pss_File:", mss.pss_file >> PSS_SHIFT);
        kb_line(s, "Pss_Shmem:", mss.pss_shmem >> PSS_SHIFT);
    }
    kb_line(s, "Shared_Clean:", mss.shared_clean);
    kb_line(s, "Shared_Dirty:", mss.shared_dirty);
    kb_line(s, "Private_Clean:", mss.private_clean);
    kb_line(s, "Private_Dirty:", mss.private_dirty);
    kb_line(s, "Referenced:", mss.referenced);
    kb_line(s, "Anonymous:", mss.anonymous);
    // No KSM, shmem THPs or hugetlbfs here: those stay 0, as on a Linux without them.
    kb_line(s, "KSM:", 0);
    kb_line(s, "LazyFree:", mss.lazyfree);
    kb_line(s, "AnonHugePages:", mss.anonymous_thp);
    kb_line(s, "ShmemPmdMapped:", 0);
    kb_line(s, "FilePmdMapped:", mss.file_thp);
    for l in ["Shared_Hugetlb:", "Private_Hugetlb:"] {
        kb_line(s, l, 0);
    }
    kb_line(s, "Swap:", mss.swap);
    kb_line(s, "SwapPss:", mss.swap_pss >> PSS_SHIFT);
    kb_line(s, "Locked:", mss.pss_locked >> PSS_SHIFT);
}

/// `PM_PRESENT`: the page is in memory.
pub const PM_PRESENT: u64 = 1 << 63;
/// `PM_SWAP`: the page is on swap.
pub const PM_SWAP: u64 = 1 << 62;
/// `PM_FILE`: a page-cache page (or shared anonymous memory).
pub const PM_FILE: u64 = 1 << 61;
/// `PM_MMAP_EXCLUSIVE`: the page is mapped by this PTE only.
pub const PM_MMAP_EXCLUSIVE: u64 = 1 << 56;
/// `PM_SOFT_DIRTY`.
pub const PM_SOFT_DIRTY: u64 = 1 << 55;
/// `PM_PFRAME_MASK`: the pfn (or swap type and offset) field.
pub const PM_PFRAME_MASK: u64 = (1 << 55) - 1;
/// `MAX_SWAPFILES_SHIFT`: where the swap offset starts in a swapped entry's frame field.
const MAX_SWAPFILES_SHIFT: u32 = 5;

/// `pte_to_pagemap_entry` for `va` (`pagemap_pte_hole` where no PTE is set).
fn pagemap_entry(k: &Kernel, mm: &MmStruct, va: u64) -> u64 {
    let Some(v) = mm.vma_lookup(va) else {
        return 0;
    };
    let soft_dirty = if v.vm_flags.contains(VmFlags::VM_SOFTDIRTY) {
        PM_SOFT_DIRTY
    } else {
        0
    };
    // pagemap_pmd_range: a huge entry gives the pfn of each 4 KiB page it maps.
    let Some(pte) = k.translation_lookup(&mm.pt, va).filter(|p| !p.is_none()) else {
        return soft_dirty;
    };
    if !pte.is_present() {
        return match crate::mm::swapfile::SwpEntry::from_pte(pte) {
            Some(e) => {
                let frame = e.ty as u64 | (e.offset << MAX_SWAPFILES_SHIFT);
                PM_SWAP | soft_dirty | (frame & PM_PFRAME_MASK)
            }
            None => soft_dirty,
        };
    }
    // The tasks run as root (CAP_SYS_ADMIN), so the pfn is shown.
    let mut entry = PM_PRESENT | soft_dirty | (pte.pfn().0 & PM_PFRAME_MASK);
    if let Some(page) = k.vm_normal_page(pte) {
        let folio = page.compound_head();
        if !page_anon(folio) {
            entry |= PM_FILE;
        }
        if page.mapcount() + folio.entire_mapcount() == 1 {
            entry |= PM_MMAP_EXCLUSIVE;
        }
    }
    entry
}

/// `pagemap_read`: `/proc/PID/pagemap` from byte `offset`, `len` bytes — one little-endian
/// 64-bit entry per virtual page (entry `n` describes the page at `n << PAGE_SHIFT`: present
/// with its pfn, or swapped with its type and offset, plus the exclusive/file/soft-dirty
/// bits). `EINVAL` when `offset` or `len` is not a multiple of 8; the read stops at the end of
/// user space.
pub fn pagemap_read(
    k: &Kernel,
    mm: &MmStruct,
    offset: u64,
    len: usize,
) -> Result<alloc::vec::Vec<u8>, crate::Errno> {
    if !offset.is_multiple_of(8) || !len.is_multiple_of(8) {
        return Err(crate::Errno::EINVAL);
    }
    let first = offset / 8;
    let end = first
        .saturating_add((len / 8) as u64)
        .min(mm.task_size >> PAGE_SHIFT);
    // Sized by what will be written, not by the caller's length.
    let mut out = alloc::vec::Vec::with_capacity((end.saturating_sub(first) * 8) as usize);
    for vpn in first..end {
        out.extend_from_slice(&pagemap_entry(k, mm, vpn << PAGE_SHIFT).to_le_bytes());
    }
    Ok(out)
}

impl MmStruct {
    /// `/proc/PID/maps` for this address space ([`proc_pid_maps`]). Defined here, with the
    /// view, so the address-space layer does not call up into `/proc`.
    pub fn proc_maps(&self) -> String {
        proc_pid_maps(self)
    }
}
