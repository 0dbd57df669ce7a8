# The two commands of the README. Both set up everything they need first.
.PHONY: setup demo test addon

setup:
	scripts/setup.sh

# headless translation of a clip into a new strip of a saved .blend (offline, tiny untrained model)
demo: setup
	scripts/demo.sh $(CLIP)

# the whole test suite (CI runs exactly this)
test: setup
	.venv/bin/python -m pytest -ra $(PYTEST_ARGS)

# the installable add-on zip
addon: setup
	.venv/bin/python build_addon.py
