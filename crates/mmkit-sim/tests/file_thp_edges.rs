//! Edge cases of file THPs, large page-cache folios and batched zap/fork, written by an
//! independent review to break them: a file that shrinks under cached PMD-sized folios,
//! mlocked file THPs under reclaim, shared writes, invalidation and truncation, fork,
//! mremap, madvise, short file tails, mixed PMD/PTE mappings, compaction, PROT_NONE, swap
//! pressure, batches crossing table/VMA/folio boundaries, and two CPUs racing faults and
//! munmap against reclaim, `drop_caches` and splits. Every checker after each step.

mod common;
use common::boot_mem;
use common::files::*;
use mmkit::arch::x86_64::pgtable::HPAGE_PMD_SIZE;
use mmkit::fs::inode::{FMode, Inode};
use mmkit::mm::filemap::{NR_FILE_MAPPED, NR_FILE_PAGES};
use mmkit::mm::madvise::{MADV_DONTNEED, MADV_FREE, MADV_HUGEPAGE};
use mmkit::mm::mm_types::{MmStruct, MM_ANONPAGES, MM_FILEPAGES};
use mmkit::mm::mmap::*;
use mmkit::{CpuGuard, Kernel};
use std::sync::Arc;

const PAGE: u64 = 4096;
const MIB: u64 = 1 << 20;
const AT: u64 = 0x7e00_0000_0000;

fn check_all(k: &Kernel, mm: &MmStruct) {
    k.check_pagecache_invariants().unwrap();
    k.check_lru_invariants().unwrap();
    k.check_mm_invariants(mm).unwrap();
    k.check_deferred_split_invariants().unwrap();
    k.check_invariants().unwrap();
    assert_eq!(k.bad_page_reports(), 0, "{:?}", k.dmesg());
}

/// The TLB checker, without a CPU held.
fn check_tlb(k: &Kernel, mms: &[&MmStruct]) {
    let pts: Vec<&mmkit::arch::x86_64::pgtable::PgTable> = mms.iter().map(|m| &*m.pt).collect();
    k.check_tlb_invariants(&pts).unwrap();
}

#[allow(clippy::too_many_arguments)]
fn map_at(
    k: &Kernel,
    cpu: &CpuGuard<'_>,
    mm: &mut MmStruct,
    f: &Arc<mmkit::fs::inode::File>,
    (len, off, addr): (u64, u64, u64),
    prot: u32,
    flags: u32,
    advice: u32,
) -> u64 {
    let a = k
        .do_mmap(cpu, mm, Some(f), addr, len, prot, flags, off)
        .unwrap();
    assert_eq!(a, addr, "the hint is taken");
    if advice != 0 {
        k.madvise(cpu, mm, a, len, advice).unwrap();
    }
    a
}

fn teardown(m: &mmkit_sim::Machine, inode: &Arc<Inode>, f: Arc<mmkit::fs::inode::File>) {
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        k.fput(cpu, f);
        k.lru_add_drain_all(cpu);
        k.drop_pagecache(cpu);
        k.check_pagecache_invariants().unwrap();
        k.evict_inode(cpu, inode).unwrap();
    });
    assert_eq!(k.global_node_page_state(NR_FILE_PAGES), 0);
    assert_eq!(k.bad_page_reports(), 0, "{:?}", k.dmesg());
}

// ---------------------------------------------------------------------------------------
// A. A file that shrank under its cached PMD-sized folios: no PMD may map past EOF.
// ---------------------------------------------------------------------------------------

/// The host file of 4 MiB is cached in PMD-sized folios (MADV_HUGEPAGE read), then shrinks
/// to 5 pages + 10 bytes (as `fault_around_stops_at_the_end_of_the_file` does for
/// fault-around). A new MADV_HUGEPAGE mapping read at page 0 must map only the file's 6
/// pages, and a read of page 8 must be SIGBUS. Linux 6.18 (`do_set_pmd` /
/// `filemap_map_pages`: "do not populate page table entries beyond i_size") falls back to
/// PTEs when the folio reaches past `file_end`.
#[test]
fn a_no_file_pmd_past_a_shrunk_eof() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let pages = 1024u64;
    let data = file_bytes(pages, 0xe0f);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file");
    std::fs::write(&path, &data).unwrap();
    m.on_cpu(0, |cpu| {
        let (inode, host) = register(&m, cpu, &path);
        let f = k.open(&inode, FMode::READ).unwrap();
        let len = pages * PAGE;
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = map_at(
            k,
            cpu,
            &mut mm,
            &f,
            (len, 0, AT),
            PROT_READ,
            MAP_PRIVATE,
            MADV_HUGEPAGE,
        );
        read_pages(k, cpu, &mut mm, a, &data, 0..pages);
        assert_eq!(
            meminfo_field(k, "FilePmdMapped:"),
            4096,
            "cached and mapped by PMDs"
        );
        k.munmap(cpu, &mut mm, a, len).unwrap();
        let new_len = 5 * PAGE + 10;
        resize(k, cpu, &(inode.clone(), host.clone()), &path, new_len);
        let a = map_at(
            k,
            cpu,
            &mut mm,
            &f,
            (len, 0, AT),
            PROT_READ,
            MAP_PRIVATE,
            MADV_HUGEPAGE,
        );
        let mut buf = vec![0u8; PAGE as usize];
        k.user_read(cpu, &mut mm, a, &mut buf).unwrap();
        assert_eq!(&buf[..], &data[..PAGE as usize]);
        let past = k.user_read(cpu, &mut mm, a + 8 * PAGE, &mut buf);
        let rss = mm.counter(MM_FILEPAGES);
        let pmd_mapped = meminfo_field(k, "FilePmdMapped:");
        check_all(k, &mm);
        k.exit_mmap(cpu, mm);
        k.fput(cpu, f);
        k.lru_add_drain_all(cpu);
        k.drop_pagecache(cpu);
        assert!(
            past.is_err(),
            "a read 8 pages into a 5-page file succeeded (bytes {:?}...): a PMD maps past EOF \
             (MM_FILEPAGES {rss}, FilePmdMapped {pmd_mapped} kB)",
            &buf[..4]
        );
        assert_eq!(rss, 6, "only the file's 6 pages mapped");
    });
}

