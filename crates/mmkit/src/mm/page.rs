//! `struct page`, its flags, and the SPARSEMEM `mem_map` that holds one per frame
//! (`include/linux/mm_types.h`, `include/linux/page-flags.h`, `include/linux/mmzone.h`'s
//! `mem_section`, `mm/sparse.c`).
//!
//! A [`Page`] is 40 bytes. Every field is an atomic so that pages are shared by reference
//! between CPUs without `unsafe`; fields that Linux changes only under a lock use plain
//! relaxed load/store (which compile to ordinary moves), and those Linux changes with atomic
//! bit operations (`SetPageReferenced`) use read-modify-write atomics.
//!
//! Layout of `flags`, as Linux packs it: the page-flag bits at the bottom, and the section
//! number, node id and zone number at the top (`SECTIONS_PGSHIFT`, `NODES_PGSHIFT`,
//! `ZONES_PGSHIFT`), so `page_zone()`, `page_to_nid()` and `page_to_pfn()` need no lookup table
//! beyond `mem_section`.
//!
//! Memory model: SPARSEMEM with 128 MiB sections (`SECTION_SIZE_BITS` = 27). A section that
//! has any RAM gets a full `mem_map` slice, allocated from memblock in simulated RAM, so its cost
//! shows in the accounting as Linux's does; sections without RAM cost nothing.
//!
//! List links (`lru_next`, `lru_prev`) are pfns, `NIL` for none: free lists, pcp lists, LRU
//! lists and slab lists are intrusive lists threaded through the pages.
//!
//! What the words mean depends on what the page is, as in Linux's unions (`flags`, which
//! says what the page is, and `_refcount` mean the same for every page):
//!
//! | page | `index` | `mapping` | `private` | `_mapcount` | links |
//! |---|---|---|---|---|---|
//! | free block head (`PG_buddy`) | its migrate type | 0 | order | 0 | free list |
//! | on a per-CPU list | its migrate type | 0 | 0 | 0 | pcp list |
//! | compound head (`PG_head`) | as its use below | as below | order (slabs: see below) | as below | as below |
//! | compound tail (`PG_tail`) | 0 (first tail of a folio: `_entire_mapcount`) | 0 (first tail: `_nr_pages_mapped`) | pages from its head | PTEs mapping this page | none (third page: `_deferred_list`) |
//! | anonymous | page offset in its `anon_vma` (`linear_page_index`) | `PAGE_MAPPING_ANON` + `anon_vma` id | swap entry while `PG_swapcache` | PTEs mapping it | LRU list |
//! | page cache | page index in the file | the inode's id | 0 | PTEs mapping it | LRU list |
//! | slab head (`PG_slab`) | `slab_cache` | off-slab freelist's pfn | colour + off-slab freelist offset | `active` | slab list |
//! | page table | 0 | 0 | 0 | 0 | none; `PG_locked` is its split PTE lock |
//!
//! A slab's page is read and written only through the `struct slab` overlay
//! ([`crate::mm::slab_page::Slab`]), whose accessors name those fields.
//!
//! Compound pages and folios (`include/linux/mm.h`'s `compound_head`, `folio_order`,
//! `folio_nr_pages`, `folio_entire_mapcount`): a block of `2^order` pages allocated with
//! `__GFP_COMP` is one unit, its head carrying `PG_head`, the order in `private`, and every
//! folio-wide field (flags, `_refcount`, `mapping`, `index`, LRU links); each tail carries
//! `PG_tail` and its distance from the head, no reference of its own. A large folio mapped
//! by PMDs counts those mappings in `_entire_mapcount`, which lives in the first tail page
//! (Linux's `folio->_entire_mapcount` overlays `page[1]` too); the `_mapcount` of each page
//! counts only the PTEs that map that page. A folio's total mapcount (`folio_mapcount`) is
//! the sum of both. The first tail also keeps `_nr_pages_mapped` (pages a PTE maps: what
//! tells a partially mapped folio) and `PG_partially_mapped`; the third page links the folio
//! on its node's deferred split queue (`_deferred_list`), so such lists need order 2 or more,
//! as Linux's anonymous mTHP sizes do.

