//! Swap areas (`mm/swapfile.c`, `include/linux/swap.h`, `include/linux/swapops.h`,
//! `arch/x86/include/asm/pgtable_64.h`'s swap PTE format): `swapon` of a file carrying
//! Linux's swap header (`SWAPSPACE2`, as `mkswap` writes it), `swap_map` use counts with
//! `SWAP_HAS_CACHE`, slot allocation cluster by cluster (`SWAPFILE_CLUSTER` = 256 slots: a
//! device keeps filling its current cluster and takes a wholly free one when it is full),
//! `swap_duplicate`/`swap_free`, `free_swap_and_cache`, and `/proc/swaps`. `swapoff`
//! (`try_to_unuse`), which walks every address space, is in `mm/swapoff.rs`.
//!
//! A swap PTE is x86-64's: not present, PROT_NONE clear, the type in the top 5 bits and the
//! offset inverted in bits 9.. (the L1TF-safe encoding).

use crate::errno::Errno;
use crate::mm::xarray::XArray;
use crate::platform::FileData;
use crate::Kernel;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

/// `MAX_SWAPFILES_SHIFT`.
pub const SWP_TYPE_BITS: u32 = 5;
/// `MAX_SWAPFILES`.
pub const MAX_SWAPFILES: usize = 1 << SWP_TYPE_BITS;
/// `SWAP_HAS_CACHE`: the slot's page is in the swap cache.
pub const SWAP_HAS_CACHE: u8 = 0x40;
/// `SWAP_MAP_BAD`: the header page or a bad page.
pub const SWAP_MAP_BAD: u8 = 0x3f;
/// `SWAP_MAP_MAX`: the most references a slot counts here (no continuation pages).
pub const SWAP_MAP_MAX: u8 = 0x3e;
/// `SWAPFILE_CLUSTER`.
pub const SWAPFILE_CLUSTER: u64 = 256;
/// Largest offset a swap-cache page can record (27 bits beside the 5-bit type in the
/// 32-bit `page->private`).
pub const MAX_SWAP_OFFSET: u64 = (1 << 27) - 1;

const SWP_OFFSET_SHIFT: u32 = 9 + SWP_TYPE_BITS;

/// `swp_entry_t`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct SwpEntry {
    /// The swap area (`swp_type`).
    pub ty: usize,
    /// The slot (`swp_offset`).
    pub offset: u64,
}

impl SwpEntry {
    /// `swp_entry_to_pte`: x86-64's encoding.
    pub fn to_pte(self) -> crate::arch::x86_64::pgtable::Pte {
        crate::arch::x86_64::pgtable::Pte(
            ((!self.offset) << SWP_OFFSET_SHIFT >> SWP_TYPE_BITS)
                | ((self.ty as u64) << (64 - SWP_TYPE_BITS)),
        )
    }

    /// `pte_to_swp_entry` for a non-present, non-none PTE.
    pub fn from_pte(pte: crate::arch::x86_64::pgtable::Pte) -> Option<Self> {
        if pte.is_none() || pte.is_present() {
            return None;
        }
        Some(SwpEntry {
            ty: (pte.0 >> (64 - SWP_TYPE_BITS)) as usize,
            offset: (!pte.0) << SWP_TYPE_BITS >> SWP_OFFSET_SHIFT,
        })
    }

    /// Packed into a swap-cache page's `page->private`.
    pub(crate) fn pack(self) -> u32 {
        ((self.ty as u32) << 27) | self.offset as u32
    }

    pub(crate) fn unpack(v: u32) -> Self {
        SwpEntry {
            ty: (v >> 27) as usize,
            offset: (v & ((1 << 27) - 1)) as u64,
        }
    }
}

/// `struct swap_info_struct`.
pub struct SwapInfo {
    /// The swap file's path (`/proc/swaps`).
    pub path: String,
    /// `prio`.
    pub prio: i32,
    pub(crate) file: Arc<dyn FileData>,
    /// `max`: slots in the area including the header.
    pub max: u64,
    /// Usable slots (`pages`).
    pub pages: u64,
    /// Slots in use (`inuse_pages`).
    pub inuse_pages: u64,
    pub(crate) swap_map: Vec<u8>,
    /// Free slots per cluster.
    pub(crate) cluster_free: Vec<u16>,
    /// The cluster being filled.
    pub(crate) cur_cluster: Option<u64>,
    /// The swap cache of this area: offset → pfn.
    pub(crate) cache: XArray,
    /// `swapoff` is running: no new slots.
    pub(crate) closing: bool,
}

