"""Captions to text-encoder conditioning, as sd-scripts does for SD 1.x and SDXL.

Sources in sd-scripts: `BaseDataset.get_input_ids` and `get_hidden_states` (library/train_util.py).

Captions longer than 75 tokens (`max_token_length` 150 or 225) are cut into 75-token chunks; each
chunk gets its own BOS and EOS and goes through CLIP on its own (CLIP has 77 positions). The chunk
outputs are then joined back into one sequence of max_token_length + 2 states: the first BOS,
the 75 inner states of every chunk, and the very last state.

`clip_skip` n takes the n-th last hidden state and applies CLIP's final layer norm to it; 1 (or
None) is the normal last layer.
"""

from __future__ import annotations

import torch

from ..errors import CharLoRAError
from ..models import SDXL, family_of

CHUNK = 75  # tokens CLIP reads at once (77 positions minus BOS and EOS): a model fact, not a setting


def _check_max_token_length(max_token_length) -> int:
    if max_token_length is None:
        return CHUNK
    if not isinstance(max_token_length, int) or max_token_length < CHUNK or max_token_length % CHUNK != 0:
        raise CharLoRAError(
            f"max_token_length {max_token_length!r} is not supported; use 75, 150 or 225 (75-token chunks)"
        )
    return max_token_length


def tokenize(tokenizer, captions, max_token_length=CHUNK) -> torch.LongTensor:
    """Token ids of `captions` (a string or a list), shaped (batch, chunks, 77)."""
    max_token_length = _check_max_token_length(max_token_length)
    if isinstance(captions, str):
        captions = [captions]
    model_max_length = tokenizer.model_max_length  # 77 for SD 1.x
    inner = model_max_length - 2  # tokens per chunk between BOS and EOS
    max_length = max_token_length + 2
    ids = tokenizer(
        list(captions), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
    ).input_ids  # (batch, max_length): BOS, caption, EOS, padding

    if max_length <= model_max_length:
        return ids.unsqueeze(1)

    chunks = []
    for i in range(1, max_length - model_max_length + 2, inner):
        chunk = torch.cat([ids[:, 0:1], ids[:, i : i + inner], ids[:, -1:]], dim=1)
        if tokenizer.pad_token_id != tokenizer.eos_token_id:
            # SD 2.x-style tokenizers pad with another token: sd-scripts makes each chunk end with EOS
            # where it ends in text, and turns an all-padding chunk into BOS, EOS, PAD...
            chunk = chunk.clone()
            for row in chunk:
                if row[-2] != tokenizer.eos_token_id and row[-2] != tokenizer.pad_token_id:
                    row[-1] = tokenizer.eos_token_id
                if row[1] == tokenizer.pad_token_id:
                    row[1] = tokenizer.eos_token_id
        chunks.append(chunk)
    return torch.stack(chunks, dim=1)


def final_layer_norm(text_encoder):
    """CLIP's final layer norm; transformers >= 5.6 builds CLIPTextModel without the `text_model` level."""
    return getattr(text_encoder, "text_model", text_encoder).final_layer_norm


def encode(text_encoder, input_ids, clip_skip=None, max_token_length=CHUNK) -> torch.Tensor:
    """Conditioning of shape (batch, max_token_length + 2, hidden) from ids shaped (batch, chunks, 77)."""
    max_token_length = _check_max_token_length(max_token_length)
    batch_size = input_ids.shape[0]
    chunk_length = input_ids.shape[-1]
    device = next(text_encoder.parameters()).device
    ids = input_ids.reshape(-1, chunk_length).to(device)  # (batch * chunks, 77)

    if clip_skip is None or clip_skip <= 1:
        hidden = text_encoder(ids)[0]
    else:
        out = text_encoder(ids, output_hidden_states=True, return_dict=True)
        if clip_skip > len(out.hidden_states):
            raise CharLoRAError(
                f"clip_skip {clip_skip} is more than this text encoder has layers "
                f"({len(out.hidden_states) - 1}); use a smaller clip_skip (1 = last layer, 2 = the one before)"
            )
        hidden = final_layer_norm(text_encoder)(out.hidden_states[-clip_skip])

    hidden = hidden.reshape(batch_size, -1, hidden.shape[-1])  # (batch, chunks * 77, hidden)
    return _join_chunks(hidden, max_token_length, chunk_length)


