"""1,000 acquired tokens, each used from the command line as a person would type it."""

from __future__ import annotations

import contextlib
import io

import pytest

import gpulet
from gpulet.cli.main import main as gpulet_main
from tests.helpers import Daemon

pytestmark = pytest.mark.system


def test_every_token_works_with_lease_renew_on_the_command_line() -> None:
    with Daemon("--simulated-gpus", "16384") as d, gpulet.Client(address=d.address) as c:
        leases = [c.acquire("florence-2-large", ttl=600) for _ in range(1000)]
        assert not [x.token for x in leases if x.token.startswith("-")]
        for x in leases:
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = gpulet_main(
                    ["--address", d.address, "lease", "renew", x.lease_id, "--token", x.token]
                )
            assert code == 0, f"{x.token}: {err.getvalue()}"
