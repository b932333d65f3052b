"""Controls: what a controller can move (the target table), ramps, mapping files, routers, MIDI learn, patches.

Turns decoded MIDI/OSC messages into engine events; imports no transport (:mod:`instrument.io`)."""
