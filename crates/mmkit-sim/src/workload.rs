//! Allocation workloads that run on every simulated CPU at once: random page allocations of
//! mixed orders, zones and migrate types, each block filled with a pattern unique to it and
//! checked byte for byte when it is freed.

use crate::machine::Machine;
use anyhow::{bail, Result};
use mmkit::gfp::{Gfp, GFP_DMA32, GFP_HIGHUSER_MOVABLE, GFP_KERNEL};
use mmkit::{CpuGuard, Kernel, Page};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};

/// What one CPU did.
#[derive(Clone, Debug, Default)]
pub struct CpuReport {
    /// Successful allocations.
    pub allocs: u64,
    /// Failed allocations.
    pub failures: u64,
    /// Pages allocated in total.
    pub pages: u64,
    /// Bytes checked on free.
    pub bytes_checked: u64,
    /// Time spent.
    pub elapsed: Duration,
}

/// Fill a block with a pattern derived from `tag`.
pub fn fill(k: &Kernel, page: &Page, order: u32, tag: u64) {
    // SAFETY: the caller just allocated this block and holds no other slice of it.
    let bytes = unsafe { k.page_bytes_mut(page, order) };
    for (i, w) in bytes.chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&(tag ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes());
    }
}

/// Check the pattern `fill` wrote; the offset of the first bad byte on mismatch.
pub fn check(k: &Kernel, page: &Page, order: u32, tag: u64) -> Result<(), usize> {
    // SAFETY: the caller owns this still-allocated block and holds no other slice of it.
    let bytes = unsafe { k.page_bytes_mut(page, order) };
    for (i, w) in bytes.chunks_exact(8).enumerate() {
        if w != (tag ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes() {
            return Err(i * 8);
        }
    }
    Ok(())
}

fn pick(rng: &mut SmallRng) -> (Gfp, u32) {
    let order = match rng.random_range(0..100) {
        0..60 => 0,
        60..70 => 1,
        70..80 => 2,
        80..90 => 3,
        _ => rng.random_range(4..=6),
    };
    let gfp = match rng.random_range(0..10) {
        0..4 => GFP_KERNEL,
        4..8 => GFP_HIGHUSER_MOVABLE,
        8 => GFP_KERNEL | Gfp::__GFP_RECLAIMABLE,
        _ => GFP_DMA32,
    };
    (gfp, order)
}

/// The loop both workloads share: `ops` steps, each allocating (while fewer than `max_live`
/// items are held, with probability 0.55) or freeing a random held item, with the machine's
/// tick between steps; everything still held is freed at the end.
#[allow(clippy::too_many_arguments)] // the loop's knobs and its two callbacks
fn drive<T>(
    cpu: &CpuGuard<'_>,
    rng: &mut SmallRng,
    ops: usize,
    max_live: usize,
    tick: &dyn Fn(&CpuGuard<'_>),
    progress: &indicatif::ProgressBar,
    r: &mut CpuReport,
    mut alloc: impl FnMut(&mut SmallRng, usize, &mut CpuReport) -> Option<T>,
    mut free: impl FnMut(T, &mut CpuReport) -> Result<()>,
) -> Result<()> {
    let t = Instant::now();
    let mut live: Vec<T> = Vec::new();
    for n in 0..ops {
        tick(cpu);
        if n % 4096 == 4095 {
            progress.inc(4096);
        }
        if live.len() < max_live && (live.is_empty() || rng.random_bool(0.55)) {
            match alloc(rng, n, r) {
                Some(x) => {
                    live.push(x);
                    r.allocs += 1;
                }
                None => r.failures += 1,
            }
        } else if !live.is_empty() {
            let i = rng.random_range(0..live.len());
            free(live.swap_remove(i), r)?;
        }
    }
    for x in live {
        free(x, r)?;
    }
    r.elapsed = t.elapsed();
    Ok(())
}

/// Run `ops` random page operations on `cpu`, keeping at most `max_live` blocks, each filled
/// with its own pattern and checked before it is freed.
pub fn run_on_cpu(
    k: &Kernel,
    cpu: &CpuGuard<'_>,
    ops: usize,
    max_live: usize,
    seed: u64,
    tick: &dyn Fn(&CpuGuard<'_>),
    progress: &indicatif::ProgressBar,
) -> Result<CpuReport> {
    let mut rng = SmallRng::seed_from_u64(seed ^ (cpu.id() as u64) << 32);
    let mut r = CpuReport::default();
    drive(
        cpu,
        &mut rng,
        ops,
        max_live,
        tick,
        progress,
        &mut r,
        |rng, n, r| {
            let (gfp, order) = pick(rng);
            let p = k.alloc_pages(cpu, gfp | Gfp::__GFP_NOWARN, order)?;
            let tag = ((cpu.id() as u64) << 48) | n as u64;
            fill(k, p, order, tag);
            r.pages += 1 << order;
            Some((p, order, tag))
        },
        |(p, o, tag): (&Page, u32, u64), r| {
            if let Err(off) = check(k, p, o, tag) {
                bail!(
                    "cpu {}: pfn {:#x} order {o}: byte {off} changed while allocated",
                    cpu.id(),
                    k.page_to_pfn(p).0
                );
            }
            r.bytes_checked += 4096 << o;
            k.__free_pages(cpu, p, o);
            Ok(())
        },
    )?;
    Ok(r)
}

/// Run `ops` random kmalloc/kfree operations (8 bytes to 64 KiB, some `GFP_DMA`) on `cpu`,
/// each object filled with its own pattern and checked before it is freed.
pub fn run_kmalloc_on_cpu(
    k: &Kernel,
    cpu: &CpuGuard<'_>,
    ops: usize,
    max_live: usize,
    seed: u64,
    tick: &dyn Fn(&CpuGuard<'_>),
    progress: &indicatif::ProgressBar,
) -> Result<CpuReport> {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x51ab ^ (cpu.id() as u64) << 32);
    let mut r = CpuReport::default();
    drive(
        cpu,
        &mut rng,
        ops,
        max_live,
        tick,
        progress,
        &mut r,
        |rng, _, _| {
            let size = match rng.random_range(0..100) {
                0..50 => rng.random_range(1..=128),
                50..85 => rng.random_range(129..=2048),
                85..97 => rng.random_range(2049..=8192),
                _ => rng.random_range(8193..=65536),
            };
            let gfp = if rng.random_range(0..50) == 0 {
                GFP_KERNEL | Gfp::GFP_DMA
            } else {
                GFP_KERNEL
            };
            let p = k.kmalloc(cpu, size, gfp | Gfp::__GFP_NOWARN)?;
            let seed: u8 = rng.random();
            // SAFETY: a fresh kmalloc allocation of at least `size` bytes.
            let bytes = unsafe { std::slice::from_raw_parts_mut(p.as_ptr(), size) };
            for (j, b) in bytes.iter_mut().enumerate() {
                *b = seed.wrapping_add(j as u8);
            }
            Some((p, size, seed))
        },
        |(p, size, seed): (std::ptr::NonNull<u8>, usize, u8), r| {
            // SAFETY: `p` is a live kmalloc allocation of `size` bytes that this loop owns.
            let bytes = unsafe { std::slice::from_raw_parts(p.as_ptr(), size) };
            if let Some(off) = bytes
                .iter()
                .enumerate()
                .position(|(j, &b)| b != seed.wrapping_add(j as u8))
            {
                bail!(
                    "cpu {}: kmalloc object {:p} ({size} bytes): byte {off} changed",
                    cpu.id(),
                    p.as_ptr()
                );
            }
            r.bytes_checked += size as u64;
            k.kfree(cpu, Some(p));
            Ok(())
        },
    )?;
    Ok(r)
}

/// Run the kmalloc workload on every CPU of `m` at once, one host thread per CPU (a
/// progress bar on a terminal).
pub fn run_kmalloc_all_cpus(
    m: &Machine,
    ops: usize,
    max_live: usize,
    seed: u64,
) -> Result<Vec<CpuReport>> {
    let bar = crate::progress::bar((ops * m.kernel.nr_cpus()) as u64, "kmalloc/kfree ops");
    let r = m.on_all_cpus(|k, cpu| {
        run_kmalloc_on_cpu(k, cpu, ops, max_live, seed, &|c| m.tick(c), &bar)
    });
    bar.finish_and_clear();
    r
}

/// Run the page workload on every CPU of `m` at once, one host thread per CPU (a progress
/// bar on a terminal).
pub fn run_all_cpus(m: &Machine, ops: usize, max_live: usize, seed: u64) -> Result<Vec<CpuReport>> {
    let bar = crate::progress::bar((ops * m.kernel.nr_cpus()) as u64, "page ops");
    let r = m.on_all_cpus(|k, cpu| run_on_cpu(k, cpu, ops, max_live, seed, &|c| m.tick(c), &bar));
    bar.finish_and_clear();
    r
}
