//! x86-64 specifics: the e820 map and the virtual memory layout.
pub mod e820;
pub mod layout;
