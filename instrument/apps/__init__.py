"""The console apps on top: sdga-play (live) and sdga-render (offline, the same engine)."""