// ---------------------------------------------------------------------------------------
// B. mlock of a file PMD: reclaim must not take the pages.
// ---------------------------------------------------------------------------------------

/// An mlocked MADV_HUGEPAGE file mapping read in PMDs: reclaim must leave it resident and
/// mapped (`VM_LOCKED` found by `folio_check_references`). Linux keeps mlocked folios on the
/// unevictable list; reclaim never splits or unmaps them.
#[test]
fn b_mlocked_file_thp_survives_reclaim() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let pages = 1024u64;
    let data = file_bytes(pages, 0xb10c);
    let before = drain_and_count(&m);
    let inode = new_file(k, &data, 71, true);
    let f = m.on_cpu(0, |_| k.open(&inode, FMode::READ).unwrap());
    let mm = m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        let len = pages * PAGE;
        let a = map_at(k, cpu, &mut mm, &f, (len, 0, AT), PROT_READ, MAP_PRIVATE, MADV_HUGEPAGE);
        read_pages(k, cpu, &mut mm, a, &data, 0..pages);
        k.mlock(cpu, &mut mm, a, len).unwrap();
        assert_eq!(meminfo_field(k, "FilePmdMapped:"), 4096);
        k.lru_add_drain(cpu);
        for _ in 0..20 {
            k.try_to_free_pages(cpu, mmkit::gfp::GFP_KERNEL);
            check_all(k, &mm);
        }
        let flt = (mm.faults.min_flt, mm.faults.maj_flt);
        let (rss, cached, pmd) = (
            mm.counter(MM_FILEPAGES),
            inode.nrpages(),
            meminfo_field(k, "FilePmdMapped:"),
        );
        read_pages(k, cpu, &mut mm, a, &data, 0..pages);
        let flt2 = (mm.faults.min_flt, mm.faults.maj_flt);
        eprintln!("after reclaim: rss {rss} cached {cached} FilePmdMapped {pmd} faults {flt:?} -> {flt2:?}");
        assert_eq!(cached, pages, "mlocked page-cache pages were reclaimed");
        assert_eq!(rss, pages, "mlocked pages were unmapped by reclaim");
        assert_eq!(flt, flt2, "re-reading mlocked memory faulted");
        mm
    });
    check_tlb(k, &[&mm]);
    m.on_cpu(0, |cpu| k.exit_mmap(cpu, mm));
    teardown(&m, &inode, f);
    assert_eq!(drain_and_count(&m), before, "pages leaked");
}

// ---------------------------------------------------------------------------------------
// C. MAP_SHARED: write faults on PMD-mapped folios, msync, PROT_NONE and back.
// ---------------------------------------------------------------------------------------

#[test]
fn c_shared_mapping_writes_through_file_pmds() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let pages = 1024u64;
    let mut data = file_bytes(pages, 0x5a5a);
    let before = drain_and_count(&m);
    let inode = new_file(k, &data, 72, true);
    let f = m.on_cpu(0, |_| k.open(&inode, FMode::READ | FMode::WRITE).unwrap());
    let len = pages * PAGE;
    let rw = PROT_READ | PROT_WRITE;
    let (mut mm, a) = m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = map_at(
            k,
            cpu,
            &mut mm,
            &f,
            (len, 0, AT),
            rw,
            MAP_SHARED,
            MADV_HUGEPAGE,
        );
        read_pages(k, cpu, &mut mm, a, &data, 0..pages);
        assert_eq!(smaps_field(k, &mm, a, "FilePmdMapped:"), 4096);
        check_all(k, &mm);
        (mm, a)
    });
    check_tlb(k, &[&mm]);
    m.on_cpu(0, |cpu| {
        // Write into the first PMD.
        k.user_write(cpu, &mut mm, a + 3 * PAGE + 7, b"shared!")
            .unwrap();
        data[(3 * PAGE + 7) as usize..(3 * PAGE + 14) as usize].copy_from_slice(b"shared!");
        assert_eq!(mm.counter(MM_ANONPAGES), 0);
        assert_eq!(meminfo_field(k, "FilePmdMapped:"), 2048);
        check_all(k, &mm);
        k.msync(cpu, &mm, a, len, 4).unwrap();
        let mut on_file = vec![0u8; PAGE as usize];
        inode.data().read_at(3 * PAGE, &mut on_file).unwrap();
        assert_eq!(on_file, &data[(3 * PAGE) as usize..(4 * PAGE) as usize]);
        read_pages(k, cpu, &mut mm, a, &data, 0..pages);
        check_all(k, &mm);
        // PROT_NONE over the second PMD and back; then a write there.
        k.mprotect(cpu, &mut mm, a + HPAGE_PMD_SIZE, HPAGE_PMD_SIZE, PROT_NONE)
            .unwrap();
        check_all(k, &mm);
        let mut b = [0u8; 1];
        assert!(k
            .user_read(cpu, &mut mm, a + HPAGE_PMD_SIZE, &mut b)
            .is_err());
        k.mprotect(cpu, &mut mm, a + HPAGE_PMD_SIZE, HPAGE_PMD_SIZE, rw)
            .unwrap();
        check_all(k, &mm);
    });
    check_tlb(k, &[&mm]);
    m.on_cpu(0, |cpu| {
        read_pages(k, cpu, &mut mm, a, &data, 512..pages);
        let off = HPAGE_PMD_SIZE + 9 * PAGE;
        k.user_write(cpu, &mut mm, a + off, b"again").unwrap();
        data[off as usize..off as usize + 5].copy_from_slice(b"again");
        check_all(k, &mm);
        k.msync(cpu, &mm, a, len, 4).unwrap();
        let mut on_file = vec![0u8; 5];
        inode.data().read_at(off, &mut on_file).unwrap();
        assert_eq!(
            &on_file, b"again",
            "the write through the re-protected PMD reached the file"
        );
        assert_eq!(
            k.global_node_page_state(mmkit::mm::filemap::NR_FILE_DIRTY),
            0
        );
        read_pages(k, cpu, &mut mm, a, &data, 0..pages);
        check_all(k, &mm);
    });
    check_tlb(k, &[&mm]);
    m.on_cpu(0, |cpu| k.exit_mmap(cpu, mm));
    teardown(&m, &inode, f);
    assert_eq!(drain_and_count(&m), before, "pages leaked");
}

