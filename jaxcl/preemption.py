"""Preemption: SIGTERM or a TPU maintenance notice makes a run save and exit 75 (EX_TEMPFAIL),
at whatever point it arrives: during a training step, an evaluation, between tasks or domains.

One process acts on SIGTERM itself (the handler only sets a flag). On a pod, JAX's preemption
service owns SIGTERM (and the TPU notice): once a notice reaches any host, the service picks a
sync point every host reaches at the same call, so all save the same state and stop together
(orbax's `reached_preemption`). The service counts calls, not training steps: a sync point
chosen during an evaluation is the next call on every host, the boundary check after it.
"""

from __future__ import annotations

import signal

import jax
from absl import logging

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: stopped by SIGTERM/preemption after saving; rerun to resume
PREEMPTED_MESSAGE = (
  "preempted (SIGTERM or the TPU preemption notice): checkpoint of step %d saved; rerun the same"
  " command with the same --workdir to resume"
)


class Preempted(SystemExit):
  def __init__(self):
    super().__init__(PREEMPTED_EXIT_CODE)


class PreemptionWatch:
  """`watch(global_step)` in the step loop, `watch.at_boundary()` after an evaluation and
  between tasks: whether to save now and stop (exit PREEMPTED_EXIT_CODE).

  Every process must make the same calls in the same order (they are counted). `close()`
  restores the SIGTERM handler of a single process.
  """

  def __init__(self, ckpt):
    self.ckpt, self.signal, self.calls = ckpt, None, 0
    self.multihost = jax.process_count() > 1
    self._old = None if self.multihost else signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame) -> None:
    del frame
    self.signal = signum

  def _reached(self) -> bool:
    self.calls += 1
    if self.multihost:
      return self.ckpt.reached_preemption(self.calls)
    return self.signal is not None

  def __call__(self, global_step: int) -> bool:
    del global_step  # the service syncs on the call count, the same on every host
    return self._reached()

  def at_boundary(self) -> bool:
    return self._reached()

  def close(self) -> None:
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)
      self._old = None


def stop_if_preempted(watch: PreemptionWatch, ckpt, step: int, more_to_do: bool) -> None:
  """At a task / domain boundary (its checkpoint just saved): a preemption that arrived outside
  the step loop (during the evaluation, say) stops the run here, exit code 75, unless nothing
  is left to do (the run then ends normally, its last checkpoint saved)."""
  if watch.at_boundary() and more_to_do:
    ckpt.wait()
    logging.warning(PREEMPTED_MESSAGE, step)
    raise Preempted()
