//! vmalloc, vmap and kvmalloc: bytes through vmalloc addresses read back through
//! vmalloc_to_page and the direct map, guard pages, lazy purge (and the stale translation it
//! tolerates until then), bad frees, /proc/vmallocinfo, and every page back at the end.

mod common;
use common::boot_mem;
use mmkit::arch::x86_64::layout::{PAGE_OFFSET, VMALLOC_START};
use mmkit::arch::x86_64::pgtable::PAGE_KERNEL;
use mmkit::arch::x86_64::tlb::Access;
use mmkit::gfp::{GFP_ATOMIC, GFP_KERNEL};
use mmkit::{Errno, VirtAddr};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| seed.wrapping_add((i * 7 + i / 4096) as u8))
        .collect()
}

#[test]
fn vmalloc_bytes_read_back_through_vmalloc_to_page() {
    let m = boot_mem(256, 2, "");
    let k = &m.kernel;
    let size = 64 << 10;
    let va = m.on_cpu(0, |cpu| {
        let va = k.vmalloc(cpu, size).unwrap();
        assert!(k.is_vmalloc_addr(va) && va.0 >= VMALLOC_START);
        k.kernel_write(cpu, va, &pattern(size, 3)).unwrap();
        va
    });
    // Page by page through vmalloc_to_page and the direct map.
    let mut got = Vec::new();
    for i in 0..size / 4096 {
        let page = k
            .vmalloc_to_page(VirtAddr(va.0 + (i as u64) * 4096))
            .unwrap();
        let mut buf = vec![0u8; 4096];
        k.read_page(page, 0, &mut buf).unwrap();
        got.extend(buf);
    }
    assert_eq!(got, pattern(size, 3));
    // Through the other CPU's MMU.
    m.on_cpu(1, |cpu| {
        let mut buf = vec![0u8; size];
        k.kernel_read(cpu, va, &mut buf).unwrap();
        assert_eq!(buf, pattern(size, 3));
        // The guard page after the area is not mapped.
        let mut one = [0u8; 1];
        assert_eq!(
            k.kernel_read(cpu, VirtAddr(va.0 + size as u64), &mut one),
            Err(Errno::EFAULT)
        );
        assert_eq!(k.vmalloc_nr_pages(), 16);
        assert!(mmkit::fs::proc::meminfo::meminfo(k).contains("VmallocUsed:          64 kB"));
        k.vfree(cpu, va);
    });
    assert_eq!(k.vmalloc_nr_pages(), 0);
    k.check_vmalloc_invariants().unwrap();
}

#[test]
fn vzalloc_vmalloc_user_node_and_vmap() {
    let m = boot_mem(1024, 2, "numa=fake=2");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        // Dirty pages, free them, and get zeroed ones back.
        let dirty = k.vmalloc(cpu, 32 << 10).unwrap();
        k.kernel_write(cpu, dirty, &[0xee; 32 << 10]).unwrap();
        k.vfree(cpu, dirty);
        for va in [
            k.vzalloc(cpu, 32 << 10).unwrap(),
            k.vmalloc_user(cpu, 32 << 10).unwrap(),
        ] {
            let mut buf = vec![1u8; 32 << 10];
            k.kernel_read(cpu, va, &mut buf).unwrap();
            assert!(buf.iter().all(|&b| b == 0));
            k.vfree(cpu, va);
        }
        let on1 = k.vmalloc_node(cpu, 16 << 10, 1).unwrap();
        for i in 0..4 {
            assert_eq!(
                k.vmalloc_to_page(VirtAddr(on1.0 + i * 4096)).unwrap().nid(),
                1
            );
        }
        assert!(
            k.proc_vmallocinfo().contains(" N1=4"),
            "{}",
            k.proc_vmallocinfo()
        );
        k.vfree(cpu, on1);
        // vmap: pages we own, seen at a new address.
        let pages: Vec<_> = (0..3)
            .map(|_| k.alloc_page(cpu, GFP_KERNEL).unwrap())
            .collect();
        for (i, p) in pages.iter().enumerate() {
            k.write_page(p, 100, &[i as u8 + 1; 8]).unwrap();
        }
        let va = k.vmap(cpu, &pages, PAGE_KERNEL).unwrap();
        let mut b = [0u8; 8];
        k.kernel_read(cpu, VirtAddr(va.0 + 2 * 4096 + 100), &mut b)
            .unwrap();
        assert_eq!(b, [3; 8]);
        assert!(
            k.proc_vmallocinfo()
                .lines()
                .any(|l| l.ends_with(" vmap N0=3")),
            "{}",
            k.proc_vmallocinfo()
        );
        // vfree refuses a vmap area; vunmap takes it and leaves the pages to us.
        k.vfree(cpu, va);
        assert!(k
            .dmesg()
            .iter()
            .any(|l| l.contains("Trying to vfree() nonexistent vm area")));
        k.vunmap(cpu, va);
        k.write_page(pages[0], 0, &[9]).unwrap();
        for p in pages {
            k.__free_pages(cpu, p, 0);
        }
    });
    k.check_vmalloc_invariants().unwrap();
}

