//! Transparent huge pages (issue 15): 2 MiB PMD mappings of order-9 folios in
//! `MADV_HUGEPAGE` (or, under `always`, any eligible) anonymous memory — one fault per 2 MiB,
//! `AnonHugePages` in smaps and meminfo, the `thp_*` counters; the split of a PMD on partial
//! munmap, mprotect and MADV_DONTNEED with every other byte kept; fork copying PMDs and COW of
//! 4 KiB after it; reclaim splitting before swap-out with every byte back; the `never` policy;
//! the fallback to 4 KiB without an order-9 block; and every page back at the end.

mod common;
use common::files::{meminfo_field, smaps_field};
use common::{boot_mem, fill, free_and_pcp, tag};
use mmkit::arch::x86_64::pgtable::{HPAGE_PMD_NR, HPAGE_PMD_SIZE};
use mmkit::arch::x86_64::tlb::Access;
use mmkit::errno::Errno;
use mmkit::fs::proc::task_mmu::proc_pid_smaps;
use mmkit::gfp::{Gfp, GFP_KERNEL};
use mmkit::kernel::task::TaskTable;
use mmkit::mm::huge_memory::{ThpDefrag, ThpEnabled};
use mmkit::mm::khugepaged::{KhugepagedTunables, MADV_COLLAPSE};
use mmkit::mm::madvise::{MADV_DONTNEED, MADV_HUGEPAGE, MADV_NOHUGEPAGE};
use mmkit::mm::mm_types::{MmStruct, MM_ANONPAGES, MM_SWAPENTS};
use mmkit::mm::mmap::*;
use mmkit::{CpuGuard, Kernel};
use mmkit_sim::exec::{spawn_host, true_spec};
use mmkit_sim::hostfs::make_swap_file;
use mmkit_sim::Machine;
use std::sync::Arc;

const RW: u32 = PROT_READ | PROT_WRITE;
const ANON: u32 = MAP_PRIVATE | MAP_ANONYMOUS;
const MIB: u64 = 1 << 20;

fn event(k: &Kernel, name: &str) -> u64 {
    mmkit::fs::proc::vmstat::vm_event(k, name).expect("a vmstat event name")
}

/// Check what `fill` wrote, with `seed_of(i)` per page (`None`: the page reads as zeroes).
fn verify(
    k: &Kernel,
    cpu: &CpuGuard<'_>,
    mm: &mut MmStruct,
    base: u64,
    pages: u64,
    seed_of: impl Fn(u64) -> Option<u64>,
) {
    let mut got = [0u8; 8];
    for i in 0..pages {
        let want = seed_of(i).map_or([0; 8], |s| tag(i, s));
        for off in [0, 4088] {
            k.user_read(cpu, mm, base + (i << 12) + off, &mut got)
                .unwrap();
            assert_eq!(got, want, "page {i} offset {off}");
        }
    }
}

/// Every invariant checker that knows compound pages.
fn check_all(k: &Kernel, mm: &MmStruct) {
    k.check_mm_invariants(mm).unwrap();
    k.check_deferred_split_invariants().unwrap();
    k.check_invariants().unwrap();
    k.check_lru_invariants().unwrap();
    k.check_anon_vma_invariants().unwrap();
}

/// An anonymous mapping of `len` bytes whose start is 2 MiB aligned, advised `MADV_HUGEPAGE`.
fn huge_region(k: &Kernel, cpu: &CpuGuard<'_>, mm: &mut MmStruct, len: u64) -> u64 {
    let a = k.mmap(cpu, mm, 0, len, RW, ANON, 0).unwrap();
    assert_eq!(a % HPAGE_PMD_SIZE, 0, "thp_get_unmapped_area aligns it");
    k.madvise(cpu, mm, a, len, MADV_HUGEPAGE).unwrap();
    a
}

fn teardown_check(m: &Machine, before: u64) {
    let k = &m.kernel;
    m.settle();
    k.check_invariants().unwrap();
    k.check_lru_invariants().unwrap();
    k.check_anon_vma_invariants().unwrap();
    assert_eq!(k.nr_anon_vmas(), 0, "anon_vmas leaked");
    assert_eq!(free_and_pcp(k), before, "pages leaked");
    assert_eq!(k.page_table_pages(), 0);
    assert_eq!(meminfo_field(k, "AnonHugePages:"), 0);
}

fn before(m: &Machine) -> u64 {
    m.settle();
    free_and_pcp(&m.kernel)
}

/// A 64 MiB MADV_HUGEPAGE region written page by page takes 32 faults, not 16,384; smaps and
/// meminfo show `AnonHugePages: 65536 kB`; every byte reads back; exit gives every page back.
#[test]
fn madv_hugepage_region_faults_once_per_2mib() {
    let m = boot_mem(256, 1, "");
    let k = &m.kernel;
    let before = before(&m);
    let mm = m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = huge_region(k, cpu, &mut mm, 64 * MIB);
        assert_eq!(smaps_field(k, &mm, a, "THPeligible:"), 1);
        let (f0, alloc0) = (mm.faults.min_flt, event(k, "thp_fault_alloc"));
        let pages = (64 * MIB) >> 12;
        fill(k, cpu, &mut mm, a, pages, 1);
        assert_eq!(mm.faults.min_flt - f0, 32, "one fault per 2 MiB");
        assert_eq!(event(k, "thp_fault_alloc") - alloc0, 32);
        assert_eq!(mm.counter(MM_ANONPAGES), pages);
        assert_eq!(smaps_field(k, &mm, a, "AnonHugePages:"), 65536);
        assert_eq!(smaps_field(k, &mm, a, "Rss:"), 65536);
        assert_eq!(smaps_field(k, &mm, a, "Anonymous:"), 65536);
        assert_eq!(smaps_field(k, &mm, a, "Private_Dirty:"), 65536);
        assert_eq!(meminfo_field(k, "AnonHugePages:"), 65536);
        let vmstat = mmkit::fs::proc::vmstat::vmstat(k);
        assert!(vmstat.contains("\nnr_anon_transparent_hugepages 32\n"));
        // The MMU translates through the 2 MiB entries: pfns are consecutive within one.
        let p0 = k.mmu_translate(cpu, &mm.pt, a, Access::USER_READ).unwrap();
        let p1 = k
            .mmu_translate(cpu, &mm.pt, a + 0x1f_f123, Access::USER_READ)
            .unwrap();
        assert_eq!(p1 - p0, 0x1f_f123);
        assert_eq!(p0 % HPAGE_PMD_SIZE, 0, "an order-9 block");
        verify(k, cpu, &mut mm, a, pages, |_| Some(1));
        check_all(k, &mm);
        mm
    });
    // The TLB entries the accesses left (4 KiB pieces of the 2 MiB entries) agree with the
    // tables (checked with no CPU held).
    k.check_tlb_invariants(&[&mm.pt]).unwrap();
    m.on_cpu(0, |cpu| k.exit_mmap(cpu, mm));
    teardown_check(&m, before);
}

