//! The SLAB allocator, kmalloc and mempools: bytes through every path, constructors,
//! colouring, per-CPU arrays under randomized multi-CPU use with invariants checked after
//! every step, debugging reports, edge cases, and /proc/slabinfo read by slabtop.

mod common;
use common::boot_mem;
use mmkit::fs::proc::buddyinfo::buddyinfo;
use mmkit::gfp::{Gfp, GFP_ATOMIC, GFP_KERNEL, GFP_NOWAIT};
use mmkit::mm::mmzone::ZoneType;
use mmkit::mm::slab::{SlabFlags, SLAB_DEBUG_FLAGS};
use mmkit::mm::slab_common::{kmalloc_size, ZERO_SIZE_PTR};
use mmkit::{Kernel, PAGE_SIZE};
use mmkit_sim::machine::bind_cpu;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::ptr::NonNull;
use std::sync::Barrier;

/// The page and offset of a kmalloc pointer, for reading it back through the direct map.
fn page_of(k: &Kernel, p: NonNull<u8>) -> (&mmkit::Page, usize) {
    let base = k.platform().direct_map_base() as usize;
    let pa = p.as_ptr() as usize - base;
    let page = k.pfn_to_page(mmkit::Pfn((pa >> 12) as u64)).unwrap();
    (page, pa & 4095)
}

fn write(p: NonNull<u8>, len: usize, seed: u8) {
    // SAFETY: the test owns `len` bytes at `p` (a live kmalloc allocation).
    let s = unsafe { std::slice::from_raw_parts_mut(p.as_ptr(), len) };
    for (i, b) in s.iter_mut().enumerate() {
        *b = seed.wrapping_add(i as u8);
    }
}

fn read(p: NonNull<u8>, len: usize) -> Vec<u8> {
    // SAFETY: as in `write`.
    unsafe { std::slice::from_raw_parts(p.as_ptr(), len) }.to_vec()
}

#[test]
fn every_kmalloc_class_reads_back_through_the_direct_map() {
    let m = boot_mem(256, 1, "");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        for class in [3u32, 4, 5, 6, 1, 7, 2, 8, 9, 10, 11, 12, 13] {
            let size = kmalloc_size(class);
            // The largest and the smallest request the class serves.
            let smallest = match class {
                3 => 1,
                1 => 65,
                2 => 129,
                7 => 97,
                8 => 193,
                c => (1 << (c - 1)) + 1,
            };
            for req in [size, smallest] {
                let mut v = Vec::new();
                for j in 0..20u8 {
                    let p = k.kmalloc(cpu, req, GFP_KERNEL).unwrap();
                    assert!(
                        k.ksize(p) >= req && k.ksize(p) == size,
                        "ksize of a {req}-byte kmalloc"
                    );
                    write(p, req, j);
                    v.push((p, j));
                }
                for &(p, j) in &v {
                    // Read back through struct page + the direct map, page by page.
                    let mut got = vec![0u8; req];
                    let mut done = 0;
                    while done < req {
                        let q = NonNull::new(p.as_ptr().wrapping_add(done)).unwrap();
                        let (page, off) = page_of(k, q);
                        let n = (4096 - off).min(req - done);
                        k.read_page(page, off, &mut got[done..done + n]).unwrap();
                        done += n;
                    }
                    assert!(
                        got.iter()
                            .enumerate()
                            .all(|(i, &b)| b == j.wrapping_add(i as u8)),
                        "class {size}"
                    );
                }
                for (p, _) in v {
                    k.kfree(cpu, Some(p));
                }
            }
        }
    });
    k.check_slab_invariants().unwrap();
}

static CTOR_MAGIC: [u8; 8] = *b"ctor-ed!";
fn ctor(obj: &mut [u8]) {
    obj[..8].copy_from_slice(&CTOR_MAGIC);
}

