//! `/proc/meminfo` (`fs/proc/meminfo.c`'s `meminfo_proc_show`, `mm/show_mem.c`'s
//! `si_mem_available`; `show_free_areas` is in `mm/show_mem.rs`). Fields for subsystems that do not exist yet
//! (page cache, swap, slab, …) are present and 0, as on a kernel without them.

use crate::arch::x86_64::layout::{VMALLOC_END, VMALLOC_START};
use crate::mm::mmzone::{totalreserve_pages, Wmark};
use crate::{Kernel, PAGE_SHIFT};
use alloc::string::String;
use core::fmt::Write;

/// Figures `meminfo` reports, in pages unless noted.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct MemInfo {
    /// `totalram_pages()`.
    pub total: u64,
    /// Free pages in the buddy lists.
    pub free: u64,
    /// `si_mem_available()`.
    pub available: u64,
    /// `vm.overcommit_ratio` share of RAM (`vm_commit_limit`).
    pub commit_limit: u64,
}

/// `si_meminfo` + `si_mem_available`.
pub fn si_meminfo(k: &Kernel) -> MemInfo {
    let total = k.totalram_pages();
    let free = k.global_free_pages();
    let wmark_low: u64 = k
        .nodes
        .iter()
        .flat_map(|n| n.zones.iter())
        .map(|z| z.wmark(Wmark::Low))
        .sum();
    // No page cache yet; reclaimable slab counts half, as in si_mem_available.
    let (rec, _) = k.slab_pages();
    let available =
        free.saturating_sub(totalreserve_pages(&k.nodes)) + rec - (rec / 2).min(wmark_low);
    MemInfo {
        total,
        free,
        available,
        commit_limit: total * 50 / 100,
    }
}

/// The DirectMap4k/2M/1G split: how x86-64's `init_memory_mapping` maps RAM (4 KiB pages for
/// the first MiB and unaligned edges, 2 MiB and 1 GiB pages where alignment allows), in KiB.
pub fn direct_map_split(k: &Kernel) -> (u64, u64, u64) {
    const M2: u64 = 2 << 20;
    const G1: u64 = 1 << 30;
    let (mut k4, mut m2, mut g1) = (1u64 << 20, 0u64, 0u64);
    for (s, e) in k.e820.usable_pfn_ranges() {
        let (mut s, e) = ((s << PAGE_SHIFT).max(1 << 20), e << PAGE_SHIFT);
        if s >= e {
            continue;
        }
        let s2 = crate::addr::align_up(s, M2).min(e);
        k4 += s2 - s;
        s = s2;
        let s1 = crate::addr::align_up(s, G1).min(crate::addr::align_down(e, M2));
        m2 += s1.saturating_sub(s);
        s = s1.max(s);
        let e1 = crate::addr::align_down(e, G1).max(s);
        g1 += e1 - s;
        let e2 = crate::addr::align_down(e, M2).max(e1);
        m2 += e2 - e1;
        k4 += e - e2;
    }
    (k4 >> 10, m2 >> 10, g1 >> 10)
}

fn kb(s: &mut String, label: &str, pages: u64) {
    let _ = writeln!(s, "{label}{:>8} kB", pages << (PAGE_SHIFT - 10));
}

fn kb_raw(s: &mut String, label: &str, kbytes: u64) {
    let _ = writeln!(s, "{label}{kbytes:>8} kB");
}

