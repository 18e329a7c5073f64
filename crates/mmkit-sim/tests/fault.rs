//! Demand paging and copy-on-write through the software MMU: the zero page, anonymous write
//! faults, fork sharing and COW (bytes, pfns, mapcounts), reuse by the last mapper, private
//! and shared file mappings with the page cache and writeback, the SIGSEGV/SIGBUS cases,
//! stack growth up to RLIMIT_STACK, brk, MADV_DONTNEED, MAP_POPULATE, and full page
//! accounting at teardown.

mod common;
use common::{boot_mem, free_and_pcp};
use mmkit::arch::x86_64::fault::{BUS_ADRERR, SEGV_ACCERR, SEGV_MAPERR, SIGBUS, SIGSEGV};
use mmkit::fs::inode::{FMode, RamFile};
use mmkit::mm::mm_types::{MmStruct, VmFlags, MM_ANONPAGES, MM_FILEPAGES};
use mmkit::mm::mmap::*;
use mmkit::{CpuGuard, Errno, Kernel};
use std::sync::Arc;

const ANON: u32 = MAP_PRIVATE | MAP_ANONYMOUS;
const RW: u32 = PROT_READ | PROT_WRITE;

fn pfn_at(k: &Kernel, mm: &MmStruct, va: u64) -> Option<u64> {
    k.pte_lookup(&mm.pt, va)
        .filter(|p| p.is_present())
        .map(|p| p.pfn().0)
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_mul(31).wrapping_add(i as u8))
        .collect()
}

fn read(k: &Kernel, cpu: &CpuGuard<'_>, mm: &mut MmStruct, va: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    k.user_read(cpu, mm, va, &mut b).unwrap();
    b
}

/// Reads of untouched anonymous memory map the shared zero page and allocate no page; the
/// first write allocates a zeroed page; the bytes read back through the MMU and through the
/// direct map.
#[test]
fn anonymous_read_maps_zero_page_write_allocates() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = k.mmap(cpu, &mut mm, 0, 16 << 12, RW, ANON, 0).unwrap();
        assert_eq!(read(k, cpu, &mut mm, a, 16 << 12), vec![0; 16 << 12]);
        for i in 0..16 {
            assert_eq!(pfn_at(k, &mm, a + (i << 12)), Some(k.zero_pfn().0));
        }
        assert_eq!(mm.counter(MM_ANONPAGES), 0, "reads allocate nothing");
        assert_eq!(mm.faults.min_flt, 16);
        let data = pattern(7, 5000);
        k.user_write(cpu, &mut mm, a + 3000, &data).unwrap();
        assert_eq!(mm.counter(MM_ANONPAGES), 2, "the two pages written");
        assert_eq!(read(k, cpu, &mut mm, a + 3000, 5000), data);
        let pfn = pfn_at(k, &mm, a + 4096).unwrap();
        assert_ne!(pfn, k.zero_pfn().0);
        let page = k.pfn_to_page(mmkit::Pfn(pfn)).unwrap();
        k.lru_add_drain(cpu); // the LRU add batch holds a reference until drained
        assert_eq!((page.refcount(), page.mapcount()), (1, 1));
        let mut direct = vec![0u8; 4096];
        k.read_page(page, 0, &mut direct).unwrap();
        assert_eq!(&direct[..3000 + 5000 - 4096], &data[4096 - 3000..]);
        assert_eq!(read(k, cpu, &mut mm, a + 8192, 4096), vec![0; 4096]);
        k.check_mm_invariants(&mm).unwrap();
        k.exit_mmap(cpu, mm);
    });
}

/// fork shares every page; a write by either side copies only that page; the untouched pages
/// stay shared (same pfn, mapcount 2); after the child exits the parent's write reuses the
/// page in place.
#[test]
fn fork_shares_until_written_then_copies() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        k.lru_add_drain_all(cpu);
        k.drain_all_pages(cpu);
    });
    let before = free_and_pcp(k);
    m.on_cpu(0, |cpu| {
        let mut parent = k.mm_alloc(cpu).unwrap();
        let a = k.mmap(cpu, &mut parent, 0, 8 << 12, RW, ANON, 0).unwrap();
        for i in 0..8u64 {
            k.user_write(cpu, &mut parent, a + (i << 12), &pattern(i as u8, 4096))
                .unwrap();
        }
        let mut child = k.dup_mmap(cpu, &parent).unwrap();
        k.check_mm_invariants(&child).unwrap();
        k.lru_add_drain(cpu);
        for i in 0..8u64 {
            let va = a + (i << 12);
            assert_eq!(read(k, cpu, &mut child, va, 4096), pattern(i as u8, 4096));
            let (p, c) = (pfn_at(k, &parent, va), pfn_at(k, &child, va));
            assert_eq!(p, c, "shared after fork");
            let page = k.pfn_to_page(mmkit::Pfn(p.unwrap())).unwrap();
            assert_eq!((page.mapcount(), page.refcount()), (2, 2));
        }
        // The child writes page 0, the parent page 1.
        k.user_write(cpu, &mut child, a, b"child").unwrap();
        k.user_write(cpu, &mut parent, a + 4096, b"parent").unwrap();
        assert_eq!(&read(k, cpu, &mut child, a, 5)[..], b"child");
        assert_eq!(read(k, cpu, &mut parent, a, 4096), pattern(0, 4096));
        assert_eq!(&read(k, cpu, &mut parent, a + 4096, 6)[..], b"parent");
        assert_eq!(read(k, cpu, &mut child, a + 4096, 4096), pattern(1, 4096));
        assert_ne!(pfn_at(k, &parent, a), pfn_at(k, &child, a));
        assert_ne!(pfn_at(k, &parent, a + 4096), pfn_at(k, &child, a + 4096));
        assert_eq!(pfn_at(k, &parent, a + 8192), pfn_at(k, &child, a + 8192));
        assert_eq!(child.counter(MM_ANONPAGES), 8);
        // The child exits: the parent is the only mapper of page 2 and reuses it.
        k.exit_mmap(cpu, child);
        let shared = pfn_at(k, &parent, a + 8192).unwrap();
        let page = k.pfn_to_page(mmkit::Pfn(shared)).unwrap();
        assert_eq!((page.mapcount(), page.refcount()), (1, 1));
        k.user_write(cpu, &mut parent, a + 8192, b"reuse").unwrap();
        assert_eq!(
            pfn_at(k, &parent, a + 8192),
            Some(shared),
            "reused, not copied"
        );
        k.check_mm_invariants(&parent).unwrap();
        k.exit_mmap(cpu, parent);
        k.lru_add_drain_all(cpu);
        k.drain_all_pages(cpu);
    });
    assert_eq!(free_and_pcp(k), before, "every page and page table back");
    assert_eq!(k.page_table_pages(), 0);
}

