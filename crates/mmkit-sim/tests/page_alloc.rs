//! The buddy allocator: randomized sequences with invariant checks, full coalescing, zone and
//! reserve semantics, compound pages, migrate-type stealing, and bad frees.

mod common;
use common::{boot_mem, exhaust, free_all, free_and_pcp};
use mmkit::fs::proc::buddyinfo::{buddyinfo, pagetypeinfo};
use mmkit::gfp::{
    Gfp, GFP_ATOMIC, GFP_DMA, GFP_DMA32, GFP_HIGHUSER_MOVABLE, GFP_KERNEL, GFP_NOWAIT,
};
use mmkit::mm::mmzone::Wmark;
use mmkit::mm::mmzone::ZoneType;
use mmkit::mm::page::PageFlags;
use mmkit::Page;
use mmkit_sim::machine::bind_cpu;
use mmkit_sim::workload::{check, fill};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Barrier;

/// Two CPUs allocate and free at random in lock step; after every step, with both paused,
/// every invariant holds and the page accounting balances; at the end everything coalesces.
#[test]
fn random_multi_cpu_sequences_keep_invariants() {
    let m = boot_mem(128, 2, "");
    let k = &m.kernel;
    let boot = buddyinfo(k);
    let managed = k.totalram_pages();
    let steps = 600;
    let barrier = Barrier::new(2);
    let held: [std::sync::atomic::AtomicU64; 2] = Default::default();
    std::thread::scope(|s| {
        for c in 0..2 {
            let (barrier, held) = (&barrier, &held);
            s.spawn(move || {
                bind_cpu(c);
                let cpu = k.get_cpu();
                let mut rng = SmallRng::seed_from_u64(42 + c as u64);
                let mut live: Vec<(&Page, u32, u64)> = Vec::new();
                for step in 0..steps {
                    if live.is_empty() || rng.random_bool(0.6) {
                        let order = [0, 0, 0, 1, 2, 3, 4, 6, 9][rng.random_range(0..9)];
                        let gfp = [
                            GFP_KERNEL,
                            GFP_HIGHUSER_MOVABLE,
                            GFP_DMA32,
                            GFP_KERNEL | Gfp::__GFP_RECLAIMABLE,
                            GFP_ATOMIC,
                        ][rng.random_range(0..5)];
                        if let Some(p) = k.alloc_pages(&cpu, gfp | Gfp::__GFP_NOWARN, order) {
                            let tag = (c as u64) << 40 | step;
                            fill(k, p, order, tag);
                            live.push((p, order, tag));
                        }
                    } else {
                        let (p, o, tag) = live.swap_remove(rng.random_range(0..live.len()));
                        check(k, p, o, tag).expect("bytes survive while allocated");
                        k.__free_pages(&cpu, p, o);
                    }
                    held[c].store(live.iter().map(|b| 1u64 << b.1).sum(), Relaxed);
                    barrier.wait();
                    if c == 0 {
                        k.check_invariants()
                            .unwrap_or_else(|e| panic!("step {step}: {e}"));
                        let allocated = held[0].load(Relaxed) + held[1].load(Relaxed);
                        assert_eq!(
                            free_and_pcp(k) + allocated,
                            managed,
                            "step {step}: pages unaccounted for"
                        );
                    }
                    barrier.wait();
                }
                for (p, o, tag) in live.drain(..) {
                    check(k, p, o, tag).unwrap();
                    k.__free_pages(&cpu, p, o);
                }
            });
        }
    });
    m.on_cpu(0, |cpu| k.drain_all_pages(cpu));
    k.check_invariants().unwrap();
    assert_eq!(k.global_free_pages(), managed);
    assert_eq!(
        buddyinfo(k),
        boot,
        "every block coalesced back to the post-boot state"
    );
    assert_eq!(k.bad_page_reports(), 0);
}

