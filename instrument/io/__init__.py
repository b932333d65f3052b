"""Transports: the audio stream, MIDI ports, the OSC server and OSC feedback sender, recording.

They move bytes and samples between the outside world and the engine/controls; no sound decisions here."""
