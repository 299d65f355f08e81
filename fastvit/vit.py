"""FastViT: the Vision Transformer of the seeds and of timm's ViT families, with timm's parameter
names, on any backend."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from . import ops as _ops
from . import packed, reference
from .backend import check_backend, resolve_backend
from .eva import EvaBlock, check_eva_options
from .layers import Block, LayerNorm, LayerScale, PatchEmbed, Pending, pair, probe_attention, set_backend
from .pooling import AttentionPoolLatent, pool_tokens
from .pos_embed import resample_pos_embed
from .rope import RotaryTables, as_rope_config
from .model_checks import ACT_LAYERS, activation_approximate as _activation  # noqa: F401  (ACT_LAYERS re-exported)
from .model_checks import check_config as _check_config, check_divisible as _check_divisible
from .variants import VariantConfig, count_params, list_models, model_config  # noqa: F401  (re-exported)

LN_EPS = 1e-6  # timm's and torchvision's ViT LayerNorm eps


class FastViT(nn.Module):
    """A ViT with timm's options and parameter names (``load_state_dict`` of a timm
    ``VisionTransformer`` of the same options works with ``strict=True``).

    Options beyond the original ViT, as timm names them: ``class_token`` (False: no CLS),
    ``reg_tokens`` (register tokens), ``no_embed_class`` (position embeddings on the patches
    only), ``dist_token`` (DeiT's distillation token and ``head_dist``), ``pre_norm`` (LayerNorm
    before the blocks, CLIP; the patch convolution then has no bias, as in timm), ``init_values``
    (layer scale), ``qk_norm``, ``proj_bias``, ``global_pool`` in "token", "avg", "map" (attention
    pooling, SigLIP) and "" (no pooling), ``fc_norm`` (None: timm's default, a norm after pooling
    for "avg"), ``act_layer`` in "gelu", "gelu_tanh", "quick_gelu" (or ``gelu_approximate`` in
    "none", "tanh", "quick"), ``norm_eps``. ``dynamic_img_size`` (default True, unlike timm): any
    input size divisible by the patch works, position embeddings resampled on the fly as timm's
    ``dynamic_img_size=True`` does; False refuses inputs of another size than ``img_size``, as
    timm's fixed-size models do (``set_img_size`` changes it).

    timm's ``Eva`` options (EVA-02, DINOv3, vit_*_rope_*; ``fastvit.eva``): ``rope`` (rotary
    position embeddings: "eva02", "dinov3", a ``fastvit.rope.RopeConfig`` or a dict of its
    fields; tables computed for each input's patch grid and cached), ``mlp_layer`` in "mlp",
    "swiglu" (fc1_g, fc1_x), "swiglu_packed" (one fc1), ``scale_mlp`` (a LayerNorm inside the
    MLP), ``qkv_fused`` (False: q_proj, k_proj, v_proj), ``pos_embed`` ("learn" or "none"). With
    any of the first four, the blocks are timm's ``EvaBlock`` with its names (``gamma_1``,
    ``gamma_2``, ``attn.q_bias``, ``attn.v_bias``): ``load_state_dict`` of the timm ``Eva`` works.
    """

    def __init__(self, img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=768, depth=12,
                 num_heads=12, mlp_ratio=4.0, qkv_bias=True, drop_rate=0.0, attn_drop_rate=0.0,
                 proj_drop_rate=0.0, drop_path_rate=0.0, global_pool="token", gelu_approximate=None,
                 backend="auto", *, qk_norm=False, proj_bias=True, init_values=None, class_token=True,
                 reg_tokens=0, no_embed_class=False, dist_token=False, pre_norm=False, fc_norm=None,
                 act_layer=None, norm_eps=LN_EPS, rope=None, mlp_layer="mlp", scale_mlp=False, qkv_fused=True,
                 pos_embed="learn", dynamic_img_size=True):
        super().__init__()
        rope = as_rope_config(rope)
        eva = check_eva_options(rope, mlp_layer, scale_mlp, qkv_fused, pos_embed, qk_norm, proj_bias,
                                 embed_dim // num_heads)
        approximate = _activation(act_layer, gelu_approximate)
        _check_config(img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
                      embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                      global_pool=global_pool, reg_tokens=reg_tokens, class_token=class_token,
                      dist_token=dist_token, norm_eps=norm_eps,
                      rates=dict(drop_rate=drop_rate, attn_drop_rate=attn_drop_rate,
                                 proj_drop_rate=proj_drop_rate, drop_path_rate=drop_path_rate))
        self.backend = check_backend(backend)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.embed_dim = self.num_features = embed_dim
        self.num_heads = num_heads
        self.gelu_approximate = approximate
        self.no_embed_class = bool(no_embed_class)
        self.num_reg_tokens = int(reg_tokens)
        self.num_prefix_tokens = int(class_token) + int(dist_token) + self.num_reg_tokens
        self.distilled_training = False
        self.dynamic_img_size = bool(dynamic_img_size)
        self.grad_checkpointing = False

        # Built on the meta device, then given storage and initialised once by init_weights:
        # PyTorch's default initialisation of every Linear would only be overwritten.
        target = torch.get_default_device()
        with torch.device("meta"):
            self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, bias=not pre_norm)
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
            self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if dist_token else None
            self.reg_token = nn.Parameter(torch.zeros(1, reg_tokens, embed_dim)) if reg_tokens else None
            embedded = 0 if no_embed_class else self.num_prefix_tokens
            self.pos_embed = (nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + embedded, embed_dim))
                              if pos_embed == "learn" else None)
            self.pos_drop = nn.Dropout(drop_rate)
            self.norm_pre = LayerNorm(embed_dim, eps=norm_eps, backend=backend) if pre_norm else nn.Identity()
            # stochastic depth grows linearly with depth, 0 for the first block
            dpr = [drop_path_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
            self.rope = RotaryTables(rope, embed_dim // num_heads) if rope is not None else None
            self.blocks = nn.ModuleList([
                EvaBlock(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, qkv_fused=qkv_fused, mlp_layer=mlp_layer,
                         scale_mlp=scale_mlp, num_prefix_tokens=self.num_prefix_tokens,
                         rope_pairing=rope.pairing if rope is not None else "interleaved", proj_drop=proj_drop_rate,
                         attn_drop=attn_drop_rate, drop_path=dpr[i], init_values=init_values,
                         gelu_approximate=approximate, eps=norm_eps, backend=backend)
                for i in range(depth)
            ] if eva else [
                Block(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, qk_norm=qk_norm, proj_bias=proj_bias,
                      proj_drop=proj_drop_rate, attn_drop=attn_drop_rate, init_values=init_values, drop_path=dpr[i],
                      gelu_approximate=approximate, eps=norm_eps, backend=backend)
                for i in range(depth)
            ])
            # timm's placement of the final norm: after pooling (fc_norm) for average pooling by default
            use_fc_norm = global_pool == "avg" if fc_norm is None else bool(fc_norm)
            self.norm = nn.Identity() if use_fc_norm else LayerNorm(embed_dim, eps=norm_eps, backend=backend)
            self.attn_pool = (AttentionPoolLatent(embed_dim, num_heads, mlp_ratio, norm_eps=norm_eps,
                                                  gelu_approximate=approximate, backend=backend)
                              if global_pool == "map" else None)
            self.fc_norm = LayerNorm(embed_dim, eps=norm_eps, backend=backend) if use_fc_norm else nn.Identity()
            self.head_drop = nn.Dropout(drop_rate)
            self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
            if dist_token:
                self.head_dist = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if target.type != "meta":
            self.to_empty(device=target)
            self.init_weights()

    # -- initialisation ------------------------------------------------------------------------
    def init_weights(self) -> None:
        """Truncated normal (std 0.02, cut at 2 std) for Linear weights, prefix tokens and position
        embeddings; zero biases; LayerNorm ones and zeros; Kaiming normal for the patch conv.
        Layer scales get their ``init_values``. Every parameter is set here (the modules are
        built without storage)."""
        for p in (self.cls_token, self.dist_token, self.reg_token, self.pos_embed):
            if p is not None:
                _trunc_normal_(p)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                _trunc_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (AttentionPoolLatent, LayerScale, EvaBlock)):
                m.init_weights()

    # -- configuration -------------------------------------------------------------------------
    @property
    def patch_size(self) -> tuple[int, int]:
        return self.patch_embed.patch_size

    @property
    def img_size(self) -> tuple[int, int]:
        return self.patch_embed.img_size

    def set_backend(self, backend: str) -> "FastViT":
        """Set the backend of the model and of every submodule."""
        return set_backend(self, backend)

    def set_grad_checkpointing(self, enable: bool = True) -> "FastViT":
        """Recompute each block in the backward instead of keeping its activations (timm's name)."""
        self.grad_checkpointing = bool(enable)
        return self

    def set_img_size(self, img_size) -> "FastViT":
        """Resample the position embeddings for good to a new native image size."""
        img_size = pair(img_size)
        _check_divisible(img_size, self.patch_size, "img_size")
        new_grid = (img_size[0] // self.patch_size[0], img_size[1] // self.patch_size[1])
        if self.pos_embed is not None:
            with torch.no_grad():
                pos = resample_pos_embed(self.pos_embed.data, new_grid, self.patch_embed.grid_size,
                                         self._embedded_prefix())
            self.pos_embed = nn.Parameter(pos)
        self.patch_embed.img_size = img_size
        self.patch_embed.grid_size = new_grid
        self.patch_embed.num_patches = new_grid[0] * new_grid[1]
        return self

    # -- forward -------------------------------------------------------------------------------
    def check_input(self, x) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor image batch, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"x must be a 4-D image batch (B, C, H, W), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"x must have a floating dtype, got {x.dtype}")
        in_chans = self.patch_embed.proj.in_channels
        if x.shape[1] != in_chans:
            raise ValueError(f"x must have {in_chans} channels (dim 1), got {x.shape[1]} (shape {tuple(x.shape)})")
        _check_divisible(tuple(x.shape[-2:]), self.patch_size, "x's height and width")
        if not self.dynamic_img_size and tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(f"x's height and width {tuple(x.shape[-2:])} must be the model's img_size {self.img_size} "
                             f"(dynamic_img_size=False); build with dynamic_img_size=True or call set_img_size")

    def _embedded_prefix(self) -> int:
        """How many prefix tokens the position embedding covers (timm's ``no_embed_class``)."""
        return 0 if self.no_embed_class else self.num_prefix_tokens

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        grid = (x.shape[-2] // self.patch_size[0], x.shape[-1] // self.patch_size[1])
        x = self.patch_embed(x)
        prefix = [t.expand(x.shape[0], -1, -1) for t in (self.cls_token, self.dist_token, self.reg_token)
                  if t is not None]
        if self.pos_embed is None:  # rotary position embeddings only (DINOv3, vit_*_rope_*)
            return self.pos_drop(torch.cat(prefix + [x], dim=1) if prefix else x)
        pos = resample_pos_embed(self.pos_embed, grid, self.patch_embed.grid_size, self._embedded_prefix())
        if self.no_embed_class:  # DeiT-III, DINOv2 with registers: embed the patches, then prepend
            x = torch.cat(prefix + [x + pos], dim=1) if prefix else x + pos
        else:  # the original ViT: prepend, then embed every token
            x = (torch.cat(prefix + [x], dim=1) if prefix else x) + pos
        return self.pos_drop(x)

    def token_layout(self) -> dict[str, slice]:
        """Which token positions hold what: ``cls``, ``dist``, ``reg`` (where present) and
        ``patches`` (row by row), as slices of the token dimension."""
        layout, i = {}, 0
        for name, n in (("cls", int(self.cls_token is not None)), ("dist", int(self.dist_token is not None)),
                        ("reg", self.num_reg_tokens)):
            if n:
                layout[name] = slice(i, i + n)
                i += n
        layout["patches"] = slice(i, None)
        return layout

    def forward_features(self, x):
        """Image batch (B, C, H, W) -> normalised tokens (B, prefix + H/P * W/P, D).

        A list of (C, H_i, W_i) images of any sizes -> ``(tokens (T, D), cu_seqlens (n + 1,))``:
        every image's tokens packed without padding, image i at ``tokens[cu[i]:cu[i+1]]``."""
        if isinstance(x, (list, tuple)):
            tokens, packing = self._forward_packed(x)
            return tokens[0], packing.cu_seqlens
        if isinstance(x, dict):  # a NaFlex batch (timm's NaFlex collator): fastvit/naflex.py
            from . import naflex
            return naflex.forward_features(self, x)
        self.check_input(x)
        return self._blocks(self._embed(x), rope=self._rope_tables(x))

    def _rope_tables(self, x: torch.Tensor):
        """The rotary (cos, sin) of the image batch's patch grid, or None without rope."""
        if self.rope is None:
            return None
        return self.rope((x.shape[-2] // self.patch_size[0], x.shape[-1] // self.patch_size[1]), x.device)

    def _blocks(self, x: torch.Tensor, packing=None, rope=None) -> torch.Tensor:
        # Every residual add rides in the LayerNorm after it (Block's docstring); the embedding
        # gets no local name in the caller, so the first block's output replaces it in memory.
        x, pending = self.norm_pre(x), None
        for blk in self.blocks:
            x, pending = self._run(blk, x, pending, packing, rope)
        if isinstance(self.norm, LayerNorm):
            return self.norm.forward_add(x, pending.branch, pending.scale)[1]
        return pending.add_to(x)

    def _forward_packed(self, images):
        images = packed.check_images(self, images)
        x, packing = packed.embed_images(self, images)
        rope = None if self.rope is None else packed.rope_tables(self, images)
        return self._blocks(x, packing, rope), packing

    def _run(self, blk: Block, x: torch.Tensor, pending: Pending | None, packing=None, rope=None):
        args = (x, pending, packing) if rope is None else (x, pending, packing, rope)  # rope: EvaBlock
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(blk, *args, use_reentrant=False)
        return blk(*args)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False):
        """Tokens -> pooled features (``pre_logits``) or logits, as timm's ``forward_head``.

        With a distillation token: the mean of both heads, or both logits as a pair in training
        after ``set_distilled_training()`` (timm's behaviour)."""
        if self.dist_token is not None:
            cls, dist = x[:, 0], x[:, 1]
            if pre_logits:
                return (cls + dist) / 2
            cls, dist = self.head(cls), self.head_dist(dist)  # timm: no head dropout here
            if self.distilled_training and self.training:
                return cls, dist
            return (cls + dist) / 2
        x = pool_tokens(x, self.global_pool, self.num_prefix_tokens, self.attn_pool)
        x = self.head_drop(self.fc_norm(x))
        return x if pre_logits else self.head(x)

    def set_distilled_training(self, enable: bool = True) -> "FastViT":
        """DeiT: in training, return the class and distillation logits apart (timm's name)."""
        self.distilled_training = bool(enable)
        return self

    def forward(self, x):
        """Logits (B, num_classes) of an image batch (B, C, H, W), or (len(x), num_classes) of a
        list of (C, H_i, W_i) images of different sizes (packed: no padding, see fastvit.packed)."""
        if isinstance(x, (list, tuple)):
            tokens, packing = self._forward_packed(x)
            return packed.forward_head_packed(self, tokens[0], packing)
        if isinstance(x, dict):  # a NaFlex batch: each image's valid patches packed (fastvit/naflex.py)
            from . import naflex
            return naflex.forward(self, x)
        return self.forward_head(self.forward_features(x))

    # -- attention maps ------------------------------------------------------------------------
    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The attention row of the model's query token for every layer and head, fp32.

        With a class token: the CLS row of every block, (depth, B, heads, N) over all N tokens
        (``token_layout()`` says which columns are the CLS, distillation and register tokens and
        which the patches, row by row). With attention pooling (``global_pool="map"``): the
        learned query's row, (1, B, heads, N_patches). Each row sums to 1.

        Rebuilt from each attention call's logsumexp (``ops.cls_attention``), so on the
        ``triton`` backend no N x N matrix ever exists. Eval semantics (no dropout) and no
        gradients, whatever the model's mode, which is kept. Render with ``fastvit.viz.overlay``.
        """
        if self.attn_pool is not None:
            modules = [self.attn_pool]
        elif self.cls_token is not None:
            modules = [blk.attn for blk in self.blocks]
        else:
            raise ValueError("attention_maps needs a query token: this model has no class token and no attention "
                             f"pooling (global_pool={self.global_pool!r}); attention_matrices(x) on the eager "
                             "backend gives every row")

        def first_row(module, q, k, lse):
            return _ops.cls_attention(q, k, lse, module.scale)
        return torch.stack(self._probe_forward(x, modules, first_row))

    @torch.no_grad()
    def attention_matrices(self, x: torch.Tensor) -> torch.Tensor:
        """Every attention matrix of the blocks, fp32 (depth, B, heads, N, N), for attention rollout.

        Only on the ``eager`` backend (the one that holds these matrices anyway): memory grows as
        depth * B * heads * N^2 (180 MB for vit_base_patch16_224 at batch 8), so this is for small
        inputs. ``attention_maps`` gives the query rows on every backend.
        """
        self.check_input(x)
        backend = resolve_backend(self.backend, x.device, x.dtype)
        if backend != "eager":
            raise RuntimeError(
                f"attention_matrices needs the full N x N attention matrices, which only the 'eager' backend "
                f"materialises (this model resolves to {backend!r}); call model.set_backend('eager') first, "
                f"or use attention_maps(x) for the query rows on any backend")

        def full(module, q, k, lse):
            return reference.attention_probs(q.float(), k.float(), module.scale)
        return torch.stack(self._probe_forward(x, [blk.attn for blk in self.blocks], full))

    def _probe_forward(self, x: torch.Tensor, modules, row_fn) -> list[torch.Tensor]:
        # The model's own forward, in eval mode, with the probed modules handing their q, k and
        # lse to ``row_fn``: the maps come from the very computation the model does.
        rows: list[torch.Tensor] = []
        was_training = self.training
        self.eval()
        try:
            with probe_attention(modules, lambda m, q, k, lse: rows.append(row_fn(m, q, k, lse))):
                self.forward(x)
        finally:
            self.train(was_training)
        return rows


@torch.no_grad()
def _trunc_normal_(t: torch.Tensor, std: float = 0.02) -> torch.Tensor:
    """Normal(0, std) cut at 2 std: a plain normal draw, whose ~4.6 % of values outside the cut
    are replaced by draws of the truncated normal itself (so the distribution is exactly
    ``nn.init.trunc_normal_(a=-2 std, b=2 std)``, whose inverse-CDF method is several times
    slower at these bounds when run on the whole tensor)."""
    t.normal_(0.0, std)
    outside = t.abs() > 2 * std
    fresh = torch.empty(int(outside.sum()), dtype=t.dtype, device=t.device)
    nn.init.trunc_normal_(fresh, std=std, a=-2 * std, b=2 * std)
    return t.masked_scatter_(outside, fresh)


def create_model(name: str, **overrides) -> FastViT:
    """Build a registered variant, e.g. ``create_model("vit_base_patch16_224", num_classes=10)``."""
    kwargs = model_config(name).kwargs()
    kwargs.update(overrides)
    return FastViT(**kwargs)
