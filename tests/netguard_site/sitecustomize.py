"""The network guard (tests/netguard.py) in every Python process the tests start.

``tests/conftest.py`` puts this folder first on the ``PYTHONPATH`` that the processes it starts
inherit, and Python imports ``sitecustomize`` at start-up.  Any other ``sitecustomize`` further
on the path (a distribution's) still runs after the guard is installed."""
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

_here = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("netguard", _here.parent / "netguard.py")
netguard = importlib.util.module_from_spec(_spec)
sys.modules["netguard"] = netguard  # one NetworkRefused class, whoever imports it
_spec.loader.exec_module(netguard)
netguard.install()

_rest = [p for p in sys.path if Path(p or ".").resolve() != _here]
_other = importlib.machinery.PathFinder.find_spec("sitecustomize", _rest)
if _other is not None and _other.loader is not None:
    _module = importlib.util.module_from_spec(_other)
    _other.loader.exec_module(_module)
