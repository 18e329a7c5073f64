//! Review of `truncate_pagecache` (a host file that shrinks) and `generic_perform_write`
//! (a forwarded write cached in folios of its size): dirty and mlocked pages past the end,
//! forked private copies, a large folio that cannot be split, faults, reclaim and compaction
//! racing a truncation on another CPU, writes over cached and uncached folios, past the end,
//! under memory pressure, and programs on /dev/kvm compared with the host kernel.

mod common;

use common::boot_mem;
use common::files::*;
use mmkit::arch::x86_64::pgtable::HPAGE_PMD_SIZE;
use mmkit::fs::inode::{FMode, Inode};
use mmkit::mm::filemap::{NR_FILE_DIRTY, NR_FILE_PAGES};
use mmkit::mm::madvise::MADV_HUGEPAGE;
use mmkit::mm::mm_types::{MmStruct, VmFlags, MM_ANONPAGES};
use mmkit::mm::mmap::*;
use mmkit::{CpuGuard, Kernel};
use mmkit_sim::hostfs::{truncate_setsize, HostEntry};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

const PAGE: u64 = 4096;

fn check_all(k: &Kernel, mms: &[&MmStruct]) {
    k.check_pagecache_invariants().unwrap();
    k.check_lru_invariants().unwrap();
    for mm in mms {
        k.check_mm_invariants(mm).unwrap();
    }
    k.check_deferred_split_invariants().unwrap();
    k.check_invariants().unwrap();
    assert_eq!(k.bad_page_reports(), 0, "{:?}", k.dmesg());
}

/// `NR_FILE_DIRTY` of node 0, signed (the global reader clamps a negative count to 0).
fn nr_dirty(k: &Kernel) -> i64 {
    k.node_page_state(0, NR_FILE_DIRTY)
}

/// `pwrite` through the machine: the host file gets the bytes, then the machine learns its
/// size and caches them (`write_through_cache`).
fn host_write(k: &Kernel, cpu: &CpuGuard<'_>, entry: &HostEntry, path: &Path, off: u64, d: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(d, off).unwrap();
    let size = f.metadata().unwrap().len();
    truncate_setsize(k, cpu, entry, size);
    k.generic_perform_write(cpu, &entry.0, off, d);
}

/// The whole file read through the page cache (`filemap_read`), as it answers.
fn read_strict(k: &Kernel, cpu: &CpuGuard<'_>, inode: &Inode) -> Result<Vec<u8>, mmkit::Errno> {
    let mut buf = vec![0u8; inode.size() as usize + 3 * PAGE as usize];
    let n = k.filemap_read(cpu, inode, 0, &mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

/// The whole file read through the page cache, tried again when `filemap_read` fails with
/// `EIO` because reclaim took a page it had just read (see
/// `filemap_read_under_memory_pressure_does_not_fail`).
fn cached_contents(k: &Kernel, cpu: &CpuGuard<'_>, inode: &Inode) -> Vec<u8> {
    let size = inode.size() as usize;
    let mut out = vec![0u8; size];
    let mut off = 0;
    while off < size {
        let n = (size - off).min(PAGE as usize);
        let mut tries = 0;
        loop {
            match k.filemap_read(cpu, inode, off as u64, &mut out[off..off + n]) {
                Ok(r) => {
                    assert_eq!(r, n, "short read at {off}");
                    break;
                }
                Err(mmkit::Errno::EIO) if tries < 1000 => tries += 1,
                Err(e) => panic!("filemap_read at {off}: {e:?} ({tries} tries)"),
            }
        }
        off += n;
    }
    let mut past = [0u8; 1];
    assert_eq!(
        k.filemap_read(cpu, inode, size as u64, &mut past).unwrap(),
        0
    );
    out
}

/// The order of each folio caching pages `range` of `inode` (one entry per folio head).
fn folio_orders(k: &Kernel, inode: &Inode, range: std::ops::Range<u64>) -> Vec<(u64, u32)> {
    range
        .filter_map(|i| {
            let p = k.mem_map().pfn_to_page(inode.cached_pfn(i)?).unwrap();
            let f = p.compound_head();
            (f.index() == i).then(|| (i, f.folio_order()))
        })
        .collect()
}

/// Every page of a mapping of `len` bytes at `a`: pages inside `model` read as it (zeroes
/// past its end in the last page), pages wholly past it fault (`SIGBUS`).
fn check_mapping(
    k: &Kernel,
    cpu: &CpuGuard<'_>,
    mm: &mut MmStruct,
    a: u64,
    len: u64,
    model: &[u8],
) {
    let mut buf = vec![0u8; PAGE as usize];
    for i in 0..len / PAGE {
        let off = (i * PAGE) as usize;
        let r = k.user_read(cpu, mm, a + i * PAGE, &mut buf);
        if off < model.len() {
            r.unwrap_or_else(|e| panic!("page {i} inside the file: {e:?}"));
            let n = (model.len() - off).min(PAGE as usize);
            assert_eq!(&buf[..n], &model[off..off + n], "page {i}");
            assert!(buf[n..].iter().all(|&b| b == 0), "page {i}: tail not zero");
        } else {
            assert!(
                r.is_err(),
                "page {i} past the end (size {}) readable",
                model.len()
            );
        }
    }
}

/// A 4 MiB file in a shared writable `MADV_HUGEPAGE` mapping, every page written through it
/// (dirty), shrinks into its second THP: the dirty pages past the end are discarded and
/// uncounted, the dirty count never goes negative, writeback afterwards writes only up to
/// the end (the host file keeps its new size); a second shrink while the page holding the end
/// is dirty again does the same; what is left reads back from the host file.
#[test]
fn dirty_shared_pages_past_the_end_are_discarded_and_uncounted() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let pages = 1024u64;
    let mut data = file_bytes(pages, 0xd1d1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file");
    std::fs::write(&path, &data).unwrap();
    let before = drain_and_count(&m);
    let dirty0 = nr_dirty(k);
    let len = pages * PAGE;
    m.on_cpu(0, |cpu| {
        let entry = register(&m, cpu, &path);
        let inode = entry.0.clone();
        let f = k.open(&inode, FMode::READ | FMode::WRITE).unwrap();
        let mut mm = k.mm_alloc(cpu).unwrap();
        let rw = PROT_READ | PROT_WRITE;
        let a = k
            .do_mmap(cpu, &mut mm, Some(&f), 0, len, rw, MAP_SHARED, 0)
            .unwrap();
        k.madvise(cpu, &mut mm, a, len, MADV_HUGEPAGE).unwrap();
        read_pages(k, cpu, &mut mm, a, &data, 0..pages);
        for i in 0..pages {
            let b = [i as u8 ^ 0x5a; 8];
            k.user_write(cpu, &mut mm, a + i * PAGE + 17, &b).unwrap();
            data[(i * PAGE + 17) as usize..(i * PAGE + 25) as usize].copy_from_slice(&b);
        }
        check_all(k, &[&mm]);
        let new_len = HPAGE_PMD_SIZE + 3 * PAGE + 100;
        resize(k, cpu, &entry, &path, new_len);
        check_all(k, &[&mm]);
        let d = nr_dirty(k) - dirty0;
        assert!(d >= 0, "NR_FILE_DIRTY went negative: {d}");
        assert!(
            d <= (new_len.div_ceil(PAGE)) as i64,
            "{d} dirty pages counted, only {} left in the file",
            new_len.div_ceil(PAGE)
        );
        data.truncate(new_len as usize);
        check_mapping(k, cpu, &mut mm, a, len, &data);
        assert_eq!(cached_contents(k, cpu, &inode), data);
        // Dirty the page holding the end again (bytes before the end only) and shrink again
        // into the first THP.
        let eof_page = new_len / PAGE;
        k.user_write(cpu, &mut mm, a + eof_page * PAGE, b"again")
            .unwrap();
        data[(eof_page * PAGE) as usize..(eof_page * PAGE + 5) as usize].copy_from_slice(b"again");
        let newer = HPAGE_PMD_SIZE / 2 + 7;
        resize(k, cpu, &entry, &path, newer);
        check_all(k, &[&mm]);
        data.truncate(newer as usize);
        let d = nr_dirty(k) - dirty0;
        assert!(d >= 0 && d <= newer.div_ceil(PAGE) as i64, "dirty {d}");
        check_mapping(k, cpu, &mut mm, a, len, &data);
        k.write_inode_now(cpu, &inode).unwrap();
        assert_eq!(nr_dirty(k), dirty0, "dirty pages left after writeback");
        let host = std::fs::read(&path).unwrap();
        assert_eq!(
            host.len() as u64,
            newer,
            "writeback changed the host file's size"
        );
        assert_eq!(host, data, "host file after writeback");
        check_all(k, &[&mm]);
        k.exit_mmap(cpu, mm);
        k.fput(cpu, f);
        k.lru_add_drain_all(cpu);
        k.drop_pagecache(cpu);
    });
    assert_eq!(nr_dirty(k), dirty0);
    assert_eq!(k.global_node_page_state(NR_FILE_PAGES), 0);
    assert_eq!(drain_and_count(&m), before, "pages leaked");
}

/// An mlocked shared mapping of a file (a THP-advised first 2 MiB, order-0 pages after)
/// shrinks, then empties: the locked pages past the end are unmapped and freed like any
/// other (truncation ignores mlock), the rest stay mapped and readable, the VMA stays
/// locked, nothing leaks or reports a bad page. (mmkit does not model the unevictable LRU
/// for mlock: `Mlocked` is always 0, so the counters are not checked.)
#[test]
fn mlocked_pages_past_the_end_are_freed() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let pages = 1024u64;
    let data = file_bytes(pages, 0x3103);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file");
    std::fs::write(&path, &data).unwrap();
    let before = drain_and_count(&m);
    let len = pages * PAGE;
    m.on_cpu(0, |cpu| {
        let entry = register(&m, cpu, &path);
        let f = k.open(&entry.0, FMode::READ).unwrap();
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = k
            .do_mmap(cpu, &mut mm, Some(&f), 0, len, PROT_READ, MAP_SHARED, 0)
            .unwrap();
        k.madvise(cpu, &mut mm, a, HPAGE_PMD_SIZE, MADV_HUGEPAGE)
            .unwrap();
        k.mlock(cpu, &mut mm, a, len).unwrap();
        assert_eq!(entry.0.nrpages(), pages, "mlock faulted everything in");
        check_all(k, &[&mm]);
        let new_len = 300 * PAGE + 1;
        resize(k, cpu, &entry, &path, new_len);
        check_all(k, &[&mm]);
        assert_eq!(entry.0.nrpages(), 301, "pages cached after the shrink");
        let mut model = data.clone();
        model.truncate(new_len as usize);
        check_mapping(k, cpu, &mut mm, a, len, &model);
        assert!(mm.vmas().all(|v| v.vm_flags.contains(VmFlags::VM_LOCKED)));
        resize(k, cpu, &entry, &path, 0);
        check_all(k, &[&mm]);
        assert_eq!(entry.0.nrpages(), 0);
        check_mapping(k, cpu, &mut mm, a, len, &[]);
        k.exit_mmap(cpu, mm);
        k.fput(cpu, f);
        k.lru_add_drain_all(cpu);
        k.drop_pagecache(cpu);
        check_all(k, &[]);
    });
    assert_eq!(drain_and_count(&m), before, "pages leaked");
}

/// A private writable mapping with copies of pages on both sides of the coming end is
/// forked; the child copies one more; the file shrinks: in parent and child the copies past
/// the end go (`even_cows`), the ones before stay, each child's and parent's counters agree.
#[test]
fn forked_private_copies_past_the_end_go_in_parent_and_child() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let pages = 64u64;
    let data = file_bytes(pages, 0xf0f0);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file");
    std::fs::write(&path, &data).unwrap();
    let before = drain_and_count(&m);
    let len = pages * PAGE;
    m.on_cpu(0, |cpu| {
        let entry = register(&m, cpu, &path);
        let f = k.open(&entry.0, FMode::READ).unwrap();
        let mut parent = k.mm_alloc(cpu).unwrap();
        let rw = PROT_READ | PROT_WRITE;
        let a = k
            .do_mmap(cpu, &mut parent, Some(&f), 0, len, rw, MAP_PRIVATE, 0)
            .unwrap();
        k.user_write(cpu, &mut parent, a + 5 * PAGE, b"P5").unwrap();
        k.user_write(cpu, &mut parent, a + 40 * PAGE, b"P40")
            .unwrap();
        let mut child = k.dup_mmap(cpu, &parent).unwrap();
        k.user_write(cpu, &mut child, a + 41 * PAGE, b"C41")
            .unwrap();
        k.user_write(cpu, &mut child, a + 6 * PAGE, b"C6").unwrap();
        check_all(k, &[&parent, &child]);
        let new_len = 20 * PAGE + 1;
        resize(k, cpu, &entry, &path, new_len);
        check_all(k, &[&parent, &child]);
        let mut b = [0u8; 3];
        for mm in [&mut parent, &mut child] {
            for i in [20u64, 21, 40, 41, 63] {
                let r = k.user_read(cpu, mm, a + i * PAGE, &mut b);
                assert_eq!(r.is_err(), i > 20, "page {i}");
            }
            k.user_read(cpu, mm, a + 5 * PAGE, &mut b[..2]).unwrap();
            assert_eq!(&b[..2], b"P5");
        }
        k.user_read(cpu, &mut child, a + 6 * PAGE, &mut b[..2])
            .unwrap();
        assert_eq!(&b[..2], b"C6");
        // The parent's page 5 (shared with the child) and the child's page 6.
        assert_eq!(parent.counter(MM_ANONPAGES), 1, "parent's copies");
        assert_eq!(child.counter(MM_ANONPAGES), 2, "child's copies");
        k.exit_mmap(cpu, child);
        k.exit_mmap(cpu, parent);
        k.fput(cpu, f);
        k.lru_add_drain_all(cpu);
        k.drop_pagecache(cpu);
        check_all(k, &[]);
    });
    assert_eq!(drain_and_count(&m), before, "pages leaked");
}

