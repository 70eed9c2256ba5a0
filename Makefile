# feedback-loop: `make demo` runs the main job, `make test` runs the whole suite.
# Both create .venv and install the project first when needed; nothing else is required.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test unit up clean chromium

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/feedback-loop demo

# The browser test drives Debian's chromium (Playwright comes with the test extra). Installed here
# when missing and we are root with apt-get; never fatal: without it that test skips, saying why.
chromium:
	@if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the browser test (apt-get)"; \
	    { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || \
	      { apt-get update -qq >/dev/null 2>&1 && \
	        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; }; } || \
	    echo "could not install chromium: the browser test will be skipped"; \
	  else \
	    echo "chromium is not installed (needs root and apt-get): the browser test will be skipped"; \
	  fi; \
	fi

test: $(STAMP) chromium
	$(BIN)/python -m pytest

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit feedback_loop streams consumers online_models

up: $(STAMP)
	$(BIN)/feedback-loop up

clean:
	rm -rf $(VENV) .feedback-loop .pytest_cache .hypothesis *.egg-info
