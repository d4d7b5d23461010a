"""`raysim privacy-eval`: --quick writes a table and a readable image grid; bad input exits 2."""

from __future__ import annotations

import matplotlib.image as mpimg
import pytest
from typer.testing import CliRunner

from raysim.cli import app
from raysim.privacy.evaluate import GRID_DPI, grid_figsize

runner = CliRunner()


def test_quick_writes_table_and_grid(tmp_path):
    out = tmp_path / "pe"
    res = runner.invoke(app, ["privacy-eval", "--quick", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "DLG  on none" in res.output and "iDLG on transform" in res.output  # progress per attack
    table = (out / "table.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 6  # header + (none, DP, transform) x (DLG, iDLG)
    assert rows[0].startswith("| defence | attack | PSNR")
    assert "PSNR" in table and "test accuracy" in table
    img = mpimg.imread(out / "reconstructions.png")
    w, h = grid_figsize(6, 2)  # 6 rows (original, 2 plain, DP, transformed, X'), 2 samples
    assert img.shape[:2] == (round(h * GRID_DPI), round(w * GRID_DPI))
    assert img.std() > 0.05  # not a blank canvas


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "cifar10"], "unknown dataset"),
        (["--samples", "0"], "greater than or equal to 1"),  # checked when the options are parsed
        (["--seeds", "0"], "greater than or equal to 1"),
        (["--batch-size", "5"], "less than or equal to 4"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "pe"
    res = runner.invoke(app, ["privacy-eval", *args, "--out", str(out)])
    assert res.exit_code == 2
    assert message in " ".join(res.output.split())  # rich wraps a usage error's box
    assert not out.exists()
