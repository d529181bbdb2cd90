"""infra/tls.py: the listeners' TLS context, and errors that name the variable at fault."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from auditlog.endpoints import api_ssl, api_url
from infra.errors import ConfigError
from infra.settings import Settings
from infra.tls import client_context, server_context, server_pem
from tests.tlscerts import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls(pki: Pki, **kw: object) -> Settings:
    base: dict[str, object] = {"tls_cert": str(pki.server_cert), "tls_key": str(pki.server_key)}
    base.update(kw)
    return Settings(**base)  # type: ignore[arg-type]


def test_off_without_a_certificate() -> None:
    assert server_context(Settings()) is None
    assert server_pem(Settings()) is None


def test_tls_12_at_least_and_client_certificates_only_with_a_client_ca(pki: Pki) -> None:
    ctx = server_context(tls(pki))
    assert ctx is not None
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_NONE
    mutual = server_context(tls(pki, tls_client_ca=str(pki.ca)))
    assert mutual is not None and mutual.verify_mode == ssl.CERT_REQUIRED
    pem = server_pem(tls(pki, tls_client_ca=str(pki.ca)))
    assert pem is not None and pem.client_ca == pki.ca.read_bytes()
    assert pem.key == pki.server_key.read_bytes()


def test_a_key_that_is_not_the_certificates_is_named(pki: Pki) -> None:
    with pytest.raises(ConfigError) as err:
        server_context(tls(pki, tls_key=str(pki.client_key)))
    assert err.value.setting == "AUDIT_TLS_KEY"
    assert "is not the key of AUDIT_TLS_CERT" in str(err.value)


@pytest.mark.parametrize("field, var", [("tls_cert", "AUDIT_TLS_CERT"),
                                        ("tls_key", "AUDIT_TLS_KEY"),
                                        ("tls_client_ca", "AUDIT_TLS_CLIENT_CA")])  # fmt: skip
def test_a_missing_file_is_named(pki: Pki, tmp_path: Path, field: str, var: str) -> None:
    gone = str(tmp_path / "gone.pem")  # e.g. removed after the settings were checked
    with pytest.raises(ConfigError) as err:
        server_context(tls(pki, **{field: gone}))
    assert err.value.setting == var and "gone.pem" in str(err.value)


@pytest.mark.parametrize("field, var", [("tls_cert", "AUDIT_TLS_CERT"),
                                        ("tls_key", "AUDIT_TLS_KEY"),
                                        ("tls_client_ca", "AUDIT_TLS_CLIENT_CA")])  # fmt: skip
def test_a_file_without_pem_is_named(pki: Pki, tmp_path: Path, field: str, var: str) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a PEM file\n")
    with pytest.raises(ConfigError) as err:
        server_context(tls(pki, **{field: str(junk)}))
    assert err.value.setting == var


def test_an_encrypted_key_fails_instead_of_prompting(pki: Pki, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(pki.server_key.read_bytes(), None)
    locked = tmp_path / "locked.pem"
    locked.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))  # fmt: skip
    with pytest.raises(ConfigError) as err:
        server_context(tls(pki, tls_key=str(locked)))
    assert err.value.setting == "AUDIT_TLS_KEY"


def test_client_context_names_the_client_variables(pki: Pki, tmp_path: Path) -> None:
    ctx = client_context(str(pki.ca), str(pki.client_cert), str(pki.client_key))
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(ConfigError) as err:
        client_context(str(pki.ca), str(pki.client_cert))
    assert err.value.setting == "AUDIT_API_CERT"
    with pytest.raises(ConfigError) as err:
        client_context(str(tmp_path / "nope.pem"))
    assert err.value.setting == "AUDIT_API_CA"
    with pytest.raises(ConfigError) as err:
        client_context(str(pki.ca), str(pki.client_cert), str(pki.server_key))
    assert err.value.setting == "AUDIT_API_KEY"


def test_the_cli_defaults_to_https_when_the_service_has_tls(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AUDIT_API_URL", raising=False)
    assert api_url(Settings(http_port=8443)) == "http://127.0.0.1:8443"
    assert api_url(tls(pki, http_port=8443)) == "https://127.0.0.1:8443"
    assert api_ssl("http://127.0.0.1:8080") is None
    monkeypatch.setenv("AUDIT_API_CA", str(pki.ca))
    assert api_ssl("https://127.0.0.1:8443") is not None
