//! The simulated CPU (`mmkit::arch::x86_64::cpufeature::CpuFeatures`): the host's, probed the
//! way its kernel reports it, or one named with `--cpu`.
//!
//! From the host: CPUID.1:EDX (`AT_HWCAP`), the XSAVE size for the features the host kernel
//! enabled in XCR0 (CPUID.(EAX=0DH,ECX=0):EBX, when OSXSAVE is set), the `AT_HWCAP2` the
//! host kernel gave this process, and `ospke` from `/proc/cpuinfo` (protection keys present
//! *and* enabled by the kernel).
//! A `--cpu` value is `host`, `baseline` (the library's default CPU), or a comma list of
//! changes to the host's: `+pku`/`-pku`, `+fsgsbase`/`-fsgsbase`, `xsave=BYTES`.

use anyhow::{bail, Context, Result};
use mmkit::arch::x86_64::cpufeature::{CpuFeatures, HWCAP2_FSGSBASE, HWCAP2_RING3MWAIT};

/// The flags `/proc/cpuinfo` lists for the first CPU.
pub fn host_cpuinfo_flags() -> Vec<String> {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("flags"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, f)| f.split_whitespace().map(String::from).collect())
        })
        .unwrap_or_default()
}

/// Entry `key` of the auxiliary vector the host kernel gave this process, read from
/// `/proc/self/auxv` (glibc's `getauxval(AT_HWCAP)` answers with glibc's own bits).
pub fn own_auxv(key: u64) -> Option<u64> {
    let b = std::fs::read("/proc/self/auxv").ok()?;
    b.chunks_exact(16)
        .map(|c| {
            (
                u64::from_le_bytes(c[..8].try_into().expect("8 bytes")),
                u64::from_le_bytes(c[8..].try_into().expect("8 bytes")),
            )
        })
        .take_while(|&(k, _)| k != 0)
        .find(|&(k, _)| k == key)
        .map(|(_, v)| v)
}

/// The host CPU as its kernel shows it to this process.
pub fn host_features() -> CpuFeatures {
    let mut c = CpuFeatures::default();
    #[cfg(target_arch = "x86_64")]
    {
        // CPUID leaf 1 exists on every x86-64 CPU; leaf 0xD when XSAVE is enabled (OSXSAVE).
        let r = core::arch::x86_64::__cpuid(1);
        c.cpuid_1_edx = r.edx;
        c.xstate_size = if r.ecx & (1 << 27) != 0 {
            core::arch::x86_64::__cpuid_count(0xd, 0).ebx
        } else {
            512
        };
    }
    let hwcap2 = own_auxv(26 /* AT_HWCAP2 */).unwrap_or(0);
    c.fsgsbase = hwcap2 & HWCAP2_FSGSBASE != 0;
    c.ring3mwait = hwcap2 & HWCAP2_RING3MWAIT != 0;
    c.ospke = host_cpuinfo_flags().iter().any(|f| f == "ospke");
    c
}

/// Parse a `--cpu` value (see the module doc).
pub fn parse_cpu(spec: &str) -> Result<CpuFeatures> {
    let spec = spec.trim();
    match spec {
        "host" => return Ok(host_features()),
        "baseline" => return Ok(CpuFeatures::default()),
        _ => {}
    }
    let mut c = host_features();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some(v) = part.strip_prefix("xsave=") {
            let n: u32 = v
                .parse()
                .with_context(|| format!("--cpu {part}: xsave= needs a byte count"))?;
            if !(512..=1 << 20).contains(&n) {
                bail!("--cpu {part}: the XSAVE area is 512 bytes to 1 MiB");
            }
            c.xstate_size = n;
            continue;
        }
        let (on, name) = match part.split_at(1) {
            ("+", n) => (true, n),
            ("-", n) => (false, n),
            _ => bail!(
                "--cpu {part}: expected host, baseline, or a list of +FEATURE/-FEATURE/xsave=BYTES"
            ),
        };
        match name {
            "pku" | "ospke" => c.ospke = on,
            "fsgsbase" => c.fsgsbase = on,
            "ring3mwait" => c.ring3mwait = on,
            _ => bail!(
                "--cpu {part}: unknown feature `{name}` (known: pku, fsgsbase, ring3mwait, xsave=BYTES)"
            ),
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host CPU as probed gives the auxiliary vector the host kernel gave us.
    #[test]
    fn host_probe_matches_our_own_auxv() {
        let c = host_features();
        assert_eq!(Some(c.elf_hwcap()), own_auxv(16));
        assert_eq!(Some(c.elf_hwcap2()), own_auxv(26));
        // AT_MINSIGSTKSZ: the kernel's get_sigframe_size() for this CPU.
        if let Some(minsig) = own_auxv(51) {
            assert_eq!(c.sigframe_size(), minsig, "{c:?}");
        }
    }

    #[test]
    fn cpu_specs() {
        assert!(parse_cpu("+pku").unwrap().ospke);
        assert!(!parse_cpu("-pku").unwrap().ospke);
        assert_eq!(parse_cpu("xsave=2696").unwrap().xstate_size, 2696);
        assert_eq!(parse_cpu("baseline").unwrap(), CpuFeatures::default());
        assert!(parse_cpu("+avx9").is_err());
        assert!(parse_cpu("pku").is_err());
        assert!(parse_cpu("xsave=12").is_err());
    }
}