/// The file THP the new end cuts cannot be split (someone holds a reference to it, as a
/// `get_user_pages` pin would) and is dirty through a shared mapping: it stays cached whole,
/// but nothing past the end maps (no PMD over it, no PTE past the end, `SIGBUS` there),
/// `read` stops at the end, writeback writes only up to the end, and once the reference
/// goes and the file grows back, what it grows by reads as zeroes everywhere.
#[test]
fn a_pinned_dirty_thp_cut_by_the_end_shows_nothing_past_it() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let pages = 1024u64;
    let mut data = file_bytes(pages, 0x9191);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file");
    std::fs::write(&path, &data).unwrap();
    let before = drain_and_count(&m);
    let len = pages * PAGE;
    m.on_cpu(0, |cpu| {
        let entry = register(&m, cpu, &path);
        let inode = entry.0.clone();
        let f = k.open(&inode, FMode::READ | FMode::WRITE).unwrap();
        let mut mm = k.mm_alloc(cpu).unwrap();
        let rw = PROT_READ | PROT_WRITE;
        let a = k
            .do_mmap(cpu, &mut mm, Some(&f), 0, len, rw, MAP_SHARED, 0)
            .unwrap();
        k.madvise(cpu, &mut mm, a, len, MADV_HUGEPAGE).unwrap();
        read_pages(k, cpu, &mut mm, a, &data, 0..pages);
        assert_eq!(meminfo_field(k, "FilePmdMapped:"), 4096);
        // Dirty the second THP on both sides of the coming end.
        for i in [512u64, 600, 1000] {
            k.user_write(cpu, &mut mm, a + i * PAGE, b"dirty").unwrap();
            data[(i * PAGE) as usize..(i * PAGE + 5) as usize].copy_from_slice(b"dirty");
        }
        let pin = k.find_get_page(&inode, 700).unwrap().compound_head();
        assert_eq!(pin.folio_order(), 9);
        let new_len = HPAGE_PMD_SIZE + 100 * PAGE + 10;
        resize(k, cpu, &entry, &path, new_len);
        check_all(k, &[&mm]);
        data.truncate(new_len as usize);
        check_mapping(k, cpu, &mut mm, a, len, &data);
        assert_eq!(cached_contents(k, cpu, &inode), data);
        assert_eq!(
            meminfo_field(k, "FilePmdMapped:"),
            2048,
            "a PMD maps the cut THP past the end"
        );
        k.write_inode_now(cpu, &inode).unwrap();
        let host = std::fs::read(&path).unwrap();
        assert_eq!(host.len() as u64, new_len, "writeback wrote past the end");
        assert_eq!(host, data);
        k.folio_put(cpu, pin);
        check_all(k, &[&mm]);
        // Grows back: zeroes past the old end, through read and the mapping.
        resize(k, cpu, &entry, &path, len);
        data.resize(len as usize, 0);
        assert_eq!(cached_contents(k, cpu, &inode), data);
        check_mapping(k, cpu, &mut mm, a, len, &data);
        check_all(k, &[&mm]);
        k.exit_mmap(cpu, mm);
        k.fput(cpu, f);
        k.lru_add_drain_all(cpu);
        k.drop_pagecache(cpu);
    });
    assert_eq!(k.global_node_page_state(NR_FILE_PAGES), 0);
    assert_eq!(drain_and_count(&m), before, "pages leaked");
}

