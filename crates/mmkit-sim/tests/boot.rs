//! Boot: e820 handling, zone figures for the default machine, NUMA and movable zones.

mod common;
use mmkit::arch::x86_64::e820::{E820Error, E820Table};
use mmkit::mm::mmzone::ZoneType;
use mmkit::{BootError, Kernel};
use mmkit_sim::machine::{SimPlatform, DEFAULT_E820};
use mmkit_sim::{Machine, MachineSpec};

/// The default machine (seed 003's map) gets exactly the zone figures Linux computes for it.
///
/// Usable RAM after `e820: update [mem 0x0-0xfff] usable ==> reserved`, in pfns:
/// [0x1, 0x58) 87, [0x59, 0x9d) 68, [0x100, 0xcc8e3) 837859, [0xcc90e, 0xd6203) 39157,
/// [0xd7fff, 0xd8000) 1, [0x100000, 0x223800) 1193984.
/// DMA   = [1, 0x1000): spanned 4095, present 87 + 68 + (0x1000 - 0x100 = 3840) = 3995.
/// DMA32 = [0x1000, 0x100000) (the node reaches past 4 GiB, so the zone spans to the arch
///         limit): spanned 1044480, present (0xcc8e3 - 0x1000 = 833763) + 39157 + 1 = 872921.
/// Normal= [0x100000, 0x223800): spanned = present = 1193984.
/// Managed = present - boot reservations in the zone:
///   DMA: the first MiB (x86 reserves it whole): the 155 present pages below 0x100 -> 3840.
///   DMA32: the kernel image at 16 MiB, 18478K code, then rodata (10280K) at the next 2 MiB
///     boundary, then data 2544K + init 3728K at the next, then bss 1168K: it ends at
///     0x3744000, so [0x1000, 0x3744) = 10052 pages -> 862869.
///   Normal: mem_map, allocated top-down from memblock: 64 sections with RAM, each
///     32768 pages x 40 bytes = 1.25 MiB -> 20480 pages; and the kernel's PGD
///     (init_top_pgt), one page -> 1193984 - 20481 = 1173503.
#[test]
fn default_machine_zone_figures() {
    let m = Machine::boot(&MachineSpec::default()).unwrap();
    let k = &m.kernel;
    assert_eq!(k.nodes.len(), 1);
    let n = &k.nodes[0];
    let fig = |t: ZoneType| {
        let z = n.zone(t);
        (
            z.zone_start_pfn,
            z.spanned_pages,
            z.present_pages,
            z.managed(),
        )
    };
    assert_eq!(fig(ZoneType::Dma), (1, 4095, 3995, 3840));
    assert_eq!(fig(ZoneType::Dma32), (0x1000, 1_044_480, 872_921, 862_869));
    assert_eq!(
        fig(ZoneType::Normal),
        (0x100000, 1_193_984, 1_193_984, 1_173_503)
    );
    assert!(!n.zone(ZoneType::Movable).populated());
    assert_eq!(k.boot.max_pfn, 0x223800);
    assert_eq!(k.boot.max_low_pfn, 0xd8000);
    assert_eq!(k.boot.memmap_pages, 20480);
    // mem_map overhead stays at or under 1% of RAM.
    assert!(
        k.boot.memmap_pages * 100 <= k.boot.physpages,
        "{} of {}",
        k.boot.memmap_pages,
        k.boot.physpages
    );
    // Every managed page is free right after boot.
    assert_eq!(k.global_free_pages(), 3840 + 862_869 + 1_173_503);
    k.check_invariants().unwrap();

    let log = k.dmesg().join("\n");
    for line in [
        "e820: update [mem 0x00000000-0x00000fff] usable ==> reserved",
        "e820: remove [mem 0x000a0000-0x000fffff] usable",
        "BIOS-e820: [mem 0x0000000100000000-0x00000002237fffff] usable",
        "last_pfn = 0x223800 max_arch_pfn = 0x400000000",
        "  DMA      [mem 0x0000000000001000-0x0000000000ffffff]",
        "  DMA32    [mem 0x0000000001000000-0x00000000ffffffff]",
        "  Normal   [mem 0x0000000100000000-0x00000002237fffff]",
        "On node 0, zone DMA: 99 pages in unavailable ranges",
        "On node 0, zone DMA32: 7676 pages in unavailable ranges",
        "On node 0, zone Normal: 18432 pages in unavailable ranges",
        "Built 1 zonelists, mobility grouping on.  Total pages: 2070900",
    ] {
        assert!(log.contains(line), "boot log lacks `{line}`:\n{log}");
    }
}

