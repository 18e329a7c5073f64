//! Temporary files the simulator makes on the host (swap images, benchmark files): only in a
//! private directory that `tempfile` creates (a fresh random name, mode 0700, so nobody else
//! can plant a symlink or a file in it, and two runs never share one), removed when its
//! owner drops it — and when the process gets `SIGINT`, `SIGTERM` or `SIGHUP`, by
//! [`install_signal_cleanup`]'s thread, which then ends the process with that signal's
//! default action.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The private directories alive now, for the signal handler.
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// A private temporary directory under `$TMPDIR` (or a given parent), removed with
/// everything in it when dropped or when the process is interrupted.
pub struct PrivateDir {
    dir: Option<tempfile::TempDir>,
}

impl PrivateDir {
    /// A new private directory under the system's temporary directory (`$TMPDIR`).
    pub fn new(prefix: &str) -> Result<Self> {
        Self::new_in(&std::env::temp_dir(), prefix)
    }

    /// A new private directory under `parent`.
    pub fn new_in(parent: &Path, prefix: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(parent)
            .with_context(|| {
                format!(
                    "cannot create a private temporary directory in {}",
                    parent.display()
                )
            })?;
        LIVE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(dir.path().to_path_buf());
        Ok(Self { dir: Some(dir) })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new(""), |d| d.path())
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        if let Some(d) = self.dir.take() {
            LIVE.lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|p| p != d.path());
            // TempDir's own drop removes the tree (ignoring errors, as a destructor must).
            drop(d);
        }
    }
}

/// Set once a signal began the cleanup: the process ends by that signal, not by whatever
/// the main thread meets once its files are gone.
static DYING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Wait here for ever if a signal is ending the process: a run whose files the signal
/// thread just removed may fail or finish meanwhile, and its exit must not replace the
/// signal's (a status of 1 where the caller waits for death by `SIGINT`). Call before
/// leaving `main`.
pub fn yield_to_a_dying_signal() {
    while DYING.load(std::sync::atomic::Ordering::Acquire) {
        std::thread::park();
    }
}

/// Remove every live private directory (best effort).
fn remove_all() {
    let dirs = std::mem::take(&mut *LIVE.lock().unwrap_or_else(|e| e.into_inner()));
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// Start the thread that, on `SIGINT`, `SIGTERM` or `SIGHUP`, removes every live private
/// directory and then ends the process as that signal would have. Call once, early.
pub fn install_signal_cleanup() -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .context("installing the signal handlers that remove temporary files")?;
    std::thread::Builder::new()
        .name("tempfile-cleanup".into())
        .spawn(move || {
            // SIGINT while `mmkit exec` runs a program is the program's (its foreground
            // process group's), not ours.
            let mut ours = signals
                .forever()
                .filter(|&s| !(s == SIGINT && crate::kvm::tty::forward_sigint()));
            if let Some(sig) = ours.next() {
                DYING.store(true, std::sync::atomic::Ordering::Release);
                remove_all();
                // The default action of the signal: the exit status says what killed us.
                let _ = signal_hook::low_level::emulate_default_handler(sig);
                std::process::exit(128 + sig);
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}
