# Set-up on a fresh machine is part of both targets: `make search` runs the quick search end to
# end, `make test` runs the test suite. Pinned versions live in constraints.txt.
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: search test bench headline headline-explore lint data browser

search: $(STAMP) $(FASHION_MNIST)
	$(BIN)/clustune search --preset quick $(ARGS)

test: $(STAMP) $(FASHION_MNIST) browser
	$(BIN)/python -m pytest -q $(ARGS)

# benchmarks (docs/performance.md): prints a table, writes bench/results.json; about 20 minutes
bench: $(STAMP) $(FASHION_MNIST)
	$(BIN)/python bench/bench.py $(ARGS)

# the headline of docs/results.md (bench/headline.sh): hours; running it again continues
headline: $(STAMP) $(FASHION_MNIST)
	CLUSTUNE=$(BIN)/clustune sh bench/headline.sh

# the headline asked again with the wider space, Linf and L2 (bench/headline-explore.sh): hours
headline-explore: $(STAMP) $(FASHION_MNIST)
	CLUSTUNE=$(BIN)/clustune sh bench/headline-explore.sh

lint: $(STAMP)
	$(BIN)/ruff check .

data: $(FASHION_MNIST)

$(FASHION_MNIST):
	apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist

# headless Chromium: the test that the HTML report's figures are really drawn
browser:
	command -v chromium >/dev/null || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch torchvision
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)
