//! Reverse-mapping bookkeeping (`mm/rmap.c`): what happens to a page's `_mapcount`,
//! `page->mapping` and the node's mapped-page counters when a PTE starts or stops mapping it
//! (`folio_add_new_anon_rmap`, `folio_add_file_rmap_pte(s)`, `folio_dup_file_rmap_pte(s)`,
//! `folio_try_dup_anon_rmap_ptes`, `folio_remove_rmap_pte(s)`). The `_ptes` forms take a
//! batch: `nr` PTEs mapping consecutive pages of one folio, counted in one pass
//! (`__folio_add_rmap`/`__folio_remove_rmap` at `RMAP_LEVEL_PTE`), so a large folio's
//! `_nr_pages_mapped`, the node counters and the deferred split queue see the batch as one
//! change.
//!
//! An anonymous page carries `PAGE_MAPPING_ANON` plus its `anon_vma` id in `page->mapping`
//! (Linux sets the low bit of the `anon_vma` pointer) and its linear page index in
//! `page->index`. `NR_ANON_MAPPED` / `NR_FILE_MAPPED` count pages mapped at least once.
//!
//! The reverse map itself (`anon_vma`, `anon_vma_chain` and the file's `i_mmap` tree): every
//! VMA with an `anon_vma` or a file is on those lists while it is linked into its address
//! space — the VMA itself ([`VmaRef`]: the VMA tree's slot, with its `vm_mm`'s page tables
//! and RSS counters), not a copy of it: `mm/vma.rs` changes VMAs in place under the lists'
//! locks. `rmap_walk` turns a page's index into an address in each VMA on its list
//! (`vma_address`, from the VMA's current `vm_start`/`vm_pgoff`) and checks the PTE there
//! (`page_vma_mapped_walk`) with a page-table cursor on it; `page_referenced` harvests and
//! clears Accessed bits, `try_to_unmap` removes every mapping.
//!
//! Locking, as Linux's `anon_vma->root->rwsem` and `mapping->i_mmap_rwsem`: the `anon_vma`s
//! and each file's `i_mmap` are reader-writer locks. A walk holds the read side for its whole
//! length (it iterates the list itself, no copy is made), and a VMA is changed, split,
//! merged or unlinked only under the write side (`vma_prepare`) — unlinked before its page
//! tables can be freed — so the VMAs a walk reads and the tables its cursor reaches stay as
//! they are while it looks at them.
//!
//! Anonymous memory is chained across fork as in Linux since 2.6.34: `anon_vma_fork` gives
//! each forked VMA an `anon_vma` of its own whose parent is the one it was forked from, and
//! the child VMA is chained (an `anon_vma_chain` entry: the VMA on that `anon_vma`'s
//! list) to its own `anon_vma` and every ancestor up to the root. A page remembers the
//! `anon_vma` it was created in, so a page written before fork is found in the parent and
//! every descendant, while a page a child copies on write is found in that child (and its
//! descendants) only. `anon_vma_prepare` reuses an adjacent compatible VMA's root `anon_vma`
//! (`find_mergeable_anon_vma`) so that neighbours stay mergeable; `unlink_anon_vmas` frees an
//! `anon_vma` once no VMA is chained to it and no child is left. A page coming back from swap
//! to a VMA that may share it takes the root `anon_vma` (`__folio_set_anon` with
//! `exclusive == false`); a write fault that reuses a page moves it to the VMA's own
//! (`folio_move_anon_rmap`). Not done: `anon_vma_clone`'s reuse of an `anon_vma` whose VMAs
//! are all gone, which bounds chain length for long fork-and-exit chains.

use crate::arch::x86_64::pgtable::{Pte, PteCursor, PteFlags};
use crate::cpu::CpuGuard;
use crate::mm::filemap::{NR_ANON_MAPPED, NR_FILE_MAPPED};
use crate::mm::mm_types::{VmArea, VmFlags, MM_ANONPAGES, MM_FILEPAGES};
use crate::mm::mmu_gather::MmuGather;
use crate::mm::page::{Page, PageFlags};
use crate::mm::vma::RmapList;
use crate::mm::vma_tree::VmaRef;
use crate::Kernel;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

