//! kmalloc and friends (`mm/slab_common.c`, `include/linux/slab.h`): the kmalloc size
//! classes (8 … 8 KiB plus 96 and 192, chosen by `kmalloc_index` and the `size_index` table),
//! `dma-kmalloc-*` caches for `GFP_DMA`, `kmalloc_large` straight from the page allocator up to
//! 4 MiB, `kzalloc`, `kcalloc`, `krealloc`, `kfree`, `ksize`, `kmalloc_node`, `ZERO_SIZE_PTR`,
//! and `/proc/slabinfo` (`slabinfo_show`, version 2.1).

use crate::addr::{PAGE_SHIFT, PAGE_SIZE};
use crate::cpu::CpuGuard;
use crate::gfp::Gfp;
use crate::mm::page::PageFlags;
use crate::mm::page_alloc::MAX_PAGE_ORDER;
use crate::mm::slab::{CacheId, SlabFlags};
use crate::mm::slab_create::CacheSpec;
use crate::mm::slab_debug::Caller;
use crate::Kernel;
use alloc::format;
use alloc::string::String;
use core::fmt::Write;
use core::ptr::NonNull;
use core::sync::atomic::Ordering::Relaxed;

/// `KMALLOC_SHIFT_LOW`: the smallest class is 8 bytes.
pub const KMALLOC_SHIFT_LOW: u32 = 3;
/// `KMALLOC_SHIFT_HIGH`: the largest cache is 8 KiB (`PAGE_SHIFT + 1`).
pub const KMALLOC_SHIFT_HIGH: u32 = PAGE_SHIFT + 1;
/// `KMALLOC_MAX_CACHE_SIZE`.
pub const KMALLOC_MAX_CACHE_SIZE: usize = 1 << KMALLOC_SHIFT_HIGH;
/// `KMALLOC_MAX_SIZE`: `kmalloc_large` serves up to a MAX_PAGE_ORDER block (4 MiB).
pub const KMALLOC_MAX_SIZE: usize = (PAGE_SIZE as usize) << MAX_PAGE_ORDER;
/// `ZERO_SIZE_PTR`: what `kmalloc(0)` returns; `kfree` ignores it.
pub const ZERO_SIZE_PTR: usize = 16;

/// `size_index[]`: the class for sizes up to 192, by `(size - 1) / 8`.
const SIZE_INDEX: [u8; 24] = [
    3, 4, 5, 5, 6, 6, 6, 6, 1, 1, 1, 1, 7, 7, 7, 7, 2, 2, 2, 2, 2, 2, 2, 2,
];

/// `kmalloc_index(size)`: the kmalloc class of a size (0 for 0; 1 is the 96-byte class, 2
/// the 192-byte class, n the 2^n-byte class); `None` above `KMALLOC_MAX_CACHE_SIZE`.
pub fn kmalloc_index(size: usize) -> Option<u32> {
    match size {
        0 => Some(0),
        1..=8 => Some(KMALLOC_SHIFT_LOW),
        65..=96 => Some(1),
        129..=192 => Some(2),
        s if s <= KMALLOC_MAX_CACHE_SIZE => Some(usize::BITS - (s - 1).leading_zeros()),
        _ => None,
    }
}

/// `kmalloc_slab`'s class choice: `size_index` below 192, `fls(size - 1)` above.
#[inline]
pub fn kmalloc_class(size: usize) -> Option<u32> {
    if size == 0 {
        None
    } else if size <= 192 {
        Some(SIZE_INDEX[(size - 1) / 8] as u32)
    } else if size <= KMALLOC_MAX_CACHE_SIZE {
        Some(usize::BITS - (size - 1).leading_zeros())
    } else {
        None
    }
}

/// Size of class `i`.
pub fn kmalloc_size(i: u32) -> usize {
    match i {
        1 => 96,
        2 => 192,
        i => 1 << i,
    }
}

/// `kmalloc_info[i].name`: `kmalloc-96`, `kmalloc-1k`, `dma-kmalloc-8k`.
pub fn kmalloc_name(i: u32, dma: bool) -> String {
    let s = kmalloc_size(i);
    let size = if s >= 1024 {
        format!("{}k", s / 1024)
    } else {
        format!("{s}")
    };
    format!("{}kmalloc-{size}", if dma { "dma-" } else { "" })
}

