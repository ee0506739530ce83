"""The package's shape holds: stages import one way, config imports no stage, and the CLI answers without
torch. Each test reads the source (or a fresh interpreter), so a change that breaks the shape fails here."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "kdexport"

# Lowest first. A module may import its own stage, a lower one, the base modules and config; nothing higher.
BASE = ("errors", "version", "registry", "files", "outputs", "envinfo", "allocator", "distributed")
STAGES = (("config",), ("data",), ("models",), ("runtimes",), ("distill",), ("export",), ("bench",), ("report",),
          ("pipeline", "runs"), ("sweep",), ("cli", "__main__"))
RANK = {name: 0 for name in BASE} | {name: i + 1 for i, names in enumerate(STAGES) for name in names}


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, kdexport module) of every import in ``path``, top-level or inside a function, relative or not."""
    parts = path.relative_to(PKG).with_suffix("").parts
    package = parts[:-1]  # the package a relative import starts from (an __init__'s own package included)
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(package[:len(package) - node.level + 1])
            names = [node.module] if node.module else [a.name for a in node.names]
            found += [(node.lineno, ".".join(base + n.split("."))) for n in names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kdexport."):
            found.append((node.lineno, node.module[len("kdexport."):]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name[len("kdexport."):]) for a in node.names if a.name.startswith("kdexport.")]
    return found


def upward_imports(root: Path = PKG) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        me = path.relative_to(root).parts[0].removesuffix(".py")
        if me == "__init__":  # the package's lazy facade (PEP 562): it names the public API, nothing imports it
            continue
        for line, module in imports_of(path):
            target = module.split(".")[0]
            if target == me:
                continue
            if target not in RANK:
                bad.append(f"{path.relative_to(root)}:{line} imports {module}, which no layer lists")
            elif RANK[target] > RANK[me] or (me in BASE and target not in BASE):
                bad.append(f"{path.relative_to(root)}:{line} -> {module}")
    return bad


def test_stages_import_one_way():
    assert upward_imports() == []


def test_every_top_level_module_has_a_layer():
    names = {p.stem for p in PKG.glob("*.py")} | {p.name for p in PKG.iterdir() if (p / "__init__.py").exists()}
    assert names - {"__init__"} <= set(RANK), names - set(RANK)


def test_the_check_catches_an_upward_import(tmp_path):
    """The walker is not vacuous: a data module importing the pipeline, config importing a stage and a base module
    importing config are each reported (relative, absolute and in-function forms)."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "__init__.py").write_text("")
    (tmp_path / "data" / "x.py").write_text("def f():\n    from ..pipeline import prepare\n")
    (tmp_path / "config.py").write_text("import kdexport.distill.losses\n")
    (tmp_path / "files.py").write_text("from .config import RunConfig\n")
    (tmp_path / "pipeline.py").write_text("from .data.x import f\nfrom .config import RunConfig\n")
    global PKG
    real, PKG = PKG, tmp_path
    try:
        bad = upward_imports(tmp_path)
    finally:
        PKG = real
    assert bad == ["config.py:1 -> distill.losses", "data/x.py:2 -> pipeline", "files.py:1 -> config"]


HEAVY = ("torch", "onnx", "onnxruntime", "torchvision", "numpy")


def _fresh(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["distill-export", "--help"], ["sweep", "--help"],
                                  ["quantize", "--help"], ["bench", "--help"], ["package", "--help"],
                                  ["check", "--help"], ["cache", "clear", "--help"]])
def test_the_cli_answers_help_and_version_without_torch(argv):
    """``kdexport --help``, ``--version`` and ``COMMAND --help`` build the whole CLI (every option, panel and
    registry choice) and import none of the heavy libraries: that is what keeps them under half a second
    (benchmarks/bench_cli.py measures it)."""
    loaded = _fresh(f"""
import contextlib, io, json, sys
from kdexport.cli import app
with contextlib.redirect_stdout(io.StringIO()):
    try:
        app({argv!r}, prog_name="kdexport")
    except SystemExit as e:
        assert e.code in (0, None), e.code
print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))
""")
    assert loaded == []


def test_config_and_registry_names_import_no_stage():
    """Building and validating every config (registry names included) loads no stage module and no torch."""
    loaded = _fresh("""
import json, sys
from kdexport.config import RunConfig, Grid
RunConfig(dataset="cifar10", augment="shift2-flip", teacher_tta="flip", quantize="static"); Grid()
mods = [m for m in sys.modules if m.startswith("kdexport.") and m.split(".")[1] in
        ("models", "distill", "export", "bench", "report", "pipeline", "sweep", "runtimes")
        and m.count(".") > 1]
print(json.dumps(sorted(mods + [m for m in ("torch", "onnx", "onnxruntime") if m in sys.modules])))
""")
    assert loaded == []


def test_the_api_loads_lazily_and_completely():
    import kdexport

    assert sorted(kdexport.__all__) == sorted(["__version__", *kdexport._API])
    for name in kdexport._API:
        assert getattr(kdexport, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        kdexport.nope  # noqa: B018


def test_declared_registry_names_are_exactly_the_registered_items():
    """A name the CLI offers (declared without importing the stage) has an item once its module is imported, and
    every built-in item is declared: the light list and the real registry cannot drift."""
    import importlib

    from kdexport.data import AUGMENTATIONS, DATASETS
    from kdexport.distill import LOSSES, SOFT_LOSSES, TTAS
    from kdexport.export import CALIBRATIONS
    from kdexport.runtimes import RUNTIMES

    for reg in (DATASETS, AUGMENTATIONS, LOSSES, SOFT_LOSSES, TTAS, CALIBRATIONS, RUNTIMES):
        for name in reg.names():
            reg.get(name)
        homes = {reg.home, *reg._homes.values()} - {None}
        for home in homes:
            importlib.import_module(home)
        assert set(reg._items) == set(reg.names()), reg.kind


def test_the_cli_reference_lists_every_command_and_flag():
    """docs/cli.md is generated from the CLI's own commands and fields, so it names every one of them."""
    from kdexport.cli import COMMANDS, reference_markdown
    from kdexport.config import cli_fields

    text = reference_markdown()
    assert {name for name, *_ in COMMANDS} >= {"distill-export", "sweep", "quantize", "bench", "predict", "check",
                                               "package", "verify", "ensemble", "select", "cache list", "cache clear"}
    for name, cls, exclude, extra, _ in COMMANDS:
        assert f"## kdexport {name}\n" in text, name
        for f in [*cli_fields(cls, exclude), *(f for e in extra for f in cli_fields(e))]:
            if not f.meta["argument"]:
                flag = (f.meta["flags"] or (f"--{f.name.replace('_', '-')}",))[0].split("/")[0]
                assert f"`{flag}`" in text, (name, flag)
    assert "**Common**" in text and text.index("**Common**") < text.index("**Data**")


def test_the_readme_stays_short_and_points_at_the_docs():
    readme = (PKG.parent / "README.md").read_text()
    assert len(readme.splitlines()) < 250
    for page in ("tour", "cli", "python-api", "errors", "architecture"):
        assert f"docs/{page}.md" in readme and (PKG.parent / "docs" / f"{page}.md").exists()
