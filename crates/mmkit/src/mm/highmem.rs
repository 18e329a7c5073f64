//! Page-content helpers (`include/linux/highmem.h`): `clear_highpage`, `copy_highpage`, and
//! byte access to a physical page through the direct map, for the fault and user-copy paths
//! and for the owner of an allocated page (`page_bytes_mut`, `write_page`, `read_page`).
//! On x86-64 every page is in the direct map, so "kmap" is the direct-map address.

use crate::addr::{Pfn, PhysAddr, PAGE_SIZE};
use crate::arch::x86_64::clear_page::clear_pages;
use crate::mm::page::{Page, PageFlags};
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

    /// The bytes of an allocated block, for the caller that owns it.
    ///
    /// # Safety
    /// `page` must head a block of 2^`order` pages that the caller allocated and has not
    /// freed, and the caller must not create two live slices of the same bytes.
    #[allow(clippy::mut_from_ref)] // the bytes are simulated RAM, not part of `self`; see Safety
    pub unsafe fn page_bytes_mut(&self, page: &Page, order: u32) -> &mut [u8] {
        let pfn = self.page_to_pfn(page);
        // SAFETY: the block is RAM inside the direct map and owned by the caller (contract).
        unsafe { core::slice::from_raw_parts_mut(self.pfn_ptr(pfn), (PAGE_SIZE << order) as usize) }
    }

    /// Copy `buf` into the allocated page `page` at `offset` (the kernel's `memcpy` to
    /// `page_address(page) + offset`). `EFAULT` if the range leaves the page or the page is
    /// not allocated (free, reserved, or not ours).
    pub fn write_page(&self, page: &Page, offset: usize, buf: &[u8]) -> Result<(), crate::Errno> {
        let pfn = self.check_allocated(page, offset, buf.len())?;
        // SAFETY: checked that the page is an allocated RAM page and the range is inside it.
        unsafe {
            core::ptr::copy_nonoverlapping(buf.as_ptr(), self.pfn_ptr(pfn).add(offset), buf.len())
        };
        Ok(())
    }

    /// Copy bytes out of the allocated page `page` at `offset`; errors as [`Kernel::write_page`].
    pub fn read_page(
        &self,
        page: &Page,
        offset: usize,
        buf: &mut [u8],
    ) -> Result<(), crate::Errno> {
        let pfn = self.check_allocated(page, offset, buf.len())?;
        // SAFETY: as in `write_page`.
        unsafe {
            core::ptr::copy_nonoverlapping(
                self.pfn_ptr(pfn).add(offset),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        Ok(())
    }

    fn check_allocated(&self, page: &Page, offset: usize, len: usize) -> Result<Pfn, crate::Errno> {
        if !self.mem_map.owns(page) || page.test(PageFlags::RESERVED) || page.test(PageFlags::BUDDY)
        {
            return Err(crate::Errno::EFAULT);
        }
        // A compound block's tail pages hold no reference; the head holds it for all.
        let head = if page.test(PageFlags::TAIL) {
            self.mem_map
                .page(self.page_to_pfn(page) - page.private() as u64)
        } else {
            page
        };
        if head.refcount() <= 0 {
            return Err(crate::Errno::EFAULT);
        }
        if offset
            .checked_add(len)
            .is_none_or(|e| e > PAGE_SIZE as usize)
        {
            return Err(crate::Errno::EFAULT);
        }
        Ok(self.page_to_pfn(page))
    }
}
