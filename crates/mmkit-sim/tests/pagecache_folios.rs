//! Large folios in the page cache (a mapping that opted in with `mapping_set_large_folios`):
//! mmap read-around and async readahead cache the file in large folios; fault-around maps a
//! whole folio per fault; writeback writes a dirty folio whole; a private write copies
//! 4 KiB; reclaim splits the folios and frees them, and re-reading brings the bytes back;
//! partial unmaps leave the rest mapped; `drop_caches` and teardown leave nothing behind.
//! Every byte is checked against the file, and every subsystem's checker runs after each
//! step.

mod common;
use common::files::*;
use common::{boot_mem, free_and_pcp};
use mmkit::fs::inode::{FMode, Inode};
use mmkit::mm::filemap::{NR_FILE_DIRTY, NR_FILE_MAPPED, NR_FILE_PAGES, NR_WRITTEN};
use mmkit::mm::madvise::MADV_DONTNEED;
use mmkit::mm::mm_types::{MmStruct, MM_ANONPAGES, MM_FILEPAGES};
use mmkit::mm::mmap::*;
use mmkit::{CpuGuard, Kernel};
use std::sync::Arc;

const PAGE: usize = 4096;

fn check_all(k: &Kernel, mm: &MmStruct) {
    k.check_pagecache_invariants().unwrap();
    k.check_lru_invariants().unwrap();
    k.check_mm_invariants(mm).unwrap();
    k.check_deferred_split_invariants().unwrap();
}

/// (folios, pages in large folios, largest order) of `inode`'s cache.
fn folio_census(k: &Kernel, inode: &Inode, pages: u64) -> (u64, u64, u32) {
    let (mut folios, mut in_large, mut max) = (0, 0, 0);
    for i in 0..pages {
        let Some(pfn) = inode.cached_pfn(i) else {
            continue;
        };
        let p = k.mem_map().pfn_to_page(pfn).unwrap();
        let f = p.compound_head();
        if f.folio_test_large() {
            in_large += 1;
        }
        if !p.test(mmkit::mm::page::PageFlags::TAIL) {
            folios += 1;
            max = max.max(f.folio_order());
        }
    }
    (folios, in_large, max)
}

/// Read the whole mapping at `a` page by page; every byte must be the file's.
fn read_all(k: &Kernel, cpu: &CpuGuard<'_>, mm: &mut MmStruct, a: u64, want: &[u8]) {
    let mut buf = vec![0u8; PAGE];
    for (i, chunk) in want.chunks(PAGE).enumerate() {
        k.user_read(cpu, mm, a + (i * PAGE) as u64, &mut buf)
            .unwrap();
        assert_eq!(&buf[..], chunk, "page {i} differs from the file");
    }
}

/// Faults taken to read `pages` of a file through a private read-only mapping, with the
/// cache census after it.
fn read_through_mmap(k: &Kernel, cpu: &CpuGuard<'_>, inode: &Arc<Inode>, data: &[u8]) -> u64 {
    let len = data.len() as u64;
    let f = k.open(inode, FMode::READ).unwrap();
    let mut mm = k.mm_alloc(cpu).unwrap();
    let a = k
        .do_mmap(cpu, &mut mm, Some(&f), 0, len, PROT_READ, MAP_PRIVATE, 0)
        .unwrap();
    read_all(k, cpu, &mut mm, a, data);
    let faults = mm.faults.min_flt + mm.faults.maj_flt;
    check_all(k, &mm);
    assert_eq!(
        mm.counter(MM_FILEPAGES),
        len / PAGE as u64,
        "every page mapped once"
    );
    k.exit_mmap(cpu, mm);
    k.fput(cpu, f);
    faults
}

