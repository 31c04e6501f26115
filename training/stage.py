"""A model change that takes more than one session, kept on main as a staged overlay until it lands whole.

The project's rule is that every committed number describes the committed weights. Switching the default
segmentation and retraining the classifiers means retraining for hours and then re-measuring for about five more
(``python -m training.remeasure --changed all --dry-run``): more than one session's CPU, and a session's ignored
folders (``runs/``, caches) do not survive into the next. A stage carries such a change across sessions without
breaking the rule: the changed files (new weights, their cards, the re-measured files so far) live under
``staging/NAME/`` on main, where they describe the staged weights beside them and nothing that ships. Nothing imports
from ``staging/``, the linters skip it, and pytest collects only ``tests/``. When every step has run, ``land`` moves
the files into place in one commit.

Usage::

    git worktree add ../stage_wt HEAD                        # a second checkout to make the change in
    python -m training.stage apply NAME --to ../stage_wt     # a later session: put the staged files back
    # ... train, edit, run `python -m training.remeasure ...` in ../stage_wt ...
    python -m training.stage save NAME --from ../stage_wt --note "what is done, what is left"
    python -m training.stage status NAME                     # what is staged; which staged paths main changed since
    python -m training.stage land NAME                       # all done: the staged files replace this checkout's

``save`` copies every file of the worktree that differs from the worktree's HEAD (changed, added and not ignored,
deleted) into ``staging/NAME/tree/`` with ``staging/NAME/stage.json`` (the base commit, each file's SHA-256, the
deleted paths, the note) and a README.md that says the same in words; paths under ``staging/`` are never staged.
``apply`` and ``land`` refuse when main changed a staged path after the base commit (the stage would undo that
change): rebase the worktree, re-run what depends on it, ``save`` again.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

__all__ = [
    "STAGING",
    "Stage",
    "StageError",
    "apply_stage",
    "conflicts",
    "land_stage",
    "main",
    "read_stage",
    "save_stage",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
#: where stages live, relative to the repository root
STAGING = "staging"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class StageError(RuntimeError):
    """A stage cannot be saved, applied or landed; the message says why and what to do."""


@dataclass(frozen=True)
class Stage:
    """What ``staging/NAME/stage.json`` records.

    Attributes:
        name: the stage's name (its folder).
        base: the commit the change was made on (the worktree's HEAD at ``save``).
        files: staged path → SHA-256 of its content, paths relative to the repository root.
        deleted: paths the change removes.
        note: what is done and what is left, in words.
        saved: when it was saved (ISO 8601, UTC).
    """

    name: str
    base: str
    files: dict[str, str]
    deleted: tuple[str, ...]
    note: str
    saved: str


def _git(repo: Path, *args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        raise StageError(f"git {' '.join(args)} failed in {repo}: {exc}") from exc
    if done.returncode != 0:
        raise StageError(f"git {' '.join(args)} failed in {repo}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _folder(repo: Path, name: str) -> Path:
    if not _NAME.fullmatch(name):
        raise StageError(f"stage name {name!r}: use letters, digits, '_', '.' and '-' (e.g. unet-switch).")
    return repo / STAGING / name


def _split_z(text: str) -> list[str]:
    return [p for p in text.split("\0") if p and not (p == STAGING or p.startswith(STAGING + "/"))]


def changed_paths(worktree: Path) -> tuple[str, list[str], list[str]]:
    """What differs between a checkout's working tree and its HEAD.

    Args:
        worktree: a git checkout (a worktree of this repository, or a clone).

    Returns:
        (HEAD commit, changed or added paths, deleted paths); ignored files (``runs/``, caches, the venv) and paths
        under ``staging/`` are left out.
    """
    head = _git(worktree, "rev-parse", "HEAD").strip()
    changed = _split_z(_git(worktree, "diff", "--no-renames", "--name-only", "--diff-filter=d", "-z", "HEAD"))
    added = _split_z(_git(worktree, "ls-files", "--others", "--exclude-standard", "-z"))
    deleted = _split_z(_git(worktree, "diff", "--no-renames", "--name-only", "--diff-filter=D", "-z", "HEAD"))
    return head, sorted(set(changed) | set(added)), sorted(deleted)


def read_stage(name: str, repo: Path = REPO_ROOT) -> Stage:
    """Reads ``staging/NAME/stage.json`` and checks that the staged files are there, unaltered.

    Raises:
        StageError: no such stage, or a staged file is missing or differs from its recorded SHA-256.
    """
    folder = _folder(repo, name)
    record = folder / "stage.json"
    if not record.is_file():
        known = sorted(p.name for p in (repo / STAGING).glob("*") if (p / "stage.json").is_file())
        raise StageError(f"no stage {name!r} in {repo / STAGING} (stages there: {known or 'none'}).")
    data = json.loads(record.read_text())
    stage = Stage(**{**data, "deleted": tuple(data["deleted"])})
    for path, digest in stage.files.items():
        copy = folder / "tree" / path
        if not copy.is_file() or _sha256(copy) != digest:
            raise StageError(f"stage {name!r}: {copy} is missing or was changed after `save`; save the stage again.")
    return stage


def _readme(stage: Stage) -> str:
    lines = [
        f"# Stage `{stage.name}` (not shipped)",
        "",
        "A model change that is being made over more than one session (`training/stage.py`). These files describe the",
        "staged weights in `tree/`, not the shipped models; nothing imports them. They replace the checkout's files",
        f"with `python -m training.stage land {stage.name}` when every step is done.",
        "",
        f"- base commit: `{stage.base}`",
        f"- saved: {stage.saved}",
        f"- {len(stage.files)} changed or added file(s), {len(stage.deleted)} deleted",
        "",
        "## Where it stands",
        "",
        stage.note or "(no note)",
        "",
        "## Files",
        "",
        *[f"- `{p}`" for p in sorted(stage.files)],
        *[f"- `{p}` (deleted)" for p in stage.deleted],
        "",
    ]
    return "\n".join(lines)


def save_stage(name: str, worktree: Path, note: str, repo: Path = REPO_ROOT) -> Stage:
    """Copies a worktree's change into ``staging/NAME/`` of ``repo`` (replacing an earlier save of that name).

    Args:
        name: the stage's name.
        worktree: the checkout the change was made in (its HEAD is the base).
        note: what is done and what is left.
        repo: the checkout that keeps the stage (default: this one).

    Raises:
        StageError: nothing differs from HEAD, or git failed.
    """
    worktree, repo = worktree.resolve(), repo.resolve()
    if worktree == repo:
        raise StageError("save from a second checkout (git worktree add ../stage_wt HEAD), not from this one.")
    folder = _folder(repo, name)
    base, files, deleted = changed_paths(worktree)
    if not files and not deleted:
        raise StageError(f"{worktree} has no change against its HEAD: nothing to stage.")
    tmp = folder.with_name(folder.name + ".saving")
    shutil.rmtree(tmp, ignore_errors=True)
    digests = {}
    for path in files:
        target = tmp / "tree" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(worktree / path, target)
        digests[path] = _sha256(target)
    stage = Stage(
        name=name,
        base=base,
        files=digests,
        deleted=tuple(deleted),
        note=note.strip(),
        saved=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    (tmp / "stage.json").write_text(json.dumps(dataclasses.asdict(stage), indent=1) + "\n")
    (tmp / "README.md").write_text(_readme(stage))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)  # the old save is replaced only once the new one is complete
    return stage


def conflicts(stage: Stage, target: Path) -> list[str]:
    """Staged paths that ``target``'s HEAD changed after the stage's base commit (applying would undo those changes).

    Raises:
        StageError: the base commit is not in ``target``'s history, or git could not tell (not a checkout).
    """
    check = subprocess.run(
        ["git", "merge-base", "--is-ancestor", stage.base, "HEAD"],
        cwd=target,
        capture_output=True,
        text=True,
        check=False,
    )
    if check.returncode not in (0, 1):  # 1 means "not an ancestor"; anything else, that git could not answer
        raise StageError(f"git merge-base failed in {target}: {check.stderr.strip()}")
    if check.returncode == 1:
        raise StageError(
            f"the stage's base commit {stage.base[:12]} is not an ancestor of HEAD in {target}: apply it to a "
            "checkout that contains that commit."
        )
    touched = sorted(set(stage.files) | set(stage.deleted))
    since = set(_split_z(_git(target, "diff", "--no-renames", "--name-only", "-z", stage.base, "HEAD", "--")))
    return [p for p in touched if p in since]


def apply_stage(name: str, target: Path, repo: Path = REPO_ROOT, force: bool = False) -> Stage:
    """Puts the staged files into ``target``'s working tree and removes the staged deletions.

    Args:
        name: the stage.
        target: the checkout to change (a worktree, or this checkout when landing).
        repo: the checkout that keeps the stage.
        force: apply even where HEAD changed a staged path since the base commit.

    Raises:
        StageError: the stage is damaged, or a conflict (without ``force``).
    """
    stage = read_stage(name, repo)
    target = target.resolve()
    clash = conflicts(stage, target)
    if clash and not force:
        raise StageError(
            f"HEAD changed {len(clash)} staged path(s) after the stage's base {stage.base[:12]}: "
            f"{', '.join(clash[:8])}{' ...' if len(clash) > 8 else ''}. Applying would undo those changes: apply it "
            "to a worktree at the base, merge by hand, re-run what depends on them and save again (or --force)."
        )
    source = _folder(repo, name) / "tree"
    for path in stage.files:
        out = target / path
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / path, out)
    for path in stage.deleted:
        (target / path).unlink(missing_ok=True)
    return stage


def land_stage(name: str, repo: Path = REPO_ROOT, force: bool = False) -> Stage:
    """Applies the stage to ``repo`` itself and removes ``staging/NAME`` (commit the result as one change)."""
    stage = apply_stage(name, repo, repo, force=force)
    shutil.rmtree(_folder(repo, name))
    return stage


def main(argv: list[str] | None = None) -> int:
    """The ``python -m training.stage`` command."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("save", help="copy a worktree's change into staging/NAME/")
    p.add_argument("name")
    p.add_argument("--from", dest="source", required=True, help="the checkout the change was made in")
    p.add_argument("--note", default="", help="what is done and what is left (README.md, stage.json)")
    p = sub.add_parser("apply", help="put the staged files into another checkout")
    p.add_argument("name")
    p.add_argument("--to", required=True, help="the checkout to change (e.g. a git worktree of HEAD)")
    p.add_argument("--force", action="store_true", help="even where HEAD changed a staged path since the base")
    p = sub.add_parser("status", help="what is staged, and which staged paths HEAD changed since")
    p.add_argument("name")
    p = sub.add_parser("land", help="apply to this checkout and remove staging/NAME")
    p.add_argument("name")
    p.add_argument("--force", action="store_true", help="even where HEAD changed a staged path since the base")
    args = parser.parse_args(argv)
    try:
        if args.command == "save":
            stage = save_stage(args.name, Path(args.source), args.note)
            print(f"saved {len(stage.files)} file(s) and {len(stage.deleted)} deletion(s) to {STAGING}/{stage.name}/")
        elif args.command == "apply":
            stage = apply_stage(args.name, Path(args.to), force=args.force)
            print(
                f"applied {stage.name} to {args.to}: {len(stage.files)} file(s), {len(stage.deleted)} deletion(s). "
                "Run its steps with that checkout's code: cd there, PYTHONPATH=. python -m ..."
            )
        elif args.command == "status":
            stage = read_stage(args.name)
            clash = conflicts(stage, REPO_ROOT)
            print(f"{stage.name}: base {stage.base[:12]}, saved {stage.saved}")
            since = ", ".join(clash) or "none"
            print(
                f"{len(stage.files)} file(s), {len(stage.deleted)} deletion(s); changed on HEAD since the base: {since}"
            )
            print(stage.note)
        else:
            stage = land_stage(args.name, force=args.force)
            print(f"landed {stage.name}: review `git status`, run the suite, commit as one change")
    except StageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
