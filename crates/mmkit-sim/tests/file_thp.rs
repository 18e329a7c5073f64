//! File THPs (issue 15): a `MADV_HUGEPAGE` file mapping is read in PMD-sized page-cache
//! folios and mapped by one PMD per 2 MiB (`FilePmdMapped`, `FileHugePages`,
//! `thp_file_alloc`, `thp_file_mapped`); what cannot keep a PMD (a partial munmap or
//! mprotect, a private write, reclaim) clears it and the pages come back by PTEs; fork does
//! not copy file PMDs; a mapping whose file offset is not aligned like its address, or
//! `MADV_NOHUGEPAGE`, maps the same folios by PTEs. Every byte is checked against the file,
//! every checker runs after each step, and every page is back at the end.

mod common;
use common::boot_mem;
use common::files::*;
use mmkit::arch::x86_64::pgtable::HPAGE_PMD_SIZE;
use mmkit::fs::inode::FMode;
use mmkit::mm::filemap::{NR_FILE_MAPPED, NR_FILE_PAGES};
use mmkit::mm::madvise::{MADV_HUGEPAGE, MADV_NOHUGEPAGE};
use mmkit::mm::mm_types::{MmStruct, MM_ANONPAGES, MM_FILEPAGES};
use mmkit::mm::mmap::*;
use mmkit::{CpuGuard, Kernel};
use std::sync::Arc;

const PAGE: u64 = 4096;
const MIB: u64 = 1 << 20;
/// Where the tests map (a 2 MiB-aligned hint the placement takes as given).
const AT: u64 = 0x7e00_0000_0000;

fn event(k: &Kernel, name: &str) -> u64 {
    mmkit::fs::proc::vmstat::vm_event(k, name).expect("a vmstat event name")
}

fn check_all(k: &Kernel, mm: &MmStruct) {
    k.check_pagecache_invariants().unwrap();
    k.check_lru_invariants().unwrap();
    k.check_mm_invariants(mm).unwrap();
    k.check_deferred_split_invariants().unwrap();
}

/// Map `len` bytes of `f` from `off` at `AT + shift`, `advice` applied (0: none).
fn map(
    k: &Kernel,
    cpu: &CpuGuard<'_>,
    mm: &mut MmStruct,
    f: &Arc<mmkit::fs::inode::File>,
    (len, off, shift): (u64, u64, u64),
    prot: u32,
    advice: u32,
) -> u64 {
    let a = k
        .do_mmap(cpu, mm, Some(f), AT + shift, len, prot, MAP_PRIVATE, off)
        .unwrap();
    assert_eq!(a, AT + shift, "the hint is taken");
    if advice != 0 {
        k.madvise(cpu, mm, a, len, advice).unwrap();
    }
    a
}

