//! The SLAB object allocator, as `mm/slab.c` implements it and seeds 002/004 describe:
//! caches of equal-sized objects carved out of slabs (2^order pages from the buddy allocator),
//! per-node lists of full, partial and free slabs, a per-CPU `array_cache` of recently freed
//! objects in front of them, a per-node shared array, slab colouring, constructors that run
//! when a slab is created, and the freelist index array kept on the slab (small objects) or
//! off it in a kmalloc cache (large objects).
//!
//! Functions mirror `kmem_cache_alloc` (`____cache_alloc`, `cache_alloc_refill`,
//! `alloc_block`, `cache_grow_end`), `kmem_cache_free` (`___cache_free`, `cache_flusharray`,
//! `free_block`), `cache_reap`/`drain_array`/`drain_freelist`, `kmem_cache_shrink` and
//! `kmem_cache_destroy`. One slab's own page and objects — `struct slab`, `cache_grow_begin`,
//! `alloc_slabmgmt`, `cache_init_objs`, `slab_get_obj`/`slab_put_obj`, `slab_destroy` — are
//! in [`crate::mm::slab_page`]; creating a cache (`kmem_cache_create`,
//! `__kmem_cache_create`, `calculate_slab_order`, `cache_estimate`, `enable_cpucache`) in
//! [`crate::mm::slab_create`].
//!
//! Concurrency: a per-CPU `array_cache` is touched only by the thread holding that CPU's
//! [`CpuGuard`] — the fast path (array hit) takes no lock. Node lists and the shared array sit
//! behind the node's `list_lock`. Draining other CPUs' arrays (`kmem_cache_shrink`,
//! `kmem_cache_destroy`) runs on each CPU in turn by taking its handle, the analogue of
//! Linux's `on_each_cpu(do_drain)`; like Linux's, these functions may sleep and must be called
//! without holding a CPU.
//!
//! Differences from mm/slab.c, deliberately: no `OBJFREELIST_SLAB` (the freelist lives where
//! the seeds put it), no alien caches (an object freed on another node's CPU goes straight back
//! to its node's lists under that node's lock), no cache merging. `kmem_cache` descriptors and
//! array caches live on the library heap, not in slab caches of their own.

use crate::addr::Pfn;
use crate::cpu::CpuGuard;
use crate::errno::Errno;
use crate::gfp::Gfp;
use crate::mm::list::PageList;
use crate::mm::slab_debug::{self, Caller};
use crate::mm::slab_page::Slab;
use crate::sync::{CachePadded, SpinLock};
use crate::Kernel;
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering::Relaxed};

pub use self::flag_defs::*;
#[allow(missing_docs)] // the flag names are Linux's own (include/linux/slab.h)
mod flag_defs {
    bitflags::bitflags! {
        /// `slab_flags_t`, with Linux's bit values.
        #[derive(Copy, Clone, PartialEq, Eq, Debug)]
        pub struct SlabFlags: u32 {
            const SLAB_RED_ZONE = 0x0000_0400;
            const SLAB_POISON = 0x0000_0800;
            const SLAB_HWCACHE_ALIGN = 0x0000_2000;
            const SLAB_CACHE_DMA = 0x0000_4000;
            const SLAB_CACHE_DMA32 = 0x0000_8000;
            const SLAB_STORE_USER = 0x0001_0000;
            const SLAB_RECLAIM_ACCOUNT = 0x0002_0000;
            const SLAB_PANIC = 0x0004_0000;
        }
    }
}

/// The debugging flags.
pub const SLAB_DEBUG_FLAGS: SlabFlags = SlabFlags::SLAB_RED_ZONE
    .union(SlabFlags::SLAB_POISON)
    .union(SlabFlags::SLAB_STORE_USER);

/// A constructor: called on each object's bytes when its slab is created.
pub type Ctor = fn(&mut [u8]);

/// Most caches a machine can have.
pub const MAX_CACHES: usize = 1024;
/// `cache_line_size()` on x86-64.
pub const CACHE_LINE: u32 = 64;
/// `BATCHREFILL_LIMIT`.
const BATCHREFILL_LIMIT: u32 = 16;
/// `REAPTIMEOUT_NODE`: 4 s.
pub(super) const REAPTIMEOUT_NODE_NS: u64 = 4_000_000_000;
/// `SLAB_OBJ_MAX_NUM` with 16-bit freelist indices.
pub(super) const SLAB_OBJ_MAX_NUM: u32 = 0xffff;
/// `KMALLOC_MAX_ORDER`.
pub(super) const KMALLOC_MAX_ORDER: u32 = 10;

/// A slab cache's handle (`struct kmem_cache *`).
#[derive(Copy, Clone, PartialEq, Eq, Debug, Hash)]
pub struct CacheId(pub(crate) u32);

/// `struct array_cache`: a LIFO stack of object addresses.
pub struct ArrayCache {
    /// Objects on the stack.
    pub avail: u32,
    /// Capacity.
    pub limit: u32,
    /// Objects moved to or from the node lists at a time.
    pub batchcount: u32,
    /// Used since the reaper last looked.
    pub touched: bool,
    entry: Box<[usize]>,
}

