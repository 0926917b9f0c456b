"""Checkpoints cut off mid-write are never restored."""

import logging

import jax.numpy as jnp
import numpy as np

from jxr.train.checkpoint import Checkpoints, abstract_like


def test_a_checkpoint_cut_off_mid_write_is_skipped_and_said(tmp_path, caplog):
  state = {"w": jnp.arange(4.0)}
  checkpoints = Checkpoints(tmp_path, keep=3, async_save=False)
  for step in (1, 2):
    checkpoints.save(step, {"w": state["w"] * step}, {"step": step})
  checkpoints.close()
  # What a SIGKILL during the write of step 3 leaves: orbax's temporary directory (here made
  # from step 2's files, so the newest complete checkpoint is step 1).
  (tmp_path / "2").rename(tmp_path / "3.orbax-checkpoint-tmp-1234567")
  reopened = Checkpoints(tmp_path, keep=3, async_save=False)
  with caplog.at_level(logging.WARNING, logger="jxr.train.checkpoint"):
    step = reopened.latest_step()
  assert step == 1
  assert "3.orbax-checkpoint-tmp-1234567 was cut off mid-write; resuming from step 1" in caplog.text
  restored, meta = reopened.restore(step, abstract_like(state, {"w": None}))
  np.testing.assert_array_equal(restored["w"], np.arange(4.0))
  assert meta == {"step": 1}
  reopened.close()
