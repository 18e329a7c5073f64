//! File-system views of memory management (`fs/`).
pub mod binfmt_elf;
pub mod binfmt_script;
pub mod exec;
pub mod inode;
pub mod namei;
pub mod proc;