/// A tiny xorshift for the randomized tests (deterministic by seed).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A size near something interesting: 0, a page or folio boundary, a byte either side.
fn interesting_size(rng: &mut Rng, max: u64) -> u64 {
    let base = match rng.below(6) {
        0 => 0,
        1 => rng.below(max / PAGE) * PAGE,
        2 => rng.below(max / HPAGE_PMD_SIZE + 1) * HPAGE_PMD_SIZE,
        3 => rng.below(max / (16 * PAGE)) * 16 * PAGE,
        _ => rng.below(max),
    };
    let s = match rng.below(3) {
        0 => base,
        1 => base + 1,
        _ => base.saturating_sub(1),
    };
    s.min(max)
}

/// Random shrinks and growths (to 0, to page and folio boundaries and a byte either side),
/// writes through the write path (over cached and uncached folios, past the end, of every
/// size), stores through a shared `MADV_HUGEPAGE` mapping, writeback, reclaim, compaction and
/// dropped caches, against a model of the file: after every step `read` and the mapping show
/// the model (`SIGBUS` past its end), the checkers pass, and writeback leaves the host file
/// equal to it. Nothing leaks.
#[test]
fn random_truncates_and_writes_match_a_model() {
    let m = boot_mem(160, 1, "");
    let k = &m.kernel;
    let max = 6 * HPAGE_PMD_SIZE;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file");
    let mut model = file_bytes(max / PAGE / 2, 0x1234);
    std::fs::write(&path, &model).unwrap();
    let before = drain_and_count(&m);
    let dirty0 = nr_dirty(k);
    m.on_cpu(0, |cpu| {
        let entry = register(&m, cpu, &path);
        let inode = entry.0.clone();
        let f = k.open(&inode, FMode::READ | FMode::WRITE).unwrap();
        let mut mm = k.mm_alloc(cpu).unwrap();
        let rw = PROT_READ | PROT_WRITE;
        let a = k
            .do_mmap(cpu, &mut mm, Some(&f), 0, max, rw, MAP_SHARED, 0)
            .unwrap();
        k.madvise(cpu, &mut mm, a, max, MADV_HUGEPAGE).unwrap();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for step in 0..300 {
            let op = rng.below(10);
            match op {
                0 | 1 => {
                    let n = interesting_size(&mut rng, max);
                    resize(k, cpu, &entry, &path, n);
                    model.resize(n as usize, 0);
                }
                2..=4 => {
                    let off = interesting_size(&mut rng, max - 1);
                    let len = match rng.below(4) {
                        0 => rng.below(PAGE * 3),
                        1 => rng.below(HPAGE_PMD_SIZE * 2),
                        2 => HPAGE_PMD_SIZE - off % HPAGE_PMD_SIZE,
                        _ => rng.below(64 * PAGE),
                    }
                    .min(max - off);
                    let d = file_bytes(len.div_ceil(PAGE) + 1, step + 7);
                    let d = &d[..len as usize];
                    host_write(k, cpu, &entry, &path, off, d);
                    if model.len() < (off + len) as usize {
                        model.resize((off + len) as usize, 0);
                    }
                    model[off as usize..(off + len) as usize].copy_from_slice(d);
                }
                5 => {
                    // Stores through the mapping, inside the file only.
                    for _ in 0..8 {
                        if model.is_empty() {
                            break;
                        }
                        let at = rng.below(model.len() as u64);
                        let v = [(step as u8) | 1];
                        k.user_write(cpu, &mut mm, a + at, &v).unwrap();
                        model[at as usize] = v[0];
                    }
                }
                6 => {
                    k.write_inode_now(cpu, &inode).unwrap();
                    let host = std::fs::read(&path).unwrap();
                    assert_eq!(host.len(), model.len(), "step {step}: host size");
                    assert!(host == model, "step {step}: host bytes after writeback");
                }
                7 => {
                    k.try_to_free_pages(cpu, mmkit::gfp::GFP_KERNEL);
                }
                8 => {
                    for z in k.nodes[0].zones.iter() {
                        k.compact_zone(cpu, z, 9);
                    }
                }
                _ => {
                    k.write_inode_now(cpu, &inode).unwrap();
                    k.lru_add_drain_all(cpu);
                    k.drop_caches(cpu, 1).unwrap();
                }
            }
            check_all(k, &[&mm]);
            let d = nr_dirty(k) - dirty0;
            assert!(d >= 0, "step {step} (op {op}): NR_FILE_DIRTY negative: {d}");
            assert!(
                d as u64 <= inode.nrpages(),
                "step {step} (op {op}): {d} dirty > {} cached",
                inode.nrpages()
            );
            assert_eq!(inode.size(), model.len() as u64, "step {step}");
            let cached = cached_contents(k, cpu, &inode);
            assert!(
                cached == model,
                "step {step} (op {op}): read differs from the model"
            );
            let end = model.len().div_ceil(PAGE as usize) as u64;
            for i in end..max / PAGE {
                assert!(
                    inode.cached_pfn(i).is_none()
                        || k.mem_map()
                            .pfn_to_page(inode.cached_pfn(i).unwrap())
                            .unwrap()
                            .compound_head()
                            .index()
                            < end,
                    "step {step} (op {op}): page {i} cached past the end {end} on its own"
                );
            }
            if step % 5 == 0 {
                check_mapping(k, cpu, &mut mm, a, max, &model);
            }
        }
        k.write_inode_now(cpu, &inode).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), model);
        k.exit_mmap(cpu, mm);
        k.fput(cpu, f);
        k.lru_add_drain_all(cpu);
        k.drop_pagecache(cpu);
        check_all(k, &[]);
    });
    assert_eq!(nr_dirty(k), dirty0);
    assert_eq!(k.global_node_page_state(NR_FILE_PAGES), 0);
    assert_eq!(drain_and_count(&m), before, "pages leaked");
}

/// Faults on another CPU race truncations: CPU 1 reads pages of a shared mapping past the
/// coming end (cached ones and, every other round, ones dropped from the cache so the fault
/// reads them) while CPU 0 shrinks the file. Afterwards nothing is cached past the end, and
/// once the file grows back with new bytes the mapping shows the new bytes (a stale page a
/// racing fault mapped would show the old ones). A fault that does not come back within
/// 20 s is a livelock (reported, not waited for).
#[test]
#[ignore = "bug, not fixed (intermittent): readahead racing truncation caches folios past \
            the new end (no invalidate_lock serialises them)"]
