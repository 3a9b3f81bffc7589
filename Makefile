# The two set-up commands of the README. Both install what they need first.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test lint bench clean man

install:
	./scripts/install.sh

demo: install
	$(VENV)/bin/ioband demo

test: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy --strict src/ioband/core src/ioband/policies
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy --strict src/ioband/core src/ioband/policies

man: install
	$(PY) scripts/manpage.py docs/ioband.1

bench: install
	$(PY) benchmarks/core_throughput.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
	rm -f src/ioband_core__mypyc*.so src/ioband/core/*.so src/ioband/policies/*.so src/ioband/_compiled.json
