//! Anonymous address spaces: get_unmapped_area's layout, vma_merge and splitting, Linux's
//! errnos, the map_count limit, /proc/PID/maps lines, zapping on munmap, and a model-based
//! property test with check_mm_invariants after every step.

mod common;
use common::boot_mem;
use mmkit::arch::x86_64::tlb::Access;
use mmkit::gfp::GFP_KERNEL;
use mmkit::mm::mm_types::{MmStruct, VmFlags, TASK_SIZE};
use mmkit::mm::mmap::*;
use mmkit::Errno;
use proptest::prelude::*;
use std::collections::BTreeMap;

const ANON: u32 = MAP_PRIVATE | MAP_ANONYMOUS;
const RW: u32 = PROT_READ | PROT_WRITE;

#[test]
fn top_down_layout_merging_and_splitting() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        assert_eq!(mm.mmap_base, 0x7fff_f7ff_f000, "Linux's no-ASLR mmap_base");
        let a = k.mmap(cpu, &mut mm, 0, 8192, RW, ANON, 0).unwrap();
        assert_eq!(a, 0x7fff_f7ff_d000);
        let b = k.mmap(cpu, &mut mm, 0, 4096, RW, ANON, 0).unwrap();
        assert_eq!(b, a - 4096);
        assert_eq!(
            mm.map_count(), 1,
            "adjacent anonymous mappings with the same flags merge"
        );
        let c = k.mmap(cpu, &mut mm, 0, 4096, PROT_READ, ANON, 0).unwrap();
        assert_eq!(c, b - 4096);
        assert_eq!(mm.map_count(), 2, "different protections do not merge");
        assert_eq!(mm.total_vm(), 4);
        // Unmap the middle page of the 3-page VMA: it splits.
        k.munmap(cpu, &mut mm, b + 4096, 4096).unwrap();
        assert_eq!(mm.map_count(), 3);
        let right = mm.vma_lookup(a + 4096).unwrap();
        assert_eq!(
            (right.vm_start, right.vm_pgoff),
            (a + 4096, (a + 4096) >> 12),
            "the right part keeps its page offset"
        );
        assert!(mm.vma_lookup(b + 4096).is_none());
        // Unmapping a hole is fine; bad arguments are EINVAL.
        k.munmap(cpu, &mut mm, 0x1000_0000, 4096).unwrap();
        assert_eq!(k.munmap(cpu, &mut mm, b + 1, 4096), Err(Errno::EINVAL));
        assert_eq!(k.munmap(cpu, &mut mm, b, 0), Err(Errno::EINVAL));
        assert_eq!(
            k.munmap(cpu, &mut mm, TASK_SIZE - 4096, 8192),
            Err(Errno::EINVAL)
        );
        // Mapping the hole again merges all three back (same flags, contiguous pgoff).
        k.mmap(cpu, &mut mm, b + 4096, 4096, RW, ANON | MAP_FIXED, 0)
            .unwrap();
        assert_eq!(mm.map_count(), 2);
        let maps = mm.proc_maps();
        assert_eq!(
            maps,
            format!(
                "{:08x}-{:08x} r--p 00000000 00:00 0 \n{:08x}-{:08x} rw-p 00000000 00:00 0 \n{}\n",
                c,
                b,
                b,
                a + 8192,
                "ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]"
            )
        );
        k.check_mm_invariants(&mm).unwrap();
        k.exit_mmap(cpu, mm);
    });
}

