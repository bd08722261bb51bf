"""Checkpoints (issue 3): bit-exact round trips, atomic and refusing writes, and clear errors
for every way a checkpoint directory can be wrong. Nothing is ever unpickled."""

from __future__ import annotations

import json
import os

import pytest
import safetensors.torch
import torch

import training.checkpoints as checkpoints
from training.checkpoints import (
    FORMAT,
    MANIFEST,
    STATE,
    WEIGHTS,
    CheckpointError,
    load_checkpoint,
    model_from_checkpoint,
    read_checkpoint,
    save_checkpoint,
    sha256_file,
)
from training.config import ModelConfig
from training.model import MarkovTransformer


def make_model(seed: int = 0, *, pi: torch.Tensor | None = None, **overrides) -> MarkovTransformer:
    base = dict(d_vocab=3, n_ctx=16, n_layers=2, n_heads=2, d_model=8, init_range=0.3)
    base.update(overrides)
    return MarkovTransformer(ModelConfig(**base), seed=seed, pi=pi)


def toks(batch: int = 3, length: int = 16) -> torch.Tensor:
    return torch.randint(0, 3, (batch, length), generator=torch.Generator().manual_seed(0))


def leftovers(parent) -> list[str]:
    """Hidden temporary or backup directories a save could leave behind."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def rewrite_manifest(ckpt, edit) -> None:
    manifest = json.loads((ckpt / MANIFEST).read_text())
    edit(manifest)
    (ckpt / MANIFEST).write_text(json.dumps(manifest))


@pytest.fixture(autouse=True)
def never_unpickle(monkeypatch):
    """Loading must go through safetensors only: torch.load (pickle) is booby-trapped."""

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load was called: checkpoints must never be unpickled")

    monkeypatch.setattr(torch, "load", refuse)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(tie_embeddings=True, n_layers=1, n_heads=1),
        dict(tie_embeddings=False),
        dict(
            tie_embeddings=False,
            ln_bias=True,
            linear_bias=True,
            n_layers=3,
            attn_window=[1, None, 2],
        ),
        dict(
            tie_embeddings=True,
            attn_only=True,
            normalization_type=None,
            positional_embedding_type="none",
        ),
    ],
)
def test_round_trip_is_bit_exact(tmp_path, overrides):
    model = make_model(**overrides)
    with torch.no_grad():  # make every parameter non-trivial, biases and LN weights included
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    path = save_checkpoint(tmp_path / "step_000010", model, metadata={"step": 10})
    assert sorted(os.listdir(path)) == sorted([MANIFEST, WEIGHTS])
    loaded = load_checkpoint(path, device="cpu")
    assert not loaded.training and loaded.cfg == model.cfg
    want, got = model.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key
    assert torch.equal(loaded(toks()), model(toks()))
    if model.cfg.tie_embeddings:  # the tie survives loading: still one Parameter
        assert "unembed.W_U" not in got
        assert loaded.W_U.data_ptr() == loaded.W_E.data_ptr()
    else:
        assert torch.equal(loaded.W_U, model.W_U)


def test_float64_round_trip_keeps_precision(tmp_path):
    model = make_model().to(torch.float64)
    loaded = load_checkpoint(save_checkpoint(tmp_path / "c", model), device="cpu")
    assert loaded.W_E.dtype == torch.float64
    assert torch.equal(loaded(toks()), model(toks()))


@pytest.mark.parametrize("init", ["theta_pi", "good"])
def test_a_named_init_round_trips(tmp_path, init):
    """A checkpoint holds no pi: loading a theta_pi model builds its skeleton without the
    init (every weight is loaded), and the loaded model still says cfg.init == "theta_pi"."""
    pi = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    model = make_model(init=init, tie_embeddings=False, pi=pi)  # pi: ignored by "good"
    loaded = load_checkpoint(save_checkpoint(tmp_path / "c", model), device="cpu")
    assert loaded.cfg == model.cfg and loaded.cfg.init == init
    assert all(m.cfg is loaded.cfg for m in loaded.blocks)  # one cfg, shared
    want, got = model.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key
    assert torch.equal(loaded(toks()), model(toks()))


def test_extra_state_and_metadata_round_trip(tmp_path):
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(toks(), return_type="loss").backward()
    opt.step()
    state = {f"adam.{i}.{k}": v for i, s in enumerate(opt.state.values()) for k, v in s.items()}
    state["rng.cpu"] = torch.get_rng_state()
    state["counts"] = torch.arange(5, dtype=torch.int64)
    metadata = {
        "step": 400,
        "seed": 3,
        "chain": {"family": "binary", "p": 0.5, "q": 0.8},
        "tags": [1, "a"],
    }
    path = save_checkpoint(tmp_path / "c", model, metadata=metadata, state=state)
    ckpt = read_checkpoint(path)
    assert ckpt.metadata == metadata and ckpt.step == 400
    assert ckpt.config == model.cfg and ckpt.version
    assert ckpt.state.keys() == state.keys()
    for k, v in state.items():
        assert ckpt.state[k].dtype == v.dtype and torch.equal(ckpt.state[k], v), k
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["format"] == FORMAT
    assert manifest["sha256"] == {
        WEIGHTS: sha256_file(path / WEIGHTS),
        STATE: sha256_file(path / STATE),
    }
    rebuilt = model_from_checkpoint(ckpt, device="cpu")
    assert torch.equal(rebuilt(toks()), model(toks()))


def test_non_json_metadata_is_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match="metadata must be JSON-serialisable"):
        save_checkpoint(tmp_path / "c", make_model(), metadata={"when": object()})
    assert list(tmp_path.iterdir()) == []


def test_save_refuses_to_overwrite(tmp_path):
    first, second = make_model(seed=0), make_model(seed=1)
    path = save_checkpoint(tmp_path / "c", first, metadata={"step": 1})
    with pytest.raises(FileExistsError, match="already exists .*overwrite=True"):
        save_checkpoint(path, second, metadata={"step": 2})
    assert read_checkpoint(path).metadata == {"step": 1}
    assert torch.equal(load_checkpoint(path, device="cpu")(toks()), first(toks()))
    # a plain file in the way is not silently replaced either
    (tmp_path / "file").write_text("mine")
    with pytest.raises(FileExistsError):
        save_checkpoint(tmp_path / "file", first)
    assert (tmp_path / "file").read_text() == "mine"


def test_overwrite_replaces_the_checkpoint(tmp_path):
    path = save_checkpoint(
        tmp_path / "c", make_model(seed=0), metadata={"step": 1}, state={"x": torch.ones(2)}
    )
    second = make_model(seed=1)
    save_checkpoint(path, second, metadata={"step": 2}, overwrite=True)
    ckpt = read_checkpoint(path)
    assert ckpt.metadata == {"step": 2} and ckpt.state == {}  # nothing of the old one is left
    assert not (path / STATE).exists()
    assert torch.equal(load_checkpoint(path, device="cpu")(toks()), second(toks()))
    assert leftovers(tmp_path) == []


def test_interrupted_first_save_leaves_nothing(tmp_path, monkeypatch):
    real = checkpoints.write_safetensors
    calls = []

    def failing(tensors, *args, **kwargs):
        calls.append(sorted(tensors))
        if len(calls) == 2:
            raise OSError("disk full")
        return real(tensors, *args, **kwargs)

    monkeypatch.setattr(checkpoints, "write_safetensors", failing)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "c", make_model(), state={"x": torch.ones(2)})
    assert len(calls) == 2
    assert list(tmp_path.iterdir()) == []


def test_interrupted_overwrite_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    good = make_model(seed=0)
    path = save_checkpoint(tmp_path / "c", good, metadata={"step": 1})
    before = {name: (path / name).read_bytes() for name in os.listdir(path)}

    real = checkpoints.write_safetensors
    calls = []

    def failing(tensors, *args, **kwargs):
        calls.append(sorted(tensors))
        if len(calls) == 2:  # the state file, after the weights were written
            raise OSError("disk full")
        return real(tensors, *args, **kwargs)

    monkeypatch.setattr(checkpoints, "write_safetensors", failing)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, make_model(seed=1), state={"x": torch.ones(2)}, overwrite=True)
    monkeypatch.undo()
    assert {name: (path / name).read_bytes() for name in os.listdir(path)} == before
    assert leftovers(tmp_path) == []
    assert torch.equal(load_checkpoint(path, device="cpu")(toks()), good(toks()))


@pytest.mark.parametrize("failing_call", [1, 2])
def test_failed_rename_keeps_the_previous_checkpoint(tmp_path, monkeypatch, failing_call):
    """os.replace fails when moving the old checkpoint aside (1) or the new one in (2)."""
    good = make_model(seed=0)
    path = save_checkpoint(tmp_path / "c", good, metadata={"step": 1})
    before = {name: (path / name).read_bytes() for name in os.listdir(path)}
    real = os.replace
    calls = []

    def failing(src, dst):
        calls.append((src, dst))
        if len(calls) == failing_call:
            raise OSError("rename failed")
        return real(src, dst)

    monkeypatch.setattr(checkpoints.os, "replace", failing)
    with pytest.raises(OSError, match="rename failed"):
        save_checkpoint(path, make_model(seed=1), metadata={"step": 2}, overwrite=True)
    monkeypatch.undo()
    assert {name: (path / name).read_bytes() for name in os.listdir(path)} == before
    assert leftovers(tmp_path) == []
    assert read_checkpoint(path).metadata == {"step": 1}


@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_a_flipped_byte_is_detected(tmp_path, where):
    path = save_checkpoint(tmp_path / "c", make_model())
    data = bytearray((path / WEIGHTS).read_bytes())
    index = {"start": 3, "middle": len(data) // 2, "end": len(data) - 1}[where]
    data[index] ^= 0x01
    (path / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt: SHA-256"):
        load_checkpoint(path, device="cpu")


def test_a_truncated_file_is_detected(tmp_path):
    path = save_checkpoint(tmp_path / "c", make_model(), state={"x": torch.ones(100)})
    data = (path / STATE).read_bytes()
    (path / STATE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{STATE} is corrupt"):
        read_checkpoint(path)


def test_an_unreadable_safetensors_file_with_a_matching_checksum(tmp_path):
    path = save_checkpoint(tmp_path / "c", make_model())
    (path / WEIGHTS).write_bytes(b"not a safetensors file")
    rewrite_manifest(path, lambda m: m["sha256"].update({WEIGHTS: sha256_file(path / WEIGHTS)}))
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        read_checkpoint(path)


def test_missing_pieces(tmp_path):
    with pytest.raises(CheckpointError, match="is not a checkpoint directory"):
        load_checkpoint(tmp_path / "nowhere")
    path = save_checkpoint(tmp_path / "c", make_model(), state={"x": torch.ones(2)})
    (path / STATE).unlink()
    with pytest.raises(CheckpointError, match=f"{STATE} is missing \\(incomplete checkpoint\\)"):
        read_checkpoint(path)
    (path / MANIFEST).unlink()
    with pytest.raises(CheckpointError, match="incomplete or not a checkpoint"):
        read_checkpoint(path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="incomplete"):
        load_checkpoint(empty)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "is not valid JSON"),
        (b"\xff\xfe\x00", "is not valid JSON"),
        ("[1, 2]", "unknown format 'list'"),
        ('{"format": "something-else/1"}', "unknown format 'something-else/1'"),
    ],
)
def test_invalid_manifest(tmp_path, content, message):
    path = save_checkpoint(tmp_path / "c", make_model())
    if isinstance(content, bytes):
        (path / MANIFEST).write_bytes(content)
    else:
        (path / MANIFEST).write_text(content)
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(path)


def test_manifest_without_weights_or_with_a_bad_config(tmp_path):
    path = save_checkpoint(tmp_path / "c", make_model())
    rewrite_manifest(path, lambda m: m["sha256"].pop(WEIGHTS))
    with pytest.raises(CheckpointError, match=f"lists no {WEIGHTS}"):
        read_checkpoint(path)
    path = save_checkpoint(tmp_path / "d", make_model())
    rewrite_manifest(path, lambda m: m["config"].update(act_fn="swish"))
    with pytest.raises(CheckpointError, match="invalid model config: act_fn must be one of"):
        read_checkpoint(path)


def test_checkpoint_from_another_config_is_refused(tmp_path):
    model = make_model()
    path = save_checkpoint(tmp_path / "c", model)
    other = ModelConfig(**{**model.cfg.to_dict(), "d_model": 16, "tie_embeddings": False})
    with pytest.raises(
        CheckpointError, match="from another config: d_model=8 \\(expected 16\\)"
    ) as err:
        load_checkpoint(path, device="cpu", expected_config=other)
    assert "tie_embeddings=True (expected False)" in str(err.value)
    same = ModelConfig.from_dict(model.cfg.to_dict())
    assert load_checkpoint(path, device="cpu", expected_config=same).cfg == model.cfg


def test_weights_that_do_not_fit_the_manifest_config(tmp_path):
    """The manifest is edited to another architecture and its checksum kept valid."""
    path = save_checkpoint(tmp_path / "c", make_model(d_model=8))
    rewrite_manifest(path, lambda m: m["config"].update(d_model=12, d_head=6, d_mlp=48))
    with pytest.raises(CheckpointError, match=r"wrong shapes .*embed\.W_E: \(3, 8\) vs \(3, 12\)"):
        load_checkpoint(path, device="cpu")
    path = save_checkpoint(tmp_path / "d", make_model(tie_embeddings=True))
    rewrite_manifest(path, lambda m: m["config"].update(tie_embeddings=False))
    with pytest.raises(CheckpointError, match=r"missing \['unembed\.W_U'\]"):
        load_checkpoint(path, device="cpu")
    path = save_checkpoint(tmp_path / "e", make_model(n_layers=2))
    rewrite_manifest(path, lambda m: m["config"].update(n_layers=1))
    with pytest.raises(CheckpointError, match=r"unexpected \['blocks\.1\."):
        load_checkpoint(path, device="cpu")


def test_weights_file_with_a_tampered_tensor_and_fixed_checksum(tmp_path):
    path = save_checkpoint(tmp_path / "c", make_model())
    weights = safetensors.torch.load_file(str(path / WEIGHTS))
    weights["blocks.0.attn.W_Q"] = weights["blocks.0.attn.W_Q"][:, :, :2].contiguous()
    safetensors.torch.save_file(weights, str(path / WEIGHTS))
    rewrite_manifest(path, lambda m: m["sha256"].update({WEIGHTS: sha256_file(path / WEIGHTS)}))
    with pytest.raises(CheckpointError, match=r"blocks\.0\.attn\.W_Q: \(2, 8, 2\) vs \(2, 8, 4\)"):
        load_checkpoint(path, device="cpu")


def test_default_device(tmp_path):
    path = save_checkpoint(tmp_path / "c", make_model())
    model = load_checkpoint(path)
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert model.W_E.device.type == want and model.cfg.device.startswith(want)


def test_checkpoints_follow_the_users_umask(tmp_path):
    """v1 wrote checkpoint folders 0700 and weights 0600 (other users of a shared file
    system or a Ray cluster could not read them); now the umask decides, like every file."""
    import os

    from training.checkpoints import save_checkpoint

    model = MarkovTransformer(ModelConfig.paper(n_ctx=8), seed=0)
    old = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "c", model, metadata={"step": 0})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o755
    for f in path.iterdir():
        assert f.stat().st_mode & 0o777 == 0o644, f.name