/// A file read through mmap is cached in large folios (of growing order as readahead
/// proceeds), every byte equal to the file's, in fewer faults than the same file cached in
/// 4 KiB pages: fault-around maps whole folios.
#[test]
fn mmap_read_caches_large_folios_in_fewer_faults() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let pages = 1024;
    let data = file_bytes(pages as u64, 0x1234_5678);
    let before = drain_and_count(&m);
    m.on_cpu(0, |cpu| {
        let small = new_file(k, &data, 20, false);
        let large = new_file(k, &data, 21, true);
        let small_faults = read_through_mmap(k, cpu, &small, &data);
        let large_faults = read_through_mmap(k, cpu, &large, &data);
        let (_, small_in_large, _) = folio_census(k, &small, pages as u64);
        assert_eq!(small_in_large, 0, "a mapping without large folios has none");
        let (folios, in_large, max) = folio_census(k, &large, pages as u64);
        eprintln!(
            "faults: {small_faults} with 4 KiB pages, {large_faults} with large folios \
             ({folios} folios, {in_large} pages in large ones, largest order {max})"
        );
        assert_eq!(large.nrpages(), pages as u64, "the whole file cached");
        assert!(
            in_large >= pages as u64 * 3 / 4,
            "most of the file in large folios: {in_large} of {pages}"
        );
        assert!(max >= 4, "readahead grows the order: largest {max}");
        // Each window's marker folio is left to its own fault (which maps its faulting
        // page and starts the next window), and the next fault maps the rest of it: about
        // two faults per 128 KiB folio, against one per 64 KiB window of small pages plus
        // the markers'.
        assert!(
            large_faults * 4 <= small_faults * 3,
            "whole folios per fault: {large_faults} faults vs {small_faults}"
        );
        // read(2) through the cache sees the same bytes.
        let f = k.open(&large, FMode::READ).unwrap();
        let mut buf = vec![0u8; 3 * PAGE + 100];
        let off = 37 * PAGE as u64 + 11;
        assert_eq!(
            k.filemap_read(cpu, &large, off, &mut buf).unwrap(),
            buf.len()
        );
        assert_eq!(&buf[..], &data[off as usize..off as usize + buf.len()]);
        k.fput(cpu, f);
        assert_eq!(
            k.drop_pagecache(cpu),
            2 * pages as u64,
            "drop_caches frees both"
        );
        assert_eq!(large.nrpages(), 0);
        k.check_pagecache_invariants().unwrap();
        k.evict_inode(cpu, &small).unwrap();
        k.evict_inode(cpu, &large).unwrap();
        k.lru_add_drain_all(cpu);
        k.drain_all_pages(cpu);
    });
    assert_eq!(k.global_node_page_state(NR_FILE_PAGES), 0);
    assert_eq!(k.global_node_page_state(NR_FILE_MAPPED), 0);
    assert_eq!(free_and_pcp(k), before, "pages leaked");
}

/// A shared mapping written in one page of a large folio: writeback writes the folio whole
/// (`nr_written` grows by its pages) and the file holds the new bytes and the old ones
/// around them; a private mapping's write copies 4 KiB and leaves the file and the folio's
/// other pages as they were.
#[test]
fn dirty_large_folio_written_back_whole_and_private_write_copies_4k() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let pages = 256;
    let mut data = file_bytes(pages as u64, 0xfeed);
    let before = drain_and_count(&m);
    m.on_cpu(0, |cpu| {
        let inode = new_file(k, &data, 30, true);
        let f = k.open(&inode, FMode::READ | FMode::WRITE).unwrap();
        let mut mm = k.mm_alloc(cpu).unwrap();
        let len = data.len() as u64;
        let a = k
            .do_mmap(
                cpu,
                &mut mm,
                Some(&f),
                0,
                len,
                PROT_READ | PROT_WRITE,
                MAP_SHARED,
                0,
            )
            .unwrap();
        read_all(k, cpu, &mut mm, a, &data);
        // A page inside a large folio.
        let target = (0..pages as u64)
            .find(|&i| {
                let pfn = inode.cached_pfn(i).unwrap();
                let p = k.mem_map().pfn_to_page(pfn).unwrap();
                p.compound_head().folio_order() >= 3 && i % 8 == 5
            })
            .expect("a page of a large folio");
        let folio = k
            .mem_map()
            .pfn_to_page(inode.cached_pfn(target).unwrap())
            .unwrap()
            .compound_head();
        let nr = folio.folio_nr_pages();
        let off = target * PAGE as u64 + 100;
        let msg = b"written through a shared mapping of a large folio";
        k.user_write(cpu, &mut mm, a + off, msg).unwrap();
        data[off as usize..off as usize + msg.len()].copy_from_slice(msg);
        assert_eq!(
            k.global_node_page_state(NR_FILE_DIRTY),
            nr,
            "the folio is dirty as a whole"
        );
        check_all(k, &mm);
        let written = k.global_node_page_state(NR_WRITTEN);
        k.msync(cpu, &mm, a, len, 4 /* MS_SYNC */).unwrap();
        assert_eq!(k.global_node_page_state(NR_WRITTEN) - written, nr);
        assert_eq!(k.global_node_page_state(NR_FILE_DIRTY), 0);
        let mut on_file = vec![0u8; data.len()];
        inode.data().read_at(0, &mut on_file).unwrap();
        assert!(
            on_file == data,
            "the file holds the written folio and nothing else changed"
        );
        // A second write after writeback faults again (the PTEs were cleaned) and dirties
        // the folio again.
        k.user_write(cpu, &mut mm, a + off, b"again").unwrap();
        data[off as usize..off as usize + 5].copy_from_slice(b"again");
        assert_eq!(k.global_node_page_state(NR_FILE_DIRTY), nr);
        k.write_inode_now(cpu, &inode).unwrap();
        inode.data().read_at(0, &mut on_file).unwrap();
        assert!(on_file == data);
        k.exit_mmap(cpu, mm);

        // Private: a write copies the one page.
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = k
            .do_mmap(
                cpu,
                &mut mm,
                Some(&f),
                0,
                len,
                PROT_READ | PROT_WRITE,
                MAP_PRIVATE,
                0,
            )
            .unwrap();
        read_all(k, cpu, &mut mm, a, &data);
        // smaps counts each page of the folios: Rss all of them, Pss halved while a second
        // address space maps them too; no huge mapping anywhere.
        let kb = pages as u64 * 4;
        assert_eq!(smaps_field(k, &mm, a, "Rss:"), kb);
        assert_eq!(smaps_field(k, &mm, a, "Pss:"), kb);
        let mut other = k.mm_alloc(cpu).unwrap();
        let b = k
            .do_mmap(cpu, &mut other, Some(&f), 0, len, PROT_READ, MAP_SHARED, 0)
            .unwrap();
        read_all(k, cpu, &mut other, b, &data);
        assert_eq!(smaps_field(k, &mm, a, "Rss:"), kb);
        assert_eq!(smaps_field(k, &mm, a, "Pss:"), kb / 2);
        assert_eq!(smaps_field(k, &mm, a, "FilePmdMapped:"), 0);
        assert_eq!(meminfo_field(k, "Mapped:"), kb);
        assert_eq!(meminfo_field(k, "FileHugePages:"), 0);
        k.exit_mmap(cpu, other);
        assert_eq!(smaps_field(k, &mm, a, "Pss:"), kb);
        k.user_write(cpu, &mut mm, a + off, b"private").unwrap();
        assert_eq!(smaps_field(k, &mm, a, "Rss:"), kb);
        assert_eq!(smaps_field(k, &mm, a, "Anonymous:"), 4);
        assert_eq!(mm.counter(MM_ANONPAGES), 1, "one 4 KiB copy");
        assert_eq!(mm.counter(MM_FILEPAGES), pages as u64 - 1);
        let mut mine = data.clone();
        mine[off as usize..off as usize + 7].copy_from_slice(b"private");
        read_all(k, cpu, &mut mm, a, &mine);
        check_all(k, &mm);
        k.exit_mmap(cpu, mm);
        inode.data().read_at(0, &mut on_file).unwrap();
        assert!(on_file == data, "a private write never reaches the file");
        k.fput(cpu, f);
        k.evict_inode(cpu, &inode).unwrap();
        k.lru_add_drain_all(cpu);
        k.drain_all_pages(cpu);
    });
    assert_eq!(free_and_pcp(k), before, "pages leaked");
}