fn faults_racing_truncation_leave_nothing_past_the_end() {
    let m = Arc::new(boot_mem(128, 2, ""));
    let k = &m.kernel;
    let pages = 64u64;
    let keep = 8u64;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file");
    std::fs::write(&path, file_bytes(pages, 1)).unwrap();
    let entry = m.on_cpu(0, |cpu| register(&m, cpu, &path));
    let inode = entry.0.clone();
    let f = k.open(&inode, FMode::READ).unwrap();
    let rounds = 1000u64;
    let (mut cached_past_end, mut stale) = (0, 0);
    let mut first: Option<String> = None;
    let go = Arc::new(Barrier::new(2));
    let stop = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let (grown_tx, grown_rx) = std::sync::mpsc::channel::<()>();
    let (checked_tx, checked_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let cpu1 = {
        let (m, f, go, stop) = (m.clone(), f.clone(), go.clone(), stop.clone());
        std::thread::spawn(move || {
            let k = &m.kernel;
            m.on_cpu(1, |cpu| {
                let mut mm = k.mm_alloc(cpu).unwrap();
                let len = pages * PAGE;
                let a = k
                    .do_mmap(cpu, &mut mm, Some(&f), 0, len, PROT_READ, MAP_SHARED, 0)
                    .unwrap();
                let mut b = [0u8; 1];
                for round in 0..rounds {
                    go.wait();
                    let mut i = keep + round % (pages - keep);
                    while !stop.load(Ordering::Acquire) {
                        let _ = k.user_read(cpu, &mut mm, a + i * PAGE, &mut b);
                        i = if i + 1 == pages { keep } else { i + 1 };
                    }
                    done_tx.send(()).unwrap();
                    grown_rx.recv().unwrap();
                    let want = file_bytes(pages, round + 2);
                    let mut buf = vec![0u8; PAGE as usize];
                    let mut res = Ok(());
                    for i in 0..pages {
                        if k.user_read(cpu, &mut mm, a + i * PAGE, &mut buf).is_err() {
                            res = Err(format!("round {round}: page {i} faults"));
                            break;
                        }
                        let o = (i * PAGE) as usize;
                        if buf[..] != want[o..o + PAGE as usize] {
                            res = Err(format!("round {round}: page {i} shows old bytes"));
                            break;
                        }
                    }
                    if res.is_ok() {
                        res = k
                            .check_mm_invariants(&mm)
                            .map_err(|e| format!("round {round}: {e}"));
                    }
                    checked_tx.send(res).unwrap();
                }
                k.exit_mmap(cpu, mm);
            });
        })
    };
    for round in 0..rounds {
        m.on_cpu(0, |cpu| {
            if round % 2 == 1 {
                k.lru_add_drain_all(cpu);
                k.invalidate_mapping_pages(cpu, &inode);
            }
        });
        go.wait();
        std::thread::sleep(Duration::from_micros(20 + round % 7 * 40));
        m.on_cpu(0, |cpu| resize(k, cpu, &entry, &path, keep * PAGE + 100));
        stop.store(true, Ordering::Release);
        if done_rx.recv_timeout(Duration::from_secs(20)).is_err() {
            panic!("round {round}: a fault on CPU 1 never came back (livelock)");
        }
        stop.store(false, Ordering::Release);
        m.on_cpu(0, |cpu| {
            // (A large folio holding the end that could not be split — a racing fault held
            // a reference — stays whole, zeroed past the end, as truncate.rs documents.)
            let alone = |i: u64| {
                inode.cached_pfn(i).is_some_and(|pfn| {
                    k.mem_map()
                        .pfn_to_page(pfn)
                        .unwrap()
                        .compound_head()
                        .index()
                        > keep
                })
            };
            if let Some(i) = (keep + 1..pages).find(|&i| alone(i)) {
                cached_past_end += 1;
                let p = k
                    .mem_map()
                    .pfn_to_page(inode.cached_pfn(i).unwrap())
                    .unwrap();
                let f = p.compound_head();
                first.get_or_insert(format!(
                    "round {round}: page {i} (folio at {} of order {}, mapcount {}, refcount {})",
                    f.index(),
                    f.folio_order(),
                    f.folio_mapcount(),
                    f.refcount()
                ));
            }
            k.check_pagecache_invariants().unwrap();
            // Grown back by ftruncate: what it grows by must read as zeroes.
            resize(k, cpu, &entry, &path, pages * PAGE);
            let got = cached_contents(k, cpu, &inode);
            if got[(keep * PAGE + 100) as usize..].iter().any(|&b| b != 0) {
                stale += 1;
            }
            host_write(k, cpu, &entry, &path, 0, &file_bytes(pages, round + 2));
        });
        grown_tx.send(()).unwrap();
        match checked_rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => panic!("round {round}: CPU 1 stuck in its check"),
        }
    }
    cpu1.join().unwrap();
    m.on_cpu(0, |cpu| {
        k.fput(cpu, f);
        check_all(k, &[]);
    });
    assert_eq!(
        (cached_past_end, stale),
        (0, 0),
        "of {rounds} rounds: (pages cached past the end after the shrink, \
         old bytes read where the file grew back); first: {first:?}"
    );
}

/// Reclaim, compaction and dropped caches run in a loop on CPU 1 while CPU 0 writes a file
/// through the write path, maps it shared with `MADV_HUGEPAGE`, dirties some of it and
/// shrinks and grows it at random: every step the mapping and `read` show the model, the
/// checkers pass, and at the end nothing leaks. The file shrinks as `ftruncate` through the
/// simulator does it (the host file first, then `truncate_setsize`).
#[test]
#[ignore = "models the old ftruncate order (host file first): sys_ftruncate now sets the size \
            and drops the cache first (see the _size_first variant); with dirty stores it also \
            hits the lost write of a_write_racing_writeback_of_its_page_is_not_lost"]
fn reclaim_and_compaction_racing_truncation() {
    reclaim_and_compaction_racing(false, true, 120);
}

/// As [`reclaim_and_compaction_racing_truncation`], but the machine is told of a shrink before
/// the host file shrinks (the order Linux keeps: `i_size` first), so the window
/// `writeback_in_the_ftruncate_window_regrows_the_host_file` shows is closed and what is
/// left is truncation itself racing reclaim and compaction.
#[test]
#[ignore = "bug, not fixed: intermittently hits the lost write of \
            a_write_racing_writeback_of_its_page_is_not_lost (write-through order)"]
fn reclaim_and_compaction_racing_truncation_size_first() {
    reclaim_and_compaction_racing(true, true, 120);
}

/// As [`reclaim_and_compaction_racing_truncation_size_first`] without stores through the
/// mapping: nothing is dirty, so writeback races none of the writes
/// (`a_write_racing_writeback_of_its_page_is_not_lost`); what is left is truncation and the
/// write path racing reclaim and compaction. (`write_begin_folio` published a new large
/// folio — in the cache and, drained at once, on the LRU, holding only the cache's
/// references — before it took its own: `drop_caches`/reclaim on CPU 1 could free it in
/// between, and the write then copied into, and put, a freed page. Fixed: the caller keeps
/// its allocation reference, as in Linux. What is left, unexplained: a page on the inactive
/// file list with refcount 0. It is not the write path: it reproduces with the write
/// replaced by readahead of the written range plus the old in-place update (the same page
/// churn), with truncation's partial-folio split disabled, and with truncation removing
/// only folios nobody else holds; it never fails without reclaim on CPU 1, nor with the
/// write replaced by the in-place update alone, which caches almost nothing.)
#[test]
#[ignore = "bug, not fixed: a page on the LRU with refcount 0 when reclaim on CPU 1 races \
            page-cache churn on CPU 0 (fails most runs; latent, not the write path); root \
            cause not found"]
fn reclaim_and_compaction_racing_truncation_clean() {
    reclaim_and_compaction_racing(true, false, 400);
}

