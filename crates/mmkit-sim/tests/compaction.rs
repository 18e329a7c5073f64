//! Compaction and large folios (issue 15): with a zone fragmented so that an order-9 or
//! order-10 allocation needs compaction, 64 KiB mTHP folios in the way — mapped whole,
//! partially unmapped (on the deferred split queue), shared by fork, copied on write in
//! part — are moved (their frames change) or, when partially mapped or when no free block
//! of their order can be had, split and moved page by page, as Linux 6.10+ does; PMD-sized
//! THPs (order 9 = `pageblock_order`), folios of at least the order asked for and pinned
//! folios stay where they are. Every byte reads back through every mapping, smaps and the
//! counters are as Linux keeps them, and every checker passes.

mod common;
use common::{boot_mem, fill, free_and_pcp, tag};
use mmkit::arch::x86_64::pgtable::HPAGE_PMD_SIZE;
use mmkit::fs::proc::task_mmu::proc_pid_smaps;
use mmkit::gfp::{Gfp, GFP_KERNEL};
use mmkit::mm::huge_memory::ThpPolicy;
use mmkit::mm::madvise::MADV_HUGEPAGE;
use mmkit::mm::mm_types::{MmStruct, MM_ANONPAGES};
use mmkit::mm::mmap::*;
use mmkit::mm::mmzone::ZoneType;
use mmkit::{CpuGuard, Kernel, Page};
use mmkit_sim::Machine;
use std::collections::BTreeMap;

const RW: u32 = PROT_READ | PROT_WRITE;
const ANON: u32 = MAP_PRIVATE | MAP_ANONYMOUS;
const MIB: u64 = 1 << 20;
const PB: u64 = 512;
/// Where the 64 KiB folios are mapped (2 MiB aligned).
const MTHP_BASE: u64 = 0x4000_0000;
const F: u64 = 16; // pages of a 64 KiB folio

fn event(k: &Kernel, name: &str) -> u64 {
    mmkit::fs::proc::vmstat::vm_event(k, name).expect("a vmstat event name")
}

fn mthp(k: &Kernel, name: &str) -> i64 {
    k.mthp_stat(4, name).unwrap()
}

/// Check page `i` of `base` reads `tag(i, seed_of(i))` at both ends (`None`: not checked).
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
        let Some(s) = seed_of(i) else { continue };
        for off in [0, 4088] {
            k.user_read(cpu, mm, base + (i << 12) + off, &mut got)
                .unwrap();
            assert_eq!(got, tag(i, s), "page {i} offset {off}");
        }
    }
}

/// The frame mapping `va` (PTE or PMD), if any.
fn pfn_of(k: &Kernel, mm: &MmStruct, va: u64) -> Option<u64> {
    k.translation_lookup(&mm.pt, va)
        .filter(|p| p.is_present())
        .map(|p| p.pfn().0)
}

fn page(k: &Kernel, pfn: u64) -> &Page {
    k.mem_map().page(mmkit::Pfn(pfn))
}

fn check_all(k: &Kernel, mms: &[&MmStruct]) {
    for mm in mms {
        k.check_mm_invariants(mm).unwrap();
    }
    k.check_deferred_split_invariants().unwrap();
    k.check_invariants().unwrap();
    k.check_lru_invariants().unwrap();
    k.check_anon_vma_invariants().unwrap();
}

fn before(m: &Machine) -> u64 {
    m.settle();
    free_and_pcp(&m.kernel)
}

fn teardown_check(m: &Machine, before: u64) {
    let k = &m.kernel;
    m.settle();
    k.check_invariants().unwrap();
    k.check_lru_invariants().unwrap();
    k.check_anon_vma_invariants().unwrap();
    k.check_deferred_split_invariants().unwrap();
    assert_eq!(k.nr_anon_vmas(), 0, "anon_vmas leaked");
    assert_eq!(free_and_pcp(k), before, "pages leaked");
    assert_eq!(k.page_table_pages(), 0);
}

