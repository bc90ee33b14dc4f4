"""Qwen2-Audio (HF ``Qwen2AudioForConditionalGeneration``): Whisper-style audio encoder with
average pooling -> linear projector -> Qwen2 LM; mmcore's model contract."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from mmcore.distributed.parallel_state import encoder_tp_disabled
from mmcore.layers.linear import ColumnParallelLinear
from mmcore.models.llama import LlamaForCausalLM
from mmcore.models.lm_delegate import DelegatesToLanguageModel
from mmcore.models.weights import load_named_weights
from mmcore.models.whisper_encoder import WhisperAudioEncoder, conv_output_len

# transformers 5 layouts -> module names; older checkpoints already use the right-hand one.
# First match wins. Some 5.x releases (5.17) save the LM as a whole causal LM under the model.
_PREFIX_RENAMES = (
    ("model.language_model.model.", "language_model.model."),
    ("model.language_model.lm_head.", "language_model.lm_head."),
    ("language_model.model.model.", "language_model.model."),
    ("language_model.model.lm_head.", "language_model.lm_head."),
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
    ("model.audio_tower.", "audio_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
)


class Qwen2AudioModel(DelegatesToLanguageModel, nn.Module):
    """Items for :meth:`encode`: the processor's ``{"input_features", "num_frames"}``.

    Tensor parallel: the audio tower is sharded by heads like the LM (or whole on every rank
    with ``mm_encoder_tp_mode="data"``); the projector, one small matrix, is replicated.
    """

    supported_modalities = ("audio",)
    supports_tensor_parallel = True  # audio tower and Qwen2 LM built from parallel layers

    def __init__(self, hf_config, *, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.config = hf_config
        audio = hf_config.audio_config
        self.audio_tower = WhisperAudioEncoder(
            audio,
            pool=True,
            dtype=dtype,
            device=device,
            tensor_parallel=True,
            disable_tp=encoder_tp_disabled(),
        )
        self.multi_modal_projector = nn.Module()
        self.multi_modal_projector.linear = ColumnParallelLinear(
            audio.d_model,
            hf_config.text_config.hidden_size,
            bias=True,
            dtype=dtype,
            device=device,
            disable_tp=True,  # replicated: its output must be whole, and it is small
        )
        self.language_model = LlamaForCausalLM(  # Qwen2 = Llama with q/k/v biases
            hf_config.text_config,
            dtype=dtype,
            device=device,
            tie_word_embeddings=getattr(hf_config, "tie_word_embeddings", None),
            qkv_bias=True,
        )
        self.adopt_language_model_sizes()
        self.device = torch.device(device)

    def _module_name(self, name: str) -> str | None:
        for old, new in _PREFIX_RENAMES:
            if name.startswith(old):
                name = new + name[len(old) :]
                break
        if name.endswith("rotary_emb.inv_freq"):
            return None
        if name == "language_model.lm_head.weight" and self.language_model.tie_word_embeddings:
            return None
        return name

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load HF-named tensors (either key layout); raises naming missing/unexpected ones."""
        load_named_weights(self, weights, self._module_name)

    def encode(self, modality: str, items: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        """Projected embeddings per clip; all clips of the step in one packed encoder call."""
        if modality not in self.supported_modalities:
            raise ValueError(f"{self.config.model_type} does not accept {modality} input")
        if not items:
            return []
        mels = [item["input_features"].to(self.device) for item in items]
        positions = [conv_output_len(int(item["num_frames"])) for item in items]
        states = self.audio_tower(mels, positions)
        return [self.multi_modal_projector.linear(s) for s in states]
