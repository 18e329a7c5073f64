//! Intrusive doubly linked lists threaded through `struct page` by pfn (`include/linux/list.h`
//! used on `page->lru`/`page->buddy_list`/`page->pcp_list`). A list head is two pfns; the
//! links live in the pages, so adding or removing a page allocates nothing.

use crate::addr::Pfn;
use crate::mm::page::{MemMap, NIL};

/// A list head: first and last pfn, `NIL` when empty.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct PageList {
    head: u32,
    tail: u32,
}

impl Default for PageList {
    fn default() -> Self {
        Self::new()
    }
}

impl PageList {
    /// An empty list.
    pub const fn new() -> Self {
        Self {
            head: NIL,
            tail: NIL,
        }
    }
    /// `list_empty()`.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.head == NIL
    }
    /// First pfn.
    #[inline]
    pub fn first(&self) -> Option<Pfn> {
        (self.head != NIL).then_some(Pfn(self.head as u64))
    }
    /// Last pfn.
    #[inline]
    pub fn last(&self) -> Option<Pfn> {
        (self.tail != NIL).then_some(Pfn(self.tail as u64))
    }
    /// `list_add()`: insert at the head.
    #[inline]
    pub fn push_front(&mut self, mm: &MemMap, pfn: Pfn) {
        let p = mm.page(pfn);
        p.set_prev(NIL);
        p.set_next(self.head);
        if self.head == NIL {
            self.tail = pfn.0 as u32;
        } else {
            mm.page(Pfn(self.head as u64)).set_prev(pfn.0 as u32);
        }
        self.head = pfn.0 as u32;
    }
    /// `list_add_tail()`.
    #[inline]
    pub fn push_back(&mut self, mm: &MemMap, pfn: Pfn) {
        let p = mm.page(pfn);
        p.set_next(NIL);
        p.set_prev(self.tail);
        if self.tail == NIL {
            self.head = pfn.0 as u32;
        } else {
            mm.page(Pfn(self.tail as u64)).set_next(pfn.0 as u32);
        }
        self.tail = pfn.0 as u32;
    }
    /// `list_del()`: `pfn` must be on this list.
    #[inline]
    pub fn remove(&mut self, mm: &MemMap, pfn: Pfn) {
        let p = mm.page(pfn);
        let (prev, next) = (p.prev(), p.next());
        if prev == NIL {
            self.head = next;
        } else {
            mm.page(Pfn(prev as u64)).set_next(next);
        }
        if next == NIL {
            self.tail = prev;
        } else {
            mm.page(Pfn(next as u64)).set_prev(prev);
        }
        p.set_next(NIL);
        p.set_prev(NIL);
    }
    /// Remove and return the first pfn.
    #[inline]
    pub fn pop_front(&mut self, mm: &MemMap) -> Option<Pfn> {
        let f = self.first()?;
        self.remove(mm, f);
        Some(f)
    }
    /// Remove and return the last pfn.
    #[inline]
    pub fn pop_back(&mut self, mm: &MemMap) -> Option<Pfn> {
        let l = self.last()?;
        self.remove(mm, l);
        Some(l)
    }
    /// Iterate pfns from head to tail. The list must not change while iterating.
    pub fn iter<'a>(&self, mm: &'a MemMap) -> impl Iterator<Item = Pfn> + 'a {
        let mut cur = self.head;
        core::iter::from_fn(move || {
            if cur == NIL {
                return None;
            }
            let pfn = Pfn(cur as u64);
            cur = mm.page(pfn).next();
            Some(pfn)
        })
    }
}
