# redis-proxy: `make run` to serve, `make test` to check. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum < requirements.txt | cut -d' ' -f1)

.PHONY: run test warm redis_start http_start shutdown lint bench docs clean

$(STAMP): requirements.txt
	rm -f $(VENV)/.installed-* && $(PYTHON) -m venv $(VENV) && $(PY) -m pip install -q --disable-pip-version-check -r requirements.txt && touch $@

run: $(STAMP)
	exec $(PY) http_server.py $(ARGS)

test: $(STAMP)
	$(PY) -m pytest

warm: $(STAMP)
	$(PY) http_server.py warm $(FILE) $(ARGS)

redis_start: $(STAMP)
	@mkdir -p run && $(PY) -m proxy.store.launcher run/redis.pid run/redis.url $${REDIS_PORT:-6379}

http_start: $(STAMP)
	@mkdir -p run && REDIS_URL=$${REDIS_URL:-$$(cat run/redis.url 2>/dev/null)} nohup $(PY) http_server.py >> run/http.log 2>&1 & echo $$! > run/http.pid && echo "http server pid $$(cat run/http.pid), log in run/http.log"

shutdown:
	@for f in run/http.pid run/redis.pid; do [ -f $$f ] && p=$$(cat $$f) && grep -qa -e http_server.py -e redis-server /proc/$$p/cmdline 2>/dev/null && kill $$p && for i in $$(seq 50); do kill -0 $$p 2>/dev/null || break; sleep 0.1; done; rm -f $$f; done; rm -f run/redis.url; echo stopped

bench: $(STAMP)
	$(PY) -m bench $(ARGS)

docs: $(STAMP)
	$(PY) -m proxy.process.settings_docs

lint: $(STAMP)
	$(PY) -m pip install -q ruff==0.14.4 && $(VENV)/bin/ruff check . && $(PY) -m mypy

clean:
	rm -rf $(VENV) run
