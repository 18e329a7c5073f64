//! Page tables, the software MMU and per-CPU TLBs: translations carry real bytes, Accessed
//! and Dirty are set as hardware sets them, faults carry x86 error codes, a missing TLB flush
//! is observable as a stale translation, and tables are freed when their range is empty.

mod common;
use common::boot_mem;
use mmkit::arch::x86_64::pgtable::{
    PgTable, Pte, PteFlags, PAGE_KERNEL, PAGE_NONE, PAGE_READONLY, PAGE_READONLY_EXEC, PAGE_SHARED,
    PROTECTION_MAP,
};
use mmkit::arch::x86_64::tlb::{Access, X86_PF_INSTR, X86_PF_PROT, X86_PF_USER, X86_PF_WRITE};
use mmkit::fs::proc::buddyinfo::buddyinfo;
use mmkit::gfp::GFP_KERNEL;
use mmkit::mm::mmu_gather::MmuGather;
use mmkit::CpuGuard;
use mmkit::{Kernel, Page, Pfn};

fn pfn(k: &Kernel, p: &Page) -> Pfn {
    k.page_to_pfn(p)
}

/// `set_pte_at` on an empty entry, through a cursor (tables allocated as needed).
fn set(
    k: &Kernel,
    cpu: &CpuGuard<'_>,
    pt: &PgTable,
    va: u64,
    pte: Pte,
) -> Result<(), mmkit::Errno> {
    let mut c = k.pte_cursor(pt, va, va + 4096);
    c.seek_alloc(cpu, va)?;
    c.install(Pte(0), pte).map_err(|_| mmkit::Errno::EBUSY)
}

/// Clear the entry at `va` through a gather, which flushes.
fn clear(k: &Kernel, cpu: &CpuGuard<'_>, pt: &PgTable, va: u64) -> Pte {
    let mut tlb = MmuGather::new(k, cpu, pt);
    let mut c = k.pte_cursor(pt, va, va + 4096);
    let old = if c.seek(va) {
        c.clear(&mut tlb)
    } else {
        Pte(0)
    };
    drop(c);
    tlb.finish();
    old
}

/// Write through a virtual address: translate, then write the physical page.
fn write_va(
    k: &Kernel,
    cpu: &mmkit::CpuGuard<'_>,
    pt: &mmkit::arch::x86_64::pgtable::PgTable,
    va: u64,
    bytes: &[u8],
) {
    let pa = k.mmu_translate(cpu, pt, va, Access::USER_WRITE).unwrap();
    let page = k.pfn_to_page(Pfn(pa >> 12)).unwrap();
    k.write_page(page, (pa & 0xfff) as usize, bytes).unwrap();
}

fn read_va(
    k: &Kernel,
    cpu: &mmkit::CpuGuard<'_>,
    pt: &mmkit::arch::x86_64::pgtable::PgTable,
    va: u64,
    n: usize,
) -> Vec<u8> {
    let pa = k.mmu_translate(cpu, pt, va, Access::USER_READ).unwrap();
    let page = k.pfn_to_page(Pfn(pa >> 12)).unwrap();
    let mut buf = vec![0; n];
    k.read_page(page, (pa & 0xfff) as usize, &mut buf).unwrap();
    buf
}