/// The full-size workload the default run performs, on the default machine.
#[test]
fn workload_coalesces_to_post_boot_buddyinfo() {
    let m = mmkit_sim::Machine::boot(&mmkit_sim::MachineSpec::default()).unwrap();
    let boot = buddyinfo(&m.kernel);
    let reports = mmkit_sim::workload::run_all_cpus(&m, 20_000, 512, 7).unwrap();
    assert!(reports.iter().all(|r| r.allocs > 5000 && r.failures == 0));
    m.on_cpu(0, |cpu| m.kernel.drain_all_pages(cpu));
    m.kernel.check_invariants().unwrap();
    assert_eq!(buddyinfo(&m.kernel), boot);
}

#[test]
fn dma_requests_never_leave_zone_dma() {
    let m = boot_mem(256, 1, "");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        let v = exhaust(k, cpu, GFP_KERNEL | Gfp::GFP_DMA, 0);
        assert!(!v.is_empty());
        for p in &v {
            assert_eq!(p.zonenum(), ZoneType::Dma);
            assert!(k.page_to_pfn(p).0 < 4096);
        }
        let dma = k.nodes[0].zone(ZoneType::Dma);
        assert!(v.len() as u64 <= dma.managed());
        // What is left free in DMA is its reserve below the min watermark.
        assert!(dma.free_pages() as u64 <= dma.wmark(mmkit::mm::mmzone::Wmark::Min));
        // Other zones were not touched.
        let dma32 = k.nodes[0].zone(ZoneType::Dma32);
        assert_eq!(dma32.free_pages() as u64, dma32.managed());
        let va = k.__get_dma_pages(cpu, GFP_ATOMIC | Gfp::__GFP_NOWARN, 0);
        if let Some(va) = va {
            assert_eq!(k.virt_to_page(va).unwrap().zonenum(), ZoneType::Dma);
            k.free_pages(cpu, va, 0);
        }
        free_all(k, cpu, v, 0);
    });
    k.check_invariants().unwrap();
}

#[test]
fn dma32_and_movable_zone_choice() {
    let m = boot_mem(8192, 1, "movablecore=1G");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        let p = k.alloc_pages(cpu, GFP_DMA32, 0).unwrap();
        assert!(p.zonenum() <= ZoneType::Dma32);
        k.__free_pages(cpu, p, 0);
        // GFP_KERNEL never lands in ZONE_MOVABLE, even when it is all that is left.
        let v = exhaust(k, cpu, GFP_KERNEL, 3);
        assert!(v.iter().all(|p| p.zonenum() != ZoneType::Movable));
        let u = k
            .alloc_pages(cpu, GFP_HIGHUSER_MOVABLE, 0)
            .expect("movable allocations use ZONE_MOVABLE");
        assert_eq!(u.zonenum(), ZoneType::Movable);
        k.__free_pages(cpu, u, 0);
        free_all(k, cpu, v, 3);
    });
    k.check_invariants().unwrap();
}

/// GFP_KERNEL stops at the min watermark; GFP_ATOMIC (__GFP_HIGH, non-blocking) may take
/// 5/8 of the min reserve more; nothing takes the rest.
#[test]
fn atomic_reaches_reserves_kernel_cannot() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        let kernel = exhaust(k, cpu, GFP_KERNEL, 0);
        assert!(k
            .alloc_pages(cpu, GFP_KERNEL | Gfp::__GFP_NOWARN, 0)
            .is_none());
        let atomic = exhaust(k, cpu, GFP_ATOMIC, 0);
        assert!(
            !atomic.is_empty(),
            "GFP_ATOMIC got nothing beyond GFP_KERNEL's limit"
        );
        let min: u64 = k.nodes[0]
            .zones
            .iter()
            .filter(|z| z.populated())
            .map(|z| z.wmark(mmkit::mm::mmzone::Wmark::Min))
            .sum();
        assert!(
            atomic.len() as u64 <= min,
            "{} atomic pages but min is {min}",
            atomic.len()
        );
        assert!(
            atomic.len() as u64 >= min / 2,
            "{} atomic pages, min {min}",
            atomic.len()
        );
        assert!(k
            .alloc_pages(cpu, GFP_KERNEL | Gfp::__GFP_NOWARN, 0)
            .is_none());
        // The failure without NOWARN is reported as Linux reports it.
        assert!(k.alloc_pages(cpu, GFP_KERNEL, 0).is_none());
        let log = k.dmesg().join("\n");
        assert!(
            log.contains(
                "page allocation failure: order:0, mode:0xcc0(GFP_KERNEL), nodemask=(null)"
            ),
            "{log}"
        );
        assert!(log.contains("lowmem_reserve[]:"));
        free_all(k, cpu, atomic, 0);
        free_all(k, cpu, kernel, 0);
        k.drain_all_pages(cpu);
    });
    k.check_invariants().unwrap();
    assert_eq!(k.global_free_pages(), k.totalram_pages());
}

