//! Linux error numbers (`include/uapi/asm-generic/errno-base.h`) as a Rust error type.

/// An error number with Linux's meaning and value.
#[derive(Copy, Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[repr(i32)]
pub enum Errno {
    /// Operation not permitted.
    #[error("EPERM: operation not permitted")]
    EPERM = 1,
    /// Bad file descriptor.
    #[error("EBADF: bad file descriptor")]
    EBADF = 9,
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
    /// Invalid argument.
    #[error("EINVAL: invalid argument")]
    EINVAL = 22,
}

impl Errno {
    /// The positive error number.
    pub const fn code(self) -> i32 {
        self as i32
    }
}
