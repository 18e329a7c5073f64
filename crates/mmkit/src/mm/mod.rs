//! Memory management (`mm/`).
pub mod init;
pub mod list;
pub mod memblock;
pub mod mmzone;
pub mod page;
pub mod page_alloc;
pub mod sysctl;
pub mod vmstat;
pub mod vmstat_names;
