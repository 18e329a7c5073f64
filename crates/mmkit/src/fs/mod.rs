//! File-system views of memory management (`fs/`).
pub mod proc;
