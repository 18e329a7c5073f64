//! `check_invariants()` for the page allocator: what must hold between the free lists, the
//! page flags, the counters and the per-CPU lists whenever no lock is held.
//!
//! - every block on `free_area[o].free_list[mt]` is `PG_buddy`, has order `o` in `private`
//!   and `mt` in `index`, is aligned to `2^o`, lies inside its zone, and the list links agree
//!   in both directions;
//! - `nr_free[o]` equals the blocks on the order-`o` lists; `NR_FREE_PAGES` equals the free
//!   pages outside Isolate blocks; `NR_FREE_PAGES_BLOCKS` the free pages in blocks of at
//!   least pageblock order;
//! - scanning `mem_map`, every `PG_buddy` page heads a listed block, no page inside a free
//!   block is `PG_buddy` or referenced, and free blocks never overlap;
//! - every compound head (`PG_head`) is followed by exactly `2^order - 1` tail pages, each
//!   `PG_tail` with its distance from the head, unreferenced (the head holds the folio's
//!   references), off every list and not `PG_buddy`; no tail page stands without its head;
//! - each pcp list holds pages of its order that are not `PG_buddy` and have no references,
//!   and `count` equals the pages on the lists;
//! - `nr_reserved_highatomic` is a pageblock per HighAtomic pageblock.

use super::{MigrateType, MIGRATE_TYPES, NR_PAGE_ORDERS, PAGEBLOCK_NR_PAGES, PAGEBLOCK_ORDER};
use crate::addr::Pfn;
use crate::mm::mmzone::{Zone, NR_FREE_PAGES, NR_FREE_PAGES_BLOCKS};
use crate::mm::page::{MemMap, PageFlags};
use crate::mm::page_alloc::pcp::pindex_to_order;
use crate::Kernel;
use alloc::format;
use alloc::string::String;
use core::sync::atomic::Ordering::Relaxed;

impl Kernel {
    /// Check every page-allocator invariant (see the module doc). Takes each zone lock and
    /// pcp lock in turn; call it when no other CPU is allocating, or accept that counters
    /// may move between zones.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.memblock
            .lock()
            .check_invariants()
            .map_err(String::from)?;
        for z in self.nodes.iter().flat_map(|n| n.zones.iter()) {
            check_zone(&self.mem_map, z)
                .map_err(|e| format!("node {} zone {}: {e}", z.node, z.zone_type.name()))?;
        }
        Ok(())
    }
}

fn check_zone(mm: &MemMap, z: &Zone) -> Result<(), String> {
    if !z.populated() {
        return Ok(());
    }
    let fa = z.free_area.lock();
    let mut free_pages = 0i64;
    let mut free_blocks_pages = 0i64;
    let mut heads = 0u64;
    for o in 0..NR_PAGE_ORDERS {
        let mut n = 0;
        for mt in 0..MIGRATE_TYPES {
            let list = &fa.lists[o][mt];
            let mut prev = None;
            for pfn in list.iter(mm) {
                let p = mm.page(pfn);
                if !z.spans(pfn) || pfn.0 & ((1 << o) - 1) != 0 {
                    return Err(format!(
                        "free block {pfn:#x} order {o} misaligned or outside the zone"
                    ));
                }
                if !p.test(PageFlags::BUDDY)
                    || p.buddy_order() != o as u32
                    || p.index() != mt as u64
                {
                    return Err(format!("free block {pfn:#x} on list order {o} type {mt} has buddy={} order={} type={}", p.test(PageFlags::BUDDY), p.buddy_order(), p.index()));
                }
                if p.refcount() != 0 {
                    return Err(format!("free block {pfn:#x} has refcount {}", p.refcount()));
                }
                // free_pages_prepare cleared every flag; only the buddy marker is set since.
                if p.flags() != PageFlags::BUDDY {
                    return Err(format!("free block {pfn:#x} has flags {:?}", p.flags()));
                }
                let back = if p.prev() == crate::mm::page::NIL {
                    None
                } else {
                    Some(Pfn(p.prev() as u64))
                };
                if back != prev {
                    return Err(format!("free list link broken at {pfn:#x}"));
                }
                prev = Some(pfn);
                n += 1;
                if mt != MigrateType::Isolate as usize {
                    free_pages += 1 << o;
                    if o as u32 >= PAGEBLOCK_ORDER {
                        free_blocks_pages += 1 << o;
                    }
                }
            }
            if list.last() != prev {
                return Err(format!(
                    "free list order {o} type {mt}: tail does not match"
                ));
            }
        }
        if n != fa.nr_free[o] {
            return Err(format!(
                "nr_free[{o}] = {} but the lists hold {n}",
                fa.nr_free[o]
            ));
        }
        heads += n;
    }
    if free_pages != z.stat(NR_FREE_PAGES) {
        return Err(format!(
            "NR_FREE_PAGES = {} but the lists hold {free_pages}",
            z.stat(NR_FREE_PAGES)
        ));
    }
    if free_blocks_pages != z.stat(NR_FREE_PAGES_BLOCKS) {
        return Err(format!(
            "NR_FREE_PAGES_BLOCKS = {} but the lists hold {free_blocks_pages}",
            z.stat(NR_FREE_PAGES_BLOCKS)
        ));
    }
    // Scan mem_map: buddy heads match the lists; free blocks do not overlap.
    let mut seen = 0u64;
    let mut pfn = Pfn(z.zone_start_pfn);
    while pfn.0 < z.end_pfn() {
        if !mm.pfn_valid(pfn) {
            pfn += 1;
            continue;
        }
        let p = mm.page(pfn);
        if p.test(PageFlags::BUDDY) {
            seen += 1;
            let o = p.buddy_order() as u64;
            for i in 1..(1 << o) {
                let q = mm.page(pfn + i);
                if q.test(PageFlags::BUDDY) || q.refcount() != 0 {
                    return Err(format!(
                        "page {:#x} inside free block {pfn:#x} is buddy or referenced",
                        pfn + i
                    ));
                }
            }
            pfn += 1 << o;
        } else if p.test(PageFlags::HEAD) {
            pfn = check_compound(mm, z, pfn)?;
        } else if p.test(PageFlags::TAIL) {
            return Err(format!("tail page {pfn:#x} without its compound head"));
        } else {
            pfn += 1;
        }
    }
    if seen != heads {
        return Err(format!(
            "{seen} PG_buddy heads in mem_map but {heads} blocks on free lists"
        ));
    }
    let ha = (0..z.pageblock_mt.len())
        .filter(|&i| z.pageblock_mt[i].load(Relaxed) == MigrateType::HighAtomic as u8)
        .count() as u64;
    if ha * PAGEBLOCK_NR_PAGES != z.nr_reserved_highatomic.load(Relaxed) {
        return Err(format!(
            "{ha} HighAtomic pageblocks but nr_reserved_highatomic = {}",
            z.nr_reserved_highatomic.load(Relaxed)
        ));
    }
    drop(fa);
    for (cpu, pcp) in z.pcp.iter().enumerate() {
        let pcp = pcp.lock();
        let mut count = 0u32;
        for (i, l) in pcp.lists.iter().enumerate() {
            let o = pindex_to_order(i);
            for pfn in l.iter(mm) {
                let p = mm.page(pfn);
                if !z.spans(pfn)
                    || p.test(PageFlags::BUDDY)
                    || p.refcount() != 0
                    || pfn.0 & ((1 << o) - 1) != 0
                {
                    return Err(format!("cpu {cpu} pcp list {i}: bad page {pfn:#x}"));
                }
                count += 1 << o;
            }
        }
        if count != pcp.count {
            return Err(format!(
                "cpu {cpu} pcp count {} but lists hold {count}",
                pcp.count
            ));
        }
    }
    Ok(())
}