impl ArrayCache {
    pub(super) fn new(limit: u32, batchcount: u32) -> Self {
        Self {
            avail: 0,
            limit,
            batchcount,
            touched: false,
            entry: alloc::vec![0; limit as usize].into_boxed_slice(),
        }
    }
    /// The objects on the stack, bottom first.
    pub fn entries(&self) -> &[usize] {
        &self.entry[..self.avail as usize]
    }
    /// Remove the `n` oldest entries (bottom of the stack), returning them.
    fn take_bottom(&mut self, n: u32) -> Vec<usize> {
        let n = n.min(self.avail) as usize;
        let out = self.entry[..n].to_vec();
        self.entry.copy_within(n..self.avail as usize, 0);
        self.avail -= n as u32;
        out
    }
}

/// `struct kmem_cache_node`.
pub struct KmemCacheNode {
    /// Slabs with some objects free.
    pub slabs_partial: PageList,
    /// Slabs with none free.
    pub slabs_full: PageList,
    /// Slabs with all free.
    pub slabs_free: PageList,
    /// Slabs on this node.
    pub total_slabs: u64,
    /// Of which entirely free.
    pub free_slabs: u64,
    /// Free objects in this node's slabs (not counting array caches).
    pub free_objects: u64,
    /// Free objects above which free slabs go back to the page allocator.
    pub free_limit: u64,
    /// Colour of the next slab.
    pub colour_next: u32,
    /// The node's shared array cache.
    pub shared: Option<ArrayCache>,
    /// The reaper saw frees since it last looked.
    pub free_touched: bool,
    /// When the reaper next looks at this node (ns).
    pub next_reap: u64,
}

/// `struct kmem_cache`.
pub struct KmemCache {
    /// Name, as `/proc/slabinfo` shows it.
    pub name: String,
    pub(crate) id: u32,
    /// Size the caller asked for.
    pub object_size: u32,
    /// Bytes each object occupies in the slab (alignment and debug words included).
    pub size: u32,
    /// Object alignment.
    pub align: u32,
    /// Creation flags (with `slab_debug`'s added).
    pub flags: SlabFlags,
    /// Objects per slab.
    pub num: u32,
    /// Pages per slab, as an order.
    pub gfporder: u32,
    /// Number of colours.
    pub colour: u32,
    /// Bytes per colour step.
    pub colour_off: u32,
    /// Bytes of the freelist index array.
    pub freelist_size: u32,
    /// Whether the freelist lives off the slab.
    pub off_slab: bool,
    pub(crate) freelist_cache: Option<CacheId>,
    /// Offset of the caller's object inside the buffer (8 with red zones).
    pub obj_offset: u32,
    pub(crate) ctor: Option<Ctor>,
    pub(crate) allocflags: Gfp,
    /// `limit`, `batchcount`, `shared` tunables.
    pub tunables: [AtomicU32; 3],
    pub(super) cpu_cache: Box<[CachePadded<UnsafeCell<ArrayCache>>]>,
    /// Per-node lists, each behind its `list_lock`.
    pub nodes: Box<[SpinLock<KmemCacheNode>]>,
    pub(crate) dead: AtomicBool,
    /// Constructor calls so far.
    pub ctor_calls: AtomicU64,
    pub(super) reciprocal: u64,
}

// SAFETY: `cpu_cache[c]` is only accessed by the holder of CPU c's `CpuGuard` (exclusive,
// not `Send`), so no two threads touch the same array cache at once; everything else is
// atomics or behind locks.
unsafe impl Sync for KmemCache {}
// SAFETY: as above; the raw addresses in array caches are plain integers.
unsafe impl Send for KmemCache {}

/// The registry of caches (`slab_caches`), owned by the kernel.
pub struct SlabState {
    pub(crate) table: Box<[AtomicPtr<KmemCache>]>,
    #[allow(clippy::vec_box)] // boxed so the table's pointers stay valid as the Vec grows
    pub(crate) owned: SpinLock<Vec<Box<KmemCache>>>,
    /// Creation order, for `/proc/slabinfo` (newest first, as Linux lists them).
    pub(crate) order: SpinLock<Vec<u32>>,
    pub(crate) kmalloc: [[AtomicU32; crate::mm::slab_common::KMALLOC_SHIFT_HIGH as usize + 1]; 2],
    /// The same kmalloc caches as direct pointers (they are never destroyed), for the fast path.
    pub(crate) kmalloc_ptr:
        [[AtomicPtr<KmemCache>; crate::mm::slab_common::KMALLOC_SHIFT_HIGH as usize + 1]; 2],
    pub(crate) callers: SpinLock<Vec<&'static core::panic::Location<'static>>>,
    pub(crate) debug_all: AtomicBool,
}