fn reclaim_and_compaction_racing(size_first: bool, stores: bool, steps: u64) {
    let m = Arc::new(boot_mem(96, 2, ""));
    let k = &m.kernel;
    let max = 4 * HPAGE_PMD_SIZE;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file");
    std::fs::write(&path, b"").unwrap();
    let before = drain_and_count(&m);
    let stop = Arc::new(AtomicBool::new(false));
    // CPU 1 parks while CPU 0 runs the checkers (they read counters CPU 1 changes).
    let pause = Arc::new(AtomicBool::new(false));
    let parked = Arc::new(AtomicBool::new(false));
    let cpu1 = {
        let (m, stop, pause, parked) = (m.clone(), stop.clone(), pause.clone(), parked.clone());
        std::thread::spawn(move || {
            let k = &m.kernel;
            m.on_cpu(1, |cpu| {
                let mut n = 0u64;
                while !stop.load(Ordering::Acquire) {
                    if pause.load(Ordering::Acquire) {
                        k.lru_add_drain(cpu);
                        k.refresh_cpu_vm_stats(cpu);
                        parked.store(true, Ordering::Release);
                        while pause.load(Ordering::Acquire) && !stop.load(Ordering::Acquire) {
                            std::hint::spin_loop();
                        }
                        parked.store(false, Ordering::Release);
                        continue;
                    }
                    // (Dropped caches only now and then: filemap_read answers EIO when the
                    // page it just read is taken back before it looks it up, see
                    // filemap_read_under_memory_pressure_does_not_fail.)
                    match n % 20 {
                        19 => {
                            k.drop_caches(cpu, 1).unwrap();
                        }
                        x if x % 2 == 0 => {
                            k.try_to_free_pages(cpu, mmkit::gfp::GFP_KERNEL);
                        }
                        _ => {
                            for z in k.nodes[0].zones.iter() {
                                k.compact_zone(cpu, z, 9);
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_micros(20));
                    n += 1;
                }
            })
        })
    };
    m.on_cpu(0, |cpu| {
        let entry = register(&m, cpu, &path);
        let inode = entry.0.clone();
        let f = k.open(&inode, FMode::READ | FMode::WRITE).unwrap();
        let mut mm = k.mm_alloc(cpu).unwrap();
        let rw = PROT_READ | PROT_WRITE;
        let a = k
            .do_mmap(cpu, &mut mm, Some(&f), 0, max, rw, MAP_SHARED, 0)
            .unwrap();
        k.madvise(cpu, &mut mm, a, max, MADV_HUGEPAGE).unwrap();
        let mut rng = Rng(0xabcdef12345);
        let mut model: Vec<u8> = Vec::new();
        for step in 0..steps {
            pause.store(false, Ordering::Release);
            let d = file_bytes(max / PAGE, step + 100);
            host_write(k, cpu, &entry, &path, 0, &d);
            model = d;
            for _ in 0..if stores { 6 } else { 0 } {
                let at = rng.below(max);
                k.user_write(cpu, &mut mm, a + at, &[0xee]).unwrap();
                model[at as usize] = 0xee;
            }
            let n = interesting_size(&mut rng, max);
            if size_first {
                truncate_setsize(k, cpu, &entry, n);
                let h = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                h.set_len(n).unwrap();
            } else {
                resize(k, cpu, &entry, &path, n);
            }
            model.truncate(n as usize);
            pause.store(true, Ordering::Release);
            while !parked.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
            k.refresh_cpu_vm_stats(cpu);
            if let Err(e) = k.check_pagecache_invariants() {
                panic!("step {step} (size {n}): {e}");
            }
            check_all(k, &[&mm]);
            assert!(nr_dirty(k) >= 0, "step {step}: NR_FILE_DIRTY negative");
            let got = cached_contents(k, cpu, &inode);
            if got != model {
                let diff: Vec<usize> = (0..got.len().max(model.len()))
                    .filter(|&i| got.get(i) != model.get(i))
                    .collect();
                let pages: std::collections::BTreeSet<usize> =
                    diff.iter().map(|&i| i / PAGE as usize).collect();
                panic!(
                    "step {step}: read differs from the model (size {}) at {} bytes, pages {:?}; \
                     first {:?}: read {:?} model {:?} (0xee = a store through the mapping)",
                    model.len(),
                    diff.len(),
                    pages.iter().take(10).collect::<Vec<_>>(),
                    diff[0],
                    got.get(diff[0]),
                    model.get(diff[0])
                );
            }
            if step % 4 == 0 {
                check_mapping(k, cpu, &mut mm, a, max, &model);
            }
            if step % 7 == 0 {
                k.write_inode_now(cpu, &inode).unwrap();
                let host = std::fs::read(&path).unwrap();
                let diff: Vec<usize> = (0..host.len().max(model.len()))
                    .filter(|&i| host.get(i) != model.get(i))
                    .take(8)
                    .collect();
                assert!(
                    diff.is_empty(),
                    "step {step}: host file ({} bytes) differs from the model ({} bytes) at {diff:?}: host {:?} model {:?}",
                    host.len(),
                    model.len(),
                    diff.iter().map(|&i| host.get(i)).collect::<Vec<_>>(),
                    diff.iter().map(|&i| model.get(i)).collect::<Vec<_>>()
                );
            }
        }
        stop.store(true, Ordering::Release);
        pause.store(false, Ordering::Release);
        k.write_inode_now(cpu, &inode).unwrap();
        assert!(std::fs::read(&path).unwrap() == model, "host at the end");
        k.exit_mmap(cpu, mm);
        k.fput(cpu, f);
    });
    stop.store(true, Ordering::Release);
    cpu1.join().unwrap();
    m.on_cpu(0, |cpu| {
        k.lru_add_drain_all(cpu);
        k.drop_pagecache(cpu);
        check_all(k, &[]);
    });
    assert!(nr_dirty(k) >= 0);
    assert_eq!(k.global_node_page_state(NR_FILE_PAGES), 0);
    assert_eq!(drain_and_count(&m), before, "pages leaked");
}

/// A write over a range part cached by readahead (folios of their own orders), part not:
/// the cached folios are written in place and kept, the gaps get new folios aligned to
/// their order that overlap nothing, every byte reads back through `read` and a mapping.
#[test]
fn a_write_over_cached_and_uncached_folios() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let pages = 1024u64;
    let mut data = file_bytes(pages, 0xcafe);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file");
    std::fs::write(&path, &data).unwrap();
    let before = drain_and_count(&m);
    m.on_cpu(0, |cpu| {
        let entry = register(&m, cpu, &path);
        let inode = entry.0.clone();
        // Readahead caches some of it.
        let mut b = vec![0u8; 40 * PAGE as usize];
        k.filemap_read(cpu, &inode, 100 * PAGE, &mut b).unwrap();
        k.filemap_read(cpu, &inode, 600 * PAGE + 5, &mut b[..3])
            .unwrap();
        let cached_before = folio_orders(k, &inode, 0..pages);
        assert!(!cached_before.is_empty());
        let pfns_before: Vec<_> = cached_before
            .iter()
            .map(|&(i, _)| inode.cached_pfn(i).unwrap())
            .collect();
        let (off, len) = (90 * PAGE + 33, 700 * PAGE + 1);
        let new = file_bytes(len / PAGE + 1, 0x42);
        let new = &new[..len as usize];
        host_write(k, cpu, &entry, &path, off, new);
        data[off as usize..(off + len) as usize].copy_from_slice(new);
        check_all(k, &[]);
        // The folios cached before are still the ones caching their pages.
        for (&(i, _), pfn) in cached_before.iter().zip(&pfns_before) {
            assert_eq!(inode.cached_pfn(i), Some(*pfn), "folio at {i} replaced");
        }
        for (i, o) in folio_orders(k, &inode, 0..pages) {
            assert_eq!(i % (1 << o), 0, "folio at {i} of order {o} misaligned");
            assert_ne!(o, 1, "an order-1 page-cache folio at {i}");
        }
        assert_eq!(cached_contents(k, cpu, &inode), data);
        let f = k.open(&inode, FMode::READ).unwrap();
        let mut mm = k.mm_alloc(cpu).unwrap();
        let len = pages * PAGE;
        let a = k
            .do_mmap(cpu, &mut mm, Some(&f), 0, len, PROT_READ, MAP_SHARED, 0)
            .unwrap();
        check_mapping(k, cpu, &mut mm, a, len, &data);
        check_all(k, &[&mm]);
        // A write into pages a PMD maps shows through it at once.
        k.madvise(cpu, &mut mm, a, len, MADV_HUGEPAGE).unwrap();
        let w = b"through the PMD";
        host_write(k, cpu, &entry, &path, 3 * HPAGE_PMD_SIZE / 2, w);
        let at = (3 * HPAGE_PMD_SIZE / 2) as usize;
        data[at..at + w.len()].copy_from_slice(w);
        check_mapping(k, cpu, &mut mm, a, len, &data);
        check_all(k, &[&mm]);
        k.exit_mmap(cpu, mm);
        k.fput(cpu, f);
        k.lru_add_drain_all(cpu);
        k.drop_pagecache(cpu);
    });
    assert_eq!(k.global_node_page_state(NR_FILE_PAGES), 0);
    assert_eq!(drain_and_count(&m), before, "pages leaked");
}

/// Writes past the end (leaving a hole), after a shrink into a cached large folio, and of
/// zero bytes: the hole and what the shrink cut read as zeroes, the bytes written read back,
/// a zero-length write caches nothing, nothing is cached past the end.
#[test]
fn writes_past_the_end_and_after_a_shrink() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file");
    let mut model = file_bytes(10, 0x77);
    std::fs::write(&path, &model).unwrap();
    let before = drain_and_count(&m);
    m.on_cpu(0, |cpu| {
        let entry = register(&m, cpu, &path);
        let inode = entry.0.clone();
        assert_eq!(cached_contents(k, cpu, &inode), model);
        let n0 = inode.nrpages();
        host_write(k, cpu, &entry, &path, 3 * PAGE, b"");
        assert_eq!(inode.nrpages(), n0, "a zero-length write cached something");
        let (off, d) = (20 * PAGE + 7, file_bytes(2, 0x78));
        let d = &d[..5000];
        host_write(k, cpu, &entry, &path, off, d);
        model.resize(off as usize, 0);
        model.extend_from_slice(d);
        check_all(k, &[]);
        assert_eq!(cached_contents(k, cpu, &inode), model);
        // Shrink into the middle of what the write cached, then write past the new end.
        resize(k, cpu, &entry, &path, 3 * PAGE + 5);
        model.truncate((3 * PAGE + 5) as usize);
        check_all(k, &[]);
        for i in 4..32 {
            assert!(
                inode.cached_pfn(i).is_none(),
                "page {i} cached past the end"
            );
        }
        host_write(k, cpu, &entry, &path, 5 * PAGE, b"after");
        model.resize((5 * PAGE) as usize, 0);
        model.extend_from_slice(b"after");
        assert_eq!(cached_contents(k, cpu, &inode), model);
        assert_eq!(std::fs::read(&path).unwrap(), model);
        // A write into a large folio cached by a big write, after a shrink cut it.
        let big = file_bytes(512, 0x79);
        host_write(k, cpu, &entry, &path, HPAGE_PMD_SIZE, &big);
        model.resize(HPAGE_PMD_SIZE as usize, 0);
        model.extend_from_slice(&big);
        assert_eq!(folio_orders(k, &inode, 512..1024), [(512, 9)]);
        resize(k, cpu, &entry, &path, HPAGE_PMD_SIZE + 300 * PAGE + 1);
        model.truncate((HPAGE_PMD_SIZE + 300 * PAGE + 1) as usize);
        for i in 813..1024 {
            assert!(
                inode.cached_pfn(i).is_none(),
                "page {i} cached past the end"
            );
        }
        host_write(k, cpu, &entry, &path, HPAGE_PMD_SIZE + 400 * PAGE, b"x");
        model.resize((HPAGE_PMD_SIZE + 400 * PAGE) as usize, 0);
        model.push(b'x');
        check_all(k, &[]);
        assert_eq!(cached_contents(k, cpu, &inode), model);
        k.lru_add_drain_all(cpu);
        k.drop_pagecache(cpu);
    });
    assert_eq!(drain_and_count(&m), before, "pages leaked");
}

