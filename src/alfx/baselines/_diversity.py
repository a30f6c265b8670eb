"""BADGE, CoreSet and TypiClust under their former module, for the loop registry.

`alfx.loop._registry` calls ``_diversity.badge``, ``_diversity.coreset`` and
``_diversity.typiclust``; the baselines themselves live in
`alfx.baselines._badge`, `alfx.baselines._coreset` and
`alfx.baselines._typiclust`. This module can go once the registry imports
those.

May import: `alfx.baselines._badge`, `alfx.baselines._coreset`,
`alfx.baselines._typiclust`.
"""

from alfx.baselines._badge import badge
from alfx.baselines._coreset import coreset
from alfx.baselines._typiclust import typiclust

__all__ = ("badge", "coreset", "typiclust")