/// Every free page of the machine, taken one by one past the watermarks, by pfn.
fn take_all<'k>(k: &'k Kernel, cpu: &CpuGuard<'_>) -> BTreeMap<u64, &'k Page> {
    let all = common::exhaust(k, cpu, Gfp::__GFP_MEMALLOC, 0);
    k.drain_all_pages(cpu);
    let mut held: BTreeMap<u64, &Page> = all.into_iter().map(|p| (k.page_to_pfn(p).0, p)).collect();
    while let Some(p) = k.alloc_pages(cpu, Gfp::__GFP_MEMALLOC | Gfp::__GFP_NOWARN, 0) {
        held.insert(k.page_to_pfn(p).0, p);
    }
    assert_eq!(free_and_pcp(k), 0, "every page taken");
    held
}

fn release(k: &Kernel, cpu: &CpuGuard<'_>, held: &mut BTreeMap<u64, &Page>, pfn: u64) {
    let p = held.remove(&pfn).expect("a held page");
    k.__free_pages(cpu, p, 0);
}

/// The pageblocks (by first pfn) of `zt` on node 0 of which every page is held.
fn fully_held(k: &Kernel, held: &BTreeMap<u64, &Page>, zt: ZoneType) -> Vec<u64> {
    let z = k.nodes[0].zone(zt);
    let first = z.zone_start_pfn.div_ceil(PB) * PB;
    (first..z.end_pfn())
        .step_by(PB as usize)
        .filter(|&b| b + PB <= z.end_pfn() && (b..b + PB).all(|p| held.contains_key(&p)))
        .collect()
}

/// Give back the held pages of the pageblocks `blocks` (ones that were wholly free when
/// everything was taken: the kernel's own pages elsewhere never make them ragged) but those
/// whose offset in their pageblock is a multiple of `keep_every` (so no free block of
/// `keep_every` pages or more forms there). With `keep_every` 8 this is the free memory the
/// setup's own allocations (page tables, slabs, fork, COW) take, never a hole meant for a
/// 64 KiB folio; with `PB`, the free scanner's supply.
fn free_rest(
    k: &Kernel,
    cpu: &CpuGuard<'_>,
    held: &mut BTreeMap<u64, &Page>,
    blocks: impl IntoIterator<Item = u64>,
    keep_every: u64,
) {
    for b in blocks {
        for p in b..b + PB {
            if !(p % PB).is_multiple_of(keep_every) && held.contains_key(&p) {
                release(k, cpu, held, p);
            }
        }
    }
    k.drain_all_pages(cpu);
}

