"""The parameter table: every setting CharLoRA knows, declared once, under Kohya's key names.

The GUI builds its controls from this table, the CLI's `--set` and the preset files use its keys,
the trainer reads the normalised values, and the LoRA file's metadata is written from them.
Keys of Kohya's GUI that do not apply here are still declared, as "ignored" (with the reason) or
"restricted" (only some values work; others are refused by name), so a Kohya config always loads
with an honest account of every key.
"""

from __future__ import annotations

from .spec import Param

_LYCORIS = "used by LyCORIS/LoCon network types only; no effect with LoRA_type Standard"
_BLOCKWISE = ("block-wise dims and alphas are not supported yet (block-wise learning rates are: "
              "down_lr_weight, mid_lr_weight, up_lr_weight); leave it empty")
_NOT_YET = "not implemented yet"
_PEFT_DROPOUT = "the peft LoRA layers CharLoRA trains have no such dropout; use network_dropout"

KOHYA_LORA_TYPES = (
    "Standard", "Kohya DyLoRA", "Kohya LoCon", "LoRA-FA", "LyCORIS/BOFT", "LyCORIS/Diag-OFT",
    "LyCORIS/DyLoRA", "LyCORIS/GLoRA", "LyCORIS/LoCon", "LyCORIS/LoHa", "LyCORIS/LoKr",
    "LyCORIS/Native Fine-Tuning",
)
SUPPORTED_OPTIMIZERS = ("AdamW", "AdamW8bit", "Lion", "Lion8bit", "SGDNesterov", "Adafactor", "Prodigy")
KOHYA_OPTIMIZERS = SUPPORTED_OPTIMIZERS + (
    "DAdaptation", "DAdaptAdaGrad", "DAdaptAdam", "DAdaptAdan", "DAdaptAdanIP", "DAdaptAdamPreprint",
    "DAdaptLion", "DAdaptSGD", "PagedAdamW8bit", "PagedAdamW32bit", "PagedLion8bit", "SGDNesterov8bit",
)
LR_SCHEDULERS = (
    "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial", "adafactor",
)
SAMPLERS = (
    "ddim", "pndm", "lms", "euler", "euler_a", "heun", "dpm_2", "dpm_2_a", "dpmsolver", "dpmsolver++",
    "dpmsingle", "k_lms", "k_euler", "k_euler_a", "k_dpm_2", "k_dpm_2_a",
)

