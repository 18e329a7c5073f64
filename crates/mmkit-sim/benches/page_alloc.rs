//! Criterion benchmarks of the page allocator's hot paths, each beside its anchor
//! (`buddy_system_allocator`'s `FrameAllocator`) in the same run. `mmkit bench page` prints
//! the same comparisons as ratios.

use buddy_system_allocator::FrameAllocator;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use mmkit::gfp::GFP_KERNEL;
use mmkit_sim::{Machine, MachineSpec};
use std::hint::black_box;

fn anchor() -> FrameAllocator<33> {
    let mut a = FrameAllocator::<33>::new();
    a.add_frame(0x1000, 0x1000 + (1 << 20));
    a
}

fn alloc_free(c: &mut Criterion) {
    let m = Machine::boot(&MachineSpec::default()).expect("default machine boots");
    let k = &m.kernel;
    let mut g = c.benchmark_group("alloc-free");
    for order in [0u32, 3] {
        m.on_cpu(0, |cpu| {
            g.bench_with_input(BenchmarkId::new("mmkit", order), &order, |b, &o| {
                b.iter(|| {
                    let p = k.alloc_pages(cpu, GFP_KERNEL, o).expect("allocation");
                    k.__free_pages(cpu, black_box(p), o);
                })
            });
        });
        let mut a = anchor();
        g.bench_with_input(
            BenchmarkId::new("buddy_system_allocator", order),
            &order,
            |b, &o| {
                b.iter(|| {
                    let f = a.alloc(1 << o).expect("anchor allocation");
                    a.dealloc(black_box(f), 1 << o);
                })
            },
        );
    }
    g.finish();

    let mut g = c.benchmark_group("alloc1000-free1000");
    m.on_cpu(0, |cpu| {
        let mut v = Vec::with_capacity(1000);
        g.bench_function("mmkit", |b| {
            b.iter(|| {
                for _ in 0..1000 {
                    v.push(k.alloc_pages(cpu, GFP_KERNEL, 0).expect("allocation"));
                }
                for p in v.drain(..) {
                    k.__free_pages(cpu, p, 0);
                }
            })
        });
    });
    let mut a = anchor();
    let mut v = Vec::with_capacity(1000);
    g.bench_function("buddy_system_allocator", |b| {
        b.iter(|| {
            for _ in 0..1000 {
                v.push(a.alloc(1).expect("anchor allocation"));
            }
            for f in v.drain(..) {
                a.dealloc(f, 1);
            }
        })
    });
    g.finish();
}

criterion_group!(benches, alloc_free);
criterion_main!(benches);
