"""Run folders: ``runs/<name>/`` appears only when a command has finished.

Work happens in ``runs/.<name>.partial/``; the finished folder is moved into
place at the end, replacing an older run of the same name only when the user
asked for it. A run stopped mid-training keeps its partial folder (with its
checkpoint) so ``--resume`` can continue it; a run that failed before its
first checkpoint leaves nothing behind.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

from medslim._io import check_output_folder, replace_dir
from medslim.errors import ConfigError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def default_name(cfg: dict) -> str:
    return f"{cfg['data']['dataset']}-{cfg['model']['name']}-{time.strftime('%Y%m%d-%H%M%S')}"


def _missing_folders(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    for part in (path, *path.parents):
        if part.exists():
            break
        missing.append(part)
    return missing


def resumable(output: str | Path, name: str) -> bool:
    """Whether ``output/.<name>.partial`` holds a checkpoint to resume (see ``RunDir.can_resume``)."""
    return RunDir(output, name).can_resume()


class RunDir:
    def __init__(self, output: str | Path, name: str):
        if not NAME.match(name):
            raise ConfigError(f"run name {name!r} may hold only letters, digits, '.', '_' and '-'")
        check_output_folder(output)
        self.final = Path(output) / name
        self.work = Path(output) / f".{name}.partial"
        self._made: list[Path] = []  # output folders begin() created, removed again by abandon()

    def can_resume(self) -> bool:
        """Whether the work folder holds a checkpoint, after tidying a write cut by a kill.

        Callers that resume on their own (compare, the benchmarks) ask this
        rather than look for ``checkpoint``: a kill can leave it parked under
        another name, and ``begin(resume=False)`` would then delete it.
        """
        if self.work.is_dir():
            self._recover_checkpoint()
        return (self.work / "checkpoint").exists()

    def begin(self, resume: bool = False, overwrite: bool = False) -> Path:
        """Prepare the work folder; refuse before any work if the run exists."""
        if resume:
            if not self.can_resume():
                where = f"; {self.final} is already complete" if self.final.exists() else ""
                raise ConfigError(f"nothing to resume: no checkpoint in {self.work}{where}")
            return self.work
        if self.final.exists() and not overwrite:
            raise ConfigError(f"run folder {self.final} already exists; pass --overwrite to "
                              "replace it when the new run succeeds, or choose another --name")
        if self.work.exists():
            shutil.rmtree(self.work)  # a stale partial run the user chose not to resume
        self._made = _missing_folders(self.final.parent)
        self.work.mkdir(parents=True)
        return self.work

    def _recover_checkpoint(self) -> None:
        """Tidy what a kill during a checkpoint write left in the work folder.

        ``atomic_dir`` builds ``.checkpoint.<random>.partial`` and, when it
        replaces the old checkpoint, parks it as ``.checkpoint.old`` for a
        moment: a kill in between leaves the old one there and no checkpoint.
        """
        checkpoint, parked = self.work / "checkpoint", self.work / ".checkpoint.old"
        if not checkpoint.exists() and parked.is_dir():
            parked.replace(checkpoint)
        for stale in [*self.work.glob(".checkpoint.*.partial"), parked]:
            shutil.rmtree(stale, ignore_errors=True)

    def commit(self) -> Path:
        replace_dir(self.work, self.final)
        return self.final

    def abandon(self) -> bool:
        """Remove the work folder unless it holds a checkpoint; True if kept."""
        if (self.work / "checkpoint").exists():
            return True
        shutil.rmtree(self.work, ignore_errors=True)
        for folder in self._made:  # a refused first run leaves no empty --output
            try:
                folder.rmdir()
            except OSError:
                break  # something else was written there meanwhile: leave it
        return False
