"""The live engine: events and the parameter table, voices, per-frame kernels, the effects chain.

Events in, audio blocks out; imports only :mod:`instrument.model`."""