/// min_free_kbytes = int_sqrt(lowmem_kbytes * 16), shared out by managed pages; low and high
/// step by max(min/4, managed/1000).
#[test]
fn watermarks_follow_linux_formulas() {
    let m = Machine::boot(&MachineSpec::default()).unwrap();
    let k = &m.kernel;
    let managed = 3840u64 + 862_869 + 1_173_503;
    let mfk = mmkit::addr::int_sqrt(managed * 4 * 16);
    assert_eq!(k.min_free_kbytes(), mfk);
    let pages_min = mfk / 4;
    use mmkit::mm::mmzone::Wmark;
    for z in k.nodes[0].zones.iter().filter(|z| z.populated()) {
        let min = pages_min * z.managed() / managed;
        let step = (min / 4).max(z.managed() * 10 / 10_000);
        assert_eq!(z.wmark(Wmark::Min), min, "{}", z.zone_type.name());
        assert_eq!(z.wmark(Wmark::Low), min + step);
        assert_eq!(z.wmark(Wmark::High), min + 2 * step);
    }
    // lowmem_reserve: DMA keeps (DMA32 + Normal managed) / 256 from Normal allocations.
    let dma = k.nodes[0].zone(ZoneType::Dma);
    assert_eq!(
        dma.lowmem_reserve[2].load(std::sync::atomic::Ordering::Relaxed),
        (862_869 + 1_173_503) / 256
    );
    // A sysctl write recomputes them.
    k.set_min_free_kbytes(65536).unwrap();
    let total_min: u64 = k.nodes[0]
        .zones
        .iter()
        .filter(|z| z.populated())
        .map(|z| z.wmark(Wmark::Min))
        .sum();
    assert!((16384 - 3..=16384).contains(&total_min), "{total_min}");
    // An int sysctl with a floor of 0, as Linux's: above INT_MAX is EINVAL, 0 is taken.
    assert_eq!(
        k.set_min_free_kbytes(1 << 31),
        Err(mmkit::Errno::EINVAL),
        "above INT_MAX"
    );
    k.set_min_free_kbytes(0).unwrap();
    assert!(k
        .nodes
        .iter()
        .flat_map(|n| n.zones.iter())
        .filter(|z| z.zone_type != ZoneType::Movable)
        .all(|z| z.wmark(Wmark::Min) == 0));
}

#[test]
fn bad_maps_are_clear_errors() {
    // No usable RAM at all.
    let e = E820Table::parse("BIOS-e820: [mem 0x0-0xfffff] reserved").unwrap();
    let spec = MachineSpec {
        e820: e,
        cpus: 1,
        cmdline: String::new(),
    };
    let err = Machine::boot(&spec).err().unwrap().to_string();
    assert!(err.contains("no usable RAM"), "{err}");
    // Only the first page is usable: after trim_bios_range nothing is left.
    let e = E820Table::parse("BIOS-e820: [mem 0x0-0xfff] usable").unwrap();
    let err = Machine::boot(&MachineSpec {
        e820: e,
        cpus: 1,
        cmdline: String::new(),
    })
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("no usable RAM"), "{err}");
    // RAM only below 16 MiB: no room for the kernel image.
    let e = E820Table::parse(
        "BIOS-e820: [mem 0x0-0x9ffff] usable\nBIOS-e820: [mem 0x100000-0xffffff] usable",
    )
    .unwrap();
    let err = Machine::boot(&MachineSpec {
        e820: e,
        cpus: 1,
        cmdline: String::new(),
    })
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("kernel image"), "{err}");
    // A typo on the command line.
    let spec = MachineSpec {
        cmdline: "movablecor=1G".into(),
        ..MachineSpec::default()
    };
    let err = Machine::boot(&spec).err().unwrap().to_string();
    assert!(err.contains("movablecor=1G"), "{err}");
    // A platform that maps less RAM than the map needs.
    let p = SimPlatform::new(64 << 20, 1).unwrap();
    let r = Kernel::boot(Box::new(p), &E820Table::parse(DEFAULT_E820).unwrap(), "");
    assert!(matches!(r, Err(BootError::RamTooSmall { .. })));
    // Malformed lines name the line.
    let err = E820Table::parse("junk\nBIOS-e820: [mem 0x0-0x9ffff usable").unwrap_err();
    assert!(matches!(err, E820Error::Malformed { line: 2, .. }), "{err}");
}

