# Two entry points for a newcomer: `make demo` and `make test`. Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision pair installed first (override for your platform, e.g. TORCH_PKGS="torch torchvision").
TORCH_PKGS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test test-slow lint gate clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PKGS)
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/kdexport distill-export

test: install
	$(PY) -m ruff check kdexport tests benchmarks
	$(PY) -m pytest -m "not slow"

test-slow: install
	$(PY) -m pytest -m slow

clean:
	rm -rf $(VENV) runs .pytest_cache
