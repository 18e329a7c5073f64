//! The kernel command line (`init/main.c`'s `parse_args`, `early_param` handlers in
//! `mm/mm_init.c` and `arch/x86/mm/numa_emulation.c`, and `sysctl.*=` boot parameters).
//!
//! Recognised: `numa=fake=N`, `movablecore=SIZE|N%`, `kernelcore=SIZE|N%`,
//! `sysctl.vm.min_free_kbytes=N`, `sysctl.vm.watermark_scale_factor=N`,
//! `sysctl.vm.lowmem_reserve_ratio=A,B,C,D,E`, `slab_debug`, `norandmaps`, `quiet`, `loglevel=N`,
//! `transparent_hugepage=always|madvise|never` (`setup_transparent_hugepage`),
//! `thp_anon=SIZES:POLICY;…` (`setup_thp_anon`, e.g. `thp_anon=16K-64K:always;2M:inherit`).
//! Linux passes unknown parameters on to init with a warning; a simulator has no init to pass
//! them to, so an unknown parameter is an error naming it (a typo should not be silent).
//!
//! Bounds, as Linux's: the whole line is shorter than x86's `COMMAND_LINE_SIZE` (2048 bytes,
//! where Linux would cut it silently, this refuses it); `sysctl.vm.*` values are C `int`s
//! parsed as `proc_dointvec_minmax` does (decimal, `0x` hex or `0` octal), and a value
//! outside the sysctl's range is refused, as writing it to `/proc/sys` fails with `EINVAL`:
//! `min_free_kbytes` 0..=INT_MAX, `watermark_scale_factor` 1..=3000. `lowmem_reserve_ratio`
//! values below 1 are clamped to 0 (disabled), as `lowmem_reserve_ratio_sysctl_handler`
//! does; above INT_MAX they are refused.

use crate::mm::mmzone::{WmarkTunables, MAX_NR_ZONES};
use alloc::string::{String, ToString};

/// A size given as bytes or as a percentage of memory.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum SizeOrPercent {
    /// Bytes.
    Bytes(u64),
    /// Percent of total memory (0..=100).
    Percent(u64),
}

/// What the command line configures.
#[derive(Clone, Debug, Default)]
pub struct BootConfig {
    /// The raw command line.
    pub cmdline: String,
    /// `numa=fake=N` (1 when absent).
    pub numa_fake: usize,
    /// `movablecore=`.
    pub movablecore: Option<SizeOrPercent>,
    /// `kernelcore=`.
    pub kernelcore: Option<SizeOrPercent>,
    /// Watermark sysctls.
    pub wmark: WmarkTunables,
    /// `norandmaps`.
    pub norandmaps: bool,
    /// `slab_debug`: red zones, poisoning and caller tracking on every slab cache.
    pub slab_debug: bool,
    /// `transparent_hugepage=` (the build's default, `madvise`, when absent).
    pub thp_enabled: Option<crate::mm::huge_memory::ThpEnabled>,
    /// `thp_anon=` (Linux 6.12+): the per-size anonymous policies; a size it does not name
    /// is `never` (Linux's defaults when absent: 2 MiB `inherit`, the other sizes `never`).
    pub thp_anon: Option<crate::mm::huge_memory::AnonOrders>,
}

/// x86's `COMMAND_LINE_SIZE`: the command line with its NUL fits in this many bytes.
pub const COMMAND_LINE_SIZE: usize = 2048;

/// `INT_MAX`: the largest value an `int` sysctl holds.
pub const INT_MAX: i64 = i32::MAX as i64;

/// A command-line parameter that could not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CmdlineError {
    /// Not a parameter we know.
    #[error("unknown kernel command line parameter `{0}`")]
    Unknown(String),
    /// The whole line is longer than `COMMAND_LINE_SIZE` allows.
    #[error(
        "kernel command line is {0} bytes; it must be shorter than COMMAND_LINE_SIZE ({COMMAND_LINE_SIZE})"
    )]
    TooLong(usize),
    /// A known parameter with a value that does not parse or is out of range.
    #[error("bad value in kernel command line parameter `{param}`: {why}")]
    BadValue {
        /// The whole parameter.
        param: String,
        /// What is wrong.
        why: &'static str,
    },
}

