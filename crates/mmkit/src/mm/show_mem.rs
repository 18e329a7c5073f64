//! `mm/show_mem.c`: `show_free_areas` (the per-zone summary and per-order free-block
//! breakdown printed with a page allocation failure, `warn_alloc`) and the machine-wide
//! page figures `si_meminfo` reports (`totalram_pages`, free pages). They live with the
//! allocator, not with the `/proc` views or boot, so the layers that need them (the page
//! allocator, slab, vmalloc, the OOM killer) do not call up.

use crate::mm::mmzone::Wmark;
use crate::mm::page_alloc::NR_PAGE_ORDERS;
use crate::{Kernel, PAGE_SHIFT};
use alloc::string::String;
use core::fmt::Write;

/// `show_free_areas`: the per-zone summary and per-order breakdown printed with an
/// allocation failure.
pub fn show_free_areas(k: &Kernel) -> String {
    let mut s = String::new();
    let k4 = |p: u64| p << (PAGE_SHIFT - 10);
    for z in k
        .nodes
        .iter()
        .flat_map(|n| n.zones.iter())
        .filter(|z| z.populated())
    {
        let pcp: u64 = z.pcp.iter().map(|p| p.lock().count as u64).sum();
        let _ = writeln!(
            s,
            "Node {} {} free:{}kB boost:0kB min:{}kB low:{}kB high:{}kB reserved_highatomic:{}KB present:{}kB managed:{}kB free_pcp:{}kB",
            z.node,
            z.zone_type.name(),
            k4(z.free_pages().max(0) as u64),
            k4(z.wmark(Wmark::Min)),
            k4(z.wmark(Wmark::Low)),
            k4(z.wmark(Wmark::High)),
            k4(z.nr_reserved_highatomic.load(core::sync::atomic::Ordering::Relaxed)),
            k4(z.present_pages),
            k4(z.managed()),
            k4(pcp)
        );
        let _ = write!(s, "lowmem_reserve[]:");
        for r in &z.lowmem_reserve {
            let _ = write!(s, " {}", r.load(core::sync::atomic::Ordering::Relaxed));
        }
        s.push('\n');
    }
    for z in k
        .nodes
        .iter()
        .flat_map(|n| n.zones.iter())
        .filter(|z| z.populated())
    {
        let nr = z.free_area.lock().nr_free;
        let _ = write!(s, "Node {} {}:", z.node, z.zone_type.name());
        let mut total = 0;
        for (o, n) in nr.iter().enumerate().take(NR_PAGE_ORDERS) {
            let _ = write!(s, " {}*{}kB", n, 4u64 << o);
            total += n * (4 << o);
        }
        let _ = writeln!(s, " = {total}kB");
    }
    s
}

impl Kernel {
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