/// An order-10 allocation compacts a zone in which eight 64 KiB folios sit in the two
/// pageblocks of the only order-10 block that could be freed: one partially unmapped
/// (deferred split queue), all shared with a forked child, one copied on write in part by
/// the child; and two THPs elsewhere (one PMD-mapped and shared by fork, one PTE-mapped after
/// a partial munmap). Compaction moves the 64 KiB folios whole (their frames change, in
/// parent and child alike), splits the partially mapped one and moves its pages (Linux's
/// `migrate_pages_batch`), leaves both THPs where they are (order 9 = `pageblock_order`);
/// the allocation gets the freed block. Bytes, smaps, RSS, `AnonHugePages` and the
/// counters are as before, bar the split.
#[test]
fn compaction_moves_mthp_folios_and_leaves_thps() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    k.set_mthp_enabled(64, ThpPolicy::Always).unwrap();
    let before = before(&m);
    m.on_cpu(0, |cpu| {
        let mut pm = k.mm_alloc(cpu).unwrap();
        // Two THPs while memory is whole.
        let thp = k.mmap(cpu, &mut pm, 0, 4 * MIB, RW, ANON, 0).unwrap();
        assert_eq!(thp % HPAGE_PMD_SIZE, 0);
        k.madvise(cpu, &mut pm, thp, 4 * MIB, MADV_HUGEPAGE).unwrap();
        fill(k, cpu, &mut pm, thp, 1024, 1);
        assert_eq!(event(k, "thp_fault_alloc"), 2);
        let a = k
            .mmap(cpu, &mut pm, MTHP_BASE, (8 * F) << 12, RW, ANON | MAP_FIXED, 0)
            .unwrap();
        // Fragment: every page taken; two pageblocks of one order-10 block get four
        // 64 KiB holes each; the memory above them comes back in blocks below 32 KiB.
        let mut held = take_all(k, cpu);
        let blocks = fully_held(k, &held, ZoneType::Dma32);
        let t0 = *blocks
            .iter()
            .find(|&&b| b % (2 * PB) == 0 && blocks.contains(&(b + PB)))
            .expect("two whole pageblocks of an order-10 block");
        let t1 = t0 + PB;
        for t in [t0, t1] {
            for hole in [0, 64, 128, 192] {
                for p in t + hole..t + hole + F {
                    release(k, cpu, &mut held, p);
                }
            }
        }
        free_rest(k, cpu, &mut held, blocks.iter().copied().filter(|&b| b > t1), 8);
        // Eight 64 KiB folios, one per hole.
        fill(k, cpu, &mut pm, a, 8 * F, 2);
        assert_eq!(mthp(k, "anon_fault_alloc"), 8);
        assert_eq!(mthp(k, "nr_anon"), 8);
        for f in 0..8 {
            let pfn = pfn_of(k, &pm, a + ((f * F) << 12)).unwrap();
            assert!(
                (t0..t0 + 2 * PB).contains(&pfn) && pfn.is_multiple_of(F),
                "folio {f} at {pfn:#x}, not in a hole"
            );
            assert_eq!(page(k, pfn).folio_order(), 4);
        }
        // Folio 1 loses two pages (partially mapped, queued); THP 1 loses one (its PMD
        // is split, it is PTE-mapped and queued); then fork shares everything; the child
        // copies page 0 of folio 2.
        k.munmap(cpu, &mut pm, a + ((F + 5) << 12), 2 << 12).unwrap();
        k.munmap(cpu, &mut pm, thp + HPAGE_PMD_SIZE + 0x3000, 4096)
            .unwrap();
        assert_eq!(k.deferred_split_count(0), 2);
        assert_eq!(mthp(k, "nr_anon_partially_mapped"), 1);
        let mut cm = k.dup_mmap(cpu, &pm).unwrap();
        k.user_write(cpu, &mut cm, a + ((2 * F) << 12), &tag(2 * F, 3))
            .unwrap();
        k.user_write(cpu, &mut cm, a + ((2 * F) << 12) + 4088, &tag(2 * F, 3))
            .unwrap();
        // The rest of memory: the two pageblocks hold only their folios; every other
        // wholly free pageblock keeps one page (no order-9 block anywhere): the free
        // scanner's supply.
        let others = blocks.iter().copied().filter(|&b| b != t0 && b != t1);
        free_rest(k, cpu, &mut held, others, PB);
        for t in [t0, t1] {
            for p in t..t + PB {
                if held.contains_key(&p) {
                    release(k, cpu, &mut held, p);
                }
            }
        }
        k.drain_all_pages(cpu);
        assert!(
            k.alloc_pages(cpu, Gfp::__GFP_NOWARN, 9).is_none(),
            "no order-9 block without compaction"
        );
        check_all(k, &[&pm, &cm]);

        let unmapped = |i: u64| i == F + 5 || i == F + 6;
        let pages = 8 * F;
        let parent_pfns: Vec<Option<u64>> = (0..pages).map(|i| pfn_of(k, &pm, a + (i << 12))).collect();
        let child_pfns: Vec<Option<u64>> = (0..pages).map(|i| pfn_of(k, &cm, a + (i << 12))).collect();
        let thp_pfns: Vec<Option<u64>> = (0..1024)
            .map(|i| pfn_of(k, &pm, thp + (i << 12)))
            .collect();
        let smaps = (proc_pid_smaps(k, &pm), proc_pid_smaps(k, &cm));
        let rss = (pm.counter(MM_ANONPAGES), cm.counter(MM_ANONPAGES));
        let ev = |n: &str| event(k, n);
        let e0: Vec<u64> = [
            "compact_stall",
            "compact_success",
            "compact_isolated",
            "pgmigrate_success",
            "pgmigrate_fail",
            "thp_migration_success",
            "thp_migration_fail",
            "thp_migration_split",
            "thp_split_page",
        ]
        .iter()
        .map(|n| ev(n))
        .collect();
        let (split0, nr_anon_thp0) = (mthp(k, "split"), k.mthp_stat(9, "nr_anon").unwrap());
        let t = std::time::Instant::now();
        let block = k
            .alloc_pages(cpu, GFP_KERNEL | Gfp::__GFP_NOWARN, 10)
            .expect("compaction made an order-10 block");
        let took = t.elapsed();
        assert_eq!(k.page_to_pfn(block).0, t0, "the block the folios were in");
        let d = |i: usize, n: &str| ev(n) - e0[i];
        println!(
            "order-10 compaction: {took:?}; compact_isolated +{}, pgmigrate_success +{}, pgmigrate_fail +{}, thp_migration_success/fail/split +{}/+{}/+{}, 64K split +{}",
            d(2, "compact_isolated"),
            d(3, "pgmigrate_success"),
            d(4, "pgmigrate_fail"),
            d(5, "thp_migration_success"),
            d(6, "thp_migration_fail"),
            d(7, "thp_migration_split"),
            mthp(k, "split") - split0
        );
        assert_eq!(d(0, "compact_stall"), 1);
        assert_eq!(d(1, "compact_success"), 1);
        assert_eq!(d(2, "compact_isolated"), 8 * F, "eight folios isolated");
        assert_eq!(
            d(3, "pgmigrate_success"),
            7 * F + (F - 2),
            "seven folios whole, the split one's 14 mapped pages one by one"
        );
        assert_eq!(d(4, "pgmigrate_fail"), 0);
        // Nothing PMD-sized is ever isolated by compaction.
        assert_eq!(d(5, "thp_migration_success"), 0);
        assert_eq!(d(6, "thp_migration_fail"), 0);
        assert_eq!(d(7, "thp_migration_split"), 0);
        assert_eq!(d(8, "thp_split_page"), 0);
        assert_eq!(mthp(k, "split") - split0, 1, "the partially mapped folio");
        assert_eq!(mthp(k, "nr_anon"), 7);
        assert_eq!(mthp(k, "nr_anon_partially_mapped"), 0);
        assert_eq!(k.mthp_stat(9, "nr_anon").unwrap(), nr_anon_thp0);
        assert_eq!(k.deferred_split_count(0), 1, "the THP still waits");
        // Every mapped page moved out of the two pageblocks, parent and child alike
        // (shared pages to the same new frame); the THPs did not move.
        for i in 0..pages {
            let (p0, c0) = (parent_pfns[i as usize], child_pfns[i as usize]);
            let (p1, c1) = (pfn_of(k, &pm, a + (i << 12)), pfn_of(k, &cm, a + (i << 12)));
            assert_eq!(p0.is_some(), p1.is_some(), "page {i}");
            assert_eq!(c0.is_some(), c1.is_some(), "page {i}");
            for (old, new) in [(p0, p1), (c0, c1)] {
                if let (Some(o), Some(n)) = (old, new) {
                    if (t0..t0 + 2 * PB).contains(&o) {
                        assert!(!(t0..t0 + 2 * PB).contains(&n), "page {i} still at {n:#x}");
                    } else {
                        assert_eq!(o, n, "page {i} was not in the way");
                    }
                }
            }
            if p0 == c0 {
                assert_eq!(p1, c1, "page {i} shared before, shared after");
            }
            // The folios moved whole: page i sits at its folio's head + i % 16, in a
            // 64 KiB folio; the split one's pages are single pages now.
            if let Some(n) = p1 {
                let head = page(k, n).compound_head();
                if i / F == 1 {
                    assert!(!head.folio_test_large(), "page {i}: split");
                } else if !(i / F == 2 && i % F == 0) {
                    assert_eq!(head.folio_order(), 4, "page {i}");
                    assert_eq!(k.page_to_pfn(head).0 + i % F, n, "page {i}");
                }
            }
        }
        for i in 0..1024u64 {
            assert_eq!(pfn_of(k, &pm, thp + (i << 12)), thp_pfns[i as usize], "THP page {i}");
        }
        assert_eq!((pm.counter(MM_ANONPAGES), cm.counter(MM_ANONPAGES)), rss);
        assert_eq!(proc_pid_smaps(k, &pm), smaps.0, "parent's smaps");
        assert_eq!(proc_pid_smaps(k, &cm), smaps.1, "child's smaps");
        check_all(k, &[&pm, &cm]);
        // Every byte, through both address spaces.
        verify(k, cpu, &mut pm, a, pages, |i| (!unmapped(i)).then_some(2));
        verify(k, cpu, &mut cm, a, pages, |i| {
            (!unmapped(i)).then_some(if i == 2 * F { 3 } else { 2 })
        });
        for mm in [&mut pm, &mut cm] {
            verify(k, cpu, mm, thp, 1024, |i| (i != 512 + 3).then_some(1));
        }
        // Writes after the move land in the new frames and stay private to each side.
        k.user_write(cpu, &mut pm, a + 0x100, b"parent").unwrap();
        let mut got = [0u8; 6];
        k.user_read(cpu, &mut cm, a + 0x100, &mut got).unwrap();
        assert_ne!(&got, b"parent");
        check_all(k, &[&pm, &cm]);
        k.__free_pages(cpu, block, 10);
        k.exit_mmap(cpu, cm);
        k.exit_mmap(cpu, pm);
        for p in held.into_values() {
            k.__free_pages(cpu, p, 0);
        }
    });
    teardown_check(&m, before);
}