impl SwapInfo {
    fn count(&self, offset: u64) -> u8 {
        self.swap_map[offset as usize] & !SWAP_HAS_CACHE
    }

    fn slot_free(&mut self, offset: u64) {
        self.swap_map[offset as usize] = 0;
        self.inuse_pages -= 1;
        self.cluster_free[(offset / SWAPFILE_CLUSTER) as usize] += 1;
    }

    /// `cluster_alloc_swap_entry`: a free slot in the current cluster, else in a wholly free
    /// cluster (which becomes current), else anywhere.
    fn alloc_slot(&mut self) -> Option<u64> {
        if self.closing || self.inuse_pages >= self.pages {
            return None;
        }
        let nclusters = self.cluster_free.len() as u64;
        let in_cluster = |si: &SwapInfo, c: u64| -> Option<u64> {
            let lo = c * SWAPFILE_CLUSTER;
            let hi = (lo + SWAPFILE_CLUSTER).min(si.max);
            (lo..hi).find(|&o| si.swap_map[o as usize] == 0)
        };
        let mut pick = self
            .cur_cluster
            .filter(|&c| self.cluster_free[c as usize] > 0)
            .and_then(|c| in_cluster(self, c));
        if pick.is_none() {
            let full = |c: u64| {
                let lo = c * SWAPFILE_CLUSTER;
                let n = (lo + SWAPFILE_CLUSTER).min(self.max) - lo;
                self.cluster_free[c as usize] as u64 == n
            };
            if let Some(c) = (0..nclusters).find(|&c| full(c)) {
                self.cur_cluster = Some(c);
                pick = in_cluster(self, c);
            }
        }
        if pick.is_none() {
            pick = (0..nclusters)
                .filter(|&c| self.cluster_free[c as usize] > 0)
                .find_map(|c| in_cluster(self, c));
        }
        let o = pick?;
        self.swap_map[o as usize] = SWAP_HAS_CACHE;
        self.inuse_pages += 1;
        self.cluster_free[(o / SWAPFILE_CLUSTER) as usize] -= 1;
        Some(o)
    }
}

/// The swap areas (`swap_info[]`).
#[derive(Default)]
pub struct SwapState {
    pub(crate) areas: Vec<Option<SwapInfo>>,
}

/// `MAX_SWAP_BADPAGES`: the `badpages[]` slots between the header fields and the signature.
pub const MAX_SWAP_BADPAGES: usize = (4086 - 1536) / 4;

/// What `read_swap_header` decided: how many pages of the area to use (`maxpages`), and
/// the warning Linux prints when the header asks for more than a swap area can hold.
#[derive(Debug)]
struct SwapHeader {
    maxpages: u64,
    warning: Option<String>,
}

/// `read_swap_header` for a regular swap file of `file_pages` pages: the `SWAPSPACE2`
/// signature, version 1 (byte-swapped headers from the other endianness are swapped back),
/// a non-zero `last_page`, an area no longer than the file, and no bad pages (Linux refuses
/// bad pages in a swap file; only block devices may list them). `maxpages` is at most
/// `last_page + 1` and at most what a swap entry can address (larger headers are truncated
/// with Linux's warning). Every failure is `EINVAL`, with Linux's message.
fn read_swap_header(
    page: &[u8; 4096],
    file_pages: u64,
) -> Result<SwapHeader, (Errno, &'static str)> {
    if &page[4086..4096] != b"SWAPSPACE2" {
        return Err((Errno::EINVAL, "Unable to find swap-space signature"));
    }
    let u32_at = |o: usize| u32::from_le_bytes([page[o], page[o + 1], page[o + 2], page[o + 3]]);
    let (mut version, mut last_page, mut nr_badpages) = (u32_at(1024), u32_at(1028), u32_at(1032));
    // The swap partition endianness hack.
    if version.swap_bytes() == 1 {
        version = version.swap_bytes();
        last_page = last_page.swap_bytes();
        nr_badpages = nr_badpages.swap_bytes();
        if nr_badpages as usize > MAX_SWAP_BADPAGES {
            return Err((Errno::EINVAL, "too many bad pages"));
        }
    }
    if version != 1 {
        return Err((Errno::EINVAL, "Unable to handle swap header version"));
    }
    let last_page = u64::from(last_page);
    if last_page == 0 {
        return Err((Errno::EINVAL, "Empty swap-file"));
    }
    let mut maxpages = MAX_SWAP_OFFSET + 1;
    let warning = (last_page > maxpages).then(|| {
        alloc::format!(
            "Truncating oversized swap area, only using {}k out of {}k",
            maxpages * 4,
            last_page * 4
        )
    });
    if maxpages > last_page {
        maxpages = last_page + 1;
    }
    if file_pages != 0 && maxpages > file_pages {
        return Err((Errno::EINVAL, "Swap area shorter than signature indicates"));
    }
    if nr_badpages != 0 {
        // S_ISREG: bad pages make sense on a block device only.
        return Err((Errno::EINVAL, "bad pages listed in a swap file"));
    }
    Ok(SwapHeader { maxpages, warning })
}