#[test]
fn overlapping_firmware_entries_are_sanitized_at_boot() {
    // Firmware reports RAM overlapping a reserved hole and a duplicate entry.
    let text = "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable\n\
                BIOS-e820: [mem 0x0000000000100000-0x000000001fffffff] usable\n\
                BIOS-e820: [mem 0x0000000008000000-0x00000000080fffff] reserved\n\
                BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable\n";
    let spec = MachineSpec {
        e820: E820Table::parse(text).unwrap(),
        cpus: 1,
        cmdline: String::new(),
    };
    let m = Machine::boot(&spec).unwrap();
    let log = m.kernel.dmesg().join("\n");
    assert!(
        log.contains("BIOS-e820: [mem 0x0000000008000000-0x00000000080fffff] reserved"),
        "{log}"
    );
    assert!(
        log.contains("BIOS-e820: [mem 0x0000000000100000-0x0000000007ffffff] usable"),
        "{log}"
    );
    // The reserved hole is never handed out: no free page has a pfn in it.
    let k = &m.kernel;
    m.on_cpu(0, |cpu| {
        let v = common::exhaust(k, cpu, mmkit::gfp::GFP_KERNEL | mmkit::Gfp::__GFP_HIGH, 0);
        for p in &v {
            let pfn = k.page_to_pfn(p).0;
            assert!(
                !(0x8000..0x8100).contains(&pfn),
                "reserved pfn {pfn:#x} handed out"
            );
        }
        common::free_all(k, cpu, v, 0);
    });
    k.check_invariants().unwrap();
}

#[test]
fn numa_fake_nodes_and_zonelists() {
    let m = common::boot_mem(2048, 2, "numa=fake=2");
    let k = &m.kernel;
    assert_eq!(k.nodes.len(), 2);
    // Node 1's zonelist starts with its own zones, then node 0's, highest zone first.
    let zl = &k.nodes[1].zonelist_fallback;
    assert_eq!(zl[0].0, 1);
    assert_eq!(zl.last().unwrap(), &(0, ZoneType::Dma));
    assert!(k.nodes[1].zonelist_nofallback.iter().all(|z| z.0 == 1));
    let total: u64 = k.nodes.iter().map(|n| n.node_present_pages).sum();
    let diff = k.nodes[0]
        .node_present_pages
        .abs_diff(k.nodes[1].node_present_pages);
    assert!(diff <= 32768 * 2, "nodes unbalanced: {diff} of {total}");
    assert!(k
        .dmesg()
        .iter()
        .any(|l| l.contains("Fallback order for Node 1: 1 0 ")));
    k.check_invariants().unwrap();
}

#[test]
fn movablecore_creates_zone_movable() {
    let m = common::boot_mem(8192, 1, "movablecore=1G");
    let k = &m.kernel;
    let mov = k.nodes[0].zone(ZoneType::Movable);
    assert!(mov.populated());
    assert_eq!(mov.zone_start_pfn % 1024, 0);
    // About 1 GiB (rounded to a MAX_ORDER block).
    assert!(
        mov.present_pages.abs_diff(262_144) <= 1024,
        "{}",
        mov.present_pages
    );
    let normal = k.nodes[0].zone(ZoneType::Normal);
    assert_eq!(normal.end_pfn(), mov.zone_start_pfn);
    assert!(k.dmesg().iter().any(|l| l.contains("  Node 0: 0x")));
    k.check_invariants().unwrap();
}