/// THP-era placement: an anonymous mapping whose length is a multiple of 2 MiB lands on a
/// 2 MiB boundary — the highest one that fits below the last mapping — while other lengths
/// and usable hints are placed as before.
#[test]
fn pmd_sized_anonymous_mappings_are_pmd_aligned() {
    const PMD: u64 = 2 << 20;
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = k.mmap(cpu, &mut mm, 0, 4096, RW, ANON, 0).unwrap();
        let big = k.mmap(cpu, &mut mm, 0, 2 * PMD, RW, ANON, 0).unwrap();
        assert_eq!(big % PMD, 0, "{big:#x} is not 2 MiB-aligned");
        assert_eq!(big, (a - 2 * PMD) & !(PMD - 1), "the highest aligned place");
        let odd = k.mmap(cpu, &mut mm, 0, PMD + 4096, RW, ANON, 0).unwrap();
        assert_eq!(odd, big - PMD - 4096, "other lengths go right below");
        let hint = odd - 16 * PMD + 4096;
        let hinted = k.mmap(cpu, &mut mm, hint, PMD, RW, ANON, 0).unwrap();
        assert_eq!(hinted, hint, "a usable hint is kept");
        // The bytes are there, through the MMU.
        k.copy_to_user(cpu, &mut mm, big + PMD - 3, b"thp").unwrap();
        let mut back = [0u8; 3];
        k.copy_from_user(cpu, &mut mm, &mut back, big + PMD - 3)
            .unwrap();
        assert_eq!(&back, b"thp");
        k.check_mm_invariants(&mm).unwrap();
        k.exit_mmap(cpu, mm);
    });
}

/// `brk` grows the heap VMA from `start_brk` on and never merges it into the `.bss` mapping
/// that ends there (`do_brk_flags` looks no lower than `start_brk`), as `/proc/PID/maps` on
/// Linux shows: the bss unnamed, `[heap]` its own line.
#[test]
fn brk_does_not_merge_the_heap_into_bss() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        let bss = 0x5555_5557_9000;
        k.mmap(cpu, &mut mm, bss, 4096, RW, ANON | MAP_FIXED, 0)
            .unwrap();
        mm.start_brk = bss + 4096;
        mm.brk = mm.start_brk;
        assert_eq!(
            k.brk(cpu, &mut mm, bss + 4096 + 10_000),
            bss + 4096 + 10_000
        );
        assert_eq!(
            k.brk(cpu, &mut mm, bss + 4096 + 20_000),
            bss + 4096 + 20_000
        );
        let maps = mm.proc_maps();
        let lines: Vec<&str> = maps.lines().collect();
        assert_eq!(lines[0], "555555579000-55555557a000 rw-p 00000000 00:00 0 ");
        assert!(
            lines[1].starts_with("55555557a000-55555557f000 rw-p 00000000 00:00 0 ")
                && lines[1].ends_with("[heap]"),
            "{maps}"
        );
        k.copy_to_user(cpu, &mut mm, bss + 4096 + 19_999, b"h")
            .unwrap();
        // Shrinking gives the pages back; the bss stays.
        let start = mm.start_brk;
        assert_eq!(k.brk(cpu, &mut mm, start), start);
        assert_eq!(mm.map_count(), 1);
        k.check_mm_invariants(&mm).unwrap();
        k.exit_mmap(cpu, mm);
    });
}

