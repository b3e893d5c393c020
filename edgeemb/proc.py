"""Memory of a running process, from /proc/PID/status (Linux)."""

from __future__ import annotations


def memory_status(pid: int | str = "self") -> dict[str, int]:
    """The status fields given in kB (VmRSS, VmHWM, RssAnon, RssFile, ...), in bytes. VmHWM is the
    process's own peak RSS; getrusage's ru_maxrss is not, since Linux carries it over from the
    parent across fork and exec. Raises OSError once the process is gone."""
    with open(f"/proc/{pid}/status") as status:
        return {
            fields[0][:-1]: int(fields[1]) * 1024
            for fields in map(str.split, status)
            if len(fields) == 3 and fields[2] == "kB"
        }
