# redis-proxy: `make run` to serve, `make test` to check. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum < requirements.txt | cut -d' ' -f1)
RUN ?= run
# Whether the pid file $(1) names a live proxy or Redis started here (a reused pid is not ours).
RUNNING = [ -f $(1) ] && grep -qa -e http_server.py -e redis-server /proc/$$(cat $(1))/cmdline 2>/dev/null
REFUSE = echo "$(2) is already running (pid $$(cat $(1))); run make shutdown first" >&2; exit 1

.PHONY: run test warm redis_start http_start shutdown lint bench docs clean

$(STAMP): requirements.txt
	rm -f $(VENV)/.installed-* && $(PYTHON) -m venv $(VENV) && $(PY) -m pip install -q --disable-pip-version-check -r requirements.txt && touch $@

run: $(STAMP)
	exec $(PY) http_server.py $(ARGS)

test: $(STAMP)
	$(PY) -m pytest

warm: $(STAMP)
	REDIS_URL=$${REDIS_URL:-$$(cat $(RUN)/redis.url 2>/dev/null)} $(PY) http_server.py warm $(FILE) $(ARGS)

redis_start: $(STAMP)
	@if $(call RUNNING,$(RUN)/redis.pid); then $(call REFUSE,$(RUN)/redis.pid,redis); fi; mkdir -p $(RUN) && $(PY) -m proxy.store.launcher $(RUN)/redis.pid $(RUN)/redis.url $${REDIS_PORT:-6379}

http_start: $(STAMP)
	@if $(call RUNNING,$(RUN)/http.pid); then $(call REFUSE,$(RUN)/http.pid,the http server); fi; mkdir -p $(RUN); REDIS_URL=$${REDIS_URL:-$$(cat $(RUN)/redis.url 2>/dev/null)} nohup $(PY) http_server.py >> $(RUN)/http.log 2>&1 & echo $$! > $(RUN)/http.pid && echo "http server pid $$(cat $(RUN)/http.pid), log in $(RUN)/http.log"

shutdown:
	@for f in $(RUN)/http.pid $(RUN)/redis.pid; do [ -f $$f ] && p=$$(cat $$f) && grep -qa -e http_server.py -e redis-server /proc/$$p/cmdline 2>/dev/null && kill $$p && for i in $$(seq 50); do kill -0 $$p 2>/dev/null || break; sleep 0.1; done; rm -f $$f; done; rm -f $(RUN)/redis.url; echo stopped

bench: $(STAMP)
	$(PY) -m bench $(ARGS)

docs: $(STAMP)
	$(PY) -m proxy.process.settings_docs

lint: $(STAMP)
	$(PY) -m pip install -q ruff==0.14.4 && $(VENV)/bin/ruff check . && $(PY) -m mypy

clean:
	rm -rf $(VENV) $(RUN)