/// An 8 MiB `MADV_HUGEPAGE` mapping read page by page: 4 faults (the first major, which
/// reads 4 MiB in two PMD-sized folios; the second folio's readahead marker reads the next
/// 4 MiB), each mapping 2 MiB by a PMD; smaps, meminfo and vmstat say so; the bytes are the
/// file's. A second mapping of the cached file maps the same folios by PMDs in 4 minor
/// faults (the folio's entire mapcount 2). Unmapping all of it leaves the folios cached and
/// unmapped; dropping the cache frees every page.
#[test]
fn madv_hugepage_file_mapping_is_mapped_by_pmds() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let pages = 2048;
    let data = file_bytes(pages, 0x5eed);
    let before = drain_and_count(&m);
    m.on_cpu(0, |cpu| {
        let inode = new_file(k, &data, 60, true);
        let f = k.open(&inode, FMode::READ).unwrap();
        let (alloc0, mapped0) = (event(k, "thp_file_alloc"), event(k, "thp_file_mapped"));
        let mut mm = k.mm_alloc(cpu).unwrap();
        let len = pages * PAGE;
        let a = map(k, cpu, &mut mm, &f, (len, 0, 0), PROT_READ, MADV_HUGEPAGE);
        read_pages(k, cpu, &mut mm, a, &data, 0..pages);
        assert_eq!(
            (mm.faults.min_flt, mm.faults.maj_flt),
            (3, 1),
            "one fault per 2 MiB, the first major"
        );
        assert_eq!(smaps_field(k, &mm, a, "FilePmdMapped:"), 8192);
        assert_eq!(smaps_field(k, &mm, a, "Rss:"), 8192);
        assert_eq!(smaps_field(k, &mm, a, "AnonHugePages:"), 0);
        assert_eq!(smaps_field(k, &mm, a, "Anonymous:"), 0);
        assert_eq!(smaps_field(k, &mm, a, "Private_Clean:"), 8192);
        assert_eq!(meminfo_field(k, "FilePmdMapped:"), 8192);
        assert_eq!(meminfo_field(k, "FileHugePages:"), 8192);
        assert_eq!(k.global_node_page_state(NR_FILE_MAPPED), pages);
        assert_eq!(event(k, "thp_file_alloc") - alloc0, 4);
        assert_eq!(event(k, "thp_file_mapped") - mapped0, 4);
        assert_eq!(mm.counter(MM_FILEPAGES), pages);
        let vmstat = mmkit::fs::proc::vmstat::vmstat(k);
        assert!(vmstat.contains("\nnr_file_hugepages 4\n"), "{vmstat}");
        assert!(vmstat.contains("\nnr_file_pmdmapped 4\n"));
        check_all(k, &mm);
        // A second address space maps the cached folios by PMDs too: 4 minor faults.
        let mut mm2 = k.mm_alloc(cpu).unwrap();
        let b = map(k, cpu, &mut mm2, &f, (len, 0, 0), PROT_READ, MADV_HUGEPAGE);
        read_pages(k, cpu, &mut mm2, b, &data, (0..pages).rev());
        assert_eq!((mm2.faults.min_flt, mm2.faults.maj_flt), (4, 0));
        let head = k
            .mem_map()
            .pfn_to_page(inode.cached_pfn(0).unwrap())
            .unwrap();
        assert_eq!(head.entire_mapcount(), 2);
        assert_eq!(
            meminfo_field(k, "FilePmdMapped:"),
            8192,
            "counted once per folio"
        );
        check_all(k, &mm2);
        k.exit_mmap(cpu, mm2);
        k.munmap(cpu, &mut mm, a, len).unwrap();
        assert_eq!(meminfo_field(k, "FilePmdMapped:"), 0);
        assert_eq!(k.global_node_page_state(NR_FILE_MAPPED), 0);
        assert_eq!(mm.counter(MM_FILEPAGES), 0);
        assert_eq!(inode.nrpages(), pages, "the folios stay cached");
        check_all(k, &mm);
        k.exit_mmap(cpu, mm);
        k.fput(cpu, f);
        assert_eq!(k.drop_pagecache(cpu), pages);
        assert_eq!(meminfo_field(k, "FileHugePages:"), 0);
        k.check_pagecache_invariants().unwrap();
        k.evict_inode(cpu, &inode).unwrap();
    });
    assert_eq!(k.global_node_page_state(NR_FILE_PAGES), 0);
    assert_eq!(drain_and_count(&m), before, "pages leaked");
}