/// fork copies the page-table entries a fault could not fill in again and no others
/// (`vma_needs_copy`): those of a VMA with anonymous pages (its file pages too) and of the
/// `VM_PFNMAP` `[vvar]`; not those of a private file mapping never written, of `[vdso]`, nor
/// the zero page of anonymous memory only read. The child faults those in, with the bytes
/// the parent sees.
#[test]
fn fork_copies_only_entries_a_fault_cannot_refill() {
    let m = boot_mem(64, 1, "");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        let mut p = k.mm_alloc(cpu).unwrap();
        let inode = k.new_inode(Box::new(RamFile::new(pattern(7, 4 << 12))), (0, 2), 9, "/t");
        let f = k.open(&inode, FMode::READ).unwrap();
        let text = k
            .do_mmap(cpu, &mut p, Some(&f), 0, 4 << 12, PROT_READ, MAP_PRIVATE, 0)
            .unwrap();
        let data = k
            .do_mmap(cpu, &mut p, Some(&f), 0, 4 << 12, RW, MAP_PRIVATE, 0)
            .unwrap();
        let zero = k.mmap(cpu, &mut p, 0, 4 << 12, RW, ANON, 0).unwrap();
        let vdso = k.map_vdso(cpu, &mut p).unwrap();
        let vvar = vdso - (6 << 12);
        assert_eq!(read(k, cpu, &mut p, text, 4096), pattern(7, 4096));
        assert_eq!(read(k, cpu, &mut p, data, 16), pattern(7, 16));
        k.user_write(cpu, &mut p, data + 4096, b"written").unwrap();
        assert_eq!(read(k, cpu, &mut p, zero, 8), vec![0; 8]);
        read(k, cpu, &mut p, vvar, 8);
        read(k, cpu, &mut p, vdso, 8);
        for va in [text, data, data + 4096, zero, vvar, vdso] {
            assert!(pfn_at(k, &p, va).is_some(), "{va:#x} mapped in the parent");
        }
        let mut c = k.dup_mmap(cpu, &p).unwrap();
        k.check_mm_invariants(&c).unwrap();
        // Copied: the written VMA's file page and anonymous page, the raw pfns of [vvar].
        for va in [data, data + 4096, vvar] {
            assert_eq!(pfn_at(k, &c, va), pfn_at(k, &p, va), "{va:#x} copied");
        }
        // Not copied: what a fault fills in again.
        for va in [text, text + 4096, zero, vdso] {
            assert_eq!(pfn_at(k, &c, va), None, "{va:#x} left to a fault");
        }
        // The parent's first read was a major fault (its own page only); the second mapping's
        // read mapped the four cached pages by fault-around, one then copied on write: the
        // child has those three.
        assert_eq!(p.counter(MM_FILEPAGES), 4);
        assert_eq!(c.counter(MM_FILEPAGES), 3);
        assert_eq!(c.counter(MM_ANONPAGES), 1);
        // The child reads the copied pages without a fault, the others with one each (the
        // page cache holds the file: fault-around maps the rest of the text).
        assert_eq!(&read(k, cpu, &mut c, data + 4096, 7)[..], b"written");
        assert_eq!(read(k, cpu, &mut c, data, 16), pattern(7, 16));
        read(k, cpu, &mut c, vvar, 8);
        assert_eq!(c.faults.min_flt, 0, "copied entries need no fault");
        assert_eq!(read(k, cpu, &mut c, text, 4 << 12), pattern(7, 4 << 12));
        assert_eq!(
            c.faults.min_flt, 1,
            "one read fault, fault-around for the rest"
        );
        assert_eq!(pfn_at(k, &c, text), pfn_at(k, &p, text), "the cache's page");
        assert_eq!(read(k, cpu, &mut c, zero, 8), vec![0; 8]);
        read(k, cpu, &mut c, vdso, 8);
        assert_eq!(pfn_at(k, &c, vdso), pfn_at(k, &p, vdso));
        assert_eq!(c.faults.min_flt, 3);
        for mm in [p, c] {
            k.check_mm_invariants(&mm).unwrap();
            k.exit_mmap(cpu, mm);
        }
        k.fput(cpu, f);
        k.evict_inode(cpu, &inode).unwrap();
    });
}

/// A private file mapping written by one process leaves the file and its cached page as they
/// were; a shared mapping written by one process is seen by another mapping of the file and
/// reaches the file on writeback.
#[test]
fn private_and_shared_file_mappings() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let content = pattern(42, 3 * 4096 + 100);
    let ram = RamFile::new(content.clone());
    let inode = k.new_inode(Box::new(ram), (0, 2), 99, "/data/file");
    m.on_cpu(0, |cpu| {
        let rw = k.open(&inode, FMode::READ | FMode::WRITE).unwrap();
        let ro = k.open(&inode, FMode::READ).unwrap();
        let mut p1 = k.mm_alloc(cpu).unwrap();
        let mut p2 = k.mm_alloc(cpu).unwrap();
        // Private: the write goes to a copy.
        let a = k
            .do_mmap(cpu, &mut p1, Some(&ro), 0, 4 << 12, RW, MAP_PRIVATE, 0)
            .unwrap();
        assert_eq!(read(k, cpu, &mut p1, a, content.len()), content);
        assert_eq!(
            p1.counter(MM_FILEPAGES),
            4,
            "fault-around mapped the cached pages"
        );
        k.user_write(cpu, &mut p1, a + 10, b"PRIVATE").unwrap();
        assert_eq!(&read(k, cpu, &mut p1, a + 10, 7)[..], b"PRIVATE");
        let mut cached = vec![0u8; 7];
        k.filemap_read(cpu, &inode, 10, &mut cached).unwrap();
        assert_eq!(
            cached,
            content[10..17],
            "the page cache keeps the file's bytes"
        );
        assert_eq!((p1.counter(MM_FILEPAGES), p1.counter(MM_ANONPAGES)), (3, 1));
        // Beyond the end of the file (inside the mapping): SIGBUS.
        let e = k.user_write(cpu, &mut p1, a + (3 << 12) + 200, b"x");
        assert_eq!(
            e.map(|_| ()),
            Ok(()),
            "last partial page is inside the file"
        );
        let mut mm_b = k.mm_alloc(cpu).unwrap();
        let b = k
            .do_mmap(
                cpu,
                &mut mm_b,
                Some(&ro),
                0,
                8 << 12,
                PROT_READ,
                MAP_PRIVATE,
                0,
            )
            .unwrap();
        let err = k
            .user_read(cpu, &mut mm_b, b + (5 << 12), &mut [0u8; 1])
            .unwrap_err();
        assert_eq!((err.signo, err.code), (SIGBUS, BUS_ADRERR));
        // Shared, writable only through a file opened for writing.
        assert_eq!(
            k.do_mmap(cpu, &mut p2, Some(&ro), 0, 4096, RW, MAP_SHARED, 0),
            Err(Errno::EACCES)
        );
        let s1 = k
            .do_mmap(cpu, &mut p2, Some(&rw), 0, 4 << 12, RW, MAP_SHARED, 0)
            .unwrap();
        let s2 = k
            .do_mmap(
                cpu,
                &mut mm_b,
                Some(&rw),
                0,
                4 << 12,
                PROT_READ,
                MAP_SHARED,
                0,
            )
            .unwrap();
        k.user_write(cpu, &mut p2, s1 + 4096 + 5, b"SHARED")
            .unwrap();
        assert_eq!(&read(k, cpu, &mut mm_b, s2 + 4096 + 5, 6)[..], b"SHARED");
        assert_eq!(pfn_at(k, &p2, s1 + 4096), pfn_at(k, &mm_b, s2 + 4096));
        // The private copy in p1 was made before: it keeps the old bytes.
        assert_eq!(&read(k, cpu, &mut p1, a + 10, 7)[..], b"PRIVATE");
        assert!(k.global_node_page_state(mmkit::mm::filemap::NR_FILE_DIRTY) >= 1);
        k.write_inode_now(cpu, &inode).unwrap();
        let mut on_disk = vec![0u8; 6];
        inode.data().read_at(4096 + 5, &mut on_disk).unwrap();
        assert_eq!(&on_disk, b"SHARED", "writeback reached the file");
        for mm in [p1, p2, mm_b] {
            k.check_mm_invariants(&mm).unwrap();
            k.exit_mmap(cpu, mm);
        }
        k.fput(cpu, rw);
        k.fput(cpu, ro);
        k.evict_inode(cpu, &inode).unwrap();
    });
}