// ---------------------------------------------------------------------------------------
// D. drop_caches / invalidate / truncate_inode_pages against PMD-mapped folios.
// ---------------------------------------------------------------------------------------

#[test]
fn d_invalidate_and_truncate_leave_pmd_mapped_folios() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let pages = 1024u64;
    let data = file_bytes(pages, 0xd00d);
    let before = drain_and_count(&m);
    let inode = new_file(k, &data, 73, true);
    let f = m.on_cpu(0, |_| k.open(&inode, FMode::READ).unwrap());
    let len = pages * PAGE;
    let (mut mm, a) = m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = map_at(
            k,
            cpu,
            &mut mm,
            &f,
            (len, 0, AT),
            PROT_READ,
            MAP_PRIVATE,
            MADV_HUGEPAGE,
        );
        read_pages(k, cpu, &mut mm, a, &data, 0..pages);
        k.lru_add_drain_all(cpu);
        assert_eq!(k.invalidate_mapping_pages(cpu, &inode), 0);
        k.drop_caches(cpu, 3).unwrap();
        k.truncate_inode_pages(cpu, &inode);
        assert_eq!(inode.nrpages(), pages);
        check_all(k, &mm);
        // Unmap the first PMD: that folio goes on a drop, the second stays.
        k.munmap(cpu, &mut mm, a, HPAGE_PMD_SIZE).unwrap();
        assert_eq!(k.drop_pagecache(cpu), 512);
        check_all(k, &mm);
        (mm, a)
    });
    check_tlb(k, &[&mm]);
    m.on_cpu(0, |cpu| {
        read_pages(k, cpu, &mut mm, a, &data, 512..pages);
        check_all(k, &mm);
        k.exit_mmap(cpu, mm);
    });
    teardown(&m, &inode, f);
    assert_eq!(drain_and_count(&m), before, "pages leaked");
}

// ---------------------------------------------------------------------------------------
// E. fork of a private file VMA that has an anon_vma and file PMDs.
// ---------------------------------------------------------------------------------------

#[test]
fn e_fork_private_file_vma_with_anon_and_pmds() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let pages = 2048u64;
    let data = file_bytes(pages, 0xf0f0);
    let before = drain_and_count(&m);
    let inode = new_file(k, &data, 74, true);
    let f = m.on_cpu(0, |_| k.open(&inode, FMode::READ).unwrap());
    let len = pages * PAGE;
    let rw = PROT_READ | PROT_WRITE;
    let (mut mm, mut cm, a, mine) = m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = map_at(
            k,
            cpu,
            &mut mm,
            &f,
            (len, 0, AT),
            rw,
            MAP_PRIVATE,
            MADV_HUGEPAGE,
        );
        read_pages(k, cpu, &mut mm, a, &data, 0..pages);
        // COW in the first PMD (anon_vma, the PMD goes), PMDs 1..3 stay.
        let mut mine = data.clone();
        for p in [0u64, 5, 511] {
            k.user_write(cpu, &mut mm, a + p * PAGE, &[0xee; 16])
                .unwrap();
            mine[(p * PAGE) as usize..(p * PAGE + 16) as usize].fill(0xee);
        }
        assert_eq!(meminfo_field(k, "FilePmdMapped:"), 6144);
        let rss_before = (mm.counter(MM_FILEPAGES), mm.counter(MM_ANONPAGES));
        let mut cm = k.dup_mmap(cpu, &mm).unwrap();
        check_all(k, &mm);
        check_all(k, &cm);
        assert_eq!(
            (mm.counter(MM_FILEPAGES), mm.counter(MM_ANONPAGES)),
            rss_before
        );
        eprintln!(
            "child after fork: file {} anon {}; parent file {} anon {}",
            cm.counter(MM_FILEPAGES),
            cm.counter(MM_ANONPAGES),
            mm.counter(MM_FILEPAGES),
            mm.counter(MM_ANONPAGES)
        );
        read_pages(k, cpu, &mut cm, a, &mine, 0..pages);
        check_all(k, &cm);
        // The child writes into a PMD it mapped itself.
        k.user_write(cpu, &mut cm, a + 600 * PAGE, &[0xcc; 8])
            .unwrap();
        check_all(k, &cm);
        check_all(k, &mm);
        (mm, cm, a, mine)
    });
    check_tlb(k, &[&mm, &cm]);
    m.on_cpu(0, |cpu| {
        read_pages(k, cpu, &mut mm, a, &mine, 0..pages);
        let mut b = [0u8; 8];
        k.user_read(cpu, &mut cm, a + 600 * PAGE, &mut b).unwrap();
        assert_eq!(b, [0xcc; 8]);
        k.exit_mmap(cpu, cm);
        check_all(k, &mm);
        assert_eq!(meminfo_field(k, "FilePmdMapped:"), 6144);
        k.exit_mmap(cpu, mm);
        assert_eq!(meminfo_field(k, "FilePmdMapped:"), 0);
        assert_eq!(k.global_node_page_state(NR_FILE_MAPPED), 0);
    });
    teardown(&m, &inode, f);
    assert_eq!(drain_and_count(&m), before, "pages leaked");
}