#[test]
fn constructors_run_when_slabs_are_made_not_per_allocation() {
    let m = boot_mem(256, 1, "");
    let k = &m.kernel;
    let id = k
        .kmem_cache_create("test_ctor", 200, 0, SlabFlags::empty(), Some(ctor))
        .unwrap();
    let num = k.kmem_cache(id).unwrap().num as u64;
    m.on_cpu(0, |cpu| {
        for _round in 0..50 {
            let v: Vec<_> = (0..10)
                .map(|_| k.kmem_cache_alloc(cpu, id, GFP_KERNEL).unwrap())
                .collect();
            for &p in &v {
                assert_eq!(read(p, 8), CTOR_MAGIC, "objects come back constructed");
            }
            for p in v {
                k.kmem_cache_free(cpu, id, p);
            }
        }
    });
    // 500 allocations of 10 live objects: one slab, constructed once.
    assert_eq!(
        k.kmem_cache(id)
            .unwrap()
            .ctor_calls
            .load(std::sync::atomic::Ordering::Relaxed),
        num
    );
    k.check_slab_invariants().unwrap();
}

#[test]
fn colouring_staggers_successive_slabs() {
    let m = boot_mem(256, 1, "");
    let k = &m.kernel;
    // 200-byte objects: 20 per page with 2-byte indices, 56 bytes left -> no colour; use 180:
    // 4096 / 182 = 22 objects, 92 bytes left -> 1 colour of 64; use 150: 26 objects, 44 left.
    // Pick a size with several colours: 1000-byte objects, 4 per slab, 88 left -> 1 colour;
    // 600 bytes: off-slab? no (600 >= 512: off-slab freelist, 6 objects, 496 left -> moves
    // on-slab; 6 * 602 = 3612, 484 left -> 7 colours).
    let id = k
        .kmem_cache_create("test_colour", 600, 0, SlabFlags::empty(), None)
        .unwrap();
    let c = k.kmem_cache(id).unwrap();
    assert!(c.colour >= 3, "colour {}", c.colour);
    let (colour, colour_off, num) = (c.colour as usize, c.colour_off as usize, c.num as usize);
    m.on_cpu(0, |cpu| {
        let v: Vec<_> = (0..num * (colour + 2))
            .map(|_| k.kmem_cache_alloc(cpu, id, GFP_KERNEL).unwrap())
            .collect();
        // The lowest object address in each slab page is its colour offset.
        let mut offsets = std::collections::BTreeMap::new();
        for p in &v {
            let a = p.as_ptr() as usize;
            let e = offsets.entry(a & !4095).or_insert(usize::MAX);
            *e = (*e).min(a & 4095);
        }
        let offs: std::collections::BTreeSet<usize> = offsets.values().copied().collect();
        assert!(
            offs.len() >= colour.min(offsets.len()) && offs.len() > 1,
            "offsets {offs:?}"
        );
        assert!(offs
            .iter()
            .all(|o| o % colour_off == 0 && o / colour_off < colour));
        for p in v {
            k.kmem_cache_free(cpu, id, p);
        }
    });
}

