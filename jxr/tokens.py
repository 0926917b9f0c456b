"""The one tokenisation rule, shared by training (`jxr.data.collate`) and encoding (`Encoder`).

A text with a non-empty context is encoded as the pair (text, context); one without is a single
sequence. When the result is longer than `max_length`:

- special tokens always stay, so a pair keeps the pair's structure even when nothing of its
  context is left (`<s> text </s></s></s>` for XLM-R);
- the context loses tokens from its end first, then the text from its end.

Training and evaluation must see the same ids for the same passage; before this module they
disagreed on 126 of MLQA-R's 20,534 candidates at 128 tokens (evaluation fell back to a single
sequence when the sentence filled the pair's budget). Kept free of jax and of the rest of jxr, so
that `jxr.data` and `jxr.model` can both import it without importing each other.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Encoding, Tokenizer

# The shortest `max_length` a config accepts: room for a pair's special tokens under every
# supported tokenizer (XLM-R adds 4) and as many of text. `encode` checks the exact need.
MIN_LENGTH = 8
# The longest: the 512 positions of BERT and XLM-R; a checkpoint with fewer is checked on loading.
MAX_LENGTH = 512


def encode(
    tokenizer: Tokenizer,
    texts: Sequence[str],
    max_length: int,
    contexts: Sequence[str | None] | None = None,
) -> list[Encoding]:
  """Encodings (ids, type ids, attention mask) of `texts`, paired with `contexts[i]` where it is
  non-empty, each at most `max_length` tokens long under the rule above."""
  if not isinstance(tokenizer, Tokenizer):
    raise ValueError(f"tokenizer: expected a tokenizers.Tokenizer, got {type(tokenizer).__name__}")
  if contexts is not None and (isinstance(contexts, str) or len(contexts) != len(texts)):
    raise ValueError(f"contexts: expected a list as long as texts ({len(texts)})")
  contexts = [None] * len(texts) if contexts is None else list(contexts)
  paired = any(contexts)
  specials = tokenizer.num_special_tokens_to_add(paired)
  if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length <= specials:
    raise ValueError(
        f"max_length: expected an int > {specials} (this tokenizer adds {specials} "
        f"special tokens to a {'pair' if paired else 'text'}), got {max_length!r}"
    )
  firsts = tokenizer.encode_batch(list(texts), add_special_tokens=False)
  seconds: list[Encoding | None] = [None] * len(texts)
  with_context = [i for i, context in enumerate(contexts) if context]
  for i, encoding in zip(
      with_context,
      tokenizer.encode_batch([contexts[i] for i in with_context], add_special_tokens=False),
  ):
    seconds[i] = encoding
  single_budget = max_length - tokenizer.num_special_tokens_to_add(False)
  pair_budget = max_length - tokenizer.num_special_tokens_to_add(True)
  out = []
  for first, second in zip(firsts, seconds):
    if second is None:
      first.truncate(single_budget)
      out.append(tokenizer.post_process(first))
    else:
      first.truncate(pair_budget)  # the context goes first; the text only when it alone overflows
      second.truncate(pair_budget - len(first))
      out.append(tokenizer.post_process(first, second))
  return out
