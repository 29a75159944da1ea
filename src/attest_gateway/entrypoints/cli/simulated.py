"""`python -m attest_gateway.entrypoints.cli.simulated serve`: the gateway as `attest-gateway
simulate --serve` runs it in a child process (devtools/simulate.py `gateway_process`), on the
simulated clock its environment names (`SIMULATED_CLOCK_START`, `SIMULATED_CLOCK_SPEED`).

The same as `attest-gateway serve`; an entry point of its own, so that the simulator (a
development tool) never imports the command line that offers it.
"""

from __future__ import annotations

from attest_gateway.entrypoints.cli.main import main

if __name__ == "__main__":
    main()