/// `struct anon_vma`.
pub(crate) struct AnonVma {
    /// `anon_vma->root`: the oldest ancestor (itself for a root).
    pub(crate) root: u32,
    /// `anon_vma->parent`: the `anon_vma` this one was forked from (itself for a root).
    pub(crate) parent: u32,
    /// `num_children`: `anon_vma`s forked from this one.
    pub(crate) num_children: u32,
    /// `rb_root`: the `anon_vma_chain` entries — the VMAs chained to this `anon_vma`.
    pub(crate) avcs: RmapList,
}

/// The kernel's `anon_vma`s by id (the id is what `page->mapping` carries).
#[derive(Default)]
pub(crate) struct AnonVmas {
    pub(crate) map: BTreeMap<u32, AnonVma>,
    next: u32,
}

impl AnonVmas {
    /// `anon_vma_alloc`: a new `anon_vma`, forked from `parent` or a new root.
    pub(crate) fn alloc(&mut self, parent: Option<u32>) -> u32 {
        let id = loop {
            self.next = (self.next + 1) & !PAGE_MAPPING_ANON;
            if self.next != 0 && !self.map.contains_key(&self.next) {
                break self.next;
            }
        };
        let (root, parent) = match parent.and_then(|p| self.map.get_mut(&p).map(|a| (p, a))) {
            Some((p, pa)) => {
                pa.num_children += 1;
                (pa.root, p)
            }
            None => (id, id),
        };
        self.map.insert(
            id,
            AnonVma {
                root,
                parent,
                num_children: 0,
                avcs: Vec::new(),
            },
        );
        id
    }

    /// The `anon_vma_chain` of a VMA whose own `anon_vma` is `id`: `id`, then its ancestors
    /// up to the root.
    pub(crate) fn chain(&self, id: u32) -> Vec<u32> {
        let mut out = Vec::new();
        let mut cur = id;
        while let Some(av) = self.map.get(&cur) {
            out.push(cur);
            if av.parent == cur {
                break;
            }
            cur = av.parent;
        }
        out
    }

    /// Run `f` on `id`'s `anon_vma` and each ancestor up to the root (the `anon_vma`s a VMA
    /// whose own is `id` is chained to).
    pub(crate) fn for_chain_mut(&mut self, id: u32, mut f: impl FnMut(&mut AnonVma)) {
        let mut cur = id;
        while let Some(av) = self.map.get_mut(&cur) {
            f(av);
            if av.parent == cur {
                break;
            }
            cur = av.parent;
        }
    }

    /// The root of `id`'s family.
    pub(crate) fn root(&self, id: u32) -> u32 {
        self.map.get(&id).map_or(id, |a| a.root)
    }
}

pub use crate::mm::page::{page_anon, PAGE_MAPPING_ANON};

impl Kernel {
    /// `folio_add_new_anon_rmap`: a page just allocated for a fault becomes anonymous memory
    /// of `anon_vma` at linear index `index`, mapped by one PTE.
    pub(crate) fn page_add_new_anon_rmap(
        &self,
        cpu: &CpuGuard<'_>,
        page: &Page,
        anon_vma: u32,
        index: u64,
    ) {
        page.set_mapping(PAGE_MAPPING_ANON | anon_vma);
        page.set_index(index);
        // __folio_set_swapbacked: nobody else sees the new page yet.
        page.set_nonatomic(PageFlags::SWAPBACKED);
        page.set_mapcount(1);
        self.mod_node_page_state(cpu, page, NR_ANON_MAPPED, 1);
    }

    /// `folio_add_anon_rmap_pte` for a page coming back from swap: the first mapping makes it
    /// anonymous memory of `anon_vma` at `index` (as a new page), later ones just count.
    pub(crate) fn page_add_anon_rmap(
        &self,
        cpu: &CpuGuard<'_>,
        page: &Page,
        anon_vma: u32,
        index: u64,
    ) {
        if page.mapcount() == 0 {
            // __folio_set_anon: the page sits in the swap cache, where reclaim may change its
            // flags meanwhile, so unlike a new page's these updates must be atomic.
            page.set_mapping(PAGE_MAPPING_ANON | anon_vma);
            page.set_index(index);
            page.set(PageFlags::SWAPBACKED);
            page.set_mapcount(1);
            self.mod_node_page_state(cpu, page, NR_ANON_MAPPED, 1);
        } else {
            self.page_add_rmap(cpu, page);
        }
    }

