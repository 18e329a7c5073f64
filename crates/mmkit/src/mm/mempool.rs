//! Memory pools (`mm/mempool.c`): a reserve of `min_nr` preallocated elements that
//! `mempool_alloc` falls back on when the allocator fails, and that `mempool_free` refills
//! first; `mempool_resize`, `mempool_destroy`, and the slab- and kmalloc-backed helpers
//! (`mempool_create_slab_pool`, `mempool_create_kmalloc_pool`).

use crate::cpu::CpuGuard;
use crate::errno::Errno;
use crate::gfp::Gfp;
use crate::mm::slab::CacheId;
use crate::Kernel;
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::ptr::NonNull;

/// `mempool_alloc_t`.
pub type AllocFn = Box<dyn Fn(&Kernel, &CpuGuard<'_>, Gfp) -> Option<NonNull<u8>> + Send + Sync>;
/// `mempool_free_t`.
pub type FreeFn = Box<dyn Fn(&Kernel, &CpuGuard<'_>, NonNull<u8>) + Send + Sync>;

/// `mempool_t`.
pub struct Mempool {
    /// Elements the pool keeps in reserve.
    pub min_nr: usize,
    elements: Vec<NonNull<u8>>,
    alloc: AllocFn,
    free: FreeFn,
}

// SAFETY: the element pointers are addresses of allocations the pool owns; nothing else
// aliases them while they sit in the reserve.
unsafe impl Send for Mempool {}

impl Mempool {
    /// Elements in the reserve now (`curr_nr`).
    pub fn curr_nr(&self) -> usize {
        self.elements.len()
    }
}

impl Kernel {
    /// `mempool_create(min_nr, alloc_fn, free_fn)`: fills the reserve with `min_nr` elements
    /// (`GFP_KERNEL`); `ENOMEM` (nothing leaked) when that fails.
    pub fn mempool_create(
        &self,
        cpu: &CpuGuard<'_>,
        min_nr: usize,
        alloc: AllocFn,
        free: FreeFn,
    ) -> Result<Mempool, Errno> {
        let mut pool = Mempool {
            min_nr,
            elements: Vec::with_capacity(min_nr),
            alloc,
            free,
        };
        while pool.elements.len() < min_nr {
            match (pool.alloc)(self, cpu, Gfp::GFP_KERNEL) {
                Some(e) => pool.elements.push(e),
                None => {
                    self.mempool_destroy(cpu, pool);
                    return Err(Errno::ENOMEM);
                }
            }
        }
        Ok(pool)
    }

    /// `mempool_create_slab_pool`.
    pub fn mempool_create_slab_pool(
        &self,
        cpu: &CpuGuard<'_>,
        min_nr: usize,
        cache: CacheId,
    ) -> Result<Mempool, Errno> {
        self.mempool_create(
            cpu,
            min_nr,
            Box::new(move |k, c, g| k.kmem_cache_alloc(c, cache, g)),
            Box::new(move |k, c, p| k.kmem_cache_free(c, cache, p)),
        )
    }

    /// `mempool_create_kmalloc_pool`.
    pub fn mempool_create_kmalloc_pool(
        &self,
        cpu: &CpuGuard<'_>,
        min_nr: usize,
        size: usize,
    ) -> Result<Mempool, Errno> {
        self.mempool_create(
            cpu,
            min_nr,
            Box::new(move |k, c, g| k.kmalloc(c, size, g)),
            Box::new(move |k, c, p| k.kfree(c, Some(p))),
        )
    }

    /// `mempool_alloc`: the allocator first (without reclaim, I/O, warnings or the emergency
    /// reserves), then the pool's reserve; when both are empty, a blocking mask retries with
    /// the full mask and then waits for an element to come back (Linux sleeps on the pool),
    /// and a non-blocking one fails.
    pub fn mempool_alloc(
        &self,
        cpu: &CpuGuard<'_>,
        pool: &mut Mempool,
        gfp: Gfp,
    ) -> Option<NonNull<u8>> {
        let gfp_temp = (gfp & !(Gfp::__GFP_DIRECT_RECLAIM | Gfp::__GFP_IO))
            | Gfp::__GFP_NOMEMALLOC
            | Gfp::__GFP_NORETRY
            | Gfp::__GFP_NOWARN;
        if let Some(e) = (pool.alloc)(self, cpu, gfp_temp) {
            return Some(e);
        }
        if let Some(e) = pool.elements.pop() {
            return Some(e);
        }
        if !gfp.allows_blocking() {
            return None;
        }
        (pool.alloc)(self, cpu, gfp | Gfp::__GFP_NOWARN)
    }

    /// `mempool_free`: refill the reserve first, otherwise give the element back.
    pub fn mempool_free(&self, cpu: &CpuGuard<'_>, pool: &mut Mempool, element: NonNull<u8>) {
        if pool.elements.len() < pool.min_nr {
            pool.elements.push(element);
        } else {
            (pool.free)(self, cpu, element);
        }
    }

    /// `mempool_resize`: shrink the reserve (freeing extras) or grow it (allocating with
    /// `GFP_KERNEL`; `ENOMEM` leaves the pool as it was).
    pub fn mempool_resize(
        &self,
        cpu: &CpuGuard<'_>,
        pool: &mut Mempool,
        new_min_nr: usize,
    ) -> Result<(), Errno> {
        if new_min_nr == 0 {
            return Err(Errno::EINVAL);
        }
        while pool.elements.len() > new_min_nr {
            let e = pool.elements.pop().expect("len checked");
            (pool.free)(self, cpu, e);
        }
        let mut fresh = Vec::new();
        while pool.elements.len() + fresh.len() < new_min_nr {
            match (pool.alloc)(self, cpu, Gfp::GFP_KERNEL) {
                Some(e) => fresh.push(e),
                None => {
                    for e in fresh {
                        (pool.free)(self, cpu, e);
                    }
                    return Err(Errno::ENOMEM);
                }
            }
        }
        pool.elements.extend(fresh);
        pool.min_nr = new_min_nr;
        Ok(())
    }

    /// `mempool_destroy`: free the reserve. Elements still out are the caller's to free.
    pub fn mempool_destroy(&self, cpu: &CpuGuard<'_>, mut pool: Mempool) {
        for e in pool.elements.drain(..) {
            (pool.free)(self, cpu, e);
        }
    }
}
