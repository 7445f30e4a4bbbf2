"""docker-compose.yml parses and agrees with the proxy config it mounts and the Makefile."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

ROOT = Path(__file__).resolve().parent.parent


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def mounted(service: dict[str, Any], target: str) -> Path:
    for volume in service["volumes"]:
        source, container_path, *_ = volume.split(":")
        if container_path == target:
            return ROOT / source
    raise AssertionError(f"nothing mounted at {target}")


def proxy_config() -> dict[str, Any]:
    proxy = compose()["services"]["proxy"]
    config_path = proxy["command"][proxy["command"].index("--config") + 1]
    return tomllib.loads(mounted(proxy, config_path).read_text())


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_services_present() -> None:
    assert set(compose()["services"]) == {"opa", "emulator", "proxy"}


def test_opa_image_is_the_pinned_version_with_policies_and_watch() -> None:
    opa = compose()["services"]["opa"]
    pinned = re.search(r"^OPA_VERSION := v(\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert pinned is not None
    assert opa["image"] == f"openpolicyagent/opa:{pinned.group(1)}"
    assert "--watch" in opa["command"]
    policies_dir = opa["command"][-1]
    assert mounted(opa, f"{policies_dir}") == ROOT / "policies"


def test_proxy_reaches_opa_and_emulator_where_they_listen() -> None:
    services = compose()["services"]
    config = proxy_config()
    opa_url = urlsplit(config["opa"]["url"])
    opa_addr = next(a for a in services["opa"]["command"] if a.startswith("--addr="))
    assert opa_url.hostname == "opa"
    assert opa_url.port == int(opa_addr.rsplit(":", 1)[1])

    emulator_command = services["emulator"]["command"]
    upstream = urlsplit(config["upstream"]["url"])
    sts = urlsplit(config["aws"]["sts_endpoint"])
    assert (upstream.hostname, upstream.port) == (
        "emulator",
        int(option(emulator_command, "--port")),
    )
    assert (sts.hostname, sts.port) == ("emulator", int(option(emulator_command, "--sts-port")))


def test_published_port_is_the_data_listener_and_tls_files_are_in_the_mounted_pki() -> None:
    proxy = compose()["services"]["proxy"]
    config = proxy_config()
    data_port = config["listen"]["data"].rsplit(":", 1)[1]
    assert any(p.endswith(f":{data_port}") for p in proxy["ports"])
    pki_target = "/etc/bedrock-proxy/pki"
    mounted(proxy, pki_target)
    for path in (
        config["tls"]["server_cert"],
        config["tls"]["server_key"],
        *config["trust_domains"].values(),
    ):
        assert path.startswith(pki_target + "/")
