"""The TCP sockets a process tree listens on, read from Linux's /proc (no psutil needed)."""

from __future__ import annotations

import os
from pathlib import Path


def _listening_inodes() -> dict[str, tuple[str, int]]:
    """inode -> (address, port) of every listening TCP socket of the machine."""
    out = {}
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            hexaddr, hexport = fields[1].split(":")
            assert len(hexaddr) == width
            # /proc prints each 32-bit word of the address in host (little-endian) order
            raw = b"".join(bytes.fromhex(hexaddr[i:i + 8])[::-1] for i in range(0, width, 8))
            if width == 8:
                addr = ".".join(str(b) for b in raw)
            elif raw[:12] == b"\0" * 10 + b"\xff\xff":  # an IPv4-mapped address
                addr = ".".join(str(b) for b in raw[12:])
            else:
                addr = ":".join(raw[i:i + 2].hex() for i in range(0, 16, 2))
            out[fields[9]] = (addr, int(hexport, 16))
    return out


def descendants(pid: int) -> set[int]:
    """``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        ppid = int(text.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        if p not in out:
            out.add(p)
            todo.extend(children.get(p, []))
    return out


def listening(pids: set[int]) -> list[tuple[str, int, int, str]]:
    """``(address, port, pid, command)`` of each TCP socket one of ``pids`` listens on."""
    inodes = _listening_inodes()
    found = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                addr, port = inodes[target[8:-1]]
                found.append((addr, port, pid, cmd))
    return found
