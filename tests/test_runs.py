import pytest

from medslim._io import atomic_dir, atomic_path, write_json
from medslim.errors import ConfigError
from medslim.runs import RunDir, resumable


def test_run_appears_only_when_committed(tmp_path):
    run = RunDir(tmp_path, "r1")
    work = run.begin()
    (work / "x.txt").write_text("1")
    assert not run.final.exists()
    assert run.commit().joinpath("x.txt").read_text() == "1"
    assert not run.work.exists()


def test_existing_run_is_refused_before_any_work(tmp_path):
    (tmp_path / "r1").mkdir()
    with pytest.raises(ConfigError, match="already exists.*--overwrite"):
        RunDir(tmp_path, "r1").begin()


def test_overwrite_replaces_only_on_commit(tmp_path):
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "old.txt").write_text("old")
    run = RunDir(tmp_path, "r1")
    run.begin(overwrite=True)
    assert (tmp_path / "r1" / "old.txt").exists()  # still there while the new run works
    run.abandon()
    assert (tmp_path / "r1" / "old.txt").exists()  # a failed run never touches it
    run.begin(overwrite=True)
    (run.work / "new.txt").write_text("new")
    run.commit()
    assert sorted(p.name for p in (tmp_path / "r1").iterdir()) == ["new.txt"]


def test_abandon_keeps_resumable_work(tmp_path):
    run = RunDir(tmp_path, "r1")
    run.begin()
    assert run.abandon() is False and not run.work.exists()
    run.begin()
    (run.work / "checkpoint").mkdir()
    assert run.abandon() is True and run.work.exists()
    assert RunDir(tmp_path, "r1").begin(resume=True) == run.work


def test_resume_tidies_what_a_kill_during_a_checkpoint_write_left(tmp_path):
    run = RunDir(tmp_path, "r1")
    run.begin()
    (run.work / "checkpoint").mkdir()
    (run.work / ".checkpoint.x1y2.partial").mkdir()  # killed while writing the next one
    RunDir(tmp_path, "r1").begin(resume=True)
    assert sorted(p.name for p in run.work.iterdir()) == ["checkpoint"]
    # killed between parking the old checkpoint and moving the new one in
    (run.work / "checkpoint").replace(run.work / ".checkpoint.old")
    (run.work / ".checkpoint.old" / "state.json").write_text("{}")
    (run.work / ".checkpoint.q9.partial").mkdir()
    RunDir(tmp_path, "r1").begin(resume=True)
    assert sorted(p.name for p in run.work.iterdir()) == ["checkpoint"]
    assert (run.work / "checkpoint" / "state.json").read_text() == "{}"


def test_callers_that_resume_on_their_own_see_a_parked_checkpoint(tmp_path):
    # compare and the benchmarks decide resume=True/False themselves; a checkpoint parked by a
    # kill must count, or begin(resume=False) would delete the training done so far
    run = RunDir(tmp_path, "r1")
    run.begin()
    (run.work / ".checkpoint.old").mkdir()
    (run.work / ".checkpoint.old" / "state.json").write_text("{}")
    assert resumable(tmp_path, "r1") is True
    assert (run.work / "checkpoint" / "state.json").read_text() == "{}"
    assert resumable(tmp_path, "never-started") is False
    assert not (tmp_path / ".never-started.partial").exists()


def test_resume_without_checkpoint_and_bad_names(tmp_path):
    with pytest.raises(ConfigError, match="nothing to resume"):
        RunDir(tmp_path, "r2").begin(resume=True)
    with pytest.raises(ConfigError, match="run name"):
        RunDir(tmp_path, "../escape")


def test_atomic_writes_leave_old_file_on_failure(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text().strip().startswith("{") and '"v": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "d") as d:
            (d / "f").write_text("x")
            raise RuntimeError("boom")
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_an_output_that_is_a_file_is_refused_by_name(tmp_path):
    (tmp_path / "afile").write_text("x")
    for output in (tmp_path / "afile", tmp_path / "afile" / "deeper"):
        with pytest.raises(ConfigError, match="afile is a file, not a folder"):
            RunDir(output, "r1")
    assert RunDir(tmp_path / "new" / "runs", "r1").begin().is_dir()


def test_a_refused_first_run_leaves_no_empty_output_folders(tmp_path):
    run = RunDir(tmp_path / "new" / "runs", "r1")
    run.begin()
    assert run.abandon() is False
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    run = RunDir(tmp_path / "kept", "r1")
    run.begin()
    run.abandon()
    assert (tmp_path / "kept").is_dir()  # a folder that was there before stays
