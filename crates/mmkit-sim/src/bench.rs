//! `mmkit bench`: each hot path timed beside its anchor in the same process and run, reported
//! as a table or as JSON lines (`name`, `ours_ns`, `anchor`, `anchor_ns`, `ratio` =
//! anchor / ours, so above 1 means we are faster).
//!
//! Timing: each measurement runs a warm-up, then five rounds, and keeps the fastest round
//! (the least disturbed by the rest of the machine). Cycle figures are TSC ticks per
//! operation, which on this host tick at the nominal frequency.

use crate::machine::{bind_cpu, Machine, MachineSpec};
use anyhow::Result;
use buddy_system_allocator::{FrameAllocator, LockedFrameAllocator};
use mmkit::arch::x86_64::e820::E820Table;
use mmkit::arch::x86_64::tlb::Access;
use mmkit::gfp::GFP_KERNEL;
use mmkit::mm::mmap::{MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, PROT_READ, PROT_WRITE};
use mmkit::mm::slab::SlabFlags;
use serde::Serialize;
use slabmalloc::{Allocator, ObjectPage, ZoneAllocator};
use std::alloc::Layout;
use std::hint::black_box;
use std::ptr::NonNull;
use std::time::Instant;

/// One row of the report.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Benchmark name.
    pub name: String,
    /// Our time per operation, ns.
    pub ours_ns: f64,
    /// What we ran beside.
    pub anchor: String,
    /// The anchor's time per operation, ns.
    pub anchor_ns: f64,
    /// `anchor_ns / ours_ns`.
    pub ratio: f64,
    /// Our TSC ticks per operation.
    pub ours_cycles: f64,
    /// Anything else worth reporting (scaling, overheads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The time-stamp counter.
pub fn tsc() -> u64 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: RDTSC has no preconditions on x86-64.
    unsafe {
        core::arch::x86_64::_rdtsc()
    }
    #[cfg(not(target_arch = "x86_64"))]
    0
}

/// Best-of-5 (ns per op, ticks per op) of `f`, which performs `ops` operations per call.
pub fn measure(ops: u64, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let mut best = (f64::MAX, f64::MAX);
    for _ in 0..5 {
        let (t, c) = (Instant::now(), tsc());
        f();
        let ns = t.elapsed().as_nanos() as f64 / ops as f64;
        let cy = (tsc() - c) as f64 / ops as f64;
        if ns < best.0 {
            best = (ns, cy);
        }
    }
    best
}

/// A report row from our (ns, ticks) and the anchor's time.
pub fn row(
    name: &str,
    ours: (f64, f64),
    anchor: &str,
    anchor_ns: f64,
    note: Option<String>,
) -> Row {
    Row {
        name: name.into(),
        ours_ns: ours.0,
        anchor: anchor.into(),
        anchor_ns,
        ratio: anchor_ns / ours.0,
        ours_cycles: ours.1,
        note,
    }
}

const FRAMES: usize = 1 << 20;

fn anchor_allocator() -> FrameAllocator<33> {
    let mut a = FrameAllocator::<33>::new();
    a.add_frame(0x1000, 0x1000 + FRAMES);
    a
}

