//! Boot: from the firmware's e820 map to a running page allocator, in the order and with the
//! log lines of Linux x86-64 (`arch/x86/kernel/setup.c`'s `setup_arch`, `e820.c`,
//! `arch/x86/mm/numa.c` and `numa_emulation.c`, `mm/sparse.c`'s `sparse_init`,
//! `mm/mm_init.c`'s `free_area_init`, `memmap_init`, `find_zone_movable_pfns_for_nodes`,
//! `mem_init`/`memblock_free_all`, `mm/page_alloc.c`'s `build_all_zonelists` and
//! `init_per_zone_wmark_min`).
//!
//! Simplifications, each documented where it is made: `numa=fake=N` splits memory into N
//! contiguous nodes of about equal RAM on 128 MiB (section) boundaries rather than
//! interleaving; `kernelcore=`/`movablecore=` spread the kernel part evenly over nodes in
//! one pass.

use crate::addr::{align_up, PhysAddr, PAGE_SHIFT, PAGE_SIZE};
use crate::arch::x86_64::e820::{E820Error, E820Table, E820Type, MAX_ARCH_PFN};
use crate::arch::x86_64::layout::{ImagePlacement, KernelImage, PHYSICAL_ALIGN, PHYSICAL_START};
use crate::cmdline::{BootConfig, CmdlineError, SizeOrPercent};
use crate::cpu::CpuState;
use crate::mm::memblock::{Memblock, NUMA_NO_NODE};
use crate::mm::mmzone::{self, NumaDistance, PglistData, Zone, ZoneType, MAX_NR_ZONES, ZONE_TYPES};
use crate::mm::page::{MemMap, Page, PageFlags, PAGES_PER_SECTION, PFN_SECTION_SHIFT};
use crate::mm::page_alloc::{buddy, MAX_PAGE_ORDER};
use crate::mm::vmstat::{CpuVmStats, PGFREE};
use crate::platform::Platform;
use crate::sync::{PerCpu, SpinLock};
use crate::Kernel;
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// Why a machine did not boot.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BootError {
    /// The e820 map is unusable.
    #[error(transparent)]
    E820(#[from] E820Error),
    /// The command line is wrong.
    #[error(transparent)]
    Cmdline(#[from] CmdlineError),
    /// The platform's RAM mapping does not cover the map.
    #[error("the platform maps {have:#x} bytes but the e820 map needs {need:#x}")]
    RamTooSmall {
        /// Bytes needed.
        need: u64,
        /// Bytes mapped.
        have: u64,
    },
    /// Something else about the machine that cannot work.
    #[error("cannot boot: {0}")]
    Machine(String),
}

/// Facts fixed at boot.
#[derive(Clone, Debug, Default)]
pub struct BootInfo {
    /// `max_pfn`.
    pub max_pfn: u64,
    /// `max_low_pfn` (end of RAM below 4 GiB).
    pub max_low_pfn: u64,
    /// Pages of RAM (`physpages`, sum of present pages).
    pub physpages: u64,
    /// Pages handed to the buddy allocator at boot.
    pub totalram_at_boot: u64,
    /// Pages of `mem_map` allocated from memblock.
    pub memmap_pages: u64,
    /// Where the kernel image is.
    pub image: ImagePlacement,
    /// Sizes of the kernel image.
    pub image_sizes: KernelImage,
    /// `zone_movable_pfn[]` per node (0 = none).
    pub zone_movable_pfn: Vec<u64>,
    /// Number of CPUs.
    pub nr_cpus: usize,
}

/// Arch zone limits `[lowest, highest)` for DMA, DMA32, Normal.
fn arch_zone_limits(max_pfn: u64) -> [(u64, u64); 3] {
    let dma = 1u64 << (24 - PAGE_SHIFT);
    let dma32 = 1u64 << (32 - PAGE_SHIFT);
    [
        (0, dma.min(max_pfn)),
        (dma.min(max_pfn), dma32.min(max_pfn)),
        (dma32.min(max_pfn), max_pfn),
    ]
}

fn overlap(a: (u64, u64), b: (u64, u64)) -> u64 {
    a.1.min(b.1).saturating_sub(a.0.max(b.0))
}

struct ZonePlan {
    start: u64,
    end: u64,
    present: u64,
}

/// `numa=fake=N`: node boundaries (pfn) splitting `ranges` into `n` nodes of about equal RAM,
/// each boundary on a section.
fn split_nodes(ranges: &[(u64, u64)], n: usize, max_pfn: u64) -> Result<Vec<u64>, BootError> {
    let total: u64 = ranges.iter().map(|r| r.1 - r.0).sum();
    let mut bounds = alloc::vec![0u64];
    for k in 1..n {
        let target = total * k as u64 / n as u64;
        let mut acc = 0;
        let mut at = max_pfn;
        for &(s, e) in ranges {
            if acc + (e - s) >= target {
                at = s + (target - acc);
                break;
            }
            acc += e - s;
        }
        let b = align_up(at, PAGES_PER_SECTION);
        if b <= *bounds.last().unwrap_or(&0) || b >= max_pfn {
            return Err(BootError::Machine(format!(
                "numa=fake={n}: {} MiB of RAM cannot be split into {n} nodes on 128 MiB boundaries",
                total >> (20 - PAGE_SHIFT)
            )));
        }
        bounds.push(b);
    }
    bounds.push(max_pfn);
    for w in bounds.windows(2) {
        if ranges
            .iter()
            .map(|&r| overlap(r, (w[0], w[1])))
            .sum::<u64>()
            == 0
        {
            return Err(BootError::Machine(format!(
                "numa=fake={n}: a node would have no RAM"
            )));
        }
    }
    Ok(bounds)
}

fn size_pages(s: SizeOrPercent, total: u64) -> u64 {
    match s {
        SizeOrPercent::Bytes(b) => b >> PAGE_SHIFT,
        SizeOrPercent::Percent(p) => total * p / 100,
    }
}

impl Kernel {
    /// Boot a machine: sanitize `firmware_e820`, set up memblock, nodes, zones and `mem_map`,
    /// free memory into the buddy allocator and compute watermarks; the dmesg lines Linux
    /// prints go to the kernel log.
    pub fn boot(
        platform: Box<dyn Platform>,
        firmware_e820: &E820Table,
        cmdline: &str,
    ) -> Result<Kernel, BootError> {
        let config = BootConfig::parse(cmdline)?;
        let mut log: Vec<String> = Vec::new();
        let mut say = |s: String| log.push(s);
        let nr_cpus = platform.nr_cpus().max(1);
        say(format!(
            "mmkit version {} (mmkit-sim) #1 SMP",
            env!("CARGO_PKG_VERSION")
        ));
        say(format!("Command line: {}", config.cmdline));

        // e820__memory_setup: sanitize and print the firmware map.
        let mut e820 = firmware_e820.clone();
        e820.sanitize();
        say(String::from("BIOS-provided physical RAM map:"));
        for l in e820.print_lines("BIOS-e820") {
            say(l);
        }
        // trim_bios_range: page 0 is BIOS data; the legacy BIOS area is never RAM.
        say(e820.range_update(0, PAGE_SIZE, E820Type::Ram, E820Type::Reserved));
        say(e820.range_remove(0xa0000, 0x60000, E820Type::Ram));
        let max_pfn = e820.end_pfn(MAX_ARCH_PFN).0;
        if max_pfn == 0 || e820.usable_pfn_ranges().is_empty() {
            return Err(E820Error::NoUsableRam.into());
        }
        say(format!(
            "last_pfn = {:#x} max_arch_pfn = {:#x}",
            max_pfn, MAX_ARCH_PFN
        ));
        let max_low_pfn = e820.end_pfn(1 << (32 - PAGE_SHIFT)).0;
        say(format!(
            "last_pfn = {:#x} max_arch_pfn = {:#x}",
            max_low_pfn, MAX_ARCH_PFN
        ));
        if max_pfn >= u32::MAX as u64 {
            return Err(BootError::Machine(format!(
                "max_pfn {max_pfn:#x} does not fit the 32-bit pfn links of struct page (16 TiB)"
            )));
        }
        if (max_pfn >> PFN_SECTION_SHIFT) >= crate::mm::page::MAX_SECTIONS {
            return Err(BootError::Machine(String::from(
                "physical address space beyond 8 TiB",
            )));
        }
        if platform.ram_end() < max_pfn << PAGE_SHIFT {
            return Err(BootError::RamTooSmall {
                need: max_pfn << PAGE_SHIFT,
                have: platform.ram_end(),
            });
        }

        // e820__memblock_setup, with the page-trimmed usable ranges.
        let mut mb = Memblock::default();
        let ranges = e820.usable_pfn_ranges();
        for &(s, e) in &ranges {
            mb.memory.add(s << PAGE_SHIFT, (e - s) << PAGE_SHIFT, 0);
        }
        // Always reserve the first 1 MiB (real-mode trampoline, BIOS corruption).
        mb.reserve(0, 1 << 20);
        // The kernel image at CONFIG_PHYSICAL_START, or relocated to the first 2 MiB-aligned
        // place that holds it.
        let image_sizes = KernelImage::default();
        let img_len = image_sizes.place(0).whole().1;
        let base = core::iter::once(PHYSICAL_START)
            .chain(
                mb.memory
                    .regions
                    .iter()
                    .map(|r| align_up(r.base.max(PHYSICAL_START), PHYSICAL_ALIGN)),
            )
            .find(|&b| {
                mb.memory
                    .regions
                    .iter()
                    .any(|r| r.base <= b && b + img_len <= r.end())
            })
            .ok_or_else(|| {
                BootError::Machine(format!(
                    "no RAM region can hold the {} KiB kernel image",
                    img_len >> 10
                ))
            })?;
        let image = image_sizes.place(base);
        mb.reserve(image.whole().0, image.whole().1 - image.whole().0);

        // NUMA: numa=fake=N or one node.
        let n_nodes = config.numa_fake;
        let bounds = split_nodes(&ranges, n_nodes, max_pfn)?;
        if n_nodes == 1 {
            say(String::from("No NUMA configuration found"));
            say(format!(
                "Faking a node at [mem {:#018x}-{:#018x}]",
                0,
                (max_pfn << PAGE_SHIFT) - 1
            ));
        } else {
            for k in 0..n_nodes {
                let (s, e) = (bounds[k], bounds[k + 1]);
                say(format!(
                    "Faking node {k} at [mem {:#018x}-{:#018x}] ({}MB)",
                    s << PAGE_SHIFT,
                    (e << PAGE_SHIFT) - 1,
                    ((e - s) << PAGE_SHIFT) >> 20
                ));
            }
        }
        for k in 0..n_nodes {
            mb.memory.set_node(
                bounds[k] << PAGE_SHIFT,
                (bounds[k + 1] - bounds[k]) << PAGE_SHIFT,
                k,
            );
        }
        let node_ranges: Vec<Vec<(u64, u64)>> = (0..n_nodes)
            .map(|k| {
                mb.memory
                    .regions
                    .iter()
                    .filter(|r| r.nid == k)
                    .map(|r| (PhysAddr(r.base).pfn_up().0, PhysAddr(r.end()).pfn_down().0))
                    .collect()
            })
            .collect();
        let total_present: u64 = ranges.iter().map(|r| r.1 - r.0).sum();

        // find_zone_movable_pfns_for_nodes.
        let limits = arch_zone_limits(max_pfn);
        let mut zone_movable_pfn = alloc::vec![0u64; n_nodes];
        let required_kernelcore = match (config.kernelcore, config.movablecore) {
            (Some(k), _) => Some(size_pages(k, total_present)),
            (None, Some(m)) => {
                Some(total_present - size_pages(m, total_present).min(total_present))
            }
            (None, None) => None,
        };
        let movable_from = (0..3)
            .rev()
            .find(|&t| ranges.iter().any(|&r| overlap(r, limits[t]) > 0))
            .unwrap_or(0);
        if let Some(req) = required_kernelcore.filter(|&r| r > 0 && r < total_present) {
            let usable_start = limits[movable_from].0;
            let per_node = req.div_ceil(n_nodes as u64);
            for (k, nr) in node_ranges.iter().enumerate() {
                let mut remaining = per_node;
                let mut mpfn = 0;
                for &(mut s, e) in nr {
                    if s < usable_start {
                        let kp = e.min(usable_start) - s;
                        remaining -= kp.min(remaining);
                        if e <= usable_start {
                            continue;
                        }
                        s = usable_start;
                    }
                    let take = (e - s).min(remaining);
                    mpfn = s + take;
                    remaining -= take;
                    if remaining == 0 {
                        break;
                    }
                }
                let node_end = nr.last().map_or(0, |r| r.1);
                let mpfn = align_up(mpfn, 1 << MAX_PAGE_ORDER);
                zone_movable_pfn[k] = if mpfn > 0 && mpfn < node_end { mpfn } else { 0 };
            }
        }

        // Zone spans and present pages per node (zone_spanned_pages_in_node with
        // adjust_zone_range_for_zone_movable, zone_absent_pages_in_node).
        let mut plans: Vec<[ZonePlan; MAX_NR_ZONES]> = Vec::new();
        for (k, nr) in node_ranges.iter().enumerate() {
            let node_start = nr.first().map_or(0, |r| r.0);
            let node_end = nr.last().map_or(0, |r| r.1);
            let mpfn = zone_movable_pfn[k];
            let plan: [ZonePlan; MAX_NR_ZONES] = core::array::from_fn(|t| {
                let (mut s, mut e) = match t {
                    0..=2 => (node_start.max(limits[t].0), node_end.min(limits[t].1)),
                    3 if mpfn != 0 => (mpfn, node_end.min(limits[movable_from].1)),
                    _ => (0, 0),
                };
                if mpfn != 0 && t < 3 {
                    if s < mpfn && e > mpfn {
                        e = mpfn;
                    } else if s >= mpfn {
                        s = e;
                    }
                }
                if s >= e {
                    return ZonePlan {
                        start: 0,
                        end: 0,
                        present: 0,
                    };
                }
                let present = nr.iter().map(|&r| overlap(r, (s, e))).sum();
                ZonePlan {
                    start: s,
                    end: e,
                    present,
                }
            });
            plans.push(plan);
        }

        // free_area_init's report.
        say(String::from("Zone ranges:"));
        let first_pfn = ranges[0].0;
        for (t, &(lo, hi)) in limits.iter().enumerate() {
            let lo = lo.max(first_pfn); // zones below the first RAM are empty, the next starts there
            if lo >= hi {
                say(format!("  {:<8} empty", ZONE_TYPES[t].name()));
            } else {
                say(format!(
                    "  {:<8} [mem {:#018x}-{:#018x}]",
                    ZONE_TYPES[t].name(),
                    lo << PAGE_SHIFT,
                    (hi << PAGE_SHIFT) - 1
                ));
            }
        }
        say(format!("  {:<8} empty", "Device"));
        say(String::from("Movable zone start for each node"));
        for (k, &m) in zone_movable_pfn.iter().enumerate() {
            if m != 0 {
                say(format!("  Node {k}: {:#018x}", m << PAGE_SHIFT));
            }
        }
        say(String::from("Early memory node ranges"));
        for r in &mb.memory.regions {
            say(format!(
                "  node {:>3}: [mem {:#018x}-{:#018x}]",
                r.nid,
                r.base,
                r.end() - 1
            ));
        }
        for (k, nr) in node_ranges.iter().enumerate() {
            let (s, e) = (nr.first().map_or(0, |r| r.0), nr.last().map_or(0, |r| r.1));
            say(format!(
                "Initmem setup node {k} [mem {:#018x}-{:#018x}]",
                s << PAGE_SHIFT,
                (e << PAGE_SHIFT) - 1
            ));
        }

        // Which (node, zone) a pfn's struct page belongs to: the zone spanning it, or for a
        // hole, the zone of the RAM after it (the last zone for a trailing hole).
        let mut spans: Vec<(u64, u64, usize, ZoneType)> = Vec::new();
        for (k, plan) in plans.iter().enumerate() {
            for (t, z) in plan.iter().enumerate() {
                if z.present > 0 {
                    spans.push((z.start, z.end, k, ZONE_TYPES[t]));
                }
            }
        }
        spans.sort_by_key(|s| s.0);
        let zone_of = |pfn: u64| -> (usize, ZoneType) {
            let i = spans.partition_point(|s| s.1 <= pfn);
            let s = spans
                .get(i)
                .or(spans.last())
                .copied()
                .unwrap_or((0, 0, 0, ZoneType::Dma));
            (s.2, s.3)
        };

        // sparse_init: a mem_map for every section with RAM, from memblock on its node.
        let mut mem_map = MemMap::new(max_pfn);
        let mut sections_by_node: Vec<Vec<usize>> = alloc::vec![Vec::new(); n_nodes];
        let nsec = max_pfn.div_ceil(PAGES_PER_SECTION) as usize;
        for nr in 0..nsec {
            let (s, e) = (
                nr as u64 * PAGES_PER_SECTION,
                (nr as u64 + 1) * PAGES_PER_SECTION,
            );
            if let Some(&(rs, _)) = ranges.iter().find(|&&r| overlap(r, (s, e)) > 0) {
                sections_by_node[zone_of(rs.max(s)).0].push(nr);
            }
        }
        let section_bytes = PAGES_PER_SECTION * core::mem::size_of::<Page>() as u64;
        let mut memmap_pages = 0;
        let direct_map = platform.direct_map_base();
        for (k, secs) in sections_by_node.iter().enumerate() {
            if secs.is_empty() {
                continue;
            }
            let bytes = align_up(secs.len() as u64 * section_bytes, PAGE_SIZE);
            let pa = mb.alloc_try_nid(bytes, PAGE_SIZE, k).ok_or_else(|| {
                BootError::Machine(format!(
                    "cannot allocate {} KiB of mem_map for node {k}",
                    bytes >> 10
                ))
            })?;
            memmap_pages += bytes >> PAGE_SHIFT;
            for (i, &nr) in secs.iter().enumerate() {
                let host =
                    direct_map.wrapping_add((pa + i as u64 * section_bytes) as usize) as *mut Page;
                // SAFETY: [pa, pa + bytes) is RAM below max_pfn (memblock allocated it from the
                // e820 usable ranges), the platform maps it (checked ram_end above), it is
                // page-aligned, and memblock reserved it so nothing else will use it.
                unsafe { mem_map.install_section(nr, host, zone_of) };
            }
        }

        // init_top_pgt: the kernel's PGD is a page of the kernel image, not a buddy page.
        let init_pgd_pa = mb.alloc_try_nid(PAGE_SIZE, PAGE_SIZE, 0).ok_or_else(|| {
            BootError::Machine(String::from("no memory for the kernel page tables"))
        })?;
        // SAFETY: memblock just reserved this page of RAM below max_pfn for us alone.
        unsafe {
            core::ptr::write_bytes(
                direct_map.wrapping_add(init_pgd_pa as usize),
                0,
                PAGE_SIZE as usize,
            )
        };

        // memmap_init's report of holes inside present sections.
        {
            let mut hole = 0u64;
            let mut last_zone = (0usize, ZoneType::Dma);
            let mut last_end = 0;
            let count_valid = |a: u64, b: u64| (a..b).filter(|&p| mem_map.pfn_valid(p)).count();
            for r in &mb.memory.regions {
                let (s, e) = (PhysAddr(r.base).pfn_up().0, PhysAddr(r.end()).pfn_down().0);
                for (t, z) in plans[r.nid].iter().enumerate() {
                    if z.present == 0 {
                        continue;
                    }
                    last_zone = (r.nid, ZONE_TYPES[t]);
                    let (cs, ce) = (s.clamp(z.start, z.end), e.clamp(z.start, z.end));
                    if cs >= ce {
                        continue;
                    }
                    if hole < cs {
                        let n = count_valid(hole, cs);
                        if n > 0 {
                            say(format!(
                                "On node {}, zone {}: {} pages in unavailable ranges",
                                r.nid,
                                ZONE_TYPES[t].name(),
                                n
                            ));
                        }
                    }
                    hole = ce;
                }
                last_end = e;
            }
            let end = align_up(last_end, PAGES_PER_SECTION);
            if hole < end {
                let n = count_valid(hole, end);
                if n > 0 {
                    say(format!(
                        "On node {}, zone {}: {} pages in unavailable ranges",
                        last_zone.0,
                        last_zone.1.name(),
                        n
                    ));
                }
            }
        }

        // Nodes and zones.
        let mut nodes: Vec<PglistData> = Vec::new();
        for (k, plan) in plans.iter().enumerate() {
            let zones = plan
                .iter()
                .enumerate()
                .map(|(t, z)| {
                    Zone::new(
                        k,
                        ZONE_TYPES[t],
                        z.start,
                        z.end - z.start,
                        z.present,
                        nr_cpus,
                    )
                })
                .collect();
            nodes.push(PglistData::new(k, zones));
        }

        // Zonelists: nodes by distance, then zones from the highest down.
        let dist = NumaDistance::uniform(n_nodes);
        for k in 0..n_nodes {
            let order = mmzone::node_order(&dist, k);
            let mut fb = Vec::new();
            for &n in &order {
                for t in (0..MAX_NR_ZONES).rev() {
                    if nodes[n].zones[t].populated() {
                        fb.push((n, ZONE_TYPES[t]));
                    }
                }
            }
            nodes[k].zonelist_nofallback = fb.iter().copied().filter(|z| z.0 == k).collect();
            nodes[k].zonelist_fallback = fb;
            let mut line = format!("Fallback order for Node {k}: ");
            for n in order {
                line.push_str(&format!("{n} "));
            }
            say(line);
        }
        let physpages: u64 = nodes.iter().map(|n| n.node_present_pages).sum();
        say(format!(
            "Built {n_nodes} zonelists, mobility grouping on.  Total pages: {physpages}"
        ));
        let policy = if nodes.iter().any(|n| n.zone(ZoneType::Normal).populated()) {
            "Normal"
        } else {
            "DMA32"
        };
        say(format!("Policy zone: {policy}"));
        say(format!("Kernel command line: {}", config.cmdline));

        // CPUs: round-robin over nodes, as numa=fake hands them out.
        let nr_zones_total = n_nodes * MAX_NR_ZONES;
        let cpus = PerCpu::new(nr_cpus, |c| CpuState {
            held: AtomicBool::new(false),
            node: c % n_nodes,
            vmstat: CpuVmStats::new(nr_zones_total, n_nodes),
            lru_add: SpinLock::new(crate::mm::swap::FolioBatch::new()),
            in_reclaim: core::cell::Cell::new(false),
        });

        let boot = BootInfo {
            max_pfn,
            max_low_pfn,
            physpages,
            totalram_at_boot: 0,
            memmap_pages,
            image,
            image_sizes,
            zone_movable_pfn,
            nr_cpus,
        };
        let mut k = Kernel {
            platform,
            direct_map,
            mem_map,
            nodes,
            cpus,
            numa_distance: dist,
            e820,
            memblock: SpinLock::new(mb),
            config: config.clone(),
            boot,
            tunables: SpinLock::new(config.wmark.clone()),
            min_free_kbytes: AtomicU64::new(0),
            log: SpinLock::new(crate::LogBuf::default()),
            bad_pages: AtomicU64::new(0),
            slab: crate::mm::slab::SlabState::new(),
            slab_reports: AtomicU64::new(0),
            tlbs: crate::arch::x86_64::tlb::Tlbs::new(nr_cpus),
            next_ctx_id: AtomicU64::new(0),
            vmap: SpinLock::new(crate::mm::vmalloc::VmapState::new()),
            init_mm: None,
            zero_pfn: crate::Pfn(image.bss.0 >> PAGE_SHIFT),
            inodes: SpinLock::new(Default::default()),
            anon_vmas: crate::sync::RwLock::new(Default::default()),
            swap: SpinLock::new(Default::default()),
            swappiness: AtomicU64::new(60),
        };
        // empty_zero_page lives in the kernel's bss, which boot clears.
        k.clear_highpage(k.zero_pfn);
        for l in log {
            k.printk(&l);
        }

        // mem_init → memblock_free_all: every free range into the buddy allocator.
        k.memblock_free_all();
        let totalram: u64 = k
            .nodes
            .iter()
            .flat_map(|n| n.zones.iter())
            .map(|z| z.managed())
            .sum();
        k.boot.totalram_at_boot = totalram;

        // init_per_zone_wmark_min.
        k.init_per_zone_wmark_min();

        // The kernel page tables (init_mm) on the static PGD.
        k.init_mm = Some(k.pgd_static(crate::Pfn(init_pgd_pa >> PAGE_SHIFT)));

        // kmem_cache_init: the kmalloc caches.
        k.slab.debug_all.store(k.config.slab_debug, Relaxed);
        k.create_kmalloc_caches();

        let s = &k.boot.image_sizes;
        let kb = |b: u64| b >> 10;
        k.printk(&format!(
            "Memory: {}K/{}K available ({}K kernel code, {}K rwdata, {}K rodata, {}K init, {}K bss, {}K reserved, 0K cma-reserved)",
            k.global_free_pages() << (PAGE_SHIFT - 10),
            physpages << (PAGE_SHIFT - 10),
            kb(s.code),
            kb(s.rwdata),
            kb(s.rodata),
            kb(s.init),
            kb(s.bss),
            (physpages - totalram) << (PAGE_SHIFT - 10)
        ));
        Ok(k)
    }

    /// `memblock_free_all`: hand every page of `memory - reserved` to the buddy allocator in
    /// the largest aligned blocks (`__free_pages_memory`), counting managed pages.
    fn memblock_free_all(&mut self) {
        let free = self.memblock.lock().free_ranges(NUMA_NO_NODE);
        for (s, e, nid) in free {
            let (s, e) = (PhysAddr(s).pfn_up().0, PhysAddr(e).pfn_down().0);
            for zt in ZONE_TYPES {
                let z = self.nodes[nid].zone(zt);
                if !z.populated() {
                    continue;
                }
                let (mut a, b) = (s.max(z.zone_start_pfn), e.min(z.end_pfn()));
                while a < b {
                    let mut order = MAX_PAGE_ORDER.min(a.trailing_zeros());
                    while a + (1 << order) > b {
                        order -= 1;
                    }
                    self.free_pages_core(nid, zt, a, order);
                    a += 1 << order;
                }
            }
        }
    }

    /// `__free_pages_core`: a boot-reserved block becomes managed and free.
    fn free_pages_core(&self, nid: usize, zt: ZoneType, pfn: u64, order: u32) {
        for i in 0..(1u64 << order) {
            let p = self.mem_map.page(pfn + i);
            p.clear_nonatomic(PageFlags::RESERVED);
            p.set_refcount(0);
        }
        let z = self.nodes[nid].zone(zt);
        z.managed_pages.fetch_add(1 << order, Relaxed);
        self.cpus.get(0).vmstat.count(PGFREE, 1 << order);
        let mt = z.pageblock_migratetype(pfn);
        let mut fa = z.free_area.lock();
        buddy::free_one_page(&self.mem_map, z, &mut fa, pfn, order, mt, true);
    }

    /// Free pages in the buddy lists of every zone (`global_zone_page_state(NR_FREE_PAGES)`).
    pub fn global_free_pages(&self) -> u64 {
        self.nodes
            .iter()
            .flat_map(|n| n.zones.iter())
            .map(|z| z.free_pages().max(0) as u64)
            .sum()
    }

    /// `totalram_pages()`.
    pub fn totalram_pages(&self) -> u64 {
        self.nodes
            .iter()
            .flat_map(|n| n.zones.iter())
            .map(|z| z.managed())
            .sum()
    }
}
