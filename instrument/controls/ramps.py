"""Smoothing: per-control-frame value ramps, split at the thread boundary.

A smoothed target does not jump. A controller thread sets a goal through a :class:`RampInbox` (the producer
end); the audio thread owns a :class:`Ramps` (every running ramp, every position, the frame phase) and, once
per block, takes the posted moves and advances: every control frame (``hop`` samples) each ramp moves a
straight-line step towards its goal, reaching it ``smooth_ms`` after the move, and emits one time-stamped
event per frame (at its sample offset inside the block). The engine interpolates its controls linearly
across each frame, so the sound follows a piecewise-linear path with no steps (no zipper noise) however
coarse the controller is.

Hand-over: the inbox is a ``collections.deque``; ``append`` (controller threads) and ``popleft`` (audio
thread) are atomic in CPython, so neither side takes a lock and neither reads the other's state. Until
:meth:`Ramps.prepare` runs nobody ticks, so every move is applied at once and nothing is posted.
"""
from __future__ import annotations

from collections import deque
from typing import Iterable, NamedTuple

from instrument.engine.events import Event
from instrument.controls.targets import Target

__all__ = ["RampInbox", "Ramps"]


class _Move(NamedTuple):
    target: Target
    goal: float | None     # None with ramp=False: only cancel the running ramp
    ms: float
    channel: int
    ramp: bool             # False: cancel the running ramp (an immediate setting arrived), note ``goal``


class RampInbox:
    """The controller threads' end: post moves, never read the audio thread's ramps."""

    def __init__(self, capacity: int = 4096):
        self.capacity = int(capacity)
        self.dropped = 0                   # moves refused because the audio thread was not taking them
        self.hop = 0                       # set by Ramps.prepare before the audio thread starts
        self._moves: deque[_Move] = deque()

    @property
    def prepared(self) -> bool:
        return self.hop > 0

    def _post(self, move: _Move) -> None:
        if len(self._moves) >= self.capacity:
            self.dropped += 1
            return
        self._moves.append(move)

    def move(self, target: Target, goal: float, ms: float, channel: int = 0) -> Event | None:
        """Head for ``goal`` (target unit) over ``ms`` from where the target is now (the audio thread knows).
        Returns the event to send now when it does not ramp (``ms`` <= 0, a discrete target, or not
        prepared), else None (the audio thread's ticks send the ramp)."""
        goal = target.clamp(goal)
        if ms <= 0 or not target.smoothable or not self.prepared:
            if self.prepared:
                self._post(_Move(target, goal, 0.0, channel, False))
            return target.event(goal, channel)
        self._post(_Move(target, goal, float(ms), channel, True))
        return None

    def stop(self, target: Target, value: float | None = None) -> None:
        """Cancel a ramp (an immediate setting of the same target arrived), optionally noting the value."""
        if self.prepared:
            self._post(_Move(target, None if value is None else target.clamp(value), 0.0, 0, False))

    def take(self) -> list[_Move]:
        """Every posted move, oldest first (the audio thread)."""
        moves = []
        while self._moves:
            moves.append(self._moves.popleft())
        return moves


class _Ramp:
    __slots__ = ("target", "current", "goal", "step", "channel", "done")

    def __init__(self, target: Target, current: float, goal: float, step: float, channel: int):
        self.target, self.current, self.goal, self.step, self.channel = target, current, goal, step, channel
        self.done = False


class Ramps:
    """The audio thread's end: the running ramps and last values; :attr:`inbox` is the producers' end.

    ``prepare(sample_rate, hop)`` before the stream starts; then in the callback ``tick(n)`` or
    ``block_events(queued, n)`` once per block, before ``Engine.process``.
    """

    def __init__(self, capacity: int = 4096):
        self.inbox = RampInbox(capacity)
        self.sample_rate = 0
        self.hop = 0
        self._ramps: dict[tuple, _Ramp] = {}
        self.values: dict[tuple, float] = {}      # last value sent per target key (ramps update it as they go)
        self._phase = 0                            # samples until the next frame tick

    @property
    def prepared(self) -> bool:
        return self.hop > 0

    def prepare(self, sample_rate: int, hop: int) -> None:
        if sample_rate <= 0 or hop <= 0:
            raise ValueError("sample_rate and hop must be positive")
        self.sample_rate, self.hop, self._phase = int(sample_rate), int(hop), 0
        self.inbox.hop = self.hop

    @property
    def moving(self) -> int:
        return sum(1 for r in self._ramps.values() if not r.done)

    def _apply(self, move: _Move) -> None:
        key = move.target.key
        old = self._ramps.pop(key, None)
        if not move.ramp:
            if move.goal is not None:
                self.values[key] = move.goal
            return
        current = old.current if old is not None and not old.done else self.values.get(key, move.target.default)
        if current == move.goal:
            return
        samples = max(1.0, move.ms * self.sample_rate / 1000.0)
        self._ramps[key] = _Ramp(move.target, current, move.goal, (move.goal - current) / samples, move.channel)

    def tick(self, n_samples: int) -> list[Event]:
        """Events for one block of ``n_samples``: one per moving target per control frame, in offset order."""
        events: list[Event] = []
        if not self.prepared:
            return events
        for move in self.inbox.take():
            self._apply(move)
        hop = self.hop
        ramps = list(self._ramps.values())
        offset = self._phase
        while offset < n_samples:
            for r in ramps:
                if r.done:
                    continue
                value = r.current + r.step * hop
                if (r.step > 0 and value >= r.goal) or (r.step < 0 and value <= r.goal) or r.step == 0:
                    value = r.goal
                    r.done = True
                r.current = value
                self.values[r.target.key] = value
                event = r.target.event(value, r.channel, offset)
                if event is not None:
                    events.append(event)
            offset += hop
        self._phase = offset - n_samples
        for r in ramps:
            if r.done and self._ramps.get(r.target.key) is r:
                del self._ramps[r.target.key]
        return events

    def block_events(self, queued: Iterable[Event], n_samples: int) -> Iterable[Event]:
        """``queued`` (e.g. ``queue.drain()``) merged with this block's ramp events, in offset order."""
        ticks = self.tick(n_samples)
        if not ticks:
            return queued
        return sorted([*queued, *ticks], key=lambda e: e.offset)
