//! File-system views of memory management (`fs/`).
pub mod binfmt_elf;
pub mod exec;
pub mod inode;
pub mod proc;