#[test]
fn zeroed_and_compound_pages() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        // Dirty a block, free it, and get zeroed memory back.
        let p = k.alloc_pages(cpu, GFP_KERNEL, 2).unwrap();
        fill(k, p, 2, 0xdead_beef);
        k.__free_pages(cpu, p, 2);
        let va = k.get_zeroed_page(cpu, GFP_KERNEL).unwrap();
        let z = k.virt_to_page(va).unwrap();
        let mut buf = vec![1u8; 4096];
        k.read_page(z, 0, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        k.free_page(cpu, va);
        let z = k.alloc_pages(cpu, GFP_KERNEL | Gfp::__GFP_ZERO, 3).unwrap();
        // SAFETY: just allocated, no other slice exists.
        assert!(unsafe { k.page_bytes_mut(z, 3) }.iter().all(|&b| b == 0));
        k.__free_pages(cpu, z, 3);

        let c = k.alloc_pages(cpu, GFP_KERNEL | Gfp::__GFP_COMP, 3).unwrap();
        let pfn = k.page_to_pfn(c).0;
        assert!(c.test(PageFlags::HEAD));
        for i in 1..8 {
            assert!(k
                .pfn_to_page(mmkit::Pfn(pfn + i))
                .unwrap()
                .test(PageFlags::TAIL));
        }
        // Freeing with the wrong order is caught, and the page is left alone.
        let before = k.bad_page_reports();
        k.__free_pages(cpu, c, 2);
        assert_eq!(k.bad_page_reports(), before + 1);
        assert!(k
            .dmesg()
            .iter()
            .any(|l| l.contains("compound page freed with the wrong order")));
        k.check_invariants().unwrap();
    });
}

#[test]
fn bad_frees_are_reported_and_harmless() {
    let m = boot_mem(128, 1, "");
    let other = boot_mem(128, 1, "");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        let free_before = k.global_free_pages();
        let p = k.alloc_page(cpu, GFP_KERNEL).unwrap();
        k.__free_pages(cpu, p, 0);
        // Double free.
        k.__free_pages(cpu, p, 0);
        assert_eq!(k.bad_page_reports(), 1);
        let log = k.dmesg().join("\n");
        assert!(
            log.contains("BUG: Bad page state in process swapper/0"),
            "{log}"
        );
        assert!(log.contains("page_ref_count(page) == 0"), "{log}");
        // A page of another machine.
        let foreign = other.on_cpu(0, |ocpu| other.kernel.alloc_page(ocpu, GFP_KERNEL).unwrap());
        k.__free_pages(cpu, foreign, 0);
        assert!(k
            .dmesg()
            .iter()
            .any(|l| l.contains("is not a struct page of this machine")));
        // A reserved page (the first page of RAM belongs to the BIOS).
        let reserved = k.pfn_to_page(mmkit::Pfn(0)).unwrap();
        k.__free_pages(cpu, reserved, 0);
        assert!(k
            .dmesg()
            .iter()
            .any(|l| l.contains("PAGE_FLAGS_CHECK_AT_FREE")));
        // Addresses outside the direct map, and NULL.
        k.free_pages(cpu, mmkit::VirtAddr(0x1234), 0);
        k.free_pages(cpu, mmkit::VirtAddr(0), 0);
        assert!(k
            .dmesg()
            .iter()
            .any(|l| l.contains("not a direct-map address")));
        // Orders beyond MAX_PAGE_ORDER fail cleanly.
        assert!(k
            .alloc_pages(cpu, GFP_KERNEL | Gfp::__GFP_NOWARN, 11)
            .is_none());
        assert!(k
            .alloc_pages(cpu, Gfp::__GFP_DMA | Gfp::__GFP_DMA32, 0)
            .is_none());
        // Byte access to a free page is refused.
        assert_eq!(k.write_page(p, 0, &[1]), Err(mmkit::Errno::EFAULT));
        k.drain_all_pages(cpu);
        assert_eq!(k.global_free_pages(), free_before);
    });
    k.check_invariants().unwrap();
}

