"""Tune's variant generator with a saved state that holds no code (imports Ray: import it lazily)."""

from __future__ import annotations

import copy
from typing import Any

from ray.tune.experiment.config_parser import _make_parser
from ray.tune.search.basic_variant import BasicVariantGenerator


class VariantGenerator(BasicVariantGenerator):
    """Tune's BasicVariantGenerator (grid and PBT sweeps), saved without its parsers.

    Tune pickles the variant generator into the sweep directory, and each trial iterator keeps an
    argparse parser whose ``type`` registry holds a function local to argparse, pickled by value:
    code in the file, which ``tuning.tune_state`` refuses to let a resume load. The saved state
    leaves the parsers out; a restore makes Tune's own ``_make_parser()`` again."""

    def get_state(self) -> Any:
        state = super().get_state()
        if state:
            state["_iterators"] = [_without_parser(it) for it in state["_iterators"]]
        return state

    def set_state(self, state: Any) -> None:
        super().set_state(state)
        for it in self._iterators:
            if getattr(it, "parser", None) is None:
                it.parser = _make_parser()


def _without_parser(iterator: Any) -> Any:
    out = copy.copy(iterator)
    out.parser = None
    return out
