"""`python -m attest_gateway.entrypoints.cli.simulated serve`: the gateway as `attest-gateway
simulate --serve` runs it in a child process (devtools/simulate.py `gateway_process`).

The same as `attest-gateway serve`, except that SQLite connections get the busy timeout the
simulation names (`use_simulation_busy_timeout`). An entry point of its own, so that the
simulator (a development tool) never imports the command line that offers it.
"""

from __future__ import annotations

from attest_gateway.devtools.simulate import use_simulation_busy_timeout
from attest_gateway.entrypoints.cli.main import main

if __name__ == "__main__":
    use_simulation_busy_timeout()
    main()
