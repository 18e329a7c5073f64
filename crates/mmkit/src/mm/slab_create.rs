//! Creating a SLAB cache (`mm/slab_common.c`'s `kmem_cache_create`, `mm/slab.c`'s
//! `__kmem_cache_create`): the buffer size with alignment (`calculate_alignment`) and debug
//! words, the slab order and objects per slab (`calculate_slab_order`, `cache_estimate`),
//! whether the freelist goes off the slab (`set_off_slab_cache`), the colour range, and the
//! per-CPU and shared array sizes (`enable_cpucache`). The allocator itself is in
//! [`crate::mm::slab`].

use crate::addr::{align_up, PAGE_SHIFT, PAGE_SIZE};
use crate::errno::Errno;
use crate::gfp::Gfp;
use crate::mm::list::PageList;
use crate::mm::slab::{
    ArrayCache, CacheId, Ctor, KmemCache, KmemCacheNode, SlabFlags, CACHE_LINE, KMALLOC_MAX_ORDER,
    MAX_CACHES, REAPTIMEOUT_NODE_NS, SLAB_DEBUG_FLAGS, SLAB_OBJ_MAX_NUM,
};
use crate::sync::{CachePadded, SpinLock};
use crate::Kernel;
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};

/// What `kmem_cache_create` is asked for.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CacheSpec<'a> {
    pub name: &'a str,
    pub size: u32,
    pub align: u32,
    pub flags: SlabFlags,
    pub ctor: Option<Ctor>,
}

/// `cache_estimate`: objects per slab of `order` and the bytes left over.
fn cache_estimate(order: u32, size: u32, off_slab: bool) -> (u32, u32) {
    let slab = (PAGE_SIZE << order) as u32;
    let per = if off_slab { size } else { size + 2 };
    (slab / per, slab % per)
}

/// `calculate_alignment`.
fn calculate_alignment(flags: SlabFlags, align: u32, size: u32) -> u32 {
    let mut align = align;
    if flags.contains(SlabFlags::SLAB_HWCACHE_ALIGN) {
        let mut ralign = CACHE_LINE;
        while size <= ralign / 2 {
            ralign /= 2;
        }
        align = align.max(ralign);
    }
    align.max(8).next_multiple_of(8)
}

impl Kernel {
    /// `kmem_cache_create(name, size, align, flags, ctor)`. `EINVAL` for a size of 0 or above
    /// what a slab of `KMALLOC_MAX_ORDER` holds, an alignment that is not a power of two, or
    /// an empty name; `ENOMEM` when no slot is left. With `SLAB_PANIC` a failure is reported
    /// as Linux's panic message (the simulated machine keeps running).
    pub fn kmem_cache_create(
        &self,
        name: &str,
        size: usize,
        align: usize,
        flags: SlabFlags,
        ctor: Option<Ctor>,
    ) -> Result<CacheId, Errno> {
        let r = self.create_cache(
            CacheSpec {
                name,
                size: size.min(u32::MAX as usize) as u32,
                align: align.min(1 << 16) as u32,
                flags,
                ctor,
            },
            size,
        );
        if let Err(e) = r {
            if flags.contains(SlabFlags::SLAB_PANIC) {
                self.printk(&format!("Kernel panic - not syncing: kmem_cache_create: Failed to create slab '{name}'. Error {}", -e.code()));
            }
        }
        r
    }

    /// `calculate_slab_order`: the smallest slab order (up to `KMALLOC_MAX_ORDER`) whose
    /// objects of `size` bytes, with the freelist on or off the slab, fit at most
    /// `SLAB_OBJ_MAX_NUM` to a slab and waste at most an eighth of it — or reach
    /// `slab_max_order` (1 above 32 MiB of RAM, else 0) or are `SLAB_RECLAIM_ACCOUNT`.
    /// An off-slab freelist must come from a kmalloc cache that is itself on-slab and of
    /// at most half this object size (Linux's recursion guard). Returns the order, the
    /// objects per slab and the bytes left over; `None` when no order fits one object.
    fn calculate_slab_order(
        &self,
        size: u32,
        flags: SlabFlags,
        off_slab: bool,
    ) -> Option<(u32, u32, u32)> {
        let slab_max_order = if self.totalram_pages() > (32 << 20) >> PAGE_SHIFT {
            1
        } else {
            0
        };
        let mut found = None;
        for order in 0..=KMALLOC_MAX_ORDER {
            let (num, left) = cache_estimate(order, size, off_slab);
            if num == 0 {
                continue;
            }
            if num > SLAB_OBJ_MAX_NUM {
                break;
            }
            if off_slab {
                let fl = num * 2;
                match self
                    .kmalloc_cache_for(fl as usize, false)
                    .and_then(|id| self.cache(id))
                {
                    Some(fc) if !fc.off_slab && fc.size <= size / 2 => {}
                    _ => continue,
                }
            }
            found = Some((order, num, left));
            if flags.contains(SlabFlags::SLAB_RECLAIM_ACCOUNT)
                || order >= slab_max_order
                || left * 8 <= (PAGE_SIZE << order) as u32
            {
                break;
            }
        }
        found
    }

