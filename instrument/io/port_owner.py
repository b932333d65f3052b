"""Who holds a local UDP or TCP port: for the message when sdga cannot listen on a port ("address in use").

Linux only, read from ``/proc``: the sockets bound to the port in ``/proc/net/{udp,udp6}`` (TCP: the listening
ones in ``/proc/net/{tcp,tcp6}``) give socket inodes; the process holding one has a ``/proc/<pid>/fd`` link to
``socket:[inode]``. A process of another user is not readable without privilege: then it is "another process
(not visible to this user)". Elsewhere (no ``/proc``) the same sentence, never an exception.
"""
from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

__all__ = ["PortHolder", "port_holders", "describe_holders", "free_port_near", "port_in_use_message"]

NOT_VISIBLE = "another process (not visible to this user)"
_TCP_LISTEN = "0A"


class PortHolder(tuple):
    """(pid, command); pid is None when the socket was found but not its process."""

    __slots__ = ()

    def __new__(cls, pid: int | None, command: str):
        return super().__new__(cls, (pid, command))

    @property
    def pid(self) -> int | None:
        return self[0]

    @property
    def command(self) -> str:
        return self[1]


def _socket_inodes(port: int, proto: str, proc: Path) -> set[str]:
    """Inodes of the sockets bound to ``port`` (any local address) in /proc/net/<proto>{,6}."""
    inodes: set[str] = set()
    for table in (proc / "net" / proto, proc / "net" / f"{proto}6"):
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or ":" not in fields[1]:
                continue
            try:
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
            except ValueError:
                continue
            if local_port != port or (proto == "tcp" and fields[3] != _TCP_LISTEN):
                continue
            if fields[9] != "0":
                inodes.add(fields[9])
    return inodes


def _command(pid_dir: Path) -> str:
    try:
        raw = (pid_dir / "cmdline").read_bytes()
    except OSError:
        raw = b""
    text = " ".join(raw.replace(b"\0", b" ").decode(errors="replace").split())     # one line
    if not text:
        try:
            text = f"[{(pid_dir / 'comm').read_text().strip()}]"
        except OSError:
            text = "?"
    return text if len(text) <= 160 else text[:157] + "..."


def port_holders(port: int, proto: str = "udp", proc: Path | str = "/proc") -> list[PortHolder]:
    """The processes holding local ``port`` (``proto`` "udp", or "tcp" for listening sockets), by pid; one
    ``PortHolder(None, ...)`` for sockets whose process this user cannot see; [] when no socket is bound."""
    proc = Path(proc)
    inodes = _socket_inodes(int(port), proto, proc)
    if not inodes:
        return []
    wanted = {f"socket:[{inode}]" for inode in inodes}
    found: dict[int, PortHolder] = {}
    seen: set[str] = set()
    try:
        pid_dirs = [d for d in proc.iterdir() if d.name.isdecimal()]
    except OSError:
        pid_dirs = []
    for pid_dir in pid_dirs:
        try:
            links = os.listdir(pid_dir / "fd")
        except OSError:
            continue
        for fd in links:
            try:
                target = os.readlink(pid_dir / "fd" / fd)
            except OSError:
                continue
            if target in wanted:
                seen.add(target)
                pid = int(pid_dir.name)
                found.setdefault(pid, PortHolder(pid, _command(pid_dir)))
    holders = sorted(found.values(), key=lambda h: h.pid)
    if seen != wanted:
        holders.append(PortHolder(None, NOT_VISIBLE))
    return holders


def describe_holders(holders: list[PortHolder]) -> str:
    """'pid 123 (python3 -m x)', several joined by ', '; the not-visible sentence when nothing is known."""
    if not holders:
        return NOT_VISIBLE
    return ", ".join(NOT_VISIBLE if h.pid is None else
                     f"pid {h.pid} ({h.command})" + (" (this process)" if h.pid == os.getpid() else "")
                     for h in holders)


def free_port_near(host: str, port: int, proto: str = "udp", tries: int = 20) -> int | None:
    """The first of port+1 .. port+tries that binds on ``host`` now (None if none does): a suggestion only, the
    port may be taken again before it is used."""
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    for candidate in range(port + 1, min(port + tries, 65535) + 1):
        try:
            family, _, _, _, address = socket.getaddrinfo(host, candidate, type=kind)[0]
            with socket.socket(family, kind) as probe:
                probe.bind(address)
        except OSError:
            continue
        return candidate
    return None


def port_in_use_message(exc: OSError, host: str, port: int, flag: str, proto: str = "udp") -> str:
    """``str(exc)``, and for "address in use" who holds the port and what to do (``flag``: the option that
    chooses another port, e.g. ``--osc-port``)."""
    if getattr(exc, "errno", None) != errno.EADDRINUSE:
        return str(exc)
    holders = port_holders(port, proto)
    near = free_port_near(host, port, proto)
    hint = f"{flag} {near}" if near is not None else f"another {flag}"
    return (f"{exc.strerror or exc}: {proto.upper()} port {port} is held by {describe_holders(holders)}; "
            f"stop that program, or choose another port: {hint} (or {flag} 0 for any free port)")