/// vfree unmaps and flushes before its pages go back (flush-before-free, where Linux would
/// leave a stale kernel translation to freed pages until its lazy flush), but the address
/// range is not handed out again until the lazy purge; after it, the range is free.
#[test]
fn vfree_flushes_at_once_and_purges_the_range_lazily() {
    let m = boot_mem(256, 1, "");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        let a = k.vmalloc(cpu, 8192).unwrap();
        k.kernel_write(cpu, a, b"cached").unwrap();
        assert!(k
            .mmu_translate(cpu, k.kernel_page_tables(), a.0, Access::KERNEL_READ)
            .is_ok());
        k.vfree(cpu, a);
        // The translation this CPU had cached is gone: the pages it led to are free.
        assert!(k
            .mmu_translate(cpu, k.kernel_page_tables(), a.0, Access::KERNEL_READ)
            .is_err());
        assert!(k.proc_vmallocinfo().contains("unpurged vm_area"));
        let b = k.vmalloc(cpu, 8192).unwrap();
        assert_ne!(a, b, "an unpurged range is not reused");
        k.check_vmalloc_invariants().unwrap();
        k.purge_vmap_area_lazy();
        let c = k.vmalloc(cpu, 8192).unwrap();
        assert_eq!(a, c, "after the purge the lowest fit is the old range");
        k.vfree(cpu, b);
        k.vfree(cpu, c);
        // Bad frees.
        k.vfree(cpu, VirtAddr(VMALLOC_START + 0x1234_0000));
        k.vfree(cpu, VirtAddr(0));
        assert!(
            k.dmesg()
                .iter()
                .filter(|l| l.contains("nonexistent vm area"))
                .count()
                == 1
        );
        assert!(k.vmalloc(cpu, 0).is_none());
        assert!(k.vmalloc(cpu, usize::MAX / 2).is_none());
        assert!(k.dmesg().iter().any(|l| l.contains("vmalloc error: size")));
    });
    k.check_vmalloc_invariants().unwrap();
}

#[test]
fn kvmalloc_prefers_kmalloc_and_falls_back_to_vmalloc() {
    let m = boot_mem(256, 1, "");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        let small = k.kvmalloc(cpu, 1000, GFP_KERNEL).unwrap();
        assert!(!k.is_vmalloc_addr(small) && small.0 >= PAGE_OFFSET);
        k.kernel_write(cpu, small, &pattern(1000, 1)).unwrap();
        let mut b = vec![0; 1000];
        k.kernel_read(cpu, small, &mut b).unwrap();
        assert_eq!(b, pattern(1000, 1));
        let big = k.kvmalloc(cpu, 6 << 20, GFP_KERNEL).unwrap();
        assert!(
            k.is_vmalloc_addr(big),
            "beyond KMALLOC_MAX_SIZE it is vmalloc"
        );
        k.kernel_write(cpu, VirtAddr(big.0 + (5 << 20)), b"tail")
            .unwrap();
        assert!(
            k.kvmalloc(cpu, 6 << 20, GFP_ATOMIC).is_none(),
            "vmalloc needs a blocking mask"
        );
        k.kvfree(cpu, small);
        k.kvfree(cpu, big);
        assert!(
            k.dmesg()
                .iter()
                .all(|l| !l.contains("page allocation failure")),
            "kvmalloc's kmalloc try is quiet"
        );
    });
    k.check_vmalloc_invariants().unwrap();
    k.check_slab_invariants().unwrap();
}