    pub(crate) fn create_cache(
        &self,
        spec: CacheSpec<'_>,
        raw_size: usize,
    ) -> Result<CacheId, Errno> {
        if spec.name.is_empty()
            || raw_size == 0
            || raw_size > (PAGE_SIZE << KMALLOC_MAX_ORDER) as usize
            || (spec.align != 0 && !spec.align.is_power_of_two())
        {
            self.printk(&format!(
                "kmem_cache_create({}) failed with error -22",
                spec.name
            ));
            return Err(Errno::EINVAL);
        }
        let mut flags = spec.flags;
        if self.slab.debug_all.load(Relaxed) {
            flags |= SLAB_DEBUG_FLAGS;
        }
        let object_size = spec.size;
        // __kmem_cache_create: word-align, then add the debug words, then align.
        let mut size = align_up(object_size as u64, 8) as u32;
        let align = calculate_alignment(flags, spec.align.max(1), size);
        let mut obj_offset = 0;
        if flags.contains(SlabFlags::SLAB_RED_ZONE) {
            obj_offset = 8;
            size += 16;
        }
        if flags.contains(SlabFlags::SLAB_STORE_USER) {
            size += 8;
        }
        let size = align_up(size as u64, align as u64) as u32;
        let colour_off = CACHE_LINE.max(align);

        // Where the freelist goes: off-slab for large objects (size >= PAGE_SIZE / 8, as the
        // seeds say) unless the left-over space holds it anyway; on-slab otherwise.
        let mut off_slab = false;
        let mut est = None;
        if size as u64 >= PAGE_SIZE >> 3 {
            if let Some((order, num, left)) = self.calculate_slab_order(size, flags, true) {
                if left < num * 2 {
                    off_slab = true;
                    est = Some((order, num, left));
                }
            }
        }
        let (gfporder, num, left) = match est {
            Some(e) => e,
            None => self
                .calculate_slab_order(size, flags, false)
                .ok_or(Errno::EINVAL)?,
        };
        let freelist_size = num * 2;
        let freelist_cache = if off_slab {
            self.kmalloc_cache_for(freelist_size as usize, false)
        } else {
            None
        };
        let mut allocflags = Gfp::__GFP_COMP;
        if flags.contains(SlabFlags::SLAB_CACHE_DMA) {
            allocflags |= Gfp::__GFP_DMA;
        }
        if flags.contains(SlabFlags::SLAB_CACHE_DMA32) {
            allocflags |= Gfp::__GFP_DMA32;
        }
        if flags.contains(SlabFlags::SLAB_RECLAIM_ACCOUNT) {
            allocflags |= Gfp::__GFP_RECLAIMABLE;
        }

        // enable_cpucache: the array sizes by object size.
        let mut limit: u32 = match size {
            s if s > 131_072 => 1,
            s if s as u64 > PAGE_SIZE => 8,
            s if s > 1024 => 24,
            s if s > 256 => 54,
            _ => 120,
        };
        let shared = if size as u64 <= PAGE_SIZE && self.nr_cpus() > 1 {
            8
        } else {
            0
        };
        if flags.intersects(SLAB_DEBUG_FLAGS) && limit > 32 {
            limit = 32;
        }
        let batchcount = limit.div_ceil(2);

        let mut owned = self.slab.owned.lock();
        let id = owned.len() as u32;
        if id as usize >= MAX_CACHES {
            return Err(Errno::ENOMEM);
        }
        let nodes = self
            .nodes
            .iter()
            .map(|n| {
                let cpus = (0..self.nr_cpus())
                    .filter(|&c| self.cpus.get(c).node == n.node_id)
                    .count() as u64;
                SpinLock::new(KmemCacheNode {
                    slabs_partial: PageList::new(),
                    slabs_full: PageList::new(),
                    slabs_free: PageList::new(),
                    total_slabs: 0,
                    free_slabs: 0,
                    free_objects: 0,
                    free_limit: (1 + cpus) * batchcount as u64 + num as u64,
                    colour_next: 0,
                    shared: (shared > 0).then(|| ArrayCache::new(shared * batchcount, 0xbaad_f00d)),
                    free_touched: false,
                    next_reap: self.platform().now_ns()
                        + REAPTIMEOUT_NODE_NS
                        + n.node_id as u64 * 1_000_000,
                })
            })
            .collect();
        let cache = Box::new(KmemCache {
            name: String::from(spec.name),
            id,
            object_size,
            size,
            align,
            flags,
            num,
            gfporder,
            colour: (left / colour_off).min(0xffff),
            colour_off,
            freelist_size,
            off_slab,
            freelist_cache,
            obj_offset,
            ctor: spec.ctor,
            allocflags,
            tunables: [
                AtomicU32::new(limit),
                AtomicU32::new(batchcount),
                AtomicU32::new(shared),
            ],
            cpu_cache: (0..self.nr_cpus())
                .map(|_| CachePadded(UnsafeCell::new(ArrayCache::new(limit, batchcount))))
                .collect(),
            nodes,
            dead: AtomicBool::new(false),
            ctor_calls: AtomicU64::new(0),
            reciprocal: (1u64 << 32).div_ceil(size as u64),
        });
        let ptr = &*cache as *const KmemCache as *mut KmemCache;
        owned.push(cache);
        self.slab.table[id as usize].store(ptr, Relaxed);
        self.slab.order.lock().push(id);
        Ok(CacheId(id))
    }
}
