"""Milliseconds per training step of the demo's model (addition-12, d_model 64 x 4, batch 64, AdamW, clip) on
fixed batches, from the source tree given as the first argument: run it alternately on two trees to compare
a change side by side (benchmarks/results/cpu-2026-12-03-s3/rope_qk_together_steptime.txt).

    for src in OLD/src NEW/src OLD/src NEW/src; do .venv/bin/python benchmarks/step_time.py $src; done
"""
import sys, time, torch
sys.path.insert(0, sys.argv[1])
from quietlab.models import Transformer
from quietlab.tasks import get_task
from quietlab.train import TrainConfig
from quietlab.train.evaluate import masked_loss
from quietlab.train.schedule import make_optimizer
task = get_task('addition', n_bits=12)
cfg = TrainConfig(task='addition', d_model=64, n_layers=4, n_heads=4)
torch.manual_seed(0)
model = Transformer(cfg.model_config(task)); opt = make_optimizer(model, 5e-4)
data = task.sample(64 * 16, seed=0, split='train')
tok = torch.as_tensor(data.tokens).long(); mask = torch.as_tensor(data.loss_mask)
def step(i):
    t, m = tok[(i % 16) * 64:(i % 16 + 1) * 64], mask[(i % 16) * 64:(i % 16 + 1) * 64]
    loss = masked_loss(model(t), t, m); loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step(); opt.zero_grad(set_to_none=True)
    return loss
for i in range(5): step(i)
t0 = time.perf_counter()
for i in range(60): l = step(i)
print(f"{(time.perf_counter() - t0) / 60 * 1e3:.1f} ms/step loss {l.item():.6f}")
