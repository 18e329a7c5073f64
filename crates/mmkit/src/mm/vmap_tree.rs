//! The free-space tree of the vmalloc area (`mm/vmalloc.c`'s `free_vmap_area_root`, an
//! rbtree augmented with `subtree_max_size`, and `find_vmap_lowest_match`).
//!
//! Free ranges `[start, end)` are nodes of a treap ordered by address; each node also keeps
//! the largest free range in its subtree, so the lowest-addressed range that can hold a
//! request (with its alignment) is found by descending left whenever the left subtree is big
//! enough — O(log n) expected, as Linux's augmented tree gives. Freed ranges merge with their
//! neighbours (`merge_or_add_vmap_area`).
//!
//! Invariants: ranges are disjoint, non-empty, never adjacent (they would have merged),
//! ordered by address in-order; each node's `max` is the largest `end - start` below it.

use alloc::vec::Vec;

const NIL: u32 = u32::MAX;

/// A free range `(start, end)`.
type Range = (u64, u64);

#[derive(Clone, Copy)]
struct Node {
    start: u64,
    end: u64,
    max: u64,
    prio: u32,
    left: u32,
    right: u32,
}

/// The augmented free tree.
pub struct FreeTree {
    nodes: Vec<Node>,
    free_slots: Vec<u32>,
    root: u32,
    seed: u32,
}

impl Default for FreeTree {
    fn default() -> Self {
        Self::new()
    }
}

impl FreeTree {
    /// An empty tree.
    pub const fn new() -> Self {
        Self {
            nodes: Vec::new(),
            free_slots: Vec::new(),
            root: NIL,
            seed: 0x9e37_79b9,
        }
    }

    fn max_of(&self, n: u32) -> u64 {
        if n == NIL {
            0
        } else {
            self.nodes[n as usize].max
        }
    }

    fn update(&mut self, n: u32) {
        let node = self.nodes[n as usize];
        let m = (node.end - node.start)
            .max(self.max_of(node.left))
            .max(self.max_of(node.right));
        self.nodes[n as usize].max = m;
    }

    fn rand(&mut self) -> u32 {
        // xorshift32: priorities only need to be unpredictable to the input order.
        let mut x = self.seed;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.seed = x;
        x
    }

    fn new_node(&mut self, start: u64, end: u64) -> u32 {
        let prio = self.rand();
        let node = Node {
            start,
            end,
            max: end - start,
            prio,
            left: NIL,
            right: NIL,
        };
        match self.free_slots.pop() {
            Some(i) => {
                self.nodes[i as usize] = node;
                i
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        }
    }

    /// Split the subtree `t` into (< key, >= key) by start address.
    fn split(&mut self, t: u32, key: u64) -> (u32, u32) {
        if t == NIL {
            return (NIL, NIL);
        }
        if self.nodes[t as usize].start < key {
            let r = self.nodes[t as usize].right;
            let (a, b) = self.split(r, key);
            self.nodes[t as usize].right = a;
            self.update(t);
            (t, b)
        } else {
            let l = self.nodes[t as usize].left;
            let (a, b) = self.split(l, key);
            self.nodes[t as usize].left = b;
            self.update(t);
            (a, t)
        }
    }

    fn merge(&mut self, a: u32, b: u32) -> u32 {
        if a == NIL {
            return b;
        }
        if b == NIL {
            return a;
        }
        if self.nodes[a as usize].prio > self.nodes[b as usize].prio {
            let r = self.nodes[a as usize].right;
            let m = self.merge(r, b);
            self.nodes[a as usize].right = m;
            self.update(a);
            a
        } else {
            let l = self.nodes[b as usize].left;
            let m = self.merge(a, l);
            self.nodes[b as usize].left = m;
            self.update(b);
            b
        }
    }

    /// The free range containing or starting right at `addr`'s neighbours: (the range ending
    /// at or before `addr`, the range starting at or after `addr`).
    fn neighbours(&self, addr: u64) -> (Option<Range>, Option<Range>) {
        let (mut prev, mut next) = (None, None);
        let mut t = self.root;
        while t != NIL {
            let n = self.nodes[t as usize];
            if n.start < addr {
                prev = Some((n.start, n.end));
                t = n.right;
            } else {
                next = Some((n.start, n.end));
                t = n.left;
            }
        }
        (prev, next)
    }

    fn remove_range(&mut self, start: u64) {
        let (a, b) = self.split(self.root, start);
        let (m, c) = self.split(b, start + 1);
        if m != NIL {
            self.free_slots.push(m);
        }
        self.root = self.merge(a, c);
    }

    fn insert_range(&mut self, start: u64, end: u64) {
        let n = self.new_node(start, end);
        let (a, b) = self.split(self.root, start);
        let left = self.merge(a, n);
        self.root = self.merge(left, b);
    }

    /// `merge_or_add_vmap_area`: give `[start, end)` back, merging with free neighbours.
    /// Returns false (and changes nothing) if it overlaps free space.
    pub fn free(&mut self, start: u64, end: u64) -> bool {
        if start >= end {
            return false;
        }
        let (prev, next) = self.neighbours(start);
        if prev.is_some_and(|p| p.1 > start) || next.is_some_and(|n| n.0 < end) {
            return false;
        }
        let (mut s, mut e) = (start, end);
        if let Some(p) = prev.filter(|p| p.1 == start) {
            self.remove_range(p.0);
            s = p.0;
        }
        if let Some(n) = next.filter(|n| n.0 == end) {
            self.remove_range(n.0);
            e = n.1;
        }
        self.insert_range(s, e);
        true
    }

    /// `find_vmap_lowest_match` + `adjust_va_to_fit_type`: take `size` bytes at the lowest
    /// `align`-aligned address at or above `vstart` that fits, splitting the free range.
    pub fn alloc(&mut self, size: u64, align: u64, vstart: u64) -> Option<u64> {
        // Like Linux (`adjust_search_size`), pad the search for alignment only above page
        // alignment: every range is page-aligned, so a page-aligned request fits any range of
        // its size.
        let need = if align <= 4096 {
            size
        } else {
            size.checked_add(align - 1)?
        };
        // Descend to the lowest node that can hold `need` (a sufficient bound for any
        // alignment); check the exact aligned fit on the way, as Linux does.
        let mut t = self.root;
        let mut found = None;
        while t != NIL {
            let n = self.nodes[t as usize];
            if self.max_of(n.left) >= need && n.start >= vstart {
                t = n.left;
                continue;
            }
            if let Some(a) = fit(n.start.max(vstart), n.end, size, align) {
                found = Some((n.start, n.end, a));
                break;
            }
            t = n.right;
        }
        // A range that straddles `vstart` or fits only thanks to alignment luck may sit in a
        // subtree the bound skipped: fall back to an in-order scan from `vstart` (rare).
        let (s, e, a) = match found {
            Some(f) => f,
            None => self.scan(size, align, vstart)?,
        };
        self.remove_range(s);
        if s < a {
            self.insert_range(s, a);
        }
        if a + size < e {
            self.insert_range(a + size, e);
        }
        Some(a)
    }

    fn scan(&self, size: u64, align: u64, vstart: u64) -> Option<(u64, u64, u64)> {
        self.iter()
            .find_map(|(s, e)| fit(s.max(vstart), e, size, align).map(|a| (s, e, a)))
    }

    /// Free ranges in address order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let mut stack = Vec::new();
        let mut t = self.root;
        core::iter::from_fn(move || {
            while t != NIL {
                stack.push(t);
                t = self.nodes[t as usize].left;
            }
            let n = stack.pop()?;
            let node = self.nodes[n as usize];
            t = node.right;
            Some((node.start, node.end))
        })
    }