/// What cannot keep a file PMD clears it and the pages come back by PTEs, each byte the
/// file's: `munmap` of 4 KiB in the middle (exactly one PMD goes, `thp_split_pmd`), an
/// `mprotect` of half of one, a private write (4 KiB copied; the file and the folio keep
/// their bytes); an `mprotect` of whole PMDs keeps them, read-only. Fork does not copy
/// file PMDs: the child faults them in and reads the same bytes.
#[test]
fn partial_operations_clear_file_pmds_and_ptes_refault() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let pages = 2048;
    let data = file_bytes(pages, 0xfeed);
    let before = drain_and_count(&m);
    m.on_cpu(0, |cpu| {
        let inode = new_file(k, &data, 61, true);
        let f = k.open(&inode, FMode::READ).unwrap();
        let mut mm = k.mm_alloc(cpu).unwrap();
        let len = pages * PAGE;
        let a = map(
            k,
            cpu,
            &mut mm,
            &f,
            (len, 0, 0),
            PROT_READ | PROT_WRITE,
            MADV_HUGEPAGE,
        );
        read_pages(k, cpu, &mut mm, a, &data, 0..pages);
        assert_eq!(smaps_field(k, &mm, a, "FilePmdMapped:"), 8192);
        let split0 = event(k, "thp_split_pmd");
        // 4 KiB unmapped in the middle of the second PMD.
        let hole = 512 + 100;
        k.munmap(cpu, &mut mm, a + hole * PAGE, PAGE).unwrap();
        assert_eq!(event(k, "thp_split_pmd") - split0, 1, "exactly one PMD");
        assert_eq!(meminfo_field(k, "FilePmdMapped:"), 6144);
        assert_eq!(mm.counter(MM_FILEPAGES), pages - 512);
        check_all(k, &mm);
        let mut buf = [0u8; 8];
        assert!(k
            .user_read(cpu, &mut mm, a + hole * PAGE, &mut buf)
            .is_err());
        read_pages(k, cpu, &mut mm, a, &data, (0..pages).filter(|&i| i != hole));
        assert_eq!(mm.counter(MM_FILEPAGES), pages - 1, "the rest by PTEs");
        check_all(k, &mm);
        // mprotect of half of the third PMD clears it; of the whole fourth keeps it.
        k.mprotect(cpu, &mut mm, a + 2 * HPAGE_PMD_SIZE, MIB, PROT_READ)
            .unwrap();
        assert_eq!(meminfo_field(k, "FilePmdMapped:"), 4096);
        k.mprotect(cpu, &mut mm, a + 3 * HPAGE_PMD_SIZE, 2 * MIB, PROT_READ)
            .unwrap();
        assert_eq!(meminfo_field(k, "FilePmdMapped:"), 4096);
        read_pages(k, cpu, &mut mm, a, &data, (0..pages).filter(|&i| i != hole));
        check_all(k, &mm);
        // A private write in the first PMD: its PMD goes, 4 KiB is copied.
        let msg = b"written privately";
        k.user_write(cpu, &mut mm, a + 7 * PAGE + 5, msg).unwrap();
        assert_eq!(mm.counter(MM_ANONPAGES), 1);
        assert_eq!(meminfo_field(k, "FilePmdMapped:"), 2048);
        let mut got = vec![0u8; PAGE as usize];
        k.user_read(cpu, &mut mm, a + 7 * PAGE, &mut got).unwrap();
        let mut want = data[7 * PAGE as usize..8 * PAGE as usize].to_vec();
        want[5..5 + msg.len()].copy_from_slice(msg);
        assert_eq!(got, want);
        let mut on_file = vec![0u8; PAGE as usize];
        inode.data().read_at(7 * PAGE, &mut on_file).unwrap();
        assert_eq!(on_file, &data[7 * PAGE as usize..8 * PAGE as usize]);
        read_pages(
            k,
            cpu,
            &mut mm,
            a,
            &data,
            (0..pages).filter(|&i| i != hole && i != 7),
        );
        check_all(k, &mm);
        // fork: the child maps no file PMD until it faults; its bytes are the same.
        let mut cm = k.dup_mmap(cpu, &mm).unwrap();
        assert_eq!(meminfo_field(k, "FilePmdMapped:"), 2048);
        let fourth = a + 3 * HPAGE_PMD_SIZE;
        assert_eq!(smaps_field(k, &cm, fourth, "FilePmdMapped:"), 0);
        read_pages(k, cpu, &mut cm, a, &data, 3 * 512..4 * 512);
        assert_eq!(smaps_field(k, &cm, fourth, "FilePmdMapped:"), 2048);
        let head = k
            .mem_map()
            .pfn_to_page(inode.cached_pfn(3 * 512).unwrap())
            .unwrap();
        assert_eq!(head.entire_mapcount(), 2, "parent's PMD and the child's");
        k.user_read(cpu, &mut cm, a + 7 * PAGE, &mut got).unwrap();
        assert_eq!(got, want, "the child sees the parent's private copy");
        check_all(k, &cm);
        k.exit_mmap(cpu, cm);
        check_all(k, &mm);
        k.exit_mmap(cpu, mm);
        k.fput(cpu, f);
        k.drop_pagecache(cpu);
        k.evict_inode(cpu, &inode).unwrap();
    });
    assert_eq!(k.global_node_page_state(NR_FILE_PAGES), 0);
    assert_eq!(drain_and_count(&m), before, "pages leaked");
}