/// A folio of at least the order compaction works for is not isolated (compacting for
/// order 4 leaves the 64 KiB folios alone even though nothing else can make the block); a
/// pinned folio (an extra reference, as `get_user_pages` takes) is not isolated either.
/// When the free scanner finds no block of a folio's order, the folio is split and its
/// pages move one by one (`migrate_pages_batch` on `-ENOMEM`), and the order-9 allocation
/// gets the pageblock it was in.
#[test]
fn compaction_skips_pinned_and_large_folios_and_splits_without_a_block() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    k.set_mthp_enabled(64, ThpPolicy::Always).unwrap();
    let before = before(&m);
    m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = k
            .mmap(cpu, &mut mm, MTHP_BASE, (2 * F) << 12, RW, ANON | MAP_FIXED, 0)
            .unwrap();
        let mut held = take_all(k, cpu);
        let blocks = fully_held(k, &held, ZoneType::Dma32);
        let (t0, t1) = (blocks[0], blocks[1]);
        for t in [t0, t1] {
            for p in t..t + F {
                release(k, cpu, &mut held, p);
            }
        }
        free_rest(k, cpu, &mut held, blocks.iter().copied().filter(|&b| b > t1), 8);
        fill(k, cpu, &mut mm, a, 2 * F, 5);
        let pf = |k: &Kernel, mm: &MmStruct| -> Vec<u64> {
            (0..2 * F).map(|i| pfn_of(k, mm, a + (i << 12)).unwrap()).collect()
        };
        let p0 = pf(k, &mm);
        let (in_t0, in_t1) = if p0[0] == t0 { (0, F) } else { (F, 0) };
        assert_eq!(p0[in_t0 as usize], t0);
        assert_eq!(p0[in_t1 as usize], t1);
        // Free memory in the other pageblocks, but only in blocks below order 3.
        let others = blocks.iter().copied().filter(|&b| b != t0 && b != t1);
        free_rest(k, cpu, &mut held, others, 8);
        assert!(k.alloc_pages(cpu, Gfp::__GFP_NOWARN, 3).is_none());
        check_all(k, &[&mm]);

        // Compaction for order 4: the 64 KiB folios are of that order; none is isolated.
        let (iso0, split0) = (event(k, "compact_isolated"), mthp(k, "split"));
        let zone = k.nodes[0].zone(ZoneType::Dma32);
        assert!(!k.compact_zone(cpu, zone, 4));
        assert_eq!(event(k, "compact_isolated"), iso0);
        assert_eq!(mthp(k, "split"), split0);
        assert_eq!(pf(k, &mm), p0);
        check_all(k, &[&mm]);

        // The two pageblocks hold only their folios now; the one in the lower is pinned.
        for t in [t0, t1] {
            for p in t..t + PB {
                if held.contains_key(&p) {
                    release(k, cpu, &mut held, p);
                }
            }
        }
        k.drain_all_pages(cpu);
        let pinned = page(k, t0);
        pinned.get();
        let e = |n: &str| event(k, n);
        let (ok0, fail0, iso0) = (
            e("pgmigrate_success"),
            e("pgmigrate_fail"),
            e("compact_isolated"),
        );
        let block = k
            .alloc_pages(cpu, GFP_KERNEL | Gfp::__GFP_NOWARN, 9)
            .expect("the unpinned folio's pageblock freed");
        assert_eq!(k.page_to_pfn(block).0, t1);
        println!(
            "order-9 with a pinned folio: compact_isolated +{}, pgmigrate_success +{}, 64K split +{}",
            e("compact_isolated") - iso0,
            e("pgmigrate_success") - ok0,
            mthp(k, "split") - split0
        );
        assert_eq!(e("compact_isolated") - iso0, F, "only the unpinned folio");
        assert_eq!(e("pgmigrate_fail") - fail0, 0, "the pinned one was never tried");
        assert_eq!(mthp(k, "split") - split0, 1, "no 64 KiB block: split");
        assert_eq!(e("pgmigrate_success") - ok0, F, "its pages one by one");
        assert_eq!(e("thp_migration_split"), 0, "not PMD-sized");
        let p1 = pf(k, &mm);
        for i in 0..2 * F {
            if (in_t0..in_t0 + F).contains(&i) {
                assert_eq!(p1[i as usize], p0[i as usize], "pinned page {i} moved");
            } else {
                assert!(!(t1..t1 + PB).contains(&p1[i as usize]), "page {i} not moved");
                assert!(!page(k, p1[i as usize]).compound_head().folio_test_large());
            }
        }
        assert_eq!(pinned.folio_order(), 4);
        assert_eq!(mthp(k, "nr_anon"), 1);
        check_all(k, &[&mm]);
        verify(k, cpu, &mut mm, a, 2 * F, |_| Some(5));
        k.folio_put(cpu, pinned);
        k.__free_pages(cpu, block, 9);
        check_all(k, &[&mm]);
        k.exit_mmap(cpu, mm);
        for p in held.into_values() {
            k.__free_pages(cpu, p, 0);
        }
    });
    teardown_check(&m, before);
}

