"""The cost model's default coefficients (raysim.bench.model), written by
``raysim bench scale --write-coefficients``; do not edit by hand: run the bench again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

COMMAND = "raysim bench fit results/bench-scale --write-coefficients"
WHEN = "2026-11-24 03:15"
DEFAULT: dict[str, Any] = json.loads(
    """
{
    "actor_mb": 805.452523234456,
    "actor_per_hosted_mb": 0.0037821991201557356,
    "actor_start_s": 3.5583909540895844,
    "actor_uss_mb": 410.38671875,
    "cores": 2,
    "dataset": "fashion-mnist",
    "driver_mb": 1086.6240234375002,
    "driver_per_client_mb": 0.0,
    "example_s": 0.0005595038620351376,
    "fitted_on": "results/bench-scale: N = 100, 1000, 3000, 10000, 30000; actor runs 4, 8, 16; 2 CPUs",
    "import_s": 4.4855027933244855,
    "model": "cnn-small",
    "overhead_per_actor_s": 0.00046917457872382634,
    "overhead_per_client_s": 0.0,
    "overhead_s": 0.019977799723997904,
    "ray_mb": 649.966796875,
    "server_mb": 877.2392578125002,
    "server_per_client_mb": 0.0,
    "setup_per_client_s": 0.0007728672131123798,
    "setup_s": 22.136946779992098,
    "store_mb": 60.85833459769841,
    "store_per_client_mb": 0.0002552863898335446,
    "task_s": 0.0017008227850092768,
    "warmup_s": 0.17425664824895648
}
"""
)
VALIDATION: dict[str, Any] = json.loads(
    """
{
    "figures": {
        "median_round_s": {
            "error": 3.4062841093075047,
            "measured": 0.11400472700188402,
            "predicted": 0.5023372169743417
        },
        "time_to_first_round_s": {
            "error": 0.23167593751557014,
            "measured": 52.633507855731295,
            "predicted": 64.82742513294097
        },
        "total_rss_mb": {
            "error": 0.022471327182473688,
            "measured": 4426.3828125,
            "predicted": 4525.849508914565
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