/// `munmap` and `MADV_DONTNEED` of part of a large folio leave the rest mapped with its
/// bytes; reclaim under pressure splits the file's large folios (dirty ones written back
/// first) and frees every page; reading again brings every byte back, and nothing leaks.
#[test]
fn partial_unmap_and_reclaim_of_large_file_folios() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let pages = 512;
    let mut data = file_bytes(pages as u64, 0xabcdef);
    let before = drain_and_count(&m);
    m.on_cpu(0, |cpu| {
        let inode = new_file(k, &data, 40, true);
        let f = k.open(&inode, FMode::READ | FMode::WRITE).unwrap();
        let mut mm = k.mm_alloc(cpu).unwrap();
        let len = data.len() as u64;
        let a = k
            .do_mmap(
                cpu,
                &mut mm,
                Some(&f),
                0,
                len,
                PROT_READ | PROT_WRITE,
                MAP_SHARED,
                0,
            )
            .unwrap();
        read_all(k, cpu, &mut mm, a, &data);
        let (_, in_large, _) = folio_census(k, &inode, pages as u64);
        assert!(in_large > pages as u64 / 2);
        // Drop a page in the middle of a large folio two ways.
        let large_page = |from: u64| {
            (from..pages as u64)
                .find(|&i| {
                    let p = k
                        .mem_map()
                        .pfn_to_page(inode.cached_pfn(i).unwrap())
                        .unwrap();
                    p.test(mmkit::mm::page::PageFlags::TAIL) && i % 4 == 2
                })
                .unwrap()
        };
        let hole = large_page(64);
        k.munmap(cpu, &mut mm, a + hole * PAGE as u64, PAGE as u64)
            .unwrap();
        let dn = large_page(hole + 16);
        k.madvise(
            cpu,
            &mut mm,
            a + dn * PAGE as u64,
            2 * PAGE as u64,
            MADV_DONTNEED,
        )
        .unwrap();
        assert_eq!(mm.counter(MM_FILEPAGES), pages as u64 - 3);
        check_all(k, &mm);
        let mut buf = vec![0u8; PAGE];
        for i in (0..pages).filter(|&i| i as u64 != hole) {
            k.user_read(cpu, &mut mm, a + (i * PAGE) as u64, &mut buf)
                .unwrap();
            assert_eq!(&buf[..], &data[i * PAGE..(i + 1) * PAGE], "page {i}");
        }
        // Dirty a few pages, then reclaim until the cache is empty.
        for i in [3usize, 100, 301, 510] {
            if i as u64 == hole {
                continue;
            }
            let msg = format!("page {i} written before reclaim");
            k.user_write(cpu, &mut mm, a + (i * PAGE + 7) as u64, msg.as_bytes())
                .unwrap();
            data[i * PAGE + 7..i * PAGE + 7 + msg.len()].copy_from_slice(msg.as_bytes());
        }
        k.lru_add_drain(cpu);
        for _ in 0..40 {
            if inode.nrpages() == 0 {
                break;
            }
            k.try_to_free_pages(cpu, mmkit::gfp::GFP_KERNEL);
            check_all(k, &mm);
        }
        assert_eq!(inode.nrpages(), 0, "every folio split and reclaimed");
        assert_eq!(mm.counter(MM_FILEPAGES), 0);
        let mut on_file = vec![0u8; data.len()];
        inode.data().read_at(0, &mut on_file).unwrap();
        assert!(
            on_file == data,
            "dirty pages written back before they were freed"
        );
        // Read again: large folios again, every byte the file's.
        for i in (0..pages).filter(|&i| i as u64 != hole) {
            k.user_read(cpu, &mut mm, a + (i * PAGE) as u64, &mut buf)
                .unwrap();
            assert_eq!(
                &buf[..],
                &data[i * PAGE..(i + 1) * PAGE],
                "page {i} re-read"
            );
        }
        let (_, in_large, _) = folio_census(k, &inode, pages as u64);
        assert!(in_large > pages as u64 / 2, "re-read in large folios");
        check_all(k, &mm);
        k.exit_mmap(cpu, mm);
        k.fput(cpu, f);
        k.evict_inode(cpu, &inode).unwrap();
        k.lru_add_drain_all(cpu);
        k.drain_all_pages(cpu);
    });
    k.check_lru_invariants().unwrap();
    assert_eq!(k.global_node_page_state(NR_FILE_PAGES), 0);
    assert_eq!(free_and_pcp(k), before, "pages leaked");
}

