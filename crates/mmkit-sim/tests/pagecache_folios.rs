//! Large folios in the page cache (a mapping that opted in with `mapping_set_large_folios`):
//! mmap read-around and async readahead cache the file in large folios; fault-around maps a
//! whole folio per fault; writeback writes a dirty folio whole; a private write copies
//! 4 KiB; reclaim splits the folios and frees them, and re-reading brings the bytes back;
//! partial unmaps leave the rest mapped; `drop_caches` and teardown leave nothing behind.
//! Every byte is checked against the file, and every subsystem's checker runs after each
//! step.

mod common;
use common::{boot_mem, free_and_pcp};
use mmkit::fs::inode::{FMode, Inode, RamFile};
use mmkit::fs::proc::task_mmu::proc_pid_smaps;
use mmkit::mm::filemap::{NR_FILE_DIRTY, NR_FILE_MAPPED, NR_FILE_PAGES, NR_WRITTEN};
use mmkit::mm::madvise::MADV_DONTNEED;
use mmkit::mm::mm_types::{MmStruct, MM_ANONPAGES, MM_FILEPAGES};
use mmkit::mm::mmap::*;
use mmkit::{CpuGuard, Kernel};
use std::sync::Arc;

const PAGE: usize = 4096;

/// File bytes that differ in every page and every offset.
fn file_bytes(pages: usize, seed: u64) -> Vec<u8> {
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

fn kb_value(s: &str) -> u64 {
    s.trim().trim_end_matches(" kB").trim().parse().unwrap()
}

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

fn new_file(k: &Kernel, data: &[u8], ino: u64, large: bool) -> Arc<Inode> {
    let inode = k.new_inode(Box::new(RamFile::new(data.to_vec())), (0, 2), ino, "/f");
    if large {
        inode.mapping_set_large_folios();
    }
    inode
}

/// Free pages (buddy and per-CPU lists) after every CPU batch went back.
fn drain_and_count(m: &mmkit_sim::Machine) -> u64 {
    m.on_cpu(0, |cpu| {
        m.kernel.lru_add_drain_all(cpu);
        m.kernel.drain_all_pages(cpu);
    });
    free_and_pcp(&m.kernel)
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
    let data = file_bytes(pages, 0x1234_5678);
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
    let mut data = file_bytes(pages, 0xfeed);
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
    let mut data = file_bytes(pages, 0xabcdef);
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
    let mut data = file_bytes(pages, 0x5eed);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file");
    std::fs::write(&path, &data).unwrap();
    let before = drain_and_count(&m);
    m.on_cpu(0, |cpu| {
        let rw = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let (inode, _host) = m
            .hostfs
            .inode_of(k, rw, &path.to_string_lossy(), true)
            .unwrap();
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
    let data = file_bytes(pages, 0xe0f);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file");
    std::fs::write(&path, &data).unwrap();
    m.on_cpu(0, |cpu| {
        let rw = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let (inode, host) = m
            .hostfs
            .inode_of(k, rw, &path.to_string_lossy(), true)
            .unwrap();
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
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(new_len)
            .unwrap();
        host.set_size(new_len);
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
