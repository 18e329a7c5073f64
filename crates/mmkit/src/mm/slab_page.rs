//! `struct slab` (`mm/slab.h`): how the slab allocator reads and writes the `struct page` at
//! the head of each slab, and the `mm/slab.c` functions that work on one slab through it —
//! `virt_to_slab`/`virt_to_cache` (`Kernel::obj_slab`), `index_to_obj`/`obj_to_index`,
//! `slab_get_obj`/`slab_put_obj`, `alloc_slabmgmt` + `cache_init_objs` inside
//! `cache_grow_begin`, and `slab_destroy`.
//!
//! In Linux `struct slab` is a second type laid over the memory of `struct page`, sharing
//! the flags and the refcount and giving the other words slab meanings. [`Slab`] is that
//! overlay: a `#[repr(transparent)]` view of a [`Page`] whose accessors name the slab fields
//! (the table of which page word means what for which kind of page is in `mm/page.rs`):
//!
//! | `struct page` word | `struct slab` field | here |
//! |---|---|---|
//! | `flags`            | `__page_flags`      | `PG_slab` (and `PG_head` for a multi-page slab) |
//! | `index`            | `slab_cache`        | the `KmemCache` the slab belongs to |
//! | `_mapcount`        | `active`            | objects handed out |
//! | `lru` links        | `slab_list`         | on the node's full, partial or free list |
//! | `private`          | `s_mem`, `freelist` | low 16 bits: the colour (`s_mem` = start + colour × `colour_off`); high 16 bits: an off-slab freelist's byte offset in its page |
//! | `mapping`          | `freelist`          | an off-slab freelist's page frame number |
//!
//! Linux keeps `s_mem` and `freelist` as pointers; a 40-byte `struct page` has no room for
//! two more words, so they are kept as the offsets above and turned into addresses on use.
//! An on-slab freelist needs no field: it is the last `freelist_size` bytes of the slab.

use crate::addr::{Pfn, PhysAddr, PAGE_SHIFT, PAGE_SIZE};
use crate::cpu::CpuGuard;
use crate::gfp::Gfp;
use crate::mm::page::{Page, PageFlags};
use crate::mm::slab::{KmemCache, SlabFlags, NR_SLAB_RECLAIMABLE, NR_SLAB_UNRECLAIMABLE};
use crate::mm::slab_debug::{self, Caller};
use crate::Kernel;
use core::sync::atomic::Ordering::Relaxed;

/// `struct slab`: the head page of a slab, seen through the slab allocator's fields (see the
/// module doc). A `&Slab` exists only for a page with `PG_slab` set, whose `slab_cache` is
/// therefore a live cache of this kernel.
#[repr(transparent)]
pub struct Slab(Page);

/// Where a new slab's freelist is: on the slab, or in an object of the freelist cache at
/// this physical address.
#[derive(Copy, Clone)]
pub(crate) enum FreelistAt {
    OnSlab,
    OffSlab(u64),
}

impl Slab {
    /// `page_slab()`: the slab view of `page`, if it is the head page of a slab.
    #[inline]
    pub fn from_page(page: &Page) -> Option<&Slab> {
        if !page.test(PageFlags::SLAB) {
            return None;
        }
        // SAFETY: `Slab` is a transparent wrapper of `Page`, so the cast keeps layout and
        // lifetime; the flag check above upholds the type's invariant.
        Some(unsafe { &*(page as *const Page as *const Slab) })
    }

    /// The slab view of a page on one of a cache's slab lists.
    ///
    /// # Safety
    ///
    /// `page` has `PG_slab` set (every page on a `kmem_cache_node` list does: `init` sets
    /// the flag before a slab is listed, `reset` clears it after it is unlisted).
    #[inline]
    pub(crate) unsafe fn from_page_unchecked(page: &Page) -> &Slab {
        debug_assert!(page.test(PageFlags::SLAB));
        // SAFETY: transparent wrapper (as in `from_page`); the caller vouches for PG_slab.
        unsafe { &*(page as *const Page as *const Slab) }
    }