// ---------------------------------------------------------------------------------------
// F. mremap of a file PMD region.
// ---------------------------------------------------------------------------------------

#[test]
fn f_mremap_of_file_pmds() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let pages = 1024u64;
    let data = file_bytes(pages, 0x3e3e);
    let before = drain_and_count(&m);
    let inode = new_file(k, &data, 75, true);
    let f = m.on_cpu(0, |_| k.open(&inode, FMode::READ).unwrap());
    let len = pages * PAGE;
    let (mut mm, b) = m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = map_at(
            k,
            cpu,
            &mut mm,
            &f,
            (len, 0, AT),
            PROT_READ,
            MAP_PRIVATE,
            MADV_HUGEPAGE,
        );
        read_pages(k, cpu, &mut mm, a, &data, 0..pages);
        let to = AT + 64 * MIB;
        let b = k.mremap(cpu, &mut mm, a, len, len, 1 | 2, to).unwrap();
        assert_eq!(b, to);
        assert_eq!(
            k.global_node_page_state(NR_FILE_MAPPED) > 0,
            mm.counter(MM_FILEPAGES) > 0
        );
        check_all(k, &mm);
        (mm, b)
    });
    check_tlb(k, &[&mm]);
    m.on_cpu(0, |cpu| {
        read_pages(k, cpu, &mut mm, b, &data, 0..pages);
        eprintln!(
            "after mremap FilePmdMapped {}",
            smaps_field(k, &mm, b, "FilePmdMapped:")
        );
        check_all(k, &mm);
        // mremap to a 4 KiB-shifted address: PMDs impossible, PTEs only.
        let c = k
            .mremap(cpu, &mut mm, b, len, len, 1 | 2, AT + 128 * MIB + PAGE)
            .unwrap();
        read_pages(k, cpu, &mut mm, c, &data, 0..pages);
        assert_eq!(smaps_field(k, &mm, c, "FilePmdMapped:"), 0);
        check_all(k, &mm);
        // Grow in place beyond the file: fine, and a PMD at the end is not past EOF.
        k.exit_mmap(cpu, mm);
    });
    teardown(&m, &inode, f);
    assert_eq!(drain_and_count(&m), before, "pages leaked");
}

// ---------------------------------------------------------------------------------------
// G. madvise on a file VMA with PMDs.
// ---------------------------------------------------------------------------------------

#[test]
fn g_madvise_on_file_pmds() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let pages = 1024u64;
    let data = file_bytes(pages, 0x6a6a);
    let before = drain_and_count(&m);
    let inode = new_file(k, &data, 76, true);
    let f = m.on_cpu(0, |_| k.open(&inode, FMode::READ).unwrap());
    let len = pages * PAGE;
    let (mut mm, a) = m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        let rw = PROT_READ | PROT_WRITE;
        let a = map_at(
            k,
            cpu,
            &mut mm,
            &f,
            (len, 0, AT),
            rw,
            MAP_PRIVATE,
            MADV_HUGEPAGE,
        );
        read_pages(k, cpu, &mut mm, a, &data, 0..pages);
        assert_eq!(
            k.madvise(cpu, &mut mm, a, len, MADV_FREE),
            Err(mmkit::Errno::EINVAL)
        );
        let r = k.madvise(cpu, &mut mm, a, len, mmkit::mm::khugepaged::MADV_COLLAPSE);
        eprintln!("MADV_COLLAPSE on a file VMA: {r:?}");
        assert_eq!(meminfo_field(k, "FilePmdMapped:"), 4096);
        check_all(k, &mm);
        // MADV_DONTNEED of 1 page in PMD 0 and of the whole PMD 1.
        k.madvise(cpu, &mut mm, a + PAGE, PAGE, MADV_DONTNEED)
            .unwrap();
        k.madvise(
            cpu,
            &mut mm,
            a + HPAGE_PMD_SIZE,
            HPAGE_PMD_SIZE,
            MADV_DONTNEED,
        )
        .unwrap();
        assert_eq!(meminfo_field(k, "FilePmdMapped:"), 0);
        assert_eq!(mm.counter(MM_FILEPAGES), 0);
        assert_eq!(k.global_node_page_state(NR_FILE_MAPPED), 0);
        check_all(k, &mm);
        (mm, a)
    });
    check_tlb(k, &[&mm]);
    m.on_cpu(0, |cpu| {
        read_pages(k, cpu, &mut mm, a, &data, 0..pages);
        check_all(k, &mm);
        k.exit_mmap(cpu, mm);
    });
    teardown(&m, &inode, f);
    assert_eq!(drain_and_count(&m), before, "pages leaked");
}

// ---------------------------------------------------------------------------------------
// I. A file whose tail is shorter than a PMD.
// ---------------------------------------------------------------------------------------

#[test]
fn i_file_tail_shorter_than_a_pmd() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let pages = 512 + 3;
    let mut data = file_bytes(pages + 1, 0x1a1a);
    data.truncate((pages * PAGE + 100) as usize);
    let before = drain_and_count(&m);
    let inode = new_file(k, &data, 77, true);
    let f = m.on_cpu(0, |_| k.open(&inode, FMode::READ).unwrap());
    let len = 4 * MIB;
    let mm = m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = map_at(
            k,
            cpu,
            &mut mm,
            &f,
            (len, 0, AT),
            PROT_READ,
            MAP_PRIVATE,
            MADV_HUGEPAGE,
        );
        let mut padded = data.clone();
        padded.resize(((pages + 1) * PAGE) as usize, 0);
        read_pages(k, cpu, &mut mm, a, &padded, 0..pages + 1);
        let mut b = [0u8; 1];
        assert!(k
            .user_read(cpu, &mut mm, a + (pages + 1) * PAGE, &mut b)
            .is_err());
        assert!(k.user_read(cpu, &mut mm, a + 1000 * PAGE, &mut b).is_err());
        assert_eq!(smaps_field(k, &mm, a, "FilePmdMapped:"), 2048);
        assert_eq!(mm.counter(MM_FILEPAGES), pages + 1);
        check_all(k, &mm);
        mm
    });
    check_tlb(k, &[&mm]);
    m.on_cpu(0, |cpu| k.exit_mmap(cpu, mm));
    teardown(&m, &inode, f);
    assert_eq!(drain_and_count(&m), before, "pages leaked");
}

