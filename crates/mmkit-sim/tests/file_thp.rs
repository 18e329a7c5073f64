//! File THPs (issue 15): a `MADV_HUGEPAGE` file mapping is read in PMD-sized page-cache
//! folios and mapped by one PMD per 2 MiB (`FilePmdMapped`, `FileHugePages`,
//! `thp_file_alloc`, `thp_file_mapped`); what cannot keep a PMD (a partial munmap or
//! mprotect, a private write, reclaim) clears it and the pages come back by PTEs; fork does
//! not copy file PMDs; a mapping whose file offset is not aligned like its address, or
//! `MADV_NOHUGEPAGE`, maps the same folios by PTEs. Every byte is checked against the file,
//! every checker runs after each step, and every page is back at the end.

mod common;
use common::{boot_mem, free_and_pcp};
use mmkit::arch::x86_64::pgtable::HPAGE_PMD_SIZE;
use mmkit::fs::inode::{FMode, Inode, RamFile};
use mmkit::fs::proc::task_mmu::proc_pid_smaps;
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

fn file_bytes(pages: u64, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..pages * PAGE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn event(k: &Kernel, name: &str) -> u64 {
    mmkit::fs::proc::vmstat::vm_event(k, name).expect("a vmstat event name")
}

fn kb_value(s: &str) -> u64 {
    s.trim().trim_end_matches(" kB").trim().parse().unwrap()
}

/// The smaps field `name` (kB) of the VMA starting at `start`.
fn smaps_field(k: &Kernel, mm: &MmStruct, start: u64, name: &str) -> u64 {
    let smaps = proc_pid_smaps(k, mm);
    let head = format!("{start:x}-");
    let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&head));
    lines.next().expect("the VMA is in smaps");
    let l = lines
        .find(|l| l.starts_with(name))
        .expect("the field is in smaps");
    kb_value(&l[name.len()..])
}

fn meminfo_field(k: &Kernel, name: &str) -> u64 {
    let m = mmkit::fs::proc::meminfo::meminfo(k);
    let l = m.lines().find(|l| l.starts_with(name)).unwrap();
    kb_value(&l[name.len()..])
}

fn check_all(k: &Kernel, mm: &MmStruct) {
    k.check_pagecache_invariants().unwrap();
    k.check_lru_invariants().unwrap();
    k.check_mm_invariants(mm).unwrap();
    k.check_deferred_split_invariants().unwrap();
}

/// Read pages `[from, to)` of the mapping at `a` and compare them with the file.
fn read_pages(
    k: &Kernel,
    cpu: &CpuGuard<'_>,
    mm: &mut MmStruct,
    a: u64,
    data: &[u8],
    pages: impl Iterator<Item = u64>,
) {
    let mut buf = vec![0u8; PAGE as usize];
    for i in pages {
        k.user_read(cpu, mm, a + i * PAGE, &mut buf).unwrap();
        let off = (i * PAGE) as usize;
        assert_eq!(&buf[..], &data[off..off + PAGE as usize], "page {i}");
    }
}

fn new_file(k: &Kernel, data: &[u8], ino: u64) -> Arc<Inode> {
    let inode = k.new_inode(Box::new(RamFile::new(data.to_vec())), (0, 2), ino, "/f");
    inode.mapping_set_large_folios();
    inode
}

/// Free pages after every CPU batch went back.
fn drain_and_count(m: &mmkit_sim::Machine) -> u64 {
    m.on_cpu(0, |cpu| {
        m.kernel.lru_add_drain_all(cpu);
        m.kernel.drain_all_pages(cpu);
    });
    free_and_pcp(&m.kernel)
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
        let inode = new_file(k, &data, 60);
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
        let inode = new_file(k, &data, 61);
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
        let inode = new_file(k, &data, 62);
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
        let inode = new_file(k, &data, 63);
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