/// A host file (the simulator's files are cached in large folios, as the host's
/// filesystems cache them): read through a shared mapping in large folios with every byte
/// the file's, written in one page of a folio, and `msync` writes the folio back whole to
/// the host file — its bytes read back with `std::fs`.
#[test]
fn host_file_cached_in_large_folios_and_written_back_to_the_host() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let pages = 256;
    let mut data = file_bytes(pages as u64, 0x5eed);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file");
    std::fs::write(&path, &data).unwrap();
    let before = drain_and_count(&m);
    m.on_cpu(0, |cpu| {
        let (inode, _host) = register(&m, cpu, &path);
        assert!(inode.mapping_large_folio_support());
        let f = k.open(&inode, FMode::READ | FMode::WRITE).unwrap();
        let mut mm = k.mm_alloc(cpu).unwrap();
        let len = data.len() as u64;
        let a = k
            .do_mmap(
                cpu,
                &mut mm,
                Some(&f),
                0,
                len,
                PROT_READ | PROT_WRITE,
                MAP_SHARED,
                0,
            )
            .unwrap();
        read_all(k, cpu, &mut mm, a, &data);
        let (_, in_large, _) = folio_census(k, &inode, pages as u64);
        assert!(
            in_large >= pages as u64 / 2,
            "{in_large} pages in large folios"
        );
        let off = 200 * PAGE + 123;
        let msg = b"into the host file through a large folio";
        k.user_write(cpu, &mut mm, a + off as u64, msg).unwrap();
        data[off..off + msg.len()].copy_from_slice(msg);
        k.msync(cpu, &mm, a, len, 4 /* MS_SYNC */).unwrap();
        assert!(
            std::fs::read(&path).unwrap() == data,
            "the host file holds the write"
        );
        check_all(k, &mm);
        k.exit_mmap(cpu, mm);
        k.fput(cpu, f);
        k.lru_add_drain_all(cpu);
        k.drop_pagecache(cpu);
        k.drain_all_pages(cpu);
    });
    assert_eq!(k.global_node_page_state(NR_FILE_PAGES), 0);
    assert_eq!(free_and_pcp(k), before, "pages leaked");
}

