//! The VMA index of an address space: what Linux's maple tree does for `find_vma`, as a
//! two-level sorted index. VMAs live in a slab; their `vm_end`s (with `vm_start` and the slab
//! slot) sit in sorted blocks of at most `2 * BLOCK` keys, and a top-level array holds each
//! block's largest key. A lookup is two binary searches over small, contiguous arrays (a few
//! cache lines) and yields the VMA's bounds and address without reading the VMA itself — as
//! the maple tree's pivots and slots do — which is what makes `find_vma` fast at 100,000
//! VMAs; an insert or remove moves at most one block's keys.
//!
//! The slab is the address space's VMA store, shared with the reverse map: chunks of
//! `CHUNK` slots that never move, each chunk with the address space's page tables and RSS
//! counters (what the reverse map reaches through `vma->vm_mm`). The `anon_vma` chains and
//! the file's `i_mmap` hold a [`VmaRef`] — a chunk and a slot, the VMA itself, not a copy —
//! so a VMA that grows, shrinks or changes its flags changes in one place and keeps its
//! identity ([`VmaId`] here, the `VmaRef` to the reverse map). Slots are reused: a slot is
//! emptied only after its VMA left every reverse-map list.
//!
//! Who may read or write a slot's [`VmArea`] (Linux's rules for `vm_area_struct`):
//! - the owner of the address space: `&VmaTree` (the `mmap_lock` held) reads any linked VMA;
//! - a reverse-map walker reads the VMAs on the list it holds locked for reading (an
//!   `anon_vma`'s chain, a file's `i_mmap`), without the `mmap_lock`;
//! - a change needs `&mut VmaTree` (the `mmap_lock` for writing) *and* the write side of the
//!   reverse-map locks of every list the VMA is on (`vma_prepare`, in `mm/vma.rs`): that is
//!   the contract of the `unsafe` [`VmaTree::by_id_mut`], [`VmaTree::set_range`] and
//!   [`VmaTree::remove`].
//!
//! Invariants: blocks are non-empty and sorted, each block's keys are below the next block's,
//! `maxes[i]` is block `i`'s last key, every key's slot holds a VMA with that `vm_end` and
//! every other slot is empty, `len` counts the keys and `pages` the pages they span (so
//! `map_count` and `total_vm` are kept here, in one place: the tree's insert, remove and
//! `set_range` are the only writers).

use crate::arch::x86_64::pgtable::PgTable;
use crate::mm::mm_types::{RssStat, VmArea};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::UnsafeCell;

const BLOCK: usize = 128;

/// A VMA's identity in its address space (Linux's `struct vm_area_struct *`): its slab slot,
/// stable from the moment it is linked into the tree until it is removed. A VMA that grows,
/// shrinks (`vma_expand`, `vma_shrink`, the part of a split that stays) or changes its flags
/// keeps its id; the new part of a split is a new VMA, a merged-away one is removed.
#[derive(Copy, Clone, PartialEq, Eq, Debug, Hash)]
pub struct VmaId(u32);

/// One index entry: the VMA's bounds and its slab slot.
#[derive(Copy, Clone)]
struct Ent {
    end: u64,
    start: u64,
    slot: u32,
}

/// A block of entries sorted by `end`, interleaved so a lookup touches one array.
#[derive(Default, Clone)]
struct Block {
    ents: Vec<Ent>,
}

/// Slots per chunk of the VMA store.
const CHUNK: usize = 64;

/// What an empty slot holds.
fn tombstone() -> VmArea {
    VmArea {
        vm_start: 0,
        vm_end: 0,
        vm_flags: crate::mm::mm_types::VmFlags::empty(),
        vm_page_prot: crate::arch::x86_64::pgtable::PgProt(0),
        vm_pgoff: 0,
        vm_file: None,
        name: None,
        anon_vma: None,
        vm_special: None,
    }
}

/// `CHUNK` slots of an address space's VMA store (`struct vm_area_struct`s), with the
/// address space's page tables and RSS counters (`vma->vm_mm`).
pub struct VmaChunk {
    slots: [UnsafeCell<VmArea>; CHUNK],
    pt: Arc<PgTable>,
    rss: Arc<RssStat>,
}

// SAFETY: a slot is written only through `VmaTree::by_id_mut`/`set_range`/`remove`/`insert`,
// whose callers hold `&mut VmaTree` (no reference from the tree exists) and the write side of
// the reverse-map locks of every list the VMA is on (no walker reads it; `insert` writes an
// empty slot, which no list holds); every other access is a shared read made under
// `&VmaTree` or one of those locks held for reading (see the module doc). So a write never
// overlaps any other access, and shared reads may happen from several threads as for any
// `Sync` data. `VmArea` itself is `Send + Sync`.
unsafe impl Sync for VmaChunk {}