    /// Check the invariants in the module doc.
    pub fn check(&self) -> Result<(), &'static str> {
        fn walk(t: &FreeTree, n: u32) -> Result<u64, &'static str> {
            if n == NIL {
                return Ok(0);
            }
            let node = t.nodes[n as usize];
            let m = (node.end - node.start)
                .max(walk(t, node.left)?)
                .max(walk(t, node.right)?);
            if m != node.max {
                return Err("vmap free tree: subtree_max_size is wrong");
            }
            Ok(m)
        }
        walk(self, self.root)?;
        let v: Vec<(u64, u64)> = self.iter().collect();
        if v.iter().any(|r| r.0 >= r.1) {
            return Err("vmap free tree: empty range");
        }
        if v.windows(2).any(|w| w[0].1 >= w[1].0) {
            return Err("vmap free tree: ranges overlap, touch or are out of order");
        }
        Ok(())
    }
}

fn fit(start: u64, end: u64, size: u64, align: u64) -> Option<u64> {
    let a = start.checked_add(align - 1)? & !(align - 1);
    (a.checked_add(size)? <= end).then_some(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_fit_split_and_merge() {
        let mut t = FreeTree::new();
        assert!(t.free(0x1000, 0x10_0000));
        assert_eq!(t.alloc(0x2000, 0x1000, 0), Some(0x1000));
        assert_eq!(t.alloc(0x1000, 0x1000, 0), Some(0x3000));
        assert_eq!(t.alloc(0x4000, 0x4000, 0), Some(0x4000));
        t.check().unwrap();
        // Free the first: the lowest fit goes back to it.
        assert!(t.free(0x1000, 0x3000));
        assert!(
            !t.free(0x1000, 0x2000),
            "double free of free space is refused"
        );
        assert_eq!(t.alloc(0x1000, 0x1000, 0), Some(0x1000));
        assert!(t.free(0x1000, 0x2000));
        assert!(t.free(0x3000, 0x4000));
        assert!(t.free(0x4000, 0x8000));
        assert_eq!(
            t.iter().collect::<Vec<_>>(),
            alloc::vec![(0x1000, 0x10_0000)]
        );
        t.check().unwrap();
        assert_eq!(t.alloc(0x20_0000, 0x1000, 0), None);
    }

    #[test]
    fn many_ranges_stay_consistent() {
        let mut t = FreeTree::new();
        t.free(0, 1 << 40);
        let mut held = Vec::new();
        let mut x = 12345u64;
        for i in 0..3000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            if i % 3 != 2 || held.is_empty() {
                let size = ((x >> 33) % 64 + 1) * 0x1000;
                let a = t.alloc(size, 0x1000, 0).unwrap();
                held.push((a, a + size));
            } else {
                let (s, e) = held.swap_remove((x >> 40) as usize % held.len());
                assert!(t.free(s, e));
            }
        }
        t.check().unwrap();
        // The lowest fit really is the lowest: nothing free below it could hold the request.
        let a = t.alloc(0x5000, 0x1000, 0).unwrap();
        assert!(t.iter().all(|(s, e)| s > a || e - s < 0x5000));
    }
}
