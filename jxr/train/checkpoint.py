"""Orbax checkpoints of a run: train state (sharded arrays) + JSON metadata.

A checkpoint at step `s` holds the state after `s` finished steps, the sampler's
state (its next batch is `s`) and the config. Restoring takes abstract arrays
carrying the *current* mesh's shardings, so a run saved on one mesh resumes on
another of a different size (orbax reshards on read).
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

from jxr import _failpoints

log = logging.getLogger(__name__)


class Checkpoints:
  """A `CheckpointManager` over `<run_dir>/checkpoints` keeping the newest `keep`."""

  def __init__(self, directory: str | pathlib.Path, keep: int, async_save: bool = True):
    self.directory = pathlib.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save
    )
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def incomplete(self) -> list[pathlib.Path]:
    """Checkpoints a kill cut off mid-write: orbax writes to a temporary name and renames
    only a finished one, so these are never restored."""
    if not self.directory.is_dir():
      return []
    return sorted(p for p in self.directory.iterdir() if ocp.utils.is_tmp_checkpoint(p))

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step (a cut-off one is skipped, and a warning says so)."""
    step = self.manager.latest_step()
    for path in self.incomplete():
      log.warning("checkpoint %s was cut off mid-write; resuming from step %s instead", path, step)
    return step

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Starts saving (async); a step already saved is left alone."""
    if step in self.manager.all_steps():
      return
    self.manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        force=True,
    )
    _failpoints.reached(f"checkpoint_write:{step}")  # the write is still in flight

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
    """`(state, meta)`; arrays land with the shardings of `abstract_state`'s leaves."""
    restored = self.manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
        ),
    )
    return restored["state"], restored["meta"]

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_like(tree: Any, shardings: Any) -> Any:
  """`ShapeDtypeStruct`s of `tree` (arrays or shapes) placed with `shardings`."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
  )
