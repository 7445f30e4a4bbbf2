"""docker-compose.yml parses and agrees with the proxy config it mounts, the Makefile and the
Dockerfile's build targets."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from proxy.config import settings_from_mapping

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


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions of each named stage, after those of the stage it is built FROM."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        instruction, _, arguments = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            base, *alias = arguments.split()
            assert len(alias) == 2 and alias[0].upper() == "AS", f"unnamed stage: {line}"
            current = list(stages.get(base, []))
            stages[alias[1]] = current
        else:
            current.append((instruction.upper(), " ".join(arguments.split())))
    return stages


def last(stage: list[tuple[str, str]], instruction: str) -> str:
    values = [arguments for name, arguments in stage if name == instruction]
    assert values, f"no {instruction}"
    return values[-1]


def pip_installs(stage: list[tuple[str, str]]) -> list[str]:
    """What each ``pip install`` of the stage installs (its arguments that are not options)."""
    installed = []
    for name, arguments in stage:
        if name == "RUN":
            for command in re.split(r"&&|;|\|\|", arguments):
                words = command.replace('"', "").replace("'", "").split()
                starts = [i for i in range(len(words)) if words[i : i + 2] == ["pip", "install"]]
                for start in starts:
                    installed += [word for word in words[start + 2 :] if not word.startswith("-")]
    return installed


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


def test_proxy_config_passes_the_start_up_checks(tmp_path: Path) -> None:
    # Found here rather than by a container that refuses to start (plain HTTP
    # to the other containers needs its insecure_* option, for one).
    config = proxy_config()
    for name in ("server.pem", "server.key", "ca.pem"):
        (tmp_path / name).write_text("")
    config["tls"] = {"server_cert": "server.pem", "server_key": "server.key"}
    config["trust_domains"] = {domain: "ca.pem" for domain in config["trust_domains"]}
    settings = settings_from_mapping(config, base_dir=tmp_path)
    assert (settings.opa_url, settings.sts_endpoint) == (
        config["opa"]["url"],
        config["aws"]["sts_endpoint"],
    )


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


def test_each_service_builds_its_own_dockerfile_target() -> None:
    services = compose()["services"]
    stages = dockerfile_stages()
    assert services["proxy"]["build"] == {"context": ".", "target": "runtime"}
    assert services["emulator"]["build"] == {"context": ".", "target": "emulator"}
    assert {"runtime", "emulator"} <= set(stages)
    # A plain `docker build .` gives the proxy, never the emulator.
    assert list(stages)[-1] == "runtime"


def test_runtime_image_installs_the_proxy_without_extras_and_runs_it_as_non_root() -> None:
    runtime = dockerfile_stages()["runtime"]
    assert pip_installs(runtime) == ["."]
    user = last(runtime, "USER").split(":")[0]
    assert user not in {"root", "0"}
    assert last(runtime, "ENTRYPOINT") == '["bedrock-proxy"]'


def test_emulator_image_has_the_dev_extra_and_runs_as_non_root() -> None:
    emulator = dockerfile_stages()["emulator"]
    assert pip_installs(emulator) == [".[dev]"]
    assert last(emulator, "USER").split(":")[0] not in {"root", "0"}
    entrypoint = json.loads(last(emulator, "ENTRYPOINT"))
    assert entrypoint == ["bedrock-proxy"]
    assert compose()["services"]["emulator"]["command"][0] == "emulator"
