"""The documentation site's generated pages (docs/gen_pages.py): every method and command has its page.

CI builds the whole site with ``mkdocs build --strict`` (.ci/run); these checks are the fast part.
"""

from __future__ import annotations

import inspect
import runpy
import sys
from pathlib import Path

import pytest
import yaml
from extensions.throwaway_methods import TextShift

from vlprompt.cli.options import COMMAND_CONFIGS
from vlprompt.cli.parser import describe_method
from vlprompt.data.papers import paper_results
from vlprompt.methods import METHODS, register

ROOT = Path(__file__).resolve().parent.parent
GEN = runpy.run_path(str(ROOT / "docs" / "gen_pages.py"), run_name="gen_pages")  # not "<run_path>": writes nothing


@pytest.fixture(scope="module")
def pages() -> dict[str, str]:
    return GEN["pages"]()


def test_every_registered_method_has_its_page(pages):
    assert {p for p in pages if p.startswith("methods/")} == {f"methods/{n}.md" for n in METHODS} | {"methods/index.md"}
    for name, cls in METHODS.items():
        page = pages[f"methods/{name}.md"]
        assert page.startswith(f"# `{name}`: ")
        assert GEN["markdown_text"](inspect.getdoc(cls)) in page  # what it computes
        module_doc = GEN["markdown_text"](inspect.getdoc(sys.modules[cls.__module__]))
        assert module_doc.partition("\n")[2].strip() in page  # and where it differs from its authors' code
        assert describe_method(cls).rstrip() in page  # its options, as --help prints them
        for recipe in cls.recipes.values():
            assert GEN["_cell"](recipe.source) in page
        assert all(r.source.replace("|", "\\|") in page for r in paper_results() if r.method == name)
        assert f"[`{name}`]({name}.md)" in pages["methods/index.md"]


def test_a_newly_registered_method_gets_a_page():
    before = dict(METHODS)
    try:
        register(TextShift)
        assert f"methods/{TextShift.name}.md" in GEN["pages"]()
    finally:
        METHODS.clear()
        METHODS.update(before)


def test_every_command_has_its_page(pages):
    assert {p for p in pages if p.startswith("commands/")} == {f"commands/{n}.md" for n in COMMAND_CONFIGS} | {
        "commands/index.md"
    }
    push = pages["commands/push.md"]
    assert "usage: vlprompt [options] push" in push and "--revision REVISION" in push
    assert "predict" in pages["commands/predict.md"] and "hf-hub:org/name" in pages["commands/predict.md"]


def test_getting_started_is_the_readme_quickstart(pages):
    readme = (ROOT / "README.md").read_text()
    assert "vlprompt demo" in pages["index.md"]
    assert (
        'pip install -e ".[dev]" && python -m pytest' in pages["index.md"] and "## What is inside" in pages["index.md"]
    )
    assert (
        "](images/incontext_canvases.png)" in pages["index.md"]
        and (ROOT / "docs/images/incontext_canvases.png").is_file()
    )
    assert "## Measured on the built-in benchmark" in pages["index.md"] and "usage.md" not in pages  # a page of its own
    assert "[docs/usage.md](docs/usage.md)" in readme and "[docs/design.md](docs/design.md)" in readme


def test_the_site_config_names_its_generator_and_every_page_exists():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    plugins = {next(iter(p)) if isinstance(p, dict) else p: p for p in config["plugins"]}
    assert plugins["gen-files"]["gen-files"]["scripts"] == ["docs/gen_pages.py"] and "mkdocstrings" in plugins
    for page in ("api.md", "formats.md", "benchmarks.md", "datasets.md", "reproduction.md", "incontext.md", "usage.md",
                 "design.md"):  # fmt: skip
        assert (ROOT / "docs" / page).is_file(), page