// What the `Sync` claim above rests on.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<VmArea>()
};

/// A VMA as the reverse map holds it (the `struct vm_area_struct *` of an `anon_vma_chain`
/// entry or of `i_mmap`): its chunk of the address space's VMA store and its slot there.
/// Only the VMA tree makes one, and it is lent out only while the list it is on is locked
/// (it is not `Clone`: a copy kept past the lock could read a VMA being changed).
pub struct VmaRef {
    chunk: Arc<VmaChunk>,
    slot: u32,
}

impl VmaRef {
    /// The VMA, as it is now. A `VmaRef` is reached only on a reverse-map list locked for
    /// reading (or from the tree): nobody changes the VMA meanwhile (see the module doc).
    #[inline]
    pub fn vma(&self) -> &VmArea {
        // SAFETY: writers hold `&mut VmaTree` and the write side of every reverse-map lock of
        // a list the VMA is on; a `&VmaRef` is lent out only under one of those locks held
        // for reading, for at most as long as it is held (see the `Sync` impl).
        unsafe { &*self.chunk.slots[self.slot as usize].get() }
    }

    /// `vma->vm_mm->pgd`: the page tables of the VMA's address space.
    #[inline]
    pub fn pt(&self) -> &Arc<PgTable> {
        &self.chunk.pt
    }

    /// `vma->vm_mm->rss_stat`.
    #[inline]
    pub fn rss(&self) -> &RssStat {
        &self.chunk.rss
    }

    /// The tables and RSS counters of the VMA's address space, for the zap paths.
    #[inline]
    pub(crate) fn tables(&self) -> crate::mm::mm_types::MmTables<'_> {
        crate::mm::mm_types::MmTables {
            pt: &self.chunk.pt,
            rss: &self.chunk.rss,
        }
    }

    /// `vma_address`: where page `index` is mapped in this VMA, if inside it.
    #[inline]
    pub fn address(&self, index: u64) -> Option<u64> {
        let v = self.vma();
        let off = index.checked_sub(v.vm_pgoff)?;
        let a = v.vm_start.checked_add(off.checked_mul(crate::PAGE_SIZE)?)?;
        (a < v.vm_end).then_some(a)
    }
}

/// VMAs ordered by `vm_end`.
#[derive(Default)]
pub struct VmaTree {
    blocks: Vec<Block>,
    maxes: Vec<u64>,
    /// The VMA store: slot `i` is `chunks[i / CHUNK].slots[i % CHUNK]`.
    chunks: Vec<Arc<VmaChunk>>,
    free: Vec<u32>,
    len: usize,
    /// Pages the VMAs span (`total_vm`).
    pages: u64,
}

impl VmaTree {
    /// Number of VMAs.
    pub fn len(&self) -> usize {
        self.len
    }

    /// No VMAs.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Pages the VMAs span.
    pub fn total_pages(&self) -> u64 {
        self.pages
    }

    /// The VMA `id` names (which must be linked).
    #[inline]
    pub fn by_id(&self, id: VmaId) -> &VmArea {
        let v = self.slot(id.0);
        debug_assert!(v.vm_end != 0, "BUG: VmaId of an unlinked VMA");
        v
    }

    #[inline]
    fn cell(&self, slot: u32) -> &UnsafeCell<VmArea> {
        &self.chunks[slot as usize / CHUNK].slots[slot as usize % CHUNK]
    }

    #[inline]
    fn slot(&self, slot: u32) -> &VmArea {
        // SAFETY: `&self` excludes the writers through the tree (they need `&mut self`), and
        // writers under the reverse-map locks are those same writers (see `VmaChunk`'s
        // `Sync` impl).
        unsafe { &*self.cell(slot).get() }
    }

    /// What the reverse map holds for the VMA `id` (which must be linked).
    pub(crate) fn vma_ref(&self, id: VmaId) -> VmaRef {
        VmaRef {
            chunk: self.chunks[id.0 as usize / CHUNK].clone(),
            slot: id.0 % CHUNK as u32,
        }
    }

    /// Whether `r` names the VMA `id`.
    pub(crate) fn is(&self, id: VmaId, r: &VmaRef) -> bool {
        Arc::ptr_eq(&self.chunks[id.0 as usize / CHUNK], &r.chunk) && r.slot == id.0 % CHUNK as u32
    }

    /// The VMA `id` names, to change in place. It must not move (`vm_start`, `vm_end`: that
    /// is [`VmaTree::set_range`]); `check` catches it.
    ///
    /// # Safety
    ///
    /// No reverse-map walker may see the VMA meanwhile: the caller holds the write side of
    /// the lock of every reverse-map list it is on (`vma_prepare`); `&mut self` keeps
    /// readers through the tree away.
    #[inline]
    pub(crate) unsafe fn by_id_mut(&mut self, id: VmaId) -> &mut VmArea {
        // SAFETY: the caller's contract excludes walkers; `&mut self` excludes readers through
        // the tree, and the returned borrow keeps it so.
        unsafe { &mut *self.cell(id.0).get() }
    }