/// `memparse`: a number with an optional K/M/G/T/P/E suffix (binary units).
pub fn memparse(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, shift) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 10),
        (i, 'm' | 'M') => (&s[..i], 20),
        (i, 'g' | 'G') => (&s[..i], 30),
        (i, 't' | 'T') => (&s[..i], 40),
        (i, 'p' | 'P') => (&s[..i], 50),
        (i, 'e' | 'E') => (&s[..i], 60),
        _ => (s, 0),
    };
    let v = if let Some(h) = num.strip_prefix("0x") {
        u64::from_str_radix(h, 16).ok()?
    } else {
        num.parse().ok()?
    };
    v.checked_mul(1u64 << shift)
}

/// `proc_get_long` + the `int` range check of `proc_dointvec`: an optionally signed number
/// in base 0 (decimal, `0x` hex, leading-`0` octal) that fits a C `int`.
fn parse_int(v: &str) -> Option<i64> {
    let v = v.trim();
    let (neg, digits) = match v.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, v),
    };
    let n = if let Some(h) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        u64::from_str_radix(h, 16).ok()?
    } else if digits.len() > 1 && digits.starts_with('0') {
        u64::from_str_radix(&digits[1..], 8).ok()?
    } else {
        digits.parse::<u64>().ok()?
    };
    let n = i64::try_from(n).ok()?;
    let n = if neg { -n } else { n };
    (-INT_MAX - 1..=INT_MAX).contains(&n).then_some(n)
}

fn size_or_percent(param: &str, v: &str) -> Result<SizeOrPercent, CmdlineError> {
    if let Some(p) = v.strip_suffix('%') {
        let p: u64 = p.parse().map_err(|_| CmdlineError::BadValue {
            param: param.to_string(),
            why: "not a percentage",
        })?;
        if p > 100 {
            return Err(CmdlineError::BadValue {
                param: param.to_string(),
                why: "percentage above 100",
            });
        }
        return Ok(SizeOrPercent::Percent(p));
    }
    memparse(v)
        .map(SizeOrPercent::Bytes)
        .ok_or(CmdlineError::BadValue {
            param: param.to_string(),
            why: "not a size (like 512M or 2G)",
        })
}

/// Split a command line into parameters, honouring double quotes as Linux's `next_arg` does.
fn split(cmdline: &str) -> impl Iterator<Item = String> + '_ {
    let mut chars = cmdline.chars().peekable();
    core::iter::from_fn(move || {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        chars.peek()?;
        let mut out = String::new();
        let mut quoted = false;
        while let Some(&c) = chars.peek() {
            if c == '"' {
                quoted = !quoted;
            } else if c.is_whitespace() && !quoted {
                break;
            } else {
                out.push(c);
            }
            chars.next();
        }
        Some(out)
    })
}

