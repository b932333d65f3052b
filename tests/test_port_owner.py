"""Contract of instrument.io.port_owner: who holds a local UDP / TCP port, read from /proc, for the message when
sdga-play cannot listen ("address in use"). Real sockets held by a real subprocess; a made-up /proc for the
socket whose process this user cannot see (the machine runs the suite as root, who sees every process)."""
from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from instrument.io.port_owner import (NOT_VISIBLE, PortHolder, describe_holders, port_holders, port_in_use_message)

pytestmark = pytest.mark.skipif(not Path("/proc/net/udp").is_file(), reason="needs Linux /proc")

HOLD = """# sdga_port_holder_marker
import socket, sys, time
kind = socket.SOCK_DGRAM if sys.argv[1] == "udp" else socket.SOCK_STREAM
s = socket.socket(socket.AF_INET, kind)
s.bind(("127.0.0.1", 0))
if kind == socket.SOCK_STREAM:
    s.listen()
print(s.getsockname()[1], flush=True)
time.sleep(120)
"""


@pytest.fixture
def holder(request):
    """A subprocess holding a socket (param: 'udp' or 'tcp' listening) on 127.0.0.1: (process, port)."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, request.param], stdout=subprocess.PIPE, text=True)
    try:
        yield process, int(process.stdout.readline())
    finally:
        process.kill()
        process.wait()
        process.stdout.close()


@pytest.mark.parametrize("holder", ["udp", "tcp"], indirect=True)
def test_the_process_holding_a_port_is_named(holder):
    process, port = holder
    found = port_holders(port, "udp") + port_holders(port, "tcp")
    assert [h.pid for h in found] == [process.pid], found
    assert "sdga_port_holder_marker" in found[0].command
    assert describe_holders(found).startswith(f"pid {process.pid} (")


@pytest.mark.parametrize("holder", ["udp"], indirect=True)
def test_address_in_use_message_names_the_holder_and_a_free_port(holder):
    process, port = holder
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as mine:
        with pytest.raises(OSError) as refused:
            mine.bind(("127.0.0.1", port))
    assert refused.value.errno == errno.EADDRINUSE
    text = port_in_use_message(refused.value, "127.0.0.1", port, "--osc-port")
    assert f"UDP port {port} is held by pid {process.pid} (" in text and "sdga_port_holder_marker" in text, text
    assert "--osc-port " in text and "--osc-port 0 for any free port" in text, text
    suggested = int(text.split("choose another port: --osc-port ")[1].split()[0])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as free:
        free.bind(("127.0.0.1", suggested))                       # the suggestion was free
    other = OSError(errno.EACCES, "Permission denied")
    assert port_in_use_message(other, "127.0.0.1", 80, "--osc-port") == str(other)   # only "in use" is explained


def test_a_socket_whose_process_cannot_be_seen_is_another_process(tmp_path):
    """/proc lists the socket, but no /proc/<pid>/fd this user may read links to it."""
    proc = tmp_path / "proc"
    (proc / "net").mkdir(parents=True)
    head = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n"
    (proc / "net" / "udp").write_text(head + "  1: 0100007F:2328 00000000:0000 07 00000000:00000000 00:00000000 "
                                      "00000000  1000        0 424242 2 0000000000000000 0\n")
    (proc / "1234" / "fd").mkdir(parents=True)
    os.symlink("socket:[111]", proc / "1234" / "fd" / "3")        # another socket: not the holder
    assert port_holders(9000, "udp", proc=proc) == [PortHolder(None, NOT_VISIBLE)]
    assert describe_holders(port_holders(9000, "udp", proc=proc)) == NOT_VISIBLE
    assert port_holders(9001, "udp", proc=proc) == []               # nothing bound there
    os.symlink("socket:[424242]", proc / "1234" / "fd" / "4")
    (proc / "1234" / "cmdline").write_bytes(b"oscd\0--port\09000\0")
    assert port_holders(9000, "udp", proc=proc) == [PortHolder(1234, "oscd --port 9000")]