/// Reads of untouched `MADV_HUGEPAGE` memory map the huge zero folio (one fault per 2 MiB,
/// one zero folio for every mapping, no `AnonHugePages`, no RSS); fork shares the zero PMDs;
/// `munmap` of 4 KiB inside one splits it into PTEs of the 4 KiB zero page; a write to a
/// zero PMD gets a THP in its place (one fault per 2 MiB more); with `use_zero_page` off a
/// read allocates the THP; the last exit frees the zero folio.
#[test]
fn huge_zero_page_for_reads_then_a_thp_per_write() {
    let m = boot_mem(256, 1, "");
    let k = &m.kernel;
    let before = before(&m);
    m.on_cpu(0, |cpu| {
        let mut pm = k.mm_alloc(cpu).unwrap();
        let a = huge_region(k, cpu, &mut pm, 16 * MIB);
        let pages = (16 * MIB) >> 12;
        let (f0, zero0, alloc0) = (
            pm.faults.min_flt,
            event(k, "thp_zero_page_alloc"),
            event(k, "thp_fault_alloc"),
        );
        let free0 = free_and_pcp(k);
        let mut b = [0xffu8; 16];
        for i in 0..pages {
            k.user_read(cpu, &mut pm, a + (i << 12) + 100, &mut b)
                .unwrap();
            assert_eq!(b, [0; 16], "page {i} reads zeros");
        }
        assert_eq!(pm.faults.min_flt - f0, 8, "one read fault per 2 MiB");
        assert_eq!(event(k, "thp_zero_page_alloc") - zero0, 1, "one zero folio");
        assert_eq!(event(k, "thp_fault_alloc"), alloc0, "no THP for reads");
        let used = free0 - free_and_pcp(k);
        assert!(
            (512..=512 + 16).contains(&used),
            "the zero folio and a few tables, not 16 MiB: {used} pages"
        );
        assert_eq!(pm.counter(MM_ANONPAGES), 0);
        assert_eq!(smaps_field(k, &pm, a, "AnonHugePages:"), 0);
        assert_eq!(smaps_field(k, &pm, a, "Rss:"), 0);
        assert_eq!(meminfo_field(k, "AnonHugePages:"), 0);
        check_all(k, &pm);
        // fork: the child maps the same zero PMDs; 4 KiB unmapped in the first splits it.
        let mut cm = k.dup_mmap(cpu, &pm).unwrap();
        assert_eq!(event(k, "thp_zero_page_alloc") - zero0, 1);
        let split0 = event(k, "thp_split_pmd");
        k.munmap(cpu, &mut cm, a + 5 * 4096, 4096).unwrap();
        assert_eq!(event(k, "thp_split_pmd") - split0, 1);
        assert!(k.user_read(cpu, &mut cm, a + 5 * 4096, &mut b).is_err());
        k.user_read(cpu, &mut cm, a + 6 * 4096, &mut b).unwrap();
        assert_eq!(b, [0; 16]);
        check_all(k, &cm);
        // The parent writes every page: a THP in place of each zero PMD.
        let f1 = pm.faults.min_flt;
        fill(k, cpu, &mut pm, a, pages, 3);
        assert_eq!(pm.faults.min_flt - f1, 8, "one write fault per 2 MiB");
        assert_eq!(event(k, "thp_fault_alloc") - alloc0, 8);
        assert_eq!(smaps_field(k, &pm, a, "AnonHugePages:"), 16384);
        assert_eq!(pm.counter(MM_ANONPAGES), pages);
        verify(k, cpu, &mut pm, a, pages, |_| Some(3));
        // The child still reads zeros; its writes copy 4 KiB (split PMD) or get a THP.
        k.user_write(cpu, &mut cm, a + 7 * 4096, b"child").unwrap();
        k.user_write(cpu, &mut cm, a + 600 * 4096, b"child")
            .unwrap();
        assert_eq!(event(k, "thp_fault_alloc") - alloc0, 9);
        for i in (0..pages).filter(|&i| i != 5) {
            k.user_read(cpu, &mut cm, a + (i << 12), &mut b[..5])
                .unwrap();
            let want: &[u8] = if i == 7 || i == 600 {
                b"child"
            } else {
                &[0; 5]
            };
            assert_eq!(&b[..5], want, "child page {i}");
        }
        // (The hole at page 5 split the child's VMA: page 600 is in the one from page 6.)
        assert_eq!(smaps_field(k, &cm, a + 6 * 4096, "AnonHugePages:"), 2048);
        assert_eq!(smaps_field(k, &cm, a, "AnonHugePages:"), 0);
        check_all(k, &pm);
        check_all(k, &cm);
        k.exit_mmap(cpu, cm);
        k.exit_mmap(cpu, pm);
        // use_zero_page off: a read fault allocates the THP.
        k.set_thp_use_zero_page(false);
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = huge_region(k, cpu, &mut mm, 4 * MIB);
        let (zero1, alloc1) = (event(k, "thp_zero_page_alloc"), event(k, "thp_fault_alloc"));
        k.user_read(cpu, &mut mm, a, &mut b).unwrap();
        assert_eq!(event(k, "thp_fault_alloc") - alloc1, 1);
        assert_eq!(event(k, "thp_zero_page_alloc"), zero1);
        assert_eq!(smaps_field(k, &mm, a, "AnonHugePages:"), 2048);
        k.set_thp_use_zero_page(true);
        check_all(k, &mm);
        k.exit_mmap(cpu, mm);
    });
    // teardown_check counts every page: the zero folio went with its last user.
    teardown_check(&m, before);
}

/// 4 KiB pages made into THPs: `MADV_COLLAPSE` copies an aligned 4 MiB of 4 KiB pages
/// (written before `MADV_HUGEPAGE`, with a hole) into 2 THPs — every byte kept, the hole
/// zero, the old pages given back, a fork child's copies untouched; a page pinned by someone
/// makes it `EAGAIN` and collapses nothing; khugepaged's pass collapses only what
/// `max_ptes_none` allows, and the rest once it is raised.
#[test]
fn collapse_4k_pages_into_thps() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let before = before(&m);
    let pages = (4 * MIB) >> 12;
    let hole = |i: u64| (10..20).contains(&i);
    let seed = |i: u64| (!hole(i)).then_some(5);
    m.on_cpu(0, |cpu| {
        let mut pm = k.mm_alloc(cpu).unwrap();
        let a = k.mmap(cpu, &mut pm, 0, 4 * MIB, RW, ANON, 0).unwrap();
        assert_eq!(a % HPAGE_PMD_SIZE, 0);
        for i in (0..pages).filter(|&i| !hole(i)) {
            k.user_write(cpu, &mut pm, a + (i << 12), &tag(i, 5))
                .unwrap();
            k.user_write(cpu, &mut pm, a + (i << 12) + 4088, &tag(i, 5))
                .unwrap();
        }
        assert_eq!(smaps_field(k, &pm, a, "AnonHugePages:"), 0, "4 KiB pages");
        let mut cm = k.dup_mmap(cpu, &pm).unwrap();
        // Fork left every entry read-only (a range with no writable entry is not collapsed:
        // SCAN_PAGE_RO); the parent writes one page of each 2 MiB, the rest stays shared.
        assert_eq!(
            k.madvise(cpu, &mut pm, a, 2 * MIB, MADV_COLLAPSE),
            Err(Errno::EINVAL)
        );
        for i in [0, 600] {
            k.user_write(cpu, &mut pm, a + (i << 12), &tag(i, 5))
                .unwrap();
        }
        // A pinned page: nothing collapses, EAGAIN.
        let pinned = k
            .pfn_to_page(k.pte_lookup(&pm.pt, a + 3 * 4096).unwrap().pfn())
            .unwrap();
        pinned.get();
        assert_eq!(
            k.madvise(cpu, &mut pm, a, 2 * MIB, MADV_COLLAPSE),
            Err(Errno::EAGAIN)
        );
        assert_eq!(smaps_field(k, &pm, a, "AnonHugePages:"), 0);
        k.folio_put(cpu, pinned);
        check_all(k, &pm);
        let alloc0 = event(k, "thp_collapse_alloc");
        k.madvise(cpu, &mut pm, a, 4 * MIB, MADV_COLLAPSE).unwrap();
        assert_eq!(event(k, "thp_collapse_alloc") - alloc0, 2);
        assert_eq!(smaps_field(k, &pm, a, "AnonHugePages:"), 4096);
        assert_eq!(pm.counter(MM_ANONPAGES), pages);
        assert_eq!(k.khugepaged_stats().0, 2 * HPAGE_PMD_NR);
        verify(k, cpu, &mut pm, a, pages, seed);
        check_all(k, &pm);
        // The parent writes its THPs; the child's pages (copied from) stay as they were.
        fill(k, cpu, &mut pm, a, pages, 6);
        verify(k, cpu, &mut cm, a, pages, seed);
        check_all(k, &cm);
        k.exit_mmap(cpu, cm);
        // Collapsed once more: a THP already there is success, nothing allocated.
        k.madvise(cpu, &mut pm, a, 4 * MIB, MADV_COLLAPSE).unwrap();
        assert_eq!(event(k, "thp_collapse_alloc") - alloc0, 2);
        k.exit_mmap(cpu, pm);

        // khugepaged, on a MADV_HUGEPAGE range filled while THPs were off.
        let mut mm = k.mm_alloc(cpu).unwrap();
        k.set_thp_enabled(ThpEnabled::Never);
        let b = huge_region(k, cpu, &mut mm, 4 * MIB);
        for i in (0..pages).filter(|&i| !hole(i) || i >= 512) {
            k.user_write(cpu, &mut mm, b + (i << 12), &tag(i, 7))
                .unwrap();
        }
        k.set_thp_enabled(ThpEnabled::Madvise);
        let mut t = k.khugepaged_tunables();
        t.max_ptes_none = 0;
        k.set_khugepaged_tunables(t).unwrap();
        let (none0, full0) = (event(k, "thp_scan_exceed_none_pte"), k.khugepaged_stats().1);
        let mut cursor = 0;
        assert_eq!(
            k.khugepaged_scan_mm(cpu, &mut mm, &mut cursor, 8 * HPAGE_PMD_NR),
            1
        );
        assert_eq!(k.khugepaged_stats().1 - full0, 1, "a full scan");
        assert_eq!(
            event(k, "thp_scan_exceed_none_pte") - none0,
            1,
            "the range with the hole"
        );
        assert_eq!(smaps_field(k, &mm, b, "AnonHugePages:"), 2048);
        t.max_ptes_none = 511;
        k.set_khugepaged_tunables(t).unwrap();
        assert_eq!(
            k.khugepaged_scan_mm(cpu, &mut mm, &mut cursor, 8 * HPAGE_PMD_NR),
            1
        );
        assert_eq!(smaps_field(k, &mm, b, "AnonHugePages:"), 4096);
        let mut got = [0u8; 8];
        for i in 0..pages {
            k.user_read(cpu, &mut mm, b + (i << 12), &mut got).unwrap();
            let want = if hole(i) && i < 512 {
                [0; 8]
            } else {
                tag(i, 7)
            };
            assert_eq!(got, want, "page {i}");
        }
        check_all(k, &mm);
        assert_eq!(
            k.set_khugepaged_tunables(KhugepagedTunables {
                max_ptes_none: 512,
                ..t
            }),
            Err(Errno::EINVAL)
        );
        k.exit_mmap(cpu, mm);
    });
    teardown_check(&m, before);
}

