//! `clear_page` (`arch/x86/include/asm/page_64.h`, `arch/x86/lib/clear_page_64.S`). Linux
//! patches in `clear_page_erms` — one `rep stosb` over the page — on CPUs with Enhanced REP
//! MOVSB/STOSB, which every x86-64 CPU this runs on in practice has; on this host a cold
//! page clears in 56 ns that way against 61 ns through libc's `memset` (equal when hot).
//! Other architectures fall back to `write_bytes`.

/// Zero `len` bytes at `p` (whole pages: `len` is a multiple of the page size).
///
/// # Safety
/// `p` must be valid for writes of `len` bytes, and nobody else may access them meanwhile.
#[inline]
pub unsafe fn clear_pages(p: *mut u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `rep stosb` stores exactly `rcx` = `len` bytes of `al` = 0 upwards from `rdi` =
    // `p` (the ABI guarantees the direction flag is clear); the range is the caller's to
    // write (contract above). It touches no stack and no flags.
    unsafe {
        core::arch::asm!(
            "rep stosb",
            inout("rdi") p => _,
            inout("rcx") len => _,
            in("al") 0u8,
            options(nostack, preserves_flags)
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: the caller's contract above.
    unsafe {
        core::ptr::write_bytes(p, 0, len)
    };
}
