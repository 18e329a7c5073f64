//! Writing the kernel's `/proc` views to a folder (`--proc-dir`).

use anyhow::{Context, Result};
use mmkit::Kernel;
use std::path::Path;

/// Write every memory `/proc` file of `k` into `dir` (created if missing).
pub fn write_proc_dir(k: &Kernel, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, text) in mmkit::fs::proc::proc_files(k) {
        let p = dir.join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}
