"""The active-learning round, compiled, and the strategy registry.

`make_loop` builds one jitted round (train, predict, acquire, label) over a
fixed-size pool; `run_loop` and `vmap_loop` run rounds for one seed or a
batch of seeds. The registry names every acquisition as a `Strategy` the
loop and the experiment can call.

May import: `alfx._core`, every family package, `alfx.nn`.
"""

from alfx.loop._loop import Data
from alfx.loop._loop import History
from alfx.loop._loop import initial_state
from alfx.loop._loop import Loop
from alfx.loop._loop import LoopState
from alfx.loop._loop import make_loop
from alfx.loop._loop import RoundMetrics
from alfx.loop._loop import run_loop
from alfx.loop._loop import vmap_loop
from alfx.loop._registry import get_strategy
from alfx.loop._registry import register_strategy
from alfx.loop._registry import Strategy
from alfx.loop._registry import strategy_descriptions
from alfx.loop._registry import strategy_names
from alfx.loop._registry import StrategyContext

__all__ = (
  "Data",
  "History",
  "Loop",
  "LoopState",
  "RoundMetrics",
  "Strategy",
  "StrategyContext",
  "get_strategy",
  "initial_state",
  "make_loop",
  "register_strategy",
  "run_loop",
  "strategy_descriptions",
  "strategy_names",
  "vmap_loop",
)
