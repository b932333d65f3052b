"""Contract of the OSC server's gate (:mod:`instrument.io.netfilter`): an allow-list of sender networks
(``sdga-play --osc-allow``), a datagram size limit and bundle nesting / element limits. Refused datagrams are
dropped unparsed and counted (``refused_senders``, ``oversized_packets``, both in ``errors``); real UDP from
127.0.0.1 to a running server, and one ``sdga-play`` run on a JACK dummy server."""
from __future__ import annotations

import ipaddress
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from instrument.engine.events import EventQueue, NoteOn
from instrument.io.netfilter import (LOOPBACK, MAX_BUNDLE_DEPTH, MAX_BUNDLE_ELEMENTS, MAX_PACKET_BYTES,
                                     packet_problem, parse_allow, sender_allowed, MalformedBundle)
from instrument.io.osc import OscServer
from instrument.model.bundle import random_bundle

sys.path.insert(0, str(Path(__file__).parent))
import test_play  # noqa: E402
from test_play import Player, play_args, results  # noqa: E402

jack = test_play.jack                    # test_play's fixtures: its private JACK dummy server, a random model file
model_path = test_play.model_path

LATENTS = random_bundle().latents
ROOT = Path(__file__).resolve().parents[1]


def note(n: int = 60, velocity: int = 100) -> bytes:
    return b"/sdga/note_on\x00\x00\x00,ii\x00" + n.to_bytes(4, "big") + velocity.to_bytes(4, "big")


def bundle(*parts: bytes) -> bytes:
    return b"#bundle\x00" + bytes(7) + b"\x01" + b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def nested(depth: int) -> bytes:
    out = note()
    for _ in range(depth):
        out = bundle(out)
    return out


# ---------------------------------------------------------------------------------------------- the pure part
def test_parse_allow():
    assert parse_allow("192.168.1.0/24") == (ipaddress.ip_network("192.168.1.0/24"),)
    assert parse_allow(" 10.0.0.7 , fe80::/10,") == (ipaddress.ip_network("10.0.0.7/32"),
                                                     ipaddress.ip_network("fe80::/10"))
    assert parse_allow("localhost") == LOOPBACK
    assert parse_allow("192.168.1.5/24") == (ipaddress.ip_network("192.168.1.0/24"),)   # host bits: the network
    for bad in ("", ",", "10.0.0.0/33", "my-laptop", "192.168.1"):
        with pytest.raises(ValueError, match="e.g. 192.168.1.0/24"):
            parse_allow(bad)


def test_sender_allowed():
    lan = parse_allow("192.168.1.0/24")
    assert sender_allowed("192.168.1.20", lan) and not sender_allowed("192.168.2.20", lan)
    assert sender_allowed("::ffff:192.168.1.20", lan)              # IPv4 through an IPv6 socket
    assert not sender_allowed("::1", lan) and not sender_allowed("not an address", lan)
    assert sender_allowed("fe80::1%eth0", parse_allow("fe80::/10"))
    assert not sender_allowed("0.0.0.1", parse_allow("::/96"))     # no match across IP versions
    assert sender_allowed("127.0.0.1", LOOPBACK) and sender_allowed("::1", LOOPBACK)
    assert sender_allowed("203.0.113.9", None)                     # no list: everyone


def test_packet_limits():
    assert packet_problem(note()) == "" and packet_problem(bundle(note(), note())) == ""
    assert "oversized" in packet_problem(b"x" * (MAX_PACKET_BYTES + 1))
    assert packet_problem(b"x" * MAX_PACKET_BYTES) == ""
    assert packet_problem(nested(MAX_BUNDLE_DEPTH)) == ""
    assert "nested" in packet_problem(nested(MAX_BUNDLE_DEPTH + 1))
    assert "nested" in packet_problem(nested(400), max_bytes=1 << 20)
    assert packet_problem(bundle(*[note()] * MAX_BUNDLE_ELEMENTS)) == ""
    assert "elements" in packet_problem(bundle(*[note()] * (MAX_BUNDLE_ELEMENTS + 1)))
    assert "elements" in packet_problem(bundle(*[bundle(*[note()] * 40)] * 4))       # counted over all levels
    assert packet_problem(bundle(note())[:-3]) == ""          # broken framing: left to the parser, which counts it
    assert packet_problem(b"#bundle\x00" + bytes(8) + (2**31 - 1).to_bytes(4, "big")) == ""
    for size in (0, -4, -2**31):        # python-osc's parser loops forever on these: refused before it runs
        with pytest.raises(MalformedBundle):
            packet_problem(bundle(note()) + size.to_bytes(4, "big", signed=True) + note())


