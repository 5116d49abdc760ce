"""Where a run is: the typed, immutable resume cursor saved in every checkpoint's metadata.

A run moves through stages (the tasks of a class-incremental run, the domains of continual
pretraining). The stage loop (jaxcl/engine/loop.py) makes a new record with
`dataclasses.replace` at every change; a recipe that tracks more subclasses `Progress`
(jaxcl/lm/run.py: tokens, FLOPs, the validation curve, growth events).
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Progress:
  stage: int = 0  # index of the current (or last finished) stage
  step_in_stage: int = 0  # gradient steps taken in it
  phase: str = "start"  # start | train | done (the stage's end is evaluated and saved)
  train_seconds: float = 0.0  # wall time of the step loops (evaluation excluded)
  skipped_steps: int = 0  # non-finite steps skipped (train.nan_policy="skip")
  rows: tuple = ()  # one per finished stage: the recipe's evaluation after it

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, d: dict[str, Any]):
    """The record of a checkpoint's metadata (JSON lists back to tuples)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - fields
    if unknown:
      raise ValueError(f"progress of a checkpoint has unknown fields {sorted(unknown)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

  def first_stage(self) -> int:
    """The stage a run resumed from this record goes on with."""
    return self.stage + (1 if self.phase == "done" else 0)

  def in_stage(self, stage: int) -> bool:
    """Whether `stage` was begun (its begin-stage hook ran) and is not finished."""
    return self.phase == "train" and self.stage == stage