use crate::addr::Pfn;
use crate::mm::mmzone::ZoneType;
use alloc::vec::Vec;
use core::sync::atomic::{
    AtomicI32, AtomicU32, AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};

/// `SECTION_SIZE_BITS` on x86-64.
pub const SECTION_SIZE_BITS: u32 = 27;
/// `PFN_SECTION_SHIFT`.
pub const PFN_SECTION_SHIFT: u32 = SECTION_SIZE_BITS - crate::addr::PAGE_SHIFT;
/// `PAGES_PER_SECTION`.
pub const PAGES_PER_SECTION: u64 = 1 << PFN_SECTION_SHIFT;
/// The "no page" value of a pfn link.
pub const NIL: u32 = u32::MAX;
/// `PAGE_MAPPING_ANON` (`include/linux/page-flags.h`): the bit of `page->mapping` that marks
/// an anonymous page (the rest is its `anon_vma` id).
pub const PAGE_MAPPING_ANON: u32 = 0x8000_0000;

/// Whether a page is anonymous (`PageAnon`).
#[inline]
pub fn page_anon(page: &Page) -> bool {
    page.mapping() & PAGE_MAPPING_ANON != 0
}

/// `PG_swapcache` (`PG_owner_priv_1` on an anonymous page): the page is in the swap cache,
/// its entry in `private`.
pub const PG_SWAPCACHE: PageFlags = PageFlags::OWNER_PRIV_1;

/// `PG_partially_mapped`, on the first tail page of a large folio.
pub const PG_PARTIALLY_MAPPED: PageFlags = PageFlags::OWNER_PRIV_1;
/// On the third page of a large folio: the folio is on its node's deferred split queue,
/// linked through that page's list links.
pub const PG_ON_DEFERRED: PageFlags = PageFlags::OWNER_PRIV_1;

pub use self::flag_defs::*;
#[allow(missing_docs)] // the flag names are Linux's own; see the kernel headers named above
mod flag_defs {
    bitflags::bitflags! {
        /// Page flags (`enum pageflags`). `BUDDY`, `SLAB` and `TAIL` are page types / compound
        /// markers in current kernels; here they are flags, as they were in older ones.
        #[derive(Copy, Clone, PartialEq, Eq, Debug)]
        pub struct PageFlags: u64 {
            const LOCKED = 1 << 0;
            const WRITEBACK = 1 << 1;
            const REFERENCED = 1 << 2;
            const UPTODATE = 1 << 3;
            const DIRTY = 1 << 4;
            const LRU = 1 << 5;
            const HEAD = 1 << 6;
            const WAITERS = 1 << 7;
            const ACTIVE = 1 << 8;
            const WORKINGSET = 1 << 9;
            const OWNER_PRIV_1 = 1 << 10;
            const ARCH_1 = 1 << 11;
            const RESERVED = 1 << 12;
            const PRIVATE = 1 << 13;
            const PRIVATE_2 = 1 << 14;
            const RECLAIM = 1 << 15;
            const SWAPBACKED = 1 << 16;
            const UNEVICTABLE = 1 << 17;
            const MLOCKED = 1 << 18;
            const BUDDY = 1 << 19;
            const SLAB = 1 << 20;
            const TAIL = 1 << 21;
        }
    }
}

/// Flags that must be clear when a page is freed (`PAGE_FLAGS_CHECK_AT_FREE`).
pub const PAGE_FLAGS_CHECK_AT_FREE: PageFlags = PageFlags::LOCKED
    .union(PageFlags::WRITEBACK)
    .union(PageFlags::LRU)
    .union(PageFlags::ACTIVE)
    .union(PageFlags::PRIVATE)
    .union(PageFlags::PRIVATE_2)
    .union(PageFlags::RECLAIM)
    .union(PageFlags::UNEVICTABLE)
    .union(PageFlags::MLOCKED)
    .union(PageFlags::BUDDY)
    .union(PageFlags::SLAB)
    .union(PageFlags::RESERVED);

/// Flags that must be clear when a page is handed out (`PAGE_FLAGS_CHECK_AT_PREP`): every
/// page flag (Linux keeps only `PG_hwpoison`, which is not modelled). `free_pages_prepare`
/// clears them all, so nothing a page was (`PG_swapbacked`, `PG_workingset`, …) carries
/// over to its next user.
pub const PAGE_FLAGS_CHECK_AT_PREP: PageFlags = PageFlags::all();

