"""AdamW with linear warmup and linear decay, global-norm clipping (arXiv 2408.10536 defaults)."""

from __future__ import annotations

import jax
import optax


def learning_rate_schedule(lr: float, steps: int, warmup_steps: int) -> optax.Schedule:
  """0 -> `lr` linearly over `warmup_steps`, then linearly down to 0 at `steps`."""
  warmup_steps = min(warmup_steps, steps)
  decay = optax.linear_schedule(lr, 0.0, max(steps - warmup_steps, 1))
  if warmup_steps == 0:
    return decay
  warmup = optax.linear_schedule(0.0, lr, warmup_steps)
  return optax.join_schedules([warmup, decay], [warmup_steps])


def decay_mask(params) -> object:
  """Weight decay on matrices only: biases, LayerNorm and scalars are not decayed."""
  return jax.tree.map(lambda x: x.ndim >= 2, params)


def make_optimizer(
    lr: float, steps: int, warmup_steps: int, weight_decay: float, clip_norm: float | None
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """`(optimizer, schedule)`: optional global-norm clipping, then AdamW."""
  schedule = learning_rate_schedule(lr, steps, warmup_steps)
  adamw = optax.adamw(schedule, weight_decay=weight_decay, mask=decay_mask)
  if clip_norm is None:
    return adamw, schedule
  return optax.chain(optax.clip_by_global_norm(clip_norm), adamw), schedule
