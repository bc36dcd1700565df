"""A local certificate authority and certificates for a fedcoord cluster (``fedcoord certs``).

:func:`make_ca` writes ``ca.pem`` and ``ca.key``; :func:`issue` writes ``NAME.pem`` and
``NAME.key`` signed by that CA, for the hosts given (IP addresses and DNS names in the
SubjectAlternativeName) and usable both ways (serverAuth and clientAuth), so one certificate
serves a node and identifies it as a client of its peers under mutual TLS. :func:`make_cluster`
does both for a list of names and writes ``tokens.toml`` (bearer tokens per role) when there is
none. Keys are EC P-256, written readable by their owner only (mode 0600).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from node.errors import ValidationError
from node.rpc.auth import Tokens

__all__ = [
    "CA_CERT",
    "CA_KEY",
    "DEFAULT_DAYS",
    "DEFAULT_HOSTS",
    "TOKENS_FILE",
    "CertPaths",
    "ClusterFiles",
    "issue",
    "make_ca",
    "make_cluster",
]

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
TOKENS_FILE = "tokens.toml"
DEFAULT_DAYS = 825
DEFAULT_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_SKEW = dt.timedelta(minutes=5)  # valid from a little earlier: clocks of a cluster differ


@dataclass(frozen=True)
class CertPaths:
    """A certificate and its key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class ClusterFiles:
    """What :func:`make_cluster` wrote (``tokens`` is None when an existing ``tokens.toml`` was kept)."""

    ca: CertPaths
    certs: dict[str, CertPaths]
    tokens: Path | None

    def written(self) -> list[Path]:
        """Every file written, CA first."""
        paths = [self.ca.cert, self.ca.key]
        for c in self.certs.values():
            paths += [c.cert, c.key]
        return [*paths, self.tokens] if self.tokens is not None else paths


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` atomically (a temporary file, then rename), with ``mode`` from the start."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _save(paths: CertPaths, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> CertPaths:
    pem_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write(paths.key, pem_key, 0o600)
    _write(paths.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return paths


def _out_dir(out_dir: str | os.PathLike[str]) -> Path:
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValidationError("out_dir", f"cannot create {out}: {e.strerror or e}") from None
    if not out.is_dir():
        raise ValidationError("out_dir", f"{out} is not a directory")
    return out


def _check_days(days: int) -> None:
    if not 1 <= days <= 36_500:
        raise ValidationError("days", f"{days} is out of range", limit="1..36500")


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise ValidationError("name", f"{name!r} is not a usable file name", limit="letters, digits, . _ -; <= 64")
    if name in ("ca", "tokens"):
        raise ValidationError("name", f"{name!r} is taken by the CA's and the tokens' files")


def _san(hosts: Iterable[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        h = host.strip()
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h.strip("[]"))))
            continue
        except ValueError:
            pass
        labels = h.rstrip(".").split(".")
        if labels and labels[0] == "*":  # a wildcard covers one label
            labels = labels[1:]
        if not labels or not all(_DNS_LABEL.fullmatch(label) for label in labels):
            raise ValidationError("hosts", f"{host!r} is neither an IP address nor a DNS name")
        names.append(x509.DNSName(h.rstrip(".").lower()))
    if not names:
        raise ValidationError("hosts", "a certificate needs at least one host (IP address or DNS name)")
    return x509.SubjectAlternativeName(names)


def _org() -> x509.NameAttribute[str]:
    return x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedcoord")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def make_ca(out_dir: str | os.PathLike[str], name: str = "fedcoord-ca", days: int = DEFAULT_DAYS) -> CertPaths:
    """Write a new certificate authority to ``out_dir``: ``ca.pem`` (give it to every node and
    client) and ``ca.key`` (mode 0600; it signs certificates, keep it off the nodes). Replaces an
    existing CA there."""
    _check_days(days)
    out = _out_dir(out_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name), _org()])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _save(CertPaths(out / CA_CERT, out / CA_KEY), cert, key)


def _load_ca(out: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = out / CA_CERT, out / CA_KEY
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except FileNotFoundError as e:
        raise ValidationError("out_dir", f"no CA in {out} ({e.filename} is missing): make one first") from None
    except (OSError, ValueError, TypeError) as e:
        raise ValidationError("out_dir", f"cannot load the CA in {out}: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValidationError("out_dir", f"{key_path} is not an EC key")
    return cert, key


def issue(
    out_dir: str | os.PathLike[str],
    name: str,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = DEFAULT_DAYS,
) -> CertPaths:
    """Write ``NAME.pem`` and ``NAME.key`` (mode 0600) to ``out_dir``, signed by the CA there, for
    ``hosts`` (IP addresses and DNS names), good for serving and for mutual TLS as a client. The
    certificate expires with the CA at the latest."""
    _check_name(name)
    _check_days(days)
    out = _out_dir(out_dir)
    san = _san(hosts)
    ca_cert, ca_key = _load_ca(out)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name), _org()]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(san, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return _save(CertPaths(out / f"{name}.pem", out / f"{name}.key"), cert, key)


def make_cluster(
    out_dir: str | os.PathLike[str],
    names: Sequence[str],
    hosts: Sequence[str] = DEFAULT_HOSTS,
    *,
    days: int = DEFAULT_DAYS,
    force: bool = False,
) -> ClusterFiles:
    """A new CA in ``out_dir``, a certificate for each of ``names`` (all for ``hosts``), and
    ``tokens.toml`` with a fresh token per role unless that file exists (it is kept, even with
    ``force``). Refuses to replace an existing CA (and so every certificate it signed) unless
    ``force``. Everything is checked before anything is written."""
    if not names:
        raise ValidationError("names", "give at least one certificate name (a node, a worker, a client)")
    for name in names:
        _check_name(name)
    if len(set(names)) != len(names):
        raise ValidationError("names", f"names repeat: {', '.join(names)}")
    _check_days(days)
    _san(hosts)
    out = Path(out_dir)
    existing = [p for p in (out / CA_CERT, out / CA_KEY) if p.exists()]
    if existing and not force:
        raise ValidationError(
            "out_dir",
            f"{out} already holds a CA ({', '.join(p.name for p in existing)}); replacing it invalidates every "
            "certificate it signed: pass force=True (--force) to do so, or choose another directory",
        )
    ca = make_ca(out, days=days)
    certs = {name: issue(out, name, hosts, days) for name in names}
    tokens_path = out / TOKENS_FILE
    new_tokens = not tokens_path.exists()
    if new_tokens:
        Tokens.generate().save(tokens_path)
    return ClusterFiles(ca=ca, certs=certs, tokens=tokens_path if new_tokens else None)
