"""MIDI learn: the armed target, the entry a moved control becomes, and that entry written into the mapping
file's text with every other line, comment and layout kept (ruamel.yaml's round-trip mode).

Only the MIDI thread arms, fires and disarms learn (``/sdga/learn`` arms it from the OSC thread: one
reference assignment). Writing the file and switching to the result is the router's
(:meth:`instrument.controls.router.MappingRouter.add_entry`).
"""
from __future__ import annotations

import io

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.util import load_yaml_guess_indent

from instrument.controls.mapping import SOURCE_KINDS, Source

__all__ = ["LEARNABLE", "learned_entry", "entry_source", "add_entry_text"]

LEARNABLE = ("control_change", "aftertouch", "polytouch", "pitchwheel")      # mido message types


def learned_entry(message, target: str) -> dict:
    """The mapping entry that binds the control ``message`` came from (a LEARNABLE type) to ``target``."""
    entry: dict = {}
    if message.type == "control_change":
        entry["cc"] = message.control
    elif message.type == "aftertouch":
        entry["aftertouch"] = True
    elif message.type == "polytouch":
        entry["poly_aftertouch"] = True
    else:
        entry["bend"] = True
    entry["channel"] = message.channel
    entry["target"] = target
    return entry


def entry_source(entry) -> Source | None:
    """The control a raw entry (a dict as written in the file) listens to; None when it names no source."""
    if not hasattr(entry, "get"):
        return None
    kind = next((k for k in entry if k in SOURCE_KINDS), None)
    if kind is None:
        return None
    value = entry[kind]
    number = value if kind in ("cc", "poly_aftertouch", "program") and value is not True else None
    channel = entry.get("channel")
    return Source(kind, number, channel, address=value if kind == "osc" else "", arg=entry.get("arg", 0) or 0)


def add_entry_text(text: str, entry: dict) -> str:
    """``text`` (a mapping file) with ``entry`` added under ``mappings:``, replacing the entries for the same
    control (the first one in place, the others removed); everything else stays as written."""
    try:                                       # the file's own indents: "  - x" (4, 2) or "- x" (2, 0)
        _, seq_indent, dash_offset = load_yaml_guess_indent(text) if text.strip() else (None, 4, 2)
    except Exception:                          # guessing is best effort; the load below reports real errors
        seq_indent, dash_offset = 4, 2
    if dash_offset is None:                    # no block sequence to copy: write "  - entry"
        map_indent, seq_indent, dash_offset = seq_indent or 2, 4, 2
    else:
        map_indent = max(2, seq_indent - dash_offset)
    yaml = YAML()                              # round trip: comments, key order, flow/block styles kept
    yaml.width = 4096
    yaml.indent(mapping=map_indent, sequence=seq_indent, offset=dash_offset)
    doc = yaml.load(text) if text.strip() else None
    if doc is None:
        doc = CommentedMap()
    if not isinstance(doc, CommentedMap):
        raise ValueError("the mapping file's top level is not a mapping")
    new = CommentedMap(entry)
    new.fa.set_flow_style()
    seq = doc.get("mappings")
    if not isinstance(seq, CommentedSeq):
        seq = CommentedSeq()
        doc["mappings"] = seq
    source = entry_source(entry)
    same = [i for i, item in enumerate(seq) if (s := entry_source(item)) is not None and s.same_control(source)]
    if same:
        seq[same[0]] = new
        for i in reversed(same[1:]):
            del seq[i]
    else:
        if seq.fa.flow_style():
            seq.fa.set_block_style()
        seq.append(new)
    out = io.StringIO()
    yaml.dump(doc, out)
    return out.getvalue()
