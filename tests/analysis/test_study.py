"""The search's Optuna study file (analysis.study_problem): a driver SIGKILLed inside a write
transaction leaves a hot journal; the study is still the last one committed, and is read as
such (before, the read-only check took the journal for a damaged file and `clustune resume`
refused a sound search)."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys

import optuna
import pytest

from analysis import study_problem

# A writer that stops inside its transaction, after its changes reached the database file
# (a one-page cache spills them there), and waits to be killed.
WRITER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA cache_size=1")
db.execute("BEGIN")
db.execute("UPDATE trials SET state = 'FAIL'")
db.execute("CREATE TABLE filler AS SELECT randomblob(1000) AS b FROM "
           "(WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000) "
           "SELECT i FROM n)")
print("in the transaction", flush=True)
time.sleep(120)
"""


def test_a_hot_journal_from_a_killed_writer_is_rolled_back_not_refused(tmp_path):
    file = tmp_path / "optuna.db"
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{file}")
    for x in (1.0, 2.0, 3.0):
        study.enqueue_trial({"x": x})
        study.optimize(lambda t: t.suggest_float("x", 0, 4), n_trials=1)
    del study
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(file)],
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "in the transaction"
    writer.send_signal(signal.SIGKILL)  # the exact event: inside the open transaction
    writer.wait()
    assert (tmp_path / "optuna.db-journal").is_file()
    with pytest.raises(sqlite3.OperationalError) as read_only:  # what the old check saw
        sqlite3.connect(f"file:{file}?mode=ro", uri=True).execute("PRAGMA quick_check")
    assert read_only.value.sqlite_errorcode == sqlite3.SQLITE_READONLY_ROLLBACK

    assert study_problem(file) is None
    assert not (tmp_path / "optuna.db-journal").exists()
    trials = optuna.load_study(study_name="s", storage=f"sqlite:///{file}").trials
    assert [(t.params["x"], t.state) for t in trials] == [
        (x, optuna.trial.TrialState.COMPLETE) for x in (1.0, 2.0, 3.0)]


def test_a_file_that_is_not_a_study_is_still_refused(tmp_path):
    file = tmp_path / "optuna.db"
    file.write_bytes(b"SQLite format 3\0 but cut short")
    assert study_problem(file).startswith("not an sqlite database")
    sqlite3.connect(tmp_path / "other.db").execute("CREATE TABLE t (x)").connection.commit()
    assert study_problem(tmp_path / "other.db") == "an sqlite database without Optuna's tables"
