# Two entry points for a newcomer: `make demo` and `make test`. Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision pair installed first; pip gets it as written, so it may carry pip options, e.g. the
# CPU-only wheels: TORCH_PKGS="torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu".
TORCH_PKGS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install install-runtimes demo test test-slow gate docs shipped-baseline clean

# setuptools warns on every editable install that a folder named like the package could shadow it: true of any
# editable install, and nothing a newcomer must act on, so the install line filters that one warning.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PKGS)
	PYTHONWARNINGS="ignore:Editable installation" $(PY) -m pip install -q -e ".[test,docs,openvino]"
	touch $@

install: $(VENV)/.installed

# Every runtime a student ships on (--targets litert,executorch,coreml beside openvino): heavy (jax, transformers
# come with litert-torch and executorch), so only the slow tests and .ci/run need it.
install-runtimes: install
	PYTHONWARNINGS="ignore:Editable installation" $(PY) -m pip install -q -e ".[runtimes]"

demo: install
	$(VENV)/bin/kdexport distill-export

# The fast suite runs on every core (pytest-xdist; each worker computes on one thread).
test: install
	$(PY) -m ruff check kdexport tests benchmarks
	$(PY) -m pytest -m "not slow" -n auto

test-slow: install
	$(PY) -m pytest -m slow

# The reference site: strict, so a broken link or a page missing from the nav fails the build.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# The CI gate: a fresh distillation on the embedded default, checked against the shipped baseline.
gate: install
	rm -rf runs/ci-gate
	$(VENV)/bin/kdexport distill-export --out runs/ci-gate
	$(VENV)/bin/kdexport check runs/ci-gate/report.json --baseline models/digits/report.json \
		--models student,baseline --skip latency --junit runs/ci-gate/check.xml --markdown runs/ci-gate/check.md

# Regenerate the shipped baseline in models/digits/ (see models/README.md).
shipped-baseline: install
	rm -rf runs/shipped
	$(VENV)/bin/kdexport distill-export --out runs/shipped
	mkdir -p models/digits/onnx
	cp runs/shipped/report.json runs/shipped/report.md models/digits/
	cp runs/shipped/onnx/student.onnx runs/shipped/onnx/baseline.onnx models/digits/onnx/

clean:
	rm -rf $(VENV) runs site .pytest_cache
