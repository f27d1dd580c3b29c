"""Captions to text-encoder conditioning, as sd-scripts does for SD 1.x.

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

    if max_token_length > chunk_length - 2:
        # Join the chunks: first BOS, each chunk's 75 inner states, the very last state (an EOS).
        states = [hidden[:, 0:1]]
        for i in range(1, max_token_length, chunk_length):
            states.append(hidden[:, i : i + chunk_length - 2])
        states.append(hidden[:, -1:])
        hidden = torch.cat(states, dim=1)
    return hidden
