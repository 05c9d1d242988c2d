"""Multimodal backbones: the frozen encoder runs once per training step whatever K is, adapters go
to the language model by default, and the K-way forward equals K single-hypothesis forwards."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

from loramcl import LoRAConfig, MCLConfig, MCLModel
from loramcl.layers import lora_layers

AUDIO_TOKEN = 150
MEL_FRAMES = 100  # tiny encoder: max_source_positions 50 -> 100 mel frames -> 25 audio tokens


def tiny_qwen2_audio(seed: int = 0) -> Qwen2AudioForConditionalGeneration:
    torch.manual_seed(seed)
    cfg = Qwen2AudioConfig(
        audio_config=dict(d_model=32, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64,
                          num_mel_bins=128, max_source_positions=MEL_FRAMES // 2),
        text_config=dict(model_type="qwen2", vocab_size=200, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
        audio_token_id=AUDIO_TOKEN,
    )
    return Qwen2AudioForConditionalGeneration(cfg).eval()


def audio_batch(B: int = 2, text: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    """Prompt = 25 audio placeholder tokens + text; the second clip is shorter (padded features)."""
    g = torch.Generator().manual_seed(seed)
    n_audio = 25
    ids = torch.cat([torch.full((B, n_audio), AUDIO_TOKEN), torch.randint(3, 140, (B, text), generator=g)], dim=1)
    features = torch.randn(B, 128, MEL_FRAMES, generator=g)
    feature_mask = torch.ones(B, MEL_FRAMES, dtype=torch.long)
    labels = ids.clone()
    labels[:, :n_audio] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "input_features": features,
            "feature_attention_mask": feature_mask, "labels": labels}


def randomise_adapters(model: MCLModel, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model):
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.2)


def record_batches(module: torch.nn.Module) -> list[int]:
    """Rows of every batch the module sees (one entry per call)."""
    rows: list[int] = []
    module.register_forward_hook(lambda _m, args, _out: rows.append(args[0].shape[0]))
    return rows


@pytest.mark.parametrize("K", [1, 2, 5])
def test_audio_encoder_runs_once_per_step(K):
    base = tiny_qwen2_audio()
    rows = record_batches(base.model.audio_tower)
    model = MCLModel(base, MCLConfig(num_hypotheses=K, mode="relaxed-wta", epsilon=0.1),
                     LoRAConfig(r=4, alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]))
    model.train()
    out = model(**audio_batch())
    out.loss.backward()
    assert rows == [2]  # one call, on the B = 2 clips, not on K x B replicas
    assert out.hypothesis_losses.shape == (K, 2)
    # default scope: only the language model carries adapters (the audio encoder's q/k/v do not)
    assert model.target_names and all(n.startswith("model.language_model.") for n in model.target_names)
    assert not any(p.requires_grad for p in base.model.audio_tower.parameters())


@pytest.mark.parametrize("adapt_encoders", [False, True])
def test_kway_forward_equals_single_hypotheses(adapt_encoders):
    K = 3
    model = MCLModel(tiny_qwen2_audio(), MCLConfig(num_hypotheses=K),
                     LoRAConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], adapt_encoders=adapt_encoders))
    randomise_adapters(model)
    model.eval()
    batch = audio_batch()
    rows = record_batches(model.base_model.model.audio_tower)
    out = model(**batch)
    # encoder adapters make the encoder output hypothesis-specific: then it runs once on K replicas
    assert rows == [K * 2 if adapt_encoders else 2]
    assert any("audio_tower" in n for n in model.target_names) == adapt_encoders
    for k in range(K):
        single = model(**batch, hypothesis_idx=k)
        torch.testing.assert_close(out.logits[k], single.logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.hypothesis_losses[k], single.hypothesis_losses[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out.logits[0], out.logits[1])  # the hypotheses really differ


def test_shared_encoder_gradients_match_replicated_encoder():
    """Sharing the encoder output is exact: same loss and adapter gradients as replicating the inputs."""
    torch.manual_seed(0)
    lora = LoRAConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    shared = MCLModel(tiny_qwen2_audio(), MCLConfig(num_hypotheses=2), lora)
    randomise_adapters(shared)
    batch = audio_batch()
    shared.train()
    loss = shared(**batch).loss
    loss.backward()
    # reference: K independent single-hypothesis passes, WTA picked by hand
    ref = MCLModel(tiny_qwen2_audio(), MCLConfig(num_hypotheses=2), lora)
    ref.load_state_dict(shared.state_dict())
    per_k = torch.stack([ref(**batch, hypothesis_idx=k).hypothesis_losses[0] for k in range(2)])  # (K, B)
    ref_loss = per_k.min(dim=0).values.mean()
    ref_loss.backward()
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-6)
    for (name, p), (_, q) in zip(shared.named_parameters(), ref.named_parameters()):
        if p.requires_grad:
            torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_gradient_checkpointing_gives_the_same_gradients():
    from loramcl.backbones import _finish

    grads = []
    for checkpointing in (False, True):
        model = MCLModel(_finish(tiny_qwen2_audio(), checkpointing), MCLConfig(num_hypotheses=2),
                         LoRAConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
        randomise_adapters(model)
        model.train()
        model(**audio_batch()).loss.backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
    assert model.base_model.is_gradient_checkpointing
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_llava_next_vision_tower_runs_once_and_kway_equals_singles():
    from PIL import Image

    from loramcl.data.collate import IMAGE_PROMPT, ImageCaptionCollator
    from loramcl.tiny_base import tiny_llava_next
    from loramcl.tokenizer_builder import train_tokenizer

    captions = ["a red circle next to a blue square", "un cercle rouge à côté d'un carré bleu"]
    tok = train_tokenizer(captions * 5 + [IMAGE_PROMPT], "llava", vocab_size=300)
    base, processor = tiny_llava_next(tok)
    rng = np.random.default_rng(0)
    items = [{"id": i, "image": Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)), "captions": [c]}
             for i, c in enumerate(captions)]
    batch = ImageCaptionCollator(processor, references="first")(items)
    tensors = {k: v for k, v in batch.items() if torch.is_tensor(v)}
    model = MCLModel(base, MCLConfig(num_hypotheses=3), LoRAConfig(r=4, alpha=8, target_modules="all-linear"))
    randomise_adapters(model)
    assert model.target_names and all(n.startswith("model.language_model.") for n in model.target_names)
    rows = record_batches(base.model.vision_tower)
    model.eval()
    out = model(**tensors)
    crops = tensors["pixel_values"].shape[0] * tensors["pixel_values"].shape[1]
    assert rows == [crops]  # the anyres crops of the 2 images, once, whatever K
    for k in range(3):
        single = model(**tensors, hypothesis_idx=k)
        torch.testing.assert_close(out.logits[k], single.logits, atol=1e-5, rtol=1e-5)
    # only the caption and its EOS are scored
    scored = batch["labels"][0][batch["labels"][0] != -100]
    assert tok.decode(scored) == " " + captions[0] + tok.eos_token
