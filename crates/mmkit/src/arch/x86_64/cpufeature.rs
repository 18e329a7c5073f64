//! The simulated CPU's features (`arch/x86/include/asm/cpufeatures.h`,
//! `arch/x86/kernel/cpu/common.c`'s `identify_cpu`, `arch/x86/kernel/fpu/xstate.c`,
//! `arch/x86/kernel/signal.c`'s `init_sigframe_size`): what the kernel shows user space
//! about the CPU it runs on.
//!
//! The library never probes a CPU: a [`crate::Platform`] hands it a [`CpuFeatures`] (the
//! simulator takes the host's, or a model named on its command line), and what depends on
//! it follows Linux's rules: `AT_HWCAP` is CPUID.1:EDX (`ELF_HWCAP`), `AT_HWCAP2` has
//! `HWCAP2_RING3MWAIT` and `HWCAP2_FSGSBASE`, `AT_MINSIGSTKSZ` is `get_sigframe_size()` from
//! the XSAVE buffer size, and `/proc/PID/smaps` prints `ProtectionKey:` for every mapping when
//! the kernel enabled protection keys (`X86_FEATURE_OSPKE`: `arch_show_smap`).

/// `HWCAP2_RING3MWAIT`.
pub const HWCAP2_RING3MWAIT: u64 = 1 << 0;
/// `HWCAP2_FSGSBASE`.
pub const HWCAP2_FSGSBASE: u64 = 1 << 1;

/// `sizeof(struct sigframe_ia32)` as a 64-bit kernel lays it out: pretcode, sig,
/// `sigcontext_32` (88), the unused `_fpstate_32` (624, 8-byte aligned for its `u64`),
/// extramask, retcode: 732 bytes padded to 736 (the largest signal frame with
/// `CONFIG_IA32_EMULATION`, `MAX_FRAME_SIGINFO_UCTXT_SIZE`).
const SIGFRAME_IA32_SIZE: u64 = 736;
/// `MAX_FRAME_PADDING` (`FRAME_ALIGNMENT - 1`).
const MAX_FRAME_PADDING: u64 = 15;
/// `MAX_XSAVE_PADDING`.
const MAX_XSAVE_PADDING: u64 = 63;
/// `sizeof(struct fregs_state)`: the legacy FSAVE header kept for 32-bit frames.
const FREGS_STATE_SIZE: u64 = 112;
/// `FP_XSTATE_MAGIC2_SIZE`: the magic word after the XSAVE buffer.
const FP_XSTATE_MAGIC2_SIZE: u64 = 4;

/// What a CPU offers and the kernel enabled, as far as memory management shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuFeatures {
    /// CPUID.1:EDX, the `ELF_HWCAP` word.
    pub cpuid_1_edx: u32,
    /// `X86_FEATURE_OSPKE`: protection keys present and enabled (CR4.PKE).
    pub ospke: bool,
    /// `X86_FEATURE_FSGSBASE` enabled (CR4.FSGSBASE): `HWCAP2_FSGSBASE`.
    pub fsgsbase: bool,
    /// `X86_FEATURE_RING3MWAIT`: `HWCAP2_RING3MWAIT`.
    pub ring3mwait: bool,
    /// `fpu_user_cfg.max_size`: the XSAVE buffer for every user feature enabled in XCR0
    /// (CPUID.(EAX=0DH,ECX=0):EBX); 512 for an FXSAVE-only CPU.
    pub xstate_size: u32,
}

impl Default for CpuFeatures {
    /// A baseline x86-64 CPU with AVX (x86-64-v3 without protection keys): the standard
    /// CPUID.1:EDX bits, FSGSBASE, and a 832-byte XSAVE area (legacy 512 + header 64 + AVX
    /// 256).
    fn default() -> Self {
        Self {
            cpuid_1_edx: 0x178b_fbff,
            ospke: false,
            fsgsbase: true,
            ring3mwait: false,
            xstate_size: 832,
        }
    }
}

impl CpuFeatures {
    /// `ELF_HWCAP`.
    pub fn elf_hwcap(&self) -> u64 {
        u64::from(self.cpuid_1_edx)
    }

    /// `ELF_HWCAP2`.
    pub fn elf_hwcap2(&self) -> u64 {
        let mut h = 0;
        if self.ring3mwait {
            h |= HWCAP2_RING3MWAIT;
        }
        if self.fsgsbase {
            h |= HWCAP2_FSGSBASE;
        }
        h
    }

    /// `get_sigframe_size()` (`AT_MINSIGSTKSZ`), as `init_sigframe_size` computes it: the
    /// largest signal frame, the FPU state (`fpu__get_fpstate_size`: the XSAVE buffer, its
    /// magic word, the FSAVE header), the padding, rounded up to 16 bytes.
    pub fn sigframe_size(&self) -> u64 {
        let xsave = self.xstate_size > 512;
        let fpstate = u64::from(self.xstate_size)
            + if xsave { FP_XSTATE_MAGIC2_SIZE } else { 0 }
            + FREGS_STATE_SIZE;
        let size = SIGFRAME_IA32_SIZE + MAX_FRAME_PADDING + fpstate + MAX_XSAVE_PADDING;
        size.div_ceil(16) * 16
    }

    /// `arch_pkeys_enabled()`: smaps shows `ProtectionKey:`.
    pub fn pkeys_enabled(&self) -> bool {
        self.ospke
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frame sizes Linux 6.x reports for known XSAVE sizes (`max sigframe size` in the
    /// boot log, `AT_MINSIGSTKSZ`): AVX-512 without PKRU (2688 bytes) gives 3632, as a
    /// Sapphire Rapids guest without protection keys reports; AVX (832) gives 1776.
    #[test]
    fn sigframe_sizes() {
        let mut c = CpuFeatures {
            xstate_size: 2688,
            ..CpuFeatures::default()
        };
        assert_eq!(c.sigframe_size(), 3632);
        c.xstate_size = 832;
        assert_eq!(c.sigframe_size(), 1776);
        assert_eq!(c.elf_hwcap2(), HWCAP2_FSGSBASE);
    }
}