/// The tails of the compound block headed at `head`; returns the pfn after the block.
fn check_compound(mm: &MemMap, z: &Zone, head: Pfn) -> Result<Pfn, String> {
    let h = mm.page(head);
    let mut n = 1u64;
    while z.spans(head + n) && mm.pfn_valid(head + n) {
        let t = mm.page(head + n);
        if !t.test(PageFlags::TAIL) || t.private() as u64 != n {
            break;
        }
        if t.refcount() != 0
            || t.flags()
                .intersects(PageFlags::BUDDY | PageFlags::LRU | PageFlags::HEAD)
        {
            return Err(format!(
                "tail page {:#x} of compound page {head:#x} has refcount {} flags {:?}",
                head + n,
                t.refcount(),
                t.flags()
            ));
        }
        n += 1;
    }
    // A slab's head word `private` is the slab's own; any other head's is the order.
    let order_ok = n.is_power_of_two()
        && head.0 & (n - 1) == 0
        && (h.test(PageFlags::SLAB) || 1u64 << h.private().min(63) == n);
    if n < 2 || !order_ok {
        return Err(format!(
            "compound page {head:#x}: order {} in its head but {n} pages in the block",
            h.private()
        ));
    }
    // A large folio in use (not a slab): `_nr_pages_mapped` counts the pages a PTE maps,
    // and each PTE and each PMD mapping holds a reference (a racing unmap may have dropped
    // its mapcount before its reference, never the other way round).
    if !h.test(PageFlags::SLAB) && h.refcount() > 0 {
        let mapped = (0..n).filter(|&i| mm.page(head + i).mapcount() > 0).count() as i32;
        let maps: i32 = (0..n).map(|i| mm.page(head + i).mapcount()).sum();
        if h.nr_pages_mapped() != mapped || (0..n).any(|i| mm.page(head + i).mapcount() < 0) {
            return Err(format!(
                "large folio {head:#x}: nr_pages_mapped {} but {mapped} pages mapped by PTEs",
                h.nr_pages_mapped()
            ));
        }
        if h.refcount() < maps + h.entire_mapcount() {
            return Err(format!(
                "large folio {head:#x}: refcount {} below its {maps} PTE and {} PMD mappings",
                h.refcount(),
                h.entire_mapcount()
            ));
        }
        if h.folio_test_partially_mapped() && !h.folio_on_deferred_list() && mapped > 0 {
            // Taken off the queue by the shrinker, which holds a reference meanwhile.
            if h.refcount() == maps + h.entire_mapcount() {
                return Err(format!(
                    "large folio {head:#x}: partially mapped but on no deferred split queue"
                ));
            }
        }
    }
    Ok(head + n)
}
