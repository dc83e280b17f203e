"""The knobs of the toy CLIP pretraining (:mod:`dapl.toy.pretrain`), in their own module so that ``dapl toy
pretrain --set`` validates them, and rejects a misspelt one, before torch is imported."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from dapl.toy.captions import DOMAIN_IMAGE_MIX, PRETRAIN_DEPICTION_B, SPECIFIC_NAME_RATE


class ToyPretrainConfig(BaseModel):
    """Every knob of the toy CLIP pretraining; the defaults produce the shipped checkpoint."""

    model_config = ConfigDict(extra="forbid")  # a misspelt knob is an error, not a silent default

    seed: int = 0
    steps: int = 2500
    batch_size: int = 128
    pool_size: int = 24_000  # images pre-rendered once, then seen under random crops
    render_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 60
    logit_scale_lr_mult: float = 10.0
    max_logit_scale: float = 100.0
    cross_style_negatives: float = 1.0  # share of images that also see other media's captions as negatives
    # second depictions captioned by their specific name, per domain; their share in the pretraining images
    specific_name_rate: dict[str, float] = Field(default_factory=lambda: dict(SPECIFIC_NAME_RATE))
    depiction_b: dict[str, float] = Field(default_factory=lambda: dict(PRETRAIN_DEPICTION_B))
    crop_scale: tuple[float, float] = (0.55, 1.0)
    # Web captions carry other words around the description. Each caption template of a step gets 0..filler_max
    # filler tokens, split between its front and the place before the class name, so every position a DAPL
    # prompt uses (1 + 16 + 16 + class name + the `official` suffix: about 43) is trained and a medium's words
    # count at any distance from the name. "words": neutral words (captions.FILLER_WORDS); "random": any BPE
    # token (measured with front-only filler: the tower then learns to ignore untrained-embedding vectors,
    # DAPL's N(0, 0.02^2) context init among them, and a learned context barely moves).
    filler_max: int = 40
    filler: str = "words"
    domain_mix: dict[str, float] = Field(default_factory=lambda: dict(DOMAIN_IMAGE_MIX))
    max_minutes: float | None = None  # optional hard stop (breaks the step-exact reproducibility if it triggers)
    workers: int = 2  # processes rendering the image pool
    # torch intra-op threads. Part of the recipe: runs with the same thread count are bit-identical, while 1 and 2
    # threads differ in the last float bits and end at measurably different checkpoints (measured, issue 4).
    num_threads: int = 1
    eval_seed: int = 0  # benchmark-world seed of the recorded zero-shot check
    eval_images_per_class: int = 20
    progress: bool = True