// ---------------------------------------------------------------------------------------
// L. NR_FILE_MAPPED with a folio mapped by a PMD in one mm and PTEs in another.
// ---------------------------------------------------------------------------------------

#[test]
fn l_file_mapped_with_pmd_and_ptes_of_one_folio() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let pages = 1024u64;
    let data = file_bytes(pages, 0x4c4c);
    let before = drain_and_count(&m);
    let inode = new_file(k, &data, 78, true);
    let f = m.on_cpu(0, |_| k.open(&inode, FMode::READ).unwrap());
    let len = pages * PAGE;
    m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = map_at(
            k,
            cpu,
            &mut mm,
            &f,
            (len, 0, AT),
            PROT_READ,
            MAP_PRIVATE,
            MADV_HUGEPAGE,
        );
        read_pages(k, cpu, &mut mm, a, &data, 0..512);
        assert_eq!(k.global_node_page_state(NR_FILE_MAPPED), 512);
        // A second mm maps the same file misaligned: PTEs.
        let mut mm2 = k.mm_alloc(cpu).unwrap();
        let b = map_at(
            k,
            cpu,
            &mut mm2,
            &f,
            (len, 0, AT + PAGE),
            PROT_READ,
            MAP_PRIVATE,
            0,
        );
        read_pages(k, cpu, &mut mm2, b, &data, 0..3);
        let ptes = mm2.counter(MM_FILEPAGES);
        assert_eq!(k.global_node_page_state(NR_FILE_MAPPED), 512);
        k.munmap(cpu, &mut mm, a, len).unwrap();
        assert_eq!(k.global_node_page_state(NR_FILE_MAPPED), ptes);
        // Map it by PMD again while the PTEs are there, then drop the PTEs.
        let a = map_at(
            k,
            cpu,
            &mut mm,
            &f,
            (len, 0, AT),
            PROT_READ,
            MAP_PRIVATE,
            MADV_HUGEPAGE,
        );
        read_pages(k, cpu, &mut mm, a, &data, 0..1);
        assert_eq!(k.global_node_page_state(NR_FILE_MAPPED), 512);
        k.munmap(cpu, &mut mm2, b, len).unwrap();
        assert_eq!(k.global_node_page_state(NR_FILE_MAPPED), 512);
        check_all(k, &mm);
        check_all(k, &mm2);
        k.exit_mmap(cpu, mm);
        k.exit_mmap(cpu, mm2);
        assert_eq!(k.global_node_page_state(NR_FILE_MAPPED), 0);
    });
    teardown(&m, &inode, f);
    assert_eq!(drain_and_count(&m), before, "pages leaked");
}

// ---------------------------------------------------------------------------------------
// J. Compaction next to PMD-mapped file folios, with a partly PTE-mapped one.
// ---------------------------------------------------------------------------------------

#[test]
fn j_compaction_with_file_thps() {
    use mmkit::gfp::Gfp;
    let m = boot_mem(96, 1, "");
    let k = &m.kernel;
    let pages = 2048u64;
    let data = file_bytes(pages, 0x7c7c);
    let before = drain_and_count(&m);
    let inode = new_file(k, &data, 79, true);
    let f = m.on_cpu(0, |_| k.open(&inode, FMode::READ).unwrap());
    let len = pages * PAGE;
    let (mut mm, a) = m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = map_at(
            k,
            cpu,
            &mut mm,
            &f,
            (len, 0, AT),
            PROT_READ,
            MAP_PRIVATE,
            MADV_HUGEPAGE,
        );
        read_pages(k, cpu, &mut mm, a, &data, 0..pages);
        k.munmap(cpu, &mut mm, a + 5 * PAGE, PAGE).unwrap();
        read_pages(k, cpu, &mut mm, a, &data, 0..5);
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
        check_all(k, &mm);
        (mm, a)
    });
    check_tlb(k, &[&mm]);
    m.on_cpu(0, |cpu| {
        read_pages(k, cpu, &mut mm, a, &data, (0..pages).filter(|&p| p != 5));
        check_all(k, &mm);
        k.exit_mmap(cpu, mm);
    });
    teardown(&m, &inode, f);
    assert_eq!(drain_and_count(&m), before, "pages leaked");
}

// ---------------------------------------------------------------------------------------
// M. PROT_NONE file PMDs: reclaim, partial unmap, fork, exit.
// ---------------------------------------------------------------------------------------

