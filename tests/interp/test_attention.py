"""Attention patterns, the relative-offset profile, heatmaps and the offline circuitsvis page."""

import re

import matplotlib.pyplot as plt
import pytest
import torch

from interp.attention import (
    attention_html,
    attention_patterns,
    attention_summary,
    circuitsvis_bundle,
    circuitsvis_bundle_path,
    mean_attended_distance,
    offset_profile,
    plot_offset_profile,
    plot_patterns,
    write_attention_html,
)
from training.config import ModelConfig
from training.model import MarkovTransformer

pytestmark = pytest.mark.usefixtures("one_thread_module")


def previous_token_pattern(n: int) -> torch.Tensor:
    """A[i, i-1] = 1 for i >= 1, A[0, 0] = 1."""
    a = torch.zeros(n, n)
    a[0, 0] = 1.0
    a[torch.arange(1, n), torch.arange(n - 1)] = 1.0
    return a


def random_causal_patterns(gen, *shape_and_n):
    *lead, n = shape_and_n
    scores = torch.randn(*lead, n, n, generator=gen)
    mask = torch.ones(n, n, dtype=torch.bool).tril()
    return scores.masked_fill(~mask, float("-inf")).softmax(-1)


def test_offset_profile_of_a_previous_token_head():
    n = 12
    profile = offset_profile(previous_token_pattern(n))
    expected = torch.zeros(n)
    expected[0] = 1.0 / n  # only query 0 puts weight on itself
    expected[1] = 1.0
    torch.testing.assert_close(profile, expected)
    assert mean_attended_distance(previous_token_pattern(n)) == pytest.approx((n - 1) / n)


def test_offset_profile_matches_a_loop(gen):
    patterns = random_causal_patterns(gen, 2, 3, 9)
    profile = offset_profile(patterns, max_offset=5)
    assert profile.shape == (2, 3, 6)
    for d in range(6):
        loop = torch.stack([patterns[..., i, i - d] for i in range(d, 9)], -1).mean(-1)
        torch.testing.assert_close(profile[..., d], loop)
    with pytest.raises(ValueError, match="max_offset"):
        offset_profile(patterns, max_offset=-1)
    with pytest.raises(ValueError, match="square"):
        offset_profile(patterns[..., :4])


def test_model_patterns_and_window(gen):
    model = MarkovTransformer(
        ModelConfig.paper(n_ctx=32, n_layers=2, n_heads=2, attn_window=[2, None]), seed=0
    )
    with torch.no_grad():
        model.blocks[0].attn.W_Q.mul_(50)  # sharper than the tiny init, so weights differ
    tokens = torch.randint(0, 2, (5, 20), generator=gen)
    patterns = attention_patterns(model, tokens)
    assert patterns.shape == (2, 5, 2, 20, 20)
    torch.testing.assert_close(patterns.sum(-1), torch.ones(2, 5, 2, 20))
    assert patterns.triu(1).abs().max() == 0  # causal
    profile = offset_profile(patterns).mean(1)  # [layer, head, offset]
    assert profile[0, :, 3:].abs().max() == 0  # window 2: nothing beyond offset 2
    assert profile[1, :, 3:].sum() > 0
    summary = attention_summary(patterns, max_offset=4)
    assert len(summary["offset_profile"][0][0]) == 5
    assert summary["previous_weight"][0][0] == pytest.approx(float(profile[0, 0, 1]))


def test_plots_label_short_sequences_with_tokens():
    pattern = previous_token_pattern(6)[None, None].expand(2, 1, 6, 6)
    tokens = torch.tensor([0, 1, 1, 0, 1, 0])
    fig = plot_patterns(pattern, tokens)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["0", "1", "1", "0", "1", "0"]
    assert len(fig.axes) == 3  # two panels and a colour bar
    plt.close(fig)
    long = previous_token_pattern(40)[None, None]
    fig = plot_patterns(long, torch.zeros(40, dtype=torch.long))
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] != [str(0)] * 40
    plt.close(fig)
    fig = plot_offset_profile(offset_profile(long))
    assert len(fig.axes[0].lines) == 1
    plt.close(fig)
    with pytest.raises(ValueError, match="layer, head, query, key"):
        plot_patterns(long[0])


def test_offset_profile_figure_fits_near_uniform_attention_and_shows_uniform(gen):
    """Weights of a 64-token sequence are ~1/64: a 0-1 axis (v1) drew them as one flat line
    at the bottom. The reference: uniform attention over the same keys, exactly."""
    from tests.figures import assert_fills_axes

    scores = 0.3 * torch.randn(1, 4, 2, 64, 64, generator=gen)
    mask = torch.ones(64, 64, dtype=torch.bool).tril()
    patterns = scores.masked_fill(~mask, float("-inf")).softmax(-1)  # [layer, batch, head, q, k]
    summary = attention_summary(patterns, max_offset=12)
    uniform = torch.tensor(summary["uniform_profile"])
    want = torch.tensor([sum(1 / (i + 1) for i in range(d, 64)) / (64 - d) for d in range(13)])
    torch.testing.assert_close(uniform[0].float(), want, atol=1e-6, rtol=0)
    profile = torch.tensor(summary["offset_profile"])
    assert float(profile.max()) < 0.1  # the data: a few hundredths
    fig = plot_offset_profile(profile, uniform=uniform)
    assert_fills_axes(fig)
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["L0H0", "L0H1", "uniform attention"]
    assert ax.get_legend() is not None
    assert all(float(t) == int(t) for t in ax.get_xticks())  # offsets are whole numbers
    plt.close(fig)


def test_html_is_offline_and_embeds_the_bundle(tmp_path):
    path = circuitsvis_bundle_path()
    assert path.suffix == ".js" and path.stat().st_size > 10_000
    bundle = circuitsvis_bundle()
    patterns = previous_token_pattern(5)[None, None].expand(2, 2, 5, 5)
    out = write_attention_html(tmp_path / "a.html", patterns, torch.tensor([0, 1, 1, 0, 1]))
    html = out.read_text()
    assert bundle in html  # the JavaScript is inlined...
    assert "var CircuitsVis" in html
    assert not re.search(r"<script[^>]*\bsrc\s*=", html, re.I)  # ...and nothing is fetched
    assert "unpkg" not in html and "sourceMappingURL" not in html
    assert html.count("CircuitsVis.render(") == 2  # one view per layer
    assert "</script" not in bundle.lower() and "<!--" not in bundle  # cannot end its element
    assert html.count("</script>") == 3  # the bundle and the two render calls
    with pytest.raises(FileExistsError, match="already exists"):
        write_attention_html(tmp_path / "a.html", patterns, torch.tensor([0, 1, 1, 0, 1]))
    with pytest.raises(ValueError, match="tokens"):
        attention_html(patterns, torch.tensor([0, 1]))