/// `/proc/PID/smaps_rollup`: the sum of every VMA's smaps figures (Rss, Pss, the Pss split
/// by kind, AnonHugePages …), under a `[rollup]` header spanning the address space, with
/// the host kernel's labels in the host's order (its own file is the reference).
#[test]
fn smaps_rollup_sums_the_vmas_in_the_hosts_layout() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let before = before(&m);
    m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = huge_region(k, cpu, &mut mm, 4 * MIB);
        fill(k, cpu, &mut mm, a, 512, 1); // one THP
        let b = k.mmap(cpu, &mut mm, 0, 64 << 12, RW, ANON, 0).unwrap();
        fill(k, cpu, &mut mm, b, 10, 2); // 10 pages of 4 KiB
        let rollup = mmkit::fs::proc::task_mmu::proc_pid_smaps_rollup(k, &mm);
        let smaps = proc_pid_smaps(k, &mm);
        let mut lines = rollup.lines();
        let head = lines.next().unwrap();
        assert!(head.ends_with("[rollup]") && head.contains(" ---p 00000000 00:00 0 "));
        assert_eq!(
            head.find("[rollup]"),
            Some(73),
            "padded as seq_pad does: {head}"
        );
        let first = mm.vmas().next().unwrap().vm_start;
        let last = mm.vmas().last().unwrap().vm_end;
        assert!(head.starts_with(&format!("{first:08x}-{last:08x} ")));
        let field = |text: &str, name: &str| -> u64 {
            text.lines()
                .filter(|l| l.starts_with(name))
                .map(|l| l[name.len()..].trim().trim_end_matches(" kB").trim())
                .map(|v| v.parse::<u64>().unwrap())
                .sum()
        };
        for name in [
            "Rss:",
            "Pss:",
            "Private_Dirty:",
            "Anonymous:",
            "AnonHugePages:",
        ] {
            assert_eq!(field(&rollup, name), field(&smaps, name), "{name}");
        }
        assert_eq!(field(&rollup, "Rss:"), 2048 + 40);
        assert_eq!(field(&rollup, "Pss_Anon:"), 2048 + 40);
        assert_eq!(field(&rollup, "Pss_File:"), 0);
        assert_eq!(field(&rollup, "AnonHugePages:"), 2048);
        let labels = |t: &str| -> Vec<String> {
            t.lines()
                .skip(1)
                .map(|l| l.split(':').next().unwrap().to_string())
                .collect()
        };
        match std::fs::read_to_string("/proc/self/smaps_rollup") {
            Ok(host) => assert_eq!(labels(&rollup), labels(&host), "the host's labels"),
            Err(e) => eprintln!(
                "SKIPPED in smaps_rollup_sums_the_vmas_in_the_hosts_layout: the host has no \
                 /proc/self/smaps_rollup ({e}); labels not compared"
            ),
        }
        k.exit_mmap(cpu, mm);
    });
    teardown_check(&m, before);
}

/// Without MADV_HUGEPAGE, `madvise` mode maps 4 KiB pages; `always` maps THPs anyway;
/// `never` (on the command line or set at run time) maps none, MADV_HUGEPAGE or not; and
/// MADV_NOHUGEPAGE refuses them under `always`.
#[test]
fn policies_always_madvise_never() {
    for (cmdline, advice, want_thp) in [
        ("", None, false),
        ("transparent_hugepage=always", None, true),
        ("transparent_hugepage=always", Some(MADV_NOHUGEPAGE), false),
        ("transparent_hugepage=never", Some(MADV_HUGEPAGE), false),
        ("transparent_hugepage=madvise", Some(MADV_HUGEPAGE), true),
    ] {
        let m = boot_mem(128, 1, cmdline);
        let k = &m.kernel;
        let before = before(&m);
        m.on_cpu(0, |cpu| {
            let mut mm = k.mm_alloc(cpu).unwrap();
            let a = k.mmap(cpu, &mut mm, 0, 8 * MIB, RW, ANON, 0).unwrap();
            if let Some(adv) = advice {
                k.madvise(cpu, &mut mm, a, 8 * MIB, adv).unwrap();
            }
            let f0 = mm.faults.min_flt;
            fill(k, cpu, &mut mm, a, 2048, 3);
            let faults = mm.faults.min_flt - f0;
            let thp = smaps_field(k, &mm, a, "AnonHugePages:");
            assert_eq!(
                smaps_field(k, &mm, a, "THPeligible:"),
                u64::from(want_thp),
                "{cmdline} {advice:?}"
            );
            if want_thp {
                assert_eq!((faults, thp), (4, 8192), "{cmdline} {advice:?}");
            } else {
                assert_eq!((faults, thp), (2048, 0), "{cmdline} {advice:?}");
            }
            verify(k, cpu, &mut mm, a, 2048, |_| Some(3));
            check_all(k, &mm);
            k.exit_mmap(cpu, mm);
        });
        teardown_check(&m, before);
    }
    // At run time: `never` stops new THPs; those mapped stay until unmapped.
    let m = boot_mem(128, 1, "transparent_hugepage=always");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = k.mmap(cpu, &mut mm, 0, 8 * MIB, RW, ANON, 0).unwrap();
        fill(k, cpu, &mut mm, a, 512, 4);
        k.set_thp_enabled(ThpEnabled::Never);
        fill(k, cpu, &mut mm, a + 2 * MIB, 512, 4);
        assert_eq!(smaps_field(k, &mm, a, "AnonHugePages:"), 2048);
        assert_eq!(smaps_field(k, &mm, a, "THPeligible:"), 0);
        verify(k, cpu, &mut mm, a, 512, |_| Some(4));
        verify(k, cpu, &mut mm, a + 2 * MIB, 512, |_| Some(4));
        check_all(k, &mm);
        k.exit_mmap(cpu, mm);
    });
}

/// munmap of 4 KiB in the middle of a THP region splits exactly that one PMD, keeps every
/// other byte, and the other PMDs stay huge; the folio, partially mapped, waits on the
/// deferred split queue until the shrinker (drop_caches here) splits it and frees the page.
#[test]
fn munmap_of_4k_splits_exactly_one_pmd() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let before = before(&m);
    m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = huge_region(k, cpu, &mut mm, 8 * MIB);
        let pages = (8 * MIB) >> 12;
        fill(k, cpu, &mut mm, a, pages, 5);
        let (pmd0, page0) = (event(k, "thp_split_pmd"), event(k, "thp_split_page"));
        let deferred0 = event(k, "thp_deferred_split_page");
        let hole = a + 3 * MIB + 0x5000; // inside the second PMD
        k.munmap(cpu, &mut mm, hole, 4096).unwrap();
        assert_eq!(event(k, "thp_split_pmd") - pmd0, 1);
        // Linux since 4.5: the folio stays whole, PTE-mapped and partially mapped, on the
        // deferred split queue; the shrinker splits it later.
        assert_eq!(event(k, "thp_split_page"), page0);
        assert_eq!(event(k, "thp_deferred_split_page") - deferred0, 1);
        assert_eq!(k.deferred_split_count(0), 1);
        assert_eq!(k.mthp_stat(9, "nr_anon_partially_mapped"), Some(1));
        check_all(k, &mm);
        k.lru_add_drain(cpu);
        let free0 = free_and_pcp(k);
        k.drop_caches(cpu, 2).unwrap();
        assert_eq!(event(k, "thp_split_page") - page0, 1);
        assert_eq!(k.deferred_split_count(0), 0);
        assert_eq!(k.mthp_stat(9, "nr_anon_partially_mapped"), Some(0));
        assert_eq!(free_and_pcp(k) - free0, 1, "the unmapped page went back");
        assert_eq!(mm.counter(MM_ANONPAGES), pages - 1);
        assert_eq!(meminfo_field(k, "AnonHugePages:"), 6 * 1024);
        let hole_page = (hole - a) >> 12;
        // Every other byte is there; the hole faults.
        let mut b = [0u8; 1];
        assert!(k.user_read(cpu, &mut mm, hole, &mut b).is_err());
        for i in (0..pages).filter(|&i| i != hole_page) {
            let mut got = [0u8; 8];
            k.user_read(cpu, &mut mm, a + (i << 12), &mut got).unwrap();
            assert_eq!(got, tag(i, 5), "page {i}");
        }
        check_all(k, &mm);
        k.exit_mmap(cpu, mm);
    });
    teardown_check(&m, before);
}

/// The software MMU keeps 2 MiB translations as 2 MiB TLB entries: once loaded, one entry
/// serves reads and writes of all 512 pages of a THP without a walk (an anonymous THP is
/// born dirty, so a write needs no re-walk for Dirty). Splitting the PMD (a 4 KiB munmap)
/// flushes it: the next accesses walk 4 KiB PTEs, one miss per page, and read the same
/// bytes; the TLB checker finds every live entry, 2 MiB ones included, agreeing with the
/// page tables.
#[test]
fn a_2mib_tlb_entry_translates_the_whole_thp() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let before = before(&m);
    let mm = m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = huge_region(k, cpu, &mut mm, 2 * MIB);
        fill(k, cpu, &mut mm, a, 512, 6);
        let mut got = [0u8; 8];
        // One access to load the entry, then every page of the THP, reads and writes.
        k.user_read(cpu, &mut mm, a, &mut got).unwrap();
        let (h0, m0) = k.tlb_stats(cpu);
        for i in 0..512u64 {
            k.user_read(cpu, &mut mm, a + (i << 12) + 8, &mut got)
                .unwrap();
            k.user_write(cpu, &mut mm, a + (i << 12) + 16, &got)
                .unwrap();
        }
        let (h1, m1) = k.tlb_stats(cpu);
        assert_eq!((h1 - h0, m1 - m0), (1024, 0), "1024 accesses, no walk");
        k.munmap(cpu, &mut mm, a + 5 * 4096, 4096).unwrap();
        let (h0, m0) = k.tlb_stats(cpu);
        for i in (0..64u64).filter(|&i| i != 5) {
            k.user_read(cpu, &mut mm, a + (i << 12), &mut got).unwrap();
            assert_eq!(got, tag(i, 6), "page {i}");
        }
        let (h1, m1) = k.tlb_stats(cpu);
        assert_eq!((h1 - h0, m1 - m0), (0, 63), "4 KiB PTEs: a walk per page");
        mm
    });
    k.check_tlb_invariants(&[&mm.pt]).unwrap();
    m.on_cpu(0, |cpu| k.exit_mmap(cpu, mm));
    teardown_check(&m, before);
}