/// `generic_perform_write` on a small machine whose memory is mostly taken by an anonymous
/// mapping (large folios cannot be had, order-0 pages only by reclaim): the write is cached
/// in what can be had, every byte reads back, the checkers pass, nothing leaks.
#[test]
fn writes_under_memory_pressure() {
    let m = boot_mem(64, 1, "");
    let k = &m.kernel;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file");
    std::fs::write(&path, b"").unwrap();
    let before = drain_and_count(&m);
    m.on_cpu(0, |cpu| {
        let entry = register(&m, cpu, &path);
        let inode = entry.0.clone();
        let mut hog = k.mm_alloc(cpu).unwrap();
        let hl = 40u64 << 20;
        let rw = PROT_READ | PROT_WRITE;
        let h = k
            .do_mmap(
                cpu,
                &mut hog,
                None,
                0,
                hl,
                rw,
                MAP_PRIVATE | MAP_ANONYMOUS,
                0,
            )
            .unwrap();
        // Every other page touched: memory fragmented as well as short.
        for i in (0..hl / PAGE).step_by(2) {
            k.user_write(cpu, &mut hog, h + i * PAGE, &[1]).unwrap();
        }
        let d = file_bytes(4096, 0xabc);
        let mut model = Vec::new();
        for (j, piece) in d.chunks(HPAGE_PMD_SIZE as usize).enumerate() {
            host_write(k, cpu, &entry, &path, j as u64 * HPAGE_PMD_SIZE, piece);
            model.extend_from_slice(piece);
            check_all(k, &[&hog]);
        }
        assert_eq!(cached_contents(k, cpu, &inode), model);
        for (i, o) in folio_orders(k, &inode, 0..4096) {
            assert_eq!(i % (1 << o), 0);
            assert_ne!(o, 1);
        }
        resize(k, cpu, &entry, &path, 5 * PAGE + 3);
        model.truncate((5 * PAGE + 3) as usize);
        check_all(k, &[&hog]);
        assert_eq!(cached_contents(k, cpu, &inode), model);
        k.exit_mmap(cpu, hog);
        k.lru_add_drain_all(cpu);
        k.drop_pagecache(cpu);
    });
    assert_eq!(drain_and_count(&m), before, "pages leaked");
}

/// A memory file without large folios: `generic_perform_write` caches it page by page,
/// partial pages read from the store, and the bytes read back.
#[test]
fn a_mapping_without_large_folios_is_written_page_by_page() {
    let m = boot_mem(64, 1, "");
    let k = &m.kernel;
    let mut data = file_bytes(64, 0x11);
    m.on_cpu(0, |cpu| {
        let inode = new_file(k, &data, 77, false);
        let (off, n) = (3 * PAGE + 100, 40 * PAGE);
        let new = file_bytes(41, 0x12);
        let new = &new[..n as usize];
        inode.data().write_at(off, new).unwrap();
        k.generic_perform_write(cpu, &inode, off, new);
        data[off as usize..(off + n) as usize].copy_from_slice(new);
        let orders = folio_orders(k, &inode, 0..64);
        assert_eq!(orders.len(), 41, "{orders:?}");
        assert!(orders.iter().all(|&(_, o)| o == 0), "{orders:?}");
        assert_eq!(cached_contents(k, cpu, &inode), data);
        check_all(k, &[]);
        k.lru_add_drain_all(cpu);
        k.drop_pagecache(cpu);
    });
}

/// A program on /dev/kvm writes, maps (shared, `MADV_HUGEPAGE`), `pwrite`s unaligned,
/// stores through the mapping, shrinks with `ftruncate` to odd sizes and to a folio boundary
/// and to 0, grows, appends with `O_APPEND` from a descriptor whose offset is 0, reopens with
/// `O_TRUNC`, and prints sums of what it reads through the mappings and `pread`: the same as
/// natively.
#[test]
fn a_program_truncating_writing_and_appending_reads_what_it_reads_natively() {
    use common::kvm::{assert_clean, cc, env, machine, run};
    use mmkit_sim::kvm::process::Status;
    let Some((m, vm)) = machine(None) else { return };
    let dir = tempfile::tempdir().unwrap();
    let prog = cc(
        dir.path(),
        "truncw",
        r#"#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#define LEN (4L << 20)
static unsigned long sum(const volatile unsigned char *p, long n) {
    unsigned long s = 0;
    for (long i = 0; i < n; i++) s = s * 31 + p[i];
    return s;
}
static unsigned char buf[LEN];
static unsigned long psum(int fd, long off, long n) {
    memset(buf, 0xff, n);
    long r = pread(fd, buf, n, off);
    return sum(buf, r < 0 ? 0 : r) ^ (unsigned long)r << 48;
}
int main(int argc, char **argv) {
    if (argc < 2) return 2;
    for (long i = 0; i < LEN; i++) buf[i] = 'a' + i % 19;
    int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || write(fd, buf, 3 * (1L << 20) + 5) != 3 * (1L << 20) + 5) return 3;
    unsigned char *m = mmap(0, LEN, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) return 4;
    madvise(m, LEN, MADV_HUGEPAGE);
    printf("1 %lx\n", sum(m, 3 * (1L << 20) + 5));
    if (pwrite(fd, "PWRITE", 6, (1L << 20) - 3) != 6) return 5;
    printf("2 %lx\n", sum(m + (1L << 20) - 4096, 8192));
    memset(m + 4096 * 300 + 7, 'M', 5000);
    long sizes[] = {(2L << 20) + 4096 * 3 + 1, 1L << 20, 12345, 65536, 4095, 0, 1};
    for (int k = 0; k < 7; k++) {
        long nl = sizes[k];
        if (ftruncate(fd, nl)) return 6;
        printf("3.%d %lx %lx\n", k, sum(m, nl), psum(fd, 0, LEN));
        if (nl > 0) m[nl - 1] = 'E';
        if (ftruncate(fd, nl + 3 * 4096)) return 7;
        printf("4.%d %lx %lx\n", k, sum(m, nl + 3 * 4096), psum(fd, 0, LEN));
        if (pwrite(fd, "after", 5, nl + 4096) != 5) return 8;
        printf("5.%d %lx %lx\n", k, sum(m, nl + 4096 + 5), psum(fd, 0, LEN));
    }
    int fa = open(argv[1], O_WRONLY | O_APPEND);
    if (fa < 0) return 9;
    for (int i = 0; i < 40; i++) {
        for (long j = 0; j < 100003; j++) buf[j] = 'A' + (i + j) % 26;
        if (write(fa, buf, 100003) != 100003) return 10;
    }
    long size = lseek(fd, 0, SEEK_END);
    printf("6 %ld %lx %lx\n", size, sum(m, size < LEN ? size : LEN), psum(fd, 0, LEN));
    if (ftruncate(fd, 777777)) return 11;
    printf("7 %lx %lx\n", sum(m, 777777), psum(fd, 0, LEN));
    msync(m, LEN, MS_SYNC);
    munmap(m, LEN);
    int fd2 = open(argv[1], O_RDWR | O_TRUNC);
    if (fd2 < 0) return 12;
    for (long i = 0; i < LEN; i++) buf[i] = 'q' + i % 7;
    for (long done = 0; done < LEN - 100;) {
        long r = pwrite(fd2, buf + done, LEN - 100 - done, 50 + done);
        if (r <= 0) return 13;
        done += r;
    }
    unsigned char *m2 = mmap(0, LEN, PROT_READ, MAP_PRIVATE, fd2, 0);
    if (m2 == MAP_FAILED) return 14;
    printf("8 %lx %lx\n", sum(m2, LEN - 50), psum(fd2, 0, LEN));
    if (ftruncate(fd2, (2L << 20) + 1)) return 15;
    printf("9 %lx %lx\n", sum(m2, (2L << 20) + 1), psum(fd2, 0, LEN));
    return 0;
}"#,
        &["-static"],
    );
    let before = m.settle();
    let path = dir.path().join("truncw.dat");
    let argv = [prog.to_str().unwrap(), path.to_str().unwrap()];
    let ours = run(&m, &vm, &argv, Default::default());
    assert_eq!(ours.out.status, Status::Exited(0), "{:?}", ours.out.log);
    let ours_file = std::fs::read(&path).unwrap();
    let native = mmkit_sim::exec_cmd::run_native(&prog, &argv.map(str::to_owned), &env()).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&ours.stdout),
        String::from_utf8_lossy(&native.stdout),
        "mmkit vs the host kernel"
    );
    assert!(
        std::fs::read(&path).unwrap() == ours_file,
        "the file differs"
    );
    m.on_cpu(0, |cpu| m.hostfs.release_writers(&m.kernel, cpu));
    assert_clean(&m, before, "truncw");
}

