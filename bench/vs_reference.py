"""jaxcl next to the reference code on the same machine, one process at a time: the README's
Performance table (issue 23).

  python bench/vs_reference.py [--steps=5] [--rows=gpt,vit]
      [--torch_python=/path/to/bench-venv/bin/python --nanogpt=/path/to/nanoGPT]

Rows (batch 8, float32):
- gpt: nanoGPT's 6L x 6H x 384 at seq 256 on bytes, AdamW + clip 1.0: the plain-JAX ceiling
  (bench/plain_gpt.py), jaxcl's configs/cpt.py step (`nanogpt_6x384`), and nanoGPT's own
  `model.py` step in eager PyTorch.
- vit: ViT-B/16 full fine-tuning at 224²: jaxcl's `finetune` (cifar100 preset) and timm's
  `vit_base_patch16_224` with AdamW.

PyTorch (with timm) lives only in a separate bench venv passed as `--torch_python`, never in
jaxcl's environment or CI; nanoGPT is a local checkout (`--nanogpt`, its `model.py`). Rows whose
reference is not given print "-". LAMDA-PILOT's L2P step is not wired in (see the README).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap

import jax
import learner
import numpy as np
import plain_gpt
import step_throughput

BATCH = 8
NANOGPT = dict(layers=6, width=384, heads=6, seq=256)

TIME_STEPS = """
for _ in range(2):
  step()
start = time.perf_counter()
for _ in range({steps}):
  step()
"""  # appended to each reference script: two warm-up steps, then the timed ones

TORCH_GPT = """
import sys, time, torch
sys.path.insert(0, {nanogpt!r})
from model import GPT, GPTConfig
torch.manual_seed(0)
cfg = GPTConfig(block_size={seq}, vocab_size=256, n_layer={layers}, n_head={heads},
                n_embd={width}, dropout=0.0, bias=True)
model = GPT(cfg)
opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
x = torch.randint(0, 256, ({batch}, {seq} + 1))
def step():
  _, loss = model(x[:, :-1], x[:, 1:])
  loss.backward()
  torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
  opt.step()
  opt.zero_grad(set_to_none=True)
"""
TORCH_GPT += TIME_STEPS + "print({batch} * {seq} * {steps} / (time.perf_counter() - start))\n"

TORCH_VIT = """
import time, torch, timm
torch.manual_seed(0)
model = timm.create_model("vit_base_patch16_224", num_classes=100)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
x, y = torch.rand({batch}, 3, 224, 224), torch.randint(0, 100, ({batch},))
def step():
  loss = torch.nn.functional.cross_entropy(model(x), y)
  loss.backward()
  opt.step()
  opt.zero_grad(set_to_none=True)
"""
TORCH_VIT += TIME_STEPS + "print((time.perf_counter() - start) / {steps})\n"


def torch_figure(python: str, script: str) -> float | None:
  """The number a reference script prints, run in the bench venv's Python (None without one)."""
  if not python:
    return None
  out = subprocess.run([python, "-c", textwrap.dedent(script)], capture_output=True, text=True)
  if out.returncode:
    print(out.stderr[-2000:], file=sys.stderr)
    return None
  return float(out.stdout.split()[-1])


def jaxcl_gpt(steps: int) -> float:
  """Tokens/s of configs/cpt.py's train step on `nanogpt_6x384` (layers under scan)."""
  _, vocab, _, _, state, train_step, _ = step_throughput._gpt(
    "nanogpt_6x384", BATCH, NANOGPT["seq"], True
  )
  tokens = np.random.default_rng(0).integers(0, vocab, (BATCH, NANOGPT["seq"] + 1), np.int32)
  batch = {"tokens": jax.numpy.asarray(tokens)}
  box = [state]

  def call():
    box[0], m = train_step(box[0], batch)
    return m

  return BATCH * NANOGPT["seq"] / learner.seconds_per_call(call, steps)


def jaxcl_vit(steps: int) -> float:
  """Seconds per ViT-B/16 fine-tuning step (configs/finetune.py:cifar100, random weights)."""
  built = learner.build("finetune", "cifar100", {"model.init": ""}, batch=BATCH)
  box = [built.state]

  def call():
    box[0], m = built.train_step(box[0], built.batch)
    return m

  return learner.seconds_per_call(call, steps)


def ratio(a, b) -> str:
  return "-" if a is None or b is None else f"{a / b:.2f}x"


def fmt(x, spec) -> str:
  return "-" if x is None else format(x, spec)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--rows", default="gpt,vit")
  parser.add_argument("--torch_python", default="")
  parser.add_argument("--nanogpt", default="")
  args = parser.parse_args()
  rows = args.rows.split(",")
  print("| workload | reference | plain JAX | jaxcl | jaxcl / reference | jaxcl / plain JAX |")
  print("|---|---|---|---|---|---|")
  if "gpt" in rows:
    kw = dict(NANOGPT, batch=BATCH, steps=args.steps)
    ceiling = plain_gpt.tokens_per_second(**kw, attention="einsum", dtype="float32")
    ours = jaxcl_gpt(args.steps)
    ref = None
    if args.nanogpt:
      ref = torch_figure(args.torch_python, TORCH_GPT.format(nanogpt=args.nanogpt, **kw))
    print(
      f"| GPT 6L/6H/384 seq 256, tok/s | nanoGPT {fmt(ref, ',.0f')} | {ceiling:,.0f} | "
      f"{ours:,.0f} | {ratio(ours, ref)} | {ratio(ours, ceiling)} |"
    )
  if "vit" in rows:
    ref = torch_figure(args.torch_python, TORCH_VIT.format(batch=BATCH, steps=args.steps))
    ours = jaxcl_vit(args.steps)
    speed = "-" if ref is None else f"{ref / ours:.2f}x"  # seconds: reference / ours = speed
    print(
      f"| ViT-B/16 fine-tune step 224², s | timm {fmt(ref, '.2f')} | - | {ours:.2f} | {speed} | - |"
    )
  print(f"(batch {BATCH}, float32, {args.steps} timed steps, {os.cpu_count()} cores, "
        f"{jax.devices()[0].platform})")  # fmt: skip


if __name__ == "__main__":
  main()
