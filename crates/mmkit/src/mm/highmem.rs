//! Page-content helpers (`include/linux/highmem.h`): `clear_highpage`, `copy_highpage`, and
//! byte access to a physical page through the direct map, for the fault and user-copy paths.
//! On x86-64 every page is in the direct map, so "kmap" is the direct-map address.

use crate::addr::{Pfn, PhysAddr, PAGE_SIZE};
use crate::arch::x86_64::clear_page::clear_pages;
use crate::Kernel;

impl Kernel {
    /// Whether `pfn` is RAM this kernel's direct map covers (the precondition of the helpers
    /// below; callers have a `struct page` for it).
    #[inline]
    fn ram_pfn(&self, pfn: Pfn) -> bool {
        self.mem_map.pfn_valid(pfn)
    }

    /// `clear_highpage`: zero the page at `pfn`.
    pub(crate) fn clear_highpage(&self, pfn: Pfn) {
        assert!(self.ram_pfn(pfn), "clear_highpage of {pfn:?} outside RAM");
        // SAFETY: `pfn` is RAM inside the direct map (asserted), so the 4 KiB range is valid
        // for writes; the caller owns the page (just allocated, not yet mapped anywhere).
        unsafe { clear_pages(self.pfn_ptr(pfn), PAGE_SIZE as usize) };
    }

    /// `copy_user_highpage`: copy the page at `src` to the page at `dst`.
    pub(crate) fn copy_highpage(&self, dst: Pfn, src: Pfn) {
        assert!(
            self.ram_pfn(dst) && self.ram_pfn(src) && dst != src,
            "copy_highpage {src:?} -> {dst:?}"
        );
        // SAFETY: both pfns are distinct RAM pages in the direct map (asserted); `dst` was just
        // allocated by the caller and `src` is kept alive by the reference the caller holds.
        // Another CPU may write `src` meanwhile through a shared mapping, as on hardware; the
        // copy then sees either byte, which is what the architecture promises too.
        unsafe {
            core::ptr::copy_nonoverlapping(self.pfn_ptr(src), self.pfn_ptr(dst), PAGE_SIZE as usize)
        };
    }

    /// Copy `buf.len()` bytes out of physical memory at `pa` (within one page).
    pub(crate) fn phys_read(&self, pa: PhysAddr, buf: &mut [u8]) {
        let (pfn, off) = (pa.pfn_down(), (pa.0 & (PAGE_SIZE - 1)) as usize);
        assert!(self.ram_pfn(pfn) && off + buf.len() <= PAGE_SIZE as usize);
        // SAFETY: the range lies inside one RAM page of the direct map (asserted); the page is
        // mapped by the translation the caller just made, so it is allocated.
        unsafe {
            core::ptr::copy_nonoverlapping(self.pfn_ptr(pfn).add(off), buf.as_mut_ptr(), buf.len())
        };
    }

    /// Copy `buf` into physical memory at `pa` (within one page).
    pub(crate) fn phys_write(&self, pa: PhysAddr, buf: &[u8]) {
        let (pfn, off) = (pa.pfn_down(), (pa.0 & (PAGE_SIZE - 1)) as usize);
        assert!(self.ram_pfn(pfn) && off + buf.len() <= PAGE_SIZE as usize);
        // SAFETY: as in `phys_read`; the translation allowed a write, so the page belongs to
        // the mapping being written.
        unsafe {
            core::ptr::copy_nonoverlapping(buf.as_ptr(), self.pfn_ptr(pfn).add(off), buf.len())
        };
    }
}