/// Unmovable allocations, once the unmovable lists are empty, steal whole pageblocks from
/// the movable lists (the blocks change type), and give them back to nobody: the blocks
/// stay unmovable after the free, as in Linux.
#[test]
fn fallback_steals_pageblocks() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    let blocks = |t: &str| -> u64 {
        let pti = pagetypeinfo(k);
        let line = pti
            .lines()
            .find(|l| l.starts_with("Node 0, zone    DMA32"))
            .unwrap()
            .to_string();
        let nums: Vec<u64> = line
            .split_whitespace()
            .skip(4)
            .map(|x| x.parse().unwrap())
            .collect();
        nums[[
            "Unmovable",
            "Movable",
            "Reclaimable",
            "HighAtomic",
            "Isolate",
        ]
        .iter()
        .position(|x| *x == t)
        .unwrap()]
    };
    assert_eq!(blocks("Unmovable"), 0);
    m.on_cpu(0, |cpu| {
        let v: Vec<_> = (0..2000)
            .map(|_| k.alloc_page(cpu, GFP_KERNEL).unwrap())
            .collect();
        assert!(blocks("Unmovable") >= 3, "{}", pagetypeinfo(k));
        let r: Vec<_> = (0..600)
            .map(|_| {
                k.alloc_page(cpu, GFP_KERNEL | Gfp::__GFP_RECLAIMABLE)
                    .unwrap()
            })
            .collect();
        assert!(blocks("Reclaimable") >= 1);
        free_all(k, cpu, v, 0);
        free_all(k, cpu, r, 0);
        k.drain_all_pages(cpu);
    });
    k.check_invariants().unwrap();
    assert_eq!(k.global_free_pages(), k.totalram_pages());
}

/// Under pressure (the fast path fails), a high-order GFP_ATOMIC allocation reserves a
/// HighAtomic pageblock (up to ~1% of the zone), and later high-order atomic allocations are
/// served from it; ordinary allocations cannot touch it.
#[test]
fn highatomic_reserve() {
    let m = boot_mem(512, 1, "");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        // Without pressure the fast path serves it and nothing is reserved.
        let easy = k.alloc_pages(cpu, GFP_ATOMIC, 2).unwrap();
        assert_eq!(k.page_zone(easy).nr_reserved_highatomic.load(Relaxed), 0);
        let pressure = exhaust(k, cpu, GFP_KERNEL, 0);
        let p = k.alloc_pages(cpu, GFP_ATOMIC, 2).unwrap();
        let z = k.page_zone(p);
        assert_eq!(z.nr_reserved_highatomic.load(Relaxed), 512);
        let pfn = k.page_to_pfn(p).0;
        assert_eq!(
            z.pageblock_migratetype(mmkit::Pfn(pfn)),
            mmkit::mm::page_alloc::MigrateType::HighAtomic
        );
        let q = k.alloc_pages(cpu, GFP_ATOMIC, 2).unwrap();
        assert_eq!(
            k.page_to_pfn(q).0 >> 9,
            pfn >> 9,
            "the second atomic block comes from the reserve"
        );
        k.check_invariants().unwrap();
        k.__free_pages(cpu, p, 2);
        k.__free_pages(cpu, q, 2);
        k.__free_pages(cpu, easy, 2);
        free_all(k, cpu, pressure, 0);
        k.drain_all_pages(cpu);
    });
    k.check_invariants().unwrap();
}

