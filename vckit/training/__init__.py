"""Training: the shared loop and one trainer per model.

* :mod:`~vckit.training.loop`: :class:`TrainingLoop`, devices, DDP set-up, optimiser, autocast;
* :mod:`~vckit.training.losses`: the VC model's loss terms, assembled by one function;
* :mod:`~vckit.training.vc`: the VC model (``vckit train``);
* :mod:`~vckit.training.finetune`: fine-tuning on new speakers (``vckit finetune``);
* :mod:`~vckit.training.vocoder`: the fast vocoder (``vckit train-vocoder``);
* :mod:`~vckit.training.verifier`: the speaker-verification judge (``vckit train-sv``).
"""
