"""CIL / CPT metric formulas on hand-made matrices, and the run-output writers."""

from __future__ import annotations

import json
import struct

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from tensorboardX.proto import event_pb2

from jaxcl import metrics, writers

NAN = np.nan
# Task 0 gains from learning task 1 (60 -> 80) before it is forgotten (-> 50), so the max-based
# forgetting differs from a diagonal-based one.
ACC = np.array(
  [
    [60.0, NAN, NAN],
    [80.0, 90.0, NAN],
    [50.0, 70.0, 40.0],
  ]
)
COUNTS = np.array([100, 300, 100])  # unequal: the sample-weighted accuracy != the task mean
TASK_IL = np.array(
  [
    [100.0, NAN, NAN],
    [90.0, 95.0, NAN],
    [80.0, 90.0, 70.0],
  ]
)


def test_cil_summary_by_hand():
  s = metrics.cil_summary(ACC, COUNTS, task_il_acc=TASK_IL)
  # stage 0: 60; stage 1: (80*100 + 90*300) / 400 = 87.5; stage 2: (50*100 + 70*300 + 40*100)
  # / 500 = 60.
  np.testing.assert_allclose(s["A_curve"], [60.0, 87.5, 60.0])
  np.testing.assert_allclose(s["A_last"], 60.0)
  np.testing.assert_allclose(s["A_avg"], (60.0 + 87.5 + 60.0) / 3)  # 69.1667
  # per-task mean (L2P A_N): (50 + 70 + 40) / 3 = 53.33, not the weighted 60.
  np.testing.assert_allclose(s["A_last_taskmean"], 160.0 / 3)
  # task 0: max(60, 80) - 50 = 30 (the diagonal alone would give 10); task 1: 90 - 70 = 20.
  np.testing.assert_allclose(s["forgetting"], 25.0)
  # CODA: t=1: (60 - 80) / 1 = -20; t=2: ((80 - 50) + (90 - 70)) / 2 = 25 -> (-20 + 25) / 2.
  np.testing.assert_allclose(s["forgetting_coda"], 2.5)
  # (80*100 + 90*300 + 70*100) / 500
  np.testing.assert_allclose(s["task_il_A_last"], 84.0)
  assert all(type(v) is float for k, v in s.items() if k != "A_curve")
  assert all(type(v) is float for v in s["A_curve"])


def test_cil_summary_reads_only_the_lower_triangle():
  filled = np.where(np.isnan(ACC), 0.0, ACC)
  assert metrics.cil_summary(filled, COUNTS) == metrics.cil_summary(ACC, COUNTS)


def test_cil_summary_without_task_il_has_no_task_il_key():
  assert "task_il_A_last" not in metrics.cil_summary(ACC, COUNTS)


def test_cil_summary_keeps_units():
  fraction = metrics.cil_summary(ACC / 100, COUNTS)
  percent = metrics.cil_summary(ACC, COUNTS)
  np.testing.assert_allclose(fraction["A_last"] * 100, percent["A_last"])
  np.testing.assert_allclose(fraction["forgetting"] * 100, percent["forgetting"])


def test_single_task():
  s = metrics.cil_summary(np.array([[42.0]]), np.array([10]), task_il_acc=np.array([[50.0]]))
  assert s == {
    "A_last": 42.0,
    "A_avg": 42.0,
    "A_last_taskmean": 42.0,
    "forgetting": 0.0,
    "forgetting_coda": 0.0,
    "A_curve": [42.0],
    "task_il_A_last": 50.0,
  }


def test_cil_summary_rejects_bad_shapes():
  with pytest.raises(ValueError, match="counts"):
    metrics.cil_summary(ACC, COUNTS[:2])
  with pytest.raises(ValueError, match="square"):
    metrics.cil_summary(ACC[:2], COUNTS)


def test_loss_summary_by_hand():
  loss = np.array([[2.0, 3.0, 3.5], [2.4, 1.5, 3.2], [2.6, 1.9, 1.2]])
  s = metrics.loss_summary(loss)
  # (2.6 + 1.9 + 1.2) / 3 = 1.9; domain 0: 2.6 - 2.0; domain 1: 1.9 - 1.5.
  np.testing.assert_allclose(s["final_avg_loss"], 1.9)
  np.testing.assert_allclose(s["forgetting"], [0.6, 0.4])
  assert metrics.loss_summary(np.array([[2.0]])) == {"final_avg_loss": 2.0, "forgetting": []}


def _tb_scalars(tb_dir) -> dict[str, list[tuple[int, float]]]:
  """Reads TFRecord-framed Event protos (u64 length, u32 crc, data, u32 crc)."""
  out = {}
  for path in tb_dir.iterdir():
    data = path.read_bytes()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos : pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
      pos += 12 + length + 4
      for value in event.summary.value:
        out.setdefault(value.tag, []).append((event.step, value.simple_value))
  return out