/// Write Linux's swap header for a file of `pages` pages (what `mkswap` does), for tests and
/// the simulator: version 1, no bad pages, the `SWAPSPACE2` signature.
pub fn mkswap_header(pages: u64) -> Vec<u8> {
    let mut h = vec![0u8; 4096];
    h[1024..1028].copy_from_slice(&1u32.to_le_bytes());
    h[1028..1032].copy_from_slice(&((pages - 1) as u32).to_le_bytes());
    h[4086..4096].copy_from_slice(b"SWAPSPACE2");
    h
}

impl Kernel {
    /// `swapon(path)` of a swap file: read and check its header, set up `swap_map` (the
    /// header and bad pages unusable), and print Linux's "Adding …k swap" line. `EINVAL`
    /// for a missing signature or a file too small, `EBUSY` when all `MAX_SWAPFILES` are
    /// in use or this path is on already.
    pub fn swapon(&self, file: Arc<dyn FileData>, path: &str, prio: i32) -> Result<usize, Errno> {
        let mut hdr = [0u8; 4096];
        if file.read_at(0, &mut hdr)? < 4096 {
            self.printk("Unable to find swap-space signature");
            return Err(Errno::EINVAL);
        }
        // The header is untrusted: it sizes swap_map only after read_swap_header has bounded
        // it by the file's own size.
        let h = match read_swap_header(&hdr, file.size() / 4096) {
            Ok(h) => h,
            Err((e, why)) => {
                self.printk(why);
                return Err(e);
            }
        };
        if let Some(w) = &h.warning {
            self.printk(w);
        }
        let max = h.maxpages;
        // The header page itself is the only unusable slot; an area of nothing else is empty.
        if max < 2 {
            self.printk("Empty swap-file");
            return Err(Errno::EINVAL);
        }
        let mut swap_map = vec![0u8; max as usize];
        swap_map[0] = SWAP_MAP_BAD;
        let bad = swap_map.iter().filter(|&&m| m == SWAP_MAP_BAD).count() as u64;
        let nclusters = max.div_ceil(SWAPFILE_CLUSTER);
        let cluster_free = (0..nclusters)
            .map(|c| {
                let lo = c * SWAPFILE_CLUSTER;
                let hi = (lo + SWAPFILE_CLUSTER).min(max);
                (lo..hi).filter(|&o| swap_map[o as usize] == 0).count() as u16
            })
            .collect();
        let si = SwapInfo {
            path: String::from(path),
            prio,
            file,
            max,
            pages: max - bad,
            inuse_pages: 0,
            swap_map,
            cluster_free,
            cur_cluster: None,
            cache: XArray::default(),
            closing: false,
        };
        let pages = si.pages;
        let ty = {
            let mut st = self.swap.lock();
            if st.areas.iter().flatten().any(|a| a.path == path) {
                return Err(Errno::EBUSY);
            }
            let ty = match st.areas.iter().position(Option::is_none) {
                Some(t) => t,
                None if st.areas.len() < MAX_SWAPFILES => {
                    st.areas.push(None);
                    st.areas.len() - 1
                }
                None => return Err(Errno::EBUSY),
            };
            st.areas[ty] = Some(si);
            ty
        };
        self.printk(&alloc::format!(
            "Adding {}k swap on {path}.  Priority:{prio} extents:1 across:{}k FS",
            pages * 4,
            (max - 1) * 4
        ));
        Ok(ty)
    }

    /// `get_swap_page` / `folio_alloc_swap`: a free slot, from the area with the highest
    /// priority that has one; it starts with `SWAP_HAS_CACHE` set.
    pub(crate) fn get_swap_page(&self) -> Option<SwpEntry> {
        let mut st = self.swap.lock();
        let mut order: Vec<usize> = (0..st.areas.len())
            .filter(|&t| st.areas[t].is_some())
            .collect();
        order.sort_by_key(|&t| core::cmp::Reverse(st.areas[t].as_ref().map_or(0, |a| a.prio)));
        for t in order {
            if let Some(o) = st.areas[t].as_mut().and_then(|a| a.alloc_slot()) {
                return Some(SwpEntry { ty: t, offset: o });
            }
        }
        None
    }