    /// `folio_add_file_rmap_pte` / `folio_dup_*_rmap_pte`: one more PTE maps `page` (a page of
    /// a large folio: its own `_mapcount`, the folio's `_nr_pages_mapped`; it is counted
    /// mapped unless a PMD already maps the whole folio).
    pub(crate) fn page_add_rmap(&self, cpu: &CpuGuard<'_>, page: &Page) {
        if page.inc_mapcount() == 1 {
            let folio = page.compound_head();
            if folio.folio_test_large() {
                folio.add_nr_pages_mapped(1);
                if folio.entire_mapcount() > 0 {
                    return;
                }
            }
            let item = if page_anon(folio) {
                NR_ANON_MAPPED
            } else {
                NR_FILE_MAPPED
            };
            self.mod_node_page_state(cpu, page, item, 1);
        }
    }

    /// `folio_add_file_rmap_ptes`: `nr` PTEs now map the pages `first..first + nr` of the
    /// page-cache folio `folio` (its head; a single page: `first` 0, `nr` 1), one each. The
    /// pages mapped for the first time are counted at once in the folio's
    /// `_nr_pages_mapped` and in `NR_FILE_MAPPED` (unless a PMD maps the folio whole).
    pub(crate) fn folio_add_file_rmap_ptes(
        &self,
        cpu: &CpuGuard<'_>,
        folio: &Page,
        first: u64,
        nr: u64,
    ) {
        self.folio_add_rmap_ptes(cpu, folio, first, nr, NR_FILE_MAPPED);
    }

    /// `folio_dup_file_rmap_ptes` / `folio_try_dup_anon_rmap_ptes` at fork: the child's `nr`
    /// PTEs map the pages `first..first + nr` of `folio` (its head) that the parent's map, one
    /// more mapping each (and so no page becomes mapped that was not: the node counters do
    /// not move). Linux's anonymous form fails for a page that is `PageAnonExclusive` in a
    /// folio that may be pinned for DMA, which fork must copy; mmkit tracks neither
    /// exclusivity bits nor DMA pins, so every anonymous page is shared at fork.
    pub(crate) fn folio_dup_rmap_ptes(
        &self,
        cpu: &CpuGuard<'_>,
        folio: &Page,
        first: u64,
        nr: u64,
    ) {
        let item = if page_anon(folio) {
            NR_ANON_MAPPED
        } else {
            NR_FILE_MAPPED
        };
        self.folio_add_rmap_ptes(cpu, folio, first, nr, item);
    }

    /// `__folio_add_rmap` at `RMAP_LEVEL_PTE` for a folio already set up (file, or anonymous
    /// being duplicated): one more mapping of each of the pages `first..first + nr`, those
    /// mapped for the first time counted at once in `_nr_pages_mapped` and in `item`
    /// (unless a PMD maps the folio whole).
    fn folio_add_rmap_ptes(
        &self,
        cpu: &CpuGuard<'_>,
        folio: &Page,
        first: u64,
        nr: u64,
        item: usize,
    ) {
        if nr == 0 {
            return;
        }
        let mut newly = 0i64;
        for i in first..first + nr {
            if folio.folio_page(i).inc_mapcount() == 1 {
                newly += 1;
            }
        }
        if newly == 0 {
            return;
        }
        if folio.folio_test_large() {
            folio.add_nr_pages_mapped(newly as i32);
            if folio.entire_mapcount() > 0 {
                return;
            }
        }
        self.mod_node_page_state(cpu, folio, item, newly);
    }

    /// `folio_remove_rmap_pte`: one PTE stopped mapping `page`. A large anonymous folio
    /// left with some pages mapped and some not (and no PMD mapping it whole) is partially
    /// mapped: it goes on the deferred split queue.
    pub(crate) fn page_remove_rmap(&self, cpu: &CpuGuard<'_>, page: &Page) {
        if page.dec_mapcount() == 0 {
            let folio = page.compound_head();
            let anon = page_anon(folio);
            if folio.folio_test_large() {
                let left = folio.add_nr_pages_mapped(-1);
                if folio.entire_mapcount() > 0 {
                    return;
                }
                if anon && left > 0 && !folio.folio_test_partially_mapped() {
                    self.deferred_split_folio(cpu, folio, true);
                }
            }
            let item = if anon { NR_ANON_MAPPED } else { NR_FILE_MAPPED };
            self.mod_node_page_state(cpu, page, item, -1);
        }
    }

