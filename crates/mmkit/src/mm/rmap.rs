//! Reverse-mapping bookkeeping (`mm/rmap.c`): what happens to a page's `_mapcount`,
//! `page->mapping` and the node's mapped-page counters when a PTE starts or stops mapping it
//! (`folio_add_new_anon_rmap`, `folio_add_file_rmap_pte`, `folio_dup_file_rmap_pte`,
//! `folio_remove_rmap_pte`).
//!
//! An anonymous page carries `PAGE_MAPPING_ANON` in `page->mapping` (Linux sets the low bit
//! of the pointer; here the handle's top bit) and its linear page index in `page->index`.
//! `NR_ANON_MAPPED` / `NR_FILE_MAPPED` count pages mapped at least once, as Linux does.

use crate::mm::filemap::{NR_ANON_MAPPED, NR_FILE_MAPPED};
use crate::mm::page::{Page, PageFlags};
use crate::Kernel;

/// `PAGE_MAPPING_ANON`: the mapping handle of an anonymous page.
pub const PAGE_MAPPING_ANON: u32 = 0x8000_0000;

/// Whether a page is anonymous (`PageAnon`).
#[inline]
pub fn page_anon(page: &Page) -> bool {
    page.mapping() & PAGE_MAPPING_ANON != 0
}

impl Kernel {
    /// `folio_add_new_anon_rmap`: a page just allocated for a fault becomes anonymous memory
    /// at linear index `index`, mapped by one PTE.
    pub(crate) fn page_add_new_anon_rmap(&self, page: &Page, index: u64) {
        page.set_mapping(PAGE_MAPPING_ANON);
        page.set_index(index);
        page.set(PageFlags::SWAPBACKED);
        page.set_mapcount(1);
        self.mod_node_page_state(page, NR_ANON_MAPPED, 1);
    }

    /// `folio_add_file_rmap_pte` / `folio_dup_*_rmap_pte`: one more PTE maps `page`.
    pub(crate) fn page_add_rmap(&self, page: &Page) {
        if page.inc_mapcount() == 1 {
            let item = if page_anon(page) {
                NR_ANON_MAPPED
            } else {
                NR_FILE_MAPPED
            };
            self.mod_node_page_state(page, item, 1);
        }
    }

    /// `folio_remove_rmap_pte`: one PTE stopped mapping `page`.
    pub(crate) fn page_remove_rmap(&self, page: &Page) {
        if page.dec_mapcount() == 0 {
            let item = if page_anon(page) {
                NR_ANON_MAPPED
            } else {
                NR_FILE_MAPPED
            };
            self.mod_node_page_state(page, item, -1);
        }
    }
}