#[test]
fn mmap_errnos() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        let e = |r: Result<u64, Errno>| r.unwrap_err();
        assert_eq!(
            e(k.mmap(cpu, &mut mm, 0, 0, RW, ANON, 0)),
            Errno::EINVAL,
            "zero length"
        );
        assert_eq!(
            e(k.mmap(cpu, &mut mm, 0, 4096, RW, MAP_ANONYMOUS, 0)),
            Errno::EINVAL,
            "neither shared nor private"
        );
        assert_eq!(
            e(k.mmap(cpu, &mut mm, 0, 4096, 0x40, ANON, 0)),
            Errno::EINVAL,
            "bad prot"
        );
        assert_eq!(
            e(k.mmap(cpu, &mut mm, 0, 4096, RW, MAP_PRIVATE, 0)),
            Errno::EBADF,
            "file mapping without a file"
        );
        assert_eq!(
            e(k.mmap(cpu, &mut mm, 0x1234, 4096, RW, ANON | MAP_FIXED, 0)),
            Errno::EINVAL,
            "unaligned fixed"
        );
        assert_eq!(
            e(k.mmap(cpu, &mut mm, 0, 4096, RW, ANON, 100)),
            Errno::EINVAL,
            "unaligned offset"
        );
        assert_eq!(
            e(k.mmap(cpu, &mut mm, 0x1000, 4096, RW, ANON | MAP_FIXED, 0)),
            Errno::EPERM,
            "below mmap_min_addr"
        );
        assert_eq!(
            e(k.mmap(cpu, &mut mm, 0, u64::MAX - 100, RW, ANON, 0)),
            Errno::ENOMEM,
            "too long"
        );
        assert_eq!(
            e(k.mmap(
                cpu,
                &mut mm,
                0,
                4096,
                RW,
                MAP_SHARED_VALIDATE | MAP_ANONYMOUS | 0x40000,
                0
            )),
            Errno::EOPNOTSUPP,
            "unknown flag under MAP_SHARED_VALIDATE"
        );
        // A free hint is honoured; a taken one is not; NOREPLACE refuses to clobber.
        let h = k
            .mmap(cpu, &mut mm, 0x5000_0000, 4096, RW, ANON, 0)
            .unwrap();
        assert_eq!(h, 0x5000_0000);
        let h2 = k
            .mmap(cpu, &mut mm, 0x5000_0000, 4096, RW, ANON, 0)
            .unwrap();
        assert_ne!(h2, 0x5000_0000);
        assert_eq!(
            e(k.mmap(
                cpu,
                &mut mm,
                0x5000_0000,
                4096,
                RW,
                ANON | MAP_FIXED_NOREPLACE,
                0
            )),
            Errno::EEXIST
        );
        // MAP_FIXED replaces.
        k.mmap(
            cpu,
            &mut mm,
            0x5000_0000,
            4096,
            PROT_READ,
            ANON | MAP_FIXED,
            0,
        )
        .unwrap();
        assert_eq!(
            mm.vma_lookup(0x5000_0000).unwrap().vm_flags & (VmFlags::VM_READ | VmFlags::VM_WRITE),
            VmFlags::VM_READ
        );
        // Shared anonymous and stack-like mappings carry their flags.
        let s = k
            .mmap(cpu, &mut mm, 0, 4096, RW, MAP_SHARED | MAP_ANONYMOUS, 0)
            .unwrap();
        assert!(mm
            .vma_lookup(s)
            .unwrap()
            .vm_flags
            .contains(VmFlags::VM_SHARED | VmFlags::VM_MAYSHARE));
        assert!(mm.proc_maps().contains(" rw-s "));
        let g = k
            .mmap(cpu, &mut mm, 0, 1 << 20, RW, ANON | MAP_GROWSDOWN, 0)
            .unwrap();
        // The next top-down mapping keeps the stack guard gap below the GROWSDOWN VMA.
        let below = k.mmap(cpu, &mut mm, 0, 4096, PROT_READ, ANON, 0).unwrap();
        assert!(below + 4096 + (256 << 12) <= g, "{below:#x} vs {g:#x}");
        k.check_mm_invariants(&mm).unwrap();
        k.exit_mmap(cpu, mm);
    });
}

#[test]
fn max_map_count_is_enforced() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        mm.max_map_count = 4;
        let base = 0x4000_0000;
        for i in 0..4u64 {
            let prot = if i % 2 == 0 { PROT_READ } else { RW };
            k.mmap(
                cpu,
                &mut mm,
                base + i * 0x4000,
                0x4000,
                prot,
                ANON | MAP_FIXED,
                0,
            )
            .unwrap();
        }
        assert_eq!(
            k.mmap(cpu, &mut mm, 0, 4096, RW, ANON, 0),
            Err(Errno::ENOMEM)
        );
        assert_eq!(
            k.munmap(cpu, &mut mm, base + 0x1000, 0x1000),
            Err(Errno::ENOMEM),
            "a split needs one more VMA"
        );
        assert_eq!(
            k.mprotect(cpu, &mut mm, base + 0x1000, 0x1000, RW),
            Err(Errno::ENOMEM),
            "mprotect's split too"
        );
        k.munmap(cpu, &mut mm, base, 0x4000).unwrap();
        k.check_mm_invariants(&mm).unwrap();
        k.exit_mmap(cpu, mm);
    });
}

