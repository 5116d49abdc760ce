"""Text for the language-model runs (DESIGN.md §5), one module per concern:

  tokenizers.py  bytes (default), a `tokenizers` JSON file or a sentencepiece model
  corpora.py     offline documents: the stdlib's docstrings / code, text files, tfds text
  packing.py     documents joined by EOS into one stream, cut into `seq_len + 1` windows
  masking.py     BERT masked-LM examples over the packed windows
  domains.py     a source spec -> a domain's packed train / validation windows, the `data`
                 config fields, the fixed validation batches

The names the run code uses are importable from here: `text.load_domains(config.data, tok)`.
"""

from jaxcl.data.text.corpora import (
  glob_documents,
  pydoc_topics,
  python_files,
  stdlib_documents,
  stdlib_root,
  strip_docstrings,
  tfds_documents,
)
from jaxcl.data.text.domains import (
  Domain,
  Union,
  default_config,
  held_out,
  load_domain,
  load_domains,
  valid_batches,
  valid_bytes,
  valid_indices,
)
from jaxcl.data.text.masking import MaskedSource, mask_tokens
from jaxcl.data.text.packing import PackedSource, bin_bounds, record_lengths, tokenize_documents
from jaxcl.data.text.tokenizers import (
  BYTE_VOCAB_SIZE,
  EOS_ID,
  MASK_ID,
  PAD_ID,
  ByteTokenizer,
  HFTokenizer,
  SentencePieceTokenizer,
  make_tokenizer,
)

__all__ = [
  "BYTE_VOCAB_SIZE",
  "EOS_ID",
  "MASK_ID",
  "PAD_ID",
  "ByteTokenizer",
  "Domain",
  "HFTokenizer",
  "MaskedSource",
  "PackedSource",
  "SentencePieceTokenizer",
  "Union",
  "bin_bounds",
  "default_config",
  "glob_documents",
  "held_out",
  "load_domain",
  "load_domains",
  "make_tokenizer",
  "mask_tokens",
  "pydoc_topics",
  "python_files",
  "record_lengths",
  "stdlib_documents",
  "stdlib_root",
  "strip_docstrings",
  "tfds_documents",
  "tokenize_documents",
  "valid_batches",
  "valid_bytes",
  "valid_indices",
]
