//! Real programs on mmkit: unmodified x86-64 Linux binaries run in ring 3 of a `/dev/kvm`
//! virtual machine whose guest-physical memory is the machine's RAM, on page tables mmkit
//! builds, with mmkit handling their faults and memory system calls and forwarding the rest
//! to the host.
//!
//! ```text
//!  host process `mmkit`                              guest (one vCPU per simulated CPU)
//!  ┌──────────────────────────────────────────┐     ┌──────────────────────────────────────┐
//!  │ mmkit (the library): page allocator,     │     │ ring 3: the program, its libraries,  │
//!  │   page tables in RAM frames, faults,     │ RAM │   its heap and stack — every byte in │
//!  │   page cache, reclaim, /proc             │◄═══►│   mmkit's page frames                │
//!  │ this module: the VMM — vCPU setup, the   │memfd│ ring 0: GDT, IDT, TSS, entry stack   │
//!  │   exit loop, syscalls (mm ones by mmkit, │     │   and stubs (kernel image pages,     │
//!  │   the rest forwarded to the host through │     │   mapped in every PGD's kernel half) │
//!  │   copy_{from,to}_user)                   │     │ CR3 = the mm's PGD (built by mmkit)  │
//!  └──────────────────────────────────────────┘     └──────────────────────────────────────┘
//!        ▲            exits: `out` to a port from a stub            │
//!        └───────────────────────────────────────────────────────────┘
//! ```
//!
//! - A page fault goes through the guest IDT to its stub, which exits; the VMM calls the
//!   same `do_user_addr_fault` the software MMU uses, then resumes (the stub `iretq`s). The
//!   hardware walks mmkit's tables and sets Accessed and Dirty in them.
//! - `SYSCALL` reaches `LSTAR`: in ring 0 on hardware (the stub exits on the syscall port and
//!   `sysretq`s), in ring 3 on the nested `kvm_pvm` hypervisor this was built on (the fetch
//!   from the supervisor-only entry page faults, and that fault is the syscall). Which one
//!   happens is probed when the VM is created.
//! - Every TLB flush mmkit's `MmuGather` does also drops the hypervisor's own translations
//!   of the frames it names ([`crate::machine::Ram`]'s zap), so changing a live PTE from the
//!   host side is seen by the guest.

pub mod khugepaged;
pub mod pipe;
pub mod process;
pub mod sched;
pub mod signal;
pub mod smp;
pub mod syscall;
pub mod tty;
pub mod vcpu;
pub mod vm;

pub use process::{run_program, CpuRun, Outcome, ProcessFaults, RunOptions};
pub use vm::{kvm_usable, Vm};
