//! The virtual machine: `/dev/kvm` opened with `kvm-ioctls`, the machine's RAM registered as
//! its guest-physical memory (guest-physical address = mmkit physical address), the CPU
//! entry structures built by the library, and what the host's KVM can do (CPUID, XSAVE
//! features, `KVM_CAP_SYNC_REGS`) and how `SYSCALL` behaves on it, probed.

use super::vcpu::{Exit, Vcpu};
use crate::machine::Machine;
use anyhow::{anyhow, bail, Context, Result};
use kvm_bindings::{kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm, VmFd};
use mmkit::arch::x86_64::cpu_entry_area::CpuEntryArea;

/// How `SYSCALL` from ring 3 reaches the kernel on this hypervisor.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum SyscallEntry {
    /// As on hardware: ring 0 at `MSR_LSTAR`, whose stub exits on the syscall port.
    Lstar,
    /// Still in ring 3 at `MSR_LSTAR` (the nested `kvm_pvm` hypervisor does this): the
    /// fetch from the supervisor-only entry page faults, and the fault's exit with
    /// `CR2 == RIP == LSTAR` is the syscall.
    FaultAtLstar,
}

/// `CPUID.80000001H:ECX.ABM` (LZCNT): `kvm_pvm`'s `KVM_GET_SUPPORTED_CPUID` leaves it out
/// although the CPU executes `lzcnt` in ring 3 with no hypervisor involvement, and glibc
/// then takes the guest for a pre-Haswell CPU (no x86-64-v3) and picks other string
/// functions than a native run does — other code pages, so other faults and another peak
/// RSS (`/bin/true`: 1052 kB against the host's 1120 kB; 1056 kB when the native run is
/// told `GLIBC_TUNABLES=glibc.cpu.hwcaps=-LZCNT`). Where the host's CPUID has the bit, the
/// guest gets it too; nothing else is added.
fn pass_through_lzcnt(cpuid: &mut CpuId) {
    const ABM: u32 = 1 << 5;
    let host = core::arch::x86_64::__cpuid(0x8000_0001);
    if host.ecx & ABM == 0 {
        return;
    }
    for e in cpuid.as_mut_slice() {
        if e.function == 0x8000_0001 {
            e.ecx |= ABM;
        }
    }
}

/// A KVM virtual machine running programs on a [`Machine`].
pub struct Vm {
    pub(crate) ram: std::sync::Arc<crate::machine::Ram>,
    pub(crate) vm: VmFd,
    /// The CPU entry structures the library built (GDT, IDT, TSS, stacks, `LSTAR`).
    pub entry: CpuEntryArea,
    pub(crate) cpuid: CpuId,
    /// The `XCR0` the guest runs with (the x87, SSE, AVX and AVX-512 states KVM supports).
    pub xcr0: u64,
    /// Bytes of the XSAVE image of the `XCR0` features (the FPU state in a signal frame).
    pub xsave_size: usize,
    /// `KVM_CAP_SYNC_REGS`: registers come with the exit, no ioctl needed.
    pub sync_regs: bool,
    /// How `SYSCALL` enters (probed at creation).
    pub syscall_entry: SyscallEntry,
    /// The vCPUs created so far, while not running (KVM creates each id once).
    vcpus: std::sync::Mutex<Vec<Option<Vcpu>>>,
    shadow_resets: std::sync::atomic::AtomicU64,
}

/// Why `/dev/kvm` cannot be used here, or `Ok`.
pub fn kvm_usable() -> Result<()> {
    let kvm = Kvm::new().map_err(|e| anyhow!("cannot open /dev/kvm: {e}"))?;
    let v = kvm.get_api_version();
    if v != 12 {
        bail!("/dev/kvm has API version {v}, not 12");
    }
    kvm.create_vm()
        .map_err(|e| anyhow!("/dev/kvm cannot create a virtual machine: {e}"))?;
    Ok(())
}