/// mprotect of half a THP splits it (and its VMA); mprotect of whole THPs keeps them huge;
/// a write through the read-only half faults with SIGSEGV's access error, the bytes stay.
#[test]
fn mprotect_of_half_a_thp_splits_it() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let before = before(&m);
    m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = huge_region(k, cpu, &mut mm, 8 * MIB);
        let pages = (8 * MIB) >> 12;
        fill(k, cpu, &mut mm, a, pages, 6);
        let pmd0 = event(k, "thp_split_pmd");
        // Whole PMDs: change_huge_pmd, no split.
        k.mprotect(cpu, &mut mm, a + 4 * MIB, 4 * MIB, PROT_READ)
            .unwrap();
        assert_eq!(event(k, "thp_split_pmd"), pmd0);
        assert!(k
            .mmu_translate(cpu, &mm.pt, a + 5 * MIB, Access::USER_WRITE)
            .is_err());
        // Half of the first PMD.
        k.mprotect(cpu, &mut mm, a, MIB, PROT_READ).unwrap();
        assert_eq!(event(k, "thp_split_pmd") - pmd0, 1);
        assert!(k
            .mmu_translate(cpu, &mm.pt, a + 0x1000, Access::USER_WRITE)
            .is_err());
        assert!(k
            .mmu_translate(cpu, &mm.pt, a + MIB + 0x1000, Access::USER_WRITE)
            .is_ok());
        assert_eq!(meminfo_field(k, "AnonHugePages:"), 6 * 1024);
        verify(k, cpu, &mut mm, a, pages, |_| Some(6));
        check_all(k, &mm);
        k.exit_mmap(cpu, mm);
    });
    teardown_check(&m, before);
}

/// MADV_DONTNEED of part of a THP splits it and zeroes only that part; of a whole one frees
/// the folio at once.
#[test]
fn madv_dontneed_splits_or_zaps() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let before = before(&m);
    m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = huge_region(k, cpu, &mut mm, 4 * MIB);
        let pages = (4 * MIB) >> 12;
        fill(k, cpu, &mut mm, a, pages, 7);
        let pmd0 = event(k, "thp_split_pmd");
        k.madvise(cpu, &mut mm, a + 0x10000, 0x4000, MADV_DONTNEED)
            .unwrap();
        k.madvise(cpu, &mut mm, a + 2 * MIB, 2 * MIB, MADV_DONTNEED)
            .unwrap();
        assert_eq!(event(k, "thp_split_pmd") - pmd0, 1);
        assert_eq!(mm.counter(MM_ANONPAGES), 512 - 4);
        verify(k, cpu, &mut mm, a, pages, |i| {
            (!(16..20).contains(&i) && i < 512).then_some(7)
        });
        check_all(k, &mm);
        k.exit_mmap(cpu, mm);
    });
    teardown_check(&m, before);
}

/// fork copies the PMDs (both write-protected); a child write gets the child copies of the
/// 4 KiB pages written only (the child's PMD is split, the folio stays whole and shared),
/// and the parent's bytes are intact; a write by a sole owner reuses the THP in place.
#[test]
fn fork_then_child_write_copies_only_4k() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let before = before(&m);
    m.on_cpu(0, |cpu| {
        let mut pm = k.mm_alloc(cpu).unwrap();
        let a = huge_region(k, cpu, &mut pm, 4 * MIB);
        let pages = (4 * MIB) >> 12;
        fill(k, cpu, &mut pm, a, pages, 8);
        let mut cm = k.dup_mmap(cpu, &pm).unwrap();
        assert_eq!(cm.counter(MM_ANONPAGES), pages);
        assert_eq!(smaps_field(k, &cm, a, "AnonHugePages:"), 4096);
        assert_eq!(
            meminfo_field(k, "AnonHugePages:"),
            4096,
            "shared, counted once"
        );
        assert_eq!(smaps_field(k, &pm, a, "Pss:"), 2048);
        check_all(k, &pm);
        check_all(k, &cm);
        let free0 = free_and_pcp(k);
        // The child writes 3 pages of the first THP.
        for i in [0u64, 100, 511] {
            k.user_write(cpu, &mut cm, a + (i << 12) + 8, b"child!!!")
                .unwrap();
        }
        k.lru_add_drain(cpu);
        let used = free0 - free_and_pcp(k);
        assert!(
            (3..=6).contains(&used),
            "3 copies (and a page table or two), not 2 MiB: {used}"
        );
        // The child's PMD was split, not the folio: the parent keeps both PMDs (Linux 6.x).
        assert_eq!(event(k, "thp_split_page"), 0);
        assert_eq!(event(k, "thp_split_pmd"), 1);
        assert_eq!(smaps_field(k, &cm, a, "AnonHugePages:"), 2048);
        assert_eq!(smaps_field(k, &pm, a, "AnonHugePages:"), 4096);
        // The parent's first PMD is shared with 509 of the child's PTEs: its Pss counts
        // those pages half, the 3 the child copied whole (Linux's per-page mapcount).
        assert_eq!(
            smaps_field(k, &pm, a, "Pss:"),
            2048 / 2 + 3 * 4 / 2 + 2048 / 2
        );
        verify(k, cpu, &mut pm, a, pages, |_| Some(8));
        let mut got = [0u8; 8];
        for i in 0..pages {
            k.user_read(cpu, &mut cm, a + (i << 12) + 8, &mut got)
                .unwrap();
            let want: [u8; 8] = if [0, 100, 511].contains(&i) {
                *b"child!!!"
            } else {
                [0; 8]
            };
            assert_eq!(got, want, "child page {i}");
        }
        check_all(k, &pm);
        check_all(k, &cm);
        k.exit_mmap(cpu, cm);
        // The parent alone: a write to the second THP reuses it (no split, no copy).
        let split0 = event(k, "thp_split_pmd");
        k.user_write(cpu, &mut pm, a + 3 * MIB, b"parent").unwrap();
        assert_eq!(event(k, "thp_split_pmd"), split0);
        assert_eq!(smaps_field(k, &pm, a, "AnonHugePages:"), 4096);
        check_all(k, &pm);
        k.exit_mmap(cpu, pm);
    });
    teardown_check(&m, before);
}

/// Reclaim of a THP-backed region splits the folios and swaps their pages out; every byte
/// comes back on access.
#[test]
fn reclaim_splits_and_swaps_a_thp_region() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let dir = tempfile::tempdir().unwrap();
    let before = before(&m);
    let path = dir.path().join("swapfile");
    let f = make_swap_file(&path, 64 << 20).unwrap();
    let p = path.to_string_lossy().into_owned();
    k.swapon(Arc::new(f), &p, -2).unwrap();
    m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = huge_region(k, cpu, &mut mm, 8 * MIB);
        let pages = (8 * MIB) >> 12;
        fill(k, cpu, &mut mm, a, pages, 9);
        assert_eq!(meminfo_field(k, "AnonHugePages:"), 8192);
        for _ in 0..2000 {
            if mm.counter(MM_SWAPENTS) == pages {
                break;
            }
            k.try_to_free_pages(cpu, GFP_KERNEL);
        }
        assert_eq!(mm.counter(MM_SWAPENTS), pages, "all of it went to swap");
        assert_eq!(event(k, "thp_split_page"), 4);
        assert_eq!(meminfo_field(k, "AnonHugePages:"), 0);
        check_all(k, &mm);
        // smaps counts the swap entries; a fork shares each slot, so each process's SwapPss
        // is half; the rollup sums the VMAs.
        assert_eq!(smaps_field(k, &mm, a, "Swap:"), 8192);
        assert_eq!(smaps_field(k, &mm, a, "SwapPss:"), 8192);
        assert_eq!(smaps_field(k, &mm, a, "Rss:"), 0);
        let cm = k.dup_mmap(cpu, &mm).unwrap();
        assert_eq!(smaps_field(k, &mm, a, "Swap:"), 8192);
        assert_eq!(smaps_field(k, &mm, a, "SwapPss:"), 4096);
        let rollup = mmkit::fs::proc::task_mmu::proc_pid_smaps_rollup(k, &cm);
        let has = |want: &str| {
            rollup
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>().join(" ") == want)
        };
        assert!(has("Swap: 8192 kB") && has("SwapPss: 4096 kB"), "{rollup}");
        k.exit_mmap(cpu, cm);
        assert_eq!(smaps_field(k, &mm, a, "SwapPss:"), 8192);
        verify(k, cpu, &mut mm, a, pages, |_| Some(9));
        assert_eq!(mm.counter(MM_SWAPENTS), 0);
        check_all(k, &mm);
        k.exit_mmap(cpu, mm);
        k.swapoff(cpu, &p).unwrap();
    });
    teardown_check(&m, before);
}

