import sys, torch, pickle
from quietlab.train import load_run
from quietlab.monitor.monitor import probe_set, trim_to_features
from quietlab.monitor.probes import capture_layers, split_probe_set
run, step, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
model, task, cfg, step = load_run(run, step)
batch = probe_set(task, 2000, cfg.seed)
tr, te = split_probe_set(len(batch), 0.2, seed=cfg.seed)
tokens, feats = trim_to_features(batch.tokens, dict(batch.features))
acts = capture_layers(model, tokens)
pickle.dump((acts, feats, tr, te), open(out, "wb"))
print(step, {k: (f.kind, f.k, f.values.shape) for k, f in feats.items()})