/// Two CPUs kmalloc and kfree at random in lock step; between steps (no CPU held) every slab
/// and page-allocator invariant holds; at the end, after shrinking, every slab page is back
/// and buddyinfo is the post-boot one.
#[test]
fn random_multi_cpu_kmalloc_keeps_invariants_and_returns_every_page() {
    let m = boot_mem(256, 2, "");
    let k = &m.kernel;
    let boot = buddyinfo(k);
    let cache = k
        .kmem_cache_create("test_mix", 72, 8, SlabFlags::SLAB_HWCACHE_ALIGN, None)
        .unwrap();
    let steps = 400;
    let barrier = Barrier::new(3);
    std::thread::scope(|s| {
        for c in 0..2usize {
            let barrier = &barrier;
            s.spawn(move || {
                bind_cpu(c);
                let mut rng = SmallRng::seed_from_u64(7 + c as u64);
                let mut live: Vec<(NonNull<u8>, usize, u8, bool)> = Vec::new();
                for step in 0..steps {
                    {
                        let cpu = k.get_cpu();
                        for _ in 0..8 {
                            if live.is_empty() || rng.random_bool(0.55) {
                                if rng.random_bool(0.2) {
                                    let p = k.kmem_cache_alloc(&cpu, cache, GFP_KERNEL).unwrap();
                                    write(p, 72, step as u8);
                                    live.push((p, 72, step as u8, true));
                                } else {
                                    let size =
                                        [8, 24, 64, 96, 100, 192, 500, 1024, 3000, 8192, 20000]
                                            [rng.random_range(0..11)];
                                    let p = k.kmalloc(&cpu, size, GFP_KERNEL).unwrap();
                                    write(p, size, step as u8);
                                    live.push((p, size, step as u8, false));
                                }
                            } else {
                                let (p, size, seed, from_cache) =
                                    live.swap_remove(rng.random_range(0..live.len()));
                                let got = read(p, size);
                                assert!(
                                    got.iter()
                                        .enumerate()
                                        .all(|(i, &b)| b == seed.wrapping_add(i as u8)),
                                    "bytes changed"
                                );
                                if from_cache {
                                    k.kmem_cache_free(&cpu, cache, p);
                                } else {
                                    k.kfree(&cpu, Some(p));
                                }
                            }
                        }
                    }
                    barrier.wait();
                    barrier.wait();
                }
                let cpu = k.get_cpu();
                for (p, _, _, from_cache) in live {
                    if from_cache {
                        k.kmem_cache_free(&cpu, cache, p);
                    } else {
                        k.kfree(&cpu, Some(p));
                    }
                }
            });
        }
        for step in 0..steps {
            barrier.wait();
            k.check_slab_invariants()
                .unwrap_or_else(|e| panic!("step {step}: {e}"));
            k.check_invariants()
                .unwrap_or_else(|e| panic!("step {step}: {e}"));
            barrier.wait();
        }
    });
    assert_eq!(k.slab_error_reports(), 0);
    for info in k.slabinfo() {
        assert!(info.active_objs <= info.num_objs);
    }
    k.kmem_cache_destroy(cache).unwrap();
    k.kmem_cache_shrink_all().unwrap();
    k.check_slab_invariants().unwrap();
    assert_eq!(k.slab_pages(), (0, 0), "every slab page went back");
    m.on_cpu(0, |cpu| k.drain_all_pages(cpu));
    assert_eq!(buddyinfo(k), boot);
}

#[test]
fn debug_reports_double_free_overrun_write_after_free_and_foreign_pointers() {
    let m = boot_mem(256, 1, "");
    let k = &m.kernel;
    let id = k
        .kmem_cache_create("test_debug", 100, 0, SLAB_DEBUG_FLAGS, None)
        .unwrap();
    m.on_cpu(0, |cpu| {
        let log_has = |s: &str| k.dmesg().iter().any(|l| l.contains(s));
        // Double free: reported, and the object is not handed out twice.
        let a = k.kmem_cache_alloc(cpu, id, GFP_KERNEL).unwrap();
        k.kmem_cache_free(cpu, id, a);
        k.kmem_cache_free(cpu, id, a);
        assert!(
            log_has(
                "slab error in verify_redzone_free(): cache `test_debug': double free detected"
            ),
            "{:#?}",
            k.dmesg()
        );
        assert!(
            log_has("Last user: allocated at crates/mmkit-sim/tests/slab.rs"),
            "{:#?}",
            k.dmesg()
        );
        let x = k.kmem_cache_alloc(cpu, id, GFP_KERNEL).unwrap();
        let y = k.kmem_cache_alloc(cpu, id, GFP_KERNEL).unwrap();
        assert_ne!(x, y);
        // Red-zone overrun: one byte past the object.
        // SAFETY: deliberately corrupting the red zone right after our 100-byte object; it is
        // inside the slab's buffer for this object.
        unsafe { *x.as_ptr().add(104) ^= 0xff };
        k.kmem_cache_free(cpu, id, x);
        assert!(log_has("memory outside object was overwritten"));
        // Write after free: caught when the object is next handed out.
        k.kmem_cache_free(cpu, id, y);
        // SAFETY: deliberately writing to a freed object; its memory is still slab memory.
        unsafe { *y.as_ptr().add(10) = 0x42 };
        let z = k.kmem_cache_alloc(cpu, id, GFP_KERNEL).unwrap();
        assert_eq!(z, y, "LIFO array hands the same object back");
        assert!(log_has("Slab corruption (Not tainted): test_debug start="));
        assert!(
            k.dmesg()
                .iter()
                .any(|l| l.starts_with('[')
                    && l.contains("] 000: 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 42 6b")),
            "{:#?}",
            k.dmesg()
        );
        k.kmem_cache_free(cpu, id, z);
        // kfree of pointers no slab owns.
        let page = k.alloc_page(cpu, GFP_KERNEL).unwrap();
        let before = k.slab_error_reports();
        let raw = NonNull::new(
            k.platform()
                .direct_map_base()
                .wrapping_add(k.page_to_pfn(page).0 as usize * 4096),
        )
        .unwrap();
        k.kfree(cpu, Some(raw));
        assert!(log_has("Object is not a Slab page!"));
        let host = Box::new(0u64);
        k.kfree(cpu, NonNull::new(Box::into_raw(host) as *mut u8));
        assert!(log_has("not a direct-map address of RAM"));
        assert_eq!(k.slab_error_reports(), before + 2);
        // An interior pointer.
        let o = k.kmalloc(cpu, 64, GFP_KERNEL).unwrap();
        k.kfree(cpu, NonNull::new(o.as_ptr().wrapping_add(8)));
        assert!(log_has("is not the start of an object of cache kmalloc-64"));
        k.kfree(cpu, Some(o));
        k.__free_pages(cpu, page, 0);
    });
    k.check_slab_invariants().unwrap();
    k.kmem_cache_destroy(id).unwrap();
}