/// Each fault Linux turns into a signal, with its si_code; kernel accesses get EFAULT.
#[test]
fn segv_and_bus_cases() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        let ro = k.mmap(cpu, &mut mm, 0, 4096, PROT_READ, ANON, 0).unwrap();
        let none = k.mmap(cpu, &mut mm, 0, 4096, PROT_NONE, ANON, 0).unwrap();
        let rw = k.mmap(cpu, &mut mm, 0, 4096, RW, ANON, 0).unwrap();
        let segv = |r: Result<(), mmkit::arch::x86_64::fault::Signal>| {
            let s = r.unwrap_err();
            assert_eq!(s.signo, SIGSEGV);
            s.code
        };
        let mut b = [0u8; 8];
        assert_eq!(
            segv(k.user_read(cpu, &mut mm, 0x1000_0000, &mut b)),
            SEGV_MAPERR
        );
        assert_eq!(segv(k.user_write(cpu, &mut mm, ro, b"x")), SEGV_ACCERR);
        assert_eq!(segv(k.user_read(cpu, &mut mm, none, &mut b)), SEGV_ACCERR);
        assert_eq!(
            segv(k.user_fetch(cpu, &mut mm, rw, &mut b)),
            SEGV_ACCERR,
            "NX"
        );
        assert_eq!(
            segv(k.user_read(cpu, &mut mm, 0xffff_8880_0000_0000, &mut b)),
            SEGV_MAPERR,
            "user access to the direct map"
        );
        k.user_write(cpu, &mut mm, rw, b"ok").unwrap();
        k.mprotect(cpu, &mut mm, rw, 4096, PROT_READ | PROT_EXEC)
            .unwrap();
        k.user_fetch(cpu, &mut mm, rw, &mut b).unwrap();
        assert_eq!(&b[..2], b"ok");
        assert_eq!(segv(k.user_write(cpu, &mut mm, rw, b"x")), SEGV_ACCERR);
        // The kernel's view: EFAULT.
        assert_eq!(k.copy_to_user(cpu, &mut mm, ro, b"x"), Err(Errno::EFAULT));
        assert_eq!(
            k.copy_to_user(cpu, &mut mm, 0xffff_8880_0000_0000, b"x"),
            Err(Errno::EFAULT)
        );
        assert_eq!(
            k.copy_from_user(cpu, &mut mm, &mut b, u64::MAX - 3),
            Err(Errno::EFAULT)
        );
        k.exit_mmap(cpu, mm);
    });
}

/// A MAP_GROWSDOWN stack grows on demand page by page, keeps the guard gap to the mapping
/// below, and stops at RLIMIT_STACK with SIGSEGV.
#[test]
fn stack_grows_to_the_rlimit() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        mm.rlimit_stack = 64 << 12;
        let top = 0x7000_0000_0000u64;
        let s = k
            .mmap(
                cpu,
                &mut mm,
                top - 4096,
                4096,
                RW,
                ANON | MAP_GROWSDOWN | MAP_FIXED,
                0,
            )
            .unwrap();
        assert_eq!(s, top - 4096);
        for i in 2..=64u64 {
            k.user_write(cpu, &mut mm, top - (i << 12), &[i as u8])
                .unwrap();
        }
        assert_eq!(
            mm.vma_lookup(top - 4096).unwrap().vm_start,
            top - (64 << 12)
        );
        let e = k
            .user_write(cpu, &mut mm, top - (65 << 12), b"x")
            .unwrap_err();
        assert_eq!(
            (e.signo, e.code),
            (SIGSEGV, SEGV_MAPERR),
            "beyond RLIMIT_STACK"
        );
        for i in 2..=64u64 {
            assert_eq!(read(k, cpu, &mut mm, top - (i << 12), 1), vec![i as u8]);
        }
        // Within the guard gap of a mapping below: no growth.
        mm.rlimit_stack = 8 << 20;
        let low = top - (64 << 12) - (300 << 12);
        k.mmap(cpu, &mut mm, low, 4096, RW, ANON | MAP_FIXED, 0)
            .unwrap();
        k.user_write(cpu, &mut mm, low + (300 << 12) - (40 << 12), b"y")
            .unwrap();
        let e = k
            .user_write(cpu, &mut mm, low + (200 << 12), b"z")
            .unwrap_err();
        assert_eq!(e.code, SEGV_MAPERR, "would come within stack_guard_gap");
        k.check_mm_invariants(&mm).unwrap();
        k.exit_mmap(cpu, mm);
    });
}

/// A growsdown mapping's page offset moves down with its start and never below 0
/// (`expand_downwards`: grow only while `grow <= vm_pgoff`): a file mapping made at page 2
/// of its file grows over pages 1 and 0 (reading them), and an access below that is SIGSEGV.
/// The subtraction used to underflow and panic (found by the mm_ops fuzzer).
#[test]
fn growsdown_file_mapping_stops_at_offset_zero() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let bytes: Vec<u8> = (0..4u8).flat_map(|p| vec![b'a' + p; 4096]).collect();
    let inode = k.new_inode(Box::new(RamFile::new(bytes)), (0, 5), 55, "/growsdown");
    m.on_cpu(0, |cpu| {
        let f = k.open(&inode, FMode::READ).unwrap();
        let mut mm = k.mm_alloc(cpu).unwrap();
        let at = 0x6000_0000_0000u64;
        let a = k
            .do_mmap(
                cpu,
                &mut mm,
                Some(&f),
                at,
                4096,
                PROT_READ,
                MAP_PRIVATE | MAP_GROWSDOWN | MAP_FIXED,
                2 << 12,
            )
            .unwrap();
        assert_eq!(read(k, cpu, &mut mm, a, 1), vec![b'c']);
        assert_eq!(
            read(k, cpu, &mut mm, a - 4096, 1),
            vec![b'b'],
            "grew over page 1"
        );
        assert_eq!(read(k, cpu, &mut mm, a - 8192, 1), vec![b'a'], "and page 0");
        let mut b = [0u8];
        let e = k.user_read(cpu, &mut mm, a - 3 * 4096, &mut b).unwrap_err();
        assert_eq!(
            (e.signo, e.code),
            (SIGSEGV, SEGV_MAPERR),
            "no page offset below 0"
        );
        assert_eq!(mm.vma_lookup(a).unwrap().vm_pgoff, 0);
        k.check_mm_invariants(&mm).unwrap();
        k.exit_mmap(cpu, mm);
        k.fput(cpu, f);
        k.evict_inode(cpu, &inode).unwrap();
    });
}