#[test]
fn translations_carry_bytes_and_set_accessed_dirty() {
    let m = boot_mem(256, 2, "");
    let k = &m.kernel;
    let cpu0 = k.get_cpu_id(0).unwrap();
    let pt = k.pgd_alloc(&cpu0, true).unwrap();
    let data = k.alloc_page(&cpu0, GFP_KERNEL).unwrap();
    let va = 0x7f12_3456_7000;
    // Linux's protection values include _PAGE_ACCESSED; start from an old entry to watch the
    // MMU set it.
    set(
        k,
        &cpu0,
        &pt,
        va,
        Pte::new(pfn(k, data), PAGE_SHARED).mkold(),
    )
    .unwrap();
    assert_eq!(k.page_table_pages(), 4, "PGD, PUD, PMD and PTE tables");
    let pte = k.pte_lookup(&pt, va).unwrap();
    assert!(!pte.young() && !pte.dirty());
    assert_eq!(read_va(k, &cpu0, &pt, va + 0x10, 4), vec![0; 4]);
    assert!(k.pte_lookup(&pt, va).unwrap().young() && !k.pte_lookup(&pt, va).unwrap().dirty());
    write_va(k, &cpu0, &pt, va + 0x10, b"mmkit");
    assert!(k.pte_lookup(&pt, va).unwrap().dirty(), "a write sets Dirty");
    // Another CPU, another TLB, the same bytes.
    drop(cpu0);
    let cpu1 = k.get_cpu_id(1).unwrap();
    assert_eq!(read_va(k, &cpu1, &pt, va + 0x10, 5), b"mmkit");
    let mut direct = [0u8; 5];
    k.read_page(data, 0x10, &mut direct).unwrap();
    assert_eq!(&direct, b"mmkit");
    // Hits after the first walk.
    let (h0, _) = k.tlb_stats(&cpu1);
    read_va(k, &cpu1, &pt, va, 1);
    assert_eq!(k.tlb_stats(&cpu1).0, h0 + 1);
    assert!(clear(k, &cpu1, &pt, va).is_present());
    {
        let mut tlb = MmuGather::new(k, &cpu1, &pt);
        assert_eq!(k.free_pgd_range(&mut tlb, 0, 0x0000_8000_0000_0000), 3);
        tlb.finish();
    }
    k.pgd_free(&cpu1, pt).map_err(|e| e.0).unwrap();
    assert_eq!(k.page_table_pages(), 0);
    k.__free_pages(&cpu1, data, 0);
}

#[test]
fn faults_carry_x86_error_codes() {
    let m = boot_mem(256, 1, "");
    let k = &m.kernel;
    let cpu = k.get_cpu_id(0).unwrap();
    let pt = k.pgd_alloc(&cpu, true).unwrap();
    let page = k.alloc_page(&cpu, GFP_KERNEL).unwrap();
    let p = pfn(k, page);
    let (ro, rx, kern, none) = (0x40_0000u64, 0x40_1000u64, 0x40_2000u64, 0x40_3000u64);
    set(k, &cpu, &pt, ro, Pte::new(p, PAGE_READONLY)).unwrap();
    set(k, &cpu, &pt, rx, Pte::new(p, PAGE_READONLY_EXEC)).unwrap();
    set(k, &cpu, &pt, kern, Pte::new(p, PAGE_KERNEL)).unwrap();
    set(k, &cpu, &pt, none, Pte::new(p, PAGE_NONE)).unwrap();
    let code = |va, a| k.mmu_translate(&cpu, &pt, va, a).unwrap_err().error_code;
    assert_eq!(
        code(0x50_0000, Access::USER_READ),
        X86_PF_USER,
        "not present"
    );
    assert_eq!(
        code(0x50_0000, Access::USER_WRITE),
        X86_PF_USER | X86_PF_WRITE
    );
    assert_eq!(
        code(ro, Access::USER_WRITE),
        X86_PF_PROT | X86_PF_WRITE | X86_PF_USER
    );
    assert_eq!(
        code(ro, Access::USER_EXEC),
        X86_PF_PROT | X86_PF_USER | X86_PF_INSTR,
        "NX"
    );
    assert!(k.mmu_translate(&cpu, &pt, rx, Access::USER_EXEC).is_ok());
    assert_eq!(
        code(kern, Access::USER_READ),
        X86_PF_PROT | X86_PF_USER,
        "user access to a kernel page"
    );
    assert!(k
        .mmu_translate(&cpu, &pt, kern, Access::KERNEL_WRITE)
        .is_ok());
    assert_eq!(
        code(none, Access::USER_READ),
        X86_PF_USER,
        "PROT_NONE is not present to the MMU"
    );
    assert_eq!(
        code(0x8000_0000_0000, Access::USER_READ),
        X86_PF_USER,
        "non-canonical"
    );
    assert!(set(k, &cpu, &pt, 0x8000_0000_0000, Pte::new(p, PAGE_SHARED)).is_err());
    // A cached read-only entry still faults on write (the TLB checks permissions).
    assert!(k.mmu_translate(&cpu, &pt, ro, Access::USER_READ).is_ok());
    assert_eq!(
        code(ro, Access::USER_WRITE),
        X86_PF_PROT | X86_PF_WRITE | X86_PF_USER
    );
    // protection_map: private writable mappings start read-only (copy-on-write).
    assert!(!Pte::new(Pfn(1), PROTECTION_MAP[0b0011]).writable());
    assert!(Pte::new(Pfn(1), PROTECTION_MAP[0b1011]).writable());
    for va in [ro, rx, kern, none] {
        clear(k, &cpu, &pt, va);
    }
    k.pgd_free(&cpu, pt).map_err(|e| e.0).unwrap();
    k.__free_pages(&cpu, page, 0);
}