const FLAG_BITS: u64 = (1 << 22) - 1;
const ZONES_SHIFT: u32 = 61;
const NODES_SHIFT: u32 = 55;
const NODES_MASK: u64 = 0x3f;
const SECTIONS_SHIFT: u32 = 39;
const SECTIONS_MASK: u64 = 0xffff;
/// Most NUMA nodes a machine can have (`MAX_NUMNODES`, 6 node bits).
pub const MAX_NUMNODES: usize = 64;
/// Most sections (16 section bits: 8 TiB of physical address space).
pub const MAX_SECTIONS: u64 = SECTIONS_MASK + 1;

/// `struct page`: one per physical frame.
#[repr(C)]
pub struct Page {
    flags: AtomicU64,
    /// `page->index`: the page's offset in its file or `anon_vma`; the migrate type of a free
    /// or per-CPU page; `slab->slab_cache` of a slab (see the table above).
    index: AtomicU64,
    /// `page->_refcount`.
    refcount: AtomicI32,
    /// `page->_mapcount + 1`: the number of page-table mappings; a slab's `active`.
    mapcount: AtomicI32,
    lru_next: AtomicU32,
    lru_prev: AtomicU32,
    /// `page->private`: buddy order while free, compound order on a head page, head pfn
    /// offset on a tail page, the swap entry of a swap-cache page; a slab's colour and
    /// off-slab freelist offset.
    private: AtomicU32,
    /// `page->mapping`, as a handle: the inode id of a page-cache page, `PAGE_MAPPING_ANON`
    /// plus the `anon_vma` id of an anonymous one; a slab's off-slab freelist pfn.
    mapping: AtomicU32,
}

const _: () = assert!(core::mem::size_of::<Page>() == 40);