/// brk grows and shrinks the heap VMA ([heap] in maps), never below start_brk and never into
/// the next mapping; MADV_DONTNEED drops pages so they read back as zeroes; MAP_POPULATE
/// faults everything in up front.
#[test]
fn brk_madvise_populate() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        mm.start_brk = 0x5555_0000_0000;
        mm.brk = mm.start_brk;
        let b0 = mm.brk;
        assert_eq!(k.brk(cpu, &mut mm, b0 + 10_000), b0 + 10_000);
        k.user_write(cpu, &mut mm, b0 + 9_000, b"heap").unwrap();
        assert!(mm.proc_maps().contains("[heap]"));
        assert_eq!(
            k.brk(cpu, &mut mm, b0 - 4096),
            b0 + 10_000,
            "below start_brk"
        );
        // A mapping right above blocks growth into it.
        k.mmap(cpu, &mut mm, b0 + (8 << 12), 4096, RW, ANON | MAP_FIXED, 0)
            .unwrap();
        assert_eq!(k.brk(cpu, &mut mm, b0 + (9 << 12)), b0 + 10_000);
        assert_eq!(k.brk(cpu, &mut mm, b0 + 4096), b0 + 4096, "shrink");
        let e = k
            .user_read(cpu, &mut mm, b0 + 9_000, &mut [0u8; 1])
            .unwrap_err();
        assert_eq!(e.code, SEGV_MAPERR, "the shrunk part is gone");
        // MADV_DONTNEED.
        let a = k.mmap(cpu, &mut mm, 0, 4 << 12, RW, ANON, 0).unwrap();
        k.user_write(cpu, &mut mm, a, &pattern(3, 4 << 12)).unwrap();
        assert_eq!(
            mm.counter(MM_ANONPAGES),
            4,
            "the heap's page went with the shrink"
        );
        k.madvise_dontneed(cpu, &mut mm, a + 4096, 2 << 12).unwrap();
        assert_eq!(mm.counter(MM_ANONPAGES), 2);
        assert_eq!(read(k, cpu, &mut mm, a + 4096, 8192), vec![0; 8192]);
        assert_eq!(read(k, cpu, &mut mm, a, 4096), pattern(3, 4 << 12)[..4096]);
        assert_eq!(
            k.madvise_dontneed(cpu, &mut mm, a + 1, 4096),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            k.madvise_dontneed(cpu, &mut mm, a, 64 << 12),
            Err(Errno::ENOMEM),
            "runs into unmapped space"
        );
        // MAP_POPULATE.
        let before = mm.counter(MM_ANONPAGES);
        let p = k
            .mmap(cpu, &mut mm, 0, 32 << 12, RW, ANON | MAP_POPULATE, 0)
            .unwrap();
        assert_eq!(mm.counter(MM_ANONPAGES), before + 32);
        assert!(pfn_at(k, &mm, p + (31 << 12)).is_some());
        k.check_mm_invariants(&mm).unwrap();
        k.exit_mmap(cpu, mm);
    });
}

/// Security: memory a process gets never holds another process's bytes, and no API reaches
/// another address space or the kernel.
#[test]
fn no_bytes_leak_between_processes() {
    let m = boot_mem(64, 1, "");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        let n = 2048u64;
        let mut a = k.mm_alloc(cpu).unwrap();
        let va = k.mmap(cpu, &mut a, 0, n << 12, RW, ANON, 0).unwrap();
        let secret = vec![0xa5u8; 4096];
        for i in 0..n {
            k.user_write(cpu, &mut a, va + (i << 12), &secret).unwrap();
        }
        let mut b = k.mm_alloc(cpu).unwrap();
        let vb = k.mmap(cpu, &mut b, 0, n << 12, RW, ANON, 0).unwrap();
        // B cannot see A's pages at the same address.
        assert_eq!(va, vb);
        assert_eq!(read(k, cpu, &mut b, vb, 4096), vec![0; 4096]);
        k.exit_mmap(cpu, a);
        // A's pages are free now; B's write faults get them back zeroed.
        for i in 0..n {
            k.user_write(cpu, &mut b, vb + (i << 12), &[1]).unwrap();
            let got = read(k, cpu, &mut b, vb + (i << 12), 4096);
            assert!(got[1..].iter().all(|&x| x == 0), "page {i} held old bytes");
        }
        // Shared anonymous memory is shared with a child, not with a stranger.
        let s = k
            .mmap(cpu, &mut b, 0, 4096, RW, MAP_SHARED | MAP_ANONYMOUS, 0)
            .unwrap();
        k.user_write(cpu, &mut b, s, b"family").unwrap();
        let mut child = k.dup_mmap(cpu, &b).unwrap();
        assert_eq!(&read(k, cpu, &mut child, s, 6)[..], b"family");
        k.user_write(cpu, &mut child, s, b"FAMILY").unwrap();
        assert_eq!(
            &read(k, cpu, &mut b, s, 6)[..],
            b"FAMILY",
            "MAP_SHARED stays shared"
        );
        let mut stranger = k.mm_alloc(cpu).unwrap();
        let e = k
            .user_read(cpu, &mut stranger, s, &mut [0u8; 1])
            .unwrap_err();
        assert_eq!(e.code, SEGV_MAPERR);
        k.exit_mmap(cpu, child);
        k.exit_mmap(cpu, stranger);
        k.exit_mmap(cpu, b);
    });
}

/// Randomized fork/write/exit sequences over two CPUs' worth of processes: every byte each
/// process reads is what it (or its ancestors before fork) last wrote there, invariants hold
/// after every step, and at the end every page and page table is free again.
#[test]
fn random_fork_cow_sequences() {
    fork_cow_sequences(32, false);
}

/// The same over 4 MiB of `MADV_HUGEPAGE` memory: the processes share THPs through fork
/// (`copy_huge_pmd`), a write splits them and copies 4 KiB (`do_huge_pmd_wp_page`), and
/// every checker knows the compound pages after every step.
#[test]
fn random_fork_cow_sequences_on_thps() {
    fork_cow_sequences(1024, true);
}

