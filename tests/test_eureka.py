

def test_packed_seeds_train_as_the_sequential_loop_does(tmp_path):
    import dataclasses

    from quietlab.recipes.eureka import SMALL, load_task, train_seeds
    from quietlab.runs import RunFolder

    cfg = dataclasses.replace(SMALL, **{**TINY, "steps": 4, "eval_every": 2, "drop_path": 0.0, "n_layers": 2})
    task = load_task(cfg)
    alone = train_seeds(dataclasses.replace(cfg, pack=False), "heat", [0, 1], tmp_path / "alone", task)
    packed = train_seeds(dataclasses.replace(cfg, pack=True), "heat", [0, 1], tmp_path / "packed", task)
    for a, b in zip(alone, packed):
        assert b["eval/loss"] == pytest.approx(a["eval/loss"], rel=1e-5)
        with RunFolder(a["run_dir"]).store() as sa, RunFolder(b["run_dir"]).store() as sb:
            for name in ("train/loss", "grad/q/L1/H0", "attn/entropy/L0/H0"):
                assert sb.series(name)[1] == pytest.approx(sa.series(name)[1], rel=1e-4), name
