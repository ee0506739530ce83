"""MkDocs hooks: the pages generated from the code and the results, at build time, so they cannot drift.

- ``<!-- cli-reference -->``: every command and option, from the config dataclasses the CLI is built from
  (``kdexport.cli.reference_markdown``);
- ``<!-- results-index -->``: ``benchmarks/results/README.md`` (the results index), its links to the topic pages
  rewritten for the site.
"""

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
    return markdown
