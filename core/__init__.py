"""The base of zsteer's layering: the error type and the stop codes every other package shares.

Nothing here imports torch or any other zsteer package (docs/ARCHITECTURE.md, "Layers").
"""
