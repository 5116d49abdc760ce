"""The stage loop's resume cursor: immutable, and the same after a trip through JSON."""

from __future__ import annotations

import dataclasses
import json

import pytest

from jaxcl.engine.progress import Progress
from jaxcl.lm.run import LmProgress


def test_progress_is_immutable_and_replaced_not_mutated():
  p = Progress()
  with pytest.raises(dataclasses.FrozenInstanceError):
    p.stage = 1
  q = dataclasses.replace(p, stage=1, phase="train", rows=(*p.rows, {"acc": [50.0]}))
  assert (p.stage, p.rows) == (0, ())
  assert (q.stage, q.phase, q.rows) == (1, "train", ({"acc": [50.0]},))


def test_progress_round_trips_through_checkpoint_json():
  p = LmProgress(
    stage=1,
    step_in_stage=3,
    phase="train",
    rows=([4.5, 5.0],),
    tokens=96,
    curve=({"step": 1, "val_loss": {"a": 4.0}},),
    growth_events=({"step": 3, "operator": "g_stack"},),
    pre_anneal=5,
  )
  assert LmProgress.from_json(json.loads(json.dumps(p.to_json()))) == p
  with pytest.raises(ValueError, match="unknown fields"):
    Progress.from_json(p.to_json())  # an LM record is not a class-incremental one


@pytest.mark.parametrize(
  ("phase", "first", "in_stage_1"), [("start", 1, False), ("train", 1, True), ("done", 2, False)]
)
def test_where_a_resumed_run_goes_on(phase, first, in_stage_1):
  p = Progress(stage=1, phase=phase)
  assert p.first_stage() == first
  assert p.in_stage(1) == in_stage_1 and not p.in_stage(0)