/// Reclaim takes PMD-mapped file folios: the PMDs are cleared, the folios split and freed,
/// and reading again brings every byte back (in file THPs again).
#[test]
fn reclaim_clears_file_pmds_and_rereads() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let pages = 2048;
    let data = file_bytes(pages, 0xbead);
    let before = drain_and_count(&m);
    m.on_cpu(0, |cpu| {
        let inode = new_file(k, &data, 62, true);
        let f = k.open(&inode, FMode::READ).unwrap();
        let mut mm = k.mm_alloc(cpu).unwrap();
        let len = pages * PAGE;
        let a = map(k, cpu, &mut mm, &f, (len, 0, 0), PROT_READ, MADV_HUGEPAGE);
        read_pages(k, cpu, &mut mm, a, &data, 0..pages);
        assert_eq!(meminfo_field(k, "FilePmdMapped:"), 8192);
        k.lru_add_drain(cpu);
        for _ in 0..60 {
            if inode.nrpages() == 0 {
                break;
            }
            k.try_to_free_pages(cpu, mmkit::gfp::GFP_KERNEL);
            check_all(k, &mm);
        }
        assert_eq!(inode.nrpages(), 0, "every folio reclaimed");
        assert_eq!(meminfo_field(k, "FilePmdMapped:"), 0);
        assert_eq!(meminfo_field(k, "FileHugePages:"), 0);
        assert_eq!(mm.counter(MM_FILEPAGES), 0);
        read_pages(k, cpu, &mut mm, a, &data, 0..pages);
        assert_eq!(
            meminfo_field(k, "FilePmdMapped:"),
            8192,
            "re-read in file THPs"
        );
        check_all(k, &mm);
        k.exit_mmap(cpu, mm);
        k.fput(cpu, f);
        k.drop_pagecache(cpu);
        k.evict_inode(cpu, &inode).unwrap();
    });
    assert_eq!(drain_and_count(&m), before, "pages leaked");
}

/// The same cached PMD-sized folios are mapped by PTEs where a PMD cannot map them: a
/// mapping whose file offset is not aligned like its address, and a `MADV_NOHUGEPAGE`
/// one. Without `MADV_HUGEPAGE` readahead reads no PMD-sized folio.
#[test]
fn unaligned_or_nohugepage_mappings_use_ptes() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let pages = 2048;
    let data = file_bytes(pages, 0xcafe);
    let before = drain_and_count(&m);
    m.on_cpu(0, |cpu| {
        let inode = new_file(k, &data, 63, true);
        let f = k.open(&inode, FMode::READ).unwrap();
        let len = pages * PAGE;
        // No advice: no file THP cached, none mapped.
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = map(k, cpu, &mut mm, &f, (len, 0, 0), PROT_READ, 0);
        read_pages(k, cpu, &mut mm, a, &data, 0..pages);
        assert_eq!(meminfo_field(k, "FileHugePages:"), 0);
        assert_eq!(smaps_field(k, &mm, a, "FilePmdMapped:"), 0);
        k.exit_mmap(cpu, mm);
        k.drop_pagecache(cpu);
        // Cache the file in PMD-sized folios through an advised mapping.
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = map(k, cpu, &mut mm, &f, (len, 0, 0), PROT_READ, MADV_HUGEPAGE);
        read_pages(k, cpu, &mut mm, a, &data, 0..pages);
        assert_eq!(meminfo_field(k, "FileHugePages:"), 8192);
        k.exit_mmap(cpu, mm);
        // The file from 4 KiB on, at a 2 MiB-aligned address: offsets misaligned.
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = map(
            k,
            cpu,
            &mut mm,
            &f,
            (len - PAGE, PAGE, 0),
            PROT_READ,
            MADV_HUGEPAGE,
        );
        let shifted = &data[PAGE as usize..];
        read_pages(k, cpu, &mut mm, a, shifted, 0..pages - 1);
        assert_eq!(smaps_field(k, &mm, a, "FilePmdMapped:"), 0);
        assert_eq!(mm.counter(MM_FILEPAGES), pages - 1);
        check_all(k, &mm);
        k.exit_mmap(cpu, mm);
        // Aligned but MADV_NOHUGEPAGE.
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = map(k, cpu, &mut mm, &f, (len, 0, 0), PROT_READ, MADV_NOHUGEPAGE);
        read_pages(k, cpu, &mut mm, a, &data, 0..pages);
        assert_eq!(smaps_field(k, &mm, a, "FilePmdMapped:"), 0);
        assert_eq!(meminfo_field(k, "FilePmdMapped:"), 0);
        check_all(k, &mm);
        k.exit_mmap(cpu, mm);
        k.fput(cpu, f);
        k.drop_pagecache(cpu);
        k.evict_inode(cpu, &inode).unwrap();
    });
    assert_eq!(drain_and_count(&m), before, "pages leaked");
}