impl Kernel {
    /// `create_kmalloc_caches`: the normal and DMA kmalloc caches, smallest first (so the
    /// off-slab freelists of larger caches have a home).
    pub(crate) fn create_kmalloc_caches(&self) {
        for dma in [false, true] {
            let mut classes: alloc::vec::Vec<u32> =
                (KMALLOC_SHIFT_LOW..=KMALLOC_SHIFT_HIGH).collect();
            classes.insert(4, 1); // 96 after 64
            classes.insert(6, 2); // 192 after 128
            for i in classes {
                let name = kmalloc_name(i, dma);
                let size = kmalloc_size(i);
                let align = if size.is_power_of_two() {
                    size.min(PAGE_SIZE as usize)
                } else {
                    8
                };
                let flags = if dma {
                    SlabFlags::SLAB_CACHE_DMA
                } else {
                    SlabFlags::empty()
                };
                let id = self
                    .create_cache(
                        CacheSpec {
                            name: &name,
                            size: size as u32,
                            align: align as u32,
                            flags,
                            ctor: None,
                        },
                        size,
                    )
                    .expect("kmalloc caches fit the cache table");
                self.slab.kmalloc[dma as usize][i as usize].store(id.0 + 1, Relaxed);
                let ptr = self
                    .cache(id)
                    .map_or(core::ptr::null_mut(), |c| c as *const _ as *mut _);
                self.slab.kmalloc_ptr[dma as usize][i as usize].store(ptr, Relaxed);
            }
        }
    }

    /// The kmalloc cache for `size` bytes (`kmalloc_slab`).
    #[inline]
    pub(crate) fn kmalloc_cache_for(&self, size: usize, dma: bool) -> Option<CacheId> {
        let i = kmalloc_class(size)?;
        let v = self.slab.kmalloc[dma as usize][i as usize].load(Relaxed);
        (v != 0).then(|| CacheId(v - 1))
    }

    /// `kmalloc(size, gfp)`: a host pointer to at least `size` bytes, 8-aligned (power-of-two
    /// sizes aligned to their size up to a page). `ZERO_SIZE_PTR` for 0, `None` when memory
    /// runs out or `size` exceeds `KMALLOC_MAX_SIZE`.
    #[track_caller]
    #[inline]
    pub fn kmalloc(&self, cpu: &CpuGuard<'_>, size: usize, gfp: Gfp) -> Option<NonNull<u8>> {
        self.kmalloc_caller(cpu, size, gfp, Caller::here())
    }

    #[inline]
    fn kmalloc_caller(
        &self,
        cpu: &CpuGuard<'_>,
        size: usize,
        gfp: Gfp,
        caller: Caller,
    ) -> Option<NonNull<u8>> {
        if size == 0 {
            return NonNull::new(ZERO_SIZE_PTR as *mut u8);
        }
        if size > KMALLOC_MAX_CACHE_SIZE {
            return self.kmalloc_large(cpu, size, gfp);
        }
        let class = kmalloc_class(size)?;
        let p = self.slab.kmalloc_ptr[gfp.contains(Gfp::__GFP_DMA) as usize][class as usize]
            .load(Relaxed);
        // SAFETY: kmalloc caches are created at boot and never destroyed; their boxes live
        // as long as the kernel.
        let c = unsafe { p.as_ref()? };
        self.slab_alloc(cpu, c, gfp, caller)
    }

    /// `kmalloc_node`: as `kmalloc`, preferring node `nid` for a new slab or large block.
    #[track_caller]
    pub fn kmalloc_node(
        &self,
        cpu: &CpuGuard<'_>,
        size: usize,
        gfp: Gfp,
        nid: usize,
    ) -> Option<NonNull<u8>> {
        if size > KMALLOC_MAX_CACHE_SIZE {
            let order = self.large_order(size, gfp)?;
            let p = self.alloc_pages_node(cpu, nid, gfp | Gfp::__GFP_COMP, order)?;
            return NonNull::new(self.pfn_addr(self.page_to_pfn(p)) as *mut u8);
        }
        if size == 0 {
            return NonNull::new(ZERO_SIZE_PTR as *mut u8);
        }
        let id = self.kmalloc_cache_for(size, gfp.contains(Gfp::__GFP_DMA))?;
        let c = self.cache(id)?;
        self.slab_alloc_node(cpu, c, gfp, nid, Caller::here())
    }