/// A page inserted into a VMA is reached through the MMU; munmap zaps it, drops the reference,
/// faults afterwards, and frees the page tables it needed.
#[test]
fn munmap_zaps_and_frees_page_tables() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        let tables0 = k.page_table_pages();
        let a = k
            .mmap(
                cpu,
                &mut mm,
                0x7000_0000,
                4 << 20,
                RW | PROT_EXEC,
                ANON | MAP_FIXED,
                0,
            )
            .unwrap();
        let page = k.alloc_page(cpu, GFP_KERNEL).unwrap();
        k.write_page(page, 0, b"inserted").unwrap();
        k.vm_insert_page(cpu, &mm, a + 0x1000, page).unwrap();
        assert_eq!((page.refcount(), page.mapcount()), (2, 1));
        assert_eq!(
            k.vm_insert_page(cpu, &mm, a + 0x1000, page),
            Err(Errno::EBUSY)
        );
        assert_eq!(
            k.vm_insert_page(cpu, &mm, 0x1000_0000, page),
            Err(Errno::EFAULT)
        );
        let pa = k
            .mmu_translate(cpu, &mm.pt, a + 0x1000, Access::USER_READ)
            .unwrap();
        assert_eq!(pa >> 12, k.page_to_pfn(page).0);
        assert!(
            k.mmu_translate(cpu, &mm.pt, a + 0x1000, Access::USER_WRITE)
                .is_err(),
            "private writable mappings start read-only"
        );
        assert!(k.page_table_pages() > tables0);
        k.check_mm_invariants(&mm).unwrap();
        k.munmap(cpu, &mut mm, a, 4 << 20).unwrap();
        assert_eq!((page.refcount(), page.mapcount()), (1, 0));
        assert!(
            k.mmu_translate(cpu, &mm.pt, a + 0x1000, Access::USER_READ)
                .is_err(),
            "flushed and gone"
        );
        assert_eq!(
            k.page_table_pages(),
            tables0,
            "the PTE, PMD and PUD tables went with the range"
        );
        let mut b = [0u8; 8];
        k.read_page(page, 0, &mut b).unwrap();
        assert_eq!(&b, b"inserted");
        k.__free_pages(cpu, page, 0);
        k.exit_mmap(cpu, mm);
        assert_eq!(
            k.page_table_pages(),
            tables0 - 1,
            "exit_mmap frees the PGD too"
        );
    });
}

#[test]
fn find_vma_over_100k_vmas() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        mm.max_map_count = 200_000;
        let base = 0x1_0000_0000u64;
        for i in 0..100_000u64 {
            let prot = if i % 2 == 0 { PROT_READ } else { RW };
            k.mmap(
                cpu,
                &mut mm,
                base + i * 0x2000,
                0x1000,
                prot,
                ANON | MAP_FIXED,
                0,
            )
            .unwrap();
        }
        assert_eq!(mm.map_count(), 100_000);
        for i in (0..100_000u64).step_by(997) {
            let v = mm.find_vma(base + i * 0x2000 + 0x1800).unwrap();
            assert_eq!(
                v.vm_start,
                base + (i + 1) * 0x2000,
                "first VMA ending above a hole"
            );
            assert_eq!(
                mm.vma_lookup(base + i * 0x2000 + 5).unwrap().vm_start,
                base + i * 0x2000
            );
        }
        k.check_mm_invariants(&mm).unwrap();
        k.exit_mmap(cpu, mm);
    });
}

#[derive(Clone, Debug)]
enum Op {
    Map { page: u64, pages: u64, prot: u32 },
    Unmap { page: u64, pages: u64 },
    Protect { page: u64, pages: u64, prot: u32 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (
            0u64..48,
            1u64..12,
            prop_oneof![Just(PROT_READ), Just(RW), Just(PROT_NONE)]
        )
            .prop_map(|(page, pages, prot)| Op::Map { page, pages, prot }),
        (0u64..48, 1u64..16).prop_map(|(page, pages)| Op::Unmap { page, pages }),
        (
            0u64..48,
            1u64..12,
            prop_oneof![Just(PROT_READ), Just(RW), Just(PROT_NONE)]
        )
            .prop_map(|(page, pages, prot)| Op::Protect { page, pages, prot }),
    ]
}

