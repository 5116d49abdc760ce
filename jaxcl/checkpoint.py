"""The only module that talks to orbax: one CheckpointManager per run.

A checkpoint holds three items: the learner state (sharded arrays), the data
iterator state (JSON) and metadata (JSON: progress, class order, accuracy matrix so
far, config hash, jaxcl version). Task-boundary checkpoints are kept forever, the
others only as the latest `keep`. Restore takes abstract target shardings, so a run
saved on 8 devices resumes on 4 or 1; a checkpoint that fails to restore is passed
over, loudly, for the next older one, and nothing is ever deleted on failure.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import orbax.checkpoint as ocp
from absl import logging


class CheckpointError(RuntimeError):
  pass


class Restored(NamedTuple):
  step: int
  state: Any
  data_state: dict | None
  meta: dict
  skipped: list[int]


class Checkpointer:
  def __init__(self, directory: str, *, keep: int = 2, async_save: bool = True):
    self.directory = directory if "://" in directory else os.path.abspath(directory)
    self.keep = keep
    options = ocp.CheckpointManagerOptions(
      max_to_keep=None, enable_async_checkpointing=async_save, create=True
    )
    self._mgr = ocp.CheckpointManager(
      self.directory, options=options, item_names=("state", "data", "meta")
    )
    self._permanent: set[int] = set()
    self._pending_gc = False

  def steps(self) -> list[int]:
    """Committed steps, ascending (orbax never lists a temporary, half-written step)."""
    return sorted(self._mgr.all_steps(read=True))

  def save(
    self,
    step: int,
    state,
    *,
    data_state: dict | None,
    meta: dict,
    keep_forever: bool = False,
    wait: bool = False,
  ) -> None:
    self._collect_garbage()  # the previous save has committed by the time the next one starts
    if step in self.steps():
      logging.info("checkpoint step %d exists; not saving it again", step)
      return
    if keep_forever:
      self._permanent.add(step)
    meta = {**meta, "keep_forever": keep_forever}
    self._mgr.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state or {}),
        meta=ocp.args.JsonSave(meta),
      ),
    )
    self._pending_gc = True
    if wait:
      self.wait()

  def wait(self) -> None:
    self._mgr.wait_until_finished()
    self._collect_garbage()

  def _collect_garbage(self) -> None:
    """Deletes non-permanent steps beyond the newest `keep` (after saves have committed)."""
    if not self._pending_gc:
      return
    self._mgr.wait_until_finished()
    self._pending_gc = False
    transient = [s for s in self.steps() if not self._is_permanent(s)]
    for s in transient[: max(len(transient) - self.keep, 0)]:
      self._mgr.delete(s)

  def _is_permanent(self, step: int) -> bool:
    if step in self._permanent:
      return True
    try:
      meta = self._mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    except Exception:  # noqa: BLE001  (unreadable meta: keep it, never delete on doubt)
      return True
    if meta.get("keep_forever"):
      self._permanent.add(step)
    return bool(meta.get("keep_forever"))

  def restore(self, abstract_state, *, step: int | None = None) -> Restored | None:
    """Newest good checkpoint (or `step`) restored into `abstract_state`'s shardings."""
    self.wait()
    steps = self.steps()
    if not steps:
      return None
    candidates = [step] if step is not None else steps[::-1]
    skipped, errors = [], []
    for s in candidates:
      try:
        r = self._mgr.restore(
          s,
          args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore(),
          ),
        )
        if skipped:
          logging.warning(
            "resuming from checkpoint %d; newer checkpoints %s could not be restored: %s",
            s,
            skipped,
            "; ".join(errors),
          )
        return Restored(s, r.state, r.data or None, dict(r.meta), skipped)
      except Exception as e:  # noqa: BLE001  (any unreadable piece makes the step bad)
        logging.warning(
          "checkpoint %d in %s is unreadable (%s: %s); trying an older one",
          s,
          self.directory,
          type(e).__name__,
          e,
        )
        skipped.append(s)
        errors.append(f"{s}: {type(e).__name__}: {str(e)[:200]}")
    raise CheckpointError(
      f"no checkpoint in {self.directory} could be restored (tried {skipped}); nothing was "
      "deleted. Errors:\n  " + "\n  ".join(errors)
    )

  def close(self) -> None:
    self.wait()
    self._mgr.close()