    fn large_order(&self, size: usize, gfp: Gfp) -> Option<u32> {
        if size > KMALLOC_MAX_SIZE {
            if !gfp.contains(Gfp::__GFP_NOWARN) {
                self.printk(&format!("WARNING: kmalloc_large: {size} bytes exceeds KMALLOC_MAX_SIZE ({KMALLOC_MAX_SIZE})"));
            }
            return None;
        }
        let pages = size.div_ceil(PAGE_SIZE as usize);
        Some(usize::BITS - (pages - 1).leading_zeros())
    }

    /// `kmalloc_large`: a compound block straight from the page allocator.
    fn kmalloc_large(&self, cpu: &CpuGuard<'_>, size: usize, gfp: Gfp) -> Option<NonNull<u8>> {
        let order = self.large_order(size, gfp)?;
        let p = self.alloc_pages(cpu, gfp | Gfp::__GFP_COMP, order)?;
        NonNull::new(self.pfn_addr(self.page_to_pfn(p)) as *mut u8)
    }

    /// `kzalloc`.
    #[track_caller]
    pub fn kzalloc(&self, cpu: &CpuGuard<'_>, size: usize, gfp: Gfp) -> Option<NonNull<u8>> {
        self.kmalloc_caller(cpu, size, gfp | Gfp::__GFP_ZERO, Caller::here())
    }

    /// `kcalloc(n, size)`: zeroed, `None` when `n * size` overflows.
    #[track_caller]
    pub fn kcalloc(
        &self,
        cpu: &CpuGuard<'_>,
        n: usize,
        size: usize,
        gfp: Gfp,
    ) -> Option<NonNull<u8>> {
        let bytes = n.checked_mul(size)?;
        self.kmalloc_caller(cpu, bytes, gfp | Gfp::__GFP_ZERO, Caller::here())
    }

    /// `ksize(ptr)`: the usable size of an allocation (the cache's object size, or the
    /// large block's size); 0 for NULL/`ZERO_SIZE_PTR` and for pointers kmalloc did not return.
    pub fn ksize(&self, ptr: NonNull<u8>) -> usize {
        let a = ptr.as_ptr() as usize;
        if a <= ZERO_SIZE_PTR {
            return 0;
        }
        match self.obj_slab(a) {
            Ok((_, _, c)) => c.object_size as usize,
            Err(_) => match self.large_head(a) {
                Some(order) => (PAGE_SIZE as usize) << order,
                None => 0,
            },
        }
    }

    /// The order of a `kmalloc_large` block starting at `addr`.
    fn large_head(&self, addr: usize) -> Option<u32> {
        let pa = self.direct_map.pa(addr);
        if pa >= self.boot.max_pfn << PAGE_SHIFT || pa & (PAGE_SIZE - 1) != 0 {
            return None;
        }
        let p = self.mem_map.pfn_to_page(crate::PhysAddr(pa).pfn_down())?;
        (p.test(PageFlags::HEAD) && p.refcount() > 0 && !p.test(PageFlags::SLAB))
            .then(|| p.private())
    }

    /// `krealloc(ptr, size, gfp)`: in place when `ksize` allows, otherwise a new allocation
    /// with the old bytes copied and the old one freed. Size 0 frees and returns
    /// `ZERO_SIZE_PTR`; on failure the old allocation is untouched and `None` is returned.
    #[track_caller]
    pub fn krealloc(
        &self,
        cpu: &CpuGuard<'_>,
        ptr: Option<NonNull<u8>>,
        size: usize,
        gfp: Gfp,
    ) -> Option<NonNull<u8>> {
        let caller = Caller::here();
        let Some(old) = ptr.filter(|p| p.as_ptr() as usize > ZERO_SIZE_PTR) else {
            return self.kmalloc_caller(cpu, size, gfp, caller);
        };
        if size == 0 {
            self.kfree_caller(cpu, old, caller);
            return NonNull::new(ZERO_SIZE_PTR as *mut u8);
        }
        let ks = self.ksize(old);
        if ks == 0 {
            self.printk(&format!(
                "krealloc: {:#x} was not allocated by kmalloc",
                old.as_ptr() as usize
            ));
            return None;
        }
        if size <= ks {
            return Some(old);
        }
        let new = self.kmalloc_caller(cpu, size, gfp & !Gfp::__GFP_ZERO, caller)?;
        // SAFETY: both are live kmalloc allocations of at least `ks` and `size > ks` bytes.
        unsafe { core::ptr::copy_nonoverlapping(old.as_ptr(), new.as_ptr(), ks) };
        if gfp.contains(Gfp::__GFP_ZERO) {
            // SAFETY: the tail of the new allocation, inside its `size` bytes.
            unsafe { core::ptr::write_bytes(new.as_ptr().add(ks), 0, size - ks) };
        }
        self.kfree_caller(cpu, old, caller);
        Some(new)
    }

