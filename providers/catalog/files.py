"""Files on disk: a path in, its identity (stat_identity) or its bytes, read safely (read_regular), out.

One definition for everything that follows a file on disk by polling (the policy reloader, the gateway's keys
file): which file it is (device and inode, so a rename-over or a re-pointed symlink counts), its size, and its
modification and change times in nanoseconds.

One reader for every file a policy names (.route files, example files, catalogs, test files): policy files are
read again on every reload, and `include "/dev/zero"` would read until memory runs out, while a FIFO would block
the compile (or the reload thread) until something writes to it. read_regular reads a regular file only, and no
more than a limit.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

#: The limit for files that may be big (example files, catalogs: LiteLLM's price file is 3 MB); a .route file has
#: its own, smaller one (engine/language/load.py, MAX_FILE_BYTES).
LARGE_FILE_BYTES = 64 << 20

StatIdentity = tuple[int, int, int, int, int]


def stat_identity(st: os.stat_result) -> StatIdentity:
    """(device, inode, size, mtime_ns, ctime_ns) of a stat result."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class FileTooLarge(OSError):
    """The file holds more than the limit read_regular was given."""


def read_regular(path: str | Path, limit: int) -> bytes:
    """The bytes of the regular file at `path`; raises FileNotFoundError, IsADirectoryError, OSError (EINVAL: not a
    regular file) or FileTooLarge (more than `limit` bytes, also when it grew while being read)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # opening a FIFO does not wait for a writer
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        if info.st_size > limit:
            raise FileTooLarge(errno.EFBIG, f"larger than {limit:,} bytes", str(path))
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise FileTooLarge(errno.EFBIG, f"larger than {limit:,} bytes", str(path))
    return b"".join(chunks)


def read_text(path: str | Path, limit: int, encoding: str = "utf-8") -> str:
    """read_regular's bytes decoded, with line ends translated as Python's text files do (CRLF and CR to LF);
    raises what read_regular raises, and UnicodeDecodeError."""
    text = read_regular(path, limit).decode(encoding)
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text
