"""The seam between controllers and the engine: a router turns every incoming MIDI or OSC message into events.

MIDI and OSC threads (:mod:`instrument.io.midi`, :mod:`instrument.io.osc`) hand each message to a
:class:`Router` and push what it returns into the :class:`~instrument.engine.events.EventQueue`. A router runs on a
controller thread, never on the audio thread, so it may allocate; it must be quick and must not block.

:class:`DefaultRouter` is what ``sdga-play`` uses without ``--mapping``: MIDI notes, pitch bend, sustain and
CC 120/121/123 as the engine knows them (:func:`~instrument.engine.events.from_mido`), CC 1..8 and CC 70..77 to the
latents in importance order as 0..1 knobs, and OSC through the ``/sdga/`` address table
(:data:`~instrument.io.osc.OSC_SPECS`). YAML mappings (``instrument.controls.mapping.load_router``) return another
object with the same two methods. ``sdga-play`` without ``--mapping`` plays through a mapping router built
from :func:`default_mapping_text` (the same CCs as YAML bindings, smoothed), so patch recall, learn and save
work without a file.
"""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

from instrument.model.bundle import LatentInfo
from instrument.engine.events import Event, LatentSet, from_mido
from instrument.io.osc import osc_event

__all__ = ["Router", "DefaultRouter", "LATENT_CCS", "LATENT_CCS_ALT", "default_mapping_text"]

LATENT_CCS = tuple(range(1, 9))        # CC 1..8 -> latents 0..7 in importance order
LATENT_CCS_ALT = tuple(range(70, 78))  # CC 70..77 (sound controllers; many knob boxes send these)


@runtime_checkable
class Router(Protocol):
    """Turns controller messages into engine events (called on the MIDI / OSC threads)."""

    def midi(self, message, offset: int = 0) -> list[Event]:
        """Events for one mido message; [] when the message is consumed or ignored. Raise ValueError for a
        message that cannot be used (counted as malformed, dropped)."""

    def osc(self, address: str, args: tuple) -> list[Event]:
        """Events for one OSC message; raise ValueError for a bad message (counted as malformed, dropped)."""


class DefaultRouter:
    """MIDI as the engine knows it plus latent CCs; OSC by the ``/sdga/`` address table."""

    def __init__(self, latents: Sequence[LatentInfo] = (), latent_ccs: Sequence[int] = LATENT_CCS,
                 latent_ccs_alt: Sequence[int] = LATENT_CCS_ALT):
        self.latents = list(latents)
        self.cc_to_latent: dict[int, int] = {}          # CC number -> z index
        for ccs in (latent_ccs, latent_ccs_alt):
            for rank, cc in enumerate(ccs):
                if rank < len(self.latents):
                    self.cc_to_latent[int(cc)] = self.latents[rank].index

    def midi(self, message, offset: int = 0) -> list[Event]:
        if message.type == "control_change":
            index = self.cc_to_latent.get(message.control)
            if index is not None:
                return [LatentSet(index, message.value / 127.0, knob=True, offset=offset)]
        event = from_mido(message, offset)
        return [] if event is None else [event]

    def osc(self, address: str, args: tuple) -> list[Event]:
        return [osc_event(address, args, self.latents)]

    def describe(self) -> str:
        names = {l.index: l.name for l in self.latents}
        ccs = ", ".join(f"CC{cc}={names[i]}" for cc, i in sorted(self.cc_to_latent.items()) if cc < 70)
        return f"default routing: notes, bend, sustain, CC120/121/123; latents {ccs or '(none)'} (also CC70..77)"


def default_mapping_text(n_latents: int, patches: bool = False, latent_ccs: Sequence[int] = LATENT_CCS,
                         latent_ccs_alt: Sequence[int] = LATENT_CCS_ALT) -> str:
    """DefaultRouter's latent CCs as a mapping file's text (``instrument.controls.mapping``), for ``n_latents`` latents;
    with ``patches``, program change N also recalls patch N. Everything else passes through."""
    lines = ["version: 1", "name: default routing", "mappings:"]
    for ccs in (latent_ccs, latent_ccs_alt):
        lines += [f"  - {{cc: {int(cc)}, target: latent/{rank}}}" for rank, cc in enumerate(ccs) if rank < n_latents]
    if patches:
        lines.append("  - {program: true, target: patch/select}")
    if lines[-1] == "mappings:":
        lines[-1] = "mappings: []"
    return "\n".join(lines) + "\n"