def _join_chunks(hidden, max_token_length, chunk_length):
    """(batch, chunks * 77, width) -> (batch, max_token_length + 2, width): the first BOS, each chunk's 75
    inner states, the very last state (an EOS)."""
    if max_token_length <= chunk_length - 2:
        return hidden
    states = [hidden[:, 0:1]]
    for i in range(1, max_token_length, chunk_length):
        states.append(hidden[:, i : i + chunk_length - 2])
    states.append(hidden[:, -1:])
    return torch.cat(states, dim=1)


def encode_sdxl(text_encoder, text_encoder_2, input_ids, input_ids_2, eos_token_id, max_token_length=CHUNK
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL's conditioning, as sd-scripts' SdxlTextEncodingStrategy: (hidden states (batch,
    max_token_length + 2, width 1 + width 2), pooled (batch, projection)).

    Each encoder's penultimate layer without the final layer norm (clip_skip does not apply to SDXL), the
    two joined along the width (CLIP-L first); the pooled output is text encoder 2's normed last state at
    the first EOS of the first chunk, through its text projection (sd-scripts' "pool workaround": CLIP's
    own pooling takes the highest token id, which is not the EOS once chunks or new tokens are involved).
    `eos_token_id`: tokenizer_2's (SDXL's text_encoder_2 config says 2, which is not CLIP's EOS)."""
    max_token_length = _check_max_token_length(max_token_length)
    batch_size, chunks, chunk_length = input_ids_2.shape

    def penultimate(encoder, ids):
        device = next(encoder.parameters()).device
        out = encoder(ids.reshape(-1, chunk_length).to(device), output_hidden_states=True, return_dict=True)
        return out, _join_chunks(out.hidden_states[-2].reshape(batch_size, -1, out.hidden_states[-2].shape[-1]),
                                 max_token_length, chunk_length)

    _, hidden_1 = penultimate(text_encoder, input_ids)
    out_2, hidden_2 = penultimate(text_encoder_2, input_ids_2)
    ids_2 = input_ids_2.reshape(-1, chunk_length).to(out_2.last_hidden_state.device)
    eos = torch.argmax((ids_2 == eos_token_id).int(), dim=1)
    pooled = out_2.last_hidden_state[torch.arange(ids_2.shape[0], device=ids_2.device), eos]
    pooled = text_encoder_2.text_projection(pooled.to(text_encoder_2.text_projection.weight.dtype))
    pooled = pooled.reshape(batch_size, chunks, -1)[:, 0]  # the first chunk's, as sd-scripts
    return torch.cat([hidden_1, hidden_2.to(hidden_1.dtype)], dim=2), pooled


def encode_captions(pipe, captions: list, values: dict, device):
    """(hidden states, pooled output or None): SD 1.5's one text encoder (with clip_skip), or SDXL's two."""
    max_tokens = values["max_token_length"]
    if family_of(pipe) is SDXL:
        ids = tokenize(pipe.tokenizer, captions, max_tokens).to(device)
        ids_2 = tokenize(pipe.tokenizer_2, captions, max_tokens).to(device)
        return encode_sdxl(pipe.text_encoder, pipe.text_encoder_2, ids, ids_2, pipe.tokenizer_2.eos_token_id,
                           max_tokens)
    ids = tokenize(pipe.tokenizer, captions, max_tokens).to(device)
    return encode(pipe.text_encoder, ids, values["clip_skip"], max_tokens), None