/// Processes sharing a `MADV_HUGEPAGE` private file mapping fork, read, write privately,
/// unmap and map back, protect, drop with `MADV_DONTNEED`, toggle the advice and exit at
/// random, with reclaim, `drop_caches` and compaction running; every byte read matches a
/// model (the file's byte, or the last private write) and every invariant holds after each
/// step. File THPs are mapped, cleared and mapped again along the way.
#[test]
fn random_operations_on_file_thps_keep_every_invariant() {
    use mmkit::gfp::{Gfp, GFP_KERNEL};
    use mmkit::kernel::task::TaskTable;
    use mmkit::mm::madvise::MADV_DONTNEED;
    use mmkit_sim::exec::{spawn_host, true_spec};
    use rand::{Rng, SeedableRng};
    #[derive(Clone, Copy, PartialEq, Debug)]
    enum S {
        Unmapped,
        File,
        Written(u8),
    }
    let m = boot_mem(96, 1, "");
    let k = &m.kernel;
    let pages = 2048u64;
    let data = file_bytes(pages, 0x7777);
    let before = drain_and_count(&m);
    let inode = new_file(k, &data, 64, true);
    let f = m.on_cpu(0, |_| k.open(&inode, FMode::READ).unwrap());
    let mut tasks = TaskTable::default();
    let first = m.on_cpu(0, |cpu| {
        spawn_host(&m, &mut tasks, cpu, &true_spec()).unwrap()
    });
    let base = m.on_cpu(0, |cpu| {
        let mm = tasks.get_mut(first).unwrap().mm.as_mut().unwrap();
        let rw = PROT_READ | PROT_WRITE;
        map(k, cpu, mm, &f, (pages * PAGE, 0, 0), rw, MADV_HUGEPAGE)
    });
    let mut model: std::collections::BTreeMap<u32, Vec<S>> =
        [(first, vec![S::File; pages as usize])].into();
    let seed = std::env::var("FILE_THP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let (mapped0, split0) = (event(k, "thp_file_mapped"), event(k, "thp_split_pmd"));
    m.on_cpu(0, |cpu| {
        for step in 0..300 {
            let pids: Vec<u32> = model.keys().copied().collect();
            let pid = pids[rng.random_range(0..pids.len())];
            let p = rng.random_range(0..pages - 1);
            let n = rng.random_range(1..1024).min(pages - p);
            let (lo, hi) = (p as usize, (p + n) as usize);
            let mm = tasks.get_mut(pid).unwrap().mm.as_mut().unwrap();
            let n_tasks = model.len();
            let mdl = model.get_mut(&pid).unwrap();
            match rng.random_range(0..18) {
                0 if n_tasks < 3 => {
                    let copy = mdl.clone();
                    let c = tasks.fork(k, cpu, pid).unwrap();
                    model.insert(c, copy);
                }
                1 if n_tasks > 1 => {
                    tasks.exit(k, cpu, pid, 0).unwrap();
                    let _ = tasks.wait(tasks.get(pid).map_or(0, |t| t.ppid), Some(pid));
                    model.remove(&pid);
                }
                2 => {
                    k.madvise(cpu, mm, base + p * PAGE, n * PAGE, MADV_DONTNEED)
                        .ok();
                    for x in &mut mdl[lo..hi] {
                        if *x != S::Unmapped {
                            *x = S::File;
                        }
                    }
                }
                3 => {
                    k.munmap(cpu, mm, base + p * PAGE, n * PAGE).unwrap();
                    mdl[lo..hi].fill(S::Unmapped);
                }
                4 => {
                    for q in p..p + n {
                        if mdl[q as usize] == S::Unmapped {
                            let a = base + q * PAGE;
                            let fl = MAP_PRIVATE | MAP_FIXED;
                            let rw = PROT_READ | PROT_WRITE;
                            k.do_mmap(cpu, mm, Some(&f), a, PAGE, rw, fl, q * PAGE)
                                .unwrap();
                            mdl[q as usize] = S::File;
                        }
                    }
                    k.madvise(cpu, mm, base, pages * PAGE, MADV_HUGEPAGE).ok();
                }
                5 if mdl[lo..hi].iter().all(|x| *x != S::Unmapped) => {
                    k.mprotect(cpu, mm, base + p * PAGE, n * PAGE, PROT_READ)
                        .unwrap();
                    k.mprotect(cpu, mm, base + p * PAGE, n * PAGE, PROT_READ | PROT_WRITE)
                        .unwrap();
                }
                6 => {
                    k.try_to_free_pages(cpu, GFP_KERNEL);
                }
                7 => {
                    let adv = if rng.random_bool(0.7) {
                        MADV_HUGEPAGE
                    } else {
                        MADV_NOHUGEPAGE
                    };
                    k.madvise(cpu, mm, base + p * PAGE, n * PAGE, adv).ok();
                }
                8 => {
                    k.lru_add_drain_all(cpu);
                    k.drop_caches(cpu, 3).unwrap();
                }
                9 => {
                    let mut taken = Vec::new();
                    while let Some(pg) = k.alloc_pages(cpu, Gfp::__GFP_NOWARN, 9) {
                        taken.push(pg);
                    }
                    for z in k.nodes[0].zones.iter() {
                        k.compact_zone(cpu, z, 9);
                    }
                    for pg in taken {
                        k.__free_pages(cpu, pg, 9);
                    }
                }
                12 | 13 => {
                    // A whole 2 MiB of the file mapped afresh (its old table goes with
                    // the old mapping), advised: the next fault there can map a PMD.
                    let j = rng.random_range(0..pages / 512);
                    let a = base + j * HPAGE_PMD_SIZE;
                    let fl = MAP_PRIVATE | MAP_FIXED;
                    let rw = PROT_READ | PROT_WRITE;
                    let off = j * HPAGE_PMD_SIZE;
                    k.do_mmap(cpu, mm, Some(&f), a, HPAGE_PMD_SIZE, rw, fl, off)
                        .unwrap();
                    k.madvise(cpu, mm, a, HPAGE_PMD_SIZE, MADV_HUGEPAGE)
                        .unwrap();
                    mdl[(j * 512) as usize..((j + 1) * 512) as usize].fill(S::File);
                }
                10 | 11 => {
                    let v: u8 = rng.random_range(1..=255);
                    for q in (p..p + n).step_by(rng.random_range(1..64)) {
                        if mdl[q as usize] != S::Unmapped {
                            k.user_write(cpu, mm, base + q * PAGE + 9, &[v]).unwrap();
                            mdl[q as usize] = S::Written(v);
                        }
                    }
                }
                _ => {
                    for _ in 0..96 {
                        let q = rng.random_range(0..pages);
                        let mut b = [0u8];
                        let r = k.user_read(cpu, mm, base + q * PAGE + 9, &mut b);
                        match mdl[q as usize] {
                            S::Unmapped => assert!(r.is_err(), "step {step}: page {q}"),
                            S::File => {
                                r.unwrap();
                                let want = data[(q * PAGE + 9) as usize];
                                assert_eq!(b[0], want, "step {step}: pid {pid} page {q}");
                            }
                            S::Written(v) => {
                                r.unwrap();
                                assert_eq!(b[0], v, "step {step}: pid {pid} page {q}");
                            }
                        }
                    }
                }
            }
            for t in tasks.iter() {
                if let Some(mm) = &t.mm {
                    check_all(k, mm);
                }
            }
            k.check_invariants().unwrap();
        }
        let mapped = event(k, "thp_file_mapped") - mapped0;
        let cleared = event(k, "thp_split_pmd") - split0;
        eprintln!("thp_file_mapped {mapped}, thp_split_pmd {cleared}");
        assert!(
            mapped >= 6 && cleared >= 3,
            "file THPs mapped ({mapped}) and cleared ({cleared}) again and again"
        );
        for pid in model.keys().copied().collect::<Vec<_>>() {
            tasks.exit(k, cpu, pid, 0).unwrap();
        }
        k.fput(cpu, f);
        k.lru_add_drain_all(cpu);
        k.drop_pagecache(cpu);
        k.evict_inode(cpu, &inode).unwrap();
    });
    assert_eq!(k.global_node_page_state(NR_FILE_PAGES), 0);
    assert_eq!(k.bad_page_reports(), 0, "{:?}", k.dmesg());
    assert_eq!(drain_and_count(&m), before, "pages leaked");
}