    /// `swap_duplicate`: one more PTE refers to the slot.
    pub(crate) fn swap_duplicate(&self, e: SwpEntry, n: u8) {
        let mut st = self.swap.lock();
        if let Some(a) = st.areas.get_mut(e.ty).and_then(|a| a.as_mut()) {
            let m = &mut a.swap_map[e.offset as usize];
            let count = (*m & !SWAP_HAS_CACHE).saturating_add(n).min(SWAP_MAP_MAX);
            *m = (*m & SWAP_HAS_CACHE) | count;
        }
    }

    /// `swap_free` of one reference; the slot goes when nothing (PTE or cache) refers to it.
    /// Returns the references left (count, has_cache).
    pub(crate) fn swap_free(&self, e: SwpEntry) -> (u8, bool) {
        let mut st = self.swap.lock();
        let Some(a) = st.areas.get_mut(e.ty).and_then(|a| a.as_mut()) else {
            return (0, false);
        };
        let m = a.swap_map[e.offset as usize];
        let count = (m & !SWAP_HAS_CACHE).saturating_sub(1);
        let cache = m & SWAP_HAS_CACHE != 0;
        if count == 0 && !cache {
            a.slot_free(e.offset);
        } else {
            a.swap_map[e.offset as usize] = count | (m & SWAP_HAS_CACHE);
        }
        (count, cache)
    }

    /// `swapcache_prepare`: claim slot `e` for a page about to be read into the swap cache
    /// (set `SWAP_HAS_CACHE`), so that the slot cannot be freed or claimed twice while the
    /// read is under way. `EEXIST` when the slot has a cache page (or one is being read),
    /// `ENOENT` when no PTE refers to it any more.
    pub(crate) fn swapcache_prepare(&self, e: SwpEntry) -> Result<(), Errno> {
        let mut st = self.swap.lock();
        let a = st
            .areas
            .get_mut(e.ty)
            .and_then(|a| a.as_mut())
            .ok_or(Errno::ENOENT)?;
        let m = a.swap_map[e.offset as usize];
        if m == SWAP_MAP_BAD || m & !SWAP_HAS_CACHE == 0 {
            return Err(Errno::ENOENT);
        }
        if m & SWAP_HAS_CACHE != 0 {
            return Err(Errno::EEXIST);
        }
        a.swap_map[e.offset as usize] = m | SWAP_HAS_CACHE;
        Ok(())
    }

    /// `__swap_count`: PTE references to the slot.
    pub fn swap_count(&self, e: SwpEntry) -> u8 {
        let st = self.swap.lock();
        st.areas
            .get(e.ty)
            .and_then(|a| a.as_ref())
            .map_or(0, |a| a.count(e.offset))
    }

    /// `put_swap_folio`: the swap cache lets go of the slot.
    pub(crate) fn swap_clear_cache(&self, e: SwpEntry) {
        let mut st = self.swap.lock();
        if let Some(a) = st.areas.get_mut(e.ty).and_then(|a| a.as_mut()) {
            let m = a.swap_map[e.offset as usize];
            if m & !SWAP_HAS_CACHE == 0 {
                a.slot_free(e.offset);
            } else {
                a.swap_map[e.offset as usize] = m & !SWAP_HAS_CACHE;
            }
        }
    }

    /// (SwapTotal, SwapFree, SwapCached) in pages.
    pub fn swap_totals(&self) -> (u64, u64, u64) {
        let st = self.swap.lock();
        let (t, u) = st
            .areas
            .iter()
            .flatten()
            .fold((0, 0), |(t, u), a| (t + a.pages, u + a.inuse_pages));
        drop(st);
        (
            t,
            t - u,
            self.global_node_page_state(crate::mm::swap_state::NR_SWAPCACHE),
        )
    }

    /// `vm_swap_full`: more than half of the swap space is in use, so swapped-in pages give
    /// their slots up at once rather than keep a copy on swap.
    pub fn vm_swap_full(&self) -> bool {
        let (t, f, _) = self.swap_totals();
        f * 2 < t
    }

    /// Whether any swap space is free (`get_nr_swap_pages() > 0`).
    pub fn swap_available(&self) -> bool {
        let (t, f, _) = self.swap_totals();
        t > 0 && f > 0
    }

    /// `/proc/swaps`.
    pub fn proc_swaps(&self) -> String {
        let mut s = String::from("Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n");
        for a in self.swap.lock().areas.iter().flatten() {
            s.push_str(&alloc::format!(
                "{:<40}{:<16}{:<16}{:<16}{}\n",
                a.path,
                "file",
                a.pages * 4,
                a.inuse_pages * 4,
                a.prio
            ));
        }
        s
    }