fn fork_cow_sequences(pages: u64, thp: bool) {
    use rand::{Rng, SeedableRng};
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| k.drain_all_pages(cpu));
    let before = free_and_pcp(k);
    m.on_cpu(0, |cpu| {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(5);
        #[allow(non_snake_case)]
        let PAGES: u64 = pages;
        let mut first = k.mm_alloc(cpu).unwrap();
        let base = k
            .mmap(cpu, &mut first, 0, PAGES << 12, RW, ANON, 0)
            .unwrap();
        if thp {
            k.madvise(
                cpu,
                &mut first,
                base,
                PAGES << 12,
                mmkit::mm::madvise::MADV_HUGEPAGE,
            )
            .unwrap();
        }
        // (mm, model of page -> byte value)
        let mut procs: Vec<(MmStruct, Vec<u8>)> = vec![(first, vec![0; PAGES as usize])];
        for step in 0..400 {
            let i = rng.random_range(0..procs.len());
            match rng.random_range(0..10) {
                0 if procs.len() < 6 => {
                    let child = k.dup_mmap(cpu, &procs[i].0).unwrap();
                    let model = procs[i].1.clone();
                    procs.push((child, model));
                }
                1 if procs.len() > 1 => {
                    let (mm, _) = procs.swap_remove(i);
                    k.exit_mmap(cpu, mm);
                }
                2..=5 => {
                    let p = rng.random_range(0..PAGES);
                    let v: u8 = rng.random();
                    let (mm, model) = &mut procs[i];
                    k.user_write(cpu, mm, base + (p << 12) + 100, &[v]).unwrap();
                    model[p as usize] = v;
                }
                _ => {
                    let p = rng.random_range(0..PAGES);
                    let (mm, model) = &mut procs[i];
                    let got = read(k, cpu, mm, base + (p << 12) + 100, 1)[0];
                    assert_eq!(got, model[p as usize], "step {step}: process {i} page {p}");
                }
            }
            for (mm, _) in &procs {
                k.check_mm_invariants(mm).unwrap();
            }
            k.check_anon_vma_invariants().unwrap();
            k.check_invariants().unwrap();
        }
        if thp {
            let ev = |n| mmkit::fs::proc::vmstat::vm_event(k, n).unwrap();
            assert!(ev("thp_fault_alloc") > 0 && ev("thp_split_pmd") > 0);
        }
        for (mut mm, model) in procs {
            for p in 0..PAGES {
                assert_eq!(
                    read(k, cpu, &mut mm, base + (p << 12) + 100, 1)[0],
                    model[p as usize]
                );
            }
            k.exit_mmap(cpu, mm);
        }
        assert_eq!(
            k.nr_anon_vmas(),
            0,
            "every anon_vma freed with its last VMA"
        );
        k.lru_add_drain_all(cpu);
        k.drain_all_pages(cpu);
    });
    assert_eq!(free_and_pcp(k), before);
}

/// Shared writable mappings of a file are write-notified: clean pages map read-only, the
/// first write marks the page dirty.
#[test]
fn shared_file_dirty_tracking() {
    let m = boot_mem(64, 1, "");
    let k = &m.kernel;
    let inode = k.new_inode(Box::new(RamFile::new(vec![0; 8192])), (0, 2), 5, "/f");
    m.on_cpu(0, |cpu| {
        let f: Arc<_> = k.open(&inode, FMode::READ | FMode::WRITE).unwrap();
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = k
            .do_mmap(cpu, &mut mm, Some(&f), 0, 8192, RW, MAP_SHARED, 0)
            .unwrap();
        read(k, cpu, &mut mm, a, 8192);
        let pte = k.pte_lookup(&mm.pt, a).unwrap();
        assert!(
            pte.is_present() && !pte.writable(),
            "clean: write-protected"
        );
        let page = k.pfn_to_page(pte.pfn()).unwrap();
        assert!(!page.test(mmkit::mm::page::PageFlags::DIRTY));
        k.user_write(cpu, &mut mm, a, b"d").unwrap();
        assert!(page.test(mmkit::mm::page::PageFlags::DIRTY));
        assert!(k.pte_lookup(&mm.pt, a).unwrap().writable());
        k.munmap(cpu, &mut mm, a, 8192).unwrap();
        k.write_inode_now(cpu, &inode).unwrap();
        let mut b = [0u8];
        inode.data().read_at(0, &mut b).unwrap();
        assert_eq!(&b, b"d");
        k.exit_mmap(cpu, mm);
        k.fput(cpu, f);
        k.evict_inode(cpu, &inode).unwrap();
    });
}

/// fork write-protects the parent's PTEs and flushes every CPU's TLB: a CPU that cached a
/// writable translation before the fork must fault (and copy) on its next write, or the
/// child would see the parent's write.
#[test]
fn fork_flushes_stale_writable_translations() {
    use mmkit::arch::x86_64::tlb::Access;
    let m = boot_mem(64, 2, "");
    let k = &m.kernel;
    let mut parent = m.on_cpu(0, |cpu| k.mm_alloc(cpu).unwrap());
    let a = m.on_cpu(1, |cpu| {
        let a = k.mmap(cpu, &mut parent, 0, 4096, RW, ANON, 0).unwrap();
        k.user_write(cpu, &mut parent, a, b"before").unwrap();
        // CPU 1's TLB now holds a writable, dirty entry.
        assert!(k
            .mmu_translate(cpu, &parent.pt, a, Access::USER_WRITE)
            .is_ok());
        a
    });
    let mut child = m.on_cpu(0, |cpu| k.dup_mmap(cpu, &parent).unwrap());
    m.on_cpu(1, |cpu| {
        assert!(
            k.mmu_translate(cpu, &parent.pt, a, Access::USER_WRITE)
                .is_err(),
            "the stale writable entry survived fork"
        );
        k.user_write(cpu, &mut parent, a, b"parent").unwrap();
    });
    m.on_cpu(0, |cpu| {
        assert_eq!(&read(k, cpu, &mut child, a, 6)[..], b"before");
        k.exit_mmap(cpu, child);
        k.exit_mmap(cpu, parent);
    });
}