#[test]
fn m_prot_none_file_pmds() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let pages = 2048u64;
    let data = file_bytes(pages, 0x9191);
    let before = drain_and_count(&m);
    let inode = new_file(k, &data, 80, true);
    let f = m.on_cpu(0, |_| k.open(&inode, FMode::READ).unwrap());
    let len = pages * PAGE;
    let rw = PROT_READ | PROT_WRITE;
    let (mut mm, a) = m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = map_at(
            k,
            cpu,
            &mut mm,
            &f,
            (len, 0, AT),
            rw,
            MAP_PRIVATE,
            MADV_HUGEPAGE,
        );
        read_pages(k, cpu, &mut mm, a, &data, 0..pages);
        // An anon page in PMD 0 so the VMA has an anon_vma (fork copies it).
        k.user_write(cpu, &mut mm, a + 3, &[1]).unwrap();
        k.mprotect(
            cpu,
            &mut mm,
            a + HPAGE_PMD_SIZE,
            3 * HPAGE_PMD_SIZE,
            PROT_NONE,
        )
        .unwrap();
        assert_eq!(meminfo_field(k, "FilePmdMapped:"), 6144);
        check_all(k, &mm);
        let cm = k.dup_mmap(cpu, &mm).unwrap();
        check_all(k, &cm);
        k.exit_mmap(cpu, cm);
        // Reclaim with PROT_NONE PMDs.
        k.lru_add_drain(cpu);
        for _ in 0..3 {
            k.try_to_free_pages(cpu, mmkit::gfp::GFP_KERNEL);
            check_all(k, &mm);
        }
        (mm, a)
    });
    check_tlb(k, &[&mm]);
    m.on_cpu(0, |cpu| {
        // Partial munmap inside a PROT_NONE PMD (split), whole-PMD munmap of another.
        let _ = k.munmap(cpu, &mut mm, a + 2 * HPAGE_PMD_SIZE + PAGE, PAGE);
        check_all(k, &mm);
        let _ = k.munmap(cpu, &mut mm, a + 3 * HPAGE_PMD_SIZE, HPAGE_PMD_SIZE);
        check_all(k, &mm);
        k.mprotect(cpu, &mut mm, a + HPAGE_PMD_SIZE, HPAGE_PMD_SIZE, rw)
            .unwrap();
        read_pages(k, cpu, &mut mm, a, &data, 512..1024);
        check_all(k, &mm);
        k.exit_mmap(cpu, mm);
        assert_eq!(meminfo_field(k, "FilePmdMapped:"), 0);
        assert_eq!(k.global_node_page_state(NR_FILE_MAPPED), 0);
    });
    teardown(&m, &inode, f);
    assert_eq!(drain_and_count(&m), before, "pages leaked");
}

// ---------------------------------------------------------------------------------------
// N. A folio PMD-mapped in one mm and dirty-PTE-mapped (shared) in another; reclaim.
// ---------------------------------------------------------------------------------------

#[test]
fn n_reclaim_of_pmd_and_dirty_pte_mapped_shared_folio() {
    use mmkit::mm::madvise::MADV_NOHUGEPAGE;
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let pages = 1024u64;
    let mut data = file_bytes(pages, 0xabab);
    let before = drain_and_count(&m);
    let inode = new_file(k, &data, 81, true);
    let f = m.on_cpu(0, |_| k.open(&inode, FMode::READ | FMode::WRITE).unwrap());
    let len = pages * PAGE;
    let rw = PROT_READ | PROT_WRITE;
    let (mut mm, mut mm2, a, b) = m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = map_at(
            k,
            cpu,
            &mut mm,
            &f,
            (len, 0, AT),
            PROT_READ,
            MAP_SHARED,
            MADV_HUGEPAGE,
        );
        read_pages(k, cpu, &mut mm, a, &data, 0..pages);
        let mut mm2 = k.mm_alloc(cpu).unwrap();
        let b = map_at(
            k,
            cpu,
            &mut mm2,
            &f,
            (len, 0, AT),
            rw,
            MAP_SHARED,
            MADV_NOHUGEPAGE,
        );
        for p in [2u64, 100, 700] {
            k.user_write(cpu, &mut mm2, b + p * PAGE, b"dirty!")
                .unwrap();
            data[(p * PAGE) as usize..(p * PAGE + 6) as usize].copy_from_slice(b"dirty!");
        }
        assert_eq!(meminfo_field(k, "FilePmdMapped:"), 4096);
        check_all(k, &mm);
        check_all(k, &mm2);
        read_pages(k, cpu, &mut mm, a, &data, 0..pages);
        k.lru_add_drain(cpu);
        for _ in 0..30 {
            if inode.nrpages() < pages {
                break;
            }
            k.try_to_free_pages(cpu, mmkit::gfp::GFP_KERNEL);
            check_all(k, &mm);
            check_all(k, &mm2);
        }
        eprintln!("nrpages after reclaim {}", inode.nrpages());
        (mm, mm2, a, b)
    });
    check_tlb(k, &[&mm, &mm2]);
    m.on_cpu(0, |cpu| {
        read_pages(k, cpu, &mut mm, a, &data, 0..pages);
        read_pages(k, cpu, &mut mm2, b, &data, 0..pages);
        k.msync(cpu, &mm2, b, len, 4).unwrap();
        let mut on_file = vec![0u8; len as usize];
        inode.data().read_at(0, &mut on_file).unwrap();
        assert!(on_file == data, "the file's bytes");
        check_all(k, &mm);
        check_all(k, &mm2);
        k.exit_mmap(cpu, mm);
        k.exit_mmap(cpu, mm2);
    });
    teardown(&m, &inode, f);
    assert_eq!(drain_and_count(&m), before, "pages leaked");
}

// ---------------------------------------------------------------------------------------
// O. Swap pressure with file THPs and anonymous memory.
// ---------------------------------------------------------------------------------------