impl SlabState {
    pub(crate) fn new() -> Self {
        Self {
            table: (0..MAX_CACHES)
                .map(|_| AtomicPtr::new(core::ptr::null_mut()))
                .collect(),
            owned: SpinLock::new(Vec::new()),
            order: SpinLock::new(Vec::new()),
            kmalloc: Default::default(),
            kmalloc_ptr: Default::default(),
            callers: SpinLock::new(Vec::new()),
            debug_all: AtomicBool::new(false),
        }
    }
}

impl KmemCache {
    /// This CPU's array cache (`cpu_cache_get`): per-CPU data reached without a lock, as
    /// only the holder of a CPU's handle touches it.
    ///
    /// # Safety
    ///
    /// `cpu` must be a handle of the machine this cache belongs to (the public entry points
    /// check that with `check_cpu`; internal callers pass on the handle they were given),
    /// and the returned reference must not overlap any other reference to the same array:
    /// while it is live the caller makes no second `cpu_ac`/`array_of` call for this cache
    /// and CPU, and calls nothing that could (this cache's allocation, free, refill, flush,
    /// reap and drain paths).
    #[inline]
    #[allow(clippy::mut_from_ref)] // exclusive by the contract above
    unsafe fn cpu_ac(&self, cpu: &CpuGuard<'_>) -> &mut ArrayCache {
        // SAFETY: a handle's id is below its machine's CPU count, which is the length of
        // `cpu_cache` (one slot per CPU of the machine); the handle is exclusive and not
        // `Send`, so no other thread reaches this slot while it is held, and the caller
        // promises no other reference to it on this thread (the contract above).
        unsafe { &mut *self.cpu_cache.get_unchecked(cpu.id()).0.get() }
    }

    /// Index of the object at `off` bytes from `s_mem` (`obj_to_index`, via a reciprocal).
    #[inline]
    pub(crate) fn obj_to_index(&self, off: u64) -> u64 {
        (off * self.reciprocal) >> 32
    }

    /// This CPU's array cache, for the invariant checker.
    ///
    /// # Safety
    ///
    /// As [`KmemCache::cpu_ac`]: a handle of this cache's machine, and nothing on this
    /// thread may change the array (no allocation from or free to this cache) while the
    /// returned reference is live.
    pub(crate) unsafe fn array_of(&self, cpu: &CpuGuard<'_>) -> &ArrayCache {
        // SAFETY: the caller's contract is cpu_ac's.
        unsafe { self.cpu_ac(cpu) }
    }

    /// Whether this cache does any debugging.
    #[inline]
    pub fn debug(&self) -> bool {
        self.flags.intersects(SLAB_DEBUG_FLAGS)
    }
}

impl Kernel {
    #[inline]
    pub(crate) fn cache(&self, id: CacheId) -> Option<&KmemCache> {
        let p = self.slab.table.get(id.0 as usize)?.load(Relaxed);
        // SAFETY: table entries point into boxes owned by `slab.owned`, which are never
        // dropped before the kernel (destroyed caches stay allocated, marked dead).
        let c = unsafe { p.as_ref()? };
        (!c.dead.load(Relaxed)).then_some(c)
    }

    /// Objects in `cpu`'s array cache of `id` (`ac->avail`), for inspection.
    pub fn kmem_cache_cpu_avail(&self, cpu: &CpuGuard<'_>, id: CacheId) -> Option<u32> {
        self.check_cpu(cpu);
        // SAFETY: `cpu` is this machine's (checked above); the reference ends here.
        Some(unsafe { self.cache(id)?.cpu_ac(cpu) }.avail)
    }

    /// The cache behind a handle, for inspection (`None` once destroyed).
    pub fn kmem_cache(&self, id: CacheId) -> Option<&KmemCache> {
        self.cache(id)
    }

    /// `kmem_cache_alloc(cache, gfp)`: an object, or `None` when the page allocator fails
    /// (or the cache was destroyed). With `__GFP_ZERO` the object is zeroed.
    #[track_caller]
    #[inline]
    pub fn kmem_cache_alloc(
        &self,
        cpu: &CpuGuard<'_>,
        id: CacheId,
        gfp: Gfp,
    ) -> Option<NonNull<u8>> {
        let c = self.cache(id)?;
        self.slab_alloc(cpu, c, gfp, Caller::here())
    }

    /// The per-CPU arrays are only exclusive for a handle of this machine: a handle of another
    /// `Kernel` would alias them, so that is a bug we refuse to continue past.
    #[inline]
    fn check_cpu(&self, cpu: &CpuGuard<'_>) {
        assert!(
            core::ptr::eq(cpu.kernel, self),
            "BUG: a CPU handle of another machine was used"
        );
    }

    #[inline]
    pub(crate) fn slab_alloc(
        &self,
        cpu: &CpuGuard<'_>,
        c: &KmemCache,
        gfp: Gfp,
        caller: Caller,
    ) -> Option<NonNull<u8>> {
        self.check_cpu(cpu);
        // SAFETY: `cpu` is this machine's (checked above); `ac` is last used before the
        // refill, which takes the array itself.
        let ac = unsafe { c.cpu_ac(cpu) };
        let objp = if ac.avail > 0 {
            ac.touched = true;
            ac.avail -= 1;
            // SAFETY: `entry.len() == limit >= avail + 1` (ArrayCache::new sizes it to limit).
            unsafe { *ac.entry.get_unchecked(ac.avail as usize) }
        } else {
            self.cache_alloc_refill(cpu, c, gfp)?
        };
        self.slab_post_alloc(c, objp, gfp, caller)
    }

