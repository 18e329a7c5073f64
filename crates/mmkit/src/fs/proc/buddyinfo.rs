//! `/proc/buddyinfo` (`frag_show`) and `/proc/pagetypeinfo` (`pagetypeinfo_show`).

use crate::mm::mmzone::Zone;
use crate::mm::page_alloc::{
    MIGRATE_TYPES, MIGRATE_TYPE_LIST, NR_PAGE_ORDERS, PAGEBLOCK_NR_PAGES, PAGEBLOCK_ORDER,
};
use crate::Kernel;
use alloc::string::String;
use core::fmt::Write;

fn populated(k: &Kernel) -> impl Iterator<Item = &Zone> {
    k.nodes
        .iter()
        .flat_map(|n| n.zones.iter())
        .filter(|z| z.populated())
}

/// Free blocks per order of one zone (`free_area[order].nr_free`).
pub fn zone_nr_free(z: &Zone) -> [u64; NR_PAGE_ORDERS] {
    z.free_area.lock().nr_free
}

/// `/proc/buddyinfo`.
pub fn buddyinfo(k: &Kernel) -> String {
    let mut s = String::new();
    for z in populated(k) {
        let _ = write!(s, "Node {}, zone {:>8} ", z.node, z.zone_type.name());
        for n in zone_nr_free(z) {
            let _ = write!(s, "{n:6} ");
        }
        s.push('\n');
    }
    s
}

/// `/proc/pagetypeinfo`.
pub fn pagetypeinfo(k: &Kernel) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Page block order: {PAGEBLOCK_ORDER}");
    let _ = writeln!(s, "Pages per block:  {PAGEBLOCK_NR_PAGES}");
    s.push('\n');
    let _ = write!(s, "{:<43} ", "Free pages count per migrate type at order");
    for o in 0..NR_PAGE_ORDERS {
        let _ = write!(s, "{o:6} ");
    }
    s.push('\n');
    for z in populated(k) {
        let counts: [[u64; NR_PAGE_ORDERS]; MIGRATE_TYPES] = {
            let fa = z.free_area.lock();
            core::array::from_fn(|mt| {
                core::array::from_fn(|o| {
                    fa.lists[o][mt].iter(k.mem_map()).take(100_000).count() as u64
                })
            })
        };
        for mt in MIGRATE_TYPE_LIST {
            let _ = write!(
                s,
                "Node {:4}, zone {:>8}, type {:>12} ",
                z.node,
                z.zone_type.name(),
                mt.name()
            );
            for c in counts[mt as usize] {
                let over = if c >= 100_000 { ">" } else { "" };
                let _ = write!(s, "{over}{c:6} ");
            }
            s.push('\n');
        }
    }
    let _ = write!(s, "\n{:<23}", "Number of blocks type ");
    for mt in MIGRATE_TYPE_LIST {
        let _ = write!(s, "{:>12} ", mt.name());
    }
    s.push('\n');
    for z in populated(k) {
        let mut count = [0u64; MIGRATE_TYPES];
        let mut pfn = z.zone_start_pfn;
        while pfn < z.end_pfn() {
            if let Some(p) = k.pfn_to_page(crate::Pfn(pfn)) {
                if p.zonenum() == z.zone_type && p.nid() == z.node {
                    count[z.pageblock_migratetype(crate::Pfn(pfn)) as usize] += 1;
                }
            }
            pfn += PAGEBLOCK_NR_PAGES;
        }
        let _ = write!(s, "Node {}, zone {:>8} ", z.node, z.zone_type.name());
        for c in count {
            let _ = write!(s, "{c:12} ");
        }
        s.push('\n');
    }
    s
}
