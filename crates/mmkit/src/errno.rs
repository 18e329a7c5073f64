//! Linux error numbers (`include/uapi/asm-generic/errno-base.h`) as a Rust error type.

/// An error number with Linux's meaning and value.
#[derive(Copy, Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[repr(i32)]
pub enum Errno {
    /// Operation not permitted.
    #[error("EPERM: operation not permitted")]
    EPERM = 1,
    /// No such file or directory.
    #[error("ENOENT: no such file or directory")]
    ENOENT = 2,
    /// No such process.
    #[error("ESRCH: no such process")]
    ESRCH = 3,
    /// Interrupted system call.
    #[error("EINTR: interrupted system call")]
    EINTR = 4,
    /// Input/output error.
    #[error("EIO: input/output error")]
    EIO = 5,
    /// No such device or address.
    #[error("ENXIO: no such device or address")]
    ENXIO = 6,
    /// Argument list too long.
    #[error("E2BIG: argument list too long")]
    E2BIG = 7,
    /// Exec format error.
    #[error("ENOEXEC: exec format error")]
    ENOEXEC = 8,
    /// Bad file descriptor.
    #[error("EBADF: bad file descriptor")]
    EBADF = 9,
    /// No child processes.
    #[error("ECHILD: no child processes")]
    ECHILD = 10,
    /// Resource temporarily unavailable.
    #[error("EAGAIN: resource temporarily unavailable")]
    EAGAIN = 11,
    /// Out of memory.
    #[error("ENOMEM: out of memory")]
    ENOMEM = 12,
    /// Permission denied.
    #[error("EACCES: permission denied")]
    EACCES = 13,
    /// Bad address.
    #[error("EFAULT: bad address")]
    EFAULT = 14,
    /// Device or resource busy.
    #[error("EBUSY: device or resource busy")]
    EBUSY = 16,
    /// File exists.
    #[error("EEXIST: file exists")]
    EEXIST = 17,
    /// No such device.
    #[error("ENODEV: no such device")]
    ENODEV = 19,
    /// Not a directory.
    #[error("ENOTDIR: not a directory")]
    ENOTDIR = 20,
    /// Is a directory.
    #[error("EISDIR: is a directory")]
    EISDIR = 21,
    /// Invalid argument.
    #[error("EINVAL: invalid argument")]
    EINVAL = 22,
    /// Too many open files in system.
    #[error("ENFILE: too many open files in system")]
    ENFILE = 23,
    /// Too many open files.
    #[error("EMFILE: too many open files")]
    EMFILE = 24,
    /// Inappropriate ioctl for device.
    #[error("ENOTTY: inappropriate ioctl for device")]
    ENOTTY = 25,
    /// Text file busy.
    #[error("ETXTBSY: text file busy")]
    ETXTBSY = 26,
    /// File too large.
    #[error("EFBIG: file too large")]
    EFBIG = 27,
    /// No space left on device.
    #[error("ENOSPC: no space left on device")]
    ENOSPC = 28,
    /// Illegal seek.
    #[error("ESPIPE: illegal seek")]
    ESPIPE = 29,
    /// Read-only file system.
    #[error("EROFS: read-only file system")]
    EROFS = 30,
    /// Broken pipe.
    #[error("EPIPE: broken pipe")]
    EPIPE = 32,
    /// Numerical result out of range.
    #[error("ERANGE: numerical result out of range")]
    ERANGE = 34,
    /// File name too long.
    #[error("ENAMETOOLONG: file name too long")]
    ENAMETOOLONG = 36,
    /// Function not implemented.
    #[error("ENOSYS: function not implemented")]
    ENOSYS = 38,
    /// Too many levels of symbolic links (or of binary format rewrites in exec).
    #[error("ELOOP: too many levels of symbolic links")]
    ELOOP = 40,
    /// Value too large for defined data type.
    #[error("EOVERFLOW: value too large for defined data type")]
    EOVERFLOW = 75,
    /// Accessing a corrupted shared library (a bad ELF interpreter).
    #[error("ELIBBAD: accessing a corrupted shared library")]
    ELIBBAD = 80,
    /// Operation not supported.
    #[error("EOPNOTSUPP: operation not supported")]
    EOPNOTSUPP = 95,
}

/// Every error number this type names, for [`Errno::from_code`].
const ALL: [Errno; 29] = [
    Errno::EPERM,
    Errno::ENOENT,
    Errno::ESRCH,
    Errno::EIO,
    Errno::E2BIG,
    Errno::ENOEXEC,
    Errno::EBADF,
    Errno::ECHILD,
    Errno::EAGAIN,
    Errno::ENOMEM,
    Errno::EACCES,
    Errno::EFAULT,
    Errno::EBUSY,
    Errno::EEXIST,
    Errno::ENODEV,
    Errno::ENOTDIR,
    Errno::EISDIR,
    Errno::EINVAL,
    Errno::ETXTBSY,
    Errno::EFBIG,
    Errno::EROFS,
    Errno::ENAMETOOLONG,
    Errno::ELOOP,
    Errno::EOVERFLOW,
    Errno::ELIBBAD,
    Errno::EOPNOTSUPP,
    Errno::ENXIO,
    Errno::ENFILE,
    Errno::EMFILE,
];

impl Errno {
    /// The positive error number.
    pub const fn code(self) -> i32 {
        self as i32
    }

    /// The `Errno` with Linux's number `code`, if this type names it.
    pub fn from_code(code: i32) -> Option<Self> {
        ALL.iter().copied().find(|e| e.code() == code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for e in ALL {
            assert_eq!(Errno::from_code(e.code()), Some(e));
        }
        assert_eq!(Errno::from_code(40), Some(Errno::ELOOP));
        assert_eq!(Errno::from_code(9999), None);
    }
}