/// The page-allocator rows (filter `page`).
pub fn page_rows(filter: &str) -> Result<Vec<Row>> {
    let want = |n: &str| filter.is_empty() || n.starts_with(filter);
    let mut rows = Vec::new();
    let m = Machine::boot(&MachineSpec::default())?;
    let k = &m.kernel;
    const N: u64 = 200_000;

    if want("order0-alloc-free") {
        let ours = m.on_cpu(0, |cpu| {
            measure(N, || {
                for _ in 0..N {
                    let p = k
                        .alloc_pages(cpu, GFP_KERNEL, 0)
                        .expect("order-0 allocation");
                    k.__free_pages(cpu, black_box(p), 0);
                }
            })
        });
        let mut a = anchor_allocator();
        let anc = measure(N, || {
            for _ in 0..N {
                let f = a.alloc(1).expect("anchor alloc");
                a.dealloc(black_box(f), 1);
            }
        });
        rows.push(row(
            "order0-alloc-free",
            ours,
            "buddy_system_allocator::FrameAllocator",
            anc.0,
            None,
        ));
    }
    if want("order3-alloc-free") {
        let ours = m.on_cpu(0, |cpu| {
            measure(N, || {
                for _ in 0..N {
                    let p = k
                        .alloc_pages(cpu, GFP_KERNEL, 3)
                        .expect("order-3 allocation");
                    k.__free_pages(cpu, black_box(p), 3);
                }
            })
        });
        let mut a = anchor_allocator();
        let anc = measure(N, || {
            for _ in 0..N {
                let f = a.alloc(8).expect("anchor alloc");
                a.dealloc(black_box(f), 8);
            }
        });
        rows.push(row(
            "order3-alloc-free",
            ours,
            "buddy_system_allocator::FrameAllocator",
            anc.0,
            None,
        ));
    }
    if want("alloc1000-free1000") {
        const R: u64 = 200;
        let ours = m.on_cpu(0, |cpu| {
            let mut v = Vec::with_capacity(1000);
            measure(R * 1000, || {
                for _ in 0..R {
                    for _ in 0..1000 {
                        v.push(
                            k.alloc_pages(cpu, GFP_KERNEL, 0)
                                .expect("order-0 allocation"),
                        );
                    }
                    for p in v.drain(..) {
                        k.__free_pages(cpu, p, 0);
                    }
                }
            })
        });
        let mut a = anchor_allocator();
        let mut v = Vec::with_capacity(1000);
        let anc = measure(R * 1000, || {
            for _ in 0..R {
                for _ in 0..1000 {
                    v.push(a.alloc(1).expect("anchor alloc"));
                }
                for f in v.drain(..) {
                    a.dealloc(f, 1);
                }
            }
        });
        rows.push(row(
            "alloc1000-free1000",
            ours,
            "buddy_system_allocator::FrameAllocator",
            anc.0,
            None,
        ));
    }
    if want("order0-2cpu") {
        // Throughput: ns per alloc+free pair across the whole machine (wall time / pairs).
        let per_thread = 5 * N;
        let run = |threads: usize| -> (f64, f64) {
            measure(per_thread * threads as u64, || {
                std::thread::scope(|s| {
                    for c in 0..threads {
                        s.spawn(move || {
                            bind_cpu(c);
                            let cpu = k.get_cpu();
                            for _ in 0..per_thread {
                                let p = k
                                    .alloc_pages(&cpu, GFP_KERNEL, 0)
                                    .expect("order-0 allocation");
                                k.__free_pages(&cpu, black_box(p), 0);
                            }
                        });
                    }
                })
            })
        };
        let one = run(1);
        let two = run(2);
        let locked = LockedFrameAllocator::<33>::new();
        locked.lock().add_frame(0x1000, 0x1000 + FRAMES);
        let anc = measure(per_thread * 2, || {
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| {
                        for _ in 0..per_thread {
                            let f = locked.lock().alloc(1).expect("anchor alloc");
                            locked.lock().dealloc(black_box(f), 1);
                        }
                    });
                }
            })
        });
        // Control: the same loop on two separate machines (no state shared at all) is the
        // scaling this host allows.
        let m2 = Machine::boot(&MachineSpec::default())?;
        let machines = [&m, &m2];
        let control = measure(per_thread * 2, || {
            std::thread::scope(|s| {
                for (c, mm) in machines.iter().enumerate() {
                    s.spawn(move || {
                        bind_cpu(c);
                        let kk = &mm.kernel;
                        let cpu = kk.get_cpu();
                        for _ in 0..per_thread {
                            let p = kk
                                .alloc_pages(&cpu, GFP_KERNEL, 0)
                                .expect("order-0 allocation");
                            kk.__free_pages(&cpu, black_box(p), 0);
                        }
                    });
                }
            })
        });
        let scaling = one.0 / two.0;
        let host_scaling = one.0 / control.0;
        rows.push(row(
            "order0-2cpu",
            two,
            "buddy_system_allocator::LockedFrameAllocator (2 threads)",
            anc.0,
            Some(format!(
                "2-CPU throughput = {scaling:.2}x one CPU's ({:.1} ns/pair on 1 CPU); two unshared machines on this host: {host_scaling:.2}x",
                one.0
            )),
        ));
    }
    drop(m);
    if want("boot-64g-4node") {
        let spec = MachineSpec {
            e820: E820Table::for_mem_size(64 << 30)?,
            cpus: 2,
            cmdline: "numa=fake=4".into(),
        };
        let mut memmap_pct = 0.0;
        let mut memmap_bytes = 0u64;
        let ours = measure(1, || {
            let m = Machine::boot(&spec).expect("64 GiB machine boots");
            memmap_pct = m.kernel.boot.memmap_pages as f64 * 100.0 / m.kernel.boot.physpages as f64;
            memmap_bytes = m.kernel.boot.memmap_pages << 12;
        });
        // Anchor: the bare cost of writing that much mem_map into fresh host memory.
        let anc = measure(1, || {
            let v = vec![0x5au8; memmap_bytes as usize];
            black_box(&v);
        });
        rows.push(row(
            "boot-64g-4node",
            ours,
            "memset of the same mem_map bytes in fresh host memory",
            anc.0,
            Some(format!("mem_map = {memmap_pct:.3}% of RAM")),
        ));
    }
    Ok(rows)
}

