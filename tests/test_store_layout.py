"""The run folder's layout: the typed config training writes, hook names in the store (old numbered
stores migrated on open), and the two probe fits kept apart."""

from __future__ import annotations

import json
import sqlite3

import pytest

from quietlab.models.hooks import hook_label
from quietlab.runs import RunFolder, RunStore


def test_config_reads_what_training_writes(trained_addition):
    run_dir, final = trained_addition
    cfg = RunFolder(run_dir).config()
    written = json.loads((run_dir / "config.json").read_text())  # the oracle: the file itself
    assert cfg.train.task == written["task"] == "addition" and cfg.train.task_sizes == {"n_bits": 5}
    assert (cfg.model.d_model, cfg.model.n_layers, cfg.model.n_heads) == (32, 2, 4)
    assert cfg.model.vocab_size == written["model_config"]["vocab_size"] and cfg.steps == final["steps"] == 1000
    assert cfg.describe() == "`addition` (n_bits=5); d_model 32 × 2 layers, 4 heads; softmax attention; seed 0"


def test_a_config_training_did_not_write_is_one_clear_line(tmp_path):
    folder = RunFolder(tmp_path / "r")
    folder.write_config({"task": "bfs", "sizes": {"n_nodes": 7}})
    with pytest.raises(ValueError, match="not a quietlab training config") as err:
        folder.config()
    assert "\n" not in str(err.value)


def test_hook_labels():
    assert hook_label("hook_embed") == "embeddings"
    assert hook_label("blocks.3.hook_resid_post") == "block 3 output"
    assert hook_label("blocks.0.attn.hook_pattern") == "block 0 attention"
    assert hook_label("best per position") == "best per position"


OLD_SCHEMA = """
CREATE TABLE metrics (step INTEGER NOT NULL, name TEXT NOT NULL, value REAL, PRIMARY KEY (step, name));
CREATE TABLE probes (step INTEGER NOT NULL, feature TEXT NOT NULL, layer INTEGER NOT NULL,
                     position INTEGER NOT NULL, metric TEXT NOT NULL, value REAL,
                     PRIMARY KEY (step, feature, layer, position, metric));
CREATE TABLE results (kind TEXT NOT NULL, key TEXT NOT NULL, step INTEGER, json TEXT NOT NULL, PRIMARY KEY (kind, key));
"""


def test_a_store_with_numbered_layers_is_migrated_to_hook_names(tmp_path):
    path = tmp_path / "metrics.sqlite"
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    db.executemany("INSERT INTO probes VALUES (?, ?, ?, ?, ?, ?)",
                   [(0, "carry", 0, 3, "acc", 0.5), (10, "carry", 1, 3, "acc", 0.7), (10, "carry", 2, 3, "acc", 0.9)])
    db.executemany("INSERT INTO metrics VALUES (?, ?, ?)",
                   [(10, "attn/entropy/L1/H0", 0.8), (10, "grad/v/L0/H1", 1e-3), (10, "train/loss", 0.4)])
    db.execute("INSERT INTO results VALUES ('feature_class', 'carry', NULL, ?)",
               (json.dumps({"best_layer": 2, "decodable_layer": 1, "class": "quiet"}),))
    db.execute("INSERT INTO results VALUES ('ablation', 'carry/mean', NULL, ?)",
               (json.dumps({"layer": 1, "layers": {"3": 2}}),))
    db.commit()
    db.close()
    with RunStore(path) as store:
        assert store.probes("carry") == [(0, "carry", "hook_embed", 3, "acc", 0.5),
                                         (10, "carry", "blocks.0.hook_resid_post", 3, "acc", 0.7),
                                         (10, "carry", "blocks.1.hook_resid_post", 3, "acc", 0.9)]
        assert store.fits() == ["online"]
        assert store.metric_names() == ["attn/entropy/blocks.1.attn.hook_pattern/H0", "grad/v/blocks.0.attn/H1",
                                        "train/loss"]
        assert store.get("feature_class", "carry") == {"best_layer": "blocks.1.hook_resid_post",
                                                       "decodable_layer": "blocks.0.hook_resid_post", "class": "quiet"}
        assert store.get("ablation", "carry/mean") == {"layer": "blocks.0.hook_resid_post",
                                                       "layers": {"3": "blocks.1.hook_resid_post"}}
    with RunStore(path) as store:  # a second open finds nothing to do
        assert len(store.probes()) == 3


def test_online_and_checkpoint_fits_are_kept_apart(tmp_path):
    with RunStore(tmp_path / "m.sqlite") as store:
        store.log_probes([(100, "carry", "hook_embed", 2, "acc", 0.6)])  # the Monitor, while training
        assert store.shown_fit() == "online"
        store.log_probes([(100, "carry", "hook_embed", 2, "acc", 0.8)], fit="checkpoint")  # quietlab probe
        assert store.fits() == ["online", "checkpoint"] and store.shown_fit() == "checkpoint"
        assert store.probes(fit="online") == [(100, "carry", "hook_embed", 2, "acc", 0.6)]
        assert store.probes() == [(100, "carry", "hook_embed", 2, "acc", 0.8)]
        with pytest.raises(ValueError, match="fit must be one of"):
            store.log_probes([], fit="later")


def test_metric_prefixes_match_literally_and_mean_series_averages_what_each_step_logged(tmp_path):
    with RunStore(tmp_path / "m.sqlite") as store:
        store.log(0, {"grad_q/a": 1.0, "gradXq/b": 10.0, "Grad_q/c": 100.0, "grad_q/d": 3.0})
        store.log(5, {"grad_q/a": 2.0})  # only one head logged at this step
        store.log(7, {"50%/x": 1.0, "50x/y": 2.0})
        # "_" and "%" are LIKE wildcards and LIKE ignores case: a prefix must match none of that
        assert store.metric_names("grad_q/") == ["grad_q/a", "grad_q/d"]
        assert store.metric_names("50%/") == ["50%/x"]
        assert store.mean_series("grad_q/") == ([0, 5], [2.0, 2.0])
        assert store.mean_series("nothing/") == ([], [])