PARAMS: tuple[Param, ...] = (
    # ---------------------------------------------------------------- source model
    Param("pretrained_model_name_or_path", "path", "", "source model", tier="basic",
          label="Base model (SD 1.5 or SDXL checkpoint or folder)", main=True, help="Base SD 1.5 or SDXL model: a .safetensors/.ckpt file, a diffusers folder, or a Hub id."),
    Param("v2", "bool", False, "source model", effect="restricted", allowed=(False,),
          reason="SD 2.x base models are not supported yet",
          help="Base model is Stable Diffusion 2.x."),
    Param("v_parameterization", "bool", False, "source model",
          help="Train with v-prediction targets (for v-prediction base models)."),
    Param("sdxl", "bool", False, "source model", tier="basic", label="SDXL model",
          help="The base model is SDXL (set from the model file when you choose it in the app; training "
               "names a mismatch)."),
    Param("model_list", "str", "custom", "source model", effect="ignored",
          reason="a GUI-only quick pick; pretrained_model_name_or_path is what counts",
          help="Kohya's quick-pick list of base models."),
    Param("sdxl_cache_text_encoder_outputs", "bool", False, "source model", sdxl_only=True,
          label="Cache text encoder outputs",
          help="SDXL: encode each caption once and take both text encoders off the GPU (~1.6 GB in fp16). "
               "Needs the text encoders frozen (text_encoder_lr 0) and fixed captions (no shuffle or dropout). "
               "Without it CharLoRA still caches whenever that is possible, but keeps them for samples."),
    Param("sdxl_no_half_vae", "bool", True, "source model", effect="ignored", sdxl_only=True,
          reason="CharLoRA always runs the VAE in fp32 (SDXL's VAE makes NaNs in fp16), as this setting on does",
          help="SDXL: keep the VAE in fp32."),
    # ---------------------------------------------------------------- folders
    Param("train_data_dir", "path", "", "folders", tier="basic",
          label="Image folder (parent of 10_trigger class)", main=True, help="Parent folder of concept folders named like '10_trigger class' (repeats_class tokens)."),
    Param("reg_data_dir", "path", "", "folders", tier="basic",
          label="Regularisation folder", help="Parent folder of regularisation concept folders (optional)."),
    Param("output_dir", "path", "", "folders", tier="basic",
          label="Output folder (LoRA files)", main=True, help="Where the LoRA files (one per saved epoch) are written."),
    Param("output_name", "str", "last", "folders", tier="basic", file_name=True,
          label="Model output name", main=True, help="File name of the LoRA: NAME-000001.safetensors per epoch, NAME.safetensors at the end. A plain name (no /, \\, : or ..)."),
    Param("logging_dir", "path", "", "folders", tier="basic",
          label="Logging folder (TensorBoard)", help="TensorBoard logs go here (optional)."),
    Param("training_comment", "str", "", "folders", tier="basic",
          label="Training comment", help="Free text stored in the LoRA file's metadata (ss_training_comment); at most 64 KiB is stored."),
    # ---------------------------------------------------------------- dataset
    Param("max_resolution", "resolution", "512,512", "dataset", tier="basic",
          label="Max resolution (width,height)", main=True, help="Training resolution 'width,height'; its area sets the bucket sizes."),
    Param("train_batch_size", "int", 1, "dataset", tier="basic", min=1, max=64, slider=True, step=1,
          label="Train batch size", help="Images per step. Batches are formed inside one bucket."),
    Param("enable_bucket", "bool", True, "dataset", tier="basic",
          label="Enable buckets", help="Sort images into aspect-ratio buckets instead of cropping all to one size."),
    Param("min_bucket_reso", "int", 256, "dataset", tier="basic", min=64, max=4096, step=64,
          label="Minimum bucket resolution", help="Smallest bucket side in pixels."),
    Param("max_bucket_reso", "int", 2048, "dataset", tier="basic", min=64, max=8192, step=64,
          label="Maximum bucket resolution", help="Largest bucket side in pixels."),
    Param("bucket_reso_steps", "int", 64, "dataset", min=8, max=256, step=8,
          help="Bucket sides are multiples of this many pixels."),
    Param("bucket_no_upscale", "bool", True, "dataset",
          help="Never enlarge an image smaller than the training area; its bucket is its own size."),
    Param("cache_latents", "bool", True, "dataset", tier="basic",
          label="Cache latents", help="Encode every image once with the VAE and keep the latents in memory (faster, less VRAM)."),
    Param("cache_latents_to_disk", "bool", False, "dataset", tier="basic",
          label="Cache latents to disk", help="Also keep the cached latents on disk for the next run."),
    Param("vae_batch_size", "int", 0, "dataset", min=0, max=64,
          help="Images per VAE call when caching latents (0 = 1)."),
    Param("flip_aug", "bool", False, "dataset",
          help="Randomly mirror images left-right (do not use for asymmetric characters)."),
    Param("color_aug", "bool", False, "dataset",
          help="Random hue shifts; prevents latent caching."),
    Param("random_crop", "bool", False, "dataset",
          help="Random crop instead of centre crop; prevents latent caching."),
    Param("max_data_loader_n_workers", "int", 0, "dataset", min=0, max=64, kohya_shape="str",
          help="Background processes that load images (0 = load in the training process)."),
    Param("persistent_data_loader_workers", "bool", False, "dataset",
          help="Keep data-loader workers alive between epochs."),
    # ---------------------------------------------------------------- captions
    Param("caption_extension", "str", ".txt", "captions", tier="basic",
          label="Caption file extension", help="Caption file of x.png is x + this. Empty means sd-scripts' default '.caption'."),
    Param("clip_skip", "int", 1, "captions", min=1, max=12, kohya_shape="str", slider=True, step=1,
          label="Clip skip", help="Use the text encoder's n-th last layer (1 = last; anime models often use 2)."),
    Param("max_token_length", "int", 75, "captions", choices=(75, 150, 225), kohya_shape="str",
          help="Longest caption in tokens, in 75-token chunks."),
    Param("shuffle_caption", "bool", False, "captions",
          label="Shuffle caption", help="Shuffle the comma-separated tags of each caption every step."),
    Param("keep_tokens", "int", 0, "captions", min=0, max=225, kohya_shape="str",
          label="Keep n tokens", help="Keep this many leading tags in place when shuffling (e.g. the trigger word)."),
    Param("caption_dropout_rate", "float", 0.0, "captions", min=0.0, max=1.0, step=0.01,
          help="Chance of training a step with an empty caption."),
    Param("caption_dropout_every_n_epochs", "int", 0, "captions", min=0, max=10000, kohya_shape="float",
          help="Drop all captions every n-th epoch (0 = never)."),
    Param("weighted_captions", "bool", False, "captions", effect="restricted", allowed=(False,),
          reason=_NOT_YET, help="Read (word:1.2) weights in captions."),
    Param("no_token_padding", "bool", False, "captions", effect="restricted", allowed=(False,),
          reason=_NOT_YET, help="Do not pad captions to the full token length."),
    # ---------------------------------------------------------------- network
    Param("LoRA_type", "choice", "Standard", "network", tier="basic", choices=KOHYA_LORA_TYPES,
          effect="restricted", allowed=("Standard",),
          reason="only Standard LoRA is supported; LyCORIS and other types are not",
          label="LoRA type", help="Kind of network. CharLoRA trains Standard LoRA (what A1111 and ComfyUI load natively)."),
    Param("network_dim", "int", 32, "network", tier="basic", min=1, max=1024, slider=True, step=1, ui_max=256,
          label="Network rank (dimension)", main=True, help="LoRA rank: capacity of the LoRA and size of the file."),
    Param("network_alpha", "float", 16.0, "network", tier="basic", min=0.0, max=1024.0, slider=True, step=0.5, ui_max=256,
          label="Network alpha", main=True, help="LoRA alpha: weights are scaled by alpha/dim (0 means alpha = dim, a scale of 1)."),
    Param("lora_network_weights", "path", "", "network", tier="basic",
          label="Start from LoRA weights (file)", help="Start from this existing LoRA file instead of from zero (optional)."),
    Param("dim_from_weights", "bool", False, "network", tier="basic",
          help="Take network_dim from lora_network_weights."),
    Param("network_dropout", "float", 0.0, "network", min=0.0, max=1.0, step=0.01,
          help="Dropout on the input of each LoRA module (peft's lora_dropout)."),
    Param("rank_dropout", "float", 0.0, "network", min=0.0, max=1.0, step=0.01, effect="restricted",
          allowed=(0.0,), reason=_PEFT_DROPOUT, help="Dropout of whole rank channels."),
    Param("module_dropout", "float", 0.0, "network", min=0.0, max=1.0, step=0.01, effect="restricted",
          allowed=(0.0,), reason=_PEFT_DROPOUT, help="Chance of skipping a whole LoRA module in a step."),
    Param("scale_weight_norms", "float", 0.0, "network", min=0.0, max=100.0,
          help="Max-norm regularisation, as sd-scripts': after each step every module's weight change is scaled "
               "back to at most this norm (1.0 is usual; 0 = off). Keeps a LoRA from overpowering the model."),
    Param("conv_dim", "int", 1, "network", min=0, max=1024, effect="ignored", reason=_LYCORIS,
          help="Rank of 3x3 convolution layers (LoCon)."),
    Param("conv_alpha", "float", 1.0, "network", min=0.0, max=1024.0, effect="ignored", reason=_LYCORIS,
          help="Alpha of 3x3 convolution layers (LoCon)."),
    Param("factor", "int", -1, "network", min=-1, max=1024, effect="ignored", reason=_LYCORIS,
          help="LoKr factor."),
    Param("decompose_both", "bool", False, "network", effect="ignored", reason=_LYCORIS,
          help="LoKr: decompose both matrices."),
    Param("use_cp", "bool", False, "network", effect="ignored", reason=_LYCORIS,
          help="LyCORIS: CP decomposition."),
    Param("train_on_input", "bool", True, "network", effect="ignored", reason=_LYCORIS,
          help="LyCORIS (IA)^3: train on input."),
    Param("unit", "int", 1, "network", min=1, max=1024, effect="ignored", reason=_LYCORIS,
          help="DyLoRA unit."),
    Param("block_dims", "str", "", "network", effect="restricted", allowed=("",), reason=_BLOCKWISE,
          help="Per-block ranks."),
    Param("block_alphas", "str", "", "network", effect="restricted", allowed=("",), reason=_BLOCKWISE,
          help="Per-block alphas."),
    Param("conv_block_dims", "str", "", "network", effect="restricted", allowed=("",), reason=_BLOCKWISE,
          help="Per-block conv ranks."),
    Param("conv_block_alphas", "str", "", "network", effect="restricted", allowed=("",), reason=_BLOCKWISE,
          help="Per-block conv alphas."),
    Param("down_lr_weight", "str", "", "network",
          help="The UNet lr's weight per down block, shallow to deep: 12 numbers, one per original input block "
               "0-11 (SDXL: 9, input blocks 0-8; block 0 is conv_in and has no LoRA), e.g. "
               "1,1,1,1,1,1,0.5,0.5,0.5,0,0,0, or a curve: cosine, sine, linear, reverse_linear, zeros (+base, "
               "e.g. cosine+.25). Empty: all 1. A block of weight 0 gets no LoRA."),
    Param("mid_lr_weight", "str", "", "network",
          help="The UNet lr's weight for the mid block (SDXL: 3 numbers for the middle block's parts). "
               "Empty: 1."),
    Param("up_lr_weight", "str", "", "network",
          help="The UNet lr's weight per up block, deep to shallow: 12 numbers (SDXL: 9 output blocks) or a "
               "curve, as down_lr_weight. Empty: all 1."),
    Param("block_lr_zero_threshold", "str", "", "network",
          help="Block lr weights at or below this become 0 (those blocks get no LoRA). Empty: 0."),
    # ---------------------------------------------------------------- optimizer
    Param("optimizer", "choice", "AdamW8bit", "optimizer", tier="basic", choices=KOHYA_OPTIMIZERS,
          effect="restricted", allowed=SUPPORTED_OPTIMIZERS,
          reason="this optimizer is not supported yet",
          label="Optimizer", main=True, help="Optimizer, by Kohya's name. AdamW8bit saves VRAM on NVIDIA GPUs."),
    Param("optimizer_args", "str", "", "optimizer", tier="basic",
          label="Optimizer extra arguments", help="Extra optimizer arguments as 'key=value key=value' (e.g. weight_decay=0.01)."),
    Param("learning_rate", "float", 1e-4, "optimizer", tier="basic", min=0.0, max=1.0, slider=True, step=1e-6, ui_max=0.002,
          label="Learning rate", help="Learning rate used where unet_lr or text_encoder_lr is not given."),
    Param("unet_lr", "float", 1e-4, "optimizer", tier="basic", min=0.0, max=1.0, slider=True, step=1e-6, ui_max=0.002,
          label="UNet learning rate", main=True, help="UNet learning rate. 0 with a text-encoder lr set trains the text encoder only."),
    Param("text_encoder_lr", "float", 5e-5, "optimizer", tier="basic", min=0.0, max=1.0, slider=True,
          step=1e-6, ui_max=0.002, label="Text encoder learning rate", main=True, help="Text-encoder learning rate. 0 with a UNet lr set trains the UNet only."),
    Param("stop_text_encoder_training", "int", 0, "optimizer", tier="basic", min=0, max=100,
          help="Stop training the text encoder after this percent of the steps (0 = never)."),
    Param("max_grad_norm", "float", 1.0, "optimizer", tier="basic", min=0.0, max=1000.0,
          label="Max grad norm", help="Clip gradients to this norm (0 = no clipping)."),
    Param("optimizer_fallback", "bool", False, "optimizer",
          help="CharLoRA: if an 8-bit optimizer cannot run here (no bitsandbytes/CUDA), train with its 32-bit "
               "twin instead of stopping (AdamW8bit -> AdamW, Lion8bit -> Lion; said in the log, never silent)."),
    # ---------------------------------------------------------------- schedule
    Param("epoch", "int", 10, "schedule", tier="basic", min=1, max=10000,
          label="Epochs", main=True, help="Number of epochs (each image seen 'repeats' times per epoch)."),
    Param("max_train_epochs", "int", None, "schedule", tier="basic", min=1, max=10000, optional=True,
          kohya_shape="str", label="Max train epochs (overrides Epochs)", help="Overrides epoch when set."),
    Param("max_train_steps", "int", None, "schedule", tier="basic", min=1, max=10_000_000, optional=True,
          kohya_shape="str", label="Max train steps", help="Stop after this many steps (empty = from epochs)."),
    Param("gradient_accumulation_steps", "int", 1, "schedule", min=1, max=1024, kohya_shape="str",
          label="Gradient accumulation steps", help="Add up gradients of this many batches before each optimizer step."),
    Param("lr_scheduler", "choice", "cosine", "schedule", tier="basic", choices=LR_SCHEDULERS,
          label="LR scheduler", help="How the learning rate changes over the run."),
    Param("lr_warmup", "int", 10, "schedule", tier="basic", min=0, max=100, kohya_shape="str",
          label="LR warmup (% of steps)", help="Warm-up length in PERCENT of the total steps."),
    Param("lr_warmup_steps", "int", 0, "schedule", tier="basic", min=0, max=10_000_000,
          label="LR warmup steps", help="Warm-up length in steps; overrides lr_warmup when above 0."),
    Param("lr_scheduler_num_cycles", "int", None, "schedule", tier="basic", min=1, max=1000, optional=True, unset=1,
          kohya_shape="str", help="Restarts for cosine_with_restarts (empty = 1)."),
    Param("lr_scheduler_power", "float", None, "schedule", tier="basic", min=0.0, max=100.0, optional=True,
          unset=1.0, kohya_shape="str", help="Power of the polynomial scheduler (empty = 1)."),
    Param("lr_scheduler_args", "str", "", "schedule", tier="basic",
          help="Extra scheduler arguments as 'key=value key=value'."),
    Param("seed", "int", None, "schedule", tier="basic", min=0, max=2**32 - 1, optional=True, kohya_shape="str",
          label="Seed", help="Random seed; the same seed gives the same run (empty = a random one, recorded in the file)."),
    # ---------------------------------------------------------------- precision & memory
    Param("mixed_precision", "choice", "fp16", "precision & memory", tier="basic", choices=("no", "fp16", "bf16"),
          label="Mixed precision", help="Compute precision on the GPU (fp16 for most cards, bf16 for RTX 30xx and newer). On a CPU fp16 runs as fp32; bf16 is an opt-in there, faster on CPUs with bf16 instructions."),
    Param("full_fp16", "bool", False, "precision & memory",
          help="Keep LoRA weights and gradients in fp16 too (less VRAM, less stable)."),
    Param("full_bf16", "bool", False, "precision & memory",
          help="Keep LoRA weights and gradients in bf16 too."),
    Param("gradient_checkpointing", "bool", False, "precision & memory",
          label="Gradient checkpointing", help="Recompute activations in the backward pass: much less VRAM, about 30% slower."),
    Param("xformers", "choice", "sdpa", "precision & memory", choices=("xformers", "sdpa", "none"),
          value_map=((True, "xformers"), (False, "none")),
          help="Attention kernel. 'sdpa' is PyTorch's own; 'xformers' falls back to it if xformers is missing."),
    Param("mem_eff_attn", "bool", False, "precision & memory", effect="ignored",
          reason="PyTorch's SDPA is already memory-efficient; set xformers instead",
          help="Kohya's memory-efficient attention."),
    Param("num_cpu_threads_per_process", "int", 2, "precision & memory", min=1, max=256,
          help="CPU threads per training process."),
    Param("dynamo_backend", "choice", "no", "precision & memory",
          choices=("no", "inductor", "eager", "aot_eager", "cudagraphs"),
          help="Opt-in torch.compile of the UNet (Kohya's dynamo_backend): faster steps on some GPUs after a "
               "slow first step; 'no' is the safe default."),
    Param("num_processes", "int", 1, "precision & memory", min=1, max=64,
          help="Training processes (one per GPU) for `accelerate launch`; used in the printed training command."),
    Param("gpu_ids", "str", "", "precision & memory",
          help="Which GPUs to use, e.g. '0,1' (empty = all); used in the printed training command."),
    # ---------------------------------------------------------------- noise & loss
    Param("prior_loss_weight", "float", 1.0, "noise & loss", min=0.0, max=100.0,
          label="Prior loss weight", help="Loss weight of regularisation images."),
    Param("min_snr_gamma", "float", 0.0, "noise & loss", min=0.0, max=100.0, step=1,
          label="Min SNR gamma", help="Min-SNR loss weighting gamma (5 is common; 0 = off)."),
    Param("noise_offset_type", "choice", "Original", "noise & loss", choices=("Original", "Multires"),
          help="Original: noise_offset; Multires: multi-resolution noise."),
    Param("noise_offset", "float", 0.0, "noise & loss", min=0.0, max=1.0, step=0.01,
          label="Noise offset", help="Offset noise strength (helps very dark/bright images; 0.05-0.1 typical)."),
    Param("adaptive_noise_scale", "float", 0.0, "noise & loss", min=-1.0, max=1.0, step=0.001,
          help="Add the latent mean's magnitude times this to noise_offset."),
    Param("multires_noise_iterations", "int", 0, "noise & loss", min=0, max=64,
          help="Multires noise: number of scales (6-10 typical; 0 = off)."),
    Param("multires_noise_discount", "float", 0.0, "noise & loss", min=0.0, max=1.0, step=0.01,
          help="Multires noise: weight falloff per scale (0.3 typical)."),
    Param("min_timestep", "int", 0, "noise & loss", min=0, max=999,
          help="Lowest diffusion timestep trained."),
    Param("max_timestep", "int", 1000, "noise & loss", min=1, max=1000,
          help="Highest diffusion timestep trained (exclusive)."),
    Param("scale_v_pred_loss_like_noise_pred", "bool", False, "noise & loss", effect="restricted",
          allowed=(False,), reason=_NOT_YET, help="Scale v-prediction loss like noise prediction."),
    Param("v_pred_like_loss", "float", 0.0, "noise & loss", min=0.0, max=10.0, effect="restricted",
          allowed=(0.0,), reason=_NOT_YET, help="Add a v-prediction-like loss."),
    # ---------------------------------------------------------------- saving
    Param("save_model_as", "choice", "safetensors", "saving", tier="basic",
          choices=("safetensors", "ckpt", "pt", "diffusers", "diffusers_safetensors"),
          effect="restricted", allowed=("safetensors",),
          reason="CharLoRA writes LoRA files as .safetensors (safe to load, what A1111 and ComfyUI expect)",
          label="Save trained model as", help="File format of the LoRA."),
    Param("save_precision", "choice", "fp16", "saving", tier="basic", choices=("float", "fp16", "bf16"),
          label="Save precision", help="Precision of the saved LoRA weights."),
    Param("save_every_n_epochs", "int", 1, "saving", tier="basic", min=0, max=10000,
          label="Save every N epochs", help="Save a LoRA file every n epochs (0 = only at the end)."),
    Param("save_every_n_steps", "int", 0, "saving", min=0, max=10_000_000,
          label="Save every N steps", help="Save a LoRA file every n steps (0 = off)."),
    Param("save_last_n_epochs", "int", 0, "saving", min=0, max=10000,
          help="Keep only the last n epoch files (0 = keep all)."),
    Param("save_last_n_steps", "int", 0, "saving", min=0, max=10_000_000,
          help="Keep only step files of the last n steps (0 = keep all)."),
    Param("save_state", "bool", False, "saving",
          label="Save training state", help="Also save optimizer/scheduler/RNG state with each file, so the run can be resumed."),
    Param("save_last_n_steps_state", "int", 0, "saving", min=0, max=10_000_000,
          help="Keep only training states of the last n steps (0 = keep all)."),
    Param("resume", "path", "", "saving",
          label="Resume from saved training state", help="Resume from this saved training-state folder (optional)."),
    # ---------------------------------------------------------------- samples
    Param("sample_every_n_epochs", "int", 0, "samples", tier="samples", min=0, max=10000,
          label="Sample every N epochs", help="Generate sample images every n epochs (0 = off)."),
    Param("sample_every_n_steps", "int", 0, "samples", tier="samples", min=0, max=10_000_000,
          label="Sample every N steps", help="Generate sample images every n steps (0 = off)."),
    Param("sample_sampler", "choice", "euler_a", "samples", tier="samples", choices=SAMPLERS,
          label="Sample sampler", help="Sampler for sample images, by Kohya's name."),
    Param("sample_prompts", "text", "", "samples", tier="samples",
          label="Sample prompts", help="One prompt per line; options --n negative, --w width, --h height, --s steps, --l CFG, --d seed."),
    # ---------------------------------------------------------------- logging
    Param("use_wandb", "bool", False, "logging", effect="restricted", allowed=(False,),
          reason="Weights & Biases logging is not supported; CharLoRA logs to TensorBoard (logging_dir)",
          help="Log to Weights & Biases."),
    Param("wandb_api_key", "str", "", "logging", effect="ignored", secret=True,
          reason="wandb is not supported; the key is never stored",
          help="Weights & Biases API key."),
    Param("huggingface_token", "str", "", "logging", effect="ignored", secret=True,
          reason="CharLoRA never uploads; the token is never stored",
          help="Hugging Face token."),
    Param("additional_parameters", "str", "", "logging", effect="restricted", allowed=("",),
          reason="raw sd-scripts arguments cannot be applied; set each as its own key",
          help="Extra sd-scripts command-line arguments."),
)

PARAMS_BY_KEY: dict[str, Param] = {p.key: p for p in PARAMS}


def defaults() -> dict:
    """Every parameter at its documented default."""
    return {p.key: p.default for p in PARAMS}


def effective(values: dict, key: str):
    """A normalised value, or for an optional parameter that is not set the value that applies (`unset`)."""
    value = values[key]
    return PARAMS_BY_KEY[key].unset if value is None else value


def params_in_group(group: str) -> list[Param]:
    return [p for p in PARAMS if p.group == group]