    /// `folio_remove_rmap_ptes`: `nr` PTEs mapping the pages `first..first + nr` of `folio`
    /// (its head) stopped mapping them, one each. The pages left with no mapping are counted
    /// out of `_nr_pages_mapped` and the node's mapped counter at once (unless a PMD still
    /// maps the folio whole); an anonymous large folio that this leaves with some pages
    /// mapped and some not goes on the deferred split queue — one that the batch unmapped
    /// entirely does not.
    pub(crate) fn folio_remove_rmap_ptes(
        &self,
        cpu: &CpuGuard<'_>,
        folio: &Page,
        first: u64,
        nr: u64,
    ) {
        if !folio.folio_test_large() {
            if nr == 1 {
                self.page_remove_rmap(cpu, folio);
            }
            return;
        }
        let mut unmapped = 0i32;
        for i in first..first + nr {
            if folio.folio_page(i).dec_mapcount() == 0 {
                unmapped += 1;
            }
        }
        if unmapped == 0 {
            return;
        }
        let left = folio.add_nr_pages_mapped(-unmapped);
        if folio.entire_mapcount() > 0 {
            return;
        }
        let anon = page_anon(folio);
        if anon && left > 0 && !folio.folio_test_partially_mapped() {
            self.deferred_split_folio(cpu, folio, true);
        }
        let item = if anon { NR_ANON_MAPPED } else { NR_FILE_MAPPED };
        self.mod_node_page_state(cpu, folio, item, -i64::from(unmapped));
    }

    /// `folio_add_new_anon_rmap` of a large folio mapped by `nr` PTEs, one per page (an mTHP
    /// fault): each page mapped once, the folio's `_nr_pages_mapped` all of them.
    pub(crate) fn folio_add_new_anon_rmap_ptes(
        &self,
        cpu: &CpuGuard<'_>,
        folio: &Page,
        anon_vma: u32,
        index: u64,
    ) {
        let nr = folio.folio_nr_pages();
        folio.set_mapping(PAGE_MAPPING_ANON | anon_vma);
        folio.set_index(index);
        folio.set_nonatomic(PageFlags::SWAPBACKED);
        for i in 0..nr {
            folio.folio_page(i).set_mapcount(1);
        }
        folio.add_nr_pages_mapped(nr as i32);
        self.mod_node_page_state(cpu, folio, NR_ANON_MAPPED, nr as i64);
        self.mthp_stats
            .add(folio.folio_order(), crate::mm::vmstat::MTHP_STAT_NR_ANON, 1);
    }
}

impl Kernel {
    /// `unlink_anon_vmas` for a VMA whose own `anon_vma` was `id`, after it was unlinked for
    /// good (and any pieces of it relinked): free that `anon_vma`, then each ancestor, while
    /// no VMA is chained to it and no child `anon_vma` is left.
    pub(crate) fn unlink_anon_vmas(&self, id: u32) {
        let mut avs = self.anon_vmas.write();
        let mut cur = id;
        while let Some(av) = avs.map.get(&cur) {
            if !av.avcs.is_empty() || av.num_children > 0 {
                return;
            }
            let parent = av.parent;
            avs.map.remove(&cur);
            if parent == cur {
                return;
            }
            if let Some(p) = avs.map.get_mut(&parent) {
                p.num_children -= 1;
            }
            cur = parent;
        }
    }

    /// `anon_vma_fork` for a VMA being copied into a child: a new `anon_vma` whose parent is
    /// the VMA's (none when the parent VMA has none: it has no anonymous pages).
    pub(crate) fn anon_vma_fork(&self, parent: &VmArea) -> Option<u32> {
        let id = parent.anon_vma?;
        Some(self.anon_vmas.write().alloc(Some(id)))
    }

    /// `folio_move_anon_rmap`: a page this VMA alone maps (a write fault reuses it) moves to
    /// the VMA's own `anon_vma`, so later walks look only where it can be.
    pub(crate) fn page_move_anon_rmap(&self, page: &Page, vma: &VmArea) {
        if let Some(id) = vma.anon_vma {
            page.compound_head().set_mapping(PAGE_MAPPING_ANON | id);
        }
    }

    /// The `anon_vma` a page that may be shared takes when it is mapped again (from swap):
    /// the root of the VMA's family, which every VMA that can map it is chained to.
    pub(crate) fn anon_vma_root(&self, id: u32) -> u32 {
        self.anon_vmas.read().root(id)
    }

