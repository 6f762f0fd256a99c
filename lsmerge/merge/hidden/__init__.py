"""Hidden-state (representation-space) merging: mix the residual streams of models while they run.

Layout (as `lsmerge.merge.weight`): `base` holds the operator registry (`@register(name,
sources=...)`, `OPERATORS`, `get_operator`); one module per operator (`lerp`, `slerp`, `mean`,
`steer`: a pure function on (..., hidden) tensors, formula in its docstring); `hooks` the
residual-stream hooks, the recorder and the early exit; `mixer` `MixSpec`, `HiddenStateMixer`,
`Steerer` and `MixedForward`. On top: `generation` (`DualModelGenerator`), `steering` (deltas and
`lsmerge steer`), `command` (`lsmerge generate`) and `prompts` (reading and encoding prompts).
The sweep over layers x ratios is an evaluation: `lsmerge.evaluate.sweep`.

Adding an operator: one decorated function in one new module, imported below (the import registers it).
The package attributes `lerp`, `slerp`, `mean`, `steer` are the functions, not their modules.
"""

# The operators, in the order the registry lists them (importing a module registers its operator).
from lsmerge.merge.hidden.lerp import lerp  # isort: skip
from lsmerge.merge.hidden.slerp import slerp  # isort: skip
from lsmerge.merge.hidden.mean import mean  # isort: skip
from lsmerge.merge.hidden.steer import steer  # isort: skip
from lsmerge.merge.hidden.base import (
    OPERATORS,
    TOKEN_MODES,
    Operator,
    TokenMode,
    check_beta,
    get_operator,
    operator_names,
    register,
)
from lsmerge.merge.hidden.hooks import (
    HiddenEdit,
    ResidualHooks,
    ResidualRecorder,
    check_mix_layer,
    decoder_layers,
    num_layers,
    register_residual_hook,
    residual_stream,
)
from lsmerge.merge.hidden.mixer import HiddenStateMixer, MixedForward, MixSpec, Steerer

__all__ = [
    "OPERATORS", "TOKEN_MODES", "HiddenEdit", "HiddenStateMixer", "MixSpec", "MixedForward", "Operator",
    "ResidualHooks", "ResidualRecorder", "Steerer", "TokenMode", "check_beta", "check_mix_layer", "decoder_layers",
    "get_operator", "lerp", "mean", "num_layers", "operator_names", "register", "register_residual_hook",
    "residual_stream", "slerp", "steer",
]  # fmt: skip