/// `mem_map` as boot laid it out in the machine's RAM (the type's size is a compile-time
/// assertion in `mm/page.rs`): 40 bytes a page, section after section, 320 pages of
/// memblock per 128 MiB section (what `nr_memmap_boot_pages` shows), in frames that are
/// reserved RAM the buddy allocator never hands out.
#[test]
fn mem_map_is_40_bytes_a_page_in_reserved_ram() {
    use mmkit::mm::page::{PageFlags, PAGES_PER_SECTION};
    let m = common::boot_mem(1024, 1, "numa=fake=2");
    let k = &m.kernel;
    let base = k.platform().direct_map_base() as usize;
    let ram_end = base + (k.boot.max_pfn << 12) as usize;
    let sections: Vec<usize> = k.mem_map().present_sections().collect();
    assert_eq!(
        sections.len() as u64,
        k.boot.max_pfn.div_ceil(PAGES_PER_SECTION)
    );
    assert_eq!(
        k.boot.memmap_pages,
        sections.len() as u64 * PAGES_PER_SECTION * 40 / 4096
    );
    let vmstat = mmkit::fs::proc::vmstat::vmstat(k);
    assert!(
        vmstat.contains(&format!("\nnr_memmap_boot_pages {}\n", k.boot.memmap_pages)),
        "{vmstat}"
    );
    let addr = |pfn: u64| k.mem_map().page(mmkit::Pfn(pfn)) as *const mmkit::Page as usize;
    for &nr in &sections {
        let first = nr as u64 * PAGES_PER_SECTION;
        for pfn in [
            first,
            first + 1,
            first + 4095,
            first + PAGES_PER_SECTION - 2,
        ] {
            assert_eq!(addr(pfn + 1) - addr(pfn), 40, "pfn {pfn:#x}");
        }
        let (lo, hi) = (addr(first), addr(first + PAGES_PER_SECTION - 1) + 40);
        assert_eq!(hi - lo, (PAGES_PER_SECTION * 40) as usize);
        assert!(lo >= base && hi <= ram_end, "section {nr} outside RAM");
        for frame in ((lo - base) >> 12)..=((hi - 1 - base) >> 12) {
            let p = k.mem_map().page(mmkit::Pfn(frame as u64));
            assert!(p.test(PageFlags::RESERVED), "mem_map frame {frame:#x}");
        }
    }
}

/// A 64 GiB machine with 4 fake nodes: every node gets a quarter of RAM (on section
/// boundaries), ZONE_DMA and DMA32 only on node 0, mem_map at most 1% of RAM, and the
/// accounting balances.
#[test]
fn big_numa_machine() {
    let m = common::boot_mem(64 << 10, 4, "numa=fake=4");
    let k = &m.kernel;
    assert_eq!(k.nodes.len(), 4);
    let total: u64 = k.nodes.iter().map(|n| n.node_present_pages).sum();
    for n in &k.nodes {
        assert!(
            n.node_present_pages.abs_diff(total / 4) <= 32768,
            "node {} has {}",
            n.node_id,
            n.node_present_pages
        );
        assert_eq!(n.zonelist_fallback[0].0, n.node_id);
        assert_eq!(n.zone(ZoneType::Dma).populated(), n.node_id == 0);
    }
    assert!(k.boot.memmap_pages * 100 <= k.boot.physpages);
    assert_eq!(k.global_free_pages(), k.totalram_pages());
    // CPUs are spread over nodes.
    assert_eq!(m.on_cpu(3, |cpu| cpu.node()), 3);
}

/// The kernel log is a ring: old lines go, the count of lines ever logged goes on.
#[test]
fn kernel_log_is_a_bounded_ring() {
    let m = common::boot_mem(128, 1, "");
    let k = &m.kernel;
    let (_, start) = k.dmesg_since(0);
    for i in 0..mmkit::LOG_LINES + 10 {
        k.printk(&format!("line {i}"));
    }
    let log = k.dmesg();
    assert_eq!(log.len(), mmkit::LOG_LINES + 1);
    // The lines pushed out are counted, as Linux's console says it.
    assert!(
        log[0].ends_with(&format!("] ** {} printk messages dropped **", start + 10)),
        "{}",
        log[0]
    );
    assert!(log[1].ends_with("] line 10"), "{}", log[1]);
    let (tail, next) = k.dmesg_since(start + mmkit::LOG_LINES as u64 + 8);
    assert_eq!(tail.len(), 2);
    assert!(tail[1].ends_with(&format!("line {}", mmkit::LOG_LINES + 9)));
    assert_eq!(next, start + mmkit::LOG_LINES as u64 + 10);
}

