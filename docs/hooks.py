"""MkDocs hooks: the pages generated from the code and the results, at build time, so they cannot drift.

- ``<!-- cli-reference -->``: every command and option, from the config dataclasses the CLI is built from
  (``kdexport.cli.reference_markdown``);
- ``<!-- results-index -->``: ``benchmarks/results/README.md`` (the results index), its links to the topic pages
  rewritten for the site;
- ``<!-- include: benchmarks/results/NAME.md -->``: a result's Markdown as its benchmark wrote it, less its title.
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def on_page_markdown(markdown, page, config, files, **kwargs):
    if "<!-- cli-reference -->" in markdown:
        from kdexport.cli import reference_markdown

        markdown = markdown.replace("<!-- cli-reference -->", reference_markdown())
    if "<!-- results-index -->" in markdown:
        index = (ROOT / "benchmarks" / "results" / "README.md").read_text(encoding="utf-8")
        index = index.split("\n", 1)[1]  # the page has its own title
        markdown = markdown.replace("<!-- results-index -->", index.replace("../../docs/results/", ""))
    def include(m: re.Match) -> str:
        path = (ROOT / m.group(1)).resolve()
        if ROOT / "benchmarks" / "results" not in path.parents or not path.is_file():
            raise ValueError(f"{page.file.src_path}: cannot include {m.group(1)!r} (a file in benchmarks/results/)")
        text = path.read_text(encoding="utf-8")
        return text.split("\n", 1)[1].lstrip("\n") if text.startswith("# ") else text

    return re.sub(r"<!-- include: (\S+) -->", include, markdown)