/// With memory fragmented (a pinned page in every pageblock) a THP fault falls back to 4 KiB
/// pages and counts `thp_fault_fallback`, with `defrag` both `never` and `madvise` (whose
/// compaction cannot move the pinned pages).
#[test]
fn fragmented_memory_falls_back_to_4k() {
    for defrag in [ThpDefrag::Never, ThpDefrag::Madvise] {
        let m = boot_mem(64, 1, "");
        let k = &m.kernel;
        k.set_thp_defrag(defrag);
        let before = before(&m);
        m.on_cpu(0, |cpu| {
            // Take every free page, keep one in each 512, give the rest back.
            let all = common::exhaust(k, cpu, GFP_KERNEL | Gfp::__GFP_NOWARN, 0);
            let mut pinned = Vec::new();
            for p in all {
                if k.page_to_pfn(p).0 % 512 == 7 {
                    pinned.push(p);
                } else {
                    k.__free_pages(cpu, p, 0);
                }
            }
            k.drain_all_pages(cpu);
            let mut mm = k.mm_alloc(cpu).unwrap();
            let a = huge_region(k, cpu, &mut mm, 4 * MIB);
            let (f0, fb0) = (mm.faults.min_flt, event(k, "thp_fault_fallback"));
            fill(k, cpu, &mut mm, a, 1024, 10);
            assert_eq!(mm.faults.min_flt - f0, 1024, "{defrag:?}");
            assert_eq!(event(k, "thp_fault_fallback") - fb0, 2, "{defrag:?}");
            assert_eq!(event(k, "thp_fault_alloc"), 0);
            assert_eq!(smaps_field(k, &mm, a, "AnonHugePages:"), 0);
            verify(k, cpu, &mut mm, a, 1024, |_| Some(10));
            check_all(k, &mm);
            k.exit_mmap(cpu, mm);
            common::free_all(k, cpu, pinned, 0);
        });
        teardown_check(&m, before);
    }
}

/// Processes with THP regions fork, write, unmap, protect, advise and exit at random with
/// reclaim and compaction running; the bytes match a model and every invariant holds after
/// each step.
#[test]
fn random_thp_operations_keep_every_invariant() {
    use rand::{Rng, SeedableRng};
    let m = boot_mem(96, 1, "");
    let k = &m.kernel;
    let dir = tempfile::tempdir().unwrap();
    let before = before(&m);
    let path = dir.path().join("swapfile");
    let f = make_swap_file(&path, 128 << 20).unwrap();
    let swap_path = path.to_string_lossy().into_owned();
    k.swapon(Arc::new(f), &swap_path, -2).unwrap();
    // mTHP sizes too: 64 KiB always, 16 KiB for MADV_HUGEPAGE memory; changed at random below.
    {
        use mmkit::mm::huge_memory::ThpPolicy;
        k.set_mthp_enabled(64, ThpPolicy::Always).unwrap();
        k.set_mthp_enabled(16, ThpPolicy::Madvise).unwrap();
    }
    let mut tasks = TaskTable::default();
    let first = m.on_cpu(0, |cpu| {
        spawn_host(&m, &mut tasks, cpu, &true_spec()).unwrap()
    });
    let pages = (16 * MIB) >> 12;
    let base = m.on_cpu(0, |cpu| {
        let mm = tasks.get_mut(first).unwrap().mm.as_mut().unwrap();
        huge_region(k, cpu, mm, pages << 12)
    });
    // pid -> page -> Some(value) (0 = never written) or None (unmapped)
    let mut model: std::collections::BTreeMap<u32, Vec<Option<u8>>> =
        [(first, vec![Some(0); pages as usize])].into();
    // THP_SEED=N runs another sequence (15 by default).
    let seed = std::env::var("THP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    m.on_cpu(0, |cpu| {
        for step in 0..250 {
            let pids: Vec<u32> = model.keys().copied().collect();
            let pid = pids[rng.random_range(0..pids.len())];
            let p = rng.random_range(0..pages - 1);
            let n = rng.random_range(1..1024).min(pages - p);
            let mm = tasks.get_mut(pid).unwrap().mm.as_mut().unwrap();
            match rng.random_range(0..20) {
                0 if model.len() < 3 => {
                    let c = tasks.fork(k, cpu, pid).unwrap();
                    let copy = model[&pid].clone();
                    model.insert(c, copy);
                }
                1 if model.len() > 1 => {
                    tasks.exit(k, cpu, pid, 0).unwrap();
                    let _ = tasks.wait(tasks.get(pid).map_or(0, |t| t.ppid), Some(pid));
                    model.remove(&pid);
                }
                2 => {
                    k.madvise(cpu, mm, base + (p << 12), n << 12, MADV_DONTNEED)
                        .ok();
                    for x in &mut model.get_mut(&pid).unwrap()[p as usize..(p + n) as usize] {
                        if x.is_some() {
                            *x = Some(0);
                        }
                    }
                }
                3 => {
                    k.munmap(cpu, mm, base + (p << 12), n << 12).unwrap();
                    model.get_mut(&pid).unwrap()[p as usize..(p + n) as usize].fill(None);
                }
                4 => {
                    // Map back what is missing there (the policy gives THPs where aligned).
                    let mm_model = model.get_mut(&pid).unwrap();
                    for q in p..p + n {
                        if mm_model[q as usize].is_none() {
                            k.mmap(cpu, mm, base + (q << 12), 4096, RW, ANON | MAP_FIXED, 0)
                                .unwrap();
                            mm_model[q as usize] = Some(0);
                        }
                    }
                    k.madvise(cpu, mm, base, pages << 12, MADV_HUGEPAGE).ok();
                }
                5 => {
                    // mprotect back and forth: the bytes stay, PMDs split at the edges.
                    if model[&pid][p as usize..(p + n) as usize]
                        .iter()
                        .all(|x| x.is_some())
                    {
                        k.mprotect(cpu, mm, base + (p << 12), n << 12, PROT_READ)
                            .unwrap();
                        k.mprotect(cpu, mm, base + (p << 12), n << 12, RW).unwrap();
                    }
                }
                6 => {
                    k.try_to_free_pages(cpu, GFP_KERNEL);
                }
                7 => {
                    k.madvise(cpu, mm, base + (p << 12), n << 12, MADV_HUGEPAGE)
                        .ok();
                }
                12 => {
                    // MADV_COLLAPSE: may refuse (a hole, no writable entry, a busy page),
                    // never changes a byte.
                    let r = k.madvise(cpu, mm, base + (p << 12), n << 12, MADV_COLLAPSE);
                    assert!(
                        matches!(
                            r,
                            Ok(()) | Err(Errno::EINVAL | Errno::EAGAIN | Errno::ENOMEM)
                        ),
                        "step {step}: {r:?}"
                    );
                }
                13 => {
                    let mut cursor = 0;
                    k.khugepaged_scan_mm(cpu, mm, &mut cursor, 4 * HPAGE_PMD_NR);
                }
                14 => {
                    use mmkit::mm::huge_memory::ThpPolicy;
                    let kb = [16u64, 32, 64, 128, 256, 512, 1024][rng.random_range(0..7)];
                    let p = [
                        ThpPolicy::Always,
                        ThpPolicy::Inherit,
                        ThpPolicy::Madvise,
                        ThpPolicy::Never,
                    ][rng.random_range(0..4)];
                    k.set_mthp_enabled(kb, p).unwrap();
                }
                15 => {
                    // The deferred split shrinker (drop_slab).
                    k.lru_add_drain(cpu);
                    k.drop_caches(cpu, 2).unwrap();
                }
                16 => {
                    // Compaction with large folios in the way: every free block of 2 MiB
                    // or more is taken first, so a block of that size must be made by
                    // moving (or splitting) what sits in the pageblocks.
                    let order = rng.random_range(9..=10);
                    let mut taken = Vec::new();
                    for o in [10, 9] {
                        while let Some(p) = k.alloc_pages(cpu, Gfp::__GFP_NOWARN, o) {
                            taken.push((p, o));
                        }
                    }
                    for z in k.nodes[0].zones.iter() {
                        k.compact_zone(cpu, z, order);
                    }
                    for (p, o) in taken {
                        k.__free_pages(cpu, p, o);
                    }
                }
                8..=11 => {
                    let v: u8 = rng.random_range(1..=255);
                    let mm_model = model.get_mut(&pid).unwrap();
                    for q in p..p + n {
                        if mm_model[q as usize].is_some() {
                            k.user_write(cpu, mm, base + (q << 12) + 9, &[v]).unwrap();
                            mm_model[q as usize] = Some(v);
                        }
                    }
                }
                _ => {
                    for _ in 0..64 {
                        let q = rng.random_range(0..pages);
                        let mut b = [0u8];
                        let r = k.user_read(cpu, mm, base + (q << 12) + 9, &mut b);
                        match model[&pid][q as usize] {
                            Some(v) => {
                                r.unwrap();
                                assert_eq!(b[0], v, "step {step}: pid {pid} page {q}");
                            }
                            None => assert!(r.is_err(), "step {step}: page {q} is unmapped"),
                        }
                    }
                }
            }
            for t in tasks.iter() {
                if let Some(mm) = &t.mm {
                    k.check_mm_invariants(mm).unwrap();
                }
            }
            k.check_lru_invariants().unwrap();
            k.check_deferred_split_invariants().unwrap();
            k.check_swap_invariants().unwrap();
            k.check_anon_vma_invariants().unwrap();
            k.check_invariants().unwrap();
        }
        assert!(event(k, "thp_fault_alloc") > 0);
        let mthp_faults: i64 = (2..9)
            .map(|o| k.mthp_stat(o, "anon_fault_alloc").unwrap())
            .sum();
        assert!(mthp_faults > 0, "mTHP folios were faulted in");
        let mthp_splits: i64 = (2..=9).map(|o| k.mthp_stat(o, "split").unwrap()).sum();
        assert!(mthp_splits > 0, "large folios were split");
        assert!(event(k, "thp_split_pmd") > 0);
        assert!(event(k, "pgmigrate_success") > 0, "compaction moved pages");
        assert!(
            event(k, "thp_collapse_alloc") > 0,
            "something was collapsed"
        );
        for pid in model.keys().copied().collect::<Vec<_>>() {
            let mm = tasks.get_mut(pid).unwrap().mm.as_mut().unwrap();
            let mut b = [0u8];
            for q in 0..pages {
                if let Some(v) = model[&pid][q as usize] {
                    k.user_read(cpu, mm, base + (q << 12) + 9, &mut b).unwrap();
                    assert_eq!(b[0], v, "pid {pid} page {q} at the end");
                }
            }
            tasks.exit(k, cpu, pid, 0).unwrap();
        }
        k.swapoff(cpu, &swap_path).unwrap();
    });
    teardown_check(&m, before);
    assert_eq!(HPAGE_PMD_NR, 512);
}