    /// `vma_set_range` (the index part of `vma_expand`/`vma_shrink`): the VMA `id` now spans
    /// `[start, end)` with page offset `pgoff`; it keeps its slot. The new range may overlap
    /// no other VMA's.
    ///
    /// # Safety
    ///
    /// As for [`VmaTree::by_id_mut`].
    pub(crate) unsafe fn set_range(&mut self, id: VmaId, start: u64, end: u64, pgoff: u64) {
        let old_end = self.by_id(id).vm_end;
        let slot = self.remove_key(old_end);
        debug_assert_eq!(slot, Some(id.0));
        // SAFETY: the caller's contract.
        let v = unsafe { self.by_id_mut(id) };
        v.vm_start = start;
        v.vm_end = end;
        v.vm_pgoff = pgoff;
        self.insert_key(start, end, id.0);
    }

    /// The id of the VMA with `vm_end == end`.
    pub fn id_of(&self, end: u64) -> Option<VmaId> {
        let (b, i) = self.lower_bound(end)?;
        let e = self.blocks[b].ents[i];
        (e.end == end).then_some(VmaId(e.slot))
    }

    /// The first VMA with `vm_end >= key`: its bounds and id, from the index alone.
    #[inline]
    pub fn first_from_id(&self, key: u64) -> Option<(u64, u64, VmaId)> {
        let (b, i) = self.lower_bound(key)?;
        let e = self.blocks[b].ents[i];
        Some((e.start, e.end, VmaId(e.slot)))
    }

    #[inline]
    fn vma(&self, slot: u32) -> &VmArea {
        self.slot(slot)
    }

    /// Position (block, index) of the first key `>= key`.
    #[inline]
    fn lower_bound(&self, key: u64) -> Option<(usize, usize)> {
        let b = self.maxes.partition_point(|&m| m < key);
        if b == self.blocks.len() {
            return None;
        }
        Some((b, self.blocks[b].ents.partition_point(|e| e.end < key)))
    }

    /// The VMA with `vm_end == end`.
    pub fn get(&self, end: u64) -> Option<&VmArea> {
        let (b, i) = self.lower_bound(end)?;
        let e = self.blocks[b].ents[i];
        (e.end == end).then(|| self.vma(e.slot))
    }

    /// The first VMA with `vm_end >= key`.
    #[inline]
    pub fn first_from(&self, key: u64) -> Option<&VmArea> {
        self.first_from_bounds(key).map(|(_, _, v)| v)
    }

    /// The first VMA with `vm_end >= key`, with its `(vm_start, vm_end)` from the index (the
    /// VMA itself is not read).
    #[inline]
    pub fn first_from_bounds(&self, key: u64) -> Option<(u64, u64, &VmArea)> {
        let (b, i) = self.lower_bound(key)?;
        let e = self.blocks[b].ents[i];
        Some((e.start, e.end, self.vma(e.slot)))
    }

    /// The last VMA with `vm_end <= key`.
    pub fn last_upto(&self, key: u64) -> Option<&VmArea> {
        let b = self.maxes.partition_point(|&m| m <= key);
        if b < self.blocks.len() {
            let j = self.blocks[b].ents.partition_point(|e| e.end <= key);
            if j > 0 {
                return Some(self.vma(self.blocks[b].ents[j - 1].slot));
            }
        }
        let prev = b.checked_sub(1)?;
        self.blocks[prev].ents.last().map(|e| self.vma(e.slot))
    }

    /// VMAs in address order (reversible).
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &VmArea> {
        self.blocks
            .iter()
            .flat_map(|b| b.ents.iter())
            .map(|e| self.vma(e.slot))
    }

