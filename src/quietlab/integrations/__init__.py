"""``quietlab.watch`` inside other training frameworks, each an optional extra:

- ``integrations.lightning.QuietlabCallback``: a PyTorch Lightning callback (``pip install 'quietlab[lightning]'``);
- ``integrations.hf.QuietlabTrainerCallback``: a Hugging Face ``Trainer`` callback (``pip install 'quietlab[hf]'``).

A TransformerLens ``HookedTransformer`` needs no adapter: its hook names are taps of ``quietlab.watch``.
"""
