"""The exporters read back with each library's own reader, and watch inside Lightning, a Hugging Face
Trainer and TransformerLens, each with the real library; the examples run (briefly)."""

import csv
import runpy
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from quietlab.train.threads import set_cpu_threads


pytestmark = pytest.mark.usefixtures("one_thread")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def store_series(run, name):
    db = sqlite3.connect(Path(run) / "metrics.sqlite")
    return db.execute("SELECT step, value FROM metrics WHERE name=? ORDER BY step", (name,)).fetchall()


def store_probe(run, feature, layer, position, metric="acc"):
    db = sqlite3.connect(Path(run) / "metrics.sqlite")
    return db.execute("SELECT step, value FROM probes WHERE feature=? AND layer=? AND position=? AND metric=? "
                      "ORDER BY step", (feature, layer, position, metric)).fetchall()


@pytest.fixture(scope="module")
def watched_run(tmp_path_factory):
    """A short plain-loop run of the GRU example, exported to all three formats by watch itself."""
    set_cpu_threads(1)
    out = tmp_path_factory.mktemp("runs") / "plain"
    mod = runpy.run_path(str(EXAMPLES / "plain_loop.py"))
    mod["main"](["--fast", "--out", str(out)])
    from quietlab.runs.export import export_run

    for kind in ("csv", "tensorboard", "mlflow"):
        export_run(out, kind)
    return out


def test_csv_export_holds_the_stores_scalars(watched_run):
    with open(watched_run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    loss = [(int(r["step"]), float(r["value"])) for r in rows if r["name"] == "train/loss"]
    assert loss == store_series(watched_run, "train/loss") and len(loss) == 20
    probe = [(int(r["step"]), float(r["value"])) for r in rows if r["name"] == "probe/parity/gru/3/acc"]
    assert probe == store_probe(watched_run, "parity", "gru", 3)


def test_tensorboard_export_reads_back_with_event_accumulator(watched_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(watched_run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    got = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert np.allclose(np.array(got), np.array(store_series(watched_run, "train/loss")), rtol=1e-6)
    got = [(e.step, e.value) for e in acc.Scalars("probe/ones/gru/7/acc")]
    assert np.allclose(np.array(got), np.array(store_probe(watched_run, "ones", "gru", 7)), rtol=1e-6)
    # the best layer's mean over positions, recomputed from the store
    db = sqlite3.connect(watched_run / "metrics.sqlite")
    last = db.execute("SELECT max(step) FROM probes").fetchone()[0]
    means = db.execute("SELECT avg(value) FROM probes WHERE step=? AND feature='parity' AND metric='acc' "
                       "GROUP BY layer", (last,)).fetchall()
    best = [e for e in acc.Scalars("probe/parity/best/acc") if e.step == last][0].value
    assert best == pytest.approx(max(m for (m,) in means), rel=1e-6)
    assert "feature_class/parity" in acc.Tags()["tensors"] or "feature_class/parity/text_summary" in acc.Tags()["tensors"]


def test_mlflow_export_reads_back_with_the_mlflow_client(watched_run):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(watched_run / "mlruns").resolve().as_uri())
    exp = client.get_experiment_by_name("quietlab")
    (run,) = client.search_runs([exp.experiment_id])
    history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss"))
    assert np.allclose(np.array(history), np.array(store_series(watched_run, "train/loss")))
    db = sqlite3.connect(watched_run / "metrics.sqlite")
    classes = {k: v for k, v in db.execute("SELECT key, json_extract(json, '$.class') FROM results "
                                            "WHERE kind='feature_class'")}
    assert {k: run.data.tags[f"feature_class/{k}"] for k in classes} == classes
    assert run.data.params["watch.taps"] == "['embed', 'gru']"


def test_hugging_face_trainer_callback_on_a_gpt2_built_from_a_config(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    from quietlab.integrations.hf import QuietlabTrainerCallback
    from quietlab.tasks import get_task

    task = get_task("addition", n_bits=3)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(task.vocab), n_positions=task.seq_len, n_embd=32, n_layer=2,
                                       n_head=2, bos_token_id=None, eos_token_id=None))
    train = task.sample(64, seed=1, split="train")
    dataset = [{"input_ids": torch.as_tensor(t).long(), "labels": torch.as_tensor(t).long()} for t in train.tokens]
    probe = task.sample(200, seed=2, split="test")
    cb = QuietlabTrainerCallback(tmp_path / "hf", taps=["transformer.h.0", "transformer.h.1"],
                                 inputs={"input_ids": torch.as_tensor(probe.tokens).long()}, features=probe.features,
                                 max_overhead=None)
    args = TrainingArguments(output_dir=str(tmp_path / "trainer"), max_steps=6, per_device_train_batch_size=16,
                             logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, callbacks=[cb])
    trainer.train()
    logged = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
    assert np.allclose(np.array(store_series(tmp_path / "hf", "train/loss")), np.array(logged), rtol=1e-5)
    db = sqlite3.connect(tmp_path / "hf" / "metrics.sqlite")
    steps = [s for (s,) in db.execute("SELECT DISTINCT step FROM probes WHERE feature='carry' ORDER BY step")]
    assert steps[0] == 0 and steps[-1] == 6


def test_transformer_lens_hook_names_are_taps(tmp_path):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from quietlab.monitor.taps import ModuleTaps

    cfg = HookedTransformerConfig(n_layers=2, d_model=32, d_head=8, n_heads=4, n_ctx=8, d_vocab=5, act_fn="relu",
                                  normalization_type="LN", seed=0, device="cpu")
    model = HookedTransformer(cfg)
    tokens = torch.randint(0, 5, (40, 8), generator=torch.Generator().manual_seed(0))
    names = ["hook_embed", "blocks.1.hook_resid_post"]
    got = ModuleTaps(model, names, tokens, batch_size=16).capture(model)
    _, cache = model.run_with_cache(tokens)
    for name in names:
        assert torch.allclose(got[name], cache[name], atol=1e-5)
    patterns = ModuleTaps(model, names, tokens).attention_patterns(model)
    assert torch.allclose(patterns["blocks.0.attn.hook_pattern"], cache["blocks.0.attn.hook_pattern"][:40], atol=1e-6)


@pytest.mark.parametrize("example", ["hf_gpt2", "transformer_lens_model", "lightning_module"])
def test_examples_run(tmp_path, example, capsys):
    mod = runpy.run_path(str(EXAMPLES / f"{example}.py"))
    mod["main"](["--fast", "--out", str(tmp_path / example)])
    printed = capsys.readouterr().out
    assert "carry:" in printed and f"run folder: {tmp_path / example}" in printed
    db = sqlite3.connect(tmp_path / example / "metrics.sqlite")
    assert db.execute("SELECT min(step), max(step) FROM probes").fetchone() == (0, 20)
