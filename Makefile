# keyshard — see README.md. Every target installs what it needs first (scripts/deps.sh).
.PHONY: deps demo test bench clean

deps:
	@bash scripts/deps.sh

demo: deps
	@bash scripts/demo.sh

test: deps
	@bash scripts/test.sh

bench: deps
	@.venv/bin/python -c "import matplotlib" 2>/dev/null || .venv/bin/pip install -q -e ".[test,bench]"
	@.venv/bin/python -m bench

clean:
	rm -rf .venv build src/*.egg-info .pytest_cache .hypothesis
