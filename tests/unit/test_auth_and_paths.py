"""The perimeter's pure parts: who may manage (service.auth) and paths held inside their folder
(service.paths, and the config loader that uses them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import SecretStr

from service.auth import Caller, Guard
from service.errors import ForbiddenError, UnauthorizedError
from service.model_config import ConfigError, load_model_config
from service.paths import PathEscapeError, escaping_links, inside
from tests.support import tiny_models

LOOPBACK = ["127.0.0.0/8", "::1/128"]


def guard(api: list[str] = [], admin: list[str] = [], networks: list[str] = LOOPBACK) -> Guard:  # noqa: B006
    return Guard([SecretStr(k) for k in api], [SecretStr(k) for k in admin], networks)


@pytest.mark.parametrize("address", ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1", None])
def test_without_admin_keys_loopback_and_unix_sockets_may_manage(address: str | None) -> None:
    guard().management(Caller(address, None))


@pytest.mark.parametrize("address", ["10.0.0.5", "192.168.1.2", "::2", "testclient", ""])
def test_without_admin_keys_other_addresses_get_403_naming_the_settings(address: str) -> None:
    with pytest.raises(ForbiddenError, match=r"ORTSERVE_MANAGEMENT_NETWORKS.*ORTSERVE_ADMIN_KEYS"):
        guard().management(Caller(address, None))


def test_a_trusted_network_still_needs_an_inference_key_where_those_are_set() -> None:
    with pytest.raises(UnauthorizedError):
        guard(api=["k"]).management(Caller("127.0.0.1", None))
    guard(api=["k"]).management(Caller("127.0.0.1", "k"))


def test_admin_keys_replace_the_network_rule_and_are_not_inference_keys() -> None:
    g = guard(api=["inf"], admin=["adm"])
    g.management(Caller("10.0.0.5", "adm"))
    for token in (None, "inf", "adm-", ""):
        with pytest.raises(UnauthorizedError, match="admin key"):
            g.management(Caller("127.0.0.1", token))
    with pytest.raises(UnauthorizedError):
        g.inference(Caller("127.0.0.1", "adm"))
    g.inference(Caller("10.0.0.5", "inf"))


def test_the_bearer_scheme_is_required() -> None:
    assert Caller.from_authorization("1.2.3.4", "Bearer abc").token == "abc"
    assert Caller.from_authorization("1.2.3.4", "bearer  abc ").token == "abc"
    assert Caller.from_authorization("1.2.3.4", "Basic abc").token is None
    assert Caller.from_authorization("1.2.3.4", "").token is None


@pytest.mark.parametrize(
    "value", ["/etc/passwd", "../x", "a/../../x", "..", "", "C:\\x", "\\\\h\\s"]
)
def test_values_that_leave_the_folder_are_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(PathEscapeError):
        inside(tmp_path, value)


def test_a_link_out_of_the_folder_is_refused_and_one_inside_is_not(tmp_path: Path) -> None:
    folder, outside = tmp_path / "m", tmp_path / "outside.txt"
    (folder / "sub").mkdir(parents=True)
    outside.write_text("x")
    (folder / "real.txt").write_text("y")
    (folder / "inner.txt").symlink_to(folder / "real.txt")
    assert inside(folder, "inner.txt") == (folder / "real.txt").resolve()
    assert inside(folder, "sub/../real.txt".replace("../", "")) == folder.resolve() / "sub/real.txt"
    (folder / "sub" / "out.txt").symlink_to(outside)
    with pytest.raises(PathEscapeError, match="symlink"):
        inside(folder, "sub/out.txt")
    assert escaping_links(folder) == ["sub/out.txt"]


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"labels": "/etc/passwd"}, "labels"),
        ({"labels": "../labels.txt"}, "labels"),
        ({"model_file": "/etc/passwd"}, "model_file"),
        ({"model_file": "../other/model.onnx"}, "model_file"),
    ],
)
def test_the_config_loader_names_the_field_that_escapes(
    tmp_path: Path, override: dict[str, str], field: str
) -> None:
    tiny_models.classifier(tmp_path / "clf")
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    with pytest.raises(ConfigError, match=f"field {field}"):
        load_model_config(tmp_path / "clf", override=override)


def test_the_folder_s_own_config_yaml_is_held_to_the_same_rules(tmp_path: Path) -> None:
    tiny_models.classifier(tmp_path / "clf")
    config = tiny_models.classifier_config()
    config["labels"] = str(tmp_path / "labels.txt")
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    (tmp_path / "clf" / "config.yaml").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"field labels.*absolute"):
        load_model_config(tmp_path / "clf")
    # and a config.yaml that is itself a link out of the folder
    (tmp_path / "elsewhere.yaml").write_text(json.dumps(tiny_models.classifier_config()))
    (tmp_path / "clf" / "config.yaml").unlink()
    (tmp_path / "clf" / "config.yaml").symlink_to(tmp_path / "elsewhere.yaml")
    with pytest.raises(ConfigError, match=r"config\.yaml"):
        load_model_config(tmp_path / "clf")