/// `filemap_read` on a small machine under memory pressure (most of it taken by an anonymous
/// mapping without swap): a read of a 16 MiB file must succeed (Linux retries a page that
/// reclaim took back between readahead and the lookup; `filemap_read` never answers `EIO`
/// for a readable file).
#[test]
fn filemap_read_under_memory_pressure_does_not_fail() {
    let m = boot_mem(64, 1, "");
    let k = &m.kernel;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file");
    let data = file_bytes(4096, 0xabd);
    std::fs::write(&path, &data).unwrap();
    m.on_cpu(0, |cpu| {
        let entry = register(&m, cpu, &path);
        let mut hog = k.mm_alloc(cpu).unwrap();
        let hl = 40u64 << 20;
        let rw = PROT_READ | PROT_WRITE;
        let h = k
            .do_mmap(
                cpu,
                &mut hog,
                None,
                0,
                hl,
                rw,
                MAP_PRIVATE | MAP_ANONYMOUS,
                0,
            )
            .unwrap();
        for i in (0..hl / PAGE).step_by(2) {
            k.user_write(cpu, &mut hog, h + i * PAGE, &[1]).unwrap();
        }
        for round in 0..3 {
            let r = read_strict(k, cpu, &entry.0);
            assert!(
                r.as_deref() == Ok(&data[..]),
                "round {round}: {:?}",
                r.err()
            );
        }
        k.exit_mmap(cpu, hog);
    });
}

/// The window `ftruncate` leaves between the machine and the host file. The simulator shrank
/// the host file first and told the machine after, so writeback in between (another CPU's
/// reclaim, `sync`, `msync` — here `write_inode_now`) still saw the old size and wrote the
/// dirty pages past the new end back, growing the host file again (found by this review).
/// `sys_ftruncate` now does it in Linux's order — the size and the cache first
/// (`truncate_setsize`), then the host file — so writeback in between writes nothing past
/// the new end.
#[test]
fn writeback_in_the_ftruncate_window_keeps_the_new_size() {
    let m = boot_mem(64, 1, "");
    let k = &m.kernel;
    let pages = 64u64;
    let data = file_bytes(pages, 0x5151);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file");
    std::fs::write(&path, &data).unwrap();
    m.on_cpu(0, |cpu| {
        let entry = register(&m, cpu, &path);
        let f = k.open(&entry.0, FMode::READ | FMode::WRITE).unwrap();
        let mut mm = k.mm_alloc(cpu).unwrap();
        let len = pages * PAGE;
        let rw = PROT_READ | PROT_WRITE;
        let a = k
            .do_mmap(cpu, &mut mm, Some(&f), 0, len, rw, MAP_SHARED, 0)
            .unwrap();
        k.user_write(cpu, &mut mm, a + 50 * PAGE, b"discard me")
            .unwrap();
        let new_len = 10 * PAGE + 1;
        // ftruncate(fd, new_len) as forwarded: the machine first ...
        truncate_setsize(k, cpu, &entry, new_len);
        // ... writeback from elsewhere meanwhile ...
        k.write_inode_now(cpu, &entry.0).unwrap();
        // ... then the host file.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(new_len)
            .unwrap();
        check_all(k, &[&mm]);
        let host = std::fs::metadata(&path).unwrap().len();
        k.exit_mmap(cpu, mm);
        k.fput(cpu, f);
        assert_eq!(host, new_len, "the truncated file grew back on the host");
    });
}

/// A major fault on a page past the coming end while the file shrinks on another CPU: the
/// fault passed `filemap_fault`'s size check with the old size, then readahead (which reads
/// its window from the host, the page last) finds the new size and reads nothing, and the
/// fault must give up (`SIGBUS`, as Linux's does when it finds the page beyond `i_size`
/// after reading) instead of asking readahead again for ever. CPU 1 drops its mapping and the
/// cache and faults page 40 (readahead window 24..56) in a loop; CPU 0 shrinks the file to
/// 8 pages at a random moment. A fault that does not come back in 20 s is a livelock.
#[test]
fn a_major_fault_racing_a_shrink_comes_back() {
    let m = Arc::new(boot_mem(128, 2, ""));
    let k = &m.kernel;
    let pages = 64u64;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file");
    std::fs::write(&path, file_bytes(pages, 3)).unwrap();
    let entry = m.on_cpu(0, |cpu| register(&m, cpu, &path));
    let inode = entry.0.clone();
    let f = k.open(&inode, FMode::READ).unwrap();
    let rounds = 400u64;
    let go = Arc::new(Barrier::new(2));
    let stop = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = std::sync::mpsc::channel::<u64>();
    let cpu1 = {
        let (m, f, go, stop, inode) = (
            m.clone(),
            f.clone(),
            go.clone(),
            stop.clone(),
            inode.clone(),
        );
        std::thread::spawn(move || {
            let k = &m.kernel;
            m.on_cpu(1, |cpu| {
                let mut mm = k.mm_alloc(cpu).unwrap();
                let len = pages * PAGE;
                let a = k
                    .do_mmap(cpu, &mut mm, Some(&f), 0, len, PROT_READ, MAP_SHARED, 0)
                    .unwrap();
                let mut b = [0u8; 1];
                for _ in 0..rounds {
                    go.wait();
                    let mut faults = 0;
                    while !stop.load(Ordering::Acquire) {
                        k.madvise(cpu, &mut mm, a, len, mmkit::mm::madvise::MADV_DONTNEED)
                            .unwrap();
                        k.lru_add_drain_all(cpu);
                        k.invalidate_mapping_pages(cpu, &inode);
                        let _ = k.user_read(cpu, &mut mm, a + 40 * PAGE, &mut b);
                        faults += 1;
                    }
                    done_tx.send(faults).unwrap();
                }
                k.exit_mmap(cpu, mm);
            });
        })
    };
    for round in 0..rounds {
        m.on_cpu(0, |cpu| resize(k, cpu, &entry, &path, pages * PAGE));
        go.wait();
        std::thread::sleep(Duration::from_micros(100 + (round * 37) % 400));
        m.on_cpu(0, |cpu| resize(k, cpu, &entry, &path, 8 * PAGE));
        stop.store(true, Ordering::Release);
        if done_rx.recv_timeout(Duration::from_secs(20)).is_err() {
            panic!("round {round}: a fault on CPU 1 never came back (livelock)");
        }
        stop.store(false, Ordering::Release);
    }
    cpu1.join().unwrap();
    m.on_cpu(0, |cpu| {
        k.fput(cpu, f);
        check_all(k, &[]);
    });
}

