"""`check --lint`: upstream's ruff settings on the files a patch touches, new findings only."""

from __future__ import annotations

import textwrap

from modelopt_fork.series.upstream_lint import findings, patch_files, unformatted

DIFF = textwrap.dedent("""\
    diff --git a/modelopt/a.py b/modelopt/a.py
    --- a/modelopt/a.py
    +++ b/modelopt/a.py
    @@ -1 +1 @@
    -x = 1
    +x = 2
    diff --git a/tests/unit/test_a.py b/tests/unit/test_a.py
    new file mode 100644
    --- /dev/null
    +++ b/tests/unit/test_a.py
    @@ -0,0 +1 @@
    +y = 1
    diff --git a/modelopt/gone.py b/modelopt/gone.py
    deleted file mode 100644
    --- a/modelopt/gone.py
    +++ /dev/null
    @@ -1 +0,0 @@
    -z = 1
    """)

BAD_DOCSTRING = '"""Module.\n\nMore."""\n\n\ndef f():\n    """First line\n    runs on."""\n    return 1\n'


def test_patch_files_are_added_and_modified_paths():
    assert patch_files(DIFF) == ["modelopt/a.py", "tests/unit/test_a.py"]


def test_findings_use_upstreams_rules_and_per_file_ignores(tmp_path):
    for rel in ("modelopt/m.py", "tests/unit/test_m.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(BAD_DOCSTRING)
    got = findings(tmp_path, ["modelopt/m.py", "tests/unit/test_m.py", "modelopt/absent.py"])
    assert got[("modelopt/m.py", "D205")] == 1  # pydocstyle, google convention: upstream selects D
    assert not [k for k in got if k[0].startswith("tests/") and k[1].startswith("D")]  # "tests/*" ignores D


def test_unformatted_uses_upstreams_line_length(tmp_path):
    (tmp_path / "modelopt").mkdir()
    call = "result = some_function(first_argument, second_argument, third_argument, fourth_argument_xyz_xyz_abcdefg)\n"
    assert 100 < len(call) <= 120  # fine under our 120, too long under upstream's 100
    (tmp_path / "modelopt" / "long.py").write_text(call)
    (tmp_path / "modelopt" / "short.py").write_text("x = 1\n")
    assert unformatted(tmp_path, ["modelopt/long.py", "modelopt/short.py"]) == {"modelopt/long.py"}