/// After the host file shrinks (its folios still cached: the page cache has no partial
/// truncation yet), fault-around maps nothing past the new end of the file, not even the
/// rest of a large folio that straddles it; a read there is SIGBUS.
#[test]
fn fault_around_stops_at_the_end_of_the_file() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let pages = 128;
    let data = file_bytes(pages as u64, 0xe0f);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file");
    std::fs::write(&path, &data).unwrap();
    m.on_cpu(0, |cpu| {
        let (inode, host) = register(&m, cpu, &path);
        let f = k.open(&inode, FMode::READ).unwrap();
        let len = data.len() as u64;
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = k
            .do_mmap(cpu, &mut mm, Some(&f), 0, len, PROT_READ, MAP_PRIVATE, 0)
            .unwrap();
        read_all(k, cpu, &mut mm, a, &data);
        k.munmap(cpu, &mut mm, a, len).unwrap();
        let (_, in_large, _) = folio_census(k, &inode, pages as u64);
        assert!(in_large > 0);
        // The file shrinks to 5 pages and 10 bytes.
        let new_len = 5 * PAGE as u64 + 10;
        resize(k, cpu, &(inode.clone(), host.clone()), &path, new_len);
        // At a 2 MiB boundary, so the whole window lies in one page table.
        let a = k
            .do_mmap(
                cpu,
                &mut mm,
                Some(&f),
                0x4000_0000,
                len,
                PROT_READ,
                MAP_PRIVATE | MAP_FIXED,
                0,
            )
            .unwrap();
        assert_eq!(a, 0x4000_0000);
        let mut buf = vec![0u8; PAGE];
        k.user_read(cpu, &mut mm, a, &mut buf).unwrap();
        assert_eq!(&buf[..], &data[..PAGE]);
        assert_eq!(
            mm.counter(MM_FILEPAGES),
            6,
            "only the file's 6 pages mapped"
        );
        assert!(
            k.user_read(cpu, &mut mm, a + 8 * PAGE as u64, &mut buf)
                .is_err(),
            "a read past the end of the file is SIGBUS"
        );
        check_all(k, &mm);
        k.exit_mmap(cpu, mm);
        k.fput(cpu, f);
        k.lru_add_drain_all(cpu);
        k.drop_pagecache(cpu);
    });
    assert_eq!(k.global_node_page_state(NR_FILE_PAGES), 0);
}

/// The folio whose page the PTE at `va` maps, and that page's index in it.
fn folio_at<'k>(k: &'k Kernel, mm: &MmStruct, va: u64) -> (&'k mmkit::mm::page::Page, u64) {
    let pte = k.pte_lookup(&mm.pt, va).expect("a present PTE");
    let page = k.pfn_to_page(pte.pfn()).unwrap();
    let folio = page.compound_head();
    (folio, pte.pfn().0 - k.mem_map().page_to_pfn(folio).0)
}

