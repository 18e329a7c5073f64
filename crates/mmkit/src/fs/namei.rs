//! The permission side of opening a file for exec (`fs/namei.c`'s `may_open` with
//! `MAY_EXEC`, `generic_permission`/`acl_permission_check`, `fs/exec.c`'s `do_open_execat`):
//! which errno an `execve` of a file, or of its interpreter, gets before a byte of it is read.
//!
//! The path walk itself (`ENOENT`, `ENOTDIR`, `ELOOP`, search permission on directories)
//! belongs to whoever owns the file system — the simulator's host files — and happens first;
//! this decides on the inode the walk found. POSIX ACLs and LSMs are not modelled.

use crate::errno::Errno;
use crate::fs::inode::{mode::*, FileAttr};
use alloc::vec::Vec;

/// The credentials a permission check uses (`struct cred`: fsuid, fsgid, supplementary
/// groups, and whether `CAP_DAC_OVERRIDE` is in the effective set).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cred {
    /// `fsuid` (the effective uid unless changed).
    pub fsuid: u32,
    /// `fsgid`.
    pub fsgid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// `CAP_DAC_OVERRIDE` (root has it).
    pub cap_dac_override: bool,
}

impl Cred {
    /// Root: uid and gid 0 with every capability.
    pub fn root() -> Self {
        Self {
            fsuid: 0,
            fsgid: 0,
            groups: Vec::new(),
            cap_dac_override: true,
        }
    }

    /// `in_group_p`.
    fn in_group(&self, gid: u32) -> bool {
        self.fsgid == gid || self.groups.contains(&gid)
    }
}

/// `acl_permission_check` + `generic_permission` for `MAY_EXEC` on a non-directory: the
/// owner's bits if the caller owns the file, else the group's if it is in the group, else
/// the others'; failing that `CAP_DAC_OVERRIDE` lets exec through only when at least one
/// execute bit is set.
pub fn generic_permission_exec(attr: &FileAttr, cred: &Cred) -> Result<(), Errno> {
    let m = attr.mode;
    let bits = if cred.fsuid == attr.uid {
        m >> 6
    } else if cred.in_group(attr.gid) {
        m >> 3
    } else {
        m
    };
    if bits & 1 != 0 {
        return Ok(());
    }
    if cred.cap_dac_override && m & S_IXUGO != 0 {
        return Ok(());
    }
    Err(Errno::EACCES)
}

/// `may_open(…, MAY_EXEC | MAY_OPEN, …)` + the `path_noexec` check of `do_open_execat`:
/// directories, FIFOs, sockets and devices are `EACCES`; a regular file on a `noexec` mount
/// is `EACCES`; then the execute permission.
pub fn may_open_exec(attr: &FileAttr, cred: &Cred) -> Result<(), Errno> {
    match attr.mode & S_IFMT {
        S_IFREG => {
            if attr.noexec {
                return Err(Errno::EACCES);
            }
        }
        S_IFLNK => return Err(Errno::ELOOP),
        // S_IFDIR, S_IFBLK, S_IFCHR, S_IFIFO, S_IFSOCK, and anything unknown.
        _ => return Err(Errno::EACCES),
    }
    generic_permission_exec(attr, cred)
}

/// `bprm_fill_uid`'s decision: does exec'ing this file change credentials (set-user-ID, or
/// set-group-ID with group execute), so that `PER_CLEAR_ON_SETID` is applied to the
/// personality? Not on a `nosuid` mount.
pub fn exec_changes_ids(attr: &FileAttr) -> bool {
    if attr.nosuid {
        return false;
    }
    attr.mode & S_ISUID != 0 || attr.mode & (S_ISGID | S_IXGRP) == (S_ISGID | S_IXGRP)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(mode: u32, uid: u32, gid: u32) -> FileAttr {
        FileAttr {
            mode,
            uid,
            gid,
            ..FileAttr::default()
        }
    }

    #[test]
    fn exec_permission_as_linux_decides_it() {
        let user = Cred {
            fsuid: 1000,
            fsgid: 1000,
            groups: alloc::vec![27],
            cap_dac_override: false,
        };
        let root = Cred::root();
        // Owner bits only for the owner, even when others may.
        assert_eq!(
            may_open_exec(&f(S_IFREG | 0o017, 1000, 5), &user),
            Err(Errno::EACCES)
        );
        assert_eq!(may_open_exec(&f(S_IFREG | 0o100, 1000, 5), &user), Ok(()));
        // Group bits through a supplementary group.
        assert_eq!(may_open_exec(&f(S_IFREG | 0o010, 0, 27), &user), Ok(()));
        assert_eq!(
            may_open_exec(&f(S_IFREG | 0o001, 0, 27), &user),
            Err(Errno::EACCES)
        );
        assert_eq!(may_open_exec(&f(S_IFREG | 0o001, 0, 0), &user), Ok(()));
        // Root: any execute bit will do, none is EACCES; exec-only files are fine.
        assert_eq!(may_open_exec(&f(S_IFREG | 0o001, 5, 5), &root), Ok(()));
        assert_eq!(
            may_open_exec(&f(S_IFREG | 0o644, 0, 0), &root),
            Err(Errno::EACCES)
        );
        assert_eq!(may_open_exec(&f(S_IFREG | 0o111, 0, 0), &root), Ok(()));
        // Not regular files, and noexec mounts.
        for t in [S_IFDIR, S_IFIFO, S_IFCHR, S_IFBLK, S_IFSOCK] {
            assert_eq!(
                may_open_exec(&f(t | 0o777, 0, 0), &root),
                Err(Errno::EACCES)
            );
        }
        let mut a = f(S_IFREG | 0o755, 0, 0);
        a.noexec = true;
        assert_eq!(may_open_exec(&a, &root), Err(Errno::EACCES));
    }

    #[test]
    fn setid_detection() {
        assert!(exec_changes_ids(&f(S_IFREG | S_ISUID | 0o755, 0, 0)));
        assert!(exec_changes_ids(&f(S_IFREG | S_ISGID | 0o755, 0, 0)));
        // Set-group-ID without group execute is mandatory locking, not setgid.
        assert!(!exec_changes_ids(&f(S_IFREG | S_ISGID | 0o745, 0, 0)));
        let mut a = f(S_IFREG | S_ISUID | 0o755, 0, 0);
        a.nosuid = true;
        assert!(!exec_changes_ids(&a));
    }
}
