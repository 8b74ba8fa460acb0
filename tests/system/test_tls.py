"""The TCP listener: TLS, mutual TLS, and plain only on loopback when asked (issue 7, item 6).

A throwaway CA, server and client certificates are made with the `openssl` command-line tool
(`cryptography` is not a dependency); clients are grpc channels with a Health check, since the
`gpulet` CLI has no TLS options."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gpuletd.backends import pick_free_port
from tests.helpers import Daemon, run_daemon_once, short_tmpdir

pytestmark = pytest.mark.system

GPUS = {"GPULET_SIMULATED_GPUS": "16384"}
SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
def sock() -> Iterator[str]:
    """A socket address in a fresh directory (removed after)."""
    d = short_tmpdir()
    yield f"unix://{d}/s.sock"
    shutil.rmtree(d, ignore_errors=True)


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # signed by another CA
    stranger_key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)


def _ca(d: Path, name: str) -> tuple[Path, Path]:
    key, cert = d / f"{name}.key", d / f"{name}.pem"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return cert, key


def _leaf(d: Path, name: str, ca: tuple[Path, Path], ext: str) -> tuple[Path, Path]:
    key, csr, cert, extfile = (d / f"{name}.{x}" for x in ("key", "csr", "pem", "ext"))
    extfile.write_text(ext + "\n")
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}",
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-CAcreateserial", "-out", str(cert), "-days", "1", "-extfile", str(extfile),
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def pki() -> Iterator[Pki]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command-line tool to make test certificates")
    d = short_tmpdir()
    try:
        ca, other = _ca(d, "ca"), _ca(d, "other-ca")
        server = _leaf(
            d,
            "server",
            ca,
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth",
        )
        client = _leaf(d, "client", ca, "extendedKeyUsage=clientAuth")
        stranger = _leaf(d, "stranger", other, "extendedKeyUsage=clientAuth")
        yield Pki(ca[0], *server, *client, *stranger)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def health(target: str, creds: grpc.ChannelCredentials | None, timeout: float = 5.0) -> int:
    with grpc.secure_channel(target, creds) if creds else grpc.insecure_channel(target) as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)  # the stubs' types lack Check
        status: int = stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout).status
        return status


def _tls_daemon(pki: Pki, *extra: str) -> tuple[Daemon, int]:
    port = pick_free_port()
    d = Daemon(
        "--listen", f"127.0.0.1:{port}",
        "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
        *extra, env=GPUS,
    )  # fmt: skip
    return d, port


@pytest.fixture(scope="module")
def tls(pki: Pki) -> Iterator[tuple[Daemon, int]]:
    d, port = _tls_daemon(pki)
    with d:
        yield d, port


@pytest.fixture(scope="module")
def mtls(pki: Pki) -> Iterator[tuple[Daemon, int]]:
    d, port = _tls_daemon(pki, "--tls-client-ca", str(pki.ca))
    with d:
        yield d, port


def test_tls_serves_a_client_that_trusts_the_ca(pki: Pki, tls: tuple[Daemon, int]) -> None:
    d, port = tls
    creds = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
    assert health(f"localhost:{port}", creds) == SERVING
    assert health(f"127.0.0.1:{port}", creds) == SERVING
    assert '"tls": "server"' in d.output()


def test_tls_refuses_plain_text_and_an_untrusted_server(pki: Pki, tls: tuple[Daemon, int]) -> None:
    _, port = tls
    with pytest.raises(grpc.RpcError) as plain:
        health(f"127.0.0.1:{port}", None, timeout=3)
    assert plain.value.code() is grpc.StatusCode.UNAVAILABLE
    # A client that does not trust our CA (the system roots) refuses the server.
    with pytest.raises(grpc.RpcError) as untrusted:
        health(f"localhost:{port}", grpc.ssl_channel_credentials(), timeout=3)
    assert untrusted.value.code() is grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_serves_a_client_with_a_certificate_from_the_ca(
    pki: Pki, mtls: tuple[Daemon, int]
) -> None:
    d, port = mtls
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=pki.client_key.read_bytes(),
        certificate_chain=pki.client_cert.read_bytes(),
    )
    assert health(f"localhost:{port}", creds) == SERVING
    assert '"tls": "mutual"' in d.output()


@pytest.mark.parametrize("client", ["none", "stranger"])
def test_mutual_tls_refuses_a_client_without_a_certificate_from_the_ca(
    pki: Pki, mtls: tuple[Daemon, int], client: str
) -> None:
    _, port = mtls
    ca = pki.ca.read_bytes()
    creds = (
        grpc.ssl_channel_credentials(root_certificates=ca)
        if client == "none"
        else grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=pki.stranger_key.read_bytes(),
            certificate_chain=pki.stranger_cert.read_bytes(),
        )
    )
    with pytest.raises(grpc.RpcError) as refused:
        health(f"localhost:{port}", creds, timeout=3)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE


def test_insecure_loopback_serves_plain_on_127_0_0_1() -> None:
    port = pick_free_port()
    with Daemon("--listen", f"127.0.0.1:{port}", "--insecure-loopback", env=GPUS) as d:
        assert health(f"127.0.0.1:{port}", None) == SERVING
        assert '"tls": "off"' in d.output()


@pytest.mark.parametrize(
    ("listen", "flags", "needles"),
    [
        ("0.0.0.0", [], ["needs TLS", "--tls-cert FILE --tls-key FILE", "--insecure-loopback"]),
        ("0.0.0.0", ["--insecure-loopback"], ["loopback only", "--tls-cert"]),
        ("[::]", ["--insecure-loopback"], ["loopback only"]),
        ("127.0.0.1", [], ["needs TLS", "--insecure-loopback"]),  # plain only when asked
        ("192.0.2.1", [], ["needs TLS"]),
    ],
)
def test_a_plain_tcp_listener_refuses_to_start_saying_how_to_fix_it(
    listen: str, flags: list[str], needles: list[str]
) -> None:
    run = short_tmpdir()
    try:
        port = pick_free_port()
        r = run_daemon_once(
            "--address", f"unix://{run}/s.sock", "--listen", f"{listen}:{port}", *flags, env=GPUS
        )
        assert r.returncode == 2
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert f"{listen}:{port}" in r.stderr or "loopback only" in r.stderr
        for needle in needles:
            assert needle in r.stderr, r.stderr
        assert not (run / "s.sock").exists()
    finally:
        shutil.rmtree(run, ignore_errors=True)


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--tls-cert", "{cert}"], "both --tls-cert and --tls-key"),
        (["--tls-cert", "{cert}", "--tls-key", "/nonexistent.key"], "cannot read"),
        (["--tls-client-ca", "{cert}"], "both --tls-cert and --tls-key"),
    ],
)
def test_incomplete_tls_flags_are_one_line_errors(
    pki: Pki, sock: str, flags: list[str], needle: str
) -> None:
    port = pick_free_port()
    args = [f.format(cert=pki.server_cert) for f in flags]
    r = run_daemon_once(
        "--address", sock, "--listen", f"0.0.0.0:{port}", *args,
        env=GPUS,
    )  # fmt: skip
    assert r.returncode == 2
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_tls_flags_without_listen_are_refused(pki: Pki, sock: str) -> None:
    r = run_daemon_once(
        "--address", sock,
        "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key), env=GPUS,
    )  # fmt: skip
    assert r.returncode == 2 and "pass --listen HOST:PORT" in r.stderr, r.stderr