/// fork of an address space holding 64 KiB anonymous folios (mTHP) and a private file
/// mapping cached in large folios (with one page copied on write, so fork copies its PTEs):
/// the child's entries map the same frames, runs of each folio copied at once
/// (`copy_present_ptes`) — every page mapped twice, each folio holding one reference per
/// mapping (plus the cache's) —; writes in the child and in the parent copy 4 KiB each and
/// neither sees the other's bytes; after the child exits, and again after the parent does,
/// the counts are exactly the mappings left, and nothing leaks.
#[test]
fn fork_copies_runs_of_anon_and_file_large_folios() {
    use mmkit::mm::huge_memory::ThpPolicy;
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    k.set_mthp_enabled(64, ThpPolicy::Always).unwrap();
    let pages = 256usize;
    let data = file_bytes(pages as u64, 0x5eed);
    let before = drain_and_count(&m);
    m.on_cpu(0, |cpu| {
        let inode = new_file(k, &data, 41, true);
        let f = k.open(&inode, FMode::READ).unwrap();
        let mut pm = k.mm_alloc(cpu).unwrap();
        let len = data.len() as u64;
        let fa = k
            .do_mmap(
                cpu,
                &mut pm,
                Some(&f),
                0,
                len,
                PROT_READ | PROT_WRITE,
                MAP_PRIVATE,
                0,
            )
            .unwrap();
        read_all(k, cpu, &mut pm, fa, &data);
        // A private write: page 3 becomes the parent's own copy (and the VMA gets an
        // anon_vma, so fork copies its PTEs).
        k.user_write(cpu, &mut pm, fa + 3 * PAGE as u64, b"parent's copy")
            .unwrap();
        let aa = 0x4000_0000u64;
        k.mmap(
            cpu,
            &mut pm,
            aa,
            0x40000,
            PROT_READ | PROT_WRITE,
            MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
            0,
        )
        .unwrap();
        for i in 0..64u64 {
            k.user_write(cpu, &mut pm, aa + (i << 12), &(i * 7 + 1).to_le_bytes())
                .unwrap();
        }
        k.lru_add_drain(cpu);
        // A large file folio that does not hold page 3, and the anonymous folios.
        let (ff, first) = (16..pages as u64)
            .map(|i| folio_at(k, &pm, fa + i * PAGE as u64))
            .find(|(f, _)| f.folio_order() >= 2)
            .expect("the file is cached in large folios");
        assert_eq!(first, 0, "fault-around mapped the folio whole, in order");
        let fnr = ff.folio_nr_pages();
        let fidx = ff.index();
        assert_eq!(ff.refcount() as u64, 2 * fnr, "the cache's and one per PTE");
        let anon: Vec<_> = (0..4u64)
            .map(|c| folio_at(k, &pm, aa + c * 0x10000).0)
            .collect();
        assert!(anon
            .iter()
            .all(|f| f.folio_order() == 4 && f.refcount() == 16));
        let mut cm = k.dup_mmap(cpu, &pm).unwrap();
        check_all(k, &pm);
        check_all(k, &cm);
        assert_eq!(cm.counter(MM_FILEPAGES), pages as u64 - 1);
        assert_eq!(cm.counter(MM_ANONPAGES), 65);
        for i in 0..pages as u64 {
            let va = fa + i * PAGE as u64;
            assert_eq!(
                k.pte_lookup(&cm.pt, va),
                k.pte_lookup(&pm.pt, va).map(|p| p.mkold()),
                "file page {i}"
            );
        }
        for i in 0..64u64 {
            let va = aa + (i << 12);
            let (p, c) = (
                k.pte_lookup(&pm.pt, va).unwrap(),
                k.pte_lookup(&cm.pt, va).unwrap(),
            );
            assert_eq!(p.pfn(), c.pfn(), "anon page {i}");
            assert!(
                !p.writable() && !c.writable(),
                "anon page {i} write-protected in both"
            );
        }
        for i in 0..fnr {
            assert_eq!(ff.folio_page(i).mapcount(), 2, "file folio page {i}");
        }
        assert_eq!(ff.refcount() as u64, 3 * fnr);
        for (c, f) in anon.iter().enumerate() {
            for i in 0..16 {
                assert_eq!(f.folio_page(i).mapcount(), 2, "anon folio {c} page {i}");
            }
            assert_eq!(f.refcount(), 32, "anon folio {c}");
        }
        // The child sees every byte.
        let mut want = data.clone();
        want[3 * PAGE..3 * PAGE + 13].copy_from_slice(b"parent's copy");
        read_all(k, cpu, &mut cm, fa, &want);
        let mut got = [0u8; 8];
        for i in 0..64u64 {
            k.user_read(cpu, &mut cm, aa + (i << 12), &mut got).unwrap();
            assert_eq!(u64::from_le_bytes(got), i * 7 + 1, "child anon page {i}");
        }
        // Writes on both sides: 4 KiB copies each.
        k.user_write(cpu, &mut cm, aa + (5 << 12), b"child!!!")
            .unwrap();
        k.user_write(cpu, &mut pm, aa + (20 << 12), b"parent!!")
            .unwrap();
        let fw = (fidx + 1) * PAGE as u64;
        k.user_write(cpu, &mut cm, fa + fw, b"child's file copy")
            .unwrap();
        k.lru_add_drain(cpu);
        k.user_read(cpu, &mut pm, aa + (5 << 12), &mut got).unwrap();
        assert_eq!(u64::from_le_bytes(got), 5 * 7 + 1);
        k.user_read(cpu, &mut cm, aa + (20 << 12), &mut got)
            .unwrap();
        assert_eq!(u64::from_le_bytes(got), 20 * 7 + 1);
        k.user_read(cpu, &mut cm, aa + (5 << 12), &mut got).unwrap();
        assert_eq!(&got, b"child!!!");
        k.user_read(cpu, &mut pm, aa + (20 << 12), &mut got)
            .unwrap();
        assert_eq!(&got, b"parent!!");
        read_all(k, cpu, &mut pm, fa, &want);
        let mut cwant = want.clone();
        cwant[fw as usize..fw as usize + 17].copy_from_slice(b"child's file copy");
        read_all(k, cpu, &mut cm, fa, &cwant);
        check_all(k, &pm);
        check_all(k, &cm);
        k.exit_mmap(cpu, cm);
        k.lru_add_drain(cpu);
        // The parent's mappings only: anon folio 1 lost page 4 to the parent's copy, the
        // file folio is mapped once per page.
        for (c, f) in anon.iter().enumerate() {
            for i in 0..16 {
                let want = i32::from(!(c == 1 && i == 4));
                assert_eq!(f.folio_page(i).mapcount(), want, "anon folio {c} page {i}");
            }
            assert_eq!(f.refcount(), if c == 1 { 15 } else { 16 }, "anon folio {c}");
        }
        for i in 0..fnr {
            assert_eq!(ff.folio_page(i).mapcount(), 1, "file folio page {i}");
        }
        assert_eq!(ff.refcount() as u64, 2 * fnr);
        assert_eq!(pm.counter(MM_ANONPAGES), 65);
        assert_eq!(pm.counter(MM_FILEPAGES), pages as u64 - 1);
        read_all(k, cpu, &mut pm, fa, &want);
        check_all(k, &pm);
        k.exit_mmap(cpu, pm);
        assert_eq!(ff.refcount() as u64, fnr, "the cache's references only");
        assert_eq!(k.global_node_page_state(NR_FILE_MAPPED), 0);
        k.fput(cpu, f);
        k.evict_inode(cpu, &inode).unwrap();
        k.lru_add_drain_all(cpu);
        k.drain_all_pages(cpu);
    });
    k.check_lru_invariants().unwrap();
    k.check_anon_vma_invariants().unwrap();
    assert_eq!(k.nr_anon_vmas(), 0, "anon_vmas leaked");
    assert_eq!(k.global_node_page_state(NR_FILE_PAGES), 0);
    assert_eq!(free_and_pcp(k), before, "pages leaked");
}

