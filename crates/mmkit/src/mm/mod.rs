//! Memory management (`mm/`).
pub mod init;
pub mod list;
pub mod memblock;
pub mod mempool;
pub mod mmzone;
pub mod page;
pub mod page_alloc;
pub mod slab;
pub mod slab_check;
pub mod slab_common;
pub mod slab_debug;
pub mod sysctl;
pub mod vmalloc;
pub mod vmap_tree;
pub mod vmstat;
pub mod vmstat_names;