/// The reverse map finds every PTE of a page: an anonymous page shared by three processes
/// after two forks (and moved by mremap in one of them), a file page mapped by two; Accessed
/// bits are harvested and cleared; try_to_unmap empties a file page's mappings and the next
/// access refaults the same bytes from the page cache; an anonymous page without a swap
/// entry, or an mlocked one, is refused.
#[test]
fn rmap_walk_referenced_and_unmap() {
    use mmkit::mm::mremap::MREMAP_MAYMOVE;
    let m = boot_mem(64, 1, "");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        let mut p = k.mm_alloc(cpu).unwrap();
        let a = k.mmap(cpu, &mut p, 0, 4 << 12, RW, ANON, 0).unwrap();
        k.user_write(cpu, &mut p, a, b"anon").unwrap();
        let mut c1 = k.dup_mmap(cpu, &p).unwrap();
        let mut c2 = k.dup_mmap(cpu, &c1).unwrap();
        let b = k
            .mremap(
                cpu,
                &mut c2,
                a,
                4 << 12,
                64 << 12,
                MREMAP_MAYMOVE | mmkit::mm::mremap::MREMAP_FIXED,
                0x5000_0000,
            )
            .unwrap();
        assert_ne!(a, b);
        let pfn = pfn_at(k, &p, a).unwrap();
        let page = k.pfn_to_page(mmkit::Pfn(pfn)).unwrap();
        let mut seen = Vec::new();
        k.rmap_walk(page, |r, c| {
            seen.push((Arc::as_ptr(r.pt()) as usize, c.va()));
            true
        });
        seen.sort();
        let mut want = vec![
            (Arc::as_ptr(&p.pt) as usize, a),
            (Arc::as_ptr(&c1.pt) as usize, a),
            (Arc::as_ptr(&c2.pt) as usize, b),
        ];
        want.sort();
        assert_eq!(
            seen, want,
            "all three mappings, the moved one at its new address"
        );
        // Accessed bits: read in two of them, then harvest.
        k.page_referenced(cpu, page);
        read(k, cpu, &mut p, a, 1);
        read(k, cpu, &mut c2, b, 1);
        let (refs, flags) = k.page_referenced(cpu, page);
        assert_eq!((refs, flags.contains(VmFlags::VM_LOCKED)), (2, false));
        assert_eq!(
            k.page_referenced(cpu, page).0,
            0,
            "cleared by the first harvest"
        );
        assert!(
            !k.try_to_unmap(cpu, page, None),
            "anonymous needs a swap entry"
        );
        assert_eq!(page.mapcount(), 3);
        for mm in [&p, &c1, &c2] {
            k.check_mm_invariants(mm).unwrap();
        }
        // A file page mapped by two processes.
        let inode = k.new_inode(Box::new(RamFile::new(pattern(9, 8192))), (0, 2), 3, "/f");
        let f = k.open(&inode, FMode::READ).unwrap();
        let x = k
            .do_mmap(cpu, &mut p, Some(&f), 0, 8192, PROT_READ, MAP_PRIVATE, 0)
            .unwrap();
        let y = k
            .do_mmap(cpu, &mut c1, Some(&f), 0, 8192, PROT_READ, MAP_SHARED, 0)
            .unwrap();
        read(k, cpu, &mut p, x, 1);
        read(k, cpu, &mut c1, y, 1);
        k.lru_add_drain(cpu);
        let fpage = k
            .pfn_to_page(mmkit::Pfn(pfn_at(k, &p, x).unwrap()))
            .unwrap();
        assert_eq!((fpage.mapcount(), fpage.refcount()), (2, 3));
        assert_eq!(k.page_referenced(cpu, fpage).0, 2);
        assert!(k.try_to_unmap(cpu, fpage, None));
        assert_eq!(
            (fpage.mapcount(), fpage.refcount()),
            (0, 1),
            "only the cache holds it"
        );
        assert_eq!(pfn_at(k, &p, x), None);
        assert_eq!(
            p.counter(MM_FILEPAGES),
            0,
            "a major fault mapped only its own page (no fault-around after I/O, as Linux)"
        );
        assert_eq!(read(k, cpu, &mut c1, y, 8192), pattern(9, 8192));
        // mlock pins: try_to_unmap refuses.
        k.mlock(cpu, &mut c1, y, 8192).unwrap();
        assert!(!k.try_to_unmap(cpu, fpage, None));
        k.munlock(cpu, &mut c1, y, 8192).unwrap();
        assert!(k.try_to_unmap(cpu, fpage, None));
        for mm in [p, c1, c2] {
            k.check_mm_invariants(&mm).unwrap();
            k.exit_mmap(cpu, mm);
        }
        k.fput(cpu, f);
        k.evict_inode(cpu, &inode).unwrap();
    });
}

/// anon_vma chains: a page written before fork is found in the parent and every descendant;
/// a page a child copies on write belongs to the child's own anon_vma and a walk of it looks
/// at the child's family only; anon_vmas outlive the parent while descendants are chained to
/// them and are all freed with the last VMA; a write that reuses a page nobody else maps moves
/// it to the writer's anon_vma.
#[test]
fn anon_vma_chains_follow_fork() {
    let m = boot_mem(64, 1, "");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        let mut p = k.mm_alloc(cpu).unwrap();
        let a = k.mmap(cpu, &mut p, 0, 4 << 12, RW, ANON, 0).unwrap();
        k.user_write(cpu, &mut p, a, b"p0").unwrap();
        k.user_write(cpu, &mut p, a + 4096, b"p1").unwrap();
        let mut c = k.dup_mmap(cpu, &p).unwrap();
        assert_eq!(k.nr_anon_vmas(), 2, "the parent's and the child's");
        k.user_write(cpu, &mut c, a + 4096, b"c1").unwrap(); // COW copy
        k.user_write(cpu, &mut c, a + 2 * 4096, b"c2").unwrap(); // new page in the child
        let mut g = k.dup_mmap(cpu, &c).unwrap();
        k.user_write(cpu, &mut g, a + 3 * 4096, b"g3").unwrap();
        assert_eq!(k.nr_anon_vmas(), 3);
        let page = |mm: &MmStruct, i: u64| {
            k.pfn_to_page(mmkit::Pfn(pfn_at(k, mm, a + (i << 12)).unwrap()))
                .unwrap()
        };
        let mapped_in = |pg| {
            let mut n = 0;
            k.rmap_walk(pg, |_, _| {
                n += 1;
                true
            });
            n
        };
        // Page 0, written before either fork: in all three, found by a walk of all three.
        let p0 = page(&p, 0);
        assert_eq!(
            (p0.mapcount(), mapped_in(p0), k.rmap_vma_count(p0)),
            (3, 3, 3)
        );
        // The parent's page 1 is its alone now; the child's copy is shared with the
        // grandchild, and a walk of it never looks at the parent.
        let p1 = page(&p, 1);
        assert_eq!((p1.mapcount(), mapped_in(p1)), (1, 1));
        let c1 = page(&c, 1);
        assert_ne!(
            p1.mapping(),
            c1.mapping(),
            "the copy is in the child's anon_vma"
        );
        assert_eq!(
            (c1.mapcount(), mapped_in(c1), k.rmap_vma_count(c1)),
            (2, 2, 2)
        );
        let g3 = page(&g, 3);
        assert_eq!((mapped_in(g3), k.rmap_vma_count(g3)), (1, 1));
        for mm in [&p, &c, &g] {
            k.check_mm_invariants(mm).unwrap();
        }
        k.check_anon_vma_invariants().unwrap();
        // The parent exits: its anon_vma stays, chained to by the two descendants.
        k.exit_mmap(cpu, p);
        assert_eq!(k.nr_anon_vmas(), 3);
        assert_eq!((p0.mapcount(), mapped_in(p0)), (2, 2));
        k.exit_mmap(cpu, g);
        k.check_anon_vma_invariants().unwrap();
        // The child is p0's last mapper: a write reuses it and moves it to its anon_vma.
        k.lru_add_drain(cpu);
        assert_eq!(p0.mapcount(), 1);
        let before = p0.mapping();
        k.user_write(cpu, &mut c, a, b"C0").unwrap();
        assert_eq!(
            page(&c, 0) as *const _,
            p0 as *const _,
            "reused, not copied"
        );
        assert_ne!(p0.mapping(), before);
        assert_eq!(p0.mapping(), c1.mapping(), "the child's own anon_vma");
        assert_eq!(read(k, cpu, &mut c, a, 2), b"C0");
        assert_eq!(read(k, cpu, &mut c, a + 4096, 2), b"c1");
        k.check_mm_invariants(&c).unwrap();
        k.exit_mmap(cpu, c);
        assert_eq!(k.nr_anon_vmas(), 0, "all freed with the last VMA");
    });
}

