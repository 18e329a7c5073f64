//! Boot: from the firmware's e820 map to a running page allocator, in the order and with the
//! log lines of Linux x86-64 (`arch/x86/kernel/setup.c`'s `setup_arch`, `e820.c`'s
//! `e820__memory_setup` and `e820__memblock_setup`, `arch/x86/mm/numa.c` and
//! `numa_emulation.c`, `arch/x86/mm/init.c`'s `zone_sizes_init` and `init_mem_mapping`,
//! `mm/sparse.c`'s `sparse_init`, `mm/mm_init.c`'s `free_area_init`, `memmap_init`,
//! `find_zone_movable_pfns_for_nodes` and `mm_core_init`, `mem_init`/`memblock_free_all`,
//! `mm/page_alloc.c`'s `build_all_zonelists` and `init_per_zone_wmark_min`). Each phase is a
//! function of that name: the early ones work on an `EarlyBoot` (Linux's globals of the
//! time) until the `Kernel` can be built, the later ones on the `Kernel`.
//!
//! Simplifications, each documented where it is made: `numa=fake=N` splits memory into N
//! contiguous nodes of about equal RAM on 128 MiB (section) boundaries rather than
//! interleaving; `kernelcore=`/`movablecore=` spread the kernel part evenly over nodes in
//! one pass.

use crate::addr::{align_up, Pfn, PhysAddr, PAGE_SHIFT, PAGE_SIZE};
use crate::arch::x86_64::e820::{E820Error, E820Table, E820Type, MAX_ARCH_PFN};
use crate::arch::x86_64::layout::{ImagePlacement, KernelImage, PHYSICAL_ALIGN, PHYSICAL_START};
use crate::cmdline::{BootConfig, CmdlineError, SizeOrPercent};
use crate::cpu::CpuState;
use crate::mm::memblock::{Memblock, NUMA_NO_NODE};
use crate::mm::mmzone::{self, NumaDistance, PglistData, Zone, ZoneType, MAX_NR_ZONES, ZONE_TYPES};
use crate::mm::page::{MemMap, Page, PageFlags, PAGES_PER_SECTION, PFN_SECTION_SHIFT};
use crate::mm::page_alloc::{buddy, MAX_PAGE_ORDER};
use crate::mm::vmstat::{CpuVmStats, PGFREE};
use crate::platform::{DirectMap, Platform};
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

/// What the early boot phases build before the [`Kernel`] exists. Linux keeps these in
/// globals that `setup_arch` and `mm_core_init` fill in turn (`e820_table`, `memblock`,
/// `max_pfn`, `numa_meminfo`, `arch_zone_{lowest,highest}_possible_pfn`,
/// `zone_movable_pfn[]`); here they are one value handed from phase to phase, and the log
/// lines the phases print wait in `log` until the kernel's log ring exists.
struct EarlyBoot {
    config: BootConfig,
    nr_cpus: usize,
    log: Vec<String>,
    /// The sanitized and trimmed e820 table (`e820_table`).
    e820: E820Table,
    max_pfn: u64,
    max_low_pfn: u64,
    /// Usable RAM in page-trimmed pfn ranges.
    ranges: Vec<(u64, u64)>,
    memblock: Memblock,
    image_sizes: KernelImage,
    image: ImagePlacement,
    n_nodes: usize,
    /// Each node's usable pfn ranges (after `numa_init`).
    node_ranges: Vec<Vec<(u64, u64)>>,
    /// `arch_zone_lowest/highest_possible_pfn` for DMA, DMA32, Normal.
    limits: [(u64, u64); 3],
    /// The highest zone with RAM below ZONE_MOVABLE (`movable_zone`).
    movable_from: usize,
    zone_movable_pfn: Vec<u64>,
    /// Each node's zone spans and present pages (after `free_area_init`'s sizing).
    plans: Vec<[ZonePlan; MAX_NR_ZONES]>,
    /// `(start, end, nid, zone)` of every zone with RAM, by start.
    spans: Vec<(u64, u64, usize, ZoneType)>,
}

impl EarlyBoot {
    fn say(&mut self, line: String) {
        self.log.push(line);
    }

