//! `#!` scripts (`fs/binfmt_script.c`'s `load_script`): the interpreter named on the first
//! line runs instead, with `argv` rewritten to `interpreter [optional-arg] script-path
//! original-args…`.
//!
//! The line is parsed from the first `BINPRM_BUF_SIZE` bytes as Linux does: the interpreter
//! path and at most one argument (everything after the first space or tab, trailing blanks
//! trimmed, truncated to the buffer); a line that fills the buffer without a newline must
//! at least have a terminator after the interpreter path, or the path might be cut and the
//! script is `ENOEXEC`; no interpreter name at all is `ENOEXEC`; an interpreter that cannot
//! be opened gives its `open_exec` error (`ENOENT`, `EACCES`, …). `exec_binprm` then starts
//! over with the interpreter, at most five times.

use crate::errno::Errno;
use crate::fs::exec::{Binprm, InterpOpener, BINPRM_BUF_SIZE};
use crate::Kernel;

fn spacetab(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

/// The first index in `buf[from..to]` that is not a space or tab.
fn next_non_spacetab(buf: &[u8], from: usize, to: usize) -> Option<usize> {
    (from..to).find(|&i| !spacetab(buf[i]))
}

/// The first index in `buf[from..to]` that is a space, tab or NUL.
fn next_terminator(buf: &[u8], from: usize, to: usize) -> Option<usize> {
    (from..to).find(|&i| spacetab(buf[i]) || buf[i] == 0)
}

/// A parsed `#!` line: the interpreter path and the optional argument.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ScriptLine<'a> {
    pub(crate) name: &'a [u8],
    pub(crate) arg: Option<&'a [u8]>,
}

/// `load_script`'s parsing of `bprm->buf`.
pub(crate) fn parse_script_line(buf: &[u8; BINPRM_BUF_SIZE]) -> Result<ScriptLine<'_>, Errno> {
    if buf[0] != b'#' || buf[1] != b'!' {
        return Err(Errno::ENOEXEC);
    }
    let buf_end = BINPRM_BUF_SIZE - 1;
    let mut i_end = match buf.iter().position(|&c| c == b'\n') {
        Some(nl) => nl,
        None => {
            // No newline: the buffer is all there is. Refuse a path that might be cut.
            let first = next_non_spacetab(buf, 2, buf_end).ok_or(Errno::ENOEXEC)?;
            next_terminator(buf, first, buf_end).ok_or(Errno::ENOEXEC)?;
            buf_end
        }
    };
    while i_end > 2 && spacetab(buf[i_end - 1]) {
        i_end -= 1;
    }
    let i_name = match next_non_spacetab(buf, 2, i_end) {
        Some(n) if n != i_end => n,
        _ => return Err(Errno::ENOEXEC),
    };
    let i_sep = next_terminator(buf, i_name, i_end);
    let (name_end, arg) = match i_sep {
        Some(sep) if buf[sep] != 0 => {
            let arg = next_non_spacetab(buf, sep, i_end).map(|a| &buf[a..i_end]);
            (sep, arg)
        }
        Some(sep) => (sep, None),
        None => (i_end, None),
    };
    // The strings end at the first NUL, as C strings do.
    let name = &buf[i_name..name_end];
    let name = &name[..name.iter().position(|&c| c == 0).unwrap_or(name.len())];
    let arg = arg.map(|a| &a[..a.iter().position(|&c| c == 0).unwrap_or(a.len())]);
    Ok(ScriptLine { name, arg })
}

impl Kernel {
    /// `load_script`: a `#!` line makes its interpreter the file to run; `argv[0]` is
    /// replaced by the interpreter's name, its optional argument, and the script's path
    /// (`bprm->interp`).
    pub(crate) fn load_script(
        &self,
        bprm: &mut Binprm<'_>,
        open_exec: &mut InterpOpener<'_>,
    ) -> Result<(), Errno> {
        let buf = bprm.buf;
        let line = parse_script_line(&buf)?;
        bprm.remove_arg_zero();
        let interp = core::mem::take(&mut bprm.interp);
        bprm.copy_string(&interp)?;
        bprm.argc += 1;
        if let Some(arg) = line.arg {
            bprm.copy_string(arg)?;
            bprm.argc += 1;
        }
        bprm.copy_string(line.name)?;
        bprm.argc += 1;
        bprm.interp = line.name.to_vec();
        bprm.interpreter = Some(open_exec(line.name)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf(s: &[u8]) -> [u8; BINPRM_BUF_SIZE] {
        let mut b = [0u8; BINPRM_BUF_SIZE];
        let n = s.len().min(BINPRM_BUF_SIZE);
        b[..n].copy_from_slice(&s[..n]);
        b
    }

    #[test]
    fn script_lines_parse_as_linux_does() {
        let p = |s: &[u8]| {
            let b = buf(s);
            parse_script_line(&b).map(|l| (l.name.to_vec(), l.arg.map(|a| a.to_vec())))
        };
        assert_eq!(p(b"#!/bin/sh\necho"), Ok((b"/bin/sh".to_vec(), None)));
        assert_eq!(
            p(b"#!  /usr/bin/env   python3 -u  \nx"),
            Ok((b"/usr/bin/env".to_vec(), Some(b"python3 -u".to_vec())))
        );
        assert_eq!(
            p(b"#!/bin/sh\t-e\n"),
            Ok((b"/bin/sh".to_vec(), Some(b"-e".to_vec())))
        );
        // No interpreter; only blanks; not a script at all.
        assert_eq!(p(b"#!\n"), Err(Errno::ENOEXEC));
        assert_eq!(p(b"#!   \t \n"), Err(Errno::ENOEXEC));
        // "#!" and nothing else: the NUL padding is a name, an empty one (Linux then opens
        // "", which is the current directory: EACCES).
        assert_eq!(p(b"#!"), Ok((alloc::vec::Vec::new(), None)));
        assert_eq!(p(b"#! /bin/sh\0 -x\n"), Ok((b"/bin/sh".to_vec(), None)));
        assert_eq!(p(b"\x7fELF"), Err(Errno::ENOEXEC));
        // A short file ends in NULs: the NUL terminates the name.
        assert_eq!(p(b"#!/bin/true"), Ok((b"/bin/true".to_vec(), None)));
        // A line longer than the buffer: fine when the path is terminated inside it (the
        // argument is cut), ENOEXEC when the path itself may be cut.
        let mut long = b"#!/bin/sh ".to_vec();
        long.extend(core::iter::repeat_n(b'a', 400));
        let got = p(&long).unwrap();
        assert_eq!(got.0, b"/bin/sh".to_vec());
        assert_eq!(got.1.unwrap().len(), BINPRM_BUF_SIZE - 1 - 10);
        let mut cut = b"#!/".to_vec();
        cut.extend(core::iter::repeat_n(b'p', 400));
        assert_eq!(p(&cut), Err(Errno::ENOEXEC));
    }
}
