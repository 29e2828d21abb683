"""refresh: edits -> patch files, byte-stable, each patch keeps only its own change."""

from __future__ import annotations

import pytest

from modelopt_fork.series.errors import SeriesError
from modelopt_fork.series.materialize import materialize, tree_state
from modelopt_fork.series.refresh import refresh

from .helpers import INIT, add_patch_by_edit, append_line, quiet

QUANT_INIT = "modelopt/torch/quantization/__init__.py"


def _snapshot(root):
    return {p.name: p.read_bytes() for p in sorted((root / "patches").iterdir())}


def test_refresh_round_trip_is_byte_stable(fork_project):
    add_patch_by_edit(fork_project, "0001-a.patch", append_line(str(INIT), "A = 1"))
    add_patch_by_edit(fork_project, "0002-b.patch", append_line(QUANT_INIT, "B = 2"))
    before = _snapshot(fork_project)
    assert refresh(fork_project, log=quiet) == []
    assert refresh(fork_project, "0001-a.patch", log=quiet) == []
    assert _snapshot(fork_project) == before
    # and the tree regenerated from the patches is the one we refreshed from
    text_init, text_q = (fork_project / INIT).read_text(), (fork_project / QUANT_INIT).read_text()
    materialize(fork_project, force=True, log=quiet)
    assert (fork_project / INIT).read_text() == text_init
    assert (fork_project / QUANT_INIT).read_text() == text_q
    assert tree_state(fork_project).clean


def test_refresh_middle_patch_keeps_later_patch_out_of_it(fork_project):
    add_patch_by_edit(fork_project, "0001-a.patch", append_line(str(INIT), "A = 1"))
    add_patch_by_edit(fork_project, "0002-b.patch", append_line(QUANT_INIT, "B = 2"))
    header_a = (fork_project / "patches" / "0001-a.patch").read_text().split("diff --git", 1)[0]
    b_before = (fork_project / "patches" / "0002-b.patch").read_bytes()
    append_line(str(INIT), "A2 = 11")(fork_project)
    assert tree_state(fork_project).edits == ["modified: modelopt/__init__.py"]
    assert refresh(fork_project, "0001-a.patch", log=quiet) == ["0001-a.patch"]
    a = (fork_project / "patches" / "0001-a.patch").read_text()
    assert a.startswith(header_a)  # header kept byte for byte
    assert "+A = 1\n+A2 = 11\n" in a and "B = 2" not in a
    assert (fork_project / "patches" / "0002-b.patch").read_bytes() == b_before
    assert tree_state(fork_project).clean and tree_state(fork_project).up_to_date
    assert materialize(fork_project, log=quiet) is False


def test_refresh_new_appends_to_series_with_header_template(fork_project):
    materialize(fork_project, log=quiet)
    append_line(str(INIT), "NEW = 3")(fork_project)
    refresh(fork_project, new="0001-new.patch", log=quiet)
    text = (fork_project / "patches" / "0001-new.patch").read_text()
    assert text.startswith("Description: TODO")
    assert "Upstream-Base: nvidia-modelopt==0.47.0\n" in text and "+NEW = 3\n" in text
    assert (fork_project / "patches" / "series").read_text().splitlines()[-1] == "0001-new.patch"


def test_refresh_with_nothing_to_record_is_an_error(fork_project):
    materialize(fork_project, log=quiet)
    with pytest.raises(SeriesError, match="nothing to refresh"):
        refresh(fork_project, new="0001-empty.patch", log=quiet)
    assert not (fork_project / "patches" / "0001-empty.patch").exists()
