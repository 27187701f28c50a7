"""proxopt: proximal and scale-free weight decay as Optax transformations.

Everything public is importable from ``proxopt``; the modules that implement
it are private (``proxopt._aliases`` ...), as in optax. ``proxopt.testing``
is a public namespace of assertions for users' test suites.

- Optimizers (aliases, ``optax.adamw``'s signature): :func:`adam_l2`,
  :func:`adamw`, :func:`adamprox`; ``optax.sgd``'s: :func:`sgd_l2`,
  :func:`sgdw`, :func:`sgdprox`; classic optimizers with decay and a prox:
  :func:`classic`.
- Transforms over any optimizer: :func:`proximal`,
  :func:`decoupled_weight_decay`.
- Regularizers: :func:`l2_squared`, :func:`l1`, :func:`elastic_net`,
  :func:`group_lasso`, :func:`box`, :func:`nonnegative`, with
  :func:`regularizer_value` and :func:`apply_prox`.
- Schedules: :func:`step_decay`, :func:`multistep_decay`,
  :func:`cosine_per_epoch`, :func:`warmup_cosine`, :func:`reduce_on_plateau`.
- Conventions: :func:`paper_to_optax`, :func:`optax_to_paper`,
  :func:`paper_hyperparams`.
- Diagnostics: :func:`track_update_scales`, :func:`update_scale_summary`,
  :func:`update_scale_histogram`, :func:`reset_update_scales`,
  :func:`summarize_histogram`.
"""

from proxopt import testing
from proxopt._aliases import adam_l2, adamprox, adamw, sgd_l2, sgdprox, sgdw
from proxopt._classic import CLASSIC_OPTIMIZERS, classic
from proxopt._conventions import optax_to_paper, paper_hyperparams, paper_to_optax
from proxopt._diagnostics import (
    ScaleSpread,
    UpdateScaleState,
    UpdateScaleSummary,
    reset_update_scales,
    summarize_histogram,
    track_update_scales,
    update_scale_histogram,
    update_scale_summary,
)
from proxopt._proximal import StepCountState, decoupled_weight_decay, proximal
from proxopt._regularizers import (
    Regularizer,
    apply_prox,
    box,
    elastic_net,
    group_lasso,
    l1,
    l2_squared,
    nonnegative,
    regularizer_value,
)
from proxopt._schedules import (
    ReduceOnPlateau,
    ReduceOnPlateauState,
    cosine_per_epoch,
    multistep_decay,
    reduce_on_plateau,
    step_decay,
    warmup_cosine,
)
from proxopt._version import __version__

# Grouped as in the API reference (docs/api/*.md); tests check every name is
# documented there.
__all__ = (
    # optimizers
    "adam_l2",
    "adamw",
    "adamprox",
    "sgd_l2",
    "sgdw",
    "sgdprox",
    "classic",
    "CLASSIC_OPTIMIZERS",
    # transforms
    "proximal",
    "decoupled_weight_decay",
    "StepCountState",
    # regularizers
    "Regularizer",
    "l2_squared",
    "l1",
    "elastic_net",
    "group_lasso",
    "box",
    "nonnegative",
    "regularizer_value",
    "apply_prox",
    # schedules
    "step_decay",
    "multistep_decay",
    "cosine_per_epoch",
    "warmup_cosine",
    "reduce_on_plateau",
    "ReduceOnPlateau",
    "ReduceOnPlateauState",
    # conventions
    "paper_to_optax",
    "optax_to_paper",
    "paper_hyperparams",
    # diagnostics
    "track_update_scales",
    "update_scale_summary",
    "update_scale_histogram",
    "reset_update_scales",
    "summarize_histogram",
    "UpdateScaleState",
    "UpdateScaleSummary",
    "ScaleSpread",
    # testing (a namespace)
    "testing",
)
