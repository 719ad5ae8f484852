"""A Hugging Face ``Trainer`` callback that runs ``quietlab.watch`` on the model being trained.

    from quietlab.integrations.hf import QuietlabTrainerCallback
    cb = QuietlabTrainerCallback("runs/mine", taps=["transformer.h.0", "transformer.h.1"],
                                 inputs={"input_ids": probe_ids}, features=features)
    Trainer(model=model, args=args, train_dataset=data, callbacks=[cb]).train()

The step is ``state.global_step`` (optimizer updates); ``train/loss`` is the loss the Trainer logs
(every ``logging_steps``: set it to 1 for the detector to see every step); the run's length is
``state.max_steps``.
"""

from __future__ import annotations

try:
    from transformers import TrainerCallback
except ImportError:
    raise ImportError("QuietlabTrainerCallback needs transformers: pip install 'quietlab[hf]'") from None

from ..monitor.watch import Watch, watch


class QuietlabTrainerCallback(TrainerCallback):
    """``watch(model, out, taps, inputs, features, **options)`` from train begin to train end."""

    def __init__(self, out, taps, inputs, features, **options):
        self.out, self.taps, self.inputs, self.features, self.options = out, taps, inputs, features, options
        self.watch: Watch | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        steps = state.max_steps if state.max_steps and state.max_steps > 0 else None
        self.watch = watch(model, self.out, self.taps, self.inputs, self.features, **{"steps": steps, **self.options})

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.watch is not None and logs and "loss" in logs:
            self.watch.log(state.global_step, loss=logs["loss"])

    def on_step_end(self, args, state, control, **kwargs):
        self.watch.step(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        if self.watch is not None:
            self.watch.close()
