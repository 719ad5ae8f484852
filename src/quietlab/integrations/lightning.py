"""A PyTorch Lightning callback that runs ``quietlab.watch`` on the LightningModule being fitted.

    from quietlab.integrations.lightning import QuietlabCallback
    cb = QuietlabCallback("runs/mine", taps=["model.blocks.0"], inputs=probe_tokens, features=features)
    pl.Trainer(max_steps=2000, callbacks=[cb]).fit(module, loader)

Taps are module names of the LightningModule (``module.named_modules()``); the probes call the
module's ``forward`` on the probe inputs. The step is the trainer's
``global_step`` (optimizer updates); the loss is what ``training_step`` returned (its ``"loss"`` entry
when it returned a dict). The run's length is ``trainer.max_steps`` when set, else Lightning's estimate.
"""

from __future__ import annotations

try:
    from pytorch_lightning import Callback
except ImportError:  # the unified package name
    try:
        from lightning.pytorch import Callback
    except ImportError:
        raise ImportError("QuietlabCallback needs PyTorch Lightning: pip install 'quietlab[lightning]'") from None

from ..monitor.watch import Watch, watch


class QuietlabCallback(Callback):
    """``watch(pl_module, out, taps, inputs, features, **options)`` from fit start to fit end."""

    def __init__(self, out, taps, inputs, features, **options):
        self.out, self.taps, self.inputs, self.features, self.options = out, taps, inputs, features, options
        self.watch: Watch | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        if steps is None:
            try:
                steps = int(trainer.estimated_stepping_batches)
            except (TypeError, ValueError, OverflowError):
                steps = None
        self.watch = watch(pl_module, self.out, self.taps, self.inputs, self.features,
                           **{"steps": steps, **self.options})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        loss = None if loss is None else loss.detach() if hasattr(loss, "detach") else float(loss)
        if trainer.global_step > self.watch.last_step:  # an optimizer step (not an accumulation batch)
            self.watch.step(trainer.global_step, loss=loss)
        else:
            self.watch.log(trainer.global_step, loss=loss)

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.watch is not None:
            self.watch.close()

    def on_exception(self, trainer, pl_module, exception) -> None:
        if self.watch is not None:
            self.watch.close()