/// Only __GFP_HIGH requests are high-order atomic ones: a non-blocking order-2 allocation
/// without it (GFP_NOWAIT, or a bare GFP_DMA32 zone modifier) reaches the slow path under the
/// same pressure but reserves no HighAtomic pageblock, so when everything is freed every
/// pageblock merges back (`mmkit run --mem 128M` found this: its GFP_DMA32 requests left
/// HighAtomic pageblocks that never merged with their buddies).
#[test]
fn nowait_reserves_no_highatomic_block() {
    let m = boot_mem(512, 1, "");
    let k = &m.kernel;
    let before = mmkit::fs::proc::buddyinfo::buddyinfo(k);
    m.on_cpu(0, |cpu| {
        // Between the min and low watermarks: the fast path (low) fails, the slow path (min)
        // succeeds.
        let z = k.nodes[0].zone(ZoneType::Dma32);
        let (min, low) = (z.wmark(Wmark::Min) as i64, z.wmark(Wmark::Low) as i64);
        let mut pressure = Vec::new();
        while z.free_pages() > (min + low) / 2 {
            pressure.push(k.alloc_pages(cpu, GFP_KERNEL, 0).unwrap());
        }
        let mut got = Vec::new();
        for gfp in [GFP_NOWAIT, GFP_DMA32] {
            let p = k
                .alloc_pages(cpu, gfp | Gfp::__GFP_NOWARN, 2)
                .expect("served by the slow path above min");
            assert!(std::ptr::eq(k.page_zone(p), z));
            assert_eq!(z.nr_reserved_highatomic.load(Relaxed), 0, "{gfp:?}");
            assert_ne!(
                z.pageblock_migratetype(k.page_to_pfn(p)),
                mmkit::mm::page_alloc::MigrateType::HighAtomic
            );
            got.push(p);
        }
        for p in got {
            k.__free_pages(cpu, p, 2);
        }
        free_all(k, cpu, pressure, 0);
        k.drain_all_pages(cpu);
    });
    k.check_invariants().unwrap();
    assert_eq!(mmkit::fs::proc::buddyinfo::buddyinfo(k), before);
}

/// __GFP_THISNODE stays on the node; without it, an exhausted node falls back to the next
/// one and numa_miss/numa_foreign count it.
#[test]
fn numa_fallback_and_thisnode() {
    let m = boot_mem(1024, 2, "numa=fake=2");
    let k = &m.kernel;
    m.on_cpu(1, |cpu| {
        assert_eq!(cpu.node(), 1);
        let local = exhaust(k, cpu, GFP_KERNEL | Gfp::__GFP_THISNODE, 0);
        assert!(local.iter().all(|p| p.nid() == 1));
        let remote = k.alloc_page(cpu, GFP_KERNEL).expect("falls back to node 0");
        assert_eq!(remote.nid(), 0);
        let vm = mmkit::fs::proc::vmstat::vmstat(k);
        let get = |n: &str| {
            vm.lines()
                .find(|l| l.split(' ').next() == Some(n))
                .unwrap()
                .split(' ')
                .nth(1)
                .unwrap()
                .parse::<u64>()
                .unwrap()
        };
        assert!(get("numa_miss") >= 1 && get("numa_foreign") >= 1 && get("numa_other") >= 1);
        assert!(get("numa_hit") >= local.len() as u64);
        k.__free_pages(cpu, remote, 0);
        free_all(k, cpu, local, 0);
    });
    k.check_invariants().unwrap();
}

