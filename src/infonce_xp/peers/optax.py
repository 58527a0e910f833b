"""optax's NT-Xent loss, for any array library.

``from infonce_xp.peers import optax`` and ``optax.ntxent(embeddings, labels,
temperature=0.07)`` replace ``optax.ntxent``: optax's numbers, under ``jax.jit`` and
``jax.grad`` as any core call, and on the arrays of any other library too.
"""

from __future__ import annotations

from .._loss import supervised_info_nce
from .._typing import Array

__all__ = ["ntxent"]


def ntxent(embeddings: Array, labels: Array, temperature: float | Array = 0.07) -> Array:
    """``optax.ntxent``: the NT-Xent loss averaged over all positive pairs.

    Rows with the same label are positive pairs; each pair is a term
    ``-log(exp(z_ip) / (exp(z_ip) + sum_n exp(z_in)))`` over the anchor's negatives (rows of
    other labels): :func:`infonce_xp.supervised_info_nce` with ``positives="pairs"``.

    Parameters
    ----------
    embeddings : array, shape (B, D)
        The embeddings (cosine similarity: they are normalised here).
    labels : array of int, shape (B,)
        Rows with the same label are positive pairs.
    temperature : float or 0-D array, default 0.07
        Cosine similarities are divided by it.

    Returns
    -------
    array
        0-D: the mean over the positive pairs (0 where there is none).

    Examples
    --------
    >>> import numpy as np
    >>> from infonce_xp.peers import optax
    >>> rng = np.random.default_rng(0)
    >>> bool(optax.ntxent(rng.normal(size=(4, 2)), np.array([0, 0, 1, 1])) > 0)
    True
    """
    return supervised_info_nce(embeddings, labels, temperature, positives="pairs")
