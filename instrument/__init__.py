"""sdga, the live instrument: model -> engine <- controls <- io, with the apps on top. See ARCHITECTURE.md."""
