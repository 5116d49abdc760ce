"""Continual pretraining of a language model over a sequence of domains.

  python -m jaxcl.main --config=configs/cpt.py                  # code -> docstrings -> reference
  python -m jaxcl.main --config=configs/cpt.py:prose_code       # prose -> code
  python -m jaxcl.main --config=configs/cpt.py:union            # the union baseline
  python -m jaxcl.main --config=configs/cpt.py --config.replay.fraction=0.05
  python -m jaxcl.main --config=configs/cpt.py --config.schedule.name=infinite_cosine
  python -m jaxcl.main --config=configs/cpt.py --config.schedule.name=wsd
  python -m jaxcl.main --config=configs/cpt.py:mlm              # BERT objective

Presets:
- default: three domains of real text that come with Python (no download): Python code (the
  stdlib's source, docstrings stripped), then English docstrings (the stdlib's), then the
  language reference (`help()`'s pydoc topics): a strong shift (code -> English, like Pile ->
  German in Ibrahim et al. 2024) and a weak one (docstrings -> reference, like Pile ->
  SlimPajama), so the loss matrix shows the first domain forgotten across two shifts. Byte
  tokens, a 4 x 128 GPT-2-style model, 200 steps of 16 x 128 tokens per domain, re-warmed
  cosine per domain (Gupta et al. 2023: warmup 1%, eta_max -> 0.1 eta_max), fresh AdamW
  moments per domain, no replay. Minutes on a 2-core CPU.
- prose_code: the earlier two-domain default, English prose (stdlib docstrings + pydoc topics)
  then Python code.
- union: the union baseline of Ibrahim et al. 2024: one cosine over the union of the default's
  three domains (windows shuffled together), the same token budget (3 x 200 steps); its
  final average loss is what the continual recipes are measured against.
Infinite and WSD schedules anneal every domain as an evaluation branch (Ibrahim et al. 2024
§7): the annealed weights are evaluated (the domain's loss-matrix row) and saved under
anneal_branches/<domain>, and the next domain continues from the state saved before the anneal,
at the constant rate. The other choice, `--config.schedule.anneal_every_domain=false`, anneals
only after the last domain; `--config.train.anneal_branch=false` continues from the annealed
weights instead (not the paper's semantics).

The README table (issue 21: each row over seeds 0, 1, 2, a larger validation set; compare the
continual rows' final_avg_loss with the union baseline's):

  for s in 0 1 2; do v="--config.seed=$s --config.data.valid_sequences=256"
    python -m jaxcl.main --config=configs/cpt.py $v --workdir=runs/cpt-rewarm-s$s
    python -m jaxcl.main --config=configs/cpt.py $v --config.replay.fraction=0.05 \
      --workdir=runs/cpt-replay05-s$s
    python -m jaxcl.main --config=configs/cpt.py $v --config.replay.fraction=0.25 \
      --workdir=runs/cpt-replay25-s$s
    python -m jaxcl.main --config=configs/cpt.py $v --config.schedule.name=infinite_cosine \
      --workdir=runs/cpt-infinite-s$s
    python -m jaxcl.main --config=configs/cpt.py $v --config.schedule.name=wsd \
      --workdir=runs/cpt-wsd-s$s
    python -m jaxcl.main --config=configs/cpt.py:union $v --workdir=runs/cpt-union-s$s
  done; python -m jaxcl.compare 'runs/cpt-*'

- smoke: seconds, for tests (one stdlib package per domain, a tiny model).
- mlm: the same stream with the masked-LM objective on a BERT-layout encoder.
- pile_slimpajama_405m: the shape of Ibrahim et al. 2024 ("Simple and Scalable Strategies to
  Continually Pre-train LLMs"): a 405M Llama, Pile -> SlimPajama-like two-domain sequence from
  user-prepared token files (`--config.data.domains=bin:/data/pile.bin,bin:/data/slimpj.bin`,
  GPT-NeoX tokens as uint16), 5% replay, the infinite schedule (warmup 1%, inverse-sqrt
  cooldown over 60% of the first domain to eta_const = 1.65e-4, constant, exponential anneal
  to 3e-5 over the last 14% of each domain as an evaluation branch), eta_max 3e-4, batch
  1104 x 2048 tokens reached by gradient accumulation over 23 microbatches (3 sequences per
  chip on a v5e-16). The paper
  reports that 5% replay plus re-warming matches the union-trained baseline's average loss.
"""