impl Page {
    /// The page-flag bits.
    #[inline]
    pub fn flags(&self) -> PageFlags {
        PageFlags::from_bits_truncate(self.flags.load(Relaxed) & FLAG_BITS)
    }
    /// Whether all of `f` are set.
    #[inline]
    pub fn test(&self, f: PageFlags) -> bool {
        self.flags.load(Relaxed) & f.bits() == f.bits()
    }
    /// Atomic `SetPageX`.
    #[inline]
    pub(crate) fn set(&self, f: PageFlags) {
        self.flags.fetch_or(f.bits(), Relaxed);
    }
    /// Atomic `ClearPageX`.
    #[inline]
    pub(crate) fn clear(&self, f: PageFlags) {
        self.flags.fetch_and(!f.bits(), Relaxed);
    }
    /// `trylock_page` / `folio_trylock`: take `PG_locked` unless someone holds it.
    #[inline]
    pub fn trylock(&self) -> bool {
        self.flags.fetch_or(PageFlags::LOCKED.bits(), Acquire) & PageFlags::LOCKED.bits() == 0
    }
    /// `lock_page`: take `PG_locked`, waiting for its holder (who never waits on anything
    /// that could need us: the page lock is taken last).
    pub fn lock(&self) {
        while !self.trylock() {
            crate::sync::relax();
        }
    }
    /// `unlock_page`.
    #[inline]
    pub fn unlock(&self) {
        self.flags.fetch_and(!PageFlags::LOCKED.bits(), Release);
    }
    /// Non-atomic `__SetPageX`: for pages nobody else can see (under the zone lock, owned).
    #[inline]
    pub(crate) fn set_nonatomic(&self, f: PageFlags) {
        self.flags
            .store(self.flags.load(Relaxed) | f.bits(), Relaxed);
    }
    /// Non-atomic `__ClearPageX`.
    #[inline]
    pub(crate) fn clear_nonatomic(&self, f: PageFlags) {
        self.flags
            .store(self.flags.load(Relaxed) & !f.bits(), Relaxed);
    }
    /// `page_zonenum()`.
    #[inline]
    pub fn zonenum(&self) -> ZoneType {
        ZoneType::from_index((self.flags.load(Relaxed) >> ZONES_SHIFT) as usize)
    }
    /// `page_to_nid()`.
    #[inline]
    pub fn nid(&self) -> usize {
        ((self.flags.load(Relaxed) >> NODES_SHIFT) & NODES_MASK) as usize
    }
    #[inline]
    fn section(&self) -> usize {
        ((self.flags.load(Relaxed) >> SECTIONS_SHIFT) & SECTIONS_MASK) as usize
    }
    /// `page_count()`.
    #[inline]
    pub fn refcount(&self) -> i32 {
        self.refcount.load(Relaxed)
    }
    /// `set_page_count()`.
    #[inline]
    pub(crate) fn set_refcount(&self, v: i32) {
        self.refcount.store(v, Relaxed);
    }
    /// `get_page()`: take a reference.
    #[inline]
    pub fn get(&self) {
        self.refcount.fetch_add(1, Relaxed);
    }
    /// `folio_ref_add()`: take (or, negative, give back) `n` references at once.
    #[inline]
    pub(crate) fn ref_add(&self, n: i32) {
        self.refcount
            .fetch_add(n, core::sync::atomic::Ordering::AcqRel);
    }
    /// `folio_try_get()`: take a reference unless the page is already being freed.
    #[inline]
    pub fn try_get(&self) -> bool {
        let mut c = self.refcount.load(Relaxed);
        while c > 0 {
            match self.refcount.compare_exchange_weak(
                c,
                c + 1,
                core::sync::atomic::Ordering::AcqRel,
                Relaxed,
            ) {
                Ok(_) => return true,
                Err(v) => c = v,
            }
        }
        false
    }
    /// `put_page_testzero()`: drop a reference; true when it was the last one.
    #[inline]
    pub fn put_testzero(&self) -> bool {
        self.refcount
            .fetch_sub(1, core::sync::atomic::Ordering::AcqRel)
            == 1
    }
    /// `folio_ref_sub_and_test()`: drop `n` references at once; true when they were the
    /// last ones.
    #[inline]
    pub(crate) fn ref_sub_and_test(&self, n: i32) -> bool {
        self.refcount
            .fetch_sub(n, core::sync::atomic::Ordering::AcqRel)
            == n
    }
    /// `page_mapcount()`.
    #[inline]
    pub fn mapcount(&self) -> i32 {
        self.mapcount.load(Relaxed)
    }
    /// `page->private`.
    #[inline]
    pub fn private(&self) -> u32 {
        self.private.load(Relaxed)
    }
    /// `set_page_private()`.
    #[inline]
    pub(crate) fn set_private(&self, v: u32) {
        self.private.store(v, Relaxed);
    }
    /// `page->index`.
    #[inline]
    pub fn index(&self) -> u64 {
        self.index.load(Relaxed)
    }
    /// Set `page->index`.
    #[inline]
    pub(crate) fn set_index(&self, v: u64) {
        self.index.store(v, Relaxed);
    }
    /// `page->mapping` handle (0 for none).
    #[inline]
    pub fn mapping(&self) -> u32 {
        self.mapping.load(Relaxed)
    }
    /// Set `page->_mapcount` (for slab pages: `page->active`, the objects in use).
    #[inline]
    pub(crate) fn set_mapcount(&self, v: i32) {
        self.mapcount.store(v, Relaxed);
    }
    /// `atomic_inc_return(&page->_mapcount)`: one more PTE maps the page; the new count.
    #[inline]
    pub(crate) fn inc_mapcount(&self) -> i32 {
        self.mapcount
            .fetch_add(1, core::sync::atomic::Ordering::AcqRel)
            + 1
    }
    /// One PTE fewer maps the page; the new count.
    #[inline]
    pub(crate) fn dec_mapcount(&self) -> i32 {
        self.mapcount
            .fetch_sub(1, core::sync::atomic::Ordering::AcqRel)
            - 1
    }
    /// Set the `page->mapping` handle (for slab pages: the off-slab freelist's pfn).
    #[inline]
    pub(crate) fn set_mapping(&self, v: u32) {
        self.mapping.store(v, Relaxed);
    }
    /// `buddy_order()`: the order of a free block whose first page this is.
    #[inline]
    pub fn buddy_order(&self) -> u32 {
        self.private()
    }
    #[inline]
    pub(crate) fn next(&self) -> u32 {
        self.lru_next.load(Relaxed)
    }
    #[inline]
    pub(crate) fn prev(&self) -> u32 {
        self.lru_prev.load(Relaxed)
    }
    #[inline]
    pub(crate) fn set_next(&self, v: u32) {
        self.lru_next.store(v, Relaxed);
    }
    #[inline]
    pub(crate) fn set_prev(&self, v: u32) {
        self.lru_prev.store(v, Relaxed);
    }