    /// Make the freshly allocated head page `page` a slab of `c`: `PG_slab`, `slab_cache`,
    /// the colour and where the freelist is; no object active. Returns the view.
    pub(crate) fn init<'p>(page: &'p Page, c: &KmemCache, colour: u32, fl: FreelistAt) -> &'p Slab {
        page.set_index(c as *const KmemCache as u64);
        match fl {
            FreelistAt::OnSlab => page.set_private(colour),
            FreelistAt::OffSlab(pa) => {
                page.set_mapping((pa >> PAGE_SHIFT) as u32);
                page.set_private(colour | (((pa & (PAGE_SIZE - 1)) as u32) << 16));
            }
        }
        page.set_mapcount(0);
        // The flag last, so a view never sees a page without its cache.
        page.set_nonatomic(PageFlags::SLAB);
        // SAFETY: PG_slab was just set.
        unsafe { Self::from_page_unchecked(page) }
    }

    /// Undo `init` on a slab that is off every list: clear `PG_slab` and the slab fields,
    /// and give `private` back the compound order of a `2^order`-page block.
    pub(crate) fn reset(&self, order: u32) -> &Page {
        let page = &self.0;
        page.clear_nonatomic(PageFlags::SLAB);
        page.set_mapping(0);
        page.set_mapcount(0);
        page.set_index(0);
        page.set_private(order);
        page
    }

    /// `slab_page()`: the `struct page` under the view.
    #[inline]
    pub fn page(&self) -> &Page {
        &self.0
    }

    /// `slab->slab_cache`.
    #[inline]
    pub fn slab_cache(&self) -> &KmemCache {
        // SAFETY: a `Slab` view exists only for a PG_slab page (the type's invariant), and
        // `init` — the only code that sets PG_slab — stores a `&KmemCache` of this kernel in
        // `index` first. Caches are boxes the kernel never frees (a destroyed cache is only
        // marked dead), so the cache lives as long as the kernel and its `mem_map`, which
        // `self` borrows. `Page`'s setters are private to the crate, so no caller outside it
        // can forge a slab page.
        unsafe { &*(self.0.index() as *const KmemCache) }
    }

    /// `slab->active`: objects of this slab handed out (on CPU arrays or to callers).
    #[inline]
    pub fn active(&self) -> u32 {
        self.0.mapcount() as u32
    }

    #[inline]
    fn set_active(&self, n: u32) {
        self.0.set_mapcount(n as i32);
    }

    /// The colour of this slab: its objects start `colour × colour_off` bytes in.
    #[inline]
    pub fn colour(&self) -> u32 {
        self.0.private() & 0xffff
    }

    /// Where an off-slab freelist is: its page frame and byte offset in it.
    #[inline]
    fn off_slab_freelist(&self) -> (Pfn, u32) {
        (Pfn(self.0.mapping() as u64), self.0.private() >> 16)
    }

    /// The node the slab's pages are on.
    #[inline]
    pub fn nid(&self) -> usize {
        self.0.nid()
    }
}

impl Kernel {
    /// The slab whose head page is `pfn`, which is on one of a cache's lists (or was just
    /// made a slab by `cache_grow_begin`).
    #[inline]
    pub(crate) fn slab_at(&self, pfn: Pfn) -> &Slab {
        let page = self.mem_map.page(pfn);
        // SAFETY: the pfns the slab allocator keeps (list entries, new slabs) are slab head
        // pages: see `Slab::from_page_unchecked`.
        unsafe { Slab::from_page_unchecked(page) }
    }

    /// Host address of the first byte of frame `pfn`.
    #[inline]
    pub(crate) fn pfn_addr(&self, pfn: Pfn) -> usize {
        self.pfn_ptr(pfn) as usize
    }

    /// `slab->s_mem`: the host address of the slab's first object.
    #[inline]
    pub(crate) fn s_mem(&self, pfn: Pfn, slab: &Slab, c: &KmemCache) -> usize {
        self.pfn_addr(pfn) + slab.colour() as usize * c.colour_off as usize
    }

    /// `slab->freelist`: the host address of the slab's index array.
    #[inline]
    pub(crate) fn freelist(&self, pfn: Pfn, slab: &Slab, c: &KmemCache) -> *mut u16 {
        if c.off_slab {
            let (fpfn, off) = slab.off_slab_freelist();
            (self.pfn_addr(fpfn) + off as usize) as *mut u16
        } else {
            (self.pfn_addr(pfn) + (PAGE_SIZE << c.gfporder) as usize - c.freelist_size as usize)
                as *mut u16
        }
    }

    /// `slab_get_obj`: hand out the next free object of the slab (under the node lock).
    pub(crate) fn slab_get_obj(&self, c: &KmemCache, pfn: Pfn, slab: &Slab) -> usize {
        let active = slab.active() as usize;
        // SAFETY: the freelist has `num` u16 entries in memory this slab owns (on the slab or
        // in an off-slab object), `active < num`, and the node lock serializes access.
        let idx = unsafe { self.freelist(pfn, slab, c).add(active).read_unaligned() } as usize;
        slab.set_active(active as u32 + 1);
        self.s_mem(pfn, slab, c) + idx * c.size as usize
    }

    /// `slab_put_obj`: take back object `obj` of the slab (under the node lock).
    pub(crate) fn slab_put_obj(&self, c: &KmemCache, pfn: Pfn, slab: &Slab, obj: usize) {
        let idx = c.obj_to_index((obj - self.s_mem(pfn, slab, c)) as u64);
        let active = slab.active() as usize - 1;
        // SAFETY: as in `slab_get_obj`; `active < num`.
        unsafe {
            self.freelist(pfn, slab, c)
                .add(active)
                .write_unaligned(idx as u16)
        };
        slab.set_active(active as u32);
    }

