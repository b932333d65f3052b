"""The model: DDSP synth (dsp), networks, the versioned model file and its bundle, offline rendering.

What training and the live engine both use; imports nothing else from sdga."""
