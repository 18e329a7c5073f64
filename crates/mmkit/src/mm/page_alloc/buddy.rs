//! The buddy free lists of one zone (`mm/page_alloc.c`): `__add_to_free_list`,
//! `__del_page_from_free_list`, `expand`, `__rmqueue_smallest`, `__free_one_page` with
//! `buddy_merge_likely`, the fallback table and pageblock stealing (`__rmqueue_fallback`,
//! `find_suitable_fallback`, `steal_suitable_fallback`, `move_freepages_block`), and the
//! high-order atomic reserve (`reserve_highatomic_pageblock`,
//! `unreserve_highatomic_pageblock`).
//!
//! Every function here runs with the zone lock held: it takes the `FreeArea` the lock guards.
//! A free block's first page has `PG_buddy`, its order in `private` and the migrate type of
//! the list it is on in `index`; its other pages are plain.

use super::{
    AllocFlags, MigrateType, MAX_PAGE_ORDER, MIGRATE_PCPTYPES, NR_PAGE_ORDERS, PAGEBLOCK_NR_PAGES,
    PAGEBLOCK_ORDER,
};
use crate::addr::Pfn;
use crate::mm::mmzone::{FreeArea, Zone, NR_FREE_PAGES, NR_FREE_PAGES_BLOCKS};
use crate::mm::page::{MemMap, PageFlags};
use core::sync::atomic::Ordering::Relaxed;

/// `fallbacks[]`: where each migrate type may steal from, in preference order.
pub const FALLBACKS: [[MigrateType; 2]; MIGRATE_PCPTYPES] = [
    [MigrateType::Reclaimable, MigrateType::Movable], // Unmovable
    [MigrateType::Reclaimable, MigrateType::Unmovable], // Movable
    [MigrateType::Unmovable, MigrateType::Movable],   // Reclaimable
];

fn account(zone: &Zone, nr: i64, order: u32, mt: MigrateType) {
    if mt == MigrateType::Isolate {
        return;
    }
    zone.mod_stat_locked(NR_FREE_PAGES, nr);
    if order >= PAGEBLOCK_ORDER {
        zone.mod_stat_locked(NR_FREE_PAGES_BLOCKS, nr);
    }
}

/// `__add_to_free_list` + freepage accounting.
#[inline]
pub fn add_to_free_list(
    mm: &MemMap,
    zone: &Zone,
    fa: &mut FreeArea,
    pfn: Pfn,
    order: u32,
    mt: MigrateType,
    tail: bool,
) {
    let page = mm.page(pfn);
    page.set_nonatomic(PageFlags::BUDDY);
    page.set_private(order);
    page.set_index(mt as u64);
    let list = &mut fa.lists[order as usize][mt as usize];
    if tail {
        list.push_back(mm, pfn);
    } else {
        list.push_front(mm, pfn);
    }
    fa.nr_free[order as usize] += 1;
    account(zone, 1 << order, order, mt);
}

/// `__del_page_from_free_list` + freepage accounting. Returns the list's migrate type.
#[inline]
pub fn del_from_free_list(
    mm: &MemMap,
    zone: &Zone,
    fa: &mut FreeArea,
    pfn: Pfn,
    order: u32,
) -> MigrateType {
    let page = mm.page(pfn);
    let mt = MigrateType::from_index(page.index() as usize);
    fa.lists[order as usize][mt as usize].remove(mm, pfn);
    page.clear_nonatomic(PageFlags::BUDDY);
    page.set_private(0);
    page.set_index(0);
    fa.nr_free[order as usize] -= 1;
    account(zone, -(1 << order), order, mt);
    mt
}

/// `move_to_free_list`: move a free block to the `to` list of its order.
pub fn move_to_free_list(
    mm: &MemMap,
    zone: &Zone,
    fa: &mut FreeArea,
    pfn: Pfn,
    order: u32,
    to: MigrateType,
) {
    del_from_free_list(mm, zone, fa, pfn, order);
    add_to_free_list(mm, zone, fa, pfn, order, to, true);
}