#[test]
fn slab_debug_boot_option_covers_kmalloc() {
    let m = boot_mem(256, 1, "slab_debug");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        let p = k.kmalloc(cpu, 32, GFP_KERNEL).unwrap();
        k.kfree(cpu, Some(p));
        k.kfree(cpu, Some(p));
    });
    assert!(k
        .dmesg()
        .iter()
        .any(|l| l.contains("cache `kmalloc-32': double free detected")));
    k.check_slab_invariants().unwrap();
}

#[test]
fn kmalloc_edge_cases() {
    let m = boot_mem(256, 1, "");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        assert!(k
            .kmalloc(cpu, usize::MAX, GFP_KERNEL | Gfp::__GFP_NOWARN)
            .is_none());
        assert!(k.kmalloc(cpu, usize::MAX, GFP_KERNEL).is_none());
        assert!(k
            .dmesg()
            .iter()
            .any(|l| l.contains("exceeds KMALLOC_MAX_SIZE")));
        assert!(
            k.kcalloc(cpu, usize::MAX / 2, 3, GFP_KERNEL).is_none(),
            "kcalloc overflow"
        );
        let z = k.kmalloc(cpu, 0, GFP_KERNEL).unwrap();
        assert_eq!(z.as_ptr() as usize, ZERO_SIZE_PTR);
        k.kfree(cpu, Some(z));
        k.kfree(cpu, None);
        assert_eq!(k.ksize(z), 0);
        // kcalloc zeroes.
        let c = k.kcalloc(cpu, 10, 100, GFP_KERNEL).unwrap();
        assert!(read(c, 1000).iter().all(|&b| b == 0));
        write(c, 1000, 9);
        k.kfree(cpu, Some(c));
        let c2 = k.kzalloc(cpu, 1000, GFP_KERNEL).unwrap();
        assert!(
            read(c2, 1000).iter().all(|&b| b == 0),
            "kzalloc zeroes a recycled object"
        );
        k.kfree(cpu, Some(c2));
        // krealloc: in place within ksize, moved (bytes kept) beyond it.
        let p = k.kmalloc(cpu, 40, GFP_KERNEL).unwrap();
        write(p, 40, 1);
        let q = k.krealloc(cpu, Some(p), 60, GFP_KERNEL).unwrap();
        assert_eq!(p, q, "40 -> 60 fits kmalloc-64");
        let r = k.krealloc(cpu, Some(q), 300, GFP_KERNEL).unwrap();
        assert_ne!(r, q);
        assert_eq!(
            read(r, 40),
            (0..40).map(|i| 1u8.wrapping_add(i)).collect::<Vec<_>>()
        );
        assert_eq!(k.ksize(r), 512);
        let e = k.krealloc(cpu, Some(r), 0, GFP_KERNEL).unwrap();
        assert_eq!(e.as_ptr() as usize, ZERO_SIZE_PTR);
        // kmalloc_large: pages straight from the buddy allocator.
        let free0 = k.global_free_pages();
        let big = k.kmalloc(cpu, 100 << 10, GFP_KERNEL).unwrap();
        assert_eq!(k.ksize(big), 128 << 10);
        write(big, 100 << 10, 3);
        assert_eq!(
            read(big, 100 << 10)[99 << 10],
            3u8.wrapping_add(((99 << 10) % 256) as u8)
        );
        k.kfree(cpu, Some(big));
        assert_eq!(k.global_free_pages(), free0);
        // GFP_DMA uses dma-kmalloc caches in ZONE_DMA.
        let d = k.kmalloc(cpu, 100, GFP_KERNEL | Gfp::GFP_DMA).unwrap();
        assert_eq!(page_of(k, d).0.zonenum(), ZoneType::Dma);
        k.kfree(cpu, Some(d));
        // Bulk.
        let mut out = [None; 50];
        assert_eq!(
            k.kmem_cache_alloc_bulk(cpu, k.cache_ids()[0], GFP_KERNEL, &mut out),
            50
        );
        let objs: Vec<_> = out.iter().map(|o| o.unwrap()).collect();
        k.kmem_cache_free_bulk(cpu, k.cache_ids()[0], &objs);
    });
    assert!(k
        .kmem_cache_create("", 10, 0, SlabFlags::empty(), None)
        .is_err());
    assert!(k
        .kmem_cache_create("x", 0, 0, SlabFlags::empty(), None)
        .is_err());
    assert!(k
        .kmem_cache_create("x", 10, 3, SlabFlags::empty(), None)
        .is_err());
    assert!(k
        .kmem_cache_create("x", 10, 0, SlabFlags::SLAB_PANIC, None)
        .is_ok());
    assert!(k
        .kmem_cache_create("y", 1 << 30, 0, SlabFlags::SLAB_PANIC, None)
        .is_err());
    assert!(k
        .dmesg()
        .iter()
        .any(|l| l
            .contains("Kernel panic - not syncing: kmem_cache_create: Failed to create slab 'y'")));
    k.check_slab_invariants().unwrap();
    assert_eq!(k.slab_error_reports(), 0);
}