/// khugepaged's list and wakeups (`khugepaged_do_scan`): an address space goes on the list
/// at `MADV_HUGEPAGE` (not before: THPs are `madvise`-only), a fork inherits it; a wakeup
/// scans `pages_to_scan` pages' worth, resuming in the address space and at the address
/// where the last one stopped, moves on to the next address space at one's end, and counts
/// a full scan when the list's end is passed; an address space that has gone is passed
/// over. Every byte survives the collapses.
#[test]
fn khugepaged_wakeups_walk_the_list_and_resume_where_they_stopped() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let before = before(&m);
    m.on_cpu(0, |cpu| {
        let t0 = k.khugepaged_tunables();
        k.set_khugepaged_tunables(KhugepagedTunables {
            pages_to_scan: 3 * HPAGE_PMD_NR as u32,
            ..t0
        })
        .unwrap();
        let pages = 2 * HPAGE_PMD_NR;
        // Two address spaces with two aligned ranges each, written by 4 KiB pages.
        let mut mms = Vec::new();
        for seed in [1, 2] {
            let mut mm = k.mm_alloc(cpu).unwrap();
            let a = k.mmap(cpu, &mut mm, 0, 4 * MIB, RW, ANON, 0).unwrap();
            assert_eq!(a % HPAGE_PMD_SIZE, 0);
            fill(k, cpu, &mut mm, a, pages, seed);
            assert!(!Kernel::khugepaged_listed(&mm), "no THP allowed yet");
            k.madvise(cpu, &mut mm, a, 4 * MIB, MADV_HUGEPAGE).unwrap();
            assert!(Kernel::khugepaged_listed(&mm));
            mms.push((10 + seed, a, mm));
        }
        let unlisted = k.mm_alloc(cpu).unwrap();
        let mut scan = mmkit::mm::khugepaged::KhugepagedScan::default();
        let full0 = k.khugepaged_stats().1;
        let huge = |mm: &MmStruct, a| smaps_field(k, mm, a, "AnonHugePages:");
        let wake = |mms: &mut Vec<(u64, u64, MmStruct)>, scan: &mut _| {
            let slots = mms.iter_mut().map(|(key, _, mm)| (*key, mm));
            k.khugepaged_do_scan(cpu, scan, slots)
        };
        // First wakeup: both of the first address space's ranges and the first of the
        // second's; it stops inside the second.
        let w = wake(&mut mms, &mut scan);
        assert_eq!((w.collapsed, w.scanned), (3, 3 * HPAGE_PMD_NR));
        assert_eq!(huge(&mms[0].2, mms[0].1), 4096);
        assert_eq!(huge(&mms[1].2, mms[1].1), 2048);
        assert_eq!(
            k.khugepaged_stats().1,
            full0,
            "the list's end not reached yet"
        );
        // Second: the second address space's last range; its end is the list's end (a full
        // scan); on from the head, where everything is a THP already.
        let w = wake(&mut mms, &mut scan);
        assert_eq!(w.collapsed, 1);
        assert_eq!(huge(&mms[1].2, mms[1].1), 4096);
        assert_eq!(k.khugepaged_stats().1 - full0, 1);
        for (key, a, mm) in mms.iter_mut() {
            verify(k, cpu, mm, *a, pages, |_| Some(*key - 10));
            check_all(k, mm);
        }
        // A fork inherits the listing; an address space not listed is passed over.
        let child = k.dup_mmap(cpu, &mms[0].2).unwrap();
        assert!(Kernel::khugepaged_listed(&child));
        assert!(!Kernel::khugepaged_listed(&unlisted));
        k.exit_mmap(cpu, child);
        k.exit_mmap(cpu, unlisted);
        // The address space the walk stood in (the first, after wrapping) goes, and a
        // third comes with a range to collapse: the next wakeup goes on with the next one
        // after the gone one's place, the second (nothing left there), then the third.
        let (_, _, gone) = mms.remove(0);
        k.exit_mmap(cpu, gone);
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = k.mmap(cpu, &mut mm, 0, 2 * MIB, RW, ANON, 0).unwrap();
        fill(k, cpu, &mut mm, a, HPAGE_PMD_NR, 3);
        k.madvise(cpu, &mut mm, a, 2 * MIB, MADV_HUGEPAGE).unwrap();
        mms.push((13, a, mm));
        let w = wake(&mut mms, &mut scan);
        assert_eq!(w.collapsed, 1);
        assert_eq!(huge(&mms[1].2, mms[1].1), 2048);
        k.set_khugepaged_tunables(t0).unwrap();
        for (_, _, mm) in mms {
            k.exit_mmap(cpu, mm);
        }
    });
    teardown_check(&m, before);
}

/// A fixed, 2 MiB aligned place for the mTHP tests' regions (not `MADV_HUGEPAGE`: the PMD
/// size stays `inherit` of `madvise`, so only the mTHP sizes apply).
const MTHP_BASE: u64 = 0x4000_0000;

fn mthp_region(k: &Kernel, cpu: &CpuGuard<'_>, mm: &mut MmStruct, len: u64) -> u64 {
    k.mmap(cpu, mm, MTHP_BASE, len, RW, ANON | MAP_FIXED, 0)
        .unwrap()
}

fn mthp_stat(k: &Kernel, kb: u64, name: &str) -> i64 {
    let order = Kernel::mthp_order_of_kb(kb).unwrap();
    k.mthp_stat(order, name).unwrap()
}

/// The sizes' policies: Linux's defaults (2 MiB `inherit`, the rest `never`), what sysfs
/// shows, run-time changes and `thp_anon=` on the command line; sizes without a file refused.
#[test]
fn mthp_policies_defaults_sysfs_and_cmdline() {
    use mmkit::mm::huge_memory::ThpPolicy;
    let m = boot_mem(64, 1, "");
    let k = &m.kernel;
    for kb in [16, 32, 64, 128, 256, 512, 1024] {
        assert_eq!(k.mthp_enabled(kb).unwrap(), ThpPolicy::Never, "{kb}");
    }
    assert_eq!(k.mthp_enabled(2048).unwrap(), ThpPolicy::Inherit);
    assert_eq!(
        k.mthp_enabled(2048).unwrap().sysfs(),
        "always [inherit] madvise never"
    );
    for bad in [4, 8, 48, 4096, 0] {
        assert_eq!(
            k.set_mthp_enabled(bad, ThpPolicy::Always),
            Err(Errno::EINVAL)
        );
    }
    k.set_mthp_enabled(64, ThpPolicy::Madvise).unwrap();
    assert_eq!(
        k.mthp_enabled(64).unwrap().sysfs(),
        "always inherit [madvise] never"
    );
    let m = boot_mem(64, 1, "thp_anon=16K-64K:always;2M:never");
    let k = &m.kernel;
    for (kb, p) in [
        (16, ThpPolicy::Always),
        (32, ThpPolicy::Always),
        (64, ThpPolicy::Always),
        (128, ThpPolicy::Never),
        (2048, ThpPolicy::Never),
    ] {
        assert_eq!(k.mthp_enabled(kb).unwrap(), p, "{kb}");
    }
    // The host's files, when it has them: the same four words, its choice bracketed.
    for kb in [16u64, 32, 64, 128, 256, 512, 1024, 2048] {
        let path = format!("/sys/kernel/mm/transparent_hugepage/hugepages-{kb}kB/enabled");
        let Ok(host) = std::fs::read_to_string(&path) else {
            println!("host has no {path}: nothing to compare");
            continue;
        };
        let host = host.trim();
        let chosen = host
            .split_whitespace()
            .find(|w| w.starts_with('['))
            .map(|w| w.trim_matches(['[', ']']))
            .unwrap();
        let p = ThpPolicy::parse(chosen).expect("a policy we know");
        assert_eq!(p.sysfs(), host, "{path}");
    }
    // Our statistics are files the host has (it may have newer ones).
    if let Ok(dir) = std::fs::read_dir("/sys/kernel/mm/transparent_hugepage/hugepages-64kB/stats") {
        let host: Vec<String> = dir
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        for name in mmkit::mm::vmstat::MTHP_STAT_NAMES {
            assert!(host.iter().any(|h| h == name), "host lacks stats/{name}");
        }
    } else {
        println!("host has no mTHP stats directory: nothing to compare");
    }
}