/// `expand`: split the block of order `high` at `pfn` down to order `low`, putting the upper
/// halves on the `mt` lists.
#[inline]
pub fn expand(
    mm: &MemMap,
    zone: &Zone,
    fa: &mut FreeArea,
    pfn: Pfn,
    low: u32,
    mut high: u32,
    mt: MigrateType,
) {
    while high > low {
        high -= 1;
        add_to_free_list(mm, zone, fa, pfn + (1 << high), high, mt, false);
    }
}

/// `__rmqueue_smallest`: the smallest free block of at least `order` on the `mt` lists.
#[inline]
pub fn rmqueue_smallest(
    mm: &MemMap,
    zone: &Zone,
    fa: &mut FreeArea,
    order: u32,
    mt: MigrateType,
) -> Option<Pfn> {
    for cur in order..NR_PAGE_ORDERS as u32 {
        if let Some(pfn) = fa.lists[cur as usize][mt as usize].first() {
            del_from_free_list(mm, zone, fa, pfn, cur);
            expand(mm, zone, fa, pfn, order, cur, mt);
            return Some(pfn);
        }
    }
    None
}

/// `page_is_buddy`: `buddy_pfn` heads a free block of exactly `order` in the same zone.
#[inline]
fn is_buddy(mm: &MemMap, zone: &Zone, buddy_pfn: Pfn, order: u32) -> bool {
    if !zone.spans(buddy_pfn) || !mm.pfn_valid(buddy_pfn) {
        return false;
    }
    let b = mm.page(buddy_pfn);
    b.test(PageFlags::BUDDY)
        && b.buddy_order() == order
        && b.zonenum() == zone.zone_type
        && b.nid() == zone.node
}

/// `__free_one_page`: free the block of `order` at `pfn` into the `mt` lists, merging with
/// its buddy (`pfn ^ (1 << order)`) for as long as the buddy is free, of the same order and
/// zone, and (from pageblock order up) of a mergeable migrate type.
pub fn free_one_page(
    mm: &MemMap,
    zone: &Zone,
    fa: &mut FreeArea,
    mut pfn: Pfn,
    mut order: u32,
    mt: MigrateType,
    to_tail: bool,
) {
    while order < MAX_PAGE_ORDER {
        let buddy_pfn = Pfn(pfn.0 ^ (1 << order));
        if !is_buddy(mm, zone, buddy_pfn, order) {
            break;
        }
        if order >= PAGEBLOCK_ORDER {
            let bmt = zone.pageblock_migratetype(buddy_pfn);
            if mt != bmt && (!mt.is_mergeable() || !bmt.is_mergeable()) {
                break;
            }
        }
        del_from_free_list(mm, zone, fa, buddy_pfn, order);
        pfn = Pfn(pfn.0 & buddy_pfn.0);
        order += 1;
    }
    // buddy_merge_likely: if the next-larger buddy is free, put this block at the tail so it
    // stays free longer and can merge.
    let tail = to_tail || {
        order < MAX_PAGE_ORDER - 1 && {
            let higher = pfn.0 & !(1 << order);
            is_buddy(mm, zone, Pfn(higher ^ (1 << (order + 1))), order + 1)
        }
    };
    add_to_free_list(mm, zone, fa, pfn, order, mt, tail);
}

/// `can_steal_fallback`.
fn can_steal_fallback(order: u32, start: MigrateType) -> bool {
    order >= PAGEBLOCK_ORDER
        || order >= PAGEBLOCK_ORDER / 2
        || start == MigrateType::Reclaimable
        || start == MigrateType::Unmovable
}