#[test]
fn destroy_refuses_live_objects_and_reclaim_account() {
    let m = boot_mem(256, 1, "");
    let k = &m.kernel;
    let id = k
        .kmem_cache_create(
            "test_dentry",
            192,
            0,
            SlabFlags::SLAB_RECLAIM_ACCOUNT | SlabFlags::SLAB_HWCACHE_ALIGN,
            None,
        )
        .unwrap();
    let v = m.on_cpu(0, |cpu| {
        (0..100)
            .map(|_| k.kmem_cache_alloc(cpu, id, GFP_KERNEL).unwrap())
            .collect::<Vec<_>>()
    });
    let (rec, _) = k.slab_pages();
    assert!(rec > 0, "SLAB_RECLAIM_ACCOUNT slabs count as reclaimable");
    let mi = mmkit::fs::proc::meminfo::meminfo(k);
    assert!(
        mi.contains(&format!("SReclaimable:   {:>8} kB", rec * 4)),
        "{mi}"
    );
    // Slabs come from Reclaimable pageblocks.
    let (page, _) = page_of(k, v[0]);
    assert_eq!(
        k.page_zone(page).pageblock_migratetype(k.page_to_pfn(page)),
        mmkit::mm::page_alloc::MigrateType::Reclaimable
    );
    assert_eq!(k.kmem_cache_destroy(id), Err(mmkit::Errno::EBUSY));
    assert!(k
        .dmesg()
        .iter()
        .any(|l| l.contains("kmem_cache_destroy test_dentry: Slab cache still has objects")));
    m.on_cpu(0, |cpu| {
        for p in v {
            k.kmem_cache_free(cpu, id, p);
        }
    });
    k.kmem_cache_destroy(id).unwrap();
    assert_eq!(k.slab_pages().0, 0);
    assert!(k.kmem_cache(id).is_none());
}

