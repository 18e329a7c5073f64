//! `swapoff` (`mm/swapfile.c`'s `swapoff`, `try_to_unuse`, `unuse_pte`): bring every page
//! of a swap area back into memory and into the page tables that refer to it, then remove
//! the area.
//!
//! Swap areas and the swap cache (`mm/swapfile.rs`, `mm/swap_state.rs`) sit below the
//! address spaces — faults, zap and the reverse map use them. `swapoff` is the one swap
//! operation that walks every anonymous VMA (through the reverse map) and installs PTEs, so
//! it lives here, above the address spaces, with reclaim.

use crate::errno::Errno;
use crate::mm::swapfile::SwpEntry;
use crate::Kernel;
use alloc::vec::Vec;

impl Kernel {
    /// `swapoff(path)`: stop allocating from the area, bring every page it holds back into
    /// memory and into the page tables that refer to it (`try_to_unuse`, walking the anonymous
    /// VMAs through the reverse map), empty its swap cache, and remove it. `EINVAL` when no
    /// such area is on, `ENOMEM` when memory runs out on the way (the area stays on).
    pub fn swapoff(&self, cpu: &crate::CpuGuard<'_>, path: &str) -> Result<(), Errno> {
        let ty = {
            let mut st = self.swap.lock();
            let ty = st
                .areas
                .iter()
                .position(|a| a.as_ref().is_some_and(|a| a.path == path))
                .ok_or(Errno::EINVAL)?;
            st.areas[ty].as_mut().expect("found").closing = true;
            ty
        };
        let res = self.try_to_unuse(cpu, ty);
        let mut st = self.swap.lock();
        let a = st.areas[ty].as_mut().expect("still on");
        if res.is_err() || a.inuse_pages != 0 {
            a.closing = false;
            return Err(res.err().unwrap_or(Errno::EBUSY));
        }
        let pages = a.pages;
        st.areas[ty] = None;
        drop(st);
        self.printk(&alloc::format!("Removed {}k swap on {path}", pages * 4));
        Ok(())
    }

    /// `try_to_unuse`: swap in every entry of area `ty` found in an anonymous VMA.
    fn try_to_unuse(&self, cpu: &crate::CpuGuard<'_>, ty: usize) -> Result<(), Errno> {
        use crate::arch::x86_64::pgtable::Pte;
        use crate::mm::mm_types::{MM_ANONPAGES, MM_SWAPENTS};
        use core::sync::atomic::Ordering;
        // Every VMA with anonymous memory, once (it is chained to each anon_vma of its
        // chain), with the root anon_vma its swapped-in pages join. The anon_vmas stay locked
        // for reading throughout (unuse_vma holds the mmap_lock for reading in Linux), so no
        // VMA walked here changes, or is unmapped and its tables freed, meanwhile; swap-in
        // I/O and the reclaim it may start take the same lock for reading, which a reader
        // may.
        let avs = self.anon_vmas.read();
        for (&id, a) in avs.map.iter() {
            for r in a.avcs.iter().filter(|r| r.vma().anon_vma == Some(id)) {
                let root = avs.root(id);
                let v = r.vma();
                let mut found: Vec<(u64, SwpEntry)> = Vec::new();
                {
                    let mut c = self.pte_cursor(r.pt(), v.vm_start, v.vm_end);
                    while let Some((va, pte)) = c.next_entry() {
                        if let Some(e) = SwpEntry::from_pte(pte).filter(|e| e.ty == ty) {
                            found.push((va, e));
                        }
                    }
                }
                for (va, e) in found {
                    let (page, _) = self.swapin_readahead(cpu, e)?;
                    // unuse_pte: map it only if the entry is still this swap entry (a fault
                    // may have swapped it in first: then ours is just a reference to drop).
                    let mut c = self.pte_cursor(r.pt(), va, va + crate::PAGE_SIZE);
                    if !c.seek(va) || c.get() != e.to_pte() {
                        drop(c);
                        self.__free_pages(cpu, page, 0);
                        continue;
                    }
                    let index = v.linear_page_index(va);
                    self.page_add_anon_rmap(cpu, page, root, index);
                    r.rss()[MM_ANONPAGES].fetch_add(1, Ordering::Relaxed);
                    r.rss()[MM_SWAPENTS].fetch_sub(1, Ordering::Relaxed);
                    self.swap_free(e);
                    let new = Pte::new(self.page_to_pfn(page), v.vm_page_prot).mkold();
                    c.install(e.to_pte(), new)
                        .expect("a swap entry under our lock does not change");
                    // The swapin reference is the new mapping's.
                }
            }
        }
        drop(avs);
        // What is left in the swap cache has no PTE referring to it any more.
        loop {
            let next = {
                let st = self.swap.lock();
                st.areas[ty].as_ref().and_then(|a| a.cache.iter().next())
            };
            let Some((offset, _)) = next else { break };
            let e = SwpEntry { ty, offset };
            let Some(page) = self.lookup_swap_cache(e) else {
                continue;
            };
            page.lock();
            if self.page_swap_entry(page) == Some(e) {
                self.delete_from_swap_cache(cpu, page);
            }
            page.unlock();
            self.__free_pages(cpu, page, 0);
        }
        Ok(())
    }
}