    /// `__init_single_page`: a reserved page of `zone` on `nid` in `section`, refcount 1.
    fn init(&self, zone: ZoneType, nid: usize, section: u64) {
        let links = ((zone as u64) << ZONES_SHIFT)
            | ((nid as u64) << NODES_SHIFT)
            | (section << SECTIONS_SHIFT);
        self.flags
            .store(links | PageFlags::RESERVED.bits(), Relaxed);
        self.index.store(0, Relaxed);
        self.refcount.store(1, Relaxed);
        self.mapcount.store(0, Relaxed);
        self.lru_next.store(NIL, Relaxed);
        self.lru_prev.store(NIL, Relaxed);
        self.private.store(0, Relaxed);
        self.mapping.store(0, Relaxed);
    }

    /// `compound_head()`: the head of the compound block this page is a tail of, or the page
    /// itself.
    #[inline]
    pub fn compound_head(&self) -> &Page {
        if !self.test(PageFlags::TAIL) {
            return self;
        }
        let off = self.private() as usize;
        // SAFETY: a tail page's `private` is its distance from its head (set by
        // `prep_compound_page` and cleared only when the block is freed). A compound block is
        // naturally aligned and at most MAX_PAGE_ORDER (< PFN_SECTION_SHIFT), so it lies in
        // one section, whose `struct page`s are one contiguous array: the head is `off`
        // entries before this one, initialized and alive as long as this one is.
        unsafe { &*(self as *const Page).sub(off) }
    }

    /// `folio_order()`: the order of the folio whose head this is (0 for a single page).
    #[inline]
    pub fn folio_order(&self) -> u32 {
        if self.test(PageFlags::HEAD) {
            self.private()
        } else {
            0
        }
    }

    /// `folio_nr_pages()`.
    #[inline]
    pub fn folio_nr_pages(&self) -> u64 {
        1 << self.folio_order()
    }

    /// `folio_test_large()`.
    #[inline]
    pub fn folio_test_large(&self) -> bool {
        self.test(PageFlags::HEAD)
    }

    /// The first tail page of a large folio (whose head this is).
    #[inline]
    fn first_tail(&self) -> &Page {
        debug_assert!(self.test(PageFlags::HEAD));
        // SAFETY: this is the head of a compound block of at least two pages, which lie in
        // one section's contiguous `struct page` array (see `compound_head`).
        unsafe { &*(self as *const Page).add(1) }
    }

    /// `folio_entire_mapcount()`: the PMDs mapping this large folio (0 for a small one).
    #[inline]
    pub fn entire_mapcount(&self) -> i32 {
        if !self.test(PageFlags::HEAD) {
            return 0;
        }
        self.first_tail().index.load(Relaxed) as i64 as i32
    }

    /// One more (`delta` 1) or one fewer (`-1`) PMD maps this large folio; the new count.
    #[inline]
    pub(crate) fn add_entire_mapcount(&self, delta: i32) -> i32 {
        let t = self.first_tail();
        let old = t
            .index
            .fetch_add(delta as i64 as u64, core::sync::atomic::Ordering::AcqRel);
        (old as i64 as i32) + delta
    }

    /// `folio_mapcount()` of a folio whose head this is: its PMD mappings plus the PTE
    /// mappings of each of its pages.
    pub fn folio_mapcount(&self) -> i32 {
        if !self.test(PageFlags::HEAD) {
            return self.mapcount();
        }
        let mut n = self.entire_mapcount() + self.mapcount();
        for i in 1..self.folio_nr_pages() as usize {
            // SAFETY: pages 1..nr of a compound block whose head this is (see `first_tail`).
            n += unsafe { &*(self as *const Page).add(i) }.mapcount();
        }
        n
    }