/// munmap from inside one large page-cache folio to inside the next: each folio's run of
/// PTEs is cleared in one batch that stops at the range's ends; the pages outside stay
/// mapped with the file's bytes, each page's mapcount and the folios' references are the
/// PTEs left (plus the cache's), and `Mapped:` drops by the pages unmapped.
#[test]
fn munmap_across_large_file_folios_keeps_the_rest() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let pages = 256usize;
    let data = file_bytes(pages as u64, 0xf01105);
    let before = drain_and_count(&m);
    m.on_cpu(0, |cpu| {
        let inode = new_file(k, &data, 42, true);
        let f = k.open(&inode, FMode::READ).unwrap();
        let mut mm = k.mm_alloc(cpu).unwrap();
        let len = data.len() as u64;
        let a = k
            .do_mmap(cpu, &mut mm, Some(&f), 0, len, PROT_READ, MAP_PRIVATE, 0)
            .unwrap();
        read_all(k, cpu, &mut mm, a, &data);
        // Two adjacent large folios.
        let (f1, _) = (32..pages as u64)
            .map(|i| folio_at(k, &mm, a + i * PAGE as u64))
            .find(|(f, i)| f.folio_order() >= 2 && *i == 0)
            .unwrap();
        let (i1, n1) = (f1.index(), f1.folio_nr_pages());
        let (f2, _) = folio_at(k, &mm, a + (i1 + n1) * PAGE as u64);
        let (i2, n2) = (f2.index(), f2.folio_nr_pages());
        assert!(f2.folio_order() >= 2 && i2 == i1 + n1);
        let mapped0 = k.global_node_page_state(NR_FILE_MAPPED);
        // From the second page of the first to the one before the last of the second.
        let (lo, hi) = (i1 + 1, i2 + n2 - 1);
        k.munmap(cpu, &mut mm, a + lo * PAGE as u64, (hi - lo) * PAGE as u64)
            .unwrap();
        assert_eq!(mm.counter(MM_FILEPAGES), pages as u64 - (hi - lo));
        assert_eq!(
            k.global_node_page_state(NR_FILE_MAPPED),
            mapped0 - (hi - lo)
        );
        for (f, i0, n) in [(f1, i1, n1), (f2, i2, n2)] {
            let mut left = 0;
            for j in 0..n {
                let want = i32::from(!(lo..hi).contains(&(i0 + j)));
                assert_eq!(f.folio_page(j).mapcount(), want, "index {}", i0 + j);
                left += want;
            }
            assert_eq!(f.nr_pages_mapped(), left);
            assert_eq!(
                f.refcount() as u64,
                n + left as u64,
                "the cache's and the PTEs'"
            );
        }
        let mut buf = vec![0u8; PAGE];
        for i in 0..pages {
            let r = k.user_read(cpu, &mut mm, a + (i * PAGE) as u64, &mut buf);
            if (lo..hi).contains(&(i as u64)) {
                assert!(r.is_err(), "page {i} is unmapped");
            } else {
                r.unwrap();
                assert_eq!(&buf[..], &data[i * PAGE..(i + 1) * PAGE], "page {i}");
            }
        }
        check_all(k, &mm);
        k.exit_mmap(cpu, mm);
        assert_eq!(k.global_node_page_state(NR_FILE_MAPPED), 0);
        k.fput(cpu, f);
        k.evict_inode(cpu, &inode).unwrap();
        k.lru_add_drain_all(cpu);
        k.drain_all_pages(cpu);
    });
    k.check_lru_invariants().unwrap();
    assert_eq!(k.global_node_page_state(NR_FILE_PAGES), 0);
    assert_eq!(free_and_pcp(k), before, "pages leaked");
}

/// The order of each folio caching pages `range` of `inode` (one entry per folio).
fn folio_orders(k: &Kernel, inode: &Inode, range: std::ops::Range<u64>) -> Vec<(u64, u32)> {
    range
        .filter_map(|i| {
            let p = k.mem_map().pfn_to_page(inode.cached_pfn(i)?).unwrap();
            let f = p.compound_head();
            (f.index() == i).then(|| (i, f.folio_order()))
        })
        .collect()
}