#[test]
fn o_swap_pressure_with_file_thps() {
    use mmkit_sim::hostfs::make_swap_file;
    let m = boot_mem(64, 1, "");
    let k = &m.kernel;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("swapfile");
    let sf = make_swap_file(&path, 96 << 20).unwrap();
    let before = drain_and_count(&m);
    k.swapon(Arc::new(sf), &path.to_string_lossy(), -2).unwrap();
    let pages = 4096u64; // 16 MiB file
    let data = file_bytes(pages, 0x0505);
    let inode = new_file(k, &data, 82, true);
    let f = m.on_cpu(0, |_| k.open(&inode, FMode::READ).unwrap());
    let len = pages * PAGE;
    let anon_len = 40 * MIB;
    m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        let rw = PROT_READ | PROT_WRITE;
        let a = map_at(
            k,
            cpu,
            &mut mm,
            &f,
            (len, 0, AT),
            rw,
            MAP_PRIVATE,
            MADV_HUGEPAGE,
        );
        let anon = k
            .do_mmap(
                cpu,
                &mut mm,
                None,
                AT + 256 * MIB,
                anon_len,
                rw,
                MAP_PRIVATE | MAP_ANONYMOUS,
                0,
            )
            .unwrap();
        k.madvise(cpu, &mut mm, anon, anon_len, MADV_HUGEPAGE)
            .unwrap();
        let mut mine = data.clone();
        for round in 0..3u8 {
            read_pages(k, cpu, &mut mm, a, &mine, (0..pages).step_by(7));
            for p in (round as u64..pages).step_by(333) {
                k.user_write(cpu, &mut mm, a + p * PAGE, &[round + 10; 4])
                    .unwrap();
                mine[(p * PAGE) as usize..(p * PAGE + 4) as usize].fill(round + 10);
            }
            for p in (0..anon_len / PAGE).step_by(1) {
                k.user_write(cpu, &mut mm, anon + p * PAGE, &[round + 1, p as u8])
                    .unwrap();
            }
            check_all(k, &mm);
            read_pages(k, cpu, &mut mm, a, &mine, 0..pages);
            for p in (0..anon_len / PAGE).step_by(97) {
                let mut b = [0u8; 2];
                k.user_read(cpu, &mut mm, anon + p * PAGE, &mut b).unwrap();
                assert_eq!(b, [round + 1, p as u8], "anon page {p} round {round}");
            }
            check_all(k, &mm);
        }
        eprintln!(
            "FilePmdMapped {} FileHugePages {} swap used? pswpout {}",
            meminfo_field(k, "FilePmdMapped:"),
            meminfo_field(k, "FileHugePages:"),
            mmkit::fs::proc::vmstat::vm_event(k, "pswpout").unwrap()
        );
        k.exit_mmap(cpu, mm);
    });
    teardown(&m, &inode, f);
    m.on_cpu(0, |cpu| k.swapoff(cpu, &path.to_string_lossy()))
        .unwrap();
    assert_eq!(drain_and_count(&m), before, "pages leaked");
}

// ---------------------------------------------------------------------------------------
// P/Q. Batches that must stop: a PTE table end, a VMA end, a COW'd page in the middle.
// ---------------------------------------------------------------------------------------

#[test]
fn p_batches_stop_at_table_vma_and_foreign_pages() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let pages = 512u64;
    let data = file_bytes(pages, 0x7a7a);
    let before = drain_and_count(&m);
    let inode = new_file(k, &data, 83, true);
    let f = m.on_cpu(0, |_| k.open(&inode, FMode::READ).unwrap());
    let len = pages * PAGE;
    let rw = PROT_READ | PROT_WRITE;
    // The file from 0 at AT - 40 pages: folios straddle the 2 MiB boundary at AT.
    let base = AT + 64 * MIB - 40 * PAGE;
    let (mut mm, mut cm, mine) = m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = map_at(k, cpu, &mut mm, &f, (len, 0, base), rw, MAP_PRIVATE, 0);
        read_pages(k, cpu, &mut mm, a, &data, 0..pages);
        let mut mine = data.clone();
        // A COW'd page in the middle of a folio, and one at the table boundary.
        for p in [9u64, 39, 40, 100] {
            k.user_write(cpu, &mut mm, a + p * PAGE, &[0x77; 8])
                .unwrap();
            mine[(p * PAGE) as usize..(p * PAGE + 8) as usize].fill(0x77);
        }
        // Split the VMA in the middle of a folio (mprotect of pages 50..70).
        k.mprotect(cpu, &mut mm, a + 50 * PAGE, 20 * PAGE, PROT_READ)
            .unwrap();
        // A hole in a folio.
        k.madvise(cpu, &mut mm, a + 130 * PAGE, PAGE, MADV_DONTNEED)
            .unwrap();
        check_all(k, &mm);
        let file_mapped = k.global_node_page_state(NR_FILE_MAPPED);
        let mut cm = k.dup_mmap(cpu, &mm).unwrap();
        assert_eq!(k.global_node_page_state(NR_FILE_MAPPED), file_mapped);
        assert_eq!(cm.counter(MM_FILEPAGES), mm.counter(MM_FILEPAGES));
        assert_eq!(cm.counter(MM_ANONPAGES), mm.counter(MM_ANONPAGES));
        check_all(k, &mm);
        check_all(k, &cm);
        read_pages(k, cpu, &mut cm, a, &mine, 0..pages);
        (mm, cm, mine)
    });
    check_tlb(k, &[&mm, &cm]);
    m.on_cpu(0, |cpu| {
        // Zaps crossing the table and VMA boundaries, ending mid-folio.
        k.munmap(cpu, &mut cm, base + 30 * PAGE, 35 * PAGE).unwrap();
        check_all(k, &cm);
        k.madvise(cpu, &mut mm, base + 20 * PAGE, 60 * PAGE, MADV_DONTNEED)
            .unwrap();
        check_all(k, &mm);
        let mut fresh = mine.clone();
        for p in 20..80u64 {
            let o = (p * PAGE) as usize;
            fresh[o..o + PAGE as usize].copy_from_slice(&data[o..o + PAGE as usize]);
        }
        read_pages(
            k,
            cpu,
            &mut mm,
            base,
            &fresh,
            (0..pages).filter(|&p| p != 130),
        );
        read_pages(
            k,
            cpu,
            &mut cm,
            base,
            &mine,
            (0..pages).filter(|p| !(30..65).contains(p)),
        );
        check_all(k, &mm);
        check_all(k, &cm);
    });
    check_tlb(k, &[&mm, &cm]);
    m.on_cpu(0, |cpu| {
        k.exit_mmap(cpu, cm);
        check_all(k, &mm);
        k.exit_mmap(cpu, mm);
        assert_eq!(k.global_node_page_state(NR_FILE_MAPPED), 0);
    });
    teardown(&m, &inode, f);
    assert_eq!(drain_and_count(&m), before, "pages leaked");
}

