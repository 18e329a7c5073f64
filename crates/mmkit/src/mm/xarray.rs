//! A radix tree from page index to an entry (a pfn for the page and swap caches), shaped
//! like Linux's XArray (`lib/xarray.c`,
//! `include/linux/xarray.h`): 64-slot nodes (`XA_CHUNK_SHIFT` = 6), a height that grows when
//! an index needs more levels and shrinks when the top node is left with only slot 0, and
//! nodes freed as they empty. A lookup is one array step per 6 bits of the index — a 64 MiB
//! file (16 Ki pages) is three levels — with no rebalancing.
//!
//! Invariants (`check`): every node has at least one used slot; a node's `count` is its used
//! slots; `len` is the number of entries; the root is shrunk (height minimal for the largest
//! index present).

use crate::addr::Pfn;
use alloc::boxed::Box;

/// `XA_CHUNK_SHIFT`.
const SHIFT: u32 = 6;
const SLOTS: usize = 1 << SHIFT;
const MASK: u64 = SLOTS as u64 - 1;

enum Slot<V> {
    Empty,
    Node(Box<Node<V>>),
    Value(V),
}

struct Node<V> {
    slots: [Slot<V>; SLOTS],
    count: u32,
}

impl<V> Node<V> {
    fn new() -> Box<Self> {
        Box::new(Node {
            slots: core::array::from_fn(|_| Slot::Empty),
            count: 0,
        })
    }
}

/// Index → entry of type `V` (page index → pfn by default: the page cache and swap cache).
pub struct XArray<V: Copy = Pfn> {
    root: Slot<V>,
    /// Levels below the root: the root covers indices `< 64^height` (height 0: only index 0
    /// can be a value at the root).
    height: u32,
    len: usize,
}

impl<V: Copy> Default for XArray<V> {
    fn default() -> Self {
        Self {
            root: Slot::Empty,
            height: 0,
            len: 0,
        }
    }
}

fn max_index(height: u32) -> u64 {
    if height * SHIFT >= 64 {
        u64::MAX
    } else {
        (1u64 << (height * SHIFT)) - 1
    }
}

impl<V: Copy> XArray<V> {
    /// Entries stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `xa_load`.
    pub fn get(&self, index: u64) -> Option<V> {
        if index > max_index(self.height) {
            return None;
        }
        let mut slot = &self.root;
        let mut level = self.height;
        loop {
            match slot {
                Slot::Empty => return None,
                Slot::Value(v) => return (level == 0).then_some(*v),
                Slot::Node(n) => {
                    level -= 1;
                    slot = &n.slots[((index >> (level * SHIFT)) & MASK) as usize];
                }
            }
        }
    }

    /// Whether `index` has an entry.
    pub fn contains_key(&self, index: u64) -> bool {
        self.get(index).is_some()
    }

    /// `xa_store`: set `index` to `value`; returns the old value.
    pub fn insert(&mut self, index: u64, value: V) -> Option<V> {
        // xas_expand: add levels on top until the index fits (an empty tree just starts
        // tall enough).
        if matches!(self.root, Slot::Empty) {
            self.height = 0;
            while index > max_index(self.height) {
                self.height += 1;
            }
        }
        while index > max_index(self.height) {
            let old = core::mem::replace(&mut self.root, Slot::Empty);
            let mut n = Node::new();
            if !matches!(old, Slot::Empty) {
                n.slots[0] = old;
                n.count = 1;
            }
            self.root = Slot::Node(n);
            self.height += 1;
        }
        let mut slot = &mut self.root;
        let mut level = self.height;
        while level > 0 {
            if matches!(slot, Slot::Empty) {
                *slot = Slot::Node(Node::new());
            }
            let Slot::Node(n) = slot else {
                unreachable!("interior slots hold nodes");
            };
            level -= 1;
            let i = ((index >> (level * SHIFT)) & MASK) as usize;
            if matches!(n.slots[i], Slot::Empty) {
                n.count += 1;
            }
            slot = &mut n.slots[i];
        }
        match core::mem::replace(slot, Slot::Value(value)) {
            Slot::Value(v) => Some(v),
            _ => {
                self.len += 1;
                None
            }
        }
    }