/// An object allocator to run beside kmalloc.
struct Anchor {
    name: &'static str,
    alloc: Box<dyn FnMut(usize) -> *mut u8>,
    free: Box<dyn FnMut(*mut u8, usize)>,
}

fn anchors() -> Vec<Anchor> {
    // slabmalloc serves its size classes from 4 KiB pages we hand it up front.
    let zone: &'static mut ZoneAllocator<'static> = Box::leak(Box::new(ZoneAllocator::new()));
    let zone_ptr: *mut ZoneAllocator<'static> = zone;
    for size in [64usize, 256] {
        let layout = Layout::from_size_align(size, 8).expect("layout");
        for _ in 0..256 {
            let block = Layout::from_size_align(4096, 4096).expect("layout");
            // SAFETY: a fresh, zeroed, 4 KiB-aligned 4 KiB block is a valid empty ObjectPage
            // (bytes, null links, a zeroed bitfield); it is leaked, so it lives forever.
            let page =
                unsafe { &mut *(std::alloc::alloc_zeroed(block) as *mut ObjectPage<'static>) };
            // SAFETY: the page is empty and owned by nobody else.
            unsafe { (*zone_ptr).refill(layout, page).expect("refill") };
        }
    }
    vec![
        Anchor {
            name: "glibc malloc/free",
            // SAFETY: plain libc malloc of a size > 0.
            alloc: Box::new(|n| unsafe { libc::malloc(n) as *mut u8 }),
            // SAFETY: the pointer came from malloc above.
            free: Box::new(|p, _| unsafe { libc::free(p as *mut libc::c_void) }),
        },
        Anchor {
            name: "mimalloc mi_malloc/mi_free",
            // SAFETY: mimalloc's C API.
            alloc: Box::new(|n| unsafe { libmimalloc_sys::mi_malloc(n) as *mut u8 }),
            // SAFETY: the pointer came from mi_malloc above.
            free: Box::new(|p, _| unsafe { libmimalloc_sys::mi_free(p as *mut libc::c_void) }),
        },
        Anchor {
            name: "slabmalloc ZoneAllocator",
            alloc: Box::new(move |n| {
                let l = Layout::from_size_align(n, 8).expect("layout");
                // SAFETY: only the bench thread uses the leaked zone.
                unsafe {
                    (*zone_ptr)
                        .allocate(l)
                        .expect("slabmalloc allocate")
                        .as_ptr()
                }
            }),
            free: Box::new(move |p, n| {
                let l = Layout::from_size_align(n, 8).expect("layout");
                // SAFETY: `p` came from this zone with the same layout; one thread uses it.
                unsafe {
                    (*zone_ptr)
                        .deallocate(NonNull::new(p).expect("non-null"), l)
                        .expect("slabmalloc deallocate")
                }
            }),
        },
    ]
}

fn suffix(i: usize, a: &Anchor) -> String {
    if i == 0 {
        String::new()
    } else {
        format!("-vs-{}", a.name.split(' ').next().unwrap_or("x"))
    }
}

/// One row per anchor for an alloc+free pair of `size` bytes, beside our figure `ours`.
fn pair_rows(
    anchors: &mut [Anchor],
    name: &str,
    ours: (f64, f64),
    size: usize,
    n: u64,
) -> Vec<Row> {
    let mut rows = Vec::new();
    for (i, a) in anchors.iter_mut().enumerate() {
        let anc = measure(n, || {
            for _ in 0..n {
                let p = (a.alloc)(size);
                (a.free)(black_box(p), size);
            }
        });
        rows.push(row(
            &format!("{name}{}", suffix(i, a)),
            ours,
            a.name,
            anc.0,
            None,
        ));
    }
    rows
}

/// The object-allocator rows (filter `slab`).
pub fn slab_rows(filter: &str) -> Result<Vec<Row>> {
    let want = |n: &str| filter.is_empty() || n.starts_with(filter);
    let m = Machine::boot(&MachineSpec::default())?;
    let k = &m.kernel;
    let mut rows = Vec::new();
    const N: u64 = 1_000_000;
    let cache = k.kmem_cache_create("bench_192", 192, 0, SlabFlags::empty(), None)?;
    let mut anchors = anchors();

    if want("kmalloc64-kfree") {
        let ours = m.on_cpu(0, |cpu| {
            measure(N, || {
                for _ in 0..N {
                    let p = k.kmalloc(cpu, 64, GFP_KERNEL);
                    k.kfree(cpu, black_box(p));
                }
            })
        });
        rows.extend(pair_rows(&mut anchors, "kmalloc64-kfree", ours, 64, N));
    }
    if want("cache192-alloc-free") {
        let ours = m.on_cpu(0, |cpu| {
            measure(N, || {
                for _ in 0..N {
                    let p = k.kmem_cache_alloc(cpu, cache, GFP_KERNEL).expect("object");
                    k.kmem_cache_free(cpu, cache, black_box(p));
                }
            })
        });
        rows.extend(pair_rows(&mut anchors, "cache192-alloc-free", ours, 192, N));
    }
    if want("kmalloc64-set1000") {
        const R: u64 = 1000;
        let ours = m.on_cpu(0, |cpu| {
            let mut v = Vec::with_capacity(1000);
            measure(R * 1000, || {
                for _ in 0..R {
                    for _ in 0..1000 {
                        v.push(k.kmalloc(cpu, 64, GFP_KERNEL));
                    }
                    for p in v.drain(..) {
                        k.kfree(cpu, p);
                    }
                }
            })
        });
        for (i, a) in anchors.iter_mut().enumerate() {
            let mut v = Vec::with_capacity(1000);
            let anc = measure(R * 1000, || {
                for _ in 0..R {
                    for _ in 0..1000 {
                        v.push((a.alloc)(64));
                    }
                    for p in v.drain(..) {
                        (a.free)(p, 64);
                    }
                }
            });
            rows.push(row(
                &format!("kmalloc64-set1000{}", suffix(i, a)),
                ours,
                a.name,
                anc.0,
                None,
            ));
        }
    }
    if want("kmalloc64-2cpu") {
        let run = |threads: usize| -> (f64, f64) {
            measure(N * threads as u64, || {
                std::thread::scope(|s| {
                    for c in 0..threads {
                        s.spawn(move || {
                            bind_cpu(c);
                            let cpu = k.get_cpu();
                            for _ in 0..N {
                                let p = k.kmalloc(&cpu, 64, GFP_KERNEL);
                                k.kfree(&cpu, black_box(p));
                            }
                        });
                    }
                })
            })
        };
        let one = run(1);
        let two = run(2);
        let anc = measure(N * 2, || {
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| {
                        for _ in 0..N {
                            // SAFETY: plain libc malloc/free.
                            unsafe { libc::free(black_box(libc::malloc(64))) };
                        }
                    });
                }
            })
        });
        rows.push(row(
            "kmalloc64-2cpu",
            two,
            "glibc malloc/free (2 threads)",
            anc.0,
            Some(format!(
                "2-CPU throughput = {:.2}x one CPU's ({:.1} ns/pair on 1 CPU)",
                one.0 / two.0,
                one.0
            )),
        ));
    }
    Ok(rows)
}