#[test]
fn cache_reap_drains_untouched_arrays() {
    let m = boot_mem(256, 1, "");
    let k = &m.kernel;
    let id = k
        .kmem_cache_create("test_reap", 64, 0, SlabFlags::empty(), None)
        .unwrap();
    m.on_cpu(0, |cpu| {
        let v: Vec<_> = (0..100)
            .map(|_| k.kmem_cache_alloc(cpu, id, GFP_KERNEL).unwrap())
            .collect();
        for p in v {
            k.kmem_cache_free(cpu, id, p);
        }
        let before = k.kmem_cache_cpu_avail(cpu, id).unwrap();
        assert!(before > 0);
        k.cache_reap(cpu); // clears `touched`
        k.cache_reap(cpu); // gives back a fifth of the limit
        let after = k.kmem_cache_cpu_avail(cpu, id).unwrap();
        assert!(after < before, "{before} -> {after}");
    });
    k.check_slab_invariants().unwrap();
}

#[test]
fn mempool_falls_back_on_its_reserve() {
    let m = boot_mem(128, 1, "");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        let mut pool = k.mempool_create_kmalloc_pool(cpu, 4, 4096).unwrap();
        assert_eq!(pool.curr_nr(), 4);
        // Exhaust memory, then the pool still hands out its 4 reserved elements.
        let hog = common::exhaust(k, cpu, GFP_ATOMIC, 0);
        let mut got = Vec::new();
        while let Some(e) = k.mempool_alloc(cpu, &mut pool, GFP_NOWAIT) {
            write(e, 4096, got.len() as u8);
            got.push(e);
            if got.len() > 100 {
                break;
            }
        }
        assert!(got.len() >= 4, "{}", got.len());
        assert_eq!(pool.curr_nr(), 0);
        // Freeing refills the reserve first.
        let e = got.pop().unwrap();
        k.mempool_free(cpu, &mut pool, e);
        assert_eq!(pool.curr_nr(), 1);
        common::free_all(k, cpu, hog, 0);
        for e in got {
            k.mempool_free(cpu, &mut pool, e);
        }
        assert_eq!(pool.curr_nr(), 4);
        k.mempool_resize(cpu, &mut pool, 8).unwrap();
        assert_eq!(pool.curr_nr(), 8);
        k.mempool_resize(cpu, &mut pool, 2).unwrap();
        assert_eq!(pool.curr_nr(), 2);
        k.mempool_destroy(cpu, pool);
        let id = k
            .kmem_cache_create("test_pool", 300, 0, SlabFlags::empty(), None)
            .unwrap();
        let mut sp = k.mempool_create_slab_pool(cpu, 3, id).unwrap();
        let e = k.mempool_alloc(cpu, &mut sp, GFP_KERNEL).unwrap();
        k.mempool_free(cpu, &mut sp, e);
        k.mempool_destroy(cpu, sp);
    });
    k.check_slab_invariants().unwrap();
}

/// slabtop (procps) reads our /proc/slabinfo and agrees on the totals.
#[test]
fn slabtop_reads_our_slabinfo() {
    let caps = mmkit_sim::hostview::host_caps();
    if let Err(why) = caps
        .mount_ns
        .clone()
        .and(mmkit_sim::hostview::have_tool("slabtop"))
    {
        mmkit_sim::hostview::skip("slabtop_reads_our_slabinfo", &why);
        return;
    }
    let m = boot_mem(256, 1, "");
    let k = &m.kernel;
    let held = m.on_cpu(0, |cpu| {
        (0..1000)
            .map(|i| k.kmalloc(cpu, 8 + i % 700, GFP_KERNEL).unwrap())
            .collect::<Vec<_>>()
    });
    let dir = tempfile::tempdir().unwrap();
    mmkit_sim::procfs::write_proc_dir(k, dir.path()).unwrap();
    let script = format!(
        "mount --bind {}/slabinfo /proc/slabinfo && slabtop -o -s c",
        dir.path().display()
    );
    let out = std::process::Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = String::from_utf8(out.stdout).unwrap();
    let info = k.slabinfo();
    let active: u64 = info.iter().map(|i| i.active_objs).sum();
    let total: u64 = info.iter().map(|i| i.num_objs).sum();
    let line = out
        .lines()
        .find(|l| l.contains("Active / Total Objects"))
        .unwrap();
    assert!(
        line.contains(&format!("{active} / {total}")),
        "{line}\n{out}"
    );
    assert!(
        out.contains("kmalloc-512") && out.contains("kmalloc-64"),
        "{out}"
    );
    m.on_cpu(0, |cpu| {
        for p in held {
            k.kfree(cpu, Some(p));
        }
    });
    let _ = PAGE_SIZE;
}