/// pcp lists: a batch is pulled on the first allocation; a run of frees raises `high` (Linux
/// 6.7's adaptive high) but never past `high_max`, pages beyond it go back to the buddy
/// lists, and the periodic decay brings `high` back toward `high_min` and trims the list;
/// drain_all_pages empties every CPU's lists from any CPU.
#[test]
fn pcp_batching_and_remote_drain() {
    let m = boot_mem(512, 2, "");
    let k = &m.kernel;
    let z = k.nodes[0].zone(ZoneType::Dma32);
    let (batch, high_min, high_max) = {
        let p = z.pcp.get(1).lock();
        (p.batch, p.high_min, p.high_max)
    };
    assert!(high_min < high_max);
    m.on_cpu(1, |cpu| {
        let p = k.alloc_page(cpu, GFP_KERNEL).unwrap();
        assert_eq!(z.pcp.get(1).lock().count, batch - 1);
        let more: Vec<_> = (0..2 * high_max)
            .map(|_| k.alloc_page(cpu, GFP_KERNEL).unwrap())
            .collect();
        k.__free_pages(cpu, p, 0);
        free_all(k, cpu, more, 0);
        let (count, high) = {
            let p = z.pcp.get(1).lock();
            (p.count, p.high)
        };
        assert!(high > high_min, "a run of frees raised high");
        assert!(high <= high_max && count <= high_max, "never past high_max");
        assert!(count > 0);
        for _ in 0..64 {
            k.decay_pcp_high(cpu);
        }
        let p = z.pcp.get(1).lock();
        assert_eq!(p.high, high_min, "decay brings high back to high_min");
        assert!(p.count <= high_min, "and trims the list to it");
    });
    m.on_cpu(0, |cpu| k.drain_all_pages(cpu));
    assert_eq!(z.pcp.get(1).lock().count, 0);
    k.check_invariants().unwrap();
    let _ = GFP_DMA;
}

/// `__GFP_NORETRY` (`__alloc_pages_slowpath`'s "do not loop if specifically requested"):
/// with nothing reclaimable, a blocking allocation with the flag runs direct reclaim once
/// (with compaction before and after it for a higher order) and fails; without the flag
/// reclaim is retried `MAX_RECLAIM_RETRIES` times first. `__GFP_NOWARN` keeps the failure
/// out of the log; without it the report names the mask.
#[test]
fn noretry_reclaims_once_then_fails() {
    use mmkit::fs::proc::vmstat::vm_event;
    use mmkit::mm::page_alloc::MAX_RECLAIM_RETRIES;
    let m = boot_mem(64, 1, "");
    let k = &m.kernel;
    let ev = |name: &str| vm_event(k, name).unwrap();
    m.on_cpu(0, |cpu| {
        // Only unmovable kernel pages in use: reclaim and compaction find nothing to do.
        let held = exhaust(k, cpu, GFP_KERNEL, 0);
        let (_, seq) = k.dmesg_since(0);
        let noretry = GFP_KERNEL | Gfp::__GFP_NORETRY | Gfp::__GFP_NOWARN;

        let stalls = ev("allocstall_normal");
        assert!(k.alloc_pages(cpu, noretry, 0).is_none());
        assert_eq!(ev("allocstall_normal") - stalls, 1, "one reclaim round");

        let (stalls, compact) = (ev("allocstall_normal"), ev("compact_stall"));
        assert!(k.alloc_pages(cpu, noretry, 2).is_none());
        assert_eq!(ev("allocstall_normal") - stalls, 1, "one reclaim round");
        assert_eq!(
            ev("compact_stall") - compact,
            2,
            "compaction before and after it"
        );

        let stalls = ev("allocstall_normal");
        assert!(k
            .alloc_pages(cpu, GFP_KERNEL | Gfp::__GFP_NOWARN, 0)
            .is_none());
        assert_eq!(
            ev("allocstall_normal") - stalls,
            MAX_RECLAIM_RETRIES as u64,
            "without __GFP_NORETRY reclaim is retried"
        );
        let (quiet, seq) = k.dmesg_since(seq);
        assert!(
            quiet.iter().all(|l| !l.contains("page allocation failure")),
            "{quiet:?}"
        );

        assert!(k
            .alloc_pages(cpu, GFP_KERNEL | Gfp::__GFP_NORETRY, 1)
            .is_none());
        let (log, _) = k.dmesg_since(seq);
        let report = log
            .iter()
            .find(|l| l.contains("page allocation failure: order:1, mode:"))
            .expect("warn_alloc's report");
        assert!(
            report.ends_with("(GFP_KERNEL|__GFP_NORETRY), nodemask=(null)"),
            "{report}"
        );
        free_all(k, cpu, held, 0);
    });
    k.check_invariants().unwrap();
}
