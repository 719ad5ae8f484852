"""The Transformer++ and its attention variants against a float64 reference written out plainly.

The reference below reads the model's weights and recomputes everything with explicit loops over
batch, head, query and key in numpy float64: RMSNorm, RoPE (pairs (i, i + d/2) rotated by t·base^(-2i/d)),
causal softmax with each variant's scaling, SwiGLU. Activation taps, edits and KV-cached greedy
decoding are checked against it and against decoding without a cache.
"""

import math

import numpy as np
import pytest
import torch

from quietlab.models import Transformer, TransformerConfig
from quietlab.train.decode import greedy_decode

EPS = 1e-6  # RMSNorm epsilon of the model


pytestmark = pytest.mark.usefixtures("one_thread")


# --- the reference ----------------------------------------------------------------------------
def rmsnorm(x, w):
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + EPS) * w


def silu(x):
    return x / (1 + np.exp(-x))


def rope(u, t, base):
    """Rotate vector u (d,) at position t: pair (u[i], u[i + d/2]) by angle t·base^(-2i/d)."""
    d = len(u)
    out = u.copy()
    for i in range(d // 2):
        theta = t * base ** (-2 * i / d)
        a, b = u[i], u[i + d // 2]
        out[i] = a * math.cos(theta) - b * math.sin(theta)
        out[i + d // 2] = a * math.sin(theta) + b * math.cos(theta)
    return out


def attention_weights(logits, cfg, progress, stats):
    """Softmax of one row of unscaled logits (the visible keys) with the variant's scaling."""
    d_head = cfg.d_model // cfg.n_heads
    if cfg.attention == "softmax":
        scaled = logits / math.sqrt(d_head)
    elif cfg.attention == "temperature":
        scaled = logits / cfg.tau
    elif cfg.attention == "normsoftmax":
        tau = cfg.tau if cfg.tau is not None else math.sqrt(d_head)
        squares = sum((l - logits.mean()) ** 2 for l in logits)
        # the study's two forms: the biased variance, or the unbiased standard deviation
        spread = squares / len(logits) if cfg.norm_form == "var" else math.sqrt(squares / max(len(logits) - 1, 1))
        if len(logits) == 1:
            return np.ones(1)
        stats["sharpened" if spread < tau else "standard"] += 1
        scaled = logits / min(tau, spread)
    elif cfg.attention == "heat":
        end = 1 / math.sqrt(d_head)
        beta = end + (cfg.heat_start - end) * 0.5 * (1 + math.cos(math.pi * min(progress / cfg.heat_fraction, 1.0)))
        scaled = logits * beta
    e = np.exp(scaled - scaled.max())
    return e / e.sum()


def reference(model, tokens, progress=0.0, edit=None, stats=None):
    """(logits, hidden states by tap name, attention patterns by layer), all float64."""
    cfg = model.config
    sd = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    stats = stats if stats is not None else {"sharpened": 0, "standard": 0}
    tokens = np.asarray(tokens)
    B, T = tokens.shape
    d, H = cfg.d_model, cfg.n_heads
    dh = d // H

    def tap(name, x):
        if edit and name in edit:
            x = edit[name](x)
        hidden[name] = x
        return x

    hidden, patterns = {}, {}
    x = tap("hook_embed", sd["embed.weight"][tokens])
    for l in range(cfg.n_layers):
        p = f"blocks.{l}."
        h = rmsnorm(x, sd[p + "attn_norm.weight"])
        qkv = h @ sd[p + "attn.qkv.weight"].T
        q, k, v = qkv[..., :d], qkv[..., d : 2 * d], qkv[..., 2 * d :]
        heads_out = np.zeros((B, T, d))
        pattern = np.zeros((B, H, T, T))
        for b in range(B):
            for hd in range(H):
                cols = slice(hd * dh, (hd + 1) * dh)
                qs = [rope(q[b, t, cols], t, cfg.rope_base) for t in range(T)]
                ks = [rope(k[b, t, cols], t, cfg.rope_base) for t in range(T)]
                for t in range(T):
                    logits = np.array([qs[t] @ ks[s] for s in range(t + 1)])
                    w = attention_weights(logits, cfg, progress, stats)
                    pattern[b, hd, t, : t + 1] = w
                    heads_out[b, t, cols] = sum(w[s] * v[b, s, cols] for s in range(t + 1))
        patterns[l] = pattern
        x = x + heads_out @ sd[p + "attn.proj.weight"].T
        h = rmsnorm(x, sd[p + "mlp_norm.weight"])
        mlp = (silu(h @ sd[p + "mlp.gate.weight"].T) * (h @ sd[p + "mlp.up.weight"].T)) @ sd[p + "mlp.down.weight"].T
        x = tap(f"blocks.{l}.hook_resid_post", x + mlp)
    logits = rmsnorm(x, sd["norm.weight"]) @ sd["lm_head.weight"].T
    return logits, hidden, patterns


def np64(t):
    return t.detach().double().numpy()


# --- models -----------------------------------------------------------------------------------
R1, R2 = "blocks.1.hook_resid_post", "blocks.2.hook_resid_post"


def make_model(seed=0, vocab=11, seq_len=9, d_model=16, n_layers=2, n_heads=2, **attn):
    torch.manual_seed(seed)
    model = Transformer(TransformerConfig(vocab_size=vocab, seq_len=seq_len, d_model=d_model, n_layers=n_layers,
                                          n_heads=n_heads, **attn))
    with torch.no_grad():  # weights far from init, so attention is far from uniform and variants differ
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.normal_(0, (2.0 if "qkv" in name else 1.0) / math.sqrt(p.shape[1]))
                if "embed" in name:
                    p.normal_(0, 1.0)
            else:
                p.copy_(1 + 0.2 * torch.randn_like(p))
    return model.eval()


VARIANTS = [
    ("softmax", {}, 0.0),
    ("temperature", {"tau": 0.5}, 0.0),
    ("temperature", {"tau": 2.0}, 0.0),
    ("temperature", {"tau": 8.0}, 0.0),
    ("normsoftmax", {"norm_form": "std"}, 0.0),
    ("normsoftmax", {"norm_form": "var"}, 0.0),
    ("normsoftmax", {"norm_form": "std", "tau": 1.5}, 0.0),
    ("heat", {}, 0.0),
    ("heat", {}, 0.2),
    ("heat", {"heat_start": 5.0, "heat_fraction": 0.4}, 0.3),
    ("heat", {}, 0.5),
    ("heat", {}, 1.0),
]


def tokens_for(model, batch=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (batch, model.config.seq_len), generator=g)


@pytest.mark.parametrize("variant,kw,progress", VARIANTS, ids=[f"{v}-{kw}-p{p}" for v, kw, p in VARIANTS])
def test_forward_and_taps_match_float64_reference(variant, kw, progress):
    model = make_model(attention=variant, **kw)
    model.set_progress(progress)
    tokens = tokens_for(model)
    stats = {"sharpened": 0, "standard": 0}
    ref_logits, ref_hidden, ref_patterns = reference(model, tokens, progress, stats=stats)

    plain = model(tokens)  # the fast path (fused SDPA where the variant allows)
    names = model.tap_names()
    logits, acts = model(tokens, capture=names)  # the explicit path, every tap
    np.testing.assert_allclose(np64(plain), ref_logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np64(logits), ref_logits, rtol=1e-4, atol=1e-4)
    assert set(acts) == set(names)
    for name, value in ref_hidden.items():
        np.testing.assert_allclose(np64(acts[name]), value, rtol=1e-4, atol=1e-4, err_msg=name)
    for l, pattern in ref_patterns.items():
        np.testing.assert_allclose(np64(acts[f"blocks.{l}.attn.hook_pattern"]), pattern, atol=1e-5)
    if variant == "normsoftmax":  # both branches of min(τ, σ) were exercised
        assert stats["sharpened"] > 0 and stats["standard"] > 0, stats


def test_variants_really_differ():
    tokens = tokens_for(make_model())
    base = make_model(attention="softmax")(tokens)
    for variant, kw in [("temperature", {"tau": 0.5}), ("normsoftmax", {}), ("heat", {})]:
        assert not torch.allclose(make_model(attention=variant, **kw)(tokens), base, atol=1e-3), variant
    late_heat = make_model(attention="heat")
    late_heat.set_progress(0.6)  # past the anneal: standard softmax
    torch.testing.assert_close(late_heat(tokens), base, rtol=1e-5, atol=1e-5)


def test_edits_change_downstream_logits_as_the_reference_does():
    model = make_model(n_layers=3)
    tokens = tokens_for(model)
    direction = torch.randn(model.config.d_model, generator=torch.Generator().manual_seed(3))
    pos = 4

    def torch_edit(x, positions):  # add a direction at absolute position `pos`
        return x + (positions == pos).to(x.dtype)[None, :, None] * direction

    def numpy_edit(x):
        x = x.copy()
        x[:, pos] += np64(direction)
        return x

    base = model(tokens)
    edited, acts = model(tokens, capture=[R1, R2], edit={R1: torch_edit})
    ref_logits, ref_hidden, _ = reference(model, tokens, edit={R1: numpy_edit})
    np.testing.assert_allclose(np64(edited), ref_logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np64(acts[R1]), ref_hidden[R1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np64(acts[R2]), ref_hidden[R2], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(edited[:, :pos], base[:, :pos])  # causal: earlier positions untouched
    assert (edited[:, pos:] - base[:, pos:]).abs().amax(-1).min() > 1e-3  # every later position moved
    # the edit of the embedding tap reaches everything downstream too
    edited_embed = model(tokens, edit={"hook_embed": torch_edit})
    np.testing.assert_allclose(np64(edited_embed), reference(model, tokens, edit={"hook_embed": numpy_edit})[0],
                               rtol=1e-4, atol=1e-4)


def test_edits_see_absolute_positions_under_a_kv_cache():
    model = make_model()
    tokens = tokens_for(model, batch=2)
    seen = []
    model(tokens[:, :5], cache=(cache := model.new_cache(2)), edit={"blocks.0.hook_resid_post": lambda x, p: seen.append(p.tolist()) or x})
    model(tokens[:, 5:6], cache=cache, edit={"blocks.0.hook_resid_post": lambda x, p: seen.append(p.tolist()) or x})
    assert seen == [[0, 1, 2, 3, 4], [5]]


def plain_greedy(model, prompt, seq_len):
    """One row, no cache: recompute the whole prefix for every new token; stop after the end token 0."""
    row = list(prompt)
    while len(row) < seq_len:
        nxt = int(model(torch.tensor([row]))[0, -1].argmax())
        row.append(nxt)
        if nxt == 0:
            break
    return row + [0] * (seq_len - len(row))


@pytest.mark.parametrize("variant,kw,progress", [("softmax", {}, 0.0), ("normsoftmax", {"norm_form": "var"}, 0.0),
                                                 ("heat", {}, 0.1), ("temperature", {"tau": 0.7}, 0.0)])
def test_kv_cache_greedy_decode_equals_decoding_without_cache(variant, kw, progress):
    model = make_model(attention=variant, vocab=7, seq_len=14, d_model=24, n_heads=4, **kw)
    model.set_progress(progress)
    g = torch.Generator().manual_seed(5)
    tokens = torch.randint(1, 7, (6, 14), generator=g)  # no end token inside the prompts
    answer_start = torch.tensor([3, 7, 5, 3, 10, 6])  # prompts of different lengths
    cached = greedy_decode(model, tokens, answer_start)
    uncached = greedy_decode(model, tokens, answer_start, use_cache=False)
    torch.testing.assert_close(cached, uncached, rtol=0, atol=0)
    for i in range(len(tokens)):
        s = int(answer_start[i])
        assert cached[i].tolist() == plain_greedy(model, tokens[i, :s].tolist(), 14), i
    # the test means something: some rows generated several tokens before the end token
    generated = [(cached[i, int(answer_start[i]):] != 0).sum().item() for i in range(len(tokens))]
    assert max(generated) >= 3


@pytest.mark.parametrize("variant,kw,progress", VARIANTS, ids=[f"{v}-{kw}-p{p}" for v, kw, p in VARIANTS])
def test_gradients_are_finite_for_every_variant(variant, kw, progress):
    # the first query sees one key: its logits have zero spread, which NormSoftmax must survive in backward
    model = make_model(attention=variant, **kw).train()
    model.set_progress(progress)
    tokens = tokens_for(model)
    model(tokens).logsumexp(-1).mean().backward()
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients in {bad}"


def test_the_embedding_with_a_dense_gradient_gives_the_same_values_and_gradient():
    """``dense_embedding_grad`` (what the model uses under deterministic algorithms on a GPU): the rows of
    ``weight[tokens]`` bit for bit, and the gradient of a float64 reference, also under vmap (packed models)
    and with autocast on."""
    from torch.func import grad, vmap

    from quietlab.models.transformer import dense_embedding_grad

    def embed_tokens(w, t, dense_grad):
        x = torch.nn.functional.embedding(t, w)
        return dense_embedding_grad(x, w, t) if dense_grad else x

    g = torch.Generator().manual_seed(0)
    weight = torch.randn(13, 8, generator=g)
    tokens = torch.randint(0, 13, (4, 50), generator=g)  # every token repeated many times
    upstream = torch.randn(4, 50, 8, generator=g)
    w64 = weight.double().requires_grad_()
    (torch.nn.functional.embedding(tokens, w64) * upstream.double()).sum().backward()
    for dense in (False, True):
        w = weight.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            x = embed_tokens(w, tokens, dense_grad=dense)
        assert x.dtype == torch.float32 and torch.equal(x, weight[tokens])
        (x * upstream).sum().backward()
        torch.testing.assert_close(w.grad.double(), w64.grad, rtol=1e-5, atol=1e-5)

    stacked = torch.stack([weight, 2 * weight])  # two packed models

    def loss(w, t, u):
        return (embed_tokens(w, t, dense_grad=True) * u).sum()

    grads = vmap(grad(loss))(stacked, torch.stack([tokens, tokens.flip(0)]), torch.stack([upstream, -upstream]))
    torch.testing.assert_close(grads[0].double(), w64.grad, rtol=1e-5, atol=1e-5)
    w64.grad = None
    (torch.nn.functional.embedding(tokens.flip(0), w64) * -upstream.double()).sum().backward()
    torch.testing.assert_close(grads[1].double(), w64.grad, rtol=1e-5, atol=1e-5)


def _logits_and_grads(model, tokens):
    """The model's logits on ``tokens`` and every parameter's gradient of a fixed loss on them (copies)."""
    model.zero_grad()
    logits = model(tokens)
    (logits ** 2).mean().backward()
    return logits.detach().clone(), [p.grad.clone() for p in model.parameters()]


def _assert_same_logits_and_grads(got, want):
    """float64 logits to 1e-12 and gradients to 1e-10 relative (1e-12 absolute)."""
    torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=1e-12)
    for a, b in zip(got[1], want[1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("d_model", [8, 16, 24])
def test_swiglu_padded_hidden_leaves_logits_and_gradients_unchanged(d_model, monkeypatch):
    """The paper's hidden sizes (22, 42, 64 for d_model 8, 16, 24) computed zero-padded to a multiple of 8, as
    on a GPU: logits and every parameter's gradient equal the unpadded model's in float64, and the
    parameters keep their shapes."""
    import quietlab.models.transformer as transformer
    from quietlab.models.paper import paper_config, paper_d_mlp

    torch.manual_seed(0)
    model = Transformer(paper_config(11, 13, d_model, 2)).double().train()
    tokens = torch.randint(0, 11, (3, 13))

    widths = []
    linear = transformer.F.linear

    def recording(x, w, *a):
        widths.append(w.shape[0])
        return linear(x, w, *a)

    plain, plain_grads = _logits_and_grads(model, tokens)
    monkeypatch.setattr(transformer, "PADDED_HIDDEN_DEVICES", ("cpu",))
    monkeypatch.setattr(transformer.F, "linear", recording)
    padded, padded_grads = _logits_and_grads(model, tokens)
    d_mlp = paper_d_mlp(d_model)
    padded_width = d_mlp + (-d_mlp) % 8
    assert padded_width in widths and (d_mlp == padded_width or d_mlp not in widths)
    mlp = model.blocks[0].mlp
    assert (mlp.gate.weight.shape, mlp.up.weight.shape, mlp.down.weight.shape) == (
        (d_mlp, d_model), (d_mlp, d_model), (d_model, d_mlp))
    _assert_same_logits_and_grads((padded, padded_grads), (plain, plain_grads))


@pytest.mark.parametrize("variant,kw", [("softmax", {}), ("heat", {"heat_start": 3.0})])
def test_padded_causal_attention_leaves_logits_and_gradients_unchanged(variant, kw):
    """Causal sequences padded to a multiple of 8 inside attention (what GPU packs do for aligned kernels):
    every real position's logits and every parameter's gradient equal the unpadded model's in float64."""
    from quietlab.models.attention import padded_causal_attention

    model = make_model(seq_len=13, attention=variant, **kw).double().train()
    tokens = torch.randint(0, 11, (3, 13))

    import quietlab.models.attention as attention

    lengths = []
    sdpa = attention.F.scaled_dot_product_attention

    def recording(q, *a, **k):
        lengths.append(q.shape[-2])
        return sdpa(q, *a, **k)

    plain, plain_grads = _logits_and_grads(model, tokens)
    with padded_causal_attention(8), pytest.MonkeyPatch.context() as mp:
        mp.setattr(attention.F, "scaled_dot_product_attention", recording)
        padded, padded_grads = _logits_and_grads(model, tokens)
    assert lengths and set(lengths) == {16}  # the padding did happen
    assert padded.shape == plain.shape
    _assert_same_logits_and_grads((padded, padded_grads), (plain, plain_grads))
