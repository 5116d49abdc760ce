"""The only module that talks to orbax: one `CheckpointManager` per run (DESIGN.md §6).

A checkpoint holds three items: the learner state (sharded arrays, `StandardSave`), the
data-iterator state and the run metadata (both JSON). Checkpoint ids are a save counter owned
here (`save_next`): 1, 2, 3, ... in the order of the saves, continuing after the newest id in
the directory, so no run derives ids from steps or tasks. Task-boundary checkpoints
(`keep_forever=True`) are never garbage-collected; of the others only the newest `keep`
survive. Whether a step is permanent is written into orbax's step metadata
(`custom_metadata`), so the policy holds across restarts. Restore takes an abstract target
carrying the new shardings, so a run saved on 8 devices resumes on 4 or 1; a checkpoint that
fails to restore on any process is passed over, loudly and by all processes together, for the
next older one, and nothing is ever deleted because it failed to restore.

Every process calls every method; orbax does the multi-host coordination. JSON items are
written by the primary process only, so `data_state` must be the same on all processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from jaxcl import multihost, user_errors

# Orbax's commit marker (orbax/checkpoint/_src/path/atomicity_types.py): written into a step
# directory when it is finalized. Locally orbax (>= 0.12) writes it into the
# `<step>.orbax-checkpoint-tmp-<time>` directory and then renames that to `<step>`; on GCS the
# step directory is written in place and this file alone marks it done.
_COMMIT_FILE = "commit_success.txt"


def _first_line(message, limit: int = 200) -> str:
  """The start of an error message (TensorStore's run to pages), for the console."""
  line = str(message).strip().splitlines()[0] if str(message).strip() else ""
  return line if len(line) <= limit else line[:limit] + " ..."


class CheckpointError(user_errors.UserError, RuntimeError):
  """Checkpoints exist but none can be restored (nothing was deleted)."""


class Restored(NamedTuple):
  step: int
  state: Any
  data_state: dict | None
  meta: dict
  skipped: list[int]  # newer steps that failed to restore and were passed over


@dataclasses.dataclass
class _PermanentPlusLatest:
  """Orbax preservation policy: every permanent step, plus the newest `keep` of the others."""

  keep: int
  permanent: set[int]

  def should_preserve(self, checkpoints, *, context) -> list[bool]:
    del context
    transient = sorted(c.step for c in checkpoints if c.step not in self.permanent)
    latest = set(transient[max(len(transient) - self.keep, 0) :])
    return [c.step in self.permanent or c.step in latest for c in checkpoints]


class Checkpointer:
  """One orbax CheckpointManager per run: learner state, data-iterator state, metadata."""

  def __init__(self, directory: str, *, keep: int = 2, async_save: bool = True):
    if "://" in directory:
      self.directory = directory  # gs:// and other remote paths go to orbax as they are
    else:
      self.directory = os.path.abspath(os.path.expanduser(directory))  # orbax needs it absolute
    self._root = epath.Path(self.directory)
    self._policy = _PermanentPlusLatest(keep=keep, permanent=set())
    options = ocp.CheckpointManagerOptions(
      preservation_policy=self._policy, enable_async_checkpointing=async_save, create=True
    )
    self._mgr = ocp.CheckpointManager(
      self.directory, options=options, item_names=("state", "data", "meta")
    )
    for step in self._mgr.all_steps():  # permanence of the steps on disk, from a previous run
      info = self._step_metadata(step)
      if (
        info is None
        or not self._is_committed(step)
        or (info.custom_metadata or {}).get("keep_forever", True)
      ):
        self._policy.permanent.add(step)  # half-written, unreadable or unmarked: keep it
    self._next_id = max(self._mgr.all_steps(), default=0) + 1

  def _step_metadata(self, step: int):
    """Orbax's `StepMetadata` of `step` (its `_CHECKPOINT_METADATA` file), None if unreadable."""
    try:
      return ocp.metadata.get_step_metadata(self._root / str(step))
    except Exception:  # noqa: BLE001  (missing or unreadable: a half-written or foreign dir)
      return None

  def _is_committed(self, step: int) -> bool:
    """Finalized by orbax: the commit file, or (orbax < 0.12, local) a recorded commit time."""
    if (self._root / str(step) / _COMMIT_FILE).exists():
      return True
    info = self._step_metadata(step)
    return info is not None and info.commit_timestamp_nsecs is not None

  def steps(self) -> list[int]:
    """All committed checkpoint steps, ascending; tmp and half-written directories are ignored.

    Orbax itself never lists `<step>.orbax-checkpoint-tmp-*` directories; a step directory
    without orbax's commit marker is dropped here.
    """
    return [s for s in sorted(self._mgr.all_steps()) if self._is_committed(s)]

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
    """Saves `state` (asynchronously unless `wait`); an existing `step` is replaced.

    Replacing matters after a fallback past a bad checkpoint (training reaches its step
    again) and when a task boundary falls on a step already saved periodically. A step once
    marked `keep_forever` stays permanent when it is replaced. `data_state` and `meta` are
    copied now: orbax serializes JSON items later, in its background thread, while the loops
    go on mutating their progress dicts.
    """
    data_state, meta = json.loads(json.dumps(data_state)), json.loads(json.dumps(meta))
    self._mgr.wait_until_finished()  # the previous save, and its garbage collection, are done
    if step in self._mgr.all_steps():
      logging.info("checkpoint step %d exists in %s; replacing it", step, self.directory)
      keep_forever = keep_forever or (step in self._policy.permanent and self._is_committed(step))
      self._mgr.delete(step)
    if keep_forever:
      self._policy.permanent.add(step)  # before save(): orbax picks stale steps at save time
    else:
      self._policy.permanent.discard(step)
    with self._disk_full_explained(f"checkpoint {step}"):
      self._mgr.save(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=ocp.args.JsonSave({"data_state": data_state}),
          meta=ocp.args.JsonSave(meta),
        ),
        custom_metadata={"keep_forever": keep_forever},
        force=True,  # we decide when to save; orbax would skip steps <= its latest one
      )
    self._next_id = max(self._next_id, step + 1)
    if wait:
      self.wait()

  def save_next(self, state, *, data_state: dict | None, meta: dict, **kwargs) -> int:
    """`save` under the next checkpoint id, which it returns (ids only grow, also past
    checkpoints that failed to restore: those are never overwritten)."""
    step = self._next_id
    self.save(step, state, data_state=data_state, meta=meta, **kwargs)
    return step

  def reached_preemption(self, step: int) -> bool:
    """True on every host at the step all hosts agreed to save at after a preemption notice.

    Multi-process only (JAX's preemption sync service, on by default on TPU pods); False when
    the job is a single process. Call it at every step.
    """
    return self._mgr.reached_preemption(step)

  def wait(self) -> None:
    """Blocks until async saves (and the deletions of stale steps) are committed."""
    with self._disk_full_explained("a checkpoint"):
      self._mgr.wait_until_finished()

  @contextlib.contextmanager
  def _disk_full_explained(self, what: str):
    """A full disk (OSError ENOSPC) becomes a `WorkdirError` saying what to do; the
    half-written step is never picked by a restore (no commit marker)."""
    try:
      yield
    except OSError as e:
      if e.errno not in user_errors.DISK_FULL:
        raise
      raise user_errors.disk_full(e, what, self.directory) from e

  def restore(self, abstract_state, *, step: int | None = None) -> Restored | None:
    """Restores into `abstract_state` (ShapeDtypeStructs with the target shardings), or into
    `abstract_state(meta)` when it is a callable: the target of each candidate step from that
    step's metadata (a growth run's checkpoints hold different model shapes).

    With `step=None`, the newest checkpoint that every process can read: a step that fails to
    restore on any process is logged and passed over, by all processes together, for the next
    older one. So the hosts of a pod always resume from the same step, even when one of them
    has a transient read error. Returns None when there are no checkpoints
    at all; raises CheckpointError when there are some but none (or not `step`) can be restored.
    """
    self.wait()
    steps = self.steps()
    if step is not None and not multihost.all_true(step in steps):
      raise CheckpointError(f"no committed checkpoint at step {step} in {self.directory}: {steps}")
    if multihost.all_max(steps[-1] if steps else -1) < 0:
      return None
    errors = []
    bound = steps[-1] if step is None else step
    while bound >= 0:
      # The candidate: the newest step at or below `bound` that every process lists.
      s = multihost.all_min(max((x for x in steps if x <= bound), default=-1))
      if s < 0 or (step is not None and s != step):
        break
      restored, error = self._read_step(s, abstract_state, steps)
      if multihost.all_true(error is None):
        skipped = [e[0] for e in errors]
        if skipped:
          logging.warning("restored step %d; passed over bad newer steps %s", s, skipped)
        return restored._replace(skipped=skipped)
      errors.append((s, error or "another process could not restore it"))
      logging.warning(
        "CHECKPOINT STEP %d in %s CANNOT BE RESTORED (%s); %s",
        s,
        self.directory,
        _first_line(errors[-1][1]),
        "trying the next older one" if step is None else "none left to try",
      )
      logging.info("checkpoint step %d: the full error:\n%s", s, errors[-1][1])
      bound = s - 1
    raise CheckpointError(
      f"no good checkpoint in {self.directory}: tried steps {[e[0] for e in errors]}, all failed;"
      " nothing was deleted. If the storage was only unreachable, run again; otherwise start over"
      " with --config.resume=false (the checkpoints are moved aside, not deleted) or a new"
      " --workdir (log.txt has each step's full error).\n  "
      + "\n  ".join(f"step {s}: {_first_line(msg)}" for s, msg in errors)
    )

  def _read_step(self, step: int, abstract_state, steps: list[int]):
    """(Restored, None) or (None, the error): one step read by this process alone.

    Orbax's item handlers, not the manager: the manager's restore ends in a barrier across
    processes, which a process that failed would never reach, so the others would hang there
    instead of agreeing to pass the step over.
    """
    if step not in steps:
      return None, "not committed here"
    root = self._root / str(step)
    try:
      meta = ocp.JsonCheckpointHandler().restore(root / "meta", args=ocp.args.JsonRestore())
      target = abstract_state(dict(meta)) if callable(abstract_state) else abstract_state
      handler = ocp.StandardCheckpointHandler()
      try:
        state = handler.restore(root / "state", args=ocp.args.StandardRestore(target))
      finally:
        handler.close()
      data = ocp.JsonCheckpointHandler().restore(root / "data", args=ocp.args.JsonRestore())
      return Restored(step, state, data["data_state"], dict(meta), []), None
    except Exception as e:  # noqa: BLE001  (any unreadable piece makes the step bad)
      return None, f"{type(e).__name__}: {str(e)[:300]}"

  def read_meta(self, step: int | None = None) -> dict | None:
    """The metadata item of `step` (default: the newest committed), None without checkpoints.

    Lets a run decide the shape of its restore target first (growth runs change shape).
    """
    self.wait()
    steps = self.steps()
    if not steps:
      return None
    step = steps[-1] if step is None else step
    r = self._mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(r.meta)

  def read_state(self, step: int | None = None):
    """The learner state of `step` (default: the newest committed) as host numpy arrays.

    For inspecting and comparing checkpoints without building the model; no fallback. Works
    whatever mesh or number of processes wrote the checkpoint (restored onto one device).
    """
    self.wait()
    step = self.steps()[-1] if step is None else step
    # The item's own metadata (the manager's needs a handler registry) with one device as the
    # target: the shardings stored in the checkpoint name devices this process may not have.
    with ocp.StandardCheckpointer() as reader:
      meta = reader.metadata(self._root / str(step) / "state").item_metadata
    meta = getattr(meta, "tree", meta)
    one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one),
      meta,
      is_leaf=lambda m: hasattr(m, "shape"),
    )
    r = self._mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    return jax.tree.map(np.asarray, r.state)

  def close(self) -> None:
    self.wait()
    self._mgr.close()
