//! Criterion benchmarks of kmalloc/kfree and kmem_cache_alloc/free beside glibc malloc and
//! mimalloc in the same run. `mmkit bench slab` prints the same comparisons as ratios (with
//! slabmalloc too).

use criterion::{criterion_group, criterion_main, Criterion};
use mmkit::gfp::GFP_KERNEL;
use mmkit::mm::slab::SlabFlags;
use mmkit_sim::{Machine, MachineSpec};
use std::hint::black_box;

fn pairs(c: &mut Criterion) {
    let m = Machine::boot(&MachineSpec::default()).expect("default machine boots");
    let k = &m.kernel;
    let cache = k
        .kmem_cache_create("bench_192", 192, 0, SlabFlags::empty(), None)
        .expect("cache");
    let mut g = c.benchmark_group("kmalloc64-kfree");
    m.on_cpu(0, |cpu| {
        g.bench_function("mmkit", |b| {
            b.iter(|| {
                let p = k.kmalloc(cpu, 64, GFP_KERNEL);
                k.kfree(cpu, black_box(p));
            })
        });
    });
    // SAFETY (both anchors): plain C allocator calls with matching free.
    g.bench_function("glibc", |b| {
        b.iter(|| unsafe { libc::free(black_box(libc::malloc(64))) })
    });
    g.bench_function("mimalloc", |b| {
        b.iter(|| unsafe { libmimalloc_sys::mi_free(black_box(libmimalloc_sys::mi_malloc(64))) })
    });
    g.finish();

    let mut g = c.benchmark_group("cache192-alloc-free");
    m.on_cpu(0, |cpu| {
        g.bench_function("mmkit", |b| {
            b.iter(|| {
                let p = k.kmem_cache_alloc(cpu, cache, GFP_KERNEL).expect("object");
                k.kmem_cache_free(cpu, cache, black_box(p));
            })
        });
    });
    // SAFETY: as above.
    g.bench_function("glibc", |b| {
        b.iter(|| unsafe { libc::free(black_box(libc::malloc(192))) })
    });
    g.finish();
}

criterion_group!(benches, pairs);
criterion_main!(benches);