/// `find_mergeable_anon_vma`: an anonymous VMA next to one that differs only in access
/// rights takes the neighbour's anon_vma at its first fault, so once mprotect makes the
/// rights equal the two merge into one VMA, pages and all.
#[test]
fn neighbours_share_an_anon_vma_and_merge() {
    let m = boot_mem(64, 1, "");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = k.mmap(cpu, &mut mm, 0, 8 << 12, RW, ANON, 0).unwrap();
        k.mprotect(cpu, &mut mm, a + (4 << 12), 4 << 12, RW | PROT_EXEC)
            .unwrap();
        assert_eq!(mm.vmas().count(), 2);
        k.user_write(cpu, &mut mm, a, b"low").unwrap();
        k.user_write(cpu, &mut mm, a + (4 << 12), b"high").unwrap();
        let ids: Vec<_> = mm.vmas().map(|v| v.anon_vma).collect();
        assert!(ids[0].is_some() && ids[0] == ids[1], "{ids:?}");
        k.mprotect(cpu, &mut mm, a + (4 << 12), 4 << 12, RW)
            .unwrap();
        assert_eq!(mm.vmas().count(), 1, "merged");
        assert_eq!(read(k, cpu, &mut mm, a, 3), b"low");
        assert_eq!(read(k, cpu, &mut mm, a + (4 << 12), 4), b"high");
        k.check_mm_invariants(&mm).unwrap();
        k.check_anon_vma_invariants().unwrap();
        k.exit_mmap(cpu, mm);
        assert_eq!(k.nr_anon_vmas(), 0);
    });
}

/// Node counters as vmstat.c keeps them: a CPU's changes gather in its differential and
/// reach the node's counter only past the node's threshold or at the periodic fold, while
/// the snapshot the `/proc` views read is exact all along.
#[test]
fn node_counters_fold_per_cpu_differentials() {
    use mmkit::mm::filemap::NR_ANON_MAPPED;
    use std::sync::atomic::Ordering::Relaxed;
    let m = boot_mem(256, 2, "");
    let k = &m.kernel;
    let t = k.nodes[0].stat_threshold.load(Relaxed);
    assert!(t > 0 && t <= 125, "threshold {t}");
    let raw = || k.nodes[0].vm_stat[NR_ANON_MAPPED].load(Relaxed);
    m.on_cpu(0, |cpu| {
        k.refresh_cpu_vm_stats(cpu);
        let (raw0, snap0) = (raw(), k.node_page_state(0, NR_ANON_MAPPED));
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = k.mmap(cpu, &mut mm, 0, 512 << 12, RW, ANON, 0).unwrap();
        let fault = |mm: &mut MmStruct, from: u64, to: u64| {
            for i in from..to {
                k.user_write(cpu, mm, a + (i << 12), &[1]).unwrap();
            }
        };
        fault(&mut mm, 0, t as u64);
        assert_eq!(raw(), raw0, "{t} pages stay in this CPU's differential");
        assert_eq!(k.node_page_state(0, NR_ANON_MAPPED), snap0 + t);
        fault(&mut mm, t as u64, t as u64 + 1);
        assert_eq!(
            raw(),
            raw0 + t + 1,
            "past the threshold the differential is folded"
        );
        fault(&mut mm, t as u64 + 1, t as u64 + 3);
        assert_eq!(k.node_page_state(0, NR_ANON_MAPPED), snap0 + t + 3);
        k.refresh_cpu_vm_stats(cpu);
        assert_eq!(
            raw(),
            raw0 + t + 3,
            "the periodic fold leaves nothing behind"
        );
        k.exit_mmap(cpu, mm);
        assert_eq!(k.node_page_state(0, NR_ANON_MAPPED), snap0);
    });
}

/// mlock faults the range in and marks it VM_LOCKED (split off from the rest, locked_vm
/// counted); munlock undoes it and the VMAs merge back. madvise(MADV_WILLNEED) reads a file
/// range into the page cache without mapping it.
#[test]
fn mlock_and_willneed() {
    let m = boot_mem(64, 1, "");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = k.mmap(cpu, &mut mm, 0, 16 << 12, RW, ANON, 0).unwrap();
        k.mlock(cpu, &mut mm, a + (4 << 12), 4 << 12).unwrap();
        assert_eq!(mm.map_count(), 3);
        assert_eq!(mm.locked_vm, 4);
        assert_eq!(mm.counter(MM_ANONPAGES), 4, "mlock populates");
        assert!(mm
            .vma_lookup(a + (4 << 12))
            .unwrap()
            .vm_flags
            .contains(mmkit::mm::mm_types::VmFlags::VM_LOCKED));
        assert!(mmkit::fs::proc::task_mmu::proc_pid_smaps(k, &mm)
            .contains("Locked:               16 kB"));
        k.mlock(cpu, &mut mm, a + (8 << 12) + 1, 4096).unwrap();
        assert_eq!(
            mm.locked_vm, 6,
            "an unaligned start rounds out to two more pages"
        );
        assert_eq!(k.mlock(cpu, &mut mm, a, 64 << 12), Err(Errno::ENOMEM));
        k.munlock(cpu, &mut mm, a, 16 << 12).unwrap();
        assert_eq!((mm.map_count(), mm.locked_vm), (1, 0));
        // WILLNEED
        let inode = k.new_inode(
            Box::new(RamFile::new(pattern(1, 40 << 12))),
            (0, 2),
            4,
            "/w",
        );
        let f = k.open(&inode, FMode::READ).unwrap();
        let x = k
            .do_mmap(
                cpu,
                &mut mm,
                Some(&f),
                0,
                40 << 12,
                PROT_READ,
                MAP_PRIVATE,
                0,
            )
            .unwrap();
        assert_eq!(inode.nrpages(), 0);
        k.madvise_willneed(cpu, &mut mm, x + (8 << 12), 10 << 12)
            .unwrap();
        assert_eq!(inode.nrpages(), 10);
        assert_eq!(mm.counter(MM_FILEPAGES), 0, "read ahead, not mapped");
        let before = mm.faults;
        read(k, cpu, &mut mm, x + (9 << 12), 1);
        assert_eq!(
            mm.faults.maj_flt, before.maj_flt,
            "a minor fault: the page was cached"
        );
        k.check_mm_invariants(&mm).unwrap();
        k.exit_mmap(cpu, mm);
        k.fput(cpu, f);
        k.evict_inode(cpu, &inode).unwrap();
    });
}

