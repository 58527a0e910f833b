"""The peers' losses, one import away: the same constructors and calls, for any array library.

Each module mirrors one library's contrastive losses: the constructor keeps the peer's
parameter names, order and defaults (objects that only make sense inside the peer, such as a
model, are left out), the call takes the embeddings as the peer's does, and the numbers and
gradients are the peer's. Underneath, each class is one configured call of
:func:`infonce_xp.info_nce` or :func:`infonce_xp.supervised_info_nce`, so it runs on the
arrays it is given (NumPy, PyTorch, JAX, CuPy, ...) and takes ``chunk_size`` as a keyword.

- :mod:`infonce_xp.peers.pytorch_metric_learning`: ``NTXentLoss``, ``SupConLoss``,
  ``SelfSupervisedLoss``;
- :mod:`infonce_xp.peers.lightly`: ``NTXentLoss``, ``DCLLoss``, ``DCLWLoss``;
- :mod:`infonce_xp.peers.optax`: ``ntxent``;
- :mod:`infonce_xp.peers.open_clip`: ``ClipLoss``, ``SigLipLoss``;
- :mod:`infonce_xp.peers.sentence_transformers`: ``MultipleNegativesRankingLoss``,
  ``CachedMultipleNegativesRankingLoss``, ``GISTEmbedLoss``.

Importing this package imports no array library; each peer module imports none either.
"""
