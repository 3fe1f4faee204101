"""Evaluation of conversion models.

* :mod:`~vckit.evaluation.run`: ``vckit eval``, :func:`evaluate` in named stages;
* :mod:`~vckit.evaluation.pairs`: which utterances are converted;
* :mod:`~vckit.evaluation.metrics`: MCD, F0 and voicing scores on waveforms;
* :mod:`~vckit.evaluation.probe`: the disentanglement probe and VQ codebook statistics;
* :mod:`~vckit.evaluation.scores`: judge scores and reconstruction on cached features;
* :mod:`~vckit.evaluation.report`: ``report.json``, ``report.md`` and the plots.
"""
