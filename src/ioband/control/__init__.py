"""The daemon: configuration, the engine's clock, and the front ends it hosts."""
