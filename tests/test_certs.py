"""``node.rpc.certs`` and ``fedcoord certs``: a local CA and certificates that verify as a TLS
server and client would check them (cryptography's path validation), keys kept private, an
existing CA never replaced by accident, and the command on a small typer app."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

import pytest
import typer
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store
from typer.testing import CliRunner

from fedcoord.cmd_certs import certs
from node.errors import ValidationError
from node.rpc.auth import Role, Tokens
from node.rpc.certs import CA_CERT, CA_KEY, TOKENS_FILE, CertPaths, issue, make_ca, make_cluster


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o777


def verify_server(ca: x509.Certificate, leaf: x509.Certificate, name: x509.DNSName | x509.IPAddress) -> None:
    verifier = PolicyBuilder().store(Store([ca])).build_server_verifier(name)
    verifier.verify(leaf, [])


def test_make_cluster_writes_a_ca_certificates_and_tokens(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    files = make_cluster(out, ["node1", "worker1"], ["127.0.0.1", "localhost", "node1.example", "::1"])
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([CA_CERT, CA_KEY, TOKENS_FILE, "node1.pem", "node1.key", "worker1.pem", "worker1.key"])
    assert sorted(p.name for p in files.written()) == names
    assert files.ca == CertPaths(out / CA_CERT, out / CA_KEY)
    assert files.certs["node1"] == CertPaths(out / "node1.pem", out / "node1.key")
    assert files.tokens == out / TOKENS_FILE
    for private in (CA_KEY, "node1.key", "worker1.key", TOKENS_FILE):
        assert mode(out / private) == 0o600, private
    tokens = Tokens.load(out / TOKENS_FILE)
    assert all(tokens.by_role[role] for role in Role)


def test_the_ca_signs_leaves_that_verify_as_server_and_client(tmp_path: Path) -> None:
    files = make_cluster(tmp_path, ["node1"], ["127.0.0.1", "localhost", "node1.example"])
    ca, leaf = load_cert(files.ca.cert), load_cert(files.certs["node1"].cert)

    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert ca.subject == ca.issuer
    assert leaf.issuer == ca.subject
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    leaf.verify_directly_issued_by(ca)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "node1.example"]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}

    for name in (
        x509.DNSName("localhost"),
        x509.DNSName("node1.example"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ):
        verify_server(ca, leaf, name)
    with pytest.raises(x509.verification.VerificationError):
        verify_server(ca, leaf, x509.DNSName("other.example"))
    client = PolicyBuilder().store(Store([ca])).build_client_verifier().verify(leaf, [])
    assert client.subjects is not None

    key = serialization.load_pem_private_key(files.certs["node1"].key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert key.public_key().public_bytes(*spki) == leaf.public_key().public_bytes(*spki)


def test_a_leaf_of_another_ca_does_not_verify(tmp_path: Path) -> None:
    a = make_cluster(tmp_path / "a", ["node"])
    b = make_cluster(tmp_path / "b", ["node"])
    with pytest.raises(x509.verification.VerificationError):
        verify_server(load_cert(a.ca.cert), load_cert(b.certs["node"].cert), x509.DNSName("localhost"))


def test_validity_follows_days_and_never_outlives_the_ca(tmp_path: Path) -> None:
    ca_paths = make_ca(tmp_path, name="short-ca", days=10)
    leaf_paths = issue(tmp_path, "n1", days=400)
    ca, leaf = load_cert(ca_paths.cert), load_cert(leaf_paths.cert)
    now = dt.datetime.now(dt.UTC)
    assert ca.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "short-ca"
    assert dt.timedelta(days=9) < ca.not_valid_after_utc - now <= dt.timedelta(days=10)
    assert leaf.not_valid_after_utc == ca.not_valid_after_utc
    assert leaf.not_valid_before_utc <= now
    verify_server(ca, leaf, x509.DNSName("localhost"))


def test_an_existing_ca_is_replaced_only_with_force_and_tokens_are_kept(tmp_path: Path) -> None:
    first = make_cluster(tmp_path, ["node"])
    tokens = Tokens.load(tmp_path / TOKENS_FILE)
    ca_before = (tmp_path / CA_CERT).read_bytes()
    with pytest.raises(ValidationError, match="already holds a CA") as info:
        make_cluster(tmp_path, ["node"])
    assert "--force" in str(info.value)
    assert (tmp_path / CA_CERT).read_bytes() == ca_before

    second = make_cluster(tmp_path, ["node", "extra"], force=True)
    assert (tmp_path / CA_CERT).read_bytes() != ca_before
    assert second.tokens is None
    assert TOKENS_FILE not in {p.name for p in second.written()}
    assert Tokens.load(tmp_path / TOKENS_FILE) == tokens
    assert first.certs["node"].cert == second.certs["node"].cert
    leaf = load_cert(second.certs["extra"].cert)
    leaf.verify_directly_issued_by(load_cert(second.ca.cert))


def test_issue_adds_a_certificate_to_an_existing_ca(tmp_path: Path) -> None:
    files = make_cluster(tmp_path, ["node"])
    later = issue(tmp_path, "node2", ["10.1.2.3", "node2.example"])
    load_cert(later.cert).verify_directly_issued_by(load_cert(files.ca.cert))
    assert mode(later.key) == 0o600
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize(
    ("names", "hosts", "days", "words"),
    [
        ([], ["localhost"], 10, "at least one certificate name"),
        (["../escape"], ["localhost"], 10, "not a usable file name"),
        (["ca"], ["localhost"], 10, "taken by the CA"),
        (["a", "a"], ["localhost"], 10, "names repeat"),
        (["a"], [], 10, "at least one host"),
        (["a"], ["not a host!"], 10, "neither an IP address nor a DNS name"),
        (["a"], ["localhost"], 0, "out of range"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(
    tmp_path: Path, names: list[str], hosts: list[str], days: int, words: str
) -> None:
    with pytest.raises(ValidationError, match=words):
        make_cluster(tmp_path / "out", names, hosts, days=days)
    assert not (tmp_path / "out").exists()


def test_issue_without_a_ca_says_so(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="no CA in"):
        issue(tmp_path, "node")


# ---------------------------------------------------------------------------------- fedcoord certs


def certs_app() -> typer.Typer:
    app = typer.Typer(add_completion=False, rich_markup_mode="markdown")

    @app.callback()
    def _root() -> None:
        """A stand-in for the fedcoord app."""

    app.command("certs")(certs)
    return app


def test_fedcoord_certs_writes_the_cluster_and_lists_the_files(tmp_path: Path) -> None:
    out = tmp_path / "c"
    args = ["certs", "--out", str(out), "--name", "n1", "--name", "w1", "--host", "127.0.0.1", "--host", "n1.example"]
    result = CliRunner().invoke(certs_app(), args, env={"NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    for name in ("ca.pem", "ca.key", "n1.pem", "n1.key", "w1.pem", "w1.key", "tokens.toml"):
        assert (out / name).is_file(), name
        assert str(out / name) in result.stdout
    san = load_cert(out / "n1.pem").extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["n1.example"]

    again = CliRunner().invoke(certs_app(), args, env={"NO_COLOR": "1"})
    assert again.exit_code == 1
    assert "already holds a CA" in again.stderr
    forced = CliRunner().invoke(certs_app(), [*args, "--force"], env={"NO_COLOR": "1"})
    assert forced.exit_code == 0, forced.output
    assert "kept the existing" in forced.stdout


def test_fedcoord_certs_defaults_and_help(tmp_path: Path) -> None:
    result = CliRunner().invoke(certs_app(), ["certs", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert {p.name for p in tmp_path.iterdir()} == {
        "ca.pem",
        "ca.key",
        "node.pem",
        "node.key",
        "client.pem",
        "client.key",
        "tokens.toml",
    }
    bad = CliRunner().invoke(certs_app(), ["certs", "--out", str(tmp_path / "x"), "--host", "bad host!"])
    assert bad.exit_code == 1
    assert "neither an IP address nor a DNS name" in bad.stderr
    help_text = CliRunner().invoke(certs_app(), ["certs", "--help"], env={"COLUMNS": "200"}).stdout
    for words in ("ca.pem", "tokens.toml", "--tls-cert", "--force", "--host", "--name"):
        assert words in help_text, words
