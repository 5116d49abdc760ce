"""Every method and language model reproduces commit a60afed (issue 20's regression fixture).

tests/fixtures/regression_a60afed.npz holds, per case, fixed weights (by parameter path),
fixed inputs and what a60afed computed from them: the loss and its aux values, the logits of
`predict` and the gradients w.r.t. the trainable parameters (tests/regression.py explains the
layout and how the file was made; it was generated on a60afed with
`PYTHONPATH=. python tests/regression.py --regenerate` and is never regenerated after).

When the engine's API changes, adapt `cil_case` / `lm_case` in tests/regression.py. When a
parameter path changes, map it below; never touch the stored numbers.
"""

from __future__ import annotations

import numpy as np
import pytest
import regression

# (regex over a variable path of today's model, the path stored on a60afed), applied in order
# to weights and gradients, e.g. (r"^backbone/blocks/(\d+)/attn/", r"backbone/blocks/\1/attn/").
RENAMES: tuple[tuple[str, str], ...] = ()


@pytest.fixture(scope="module")
def fixture():
  return regression.read()


@pytest.mark.parametrize("name", regression.CASES)
def test_reproduces_a60afed(name, fixture):
  case = regression.build(name, abstract=True)
  regression.load_weights(case, fixture, name, RENAMES)
  got = regression.outputs(case, fixture[name]["inputs"], RENAMES)
  want = fixture[name]["outputs"]
  assert sorted(got) == sorted(want)
  for key, value in want.items():
    np.testing.assert_allclose(got[key], value, **regression.TOL, err_msg=f"{name}: {key}")
