"""The synthetic benchmark: FPHA's on-disk format, a kinematic hand, 45 structured actions,
an egocentric scene (v1, or ``scene_v2``'s, closer to real FPHA frames) and a depth-sensor
model.  See ``generate`` for the layout."""
from .generate import generate, read_visibility, sequence_refs

__all__ = ["generate", "read_visibility", "sequence_refs"]
