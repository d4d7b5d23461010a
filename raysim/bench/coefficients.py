"""The cost model's default coefficients (raysim.bench.model), written by
``raysim bench scale --write-coefficients``; do not edit by hand: run the bench again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

COMMAND = "raysim bench fit results/bench-scale --also results/bench-1m --write-coefficients"
WHEN = "2026-12-07 01:29"
DEFAULT: dict[str, Any] = json.loads(
    """
{
    "actor_mb": 805.5513575322021,
    "actor_per_hosted_mb": 0.0009844948819326025,
    "actor_start_s": 3.2849943436927296,
    "actor_uss_mb": 420.3564453125,
    "cores": 2,
    "dataset": "fashion-mnist",
    "driver_mb": 807.9341345935411,
    "driver_per_client_mb": 0.0005439523840848678,
    "eval_example_s": 0.0,
    "eval_overhead_s": 0.0,
    "eval_s": 1.6327459436229743,
    "example_s": 0.00018133218485589248,
    "fitted_on": "results/bench-scale + results/bench-1m: N = 100, 1000, 3000, 10000, 30000, 100, 10000, 100000, 1000000; actor runs 4, 8, 16; 2 CPUs",
    "import_s": 2.105573213817479,
    "model": "cnn-small",
    "overhead_per_actor_s": 0.0020389577278379077,
    "overhead_per_client_s": 4.334185008744076e-10,
    "overhead_s": 0.01073228103954806,
    "ray_mb": 502.83984375,
    "server_mb": 752.31017896123,
    "server_per_client_mb": 1.4434466123886982e-05,
    "setup_per_client_s": 6.648899492731567e-06,
    "setup_s": 4.299555018780758,
    "store_mb": 59.25207420997666,
    "store_per_client_mb": 0.00037496411046318784,
    "task_s": 0.0018768170562954809,
    "warmup_s": 0.04058910849926178
}
"""
)
VALIDATION: dict[str, Any] = json.loads(
    """
{
    "figures": {
        "median_evaluate_s": {
            "error": 0.06055601604767902,
            "measured": 1.5445677590014384,
            "predicted": 1.6381006290022573
        },
        "median_round_s": {
            "error": 0.08967953948403085,
            "measured": 0.5555427140006941,
            "predicted": 0.605363528755985
        },
        "time_to_first_round_s": {
            "error": 0.13660390342411222,
            "measured": 16.938478498408585,
            "predicted": 19.252340779356594
        },
        "total_rss_mb": {
            "error": 0.07639331522296433,
            "measured": 5214.515625,
            "predicted": 5612.8697608756975
        }
    },
    "fitted_on": [
        100,
        100,
        1000,
        3000,
        10000,
        10000,
        30000,
        100000
    ],
    "held_out": 1000000
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
