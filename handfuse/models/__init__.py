"""The models: each a small module of its own (see its docstring for the paper it follows)."""
from .film import FiLM, uniform_action
from .har import HARConfig, PoseLSTM, TemporalAttention
from .hpe import HPE, HPEConfig, count_flops

__all__ = ["FiLM", "HARConfig", "HPE", "HPEConfig", "PoseLSTM", "TemporalAttention", "count_flops", "uniform_action"]
