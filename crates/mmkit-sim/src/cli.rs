//! Checks the `mmkit` command line makes before it does any work, so a mistake is an error
//! naming the problem up front rather than after a long run: output folders that are `/proc`
//! or `/sys` (procfs/sysfs), chart paths that cannot be written, and reading an `--e820`
//! file without letting its size (or a FIFO that never ends) decide what is allocated.

use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The most an `--e820` file may hold: 64 MiB is about a million `BIOS-e820:` lines, far more
/// than any firmware table (Linux's holds `E820_MAX_ENTRIES`, a few thousand).
pub const MAX_E820_FILE: u64 = 64 << 20;

/// `PROC_SUPER_MAGIC`, `SYSFS_MAGIC`.
const PSEUDO_FS: [(i64, &str); 2] = [(0x9fa0, "procfs"), (0x6265_6572, "sysfs")];

/// The file system type of the nearest existing ancestor of `p` (`statfs.f_type`).
fn fs_type(p: &Path) -> Option<i64> {
    let mut cur = Some(p);
    while let Some(c) = cur {
        if let Ok(cs) = std::ffi::CString::new(c.as_os_str().as_encoded_bytes()) {
            // SAFETY: `cs` is NUL-terminated and `sf` a plain struct statfs fills in.
            unsafe {
                let mut sf: libc::statfs = std::mem::zeroed();
                if libc::statfs(cs.as_ptr(), &mut sf) == 0 {
                    return Some(sf.f_type as i64);
                }
            }
        }
        cur = c.parent().filter(|x| !x.as_os_str().is_empty());
    }
    None
}

/// `--proc-dir DIR`: refuse a folder on procfs or sysfs (`/proc` itself, `/proc/self`, …):
/// writing our views there would try to overwrite the host kernel's files.
pub fn check_proc_dir(dir: &Path) -> Result<()> {
    let abs = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir()?.join(dir)
    };
    if let Some(t) = fs_type(&abs) {
        if let Some((_, name)) = PSEUDO_FS.iter().find(|(m, _)| *m == t) {
            bail!(
                "--proc-dir {}: that is on the host's {name}; give a folder of your own (bind-mount its files over /proc to let procps read them)",
                dir.display()
            );
        }
    }
    if abs.exists() && !abs.is_dir() {
        bail!("--proc-dir {}: exists and is not a folder", dir.display());
    }
    Ok(())
}

/// `--svg PATH`: create the file now (so a bad path fails before the run, naming it), and
/// return it for the chart to be written into at the end.
pub fn create_svg(path: &Path) -> Result<PathBuf> {
    create_chart("--svg", path)
}

/// [`create_svg`] for the option `opt` (`--svg`, `--chart`), named in its errors.
pub fn create_chart(opt: &str, path: &Path) -> Result<PathBuf> {
    if path.is_dir() {
        bail!("{opt} {}: is a folder; give a file name", path.display());
    }
    std::fs::File::create(path)
        .with_context(|| format!("{opt} {}: cannot create the chart file", path.display()))?;
    Ok(path.to_path_buf())
}

/// The smallest swap file `mkswap` makes: 40 KiB (ten pages).
pub const MIN_SWAP: u64 = 40 << 10;
/// The largest: the header's `last_page` is 32 bits.
pub const MAX_SWAP: u64 = (u32::MAX as u64) << 12;

/// `--swap SIZE`: a size like `512M`, from [`MIN_SWAP`] to [`MAX_SWAP`], rounded down to
/// whole pages; the error names the problem.
pub fn parse_swap(s: &str) -> Result<u64> {
    let bytes = mmkit::cmdline::memparse(s)
        .with_context(|| format!("--swap {s}: not a size like 512M or 1G"))?;
    if bytes < MIN_SWAP {
        bail!("--swap {s}: too small; mkswap needs at least 40K (ten pages)");
    }
    if bytes > MAX_SWAP {
        bail!("--swap {s}: too large; a swap header counts at most 2^32 pages (16T)");
    }
    Ok(bytes & !4095)
}

/// Read an `--e820` file (or FIFO, as `<(dmesg)` gives) of at most [`MAX_E820_FILE`] bytes.
pub fn read_e820_file(path: &Path) -> Result<String> {
    let f = std::fs::File::open(path)
        .with_context(|| format!("--e820 {}: cannot open", path.display()))?;
    let mut buf = Vec::new();
    f.take(MAX_E820_FILE + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("--e820 {}: cannot read", path.display()))?;
    if buf.len() as u64 > MAX_E820_FILE {
        bail!(
            "--e820 {}: more than {} MiB; a firmware memory map is a few hundred lines",
            path.display(),
            MAX_E820_FILE >> 20
        );
    }
    String::from_utf8(buf).with_context(|| format!("--e820 {}: not UTF-8 text", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_and_sys_are_refused() {
        for d in [
            "/proc",
            "/proc/self",
            "/proc/nonexistent/sub",
            "/sys/kernel",
        ] {
            let e = check_proc_dir(Path::new(d)).unwrap_err().to_string();
            assert!(e.contains(d), "{e}");
        }
        let t = tempfile::tempdir().unwrap();
        check_proc_dir(t.path()).unwrap();
        check_proc_dir(&t.path().join("new")).unwrap();
    }
}
