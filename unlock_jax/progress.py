"""Progress with ETA for long host loops (generation, prediction, evaluation).

Training uses clu's ``periodic_actions.ReportProgress``; this is the same idea
for loops that are not train steps: a log line with rate and ETA at most every
``every_secs`` seconds, and the rate written as a clu scalar if a writer is set.
"""
import time

from absl import logging


def format_duration(seconds: float) -> str:
  """``1h02m03s`` / ``2m03s``."""
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
  """Call ``update(done)``; logs ``desc: done/total (pct) rate ETA``."""

  def __init__(self, total: int, desc: str, every_secs: float = 10.0,
               writer=None, unit: str = "it"):
    self.total, self.desc, self.every, self.writer, self.unit = (
        total, desc, every_secs, writer, unit)
    self.start = self.last = time.monotonic()
    self.done0 = None

  def update(self, done: int, force: bool = False) -> None:
    now = time.monotonic()
    if self.done0 is None:
      self.done0 = done
    if not force and now - self.last < self.every and done < self.total:
      return
    self.last = now
    elapsed = now - self.start
    rate = (done - self.done0) / elapsed if elapsed > 0 else 0.0
    eta = (self.total - done) / rate if rate > 0 else float("nan")
    pct = 100.0 * done / max(self.total, 1)
    eta_s = format_duration(eta) if eta == eta else "?"
    logging.info("%s: %d/%d (%.0f%%), %.2f %s/s, elapsed %s, ETA %s", self.desc,
                 done, self.total, pct, rate, self.unit, format_duration(elapsed), eta_s)
    if self.writer is not None:
      self.writer.write_scalars(done, {f"{self.desc}/{self.unit}_per_sec": rate})
