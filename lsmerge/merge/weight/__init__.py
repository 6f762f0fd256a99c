"""Weight-space merge baselines: one small module per method behind `base.MergeMethod`, a
registry (`METHODS`), per-tensor parameter resolution, and a streaming executor.

Methods (pure functions on tensors, formulas in their docstrings): `linear.linear`,
`slerp.slerp`, `task_arithmetic.task_arithmetic`, `ties.ties`, `dare.dare`,
`regmean.regmean_solve`; over singular vectors of the task matrices (`spectral`):
`tsv.tsv` (TSV-M), `iso.iso_c` / `iso.iso_cts`, `knots.knots_ties` / `knots.knots_dare`; the rest
of mergekit 0.1.5's methods (`breadcrumbs`, `della`, `sce`, `ram`, `model_stock`, `karcher`,
`nuslerp`, `multislerp`, `nearswap`, `arcee_fusion`, `passthrough`; the spherical ones on
`geometry`'s Gram matrices). Recipes: `mergekit_config`, `mergekit_layout`, `mergekit_vocab`.
Command: `command.merge_weights` (`lsmerge merge-weights`).
"""

from lsmerge.merge.weight import dare, linear, regmean, slerp, task_arithmetic, ties  # noqa: F401 - registers the methods
from lsmerge.merge.weight import passthrough  # noqa: F401 - registers the method
from lsmerge.merge.weight import iso, knots, tsv  # noqa: F401 - registers the task-matrix (SVD) methods
from lsmerge.merge.weight import model_stock, karcher, nuslerp, multislerp, nearswap, arcee_fusion  # noqa: F401, E402
from lsmerge.merge.weight.base import METHODS, MergeMethod, Param, TensorContext, get_method, register, tensor_seed
from lsmerge.merge.weight.dare import dare_drop
from lsmerge.merge.weight.linear import linear as linear_merge
from lsmerge.merge.weight.regmean import regmean_solve
from lsmerge.merge.weight.slerp import slerp as slerp_merge
from lsmerge.merge.weight.task_arithmetic import task_arithmetic as task_arithmetic_merge
from lsmerge.merge.weight.ties import elect_sign, ties as ties_merge, trim_to_density

from lsmerge.merge.weight import breadcrumbs, della, sce, ram  # noqa: F401,E402 - registers the methods (mergekit's sparse / consensus family)

__all__ = [
    "METHODS", "MergeMethod", "Param", "TensorContext", "dare_drop", "elect_sign", "get_method",
    "linear_merge", "regmean_solve", "register", "slerp_merge", "task_arithmetic_merge", "tensor_seed",
    "ties_merge", "trim_to_density",
]  # fmt: skip