    /// The number of live `anon_vma`s.
    pub fn nr_anon_vmas(&self) -> usize {
        self.anon_vmas.read().map.len()
    }

    /// The `anon_vma`s' invariants: parents and roots exist and agree, `num_children` counts
    /// the children, every VMA on an `anon_vma`'s list has it in its chain, and no
    /// `anon_vma` lives with nothing chained to it and no child (a leak).
    pub fn check_anon_vma_invariants(&self) -> Result<(), alloc::string::String> {
        use alloc::format;
        let avs = self.anon_vmas.read();
        for (&id, av) in &avs.map {
            let children = avs
                .map
                .iter()
                .filter(|(&c, a)| c != id && a.parent == id)
                .count() as u32;
            if children != av.num_children {
                return Err(format!(
                    "anon_vma {id}: num_children {} but {children} children",
                    av.num_children
                ));
            }
            if av.parent == id {
                if av.root != id {
                    return Err(format!("root anon_vma {id} names root {}", av.root));
                }
            } else {
                let Some(p) = avs.map.get(&av.parent) else {
                    return Err(format!("anon_vma {id}: parent {} is gone", av.parent));
                };
                if p.root != av.root {
                    return Err(format!(
                        "anon_vma {id}: root {} but parent's {}",
                        av.root, p.root
                    ));
                }
            }
            if av.avcs.is_empty() && av.num_children == 0 {
                return Err(format!("anon_vma {id}: nothing chained to it (leaked)"));
            }
            for r in &av.avcs {
                let v = r.vma();
                let own = v.anon_vma.map(|o| avs.chain(o)).unwrap_or_default();
                if !own.contains(&id) {
                    return Err(format!(
                        "VMA {:#x}-{:#x} (anon_vma {:?}) chained to anon_vma {id} outside its chain",
                        v.vm_start, v.vm_end, v.anon_vma
                    ));
                }
            }
        }
        Ok(())
    }

    /// Run `f` on the VMAs that may map `page` (its `anon_vma`'s chain entries, or its
    /// file's `i_mmap`), with their lock held for reading for as long as `f` runs
    /// (`rmap_walk_anon`/`rmap_walk_file`'s `anon_vma_lock_read`/`i_mmap_lock_read`): the
    /// list is the reverse map's own, not a copy, and the VMAs on it do not change meanwhile.
    pub(crate) fn with_rmap_vmas<R>(&self, page: &Page, f: impl FnOnce(&[VmaRef]) -> R) -> R {
        let page = page.compound_head();
        if page_anon(page) {
            let id = page.mapping() & !PAGE_MAPPING_ANON;
            let avs = self.anon_vmas.read();
            let list = avs.map.get(&id).map_or(&[][..], |a| &a.avcs[..]);
            f(list)
        } else if let Some(inode) = self.inode_of_page(page) {
            let list = inode.i_mmap.read();
            f(&list)
        } else {
            f(&[])
        }
    }