    /// `cache_grow_begin`: a new slab, its freelist and its objects constructed; not yet on a
    /// list (the caller puts it on one under the node lock).
    pub(crate) fn cache_grow_begin(
        &self,
        cpu: &CpuGuard<'_>,
        c: &KmemCache,
        gfp: Gfp,
        node: usize,
    ) -> Option<Pfn> {
        let flags = (gfp
            & (Gfp::__GFP_HIGH
                | Gfp::__GFP_RECLAIM
                | Gfp::__GFP_IO
                | Gfp::__GFP_FS
                | Gfp::__GFP_NOWARN
                | Gfp::__GFP_NOFAIL
                | Gfp::__GFP_NORETRY
                | Gfp::__GFP_THISNODE
                | Gfp::__GFP_NOMEMALLOC
                | Gfp::__GFP_MEMALLOC))
            | c.allocflags;
        let page = self.alloc_pages_node(cpu, node, flags, c.gfporder)?;
        let pfn = self.page_to_pfn(page);
        let colour = {
            let mut n = c.nodes[page.nid()].lock();
            let o = n.colour_next;
            n.colour_next += 1;
            if n.colour_next >= c.colour {
                n.colour_next = 0;
            }
            o
        };
        let base = self.pfn_addr(pfn);
        // alloc_slabmgmt.
        let (freelist_addr, at) = if c.off_slab {
            let fc = c.freelist_cache.and_then(|f| self.cache(f));
            match fc
                .and_then(|fc| self.slab_alloc(cpu, fc, flags & !Gfp::__GFP_ZERO, Caller::none()))
            {
                Some(p) => {
                    let a = p.as_ptr() as usize;
                    (a, FreelistAt::OffSlab(self.direct_map.pa(a)))
                }
                None => {
                    self.__free_pages(cpu, page, c.gfporder);
                    return None;
                }
            }
        } else {
            let a = base + (PAGE_SIZE << c.gfporder) as usize - c.freelist_size as usize;
            (a, FreelistAt::OnSlab)
        };
        Slab::init(page, c, colour, at);
        // cache_init_objs.
        let s_mem = base + (colour * c.colour_off) as usize;
        for i in 0..c.num as usize {
            let obj = s_mem + i * c.size as usize;
            if c.debug() {
                // SAFETY: `obj` is the i-th buffer of the slab being set up, which is ours
                // alone until it is listed.
                unsafe { slab_debug::init_obj(c, obj) };
            }
            if let Some(ctor) = c.ctor {
                if !c.flags.contains(SlabFlags::SLAB_POISON) {
                    // SAFETY: the object's bytes lie inside the slab we just allocated.
                    let bytes = unsafe {
                        core::slice::from_raw_parts_mut(
                            (obj + c.obj_offset as usize) as *mut u8,
                            c.object_size as usize,
                        )
                    };
                    ctor(bytes);
                    c.ctor_calls.fetch_add(1, Relaxed);
                }
            }
            // SAFETY: index `i < num` of the freelist this slab owns.
            unsafe { (freelist_addr as *mut u16).add(i).write_unaligned(i as u16) };
        }
        self.mod_node_page_state(cpu, page, slab_stat(c), 1 << c.gfporder);
        Some(pfn)
    }

    /// `slab_destroy`: give a free slab's pages (and off-slab freelist) back.
    pub(crate) fn slab_destroy(&self, cpu: &CpuGuard<'_>, c: &KmemCache, pfn: Pfn) {
        let slab = self.slab_at(pfn);
        let fl = self.freelist(pfn, slab, c) as usize;
        let page = slab.reset(c.gfporder);
        self.mod_node_page_state(cpu, page, slab_stat(c), -(1 << c.gfporder));
        self.__free_pages(cpu, page, c.gfporder);
        if c.off_slab {
            if let Some(fc) = c.freelist_cache.and_then(|f| self.cache(f)) {
                // SAFETY: `fl` is the freelist object cache_grow_begin allocated from `fc`
                // for this slab, which is being destroyed: nobody else has it.
                unsafe { self.slab_free(cpu, fc, fl, Caller::none()) };
            }
        }
    }

    /// `virt_to_slab` + `slab->slab_cache`: the slab (head pfn) and cache of a slab object
    /// address, or why it is not one.
    #[inline]
    pub(crate) fn obj_slab(&self, addr: usize) -> Result<(Pfn, &Slab, &KmemCache), &'static str> {
        // An address outside the direct map lands on a pfn without a struct page.
        let mut pfn = PhysAddr(self.direct_map.pa(addr)).pfn_down();
        let page = self
            .mem_map
            .pfn_to_page(pfn)
            .ok_or("not a direct-map address of RAM")?;
        let page = if page.test(PageFlags::TAIL) {
            pfn -= page.private() as u64;
            self.mem_map.page(pfn)
        } else {
            page
        };
        let slab = Slab::from_page(page).ok_or("Object is not a Slab page!")?;
        Ok((pfn, slab, slab.slab_cache()))
    }
}

/// The node counter a cache's slab pages count in.
fn slab_stat(c: &KmemCache) -> usize {
    if c.flags.contains(SlabFlags::SLAB_RECLAIM_ACCOUNT) {
        NR_SLAB_RECLAIMABLE
    } else {
        NR_SLAB_UNRECLAIMABLE
    }
}
