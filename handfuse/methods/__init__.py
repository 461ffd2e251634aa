"""Fusion methods, by name (the seed's numbering in brackets).

``baseline`` (method #1): the HPE on every frame, then the HAR on the predicted pose
sequence.  ``feedback`` (method #2) and ``ensemble`` (method #3) follow in issue 4.
"""
from .baseline import SequentialBaseline, evaluate_sequences

METHODS = {"baseline": SequentialBaseline}

__all__ = ["METHODS", "SequentialBaseline", "evaluate_sequences"]
