"""The paper's study, one floor above the library: its experiments, profiles, measurements and read-back.

Notebooks use two namespaces: ``dynprune_lib`` (``dp``) for the library and
``dynprune_lib.study`` (``study``) for everything specific to this paper::

    import dynprune_lib as dp
    from dynprune_lib import study

Modules: :mod:`.profiles` (every knob of every workload), :mod:`.paper`
(the paper's numbers and readings), :mod:`.experiments` (section 3:
baseline, DSR CNN, MLP), :mod:`.comparison`, :mod:`.traditional` and
:mod:`.aspects` (section 4 and Figure 6), :mod:`.protocol` (the
published Wide ResNet protocol as a GPU ran it), :mod:`.efficiency` (sparsity,
storage and latency measured), :mod:`.results` (every result file),
:mod:`.peers` (ONNX Runtime and SparseProp, timed beside ours),
:mod:`.analysis` (the read-back of notebook 05), :mod:`.plots` and
:mod:`.notebook` (``setup``). The library never imports this package.
"""

from . import (
    analysis,
    aspects,
    comparison,
    efficiency,
    experiments,
    notebook,
    paper,
    peers,
    plots,
    profiles,
    protocol,
    results,
    rules,
    traditional,
)
from .analysis import *  # noqa: F403  (each module's __all__ is its public part)
from .aspects import *  # noqa: F403
from .comparison import *  # noqa: F403
from .efficiency import *  # noqa: F403
from .experiments import *  # noqa: F403
from .notebook import *  # noqa: F403
from .paper import *  # noqa: F403
from .peers import *  # noqa: F403
from .plots import *  # noqa: F403
from .profiles import *  # noqa: F403
from .protocol import *  # noqa: F403
from .results import *  # noqa: F403
from .rules import *  # noqa: F403
from .traditional import *  # noqa: F403

_MODULES = (
    analysis,
    aspects,
    comparison,
    efficiency,
    experiments,
    notebook,
    paper,
    peers,
    plots,
    profiles,
    protocol,
    results,
    rules,
    traditional,
)
__all__ = sorted({name for module in _MODULES for name in module.__all__})
