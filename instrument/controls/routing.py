"""The seam between controllers and the engine: a router turns every incoming MIDI or OSC message into events.

MIDI and OSC threads (:mod:`instrument.io.midi`, :mod:`instrument.io.osc`) hand each message to a
:class:`Router` and push what it returns into the :class:`~instrument.engine.events.EventQueue`. A router runs on a
controller thread, never on the audio thread, so it may allocate; it must be quick and must not block.

Default routing exists once, as a mapping (:func:`default_mapping_text`): MIDI notes, pitch bend, sustain and
CC 120/121/123 pass through as the engine knows them (:func:`~instrument.engine.events.from_mido`), the
expression controls of the shipped ``mappings/default.yaml`` (:data:`EXPRESSION_BINDINGS`: the mod wheel, CC 1,
on the vibrato depth of the learnt note expression, the breath controller, CC 2, on the noise), the other CCs of
1..8 and CC 70..77 move the latents in importance order as 0..1 knobs (the knobs the model offers: a binding to an
inactive latent is skipped), and OSC answers the whole address table
(:mod:`instrument.controls.addresses`). :func:`default_router` builds a
:class:`~instrument.controls.router.MappingRouter` from it: ``sdga-play`` without ``--mapping`` plays through
it (with the shipped patches: program change N recalls patch N), and the MIDI / OSC front ends use it when
given no router.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Protocol, Sequence, runtime_checkable

from instrument.engine.events import Event
from instrument.controls.mapping import parse_mapping
from instrument.controls.router import MappingRouter

__all__ = ["Router", "EXPRESSION_BINDINGS", "LATENT_CCS", "LATENT_CCS_ALT", "default_mapping_text", "default_router"]

# The expression controls, as mapping entries: the same entries as mappings/default.yaml (tests/test_routing.py
# holds the file to them), so the instrument answers the mod wheel the same with or without a mapping file.
# Rows: (cc, target, range low, range high, smooth_ms).
EXPRESSION_BINDINGS = (
    (1, "vibrato_depth", 1.0, 4.0, 30.0),       # mod wheel: the learnt vibrato and tremolo, 1x (as learnt) to 4x
    (2, "noise_gain_db", -24.0, 6.0, 30.0),     # breath controller: the filtered-noise branch (breath / bow noise)
)
LATENT_CCS = tuple(range(1, 9))        # CC 1..8 -> latents 0..7 in importance order (but CC 1, 2: expression)
LATENT_CCS_ALT = tuple(range(70, 78))  # CC 70..77 (sound controllers; many knob boxes send these)


@runtime_checkable
class Router(Protocol):
    """Turns controller messages into engine events (called on the MIDI / OSC threads)."""

    def midi(self, message, offset: int = 0) -> list[Event]:
        """Events for one mido message; [] when the message is consumed or ignored. Raise ValueError for a
        message that cannot be used (counted as malformed, dropped)."""

    def osc(self, address: str, args: tuple) -> list[Event]:
        """Events for one OSC message; raise ValueError for a bad message (counted as malformed, dropped)."""


def default_mapping_text(n_latents: int, patches: bool = False, latent_ccs: Sequence[int] = LATENT_CCS,
                         latent_ccs_alt: Sequence[int] = LATENT_CCS_ALT) -> str:
    """The default routing as a mapping file's text, for ``n_latents`` latents; with ``patches``, program
    change N also recalls patch N. The expression CCs (:data:`EXPRESSION_BINDINGS`) come first and a latent
    CC on the same number is left out. Everything else passes through."""
    lines = ["version: 1", "name: default routing", "mappings:"]
    lines += [f"  - {{cc: {cc}, target: {target}, range: [{low:g}, {high:g}], smooth_ms: {smooth:g}}}"
              for cc, target, low, high, smooth in EXPRESSION_BINDINGS]
    taken = {row[0] for row in EXPRESSION_BINDINGS}
    for ccs in (latent_ccs, latent_ccs_alt):
        lines += [f"  - {{cc: {int(cc)}, target: latent/{rank}, optional: true}}" for rank, cc in enumerate(ccs)
                  if rank < n_latents and cc not in taken]
    if patches:
        lines.append("  - {program: true, target: patch/select}")
    if lines[-1] == "mappings:":
        lines[-1] = "mappings: []"
    return "\n".join(lines) + "\n"


def default_router(latents: Sequence = (), *, bundle=None, patches=None, **kwargs):
    """A MappingRouter over :func:`default_mapping_text` for a model's latent table (``bundle.latents``, or
    ``latents`` alone where no bundle is at hand); ``patches`` (a folder or list) adds program change ->
    patch N. ``kwargs`` go to :class:`~instrument.controls.router.MappingRouter` (effects, send, ...). Raises
    MappingError when the patches do not fit the model."""
    bundle = bundle if bundle is not None else SimpleNamespace(latents=list(latents))
    text = default_mapping_text(len(bundle.latents), patches is not None)
    mapping = parse_mapping(None, bundle, text=text, patches=patches)
    return MappingRouter(mapping, bundle, patches_override=patches, **kwargs)