/// The virtual-memory rows (filter `vm`).
pub fn vm_rows(filter: &str) -> Result<Vec<Row>> {
    let want = |n: &str| filter.is_empty() || n.starts_with(filter);
    let m = Machine::boot(&MachineSpec::default())?;
    let k = &m.kernel;
    let mut rows = Vec::new();
    if want("vmalloc64k-vfree") {
        const N: u64 = 20_000;
        let ours = m.on_cpu(0, |cpu| {
            measure(N, || {
                for _ in 0..N {
                    let va = k.vmalloc(cpu, 64 << 10).expect("vmalloc");
                    k.vfree(cpu, black_box(va));
                }
            })
        });
        let anc = measure(N, || {
            for _ in 0..N {
                // SAFETY: a private anonymous mapping we touch and unmap ourselves.
                unsafe {
                    let p = libc::mmap(
                        std::ptr::null_mut(),
                        64 << 10,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    );
                    assert!(p != libc::MAP_FAILED, "host mmap");
                    for i in 0..16 {
                        *(p as *mut u8).add(i * 4096) = 1;
                    }
                    libc::munmap(p, 64 << 10);
                }
            }
        });
        rows.push(row(
            "vmalloc64k-vfree",
            ours,
            "host mmap + touch 16 pages + munmap (64 KiB)",
            anc.0,
            None,
        ));
    }
    for (name, len) in [("mmap-munmap-4k", 4096u64), ("mmap-munmap-1m", 1 << 20)] {
        if !want(name) {
            continue;
        }
        const N: u64 = 200_000;
        let ours = m.on_cpu(0, |cpu| {
            let mut mm = k.mm_alloc(cpu).expect("mm");
            let anon = MAP_PRIVATE | MAP_ANONYMOUS;
            let r = measure(N, || {
                for _ in 0..N {
                    let a = k
                        .mmap(cpu, &mut mm, 0, len, PROT_READ | PROT_WRITE, anon, 0)
                        .expect("mmap");
                    k.munmap(cpu, &mut mm, black_box(a), len).expect("munmap");
                }
            });
            k.exit_mmap(cpu, mm);
            r
        });
        let anc = measure(N, || {
            for _ in 0..N {
                // SAFETY: a private anonymous mapping we unmap right away without touching it.
                unsafe {
                    let p = libc::mmap(
                        std::ptr::null_mut(),
                        len as usize,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    );
                    assert!(p != libc::MAP_FAILED, "host mmap");
                    libc::munmap(black_box(p), len as usize);
                }
            }
        });
        rows.push(row(
            name,
            ours,
            "host kernel mmap + munmap (no touch)",
            anc.0,
            None,
        ));
    }
    if want("find-vma-100k") {
        let (ours, n) = m.on_cpu(0, |cpu| {
            let mut mm = k.mm_alloc(cpu).expect("mm");
            mm.max_map_count = 200_000;
            let base = 0x1_0000_0000u64;
            for i in 0..100_000u64 {
                let prot = if i % 2 == 0 {
                    PROT_READ
                } else {
                    PROT_READ | PROT_WRITE
                };
                k.mmap(
                    cpu,
                    &mut mm,
                    base + i * 0x2000,
                    0x1000,
                    prot,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
                    0,
                )
                .expect("mmap");
            }
            const N: u64 = 2_000_000;
            let mut x = 1u64;
            let r = measure(N, || {
                for _ in 0..N {
                    // A pseudo-random VMA each time, so the lookup cache does not help.
                    x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    let a = base + ((x >> 33) % 100_000) * 0x2000 + 0x800;
                    black_box(mm.find_vma(black_box(a)));
                }
            });
            let n = mm.map_count();
            k.exit_mmap(cpu, mm);
            (r, n)
        });
        let sorted: Vec<u64> = (0..n as u64).collect();
        let mut x = 1u64;
        const N: u64 = 2_000_000;
        let anc = measure(N, || {
            for _ in 0..N {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                black_box(sorted.binary_search(&black_box((x >> 33) % 100_000)).ok());
            }
        });
        rows.push(row(
            "find-vma-100k",
            ours,
            "binary search of a sorted 100,000-entry array",
            anc.0,
            Some(format!("{n} VMAs")),
        ));
    }
    if want("translate") {
        const N: u64 = 5_000_000;
        let (hit, walk) = m.on_cpu(0, |cpu| {
            let va = k.vmalloc(cpu, 1 << 20).expect("vmalloc");
            let pt = k.kernel_page_tables();
            let hit = measure(N, || {
                for _ in 0..N {
                    black_box(
                        k.mmu_access(cpu, pt, black_box(va.0), Access::KERNEL_READ, |pa| pa)
                            .ok(),
                    );
                }
            });
            // Alternate between 256 pages that map to one TLB slot each pair: every access misses.
            let walk = measure(N, || {
                for i in 0..N {
                    let a = va.0 + ((i & 1) * 64 + (i >> 1) % 2 * 128) * 4096;
                    black_box(
                        k.mmu_access(cpu, pt, black_box(a), Access::KERNEL_READ, |pa| pa)
                            .ok(),
                    );
                }
            });
            k.vfree(cpu, va);
            (hit, walk)
        });
        let target = Box::new(0u64);
        let anc = measure(N, || {
            for _ in 0..N {
                black_box(*black_box(&*target));
            }
        });
        rows.push(row(
            "translate-tlb-hit",
            hit,
            "a host load (what a hardware TLB hit costs)",
            anc.0,
            None,
        ));
        rows.push(row(
            "translate-walk",
            walk,
            "a host load",
            anc.0,
            Some(String::from("4-level walk, TLB miss every access")),
        ));
    }
    Ok(rows)
}