/// `find_suitable_fallback`: a migrate type with free blocks of `order` that `start` may
/// take, and whether it may take the whole pageblock.
pub fn find_suitable_fallback(
    fa: &FreeArea,
    order: u32,
    start: MigrateType,
) -> Option<(MigrateType, bool)> {
    if fa.nr_free[order as usize] == 0 || start as usize >= MIGRATE_PCPTYPES {
        return None;
    }
    FALLBACKS[start as usize]
        .iter()
        .find(|&&f| !fa.lists[order as usize][f as usize].is_empty())
        .map(|&f| (f, can_steal_fallback(order, start)))
}

/// `move_freepages_block`: move every free block in `pfn`'s pageblock to the `to` lists.
/// Returns (free pages moved, movable pages seen) or `None` when the pageblock is not wholly
/// inside the zone.
pub fn move_freepages_block(
    mm: &MemMap,
    zone: &Zone,
    fa: &mut FreeArea,
    pfn: Pfn,
    to: MigrateType,
) -> Option<(u64, u64)> {
    let start = Pfn(pfn.0 & !(PAGEBLOCK_NR_PAGES - 1));
    let end = start + PAGEBLOCK_NR_PAGES;
    if !zone.spans(start) || !zone.spans(end - 1) {
        return None;
    }
    let (mut moved, mut movable) = (0, 0);
    let mut p = start;
    while p < end {
        if !mm.pfn_valid(p) {
            p += 1;
            continue;
        }
        let page = mm.page(p);
        if page.test(PageFlags::BUDDY) {
            let order = page.buddy_order();
            move_to_free_list(mm, zone, fa, p, order, to);
            moved += 1 << order;
            p += 1 << order;
        } else {
            if page.test(PageFlags::LRU) {
                movable += 1;
            }
            p += 1;
        }
    }
    Some((moved, movable))
}

/// `steal_suitable_fallback`: having found a free block of another type, take its whole
/// pageblock when enough of it is free or compatible, otherwise just that block.
fn steal_suitable_fallback(
    mm: &MemMap,
    zone: &Zone,
    fa: &mut FreeArea,
    pfn: Pfn,
    start: MigrateType,
    whole_block: bool,
) {
    let order = mm.page(pfn).buddy_order();
    let old = zone.pageblock_migratetype(pfn);
    if old != MigrateType::HighAtomic {
        if order >= PAGEBLOCK_ORDER {
            // change_pageblock_range: the block covers whole pageblocks; take them all.
            let mut b = pfn;
            while b < pfn + (1 << order) {
                zone.set_pageblock_migratetype(b, start);
                b += PAGEBLOCK_NR_PAGES;
            }
        } else if whole_block {
            if let Some((free, movable)) = move_freepages_block(mm, zone, fa, pfn, start) {
                let alike = if start == MigrateType::Movable {
                    movable
                } else if old == MigrateType::Movable {
                    PAGEBLOCK_NR_PAGES - (free + movable)
                } else {
                    0
                };
                if free + alike >= 1 << (PAGEBLOCK_ORDER - 1) {
                    zone.set_pageblock_migratetype(pfn, start);
                }
                return;
            }
        }
    }
    move_to_free_list(mm, zone, fa, pfn, order, start);
}

/// `__rmqueue_fallback`: steal from another migrate type, the largest block first (or the
/// smallest, for a movable request that may not take a whole block). True when something
/// was moved to `start`'s lists.
pub fn rmqueue_fallback(
    mm: &MemMap,
    zone: &Zone,
    fa: &mut FreeArea,
    order: u32,
    start: MigrateType,
) -> bool {
    let mut found = None;
    for cur in (order..NR_PAGE_ORDERS as u32).rev() {
        if let Some((fmt, can_steal)) = find_suitable_fallback(fa, cur, start) {
            if !can_steal && start == MigrateType::Movable && cur > order {
                // find_smallest
                found = (order..NR_PAGE_ORDERS as u32)
                    .find_map(|o| find_suitable_fallback(fa, o, start).map(|(f, c)| (o, f, c)));
            } else {
                found = Some((cur, fmt, can_steal));
            }
            break;
        }
    }
    let Some((cur, fmt, can_steal)) = found else {
        return false;
    };
    let Some(pfn) = fa.lists[cur as usize][fmt as usize].first() else {
        return false;
    };
    steal_suitable_fallback(mm, zone, fa, pfn, start, can_steal);
    true
}