/// With 64 KiB `always`, a 1 MiB region written page by page takes 16 faults, each mapping
/// a 64 KiB folio by 16 PTEs; every byte reads back; `AnonHugePages` stays 0 (Linux counts
/// PMD mappings only); the size's `anon_fault_alloc` and `nr_anon` count the folios.
#[test]
fn mthp_64k_region_faults_once_per_64k() {
    use mmkit::mm::huge_memory::ThpPolicy;
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    k.set_mthp_enabled(64, ThpPolicy::Always).unwrap();
    let before = before(&m);
    m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = mthp_region(k, cpu, &mut mm, MIB);
        let f0 = mm.faults.min_flt;
        fill(k, cpu, &mut mm, a, 256, 21);
        assert_eq!(mm.faults.min_flt - f0, 16);
        assert_eq!(mthp_stat(k, 64, "anon_fault_alloc"), 16);
        assert_eq!(mthp_stat(k, 64, "nr_anon"), 16);
        assert_eq!(event(k, "thp_fault_alloc"), 0);
        assert_eq!(mm.counter(MM_ANONPAGES), 256);
        assert_eq!(smaps_field(k, &mm, a, "AnonHugePages:"), 0);
        assert_eq!(smaps_field(k, &mm, a, "Rss:"), 1024);
        assert_eq!(smaps_field(k, &mm, a, "Pss:"), 1024);
        assert_eq!(smaps_field(k, &mm, a, "THPeligible:"), 1);
        assert_eq!(meminfo_field(k, "AnonHugePages:"), 0);
        // Each 64 KiB is one folio of order 4, its pages in order.
        for c in 0..16u64 {
            let pte = k.pte_lookup(&mm.pt, a + c * 0x10000).unwrap();
            let head = k.pfn_to_page(pte.pfn()).unwrap();
            assert_eq!(head.folio_order(), 4, "chunk {c}");
            for i in 1..16u64 {
                let p = k.pte_lookup(&mm.pt, a + c * 0x10000 + (i << 12)).unwrap();
                assert_eq!(p.pfn().0, pte.pfn().0 + i);
            }
            assert_eq!(head.refcount(), 16);
        }
        verify(k, cpu, &mut mm, a, 256, |_| Some(21));
        check_all(k, &mm);
        k.exit_mmap(cpu, mm);
    });
    assert_eq!(mthp_stat(k, 64, "nr_anon"), 0);
    teardown_check(&m, before);
}

/// munmap of 4 KiB in the middle of a 64 KiB folio keeps every other byte and leaves the
/// folio partially mapped on the deferred split queue (no split yet); reclaim's shrinker
/// then splits it and the unmapped page goes back.
#[test]
fn mthp_partial_munmap_waits_for_the_shrinker() {
    use mmkit::mm::huge_memory::ThpPolicy;
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    k.set_mthp_enabled(64, ThpPolicy::Always).unwrap();
    let before = before(&m);
    m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = mthp_region(k, cpu, &mut mm, 0x20000);
        fill(k, cpu, &mut mm, a, 32, 22);
        k.munmap(cpu, &mut mm, a + 0x7000, 4096).unwrap();
        assert_eq!(mthp_stat(k, 64, "split_deferred"), 1);
        assert_eq!(mthp_stat(k, 64, "nr_anon_partially_mapped"), 1);
        assert_eq!(mthp_stat(k, 64, "split"), 0);
        assert_eq!(
            event(k, "thp_deferred_split_page"),
            0,
            "PMD-sized folios only"
        );
        assert_eq!(k.deferred_split_count(0), 1);
        assert_eq!(mm.counter(MM_ANONPAGES), 31);
        verify(k, cpu, &mut mm, a, 7, |_| Some(22));
        let mut got = [0u8; 8];
        for i in 8..32u64 {
            k.user_read(cpu, &mut mm, a + (i << 12), &mut got).unwrap();
            assert_eq!(got, tag(i, 22), "page {i}");
        }
        check_all(k, &mm);
        // A second hole in the same folio: it is queued once.
        k.munmap(cpu, &mut mm, a + 0x9000, 4096).unwrap();
        assert_eq!(k.deferred_split_count(0), 1);
        assert_eq!(mthp_stat(k, 64, "split_deferred"), 1);
        k.lru_add_drain(cpu);
        let free0 = free_and_pcp(k);
        // No swap: reclaim finds nothing to reclaim and goes down to priority 0, where the
        // shrinker scans the queue.
        k.try_to_free_pages(cpu, GFP_KERNEL);
        assert_eq!(mthp_stat(k, 64, "split"), 1);
        assert_eq!(mthp_stat(k, 64, "nr_anon"), 1, "the other folio");
        assert_eq!(mthp_stat(k, 64, "nr_anon_partially_mapped"), 0);
        assert_eq!(k.deferred_split_count(0), 0);
        assert!(
            free_and_pcp(k) >= free0 + 2,
            "the two unmapped pages went back"
        );
        let mut got = [0u8; 8];
        for i in (0..32u64).filter(|&i| i != 7 && i != 9) {
            k.user_read(cpu, &mut mm, a + (i << 12), &mut got).unwrap();
            assert_eq!(got, tag(i, 22), "page {i}");
        }
        check_all(k, &mm);
        k.exit_mmap(cpu, mm);
    });
    teardown_check(&m, before);
}

/// fork, then a child write to a 64 KiB folio copies 4 KiB only; the parent's bytes stay;
/// after the child exits, the parent's write reuses the folio in place (Linux 6.16+:
/// exclusive to the address space).
#[test]
fn mthp_fork_child_write_copies_4k() {
    use mmkit::mm::huge_memory::ThpPolicy;
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    k.set_mthp_enabled(64, ThpPolicy::Always).unwrap();
    let before = before(&m);
    m.on_cpu(0, |cpu| {
        let mut pm = k.mm_alloc(cpu).unwrap();
        let a = mthp_region(k, cpu, &mut pm, 0x40000);
        fill(k, cpu, &mut pm, a, 64, 23);
        let mut cm = k.dup_mmap(cpu, &pm).unwrap();
        check_all(k, &pm);
        check_all(k, &cm);
        k.lru_add_drain(cpu);
        let free0 = free_and_pcp(k);
        k.user_write(cpu, &mut cm, a + 0x5008, b"child!!!").unwrap();
        k.lru_add_drain(cpu);
        assert_eq!(free0 - free_and_pcp(k), 1, "one 4 KiB copy");
        // Written again: the copy is the child's own now.
        k.user_write(cpu, &mut cm, a + 0x5010, b"again").unwrap();
        k.lru_add_drain(cpu);
        assert_eq!(free0 - free_and_pcp(k), 1);
        verify(k, cpu, &mut pm, a, 64, |_| Some(23));
        let mut got = [0u8; 8];
        k.user_read(cpu, &mut cm, a + 0x5008, &mut got).unwrap();
        assert_eq!(&got, b"child!!!");
        k.user_read(cpu, &mut cm, a + 0x6000, &mut got).unwrap();
        assert_eq!(got, tag(6, 23));
        // The child's 4 KiB is the only page it no longer shares.
        assert_eq!(smaps_field(k, &pm, a, "Shared_Dirty:"), 252);
        check_all(k, &pm);
        check_all(k, &cm);
        k.exit_mmap(cpu, cm);
        // The parent alone: its first folio lost the child's mappings but for the page the
        // child copied it is mapped whole by the parent only, so a write reuses it.
        let pfn0 = k.pte_lookup(&pm.pt, a + 0x6000).unwrap().pfn();
        let free1 = free_and_pcp(k);
        k.user_write(cpu, &mut pm, a + 0x6000, b"parent").unwrap();
        assert_eq!(k.pte_lookup(&pm.pt, a + 0x6000).unwrap().pfn(), pfn0);
        assert_eq!(free_and_pcp(k), free1, "reused, not copied");
        check_all(k, &pm);
        k.exit_mmap(cpu, pm);
    });
    teardown_check(&m, before);
}

/// Reclaim of an mTHP region splits the folios before swap-out; every byte comes back.
#[test]
fn mthp_swap_out_and_back() {
    use mmkit::mm::huge_memory::ThpPolicy;
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    k.set_mthp_enabled(64, ThpPolicy::Always).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let before = before(&m);
    let path = dir.path().join("swapfile");
    let f = make_swap_file(&path, 16 << 20).unwrap();
    let p = path.to_string_lossy().into_owned();
    k.swapon(Arc::new(f), &p, -2).unwrap();
    m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = mthp_region(k, cpu, &mut mm, MIB);
        fill(k, cpu, &mut mm, a, 256, 24);
        for _ in 0..2000 {
            if mm.counter(MM_SWAPENTS) == 256 {
                break;
            }
            k.try_to_free_pages(cpu, GFP_KERNEL);
        }
        assert_eq!(mm.counter(MM_SWAPENTS), 256, "all of it went to swap");
        assert_eq!(mthp_stat(k, 64, "split"), 16);
        assert_eq!(mthp_stat(k, 64, "nr_anon"), 0);
        check_all(k, &mm);
        verify(k, cpu, &mut mm, a, 256, |_| Some(24));
        check_all(k, &mm);
        k.exit_mmap(cpu, mm);
        k.swapoff(cpu, &p).unwrap();
    });
    teardown_check(&m, before);
}

/// With every size `never` (and the PMD size too), no large folio appears, even in
/// `MADV_HUGEPAGE` memory under `enabled=always`.
#[test]
fn mthp_all_never_gives_no_large_folio() {
    use mmkit::mm::huge_memory::ThpPolicy;
    let m = boot_mem(128, 1, "transparent_hugepage=always");
    let k = &m.kernel;
    for kb in [16, 32, 64, 128, 256, 512, 1024, 2048] {
        k.set_mthp_enabled(kb, ThpPolicy::Never).unwrap();
    }
    let before = before(&m);
    m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = huge_region(k, cpu, &mut mm, 4 * MIB);
        let f0 = mm.faults.min_flt;
        fill(k, cpu, &mut mm, a, 1024, 25);
        assert_eq!(mm.faults.min_flt - f0, 1024);
        for order in 2..=9 {
            assert_eq!(k.mthp_stat(order, "anon_fault_alloc"), Some(0));
            assert_eq!(k.mthp_stat(order, "nr_anon"), Some(0));
        }
        assert_eq!(event(k, "thp_fault_alloc"), 0);
        assert_eq!(smaps_field(k, &mm, a, "THPeligible:"), 0);
        for i in 0..1024u64 {
            let pte = k.pte_lookup(&mm.pt, a + (i << 12)).unwrap();
            assert_eq!(k.pfn_to_page(pte.pfn()).unwrap().folio_order(), 0);
        }
        verify(k, cpu, &mut mm, a, 1024, |_| Some(25));
        check_all(k, &mm);
        k.exit_mmap(cpu, mm);
    });
    teardown_check(&m, before);
}

