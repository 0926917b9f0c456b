"""Checkpoints by wall time: the trainer's clock."""

from jxr.train import trainer


def test_the_save_clock_is_due_after_its_minutes(monkeypatch):
  now = [100.0]
  monkeypatch.setattr(trainer.time, "monotonic", lambda: now[0])
  clock = trainer._SaveClock(2.0)
  assert not clock.due()
  now[0] += 119.0
  assert not clock.due()
  now[0] += 1.0
  assert clock.due()
  clock.reset()  # a checkpoint was written
  assert not clock.due()
  assert not trainer._SaveClock(None).due()  # by steps only
