//! The boot-time memory allocator, as `mm/memblock.c` implements it: two sorted lists of
//! physical ranges, `memory` (what RAM exists, with its node) and `reserved` (what is in use),
//! and top-down allocation from `memory - reserved` (`memblock_find_in_range_node`,
//! `memblock_alloc_try_nid`). After boot, `memblock_free_all` hands every free range to the
//! buddy allocator (see `mm::init`).
//!
//! Invariants: each list is sorted, its regions are disjoint, and adjacent regions with the
//! same node are merged.

use alloc::vec::Vec;

/// One physical range `[base, base + size)`, with its NUMA node.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub struct MemblockRegion {
    /// First byte.
    pub base: u64,
    /// Length in bytes.
    pub size: u64,
    /// NUMA node the range belongs to.
    pub nid: usize,
}

impl MemblockRegion {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.base + self.size
    }
}

/// `struct memblock_type`: a sorted, disjoint list of regions.
#[derive(Clone, Debug, Default)]
pub struct MemblockType {
    /// The regions.
    pub regions: Vec<MemblockRegion>,
}

impl MemblockType {
    /// `memblock_add_range`: add `[base, base + size)`, merging with neighbours. The parts
    /// already covered keep their node. Finding the place is a binary search and merging
    /// looks only at the neighbours of what was inserted, so adding ranges in ascending
    /// order (as boot does from the e820 map) costs O(log n) each.
    pub fn add(&mut self, base: u64, size: u64, nid: usize) {
        if size == 0 {
            return;
        }
        let end = base.saturating_add(size);
        // Regions [first, last) overlap the range; cut them out of it.
        let first = self.regions.partition_point(|r| r.end() <= base);
        let last = first + self.regions[first..].partition_point(|r| r.base < end);
        let mut pieces = Vec::new();
        let mut cur = base;
        for r in &self.regions[first..last] {
            if r.base > cur {
                pieces.push(MemblockRegion {
                    base: cur,
                    size: r.base - cur,
                    nid,
                });
            }
            cur = cur.max(r.end());
        }
        if cur < end {
            pieces.push(MemblockRegion {
                base: cur,
                size: end - cur,
                nid,
            });
        }
        if pieces.is_empty() {
            return;
        }
        // The pieces fill the gaps between the overlapping regions: sort them together,
        // then merge the span from the region before `first` to the one after `last`.
        let mut span: Vec<MemblockRegion> = self.regions[first..last].to_vec();
        span.extend_from_slice(&pieces);
        span.sort_unstable_by_key(|r| r.base);
        let lo = first.saturating_sub(1);
        let hi = (last + 1).min(self.regions.len());
        let mut merged: Vec<MemblockRegion> = Vec::with_capacity(span.len() + 2);
        for r in self.regions[lo..first]
            .iter()
            .chain(span.iter())
            .chain(self.regions[last..hi].iter())
        {
            match merged.last_mut() {
                Some(l) if l.end() == r.base && l.nid == r.nid => l.size += r.size,
                _ => merged.push(*r),
            }
        }
        self.regions.splice(lo..hi, merged);
    }

    /// `memblock_remove_range`: remove `[base, base + size)`, splitting regions.
    pub fn remove(&mut self, base: u64, size: u64) {
        let end = base.saturating_add(size);
        let mut out = Vec::with_capacity(self.regions.len() + 1);
        for r in &self.regions {
            if r.end() <= base || r.base >= end {
                out.push(*r);
                continue;
            }
            if r.base < base {
                out.push(MemblockRegion {
                    base: r.base,
                    size: base - r.base,
                    nid: r.nid,
                });
            }
            if r.end() > end {
                out.push(MemblockRegion {
                    base: end,
                    size: r.end() - end,
                    nid: r.nid,
                });
            }
        }
        self.regions = out;
    }

    fn merge(&mut self) {
        let mut out: Vec<MemblockRegion> = Vec::with_capacity(self.regions.len());
        for r in self.regions.drain(..) {
            match out.last_mut() {
                Some(l) if l.end() == r.base && l.nid == r.nid => l.size += r.size,
                _ => out.push(r),
            }
        }
        self.regions = out;
    }

    /// Total bytes.
    pub fn total_size(&self) -> u64 {
        self.regions.iter().map(|r| r.size).sum()
    }

    /// Bytes of this list inside `[start, end)`.
    pub fn size_in(&self, start: u64, end: u64) -> u64 {
        self.regions
            .iter()
            .map(|r| r.end().min(end).saturating_sub(r.base.max(start)))
            .sum()
    }

    /// Whether any region overlaps `[base, base + size)`.
    pub fn overlaps(&self, base: u64, size: u64) -> bool {
        self.regions
            .iter()
            .any(|r| r.base < base + size && r.end() > base)
    }

    /// `memblock_set_node`: assign `[base, base + size)` to `nid`, splitting regions.
    pub fn set_node(&mut self, base: u64, size: u64, nid: usize) {
        let end = base + size;
        let mut out = Vec::with_capacity(self.regions.len() + 2);
        for r in &self.regions {
            if r.end() <= base || r.base >= end {
                out.push(*r);
                continue;
            }
            let (lo, hi) = (r.base.max(base), r.end().min(end));
            if r.base < lo {
                out.push(MemblockRegion {
                    base: r.base,
                    size: lo - r.base,
                    nid: r.nid,
                });
            }
            out.push(MemblockRegion {
                base: lo,
                size: hi - lo,
                nid,
            });
            if hi < r.end() {
                out.push(MemblockRegion {
                    base: hi,
                    size: r.end() - hi,
                    nid: r.nid,
                });
            }
        }
        self.regions = out;
        self.merge();
    }
}

