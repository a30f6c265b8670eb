"""The private bottom layer every family builds on.

* `pool`: chunked maps and sums over the pool axis, the pool-wide argmax and
  its tie rule, the default chunk size.
* `sharding`: `pool_core`, the one declarative wrapper that jits a core and
  dispatches it over a pool sharded across devices; `shard_pool`.
* `validation`: the input checks and `checked`.
* `selection`: `Selection`, `top_b`, the greedy step and the random and
  stochastic batches.

Imports only jax and numpy; nothing here imports a family package.
"""