# ---------------------------------------------------------------------------------------------- real UDP
def send_and_settle(server: OscServer, datagrams, counted) -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for data in datagrams:
        udp.sendto(data, ("127.0.0.1", server.address[1]))
    udp.close()
    deadline = time.monotonic() + 5.0
    while counted() < len(datagrams) and time.monotonic() < deadline:
        time.sleep(0.01)


def test_allow_list_excluding_the_sender_refuses_and_counts():
    queue = EventQueue()
    with OscServer(queue, LATENTS, port=0, allow=parse_allow("10.0.0.0/8")) as server:
        send_and_settle(server, [note()] * 5, lambda: server.refused_senders)
    assert server.refused_senders == 5 and server.errors == 5 and server.received == 0 and len(queue) == 0
    assert "127.0.0.1" in server.last_error and "allow-list" in server.last_error


def test_allow_list_including_the_sender_plays():
    queue = EventQueue()
    with OscServer(queue, LATENTS, port=0, allow=parse_allow("10.0.0.0/8,127.0.0.0/8")) as server:
        send_and_settle(server, [note(60), note(62)], lambda: server.received)
    assert server.refused_senders == 0 and server.errors == 0
    assert list(queue.drain()) == [NoteOn(60, 100, 0), NoteOn(62, 100, 0)]


def test_oversized_and_deep_datagrams_are_dropped_unparsed_and_counted():
    queue = EventQueue()
    with OscServer(queue, LATENTS, port=0) as server:
        big = note() + b"\x00" * (MAX_PACKET_BYTES + 1 - len(note()))
        many = bundle(*[note()] * (MAX_BUNDLE_ELEMENTS + 1))
        send_and_settle(server, [big, nested(MAX_BUNDLE_DEPTH + 1), many, nested(2000)],
                        lambda: server.oversized_packets)
        send_and_settle(server, [note(64)], lambda: server.received)
    assert server.oversized_packets == 4 and server.received == 1 and server.malformed_packets == 0
    assert list(queue.drain()) == [NoteOn(64, 100, 0)]            # nothing of the refused ones, and still serving


# ---------------------------------------------------------------------------------------------- sdga-play
def test_play_rejects_a_bad_allow_list(model_path):
    run = subprocess.run([sys.executable, "-m", "instrument.apps.play", str(model_path), "--osc-allow", "my-laptop"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "--osc-allow" in run.stderr and "e.g. 192.168.1.0/24" in run.stderr


def test_play_osc_allow_refuses_and_counts(jack, model_path, tmp_path):
    player = Player(play_args(model_path, tmp_path, "--osc-port", "0", "--osc-allow", "10.0.0.0/8",
                              "--no-virtual-midi", "--duration", "3"), env=jack)
    port = int(player.wait_for("OSC: listening on udp").rsplit(":", 1)[1].split()[0])
    player.wait_for("OSC: only senders in 10.0.0.0/8")
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(5):
        udp.sendto(note(), ("127.0.0.1", port))
    udp.close()
    assert player.finish() == 0, player.output
    _, stats = results(tmp_path)
    osc = stats["osc"]
    assert (osc["refused_senders"], osc["received"], osc["oversized_packets"]) == (5, 0, 0), osc
    assert "5 from senders not allowed" in player.output and "WARNING" not in player.output


def test_bundle_with_a_non_positive_element_size_is_counted_not_parsed():
    """python-osc steps back on a negative element size (or stays on 0) and loops forever, filling memory: the
    server refuses such a bundle before parsing and counts it as malformed."""
    bundle_ = random_bundle(seed=0)
    queue = EventQueue()
    with OscServer(queue, bundle_.latents, port=0) as server:
        for size in (0, -4):
            server.handle_packet(bundle(note()) + size.to_bytes(4, "big", signed=True) + note(), "127.0.0.1")
        assert server.malformed_packets == 2 and "size" in server.last_error