    /// The page's offset in its `anon_vma` or file (`folio_pgoff(folio) + folio_page_idx`):
    /// a tail page's is its head's plus its distance from it.
    #[inline]
    pub fn pgoff(&self) -> u64 {
        if self.test(PageFlags::TAIL) {
            self.compound_head().index() + u64::from(self.private())
        } else {
            self.index()
        }
    }

    /// Page `i` of the large folio whose head this is.
    #[inline]
    pub fn folio_page(&self, i: u64) -> &Page {
        debug_assert!(i < self.folio_nr_pages());
        // SAFETY: pages 0..nr of a compound block whose head this is lie in one section's
        // contiguous `struct page` array (see `compound_head`).
        unsafe { &*(self as *const Page).add(i as usize) }
    }

    /// `folio->_nr_pages_mapped` of a large folio (whose head this is): how many of its pages
    /// a PTE maps (the first tail's `mapping` word, as Linux keeps it in `page[1]`).
    #[inline]
    pub fn nr_pages_mapped(&self) -> i32 {
        if !self.test(PageFlags::HEAD) {
            return 0;
        }
        self.first_tail().mapping.load(Relaxed) as i32
    }

    /// `_nr_pages_mapped += delta`; the new value.
    #[inline]
    pub(crate) fn add_nr_pages_mapped(&self, delta: i32) -> i32 {
        let t = self.first_tail();
        let old = t
            .mapping
            .fetch_add(delta as u32, core::sync::atomic::Ordering::AcqRel);
        (old as i32) + delta
    }

    /// `folio_test_partially_mapped` (`PG_partially_mapped` in the first tail's flags, as
    /// Linux 6.12 keeps it in `folio->_flags_1`).
    #[inline]
    pub fn folio_test_partially_mapped(&self) -> bool {
        self.test(PageFlags::HEAD)
            && self.folio_order() >= 2
            && self.first_tail().test(PG_PARTIALLY_MAPPED)
    }

    /// Set or clear `PG_partially_mapped` (under the deferred split queue's lock).
    #[inline]
    pub(crate) fn set_partially_mapped(&self, on: bool) {
        if on {
            self.first_tail().set(PG_PARTIALLY_MAPPED);
        } else {
            self.first_tail().clear(PG_PARTIALLY_MAPPED);
        }
    }

    /// Whether this large folio is on its node's deferred split queue (`!list_empty(
    /// &folio->_deferred_list)`; the list links are the third page's, as Linux's
    /// `_deferred_list` overlays `page[2]`).
    #[inline]
    pub fn folio_on_deferred_list(&self) -> bool {
        self.test(PageFlags::HEAD)
            && self.folio_order() >= 2
            && self.folio_page(2).test(PG_ON_DEFERRED)
    }

    /// Reset the flag bits to `f`, keeping the zone/node/section links.
    #[inline]
    pub(crate) fn reset_flags(&self, f: PageFlags) {
        let links = self.flags.load(Relaxed) & !FLAG_BITS;
        self.flags.store(links | f.bits(), Relaxed);
    }
}

/// One present section's slice of `mem_map`.
#[derive(Copy, Clone)]
struct SectionMap {
    base: *const Page,
}

/// `mem_section[]`: the map from pfn to `struct page`.
pub struct MemMap {
    sections: Vec<Option<SectionMap>>,
    max_pfn: u64,
}

// SAFETY: the section pointers point into the machine's RAM, which outlives the `MemMap`
// (both are owned by the `Kernel`), and every field of `Page` is atomic.
unsafe impl Send for MemMap {}
// SAFETY: as above; shared access goes through `&Page` whose fields are atomics.
unsafe impl Sync for MemMap {}

impl MemMap {
    /// An empty map for pfns below `max_pfn`.
    pub(crate) fn new(max_pfn: u64) -> Self {
        let n = max_pfn.div_ceil(PAGES_PER_SECTION) as usize;
        Self {
            sections: alloc::vec![None; n],
            max_pfn,
        }
    }

