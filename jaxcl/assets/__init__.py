"""Files shipped inside jaxcl: the embedded pretrained ViT (see README.md in this folder)."""

import os

from jaxcl import user_errors

EMBEDDED_VIT = "vit_glyphs.npz"


def embedded_vit_path() -> str:
  path = os.path.join(os.path.dirname(__file__), EMBEDDED_VIT)
  if not os.path.exists(path):
    raise user_errors.MissingInput(
      f"the embedded ViT {path} is missing from this jaxcl install; re-create it with "
      "`python -m jaxcl.main --config=configs/pretrain_vit.py` (it exports the backbone to "
      "jaxcl/assets/vit_glyphs.npz), or point --config.model.init at a ViT .npz"
    )
  return path
