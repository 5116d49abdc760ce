"""Train-step throughput of the prompt methods next to fine-tuning, and the query pass's share.

  python bench/prompt_throughput.py [--variants=Ti/16,B/16] [--image_size=224] [--batch=8]

For each method (its `cifar100` preset: the paper's prompt sizes, layers and clipping, random
weights) and ViT variant: examples/s of the jitted train step (after one compiling step), and
the time of the frozen query pass alone (the un-prompted ViT forward every prompt method runs
before its prompted pass) as a fraction of the method's step. Figures are for this machine;
compare ratios within one run.
"""

from __future__ import annotations

import argparse

import jax
import learner
from flax import nnx

from jaxcl.data.transforms import scale_images
from jaxcl.methods import prompts

CONFIGS = {"finetune": "finetune", "l2p": "l2p", "dualprompt": "dualprompt", "coda": "coda_prompt"}


def bench(config_name: str, variant: str, image_size: int, batch: int, steps: int) -> dict:
  overrides = {"model.variant": variant, "model.init": "", "data.image_size": image_size}
  config, _, graphdef, state, train, data = learner.build(
    config_name, "cifar100", overrides, batch=batch
  )
  holder = {"state": state}

  def one_step():
    holder["state"], metrics = train(holder["state"], data)
    return metrics["loss"]

  step_s = learner.seconds_per_call(one_step, steps)
  vit = nnx.merge(graphdef, holder["state"].params, holder["state"].frozen)
  vit = vit.backbone if hasattr(vit, "backbone") else vit
  query = nnx.jit(lambda v, x: prompts.query(v, scale_images(x, config.data.scale)))
  query_s = learner.seconds_per_call(lambda: query(vit, data["image"]), steps)
  return {"ex_s": batch / step_s, "step_s": step_s, "query_s": query_s}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--variants", default="Ti/16,B/16")
  parser.add_argument("--methods", default=",".join(CONFIGS))
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--steps", type=int, default=3)
  args = parser.parse_args()
  print(
    f"jax {jax.__version__} on {jax.devices()[0].platform}, batch {args.batch}, "
    f"{args.image_size}x{args.image_size}, {args.steps} timed steps"
  )
  print(f"{'variant':8} {'method':11} {'ex/s':>8} {'s/step':>8} {'query s':>8} {'query share':>12}")
  rows = []
  for variant in args.variants.split(","):
    for name in args.methods.split(","):
      r = bench(CONFIGS[name], variant, args.image_size, args.batch, args.steps)
      rows.append({"variant": variant, "method": name, **r})
      share = "" if name == "finetune" else f"{100 * r['query_s'] / r['step_s']:11.1f}%"
      print(
        f"{variant:8} {name:11} {r['ex_s']:8.2f} {r['step_s']:8.2f} {r['query_s']:8.2f} {share:>12}"
      )

  learner.write_report("prompt_throughput", args, rows)


if __name__ == "__main__":
  main()