    /// Install the mem_map of section `nr` at host address `base` (which must hold
    /// `PAGES_PER_SECTION` pages), initializing every page as reserved in the (node, zone)
    /// `zone_of(pfn)` names.
    ///
    /// # Safety
    /// `base` must be valid for writes of `PAGES_PER_SECTION` `Page`s, aligned, and stay
    /// valid and otherwise unused for as long as this `MemMap` lives.
    pub(crate) unsafe fn install_section(
        &mut self,
        nr: usize,
        base: *mut Page,
        zone_of: impl Fn(u64) -> (usize, ZoneType),
    ) {
        let start = nr as u64 * PAGES_PER_SECTION;
        for i in 0..PAGES_PER_SECTION {
            // SAFETY: `base` is valid for PAGES_PER_SECTION pages (caller's contract); writing a
            // zeroed Page first makes the memory a valid Page before we take a reference.
            let p = unsafe {
                let p = base.add(i as usize);
                p.write(Page {
                    flags: AtomicU64::new(0),
                    index: AtomicU64::new(0),
                    refcount: AtomicI32::new(0),
                    mapcount: AtomicI32::new(0),
                    lru_next: AtomicU32::new(NIL),
                    lru_prev: AtomicU32::new(NIL),
                    private: AtomicU32::new(0),
                    mapping: AtomicU32::new(0),
                });
                &*p
            };
            let (nid, zone) = zone_of(start + i);
            p.init(zone, nid, nr as u64);
        }
        self.sections[nr] = Some(SectionMap { base });
    }

    /// `pfn_valid()`: whether `pfn` has a `struct page`.
    #[inline]
    pub fn pfn_valid(&self, pfn: Pfn) -> bool {
        matches!(
            self.sections.get((pfn.0 >> PFN_SECTION_SHIFT) as usize),
            Some(Some(_))
        )
    }

    /// `pfn_to_page()`, checked: `None` for a pfn without a `struct page`.
    #[inline]
    pub fn pfn_to_page(&self, pfn: Pfn) -> Option<&Page> {
        let s = self
            .sections
            .get((pfn.0 >> PFN_SECTION_SHIFT) as usize)?
            .as_ref()?;
        // SAFETY: the section is installed, so `base` points at PAGES_PER_SECTION initialized
        // pages, and the masked offset is below PAGES_PER_SECTION.
        Some(unsafe { &*s.base.add((pfn.0 & (PAGES_PER_SECTION - 1)) as usize) })
    }

    /// `pfn_to_page()` for a pfn the caller knows is valid (free-list links, buddies inside
    /// a zone). A pfn without a page here is a kernel bug.
    #[inline]
    pub fn page(&self, pfn: Pfn) -> &Page {
        match self.pfn_to_page(pfn) {
            Some(p) => p,
            None => panic!("BUG: {pfn:?} has no struct page"),
        }
    }

    /// `page_to_pfn()`.
    #[inline]
    pub fn page_to_pfn(&self, page: &Page) -> Pfn {
        let nr = page.section();
        let base = self.sections[nr].map(|s| s.base as usize).unwrap_or(0);
        let off = (page as *const Page as usize - base) / core::mem::size_of::<Page>();
        Pfn(((nr as u64) << PFN_SECTION_SHIFT) + off as u64)
    }

    /// Whether `page` is one of this map's pages (a foreign `&Page` is not).
    pub fn owns(&self, page: &Page) -> bool {
        let nr = page.section();
        let Some(Some(s)) = self.sections.get(nr) else {
            return false;
        };
        let a = page as *const Page as usize;
        let b = s.base as usize;
        a >= b
            && a < b + PAGES_PER_SECTION as usize * core::mem::size_of::<Page>()
            && (a - b).is_multiple_of(core::mem::size_of::<Page>())
    }

    /// One past the highest pfn.
    pub fn max_pfn(&self) -> u64 {
        self.max_pfn
    }

    /// Numbers of the present sections.
    pub fn present_sections(&self) -> impl Iterator<Item = usize> + '_ {
        self.sections
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_some())
            .map(|(i, _)| i)
    }
}

impl crate::Kernel {
    /// `mem_map` access.
    pub fn mem_map(&self) -> &MemMap {
        &self.mem_map
    }
}
