"""The training step's math: noise, timesteps, loss, text conditioning, optimizers, lr schedules, samples.

Each formula is checked numerically against its closed form (written out here, not taken from the
code under test), on real tensors and the tiny SD 1.5 model.
"""

import math
import re
import sys

import pytest
import torch

from charlora.errors import CharLoRAError
from charlora.params.table import LR_SCHEDULERS, SUPPORTED_OPTIMIZERS, defaults
from charlora.params.table import SAMPLERS as TABLE_SAMPLERS
from charlora.train import noise, optim, sampling, schedule, text


def make_values(**overrides):
    values = defaults()
    values.update(overrides)
    return values


@pytest.fixture(scope="module")
def tiny():
    from charlora.models.tiny import build_tiny_components

    return build_tiny_components(0)


@pytest.fixture(scope="module")
def ddpm():
    from diffusers import DDPMScheduler

    from charlora.models.tiny import SD15_DDPM_CONFIG

    return DDPMScheduler.from_config(SD15_DDPM_CONFIG)


# ---------------------------------------------------------------------------------------------- noise
def test_timesteps_are_uniform_in_half_open_range_and_seeded():
    g = torch.Generator().manual_seed(3)
    t = noise.sample_timesteps(2000, 100, 110, generator=g)
    assert t.dtype == torch.long and t.shape == (2000,)
    assert int(t.min()) == 100 and int(t.max()) == 109  # max_timestep is exclusive
    assert set(t.tolist()) == set(range(100, 110))
    again = noise.sample_timesteps(2000, 100, 110, generator=torch.Generator().manual_seed(3))
    assert torch.equal(t, again)
    assert torch.equal(t, torch.randint(100, 110, (2000,), generator=torch.Generator().manual_seed(3)))


def test_timesteps_refuse_an_empty_range():
    with pytest.raises(CharLoRAError, match=r"min_timestep \(500\).*max_timestep \(500\)"):
        noise.sample_timesteps(1, 500, 500)


def test_plain_noise_is_the_generators_gaussian():
    latents = torch.randn(2, 4, 8, 8)
    got = noise.make_noise(latents, make_values(noise_offset=0.0), torch.Generator().manual_seed(7))
    assert torch.equal(got, torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(7)))


