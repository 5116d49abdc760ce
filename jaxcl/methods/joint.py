"""Joint training: every class in one task, the upper bound for class-incremental learning.

The same model and loss as `finetune`; the loop merges all tasks into one.
"""

from jaxcl.methods import finetune


def make(config):
  return finetune.make(config)._replace(single_task=True)
