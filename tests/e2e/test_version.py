"""The one product version (proxy.__version__) is what the proxy tells upstream and RESP clients."""

import redis

from proxy import __version__
from servers import q, request


def test_upstream_is_sent_the_product_version_as_user_agent(upstream, make_proxy):
    url = upstream.serve("/ua", b"seen")
    proxy = make_proxy()
    assert request(proxy.port, q(url, "ua")).body == b"seen"
    (path, headers), = upstream.requests
    assert (path, headers["User-Agent"]) == ("/ua", "redis-proxy/0.2.0")


def test_resp_info_reports_the_product_version(make_resp_proxy):
    client = redis.Redis(port=make_resp_proxy().port, protocol=2)
    try:
        assert client.info("server")["redis_proxy_version"] == "0.2.0" == __version__
    finally:
        client.close()
