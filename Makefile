# Two entry points for a newcomer: `make demo` and `make test`. Both set up .venv first (idempotent).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test clean
setup: $(VENV)/.detfuse-setup

$(VENV)/.detfuse-setup: pyproject.toml tools/install_detectron2.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 'setuptools<81' wheel
	# torch first: detectron2's build and pycocotools need it; these pins come as local wheels here
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[s3,wandb,dev]'
	bash tools/install_detectron2.sh $(PY)
	$(PY) -c 'import detectron2, ultralytics, ray, ensemble_boxes, detfuse; print("setup complete")'
	touch $@

demo: setup
	$(VENV)/bin/detfuse pipeline configs/demo.yaml

# the import contracts (layers, independent families, no cycles: pyproject.toml) first; then pytest, which exits 5
# when it collects nothing: that is a broken suite, not a pass
test: setup
	$(VENV)/bin/lint-imports
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

clean:
	rm -rf $(VENV) third_party build *.egg-info