impl BootConfig {
    /// Parse a command line.
    pub fn parse(cmdline: &str) -> Result<Self, CmdlineError> {
        if cmdline.len() >= COMMAND_LINE_SIZE {
            return Err(CmdlineError::TooLong(cmdline.len()));
        }
        let mut c = BootConfig {
            cmdline: cmdline.trim().to_string(),
            numa_fake: 1,
            ..Default::default()
        };
        for param in split(cmdline) {
            let bad = |why| CmdlineError::BadValue {
                param: param.clone(),
                why,
            };
            let (key, val) = match param.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (param.as_str(), None),
            };
            let int = |v: Option<&str>| v.and_then(parse_int);
            match (key, val) {
                ("numa", Some(v)) => {
                    let n = v
                        .strip_prefix("fake=")
                        .ok_or_else(|| bad("only numa=fake=N is supported"))?;
                    let n: usize = n
                        .parse()
                        .map_err(|_| bad("numa=fake= needs a node count"))?;
                    if n == 0 || n > crate::mm::page::MAX_NUMNODES {
                        return Err(bad("node count must be 1..=64"));
                    }
                    c.numa_fake = n;
                }
                ("movablecore", Some(v)) => c.movablecore = Some(size_or_percent(&param, v)?),
                ("kernelcore", Some(v)) => c.kernelcore = Some(size_or_percent(&param, v)?),
                ("sysctl.vm.min_free_kbytes", v) => {
                    let f = int(v).ok_or_else(|| bad("not an int"))?;
                    if f < 0 {
                        return Err(bad("must be 0..=2147483647"));
                    }
                    c.wmark.min_free_kbytes = Some(f as u64);
                }
                ("sysctl.vm.watermark_scale_factor", v) => {
                    let f = int(v).ok_or_else(|| bad("not an int"))?;
                    if !(1..=3000).contains(&f) {
                        return Err(bad("must be 1..=3000"));
                    }
                    c.wmark.watermark_scale_factor = f as u64;
                }
                ("sysctl.vm.lowmem_reserve_ratio", Some(v)) => {
                    let mut r = [0u64; MAX_NR_ZONES];
                    let mut n = 0;
                    for (i, part) in v.split([',', ' ']).filter(|s| !s.is_empty()).enumerate() {
                        if i >= MAX_NR_ZONES {
                            return Err(bad("more ratios than zones"));
                        }
                        let v = parse_int(part).ok_or_else(|| bad("ratios must be ints"))?;
                        // lowmem_reserve_ratio_sysctl_handler: below 1 means disabled.
                        r[i] = v.max(0) as u64;
                        n = i + 1;
                    }
                    if n == 0 {
                        return Err(bad("no ratios"));
                    }
                    c.wmark.lowmem_reserve_ratio[..n].copy_from_slice(&r[..n]);
                }
                ("transparent_hugepage", Some(v)) => {
                    c.thp_enabled = Some(
                        crate::mm::huge_memory::ThpEnabled::parse(v)
                            .ok_or_else(|| bad("expected always, madvise or never"))?,
                    );
                }
                ("thp_anon", Some(v)) => {
                    let mut o = c
                        .thp_anon
                        .unwrap_or(crate::mm::huge_memory::AnonOrders::none());
                    o.apply_thp_anon(v).map_err(bad)?;
                    c.thp_anon = Some(o);
                }
                ("norandmaps", None) => c.norandmaps = true,
                ("slab_debug", None) => c.slab_debug = true,
                ("quiet", None) | ("loglevel", Some(_)) | ("console", Some(_)) => {}
                _ => return Err(CmdlineError::Unknown(param.clone())),
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_parameters() {
        let c = BootConfig::parse("numa=fake=4 movablecore=25% kernelcore=2G sysctl.vm.lowmem_reserve_ratio=\"128 128 16\" quiet").unwrap();
        assert_eq!(c.numa_fake, 4);
        assert_eq!(c.movablecore, Some(SizeOrPercent::Percent(25)));
        assert_eq!(c.kernelcore, Some(SizeOrPercent::Bytes(2 << 30)));
        assert_eq!(c.wmark.lowmem_reserve_ratio, [128, 128, 16, 0, 0]);
        assert_eq!(c.thp_enabled, None);
        let c = BootConfig::parse("transparent_hugepage=never").unwrap();
        assert_eq!(
            c.thp_enabled,
            Some(crate::mm::huge_memory::ThpEnabled::Never)
        );
        assert!(BootConfig::parse("transparent_hugepage=sometimes").is_err());
        assert!(BootConfig::parse("transparent_hugepage").is_err());
        use crate::mm::huge_memory::{AnonOrders, ThpPolicy};
        let c = BootConfig::parse("thp_anon=16K-64K:always;128K,512K:madvise;2M:never").unwrap();
        let o = c.thp_anon.unwrap();
        assert_eq!(o.policy(2), ThpPolicy::Always);
        assert_eq!(o.policy(4), ThpPolicy::Always);
        assert_eq!(o.policy(5), ThpPolicy::Madvise);
        assert_eq!(o.policy(6), ThpPolicy::Never);
        assert_eq!(o.policy(7), ThpPolicy::Madvise);
        assert_eq!(o.policy(9), ThpPolicy::Never);
        assert_eq!(AnonOrders::default().policy(9), ThpPolicy::Inherit);
        // A size not named is `never`, the PMD size too (Linux's transhuge.rst); two
        // `thp_anon=` add up.
        let o = BootConfig::parse("thp_anon=64K:always thp_anon=32K:madvise")
            .unwrap()
            .thp_anon
            .unwrap();
        assert_eq!(o.policy(4), ThpPolicy::Always);
        assert_eq!(o.policy(3), ThpPolicy::Madvise);
        assert_eq!(o.policy(9), ThpPolicy::Never);
        assert_eq!(o.policy(2), ThpPolicy::Never);
        assert_eq!(AnonOrders::default().policy(4), ThpPolicy::Never);
        for bad in [
            "thp_anon=64K",
            "thp_anon=64K:sometimes",
            "thp_anon=8K:always",
            "thp_anon=48K:always",
            "thp_anon=4M:always",
            "thp_anon=64K-16K:always",
            "thp_anon=",
        ] {
            assert!(BootConfig::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rejects_typos_and_bad_values() {
        assert_eq!(
            BootConfig::parse("movablecor=1G").unwrap_err(),
            CmdlineError::Unknown("movablecor=1G".into())
        );
        let e = BootConfig::parse("movablecore=lots").unwrap_err();
        assert!(e.to_string().contains("movablecore=lots"), "{e}");
        assert!(BootConfig::parse("numa=fake=0").is_err());
        assert!(BootConfig::parse("sysctl.vm.watermark_scale_factor=0").is_err());
        assert_eq!(memparse("64M"), Some(64 << 20));
        assert_eq!(memparse("0x1000"), Some(0x1000));
        assert_eq!(memparse("99999999999E"), None);
    }

    #[test]
    fn sysctl_values_are_bounded_as_linux_does() {
        let e = BootConfig::parse("sysctl.vm.min_free_kbytes=999999999999").unwrap_err();
        assert!(
            e.to_string()
                .contains("sysctl.vm.min_free_kbytes=999999999999"),
            "{e}"
        );
        assert!(BootConfig::parse("sysctl.vm.min_free_kbytes=-1").is_err());
        assert!(BootConfig::parse("sysctl.vm.min_free_kbytes=2147483648").is_err());
        let c = BootConfig::parse("sysctl.vm.min_free_kbytes=2147483647").unwrap();
        assert_eq!(c.wmark.min_free_kbytes, Some(2147483647));
        let c = BootConfig::parse("sysctl.vm.min_free_kbytes=0x400").unwrap();
        assert_eq!(c.wmark.min_free_kbytes, Some(1024));
        assert_eq!(
            BootConfig::parse("sysctl.vm.min_free_kbytes=010")
                .unwrap()
                .wmark
                .min_free_kbytes,
            Some(8),
            "octal, as proc_dointvec reads it"
        );
        assert!(BootConfig::parse("sysctl.vm.watermark_scale_factor=3001").is_err());
        let c = BootConfig::parse("sysctl.vm.lowmem_reserve_ratio=-5,0,7").unwrap();
        assert_eq!(c.wmark.lowmem_reserve_ratio, [0, 0, 7, 0, 0]);
        assert!(BootConfig::parse("sysctl.vm.lowmem_reserve_ratio=1,99999999999").is_err());
        let long = alloc::format!("quiet {}", "loglevel=7 ".repeat(200));
        assert_eq!(
            BootConfig::parse(&long).unwrap_err(),
            CmdlineError::TooLong(long.len())
        );
        assert!(BootConfig::parse(&"quiet ".repeat(300)).is_ok());
    }
}