    /// `page_vma_mapped_walk` over `vmas` (a list [`Kernel::with_rmap_vmas`] holds locked):
    /// for each VMA whose range covers `page`'s index, a cursor on the PTE at its address
    /// (locked), passed to `f` when that PTE maps the page. `f` returns false to stop.
    pub(crate) fn walk_vmas(
        &self,
        vmas: &[VmaRef],
        page: &Page,
        mut f: impl FnMut(&VmaRef, &mut PteCursor<'_>) -> bool,
    ) {
        let pfn = self.page_to_pfn(page);
        let index = page.pgoff();
        for r in vmas {
            let Some(a) = r.address(index) else {
                continue;
            };
            let mut c = self.pte_cursor(r.pt(), a, a + crate::PAGE_SIZE);
            if !c.seek(a) {
                continue;
            }
            let pte = c.get();
            if pte.is_present() && pte.pfn() == pfn && !f(r, &mut c) {
                return;
            }
        }
    }

    /// How many VMAs a reverse-map walk of `page` examines: those chained to its `anon_vma`
    /// (or in its file's `i_mmap`) whose range covers its index, mapping it or not.
    pub fn rmap_vma_count(&self, page: &Page) -> usize {
        let index = page.pgoff();
        self.with_rmap_vmas(page, |vmas| {
            vmas.iter().filter(|r| r.address(index).is_some()).count()
        })
    }

    /// `rmap_walk`: call `f(vma, cursor)` for every PTE mapping `page` (checked against the
    /// page's pfn, `page_vma_mapped_walk`), the cursor locked on that PTE (its address is
    /// `cursor.va()`); `f` returns false to stop. The reverse map is locked for reading
    /// throughout.
    pub fn rmap_walk(&self, page: &Page, f: impl FnMut(&VmaRef, &mut PteCursor<'_>) -> bool) {
        self.with_rmap_vmas(page, |vmas| self.walk_vmas(vmas, page, f));
    }

    /// `folio_referenced`: how many PTEs mapping `page` had their Accessed bit set; the bits
    /// are cleared (`ptep_clear_flush_young`: the TLBs, and the platform's translations, are
    /// flushed so the MMU sets them again on the next access) so the next scan sees only new
    /// references. Also returns the union of the `vm_flags` of the VMAs that referenced it
    /// (`VM_EXEC` for code) — and of every mapping's `VM_LOCKED`, where the walk stops.
    pub fn page_referenced(&self, cpu: &CpuGuard<'_>, page: &Page) -> (usize, VmFlags) {
        let (mut n, mut vm_flags) = (0, VmFlags::empty());
        if page.folio_test_large() {
            // A large folio is mapped by PMDs (see huge_memory): pmdp_clear_flush_young.
            let (index, pfn) = (page.index(), self.page_to_pfn(page));
            self.with_rmap_vmas(page, |vmas| {
                for r in vmas {
                    let Some(a) = r.address(index) else {
                        continue;
                    };
                    let Some(mut g) = self.pmd_lock(r.pt(), a) else {
                        continue;
                    };
                    let h = g.get();
                    if !h.is_huge() || h.pfn() != pfn {
                        continue;
                    }
                    if r.vma().vm_flags.contains(VmFlags::VM_LOCKED) {
                        vm_flags |= VmFlags::VM_LOCKED;
                        return;
                    }
                    let mut tlb = MmuGather::new(self, cpu, r.pt());
                    if g.update_huge(&mut tlb, |p| p.mkold()).young() {
                        n += 1;
                        vm_flags |= r.vma().vm_flags;
                    }
                    drop(g);
                    tlb.finish();
                }
            });
            if vm_flags.contains(VmFlags::VM_LOCKED) {
                return (n, vm_flags);
            }
            // And every PTE mapping one of its pages (an mTHP, or a THP after a PMD split).
            for i in 0..page.folio_nr_pages() {
                let p = page.folio_page(i);
                if p.mapcount() == 0 {
                    continue;
                }
                self.with_rmap_vmas(page, |vmas| {
                    self.walk_vmas(vmas, p, |r, c| {
                        if r.vma().vm_flags.contains(VmFlags::VM_LOCKED) {
                            vm_flags |= VmFlags::VM_LOCKED;
                            return false;
                        }
                        let mut tlb = MmuGather::new(self, cpu, r.pt());
                        if c.update(&mut tlb, |p| p.mkold()).young() {
                            n += 1;
                            vm_flags |= r.vma().vm_flags;
                        }
                        tlb.finish();
                        true
                    })
                });
                if vm_flags.contains(VmFlags::VM_LOCKED) {
                    break;
                }
            }
            return (n, vm_flags);
        }
        self.rmap_walk(page, |r, c| {
            if r.vma().vm_flags.contains(VmFlags::VM_LOCKED) {
                vm_flags |= VmFlags::VM_LOCKED;
                return false;
            }
            let mut tlb = MmuGather::new(self, cpu, r.pt());
            if c.update(&mut tlb, |p| p.mkold()).young() {
                n += 1;
                vm_flags |= r.vma().vm_flags;
            }
            tlb.finish();
            true
        });
        (n, vm_flags)
    }

    /// `folio_mkclean`: write-protect and clean every PTE mapping `page` (before writeback),
    /// so the next write faults and dirties the page again. Returns whether a PTE was dirty.
    pub fn page_mkclean(&self, cpu: &CpuGuard<'_>, page: &Page) -> bool {
        let mut dirty = false;
        self.rmap_walk(page, |r, c| {
            let mut tlb = MmuGather::new(self, cpu, r.pt());
            let old = c.update(&mut tlb, |p| {
                Pte(p.0 & !(PteFlags::RW | PteFlags::DIRTY).bits())
            });
            dirty |= old.dirty();
            tlb.finish();
            true
        });
        dirty
    }

    /// `try_to_unmap_one` for a lazily freed page (`MADV_FREE`): while it is clean in the
    /// page and in every PTE and nobody else holds it, its PTEs are simply cleared — the
    /// memory is discarded, nothing is written. A PTE found dirty means it was written
    /// again: the page becomes swap-backed anonymous memory once more and stays mapped.
    /// True when no PTE maps it any more.
    fn try_to_unmap_lazyfree(&self, cpu: &CpuGuard<'_>, page: &Page) -> bool {
        let mut redirtied = false;
        self.rmap_walk(page, |r, c| {
            // Our caller's reference and one per mapping: anything else is a user we must
            // not pull the page from under.
            let extra = page.refcount() != page.mapcount() + 1;
            if extra || r.vma().vm_flags.contains(VmFlags::VM_LOCKED) || page.test(PageFlags::DIRTY)
            {
                redirtied = true;
                return false;
            }
            let mut tlb = MmuGather::new(self, cpu, r.pt());
            // Cleared only while clean: the exchange lands on a value without Dirty.
            let old = c.update(&mut tlb, |p| if p.dirty() { p } else { Pte(0) });
            if old.dirty() {
                redirtied = true;
                return false;
            }
            r.rss()[MM_ANONPAGES].fetch_sub(1, Ordering::Relaxed);
            self.page_remove_rmap(cpu, page);
            tlb.remove_page(page);
            tlb.finish();
            true
        });
        if redirtied {
            page.set(PageFlags::SWAPBACKED);
            return false;
        }
        page.mapcount() == 0
    }

    /// `try_to_unmap`: remove every PTE mapping `page`. A dirty PTE dirties the page; an
    /// anonymous page's PTEs become entries for its swap slot `swap`, each taking a reference
    /// on the slot before it is published (so a racing swap-in can drop it) — without a slot,
    /// or when a mapping is `VM_LOCKED`, nothing is unmapped and false is returned. True when
    /// the page is no longer mapped.
    pub fn try_to_unmap(
        &self,
        cpu: &CpuGuard<'_>,
        page: &Page,
        swap: Option<crate::mm::swapfile::SwpEntry>,
    ) -> bool {
        if page.folio_test_large() || page.test(PageFlags::TAIL) {
            // Reclaim splits a large folio before it unmaps one (no THP_SWAP; compaction
            // moves large folios by write-protecting, not unmapping): nothing here unmaps a
            // page of one.
            return false;
        }
        let anon = page_anon(page);
        if anon && !page.test(PageFlags::SWAPBACKED) {
            return self.try_to_unmap_lazyfree(cpu, page);
        }
        if anon && swap.is_none() {
            return false;
        }
        let swap_pte = swap.map(|e| e.to_pte()).unwrap_or_default();
        self.with_rmap_vmas(page, |vmas| {
            let mut locked = false;
            self.walk_vmas(vmas, page, |r, _| {
                locked |= r.vma().vm_flags.contains(VmFlags::VM_LOCKED);
                !locked
            });
            if locked {
                return;
            }
            self.walk_vmas(vmas, page, |r, c| {
                if let Some(e) = swap {
                    self.swap_duplicate(e, 1);
                }
                let mut tlb = MmuGather::new(self, cpu, r.pt());
                // The cursor checked that the entry maps the page, under its lock.
                let old = c.clear(&mut tlb);
                if swap.is_some() {
                    c.install(Pte(0), swap_pte)
                        .expect("a cleared entry under our lock stays none");
                }
                if old.dirty() {
                    if anon {
                        page.set(PageFlags::DIRTY);
                    } else {
                        self.set_page_dirty(cpu, page);
                    }
                }
                if anon {
                    r.rss()[MM_ANONPAGES].fetch_sub(1, Ordering::Relaxed);
                    r.rss()[crate::mm::mm_types::MM_SWAPENTS].fetch_add(1, Ordering::Relaxed);
                } else {
                    r.rss()[MM_FILEPAGES].fetch_sub(1, Ordering::Relaxed);
                }
                self.page_remove_rmap(cpu, page);
                tlb.remove_page(page);
                tlb.finish();
                true
            });
        });
        page.mapcount() == 0
    }
}
