# feedback-loop: `make demo` runs the main job, `make test` runs the whole suite.
# Both create .venv and install the project first when needed; nothing else is required.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test unit up clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/feedback-loop demo

test: $(STAMP)
	$(BIN)/python -m pytest

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit feedback_loop streams consumers online_models

up: $(STAMP)
	$(BIN)/feedback-loop up

clean:
	rm -rf $(VENV) .feedback-loop .pytest_cache .hypothesis *.egg-info