    /// The VMAs' ids in address order.
    pub(crate) fn ids(&self) -> impl Iterator<Item = VmaId> + '_ {
        self.blocks
            .iter()
            .flat_map(|b| b.ents.iter())
            .map(|e| VmaId(e.slot))
    }

    /// VMAs from the first with `vm_end >= key` on.
    pub fn iter_from(&self, key: u64) -> impl Iterator<Item = &VmArea> {
        let (b0, i0) = self.lower_bound(key).unwrap_or((self.blocks.len(), 0));
        self.blocks
            .iter()
            .enumerate()
            .skip(b0)
            .flat_map(move |(b, blk)| blk.ents[if b == b0 { i0 } else { 0 }..].iter())
            .map(|e| self.vma(e.slot))
    }

    /// Insert a VMA (its `vm_end` must not be present) into an empty slot of the store — a
    /// new chunk, for the address space with page tables `pt` and counters `rss`, when none
    /// is free; returns its id.
    pub(crate) fn insert(&mut self, v: VmArea, pt: &Arc<PgTable>, rss: &Arc<RssStat>) -> VmaId {
        let (start, end) = (v.vm_start, v.vm_end);
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                let base = (self.chunks.len() * CHUNK) as u32;
                self.chunks.push(Arc::new(VmaChunk {
                    slots: core::array::from_fn(|_| UnsafeCell::new(tombstone())),
                    pt: pt.clone(),
                    rss: rss.clone(),
                }));
                self.free.extend((base..base + CHUNK as u32).rev());
                self.free.pop().expect("a chunk was just added")
            }
        };
        // SAFETY: the slot is empty, so no reverse-map list holds it (`remove` empties a slot
        // only after its VMA left every list), and `&mut self` keeps readers through the tree
        // away.
        unsafe { *self.cell(slot).get() = v };
        self.insert_key(start, end, slot);
        VmaId(slot)
    }

    /// Index `[start, end)` as slot `slot`.
    fn insert_key(&mut self, start: u64, key: u64, slot: u32) {
        self.pages += (key - start) >> crate::PAGE_SHIFT;
        let ent = Ent {
            end: key,
            start,
            slot,
        };
        self.len += 1;
        if self.blocks.is_empty() {
            self.blocks.push(Block {
                ents: alloc::vec![ent],
            });
            self.maxes.push(key);
            return;
        }
        let b = self
            .maxes
            .partition_point(|&m| m < key)
            .min(self.blocks.len() - 1);
        let blk = &mut self.blocks[b];
        let i = blk.ents.partition_point(|e| e.end < key);
        blk.ents.insert(i, ent);
        self.maxes[b] = blk.ents.last().expect("non-empty").end;
        if blk.ents.len() > 2 * BLOCK {
            let right = Block {
                ents: blk.ents.split_off(BLOCK),
            };
            self.maxes[b] = blk.ents.last().expect("non-empty").end;
            self.maxes
                .insert(b + 1, right.ents.last().expect("non-empty").end);
            self.blocks.insert(b + 1, right);
        }
    }

    /// Take the key `end` out of the index (its pages too); returns its slot.
    fn remove_key(&mut self, end: u64) -> Option<u32> {
        let (b, i) = self.lower_bound(end)?;
        if self.blocks[b].ents[i].end != end {
            return None;
        }
        let blk = &mut self.blocks[b];
        let ent = blk.ents.remove(i);
        if blk.ents.is_empty() {
            self.blocks.remove(b);
            self.maxes.remove(b);
        } else {
            self.maxes[b] = blk.ents.last().expect("non-empty").end;
        }
        self.len -= 1;
        self.pages -= (ent.end - ent.start) >> crate::PAGE_SHIFT;
        Some(ent.slot)
    }

    /// Remove the VMA `id` and return it; its slot is empty from now on.
    ///
    /// # Safety
    ///
    /// No reverse-map list holds the VMA any more (and `&mut self` keeps readers through the
    /// tree away).
    pub(crate) unsafe fn remove(&mut self, id: VmaId) -> VmArea {
        let end = self.by_id(id).vm_end;
        let slot = self.remove_key(end);
        debug_assert_eq!(slot, Some(id.0));
        self.free.push(id.0);
        // SAFETY: the caller's contract.
        core::mem::replace(unsafe { self.by_id_mut(id) }, tombstone())
    }

    /// Check the invariants in the module doc.
    pub fn check(&self) -> Result<(), &'static str> {
        let mut n = 0;
        let mut last = None;
        if self.blocks.len() != self.maxes.len() {
            return Err("vma index: block and max counts differ");
        }
        for (blk, &m) in self.blocks.iter().zip(&self.maxes) {
            if blk.ents.last().map(|e| e.end) != Some(m) {
                return Err("vma index: empty block, or stale block max");
            }
            for e in &blk.ents {
                let k = e.end;
                if last.is_some_and(|l| l >= k) {
                    return Err("vma index: keys out of order");
                }
                if (e.slot as usize) >= self.chunks.len() * CHUNK
                    || (self.slot(e.slot).vm_start, self.slot(e.slot).vm_end) != (e.start, k)
                {
                    return Err("vma index: slot does not hold the VMA of its key");
                }
                last = Some(k);
                n += 1;
            }
        }
        let used = (0..(self.chunks.len() * CHUNK) as u32)
            .filter(|&i| self.slot(i).vm_end != 0)
            .count();
        if n != self.len || used != n || used + self.free.len() != self.chunks.len() * CHUNK {
            return Err("vma index: len is wrong, or a slot outside the index is occupied");
        }
        if self.iter().map(|v| v.pages()).sum::<u64>() != self.pages {
            return Err("vma index: page total is wrong");
        }
        Ok(())
    }
}
