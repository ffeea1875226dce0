"""File identity for followed files: an `os.stat_result` in, the tuple that changes whenever the file may have.

One definition for everything that follows a file on disk by polling (the policy reloader, the gateway's keys
file): which file it is (device and inode, so a rename-over or a re-pointed symlink counts), its size, and its
modification and change times in nanoseconds.
"""

from __future__ import annotations

import os

StatIdentity = tuple[int, int, int, int, int]


def stat_identity(st: os.stat_result) -> StatIdentity:
    """(device, inode, size, mtime_ns, ctime_ns) of a stat result."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
