"""MIDI input: a virtual port named 'sdga' (and optionally a connection to an existing port), via mido's
python-rtmidi backend on JACK or ALSA. The rtmidi thread only converts and enqueues.

On JACK, python-rtmidi does not connect a port it opens by name, so ``connect`` is done with ``jack_connect``
(from a source port to the virtual port).
"""
from __future__ import annotations

import shutil
import subprocess

from .events import EventQueue, from_mido

__all__ = ["MidiInput", "midi_backend", "midi_input_names"]

JACK_API = "UNIX_JACK"
ALSA_API = "LINUX_ALSA"


def midi_backend(api: str | None = None):
    """mido's rtmidi backend, optionally for one rtmidi API ('UNIX_JACK', 'LINUX_ALSA')."""
    import mido

    return mido.Backend("mido.backends.rtmidi" + (f"/{api}" if api else ""), load=True)


def midi_input_names(api: str | None = None) -> list[str]:
    return list(midi_backend(api).get_input_names())


class MidiInput:
    """Receives MIDI and pushes engine events to ``queue``.

    ``virtual_name``: create a virtual input port with this name (None: none); ``connect``: also receive from
    this existing MIDI output port (JACK: a port name like ``a2j:keyboard``, connected to the virtual port). Counters: ``received`` (events queued), ``ignored`` (messages the engine
    does not use). Use as a context manager or call :meth:`close`.
    """

    def __init__(self, queue: EventQueue, *, virtual_name: str | None = "sdga", api: str | None = JACK_API,
                 connect: str | None = None, client_name: str = "sdga"):
        self.queue = queue
        self.received = 0
        self.ignored = 0
        backend = midi_backend(api)
        self.ports = []
        try:
            if virtual_name:
                self.ports.append(backend.open_input(virtual_name, virtual=True, client_name=client_name,
                                                     callback=self._on_message))
            if connect and api == JACK_API:
                if not virtual_name or shutil.which("jack_connect") is None:
                    raise RuntimeError("connecting on JACK needs the virtual port and the jack_connect tool")
                result = subprocess.run(["jack_connect", connect, f"{client_name}:{virtual_name}"],
                                        capture_output=True, text=True, timeout=10)
                if result.returncode != 0:
                    raise RuntimeError(f"jack_connect {connect}: {result.stderr.strip() or result.returncode}")
            elif connect:
                self.ports.append(backend.open_input(connect, client_name=client_name, callback=self._on_message))
        except Exception:
            self.close()
            raise

    def _on_message(self, message) -> None:
        event = from_mido(message)
        if event is None:
            self.ignored += 1
        elif self.queue.push(event):
            self.received += 1

    def close(self) -> None:
        for port in self.ports:
            try:
                port.close()
            except Exception:
                pass
        self.ports = []

    def __enter__(self) -> "MidiInput":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