/// Small objects keep their freelist on the slab; from PAGE_SIZE/8 up it goes off-slab into a
/// kmalloc cache unless the left-over space holds it.
#[test]
fn freelist_placement_and_slab_order() {
    let m = boot_mem(256, 1, "");
    let k = &m.kernel;
    let by_name = |n: &str| {
        let id = k
            .cache_ids()
            .into_iter()
            .find(|&id| k.kmem_cache(id).unwrap().name == n)
            .unwrap();
        k.kmem_cache(id).unwrap()
    };
    let c64 = by_name("kmalloc-64");
    assert!(!c64.off_slab);
    assert_eq!(c64.num, 4096 / (64 + 2));
    let c512 = by_name("kmalloc-512");
    assert!(c512.off_slab);
    assert_eq!((c512.num, c512.gfporder), (8, 0));
    let c8k = by_name("kmalloc-8k");
    assert_eq!((c8k.num, c8k.gfporder), (1, 1));
    // The off-slab freelist of a kmalloc-512 slab is a kmalloc-16 object.
    let before = k
        .slabinfo()
        .into_iter()
        .find(|i| i.name == "kmalloc-16")
        .unwrap()
        .active_objs;
    let p = m.on_cpu(0, |cpu| k.kmalloc(cpu, 512, GFP_KERNEL).unwrap());
    let after = k
        .slabinfo()
        .into_iter()
        .find(|i| i.name == "kmalloc-16")
        .unwrap()
        .active_objs;
    assert!(after > before, "kmalloc-16 {before} -> {after}");
    m.on_cpu(0, |cpu| k.kfree(cpu, Some(p)));
    k.check_slab_invariants().unwrap();
}

/// kmalloc_node for another node takes its object from that node's slabs.
#[test]
fn kmalloc_node_uses_the_named_node() {
    let m = boot_mem(1024, 2, "numa=fake=2");
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        assert_eq!(cpu.node(), 0);
        let v: Vec<_> = (0..50)
            .map(|_| k.kmalloc_node(cpu, 200, GFP_KERNEL, 1).unwrap())
            .collect();
        for &p in &v {
            assert_eq!(page_of(k, p).0.nid(), 1);
            write(p, 200, 5);
        }
        let local = k.kmalloc_node(cpu, 200, GFP_KERNEL, 0).unwrap();
        assert_eq!(page_of(k, local).0.nid(), 0);
        k.kfree(cpu, Some(local));
        for p in v {
            assert_eq!(read(p, 200)[199], 5u8.wrapping_add(199));
            k.kfree(cpu, Some(p));
        }
    });
    k.check_slab_invariants().unwrap();
    k.kmem_cache_shrink_all().unwrap();
    assert_eq!(k.slab_pages(), (0, 0));
}

/// A CPU handle of one machine must not reach another machine's per-CPU arrays.
#[test]
#[should_panic(expected = "CPU handle of another machine")]
fn cpu_handles_are_per_machine() {
    let a = boot_mem(128, 1, "");
    let b = boot_mem(128, 1, "");
    let cpu_a = a.kernel.get_cpu_id(0).unwrap();
    let _ = b.kernel.kmalloc(&cpu_a, 64, GFP_KERNEL);
}
