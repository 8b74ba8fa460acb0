"""The `gpulet` CLI in-process (`gpulet.cli.main.main`), against the fake daemon of
test_client: what it prints from the client's values, and its exit codes."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import grpc
import pytest

import gpulet
from gpulet.cli import main as cli_main
from gpulet.v1 import leases_pb2, selector_pb2, types_pb2
from tests.unit.test_client import NOW, Harness, harness, lease_pb, model_pb, ts

pytestmark = pytest.mark.timeout(20)

HOSTILE = "evil\n\x1b[31mRED\x1b]0;title\x07\u202e"


@pytest.fixture
def h(monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    with harness() as h:
        # The CLI dials through the harness's channel instead of a socket.
        monkeypatch.setattr(cli_main, "Client", lambda address=None: h.client)
        yield h


def gpulet_cli(h: Harness, *argv: str) -> Any:
    """`gpulet ARGV` in a thread: the test answers its calls through `h.daemon`."""
    return h.call(cli_main.main, list(argv))


def no_terminal_escapes(text: str) -> None:
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text


def test_lease_list_escapes_what_clients_named_themselves(
    h: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    run = gpulet_cli(h, "lease", "list")
    h.daemon.unary(
        "LeaseService.ListLeases",
        leases_pb2.ListLeasesResponse(leases=[lease_pb(client_name=HOSTILE)]),
    )
    assert run.result(timeout=5) == 0
    out = capsys.readouterr().out
    no_terminal_escapes(out)
    assert "evil\\x0a\\x1b[31mRED\\x1b]0;title\\x07\\u202e" in out
    assert len(out.splitlines()) == 2  # the header and one row: the newline did not split it


def test_watch_escapes_reasons_and_names(h: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    run = gpulet_cli(h, "watch")
    h.daemon.stream(
        "LeaseService.Watch",
        [
            leases_pb2.WatchResponse(
                time=ts(NOW),
                model=leases_pb2.ModelEvent(
                    model_id="m\x1b[2J", state=types_pb2.MODEL_STATE_FAILED, reason=HOSTILE
                ),
            ),
            leases_pb2.WatchResponse(
                time=ts(NOW),
                lease=leases_pb2.LeaseEvent(
                    kind=leases_pb2.LEASE_EVENT_KIND_GRANTED, lease=lease_pb(client_name=HOSTILE)
                ),
            ),
        ],
    )
    assert run.result(timeout=5) == 6  # the stream ended: gpuletd went away
    captured = capsys.readouterr()
    no_terminal_escapes(captured.out)
    lines = captured.out.splitlines()
    assert len(lines) == 2
    assert "model m\\x1b[2J: failed" in lines[0]
    assert "granted (m, evil\\x0a" in lines[1]
    assert "closed the watch stream" in captured.err


def test_models_json_keeps_its_keys(h: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    run = gpulet_cli(h, "models", "--json")
    h.daemon.unary(
        "SelectorService.ListModels", selector_pb2.ListModelsResponse(models=[model_pb("a")])
    )
    assert run.result(timeout=5) == 0
    (m,) = json.loads(capsys.readouterr().out)["models"]
    assert m == {
        "id": "a",
        "name": "A",
        "backend": "process",
        "quantization": "fp8",
        "vram_estimate_mb": 1000,
        "role_priority": {"caption": 90, "keywords": 10},
        "state": "loaded",
        "gpu_uuids": ["GPU-1"],
        "lease_count": 1,
        "idle_seconds": None,
        "reservation_mb": 1200,
        "endpoint": "",
        "measured_mb": None,
        "peak_mb": None,
        "load_seconds": None,
        "unload_seconds": None,
        "measured_loads": 0,
        "confidence": "unspecified",
        "engine": "",
    }


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (selector_pb2.EXPLAIN_STATUS_ELIGIBLE, 0),
        (selector_pb2.EXPLAIN_STATUS_NO_SUPPORT, 0),
        (selector_pb2.EXPLAIN_STATUS_NOT_FOUND, 3),
    ],
)
def test_explain_exits_3_for_a_model_that_does_not_exist(
    h: Harness, capsys: pytest.CaptureFixture[str], status: int, code: int
) -> None:
    run = gpulet_cli(h, "explain", "caption", "m")
    h.daemon.unary(
        "SelectorService.ExplainSelection",
        selector_pb2.ExplainSelectionResponse(status=status, reason="because"),  # type: ignore[arg-type]
    )
    assert run.result(timeout=5) == code
    assert capsys.readouterr().out.endswith(": because\n")


@pytest.mark.parametrize(
    ("code", "reason", "exit_code"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_TTL", 2),
        (grpc.StatusCode.NOT_FOUND, "LEASE_ENDED", 3),
        (grpc.StatusCode.PERMISSION_DENIED, "WRONG_TOKEN", 4),
        (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN", 6),
        (grpc.StatusCode.INTERNAL, "", 1),
        (grpc.StatusCode.UNAVAILABLE, "", 6),
    ],
)
def test_each_refusal_is_one_line_and_its_own_exit_code(
    h: Harness,
    capsys: pytest.CaptureFixture[str],
    code: grpc.StatusCode,
    reason: str,
    exit_code: int,
) -> None:
    run = gpulet_cli(h, "lease", "renew", "l-0123456789abcdef", "--token", "t")
    h.daemon.unary("LeaseService.Renew", code=code, details=f"said \x1b[1m{HOSTILE}", reason=reason)
    assert run.result(timeout=5) == exit_code
    err = capsys.readouterr().err
    no_terminal_escapes(err)
    assert err.startswith("gpulet: ") and "Traceback" not in err
    # Newlines survive only as indented continuation lines (a backend's log tail).
    assert all(line.startswith("  ") for line in err.splitlines()[1:])


@pytest.mark.parametrize(
    ("code", "reason", "exit_code"),
    [
        (grpc.StatusCode.NOT_FOUND, "UNKNOWN_MODEL", 3),
        (grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_ROLE", 3),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "QUEUE_FULL", 4),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "MODEL_TOO_LARGE", 4),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "", 5),
        (grpc.StatusCode.FAILED_PRECONDITION, "BACKEND_FAILED", 1),
    ],
)
def test_acquire_refusals_and_timeouts(
    h: Harness,
    capsys: pytest.CaptureFixture[str],
    code: grpc.StatusCode,
    reason: str,
    exit_code: int,
) -> None:
    run = gpulet_cli(h, "lease", "acquire", "m", "--timeout", "2")
    h.daemon.stream(
        "LeaseService.Acquire", [], code=code, details="Deadline Exceeded", reason=reason
    )
    assert run.result(timeout=5) == exit_code
    err = capsys.readouterr().err
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        assert (
            err == "gpulet: gave up after 2 s waiting for a lease on model 'm' (not yet queued)\n"
        )


def test_acquire_prints_the_lease_and_passes_the_flags(
    h: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    run = gpulet_cli(
        h, "lease", "acquire", "--role", "caption", "--ttl", "30", "--priority", "-1000",
        "--exclusive", "--client-name", "me", "--json",
    )  # fmt: skip
    request = h.daemon.stream(
        "LeaseService.Acquire",
        [
            leases_pb2.AcquireResponse(queued=leases_pb2.Queued(position=1, queue_length=1)),
            leases_pb2.AcquireResponse(loading=leases_pb2.Loading(model_id="m")),
            leases_pb2.AcquireResponse(granted=lease_pb(token="-tok")),
        ],
    )
    h.daemon.unary(
        "LeaseService.Renew",
        leases_pb2.RenewResponse(lease=lease_pb(expires_at=ts(NOW + timedelta(seconds=30)))),
    )
    assert run.result(timeout=5) == 0
    assert (request.role, request.ttl_seconds, request.priority) == ("caption", 30, -1000)
    assert request.exclusive and request.client_name == "me"
    queued, loading, granted = map(json.loads, capsys.readouterr().out.splitlines())
    assert queued == {"state": "queued", "position": 1, "queue_length": 1}
    assert loading == {"state": "loading", "model_id": "m"}
    assert granted["state"] == "granted" and granted["token"] == "-tok"
    assert granted["lease_id"] == "l-0123456789abcdef"


@pytest.mark.parametrize(
    ("argv", "stdin", "env"),
    [
        (["--token", "-dVRj_x"], "", {}),  # a token that begins with `-`
        (["--token=-dVRj_x"], "", {}),
        (["--token", "-"], "-dVRj_x\n", {}),  # standard input: out of `ps`
        ([], "", {"GPULET_LEASE_TOKEN": "-dVRj_x"}),
        (["--token", "-dVRj_x"], "", {"GPULET_LEASE_TOKEN": "other"}),  # the flag wins
    ],
)
def test_the_token_in_every_form(
    h: Harness,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    stdin: str,
    env: dict[str, str],
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    monkeypatch.delenv("GPULET_LEASE_TOKEN", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for command in ("renew", "release"):
        run = gpulet_cli(h, "lease", command, "l-0123456789abcdef", *argv)
        if command == "renew":
            request = h.daemon.unary(
                "LeaseService.Renew", leases_pb2.RenewResponse(lease=lease_pb())
            )
        else:
            request = h.daemon.unary("LeaseService.Release", leases_pb2.ReleaseResponse())
        assert run.result(timeout=5) == 0
        assert request.token == "-dVRj_x"
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))


@pytest.mark.parametrize(
    ("argv", "stdin", "needle"),
    [
        ([], "", "token is needed"),
        (["--token", "-"], "", "from standard input is not a token"),
        (["--token", ""], "", "from --token is not a token"),
        (["--token", "a b"], "", "not a token"),
    ],
)
def test_a_missing_or_empty_token_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    stdin: str,
    needle: str,
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    monkeypatch.delenv("GPULET_LEASE_TOKEN", raising=False)
    assert cli_main.main(["lease", "renew", "l-0123456789abcdef", *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.splitlines()) == 1


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main.main(["--version"]) == 0
    assert capsys.readouterr().out == f"gpulet {gpulet.__version__}\n"


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main.main(["--help"]) == 0
    out = capsys.readouterr().out
    for line in ("0    ok", "2    usage", "3    not found", "4    refused", "5    timeout"):
        assert line in out
    assert "6    gpuletd unreachable" in out


def test_a_bare_socket_path_is_a_unix_address(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    sock = tmp_path / "gpulet.sock"
    assert cli_main.main(["--address", str(sock), "roles"]) == 6
    assert capsys.readouterr().err.startswith(
        f"gpulet: gpuletd is not running: no socket at {sock}"
    )


def test_acquire_vram_sends_a_memory_lease(h: Harness) -> None:
    run = gpulet_cli(h, "lease", "acquire", "--vram", "12000", "--json")
    request = h.daemon.stream(
        "LeaseService.Acquire",
        [leases_pb2.AcquireResponse(granted=lease_pb(token="-tok"))],
    )
    h.daemon.unary("LeaseService.Renew", leases_pb2.RenewResponse(lease=lease_pb()))
    assert run.result(timeout=5) == 0
    assert request.WhichOneof("target") == "vram_mb" and request.vram_mb == 12000


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["lease", "acquire", "m", "--vram", "100"], "one of them"),
        (["lease", "acquire", "--vram", "0"], "--vram"),
        (["run", "m", "--vram", "100", "--", "true"], "one of them"),
    ],
)
def test_vram_usage_errors(
    capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    assert cli_main.main(argv) == 2
    assert needle in capsys.readouterr().err
