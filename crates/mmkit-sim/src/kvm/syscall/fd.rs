//! The process's file descriptor table (`struct files_struct`): each descriptor is a host
//! file descriptor the VMM owns (a `dup` of its own standard streams for 0, 1 and 2), or a
//! file whose contents mmkit generated (a `/proc` view), read from memory. Guest descriptor
//! numbers are the guest's own: the VMM's descriptors (`/dev/kvm`, the VM, the RAM memfd)
//! are out of its reach.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// `RLIMIT_NOFILE` soft limit (Linux's default).
pub const NR_OPEN_DEFAULT: usize = 1024;

/// What a descriptor refers to.
pub enum FdKind {
    /// A host file descriptor (file, directory, pipe, terminal).
    Host(OwnedFd),
    /// One end of a pipe between the machine's processes (pages from mmkit).
    Pipe(std::sync::Arc<crate::kvm::pipe::PipeEnd>),
    /// Generated contents (a `/proc` file), with the read position.
    Mem {
        /// The bytes.
        data: Vec<u8>,
        /// The file position.
        pos: usize,
    },
    /// A generated directory (`/proc`, `/proc/PID`, `/proc/PID/task`): its entries as
    /// `getdents64` returns them, and how many were returned.
    Dir {
        /// The entries.
        ents: Vec<DirEnt>,
        /// The next entry `getdents64` returns (the directory's `f_pos`).
        pos: usize,
    },
}

/// One entry of a generated directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEnt {
    /// `d_ino`.
    pub ino: u64,
    /// `d_type` (`DT_DIR`, `DT_REG`, `DT_LNK`).
    pub kind: u8,
    /// `d_name`.
    pub name: String,
}

/// One descriptor.
pub struct Fd {
    /// What it refers to.
    pub kind: FdKind,
    /// `FD_CLOEXEC`.
    pub cloexec: bool,
    /// The path it was opened by (for `/proc/self/fd` and mmap's file identity).
    pub path: Option<String>,
    /// For a regular file: its inode in mmkit (reads go through its page cache).
    pub cache: Option<crate::hostfs::HostEntry>,
}

impl Fd {
    /// The host descriptor, if it is one.
    pub fn host(&self) -> Option<RawFd> {
        match &self.kind {
            FdKind::Host(f) => Some(f.as_raw_fd()),
            FdKind::Mem { .. } | FdKind::Dir { .. } | FdKind::Pipe(_) => None,
        }
    }
}

/// The table.
#[derive(Default)]
pub struct FdTable {
    fds: Vec<Option<Fd>>,
}

impl FdTable {
    /// A table with the VMM's standard input, output and error (duplicated) as 0, 1 and 2
    /// (`stdout` in place of its standard output when given).
    pub fn with_stdio(stdout: Option<&OwnedFd>) -> Self {
        let mut t = Self::default();
        for fd in 0..3 {
            let fd = match (fd, stdout) {
                (1, Some(o)) => o.as_raw_fd(),
                _ => fd,
            };
            // SAFETY: dup of one of our standard descriptors; the result is owned below.
            let d = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
            let slot = (d >= 0).then(|| Fd {
                // SAFETY: `d` is a fresh descriptor nobody else owns.
                kind: FdKind::Host(unsafe { OwnedFd::from_raw_fd(d) }),
                cloexec: false,
                path: None,
                cache: None,
            });
            t.fds.push(slot);
        }
        t
    }

    /// The descriptor `fd`.
    pub fn get(&self, fd: i64) -> Option<&Fd> {
        usize::try_from(fd)
            .ok()
            .and_then(|i| self.fds.get(i)?.as_ref())
    }

    /// The descriptor `fd`, to change.
    pub fn get_mut(&mut self, fd: i64) -> Option<&mut Fd> {
        usize::try_from(fd)
            .ok()
            .and_then(|i| self.fds.get_mut(i)?.as_mut())
    }

    /// Install `f` at the lowest free number at or above `min` (`EMFILE` past the limit).
    pub fn install(&mut self, f: Fd, min: usize) -> Result<i64, i64> {
        let free = (min..NR_OPEN_DEFAULT).find(|&i| self.fds.get(i).is_none_or(|s| s.is_none()));
        let Some(i) = free else {
            return Err(-(libc::EMFILE as i64));
        };
        if self.fds.len() <= i {
            self.fds.resize_with(i + 1, || None);
        }
        self.fds[i] = Some(f);
        Ok(i as i64)
    }

    /// Put `f` at number `fd`, closing what was there (`dup2`).
    pub fn install_at(&mut self, fd: usize, f: Fd) -> Result<(), i64> {
        if fd >= NR_OPEN_DEFAULT {
            return Err(-(libc::EBADF as i64));
        }
        if self.fds.len() <= fd {
            self.fds.resize_with(fd + 1, || None);
        }
        self.fds[fd] = Some(f);
        Ok(())
    }

    /// `close`.
    pub fn close(&mut self, fd: i64) -> Result<(), i64> {
        let slot = usize::try_from(fd)
            .ok()
            .and_then(|i| self.fds.get_mut(i))
            .filter(|s| s.is_some())
            .ok_or(-(libc::EBADF as i64))?;
        *slot = None;
        Ok(())
    }

    /// A new descriptor for the same open file (`dup`: the host's own `dup`, sharing the
    /// offset; a generated file gets a copy).
    pub fn dup_of(&self, fd: i64) -> Result<Fd, i64> {
        let f = self.get(fd).ok_or(-(libc::EBADF as i64))?;
        let kind = match &f.kind {
            FdKind::Host(h) => FdKind::Host(
                h.try_clone()
                    .map_err(|e| -(e.raw_os_error().unwrap_or(libc::EMFILE) as i64))?,
            ),
            FdKind::Mem { data, pos } => FdKind::Mem {
                data: data.clone(),
                pos: *pos,
            },
            FdKind::Dir { ents, pos } => FdKind::Dir {
                ents: ents.clone(),
                pos: *pos,
            },
            FdKind::Pipe(end) => FdKind::Pipe(end.clone()),
        };
        Ok(Fd {
            kind,
            cloexec: false,
            path: f.path.clone(),
            cache: f.cache.clone(),
        })
    }

    /// `dup_fd`: the child's table at `fork`, every descriptor referring to the same open
    /// file as the parent's (close-on-exec flags copied).
    pub fn fork_copy(&self) -> Result<FdTable, i64> {
        let mut t = FdTable::default();
        for i in self.open_fds().collect::<Vec<_>>() {
            let mut f = self.dup_of(i as i64)?;
            f.cloexec = self.fds[i].as_ref().is_some_and(|f| f.cloexec);
            t.install_at(i, f)?;
        }
        Ok(t)
    }

    /// `do_close_on_exec`.
    pub fn close_on_exec(&mut self) {
        for slot in &mut self.fds {
            if slot.as_ref().is_some_and(|f| f.cloexec) {
                *slot = None;
            }
        }
    }

    /// Close everything (the process exits).
    pub fn close_all(&mut self) {
        self.fds.clear();
    }

    /// Open descriptor numbers.
    pub fn open_fds(&self) -> impl Iterator<Item = usize> + '_ {
        self.fds
            .iter()
            .enumerate()
            .filter(|(_, f)| f.is_some())
            .map(|(i, _)| i)
    }
}