def test_noise_offset_adds_one_gaussian_per_channel():
    latents = torch.randn(2, 4, 8, 8)
    got = noise.make_noise(latents, make_values(noise_offset=0.1), torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    base = torch.randn(2, 4, 8, 8, generator=g)
    per_channel = torch.randn(2, 4, 1, 1, generator=g)
    assert torch.allclose(got, base + 0.1 * per_channel)
    # The offset is constant over each channel's pixels.
    assert torch.allclose((got - base).std(dim=(2, 3)), torch.zeros(2, 4), atol=1e-6)


def test_adaptive_noise_scale_follows_the_latent_channel_means():
    latents = torch.zeros(1, 4, 8, 8)
    latents[0, 0] += 2.0  # channel means: 2, 0, -1, 0
    latents[0, 2] -= 1.0
    values = make_values(noise_offset=0.1, adaptive_noise_scale=0.5)
    got = noise.make_noise(latents, values, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    base = torch.randn(1, 4, 8, 8, generator=g)
    per_channel = torch.randn(1, 4, 1, 1, generator=g)
    offset = torch.tensor([0.1 + 0.5 * 2.0, 0.1, 0.1 + 0.5 * 1.0, 0.1]).reshape(1, 4, 1, 1)
    assert torch.allclose(got, base + offset * per_channel, atol=1e-6)

    # A negative scale can take the offset below zero: it is clamped at 0 (no offset at all).
    values = make_values(noise_offset=0.1, adaptive_noise_scale=-1.0)
    got = noise.make_noise(latents, values, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    base = torch.randn(1, 4, 8, 8, generator=g)
    per_channel = torch.randn(1, 4, 1, 1, generator=g)
    expected_offset = torch.tensor([0.0, 0.1, 0.0, 0.1]).reshape(1, 4, 1, 1)
    assert torch.allclose(got, base + expected_offset * per_channel, atol=1e-6)


def test_multires_noise_matches_kohyas_pyramid_and_is_seeded():
    latents = torch.randn(2, 4, 16, 12)
    values = make_values(noise_offset_type="Multires", multires_noise_iterations=10, multires_noise_discount=0.3,
                         noise_offset=0.5)  # noise_offset belongs to the other type: not used
    got = noise.make_noise(latents, values, torch.Generator().manual_seed(5))

    # sd-scripts' pyramid_noise_like, written out, with the scale factor drawn from the same generator.
    g = torch.Generator().manual_seed(5)
    expected = torch.randn(2, 4, 16, 12, generator=g)
    up = torch.nn.Upsample(size=(16, 12), mode="bilinear")
    levels = 0
    for i in range(10):
        r = torch.rand((), generator=g).item() * 2 + 2
        wn, hn = max(1, int(16 / r**i)), max(1, int(12 / r**i))
        expected += up(torch.randn(2, 4, wn, hn, generator=g)) * 0.3**i
        levels += 1
        if wn == 1 or hn == 1:
            break
    expected = expected / expected.std()
    assert levels < 10  # the loop stopped at the 1-pixel level
    assert torch.allclose(got, expected, atol=1e-6)
    assert got.std().item() == pytest.approx(1.0, abs=1e-5)  # rescaled to unit std over the batch
    assert torch.equal(got, noise.make_noise(latents, values, torch.Generator().manual_seed(5)))

    # 0 iterations: plain noise.
    off = noise.make_noise(latents, make_values(noise_offset_type="Multires", multires_noise_iterations=0),
                           torch.Generator().manual_seed(5))
    assert torch.equal(off, torch.randn(2, 4, 16, 12, generator=torch.Generator().manual_seed(5)))


def test_unknown_noise_offset_type_is_named():
    with pytest.raises(CharLoRAError, match=r"noise_offset_type 'Perlin'.*'Original' or 'Multires'"):
        noise.make_noise(torch.zeros(1, 4, 8, 8), make_values(noise_offset_type="Perlin"))


def test_snr_and_min_snr_weights(ddpm):
    ac = ddpm.alphas_cumprod
    t = torch.tensor([0, 10, 200, 500, 999])
    ab = ac[t].double()
    expected_snr = ab / (1 - ab)
    assert torch.allclose(noise.snr(ac, t).double(), expected_snr, rtol=1e-5)
    eps = noise.min_snr_weights(t, 5.0, ac, v_prediction=False).double()
    v = noise.min_snr_weights(t, 5.0, ac, v_prediction=True).double()
    assert torch.allclose(eps, torch.clamp(expected_snr, max=5.0) / expected_snr, rtol=1e-5)
    assert torch.allclose(v, torch.clamp(expected_snr, max=5.0) / (expected_snr + 1), rtol=1e-5)
    # Low timesteps (high SNR) are down-weighted; high timesteps keep weight 1 (epsilon).
    assert eps[0] < 0.01 and eps[-1] == pytest.approx(1.0)
    assert torch.equal(noise.min_snr_weights(t, 0, ac), torch.ones(5))


def test_training_target_epsilon_and_velocity(ddpm):
    latents, eps = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([1, 400, 900])
    assert noise.training_target(ddpm, latents, eps, t, v_prediction=False) is eps
    ab = ddpm.alphas_cumprod[t].reshape(3, 1, 1, 1)
    expected_v = ab.sqrt() * eps - (1 - ab).sqrt() * latents
    assert torch.allclose(noise.training_target(ddpm, latents, eps, t, v_prediction=True), expected_v, atol=1e-6)


def test_per_sample_loss_weights_and_min_snr(ddpm):
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([5, 300, 900])
    w = torch.tensor([1.0, 0.5, 2.0])  # the middle sample is a reg image with prior_loss_weight 0.5
    mse = ((pred - target) ** 2).mean(dim=(1, 2, 3))
    loss = noise.per_sample_loss(pred, target, w, t, make_values(min_snr_gamma=0.0), ddpm.alphas_cumprod)
    assert loss.shape == (3,)
    assert torch.allclose(loss, mse * w)

    ab = ddpm.alphas_cumprod[t]
    s = ab / (1 - ab)
    loss = noise.per_sample_loss(pred, target, w, t, make_values(min_snr_gamma=5.0), ddpm.alphas_cumprod)
    assert torch.allclose(loss, mse * w * torch.clamp(s, max=5.0) / s, rtol=1e-5)
    loss_v = noise.per_sample_loss(pred, target, w, t, make_values(min_snr_gamma=5.0, v_parameterization=True),
                                   ddpm.alphas_cumprod)
    assert torch.allclose(loss_v, mse * w * torch.clamp(s, max=5.0) / (s + 1), rtol=1e-5)
    # fp16 predictions are compared in fp32, as sd-scripts does.
    assert noise.per_sample_loss(pred.half(), target.half(), None, t, make_values(), ddpm.alphas_cumprod).dtype \
        == torch.float32


# ----------------------------------------------------------------------------------------------- text
SHORT = "a photo of the cat"
LONG = " ".join(["cat"] * 60) + ", " + " ".join(["photo"] * 40)  # about 101 tokens


def test_tokenize_chunks_like_kohya(tiny):
    tok = tiny["tokenizer"]
    bos, eos = tok.bos_token_id, tok.eos_token_id
    for length, chunks in ((75, 1), (150, 2), (225, 3)):
        ids = text.tokenize(tok, [SHORT, LONG], length)
        assert ids.shape == (2, chunks, 77)
        assert (ids[:, :, 0] == bos).all() and (ids[:, :, -1] == eos).all()

    full = tok(LONG, padding="max_length", truncation=True, max_length=152, return_tensors="pt").input_ids[0]
    assert (full[1:] != eos).sum() > 76  # really longer than one chunk
    ids = text.tokenize(tok, LONG, 150)[0]
    assert torch.equal(ids[0], torch.cat([full[0:1], full[1:76], full[151:152]]))
    assert torch.equal(ids[1], torch.cat([full[0:1], full[76:151], full[151:152]]))

    # A short caption's first chunk is exactly its 75-token ids (SD 1.x pads with EOS).
    assert torch.equal(text.tokenize(tok, SHORT, 150)[0, 0], text.tokenize(tok, SHORT, 75)[0, 0])


def test_tokenize_refuses_other_lengths(tiny):
    with pytest.raises(CharLoRAError, match=r"max_token_length 100.*75, 150 or 225"):
        text.tokenize(tiny["tokenizer"], SHORT, 100)


def test_encode_lengths_and_chunk_joining(tiny):
    tok, te = tiny["tokenizer"], tiny["text_encoder"]
    with torch.no_grad():
        ids75 = text.tokenize(tok, [SHORT, LONG], 75)
        out75 = text.encode(te, ids75, None, 75)
        assert out75.shape == (2, 77, 32)
        assert torch.allclose(out75, te(ids75[:, 0])[0])

        for length in (150, 225):
            out = text.encode(te, text.tokenize(tok, [SHORT, LONG], length), None, length)
            assert out.shape == (2, length + 2, 32)

        ids150 = text.tokenize(tok, [SHORT, LONG], 150)
        out150 = text.encode(te, ids150, None, 150)
        # Short caption: BOS and the 75 inner positions equal the 75-token result; the last state
        # comes from the all-padding second chunk, so it differs from the 75-token EOS state.
        assert torch.allclose(out150[0, :76], out75[0, :76], atol=1e-5)
        assert not torch.allclose(out150[0, 76], out75[0, 76], atol=1e-3)
        # Long caption: positions 76..150 are the second chunk's inner states; 151 its last state.
        chunk2 = te(ids150[1:2, 1])[0][0]
        assert torch.allclose(out150[1, 76:151], chunk2[1:76], atol=1e-5)
        assert torch.allclose(out150[1, 151], chunk2[76], atol=1e-5)


def test_clip_skip(tiny):
    tok, te = tiny["tokenizer"], tiny["text_encoder"]
    ids = text.tokenize(tok, [SHORT], 75)
    with torch.no_grad():
        skip1 = text.encode(te, ids, 1, 75)
        skip2 = text.encode(te, ids, 2, 75)
        hidden = te(ids[:, 0], output_hidden_states=True).hidden_states
        # clip_skip 1 is the last layer after the final layer norm (CLIP's own last_hidden_state).
        assert torch.allclose(skip1, te.final_layer_norm(hidden[-1]), atol=1e-6)
        assert torch.allclose(skip2, te.final_layer_norm(hidden[-2]), atol=1e-6)
        assert not torch.allclose(skip1, skip2, atol=1e-3)
        assert text.encode(te, text.tokenize(tok, [SHORT], 150), 2, 150).shape == (1, 152, 32)
        with pytest.raises(CharLoRAError, match="clip_skip 5"):
            text.encode(te, ids, 5, 75)


# ---------------------------------------------------------------------------------------------- optim
def test_parse_kwargs():
    got = optim.parse_kwargs("weight_decay=0.01 betas=0.9,0.99 decouple=True use_bias_correction=false "
                             "d0=1e-6 mode=max name='x' other=\"y\" beta3=None")
    assert got == {"weight_decay": 0.01, "betas": (0.9, 0.99), "decouple": True, "use_bias_correction": False,
                   "d0": 1e-6, "mode": "max", "name": "x", "other": "y", "beta3": None}
    assert optim.parse_kwargs("") == {} and optim.parse_kwargs(None) == {}


@pytest.mark.parametrize(
    "text_, pattern",
    [
        ("weight_decay", r"optimizer_args: 'weight_decay' is not key=value"),
        ("=0.1", r"'=0.1' is not key=value"),
        ("lr=", r"lr has no value"),
        ("betas=0.9,,0.99", r"the value of betas \('0.9,,0.99'\) cannot be read"),
        ("eps=(1e-30", r"the value of eps"),
    ],
)
def test_parse_kwargs_errors_name_the_key(text_, pattern):
    with pytest.raises(CharLoRAError, match=pattern):
        optim.parse_kwargs(text_)


def test_parse_kwargs_names_its_setting():
    with pytest.raises(CharLoRAError, match="lr_scheduler_args"):
        optim.parse_kwargs("num_cycles", "lr_scheduler_args")


def _param_groups(seed=0):
    g = torch.Generator().manual_seed(seed)
    big = torch.nn.Parameter(torch.randn(64, 80, generator=g))  # 5,120 elements: 8-bit state in bitsandbytes
    small = torch.nn.Parameter(torch.randn(8, 4, generator=g))
    return [{"params": [big], "lr": 1e-3}, {"params": [small], "lr": 5e-4}], (big, small)


def _one_step(optimizer, params):
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.ones_like(p) * 0.1 + p.detach() * 0.01
    optimizer.step()
    return before


@pytest.mark.parametrize("name", SUPPORTED_OPTIMIZERS)
def test_every_optimizer_builds_and_steps_on_cpu(name):
    groups, params = _param_groups()
    lr = 1.0 if name == "Prodigy" else 1e-3
    if name == "Prodigy":
        for group in groups:
            group["lr"] = 1.0  # Prodigy takes one learning rate for all groups
    optimizer, description, warnings = optim.build_optimizer(name, groups, make_values(learning_rate=lr), "cpu")
    before = _one_step(optimizer, params)
    for old, p in zip(before, params):
        assert not torch.equal(old, p), f"{name} did not change the weights"
        assert torch.isfinite(p).all()
    expected_class = {
        "AdamW": "torch.optim.adamw.AdamW", "AdamW8bit": "bitsandbytes.optim.adamw.AdamW8bit",
        "Lion": "lion_pytorch.lion_pytorch.Lion", "Lion8bit": "bitsandbytes.optim.lion.Lion8bit",
        "SGDNesterov": "torch.optim.sgd.SGD", "Adafactor": "transformers.optimization.Adafactor",
        "Prodigy": "prodigyopt.prodigy.Prodigy",
    }[name]
    assert description.split("(")[0] == expected_class
    if name.endswith("8bit"):
        state = optimizer.state[params[0]]
        assert state["state1"].dtype == torch.uint8  # the 8-bit kernels really ran
        assert optimizer.state[params[1]]["state1"].dtype == torch.float32  # < 4,096 elements stays 32-bit
    assert isinstance(warnings, list)


def test_adamw_takes_args_learning_rates_and_describes_like_kohya():
    groups, _ = _param_groups()
    values = make_values(learning_rate=2e-4, optimizer_args="weight_decay=0.05 betas=0.8,0.9")
    optimizer, description, warnings = optim.build_optimizer("adamw", groups, values, "cpu")  # any case
    assert optimizer.defaults["lr"] == 2e-4  # sd-scripts passes learning_rate as the default lr
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 5e-4]
    assert optimizer.param_groups[0]["weight_decay"] == 0.05 and optimizer.param_groups[0]["betas"] == (0.8, 0.9)
    assert not optimizer.param_groups[0]["fused"]  # fused only on CUDA
    assert description == "torch.optim.adamw.AdamW(weight_decay=0.05,betas=(0.8, 0.9))"
    assert warnings == []
    assert "lr" in groups[0]  # the caller's groups are not changed


def test_sgd_nesterov_defaults_momentum():
    groups, _ = _param_groups()
    optimizer, description, _ = optim.build_optimizer("SGDNesterov", groups, make_values(optimizer_args=""), "cpu")
    assert optimizer.defaults["nesterov"] is True and optimizer.defaults["momentum"] == 0.9
    assert description == "torch.optim.sgd.SGD(momentum=0.9)"
    groups, _ = _param_groups()
    optimizer, _, _ = optim.build_optimizer("SGDNesterov", groups, make_values(optimizer_args="momentum=0.5"), "cpu")
    assert optimizer.defaults["momentum"] == 0.5


def test_adafactor_defaults_like_sd_scripts():
    groups, _ = _param_groups()
    optimizer, description, warnings = optim.build_optimizer("Adafactor", groups, make_values(optimizer_args=""),
                                                             "cpu")
    assert optimizer.defaults["relative_step"] is True and optimizer.defaults["lr"] is None
    assert all(g["lr"] is None for g in optimizer.param_groups)
    assert description == "transformers.optimization.Adafactor(relative_step=True)"
    assert any("relative_step=True" in w and "unet_lr and text_encoder_lr" in w for w in warnings)

    groups, _ = _param_groups()
    values = make_values(optimizer_args="scale_parameter=False relative_step=False warmup_init=False")
    optimizer, _, warnings = optim.build_optimizer("Adafactor", groups, values, "cpu")
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 5e-4] and warnings == []
    assert optimizer.defaults["scale_parameter"] is False

    groups, _ = _param_groups()
    values = make_values(optimizer_args="relative_step=False warmup_init=True")
    optimizer, _, warnings = optim.build_optimizer("Adafactor", groups, values, "cpu")
    assert optimizer.defaults["relative_step"] is True
    assert any("warmup_init" in w for w in warnings)


def test_prodigy_learning_rates():
    groups, _ = _param_groups()
    with pytest.raises(CharLoRAError, match=r"Prodigy needs one learning rate .*\[0.0005, 0.001\].*set them equal"):
        optim.build_optimizer("Prodigy", groups, make_values(learning_rate=1.0), "cpu")
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))]
    groups = [{"params": params[:1], "lr": 1e-4}, {"params": params[1:], "lr": 0.0}]  # 0: that part is frozen
    _, _, warnings = optim.build_optimizer("Prodigy", groups, make_values(learning_rate=1e-4), "cpu")
    assert len(warnings) == 1 and "around 1.0" in warnings[0] and "0.0001" in warnings[0]
    _, _, warnings = optim.build_optimizer("Prodigy", [{"params": params, "lr": 1.0}],
                                           make_values(learning_rate=1.0), "cpu")
    assert warnings == []