/// `Zone ranges:` as `free_area_init` prints it when RAM starts above 16 MiB: each zone starts
/// where the one below it ended, and no earlier than the first RAM, so DMA is empty and DMA32
/// starts at the first RAM rather than at 16 MiB.
#[test]
fn zone_ranges_when_ram_starts_above_16m() {
    let text = "BIOS-e820: [mem 0x0000000002000000-0x000000003fffffff] usable\n\
                BIOS-e820: [mem 0x0000000100000000-0x000000013fffffff] usable\n";
    let m = Machine::boot(&MachineSpec {
        e820: E820Table::parse(text).unwrap(),
        cpus: 1,
        cmdline: String::new(),
    })
    .unwrap();
    let log = m.kernel.dmesg();
    let at = log
        .iter()
        .position(|l| l.ends_with("] Zone ranges:"))
        .unwrap();
    let tail = |l: &String| l.split_once("] ").unwrap().1.to_string();
    let got: Vec<String> = log[at + 1..at + 5].iter().map(tail).collect();
    assert_eq!(
        got,
        [
            "  DMA      empty",
            "  DMA32    [mem 0x0000000002000000-0x00000000ffffffff]",
            "  Normal   [mem 0x0000000100000000-0x000000013fffffff]",
            "  Device   empty",
        ]
    );
}

/// A firmware map of 100,000 entries boots in well under a second in release builds (it took
/// 36-59 s when sanitizing and memblock were quadratic); the log's first line says how many
/// lines the ring lost, and every entry was taken: the RAM figures are exact.
#[test]
fn a_100000_entry_map_boots_fast() {
    let mut text = String::from(
        "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable\n\
         BIOS-e820: [mem 0x000000000009fc00-0x00000000000fffff] reserved\n\
         BIOS-e820: [mem 0x0000000000100000-0x000000007fffffff] usable\n",
    );
    let mut a = 1u64 << 32;
    for i in 0..100_000 {
        let typ = if i % 2 == 0 { "usable" } else { "reserved" };
        text.push_str(&format!(
            "BIOS-e820: [mem {a:#018x}-{:#018x}] {typ}\n",
            a + 0xffff
        ));
        a += 0x10000;
    }
    let t = std::time::Instant::now();
    let m = Machine::boot(&MachineSpec {
        e820: E820Table::parse(&text).unwrap(),
        cpus: 1,
        cmdline: String::new(),
    })
    .unwrap();
    let took = t.elapsed();
    // Debug builds are ~10x slower than release; the quadratic version took minutes here.
    assert!(took.as_secs() < 30, "boot took {took:?}");
    let log = m.kernel.dmesg();
    assert!(
        log[0].contains(" printk messages dropped **"),
        "the ring says what it lost: {}",
        log[0]
    );
    // RAM: [1, 0x9f) + [0x100, 0x80000) + 50,000 pieces of 16 pages.
    assert_eq!(
        m.kernel.boot.physpages,
        (0x9f - 1) + (0x80000 - 0x100) + 50_000 * 16
    );
    m.kernel.check_invariants().unwrap();
}

/// `soft reserved` entries keep their name through boot's printing and /proc/iomem.
#[test]
fn soft_reserved_is_printed_by_name() {
    let text = "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable\n\
                BIOS-e820: [mem 0x0000000000100000-0x000000003fffffff] usable\n\
                BIOS-e820: [mem 0x0000000040000000-0x000000004fffffff] soft reserved\n";
    let m = Machine::boot(&MachineSpec {
        e820: E820Table::parse(text).unwrap(),
        cpus: 1,
        cmdline: String::new(),
    })
    .unwrap();
    let log = m.kernel.dmesg().join("\n");
    assert!(
        log.contains("BIOS-e820: [mem 0x0000000040000000-0x000000004fffffff] soft reserved"),
        "{log}"
    );
    assert!(!log.contains("type 4026531839"));
    let iomem = mmkit::fs::proc::iomem::iomem(&m.kernel);
    assert!(
        iomem.contains("40000000-4fffffff : Soft Reserved"),
        "{iomem}"
    );
}