    /// Check the swap invariants: `inuse_pages` and the cluster free counts agree with
    /// `swap_map`, and every swap-cache entry is a page flagged swap-cache whose slot has
    /// `SWAP_HAS_CACHE`.
    pub fn check_swap_invariants(&self) -> Result<(), String> {
        let st = self.swap.lock();
        for (t, a) in st.areas.iter().enumerate() {
            let Some(a) = a else { continue };
            let used = a
                .swap_map
                .iter()
                .filter(|&&m| m != 0 && m != SWAP_MAP_BAD)
                .count() as u64;
            if used != a.inuse_pages {
                return Err(alloc::format!(
                    "swap {t}: inuse {} but {used} slots used",
                    a.inuse_pages
                ));
            }
            for (c, &f) in a.cluster_free.iter().enumerate() {
                let lo = c as u64 * SWAPFILE_CLUSTER;
                let hi = (lo + SWAPFILE_CLUSTER).min(a.max);
                let free = (lo..hi).filter(|&o| a.swap_map[o as usize] == 0).count() as u16;
                if free != f {
                    return Err(alloc::format!("swap {t}: cluster {c} free {f} but {free}"));
                }
            }
            for (o, pfn) in a.cache.iter() {
                let p = self.mem_map.page(pfn);
                if !p.test(crate::mm::swap_state::PG_SWAPCACHE)
                    || SwpEntry::unpack(p.private()) != (SwpEntry { ty: t, offset: o })
                    || a.swap_map[o as usize] & SWAP_HAS_CACHE == 0
                {
                    return Err(alloc::format!("swap {t}: cache entry {o} inconsistent"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(f: impl FnOnce(&mut [u8; 4096])) -> [u8; 4096] {
        let mut p = [0u8; 4096];
        p.copy_from_slice(&mkswap_header(256));
        f(&mut p);
        p
    }

    #[test]
    fn swap_headers_are_bounded_as_linux_does() {
        let ok = read_swap_header(&page(|_| ()), 256).unwrap();
        assert_eq!(ok.maxpages, 256);
        assert!(ok.warning.is_none());
        // No signature; another version.
        let e = read_swap_header(&page(|p| p[4090] = b'X'), 256).unwrap_err();
        assert_eq!(e.1, "Unable to find swap-space signature");
        let e = read_swap_header(&page(|p| p[1024] = 2), 256).unwrap_err();
        assert_eq!(e.1, "Unable to handle swap header version");
        // last_page 0; an area longer than the file (the header would size swap_map by it).
        let e = read_swap_header(&page(|p| p[1028..1032].fill(0)), 256).unwrap_err();
        assert_eq!(e.1, "Empty swap-file");
        let e = read_swap_header(&page(|p| p[1028..1032].fill(0xff)), 256).unwrap_err();
        assert_eq!(
            (e.0, e.1),
            (Errno::EINVAL, "Swap area shorter than signature indicates")
        );
        // A huge last_page on a file that is big enough is truncated with Linux's warning.
        let big = read_swap_header(&page(|p| p[1028..1032].fill(0xff)), u64::MAX >> 12).unwrap();
        assert_eq!(big.maxpages, MAX_SWAP_OFFSET + 1);
        assert!(big
            .warning
            .unwrap()
            .starts_with("Truncating oversized swap area"));
        // A shorter area than the file is fine: only last_page + 1 pages are used.
        assert_eq!(read_swap_header(&page(|_| ()), 1000).unwrap().maxpages, 256);
        // Bad pages in a swap file are refused; so is a byte-swapped count beyond the array.
        let e = read_swap_header(&page(|p| p[1032] = 1), 256).unwrap_err();
        assert_eq!(e.0, Errno::EINVAL);
        let swapped = page(|p| {
            p[1024..1028].copy_from_slice(&1u32.to_be_bytes());
            p[1028..1032].copy_from_slice(&255u32.to_be_bytes());
            p[1032..1036].copy_from_slice(&0xffff_ffffu32.to_be_bytes());
        });
        assert_eq!(
            read_swap_header(&swapped, 256).unwrap_err().1,
            "too many bad pages"
        );
        let swapped_ok = page(|p| {
            p[1024..1028].copy_from_slice(&1u32.to_be_bytes());
            p[1028..1032].copy_from_slice(&255u32.to_be_bytes());
        });
        assert_eq!(read_swap_header(&swapped_ok, 256).unwrap().maxpages, 256);
    }
}