    /// `slab_post_alloc_hook` + `cache_alloc_debugcheck_after`: debug checks, `__GFP_ZERO`,
    /// and the caller's pointer.
    #[inline]
    fn slab_post_alloc(
        &self,
        c: &KmemCache,
        objp: usize,
        gfp: Gfp,
        caller: Caller,
    ) -> Option<NonNull<u8>> {
        let obj = if c.debug() {
            // SAFETY: `objp` (every caller's) is a buffer of `c` this CPU just took off its
            // array or a slab of `c`: nobody else reaches it until we hand it out.
            unsafe { slab_debug::alloc_debugcheck_after(self, c, objp, caller) }
        } else {
            objp
        };
        if gfp.contains(Gfp::__GFP_ZERO) {
            // SAFETY: `obj` is the start of an object of `object_size` bytes in a slab page we
            // own, just handed to this caller.
            unsafe { core::ptr::write_bytes(obj as *mut u8, 0, c.object_size as usize) };
        }
        NonNull::new(obj as *mut u8)
    }

    /// `____cache_alloc_node`: one object from node `nid`'s lists (bypassing this CPU's
    /// array), growing a slab on that node when it has none free; falls back to the local
    /// path when the node has no memory (`fallback_alloc`).
    pub(crate) fn slab_alloc_node(
        &self,
        cpu: &CpuGuard<'_>,
        c: &KmemCache,
        gfp: Gfp,
        nid: usize,
        caller: Caller,
    ) -> Option<NonNull<u8>> {
        if nid == cpu.node() || nid >= c.nodes.len() {
            return self.slab_alloc(cpu, c, gfp, caller);
        }
        let from_list = {
            let mut n = c.nodes[nid].lock();
            match n.slabs_partial.first().or(n.slabs_free.first()) {
                Some(pfn) => {
                    let slab = self.slab_at(pfn);
                    if slab.active() == 0 {
                        n.free_slabs -= 1;
                    }
                    Self::unlist_slab(c, &mut n, self, pfn);
                    let obj = self.slab_get_obj(c, pfn, slab);
                    n.free_objects -= 1;
                    Self::list_slab(c, &mut n, self, pfn);
                    Some(obj)
                }
                None => None,
            }
        };
        let objp = match from_list {
            Some(o) => o,
            None => {
                let Some(pfn) = self.cache_grow_begin(
                    cpu,
                    c,
                    gfp | Gfp::__GFP_THISNODE | Gfp::__GFP_NOWARN,
                    nid,
                ) else {
                    return self.slab_alloc(cpu, c, gfp, caller);
                };
                let slab = self.slab_at(pfn);
                let obj = self.slab_get_obj(c, pfn, slab);
                let mut n = c.nodes[slab.nid()].lock();
                n.total_slabs += 1;
                n.free_objects += (c.num - 1) as u64;
                Self::list_slab(c, &mut n, self, pfn);
                obj
            }
        };
        self.slab_post_alloc(c, objp, gfp, caller)
    }

    /// `kmem_cache_alloc_node`.
    #[track_caller]
    pub fn kmem_cache_alloc_node(
        &self,
        cpu: &CpuGuard<'_>,
        id: CacheId,
        gfp: Gfp,
        nid: usize,
    ) -> Option<NonNull<u8>> {
        let c = self.cache(id)?;
        self.slab_alloc_node(cpu, c, gfp, nid, Caller::here())
    }