/// Without a flush, a CPU keeps using what its TLB cached; the flush reaches every CPU.
#[test]
fn a_missing_tlb_flush_leaves_stale_translations() {
    let m = boot_mem(256, 2, "");
    let k = &m.kernel;
    let va = 0x1000_0000u64;
    let (pt, a, b) = m.on_cpu(0, |cpu| {
        let pt = k.pgd_alloc(cpu, true).unwrap();
        let a = k.alloc_page(cpu, GFP_KERNEL).unwrap();
        let b = k.alloc_page(cpu, GFP_KERNEL).unwrap();
        k.write_page(a, 0, b"page A").unwrap();
        k.write_page(b, 0, b"page B").unwrap();
        set(k, cpu, &pt, va, Pte::new(pfn(k, a), PAGE_SHARED)).unwrap();
        assert_eq!(read_va(k, cpu, &pt, va, 6), b"page A");
        // Remap to B and skip the gather's flush (forgetting a gather that holds no page is
        // the one way to): this CPU still reads A.
        let mut tlb = MmuGather::new(k, cpu, &pt);
        let mut c = k.pte_cursor(&pt, va, va + 4096);
        assert!(c.seek(va));
        let orig = c.get();
        c.replace(orig, Pte::new(pfn(k, b), PAGE_SHARED), &mut tlb)
            .unwrap();
        drop(c);
        std::mem::forget(tlb);
        assert_eq!(read_va(k, cpu, &pt, va, 6), b"page A", "stale translation");
        (pt, a, b)
    });
    // A CPU that never cached it sees B.
    m.on_cpu(1, |cpu| assert_eq!(read_va(k, cpu, &pt, va, 6), b"page B"));
    k.flush_tlb_range(&pt, va, va + 4096);
    m.on_cpu(0, |cpu| {
        assert_eq!(
            read_va(k, cpu, &pt, va, 6),
            b"page B",
            "the flush reached CPU 0"
        );
        // Unmap without flushing: still translates; after the flush, it faults.
        let mut tlb = MmuGather::new(k, cpu, &pt);
        let mut c = k.pte_cursor(&pt, va, va + 4096);
        assert!(c.seek(va));
        c.clear(&mut tlb);
        drop(c);
        assert!(
            k.mmu_translate(cpu, &pt, va, Access::USER_READ).is_ok(),
            "stale after unmap"
        );
        tlb.finish();
        drop(tlb);
        assert!(k.mmu_translate(cpu, &pt, va, Access::USER_READ).is_err());
        k.pgd_free(cpu, pt).map_err(|e| e.0).unwrap();
        k.__free_pages(cpu, a, 0);
        k.__free_pages(cpu, b, 0);
    });
}

