"""Errors raised by the patch-series tooling. Each message names the file involved."""


class ForkError(Exception):
    """Base class: a problem a user can act on; the CLI prints it without a traceback."""


class PinError(ForkError):
    """UPSTREAM.toml is missing, malformed, or the wheel does not match it."""


class HashMismatchError(PinError):
    """The upstream wheel's sha256 differs from the pin."""


class SeriesError(ForkError):
    """patches/series or a patch header is inconsistent."""


class PatchApplyError(ForkError):
    """A patch does not apply to the tree it is meant for (no fuzz, no offset)."""

    def __init__(self, patch: str, detail: str):
        super().__init__(f"patch {patch} does not apply: {detail}")
        self.patch = patch
        self.detail = detail


class DirtyTreeError(ForkError):
    """The generated tree has edits that were never refreshed into patches."""