/// kvmalloc of more than a page when free memory is all single pages: its kmalloc try
/// (`__GFP_NORETRY | __GFP_NOWARN`) runs one round of reclaim between two of compaction,
/// fails without a report, and vmalloc builds the area from single pages.
#[test]
fn kvmalloc_falls_back_quietly_when_memory_is_fragmented() {
    use mmkit::fs::proc::vmstat::vm_event;
    use mmkit::gfp::Gfp;
    let m = boot_mem(64, 1, "");
    let k = &m.kernel;
    let ev = |name: &str| vm_event(k, name).unwrap();
    m.on_cpu(0, |cpu| {
        // Take every free page (no watermarks), then give back every fourth by pfn: each
        // free page's buddy is held, so no free block is larger than one page.
        let mut held = common::exhaust(k, cpu, GFP_KERNEL | Gfp::__GFP_MEMALLOC, 0);
        held.sort_by_key(|p| k.page_to_pfn(p).0);
        let (give, keep): (Vec<_>, Vec<_>) = held
            .into_iter()
            .partition(|p| k.page_to_pfn(p).0.is_multiple_of(4));
        common::free_all(k, cpu, give, 0);
        k.drain_all_pages(cpu);
        assert!(k
            .alloc_pages(cpu, GFP_ATOMIC | Gfp::__GFP_NOWARN, 1)
            .is_none());
        let (_, seq) = k.dmesg_since(0);
        let (stalls, compact) = (ev("allocstall_normal"), ev("compact_stall"));
        let va = k
            .kvmalloc(cpu, 16 << 10, GFP_KERNEL)
            .expect("vmalloc's pages");
        assert!(k.is_vmalloc_addr(va), "{va:?}");
        assert_eq!(ev("allocstall_normal") - stalls, 1, "one reclaim round");
        assert_eq!(ev("compact_stall") - compact, 2);
        let (log, _) = k.dmesg_since(seq);
        assert!(
            log.iter().all(|l| !l.contains("page allocation failure")),
            "{log:?}"
        );
        k.kernel_write(cpu, va, &pattern(16 << 10, 5)).unwrap();
        let mut b = vec![0; 16 << 10];
        k.kernel_read(cpu, va, &mut b).unwrap();
        assert_eq!(b, pattern(16 << 10, 5));
        k.kvfree(cpu, va);
        common::free_all(k, cpu, keep, 0);
    });
    k.check_vmalloc_invariants().unwrap();
    k.check_invariants().unwrap();
}

/// Random vmalloc/vfree: invariants after every step, every byte intact, every page back.
#[test]
fn random_vmalloc_sequences_keep_invariants() {
    let m = boot_mem(256, 1, "");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| k.drain_all_pages(cpu));
    let free0 = k.global_free_pages();
    m.on_cpu(0, |cpu| {
        let mut rng = SmallRng::seed_from_u64(9);
        let mut live: Vec<(VirtAddr, usize, u8)> = Vec::new();
        for step in 0..300 {
            if live.is_empty() || rng.random_bool(0.55) {
                let size = rng.random_range(1..200_000);
                let va = k.vmalloc(cpu, size).unwrap();
                k.kernel_write(cpu, va, &pattern(size, step as u8)).unwrap();
                live.push((va, size, step as u8));
            } else {
                let (va, size, seed) = live.swap_remove(rng.random_range(0..live.len()));
                let mut b = vec![0; size];
                k.kernel_read(cpu, va, &mut b).unwrap();
                assert_eq!(b, pattern(size, seed), "step {step}");
                k.vfree(cpu, va);
            }
            k.check_vmalloc_invariants()
                .unwrap_or_else(|e| panic!("step {step}: {e}"));
        }
        for (va, _, _) in live {
            k.vfree(cpu, va);
        }
        k.purge_vmap_area_lazy();
        k.drain_all_pages(cpu);
    });
    k.check_vmalloc_invariants().unwrap();
    k.check_invariants().unwrap();
    assert_eq!(k.vmalloc_nr_pages(), 0);
    // Kernel page tables for the vmalloc area stay (as in Linux); everything else came back.
    assert_eq!(
        k.global_free_pages() + k.page_table_pages(),
        free0,
        "only the vmalloc page tables are held"
    );
}
