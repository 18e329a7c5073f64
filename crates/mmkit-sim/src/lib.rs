//! The simulated machine that runs the `mmkit` library: RAM is one lazily committed host
//! mapping, CPUs are host threads bound to a CPU id, and the clock is the host's.

pub mod bench;
pub mod bench_exec;
pub mod bench_fault;
pub mod bench_reclaim;
pub mod cli;
pub mod cpu;
pub mod demo;
pub mod exec;
pub mod exec_cmd;
pub mod exec_sweep;
pub mod fault_counts;
pub mod hostfs;
pub mod hostview;
pub mod kvm;
pub mod machine;
pub mod pressure;
pub mod pressure_exec;
pub mod procfs;
pub mod progress;
pub mod tempfiles;
pub mod workload;

pub use machine::{Machine, MachineSpec};