from jaxcl import config_lib

common = config_lib.sibling_module(__file__, "_common")


def default(c):
  c.data.domains = "code,docstrings,reference"
  c.data.seq_len = 128
  c.data.batch_size = 16
  c.model.preset = "mini"
  c.schedule.name = "rewarm_cosine"
  c.schedule.eta_max = 1e-3
  c.schedule.eta_min = 1e-4
  c.schedule.eta_const = 5.5e-4
  c.train.steps_per_domain = 200


def prose_code(c):
  default(c)
  c.data.domains = "prose,code"


def union(c):
  default(c)
  c.data.union = True
  c.schedule.name = "cosine"  # warmup 1% of all steps, one cosine to eta_min


def smoke(c):
  common.text_smoke(c)
  c.schedule.name = "rewarm_cosine"
  c.replay.fraction = 0.25  # 2 of 8 rows from the earlier domain
  c.train.steps_per_domain = 6
  c.train.log_every_steps = 2
  c.eval.every_steps = 3
  c.eval.dense_steps = 2
  c.eval.dense_every = 1


def mlm(c):
  default(c)
  c.train.objective = "mlm"
  c.model.preset = "small"
  c.data.mlm_probability = 0.15


def pile_slimpajama_405m(c):
  c.data.domains = "bin:pile_train.bin,bin:slimpajama_train.bin"
  c.data.tokenizer = "20B_tokenizer.json"  # GPT-NeoX
  c.data.bin_dtype = "uint16"
  c.data.seq_len = 2048
  c.data.batch_size = 1104
  c.data.eval_batch_size = 256
  c.data.valid_sequences = 1024
  c.model.preset = "llama_405m"
  c.model.dtype = "bfloat16"
  c.model.remat = "full"
  # Pallas splash attention on TPU (the einsum elsewhere): at 8 sequences per v5e chip the train
  # step holds 3.85 GiB instead of the einsum's 5.97 (MaxText at this shape: flash 4.45, einsum
  # 5.63; tpu/README.md has the commands).
  c.model.attention = "auto"
  # 1104 = 23 x 48: on 16 chips 3 sequences per chip in each of 23 accumulated microbatches.
  c.train.microbatches = 23
  c.train.loss_chunk = 512  # the cross-entropy over 4 chunks: no [B, 2048, 50304] float32 logits
  c.optim.update(name="adamw", b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip_norm=1.0)
  c.schedule.update(name="infinite_invsqrt", eta_max=3e-4, eta_const=1.65e-4, eta_min=3e-5)
  c.schedule.anneal_every_domain = True  # each domain's anneal a branch: the paper's semantics
  c.train.anneal_branch = True
  c.replay.fraction = 0.05
  c.train.steps_per_domain = 132_366  # ~300B tokens / (1104 x 2048)
  c.train.log_every_steps = 100
  c.eval.every_steps = 2000
  c.eval.dense_steps = 2000
  c.eval.dense_every = 250
  c.checkpoint.every_steps = 1000


def get_config(arg=None):
  c = config_lib.cpt_base_config()
  c.name = "cpt"
  presets = {
    "default": default,
    "prose_code": prose_code,
    "union": union,
    "smoke": smoke,
    "mlm": mlm,
    "pile_slimpajama_405m": pile_slimpajama_405m,
  }
  return config_lib.choose_preset(c, arg, presets)
