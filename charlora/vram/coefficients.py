"""Every calibrated number of the VRAM estimate in one place: what autograd keeps per activation element,
the CUDA context, the caching allocator's slack, bitsandbytes' 8-bit state layout. The docstring of
`charlora/vram_estimate.py` says how they were counted and which still need a GPU to calibrate."""

from .model_sizes import MIB

# ---------------------------------------------------------------- activation coefficients
# "Saves" count tensors kept for backward, per element of the unit's activation (channels x tokens).
# A norm save is fp32 even under autocast (CUDA autocast runs GroupNorm/LayerNorm in fp32, and the
# SiLU after a GroupNorm sees its fp32 output); a compute save is in the compute dtype (fp16/bf16
# under mixed precision, else fp32).
RESNET_NORM_SAVES = 2  # per element of the input and of the output: GroupNorm input, SiLU input
RESNET_COMPUTE_SAVES = 1  # per element of the input and of the output: the 3x3 conv's input
RESNET_SHORTCUT_SAVES = 1  # mixed precision, channels change: the 1x1 shortcut keeps the fp16 input too
TRANSFORMER_NORM_SAVES = 4  # GroupNorm and 3 LayerNorm inputs
# proj_in/proj_out inputs 2, LayerNorm outputs 3, attention q, k, v, out 4 + q, out 2, to_out inputs 2,
# GEGLU projection 8 + GELU output 4 + ff out input 4:
TRANSFORMER_COMPUTE_SAVES = 29
TRANSFORMER_CAST_COPIES = 4  # mixed precision: peft casts each LoRA layer's input, autocast casts it back
PLAIN_ATTENTION_FEWER_SAVES = 2  # plain attention keeps the probabilities instead of the two outputs
TRANSFORMER_LORA_SAVES = 10  # lora_A outputs (rank values per token) of the 10 targets on image tokens
# Per context token (77 per caption chunk): keys and values (2 x channels), the k/v LoRA outputs
# (2 x rank), and under mixed precision peft's copies of the caption states for to_k/to_v (2 x 768).
CONTEXT_SAVES_PER_CHANNEL = 2
# With gradient checkpointing (diffusers checkpoints each resnet and each BasicTransformerBlock):
# a resnet keeps its input; a transformer keeps GroupNorm's input, proj_in's and proj_out's inputs
# (and peft's copies of them under mixed precision) and the checkpointed block's input.
CKPT_TRANSFORMER_COMPUTE_SAVES = 3
CKPT_TRANSFORMER_CAST_COPIES = 2
# Backward working memory on top of what is kept: gradients of the largest unit's activations
# (a guess, not measured: calibrate on a GPU).
BACKWARD_TRANSIENT_SAVES = 16  # compute-dtype elements per level-0 activation element
# Text encoder (trained): per token and layer, in units of the hidden size: 2 LayerNorm inputs
# (fp32), and q/k/v copies 3, attention q, k, v, out 4, out_proj and fc1 input copies 2 (compute);
# plus 3 x intermediate for quick-GELU and fc2's input, and 6 x rank for the LoRA outputs.
TE_NORM_SAVES = 2
TE_COMPUTE_SAVES = 9
TE_INTERMEDIATE_SAVES = 3
TE_LORA_SAVES = 6
# Encoding images with the VAE every step (latents not cached) is a no-grad pass in fp32 before the
# UNet runs; its peak is ~4 live 128-channel fp32 maps at full resolution (a guess: calibrate).
VAE_ENCODE_BYTES_PER_PIXEL = 4 * 128 * 4

# ---------------------------------------------------------------- beyond the tensors (typical values: calibrate)
CUDA_CONTEXT_BYTES = 500 * MIB  # CUDA 12 context + PyTorch kernels + cuBLAS/cuDNN workspaces (typ. 400-600 MB)
ALLOCATOR_OVERHEAD_FRACTION = 0.10  # caching-allocator fragmentation: reserved beyond allocated, of the rest

# ---------------------------------------------------------------- optimizers (by Kohya name)
BNB_MIN_8BIT_SIZE = 4096  # bitsandbytes keeps 32-bit state for tensors with fewer elements
BNB_BLOCK_SIZE = 256  # bitsandbytes 0.50 blockwise 8-bit state: one fp32 absmax per 256 values
BNB_QMAP_BYTES = 256 * 4  # one fp32 quantisation map per state, shared by all tensors
