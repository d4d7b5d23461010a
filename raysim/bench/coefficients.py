"""The cost model's default coefficients (raysim.bench.model), written by
``raysim bench scale --write-coefficients``; do not edit by hand: run the bench again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

COMMAND = "raysim bench scale --clients 100,1000,3000,10000,30000 --write-coefficients"
WHEN = "2026-12-07 01:16"
DEFAULT: dict[str, Any] = json.loads(
    """
{
    "actor_mb": 802.901580810547,
    "actor_per_hosted_mb": 0.0,
    "actor_start_s": 3.29111987536533,
    "actor_uss_mb": 420.3564453125,
    "cores": 2,
    "dataset": "fashion-mnist",
    "driver_mb": 801.5874915424513,
    "driver_per_client_mb": 0.0005916574830128417,
    "eval_example_s": 0.0,
    "eval_overhead_s": 0.0,
    "eval_s": 1.655220414190105,
    "example_s": 0.00020039221345245745,
    "fitted_on": "results/bench-scale: N = 100, 1000, 3000, 10000, 30000; actor runs 4, 8, 16; 2 CPUs",
    "import_s": 2.1123176401279125,
    "model": "cnn-small",
    "overhead_per_actor_s": 0.00209055230356566,
    "overhead_per_client_s": 9.49488751079187e-08,
    "overhead_s": 0.010074419879019851,
    "ray_mb": 502.91796875,
    "server_mb": 754.966992960605,
    "server_per_client_mb": 6.139795175761651e-05,
    "setup_per_client_s": 2.210793488208777e-05,
    "setup_s": 4.2603776113229035,
    "store_mb": 60.58989412256549,
    "store_per_client_mb": 0.00014667026369877316,
    "task_s": 0.001854371919977873,
    "warmup_s": 0.034442618250068335
}
"""
)
VALIDATION: dict[str, Any] = json.loads(
    """
{
    "figures": {
        "median_evaluate_s": {
            "error": 0.2397594303929873,
            "measured": 1.3874965180002619,
            "predicted": 1.720161892828258
        },
        "median_round_s": {
            "error": 0.030903740329492946,
            "measured": 0.12017970399938349,
            "predicted": 0.12389370636465577
        },
        "time_to_first_round_s": {
            "error": -0.023952131769987006,
            "measured": 10.53381596833242,
            "predicted": 10.281508620218128
        },
        "total_rss_mb": {
            "error": 0.07973401228695987,
            "measured": 3633.5859375,
            "predicted": 3923.3063232863497
        }
    },
    "fitted_on": [
        100,
        1000,
        3000,
        10000
    ],
    "held_out": 30000
}
"""
)


def write_module(fit: dict[str, Any], command: str, path: Path | None = None) -> Path:
    """Rewrite this module with ``fit`` (``model.json``'s content) as the defaults."""
    import time

    path = path or Path(__file__)
    coef = json.dumps(fit["coefficients"], indent=4, sort_keys=True)
    val = json.dumps(fit.get("validation", {}), indent=4, sort_keys=True)
    head = __doc__.split("\n\nNot yet fitted")[0] if __doc__ else ""
    text = f'''"""{head.strip()}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

COMMAND = {json.dumps(command)}
WHEN = {json.dumps(time.strftime("%Y-%m-%d %H:%M"))}
DEFAULT: dict[str, Any] = json.loads(
    """
{coef}
"""
)
VALIDATION: dict[str, Any] = json.loads(
    """
{val}
"""
)
'''
    src = Path(__file__).read_text()
    text += "\n\n" + src[src.index("def write_module") :]
    path.write_text(text)
    return path
