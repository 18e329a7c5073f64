//! The VMA index of an address space: what Linux's maple tree does for `find_vma`, as a
//! two-level sorted index. VMAs live in a slab; their `vm_end`s (with `vm_start` and the slab
//! slot) sit in sorted blocks of at most `2 * BLOCK` keys, and a top-level array holds each
//! block's largest key. A lookup is two binary searches over small, contiguous arrays (a few
//! cache lines) and yields the VMA's bounds and address without reading the VMA itself — as
//! the maple tree's pivots and slots do — which is what makes `find_vma` fast at 100,000
//! VMAs; an insert or remove moves at most one block's keys.
//!
//! Invariants: blocks are non-empty and sorted, each block's keys are below the next block's,
//! `maxes[i]` is block `i`'s last key, every key's slot holds a VMA with that `vm_end`, `len`
//! counts the keys and `pages` the pages they span (so `map_count` and `total_vm` are kept
//! here, in one place).

use crate::mm::mm_types::VmArea;
use alloc::vec::Vec;

const BLOCK: usize = 128;

/// A VMA's identity (Linux's `struct vm_area_struct *`): its slab slot, stable from the moment
/// it is linked into the tree until it is removed. Splitting or merging makes new VMAs (new
/// ids); the fields that do not move it in the index (`anon_vma`, flags, protection) change in
/// place.
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

/// What a freed slab slot holds until reused.
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

/// VMAs ordered by `vm_end`.
#[derive(Default)]
pub struct VmaTree {
    blocks: Vec<Block>,
    maxes: Vec<u64>,
    slab: Vec<VmArea>,
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
        let v = &self.slab[id.0 as usize];
        debug_assert!(v.vm_end != 0, "BUG: VmaId of an unlinked VMA");
        v
    }

    /// The VMA `id` names, to change in place. The caller must not move it (`vm_start`,
    /// `vm_end`): the index would not know; `check` catches it.
    #[inline]
    pub(crate) fn by_id_mut(&mut self, id: VmaId) -> &mut VmArea {
        &mut self.slab[id.0 as usize]
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
        &self.slab[slot as usize]
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

    /// Insert a VMA (its `vm_end` must not be present); returns its id.
    pub fn insert(&mut self, v: VmArea) -> VmaId {
        let key = v.vm_end;
        let start = v.vm_start;
        self.pages += v.pages();
        let slot = match self.free.pop() {
            Some(s) => {
                self.slab[s as usize] = v;
                s
            }
            None => {
                self.slab.push(v);
                (self.slab.len() - 1) as u32
            }
        };
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
            return VmaId(slot);
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
        VmaId(slot)
    }

    /// Remove and return the VMA with `vm_end == end`.
    pub fn remove(&mut self, end: u64) -> Option<VmArea> {
        let (b, i) = self.lower_bound(end)?;
        if self.blocks[b].ents[i].end != end {
            return None;
        }
        let blk = &mut self.blocks[b];
        let slot = blk.ents.remove(i).slot;
        if blk.ents.is_empty() {
            self.blocks.remove(b);
            self.maxes.remove(b);
        } else {
            self.maxes[b] = blk.ents.last().expect("non-empty").end;
        }
        self.len -= 1;
        self.free.push(slot);
        let v = core::mem::replace(&mut self.slab[slot as usize], tombstone());
        self.pages -= v.pages();
        Some(v)
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
                if self
                    .slab
                    .get(e.slot as usize)
                    .map(|v| (v.vm_start, v.vm_end))
                    != Some((e.start, k))
                {
                    return Err("vma index: slot does not hold the VMA of its key");
                }
                last = Some(k);
                n += 1;
            }
        }
        if n != self.len {
            return Err("vma index: len is wrong");
        }
        if self.iter().map(|v| v.pages()).sum::<u64>() != self.pages {
            return Err("vma index: page total is wrong");
        }
        Ok(())
    }
}
