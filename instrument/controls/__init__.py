"""Controls: what a controller can move (the target table), the OSC address table, ramps, mapping files, the
router, the live mapping (reload), MIDI learn, patches.

Turns decoded MIDI/OSC messages into engine events; imports no transport (:mod:`instrument.io`)."""
