//! x86-64 specifics: the e820 map, the virtual memory layout, page tables and the MMU/TLB.
pub mod clear_page;
pub mod cpu_entry_area;
pub mod cpufeature;
pub mod e820;
pub mod fault;
pub mod layout;
pub mod pgtable;
pub mod tlb;
pub mod vdso;
