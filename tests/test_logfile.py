"""Per-stage log files in the workdir: absl records and stdout, appended on resume."""
import importlib.util
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


def test_orbax_info_lines_stay_out_of_the_stage_log(tmp_path):
  """Orbax logs through absl like everyone else: its records are told by their file."""
  package = tmp_path / "site-packages" / "orbax" / "checkpoint"
  package.mkdir(parents=True)
  (package / "chatty.py").write_text(
      "from absl import logging\n"
      "def save():\n"
      "  logging.info('Saving checkpoint at step 2')\n"
      "  logging.warning('Waiting for previous save to complete took 9 seconds')\n")
  spec = importlib.util.spec_from_file_location("chatty", package / "chatty.py")
  chatty = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(chatty)
  terminal = logging.get_absl_handler()
  old_level = py_logging.getLogger().level
  py_logging.getLogger().setLevel(py_logging.INFO)
  try:
    with logfile.stage_log(str(tmp_path), "adapt") as path:
      assert any(isinstance(f, logfile._QuietOrbax) for f in terminal.filters)  # pylint: disable=protected-access
      chatty.save()
      logging.info("adapt step 2/4: loss=1")
  finally:
    py_logging.getLogger().setLevel(old_level)
  text = open(path).read()
  assert "Saving checkpoint" not in text
  assert "Waiting for previous save" in text  # Orbax's warnings stay
  assert "adapt step 2/4: loss=1" in text
  # The terminal is as before once the stage ends.
  assert not any(isinstance(f, logfile._QuietOrbax) for f in terminal.filters)  # pylint: disable=protected-access