    /// `xa_erase`: remove `index`; returns its value. Emptied nodes are freed and the tree
    /// shrinks.
    pub fn remove(&mut self, index: u64) -> Option<V> {
        if index > max_index(self.height) {
            return None;
        }
        fn rec<V>(slot: &mut Slot<V>, index: u64, level: u32) -> Option<V> {
            if level == 0 {
                return match core::mem::replace(slot, Slot::Empty) {
                    Slot::Value(v) => Some(v),
                    other => {
                        *slot = other;
                        None
                    }
                };
            }
            let Slot::Node(n) = slot else {
                return None;
            };
            let l = level - 1;
            let i = ((index >> (l * SHIFT)) & MASK) as usize;
            let v = rec(&mut n.slots[i], index, l)?;
            if matches!(n.slots[i], Slot::Empty) {
                n.count -= 1;
                if n.count == 0 {
                    *slot = Slot::Empty;
                }
            }
            Some(v)
        }
        let v = rec(&mut self.root, index, self.height)?;
        self.len -= 1;
        self.shrink();
        Some(v)
    }

    /// `xas_shrink`: drop top nodes that only use slot 0.
    fn shrink(&mut self) {
        loop {
            if matches!(self.root, Slot::Empty) {
                self.height = 0;
                return;
            }
            if self.height == 0 {
                return;
            }
            let Slot::Node(n) = &mut self.root else {
                return;
            };
            if n.count != 1 || matches!(n.slots[0], Slot::Empty) {
                return;
            }
            let child = core::mem::replace(&mut n.slots[0], Slot::Empty);
            self.root = child;
            self.height -= 1;
        }
    }

    /// Entries in index order (`xa_for_each`).
    pub fn iter(&self) -> alloc::vec::IntoIter<(u64, V)> {
        fn rec<V: Copy>(
            slot: &Slot<V>,
            base: u64,
            level: u32,
            out: &mut alloc::vec::Vec<(u64, V)>,
        ) {
            match slot {
                Slot::Empty => {}
                Slot::Value(v) => out.push((base, *v)),
                Slot::Node(n) => {
                    let l = level - 1;
                    for (i, s) in n.slots.iter().enumerate() {
                        rec(s, base | ((i as u64) << (l * SHIFT)), l, out);
                    }
                }
            }
        }
        let mut out = alloc::vec::Vec::with_capacity(self.len);
        rec(&self.root, 0, self.height, &mut out);
        out.into_iter()
    }

    /// The values in index order.
    pub fn values(&self) -> impl Iterator<Item = V> {
        self.iter().map(|(_, v)| v)
    }

    /// Keep the entries for which `keep(index, value)` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(u64, V) -> bool) {
        let gone: alloc::vec::Vec<u64> = self
            .iter()
            .filter(|&(i, v)| !keep(i, v))
            .map(|(i, _)| i)
            .collect();
        for i in gone {
            self.remove(i);
        }
    }

    /// Check the invariants in the module doc.
    pub fn check(&self) -> Result<(), &'static str> {
        fn rec<V>(slot: &Slot<V>, level: u32) -> Result<usize, &'static str> {
            match slot {
                Slot::Empty => Ok(0),
                Slot::Value(_) if level == 0 => Ok(1),
                Slot::Value(_) => Err("xarray: value above the leaf level"),
                Slot::Node(_) if level == 0 => Err("xarray: node at the leaf level"),
                Slot::Node(n) => {
                    let used = n.slots.iter().filter(|s| !matches!(s, Slot::Empty)).count();
                    if used == 0 || used != n.count as usize {
                        return Err("xarray: node count wrong or node empty");
                    }
                    n.slots.iter().map(|s| rec(s, level - 1)).sum()
                }
            }
        }
        if rec(&self.root, self.height)? != self.len {
            return Err("xarray: len wrong");
        }
        if let Slot::Node(n) = &self.root {
            if n.count == 1 && !matches!(n.slots[0], Slot::Empty) {
                return Err("xarray: not shrunk");
            }
        }
        Ok(())
    }
}