const WIN: u64 = 0x2000_0000;

/// Per page: the protection, and whether the memory is charged (`VM_ACCOUNT`: set when it is
/// mapped or mprotected writable, kept when write permission goes away, as in Linux).
type Model = BTreeMap<u64, (u32, bool)>;

fn model_vmas(model: &Model) -> Vec<(u64, u64, (u32, bool))> {
    // Merge runs of consecutive pages with the same protection and charge, as vma_merge would.
    let mut out: Vec<(u64, u64, (u32, bool))> = Vec::new();
    for (&p, &prot) in model {
        match out.last_mut() {
            Some(l) if l.1 == p && l.2 == prot => l.1 = p + 1,
            _ => out.push((p, p + 1, prot)),
        }
    }
    out
}

fn prot_of(f: VmFlags) -> u32 {
    let mut p = 0;
    if f.contains(VmFlags::VM_READ) {
        p |= PROT_READ;
    }
    if f.contains(VmFlags::VM_WRITE) {
        p |= PROT_WRITE;
    }
    p
}

fn real_vmas(mm: &MmStruct) -> Vec<(u64, u64, (u32, bool))> {
    mm.vmas()
        .map(|v| {
            (
                (v.vm_start - WIN) >> 12,
                (v.vm_end - WIN) >> 12,
                (
                    prot_of(v.vm_flags),
                    v.vm_flags.contains(VmFlags::VM_ACCOUNT),
                ),
            )
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn address_space_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        let m = boot_mem(64, 1, "");
        let k = &m.kernel;
        m.on_cpu(0, |cpu| {
            let mut mm = k.mm_alloc(cpu).unwrap();
            let mut model: Model = BTreeMap::new();
            for op in &ops {
                match *op {
                    Op::Map { page, pages, prot } => {
                        k.mmap(cpu, &mut mm, WIN + (page << 12), pages << 12, prot, ANON | MAP_FIXED, 0).unwrap();
                        for p in page..page + pages {
                            model.insert(p, (prot, prot & PROT_WRITE != 0));
                        }
                    }
                    Op::Unmap { page, pages } => {
                        k.munmap(cpu, &mut mm, WIN + (page << 12), pages << 12).unwrap();
                        for p in page..page + pages {
                            model.remove(&p);
                        }
                    }
                    Op::Protect { page, pages, prot } => {
                        // Linux changes the VMAs before the first hole, then fails with ENOMEM.
                        let hole = (page..page + pages).find(|p| !model.contains_key(p));
                        let r = k.mprotect(cpu, &mut mm, WIN + (page << 12), pages << 12, prot);
                        prop_assert_eq!(r, if hole.is_some() { Err(Errno::ENOMEM) } else { Ok(()) });
                        for p in page..hole.unwrap_or(page + pages) {
                            let charged = model[&p].1 || prot & PROT_WRITE != 0;
                            model.insert(p, (prot, charged));
                        }
                    }
                }
                prop_assert_eq!(real_vmas(&mm), model_vmas(&model), "after {:?}", op);
                prop_assert!(k.check_mm_invariants(&mm).is_ok(), "{:?}", k.check_mm_invariants(&mm));
            }
            k.exit_mmap(cpu, mm);
            Ok(())
        })?;
    }
}

/// mprotect rewrites present PTEs and flushes: a shared page becomes read-only to the MMU and
/// writable again; bad arguments get Linux's errnos.
#[test]
fn mprotect_changes_ptes_and_checks_arguments() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = k
            .mmap(cpu, &mut mm, 0, 3 << 12, RW, MAP_SHARED | MAP_ANONYMOUS, 0)
            .unwrap();
        let page = k.alloc_page(cpu, GFP_KERNEL).unwrap();
        k.vm_insert_page(cpu, &mm, a + 0x1000, page).unwrap();
        assert!(k
            .mmu_translate(cpu, &mm.pt, a + 0x1000, Access::USER_WRITE)
            .is_ok());
        k.mprotect(cpu, &mut mm, a + 0x1000, 0x1000, PROT_READ)
            .unwrap();
        assert_eq!(mm.map_count(), 3, "the middle page split off");
        assert!(mm.proc_maps().lines().nth(1).unwrap().contains(" r--s "));
        assert!(
            k.mmu_translate(cpu, &mm.pt, a + 0x1000, Access::USER_WRITE)
                .is_err(),
            "write-protected and flushed"
        );
        assert!(k
            .mmu_translate(cpu, &mm.pt, a + 0x1000, Access::USER_READ)
            .is_ok());
        k.mprotect(cpu, &mut mm, a + 0x1000, 0x1000, RW).unwrap();
        assert_eq!(mm.map_count(), 1, "merged back");
        assert!(k
            .mmu_translate(cpu, &mm.pt, a + 0x1000, Access::USER_WRITE)
            .is_ok());
        assert_eq!(
            k.mprotect(cpu, &mut mm, a + 1, 0x1000, PROT_READ),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            k.mprotect(cpu, &mut mm, a, 0x1000, 0x80),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            k.mprotect(cpu, &mut mm, a, 0x10000, PROT_READ),
            Err(Errno::ENOMEM),
            "runs past the mapping"
        );
        assert_eq!(k.mprotect(cpu, &mut mm, a, 0, PROT_READ), Ok(()));
        k.check_mm_invariants(&mm).unwrap();
        k.munmap(cpu, &mut mm, a, 3 << 12).unwrap();
        assert_eq!((page.refcount(), page.mapcount()), (1, 0));
        k.__free_pages(cpu, page, 0);
        k.exit_mmap(cpu, mm);
    });
}

