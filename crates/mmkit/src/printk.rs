//! The kernel log (`kernel/printk/printk.c`): `printk` appends a timestamped line to a ring
//! of [`LOG_LINES`] lines (Linux's `log_buf`), `dmesg` reads it. A base facility: every layer
//! logs, and nothing here depends on any of them.

use crate::Kernel;
use alloc::string::String;
use alloc::vec::Vec;

/// Lines the kernel log ring keeps.
pub const LOG_LINES: usize = 16384;

/// The kernel log ring.
#[derive(Default)]
pub(crate) struct LogBuf {
    lines: alloc::collections::VecDeque<String>,
    /// Lines ever logged.
    seq: u64,
}

impl Kernel {
    /// `printk`: append a line to the kernel log with a `[    s.micros]` timestamp. The log
    /// is a ring of `LOG_LINES` lines, like Linux's `log_buf`: the oldest lines go first.
    pub fn printk(&self, line: &str) {
        let ns = self.platform.now_ns();
        let s = alloc::format!(
            "[{:5}.{:06}] {}",
            ns / 1_000_000_000,
            (ns / 1000) % 1_000_000,
            line
        );
        let mut log = self.log.lock();
        if log.lines.len() == LOG_LINES {
            log.lines.pop_front();
        }
        log.lines.push_back(s);
        log.seq += 1;
    }

    /// The kernel log still in the ring (`dmesg`). When older lines were pushed out, the
    /// first line says how many, as Linux's console does (`** N printk messages dropped **`,
    /// with the timestamp of the oldest line kept).
    pub fn dmesg(&self) -> Vec<String> {
        let log = self.log.lock();
        let dropped = log.seq - log.lines.len() as u64;
        let mut out = Vec::with_capacity(log.lines.len() + 1);
        if dropped > 0 {
            let stamp = log
                .lines
                .front()
                .and_then(|l| l.split_once("] "))
                .map_or("", |(t, _)| t);
            out.push(alloc::format!(
                "{stamp}] ** {dropped} printk messages dropped **"
            ));
        }
        out.extend(log.lines.iter().cloned());
        out
    }

    /// Lines with sequence number `from` and later that are still in the ring, and the next
    /// sequence number (for following the log: pass it back as `from`).
    pub fn dmesg_since(&self, from: u64) -> (Vec<String>, u64) {
        let log = self.log.lock();
        let first = log.seq - log.lines.len() as u64;
        let skip = from.saturating_sub(first) as usize;
        (log.lines.iter().skip(skip).cloned().collect(), log.seq)
    }
}