/// `pwrite` of 4 MiB to a regular file on /dev/kvm: Linux writes it all (a regular file's
/// write is short only at an error or a limit); the simulator's answer must be the same.
#[test]
fn a_large_pwrite_is_not_short() {
    use common::kvm::{assert_clean, cc, env, machine, run};
    use mmkit_sim::kvm::process::Status;
    let Some((m, vm)) = machine(None) else { return };
    let dir = tempfile::tempdir().unwrap();
    let prog = cc(
        dir.path(),
        "bigpw",
        r#"#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
static char buf[4 << 20];
int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) return 3;
    printf("pwrite %ld\n", (long)pwrite(fd, buf, sizeof buf, 50));
    printf("size %ld\n", (long)lseek(fd, 0, SEEK_END));
    return 0;
}"#,
        &["-static"],
    );
    let before = m.settle();
    let path = dir.path().join("bigpw.dat");
    let argv = [prog.to_str().unwrap(), path.to_str().unwrap()];
    let ours = run(&m, &vm, &argv, Default::default());
    assert_eq!(ours.out.status, Status::Exited(0), "{:?}", ours.out.log);
    let native = mmkit_sim::exec_cmd::run_native(&prog, &argv.map(str::to_owned), &env()).unwrap();
    m.on_cpu(0, |cpu| m.hostfs.release_writers(&m.kernel, cpu));
    assert_clean(&m, before, "bigpw");
    assert_eq!(
        String::from_utf8_lossy(&ours.stdout),
        String::from_utf8_lossy(&native.stdout),
        "mmkit vs the host kernel"
    );
}

/// A `write` racing writeback of the page it writes: the simulator writes the host file
/// first and puts the bytes in the cache after, leaving the folio clean (write-through).
/// Writeback from elsewhere in between (reclaim or `msync` on another CPU — here
/// `write_inode_now`) writes the page's older bytes, a store made through a shared mapping
/// before the `write`, over the ones the write just put on the host; the cache then holds
/// the written bytes, but clean, and once reclaim drops it the file reads the older bytes:
/// the write is lost. (`reclaim_and_compaction_racing_truncation*` hit it from reclaim, a
/// whole 2 MiB folio of old bytes at a time.) In Linux the write goes into the folio under
/// its lock and dirties it, so the last writeback writes what the write wrote.
#[test]
#[ignore = "bug, not fixed: write-through order — the host gets the bytes before the cache, \
            so a racing writeback of the older dirty folio overwrites them and the folio is \
            left clean"]
fn a_write_racing_writeback_of_its_page_is_not_lost() {
    let m = boot_mem(64, 1, "");
    let k = &m.kernel;
    let pages = 16u64;
    let data = file_bytes(pages, 0x7777);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file");
    std::fs::write(&path, &data).unwrap();
    m.on_cpu(0, |cpu| {
        let entry = register(&m, cpu, &path);
        let inode = entry.0.clone();
        let f = k.open(&inode, FMode::READ | FMode::WRITE).unwrap();
        let mut mm = k.mm_alloc(cpu).unwrap();
        let len = pages * PAGE;
        let rw = PROT_READ | PROT_WRITE;
        let a = k
            .do_mmap(cpu, &mut mm, Some(&f), 0, len, rw, MAP_SHARED, 0)
            .unwrap();
        let x = 5 * PAGE + 10;
        // A store through the mapping, then write(fd, "NEW!") at the same place.
        k.user_write(cpu, &mut mm, a + x, b"OLD!").unwrap();
        let h = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        h.write_all_at(b"NEW!", x).unwrap(); // the forwarded write reaches the host ...
        k.write_inode_now(cpu, &inode).unwrap(); // ... writeback from elsewhere ...
        truncate_setsize(k, cpu, &entry, len); // ... then write_through_cache
        k.generic_perform_write(cpu, &inode, x, b"NEW!");
        let mut b = [0u8; 4];
        k.filemap_read(cpu, &inode, x, &mut b).unwrap();
        assert_eq!(&b, b"NEW!", "the cache right after the write");
        // Reclaim drops what is clean.
        k.madvise(cpu, &mut mm, a, len, mmkit::mm::madvise::MADV_DONTNEED)
            .unwrap();
        k.lru_add_drain_all(cpu);
        k.invalidate_mapping_pages(cpu, &inode);
        k.write_inode_now(cpu, &inode).unwrap();
        k.filemap_read(cpu, &inode, x, &mut b).unwrap();
        let host = std::fs::read(&path).unwrap();
        k.exit_mmap(cpu, mm);
        k.fput(cpu, f);
        assert_eq!(&b, b"NEW!", "the write was lost (read)");
        assert_eq!(
            &host[x as usize..x as usize + 4],
            b"NEW!",
            "the write was lost (host)"
        );
    });
}

/// Stores through a shared mapping on CPU 1 race truncations on CPU 0: CPU 1 writes pages
/// past the coming end (write faults that dirty them) while CPU 0 shrinks the file. After
/// each round, once writeback ran, no page is counted dirty (`NR_FILE_DIRTY` back where it
/// was: a page dirtied after truncation took it out of the cache must not be counted, as
/// Linux's `folio_mark_dirty` does not count a folio without a mapping), no bad page was
/// reported, and the host file has its new size.
#[test]
#[ignore = "bug, not fixed (intermittent): NR_FILE_DIRTY counted 32 pages dirty after \
            writeback in one run of three (round 84)"]
fn stores_racing_truncation_keep_dirty_accounting() {
    let m = Arc::new(boot_mem(128, 2, ""));
    let k = &m.kernel;
    let pages = 64u64;
    let keep = 8u64;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file");
    std::fs::write(&path, b"").unwrap();
    let entry = m.on_cpu(0, |cpu| register(&m, cpu, &path));
    m.on_cpu(0, |cpu| {
        host_write(k, cpu, &entry, &path, 0, &file_bytes(pages, 1))
    });
    let inode = entry.0.clone();
    let f = k.open(&inode, FMode::READ | FMode::WRITE).unwrap();
    let dirty0 = nr_dirty(k);
    let rounds = 300u64;
    let go = Arc::new(Barrier::new(2));
    let stop = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let cpu1 = {
        let (m, f, go, stop) = (m.clone(), f.clone(), go.clone(), stop.clone());
        std::thread::spawn(move || {
            let k = &m.kernel;
            m.on_cpu(1, |cpu| {
                let mut mm = k.mm_alloc(cpu).unwrap();
                let len = pages * PAGE;
                let rw = PROT_READ | PROT_WRITE;
                let a = k
                    .do_mmap(cpu, &mut mm, Some(&f), 0, len, rw, MAP_SHARED, 0)
                    .unwrap();
                for round in 0..rounds {
                    go.wait();
                    let mut i = keep + round % (pages - keep);
                    while !stop.load(Ordering::Acquire) {
                        let _ = k.user_write(cpu, &mut mm, a + i * PAGE + 8, &[0xab]);
                        i = if i + 1 == pages { keep } else { i + 1 };
                    }
                    k.refresh_cpu_vm_stats(cpu);
                    done_tx.send(()).unwrap();
                }
                k.exit_mmap(cpu, mm);
                k.refresh_cpu_vm_stats(cpu);
            });
        })
    };
    for round in 0..rounds {
        go.wait();
        std::thread::sleep(Duration::from_micros(20 + round % 9 * 30));
        m.on_cpu(0, |cpu| resize(k, cpu, &entry, &path, keep * PAGE + 100));
        stop.store(true, Ordering::Release);
        if done_rx.recv_timeout(Duration::from_secs(20)).is_err() {
            panic!("round {round}: a store on CPU 1 never came back");
        }
        stop.store(false, Ordering::Release);
        m.on_cpu(0, |cpu| {
            k.write_inode_now(cpu, &inode).unwrap();
            k.refresh_cpu_vm_stats(cpu);
            let d = nr_dirty(k) - dirty0;
            assert_eq!(
                d, 0,
                "round {round}: {d} pages counted dirty after writeback"
            );
            assert_eq!(k.bad_page_reports(), 0, "round {round}: {:?}", k.dmesg());
            let host = std::fs::metadata(&path).unwrap().len();
            assert_eq!(host, keep * PAGE + 100, "round {round}: host size");
            // Grown back through the write path, so every page is cached again (a store
            // that misses the cache while the file shrinks can livelock instead, see
            // a_major_fault_racing_a_shrink_comes_back).
            host_write(k, cpu, &entry, &path, 0, &file_bytes(pages, round));
        });
    }
    cpu1.join().unwrap();
    m.on_cpu(0, |cpu| {
        k.write_inode_now(cpu, &inode).unwrap();
        k.fput(cpu, f);
        k.lru_add_drain_all(cpu);
        k.drop_pagecache(cpu);
        k.refresh_cpu_vm_stats(cpu);
        check_all(k, &[]);
    });
    assert_eq!(nr_dirty(k), dirty0, "dirty pages counted at the end");
}