    /// `setup_arch`'s memory part up to memblock: `e820__memory_setup` (sanitize the
    /// firmware's map and print it), `trim_bios_range` (page 0 is BIOS data, the legacy
    /// BIOS area is never RAM) and `e820__end_of_ram_pfn`/`e820__end_of_low_ram_pfn`, with
    /// the limits this kernel has (32-bit pfn links, 16-bit section numbers, the platform's
    /// RAM mapping).
    fn setup_arch(
        platform: &dyn Platform,
        firmware_e820: &E820Table,
        config: BootConfig,
    ) -> Result<EarlyBoot, BootError> {
        let mut log: Vec<String> = Vec::new();
        let nr_cpus = platform.nr_cpus().max(1);
        log.push(format!(
            "mmkit version {} (mmkit-sim) #1 SMP",
            env!("CARGO_PKG_VERSION")
        ));
        log.push(format!("Command line: {}", config.cmdline));

        // e820__memory_setup: sanitize and print the firmware map.
        let mut e820 = firmware_e820.clone();
        e820.sanitize();
        log.push(String::from("BIOS-provided physical RAM map:"));
        log.extend(e820.print_lines("BIOS-e820"));
        // trim_bios_range: page 0 is BIOS data; the legacy BIOS area is never RAM.
        log.push(e820.range_update(0, PAGE_SIZE, E820Type::Ram, E820Type::Reserved));
        log.push(e820.range_remove(0xa0000, 0x60000, E820Type::Ram));
        let max_pfn = e820.end_pfn(MAX_ARCH_PFN).0;
        if max_pfn == 0 || e820.usable_pfn_ranges().is_empty() {
            return Err(E820Error::NoUsableRam.into());
        }
        log.push(format!(
            "last_pfn = {:#x} max_arch_pfn = {:#x}",
            max_pfn, MAX_ARCH_PFN
        ));
        let max_low_pfn = e820.end_pfn(1 << (32 - PAGE_SHIFT)).0;
        log.push(format!(
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
        let ranges = e820.usable_pfn_ranges();
        let image_sizes = KernelImage::default();
        Ok(EarlyBoot {
            n_nodes: config.numa_fake,
            config,
            nr_cpus,
            log,
            e820,
            max_pfn,
            max_low_pfn,
            ranges,
            memblock: Memblock::default(),
            image: image_sizes.place(PHYSICAL_START),
            image_sizes,
            node_ranges: Vec::new(),
            limits: arch_zone_limits(max_pfn),
            movable_from: 0,
            zone_movable_pfn: Vec::new(),
            plans: Vec::new(),
            spans: Vec::new(),
        })
    }

    /// `e820__memblock_setup`: memblock's memory is the page-trimmed usable e820 ranges;
    /// the first 1 MiB is always reserved (real-mode trampoline, BIOS corruption).
    #[allow(non_snake_case)] // Linux's name, double underscore and all
    fn e820__memblock_setup(&mut self) {
        for &(s, e) in &self.ranges {
            self.memblock
                .memory
                .add(s << PAGE_SHIFT, (e - s) << PAGE_SHIFT, 0);
        }
        self.memblock.reserve(0, 1 << 20);
    }

    /// `early_reserve_memory`'s reservation of the kernel image: at
    /// `CONFIG_PHYSICAL_START`, or where the decompressor would have relocated it (the
    /// first 2 MiB-aligned place in RAM that holds it).
    fn early_reserve_memory(&mut self) -> Result<(), BootError> {
        let mb = &self.memblock;
        let img_len = self.image_sizes.place(0).whole().1;
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
        self.image = self.image_sizes.place(base);
        let (s, e) = self.image.whole();
        self.memblock.reserve(s, e - s);
        Ok(())
    }

    /// `x86_numa_init`: `numa_emulation` for `numa=fake=N` (N contiguous nodes of about
    /// equal RAM on section boundaries, where Linux interleaves), else `dummy_numa_init`'s
    /// one node; memblock's regions get their node ids.
    fn numa_init(&mut self) -> Result<(), BootError> {
        let n_nodes = self.n_nodes;
        let max_pfn = self.max_pfn;
        let bounds = split_nodes(&self.ranges, n_nodes, max_pfn)?;
        if n_nodes == 1 {
            self.say(String::from("No NUMA configuration found"));
            self.say(format!(
                "Faking a node at [mem {:#018x}-{:#018x}]",
                0,
                (max_pfn << PAGE_SHIFT) - 1
            ));
        } else {
            for k in 0..n_nodes {
                let (s, e) = (bounds[k], bounds[k + 1]);
                self.say(format!(
                    "Faking node {k} at [mem {:#018x}-{:#018x}] ({}MB)",
                    s << PAGE_SHIFT,
                    (e << PAGE_SHIFT) - 1,
                    ((e - s) << PAGE_SHIFT) >> 20
                ));
            }
        }
        for k in 0..n_nodes {
            self.memblock.memory.set_node(
                bounds[k] << PAGE_SHIFT,
                (bounds[k + 1] - bounds[k]) << PAGE_SHIFT,
                k,
            );
        }
        let mb = &self.memblock;
        self.node_ranges = (0..n_nodes)
            .map(|k| {
                mb.memory
                    .regions
                    .iter()
                    .filter(|r| r.nid == k)
                    .map(|r| (PhysAddr(r.base).pfn_up().0, PhysAddr(r.end()).pfn_down().0))
                    .collect()
            })
            .collect();
        Ok(())
    }

    /// `find_zone_movable_pfns_for_nodes`: where ZONE_MOVABLE starts on each node for
    /// `kernelcore=`/`movablecore=` (the kernel part spread evenly over nodes in one pass).
    fn find_zone_movable_pfns_for_nodes(&mut self) {
        let config = &self.config;
        let ranges = &self.ranges;
        let limits = self.limits;
        let n_nodes = self.n_nodes;
        let total_present: u64 = ranges.iter().map(|r| r.1 - r.0).sum();
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
            for (k, nr) in self.node_ranges.iter().enumerate() {
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
        self.movable_from = movable_from;
        self.zone_movable_pfn = zone_movable_pfn;
    }

    /// `zone_sizes_init` → `free_area_init`: each node's zone spans and present pages
    /// (`zone_spanned_pages_in_node` with `adjust_zone_range_for_zone_movable`,
    /// `zone_absent_pages_in_node`), and the report Linux prints.
    fn zone_sizes_init(&mut self) {
        self.find_zone_movable_pfns_for_nodes();
        let limits = self.limits;
        let movable_from = self.movable_from;
        let mut plans: Vec<[ZonePlan; MAX_NR_ZONES]> = Vec::new();
        for (k, nr) in self.node_ranges.iter().enumerate() {
            let node_start = nr.first().map_or(0, |r| r.0);
            let node_end = nr.last().map_or(0, |r| r.1);
            let mpfn = self.zone_movable_pfn[k];
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
        self.plans = plans;

        // free_area_init's report.
        self.say(String::from("Zone ranges:"));
        let first_pfn = self.ranges[0].0;
        for (t, &(lo, hi)) in limits.iter().enumerate() {
            let lo = lo.max(first_pfn); // zones below the first RAM are empty, the next starts there
            if lo >= hi {
                self.say(format!("  {:<8} empty", ZONE_TYPES[t].name()));
            } else {
                self.say(format!(
                    "  {:<8} [mem {:#018x}-{:#018x}]",
                    ZONE_TYPES[t].name(),
                    lo << PAGE_SHIFT,
                    (hi << PAGE_SHIFT) - 1
                ));
            }
        }
        self.say(format!("  {:<8} empty", "Device"));
        self.say(String::from("Movable zone start for each node"));
        for k in 0..self.n_nodes {
            let m = self.zone_movable_pfn[k];
            if m != 0 {
                self.say(format!("  Node {k}: {:#018x}", m << PAGE_SHIFT));
            }
        }
        self.say(String::from("Early memory node ranges"));
        let lines: Vec<String> = self
            .memblock
            .memory
            .regions
            .iter()
            .map(|r| {
                format!(
                    "  node {:>3}: [mem {:#018x}-{:#018x}]",
                    r.nid,
                    r.base,
                    r.end() - 1
                )
            })
            .chain(self.node_ranges.iter().enumerate().map(|(k, nr)| {
                let (s, e) = (nr.first().map_or(0, |r| r.0), nr.last().map_or(0, |r| r.1));
                format!(
                    "Initmem setup node {k} [mem {:#018x}-{:#018x}]",
                    s << PAGE_SHIFT,
                    (e << PAGE_SHIFT) - 1
                )
            }))
            .collect();
        self.log.extend(lines);

        // Which (node, zone) a pfn's struct page belongs to (see `zone_of`).
        let mut spans: Vec<(u64, u64, usize, ZoneType)> = Vec::new();
        for (k, plan) in self.plans.iter().enumerate() {
            for (t, z) in plan.iter().enumerate() {
                if z.present > 0 {
                    spans.push((z.start, z.end, k, ZONE_TYPES[t]));
                }
            }
        }
        spans.sort_by_key(|s| s.0);
        self.spans = spans;
    }

    /// The (node, zone) a pfn's struct page belongs to: the zone spanning it, or for a hole,
    /// the zone of the RAM after it (the last zone for a trailing hole).
    fn zone_of(&self, pfn: u64) -> (usize, ZoneType) {
        let spans = &self.spans;
        let i = spans.partition_point(|s| s.1 <= pfn);
        let s = spans
            .get(i)
            .or(spans.last())
            .copied()
            .unwrap_or((0, 0, 0, ZoneType::Dma));
        (s.2, s.3)
    }

    /// `sparse_init`: a `mem_map` for every section with RAM, allocated from memblock on
    /// its node (so it counts as reserved memory, as in Linux), its pages initialized as
    /// reserved pages of their zone (`memmap_init`'s `__init_single_page`). Returns the map
    /// and the pages it took.
    fn sparse_init(&mut self, direct_map: DirectMap) -> Result<(MemMap, u64), BootError> {
        let max_pfn = self.max_pfn;
        let mut mem_map = MemMap::new(max_pfn);
        let mut sections_by_node: Vec<Vec<usize>> = alloc::vec![Vec::new(); self.n_nodes];
        let nsec = max_pfn.div_ceil(PAGES_PER_SECTION) as usize;
        for nr in 0..nsec {
            let (s, e) = (
                nr as u64 * PAGES_PER_SECTION,
                (nr as u64 + 1) * PAGES_PER_SECTION,
            );
            if let Some(&(rs, _)) = self.ranges.iter().find(|&&r| overlap(r, (s, e)) > 0) {
                sections_by_node[self.zone_of(rs.max(s)).0].push(nr);
            }
        }
        let section_bytes = PAGES_PER_SECTION * core::mem::size_of::<Page>() as u64;
        let mut memmap_pages = 0;
        for (k, secs) in sections_by_node.iter().enumerate() {
            if secs.is_empty() {
                continue;
            }
            let bytes = align_up(secs.len() as u64 * section_bytes, PAGE_SIZE);
            let pa = self
                .memblock
                .alloc_try_nid(bytes, PAGE_SIZE, k)
                .ok_or_else(|| {
                    BootError::Machine(format!(
                        "cannot allocate {} KiB of mem_map for node {k}",
                        bytes >> 10
                    ))
                })?;
            memmap_pages += bytes >> PAGE_SHIFT;
            for (i, &nr) in secs.iter().enumerate() {
                let host = direct_map.ptr(pa + i as u64 * section_bytes) as *mut Page;
                // SAFETY: [pa, pa + bytes) is RAM below max_pfn (memblock allocated it from the
                // e820 usable ranges), the platform maps it (`setup_arch` checked ram_end), it
                // is page-aligned, and memblock reserved it so nothing else will use it.
                unsafe { mem_map.install_section(nr, host, |pfn| self.zone_of(pfn)) };
            }
        }
        Ok((mem_map, memmap_pages))
    }

    /// `init_mem_mapping`'s page-table allocation: the kernel's top-level table
    /// (`init_top_pgt`) is a zeroed page of memblock, not a buddy page. Returns its pfn.
    fn init_mem_mapping(&mut self, direct_map: DirectMap) -> Result<Pfn, BootError> {
        let pa = self
            .memblock
            .alloc_try_nid(PAGE_SIZE, PAGE_SIZE, 0)
            .ok_or_else(|| {
                BootError::Machine(String::from("no memory for the kernel page tables"))
            })?;
        // SAFETY: memblock just reserved this page of RAM below max_pfn for us alone.
        unsafe { core::ptr::write_bytes(direct_map.ptr(pa), 0, PAGE_SIZE as usize) };
        Ok(PhysAddr(pa).pfn_down())
    }

    /// `memmap_init`'s report of the holes inside present sections (`init_unavailable_range`:
    /// their struct pages stay reserved).
    fn memmap_init(&mut self, mem_map: &MemMap) {
        let mut lines = Vec::new();
        let mut hole = 0u64;
        let mut last_zone = (0usize, ZoneType::Dma);
        let mut last_end = 0;
        let count_valid = |a: u64, b: u64| (a..b).filter(|&p| mem_map.pfn_valid(Pfn(p))).count();
        for r in &self.memblock.memory.regions {
            let (s, e) = (PhysAddr(r.base).pfn_up().0, PhysAddr(r.end()).pfn_down().0);
            for (t, z) in self.plans[r.nid].iter().enumerate() {
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
                        lines.push(format!(
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
                lines.push(format!(
                    "On node {}, zone {}: {} pages in unavailable ranges",
                    last_zone.0,
                    last_zone.1.name(),
                    n
                ));
            }
        }
        self.log.extend(lines);
    }

    /// `free_area_init_node` for every node: its `pglist_data` and zones as sized.
    fn free_area_init_nodes(&self) -> Vec<PglistData> {
        self.plans
            .iter()
            .enumerate()
            .map(|(k, plan)| {
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
                            self.nr_cpus,
                        )
                    })
                    .collect();
                PglistData::new(k, zones)
            })
            .collect()
    }

    /// `build_all_zonelists`: each node's fallback list — nodes by distance, then zones
    /// from the highest down — and its own-node list, with Linux's report. Returns the
    /// present pages.
    fn build_all_zonelists(&mut self, nodes: &mut [PglistData], dist: &NumaDistance) -> u64 {
        let n_nodes = self.n_nodes;
        for k in 0..n_nodes {
            let order = mmzone::node_order(dist, k);
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
            self.say(line);
        }
        let physpages: u64 = nodes.iter().map(|n| n.node_present_pages).sum();
        self.say(format!(
            "Built {n_nodes} zonelists, mobility grouping on.  Total pages: {physpages}"
        ));
        let policy = if nodes.iter().any(|n| n.zone(ZoneType::Normal).populated()) {
            "Normal"
        } else {
            "DMA32"
        };
        self.say(format!("Policy zone: {policy}"));
        let cmdline = self.config.cmdline.clone();
        self.say(format!("Kernel command line: {cmdline}"));
        physpages
    }

    /// `setup_per_cpu_areas`: each CPU's state, CPUs round-robin over nodes as `numa=fake`
    /// hands them out.
    fn setup_per_cpu_areas(&self) -> PerCpu<CpuState> {
        let n_nodes = self.n_nodes;
        let nr_zones_total = n_nodes * MAX_NR_ZONES;
        PerCpu::new(self.nr_cpus, |c| CpuState {
            held: AtomicBool::new(false),
            node: c % n_nodes,
            vmstat: CpuVmStats::new(nr_zones_total, n_nodes),
            lru_add: SpinLock::new(crate::mm::swap::FolioBatch::new()),
            in_reclaim: AtomicBool::new(false),
        })
    }
}

impl Kernel {
    /// Boot a machine, in Linux's phases: `setup_arch` (the e820 map),
    /// `e820__memblock_setup`, `early_reserve_memory`, `numa_init`, `zone_sizes_init`
    /// (`free_area_init`'s sizing), `sparse_init`, `init_mem_mapping`, `memmap_init`,
    /// `free_area_init_node`s, `build_all_zonelists`, `setup_per_cpu_areas`; then, with the
    /// `Kernel` built, `mm_core_init`'s `mem_init` (`memblock_free_all`),
    /// `mem_init_print_info`, `kmem_cache_init` and `vmalloc_init`, and the
    /// `init_per_zone_wmark_min` initcall. The dmesg lines Linux prints go to the kernel log.
    pub fn boot(
        platform: Box<dyn Platform>,
        firmware_e820: &E820Table,
        cmdline: &str,
    ) -> Result<Kernel, BootError> {
        let config = BootConfig::parse(cmdline)?;
        let mut eb = EarlyBoot::setup_arch(&*platform, firmware_e820, config)?;
        eb.e820__memblock_setup();
        eb.early_reserve_memory()?;
        eb.numa_init()?;
        eb.zone_sizes_init();
        let direct_map = DirectMap::new(platform.direct_map_base());
        let (mem_map, memmap_pages) = eb.sparse_init(direct_map)?;
        let init_pgd = eb.init_mem_mapping(direct_map)?;
        eb.memmap_init(&mem_map);
        let mut nodes = eb.free_area_init_nodes();
        let dist = NumaDistance::uniform(eb.n_nodes);
        let physpages = eb.build_all_zonelists(&mut nodes, &dist);
        let cpus = eb.setup_per_cpu_areas();

        let EarlyBoot {
            config,
            nr_cpus,
            log,
            e820,
            max_pfn,
            max_low_pfn,
            memblock,
            image_sizes,
            image,
            zone_movable_pfn,
            ..
        } = eb;
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
            memblock: SpinLock::new(memblock),
            config: config.clone(),
            boot,
            tunables: SpinLock::new(config.wmark.clone()),
            min_free_kbytes: AtomicU64::new(0),
            log: SpinLock::new(crate::printk::LogBuf::default()),
            bad_pages: AtomicU64::new(0),
            slab: crate::mm::slab::SlabState::new(),
            slab_reports: AtomicU64::new(0),
            tlbs: crate::arch::x86_64::tlb::Tlbs::new(nr_cpus),
            next_ctx_id: AtomicU64::new(0),
            deferred_tables: SpinLock::new(Default::default()),
            vmap: SpinLock::new(crate::mm::vmalloc::VmapState::new()),
            init_mm: None,
            zero_pfn: PhysAddr(image.bss.0).pfn_down(),
            inodes: SpinLock::new(Default::default()),
            anon_vmas: crate::sync::RwLock::new(Default::default()),
            swap: SpinLock::new(Default::default()),
            swappiness: AtomicU64::new(60),
            thp: crate::mm::huge_memory::ThpState::new(config.thp_enabled, config.thp_anon),
            mthp_stats: Default::default(),
        };
        // empty_zero_page lives in the kernel's bss, which boot clears.
        k.clear_highpage(k.zero_pfn);
        for l in log {
            k.printk(&l);
        }

        // The kernel page tables (init_mm) on the static PGD.
        k.init_mm = Some(k.pgd_static(init_pgd));
        // mm_core_init.
        k.mem_init();
        k.mem_init_print_info();
        k.kmem_cache_init();
        k.vmalloc_init();
        // core_initcall(init_per_zone_wmark_min).
        k.init_per_zone_wmark_min();
        Ok(k)
    }

    /// `mem_init` → `memblock_free_all`: every free range into the buddy allocator; what
    /// the zones then manage is `totalram_pages` at boot.
    fn mem_init(&mut self) {
        self.memblock_free_all();
        self.boot.totalram_at_boot = self.totalram_pages();
    }

    /// `kmem_cache_init`: the kmalloc caches (with `slab_debug` on every cache when the
    /// command line asks).
    fn kmem_cache_init(&self) {
        self.slab.debug_all.store(self.config.slab_debug, Relaxed);
        self.create_kmalloc_caches();
    }

    /// `mem_init_print_info`: the `Memory: …K/…K available (…)` line.
    fn mem_init_print_info(&self) {
        let s = &self.boot.image_sizes;
        let kb = |b: u64| b >> 10;
        let physpages = self.boot.physpages;
        self.printk(&format!(
            "Memory: {}K/{}K available ({}K kernel code, {}K rwdata, {}K rodata, {}K init, {}K bss, {}K reserved, 0K cma-reserved)",
            self.global_free_pages() << (PAGE_SHIFT - 10),
            physpages << (PAGE_SHIFT - 10),
            kb(s.code),
            kb(s.rwdata),
            kb(s.rodata),
            kb(s.init),
            kb(s.bss),
            (physpages - self.boot.totalram_at_boot) << (PAGE_SHIFT - 10)
        ));
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
                    self.free_pages_core(nid, zt, Pfn(a), order);
                    a += 1 << order;
                }
            }
        }
    }

    /// `__free_pages_core`: a boot-reserved block becomes managed and free.
    fn free_pages_core(&self, nid: usize, zt: ZoneType, pfn: Pfn, order: u32) {
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
}
