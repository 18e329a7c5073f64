//! `/proc` files about memory, byte for byte in Linux 6.x's formats (`fs/proc/meminfo.c`,
//! `mm/vmstat.c`'s `frag_show`/`pagetypeinfo_show`/`zoneinfo_show`/`vmstat_show`,
//! `kernel/resource.c`'s `/proc/iomem`).

pub mod array;
pub mod buddyinfo;
pub mod iomem;
pub mod meminfo;
pub mod task_mmu;
pub mod vmstat;
pub mod zoneinfo;

use crate::Kernel;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

/// Every memory `/proc` file this kernel has, as (name under `/proc`, contents).
pub fn proc_files(k: &Kernel) -> Vec<(&'static str, String)> {
    vec![
        ("meminfo", meminfo::meminfo(k)),
        ("buddyinfo", buddyinfo::buddyinfo(k)),
        ("pagetypeinfo", buddyinfo::pagetypeinfo(k)),
        ("zoneinfo", zoneinfo::zoneinfo(k)),
        ("vmstat", vmstat::vmstat(k)),
        ("iomem", iomem::iomem(k)),
        ("slabinfo", k.proc_slabinfo()),
        ("vmallocinfo", k.proc_vmallocinfo()),
    ]
}