/// Many mappings across the address space; unmapping them and freeing the page tables gives
/// every page back.
#[test]
fn page_tables_are_freed_with_their_range() {
    let m = boot_mem(256, 1, "");
    let k = &m.kernel;
    let boot = buddyinfo(k);
    m.on_cpu(0, |cpu| {
        let pt = k.pgd_alloc(cpu, true).unwrap();
        let page = k.alloc_page(cpu, GFP_KERNEL).unwrap();
        let vas: Vec<u64> = (0..300u64)
            .map(|i| 0x10_0000 + i * 0x20_1000 + (i % 7) * (1 << 39))
            .collect();
        for &va in &vas {
            set(k, cpu, &pt, va, Pte::new(pfn(k, page), PAGE_READONLY)).unwrap();
        }
        assert!(k.page_table_pages() > 300);
        // Refuses to free while anything is mapped.
        let pt = match k.pgd_free(cpu, pt) {
            Err((e, pt)) => {
                assert_eq!(e, mmkit::Errno::EBUSY);
                pt
            }
            Ok(()) => panic!("pgd_free with live PTEs"),
        };
        for &va in &vas {
            assert!(k
                .pte_lookup(&pt, va)
                .unwrap()
                .flags()
                .contains(PteFlags::PRESENT));
            clear(k, cpu, &pt, va);
        }
        k.pgd_free(cpu, pt).map_err(|e| e.0).unwrap();
        assert_eq!(k.page_table_pages(), 0);
        k.__free_pages(cpu, page, 0);
        k.drain_all_pages(cpu);
    });
    k.check_invariants().unwrap();
    assert_eq!(buddyinfo(k), boot);
}

/// With a platform whose MMU caches page tables beyond the TLB flush (a virtual machine's
/// shadow pages), freed tables are parked, not freed: they leave `PageTables:` at once, no
/// allocation can get them until the platform's grace period (`tlb_remove_table_sync`),
/// and then every one of them comes back. Without such an MMU they are freed at once.
#[test]
fn deferred_table_free_waits_for_the_platforms_grace_period() {
    use mmkit::mm::mmap::{MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE};
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let free = |k: &Kernel, cpu: &CpuGuard<'_>| {
        k.lru_add_drain_all(cpu);
        k.drain_all_pages(cpu);
        common::free_and_pcp(k)
    };
    for deferred in [false, true] {
        if deferred {
            assert!(!m.ram.attach_mmu());
        }
        m.on_cpu(0, |cpu| {
            let before = free(k, cpu);
            let mut mm = k.mm_alloc(cpu).unwrap();
            // Three pages 1 GiB apart: a PUD table each side of the first, and PMD and PTE
            // tables under each.
            let base = 0x7f00_0000_0000u64;
            for i in 0..3u64 {
                let a = base + (i << 30);
                k.mmap(
                    cpu,
                    &mut mm,
                    a,
                    4096,
                    PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | mmkit::mm::mmap::MAP_FIXED,
                    0,
                )
                .unwrap();
                k.copy_to_user(cpu, &mut mm, a, b"x").unwrap();
            }
            let tables = k.page_table_pages();
            assert!(tables >= 7, "{tables} tables");
            k.exit_mmap(cpu, mm);
            assert_eq!(k.page_table_pages(), 0, "the tables left PageTables");
            let parked = k.nr_deferred_tables();
            if deferred {
                assert_eq!(parked, tables, "every table waits");
                assert_eq!(
                    free(k, cpu) + parked,
                    before,
                    "only the parked tables are missing"
                );
                k.check_invariants().unwrap();
                assert_eq!(k.tlb_remove_table_sync(cpu), parked);
            } else {
                assert_eq!(parked, 0);
            }
            assert_eq!(k.nr_deferred_tables(), 0);
            assert_eq!(free(k, cpu), before, "every page is back");
        });
    }
    m.ram.detach_mmu();
}
