"""Data: from recordings to training batches.

* :mod:`~vckit.data.manifest`: the one reader of data specs (folders, CSVs, JSONL manifests);
* :mod:`~vckit.data.features`: the log-mel feature cache and :class:`FeatureStore`;
* :mod:`~vckit.data.frame_features`: per-frame F0 and phonetic-teacher features beside it;
* :mod:`~vckit.data.sampling`: on-device segments, augmentation, validation windows;
* :mod:`~vckit.data.waves`: the waveform cache of vocoder training;
* :mod:`~vckit.data.prepare`: corpus preparation shared by the recipes.
"""
