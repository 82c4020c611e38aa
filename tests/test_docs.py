"""The documentation site: it builds in strict mode, and the code on its pages runs.

The strict build fails on a broken link, a page missing from the nav, and an API reference whose
docstrings no longer match the signatures (mkdocstrings reports those as warnings). The ```python blocks
of the pages in ``EXECUTED_PAGES`` run in order in one namespace, in a temporary folder, as a reader
would paste them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXECUTED_PAGES = ("getting-started.md", "integration.md")
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)

mkdocs = pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -e '.[docs]'")


def python_blocks(page: Path) -> list[str]:
    """The ```python fenced blocks of a Markdown page, in order.

    Args:
        page: a Markdown file.

    Returns:
        The code of each block, without the fences.
    """
    return FENCE.findall(page.read_text(encoding="utf-8"))


def test_python_blocks_finds_fenced_code(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text('intro\n```python\na = 1\n```\n\n```bash\nls\n```\n```python title="x"\nb = a + 1\n```\n')
    assert python_blocks(page) == ["a = 1\n", "b = a + 1\n"]


def test_docs_build_strict(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "NO_MKDOCS_2_WARNING": "1",
        # Any attempt to fetch from the network at build time fails instead of hanging or succeeding.
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "",
    }
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    assert (tmp_path / "site" / "api" / "adapter" / "index.html").is_file()
    reference = (tmp_path / "site" / "api" / "adapter" / "index.html").read_text(encoding="utf-8")
    assert 'id="scm_calib.adapter.SCMAdapter"' in reference, "the API reference lost SCMAdapter"


@pytest.mark.parametrize("page", EXECUTED_PAGES)
def test_page_snippets_run(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = python_blocks(DOCS / page)
    assert blocks, f"docs/{page} has no ```python block to run"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict[str, object] = {"__name__": f"docs_{page.replace('-', '_').removesuffix('.md')}"}
    for number, code in enumerate(blocks, start=1):
        try:
            exec(compile(code, f"docs/{page} block {number}", "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"docs/{page}, python block {number} failed:\n{code}") from error