/// Every row whose name (or group) matches `filter`: groups `page`, `slab`, `vm`, `fault` and `reclaim`, or a row name
/// prefix such as `order0` or `kmalloc64`.
pub fn run(filter: &str) -> Result<Vec<Row>> {
    // Let the host CPU reach its steady clock before the first row is timed.
    let t = Instant::now();
    let mut x = 0u64;
    while t.elapsed().as_millis() < 300 {
        x = black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
    }
    let mut rows = Vec::new();
    type Group = fn(&str) -> Result<Vec<Row>>;
    let groups: [(&str, &[&str], Group); 5] = [
        ("page", &["order", "alloc1000", "boot"], page_rows),
        ("slab", &["kmalloc", "cache192"], slab_rows),
        ("vm", &["vmalloc", "translate", "mmap", "find-vma"], vm_rows),
        (
            "fault",
            &[
                "anon-fault",
                "cow-fault",
                "fork-exit",
                "file-read-fault",
                "fault-count",
            ],
            crate::bench_fault::fault_rows,
        ),
        (
            "reclaim",
            &["swap-out-in", "reclaim-scan"],
            crate::bench_reclaim::reclaim_rows,
        ),
    ];
    for (group, prefixes, f) in groups {
        if filter.is_empty() || filter == group || prefixes.iter().any(|p| filter.starts_with(p)) {
            let sp = crate::progress::spinner(format!(
                "bench {group}: timing each row beside its anchor ({} rows so far)",
                rows.len()
            ));
            let got = f(if filter == group { "" } else { filter });
            sp.finish_and_clear();
            rows.extend(got?);
        }
    }
    let exec = ["exec-", "fault-exit", "syscall-exit"];
    if filter.is_empty() || filter == "exec" || exec.iter().any(|p| filter.starts_with(p)) {
        rows.extend(crate::bench_exec::exec_rows(if filter == "exec" {
            ""
        } else {
            filter
        })?);
    }
    Ok(rows)
}

/// The human-readable table.
pub fn table(rows: &[Row]) -> String {
    let mut s = format!(
        "{:<20} {:>10} {:>10} {:>9}  {}\n",
        "benchmark", "ours ns", "anchor ns", "speedup", "anchor / note"
    );
    for r in rows {
        s.push_str(&format!(
            "{:<20} {:>10.1} {:>10.1} {:>8.2}x  {}{}\n",
            r.name,
            r.ours_ns,
            r.anchor_ns,
            r.ratio,
            r.anchor,
            r.note
                .as_ref()
                .map(|n| format!(" | {n}"))
                .unwrap_or_default()
        ));
        s.push_str(&format!(
            "{:<20} {:>10.0} TSC ticks per op\n",
            "", r.ours_cycles
        ));
    }
    s
}