/// mremap: shrink in place, grow in place into free space, move with MREMAP_MAYMOVE when the
/// next mapping is in the way (the bytes travel with their pages, same pfns), MREMAP_FIXED,
/// MREMAP_DONTUNMAP, and Linux's errnos.
#[test]
fn mremap_grows_moves_and_keeps_bytes() {
    use mmkit::mm::mremap::*;
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        let a = k
            .mmap(cpu, &mut mm, 0x4000_0000, 4 << 12, RW, ANON, 0)
            .unwrap();
        let data: Vec<u8> = (0..4 << 12).map(|i| (i * 7 % 251) as u8).collect();
        k.user_write(cpu, &mut mm, a, &data).unwrap();
        let pfns: Vec<u64> = (0..4)
            .map(|i| k.pte_lookup(&mm.pt, a + (i << 12)).unwrap().pfn().0)
            .collect();
        // Grow in place: nothing after it.
        assert_eq!(k.mremap(cpu, &mut mm, a, 4 << 12, 8 << 12, 0, 0), Ok(a));
        assert_eq!(mm.vma_lookup(a).unwrap().vm_end, a + (8 << 12));
        assert_eq!(mm.total_vm(), 8);
        // Something right after: growing needs to move.
        k.mmap(
            cpu,
            &mut mm,
            a + (8 << 12),
            4096,
            PROT_READ,
            ANON | MAP_FIXED,
            0,
        )
        .unwrap();
        assert_eq!(
            k.mremap(cpu, &mut mm, a, 8 << 12, 16 << 12, 0, 0),
            Err(Errno::ENOMEM)
        );
        let b = k
            .mremap(cpu, &mut mm, a, 8 << 12, 16 << 12, MREMAP_MAYMOVE, 0)
            .unwrap();
        assert_ne!(b, a);
        assert!(mm.vma_lookup(a).is_none(), "the old range is gone");
        let mut got = vec![0u8; 4 << 12];
        k.user_read(cpu, &mut mm, b, &mut got).unwrap();
        assert_eq!(got, data, "the bytes moved with the pages");
        for i in 0..4 {
            assert_eq!(
                k.pte_lookup(&mm.pt, b + (i << 12)).unwrap().pfn().0,
                pfns[i as usize]
            );
        }
        let v = mm.vma_lookup(b).unwrap();
        assert_eq!(
            v.vm_pgoff,
            a >> 12,
            "an anonymous VMA keeps its linear index"
        );
        // Shrink in place.
        assert_eq!(k.mremap(cpu, &mut mm, b, 16 << 12, 2 << 12, 0, 0), Ok(b));
        assert_eq!(mm.vma_lookup(b).unwrap().vm_end, b + (2 << 12));
        // MREMAP_FIXED to a chosen place, replacing what was there.
        let c = 0x5000_0000u64;
        k.mmap(cpu, &mut mm, c, 4096, PROT_READ, ANON | MAP_FIXED, 0)
            .unwrap();
        assert_eq!(
            k.mremap(
                cpu,
                &mut mm,
                b,
                2 << 12,
                2 << 12,
                MREMAP_MAYMOVE | MREMAP_FIXED,
                c
            ),
            Ok(c)
        );
        let mut two = vec![0u8; 2 << 12];
        k.user_read(cpu, &mut mm, c, &mut two).unwrap();
        assert_eq!(two, data[..2 << 12]);
        // MREMAP_DONTUNMAP: the old range stays mapped and reads as zeroes.
        let d = k
            .mremap(
                cpu,
                &mut mm,
                c,
                2 << 12,
                2 << 12,
                MREMAP_MAYMOVE | MREMAP_DONTUNMAP,
                0,
            )
            .unwrap();
        k.user_read(cpu, &mut mm, d, &mut two).unwrap();
        assert_eq!(two, data[..2 << 12]);
        k.user_read(cpu, &mut mm, c, &mut two).unwrap();
        assert!(two.iter().all(|&x| x == 0));
        // Errnos.
        assert_eq!(
            k.mremap(cpu, &mut mm, c + 1, 4096, 8192, 0, 0),
            Err(Errno::EINVAL)
        );
        assert_eq!(k.mremap(cpu, &mut mm, c, 4096, 0, 0, 0), Err(Errno::EINVAL));
        assert_eq!(
            k.mremap(cpu, &mut mm, c, 4096, 8192, 0x80, 0),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            k.mremap(cpu, &mut mm, c, 4096, 8192, MREMAP_FIXED, 0x6000_0000),
            Err(Errno::EINVAL),
            "FIXED without MAYMOVE"
        );
        assert_eq!(
            k.mremap(cpu, &mut mm, 0x7000_0000, 4096, 8192, MREMAP_MAYMOVE, 0),
            Err(Errno::EFAULT),
            "nothing mapped there"
        );
        assert_eq!(
            k.mremap(cpu, &mut mm, c, 64 << 12, 128 << 12, MREMAP_MAYMOVE, 0),
            Err(Errno::EFAULT),
            "old range runs past its VMA"
        );
        k.check_mm_invariants(&mm).unwrap();
        k.exit_mmap(cpu, mm);
    });
}

/// A shared anonymous mapping is a memory file of its size that costs nothing until touched
/// (it allocated the whole size up front: 1 TiB aborted the process).
#[test]
fn huge_shared_anonymous_mapping_is_sparse() {
    let m = common::boot_mem(128, 1, "");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        let mut mm = k.mm_alloc(cpu).unwrap();
        let len = 1u64 << 40;
        let a = k
            .mmap(
                cpu,
                &mut mm,
                0,
                len,
                PROT_READ | PROT_WRITE,
                MAP_SHARED | MAP_ANONYMOUS,
                0,
            )
            .unwrap();
        for off in [0, len / 2, len - 4096] {
            k.user_write(cpu, &mut mm, a + off, b"sparse").unwrap();
            let mut b = [0u8; 6];
            k.user_read(cpu, &mut mm, a + off, &mut b).unwrap();
            assert_eq!(&b, b"sparse");
            let mut z = [0xffu8; 16];
            k.user_read(cpu, &mut mm, a + off + 4096 * 7, &mut z).ok();
        }
        k.check_mm_invariants(&mm).unwrap();
        k.munmap(cpu, &mut mm, a, len).unwrap();
        k.exit_mmap(cpu, mm);
    });
}