/// Large page-cache folios move too (Linux migrates them whole: `__folio_migrate_mapping`
/// repoints every `i_pages` slot): eight 16 KiB folios of a file sit in the two pageblocks
/// of the only order-10 block that could be freed — four mapped by a shared mapping, one
/// of them dirty, four only cached. The order-10 allocation moves all eight whole (new
/// frames, still order 2, the cache's slots and the PTEs pointing at them, the dirty flag
/// kept); every byte reads back through the mapping and `read`, and writeback puts the
/// written bytes in the file.
#[test]
fn compaction_moves_large_page_cache_folios() {
    use mmkit::fs::inode::{FMode, RamFile};
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let before = before(&m);
    let pages = 32u64;
    let data: Vec<u8> = (0..pages * 4096)
        .map(|i| (i * 7 / 4096 + i) as u8)
        .collect();
    let inode = k.new_inode(Box::new(RamFile::new(data.clone())), (0, 2), 70, "/f");
    inode.mapping_set_large_folios();
    m.on_cpu(0, |cpu| {
        let f = k.open(&inode, FMode::READ | FMode::WRITE).unwrap();
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = k
            .do_mmap(
                cpu,
                &mut mm,
                Some(&f),
                MTHP_BASE,
                pages << 12,
                RW,
                MAP_SHARED,
                0,
            )
            .unwrap();
        assert_eq!(a, MTHP_BASE);
        // Fragment: eight 16 KiB holes in two pageblocks of an order-10 block, nothing
        // else of 16 KiB free.
        let mut held = take_all(k, cpu);
        let blocks = fully_held(k, &held, ZoneType::Dma32);
        let t0 = *blocks
            .iter()
            .find(|&&b| b % (2 * PB) == 0 && blocks.contains(&(b + PB)))
            .expect("two whole pageblocks of an order-10 block");
        let t1 = t0 + PB;
        for t in [t0, t1] {
            for hole in [0, 64, 128, 192] {
                for p in t + hole..t + hole + 4 {
                    release(k, cpu, &mut held, p);
                }
            }
        }
        free_rest(
            k,
            cpu,
            &mut held,
            blocks.iter().copied().filter(|&b| b > t1),
            4,
        );
        assert_eq!(
            k.page_cache_readahead(cpu, &inode, 0, pages).unwrap(),
            pages
        );
        let cached =
            || -> Vec<u64> { (0..pages).map(|i| inode.cached_pfn(i).unwrap().0).collect() };
        let old = cached();
        for (i, &pfn) in old.iter().enumerate() {
            assert!((t0..t0 + 2 * PB).contains(&pfn), "page {i} at {pfn:#x}");
            assert_eq!(page(k, pfn).compound_head().folio_order(), 2, "page {i}");
        }
        // Four folios mapped; one written.
        let mut buf = vec![0u8; 4096];
        for i in (0..16).step_by(4) {
            k.user_read(cpu, &mut mm, a + (i << 12), &mut buf).unwrap();
        }
        assert_eq!(mm.counter(mmkit::mm::mm_types::MM_FILEPAGES), 16);
        k.user_write(cpu, &mut mm, a + 5 * 4096 + 100, b"moved while dirty")
            .unwrap();
        let mut want = data.clone();
        want[5 * 4096 + 100..5 * 4096 + 117].copy_from_slice(b"moved while dirty");
        // The rest of memory as the free scanner's supply; the two pageblocks hold only
        // the folios.
        let others = blocks.iter().copied().filter(|&b| b != t0 && b != t1);
        free_rest(k, cpu, &mut held, others, PB);
        for t in [t0, t1] {
            for p in t..t + PB {
                if held.contains_key(&p) {
                    release(k, cpu, &mut held, p);
                }
            }
        }
        k.drain_all_pages(cpu);
        assert!(k.alloc_pages(cpu, Gfp::__GFP_NOWARN, 9).is_none());
        check_all(k, &[&mm]);
        k.check_pagecache_invariants().unwrap();
        let (iso0, mig0) = (event(k, "compact_isolated"), event(k, "pgmigrate_success"));
        let block = k
            .alloc_pages(cpu, GFP_KERNEL | Gfp::__GFP_NOWARN, 10)
            .expect("compaction made an order-10 block");
        assert_eq!(k.page_to_pfn(block).0, t0, "the block the folios were in");
        assert_eq!(event(k, "compact_isolated") - iso0, pages);
        assert_eq!(event(k, "pgmigrate_success") - mig0, pages);
        let new = cached();
        for (i, &pfn) in (0u64..).zip(&new) {
            assert!(!(t0..t0 + 2 * PB).contains(&pfn), "page {i} still there");
            let head = page(k, pfn).compound_head();
            assert_eq!(head.folio_order(), 2, "page {i} moved whole");
            assert_eq!(k.page_to_pfn(head).0 + i % 4, pfn);
            if i < 16 {
                assert_eq!(pfn_of(k, &mm, a + (i << 12)), Some(pfn));
            }
        }
        assert!(page(k, new[5])
            .compound_head()
            .test(mmkit::mm::page::PageFlags::DIRTY));
        check_all(k, &[&mm]);
        k.check_pagecache_invariants().unwrap();
        for i in 0..pages {
            k.user_read(cpu, &mut mm, a + (i << 12), &mut buf).unwrap();
            assert_eq!(
                &buf[..],
                &want[(i << 12) as usize..((i + 1) << 12) as usize]
            );
        }
        let mut all = vec![0u8; want.len()];
        assert_eq!(k.filemap_read(cpu, &inode, 0, &mut all).unwrap(), all.len());
        assert!(all == want, "read(2) sees the moved folios");
        k.write_inode_now(cpu, &inode).unwrap();
        inode.data().read_at(0, &mut all).unwrap();
        assert!(all == want, "writeback wrote the moved dirty folio");
        k.__free_pages(cpu, block, 10);
        k.exit_mmap(cpu, mm);
        k.fput(cpu, f);
        for p in held.into_values() {
            k.__free_pages(cpu, p, 0);
        }
        k.lru_add_drain_all(cpu);
        k.drop_pagecache(cpu);
        k.evict_inode(cpu, &inode).unwrap();
    });
    teardown_check(&m, before);
}