impl Vm {
    /// Create the VM for `m`: register its RAM, build the CPU entry area (before any address
    /// space that will run is created: its PGD copies the kernel half), set up CPUID and
    /// XSAVE features, and probe how `SYSCALL` enters. From now on every TLB flush of the
    /// machine also drops the hypervisor's translations of the frames it names.
    pub fn new(m: &Machine) -> Result<Self> {
        let kvm = Kvm::new().map_err(|e| anyhow!("cannot open /dev/kvm: {e}"))?;
        if kvm.get_api_version() != 12 {
            bail!("/dev/kvm has API version {}, not 12", kvm.get_api_version());
        }
        let vm = kvm
            .create_vm()
            .map_err(|e| anyhow!("/dev/kvm cannot create a virtual machine: {e}"))?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: m.ram.len() as u64,
            userspace_addr: m.ram.base() as u64,
        };
        // SAFETY: the region is the machine's RAM mapping, which lives as long as the machine
        // (and so this VM, which borrows nothing but is dropped with it by its owner before
        // the machine in every caller); KVM only accesses it while vCPUs run.
        unsafe { vm.set_user_memory_region(region) }.map_err(|e| {
            anyhow!(
                "KVM_SET_USER_MEMORY_REGION of {} MiB: {e}",
                m.ram.len() >> 20
            )
        })?;
        let entry = m
            .on_cpu(0, |cpu| m.kernel.setup_cpu_entry_area(cpu))
            .context("building the CPU entry area")?;
        let mut cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| anyhow!("KVM_GET_SUPPORTED_CPUID: {e}"))?;
        pass_through_lzcnt(&mut cpuid);
        // XCR0: the state components both KVM (CPUID 0xd.0) and we handle: x87, SSE, AVX,
        // and the three AVX-512 ones.
        let xsave_mask: u64 = 0b1110_0111;
        let xcr0 = cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == 0xd && e.index == 0)
            .map_or(0b11, |e| {
                (e.eax as u64 | ((e.edx as u64) << 32)) & xsave_mask
            });
        let sync_regs = kvm.check_extension(Cap::SyncRegs);
        // The end of the highest enabled component (CPUID.(0DH, i): size EAX at offset
        // EBX), at least the legacy area and the XSAVE header.
        let xsave_size = (2..8)
            .filter(|i| xcr0 & (1 << i) != 0)
            .map(|i| {
                let c = core::arch::x86_64::__cpuid_count(0xd, i);
                (c.ebx + c.eax) as usize
            })
            .max()
            .unwrap_or(0)
            .clamp(576, 4096);
        let mut vm = Self {
            ram: m.ram.clone(),
            vm,
            entry,
            cpuid,
            xcr0,
            xsave_size,
            sync_regs,
            syscall_entry: SyscallEntry::Lstar,
            vcpus: std::sync::Mutex::new(Vec::new()),
            shadow_resets: Default::default(),
        };
        if m.ram.attach_mmu() {
            bail!("the machine already runs programs in another virtual machine (one at a time: each would cache its page tables unseen by the other's grace period)");
        }
        vm.syscall_entry = vm.probe_syscall(m)?;
        Ok(vm)
    }

    /// Run `syscall; ud2` in ring 3 of a scratch address space and see how the syscall
    /// arrives.
    fn probe_syscall(&self, m: &Machine) -> Result<SyscallEntry> {
        use mmkit::mm::mmap::{MAP_ANONYMOUS, MAP_PRIVATE, PROT_EXEC, PROT_READ, PROT_WRITE};
        let k = &m.kernel;
        m.on_cpu(0, |cpu| -> Result<SyscallEntry> {
            let mut mm = k.mm_alloc(cpu)?;
            let rwx = PROT_READ | PROT_WRITE | PROT_EXEC;
            let code = k.mmap(cpu, &mut mm, 0, 4096, rwx, MAP_PRIVATE | MAP_ANONYMOUS, 0)?;
            let stack = k.mmap(
                cpu,
                &mut mm,
                0,
                4096,
                PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS,
                0,
            )?;
            // mov $39, %eax (getpid); syscall; ud2
            k.copy_to_user(
                cpu,
                &mut mm,
                code,
                &[0xb8, 39, 0, 0, 0, 0x0f, 0x05, 0x0f, 0x0b],
            )?;
            k.copy_to_user(cpu, &mut mm, stack, &[0; 8])?;
            let mut vcpu = self.take_vcpu(0)?;
            vcpu.enter_user(self, mm.pt.pgd_pfn(), code, stack + 4096)?;
            let found = match vcpu.run(self)? {
                Exit::Syscall => Ok(SyscallEntry::Lstar),
                Exit::Exception { vector: 14, .. } if vcpu.cr2()? == self.entry.lstar => {
                    Ok(SyscallEntry::FaultAtLstar)
                }
                other => Err(anyhow!("SYSCALL probe: unexpected {other:?}")),
            };
            self.put_vcpu(vcpu);
            k.exit_mmap(cpu, mm);
            self.sync_tables(k, cpu)?;
            found
        })
    }

    /// The grace period of deferred page-table frees (see
    /// `mmkit::Platform::defer_table_free`): make the hypervisor drop every shadow table it
    /// built — deleting and re-adding the RAM slot is the one way userspace has, and it
    /// costs ~5 ms nested — then hand the parked tables back to the allocator. Called with
    /// no vCPU running: at the end of a program, or when too many tables are parked.
    pub fn sync_tables(&self, k: &mmkit::Kernel, cpu: &mmkit::cpu::CpuGuard<'_>) -> Result<()> {
        if k.nr_deferred_tables() == 0 {
            return Ok(());
        }
        self.reset_shadow()?;
        self.shadow_resets
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        k.tlb_remove_table_sync(cpu);
        Ok(())
    }

    /// Shadow rebuilds [`Vm::sync_tables`] has done.
    pub fn shadow_resets(&self) -> u64 {
        self.shadow_resets
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Drop every shadow page table the hypervisor built (delete and re-add the RAM slot).
    fn reset_shadow(&self) -> Result<()> {
        let mut region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: 0,
            userspace_addr: self.ram.base() as u64,
        };
        // SAFETY: deleting and re-adding the same RAM mapping registered in `new`.
        unsafe { self.vm.set_user_memory_region(region) }
            .map_err(|e| anyhow!("KVM_SET_USER_MEMORY_REGION deleting the RAM slot: {e}"))?;
        region.memory_size = self.ram.len() as u64;
        // SAFETY: as above.
        unsafe { self.vm.set_user_memory_region(region) }
            .map_err(|e| anyhow!("KVM_SET_USER_MEMORY_REGION re-adding the RAM slot: {e}"))?;
        Ok(())
    }

    /// vCPU `id`, created on first use; give it back with [`Vm::put_vcpu`].
    pub fn take_vcpu(&self, id: usize) -> Result<Vcpu> {
        let mut v = self.vcpus.lock().expect("vcpu list");
        if v.len() <= id {
            v.resize_with(id + 1, || None);
        }
        if let Some(c) = v[id].take() {
            return Ok(c);
        }
        drop(v);
        Vcpu::new(self, id)
    }

    /// Return a vCPU taken with [`Vm::take_vcpu`].
    pub fn put_vcpu(&self, c: Vcpu) {
        let mut v = self.vcpus.lock().expect("vcpu list");
        let id = c.id();
        if v.len() <= id {
            v.resize_with(id + 1, || None);
        }
        v[id] = Some(c);
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.ram.detach_mmu();
    }
}