/// Writeback cleans and write-protects the mappings of the page it writes: a second write
/// through the same mapping dirties the page again and the next writeback carries it.
#[test]
fn writeback_then_write_again_reaches_the_file() {
    let m = boot_mem(64, 1, "");
    let k = &m.kernel;
    let inode = k.new_inode(Box::new(RamFile::new(vec![0; 4096])), (0, 2), 6, "/g");
    m.on_cpu(0, |cpu| {
        let f = k.open(&inode, FMode::READ | FMode::WRITE).unwrap();
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = k
            .do_mmap(cpu, &mut mm, Some(&f), 0, 4096, RW, MAP_SHARED, 0)
            .unwrap();
        k.user_write(cpu, &mut mm, a, b"one").unwrap();
        k.write_inode_now(cpu, &inode).unwrap();
        assert!(
            !k.pte_lookup(&mm.pt, a).unwrap().writable(),
            "cleaned and write-protected"
        );
        k.user_write(cpu, &mut mm, a, b"two").unwrap();
        assert_eq!(k.msync(cpu, &mm, a + 1, 4096, 4), Err(mmkit::Errno::EINVAL));
        assert_eq!(k.msync(cpu, &mm, a, 4096, 5), Err(mmkit::Errno::EINVAL));
        assert_eq!(k.msync(cpu, &mm, a, 8192, 4), Err(mmkit::Errno::ENOMEM));
        k.msync(cpu, &mm, a, 4096, 4).unwrap(); // MS_SYNC
        let mut b = [0u8; 3];
        inode.data().read_at(0, &mut b).unwrap();
        assert_eq!(&b, b"two");
        k.exit_mmap(cpu, mm);
        k.fput(cpu, f);
        k.evict_inode(cpu, &inode).unwrap();
    });
}

/// The pattern of `pagemap_flags_equal_the_host_kernels`, run on the host: the flag bits
/// (55–63) of each page's `/proc/self/pagemap` entry.
fn host_pagemap_flags(file: &std::path::Path) -> Vec<u64> {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(file).unwrap();
    let mut out = Vec::new();
    // SAFETY: private mappings of our own, touched and unmapped here; the forked child
    // only blocks on a pipe and exits.
    unsafe {
        let a = libc::mmap(
            std::ptr::null_mut(),
            8 << 12,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        ) as *mut u8;
        assert!(a as *mut libc::c_void != libc::MAP_FAILED);
        for i in 0..4 {
            std::ptr::write_volatile(a.add(i << 12), 1);
        }
        for i in 4..6 {
            std::ptr::read_volatile(a.add(i << 12));
        }
        let mut fds = [0i32; 2];
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        let pid = libc::fork();
        if pid == 0 {
            let mut b = [0u8; 1];
            libc::read(fds[0], b.as_mut_ptr().cast(), 1);
            libc::_exit(0);
        }
        for i in 0..2 {
            std::ptr::write_volatile(a.add(i << 12), 2);
        }
        let x = libc::mmap(
            std::ptr::null_mut(),
            2 << 12,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            f.as_raw_fd(),
            0,
        ) as *const u8;
        for i in 0..2 {
            std::ptr::read_volatile(x.add(i << 12));
        }
        let mut pm = std::fs::File::open("/proc/self/pagemap").unwrap();
        for base in [a as u64, x as u64] {
            let n = if base == a as u64 { 8 } else { 2 };
            let mut buf = vec![0u8; n * 8];
            pm.seek(SeekFrom::Start((base >> 12) * 8)).unwrap();
            pm.read_exact(&mut buf).unwrap();
            out.extend(
                buf.chunks(8)
                    .map(|c| u64::from_le_bytes(c.try_into().unwrap()) >> 55),
            );
        }
        libc::write(fds[1], b"x".as_ptr().cast(), 1);
        let mut st = 0;
        libc::waitpid(pid, &mut st, 0);
        libc::close(fds[0]);
        libc::close(fds[1]);
        libc::munmap(a.cast(), 8 << 12);
        libc::munmap(x as *mut libc::c_void, 2 << 12);
    }
    out
}

/// `/proc/PID/pagemap` gives the same flags as the host kernel's for the same pattern:
/// written pages (exclusive, or shared with a forked child), zero-page reads, untouched
/// pages, and a private file mapping read through; present entries carry the pfn the PTE
/// maps, swapped ones their slot.
#[test]
fn pagemap_flags_equal_the_host_kernels() {
    use mmkit::fs::proc::task_mmu::{pagemap_read, PM_PFRAME_MASK, PM_PRESENT};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, pattern(3, 8192)).unwrap();
    let host = host_pagemap_flags(&path);
    let m = boot_mem(64, 1, "");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = k.mmap(cpu, &mut mm, 0, 8 << 12, RW, ANON, 0).unwrap();
        for i in 0..4 {
            k.user_write(cpu, &mut mm, a + (i << 12), &[1]).unwrap();
        }
        for i in 4..6 {
            read(k, cpu, &mut mm, a + (i << 12), 1);
        }
        let child = k.dup_mmap(cpu, &mm).unwrap();
        for i in 0..2 {
            k.user_write(cpu, &mut mm, a + (i << 12), &[2]).unwrap();
        }
        let inode = m.hostfs.inode(k, cpu, &path).unwrap();
        let f = k.open(&inode, FMode::READ).unwrap();
        let x = k
            .do_mmap(cpu, &mut mm, Some(&f), 0, 8192, PROT_READ, MAP_PRIVATE, 0)
            .unwrap();
        for i in 0..2 {
            read(k, cpu, &mut mm, x + (i << 12), 1);
        }
        let entries = |base: u64, n: usize| -> Vec<u64> {
            pagemap_read(k, &mm, (base >> 12) * 8, n * 8)
                .unwrap()
                .chunks(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
        let ours: Vec<u64> = entries(a, 8).into_iter().chain(entries(x, 2)).collect();
        let flags: Vec<u64> = ours.iter().map(|e| e >> 55).collect();
        assert_eq!(flags, host, "pagemap flags, ours vs the host kernel's");
        for (i, e) in ours[..8].iter().enumerate() {
            if e & PM_PRESENT != 0 {
                let pfn = pfn_at(k, &mm, a + ((i as u64) << 12)).unwrap();
                assert_eq!(e & PM_PFRAME_MASK, pfn);
            }
        }
        assert_eq!(pagemap_read(k, &mm, 4, 8), Err(Errno::EINVAL));
        assert_eq!(pagemap_read(k, &mm, 8, 12), Err(Errno::EINVAL));
        k.exit_mmap(cpu, child);
        k.exit_mmap(cpu, mm);
        k.fput(cpu, f);
    });
}