    /// `kfree(ptr)`: NULL and `ZERO_SIZE_PTR` are no-ops; a pointer kmalloc did not return is
    /// reported (`kfree: Object is not a Slab page!`) and ignored.
    #[track_caller]
    #[inline]
    pub fn kfree(&self, cpu: &CpuGuard<'_>, ptr: Option<NonNull<u8>>) {
        if let Some(p) = ptr {
            self.kfree_caller(cpu, p, Caller::here());
        }
    }

    #[inline]
    fn kfree_caller(&self, cpu: &CpuGuard<'_>, ptr: NonNull<u8>, caller: Caller) {
        let a = ptr.as_ptr() as usize;
        if a <= ZERO_SIZE_PTR {
            return;
        }
        match self.obj_slab(a) {
            Ok((pfn, slab, c)) => self.slab_free_checked(cpu, c, pfn, slab, a, caller),
            Err(why) => match self.large_head(a) {
                Some(order) => {
                    let page = self.virt_to_page(crate::VirtAddr(
                        crate::arch::x86_64::layout::PAGE_OFFSET + self.direct_map.pa(a),
                    ));
                    if let Some(p) = page {
                        self.__free_pages(cpu, p, order);
                    }
                }
                None => {
                    self.printk(&format!("kfree: {:#x}: {why}", a));
                    self.slab_reports.fetch_add(1, Relaxed);
                }
            },
        }
    }

    /// `/proc/slabinfo`.
    pub fn proc_slabinfo(&self) -> String {
        let mut s = String::from("slabinfo - version: 2.1\n");
        s.push_str("# name            <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> : tunables <limit> <batchcount> <sharedfactor> : slabdata <active_slabs> <num_slabs> <sharedavail>\n");
        for i in self.slabinfo() {
            let _ = writeln!(
                s,
                "{:<17} {:6} {:6} {:6} {:4} {:4} : tunables {:4} {:4} {:4} : slabdata {:6} {:6} {:6}",
                i.name, i.active_objs, i.num_objs, i.objsize, i.objperslab, i.pagesperslab, i.limit, i.batchcount, i.sharedfactor, i.active_slabs, i.num_slabs, i.shared_avail
            );
        }
        s
    }

    /// Pages held by slabs: (reclaimable, unreclaimable), for meminfo.
    pub fn slab_pages(&self) -> (u64, u64) {
        use crate::mm::slab::{NR_SLAB_RECLAIMABLE, NR_SLAB_UNRECLAIMABLE};
        (
            self.global_node_page_state(NR_SLAB_RECLAIMABLE),
            self.global_node_page_state(NR_SLAB_UNRECLAIMABLE),
        )
    }

    /// Slab debugging reports so far (bad frees, double frees, overruns, corruption).
    pub fn slab_error_reports(&self) -> u64 {
        self.slab_reports.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kmalloc_index_matches_linux() {
        assert_eq!(kmalloc_index(0), Some(0));
        assert_eq!(kmalloc_index(1), Some(3));
        assert_eq!(kmalloc_index(8), Some(3));
        assert_eq!(kmalloc_index(9), Some(4));
        assert_eq!(kmalloc_index(64), Some(6));
        assert_eq!(kmalloc_index(65), Some(1));
        assert_eq!(kmalloc_index(96), Some(1));
        assert_eq!(kmalloc_index(97), Some(7));
        assert_eq!(kmalloc_index(129), Some(2));
        assert_eq!(kmalloc_index(193), Some(8));
        assert_eq!(kmalloc_index(8192), Some(13));
        assert_eq!(kmalloc_index(8193), None);
        // kmalloc_slab's size_index agrees with kmalloc_index except where Linux's table
        // sends 24-byte requests to kmalloc-32 (there is no kmalloc-24).
        for s in 1..=8192 {
            let a = kmalloc_class(s).unwrap();
            assert!(kmalloc_size(a) >= s, "{s}");
            assert_eq!(a, kmalloc_index(s).unwrap(), "{s}");
        }
        assert_eq!(kmalloc_name(10, false), "kmalloc-1k");
        assert_eq!(kmalloc_name(1, true), "dma-kmalloc-96");
    }
}