/// Control for B: the same mlocked file mapped by PTEs (no MADV_HUGEPAGE: large folios up to
/// 128 KiB, mapped by PTEs) survives reclaim — only the PMD case loses its pages.
#[test]
fn b2_control_mlocked_pte_mapped_large_folios_survive_reclaim() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let pages = 1024u64;
    let data = file_bytes(pages, 0xb10c);
    let inode = new_file(k, &data, 84, true);
    let f = m.on_cpu(0, |_| k.open(&inode, FMode::READ).unwrap());
    m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        let len = pages * PAGE;
        let a = map_at(k, cpu, &mut mm, &f, (len, 0, AT), PROT_READ, MAP_PRIVATE, 0);
        read_pages(k, cpu, &mut mm, a, &data, 0..pages);
        k.mlock(cpu, &mut mm, a, len).unwrap();
        k.lru_add_drain(cpu);
        for _ in 0..20 {
            k.try_to_free_pages(cpu, mmkit::gfp::GFP_KERNEL);
            check_all(k, &mm);
        }
        assert_eq!(inode.nrpages(), pages);
        assert_eq!(mm.counter(MM_FILEPAGES), pages);
        k.exit_mmap(cpu, mm);
    });
    teardown(&m, &inode, f);
}

// ---------------------------------------------------------------------------------------
// R. Two CPUs: PMD faults, writes and unmaps against reclaim / drop_caches / compaction.
// ---------------------------------------------------------------------------------------

#[test]
fn r_pmd_faults_race_reclaim_and_drop_caches() {
    let m = boot_mem(128, 2, "");
    let k = &m.kernel;
    let pages = 2048u64;
    let data = file_bytes(pages, 0x2c2c);
    let before = drain_and_count(&m);
    let inode = new_file(k, &data, 86, true);
    let f = m.on_cpu(0, |_| k.open(&inode, FMode::READ).unwrap());
    let len = pages * PAGE;
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            m.on_cpu(1, |cpu| {
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match i % 3 {
                        0 => {
                            k.lru_add_drain_all(cpu);
                            k.drop_caches(cpu, 1).unwrap();
                        }
                        1 => {
                            k.try_to_free_pages(cpu, mmkit::gfp::GFP_KERNEL);
                        }
                        _ => {
                            for z in k.nodes[0].zones.iter() {
                                k.compact_zone(cpu, z, 9);
                            }
                        }
                    }
                    i += 1;
                }
            })
        });
        m.on_cpu(0, |cpu| {
            let mut mm = k.mm_alloc(cpu).unwrap();
            for round in 0..60u64 {
                let rw = PROT_READ | PROT_WRITE;
                let a = map_at(
                    k,
                    cpu,
                    &mut mm,
                    &f,
                    (len, 0, AT),
                    rw,
                    MAP_PRIVATE,
                    MADV_HUGEPAGE,
                );
                read_pages(k, cpu, &mut mm, a, &data, (0..pages).step_by(61));
                if round % 4 == 0 {
                    k.user_write(cpu, &mut mm, a + (round % pages) * PAGE, &[1])
                        .unwrap();
                }
                if round % 3 == 0 {
                    k.munmap(cpu, &mut mm, a + 700 * PAGE, PAGE).unwrap();
                }
                if round % 5 == 0 {
                    let mut cm = k.dup_mmap(cpu, &mm).unwrap();
                    let mut b = [0u8; 1];
                    k.user_read(cpu, &mut cm, a + 1500 * PAGE, &mut b).unwrap();
                    assert_eq!(b[0], data[(1500 * PAGE) as usize]);
                    k.exit_mmap(cpu, cm);
                }
                k.munmap(cpu, &mut mm, a, len).unwrap();
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            k.exit_mmap(cpu, mm);
        });
    });
    m.on_cpu(0, |cpu| {
        let mm = k.mm_alloc(cpu).unwrap();
        check_all(k, &mm);
        k.exit_mmap(cpu, mm);
    });
    teardown(&m, &inode, f);
    assert_eq!(drain_and_count(&m), before, "pages leaked");
}

/// The narrow form of R: one CPU maps a file PMD and unmaps it, over and over; the other
/// reclaims. `split_folio_to_list` reads `entire_mapcount() > 0` without a lock, then
/// finds no PMD (the zap cleared it meanwhile) and asserts.
#[test]
fn r2_munmap_of_file_pmd_races_reclaim_split() {
    let m = boot_mem(128, 2, "");
    let k = &m.kernel;
    let pages = 1024u64;
    let data = file_bytes(pages, 0x2d2d);
    let inode = new_file(k, &data, 87, true);
    let f = m.on_cpu(0, |_| k.open(&inode, FMode::READ).unwrap());
    let len = pages * PAGE;
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            m.on_cpu(1, |cpu| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    k.try_to_free_pages(cpu, mmkit::gfp::GFP_KERNEL);
                }
            })
        });
        m.on_cpu(0, |cpu| {
            let mut mm = k.mm_alloc(cpu).unwrap();
            for _ in 0..3000u64 {
                let a = map_at(
                    k,
                    cpu,
                    &mut mm,
                    &f,
                    (len, 0, AT),
                    PROT_READ,
                    MAP_PRIVATE,
                    MADV_HUGEPAGE,
                );
                let mut b = [0u8; 1];
                k.user_read(cpu, &mut mm, a + 513 * PAGE, &mut b).unwrap();
                k.user_read(cpu, &mut mm, a + 3 * PAGE, &mut b).unwrap();
                k.munmap(cpu, &mut mm, a, len).unwrap();
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            k.exit_mmap(cpu, mm);
        });
    });
    teardown(&m, &inode, f);
}
