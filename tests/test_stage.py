"""training.stage: a change saved from a worktree, applied to another checkout, landed; conflicts refused."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from training.stage import StageError, apply_stage, conflicts, land_stage, main, read_stage, save_stage


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository with a few committed files, an ignored folder and a worktree of its HEAD."""
    root = tmp_path / "main"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.email", "t@example.com")
    git(root, "config", "user.name", "t")
    (root / "models" / "a").mkdir(parents=True)
    (root / "models" / "a" / "weights.bin").write_bytes(b"old weights")
    (root / "docs").mkdir()
    (root / "docs" / "result.json").write_text('{"acc": 0.5}\n')
    (root / "docs" / "gone.md").write_text("to be deleted\n")
    (root / "keep.txt").write_text("untouched\n")
    (root / ".gitignore").write_text("runs/\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "base")
    git(root, "worktree", "add", "-q", str(tmp_path / "wt"), "HEAD")
    return root


def make_change(wt: Path) -> None:
    (wt / "models" / "a" / "weights.bin").write_bytes(b"new weights")
    (wt / "docs" / "result.json").write_text('{"acc": 0.8}\n')
    (wt / "docs" / "gone.md").unlink()
    (wt / "docs" / "new.md").write_text("added\n")
    (wt / "runs").mkdir()
    (wt / "runs" / "log.txt").write_text("ignored: never staged\n")
    (wt / "staging").mkdir()
    (wt / "staging" / "x.txt").write_text("a stage's own folder is never staged\n")


def test_save_records_changed_added_and_deleted_files_only(repo: Path):
    wt = repo.parent / "wt"
    make_change(wt)
    stage = save_stage("switch", wt, "half the steps done", repo=repo)
    assert sorted(stage.files) == ["docs/new.md", "docs/result.json", "models/a/weights.bin"]
    assert stage.deleted == ("docs/gone.md",)
    assert stage.base == git(repo, "rev-parse", "HEAD").strip()
    folder = repo / "staging" / "switch"
    assert (folder / "tree" / "models" / "a" / "weights.bin").read_bytes() == b"new weights"
    assert json.loads((folder / "stage.json").read_text())["note"] == "half the steps done"
    readme = (folder / "README.md").read_text()
    assert "half the steps done" in readme and "`docs/gone.md` (deleted)" in readme
    assert read_stage("switch", repo) == stage
    # the main checkout itself is untouched until landing
    assert (repo / "models" / "a" / "weights.bin").read_bytes() == b"old weights"


def test_apply_to_a_fresh_checkout_reproduces_the_worktree(repo: Path, tmp_path: Path):
    wt = repo.parent / "wt"
    make_change(wt)
    save_stage("switch", wt, "", repo=repo)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "stage saved")  # the stage travels on main
    fresh = tmp_path / "fresh"
    git(tmp_path, "clone", "-q", str(repo), str(fresh))
    apply_stage("switch", fresh, repo=fresh)
    assert (fresh / "models" / "a" / "weights.bin").read_bytes() == b"new weights"
    assert (fresh / "docs" / "result.json").read_text() == '{"acc": 0.8}\n'
    assert (fresh / "docs" / "new.md").is_file() and not (fresh / "docs" / "gone.md").exists()
    assert (fresh / "keep.txt").read_text() == "untouched\n"


def test_a_staged_path_changed_on_main_since_the_base_is_a_conflict(repo: Path):
    wt = repo.parent / "wt"
    make_change(wt)
    save_stage("switch", wt, "", repo=repo)
    (repo / "docs" / "result.json").write_text('{"acc": 0.6}\n')  # main moved on where the stage has its own copy
    (repo / "keep.txt").write_text("changed, but not staged: no conflict\n")
    git(repo, "add", "docs/result.json", "keep.txt")
    git(repo, "commit", "-q", "-m", "main moved")
    stage = read_stage("switch", repo)
    assert conflicts(stage, repo) == ["docs/result.json"]
    with pytest.raises(StageError, match=r"HEAD changed 1 staged path.*docs/result.json"):
        land_stage("switch", repo)
    assert (repo / "staging" / "switch").is_dir()  # nothing half-landed
    land_stage("switch", repo, force=True)
    assert (repo / "docs" / "result.json").read_text() == '{"acc": 0.8}\n'
    assert not (repo / "staging" / "switch").exists()


def test_a_damaged_stage_is_refused(repo: Path):
    wt = repo.parent / "wt"
    make_change(wt)
    save_stage("switch", wt, "", repo=repo)
    (repo / "staging" / "switch" / "tree" / "docs" / "new.md").write_text("edited by hand\n")
    with pytest.raises(StageError, match="changed after `save`"):
        read_stage("switch", repo)


def test_bad_calls_say_what_to_do(repo: Path, capsys: pytest.CaptureFixture[str]):
    wt = repo.parent / "wt"
    with pytest.raises(StageError, match="no change against its HEAD"):
        save_stage("switch", wt, "", repo=repo)
    with pytest.raises(StageError, match="second checkout"):
        save_stage("switch", repo, "", repo=repo)
    with pytest.raises(StageError, match="stage name"):
        save_stage("../evil", wt, "", repo=repo)
    with pytest.raises(StageError, match="no stage 'nothing'"):
        read_stage("nothing", repo)
    assert main(["status", "does-not-exist"]) == 2
    assert "error: no stage" in capsys.readouterr().err
