"""The models: each a small module of its own (see its docstring for the paper it follows).

The fusion methods reach them only through the interfaces of :mod:`.interfaces`; :mod:`.registry`
names every model (``HPES``, ``HARS``)."""
from .film import FiLM, uniform_action
from .har import HARConfig, PoseLSTM, TemporalAttention
from .hpe import HPE, HPEConfig, count_flops
from .interfaces import ActionRecogniser, PoseEstimator, PosePrior
from .registry import HARS, HPES, har_entry, hpe_entry, register
from .resnet_hpe import ResNetHPE, ResNetHPEConfig
from .transformer_har import TransformerHAR, TransformerHARConfig

__all__ = ["ActionRecogniser", "FiLM", "HARConfig", "HARS", "HPE", "HPEConfig", "HPES", "PoseEstimator", "PoseLSTM",
           "PosePrior", "ResNetHPE", "ResNetHPEConfig", "TemporalAttention", "TransformerHAR", "TransformerHARConfig",
           "count_flops", "har_entry", "hpe_entry", "register", "uniform_action"]