    /// `cache_alloc_refill`: fill this CPU's array from the shared array or the node's slabs,
    /// growing the cache when they are empty.
    #[cold]
    fn cache_alloc_refill(&self, cpu: &CpuGuard<'_>, c: &KmemCache, gfp: Gfp) -> Option<usize> {
        let node = cpu.node();
        // SAFETY (every `cpu_ac` below): `cpu` is the handle our caller was given for this
        // machine, and each reference is dead before the next is made; moving objects
        // between the array and the node's slabs (`alloc_block`) does not reach the array
        // any other way, and growing the cache is done with no reference live.
        let ac = unsafe { c.cpu_ac(cpu) };
        let mut batch = ac.batchcount;
        if !ac.touched && batch > BATCHREFILL_LIMIT {
            batch = BATCHREFILL_LIMIT;
        }
        {
            let mut n = c.nodes[node].lock();
            // SAFETY: see above.
            let ac = unsafe { c.cpu_ac(cpu) };
            let moved = match n.shared.as_mut() {
                Some(sh) if sh.avail > 0 => {
                    let k = batch.min(sh.avail);
                    for _ in 0..k {
                        sh.avail -= 1;
                        ac.entry[ac.avail as usize] = sh.entry[sh.avail as usize];
                        ac.avail += 1;
                    }
                    sh.touched = true;
                    true
                }
                _ => false,
            };
            if !moved {
                let mut left = batch;
                while left > 0 {
                    let Some(pfn) = n.slabs_partial.first().or(n.slabs_free.first()) else {
                        break;
                    };
                    left = self.alloc_block(c, &mut n, ac, pfn, left);
                }
                n.free_objects -= (batch - left) as u64;
            }
        }
        // SAFETY: see above.
        if unsafe { c.cpu_ac(cpu) }.avail == 0 {
            let pfn = self.cache_grow_begin(cpu, c, gfp, node)?;
            let slab = self.slab_at(pfn);
            let mut n = c.nodes[slab.nid()].lock();
            // SAFETY: see above.
            let ac = unsafe { c.cpu_ac(cpu) };
            let left = Self::alloc_block_unlisted(self, c, ac, pfn, batch);
            n.total_slabs += 1;
            n.free_objects += (c.num - (batch - left)) as u64;
            if slab.active() == 0 {
                n.free_slabs += 1;
            }
            Self::list_slab(c, &mut n, self, pfn);
        }
        // SAFETY: see above.
        let ac = unsafe { c.cpu_ac(cpu) };
        if ac.avail == 0 {
            return None;
        }
        ac.touched = true;
        ac.avail -= 1;
        Some(ac.entry[ac.avail as usize])
    }

    /// `alloc_block` for a slab on a node list: take up to `want` objects into `ac`, then
    /// move the slab to the list its fill level belongs on. Returns how many are still wanted.
    fn alloc_block(
        &self,
        c: &KmemCache,
        n: &mut KmemCacheNode,
        ac: &mut ArrayCache,
        pfn: Pfn,
        want: u32,
    ) -> u32 {
        let slab = self.slab_at(pfn);
        let was_free = slab.active() == 0;
        Self::unlist_slab(c, n, self, pfn);
        if was_free {
            n.free_slabs -= 1;
        }
        let left = self.alloc_block_unlisted(c, ac, pfn, want);
        Self::list_slab(c, n, self, pfn);
        if slab.active() == 0 {
            n.free_slabs += 1;
        }
        left
    }

    fn alloc_block_unlisted(
        &self,
        c: &KmemCache,
        ac: &mut ArrayCache,
        pfn: Pfn,
        mut want: u32,
    ) -> u32 {
        let slab = self.slab_at(pfn);
        while want > 0 && slab.active() < c.num && ac.avail < ac.limit {
            let obj = self.slab_get_obj(c, pfn, slab);
            ac.entry[ac.avail as usize] = obj;
            ac.avail += 1;
            want -= 1;
        }
        want
    }

    /// The list a slab belongs on by its fill level (`fixup_slab_list` / `cache_grow_end`).
    fn list_slab(c: &KmemCache, n: &mut KmemCacheNode, k: &Kernel, pfn: Pfn) {
        let active = k.slab_at(pfn).active();
        if active == 0 {
            n.slabs_free.push_back(&k.mem_map, pfn);
        } else if active == c.num {
            n.slabs_full.push_front(&k.mem_map, pfn);
        } else {
            n.slabs_partial.push_front(&k.mem_map, pfn);
        }
    }

    fn unlist_slab(c: &KmemCache, n: &mut KmemCacheNode, k: &Kernel, pfn: Pfn) {
        let active = k.slab_at(pfn).active();
        let list = if active == 0 {
            &mut n.slabs_free
        } else if active == c.num {
            &mut n.slabs_full
        } else {
            &mut n.slabs_partial
        };
        list.remove(&k.mem_map, pfn);
    }

    /// `kmem_cache_free(cache, obj)`. Freeing into the wrong cache, a pointer that is not an
    /// object of this cache, or (with debugging) a double free is reported and ignored.
    #[track_caller]
    #[inline]
    pub fn kmem_cache_free(&self, cpu: &CpuGuard<'_>, id: CacheId, obj: NonNull<u8>) {
        let Some(c) = self.cache(id) else {
            self.printk(&format!("kmem_cache_free: cache {} does not exist", id.0));
            return;
        };
        match self.obj_slab(obj.as_ptr() as usize) {
            Ok((pfn, slab, oc)) if oc.id == c.id => {
                self.slab_free_checked(cpu, c, pfn, slab, obj.as_ptr() as usize, Caller::here())
            }
            Ok((_, _, oc)) => self.printk(&format!(
                "kmem_cache_free: Wrong slab cache. {} but object is from {}",
                c.name, oc.name
            )),
            Err(why) => self.printk(&format!(
                "kmem_cache_free: {:#x}: {why}",
                obj.as_ptr() as usize
            )),
        }
    }

