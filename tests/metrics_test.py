"""CIL metric formulas on hand-made matrices; writers."""

from __future__ import annotations

import json

import numpy as np

from jaxcl import metrics

NAN = np.nan
ACC = np.array([[90.0, NAN, NAN], [70.0, 80.0, NAN], [60.0, 85.0, 50.0]])
COUNTS = np.array([100, 300, 100])


def test_cil_summary_by_hand():
  s = metrics.cil_summary(ACC, COUNTS, task_il_acc=ACC + 5)
  # stage accuracies: 90; (70*100 + 80*300)/400 = 77.5; (60*100 + 85*300 + 50*100)/500 = 73.
  np.testing.assert_allclose(s["A_curve"], [90.0, 77.5, 73.0])
  assert s["A_last"] == 73.0
  np.testing.assert_allclose(s["A_avg"], (90 + 77.5 + 73) / 3)
  np.testing.assert_allclose(s["A_last_taskmean"], (60 + 85 + 50) / 3)
  # task 0: max(90, 70) - 60 = 30; task 1: max(80) - 85 = -5 -> mean 12.5 (max over rows, not diag)
  np.testing.assert_allclose(s["forgetting"], 12.5)
  # CODA: t=1: (90-70)/1 = 20; t=2: ((70-60) + (80-85))/2 = 2.5 -> mean 11.25
  np.testing.assert_allclose(s["forgetting_coda"], 11.25)
  np.testing.assert_allclose(s["backward_transfer"], ((60 - 90) + (85 - 80)) / 2)
  np.testing.assert_allclose(s["task_il_A_last"], 78.0)


def test_single_task():
  s = metrics.cil_summary(np.array([[42.0]]), np.array([10]))
  assert s["A_last"] == s["A_avg"] == 42.0 and s["forgetting"] == 0.0


def test_loss_summary():
  s = metrics.loss_summary(np.array([[2.0, 3.0], [2.5, 1.5]]))
  assert s == {"final_avg_loss": 2.0, "forgetting": [0.5]}


def test_writers(tmp_path):
  metrics.write_acc_matrix(str(tmp_path), ACC)
  assert (tmp_path / "acc_matrix.csv").read_text().splitlines() == [
    "after_task,task_0,task_1,task_2",
    "0,90.00,,",
    "1,70.00,80.00,",
    "2,60.00,85.00,50.00",
  ]
  assert (tmp_path / "acc_matrix.png").stat().st_size > 1000
  metrics.write_json(str(tmp_path / "r.json"), {"a": np.float32(1.5), "b": [NAN, 1]})
  assert json.loads((tmp_path / "r.json").read_text()) == {"a": 1.5, "b": [None, 1]}
  assert not list(tmp_path.glob("*.tmp"))
  w = metrics.MetricWriter(str(tmp_path))
  w.write(3, {"loss": np.float32(0.25), "task": 1})
  w.close()
  assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {
    "step": 3,
    "loss": 0.25,
    "task": 1,
  }
  assert list((tmp_path / "tb").iterdir())