def test_metric_writer_jsonl_and_tensorboard(tmp_path):
  with writers.MetricWriter(str(tmp_path)) as w:
    w.write(3, {"task": 1, "loss": np.float32(0.25), "lr": jnp.float32(0.5), "phase": "train"})
    w.write(np.int64(7), {"loss": float("nan"), "finite": np.bool_(False)})
    w.flush()
  lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert lines == [
    {"step": 3, "task": 1, "loss": 0.25, "lr": 0.5, "phase": "train"},
    {"step": 7, "loss": None, "finite": False},
  ]
  tb = _tb_scalars(tmp_path / "tb")
  assert tb["task"] == [(3, 1.0)] and tb["lr"] == [(3, 0.5)] and tb["finite"] == [(7, 0.0)]
  assert tb["loss"][0] == (3, 0.25) and np.isnan(tb["loss"][1][1])
  assert "phase" not in tb  # strings go only to the jsonl


def test_metric_writer_appends_on_reopen_and_close_is_idempotent(tmp_path):
  for step in (1, 2):
    w = writers.MetricWriter(str(tmp_path))
    w.write(step, {"loss": 1.0})
    w.close()
    w.close()
  steps = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert steps == [1, 2]


def test_metric_writer_disabled_writes_nothing(tmp_path):
  with writers.MetricWriter(str(tmp_path / "run"), enabled=False) as w:
    w.write(1, {"loss": 1.0})
  assert not (tmp_path / "run").exists()


def test_metric_writer_rejects_step_among_scalars(tmp_path):
  with writers.MetricWriter(str(tmp_path)) as w, pytest.raises(ValueError, match="step"):
    w.write(1, {"step": 2})


def test_acc_matrix_csv_and_png(tmp_path):
  writers.write_acc_matrix(str(tmp_path), ACC)
  assert (tmp_path / "acc_matrix.csv").read_text() == (
    "after_task,task_0,task_1,task_2\n0,60.00,,\n1,80.00,90.00,\n2,50.00,70.00,40.00\n"
  )
  png = tmp_path / "acc_matrix.png"
  assert png.stat().st_size > 1000
  with Image.open(png) as image:
    assert image.format == "PNG" and min(image.size) > 100


def test_write_matrix_csv_for_a_loss_matrix(tmp_path):
  path = tmp_path / "loss_matrix.csv"
  writers.write_matrix_csv(str(path), np.array([[2.0, 3.125], [2.5, 1.5]]), "after_domain", "d")
  # 3.125 -> "3.12" (round half to even at 2 decimals)
  assert path.read_text() == "after_domain,d0,d1\n0,2.00,3.12\n1,2.50,1.50\n"


def test_loss_curves_png(tmp_path):
  curve = [
    {"step": 10, "tokens": 1000, "domain": "prose", "val_loss": {"prose": 3.0, "code": 3.5}},
    {"step": 20, "tokens": 2000, "domain": "prose", "val_loss": {"prose": 2.5, "code": 3.3}},
    {"step": 30, "tokens": 3000, "domain": "code", "val_loss": [2.7, 2.4]},
  ]
  writers.write_loss_curves(str(tmp_path), curve, ["prose", "code"])
  with Image.open(tmp_path / "loss_curves.png") as image:
    assert image.format == "PNG" and min(image.size) > 100


def test_write_json_converts_and_nulls_non_finite(tmp_path):
  path = tmp_path / "results.json"
  obj = {"a": np.float32(1.5), "b": [NAN, 1], "c": np.array([[1, 2]]), "d": float("inf")}
  writers.write_json(str(path), obj)
  assert json.loads(path.read_text()) == {"a": 1.5, "b": [None, 1], "c": [[1, 2]], "d": None}
  assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no temporary left


def test_write_json_failure_keeps_the_old_file(tmp_path):
  path = tmp_path / "results.json"
  writers.write_json(str(path), {"ok": 1})
  with pytest.raises(TypeError):
    writers.write_json(str(path), {"ok": 2, "bad": object()})
  assert json.loads(path.read_text()) == {"ok": 1}
  assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_cil_summary_reads_the_json_form_of_the_matrix():
  """results.json stores the matrix as lists with null above the diagonal and counts as ints."""
  as_json = [[None if np.isnan(x) else int(x) for x in row] for row in ACC]
  assert metrics.cil_summary(as_json, COUNTS.tolist()) == metrics.cil_summary(ACC, COUNTS)


def test_a_task_that_improves_at_the_end_has_negative_forgetting():
  """The best earlier accuracy excludes the last row: a final gain is negative forgetting."""
  acc = np.array([[60.0, NAN, NAN], [50.0, 90.0, NAN], [70.0, 80.0, 40.0]])
  # task 0: max(60, 50) - 70 = -10; task 1: 90 - 80 = 10.
  assert metrics.max_forgetting(acc) == 0.0
  acc[2, 1] = 95.0  # task 1: 90 - 95 = -5
  np.testing.assert_allclose(metrics.max_forgetting(acc), -7.5)


@pytest.mark.parametrize("name", ["acc", "task_il_acc"])
def test_shape_errors_name_the_matrix(name):
  bad = {"acc": ACC, "task_il_acc": TASK_IL, name: ACC[:2]}
  with pytest.raises(ValueError, match=f"^{name} must be a non-empty square"):
    metrics.cil_summary(bad["acc"], COUNTS, task_il_acc=bad["task_il_acc"])
  with pytest.raises(ValueError, match="task_il_acc shape"):
    metrics.cil_summary(ACC, COUNTS, task_il_acc=np.zeros((2, 2)))