/// `generic_perform_write`: a 16 MiB write is cached in PMD-sized folios (as ext4 caches
/// one), which a mapping without advice then maps by PMDs, one fault per 2 MiB; a 76 KiB
/// write at 12 KiB into an uncached file gets folios its chunks' lengths and alignment allow
/// (order 0 at page 3, 16 KiB at page 4, 32 KiB at page 8, 16 KiB at page 16, then order 0
/// where 8 KiB are left: no order 1), its
/// partial pages read from the store around the bytes written; a write into cached pages
/// changes them in place. Every byte reads back through mappings and `read`.
#[test]
fn writes_are_cached_in_folios_of_their_size() {
    let m = boot_mem(192, 1, "");
    let k = &m.kernel;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big");
    let pages = 4096u64;
    let data = file_bytes(pages, 0x5eed);
    std::fs::write(&path, &data).unwrap();
    let before = {
        m.settle();
        free_and_pcp(k)
    };
    m.on_cpu(0, |cpu| {
        let (inode, _) = register(&m, cpu, &path);
        // What a forwarded write(fd, data, 16 MiB) at 0 does once the host wrote it.
        k.generic_perform_write(cpu, &inode, 0, &data);
        let orders = folio_orders(k, &inode, 0..pages);
        assert_eq!(orders.len(), 8, "{orders:?}");
        assert!(orders.iter().all(|&(_, o)| o == 9), "{orders:?}");
        assert_eq!(meminfo_field(k, "FileHugePages:"), 16384);
        k.check_pagecache_invariants().unwrap();
        let f = k.open(&inode, FMode::READ).unwrap();
        let mut mm = k.mm_alloc(cpu).unwrap();
        let len = pages * PAGE as u64;
        let a = k
            .do_mmap(cpu, &mut mm, Some(&f), 0, len, PROT_READ, MAP_PRIVATE, 0)
            .unwrap();
        let faults = mm.faults;
        read_all(k, cpu, &mut mm, a, &data);
        assert_eq!(
            (
                mm.faults.min_flt - faults.min_flt,
                mm.faults.maj_flt - faults.maj_flt
            ),
            (8, 0),
            "one minor fault per 2 MiB"
        );
        assert_eq!(smaps_field(k, &mm, a, "FilePmdMapped:"), 16384);
        check_all(k, &mm);
        k.exit_mmap(cpu, mm);
        k.fput(cpu, f);
        k.lru_add_drain_all(cpu);
        k.drop_pagecache(cpu);
    });
    let path2 = dir.path().join("small");
    let mut small = file_bytes(32, 0x51);
    std::fs::write(&path2, &small).unwrap();
    m.on_cpu(0, |cpu| {
        let (inode, _) = register(&m, cpu, &path2);
        // 76 KiB at 12 KiB + 100: pages 3 and 22 partly, 4..22 whole.
        let (off, n) = (3 * PAGE + 100, 19 * PAGE);
        let new = file_bytes(19, 0x77);
        small[off..off + n].copy_from_slice(&new);
        std::fs::write(&path2, &small).unwrap();
        k.generic_perform_write(cpu, &inode, off as u64, &new);
        assert_eq!(
            folio_orders(k, &inode, 0..32),
            [(3, 0), (4, 2), (8, 3), (16, 2), (20, 0), (21, 0), (22, 0)],
        );
        // A write into cached pages changes them in place.
        small[5 * PAGE..5 * PAGE + 8].copy_from_slice(b"in place");
        std::fs::write(&path2, &small).unwrap();
        k.generic_perform_write(cpu, &inode, 5 * PAGE as u64, b"in place");
        assert_eq!(folio_orders(k, &inode, 0..32).len(), 7);
        let mut back = vec![0u8; small.len()];
        assert_eq!(
            k.filemap_read(cpu, &inode, 0, &mut back).unwrap(),
            small.len()
        );
        assert_eq!(back, small, "read through the cache");
        let f = k.open(&inode, FMode::READ).unwrap();
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = k
            .do_mmap(
                cpu,
                &mut mm,
                Some(&f),
                0,
                small.len() as u64,
                PROT_READ,
                MAP_SHARED,
                0,
            )
            .unwrap();
        read_all(k, cpu, &mut mm, a, &small);
        check_all(k, &mm);
        k.exit_mmap(cpu, mm);
        k.fput(cpu, f);
        k.lru_add_drain_all(cpu);
        k.drop_pagecache(cpu);
    });
    assert_eq!(k.global_node_page_state(NR_FILE_PAGES), 0);
    m.settle();
    assert_eq!(free_and_pcp(k), before, "pages leaked");
}