/// `struct memblock`.
#[derive(Clone, Debug, Default)]
pub struct Memblock {
    /// RAM that exists.
    pub memory: MemblockType,
    /// RAM that is in use (kernel image, firmware areas, early allocations).
    pub reserved: MemblockType,
}

/// `NUMA_NO_NODE`.
pub const NUMA_NO_NODE: usize = usize::MAX;

impl Memblock {
    /// `memblock_reserve`.
    pub fn reserve(&mut self, base: u64, size: u64) {
        self.reserved.add(base, size, NUMA_NO_NODE);
    }

    /// `memblock_phys_free`: return a reserved range.
    pub fn free(&mut self, base: u64, size: u64) {
        self.reserved.remove(base, size);
    }

    /// Free ranges (`memory - reserved`) of node `nid` (or all nodes), in ascending order, as
    /// `for_each_free_mem_range` yields them.
    pub fn free_ranges(&self, nid: usize) -> Vec<(u64, u64, usize)> {
        let mut out = Vec::new();
        for m in self
            .memory
            .regions
            .iter()
            .filter(|m| nid == NUMA_NO_NODE || m.nid == nid)
        {
            let mut cur = m.base;
            for r in self
                .reserved
                .regions
                .iter()
                .filter(|r| r.end() > m.base && r.base < m.end())
            {
                if r.base > cur {
                    out.push((cur, r.base, m.nid));
                }
                cur = cur.max(r.end());
            }
            if cur < m.end() {
                out.push((cur, m.end(), m.nid));
            }
        }
        out
    }

    /// `memblock_find_in_range_node` + `memblock_reserve` (top-down): the highest
    /// `align`-aligned free range of `size` bytes within `[min, max)` on `nid`
    /// (any node when `NUMA_NO_NODE`). `None` when nothing fits.
    pub fn alloc_range_nid(
        &mut self,
        size: u64,
        align: u64,
        min: u64,
        max: u64,
        nid: usize,
    ) -> Option<u64> {
        let found = self
            .free_ranges(nid)
            .into_iter()
            .rev()
            .find_map(|(s, e, _)| {
                let (s, e) = (s.max(min), e.min(max));
                if e < size {
                    return None;
                }
                let cand = (e - size) & !(align - 1);
                (cand >= s).then_some(cand)
            })?;
        self.reserve(found, size);
        Some(found)
    }

    /// `memblock_alloc_try_nid`: node-local first, then any node.
    pub fn alloc_try_nid(&mut self, size: u64, align: u64, nid: usize) -> Option<u64> {
        self.alloc_range_nid(size, align, 0, u64::MAX, nid)
            .or_else(|| self.alloc_range_nid(size, align, 0, u64::MAX, NUMA_NO_NODE))
    }

    /// `memblock_phys_mem_size`.
    pub fn phys_mem_size(&self) -> u64 {
        self.memory.total_size()
    }

    /// Invariants: each list sorted, disjoint, non-empty regions.
    pub fn check_invariants(&self) -> Result<(), &'static str> {
        for t in [&self.memory, &self.reserved] {
            for w in t.regions.windows(2) {
                if w[0].end() > w[1].base {
                    return Err("memblock regions overlap or are unsorted");
                }
            }
            if t.regions.iter().any(|r| r.size == 0) {
                return Err("memblock has an empty region");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn add_merges_and_remove_splits() {
        let mut t = MemblockType::default();
        t.add(0x1000, 0x1000, 0);
        t.add(0x3000, 0x1000, 0);
        t.add(0x1800, 0x2000, 0);
        assert_eq!(
            t.regions,
            vec![MemblockRegion {
                base: 0x1000,
                size: 0x3000,
                nid: 0
            }]
        );
        t.remove(0x2000, 0x1000);
        assert_eq!(t.regions.len(), 2);
        assert_eq!(t.total_size(), 0x2000);
    }

    #[test]
    fn add_fills_holes_keeps_nodes_and_scales() {
        let mut t = MemblockType::default();
        t.add(0x3000, 0x1000, 1);
        t.add(0x1000, 0x1000, 0);
        // Covers both and the holes around them: the holes take node 2.
        t.add(0, 0x6000, 2);
        let got: Vec<(u64, u64, usize)> =
            t.regions.iter().map(|r| (r.base, r.end(), r.nid)).collect();
        assert_eq!(
            got,
            vec![
                (0, 0x1000, 2),
                (0x1000, 0x2000, 0),
                (0x2000, 0x3000, 2),
                (0x3000, 0x4000, 1),
                (0x4000, 0x6000, 2)
            ]
        );
        // 100,000 disjoint ranges in ascending order, then one range across all of them.
        let mut t = MemblockType::default();
        for i in 0..100_000u64 {
            t.add(i * 0x2000, 0x1000, 0);
        }
        assert_eq!(t.regions.len(), 100_000);
        t.add(0, 100_000 * 0x2000, 0);
        assert_eq!(t.regions.len(), 1);
        assert_eq!(t.total_size(), 100_000 * 0x2000);
    }

    #[test]
    fn top_down_allocation_avoids_reserved() {
        let mut m = Memblock::default();
        m.memory.add(0, 0x100000, 0);
        m.reserve(0xff000, 0x1000);
        let a = m.alloc_try_nid(0x2000, 0x1000, 0).unwrap();
        assert_eq!(a, 0xfd000);
        let b = m.alloc_range_nid(0x1000, 0x1000, 0, 0x10000, 0).unwrap();
        assert_eq!(b, 0xf000);
        assert!(m.alloc_try_nid(0x200000, 0x1000, 0).is_none());
        m.check_invariants().unwrap();
        assert_eq!(
            m.free_ranges(NUMA_NO_NODE),
            vec![(0, 0xf000, 0), (0x10000, 0xfd000, 0)]
        );
    }
}