@pytest.mark.parametrize("name", ["DAdaptAdam", "Foo"])
def test_unsupported_optimizer_names(name):
    groups, _ = _param_groups()
    with pytest.raises(CharLoRAError, match=rf"optimizer '{name}' is not supported.*AdamW8bit.*Prodigy"):
        optim.build_optimizer(name, groups, make_values(), "cpu")


def test_optimizer_refusing_an_argument_names_it():
    groups, _ = _param_groups()
    with pytest.raises(CharLoRAError, match=r"optimizer AdamW refused .*foo.*optimizer_args"):
        optim.build_optimizer("AdamW", groups, make_values(optimizer_args="foo=1"), "cpu")


@pytest.fixture
def no_bitsandbytes(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` raises ImportError


@pytest.mark.parametrize("name, fallback", [("AdamW8bit", "torch.optim.adamw.AdamW"),
                                            ("Lion8bit", "lion_pytorch.lion_pytorch.Lion")])
def test_8bit_without_bitsandbytes_errors_or_falls_back_with_a_warning(no_bitsandbytes, name, fallback):
    groups, params = _param_groups()
    with pytest.raises(CharLoRAError, match=rf"optimizer {name} needs bitsandbytes.*optimizer_fallback to true"):
        optim.build_optimizer(name, groups, make_values(), "cpu")

    values = make_values(optimizer_fallback=True, optimizer_args="weight_decay=0.02 min_8bit_size=4096")
    optimizer, description, warnings = optim.build_optimizer(name, groups, values, "cpu")
    assert description.split("(")[0] == fallback
    assert optimizer.param_groups[0]["weight_decay"] == 0.02
    assert len(warnings) == 1 and name in warnings[0] and "optimizer_fallback" in warnings[0]
    assert "min_8bit_size" in warnings[0]  # a bitsandbytes-only argument, dropped and said so
    _one_step(optimizer, params)


def test_8bit_runtime_failure_is_reported(monkeypatch):
    def broken(cls, device):
        raise RuntimeError("CUDA Setup failed: libbitsandbytes_cuda.so not found")

    monkeypatch.setattr(optim, "_probe_8bit", broken)
    groups, _ = _param_groups()
    with pytest.raises(CharLoRAError, match=r"cannot run it on cuda \(RuntimeError: CUDA Setup failed"):
        optim.build_optimizer("AdamW8bit", groups, make_values(), "cuda")


# ------------------------------------------------------------------------------------------- schedule
def test_warmup_steps_from_steps_or_percent():
    assert schedule.warmup_steps(make_values(lr_warmup_steps=7, lr_warmup=50), 100) == 7
    assert schedule.warmup_steps(make_values(lr_warmup_steps=0, lr_warmup=10), 200) == 20
    # Kohya's GUI uses Python's round(): halves go to the even number.
    assert schedule.warmup_steps(make_values(lr_warmup_steps=0, lr_warmup=10), 105) == 10
    assert schedule.warmup_steps(make_values(lr_warmup_steps=0, lr_warmup=10), 115) == 12
    assert schedule.warmup_steps(make_values(lr_warmup_steps=0, lr_warmup=0), 115) == 0


def _curve(name, steps=100, warmup=10, **extra):
    """lr factor after each of 0..steps+1 scheduler steps (group 0 has lr 1.0, group 1 lr 0.5)."""
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD([{"params": params[:1], "lr": 1.0}, {"params": params[1:], "lr": 0.5}], lr=1.0)
    values = make_values(lr_scheduler=name, lr_warmup_steps=warmup, learning_rate=1.0, **extra)
    scheduler = schedule.build_scheduler(optimizer, values, steps)
    factors = []
    for _ in range(steps + 2):
        lrs = scheduler.get_last_lr()
        assert lrs[1] == pytest.approx(0.5 * lrs[0], abs=1e-12)  # one factor for every group
        factors.append(lrs[0])
        optimizer.step()
        scheduler.step()
    return factors


STEPS, WARMUP = 100, 10
CHECK_AT = (0, 1, 5, 9, 10, 11, 30, 55, 77, 99, 100)


def _progress(s):
    return (s - WARMUP) / (STEPS - WARMUP)


def _expected(name, s, cycles=1, power=1.0):
    if name == "constant":
        return 1.0
    if s < WARMUP:
        return s / WARMUP
    p = _progress(s)
    if name == "constant_with_warmup":
        return 1.0
    if name == "linear":
        return max(0.0, (STEPS - s) / (STEPS - WARMUP))
    if name == "cosine":
        return max(0.0, 0.5 * (1 + math.cos(math.pi * p)))
    if name == "cosine_with_restarts":
        return 0.0 if p >= 1 else 0.5 * (1 + math.cos(math.pi * ((cycles * p) % 1.0)))
    if name == "polynomial":
        lr_end = 1e-7
        return ((1.0 - lr_end) * (1 - p) ** power + lr_end) / 1.0
    raise AssertionError(name)


@pytest.mark.parametrize("name, extra, formula", [
    ("constant", {}, {}),
    ("constant_with_warmup", {}, {}),
    ("linear", {}, {}),
    ("cosine", {}, {}),
    ("cosine_with_restarts", {}, {"cycles": 1}),
    ("cosine_with_restarts", {"lr_scheduler_num_cycles": 3}, {"cycles": 3}),
    ("polynomial", {}, {"power": 1.0}),
    ("polynomial", {"lr_scheduler_power": 2.0}, {"power": 2.0}),
])
def test_schedule_curves_match_their_formulas(name, extra, formula):
    factors = _curve(name, STEPS, WARMUP, **extra)
    for s in CHECK_AT:
        assert factors[s] == pytest.approx(_expected(name, s, **formula), abs=1e-9), f"{name} at step {s}"


def test_restarts_jump_back_to_the_full_rate():
    factors = _curve("cosine_with_restarts", STEPS, WARMUP, lr_scheduler_num_cycles=3)
    cycle = (STEPS - WARMUP) / 3  # 30 steps per cycle
    assert factors[WARMUP + 29] < 0.01 and factors[WARMUP + 30] == pytest.approx(1.0)
    assert factors[int(WARMUP + 1.5 * cycle)] == pytest.approx(0.5, abs=1e-9)


def test_lr_scheduler_args_reach_the_curve():
    factors = _curve("cosine", STEPS, WARMUP, lr_scheduler_args="num_cycles=1.0")  # a full cosine
    assert factors[55] == pytest.approx(0.0, abs=1e-9) and factors[99] > 0.99
    with pytest.raises(CharLoRAError, match=r"lr_scheduler cosine refused.*foo"):
        _curve("cosine", STEPS, WARMUP, lr_scheduler_args="foo=1")


def test_constant_ignores_the_warmup_and_says_so():
    assert _curve("constant", STEPS, WARMUP)[:3] == [1.0, 1.0, 1.0]
    notes = schedule.scheduler_notes(make_values(lr_scheduler="constant", lr_warmup_steps=10), 100)
    assert len(notes) == 1 and "10 warm-up steps" in notes[0] and "constant_with_warmup" in notes[0]
    assert schedule.scheduler_notes(make_values(lr_scheduler="cosine", lr_warmup_steps=10), 100) == []
    notes = schedule.scheduler_notes(make_values(lr_scheduler="linear", lr_warmup_steps=0, lr_warmup=100), 40)
    assert len(notes) == 1 and "never reaches" in notes[0]


def test_scheduler_names_match_the_table():
    assert set(schedule.SCHEDULERS) == set(LR_SCHEDULERS)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(CharLoRAError, match=r"lr_scheduler 'warmup_stable_decay' is not supported"):
        schedule.build_scheduler(optimizer, make_values(lr_scheduler="warmup_stable_decay"), 10)


def test_adafactor_schedule():
    from transformers.optimization import AdafactorSchedule

    p = torch.nn.Parameter(torch.randn(16, 16, generator=torch.Generator().manual_seed(0)))
    rms_before = p.detach().pow(2).mean().sqrt().item()
    optimizer, _, _ = optim.build_optimizer("Adafactor", [{"params": [p], "lr": 1e-3}], make_values(), "cpu")
    # Adafactor with relative_step replaces any lr_scheduler by the adafactor one, as sd-scripts does.
    scheduler = schedule.build_scheduler(optimizer, make_values(lr_scheduler="cosine", lr_warmup_steps=0), 10)
    assert isinstance(scheduler, AdafactorSchedule)
    p.grad = torch.ones_like(p)
    optimizer.step()
    scheduler.step()
    # Adafactor's own step size at step 1: min(1e-2, 1/sqrt(1)) times the weights' RMS (at least 1e-3).
    assert scheduler.get_last_lr()[0] == pytest.approx(1e-2 * max(1e-3, rms_before), rel=1e-5)

    q = [torch.nn.Parameter(torch.zeros(4))]
    fixed, _, _ = optim.build_optimizer("Adafactor", [{"params": q, "lr": 1e-3}],
                                        make_values(optimizer_args="relative_step=False"), "cpu")
    with pytest.raises(CharLoRAError, match=r"relative_step=True.*constant_with_warmup"):
        schedule.build_scheduler(fixed, make_values(lr_scheduler="adafactor"), 10)
    adamw = torch.optim.AdamW(q, lr=1e-3)
    with pytest.raises(CharLoRAError, match=r"only with optimizer Adafactor \(got AdamW\)"):
        schedule.build_scheduler(adamw, make_values(lr_scheduler="adafactor"), 10)


# ------------------------------------------------------------------------------------------- sampling
def test_parse_prompt_line_kohya_syntax():
    p = sampling.parse_prompt_line("wwaa girl, smiling --n blurry, lowres --w 512 --h 768 --s 28 --l 7.5 --d 1234")
    assert (p.prompt, p.negative_prompt, p.width, p.height, p.steps, p.cfg_scale, p.seed) == \
        ("wwaa girl, smiling", "blurry, lowres", 512, 768, 28, 7.5, 1234)
    assert p.sampler is None and p.warnings == []

    p = sampling.parse_prompt_line("cat --W 500 --h 30 --s 5000 --ss dpmsolver++")
    assert (p.width, p.height, p.steps, p.sampler) == (496, 64, 1000, "dpmsolver++")  # 8-multiple, >= 64
    assert sampling.parse_prompt_line("cat --s 0").steps == 1


def test_parse_prompt_line_defaults_and_unknown_options():
    p = sampling.parse_prompt_line("just a prompt")
    assert (p.width, p.height, p.steps, p.cfg_scale, p.seed, p.negative_prompt) == (512, 512, 30, 7.5, None, None)
    p = sampling.parse_prompt_line("cat --d 5", {"width": 64, "height": 72, "steps": 2})
    assert (p.width, p.height, p.steps, p.seed) == (64, 72, 2, 5)

    p = sampling.parse_prompt_line("cat --x 1 --l abc --w 256 --l 7.5.1 --ss k_dpmpp_2m")
    assert p.width == 256 and p.cfg_scale == 7.5 and p.sampler is None
    assert len(p.warnings) == 4
    assert "--x 1 is not known" in p.warnings[0] and "--l abc: --l takes a CFG scale" in p.warnings[1]
    assert "--l 7.5.1 has a bad value" in p.warnings[2] and "--ss k_dpmpp_2m has a bad value" in p.warnings[3]
    # Only the parts after " --" are options (sd-scripts also reads the prompt text itself).
    assert sampling.parse_prompt_line("w 300 cats").width == 512


def test_parse_prompts_skips_blank_and_comment_lines():
    prompts = sampling.parse_prompts("# samples\n\ncat --d 1\n   \n#dog\ndog --d 2\n")
    assert [(p.prompt, p.seed) for p in prompts] == [("cat", 1), ("dog", 2)]


SAMPLER_CLASSES = {
    "ddim": "DDIMScheduler", "pndm": "PNDMScheduler", "lms": "LMSDiscreteScheduler",
    "k_lms": "LMSDiscreteScheduler", "euler": "EulerDiscreteScheduler", "k_euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler", "k_euler_a": "EulerAncestralDiscreteScheduler",
    "dpmsolver": "DPMSolverMultistepScheduler", "dpmsolver++": "DPMSolverMultistepScheduler",
    "dpmsingle": "DPMSolverSinglestepScheduler", "heun": "HeunDiscreteScheduler",
    "dpm_2": "KDPM2DiscreteScheduler", "k_dpm_2": "KDPM2DiscreteScheduler",
    "dpm_2_a": "KDPM2AncestralDiscreteScheduler", "k_dpm_2_a": "KDPM2AncestralDiscreteScheduler",
}


def _has_scipy():
    try:
        import scipy  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("name", sorted(SAMPLER_CLASSES))
def test_every_sampler_builds_and_steps(name, ddpm):
    assert set(sampling.SAMPLERS) == set(TABLE_SAMPLERS) == set(SAMPLER_CLASSES)
    if "lms" in name and not _has_scipy():
        with pytest.raises(CharLoRAError, match=rf"sample_sampler {name} needs .*scipy"):
            sampling.make_sampler(name, ddpm.config)
        return
    sampler = sampling.make_sampler(name, ddpm.config)
    assert type(sampler).__name__ == SAMPLER_CLASSES[name]
    assert sampler.config.beta_schedule == "scaled_linear" and sampler.config.beta_end == 0.012
    if name.startswith("dpmsolver"):
        assert sampler.config.algorithm_type == name
    sampler.set_timesteps(4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=g) * sampler.init_noise_sigma
    for t in sampler.timesteps:
        sampler.scale_model_input(x, t)
        x = sampler.step(torch.randn(1, 4, 8, 8, generator=g), t, x).prev_sample
    assert torch.isfinite(x).all()


def test_samplers_are_built_like_sd_scripts(ddpm):
    # Fresh from SD's noise schedule: DDIM keeps its own defaults (clip_sample True, steps_offset 0),
    # not the training scheduler's (clip_sample False, steps_offset 1).
    ddim = sampling.make_sampler("ddim", ddpm.config)
    assert ddim.config.clip_sample is True and ddim.config.steps_offset == 0
    v = sampling.make_sampler("euler_a", {**ddpm.config, "prediction_type": "v_prediction"})
    assert v.config.prediction_type == "v_prediction"
    with pytest.raises(CharLoRAError, match=r"sample_sampler 'k_dpmpp_2m' is not known.*euler_a"):
        sampling.make_sampler("k_dpmpp_2m", ddpm.config)


@pytest.fixture(scope="module")
def pipe(tiny):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**tiny, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _pixels(image):
    import numpy as np

    return np.asarray(image).astype(int)


def test_generate_samples(pipe):
    defaults_ = {"width": 64, "height": 64, "steps": 2}
    prompts = sampling.parse_prompts("a photo of the cat --d 11\ncat --n sks --d 12 --ss ddim --w 72", defaults_)
    original = pipe.scheduler
    rng = torch.get_rng_state()
    images = sampling.generate_samples(pipe, prompts, "euler_a", "cpu")
    assert [im.size for im in images] == [(64, 64), (72, 64)]
    assert pipe.scheduler is original  # restored
    assert torch.equal(torch.get_rng_state(), rng)  # training randomness untouched

    again = sampling.generate_samples(pipe, prompts, "euler_a", "cpu")
    assert all((_pixels(a) == _pixels(b)).all() for a, b in zip(images, again))  # seeded
    other_seed = sampling.generate_samples(pipe, sampling.parse_prompts("a photo of the cat --d 99", defaults_),
                                           "euler_a", "cpu")
    assert (_pixels(other_seed[0]) != _pixels(images[0])).any()
    skip2 = sampling.generate_samples(pipe, prompts[:1], "euler_a", "cpu", clip_skip=2)
    assert (_pixels(skip2[0]) != _pixels(images[0])).any()

    # With clip_skip 1 the conditioning is diffusers' own: the same image as the pipeline by itself.
    pipe.scheduler = sampling.make_sampler("euler_a", original.config)
    try:
        direct = pipe("a photo of the cat", height=64, width=64, num_inference_steps=2, guidance_scale=7.5,
                      generator=torch.Generator().manual_seed(11)).images[0]
    finally:
        pipe.scheduler = original
    assert abs(_pixels(direct) - _pixels(images[0])).max() <= 1


def test_pndm_needs_four_steps(pipe):
    prompts = sampling.parse_prompts("cat --d 1 --s 2 --w 64 --h 64")
    with pytest.raises(CharLoRAError, match=r"pndm sampler needs at least 4 steps \(--s 2\)"):
        sampling.generate_samples(pipe, prompts, "pndm", "cpu")
    assert type(pipe.scheduler).__name__ == "DDPMScheduler"


def test_sample_filename_like_kohya():
    ts = "20240101120000"
    assert sampling.sample_filename("wwaa", 500, 0, 1234, epoch=3, timestamp=ts) == \
        "wwaa_e000003_00_20240101120000_1234.png"
    assert sampling.sample_filename("wwaa", 500, 2, None, timestamp=ts) == "wwaa_000500_02_20240101120000.png"
    assert sampling.sample_filename(None, 7, 11, 5, timestamp=ts) == "000007_11_20240101120000_5.png"
    assert re.fullmatch(r"last_000001_00_\d{14}_3\.png", sampling.sample_filename("last", 1, 0, 3))