    /// Validate that `addr` is an object start, then free it.
    #[inline]
    pub(crate) fn slab_free_checked(
        &self,
        cpu: &CpuGuard<'_>,
        c: &KmemCache,
        pfn: Pfn,
        slab: &Slab,
        addr: usize,
        caller: Caller,
    ) {
        let off = (addr - c.obj_offset as usize).wrapping_sub(self.s_mem(pfn, slab, c)) as u64;
        let idx = c.obj_to_index(off);
        if off >= (c.num as u64) * c.size as u64 || idx * c.size as u64 != off {
            self.printk(&format!(
                "kfree: {addr:#x} is not the start of an object of cache {}",
                c.name
            ));
            return;
        }
        // SAFETY: `addr` was just verified to be an object start of `c`; the caller frees
        // it (a double free is what the debug checks report).
        unsafe { self.slab_free(cpu, c, addr, caller) };
    }

    /// `___cache_free`: push on this CPU's array, flushing a batch when it is full.
    ///
    /// # Safety
    ///
    /// `addr` is an object start of `c` that the caller owns and gives up (an allocation it
    /// made, or an address `slab_free_checked` verified): with debugging on, its buffer is
    /// checked and written.
    #[inline]
    pub(crate) unsafe fn slab_free(
        &self,
        cpu: &CpuGuard<'_>,
        c: &KmemCache,
        addr: usize,
        caller: Caller,
    ) {
        let objp = if c.debug() {
            // SAFETY: this function's contract is free_debugcheck's.
            match unsafe { slab_debug::free_debugcheck(self, c, addr, caller) } {
                Some(o) => o,
                None => return,
            }
        } else {
            addr
        };
        self.check_cpu(cpu);
        // SAFETY: `cpu` is this machine's (checked above); `ac` is last used before the
        // flush, which takes the array itself.
        let ac = unsafe { c.cpu_ac(cpu) };
        if ac.avail < ac.limit {
            // SAFETY: `avail < limit == entry.len()`.
            unsafe { *ac.entry.get_unchecked_mut(ac.avail as usize) = objp };
            ac.avail += 1;
            return;
        }
        self.cache_flusharray(cpu, c);
        // SAFETY: as above; the flush's reference is gone.
        let ac = unsafe { c.cpu_ac(cpu) };
        ac.entry[ac.avail as usize] = objp;
        ac.avail += 1;
    }

    /// `cache_flusharray`: move the oldest `batchcount` objects to the shared array, or back
    /// to their slabs.
    #[cold]
    fn cache_flusharray(&self, cpu: &CpuGuard<'_>, c: &KmemCache) {
        let node = cpu.node();
        let mut to_destroy = Vec::new();
        {
            let mut n = c.nodes[node].lock();
            // SAFETY: `cpu` is the handle our caller was given for this machine; `ac` is
            // last used before the objects go back to their slabs, and nothing in this
            // block reaches the array another way.
            let ac = unsafe { c.cpu_ac(cpu) };
            let mut batch = ac.batchcount;
            let mut done = false;
            if let Some(sh) = n.shared.as_mut() {
                let room = sh.limit - sh.avail;
                if room > 0 {
                    batch = batch.min(room);
                    for &o in &ac.entry[..batch as usize] {
                        sh.entry[sh.avail as usize] = o;
                        sh.avail += 1;
                    }
                    ac.take_bottom(batch);
                    done = true;
                }
            }
            if !done {
                let objs = ac.take_bottom(batch);
                drop(n);
                self.free_block(c, &objs, &mut to_destroy);
            }
        }
        for pfn in to_destroy {
            self.slab_destroy(cpu, c, pfn);
        }
    }

    /// `free_block`: return objects to their slabs (each under its node's lock), collecting
    /// free slabs beyond the node's `free_limit` in `to_destroy`.
    fn free_block(&self, c: &KmemCache, objs: &[usize], to_destroy: &mut Vec<Pfn>) {
        for &o in objs {
            let Ok((pfn, slab, _)) = self.obj_slab(o) else {
                continue;
            };
            let mut n = c.nodes[slab.nid()].lock();
            Self::unlist_slab(c, &mut n, self, pfn);
            self.slab_put_obj(c, pfn, slab, o);
            n.free_objects += 1;
            if slab.active() == 0 {
                n.slabs_free.push_front(&self.mem_map, pfn);
                n.free_slabs += 1;
            } else {
                n.slabs_partial.push_back(&self.mem_map, pfn);
            }
            n.free_touched = true;
            while n.free_objects > n.free_limit {
                let Some(f) = n.slabs_free.pop_back(&self.mem_map) else {
                    break;
                };
                n.free_slabs -= 1;
                n.total_slabs -= 1;
                n.free_objects -= c.num as u64;
                to_destroy.push(f);
            }
        }
    }

    /// `drain_array_locked`-style: give back `count` of an array's oldest objects.
    fn drain_entries(&self, cpu: &CpuGuard<'_>, c: &KmemCache, objs: Vec<usize>) {
        let mut to_destroy = Vec::new();
        self.free_block(c, &objs, &mut to_destroy);
        for pfn in to_destroy {
            self.slab_destroy(cpu, c, pfn);
        }
    }

