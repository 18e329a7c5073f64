//! Processes as memory management sees them (`kernel/`): tasks, `fork`, `exec`, `exit`,
//! `wait`.
pub mod task;