/// With memory fragmented so that no 64 KiB block is free but 32 KiB ones are, a fault
/// falls back from 64 KiB to 32 KiB and counts the 64 KiB size's `anon_fault_fallback`.
#[test]
fn mthp_fragmented_memory_falls_back_order_by_order() {
    use mmkit::mm::huge_memory::ThpPolicy;
    let m = boot_mem(64, 1, "");
    let k = &m.kernel;
    for kb in [16, 32, 64] {
        k.set_mthp_enabled(kb, ThpPolicy::Always).unwrap();
    }
    k.set_thp_defrag(ThpDefrag::Never);
    let before = before(&m);
    m.on_cpu(0, |cpu| {
        // Every free page, below the watermarks too (no block of any order is left).
        let all = common::exhaust(k, cpu, GFP_KERNEL | Gfp::__GFP_MEMALLOC, 0);
        let mut pinned = Vec::new();
        for p in all {
            if k.page_to_pfn(p).0 % 16 == 7 {
                pinned.push(p);
            } else {
                k.__free_pages(cpu, p, 0);
            }
        }
        k.drain_all_pages(cpu);
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = mthp_region(k, cpu, &mut mm, 0x40000);
        let f0 = mm.faults.min_flt;
        fill(k, cpu, &mut mm, a, 64, 26);
        // Each 64 KiB: the fault at its start tries 64 KiB (fallback) and gets 32 KiB;
        // the one at its middle finds the 64 KiB range taken and gets 32 KiB at once.
        assert_eq!(mm.faults.min_flt - f0, 8);
        assert_eq!(mthp_stat(k, 64, "anon_fault_fallback"), 4);
        assert_eq!(mthp_stat(k, 64, "anon_fault_alloc"), 0);
        assert_eq!(mthp_stat(k, 32, "anon_fault_alloc"), 8);
        assert_eq!(mthp_stat(k, 32, "anon_fault_fallback"), 0);
        verify(k, cpu, &mut mm, a, 64, |_| Some(26));
        check_all(k, &mm);
        k.exit_mmap(cpu, mm);
        common::free_all(k, cpu, pinned, 0);
    });
    teardown_check(&m, before);
}

/// The folio whose page the PTE at `va` maps, and that page's index in it.
fn folio_at<'k>(k: &'k Kernel, mm: &MmStruct, va: u64) -> (&'k mmkit::mm::page::Page, u64) {
    let pte = k.pte_lookup(&mm.pt, va).expect("a present PTE");
    let page = k.pfn_to_page(pte.pfn()).unwrap();
    let folio = page.compound_head();
    (folio, pte.pfn().0 - k.mem_map().page_to_pfn(folio).0)
}

/// munmap from the middle of one 64 KiB folio to the middle of the third: the zap clears
/// each folio's run in one batch that stops at the range's end (and at each folio's end);
/// the pages outside stay mapped with their bytes, every page's mapcount and each folio's
/// `_nr_pages_mapped` and references are exactly the PTEs left; the two folios cut in part
/// are queued for the deferred split, the one unmapped whole is not (it is freed whole).
#[test]
fn mthp_munmap_batch_stops_at_the_range_end() {
    use mmkit::mm::huge_memory::ThpPolicy;
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    k.set_mthp_enabled(64, ThpPolicy::Always).unwrap();
    let before = before(&m);
    m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = mthp_region(k, cpu, &mut mm, 0x40000);
        fill(k, cpu, &mut mm, a, 64, 31);
        k.lru_add_drain(cpu);
        let folios: Vec<_> = (0..4u64)
            .map(|c| folio_at(k, &mm, a + c * 0x10000).0)
            .collect();
        assert!(folios
            .iter()
            .all(|f| f.folio_order() == 4 && f.refcount() == 16));
        let free0 = free_and_pcp(k);
        // Pages 5..37: the end of folio 0, folio 1 whole, the start of folio 2.
        k.munmap(cpu, &mut mm, a + (5 << 12), 32 << 12).unwrap();
        k.lru_add_drain(cpu);
        assert_eq!(
            free_and_pcp(k) - free0,
            16,
            "folio 1 freed whole, nothing else"
        );
        assert_eq!(mm.counter(MM_ANONPAGES), 32);
        assert_eq!(meminfo_field(k, "AnonPages:"), 32 * 4);
        for (c, mapped) in [(0usize, 0..5u64), (2, 5..16), (3, 0..16)] {
            let f = folios[c];
            for i in 0..16u64 {
                let want = i32::from(mapped.contains(&i));
                assert_eq!(f.folio_page(i).mapcount(), want, "folio {c} page {i}");
            }
            let n = (mapped.end - mapped.start) as i32;
            assert_eq!(f.nr_pages_mapped(), n, "folio {c}");
            assert_eq!(f.refcount(), n, "folio {c}: one reference per PTE");
        }
        assert_eq!(
            mthp_stat(k, 64, "split_deferred"),
            2,
            "folios 0 and 2 are partially mapped; folio 1 went whole"
        );
        assert_eq!(k.deferred_split_count(0), 2);
        let mut got = [0u8; 8];
        for i in 0..64u64 {
            let r = k.user_read(cpu, &mut mm, a + (i << 12), &mut got);
            if (5..37).contains(&i) {
                assert!(r.is_err(), "page {i} is unmapped");
            } else {
                r.unwrap();
                assert_eq!(got, tag(i, 31), "page {i}");
                k.user_read(cpu, &mut mm, a + (i << 12) + 4088, &mut got)
                    .unwrap();
                assert_eq!(got, tag(i, 31), "page {i} end");
            }
        }
        check_all(k, &mm);
        // Exit unmaps the rest whole: nothing more is queued.
        k.exit_mmap(cpu, mm);
        assert_eq!(mthp_stat(k, 64, "split_deferred"), 2);
    });
    assert_eq!(k.deferred_split_count(0), 0);
    assert_eq!(mthp_stat(k, 64, "nr_anon"), 0);
    teardown_check(&m, before);
}

/// Two pages of a 64 KiB folio change places (mremap through a third address), so the
/// folio's PTEs are no longer consecutive: a zap's batch must end where the next entry maps
/// any page but the next one. munmap of the first six entries (pages 0–4 and page 6) leaves
/// pages 5 and 7–15 mapped — page 5 where page 6 was — with their bytes and mapcounts; a
/// batch that ran on would have taken page 5's mapping instead of page 6's.
#[test]
fn mthp_out_of_order_ptes_end_a_batch() {
    use mmkit::mm::huge_memory::ThpPolicy;
    use mmkit::mm::mremap::{MREMAP_FIXED, MREMAP_MAYMOVE};
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    k.set_mthp_enabled(64, ThpPolicy::Always).unwrap();
    let before = before(&m);
    m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = mthp_region(k, cpu, &mut mm, 0x10000);
        fill(k, cpu, &mut mm, a, 16, 32);
        k.lru_add_drain(cpu);
        let (folio, _) = folio_at(k, &mm, a);
        assert_eq!(folio.folio_order(), 4);
        let tmp = a + 0x100000;
        let mv = |mm: &mut MmStruct, from: u64, to: u64| {
            k.mremap(cpu, mm, from, 4096, 4096, MREMAP_MAYMOVE | MREMAP_FIXED, to)
                .unwrap();
        };
        mv(&mut mm, a + (5 << 12), tmp);
        mv(&mut mm, a + (6 << 12), a + (5 << 12));
        mv(&mut mm, tmp, a + (6 << 12));
        // Where each page of the folio is mapped now.
        let order: Vec<u64> = (0..16u64)
            .map(|i| folio_at(k, &mm, a + (i << 12)).1)
            .collect();
        assert_eq!(
            order,
            [0, 1, 2, 3, 4, 6, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15]
        );
        assert_eq!(folio.refcount(), 16);
        check_all(k, &mm);
        k.munmap(cpu, &mut mm, a, 6 << 12).unwrap();
        for i in 0..16u64 {
            let want = i32::from(i == 5 || i >= 7);
            assert_eq!(folio.folio_page(i).mapcount(), want, "page {i}");
        }
        assert_eq!(folio.nr_pages_mapped(), 10);
        assert_eq!(folio.refcount(), 10);
        assert_eq!(mm.counter(MM_ANONPAGES), 10);
        let mut got = [0u8; 8];
        k.user_read(cpu, &mut mm, a + (6 << 12), &mut got).unwrap();
        assert_eq!(got, tag(5, 32), "page 5, now at the sixth entry");
        for i in 7..16u64 {
            for off in [0, 4088] {
                k.user_read(cpu, &mut mm, a + (i << 12) + off, &mut got)
                    .unwrap();
                assert_eq!(got, tag(i, 32), "page {i} offset {off}");
            }
        }
        for i in 0..6u64 {
            assert!(k.user_read(cpu, &mut mm, a + (i << 12), &mut got).is_err());
        }
        check_all(k, &mm);
        k.exit_mmap(cpu, mm);
    });
    teardown_check(&m, before);
}