    /// `drain_freelist`: free up to `tofree` entirely free slabs of `node`.
    fn drain_freelist(&self, cpu: &CpuGuard<'_>, c: &KmemCache, node: usize, tofree: u64) -> u64 {
        let mut freed = 0;
        while freed < tofree {
            let pfn = {
                let mut n = c.nodes[node].lock();
                let Some(p) = n.slabs_free.pop_back(&self.mem_map) else {
                    break;
                };
                n.free_slabs -= 1;
                n.total_slabs -= 1;
                n.free_objects -= c.num as u64;
                p
            };
            self.slab_destroy(cpu, c, pfn);
            freed += 1;
        }
        freed
    }

    /// `cache_reap` for the CPU `cpu` holds: age its arrays (`drain_array`: an untouched
    /// array gives back a fifth of its limit), and when the node's reap time has come, age
    /// the shared array and free some free slabs (`drain_freelist`). The simulator calls this
    /// about every 2 s on every CPU, as Linux's delayed work does.
    pub fn cache_reap(&self, cpu: &CpuGuard<'_>) {
        self.check_cpu(cpu);
        let node = cpu.node();
        let now = self.platform().now_ns();
        for c in self.live_caches() {
            // SAFETY: `cpu` is this machine's (checked above); `ac` is last used before its
            // objects go back to their slabs.
            let ac = unsafe { c.cpu_ac(cpu) };
            if ac.avail > 0 {
                if ac.touched {
                    ac.touched = false;
                } else {
                    let mut tofree = ac.limit.div_ceil(5);
                    if tofree > ac.avail {
                        tofree = ac.avail.div_ceil(2);
                    }
                    let objs = ac.take_bottom(tofree);
                    self.drain_entries(cpu, c, objs);
                }
            }
            let due = {
                let mut n = c.nodes[node].lock();
                if n.next_reap > now {
                    false
                } else {
                    n.next_reap = now + REAPTIMEOUT_NODE_NS;
                    true
                }
            };
            if !due {
                continue;
            }
            let shared_objs = {
                let mut n = c.nodes[node].lock();
                match n.shared.as_mut() {
                    Some(sh) if sh.avail > 0 && sh.touched => {
                        sh.touched = false;
                        Vec::new()
                    }
                    Some(sh) if sh.avail > 0 => {
                        let mut tofree = sh.limit.div_ceil(5);
                        if tofree > sh.avail {
                            tofree = sh.avail.div_ceil(2);
                        }
                        sh.take_bottom(tofree)
                    }
                    _ => Vec::new(),
                }
            };
            self.drain_entries(cpu, c, shared_objs);
            let tofree = {
                let mut n = c.nodes[node].lock();
                if n.free_touched {
                    n.free_touched = false;
                    0
                } else {
                    n.free_limit.div_ceil(5 * c.num as u64)
                }
            };
            self.drain_freelist(cpu, c, node, tofree);
        }
    }

    /// Handles of the live caches, in creation order.
    pub fn cache_ids(&self) -> Vec<CacheId> {
        self.live_caches().map(|c| CacheId(c.id)).collect()
    }

    /// Live caches in creation order.
    pub(crate) fn live_caches(&self) -> impl Iterator<Item = &KmemCache> {
        let ids: Vec<u32> = self.slab.order.lock().clone();
        ids.into_iter().filter_map(move |i| self.cache(CacheId(i)))
    }

    /// Drain every CPU's array and the shared arrays of `c`, then free all free slabs.
    /// Runs on each CPU in turn by taking its handle (may sleep).
    fn drain_cache(&self, c: &KmemCache) -> Result<(), Errno> {
        for cpu_id in 0..self.nr_cpus() {
            let cpu = self.get_cpu_id(cpu_id)?;
            // SAFETY: a handle this kernel just gave out; `ac` is last used before its
            // objects go back to their slabs.
            let ac = unsafe { c.cpu_ac(&cpu) };
            let objs = ac.take_bottom(ac.avail);
            self.drain_entries(&cpu, c, objs);
        }
        let cpu = self.get_cpu_id(0)?;
        for node in 0..c.nodes.len() {
            let objs = {
                let mut n = c.nodes[node].lock();
                match n.shared.as_mut() {
                    Some(sh) => sh.take_bottom(sh.avail),
                    None => Vec::new(),
                }
            };
            self.drain_entries(&cpu, c, objs);
            self.drain_freelist(&cpu, c, node, u64::MAX);
        }
        Ok(())
    }

    /// `kmem_cache_shrink`: drain the per-CPU and shared arrays and give every free slab back
    /// to the page allocator. Returns whether slabs with objects in use remain. May sleep:
    /// call it without holding a CPU.
    pub fn kmem_cache_shrink(&self, id: CacheId) -> Result<bool, Errno> {
        let c = self.cache(id).ok_or(Errno::EINVAL)?;
        self.drain_cache(c)?;
        Ok(c.nodes.iter().any(|n| n.lock().total_slabs > 0))
    }

