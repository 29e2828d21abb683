"""Throwaway git repositories for `stage`: a commit per patch, `git format-patch`, `git am`.

Every git call runs with no user or system configuration (:func:`apply.git_env`);
identities and dates are passed explicitly, so the output depends only on the
inputs. The user's identity is read once, from their own git configuration.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from .apply import git_env
from .errors import ForkError

PRISTINE_IDENTITY = ("modelopt-fork", "modelopt-fork@localhost")
PRISTINE_DATE = "2000-01-01T00:00:00+0000"


class GitError(ForkError):
    """A git command failed in a throwaway repository."""


def git_identity(cwd: Path) -> tuple[str, str]:
    """(name, email) from ``git config user.name`` / ``user.email`` as seen from ``cwd``."""

    def get(key: str) -> str:
        p = subprocess.run(["git", "config", key], cwd=cwd, capture_output=True, text=True)
        return p.stdout.strip()

    name, email = get("user.name"), get("user.email")
    if not name or not email:
        missing = [k for k, v in (("user.name", name), ("user.email", email)) if not v]
        raise ForkError(
            f"git config {' and '.join(missing)} {'are' if len(missing) > 1 else 'is'} not set (in {cwd}): "
            "staged patches are signed off (DCO) with "
            'that identity. Set it: git config --global user.name "Your Name"; '
            "git config --global user.email you@example.com"
        )
    return name, email


def git(repo: Path, *args: str, input: str | None = None, author: tuple[str, str] | None = None,
        committer: tuple[str, str] | None = None, date: str | None = None) -> str:
    """Run ``git args`` in ``repo``; stdout. Raises :class:`GitError` naming the command."""
    env = git_env(repo)
    for role, who in (("AUTHOR", author), ("COMMITTER", committer)):
        who = who or PRISTINE_IDENTITY
        env[f"GIT_{role}_NAME"], env[f"GIT_{role}_EMAIL"] = who
        env[f"GIT_{role}_DATE"] = date or PRISTINE_DATE
    proc = subprocess.run(["git", "-c", "commit.gpgsign=false", "-c", "core.autocrlf=false", *args], cwd=repo,
                          env=env, input=input, capture_output=True, text=True)
    if proc.returncode != 0:
        raise GitError(f"git {' '.join(args)} failed in {repo} (exit {proc.returncode}): "
                       f"{(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def init_repo(repo: Path, message: str) -> str:
    """Make the directory ``repo`` a git repository whose one commit holds its files; that commit's id."""
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--no-verify", "-m", message)
    return head(repo)


def commit_all(repo: Path, message: str, *, author: tuple[str, str], committer: tuple[str, str], date: str,
               signoff: bool) -> str:
    """Commit every change in ``repo`` (additions and deletions included); the new commit's id."""
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--no-verify", *(["-s"] if signoff else []), "-F", "-", input=message,
        author=author, committer=committer, date=date)
    return head(repo)


def head(repo: Path) -> str:
    return git(repo, "rev-parse", "HEAD").strip()


def tree_of(repo: Path, rev: str) -> str:
    return git(repo, "rev-parse", f"{rev}^{{tree}}").strip()


def format_patch(repo: Path, rev: str = "HEAD", count: int = 1) -> str:
    """``git format-patch`` of the ``count`` commits ending at ``rev``: mbox text, stable across runs and git."""
    return git(repo, "format-patch", f"-{count}", rev, "--stdout", "--zero-commit", "--no-signature", "--no-renames")


def am(repo: Path, mbox: Path, committer: tuple[str, str] | None = None) -> str:
    """``git am`` the mbox file onto ``repo``'s HEAD; the resulting commit's id."""
    git(repo, "am", "-q", str(Path(mbox).resolve()), committer=committer)
    return head(repo)
