"""What agents can see of this checkout, checked before anything is enqueued.

An agent clones the repository recorded on a task, checks out the recorded commit and
applies the recorded uncommitted diff; it sees nothing else of the launching machine.
So a launch needs a git remote the agents can reach, holding the commit, and every data
file it names must be committed (or be a URL).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from clearml_adapter.tracking import REMOTE_SCHEMES
from components.errors import UserError
from components.settings import PROJECT_ROOT

GIT_URL_SCHEMES = ("http://", "https://", "ssh://", "git://", "git@")


class RepositoryNotReady(UserError):
    pass


def _git(root: Path, *args: str) -> str:
    completed = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    return completed.stdout.strip() if completed.returncode == 0 else ""


def is_local_path_remote(url: str) -> bool:
    """``/srv/repo.git``, ``file:///srv/repo.git`` or ``../repo``: only agents on this machine can clone it."""
    if url.startswith("file://"):
        return True
    return not url.startswith(GIT_URL_SCHEMES) and ":" not in url.split("/")[0]


def check_repository(root: Path = PROJECT_ROOT, *, allow_local: bool = False):
    """``root``'s code as ClearML records it (url, branch, commit, diff), if agents can check it out;
    else :class:`RepositoryNotReady`, saying what to do.

    The remote and branch are the ones ClearML records (the branch's upstream, else the
    only remote); the commit must be on one of that remote's branches.
    """
    from clearml.backend_interface.task.repo.detectors import GitDetector

    if not _git(root, "rev-parse", "--show-toplevel"):
        raise RepositoryNotReady(f"{root} is not a git repository; agents clone the code from a git remote: git init, commit and push it.")
    info = GitDetector().get_info(str(root), include_diff=True)
    if not info.url:
        raise RepositoryNotReady(
            f"The repository {root} has no git remote; agents clone the code from one: git remote add origin <url> && git push -u origin HEAD."
        )
    if is_local_path_remote(info.url) and not allow_local:
        raise RepositoryNotReady(
            f"The git remote {info.url} is a path on this machine, which agents elsewhere cannot clone; push to a shared remote, "
            "or pass --allow-local-repository if every agent runs on this machine."
        )
    if not info.commit:
        raise RepositoryNotReady(f"The repository {root} has no commit yet; commit and push it.")
    if not _git(root, "branch", "--remotes", "--contains", info.commit):
        raise RepositoryNotReady(
            f"Commit {info.commit[:12]} is not on any branch of the remote {info.url}; agents check out the recorded commit: git push, then launch again."
        )
    return info


def repository_path(value: str, option: str, root: Path = PROJECT_ROOT) -> str:
    """A data file for agents: a URL unchanged, else a committed file of ``root``, relative to it."""
    if value.startswith(REMOTE_SCHEMES):
        return value
    path = Path(value).expanduser()
    resolved = (path if path.is_absolute() else Path.cwd() / path).resolve()
    try:
        relative = resolved.relative_to(root.resolve())
    except ValueError:
        raise RepositoryNotReady(
            f"{option} {value} is outside the repository {root}; agents run their own checkout: commit the file into the "
            "repository or give a URL (http, s3, gs, azure)."
        ) from None
    if not resolved.is_file():
        raise RepositoryNotReady(f"{option} {value}: no such file.")
    if not _git(root, "ls-files", "--", relative.as_posix()):
        raise RepositoryNotReady(f"{option} {relative} is not committed; agents only see committed files: git add and commit it, then launch again.")
    return relative.as_posix()