    /// Shrink every live cache, newest first, so the off-slab freelists a large cache gives
    /// back on shrinking reach their (older, smaller) kmalloc cache before it is shrunk in
    /// turn (what `drop_slab` achieves by looping). May sleep.
    pub fn kmem_cache_shrink_all(&self) -> Result<(), Errno> {
        let mut ids = self.cache_ids();
        ids.reverse();
        for id in ids {
            self.kmem_cache_shrink(id)?;
        }
        Ok(())
    }

    /// `kmem_cache_destroy`: shrink, and if no object is still allocated, remove the cache.
    /// With objects still allocated it reports them as Linux does and fails with `EBUSY`,
    /// leaving the cache usable. May sleep: call it without holding a CPU.
    pub fn kmem_cache_destroy(&self, id: CacheId) -> Result<(), Errno> {
        let c = self.cache(id).ok_or(Errno::EINVAL)?;
        if self.kmem_cache_shrink(id)? {
            self.printk(&format!("kmem_cache_destroy {}: Slab cache still has objects when called from kmem_cache_destroy", c.name));
            return Err(Errno::EBUSY);
        }
        c.dead.store(true, Relaxed);
        self.slab.table[id.0 as usize].store(core::ptr::null_mut(), Relaxed);
        self.slab.order.lock().retain(|&i| i != id.0);
        Ok(())
    }

    /// `kmem_cache_alloc_bulk`: fill `out` with objects; all or nothing (returns `out.len()`
    /// or 0, freeing what it got on failure).
    #[track_caller]
    pub fn kmem_cache_alloc_bulk(
        &self,
        cpu: &CpuGuard<'_>,
        id: CacheId,
        gfp: Gfp,
        out: &mut [Option<NonNull<u8>>],
    ) -> usize {
        let Some(c) = self.cache(id) else { return 0 };
        let caller = Caller::here();
        for i in 0..out.len() {
            match self.slab_alloc(cpu, c, gfp, caller) {
                Some(p) => out[i] = Some(p),
                None => {
                    for o in out[..i].iter_mut() {
                        if let Some(p) = o.take() {
                            // SAFETY: an object this call allocated from `c` above.
                            unsafe { self.slab_free(cpu, c, p.as_ptr() as usize, caller) };
                        }
                    }
                    return 0;
                }
            }
        }
        out.len()
    }

    /// `kmem_cache_free_bulk`.
    #[track_caller]
    pub fn kmem_cache_free_bulk(&self, cpu: &CpuGuard<'_>, id: CacheId, objs: &[NonNull<u8>]) {
        for &o in objs {
            self.kmem_cache_free(cpu, id, o);
        }
    }
}

/// Index of `nr_slab_reclaimable` in the node counters.
pub const NR_SLAB_RECLAIMABLE: usize = crate::mm::vmstat::index_of(
    crate::mm::vmstat_names::NODE_STAT_NAMES,
    "nr_slab_reclaimable",
);
/// Index of `nr_slab_unreclaimable`.
pub const NR_SLAB_UNRECLAIMABLE: usize = crate::mm::vmstat::index_of(
    crate::mm::vmstat_names::NODE_STAT_NAMES,
    "nr_slab_unreclaimable",
);

/// Per-cache figures for `/proc/slabinfo` (`get_slabinfo`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlabInfo {
    /// Cache name.
    pub name: String,
    /// Objects in use (including those in per-CPU arrays).
    pub active_objs: u64,
    /// Objects in all slabs.
    pub num_objs: u64,
    /// Buffer size.
    pub objsize: u32,
    /// Objects per slab.
    pub objperslab: u32,
    /// Pages per slab.
    pub pagesperslab: u32,
    /// Tunables.
    pub limit: u32,
    /// Tunables.
    pub batchcount: u32,
    /// Tunables.
    pub sharedfactor: u32,
    /// Slabs with objects in use.
    pub active_slabs: u64,
    /// All slabs.
    pub num_slabs: u64,
    /// Objects in the shared arrays.
    pub shared_avail: u64,
}

impl Kernel {
    /// `get_slabinfo` for every live cache, newest first.
    pub fn slabinfo(&self) -> Vec<SlabInfo> {
        let mut v: Vec<SlabInfo> = self
            .live_caches()
            .map(|c| {
                let (mut total, mut free_slabs, mut free_objs, mut shared) = (0, 0, 0, 0);
                for n in c.nodes.iter() {
                    let n = n.lock();
                    total += n.total_slabs;
                    free_slabs += n.free_slabs;
                    free_objs += n.free_objects;
                    shared += n.shared.as_ref().map_or(0, |s| s.avail as u64);
                }
                let num_objs = total * c.num as u64;
                SlabInfo {
                    name: c.name.clone(),
                    active_objs: num_objs - free_objs,
                    num_objs,
                    objsize: c.size,
                    objperslab: c.num,
                    pagesperslab: 1 << c.gfporder,
                    limit: c.tunables[0].load(Relaxed),
                    batchcount: c.tunables[1].load(Relaxed),
                    sharedfactor: c.tunables[2].load(Relaxed),
                    active_slabs: total - free_slabs,
                    num_slabs: total,
                    shared_avail: shared,
                }
            })
            .collect();
        v.reverse();
        v
    }
}
