# Two commands set everything up on a fresh machine:
#   make demo   install, migrate, seed demo data, start web + worker (embedded defaults)
#   make test   install and run the whole suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: install demo test lint format bench clean

$(VENV)/.installed: requirements.txt requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) manage.py migrate --noinput
	$(PY) manage.py collectstatic --noinput --verbosity 0
	$(PY) manage.py prepare_model
	$(PY) manage.py seed_demo
	PORT=$(PORT) $(PY) manage.py sora_serve --port $(PORT)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

bench: install
	$(PY) bench/claims.py

# Removes the virtualenv and ./var: the embedded database and everything else under the default SORA_DATA_DIR.
clean:
	rm -rf $(VENV) var