/// `__rmqueue`: the requested type's lists, then fallback.
#[inline]
pub fn rmqueue(
    mm: &MemMap,
    zone: &Zone,
    fa: &mut FreeArea,
    order: u32,
    mt: MigrateType,
) -> Option<Pfn> {
    loop {
        if let Some(p) = rmqueue_smallest(mm, zone, fa, order, mt) {
            return Some(p);
        }
        if !rmqueue_fallback(mm, zone, fa, order, mt) {
            return None;
        }
    }
}

/// `rmqueue_buddy`'s choice of lists under the zone lock: the HighAtomic reserve first for
/// `ALLOC_HIGHATOMIC`, then the normal lists, then the reserve again for non-blocking or OOM
/// allocations ("failing now is worse than failing a high-order atomic allocation later").
pub fn rmqueue_buddy_locked(
    mm: &MemMap,
    zone: &Zone,
    fa: &mut FreeArea,
    order: u32,
    mt: MigrateType,
    flags: AllocFlags,
) -> Option<Pfn> {
    let mut page = None;
    if flags.contains(AllocFlags::HIGHATOMIC) {
        page = rmqueue_smallest(mm, zone, fa, order, MigrateType::HighAtomic);
    }
    if page.is_none() {
        page = rmqueue(mm, zone, fa, order, mt);
        if page.is_none() && flags.intersects(AllocFlags::OOM | AllocFlags::NON_BLOCK) {
            page = rmqueue_smallest(mm, zone, fa, order, MigrateType::HighAtomic);
        }
    }
    page
}

/// `reserve_highatomic_pageblock`: turn `pfn`'s pageblock into a HighAtomic reserve, up to
/// about 1% of the zone.
pub fn reserve_highatomic_pageblock(mm: &MemMap, zone: &Zone, pfn: Pfn) {
    let max = zone.managed() / 100 + PAGEBLOCK_NR_PAGES;
    if zone.nr_reserved_highatomic.load(Relaxed) >= max {
        return;
    }
    let mut fa = zone.free_area.lock();
    if zone.nr_reserved_highatomic.load(Relaxed) >= max {
        return;
    }
    let mt = zone.pageblock_migratetype(pfn);
    if mt.is_mergeable()
        && move_freepages_block(mm, zone, &mut fa, pfn, MigrateType::HighAtomic).is_some()
    {
        zone.set_pageblock_migratetype(pfn, MigrateType::HighAtomic);
        zone.nr_reserved_highatomic
            .fetch_add(PAGEBLOCK_NR_PAGES, Relaxed);
    }
}

/// `unreserve_highatomic_pageblock` for one zone: give one HighAtomic pageblock back to `mt`
/// (keeping one block unless `force`). True when free pages moved.
pub fn unreserve_highatomic_pageblock(
    mm: &MemMap,
    zone: &Zone,
    mt: MigrateType,
    force: bool,
) -> bool {
    if !force && zone.nr_reserved_highatomic.load(Relaxed) <= PAGEBLOCK_NR_PAGES {
        return false;
    }
    let mut fa = zone.free_area.lock();
    for order in 0..NR_PAGE_ORDERS {
        let Some(pfn) = fa.lists[order][MigrateType::HighAtomic as usize].first() else {
            continue;
        };
        if zone.pageblock_migratetype(pfn) == MigrateType::HighAtomic {
            let r = zone.nr_reserved_highatomic.load(Relaxed);
            zone.nr_reserved_highatomic
                .store(r - PAGEBLOCK_NR_PAGES.min(r), Relaxed);
            zone.set_pageblock_migratetype(pfn, mt);
        }
        if let Some((moved, _)) = move_freepages_block(mm, zone, &mut fa, pfn, mt) {
            if moved > 0 {
                return true;
            }
        }
    }
    false
}