/// `/proc/meminfo`.
pub fn meminfo(k: &Kernel) -> String {
    let i = si_meminfo(k);
    let mut s = String::new();
    kb(&mut s, "MemTotal:       ", i.total);
    kb(&mut s, "MemFree:        ", i.free);
    kb(&mut s, "MemAvailable:   ", i.available);
    use crate::mm::filemap::{NR_ANON_MAPPED, NR_FILE_DIRTY, NR_FILE_MAPPED, NR_FILE_PAGES};
    let g = |item| k.global_node_page_state(item);
    kb(&mut s, "Buffers:        ", 0);
    kb(&mut s, "Cached:         ", g(NR_FILE_PAGES));
    use crate::mm::swap::{
        LRU_ACTIVE_ANON, LRU_ACTIVE_FILE, LRU_INACTIVE_ANON, LRU_INACTIVE_FILE, LRU_UNEVICTABLE,
    };
    let (sw_total, sw_free, sw_cached) = k.swap_totals();
    kb(&mut s, "SwapCached:     ", sw_cached);
    kb(
        &mut s,
        "Active:         ",
        g(LRU_ACTIVE_ANON) + g(LRU_ACTIVE_FILE),
    );
    kb(
        &mut s,
        "Inactive:       ",
        g(LRU_INACTIVE_ANON) + g(LRU_INACTIVE_FILE),
    );
    kb(&mut s, "Active(anon):   ", g(LRU_ACTIVE_ANON));
    kb(&mut s, "Inactive(anon): ", g(LRU_INACTIVE_ANON));
    kb(&mut s, "Active(file):   ", g(LRU_ACTIVE_FILE));
    kb(&mut s, "Inactive(file): ", g(LRU_INACTIVE_FILE));
    kb(&mut s, "Unevictable:    ", g(LRU_UNEVICTABLE));
    kb(&mut s, "Mlocked:        ", 0);
    kb(&mut s, "SwapTotal:      ", sw_total);
    kb(&mut s, "SwapFree:       ", sw_free);
    kb(&mut s, "Zswap:          ", 0);
    kb(&mut s, "Zswapped:       ", 0);
    kb(&mut s, "Dirty:          ", g(NR_FILE_DIRTY));
    kb(&mut s, "Writeback:      ", 0);
    kb(&mut s, "AnonPages:      ", g(NR_ANON_MAPPED));
    kb(&mut s, "Mapped:         ", g(NR_FILE_MAPPED));
    kb(&mut s, "Shmem:          ", 0);
    let (rec, unrec) = k.slab_pages();
    kb(&mut s, "KReclaimable:   ", rec);
    kb(&mut s, "Slab:           ", rec + unrec);
    kb(&mut s, "SReclaimable:   ", rec);
    kb(&mut s, "SUnreclaim:     ", unrec);
    kb_raw(&mut s, "KernelStack:    ", 0);
    kb(&mut s, "PageTables:     ", k.page_table_pages());
    for l in [
        "SecPageTables:  ",
        "NFS_Unstable:   ",
        "Bounce:         ",
        "WritebackTmp:   ",
    ] {
        kb(&mut s, l, 0);
    }
    kb(&mut s, "CommitLimit:    ", i.commit_limit);
    kb(&mut s, "Committed_AS:   ", 0);
    kb_raw(
        &mut s,
        "VmallocTotal:   ",
        (VMALLOC_END - VMALLOC_START) >> 10,
    );
    kb(&mut s, "VmallocUsed:    ", k.vmalloc_nr_pages());
    kb(&mut s, "VmallocChunk:   ", 0);
    kb(&mut s, "Percpu:         ", 0);
    kb(
        &mut s,
        "AnonHugePages:  ",
        k.global_node_page_state(crate::mm::huge_memory::NR_ANON_THPS),
    );
    for l in ["ShmemHugePages: ", "ShmemPmdMapped: "] {
        kb(&mut s, l, 0);
    }
    kb(
        &mut s,
        "FileHugePages:  ",
        k.global_node_page_state(crate::mm::filemap::NR_FILE_THPS),
    );
    kb(
        &mut s,
        "FilePmdMapped:  ",
        k.global_node_page_state(crate::mm::filemap::NR_FILE_PMDMAPPED),
    );
    kb(&mut s, "Balloon:        ", 0);
    let _ = writeln!(s, "HugePages_Total:   {:>5}", 0);
    let _ = writeln!(s, "HugePages_Free:    {:>5}", 0);
    let _ = writeln!(s, "HugePages_Rsvd:    {:>5}", 0);
    let _ = writeln!(s, "HugePages_Surp:    {:>5}", 0);
    kb_raw(&mut s, "Hugepagesize:   ", 2048);
    kb_raw(&mut s, "Hugetlb:        ", 0);
    let (k4, m2, g1) = direct_map_split(k);
    kb_raw(&mut s, "DirectMap4k:    ", k4);
    kb_raw(&mut s, "DirectMap2M:    ", m2);
    kb_raw(&mut s, "DirectMap1G:    ", g1);
    s
}
