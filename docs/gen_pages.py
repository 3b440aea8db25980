"""The site's generated pages (run by mkdocs-gen-files at build time; ``tests/test_docs.py`` checks them).

From the code, so they cannot go stale: the getting-started page from README.md, one page per
registered method (its module and class docstrings, its options as ``vlprompt train --method X --help`` prints
them, its recipes with their sources, the papers' numbers vlprompt ships) and one page per command (its
dataclass docstring and ``--help``).
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import sys
from pathlib import Path

from vlprompt.cli.options import COMMAND_CONFIGS
from vlprompt.cli.parser import build_parser, describe_method
from vlprompt.data.papers import paper_results
from vlprompt.engine.presets import preset_name
from vlprompt.methods import COMMAND_OF_LABELS, METHODS

ROOT = Path(__file__).resolve().parent.parent


def markdown_text(doc: str) -> str:
    """A reST-flavoured docstring as Markdown: ``:class:`~a.b.C``` -> ```C```, ``code`` kept as a code span."""
    doc = re.sub(r":[a-z]+:`~?(?:[\w.]+\.)?([\w]+)`", r"`\1`", doc)
    return re.sub(r"``([^`]+)``", r"`\1`", doc)


def readme_section(title: str, level: int = 2) -> str:
    """The README's section ``title`` (its text up to the next heading of the same level), links made site-relative."""
    text = (ROOT / "README.md").read_text()
    marker = "#" * level + " "
    start = text.index(f"\n{marker}{title}\n") + 1
    end = text.find(f"\n{marker}", start + 1)
    section = text[start : end if end != -1 else len(text)]
    section = re.sub(r"\[(\w+)\] \[(\w+)\]", r"\\[\1] \\[\2]", section)  # "[attr] [obj]" is not a link
    return section.replace("](docs/", "](")


def method_page(name: str) -> str:
    """A method's page: what it computes, where it differs from its authors' code, options, recipes, numbers."""
    cls = METHODS[name]
    module_doc = inspect.getdoc(sys.modules[cls.__module__]) or ""
    title, _, rest = module_doc.partition("\n")
    command = COMMAND_OF_LABELS.get(cls.label_kind, "train")
    lines = [f"# `{name}`: {markdown_text(title)}", "", markdown_text(inspect.getdoc(cls) or ""), ""]
    if rest.strip():
        lines += [markdown_text(rest.strip()), ""]
    lines += ["## Options", "", f"`vlprompt {command} --method {name} --help` prints:", "", "```text",
              describe_method(cls).rstrip(), "```", ""]  # fmt: skip
    if cls.recipes:
        lines += ["## Recipes", "", "| preset | training fields | method options | source |", "|---|---|---|---|"]
        for key, recipe in cls.recipes.items():
            fields = ", ".join(f"{k} {v}" for k, v in recipe.train.items())
            if recipe.epochs_by_shots:
                fields += f"; epochs by shots {list(recipe.epochs_by_shots)}"
            options = ", ".join(f"{k} {v}" for k, v in recipe.options.items())
            lines.append(f"| `{preset_name(name, key)}` | {fields} | {options} | {_cell(recipe.source)} |")
        lines.append("")
    published = [r for r in paper_results() if r.method == name]
    if published:
        header = "| protocol | dataset | backbone | shots | numbers | source |\n|---|---|---|---|---|---|"
        lines += ["## Published numbers", "", "As shipped in `vlprompt/data/papers.json` (accuracy, %).", "", header]
        for r in published:
            numbers = ", ".join(f"{k} {v}" for k, v in r.metrics.items())
            lines.append(f"| {r.protocol} | {r.dataset} | {r.backbone} | {r.shots} | {numbers} | {_cell(r.source)} |")
        lines.append("")
    return "\n".join(lines)


@functools.cache
def _parser():
    return build_parser()


def command_help(name: str) -> str:
    """``vlprompt NAME --help`` at 100 columns."""
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        return _parser()._subcommands_action._name_parser_map[name].format_help()
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns


def command_page(name: str) -> str:
    config, summary = COMMAND_CONFIGS[name]
    doc = markdown_text(inspect.getdoc(config) or "").split("\nAttributes:")[0].strip()
    return "\n".join([f"# `vlprompt {name}`", "", f"{summary[0].upper()}{summary[1:]}.", "", doc, "", "```text",
                      command_help(name).rstrip(), "```", ""])  # fmt: skip


def pages() -> dict[str, str]:
    """Every generated page, by path under docs/."""
    methods = ["# Methods", "", "| method | command | what it computes |", "|---|---|---|"]
    for name, cls in METHODS.items():
        first = markdown_text((inspect.getdoc(sys.modules[cls.__module__]) or "").split("\n")[0])
        methods.append(f"| [`{name}`]({name}.md) | {COMMAND_OF_LABELS.get(cls.label_kind, 'train')} | {first} |")
    commands = ["# Commands", "", "| command | what it does |", "|---|---|"]
    commands += [f"| [`vlprompt {n}`]({n}.md) | {summary} |" for n, (_, summary) in COMMAND_CONFIGS.items()]
    out = {
        "index.md": "\n".join(
            [
                _intro() + readme_section("Quickstart"),
                readme_section("What is inside"),
                readme_section("Measured on the built-in benchmark"),
            ]
        ),
        "methods/index.md": "\n".join(methods) + "\n",
        "commands/index.md": "\n".join(commands) + "\n",
    }
    out |= {f"methods/{name}.md": method_page(name) for name in METHODS}
    out |= {f"commands/{name}.md": command_page(name) for name in COMMAND_CONFIGS}
    return out


def _intro() -> str:
    """The README's title and first paragraphs (before the quickstart)."""
    text = (ROOT / "README.md").read_text()
    return text[: text.index("\n## Quickstart\n") + 1]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


if __name__ == "<run_path>":  # under mkdocs-gen-files (mkdocs build / serve)
    import mkdocs_gen_files

    for path, text in pages().items():
        with mkdocs_gen_files.open(path, "w") as fh:
            fh.write(text)
