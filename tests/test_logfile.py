"""Per-stage log files in the workdir: absl records and stdout, appended on resume."""
import logging as py_logging

from absl import logging

from unlock_jax import logfile


def test_stage_log_keeps_records_and_prints_and_appends(tmp_path, capsys):
  workdir = str(tmp_path)
  old_level = py_logging.getLogger().level
  py_logging.getLogger().setLevel(py_logging.INFO)  # absl's level under app.run
  try:
    with logfile.stage_log(workdir, "evaluate") as path:
      logging.info("first run %d", 1)
      print("a printed table")
    assert path == str(tmp_path / "logs" / "evaluate.log")
    logging.info("after the stage")  # not in the file any more
    with logfile.stage_log(workdir, "evaluate"):  # the resumed run
      logging.warning("second run")
    with logfile.stage_log(workdir, "evaluate", process_index=2):
      logging.info("process two")
  finally:
    py_logging.getLogger().setLevel(old_level)
  assert "a printed table" in capsys.readouterr().out  # still on stdout too
  lines = open(path).read().splitlines()
  body = [line.split("] ", 1)[-1] for line in lines]
  assert body == [f"Stage evaluate logs to {path}", "first run 1", "a printed table",
                  f"Stage evaluate logs to {path}", "second run"]
  # absl's record format: level letter, date, time, thread, file:line.
  assert lines[1].startswith("I") and "test_logfile.py:" in lines[1]
  assert lines[4].startswith("W")
  other = open(tmp_path / "logs" / "evaluate.process2.log").read()
  assert "process two" in other and "process two" not in open(path).read()
  # The handler is gone once the stage ends.
  assert all(getattr(h, "baseFilename", None) != path
             for h in py_logging.getLogger().handlers)
