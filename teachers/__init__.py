"""Teacher plug-ins: larger models reached over a wire protocol (see `sam_brain.protocols.Teacher`).

Each module wraps one official SDK; `sam_brain.registry.TEACHERS` is the name table.
"""
