"""The cost model's default coefficients (raysim.bench.model), written by
``raysim bench scale --write-coefficients``; do not edit by hand: run the bench again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

COMMAND = "raysim bench scale --clients 100,1000,3000,10000,30000 --write-coefficients"
WHEN = "2026-11-24 05:36"
DEFAULT: dict[str, Any] = json.loads(
    """
{
    "actor_mb": 694.8600173406801,
    "actor_per_hosted_mb": 0.0018389419782540058,
    "actor_start_s": 3.237983169627704,
    "actor_uss_mb": 334.2353515625,
    "cores": 2,
    "dataset": "fashion-mnist",
    "driver_mb": 1008.5054264743669,
    "driver_per_client_mb": 6.451985248928274e-06,
    "example_s": 0.00020654840909343778,
    "fitted_on": "results/bench-scale: N = 100, 1000, 3000, 10000, 30000; actor runs 4, 8, 16; 2 CPUs",
    "import_s": 2.220360332277778,
    "model": "cnn-small",
    "overhead_per_actor_s": 0.0008512041328559317,
    "overhead_per_client_s": 0.0,
    "overhead_s": 0.008546913127656661,
    "ray_mb": 644.783203125,
    "server_mb": 796.6972656250001,
    "server_per_client_mb": 0.0,
    "setup_per_client_s": 4.247727351022074e-05,
    "setup_s": 5.940579743701899,
    "store_mb": 61.34136712359015,
    "store_per_client_mb": 0.00039928244106508267,
    "task_s": 0.0012137065627058382,
    "warmup_s": 0.08648837700093281
}
"""
)
VALIDATION: dict[str, Any] = json.loads(
    """
{
    "figures": {
        "median_round_s": {
            "error": -0.003062850821317742,
            "measured": 0.08189267449415638,
            "predicted": 0.08164184944882205
        },
        "time_to_first_round_s": {
            "error": 0.22233339680392206,
            "measured": 12.502573793193733,
            "predicted": 15.282313493426193
        },
        "total_rss_mb": {
            "error": 0.03506751369498118,
            "measured": 3864.8515625,
            "predicted": 4000.382297597038
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
